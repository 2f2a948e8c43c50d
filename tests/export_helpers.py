"""Pruned tiny folders for the export tests (shared by test_export_gguf.py and test_export_hf.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import slimllm
from tiny_models import VOCAB, tiny_llama, tiny_mistral, tiny_qwen2

FAMILY_MODELS = {"llama": tiny_llama, "mistral": tiny_mistral, "qwen2": tiny_qwen2}


def calibration() -> torch.Tensor:
    return torch.randint(0, VOCAB, (12, 24), generator=torch.Generator().manual_seed(7))


def pruned_folder(
    folder: Path, family: str = "llama", *, gqa: str = "query", ratio: float = 0.3, init: float = 0.1, **prune
) -> Path:
    """Prune a tiny random model of ``family`` and save it (no tokenizer) to ``folder``."""
    config = slimllm.PruneConfig.from_dict(dict(ratio=ratio, gqa=gqa, nsamples=12, seqlen=24, batch_size=5, **prune))
    model = FAMILY_MODELS[family](initializer_range=init)
    pruned, plan = slimllm.prune(model, None, config, data=calibration(), progress=False)
    slimllm.save(pruned, None, plan, folder)
    return folder


def layer_shapes(folder: Path) -> list:
    return json.loads((folder / "config.json").read_text())["layer_shapes"]


def remap_heads(folder: Path, maps: dict[int, list[int] | None]) -> Path:
    """Replace layers' query->kv maps in config.json; the weights keep their shapes, so the maps
    must keep each layer's numbers of query and kv heads (None: write a dense layer's record out)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for index, query_to_kv in maps.items():
        shape = config["layer_shapes"][index]
        if shape is None:  # a dense layer: spell its record out
            groups = config["num_attention_heads"] // config["num_key_value_heads"]
            shape = config["layer_shapes"][index] = {
                "query_to_kv": [h // groups for h in range(config["num_attention_heads"])],
                "intermediate_size": config["intermediate_size"],
                "o_proj_bias": False,
                "down_proj_bias": False,
            }
        if query_to_kv is None:
            continue
        old = shape["query_to_kv"]
        assert len(old) == len(query_to_kv) and max(old) == max(query_to_kv), (old, query_to_kv)
        shape["query_to_kv"] = query_to_kv
    path.write_text(json.dumps(config, indent=2))
    return folder


def reference_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    """The pruned model's logits in PyTorch (slimllm's class), full sequence, float32."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.float()


def tiny_tokenizer(vocab_size: int = VOCAB):
    """A byte-level BPE tokenizer with exactly ``vocab_size`` tokens, for tiny models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    chars = sorted(c for c in alphabet if (c.isalpha() and c.isascii()) or c in "ĠĊ.,!?")  # Ġ space, Ċ newline
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]
    tokens = specials + chars + ["".join(m) for m in merges]
    tokens += [f"x{i}" for i in range(vocab_size - len(tokens))]
    assert len(tokens) == vocab_size, len(tokens)
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>"
    )


def empty_ffn(folder: Path, index: int) -> Path:
    """Give layer ``index`` an FFN of width 0 (its down_proj bias, if any, stays)."""
    from safetensors.torch import load_file, save_file

    path = folder / "config.json"
    config = json.loads(path.read_text())
    if config["layer_shapes"][index] is None:
        remap_heads(folder, {index: None})
        config = json.loads(path.read_text())
    config["layer_shapes"][index]["intermediate_size"] = 0
    path.write_text(json.dumps(config, indent=2))
    tensors = load_file(str(folder / "model.safetensors"))
    p = f"model.layers.{index}.mlp."
    hidden = config["hidden_size"]
    tensors[p + "gate_proj.weight"] = torch.zeros(0, hidden)
    tensors[p + "up_proj.weight"] = torch.zeros(0, hidden)
    tensors[p + "down_proj.weight"] = torch.zeros(hidden, 0)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def drop_attention(folder: Path, index: int, *, keep_bias: bool) -> tuple[Path, Path]:
    """Two copies of ``folder`` in which layer ``index`` has no attention: ``(reference, headless)``.

    slimllm's class cannot hold a layer without heads, so the reference keeps the heads with a zero
    ``o_proj`` (the same function); the headless copy has ``query_to_kv: []`` and no q/k/v/o weights.
    ``keep_bias`` keeps the layer's ``o_proj`` bias (the layer then adds a constant), else drops it.
    """
    import shutil

    from safetensors.torch import load_file, save_file

    reference, headless = folder.with_name(folder.name + "-ref"), folder.with_name(folder.name + "-headless")
    for target in (reference, headless):
        shutil.copytree(folder, target)
        remap_heads(target, {index: None})
    p = f"model.layers.{index}.self_attn."
    for target in (reference, headless):
        path = target / "model.safetensors"
        tensors = load_file(str(path))
        config = json.loads((target / "config.json").read_text())
        shape = config["layer_shapes"][index]
        if not keep_bias:
            tensors.pop(p + "o_proj.bias", None)
            shape["o_proj_bias"] = False
        if target == reference:
            tensors[p + "o_proj.weight"] = torch.zeros_like(tensors[p + "o_proj.weight"])
        else:
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                tensors.pop(f"{p}{name}.weight", None)
                if name != "o_proj":
                    tensors.pop(f"{p}{name}.bias", None)
            shape["query_to_kv"] = []
        shape["o_proj_bias"] = p + "o_proj.bias" in tensors
        (target / "config.json").write_text(json.dumps(config, indent=2))
        save_file(tensors, str(path), metadata={"format": "pt"})
    return reference, headless
