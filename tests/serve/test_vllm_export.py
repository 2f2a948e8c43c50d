"""`slimllm export --to vllm` and the vLLM plug-in's per-layer view, without vLLM: the regrouped
folder must compute the same logits as the pruned one, and every layer must have equal groups."""

from __future__ import annotations

import pytest
import torch

import slimllm
from slimllm.export import ExportError
from slimllm.export.vllm import export_vllm, tensor_parallel_sizes
from slimllm.modeling import regular_group_size
from slimllm.serve.vllm_plugin import IrregularHeadsError, irregular_layers, layer_configs
from tiny_models import EMPTY_KV, FAMILIES, UNEVEN, VOCAB, byte_tokenizer, logits, pruned_random

# [0, 0, 1, 2, 2]: kv heads serving 2, 1 and 2 query heads; [0, 1, 1]: 1 and 2.
UNEVEN_5 = {"query_to_kv": [0, 0, 1, 2, 2], "intermediate_size": 40, "o_proj_bias": False, "down_proj_bias": True}
SHAPES = [UNEVEN, None, EMPTY_KV, UNEVEN_5]
SERVABLE = sorted(set(FAMILIES) - {"olmo2"})


def _saved(family, tmp_path, shapes=SHAPES):
    model = pruned_random(family, shapes, seed=3)
    slimllm.save(model, byte_tokenizer(), None, tmp_path / "pruned")
    return model, tmp_path / "pruned"


@pytest.mark.parametrize("family", SERVABLE)
def test_export_regroups_exactly(family, tmp_path):
    model, folder = _saved(family, tmp_path)
    report = export_vllm(folder, tmp_path / "vllm")
    served, _ = slimllm.load(tmp_path / "vllm")
    assert report.layers_rewritten == [0, 3]
    assert irregular_layers(served.config.layer_shapes) == []
    assert report.heads == [len(s["query_to_kv"]) for s in served.config.layer_shapes]
    # [0, 1, 1]: a zero query head or a copied kv head cost the same; the smaller KV cache wins.
    # [0, 0, 1, 2, 2]: 3 groups of 2 (one zero query head) beat 5 groups of 1 (two copied kv heads).
    assert served.config.layer_shapes[0]["query_to_kv"] == [0, 0, 1, 1]
    assert served.config.layer_shapes[3]["query_to_kv"] == [0, 0, 1, 1, 2, 2]
    assert (report.added_query_heads, report.added_kv_heads) == (2, 0)
    ids = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits(served, ids), logits(model, ids), rtol=1e-5, atol=1e-5)


def test_export_leaves_regular_layers_as_they_are(tmp_path):
    regular = {**UNEVEN, "query_to_kv": [0, 0, 1, 1]}
    model, folder = _saved("llama", tmp_path, [regular, None, EMPTY_KV, None])
    report = export_vllm(folder, tmp_path / "vllm")
    served, _ = slimllm.load(tmp_path / "vllm")
    assert report.layers_rewritten == [] and report.written_params == report.source_params
    for (name, tensor), (other, expected) in zip(served.state_dict().items(), model.state_dict().items(), strict=True):
        assert name == other and torch.equal(tensor, expected), name


def test_export_refuses_olmo2_uneven_layers_with_the_reason(tmp_path):
    _, folder = _saved("olmo2", tmp_path)
    with pytest.raises(ExportError, match=r"q/k norms span every head.*--gqa group"):
        export_vllm(folder, tmp_path / "vllm")
    assert not (tmp_path / "vllm").exists()


def test_export_refuses_a_dense_folder(tmp_path):
    FAMILIES["llama"]().save_pretrained(tmp_path / "dense")
    with pytest.raises(ExportError, match="not a pruned slimllm folder"):
        export_vllm(tmp_path / "dense", tmp_path / "vllm")


def test_plugin_layer_view_reads_each_layer_from_its_modules(tmp_path):
    """What vLLM is told about each layer equals what the layer's own projections hold."""
    model = pruned_random("qwen2", [{**UNEVEN, "query_to_kv": [0, 0, 1, 1]}, None, EMPTY_KV, None])
    configs = layer_configs(model.config)
    assert len(configs) == model.config.num_hidden_layers
    for config, layer in zip(configs, model.model.layers, strict=True):
        attn, head_dim = layer.self_attn, layer.self_attn.head_dim
        assert config.num_attention_heads == attn.q_proj.out_features // head_dim
        assert config.num_key_value_heads == attn.k_proj.out_features // head_dim
        assert config.intermediate_size == layer.mlp.down_proj.in_features
        assert regular_group_size(list(range(config.num_key_value_heads))) == 1
    assert model.config.num_attention_heads == 6  # the whole-model config is left as it was


def test_plugin_refuses_uneven_maps_and_ignores_dense_models():
    with pytest.raises(IrregularHeadsError, match=r"layers \[0, 3\].*slimllm export FOLDER --to vllm"):
        layer_configs(pruned_random("llama", SHAPES).config)
    assert layer_configs(pruned_random("llama", [None] * 4).config) is None


def test_tensor_parallel_sizes_follow_vllm_splitting_rules():
    # heads and FFN widths must divide; kv heads divide or are replicated (size a multiple of them)
    assert tensor_parallel_sizes([8, 4], [2, 1], [64, 32]) == [1, 2, 4]
    assert tensor_parallel_sizes([6, 4], [3, 2], [48, 40]) == [1]  # 3 kv heads split over 2: neither divides
    assert tensor_parallel_sizes([9, 9], [3, 3], [1536, 1530]) == [1, 3]
    assert tensor_parallel_sizes([8], [2], [43]) == [1]
