"""slimllm.layer_walk: replaying a layer from its kept o_proj/down_proj inputs gives its outputs."""

import pytest
import torch

from slimllm.layer_walk import (
    LayerActivations,
    LayerBatch,
    activations_for_layer,
    capture_layer_inputs,
    collect_attention_stats,
    collect_mlp_stats,
    dense_states,
    dense_states_with_attention_stats,
    propagate,
    replaying,
    run_layer,
)
from slimllm.models import adapter_for
from slimllm.stats import Moments
from tiny_models import FAMILIES, VOCAB


def _first_layer(family: str):
    model = FAMILIES[family]()
    adapter = adapter_for(model.config)
    slim = adapter.to_slim(model)
    windows = torch.randint(0, VOCAB, (6, 16), generator=torch.Generator().manual_seed(1))
    batches = capture_layer_inputs(slim, adapter, windows, batch_size=4, device="cpu")
    return adapter, adapter.layers(slim)[0], batches


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "phi3"])
def test_a_layer_replayed_from_its_kept_inputs_gives_the_outputs_it_computes(family):
    adapter, layer, batches = _first_layer(family)
    expected = run_layer(layer, 0, batches)
    kept = LayerActivations(device=torch.device("cpu"))
    collect_attention_stats(adapter, layer, 0, batches, [[0]], "cpu", kept)
    collect_mlp_stats(adapter, layer, 0, batches, "cpu", kept, paired_pass=True)
    assert len(kept.attention_input) == len(kept.mlp_hidden) == len(kept.mlp_output) == len(batches)
    calls = []
    o_proj = adapter.attention(layer).o_proj
    for module in adapter.attention_module(layer).modules():  # q/k/v (phi3: the fused qkv_proj)
        if isinstance(module, torch.nn.Linear) and module is not o_proj:
            module.register_forward_hook(lambda *_: calls.append("qkv"))
    adapter.mlp(layer).down_proj.register_forward_hook(lambda *_: calls.append("down"))
    replayed = propagate(adapter, layer, 0, batches, kept)
    assert calls == ["down"] * len(batches)  # q/k/v did not run again; down_proj ran on the kept inputs
    for got, want in zip(replayed, expected, strict=True):
        torch.testing.assert_close(got.hidden, want.hidden, rtol=1e-5, atol=1e-6)


def test_olmo2_keeps_no_attention_inputs_because_its_heads_share_norms():
    adapter, layer, batches = _first_layer("olmo2")
    kept = LayerActivations(device=torch.device("cpu"))
    collect_attention_stats(adapter, layer, 0, batches, [[0]], "cpu", kept)
    assert kept.attention_input is None


def test_replaying_restores_an_instance_level_forward():
    adapter, layer, _batches = _first_layer("llama")
    attention = layer.self_attn
    wrapper = attention.forward  # a bound method stored on the instance, as dispatch hooks do
    attention.forward = wrapper
    kept = LayerActivations(device=torch.device("cpu"), attention_input=[torch.zeros(1)])
    with replaying(adapter, layer, kept, mlp=False):
        assert attention.forward is not wrapper
    assert attention.__dict__["forward"] is wrapper
    with replaying(adapter, layer, LayerActivations(device=None), mlp=True):
        pass
    assert attention.__dict__["forward"] is wrapper


def test_activations_are_kept_only_under_the_cap():
    batches = [type("B", (), {"hidden": torch.zeros(2, 8, 4)})()]
    assert activations_for_layer(batches, 10, torch.device("cpu"), cap_bytes=2 * 8 * 10 * 4).keeping
    assert not activations_for_layer(batches, 10, torch.device("cpu"), cap_bytes=2 * 8 * 10 * 4 - 1).keeping


# -- the dense model alongside (--recovery ridge-dense) ------------------------------------------
def _after_attention(layer, batch: LayerBatch, index: int = 0) -> torch.Tensor:
    """The residual after the attention, from the stock modules (LLaMA-style layers)."""
    kwargs = batch.layer_kwargs[index]
    out = layer.self_attn(
        hidden_states=layer.input_layernorm(batch.hidden),
        position_embeddings=kwargs["position_embeddings"],
        attention_mask=kwargs.get("attention_mask"),
    )[0]
    return batch.hidden + out


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3"])
def test_dense_states_are_the_models_hidden_states(family):
    model = FAMILIES[family]()
    adapter = adapter_for(model.config)
    slim = adapter.to_slim(model)
    windows = torch.randint(0, VOCAB, (6, 16), generator=torch.Generator().manual_seed(2))
    batches = capture_layer_inputs(slim, adapter, windows, batch_size=4, device="cpu")
    with torch.no_grad():
        hidden_states = slim(input_ids=windows, output_hidden_states=True).hidden_states
    layers = adapter.layers(slim)
    inputs = batches
    for index, layer in enumerate(layers[:-1]):  # the last entry of hidden_states is after the final norm
        states = dense_states(adapter, layer, index, inputs)
        got = torch.cat([batch.hidden for batch in states.output])
        torch.testing.assert_close(got, hidden_states[index + 1], rtol=1e-5, atol=1e-6)
        for batch, after in zip(inputs, states.after_attention, strict=True):
            torch.testing.assert_close(after, _after_attention(layer, batch, index), rtol=1e-5, atol=1e-6)
        inputs = states.output


