"""LayerPruner: one layer cut as its allocation says, the budget kept on target across layers,
and the next layer's inputs exactly what the pruned layer computes."""

from __future__ import annotations

import copy

import torch

from slimllm.allocation import Allocation, layer_costs, removed_params
from slimllm.config import PruneConfig
from slimllm.layer_pruner import LayerPruner
from slimllm.layer_walk import capture_layer_inputs, run_layer
from slimllm.methods import build_method
from slimllm.models import adapter_for
from slimllm.runtime import count_parameters
from tiny_models import VOCAB, tiny_llama

CPU = torch.device("cpu")


def _setup(units: list[int], channels: list[int]):
    model = tiny_llama()  # 4 layers, 6 query heads on 2 kv heads (3 each), FFN 80
    adapter = adapter_for(model.config)
    slim = adapter.to_slim(model)
    config = PruneConfig(ratio=0.2, nsamples=8, seqlen=16, batch_size=4)
    method = build_method(config)
    costs = layer_costs(slim, adapter, config.gqa)
    allocation = Allocation(
        selected=[0, 1], ratios=[0.3, 0.3, 0.0, 0.0], units_to_prune=units, channels_to_prune=channels,
        r0=0.3, pruned_layers=2, alpha=10.0, target_removed=0, planned_removed=0,
    )  # fmt: skip
    data = torch.randint(0, VOCAB, (8, 16), generator=torch.Generator().manual_seed(9))
    batches = capture_layer_inputs(slim, adapter, data, 4, CPU)
    return slim, adapter, LayerPruner(adapter, method, config, allocation, costs, CPU), costs, batches


def _outputs(layer, index, batches):
    return run_layer(layer, index, batches)


def test_an_unplanned_layer_is_an_exact_no_op_and_passes_its_dense_outputs_on():
    slim, adapter, prune_layer, _, batches = _setup([0, 0, 0, 0], [0, 0, 0, 0])
    layer = adapter.layers(slim)[0]
    before = {name: tensor.clone() for name, tensor in layer.state_dict().items()}
    record, outputs = prune_layer(0, layer, batches, cosine=0.9)
    assert all(torch.equal(before[name], tensor) for name, tensor in layer.state_dict().items())
    assert record.kept_heads == list(range(6)) and record.kept_channels == list(range(80))
    expected = _outputs(copy.deepcopy(layer), 0, batches)
    for got, want in zip(outputs, expected, strict=True):
        assert torch.equal(got.hidden, want.hidden)


def test_the_outputs_passed_on_are_the_pruned_layers_own():
    slim, adapter, prune_layer, _, batches = _setup([2, 0, 0, 0], [20, 0, 0, 0])
    layer = adapter.layers(slim)[0]
    record, outputs = prune_layer(0, layer, batches, cosine=0.9)
    assert len(record.kept_heads) == 4 and len(record.kept_channels) == 60
    # replayed from kept activations inside the pruner; here run again from scratch
    for got, want in zip(outputs, _outputs(layer, 0, batches), strict=True):
        torch.testing.assert_close(got.hidden, want.hidden, rtol=1e-5, atol=1e-6)


def test_a_kv_head_that_goes_with_its_queries_is_paid_back_in_channels():
    # five of six query heads pruned in layer 0 leave one kv group without queries: its kv head
    # goes too, more than planned. The pruner spends that surplus on fewer FFN channels.
    slim, adapter, prune_layer, costs, batches = _setup([5, 0, 0, 0], [20, 0, 0, 0])
    layer = adapter.layers(slim)[0]
    before = count_parameters(layer)
    record, _ = prune_layer(0, layer, batches, cosine=0.9)
    removed = before - count_parameters(layer)
    planned = removed_params(costs[0], 5, 20, prune_layer.adds_bias)
    kv_gone = 2 - len(record.kept_kv_heads)
    assert kv_gone == 1
    kv_params = 2 * 8 * 48  # k and v rows of one 8-wide head on a 48-wide stream
    attention_surplus = kv_gone * kv_params
    channels = 80 - len(record.kept_channels)
    assert channels == 20 - round(attention_surplus / costs[0].channel_params) < 20
    # what the layer lost, counted by hand, and what the pruner says it is ahead of the plan
    assert removed == planned + attention_surplus - (20 - channels) * costs[0].channel_params
    assert prune_layer.surplus == removed - planned
    assert abs(prune_layer.surplus) <= costs[0].channel_params / 2
