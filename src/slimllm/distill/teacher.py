"""Where the teacher's targets come from: the dense model run beside the student, or its top-k
log-probabilities computed once and read back from disk.

A cache is a folder of safetensors shards, ``SHARD_SIZE`` examples each, indexed by the examples'
``example_id``; ``cache.json`` records what it was computed from, so a resumed run reuses it and a
different teacher, text or setting recomputes it. Shards are written atomically one by one, so an
interrupted computation continues from the last complete shard.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from slimllm.distill.loss import TopK
from slimllm.runtime import write_json_atomic

SHARD_SIZE = 256
CACHE_META = "cache.json"


class LiveTeacher:
    """The dense model in eval mode beside the student; no gradients, same device and dtype."""

    def __init__(self, model):
        self.model = model.eval().requires_grad_(False)

    def to(self, device) -> LiveTeacher:
        self.model.to(device)
        return self

    @torch.no_grad()
    def targets(self, input_ids, attention_mask, example_ids, *, hidden_states: bool = False):
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden_states, use_cache=False
        )
        return outputs.logits, (outputs.hidden_states[1:] if hidden_states else None)


class CachedTeacher:
    """The teacher's :class:`~slimllm.distill.loss.TopK` targets of every example, read from shards."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta = json.loads((self.folder / CACHE_META).read_text())
        self.examples, self.length, self.k = meta["examples"], meta["length"], meta["k"]
        self._open: dict[int, object] = {}

    def _shard(self, index: int):
        from safetensors import safe_open

        if index not in self._open:
            self._open[index] = safe_open(str(shard_path(self.folder, index)), framework="pt")
        return self._open[index]

    def to(self, device) -> CachedTeacher:
        return self

    def targets(self, input_ids, attention_mask, example_ids, *, hidden_states: bool = False) -> tuple[TopK, None]:
        rows = {"token_ids": [], "log_probs": [], "rest_log_prob": []}
        for example in example_ids.tolist():
            shard = self._shard(example // SHARD_SIZE)
            row = example % SHARD_SIZE
            for name, values in rows.items():
                values.append(shard.get_slice(name)[row : row + 1])
        length = input_ids.shape[1]  # the batch is padded to its longest example, the cache to ``length``
        device = input_ids.device
        stacked = {name: torch.cat(values)[:, :length].to(device) for name, values in rows.items()}
        return TopK(stacked["token_ids"].long(), stacked["log_probs"], stacked["rest_log_prob"]), None


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}.safetensors"


def build_topk_cache(
    teacher,
    examples: list[list[int]],
    folder: str | Path,
    *,
    k: int,
    temperature: float,
    identity: dict,
    batch_size: int = 4,
    rank: int = 0,
    world_size: int = 1,
    barrier=lambda: None,
    progress: bool = False,
) -> Path:
    """Compute the teacher's top-``k`` targets of ``examples`` (token id lists, at most ``length`` each)
    into ``folder``; each of ``world_size`` processes writes the shards ``index % world_size == rank``.

    Examples shorter than the longest are right-padded; the targets of the padding are never read
    (padded positions carry no label). ``barrier`` waits for every process. Returns the folder.
    """
    from safetensors.torch import save_file

    from slimllm.progress import progress_bar

    folder = Path(folder)
    length = max(map(len, examples))
    meta = {**identity, "k": k, "temperature": temperature, "examples": len(examples), "length": length}
    meta_path = folder / CACHE_META
    if rank == 0 and not (meta_path.is_file() and json.loads(meta_path.read_text()) == meta):
        # Made from another teacher, text or setting, or of unknown origin: every shard is stale.
        for path in folder.glob("shard-*"):
            path.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(meta_path, meta)
    barrier()
    shards = range(rank, -(-len(examples) // SHARD_SIZE), world_size)
    device = next(teacher.model.parameters()).device
    for index in progress_bar(shards, desc="teacher top-k", unit="shard", disable=not progress):
        path = shard_path(folder, index)
        if path.is_file():
            continue
        chunk = examples[index * SHARD_SIZE : (index + 1) * SHARD_SIZE]
        parts = []
        for start in range(0, len(chunk), batch_size):
            batch = chunk[start : start + batch_size]
            ids = torch.zeros(len(batch), length, dtype=torch.long)
            mask = torch.zeros(len(batch), length, dtype=torch.long)
            for row, tokens in enumerate(batch):
                ids[row, : len(tokens)] = torch.tensor(tokens)
                mask[row, : len(tokens)] = 1
            logits, _ = teacher.targets(ids.to(device), mask.to(device), None)
            parts.append(TopK.from_logits(logits, k, temperature))
        tensors = {
            "token_ids": torch.cat([part.token_ids for part in parts]).to(torch.int32).cpu(),
            "log_probs": torch.cat([part.log_probs for part in parts]).cpu(),
            "rest_log_prob": torch.cat([part.rest_log_prob for part in parts]).cpu(),
        }
        partial = path.with_suffix(".partial")
        save_file(tensors, str(partial))
        partial.replace(path)
    barrier()
    return folder
