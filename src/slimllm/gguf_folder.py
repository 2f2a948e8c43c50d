"""A GGUF file into a safetensors model folder, one tensor in memory at a time.

transformers' GGUF loader dequantises every tensor into one state dict before the model exists:
converting Qwen2.5-Coder-1.5B that way peaked at 8.62 GiB, and a 70B GGUF would need its whole
float32 size in memory. Here the same pieces of transformers (its config reader, its GGUF → HF
name map and its per-architecture tensor processors, gguf-py's dequantiser) run tensor by tensor:
each tensor is dequantised, renamed, written into the current shard and let go. The folder holds
the same tensors, bit for bit, as ``from_pretrained(gguf_file=...)`` followed by
``save_pretrained`` (tested on the bundled SmolLM2).
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path

import numpy as np
import torch

from slimllm.runtime import trim_heap

SHARD_BYTES = 1 << 30  # 1 GiB: a shard being filled is the largest thing resident
CHUNK_ELEMENTS = 1 << 24  # rows dequantised together: gguf-py's temporaries are several times their output


def gguf_to_folder(gguf_path: str | Path, folder: str | Path, dtype: torch.dtype = torch.float32) -> None:
    """Write the model in ``gguf_path`` into ``folder`` (which must exist and be empty) as
    ``config.json``, ``generation_config.json``, safetensors shards with an index, and the tokenizer."""
    from gguf import GGUFReader, dequantize
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        load_gguf_checkpoint,
        read_field,
    )

    gguf_path, folder = Path(gguf_path), Path(folder)
    parsed = load_gguf_checkpoint(str(gguf_path), return_tensors=False)  # metadata only
    config_dict = dict(parsed["config"])
    config = AutoConfig.for_model(**config_dict)
    config.dtype = dtype
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype)
    reader = GGUFReader(str(gguf_path))
    architecture = read_field(reader, "general.architecture")[0]
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config_dict)
    names = get_gguf_hf_weights_map(skeleton, processor)
    wanted = set(skeleton.state_dict())
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    architecture_class = type(skeleton).__name__
    del skeleton

    shards: list[list[str]] = []
    shard: dict[str, torch.Tensor] = {}
    shard_bytes = total_bytes = 0

    def flush() -> None:
        nonlocal shard, shard_bytes
        if shard:
            save_file(shard, str(folder / f"shard-{len(shards):05d}.tmp"), metadata={"format": "pt"})
            shards.append(list(shard))
            shard, shard_bytes = {}, 0
            trim_heap()

    item_bytes = torch.tensor([], dtype=dtype).element_size()
    for tensor in reader.tensors:
        if shard and shard_bytes + int(tensor.n_elements) * item_bytes > SHARD_BYTES:
            flush()  # before dequantising: the full shard and the next tensor are never resident together
        result = processor.process(
            weights=_dequantize(tensor, dequantize),
            name=tensor.name,
            tensor_key_mapping=names,
            parsed_parameters={"config": config_dict, "tensors": {}},
        )
        _drop_pages(reader, tensor)
        name, weights = names.get(result.name), result.weights
        del result
        if name is None or name not in wanted or name in tied:
            del weights  # a skipped tensor (a tied head) must not stay alive into the next one's dequantising
            continue
        value = torch.from_numpy(weights if weights.flags.writeable else np.copy(weights)).to(dtype).contiguous()
        del weights
        shard[name] = value
        shard_bytes += value.nbytes
        total_bytes += value.nbytes
        del value  # the shard holds it; once flushed, nothing else may
    flush()

    weight_map = {}
    for index, shard_names in enumerate(shards):
        final = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
        (folder / f"shard-{index:05d}.tmp").rename(folder / final)
        weight_map.update(dict.fromkeys(shard_names, final))
    missing = wanted - tied - set(weight_map)
    if missing:
        raise ValueError(f"{gguf_path}: no tensors for {sorted(missing)[:5]} ({len(missing)} in all)")
    index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config.architectures = [architecture_class]
    config.save_pretrained(folder)
    GenerationConfig.from_model_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name).save_pretrained(folder)


def _drop_pages(reader, tensor) -> None:
    """Let the kernel drop the file pages of ``tensor`` read so far: the GGUF stays mapped for the
    whole conversion, and pages once read would otherwise count towards the process's memory
    until the end (the whole file, for a large model)."""
    handle = getattr(reader.data, "_mmap", None)
    advice = getattr(mmap, "MADV_DONTNEED", None)  # not on every platform
    if handle is None or advice is None or not hasattr(handle, "madvise"):
        return
    start = tensor.data_offset // mmap.PAGESIZE * mmap.PAGESIZE
    handle.madvise(advice, start, tensor.data_offset + tensor.n_bytes - start)


def _dequantize(tensor, dequantize) -> np.ndarray:
    """gguf-py's ``dequantize`` over row blocks of a quantised matrix, into one float array: the
    same numbers (quantisation blocks never span rows), without temporaries of the whole matrix
    (about 2 GB for a 151,936 x 1,536 Q6_K embedding)."""
    data = tensor.data
    row_elements = int(tensor.n_elements) // max(1, data.shape[0]) if data.ndim == 2 else 0
    if data.ndim != 2 or data.shape[0] * row_elements <= CHUNK_ELEMENTS:
        return dequantize(data, tensor.tensor_type)
    step = max(1, CHUNK_ELEMENTS // row_elements)
    first = dequantize(data[:step], tensor.tensor_type)
    out = np.empty((data.shape[0], *first.shape[1:]), dtype=first.dtype)
    out[:step] = first
    for start in range(step, data.shape[0], step):
        out[start : start + step] = dequantize(data[start : start + step], tensor.tensor_type)
    return out
