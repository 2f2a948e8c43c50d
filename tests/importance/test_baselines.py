"""Baseline criteria against hand computations on materialised activations, and end to end."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import slimllm
from slimllm import PruneConfig
from slimllm.allocation import AllocationError, FlapAllocationOptions, LayerCosts, removed_params
from slimllm.importance import AttentionStats, MlpStats
from slimllm.methods import available_methods, build_method, flap, parse_method, simple, taylor
from slimllm.models import adapter_for
from slimllm.prune import count_parameters
from slimllm.stats import Moments
from slimllm.surgery import fold_into_linear
from tiny_models import VOCAB, logits, tiny_llama

N_TOKENS = 64


@pytest.fixture
def layer_parts():
    """Layer 1 of a converted tiny LLaMA: 6 query heads of 8 dims (2 kv heads), 80 channels."""
    slim = adapter_for(tiny_llama().config).to_slim(tiny_llama())
    adapter = adapter_for(slim.config)
    layer = adapter.layers(slim)[1]
    return adapter.attention(layer), adapter.mlp(layer)


def _inputs(dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(dim, generator=g) * 3  # features of very different size, so scores differ
    return (torch.randn(N_TOKENS, dim, generator=g) * scale + torch.randn(dim, generator=g)).double()


def _attention_stats(attn, x: torch.Tensor, units=None) -> AttentionStats:
    moments = Moments(x.shape[1])
    moments.update(x[:40])
    moments.update(x[40:])  # streamed in two batches, as the pipeline does
    return AttentionStats(moments, attn, units or [[h] for h in range(attn.num_heads)])


def _mlp_stats(mlp, h: torch.Tensor) -> MlpStats:
    d = mlp.down_proj.out_features
    inputs, output, hidden = Moments(d, full=False), Moments(d), Moments(h.shape[1], full=False)
    hidden.update(h[:30])
    hidden.update(h[30:])
    inputs.update(_inputs(d, 100))
    output.update(_inputs(d, 101))
    return MlpStats(inputs, hidden, output, mlp)


def _lowest_pruned(scores: list[float], num_prune: int) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    return sorted(order[num_prune:])


# -- criteria against hand computations ------------------------------------------------------------
def test_magnitude_is_the_summed_column_norm_of_the_output_projection(layer_parts):
    attn, mlp = layer_parts
    w_o, w_down = attn.o_proj.weight.double(), mlp.down_proj.weight.double()
    hand_heads = [
        sum(math.sqrt(sum(w_o[i, c].item() ** 2 for i in range(w_o.shape[0]))) for c in range(8 * h, 8 * h + 8))
        for h in range(6)
    ]
    selection = simple.MagnitudeHeads().select(_attention_stats(attn, _inputs(48, 0)), 2)
    assert selection.scores == pytest.approx(hand_heads, rel=1e-12)
    assert selection.kept == _lowest_pruned(hand_heads, 2)
    hand_channels = [w_down[:, j].norm().item() for j in range(80)]
    selection = simple.MagnitudeChannels().select(_mlp_stats(mlp, _inputs(80, 1)), 30)
    assert selection.scores == pytest.approx(hand_channels, rel=1e-12)
    assert selection.kept == _lowest_pruned(hand_channels, 30)


def test_wanda_sp_weighs_weights_by_input_norms(layer_parts):
    attn, mlp = layer_parts
    x, h = _inputs(48, 2), _inputs(80, 3)
    w_o, w_down = attn.o_proj.weight.double(), mlp.down_proj.weight.double()
    column = [(w_o[:, c].abs() * x[:, c].norm()).mean().item() for c in range(48)]
    hand_heads = [sum(column[8 * k : 8 * k + 8]) for k in range(6)]
    selection = simple.WandaSpHeads().select(_attention_stats(attn, x), 3)
    assert selection.scores == pytest.approx(hand_heads, rel=1e-9)
    assert selection.kept == _lowest_pruned(hand_heads, 3)
    hand_channels = [(w_down[:, j].abs() * h[:, j].norm()).mean().item() for j in range(80)]
    selection = simple.WandaSpChannels().select(_mlp_stats(mlp, h), 20)
    assert selection.scores == pytest.approx(hand_channels, rel=1e-9)
    assert selection.kept == _lowest_pruned(hand_channels, 20)


def test_flap_standardises_the_fluctuation_metric(layer_parts):
    attn, mlp = layer_parts
    x, h = _inputs(48, 4), _inputs(80, 5)
    w_o, w_down = attn.o_proj.weight.double(), mlp.down_proj.weight.double()

    def standardised(values):
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        return [(v - mean) / std for v in values]

    def var(col):  # population variance over the tokens
        return ((col - col.mean()) ** 2).mean().item()

    wifv = [var(x[:, c]) * (w_o[:, c] ** 2).sum().item() for c in range(48)]
    z = standardised([v**2 for v in wifv])  # FLAP squares the attention metric
    hand_heads = [sum(z[8 * k : 8 * k + 8]) / 8 for k in range(6)]
    selection = flap.FlapHeads().select(_attention_stats(attn, x), 2)
    assert selection.scores == pytest.approx(hand_heads, rel=1e-8, abs=1e-10)
    assert selection.kept == _lowest_pruned(hand_heads, 2)
    hand_channels = standardised([var(h[:, j]) * (w_down[:, j] ** 2).sum().item() for j in range(80)])
    selection = flap.FlapChannels().select(_mlp_stats(mlp, h), 25)
    assert selection.scores == pytest.approx(hand_channels, rel=1e-8, abs=1e-10)
    assert selection.kept == _lowest_pruned(hand_channels, 25)


def test_group_units_sum_their_heads(layer_parts):
    attn, _ = layer_parts
    x = _inputs(48, 6)
    units = [[0, 1, 2], [3, 4, 5]]
    per_head = simple.MagnitudeHeads().select(_attention_stats(attn, x), 0).scores
    grouped = simple.MagnitudeHeads().select(_attention_stats(attn, x, units), 1)
    assert grouped.scores == pytest.approx([sum(per_head[:3]), sum(per_head[3:])])
    assert grouped.kept == [max(range(2), key=lambda u: grouped.scores[u])]


def test_flap_bias_compensation_restores_the_mean_output(layer_parts):
    """With the removed inputs constant (equal to their mean), pruned + bias = dense exactly."""
    attn, mlp = layer_parts
    x = _inputs(48, 7)
    kept_heads = [0, 2, 3, 5]
    removed_cols = [c for h in (1, 4) for c in range(8 * h, 8 * h + 8)]
    x[:, removed_cols] = x[:, removed_cols].mean(0)
    recovery = flap.BiasCompensation().attention(_attention_stats(attn, x), kept_heads)
    kept_cols = [c for h in kept_heads for c in range(8 * h, 8 * h + 8)]
    pruned = torch.nn.Linear(len(kept_cols), 48, bias=False).double()
    pruned.weight = torch.nn.Parameter(attn.o_proj.weight.double()[:, kept_cols])
    folded = fold_into_linear(pruned, recovery)
    dense = x @ attn.o_proj.weight.double().T
    torch.testing.assert_close(folded(x[:, kept_cols]), dense, rtol=1e-10, atol=1e-10)

    h = _inputs(80, 8)
    kept = list(range(0, 80, 2))
    h[:, 1::2] = h[:, 1::2].mean(0)
    recovery = flap.BiasCompensation().mlp(_mlp_stats(mlp, h), kept, None)
    assert torch.equal(recovery.scale, torch.ones(48, dtype=torch.float64))
    expected = mlp.down_proj.weight.double()[:, 1::2] @ h[0, 1::2]
    torch.testing.assert_close(recovery.bias, expected, rtol=1e-10, atol=1e-10)


def test_taylor_scores_match_autograd_on_the_dense_model(calib_data):
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    slim = adapter_for(model.config).to_slim(model)
    adapter = adapter_for(slim.config)
    flags = [p.requires_grad for p in slim.parameters()]
    scores = taylor.TaylorScores(batch_size=len(calib_data))  # one batch: the loss is the plain mean
    scores.prepare(slim, adapter, None, calib_data, "cpu")
    assert [p.requires_grad for p in slim.parameters()] == flags  # restored
    assert all(p.grad is None for p in slim.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    reference = copy.deepcopy(model).double()
    reference(input_ids=calib_data, labels=calib_data).loss.backward()
    for layer, slim_layer in zip(reference.model.layers, adapter.layers(slim), strict=True):
        attn, mlp = layer.self_attn, layer.mlp

        def sal(linear):
            return (linear.weight * linear.weight.grad).abs()

        q, k, v, o = sal(attn.q_proj), sal(attn.k_proj), sal(attn.v_proj), sal(attn.o_proj)
        hand = []
        for head in range(6):
            kv = head // 3  # 6 query heads share 2 kv heads
            shared = (k[8 * kv : 8 * kv + 8].sum() + v[8 * kv : 8 * kv + 8].sum()) / 3
            hand.append((q[8 * head : 8 * head + 8].sum() + o[:, 8 * head : 8 * head + 8].sum() + shared).item())
        got = scores.heads[slim_layer.self_attn.o_proj]
        assert got.tolist() == pytest.approx(hand, rel=1e-3)
        channels = sal(mlp.gate_proj).sum(1) + sal(mlp.up_proj).sum(1) + sal(mlp.down_proj).sum(0)
        torch.testing.assert_close(scores.channels[slim_layer.mlp.down_proj], channels.detach(), rtol=1e-3, atol=1e-9)
    assert scores.memory["total"] > scores.memory["weights"] > 0


def test_taylor_prepare_logs_its_memory_need(calib_data, caplog):
    with caplog.at_level("WARNING", logger="slimllm.methods"):
        slimllm.prune(tiny_llama(), None, _config(method="taylor"), data=calib_data, progress=False)
    assert any("taylor: the backward pass" in r.getMessage() and "MiB" in r.getMessage() for r in caplog.records)


def test_random_is_seeded():
    a, b, c = simple.RandomScores(3), simple.RandomScores(3), simple.RandomScores(4)
    assert torch.equal(a.draw(10), b.draw(10)) and not torch.equal(a.draw(10), c.draw(10))


# -- FLAP's adaptive structure ---------------------------------------------------------------------
def test_flap_allocation_removes_the_lowest_scores_across_layers_until_the_target():
    costs = [
        LayerCosts(num_units=4, unit_params=100, width=10, channel_params=10, attn_bias_added=0, mlp_bias_added=0)
    ] * 2
    allocation = flap.FlapAllocation(adds_bias=False)
    allocation.head_scores = [torch.tensor([-2.0, 0.5, 1.0, 2.0]), torch.tensor([0.4, 1.1, 1.2, 1.3])]
    allocation.channel_scores = [torch.linspace(-1.0, 1.5, 10), torch.linspace(0.0, 3.0, 10)]
    config = PruneConfig(ratio=0.25, options={"round_to": 1})
    dense = 1200  # 2 layers × (400 + 100) prunable + 200 other
    result = allocation(None, costs, dense, config)
    # in score order, each structure weighing its parameters, up to the prefix closest to 300
    scores = sorted(
        [(float(s), 0, True) for s in allocation.head_scores[0]]
        + [(float(s), 1, True) for s in allocation.head_scores[1]]
        + [(float(s), 0, False) for s in allocation.channel_scores[0]]
        + [(float(s), 1, False) for s in allocation.channel_scores[1]]
    )
    removed, units, chans = 0, [0, 0], [0, 0]
    for _, layer, is_head in scores:
        cost = 100 if is_head else 10
        if removed + cost - 300 > 300 - removed:
            break
        removed += cost
        if is_head:
            units[layer] += 1
        else:
            chans[layer] += 1
    assert result.units_to_prune == units and result.channels_to_prune == chans
    assert result.planned_removed == removed == 280  # one more head (100) would overshoot by 80
    assert sum(removed_params(c, u, k, False) for c, u, k in zip(costs, units, chans, strict=True)) == 280
    assert units[0] >= 1 and result.selected == [0, 1]


def test_flap_allocation_keeps_one_unit_per_layer():
    costs = [LayerCosts(num_units=2, unit_params=100, width=4, channel_params=10, attn_bias_added=0, mlp_bias_added=0)]
    allocation = flap.FlapAllocation(adds_bias=False)
    allocation.head_scores = [torch.tensor([-5.0, -4.0])]
    allocation.channel_scores = [torch.tensor([0.0, 1.0, 2.0, 3.0])]
    result = allocation(None, costs, 300, PruneConfig(ratio=0.4))
    assert result.units_to_prune == [1] and result.channels_to_prune == [2]  # the second head is spared
    with pytest.raises(AllocationError, match="cannot remove"):
        allocation(None, costs, 300, PruneConfig(ratio=0.5))  # 3 of 4 channels + 1 head remove only 130


# -- methods end to end ----------------------------------------------------------------------------
def _config(**overrides):
    return PruneConfig.from_dict({"ratio": 0.3, "nsamples": 12, "seqlen": 24, "batch_size": 5, **overrides})


def test_method_names_and_allocations():
    assert available_methods() == ["slimllm", "obs", "magnitude", "wanda-sp", "flap", "taylor", "random"]
    assert parse_method("wanda-sp@eq11") == ("wanda-sp", "eq11")
    assert parse_method("magnitude@slimllm") == ("magnitude", "eq11")
    expected = {"magnitude": "uniform", "wanda-sp": "uniform", "taylor": "uniform", "random": "uniform", "flap": "flap"}
    for name, allocation in expected.items():
        assert build_method(_config(method=name)).allocation == allocation
    assert build_method(_config(method="flap", uniform=True)).allocation == "uniform"
    assert build_method(_config(method="slimllm@flap")).allocation == "flap"
    for bad in ("nope", "magnitude@nope"):
        with pytest.raises(ValueError, match="unknown"):
            build_method(_config(method=bad))


@pytest.mark.parametrize("method", ["magnitude", "wanda-sp", "flap", "taylor", "random", "wanda-sp@eq11"])
def test_each_baseline_prunes_on_target_and_replays(method, calib_data):
    model = tiny_llama()
    pruned, plan = slimllm.prune(model, None, _config(method=method), data=calib_data, progress=False)
    dense = count_parameters(model)
    assert abs(plan.report["params"]["removed"] - 0.3 * dense) <= 2 * 8 * 48  # within ~ a head's parameters
    rows = plan.report["layers"]
    if build_method(_config(method=method)).allocation == "uniform":
        assert (
            len({r["heads"] for r in rows}) == 1
            and max(r["channels"] for r in rows) - min(r["channels"] for r in rows) <= 1
        )
    else:
        assert len({(r["heads"], r["channels"]) for r in rows}) > 1
    assert (method == "flap") == any(r.attn_recovery is not None or r.mlp_recovery is not None for r in plan.layers)
    ids = torch.randint(0, VOCAB, (2, 16))
    torch.testing.assert_close(logits(slimllm.apply_plan(model, plan), ids), logits(pruned, ids), rtol=1e-5, atol=1e-5)


def test_eq11_suffix_gives_a_baseline_slimllm_layer_selection(calib_data):
    _, slim_plan = slimllm.prune(tiny_llama(), None, _config(), data=calib_data, progress=False)
    _, wanda_plan = slimllm.prune(tiny_llama(), None, _config(method="wanda-sp@eq11"), data=calib_data, progress=False)
    assert slim_plan.report["allocation"]["selected"] == wanda_plan.report["allocation"]["selected"]
    assert [round(r.ratio, 6) for r in slim_plan.layers] == pytest.approx(
        [round(r.ratio, 6) for r in wanda_plan.layers], abs=0.02
    )


def test_taylor_refuses_fused_projections_instead_of_scoring_zeros(calib_data):
    from slimllm.models import UnsupportedModelError
    from tiny_models import tiny_phi3

    with pytest.raises(UnsupportedModelError, match="fuses"):
        slimllm.prune(tiny_phi3(), None, PruneConfig(ratio=0.3, method="taylor"), data=calib_data, progress=False)


def test_flap_allocation_rounds_kept_widths_to_multiples():
    costs = [
        LayerCosts(num_units=4, unit_params=100, width=16, channel_params=10, attn_bias_added=0, mlp_bias_added=0)
    ] * 2

    def allocation(round_to: int):
        allocator = flap.FlapAllocation(adds_bias=False, options=FlapAllocationOptions(round_to=round_to))
        allocator.head_scores = [torch.tensor([5.0, 5.0, 5.0, 5.0])] * 2  # heads out of reach
        allocator.channel_scores = [torch.linspace(-1.0, 1.5, 16), torch.linspace(0.4, 3.0, 16)]
        return allocator(None, costs, 1000, PruneConfig(ratio=0.1))

    exact, rounded = allocation(1), allocation(4)
    for pruned_exactly, pruned in zip(exact.channels_to_prune, rounded.channels_to_prune, strict=True):
        if pruned_exactly == 0:
            assert pruned == 0  # a layer FLAP leaves whole stays whole
        else:  # the kept width goes to the nearest multiple of 4 (at least 4)
            keep = 16 - pruned_exactly
            assert 16 - pruned == max(4, 4 * round(keep / 4)) and (16 - pruned) % 4 == 0
    assert sum(exact.channels_to_prune) == 10  # 10 channels of 10 parameters: 10% of 1000
