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


def _weights_in_recovery_file(folder) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(folder / RECOVERY_FILE), framework="pt") as handle:
        return [name for name in handle.keys() if name.endswith(".weight")]  # noqa: SIM118 (not a dict)


@pytest.mark.parametrize("on_disk", [False, True], ids=["in-memory", "out-of-core"])
def test_a_refitted_weight_is_named_in_the_saved_model_not_copied(tmp_path, on_disk):
    from tiny_models import byte_tokenizer

    dense = tiny_qwen2(vocab_size=257)
    dense.save_pretrained(tmp_path / "dense")
    byte_tokenizer().save_pretrained(tmp_path / "dense")
    model, tokenizer = slimllm.load(tmp_path / "dense", on_disk=on_disk)
    data = torch.randint(0, 257, (12, 24), generator=torch.Generator().manual_seed(7))
    config = slimllm.PruneConfig(ratio=0.3, nsamples=12, seqlen=24, batch_size=6, options={"recovery": "ridge-layer"})
    pruned, plan = slimllm.prune(model, tokenizer, config, data=data, progress=False)
    refits = [rec for layer in plan.layers for _, rec in layer.recoveries() if rec is not None]
    assert refits and all(rec.weight_in_model for rec in refits)
    # out of core, a finished layer keeps nothing resident: its refit is read back from the saved model
    assert all((rec.weight is None) == on_disk for rec in refits)
    if on_disk:
        with pytest.raises(ValueError, match="lives in its pruned model"):
            slimllm.apply_plan(dense, plan)
    out = slimllm.save(pruned, tokenizer, plan, tmp_path / "pruned")
    assert _weights_in_recovery_file(out) == []
    layers = json.loads((out / PLAN_FILE).read_text())["layers"]
    named = [(layer.get("attn_refit"), layer.get("mlp_refit"), layer["index"]) for layer in layers]
    assert all(
        (attn is None or attn == f"model.layers.{i}.self_attn.o_proj.weight")
        and (mlp is None or mlp == f"model.layers.{i}.mlp.down_proj.weight")
        for attn, mlp, i in named
    )
    assert sum(name is not None for attn, mlp, _ in named for name in (attn, mlp)) == len(refits)
    reloaded, _ = slimllm.load(out)
    rebuilt = slimllm.apply_plan(dense, PrunePlan.load(out))
    ids = data[:2]
    torch.testing.assert_close(logits(rebuilt, ids), logits(reloaded, ids), rtol=0, atol=0)


def test_a_plan_carried_beside_a_model_trained_since_keeps_its_own_refits(tmp_path):
    """Fine-tuning or distilling a pruned model saves its plan beside weights that changed: the
    plan must still rebuild the one-shot prune, so the refit is copied, not named."""
    from safetensors.torch import save_file

    plan = _plan()
    refit = plan.layers[0].mlp_recovery
    refit.weight_in_model = "model.layers.0.mlp.down_proj.weight"
    save_file({refit.weight_in_model: refit.weight.float() + 1}, str(tmp_path / "model.safetensors"))
    plan.save(tmp_path)
    assert _weights_in_recovery_file(tmp_path) == ["layers.0.mlp.weight"]
    assert torch.equal(PrunePlan.load(tmp_path).layers[0].mlp_recovery.weight, refit.weight)
    # the same weights in the model: named, and read back from it
    save_file({refit.weight_in_model: refit.weight}, str(tmp_path / "model.safetensors"))
    plan.save(tmp_path)
    assert _weights_in_recovery_file(tmp_path) == []
    assert torch.equal(PrunePlan.load(tmp_path).layers[0].mlp_recovery.weight, refit.weight)
