"""Training data for LoRA recovery: Alpaca-format instructions or plain text, tokenised and split.

Instructions (``instruction``, optional ``input``, ``output``) come from a hub dataset or a local
``.json`` list / ``.jsonl`` file. Each example becomes template(prompt) + output + EOS, cut at
``cutoff`` tokens; the prompt tokens get the label -100 so only the response is learned
(unless ``train_on_prompt``). Prompt and response are tokenised separately so the mask falls
exactly on the boundary whatever the tokenizer merges across it.

Plain text (any ``slimllm.data.sources.load_text`` source) is one token stream cut into
non-overlapping ``cutoff``-token blocks, every token a label.

Held-out set: min(``val_size``, 10 %) of the examples or blocks, drawn with a generator seeded by
``seed``, so the training set keeps at least 90 % of the data and a rerun draws the same split.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from slimllm.data.sources import DataSourceError, load_text, token_windows, tokenize_stream
from slimllm.finetune.config import FinetuneConfig
from slimllm.hub import hub_reachable

IGNORE_INDEX = -100  # the label torch's cross-entropy skips
MAX_VAL_FRACTION = 0.1
TEXT_SOURCES = ("bookcorpus", "lambada", "wikitext2", "ptb")
TEXT_SUFFIXES = (".txt", ".text", ".md")
INSTRUCTION_SUFFIXES = (".json", ".jsonl")
EVALUATION_SOURCES = ("wikitext2", "ptb")  # load_text gives their test/validation splits

# The template of Alpaca-LoRA, which LLM-Pruner and SlimLLM use for their "w/ tune" rows.
ALPACA_TEMPLATE = {
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
    ),
}


class DataFormatError(DataSourceError):
    """Training data is missing, empty, or not in the expected shape."""


@dataclass
class FinetuneData:
    """Tokenised training and held-out sets (``input_ids``, ``attention_mask``, ``labels``)."""

    train: object  # datasets.Dataset
    validation: object | None
    info: dict = field(default_factory=dict)


# -- format detection ---------------------------------------------------------------------------
def detect_format(source: str) -> str:
    """``text`` for text sources, text files and ``{"text": ...}`` JSONL; ``alpaca`` otherwise."""
    path = Path(source).expanduser()
    if source in TEXT_SOURCES or source.startswith("hf:") or path.suffix in TEXT_SUFFIXES:
        return "text"
    if path.suffix == ".jsonl" and path.is_file():
        first = _first_jsonl_record(path)
        if isinstance(first, dict) and "text" in first and "instruction" not in first:
            return "text"
    return "alpaca"


def _first_jsonl_record(path: Path):
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    return None  # reported with its line number when the file is read
    return None


# -- instruction data ---------------------------------------------------------------------------
def load_instructions(source: str) -> tuple[list[dict], dict]:
    """Validated examples ``{"instruction", "input", "output"}`` and a provenance record."""
    path = Path(source).expanduser()
    if path.is_dir():
        raise DataFormatError(f"{path} is a folder; pass a .json/.jsonl file of examples or a hub dataset id")
    if path.suffix in INSTRUCTION_SUFFIXES or path.exists():
        if not path.is_file():
            raise DataFormatError(f"instruction data file not found: {path}")
        rows = read_instruction_file(path)
        origin = str(path.resolve())
    else:
        rows = _hub_instruction_rows(source)
        origin = f"hub:{source}:train"
    payload = json.dumps(rows, sort_keys=True).encode()
    return rows, {"source": source, "origin": origin, "sha256": hashlib.sha256(payload).hexdigest()}


def read_instruction_file(path: str | Path) -> list[dict]:
    """A ``.json`` list of examples or a ``.jsonl`` file with one example per line."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        located = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                located.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise DataFormatError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    else:
        if not text.strip():
            raise DataFormatError(f"{path}: the file is empty; expected a JSON list of examples")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataFormatError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
        if not isinstance(data, list):
            raise DataFormatError(
                f"{path}: expected a JSON list of examples with 'instruction', 'input' and 'output' fields"
            )
        located = [(f"{path}: example {index}", row) for index, row in enumerate(data)]
    if not located:
        raise DataFormatError(f"{path}: no examples in the file")
    return [validate_example(row, where) for where, row in located]


