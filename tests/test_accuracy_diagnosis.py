"""benchmarks/accuracy_diagnosis.py: its hybrids of pruned and dense layers, and the pick rate."""

import pytest
import torch

import slimllm
from benchmark_scripts import load_benchmark_script
from slimllm.eval.uncertainty import encode_bits, encode_gold
from tiny_models import VOCAB, logits, tiny_llama


@pytest.fixture(scope="module")
def diagnosis():
    return load_benchmark_script("accuracy_diagnosis")


@pytest.fixture(scope="module")
def dense_and_pruned():
    dense = tiny_llama()
    data = torch.randint(0, VOCAB, (12, 24), generator=torch.Generator().manual_seed(7))
    pruned, _ = slimllm.prune(dense, None, slimllm.PruneConfig(ratio=0.3, seed=0), data=data, progress=False)
    return dense, pruned


def test_hybrids_are_the_dense_or_the_pruned_model_at_the_extremes(diagnosis, dense_and_pruned):
    dense, pruned = dense_and_pruned
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    layers = set(range(dense.config.num_hidden_layers))
    all_dense = diagnosis.hybrid(pruned, dense, dense_attention=layers, dense_mlp=layers)
    assert sum(p.numel() for p in all_dense.parameters()) == sum(p.numel() for p in dense.parameters())
    torch.testing.assert_close(logits(all_dense, ids), logits(dense, ids), rtol=1e-5, atol=1e-5)
    none_dense = diagnosis.hybrid(pruned, dense, dense_attention=set(), dense_mlp=set())
    torch.testing.assert_close(logits(none_dense, ids), logits(pruned, ids), rtol=0, atol=0)
    before = logits(pruned, ids)
    mixed = diagnosis.hybrid(pruned, dense, dense_attention={0}, dense_mlp={1})
    torch.testing.assert_close(logits(pruned, ids), before, rtol=0, atol=0)  # the pruned model is untouched
    assert mixed.model.layers[0].self_attn.q_proj.weight.shape == dense.model.layers[0].self_attn.q_proj.weight.shape
    assert mixed.model.layers[1].mlp.down_proj.weight.shape == dense.model.layers[1].mlp.down_proj.weight.shape
    assert mixed.model.layers[1].self_attn.q_proj.weight.shape == pruned.model.layers[1].self_attn.q_proj.weight.shape


def test_pick_rate_recovers_the_chosen_answers(diagnosis):
    gold = [1, 0, 1, 1, 0]
    picks = [1, 1, 0, 1, 1]
    task = {"gold": encode_gold(gold), "correct": encode_bits(float(g == p) for g, p in zip(gold, picks, strict=True))}
    assert diagnosis.answer_one_rate(task) == pytest.approx(sum(picks) / len(picks))
