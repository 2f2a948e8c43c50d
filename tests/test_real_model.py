"""The bundled SmolLM2-135M (a real trained LLaMA with GQA): realised ratios and reloading."""

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
