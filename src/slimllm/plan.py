"""The pruning plan: the single record of what was removed, and how to replay it.

A plan lists, per decoder layer, the kept query heads (original indices), the key/value head of
each, the kept FFN channels, and the regression's per-column scale and bias. Indices and scores
go to ``slimllm_plan.json``; the regression tensors (2·d numbers per pruned sub-layer) go to
``slimllm_recovery.safetensors`` beside it. A refitted projection (the ridge recoveries) is not
written twice: where the model saved in the same folder holds it bit for bit, the plan names that
tensor (``attn_refit`` / ``mlp_refit``) instead of copying it (at 8B parameters the copies were
8 GB of float32). Applying a plan to the dense model reproduces the pruned model exactly.
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
    # The pruned model's tensor that holds ``weight``. An out-of-core prune sets it and drops
    # ``weight`` once the layer is on disk (nothing resident per finished layer); saving the plan
    # beside that model reads it back from there.
    weight_in_model: str | None = None


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

    def recoveries(self):
        return (("attn", self.attn_recovery), ("mlp", self.mlp_recovery))


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

    def to_json(self, refits: dict[str, str] | None = None) -> dict:
        """``refits``: ``layers.I.PART`` → the saved model's tensor that holds that refitted weight."""
        refits = refits or {}
        layers = []
        for layer in self.layers:
            data = layer.to_json()
            for part, _ in layer.recoveries():
                if f"layers.{layer.index}.{part}" in refits:
                    data[f"{part}_refit"] = refits[f"layers.{layer.index}.{part}"]
            layers.append(data)
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
            "layers": layers,
        }

    def recovery_tensors(self, refits: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
        refits = refits or {}
        tensors = {}
        for layer in self.layers:
            for part, rec in layer.recoveries():
                if rec is not None:
                    key = f"layers.{layer.index}.{part}"
                    tensors[f"{key}.scale"] = rec.scale.detach().cpu().contiguous()
                    tensors[f"{key}.bias"] = rec.bias.detach().cpu().contiguous()
                    if rec.weight is not None and key not in refits:
                        tensors[f"{key}.weight"] = rec.weight.detach().cpu().contiguous()
        return tensors

    def save(self, folder: str | Path) -> None:
        """Write the plan into ``folder``; a refitted weight that the model saved there holds
        already (checked bit for bit, in the model's dtype) is named, not copied."""
        folder = Path(folder)
        refits = self._refits_in_model(folder)
        (folder / PLAN_FILE).write_text(json.dumps(self.to_json(refits), indent=1) + "\n")
        tensors = self.recovery_tensors(refits)
        if tensors:
            save_file(tensors, str(folder / RECOVERY_FILE))

    def _refits_in_model(self, folder: Path) -> dict[str, str]:
        named = [
            (f"layers.{layer.index}.{part}", rec)
            for layer in self.layers
            for part, rec in layer.recoveries()
            if rec is not None and rec.weight_in_model is not None
        ]
        if not named:
            return {}
        from slimllm.offload import TensorFiles

        model = TensorFiles.of_folder(folder)
        refits = {}
        for key, rec in named:
            if rec.weight_in_model not in model.names:
                if rec.weight is None:
                    raise ValueError(f"{folder}: the model has no tensor {rec.weight_in_model!r} holding {key}'s refit")
                continue
            if rec.weight is not None:  # a plan carried into a model trained since: keep the prune's own weights
                stored = model.read([rec.weight_in_model])[rec.weight_in_model]
                if not torch.equal(rec.weight.to(stored.dtype), stored):
                    continue
            refits[key] = rec.weight_in_model
        return refits

    @classmethod
    def load(cls, folder: str | Path) -> PrunePlan:
        folder = Path(folder)
        data = json.loads((folder / PLAN_FILE).read_text())
        if data.get("version") != PLAN_VERSION:
            raise ValueError(f"{folder / PLAN_FILE}: unsupported plan version {data.get('version')!r}")
        recovery_path = folder / data.get("recovery_file", RECOVERY_FILE)
        tensors = load_file(str(recovery_path)) if recovery_path.exists() else {}
        refits = {f"layers.{item['index']}.{part}": item.pop(f"{part}_refit") for item in data["layers"]
                  for part in ("attn", "mlp") if f"{part}_refit" in item}  # fmt: skip
        if refits:
            from slimllm.offload import TensorFiles

            stored = TensorFiles.of_folder(folder).read(list(refits.values()))
            tensors.update({f"{key}.weight": stored[name] for key, name in refits.items()})
        layers = []
        for item in data["layers"]:
            idx = item["index"]
            recs = {}
            for part in ("attn", "mlp"):
                if item.pop(f"{part}_regression", False):
                    key = f"layers.{idx}.{part}"
                    if f"{key}.scale" not in tensors:
                        raise ValueError(f"{recovery_path}: missing regression tensors for {key}")
                    recs[part] = Recovery(
                        tensors[f"{key}.scale"], tensors[f"{key}.bias"], tensors.get(f"{key}.weight"),
                        weight_in_model=refits.get(key),
                    )  # fmt: skip
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