@pytest.mark.parametrize("split", [False, True])
def test_one_pass_gives_the_dense_states_and_the_attention_statistics_of_two(split):
    adapter, layer, batches = _first_layer("llama")
    units = [[0], [1], [2], [3]]
    alone_kept, fused_kept = LayerActivations(device=torch.device("cpu")), LayerActivations(device=torch.device("cpu"))
    states = dense_states(adapter, layer, 0, batches)
    stats = collect_attention_stats(adapter, layer, 0, batches, units, "cpu", alone_kept, split=split)
    calls = []
    adapter.attention(layer).o_proj.register_forward_hook(lambda *_: calls.append("o_proj"))
    fused_states, fused_stats = dense_states_with_attention_stats(
        adapter, layer, 0, batches, units, "cpu", fused_kept, split=split
    )
    assert calls == ["o_proj"] * len(batches)  # one pass over the layer
    assert fused_states.after_attention is None  # ridge-layer does not use them: not kept
    for got, want in zip(fused_states.output, states.output, strict=True):
        torch.testing.assert_close(got.hidden, want.hidden, rtol=0, atol=0)
    torch.testing.assert_close(fused_stats.o_input.covariance, stats.o_input.covariance, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fused_stats.o_input.mean, stats.o_input.mean, rtol=1e-12, atol=1e-14)
    assert fused_stats.units == units and (fused_stats.o_input_split is None) == (not split)
    if split:
        for part in ("fit", "held"):
            got, want = getattr(fused_stats.o_input_split, part), getattr(stats.o_input_split, part)
            torch.testing.assert_close(got.covariance, want.covariance, rtol=1e-12, atol=1e-14)
    for got, want in zip(fused_kept.attention_input, alone_kept.attention_input, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_dense_states_are_refused_where_a_norm_follows_the_attention():
    adapter, layer, batches = _first_layer("gemma2")
    with pytest.raises(ValueError, match="residual"):
        dense_states(adapter, layer, 0, batches)


def test_joint_moments_hold_the_distance_to_the_dense_model():
    """With the dense model's states alongside, the held-out-apart moments are those of
    [o_proj input, dense after-attention state − layer input] and [down_proj input, dense layer
    output − state after the attention], each computed here from the stock modules."""
    adapter, layer, batches = _first_layer("llama")
    noise = torch.Generator().manual_seed(3)
    dense_inputs = [LayerBatch(b.hidden + 0.1 * torch.randn(b.hidden.shape, generator=noise), b.layer_kwargs)
                    for b in batches]  # fmt: skip
    dense = dense_states(adapter, layer, 0, dense_inputs)
    o_inputs = []
    hook = layer.self_attn.o_proj.register_forward_pre_hook(lambda _m, args: o_inputs.append(args[0]))
    with torch.no_grad():
        mids = [_after_attention(layer, batch) for batch in batches]
    hook.remove()
    none = LayerActivations(device=None)
    attention = collect_attention_stats(adapter, layer, 0, batches, [[0]], "cpu", none, dense=dense)
    joint = [torch.cat([x, after - batch.hidden], -1) for x, after, batch in
             zip(o_inputs, dense.after_attention, batches, strict=True)]  # fmt: skip
    _assert_moments_of(attention.o_input_split, joint)
    assert attention.target_dims == layer.self_attn.o_proj.out_features

    mlp = collect_mlp_stats(adapter, layer, 0, batches, "cpu", none, paired_pass=False, dense=dense)
    with torch.no_grad():
        hidden = [_down_input(layer.mlp, layer.post_attention_layernorm(mid)) for mid in mids]
    joint = [torch.cat([h, out.hidden - mid], -1) for h, out, mid in zip(hidden, dense.output, mids, strict=True)]
    _assert_moments_of(mlp.hidden_split, joint)


def _down_input(mlp, x):
    return mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)


def _assert_moments_of(split, rows):
    direct = Moments(rows[0].shape[-1])
    for row in rows:
        direct.update(row)
    total = split.total
    torch.testing.assert_close(total.mean, direct.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total.covariance, direct.covariance, rtol=1e-5, atol=1e-6)
