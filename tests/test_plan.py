"""The prune plan: what it records round-trips exactly through its files and rebuilds the model."""

from __future__ import annotations

import json

import pytest
import torch

import slimllm
from slimllm.plan import PLAN_FILE, RECOVERY_FILE, LayerPlan, PrunePlan, Recovery
from tiny_models import VOCAB, logits, tiny_qwen2


def _plan() -> PrunePlan:
    generator = torch.Generator().manual_seed(0)

    def tensor(n):
        return torch.randn(n, generator=generator, dtype=torch.float64)

    layers = [
        LayerPlan(0, [0, 2], [0], [0, 0], [1, 3, 4], ratio=0.4, cosine=0.93, head_scores=[0.1, 0.7, 0.2],
                  attn_recovery=Recovery(tensor(8), tensor(8)),
                  mlp_recovery=Recovery(tensor(8), tensor(8), weight=torch.randn(8, 3, generator=generator))),
        LayerPlan(1, [0, 1, 2], [0, 1], [0, 0, 1], [0, 1, 2, 3, 4], ratio=0.0, cosine=0.5),
    ]  # fmt: skip
    return PrunePlan("llama", 2, 3, 2, 5, layers, config={"ratio": 0.2, "method": "slimllm"}, source="somewhere")


def test_save_and_load_give_back_every_field_and_tensor_bit_for_bit(tmp_path):
    plan = _plan()
    plan.save(tmp_path)
    loaded = PrunePlan.load(tmp_path)
    for name in ("model_type", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "config", "source"):
        assert getattr(loaded, name) == getattr(plan, name)
    for before, after in zip(plan.layers, loaded.layers, strict=True):
        assert after.to_json() == before.to_json()
        for part in ("attn_recovery", "mlp_recovery"):
            a, b = getattr(before, part), getattr(after, part)
            assert (a is None) == (b is None)
            if a is not None:
                assert torch.equal(a.scale, b.scale) and torch.equal(a.bias, b.bias)
                assert (a.weight is None and b.weight is None) or torch.equal(a.weight, b.weight)
    # the JSON names what each layer kept, readable without slimllm
    data = json.loads((tmp_path / PLAN_FILE).read_text())
    assert data["layers"][0]["kept_heads"] == [0, 2] and data["layers"][0]["mlp_regression"] is True


def test_a_plan_without_recoveries_writes_no_tensor_file(tmp_path):
    plan = _plan()
    for layer in plan.layers:
        layer.attn_recovery = layer.mlp_recovery = None
    plan.save(tmp_path)
    assert not (tmp_path / RECOVERY_FILE).exists()
    assert all(layer.mlp_recovery is None for layer in PrunePlan.load(tmp_path).layers)


def test_missing_tensors_and_unknown_versions_are_clear_errors(tmp_path):
    _plan().save(tmp_path)
    (tmp_path / RECOVERY_FILE).unlink()
    with pytest.raises(ValueError, match=r"missing regression tensors for layers\.0\.attn"):
        PrunePlan.load(tmp_path)
    data = json.loads((tmp_path / PLAN_FILE).read_text())
    data["version"] = 99
    (tmp_path / PLAN_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unsupported plan version 99"):
        PrunePlan.load(tmp_path)


def test_a_saved_plan_rebuilds_the_pruned_model_from_the_dense_one(tmp_path):
    dense = tiny_qwen2()
    data = torch.randint(0, VOCAB, (12, 24), generator=torch.Generator().manual_seed(7))
    config = slimllm.PruneConfig(ratio=0.3, nsamples=12, seqlen=24, batch_size=6)
    pruned, plan = slimllm.prune(dense, None, config, data=data, progress=False)
    plan.save(tmp_path)
    rebuilt = slimllm.apply_plan(dense, PrunePlan.load(tmp_path))
    ids = data[:2]
    torch.testing.assert_close(logits(rebuilt, ids), logits(pruned, ids), rtol=0, atol=0)
