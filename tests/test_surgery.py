"""Surgery: smaller Linear layers that compute exactly what the dense ones do on what is kept."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slimllm.models import adapter_for
from slimllm.plan import Recovery
from slimllm.surgery import fold_into_linear, head_rows, prune_channels, prune_heads, slice_linear
from tiny_models import FAMILIES, TINY, VOCAB, logits

IDS = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(5))


def _linear(bias: bool) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(7, 5, bias=bias).double()


@pytest.mark.parametrize("bias", [False, True])
def test_slice_linear_computes_the_kept_outputs_of_the_kept_inputs(bias):
    linear, x = _linear(bias), torch.randn(3, 7, dtype=torch.float64)
    before = linear.weight.detach().clone()
    rows, cols = [0, 3, 4], [1, 2, 5, 6]
    sliced = slice_linear(linear, rows=rows, cols=cols)
    # by hand: the dense layer on inputs whose dropped features are zero, outputs ``rows``
    dropped = x.clone()
    dropped[:, [0, 3, 4]] = 0
    torch.testing.assert_close(sliced(x[:, cols]), linear(dropped)[:, rows], rtol=0, atol=1e-12)
    assert sliced.weight.shape == (3, 4) and torch.equal(linear.weight, before)
    sliced.weight.data.zero_()
    assert torch.equal(linear.weight, before)  # a copy, not a view of the caller's weights


@pytest.mark.parametrize("bias", [False, True])
def test_fold_into_linear_is_scale_times_output_plus_bias(bias):
    linear, x = _linear(bias), torch.randn(4, 7, dtype=torch.float64)
    scale, shift = torch.linspace(0.5, 1.5, 5, dtype=torch.float64), torch.arange(5, dtype=torch.float64)
    folded = fold_into_linear(linear, Recovery(scale=scale, bias=shift))
    torch.testing.assert_close(folded(x), scale * linear(x) + shift, rtol=0, atol=1e-12)


def test_fold_into_linear_with_a_refitted_weight_replaces_the_projection():
    linear, x = _linear(False), torch.randn(4, 7, dtype=torch.float64)
    weight, shift = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    folded = fold_into_linear(linear, Recovery(scale=None, bias=shift, weight=weight))
    torch.testing.assert_close(folded(x), x @ weight.T + shift, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="does not fit the pruned projection"):
        fold_into_linear(linear, Recovery(scale=None, bias=shift, weight=weight[:, :6]))


def _masked(model, layer_index: int, *, heads=None, channels=None):
    """The dense model with the removed heads' o_proj columns (or the removed channels'
    down_proj columns) zeroed: what the pruned layer must compute, without any surgery."""
    masked = copy.deepcopy(model)
    adapter = adapter_for(masked.config)
    layer = adapter.layers(masked)[layer_index]
    with torch.no_grad():
        if heads is not None:
            parts = adapter.attention(layer)
            gone = [h for h in range(parts.num_heads) if h not in heads]
            parts.o_proj.weight[:, head_rows(gone, parts.head_dim)] = 0
        if channels is not None:
            parts = adapter.mlp(layer)
            parts.down_proj.weight[:, [c for c in range(parts.width) if c not in channels]] = 0
    return masked


# OLMo 2's q/k norms take their mean square over every head of the projection, so a pruned layer
# normalises over the kept heads: test_prune's masked reference (its _RmsOverRows) covers it.
@pytest.mark.parametrize("family", sorted(set(FAMILIES) - {"olmo2"}))
def test_pruned_heads_compute_what_the_masked_dense_layer_does(family):
    model = FAMILIES[family]()
    adapter = adapter_for(model.config)
    slim = adapter.to_slim(model)
    layer = adapter.layers(slim)[1]
    # queries 0, 1, 2 read kv head 0 and 3, 4, 5 kv head 1 (6 heads, 2 kv heads): keeping 1, 4, 5
    # keeps both kv heads; keeping 3, 5 drops kv head 0
    for kept, kv in (([1, 4, 5], [0, 1]), ([3, 5], [1])):
        pruned = copy.deepcopy(slim)
        kept_kv, query_to_kv = prune_heads(adapter, adapter.layers(pruned)[1], kept)
        assert kept_kv == kv and query_to_kv == [kv.index(h // 3) for h in kept]
        adapter.sync_config(pruned)
        assert adapter.attention(adapter.layers(pruned)[1]).num_heads == len(kept)
        expected = logits(_masked(model, 1, heads=kept), IDS)
        torch.testing.assert_close(logits(pruned, IDS), expected, rtol=1e-5, atol=1e-5)
    assert adapter.attention(layer).num_heads == TINY["num_attention_heads"]  # the source is untouched


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_pruned_channels_compute_what_the_masked_dense_ffn_does(family):
    model = FAMILIES[family]()
    adapter = adapter_for(model.config)
    pruned = adapter.to_slim(model)
    kept = list(range(0, TINY["intermediate_size"], 3))
    prune_channels(adapter, adapter.layers(pruned)[2], kept)
    adapter.sync_config(pruned)
    assert adapter.mlp(adapter.layers(pruned)[2]).width == len(kept)
    expected = logits(_masked(model, 2, channels=kept), IDS)
    torch.testing.assert_close(logits(pruned, IDS), expected, rtol=1e-5, atol=1e-5)
