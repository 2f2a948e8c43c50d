"""The pruned-model class: exact conversion of each family, uneven head maps, KV cache."""

import pytest
import torch

from conftest import VOCAB, logits, tiny_llama
from slimllm.modeling import SlimLlamaConfig, SlimLlamaForCausalLM
from slimllm.models import UnsupportedModelError, adapter_for, supported_model_types


def test_conversion_is_exact_for_every_family(tiny_model):
    ids = torch.randint(0, VOCAB, (2, 40))  # longer than Mistral's sliding window of 16
    slim = adapter_for(tiny_model.config).to_slim(tiny_model)
    assert isinstance(slim, SlimLlamaForCausalLM)
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


def _uneven_config():
    return SlimLlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, tie_word_embeddings=False,
        layer_shapes=[
            {"query_to_kv": [0, 1, 1], "intermediate_size": 24, "o_proj_bias": True, "down_proj_bias": True},
            None,
        ],
    )  # fmt: skip


def test_uneven_head_map_matches_explicit_reference():
    """Query head i must attend with key/value head query_to_kv[i]: compare against a dense
    layer whose k/v weights are duplicated per query head (plain multi-head attention)."""
    torch.manual_seed(0)
    model = SlimLlamaForCausalLM(_uneven_config()).eval()
    attn = model.model.layers[0].self_attn
    assert attn._expand_kv and attn.num_heads == 3 and attn.num_key_value_heads == 2
    reference = SlimLlamaForCausalLM(
        SlimLlamaConfig(
            **{
                **_uneven_config().to_dict(),
                "layer_shapes": [
                    {"query_to_kv": [0, 1, 2], "intermediate_size": 24, "o_proj_bias": True, "down_proj_bias": True},
                    None,
                ],
            }
        )
    ).eval()
    state = model.state_dict()
    rows = [kv * 8 + i for kv in [0, 1, 1] for i in range(8)]
    for name in ("k_proj", "v_proj"):
        state[f"model.layers.0.self_attn.{name}.weight"] = state[f"model.layers.0.self_attn.{name}.weight"][rows]
    reference.load_state_dict(state)
    ids = torch.randint(0, VOCAB, (2, 11))
    torch.testing.assert_close(logits(model, ids), logits(reference, ids))


def test_generation_with_cache_equals_recomputation():
    torch.manual_seed(1)
    model = SlimLlamaForCausalLM(_uneven_config()).eval()
    prompt = torch.randint(0, VOCAB, (1, 7))
    cached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached) and cached.shape[1] == 15


def test_return_dict_none_gives_an_output_object():
    """peft calls the model with return_dict=None, which must mean the default (an output object)."""
    torch.manual_seed(2)
    model = SlimLlamaForCausalLM(_uneven_config()).eval()
    ids = torch.randint(0, VOCAB, (1, 5))
    with torch.no_grad():
        assert model(input_ids=ids, return_dict=None).logits.shape == (1, 5, VOCAB)
        assert isinstance(model(input_ids=ids, return_dict=False), tuple)