def validate_example(row, where: str) -> dict:
    """The example with ``input`` defaulted to ""; a clear error naming ``where`` otherwise."""
    if not isinstance(row, dict):
        raise DataFormatError(f"{where}: expected a JSON object with 'instruction', 'input' and 'output'")
    for name in ("instruction", "output"):
        if name not in row:
            raise DataFormatError(
                f"{where}: missing field {name!r} (each example needs 'instruction' and 'output'; 'input' is optional)"
            )
    example = {"instruction": row["instruction"], "input": row.get("input") or "", "output": row["output"]}
    for name, value in example.items():
        if not isinstance(value, str):
            raise DataFormatError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    if not example["instruction"].strip():
        raise DataFormatError(f"{where}: field 'instruction' is empty")
    return example


def _hub_instruction_rows(name: str) -> list[dict]:
    if not hub_reachable():
        raise DataFormatError(
            f"instruction dataset {name!r} is on the Hugging Face Hub, which is unreachable; pass a local "
            ".json/.jsonl file of instruction/input/output examples, or plain text (e.g. --data lambada)"
        )
    import datasets

    try:
        dataset = datasets.load_dataset(name, split="train")
    except (FileNotFoundError, ConnectionError, ValueError) as error:  # unknown id, network, bad split
        raise DataFormatError(f"cannot load the hub dataset {name!r}: {error}") from error
    missing = {"instruction", "output"} - set(dataset.column_names)
    if missing:
        raise DataFormatError(
            f"hub dataset {name!r} has columns {dataset.column_names}, not the Alpaca format "
            f"(missing {sorted(missing)}); for plain text use --data hf:{name} --format text"
        )
    return [validate_example(row, f"{name} row {index}") for index, row in enumerate(dataset)]


def load_template(name: str) -> dict:
    """``alpaca`` or a JSON file with ``prompt_input`` and ``prompt_no_input`` format strings."""
    if name == "alpaca":
        return ALPACA_TEMPLATE
    path = Path(name).expanduser()
    if not path.is_file():
        raise DataFormatError(f"template {name!r} is neither 'alpaca' nor a JSON file")
    try:
        template = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path}: not valid JSON ({error.msg})") from None
    for key in ("prompt_input", "prompt_no_input"):
        if not isinstance(template, dict) or not isinstance(template.get(key), str):
            raise DataFormatError(f"{path}: a template needs string fields 'prompt_input' and 'prompt_no_input'")
    return template


def build_prompt(example: dict, template: dict) -> str:
    if example["input"].strip():
        return template["prompt_input"].format(instruction=example["instruction"], input=example["input"])
    return template["prompt_no_input"].format(instruction=example["instruction"])


def tokenize_examples(
    tokenizer, examples: list[dict], template: dict, cutoff: int, train_on_prompt: bool = False
) -> tuple[dict[str, list], int]:
    """Columns ``input_ids``/``attention_mask``/``labels``, and the number of examples dropped
    because the prompt alone fills ``cutoff`` (they would carry no label)."""
    if tokenizer.eos_token_id is None:
        raise DataFormatError("the tokenizer has no EOS token to end each response with")
    prompts = tokenizer([build_prompt(ex, template) for ex in examples], add_special_tokens=True)["input_ids"]
    responses = tokenizer([ex["output"] for ex in examples], add_special_tokens=False)["input_ids"]
    columns: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    dropped = 0
    for prompt, response in zip(prompts, responses, strict=True):
        if len(prompt) >= cutoff:
            dropped += 1
            continue
        response = [*response, tokenizer.eos_token_id]
        ids = (prompt + response)[:cutoff]
        labels = list(ids) if train_on_prompt else ([IGNORE_INDEX] * len(prompt) + response)[:cutoff]
        columns["input_ids"].append(ids)
        columns["attention_mask"].append([1] * len(ids))
        columns["labels"].append(list(labels))
    return columns, dropped


# -- plain text ---------------------------------------------------------------------------------
def text_blocks(tokenizer, text: str, cutoff: int) -> torch.Tensor:
    """The text's token stream cut into non-overlapping ``cutoff``-token blocks (tail dropped)."""
    stream = tokenize_stream(tokenizer, text)
    if stream.numel() < cutoff:
        return stream.new_empty((0, cutoff))
    return token_windows(stream, cutoff)


def _block_columns(blocks: torch.Tensor) -> dict[str, list]:
    ids = blocks.tolist()
    return {"input_ids": ids, "attention_mask": [[1] * blocks.shape[1]] * len(ids), "labels": ids}


# -- splitting ----------------------------------------------------------------------------------
def held_out_count(total: int, val_size: int) -> int:
    return min(val_size, int(total * MAX_VAL_FRACTION))


def split_indices(total: int, val_size: int, seed: int) -> tuple[list[int], list[int]]:
    """Seeded (train, validation) index lists, each in ascending order."""
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    count = held_out_count(total, val_size)
    return sorted(order[count:].tolist()), sorted(order[:count].tolist())


# -- entry point --------------------------------------------------------------------------------
def prepare_data(tokenizer, source: str, config: FinetuneConfig, *, quiet: bool = False) -> FinetuneData:
    """Load ``source`` in ``config.data_format`` (or the detected one), tokenise and split it."""
    data_format = config.data_format if config.data_format != "auto" else detect_format(source)
    if data_format == "text":
        columns, info, dropped = _text_columns(tokenizer, source, config, quiet)
    else:
        columns, info, dropped = _instruction_columns(tokenizer, source, config)
    train, validation = _split(columns, config)
    info.update(
        format=data_format,
        dropped=dropped,
        train=len(train["input_ids"]),
        validation=len(validation["input_ids"]),
        train_tokens=sum(map(len, train["input_ids"])),
        train_label_tokens=sum(sum(label != IGNORE_INDEX for label in row) for row in train["labels"]),
    )
    if not train["input_ids"]:
        raise DataFormatError(f"{source}: no training {info['units']} left after the split")
    import datasets

    return FinetuneData(
        train=datasets.Dataset.from_dict(train),
        validation=datasets.Dataset.from_dict(validation) if validation["input_ids"] else None,
        info=info,
    )


def _text_columns(tokenizer, source: str, config: FinetuneConfig, quiet: bool):
    text, text_info = load_text(source, seed=config.seed, quiet=quiet)
    blocks = text_blocks(tokenizer, text, config.cutoff)
    if blocks.shape[0] == 0:
        raise DataFormatError(f"{source}: too little text for one block of {config.cutoff} tokens")
    info = {**text_info.to_dict(), "units": "blocks", "total": blocks.shape[0]}
    if source in EVALUATION_SOURCES:
        info["warning"] = f"{source} is an evaluation split: its perplexity after this run is no longer a fair test"
    return _block_columns(blocks), info, 0


def _instruction_columns(tokenizer, source: str, config: FinetuneConfig):
    examples, info = load_instructions(source)
    columns, dropped = tokenize_examples(
        tokenizer, examples, load_template(config.template), config.cutoff, config.train_on_prompt
    )
    if not columns["input_ids"]:
        raise DataFormatError(f"{source}: every prompt is at least {config.cutoff} tokens long; raise --cutoff")
    return columns, {**info, "units": "examples", "total": len(examples)}, dropped


def _split(columns: dict[str, list], config: FinetuneConfig) -> tuple[dict, dict]:
    train_idx, val_idx = split_indices(len(columns["input_ids"]), config.val_size, config.seed)

    def pick(indices: list[int]) -> dict[str, list]:
        return {name: [values[i] for i in indices] for name, values in columns.items()}

    return pick(train_idx), pick(val_idx)
