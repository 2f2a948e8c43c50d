"""Tiny random models of each supported family; no downloads."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

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


FAMILIES = {"llama": tiny_llama, "mistral": tiny_mistral, "qwen2": tiny_qwen2}


@pytest.fixture(params=sorted(FAMILIES))
def tiny_model(request):
    return FAMILIES[request.param]()


@pytest.fixture
def calib_data():
    return torch.randint(0, VOCAB, (12, 24), generator=torch.Generator().manual_seed(7))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits
