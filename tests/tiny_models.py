"""Tiny random models of each supported family (no downloads), shared by the tests."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from slimllm.modeling import pruned_classes

VOCAB = 96
TINY = dict(
    vocab_size=VOCAB,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=4,
    num_attention_heads=6,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=256,
)


def _randomise_norms(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random init leaves RMSNorm weights at 1; perturb them so tests see non-trivial norms."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.2 * torch.randn(param.shape, generator=generator))
    return model.eval()


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return _randomise_norms(LlamaForCausalLM(LlamaConfig(**{**TINY, "tie_word_embeddings": True, **overrides})), seed)


def tiny_mistral(seed: int = 1, **overrides) -> MistralForCausalLM:
    torch.manual_seed(seed)
    return _randomise_norms(MistralForCausalLM(MistralConfig(**{**TINY, "sliding_window": 16, **overrides})), seed)


def tiny_qwen2(seed: int = 2, **overrides) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**{**TINY, "tie_word_embeddings": False, **overrides}))
    with torch.no_grad():  # Qwen2 initialises its q/k/v biases to zero; make them matter
        for name, param in model.named_parameters():
            if name.endswith("_proj.bias"):
                param.normal_(0, 0.1)
    return _randomise_norms(model, seed)


def _tiny(model_class, config_class, seed: int, **values):
    torch.manual_seed(seed)
    return _randomise_norms(model_class(config_class(**{**TINY, **values})), seed)


def tiny_qwen3(seed: int = 3, **overrides) -> Qwen3ForCausalLM:
    return _tiny(Qwen3ForCausalLM, Qwen3Config, seed, tie_word_embeddings=True, **overrides)


# Gemma's sliding-window and global layers alternate; the window is shorter than test sequences.
_GEMMA_LAYERS = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


def tiny_gemma2(seed: int = 4, **overrides) -> Gemma2ForCausalLM:
    values = dict(sliding_window=16, layer_types=_GEMMA_LAYERS, query_pre_attn_scalar=8, pad_token_id=0)
    return _tiny(Gemma2ForCausalLM, Gemma2Config, seed, **{**values, **overrides})


def tiny_gemma3(seed: int = 5, **overrides) -> Gemma3ForCausalLM:
    values = dict(sliding_window=16, layer_types=_GEMMA_LAYERS, query_pre_attn_scalar=8, pad_token_id=0)
    return _tiny(Gemma3ForCausalLM, Gemma3TextConfig, seed, **{**values, **overrides})


def tiny_phi3(seed: int = 6, **overrides) -> Phi3ForCausalLM:
    return _tiny(Phi3ForCausalLM, Phi3Config, seed, pad_token_id=0, **overrides)


def tiny_olmo2(seed: int = 7, **overrides) -> Olmo2ForCausalLM:
    return _tiny(Olmo2ForCausalLM, Olmo2Config, seed, pad_token_id=0, **overrides)


FAMILIES = {
    "llama": tiny_llama,
    "mistral": tiny_mistral,
    "qwen2": tiny_qwen2,
    "qwen3": tiny_qwen3,
    "gemma2": tiny_gemma2,
    "gemma3_text": tiny_gemma3,
    "phi3": tiny_phi3,
    "olmo2": tiny_olmo2,
}


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


# -- byte-level tokenizer and LLaMA for the eval and bench tests ---------------------------------
EOS = "<eos>"


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte plus EOS: a real fast tokenizer with a 257-token vocabulary, no files."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    vocab[EOS] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, bos_token=EOS)


def tiny_byte_llama(vocab_size: int = 257, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised 2-layer LLaMA with GQA, small enough for many forwards per test."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    )
    return LlamaForCausalLM(config).eval()


# Per-layer shape records (config.layer_shapes) for pruned_random: an uneven query->kv map, one kv head.
UNEVEN = {"query_to_kv": [0, 1, 1], "intermediate_size": 24, "o_proj_bias": True, "down_proj_bias": True}
EMPTY_KV = {"query_to_kv": [0, 0], "intermediate_size": 8, "o_proj_bias": False, "down_proj_bias": True}


def pruned_random(family: str, shapes: list, seed: int = 0, **overrides):
    """A randomly initialised pruned model of ``family`` with the given per-layer shapes."""
    stock = FAMILIES[family](seed=seed, **overrides)
    config_class, model_class = pruned_classes(family)
    values = {k: v for k, v in stock.config.to_dict().items() if k not in ("model_type", "architectures")}
    torch.manual_seed(seed)
    model = model_class(config_class(**values, layer_shapes=shapes)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.1)
    return model
