"""The pruning plan: the single record of what was removed, and how to replay it.

A plan lists, per decoder layer, the kept query heads (original indices), the key/value head of
each, the kept FFN channels, and the regression's per-column scale and bias. Indices and scores
go to ``slimllm_plan.json``; the regression tensors (2·d numbers per pruned sub-layer) go to
``slimllm_recovery.safetensors`` beside it. Applying a plan to the dense model reproduces the
pruned model exactly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PLAN_FILE = "slimllm_plan.json"
RECOVERY_FILE = "slimllm_recovery.safetensors"
PLAN_VERSION = 1


@dataclass
class Recovery:
    """Per-column affine map folded into an output projection: row c scaled by ``scale[c]``,
    then ``bias`` added; or, with ``weight``, a refitted projection that replaces it."""

    scale: torch.Tensor
    bias: torch.Tensor
    weight: torch.Tensor | None = None
    fit: str | None = None  # how it was chosen (the report records it; not part of the plan)


@dataclass
class LayerPlan:
    index: int
    kept_heads: list[int]
    kept_kv_heads: list[int]
    query_to_kv: list[int]
    kept_channels: list[int]
    ratio: float = 0.0
    cosine: float | None = None
    head_scores: list[float] | None = None
    attn_recovery: Recovery | None = field(default=None, repr=False)
    mlp_recovery: Recovery | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("attn_recovery")
        data.pop("mlp_recovery")
        data["attn_regression"] = self.attn_recovery is not None
        data["mlp_regression"] = self.mlp_recovery is not None
        return data


@dataclass
class PrunePlan:
    model_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    layers: list[LayerPlan]
    config: dict = field(default_factory=dict)
    source: str | None = None
    report: dict | None = field(default=None, repr=False)  # written as slimllm_report.json, not part of the plan

    def to_json(self) -> dict:
        return {
            "version": PLAN_VERSION,
            "model_type": self.model_type,
            "source": self.source,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "intermediate_size": self.intermediate_size,
            "config": self.config,
            "recovery_file": RECOVERY_FILE,
            "layers": [layer.to_json() for layer in self.layers],
        }

    def recovery_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for layer in self.layers:
            for part, rec in (("attn", layer.attn_recovery), ("mlp", layer.mlp_recovery)):
                if rec is not None:
                    tensors[f"layers.{layer.index}.{part}.scale"] = rec.scale.detach().cpu().contiguous()
                    tensors[f"layers.{layer.index}.{part}.bias"] = rec.bias.detach().cpu().contiguous()
                    if rec.weight is not None:
                        tensors[f"layers.{layer.index}.{part}.weight"] = rec.weight.detach().cpu().contiguous()
        return tensors

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        (folder / PLAN_FILE).write_text(json.dumps(self.to_json(), indent=1) + "\n")
        tensors = self.recovery_tensors()
        if tensors:
            save_file(tensors, str(folder / RECOVERY_FILE))

    @classmethod
    def load(cls, folder: str | Path) -> PrunePlan:
        folder = Path(folder)
        data = json.loads((folder / PLAN_FILE).read_text())
        if data.get("version") != PLAN_VERSION:
            raise ValueError(f"{folder / PLAN_FILE}: unsupported plan version {data.get('version')!r}")
        recovery_path = folder / data.get("recovery_file", RECOVERY_FILE)
        tensors = load_file(str(recovery_path)) if recovery_path.exists() else {}
        layers = []
        for item in data["layers"]:
            idx = item["index"]
            recs = {}
            for part in ("attn", "mlp"):
                if item.pop(f"{part}_regression", False):
                    key = f"layers.{idx}.{part}"
                    if f"{key}.scale" not in tensors:
                        raise ValueError(f"{recovery_path}: missing regression tensors for {key}")
                    recs[part] = Recovery(tensors[f"{key}.scale"], tensors[f"{key}.bias"], tensors.get(f"{key}.weight"))
            layers.append(LayerPlan(**item, attn_recovery=recs.get("attn"), mlp_recovery=recs.get("mlp")))
        return cls(
            model_type=data["model_type"],
            num_layers=data["num_layers"],
            num_heads=data["num_heads"],
            num_kv_heads=data["num_kv_heads"],
            intermediate_size=data["intermediate_size"],
            layers=layers,
            config=data.get("config", {}),
            source=data.get("source"),
        )
