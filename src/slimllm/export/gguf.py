"""Export a pruned (or dense) LLaMA-family folder to a GGUF file that llama.cpp runs.

llama.cpp's ``llama`` architecture builds every layer with layer 0's sizes, so a pruned model is
written as ``deci`` (the architecture of NVIDIA's Nemotron-NAS models), whose loader reads
per-layer arrays ``head_count``, ``head_count_kv`` and ``feed_forward_length``, takes optional
``attn_output.bias``/``ffn_down.bias`` (and q/k/v biases through the shared ``create_tensor_qkv``),
and runs a layer without attention (``head_count`` 0). What the deci block needs, from
``src/models/deci.cpp`` of the llama.cpp vendored in llama-cpp-python 0.3.36:

- ``key_length``, ``value_length`` and ``rope.dimension_count`` explicitly: otherwise the head size
  is ``embedding_length / head_count[0]``, wrong once layer 0 lost heads.
- Every kv head serves ``head_count / head_count_kv`` consecutive query heads. Uneven maps left by
  ``--gqa query`` are rewritten with one group size per layer (kv heads copied, empty query slots
  zero; see :func:`slimllm.export.source.best_regroup`).
- ``feed_forward_length`` 0 makes the graph skip the whole layer (``continue`` before the residual
  add), attention included: such a layer gets one zero FFN channel instead.
- ``head_count[0]`` must be positive (it sets the head size), and a head-free layer drops
  ``attn_output.bias``: such layers keep one zero head when they are layer 0 or carry that bias.
- No sliding-window attention: Mistral folders with a window are refused unless asked to cap
  the context at the window (``--ignore-sliding-window``).

Q and K rows are permuted per head into llama.cpp's rotary layout (pairs of consecutive values),
as llama.cpp's ``convert_hf_to_gguf.py`` does for LLaMA; their biases are permuted the same way.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from slimllm.export.source import (
    ExportError,
    Layer,
    SourceModel,
    best_regroup,
    decoder_parameters,
    gather_heads,
    load_source,
)

ARCH = "deci"
# --quant names -> llama.cpp's LLAMA_FTYPE_* (llama.h) and the block size of the main type
QUANTS = {
    "f32": (0, 1),
    "f16": (1, 1),
    "q8_0": (7, 32),
    "q4_0": (2, 32),
    "q4_k_m": (15, 256),
    "q5_k_m": (17, 256),
    "q6_k": (18, 256),
}

# tokenizer.json pre-tokenizer -> llama.cpp's tokenizer.ggml.pre (regexes from llama-vocab.cpp)
_GPT2_WORDS = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
_LLAMA3 = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
_QWEN2 = _LLAMA3.replace("\\p{N}{1,3}", "\\p{N}")


@dataclass
class GGUFReport:
    output: str
    quant: str
    arch: str = ARCH
    head_count: list[int] = field(default_factory=list)
    head_count_kv: list[int] = field(default_factory=list)
    feed_forward_length: list[int] = field(default_factory=list)
    group_sizes: list[int] = field(default_factory=list)
    source_decoder_params: int = 0
    written_decoder_params: int = 0
    notes: list[str] = field(default_factory=list)
    fallbacks: list[dict] = field(default_factory=list)
    tensor_types: dict[str, str] = field(default_factory=dict)
    file_bytes: int = 0
    tokenizer: str = "none"
    hidden_size: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# -- layers --------------------------------------------------------------------------------------
def _rotary_permute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF's rotate-half layout -> llama.cpp's interleaved pairs, head by head (rows or a bias)."""
    if n_head == 0:
        return weight
    shape = weight.shape
    return weight.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _deci_layer(
    layer: Layer, index: int, head_dim: int, hidden: int, pad_ffn: int = 1
) -> tuple[dict[str, torch.Tensor], dict]:
    """The GGUF tensors of one layer and its sizes (``n_head``, ``n_head_kv``, ``n_ff``, ``group``)."""
    tensors: dict[str, torch.Tensor] = {}
    p = f"blk.{index}."
    query_to_kv = layer.query_to_kv
    dummy = not query_to_kv and (index == 0 or "o" in layer.bias)
    if query_to_kv or dummy:
        if dummy:  # one zero head: contributes exactly the o_proj bias (or nothing)
            zeros = torch.zeros(head_dim, hidden)
            q = k = v = zeros
            o = torch.zeros(hidden, head_dim)
            group, n_head, n_kv = 1, 1, 1
            bias = {"o": layer.bias["o"]} if "o" in layer.bias else {}
        else:
            plan = best_regroup(query_to_kv)
            group, n_head, n_kv = plan.group, plan.num_heads, plan.num_kv_heads
            q = gather_heads(layer.q, plan.query_src, head_dim)
            k = gather_heads(layer.k, plan.kv_src, head_dim)
            v = gather_heads(layer.v, plan.kv_src, head_dim)
            o = gather_heads(layer.o, plan.query_src, head_dim, dim=1)
            bias = {}
            for key, src in (("q", plan.query_src), ("k", plan.kv_src), ("v", plan.kv_src)):
                if key in layer.bias:
                    bias[key] = gather_heads(layer.bias[key], src, head_dim)
            if "o" in layer.bias:
                bias["o"] = layer.bias["o"]
        tensors[p + "attn_norm.weight"] = layer.attn_norm
        tensors[p + "attn_q.weight"] = _rotary_permute(q, n_head)
        tensors[p + "attn_k.weight"] = _rotary_permute(k, n_kv)
        tensors[p + "attn_v.weight"] = v
        tensors[p + "attn_output.weight"] = o
        if "q" in bias:
            tensors[p + "attn_q.bias"] = _rotary_permute(bias["q"], n_head)
        if "k" in bias:
            tensors[p + "attn_k.bias"] = _rotary_permute(bias["k"], n_kv)
        if "v" in bias:
            tensors[p + "attn_v.bias"] = bias["v"]
        if "o" in bias:
            tensors[p + "attn_output.bias"] = bias["o"]
    else:
        group, n_head, n_kv = 0, 0, 0

    gate, up, down = layer.gate, layer.up, layer.down
    ffn_bias = {key: layer.bias[key] for key in ("gate", "up", "down") if key in layer.bias}
    if gate.shape[0] == 0:  # deci skips a layer with n_ff == 0 entirely: keep one zero channel
        gate, up, down = torch.zeros(1, hidden), torch.zeros(1, hidden), torch.zeros(hidden, 1)
        for key in ("gate", "up"):
            if key in ffn_bias:
                ffn_bias[key] = torch.zeros(1)
    width = -(-gate.shape[0] // pad_ffn) * pad_ffn  # zero channels up to a multiple of pad_ffn: exact
    if width > gate.shape[0]:
        extra = width - gate.shape[0]
        gate = torch.cat([gate, gate.new_zeros(extra, hidden)])
        up = torch.cat([up, up.new_zeros(extra, hidden)])
        down = torch.cat([down, down.new_zeros(hidden, extra)], dim=1)
        for key in ("gate", "up"):
            if key in ffn_bias:
                ffn_bias[key] = torch.cat([ffn_bias[key], ffn_bias[key].new_zeros(extra)])
    tensors[p + "ffn_norm.weight"] = layer.ffn_norm
    tensors[p + "ffn_gate.weight"] = gate
    tensors[p + "ffn_up.weight"] = up
    tensors[p + "ffn_down.weight"] = down
    for key, name in (("gate", "ffn_gate"), ("up", "ffn_up"), ("down", "ffn_down")):
        if key in ffn_bias:
            tensors[f"{p}{name}.bias"] = ffn_bias[key]
    sizes = {"n_head": n_head, "n_head_kv": n_kv, "n_ff": gate.shape[0], "group": group}
    return tensors, sizes


def _llama3_rope_factors(rope: dict, head_dim: int) -> torch.Tensor:
    """llama.cpp's ``rope_freqs`` tensor for llama3-type RoPE scaling (divisors of each frequency)."""
    base = float(rope["rope_theta"])
    factor = float(rope.get("factor", 8.0))
    low = float(rope.get("low_freq_factor", 1.0))
    high = float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    factors = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return torch.tensor(factors, dtype=torch.float32)


# -- tokenizer -----------------------------------------------------------------------------------
def detect_pre_tokenizer(tokenizer_json: dict) -> str | None:
    """llama.cpp's name for the pre-tokenizer in ``tokenizer.json``, or None if not recognised."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    types = [part.get("type") for part in parts]
    if types == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if types == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if types and types[0] == "Split":
        regex = (parts[0].get("pattern") or {}).get("Regex")
        if regex == _LLAMA3:
            return "llama-bpe"
        if regex == _QWEN2:
            return "qwen2"
        if regex == _GPT2_WORDS:
            return "gpt-2"
    return None


def _add_tokenizer(writer, folder: Path, vocab_size: int, pre: str | None) -> str:
    """Write the folder's tokenizer as llama.cpp reads it; return a one-line description."""
    import gguf

    tokenizer_json = folder / "tokenizer.json"
    if not tokenizer_json.is_file():
        # llama.cpp runs such a file on token ids (tokenizer model "none" adds vocab_size dummy tokens)
        writer.add_tokenizer_model("none")
        return "none (the folder has no tokenizer.json: llama.cpp takes token ids only)"
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    decoder_type = (data.get("decoder") or {}).get("type")
    if model.get("type") == "BPE" and not model.get("byte_fallback") and decoder_type == "ByteLevel":
        pre = pre or detect_pre_tokenizer(data)
        if pre is None:
            raise ExportError(
                f"{tokenizer_json}: pre-tokenizer {json.dumps(data.get('pre_tokenizer'))[:200]} is not one slimllm "
                "recognises; pass --tokenizer-pre NAME with llama.cpp's name for it (e.g. gpt-2, llama-bpe, qwen2)"
            )
        vocab: dict[str, int] = model["vocab"]
        added = {item["id"]: item for item in data.get("added_tokens") or []}
        size = max([*vocab.values(), *added.keys()]) + 1
        tokens: list[str | None] = [None] * size
        for text, idx in vocab.items():
            tokens[idx] = text
        types = [gguf.TokenType.NORMAL] * size
        for idx, item in added.items():
            tokens[idx] = item["content"]
            types[idx] = gguf.TokenType.CONTROL if item.get("special") else gguf.TokenType.USER_DEFINED
        scores = None
        tok_model = "gpt2"
    elif model.get("type") == "BPE" and model.get("byte_fallback"):
        vocab_obj = gguf.LlamaHfVocab(folder)
        texts, scores_, types_ = zip(*vocab_obj.all_tokens(), strict=True)
        tokens = [t.decode("utf-8") if isinstance(t, bytes) else t for t in texts]
        scores, types = list(scores_), list(types_)
        tok_model, pre = "llama", pre or "default"
    else:
        raise ExportError(
            f"{tokenizer_json}: tokenizer model {model.get('type')!r} (decoder {decoder_type!r}) is not supported; "
            "supported: byte-level BPE (GPT-2/LLaMA-3/Qwen2/SmolLM style) and byte-fallback BPE (LLaMA-2/Mistral)"
        )
    for idx, text in enumerate(tokens):
        if text is None:
            tokens[idx] = f"[PAD{idx}]"
            types[idx] = gguf.TokenType.UNUSED
    if len(tokens) > vocab_size:
        raise ExportError(f"the tokenizer has {len(tokens)} tokens but the model's vocab_size is {vocab_size}")
    for idx in range(len(tokens), vocab_size):  # embedding rows beyond the tokenizer, as the converter pads
        tokens.append(f"[PAD{idx}]")
        types.append(gguf.TokenType.UNUSED)
        if scores is not None:
            scores.append(-1000.0)
    writer.add_tokenizer_model(tok_model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    if scores is not None:
        writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=tok_model == "gpt2", n_vocab=len(tokens))
    special.add_to_gguf(writer, quiet=True)
    return f"{tok_model} ({pre}), {len(tokens)} tokens" + (", chat template" if special.chat_template else "")


# -- writing -------------------------------------------------------------------------------------
def _check_expressible(src: SourceModel, ignore_sliding_window: bool) -> tuple[int, list[str]]:
    """The context length to write and notes; raise for what the deci block cannot express."""
    notes = []
    context = int(src.config.get("max_position_embeddings", 4096))
    window = src.sliding_window()
    if window is not None and window < context:
        if not ignore_sliding_window:
            raise ExportError(
                f"{src.family} uses sliding-window attention (window {window} < context {context}), which "
                "llama.cpp's deci block does not implement; pass --ignore-sliding-window to write a model whose "
                f"context is capped at {window} tokens, where full attention is identical"
            )
        context = window
        notes.append(f"sliding window {window}: context length capped at {window} (exact up to that length)")
    rope = src.rope()
    if float(rope.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ExportError("partial_rotary_factor != 1 is not supported by llama.cpp's deci block")
    if rope["rope_type"] not in ("default", "linear", "llama3", "yarn"):
        raise ExportError(f"RoPE scaling {rope['rope_type']!r} is not supported (default, linear, llama3, yarn)")
    return context, notes


def write_gguf(
    src: SourceModel,
    path: Path,
    *,
    float_type: str = "f16",
    tokenizer_pre: str | None = None,
    ignore_sliding_window: bool = False,
    pad_ffn: int = 1,
) -> GGUFReport:
    """Write ``src`` as an F32 or F16 GGUF (1-D tensors stay F32, as llama.cpp's converter does).

    ``pad_ffn``: zero-pad every FFN width to a multiple of it (exact; lets quantised types keep
    ``ffn_down`` in the requested type)."""
    import gguf

    if float_type not in ("f32", "f16"):
        raise ValueError(f"float_type must be f32 or f16, got {float_type!r}")
    context, notes = _check_expressible(src, ignore_sliding_window)
    report = GGUFReport(output=str(path), quant=float_type, notes=notes, hidden_size=src.hidden_size)
    hd, hidden = src.head_dim, src.hidden_size
    all_tensors: dict[str, torch.Tensor] = {"token_embd.weight": src.embed}
    for i, layer in enumerate(src.layers):
        tensors, sizes = _deci_layer(layer, i, hd, hidden, pad_ffn)
        all_tensors.update(tensors)
        report.head_count.append(sizes["n_head"])
        report.head_count_kv.append(sizes["n_head_kv"])
        report.feed_forward_length.append(sizes["n_ff"])
        report.group_sizes.append(sizes["group"])
    all_tensors["output_norm.weight"] = src.norm
    if src.lm_head is not None:
        all_tensors["output.weight"] = src.lm_head
    rope = src.rope()
    if rope["rope_type"] == "llama3":
        all_tensors["rope_freqs.weight"] = _llama3_rope_factors(rope, hd)

    report.source_decoder_params = decoder_parameters(src.layers)
    report.written_decoder_params = sum(
        t.numel() for name, t in all_tensors.items() if name.startswith("blk.") and name != "rope_freqs.weight"
    )
    extra = report.written_decoder_params - report.source_decoder_params
    if extra:
        notes.append(
            f"{extra:,} zero parameters added ({extra / report.source_decoder_params:.2%} of the decoder) to give "
            f"every kv head an equal group of query heads and every FFN a width that is a multiple of {pad_ffn}"
        )

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), ARCH)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(src.folder.resolve().name)
    writer.add_block_count(len(src.layers))
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(report.feed_forward_length)
    writer.add_head_count(report.head_count)
    writer.add_head_count_kv(report.head_count_kv)
    writer.add_key_length(hd)
    writer.add_value_length(hd)
    writer.add_rope_dimension_count(hd)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope["rope_type"] == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope.get("original_max_position_embeddings", context)))
    writer.add_layer_norm_rms_eps(src.rms_norm_eps)
    vocab_size = src.embed.shape[0]
    writer.add_vocab_size(vocab_size)
    writer.add_file_type(QUANTS[float_type][0])
    report.tokenizer = _add_tokenizer(writer, src.folder, vocab_size, tokenizer_pre)

    for name, tensor in all_tensors.items():
        data = tensor.detach().to(torch.float32).contiguous().numpy()
        if float_type == "f16" and data.ndim == 2:
            data = data.astype(np.float16)
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    report.file_bytes = path.stat().st_size
    report.tensor_types = _tensor_types(path)
    return report


