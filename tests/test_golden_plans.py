"""Refactoring guard: every method gives the same plan and weights as when the golden file was made.

Kept heads, kv heads and channels must match exactly; per-tensor weight sums and sums of squares
to 1e-6 (relative). Regenerate, only for an intended change of results, with
``SLIMLLM_REGENERATE_GOLDEN=1 python -m pytest tests/test_golden_plans.py``.
"""

import json
import os
from pathlib import Path

import pytest
import torch

import slimllm
from tiny_models import VOCAB, tiny_llama, tiny_qwen2

GOLDEN = Path(__file__).parent / "data" / "golden_plans.json"
METHODS = ["slimllm", "magnitude", "wanda-sp", "flap", "taylor", "random", "wanda-sp@eq11", "slimllm@uniform"]
MODELS = {"llama": tiny_llama, "qwen2": tiny_qwen2}
# Every registered criterion, recovery and allocation, named by what differs from the defaults.
SETTINGS = {
    **{method: {"method": method} for method in METHODS},
    "obs": {"method": "obs"},
    "obs+ridge": {"method": "obs", "recovery": "ridge"},
    "slimllm+ridge": {"recovery": "ridge"},
    "slimllm+ridge-dense": {"recovery": "ridge-dense"},
    "slimllm+ridge-layer": {"recovery": "ridge-layer"},
    "slimllm@flap": {"method": "slimllm@flap"},
    "slimllm@search": {"method": "slimllm@search", "search_steps": 6},
}
# Every setting on LLaMA; on Qwen2 (q/k/v biases) the two whose recovery adds output biases.
CASES = [("llama", name) for name in SETTINGS] + [("qwen2", "slimllm"), ("qwen2", "flap")]


def fingerprint(model_name: str, name: str) -> dict:
    data = torch.randint(0, VOCAB, (12, 24), generator=torch.Generator().manual_seed(7))
    settings = {"ratio": 0.3, "nsamples": 12, "seqlen": 24, "batch_size": 5, "gqa": "query", **SETTINGS[name]}
    config = slimllm.PruneConfig.from_dict(settings)
    pruned, plan = slimllm.prune(MODELS[model_name](), None, config, data=data, progress=False)
    layers = [
        {key: record[key] for key in ("kept_heads", "kept_kv_heads", "query_to_kv", "kept_channels")}
        for record in plan.to_json()["layers"]
    ]
    state = sorted(pruned.state_dict().items())
    weights = {name: [float(t.double().sum()), float(t.double().pow(2).sum())] for name, t in state}
    return {"layers": layers, "weights": weights}


def _golden() -> dict:
    if os.environ.get("SLIMLLM_REGENERATE_GOLDEN"):
        cases = {f"{model}/{name}": fingerprint(model, name) for model, name in CASES}
        GOLDEN.write_text(json.dumps(cases, indent=1) + "\n")
    return json.loads(GOLDEN.read_text())


def test_every_registered_criterion_recovery_and_allocation_has_a_case():
    from slimllm.methods import ALLOCATION_SPECS, RECOVERIES, REGISTRY, parse_method

    covered = [(parse_method(s.get("method", "slimllm")), s.get("recovery", "regression")) for s in SETTINGS.values()]
    assert {criterion for (criterion, _), _ in covered} == set(REGISTRY)
    assert {allocation or REGISTRY[c].default_allocation for (c, allocation), _ in covered} == set(ALLOCATION_SPECS)
    assert {recovery for _, recovery in covered} == set(RECOVERIES)


@pytest.mark.parametrize(("model_name", "name"), CASES)
def test_plan_and_weights_match_the_golden_file(model_name, name):
    expected = _golden()[f"{model_name}/{name}"]
    got = fingerprint(model_name, name)
    assert got["layers"] == expected["layers"]
    assert got["weights"].keys() == expected["weights"].keys()
    for name, values in expected["weights"].items():
        assert got["weights"][name] == pytest.approx(values, rel=1e-6, abs=1e-9), name
