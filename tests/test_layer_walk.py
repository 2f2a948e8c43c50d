"""slimllm.layer_walk: replaying a layer from its kept o_proj/down_proj inputs gives its outputs."""

import pytest
import torch

from slimllm.layer_walk import (
    LayerActivations,
    activations_for_layer,
    capture_layer_inputs,
    collect_attention_stats,
    collect_mlp_stats,
    propagate,
    replaying,
    run_layer,
)
from slimllm.models import adapter_for
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