def _tensor_types(path: Path) -> dict[str, str]:
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {t.name: t.tensor_type.name for t in reader.tensors}


def quantize(source: Path, output: Path, quant: str, threads: int | None = None) -> None:
    """Quantise a GGUF with llama.cpp's own ``llama_model_quantize`` (llama-cpp-python)."""
    try:
        import llama_cpp
    except ImportError as error:
        raise ExportError(
            f"--quant {quant} uses llama.cpp's quantiser from llama-cpp-python: pip install 'slimllm[serve]'"
        ) from error
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTS[quant][0]
    params.nthread = threads or os.cpu_count() or 1
    result = llama_cpp.llama_model_quantize(str(source).encode(), str(output).encode(), params)
    if result != 0:
        raise ExportError(f"llama.cpp failed to quantise {source} to {quant} (code {result})")


def export_gguf(
    folder: str | os.PathLike,
    output: str | os.PathLike,
    *,
    quant: str = "f16",
    tokenizer_pre: str | None = None,
    ignore_sliding_window: bool = False,
    threads: int | None = None,
    pad_ffn: int = 32,
) -> GGUFReport:
    """Export a slimllm (or stock LLaMA/Mistral/Qwen2) folder to a GGUF for llama.cpp.

    ``quant``: ``f32``, ``f16`` (default), or a llama.cpp type (``q8_0``, ``q4_0``, ``q4_k_m``,
    ``q5_k_m``, ``q6_k``): an F32 file is written first and quantised by llama.cpp. Matrices whose
    row length is not a multiple of the type's block size fall back to a wider type; they are
    listed in ``report.fallbacks``. ``pad_ffn`` zero-pads FFN widths to a multiple of it (exact):
    with odd widths llama.cpp leaves its fast matrix kernels, and prompt processing of SmolLM2 at
    20% ran at 0.75x dense instead of 1.2x; 32 also keeps ``ffn_down`` in Q8_0/Q4_0.
    """
    if pad_ffn < 1:
        raise ExportError(f"--pad-ffn must be at least 1, got {pad_ffn}")
    quant = quant.lower()
    if quant not in QUANTS:
        raise ExportError(f"unknown --quant {quant!r}; choose from {', '.join(QUANTS)}")
    src = load_source(folder)
    output = Path(output)
    if quant in ("f32", "f16"):
        tmp = output.with_name(f".{output.name}.tmp")
        try:
            report = write_gguf(
                src,
                tmp,
                float_type=quant,
                tokenizer_pre=tokenizer_pre,
                ignore_sliding_window=ignore_sliding_window,
                pad_ffn=pad_ffn,
            )
            os.replace(tmp, output)
        finally:
            tmp.unlink(missing_ok=True)
        report.output = str(output)
        return report
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".slimllm-export-", dir=output.parent) as tmp:
        f32 = Path(tmp) / "model-f32.gguf"
        report = write_gguf(
            src,
            f32,
            float_type="f32",
            tokenizer_pre=tokenizer_pre,
            ignore_sliding_window=ignore_sliding_window,
            pad_ffn=pad_ffn,
        )
        del src
        partial = Path(tmp) / "model-quant.gguf"
        quantize(f32, partial, quant, threads)
        output.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, output)
    report.output, report.quant = str(output), quant
    report.file_bytes = output.stat().st_size
    report.tensor_types = _tensor_types(output)
    report.fallbacks = _fallbacks(output, QUANTS[quant][1])
    return report


def _fallbacks(path: Path, block: int) -> list[dict]:
    """Matrices whose row length is not a multiple of ``block``, with the type llama.cpp gave them."""
    import gguf

    rows = []
    for tensor in gguf.GGUFReader(str(path)).tensors:
        shape = [int(x) for x in tensor.shape]
        if len(shape) == 2 and shape[0] % block:
            rows.append({"tensor": tensor.name, "row_length": shape[0], "type": tensor.tensor_type.name})
    return rows
