"""A resumable prune: what an out-of-core prune records in its work folder as it goes.

- ``run.json``: what the run is (source, settings, a digest of the calibration windows, the
  model's config); a resumed run must be the same run.
- ``cosines.json``: the dense layers' cosines (the pass before the allocation).
- per finished layer ``i``: ``layer-i.safetensors`` (its pruned weights, :func:`slimllm.offload.spill`),
  ``layer-i.hidden.safetensors`` (the hidden states it passes to layer ``i + 1``, and the dense
  model's for a recovery that runs it alongside) and then ``layer-i.record.safetensors``: its plan
  entry, its report row and the running surplus of the parameter budget. The record is written
  last, through a temporary name, so a layer counts as finished only once everything about it is
  on disk. Only the last finished layer's hidden states are kept: the layer before's go once the
  record is written (with 128 x 512 calibration windows they are 0.4 GB per layer of a 1.5B model,
  2 GB of a 70B one).

Resuming reads the cosines, recomputes the allocation (deterministic), skips the finished
layers and continues from the recorded hidden states: the output equals an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from slimllm.config import ConfigError
from slimllm.layer_walk import LayerBatch
from slimllm.plan import LayerPlan, Recovery
from slimllm.runtime import write_json_atomic

RUN_FILE = "run.json"
COSINES_FILE = "cosines.json"


def windows_digest(windows: torch.Tensor) -> str:
    return hashlib.sha256(windows.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


class PruneCheckpoint:
    """The work folder of one out-of-core prune; ``resume`` continues the run recorded there."""

    def __init__(self, folder: str | Path, run: dict, *, resume: bool):
        self.folder = Path(folder)
        recorded = self.folder / RUN_FILE
        if resume:
            if not recorded.is_file():
                raise ConfigError(f"nothing to resume: {self.folder} holds no interrupted prune (run without --resume)")
            previous = json.loads(recorded.read_text())
            differences = _differences(previous, json.loads(json.dumps(run, default=str)))
            if differences:
                raise ConfigError(
                    f"--resume: this command differs from the interrupted one recorded in {recorded} "
                    f"({'; '.join(differences[:4])}): repeat the same command, or run without --resume to start over"
                )
        else:
            for stale in self.folder.glob("*") if self.folder.is_dir() else []:
                stale.unlink()
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(recorded, run, indent=1)

    # -- the dense pass ----------------------------------------------------------------------------
    def cosines(self) -> list[float] | None:
        path = self.folder / COSINES_FILE
        return [float.fromhex(value) for value in json.loads(path.read_text())] if path.is_file() else None

    def save_cosines(self, cosines: list[float]) -> None:
        write_json_atomic(self.folder / COSINES_FILE, [float.hex(c) for c in cosines])

    # -- finished layers ---------------------------------------------------------------------------
    def layer_file(self, index: int) -> Path:
        return self.folder / f"layer-{index:05d}.safetensors"

    def _record_file(self, index: int) -> Path:
        return self.folder / f"layer-{index:05d}.record.safetensors"

    def _hidden_file(self, index: int) -> Path:
        return self.folder / f"layer-{index:05d}.hidden.safetensors"

    def finished_layers(self, num_layers: int) -> int:
        """How many layers, from the first, are finished."""
        count = 0
        while count < num_layers and self._record_file(count).is_file():  # (a layer left whole has no weight file)
            count += 1
        return count

    def finish_layer(
        self,
        record: LayerPlan,
        row: dict,
        surplus: float,
        outputs: list[LayerBatch],
        dense_inputs: list[LayerBatch] | None,
    ) -> None:
        hidden = {f"output.{b}": batch.hidden.detach().cpu().contiguous() for b, batch in enumerate(outputs)}
        for b, batch in enumerate(dense_inputs or []):
            hidden[f"dense_input.{b}"] = batch.hidden.detach().cpu().contiguous()
        _save_atomic(hidden, self._hidden_file(record.index))
        del hidden
        tensors = {}
        for part, recovery in (("attn", record.attn_recovery), ("mlp", record.mlp_recovery)):
            if recovery is not None:
                for name in ("scale", "bias", "weight"):
                    if getattr(recovery, name) is not None:
                        tensors[f"{part}.{name}"] = getattr(recovery, name).detach().cpu().contiguous()
        metadata = {
            "plan": json.dumps(record.to_json()),
            "fits": json.dumps({"attn": _fit(record.attn_recovery), "mlp": _fit(record.mlp_recovery)}),
            "row": json.dumps(row),
            "surplus": float.hex(surplus),
            "batches": str(len(outputs)),
            "dense_batches": str(len(dense_inputs or [])),
        }
        _save_atomic(tensors, self._record_file(record.index), metadata)
        if record.index > 0:  # resuming needs only the last finished layer's hidden states
            self._hidden_file(record.index - 1).unlink(missing_ok=True)

    def load_layer(self, index: int) -> tuple[LayerPlan, dict, float, list[torch.Tensor], list[torch.Tensor]]:
        """The record of finished layer ``index``: plan entry, report row, surplus after it, the
        hidden states it passed on, and the dense model's (both empty for a layer before the last
        finished one, whose hidden states are not kept)."""
        with safe_open(str(self._record_file(index)), framework="pt") as handle:
            metadata = handle.metadata()
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
        hidden_file = self._hidden_file(index)
        if hidden_file.is_file():
            with safe_open(str(hidden_file), framework="pt") as handle:
                tensors.update({name: handle.get_tensor(name) for name in handle.keys()})  # noqa: SIM118
        plan, fits = json.loads(metadata["plan"]), json.loads(metadata["fits"])
        recoveries = {}
        for part in ("attn", "mlp"):
            if plan.pop(f"{part}_regression"):
                recoveries[part] = Recovery(
                    tensors[f"{part}.scale"], tensors[f"{part}.bias"], tensors.get(f"{part}.weight"), fits[part]
                )
        record = LayerPlan(**plan, attn_recovery=recoveries.get("attn"), mlp_recovery=recoveries.get("mlp"))

        def kept(prefix: str, count: str) -> list[torch.Tensor]:
            return [tensors[f"{prefix}.{b}"] for b in range(int(metadata[count])) if f"{prefix}.{b}" in tensors]

        outputs, dense = kept("output", "batches"), kept("dense_input", "dense_batches")
        return record, json.loads(metadata["row"]), float.fromhex(metadata["surplus"]), outputs, dense


def _save_atomic(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    temporary = path.with_suffix(".tmp")
    save_file(tensors, str(temporary), metadata=metadata)
    os.replace(temporary, path)


def _fit(recovery: Recovery | None) -> str | None:
    return None if recovery is None else recovery.fit


def _differences(recorded: dict, now: dict, where: str = "") -> list[str]:
    """``key: recorded → now`` for every leaf that differs."""
    if isinstance(recorded, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(recorded) | set(now)):
            out += _differences(recorded.get(key), now.get(key), f"{where}.{key}" if where else key)
        return out
    return [] if recorded == now else [f"{where}: {recorded!r} → {now!r}"]
