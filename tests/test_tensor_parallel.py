"""``--tensor-parallel N``: every pruned layer keeps heads, key/value heads and FFN width that N
devices split evenly (what vLLM's ``--tensor-parallel-size N`` requires), near the same target."""

from __future__ import annotations

import pytest
import torch

import slimllm
from slimllm.allocation import AllocationError
from slimllm.config import ConfigError, PruneConfig
from slimllm.export.vllm import export_vllm
from slimllm.methods import build_method
from slimllm.models import adapter_for
from tiny_models import VOCAB, byte_tokenizer, tiny_llama

DATA = torch.randint(0, VOCAB, (8, 24), generator=torch.Generator().manual_seed(5))


def _prune(model, **settings):
    config = PruneConfig.from_dict(dict(ratio=0.3, nsamples=8, seqlen=24, batch_size=4, gqa="group", **settings))
    return slimllm.prune(model, None, config, data=DATA, progress=False)


def _shapes(model):
    adapter = adapter_for(model.config)
    return [
        (adapter.attention(layer).num_heads, adapter.attention(layer).num_kv_heads, adapter.mlp(layer).width)
        for layer in adapter.layers(model)
    ]


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size", [2, 4])
def test_every_layer_splits_over_the_devices(size, tmp_path):
    dense = tiny_llama(num_attention_heads=8, num_key_value_heads=4, intermediate_size=96, num_hidden_layers=6)
    pruned, _ = _prune(dense, tensor_parallel=size, layers=6)
    free, _ = _prune(dense, layers=6)
    shapes = _shapes(pruned)
    assert all(h % size == 0 and kv % size == 0 and w % size == 0 for h, kv, w in shapes), shapes
    assert shapes != _shapes(dense)  # something was pruned
    removed, removed_free = _params(dense) - _params(pruned), _params(dense) - _params(free)
    # coarser steps, the same target: the FFN widths absorb the attention's rounding
    assert abs(removed - removed_free) <= 0.01 * removed_free, (removed, removed_free)
    slimllm.save(pruned, byte_tokenizer(), None, tmp_path / "pruned")
    assert size in export_vllm(tmp_path / "pruned", tmp_path / "vllm").tensor_parallel_sizes


def test_a_model_that_does_not_split_is_refused_before_pruning():
    with pytest.raises(AllocationError, match="--tensor-parallel 3: layer 0 has 2 key/value groups"):
        _prune(tiny_llama(), tensor_parallel=3)


def test_tensor_parallel_needs_whole_groups():
    with pytest.raises(ConfigError, match="tensor_parallel needs gqa='group'"):
        build_method(PruneConfig(ratio=0.2, options={"tensor_parallel": 2}))
