"""Export targets as plug-ins: ``slimllm export FOLDER --to NAME`` picks one.

Each target names its options in a dataclass (the command line is built from it, grouped under the
target's name) and how to export and describe the result. An option of another target is refused.
Adding a target: an options dataclass, an ``export(folder, output, options, overwrite)`` returning
a report with ``to_dict()``, ``summary(report_dict) -> lines``, and :func:`register_target`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from slimllm.registry import Registry

_IGNORE_SLIDING_WINDOW = "write a model without sliding-window attention, context capped at the window (exact up to it)"


@dataclass
class GgufOptions:
    quant: str = field(
        default="f16",
        metadata={
            "help": "f32 | f16 | q8_0 | q4_0 | q4_k_m | q5_k_m | q6_k (quantised types use llama.cpp's quantiser)"
        },
    )
    tokenizer_pre: str | None = field(
        default=None, metadata={"help": "llama.cpp pre-tokenizer name, if not recognised", "type": str}
    )
    threads: int | None = field(default=None, metadata={"help": "quantisation threads", "type": int})
    pad_ffn: int = field(
        default=32,
        metadata={
            "help": "zero-pad FFN widths to a multiple of N (exact; odd widths slow llama.cpp's matmuls and make "
            "ffn_down fall back to F16 in Q8_0; 256 for K-quants; 1 = no padding)"
        },
    )
    ignore_sliding_window: bool = field(default=False, metadata={"help": _IGNORE_SLIDING_WINDOW})


@dataclass
class HfOptions:
    dtype: str | None = field(default=None, metadata={"help": "float32 | bfloat16 | float16; None: float32"})
    ignore_sliding_window: bool = field(default=False, metadata={"help": _IGNORE_SLIDING_WINDOW})


@dataclass
class VllmOptions:
    """No options: the folder keeps the pruned model's dtype and shapes."""


@dataclass(frozen=True)
class ExportTarget:
    name: str
    summary: str
    options: type
    export: Callable  # (folder, output, options, overwrite) -> report with to_dict()
    summary_lines: Callable[[dict], list[str]]


TARGETS: Registry[ExportTarget] = Registry("export target")
register_target = TARGETS.add


def export_to(name: str, folder: str | os.PathLike, output: str | os.PathLike, options=None, *, overwrite=False):
    """Export ``folder`` with target ``name`` and its ``options`` (its defaults when None)."""
    if name not in TARGETS:
        raise ValueError(f"unknown export target {name!r}; use one of {', '.join(TARGETS)}")
    target = TARGETS[name]
    return target.export(folder, output, options if options is not None else target.options(), overwrite)


# -- gguf ---------------------------------------------------------------------------------------
def _export_gguf(folder, output, options: GgufOptions, overwrite: bool):
    from slimllm.export.gguf import export_gguf

    return export_gguf(folder, output, **asdict(options))


def _gguf_lines(report: dict) -> list[str]:
    lines = [
        f"wrote {report['output']} ({report['file_bytes'] / 2**20:.1f} MiB, {report['quant']}, arch deci)",
        f"  tokenizer: {report['tokenizer']}",
        f"  heads per layer:    {report['head_count']}",
        f"  kv heads per layer: {report['head_count_kv']}",
        f"  FFN width per layer: {report['feed_forward_length']}",
        f"  decoder parameters: {report['written_decoder_params']:,} written for {report['source_decoder_params']:,}",
    ]
    lines += [f"  note: {note}" for note in report["notes"]]
    fallbacks = report["fallbacks"]
    if fallbacks:
        block = 256 if "_k" in report["quant"] else 32
        lines.append(
            f"  {len(fallbacks)} matrices have rows that are not a multiple of the {report['quant']} block ({block}) "
            "and were stored in a wider type by llama.cpp:"
        )
        lines += [f"    {row['tensor']}: row length {row['row_length']} -> {row['type']}" for row in fallbacks]
        pruned = [row for row in fallbacks if row["row_length"] != report["hidden_size"]]
        if pruned:
            lines.append(
                f"  {len(pruned)} of them have pruned widths: export with --pad-ffn {block} or prune with "
                f"--round-to {block} to avoid it; rows as long as the hidden size cannot be helped by pruning"
            )
    return lines


# -- hf -----------------------------------------------------------------------------------------
def _export_hf(folder, output, options: HfOptions, overwrite: bool):
    from slimllm.export.hf import export_hf

    return export_hf(folder, output, overwrite=overwrite, **asdict(options))


def _hf_lines(report: dict) -> list[str]:
    lines = [
        f"wrote {report['output']}: {report['architecture']}, {report['num_attention_heads']} heads / "
        f"{report['num_key_value_heads']} kv heads, FFN {report['intermediate_size']}, "
        f"{report['written_params']:,} parameters"
    ]
    if report["exact_shape"]:
        lines.append("  every layer has the same shape: exact and compact")
    return lines + [f"  note: {note}" for note in report["notes"]]


register_target(
    ExportTarget(
        "gguf", "a llama.cpp file (architecture deci, per-layer shapes)", GgufOptions, _export_gguf, _gguf_lines
    )
)
register_target(
    ExportTarget(
        "hf",
        "a folder stock transformers loads without slimllm or trust_remote_code "
        "(zero-padded unless every layer has one shape)",
        HfOptions,
        _export_hf,
        _hf_lines,
    )
)


# -- vllm ---------------------------------------------------------------------------------------
def _export_vllm(folder, output, options: VllmOptions, overwrite: bool):
    from slimllm.export.vllm import export_vllm

    return export_vllm(folder, output, overwrite=overwrite)


def _vllm_lines(report: dict) -> list[str]:
    lines = [
        f"wrote {report['output']}: serve it with `vllm serve {report['output']}` (slimllm installed beside vLLM)",
        f"  heads per layer:    {report['heads']}",
        f"  kv heads per layer: {report['kv_heads']}",
        f"  FFN width per layer: {report['ffn_widths']}",
        f"  parameters: {report['written_params']:,} written for {report['source_params']:,}",
        f"  --tensor-parallel-size that splits every layer: {report['tensor_parallel_sizes']} (of 1-8; prune with "
        "--gqa group --tensor-parallel N for more)",
    ]
    return lines + [f"  note: {note}" for note in report["notes"]]


register_target(
    ExportTarget(
        "vllm",
        "a pruned folder vLLM serves: uneven query->kv maps regrouped exactly (zero query heads, copied kv heads)",
        VllmOptions,
        _export_vllm,
        _vllm_lines,
    )
)
