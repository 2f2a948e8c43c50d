"""The bundled real models, SmolLM2-135M (LLaMA with GQA) and Gemma-3-270M: ratios, reloading, generation."""

import pytest
import torch

import slimllm
from slimllm.prune import count_parameters

pytestmark = pytest.mark.real_model

D, HEAD_DIM = 576, 64
ONE_HEAD = 2 * HEAD_DIM * D  # a query head's q rows and o columns: 73,728 parameters


@pytest.fixture(scope="module")
def smollm2():
    return slimllm.load("smollm2-135m")


def test_loads_as_documented(smollm2):
    model, tokenizer = smollm2
    assert model.config.model_type == "llama" and count_parameters(model) == 134_515_008
    ids = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1] :])


@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_realised_ratio_and_reload(smollm2, ratio, tmp_path):
    model, tokenizer = smollm2
    config = slimllm.PruneConfig(ratio=ratio, calib="lambada", nsamples=8, seqlen=32)
    pruned, plan = slimllm.prune(model, tokenizer, config, progress=False)
    dense = count_parameters(model)
    removed = dense - count_parameters(pruned)
    assert abs(removed - ratio * dense) <= ONE_HEAD
    assert abs(plan.report["params"]["realised_ratio"] - ratio) < 0.005
    assert max(row["ratio"] for row in plan.report["layers"]) <= 0.9

    from transformers import AutoModelForCausalLM

    out = slimllm.save(pruned, tokenizer, plan, tmp_path / f"smollm2-{ratio}")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    ids = tokenizer("Once upon a time there was a", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, pruned(ids).logits, rtol=0, atol=0)
    generated = reloaded.generate(ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 5


def test_kept_activations_change_nothing_on_smollm2(smollm2):
    """Replaying kept o_proj/down_proj inputs gives the recomputed plan and weights bit for bit."""
    model, tokenizer = smollm2
    results = []
    for cache_gb in (4.0, 0.0):
        config = slimllm.PruneConfig(ratio=0.2, calib="lambada", nsamples=8, seqlen=32, cache_gb=cache_gb)
        pruned, plan = slimllm.prune(model, tokenizer, config, progress=False)
        results.append(([layer.to_json() for layer in plan.layers], pruned.state_dict()))
    (kept_plan, kept_state), (recomputed_plan, recomputed_state) = results
    assert kept_plan == recomputed_plan
    assert all(torch.equal(tensor, recomputed_state[name]) for name, tensor in kept_state.items())


def test_pruned_model_generates_the_same_text_with_and_without_the_kv_cache(smollm2):
    model, tokenizer = smollm2
    config = slimllm.PruneConfig(ratio=0.2, calib="lambada", nsamples=8, seqlen=32)
    pruned, _ = slimllm.prune(model, tokenizer, config, progress=False)
    uneven = [
        shape for shape in pruned.config.layer_shapes if len(set(shape["query_to_kv"])) * 3 != len(shape["query_to_kv"])
    ]
    assert uneven, "the 20% plan should leave some layer with an uneven query-to-kv map"
    ids = tokenizer("The capital of France is", return_tensors="pt")
    cached = pruned.generate(**ids, max_new_tokens=24, do_sample=False, use_cache=True)
    uncached = pruned.generate(**ids, max_new_tokens=24, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached), tokenizer.decode(cached[0]) + " | " + tokenizer.decode(uncached[0])


def test_a_gguf_file_given_by_path_loads_like_the_builtin(smollm2):
    from slimllm.io import _builtin_gguf

    model, tokenizer = smollm2
    from_path, _ = slimllm.load(str(_builtin_gguf("smollm2-135m")))
    ids = tokenizer("Once upon a time there was a", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(from_path(ids).logits, model(ids).logits, rtol=0, atol=0)


PASSAGE = (
    "The river runs through the middle of the old town. On summer evenings people walk along its banks, "
    "buy ice cream from the small shops near the bridge and watch the boats go by until the sun sets."
)


@pytest.fixture(scope="module")
def gemma3():
    return slimllm.load("gemma3-270m")


def _passage_loss(model, tokenizer) -> float:
    ids = tokenizer(PASSAGE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def test_gemma3_pruned_by_a_fifth_of_its_decoder_reloads_and_generates(gemma3, tmp_path):
    model, tokenizer = gemma3
    assert model.config.model_type == "gemma3_text" and model.config.num_key_value_heads == 1
    config = slimllm.PruneConfig(ratio=0.2, ratio_of="decoder", calib="lambada", nsamples=8, seqlen=32)
    pruned, plan = slimllm.prune(model, tokenizer, config, progress=False)
    assert abs(plan.report["params"]["realised_ratio"] - 0.2) < 0.005
    assert count_parameters(model) - count_parameters(pruned) < 0.25 * count_parameters(model.model.layers)

    from transformers import AutoModelForCausalLM

    out = slimllm.save(pruned, tokenizer, plan, tmp_path / "gemma3-20")
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = tokenizer("Once upon a time there was a", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, pruned(ids).logits, rtol=0, atol=0)
    cached = reloaded.generate(ids, max_new_tokens=16, do_sample=False, use_cache=True)
    assert torch.equal(cached, reloaded.generate(ids, max_new_tokens=16, do_sample=False, use_cache=False))
    # sensible: an ordinary English passage stays far more likely than chance (log 262144 = 12.5 nats);
    # the dense model is at 2.7 nats, the pruned one (8 x 32 calibration tokens) near 5
    assert _passage_loss(model, tokenizer) < _passage_loss(reloaded, tokenizer) < 7


def test_gemma3_gguf_given_by_path_loads_like_the_builtin(gemma3):
    from slimllm.io import _builtin_gguf

    model, tokenizer = gemma3
    from_path, _ = slimllm.load(str(_builtin_gguf("gemma3-270m")))
    ids = tokenizer("Once upon a time there was a", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(from_path(ids).logits, model(ids).logits, rtol=0, atol=0)
