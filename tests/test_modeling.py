"""Pruned models: the family's stock modules with per-layer shapes; exact conversion, uneven head
maps, KV cache, attention implementations, legacy folders."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from slimllm.io import _legacy_config
from slimllm.modeling import is_pruned_config
from slimllm.models import UnsupportedModelError, adapter_for, family_of, supported_model_types
from slimllm.surgery import slice_linear
from tiny_models import EMPTY_KV, FAMILIES, UNEVEN, VOCAB, logits, pruned_random, tiny_llama


def test_conversion_is_exact_for_every_family(tiny_model):
    ids = torch.randint(0, VOCAB, (2, 40))  # longer than Mistral's sliding window of 16
    slim = adapter_for(tiny_model.config).to_slim(tiny_model)
    assert isinstance(slim, type(tiny_model)) and is_pruned_config(slim.config)
    assert family_of(slim.config) == tiny_model.config.model_type
    torch.testing.assert_close(logits(slim, ids), logits(tiny_model, ids), rtol=0, atol=0)


def test_conversion_shares_storage_and_never_moves_the_input():
    model = tiny_llama()
    slim = adapter_for(model.config).to_slim(model)
    q_dense = model.model.layers[0].self_attn.q_proj.weight
    q_slim = slim.model.layers[0].self_attn.q_proj.weight
    assert q_dense.data_ptr() == q_slim.data_ptr() and q_dense is not q_slim
    slim.to(torch.float64)
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32


def test_unknown_architecture_lists_supported():
    from transformers import GPT2Config

    with pytest.raises(UnsupportedModelError) as error:
        adapter_for(GPT2Config())
    message = str(error.value)
    assert "gpt2" in message and all(name in message for name in supported_model_types())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_pruned_layers_are_the_family_stock_modules(family):
    model = pruned_random(family, [UNEVEN, None, EMPTY_KV, None])
    adapter = adapter_for(model.config)
    dense_layer_class = type(FAMILIES[family]().model.layers[0])
    assert all(type(layer) is dense_layer_class for layer in model.model.layers)
    uneven, empty_kv = adapter.attention(model.model.layers[0]), adapter.attention(model.model.layers[2])
    assert uneven.q_proj.out_features == 3 * 8 and uneven.k_proj.out_features == 2 * 8
    assert uneven.query_to_kv == [0, 1, 1] and uneven.o_proj.bias is not None
    assert adapter.mlp(model.model.layers[0]).width == 24
    assert empty_kv.k_proj.out_features == 8 and empty_kv.o_proj.bias is None


# OLMo 2's k norm spans all key/value heads at once, so duplicating heads would change it: no
# duplicated-weights reference exists there (its uneven layers are covered by the cache test).
@pytest.mark.parametrize("family", sorted(set(FAMILIES) - {"olmo2"}))
def test_uneven_head_map_matches_explicit_reference(family):
    """Query head i must attend with key/value head query_to_kv[i]: compare against the same layer
    whose k/v weights are duplicated per query head (plain multi-head attention)."""
    model = pruned_random(family, [UNEVEN, None, None, None])
    reference = copy.deepcopy(model)
    adapter = adapter_for(model.config)
    layer = reference.model.layers[0]
    parts = adapter.attention(layer)
    rows = [kv * 8 + i for kv in UNEVEN["query_to_kv"] for i in range(8)]
    adapter.set_attention(
        layer,
        k_proj=slice_linear(parts.k_proj, rows=rows),
        v_proj=slice_linear(parts.v_proj, rows=rows),
        query_to_kv=[0, 1, 2],
    )
    assert adapter.attention(layer).k_proj.out_features == 3 * 8
    assert layer.self_attn.config._attn_implementation != "slimllm_uneven_gqa"
    ids = torch.randint(0, VOCAB, (2, 30))
    torch.testing.assert_close(logits(model, ids), logits(reference, ids))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generation_with_cache_equals_recomputation(family):
    model = pruned_random(family, [UNEVEN, None, EMPTY_KV, UNEVEN], seed=1)
    prompt = torch.randint(0, VOCAB, (2, 7))
    cached = model.generate(prompt, max_new_tokens=20, do_sample=False, use_cache=True)  # past Mistral's window
    uncached = model.generate(prompt, max_new_tokens=20, do_sample=False, use_cache=False)
    assert cached.shape[1] == 27 and torch.equal(cached, uncached)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_every_attention_implementation_runs_uneven_layers(implementation):
    model = pruned_random("llama", [UNEVEN, None, EMPTY_KV, UNEVEN], seed=2)
    ids = torch.randint(0, VOCAB, (2, 12))
    reference = logits(model, ids)
    model.set_attn_implementation(implementation)
    assert model.model.layers[0].self_attn.config._attn_implementation == "slimllm_uneven_gqa"
    assert model.model.layers[1].self_attn.config._attn_implementation == implementation
    torch.testing.assert_close(logits(model, ids), reference, rtol=1e-5, atol=1e-5)


def test_return_dict_none_gives_an_output_object():
    """peft calls the model with return_dict=None, which must mean the default (an output object)."""
    model = pruned_random("llama", [UNEVEN, None, None, None], seed=3)
    ids = torch.randint(0, VOCAB, (1, 5))
    with torch.no_grad():
        assert model(input_ids=ids, return_dict=None).logits.shape == (1, 5, VOCAB)
        assert isinstance(model(input_ids=ids, return_dict=False), tuple)


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_folders_written_by_slimllm_0_1_still_load(family, tmp_path):
    """slimllm 0.1 saved every family as ``slimllm_llama`` with qkv_bias/sliding_window fields."""
    model = pruned_random(family, [UNEVEN, None, EMPTY_KV, None], seed=4)
    model.save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    values.update(model_type="slimllm_llama", qkv_bias=family == "qwen2", architectures=["SlimLlamaForCausalLM"])
    if family == "qwen2":
        values["sliding_window"] = None
    (tmp_path / "config.json").write_text(json.dumps(values))
    with pytest.raises(ValueError, match=r"slimllm 0\.1"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, **_legacy_config(tmp_path)).eval()
    ids = torch.randint(0, VOCAB, (2, 30))
    assert family_of(reloaded.config) == family
    torch.testing.assert_close(logits(reloaded, ids), logits(model, ids), rtol=0, atol=0)
