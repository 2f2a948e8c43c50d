"""Weights that stay on disk until a module is used: out-of-core pruning.

A model loaded with ``slimllm.load(folder, on_disk=True)`` is the family's module tree with every
parameter on the ``meta`` device (shapes and dtypes only) and each top-level piece (embeddings,
each decoder layer, final norm, head) carrying a :class:`DiskWeights` handle: the safetensors
files it reads from, memory-mapped. :func:`slimllm.layer_walk.on_device` — the one place the
pipeline brings a module onto the compute device — reads the module's tensors in on entry and
drops them on exit, so one decoder layer (two where a method runs the dense layer alongside) is
resident at a time. A layer changed while resident (pruned) keeps its new weights until
:func:`spill` writes them to a file and makes the layer a disk-backed one again.

Buffers are not offloaded: they are small and the non-persistent ones (RoPE frequencies) are
computed when the module tree is built (``accelerate.init_empty_weights`` keeps them real).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from slimllm.runtime import trim_heap

_ATTRIBUTE = "_slimllm_disk_weights"
SAFE_INDEX = "model.safetensors.index.json"


class TensorFiles:
    """Read-only access by name to the tensors of one or more safetensors files (memory-mapped)."""

    def __init__(self, files: dict[str, Path]):
        self.location = files  # tensor name -> the file that holds it

    @classmethod
    def of_folder(cls, folder: str | Path) -> TensorFiles:
        """The weights of a model folder: ``model.safetensors`` or the shards its index names."""
        folder = Path(folder)
        index = folder / SAFE_INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return cls({name: folder / file for name, file in weight_map.items()})
        return cls.of_files(sorted(folder.glob("*.safetensors")))

    @classmethod
    def of_files(cls, paths: list[Path]) -> TensorFiles:
        from safetensors import safe_open

        files = {}
        for path in paths:
            with safe_open(str(path), framework="pt") as handle:
                files.update(dict.fromkeys(handle.keys(), Path(path)))
        return cls(files)

    def __contains__(self, name: str) -> bool:
        return name in self.location

    @property
    def names(self) -> list[str]:
        return list(self.location)

    @property
    def paths(self) -> list[Path]:
        return sorted(set(self.location.values()))

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The tensors ``names``, copied into memory. Each file is mapped only while it is read,
        so pages of weights already used do not linger in the process's memory."""
        from safetensors import safe_open

        tensors = {}
        for path in dict.fromkeys(self.location[name] for name in names):
            with safe_open(str(path), framework="pt") as handle:
                tensors.update({name: handle.get_tensor(name) for name in names if self.location[name] == path})
        return tensors

    def __deepcopy__(self, memo):  # shared by copies of a module: it names files, it holds no weights
        return self


class DiskWeights:
    """Where the tensors of one module live: ``files`` holds them under ``prefix`` + their name in the module."""

    def __init__(self, files: TensorFiles, prefix: str):
        self.files, self.prefix = files, prefix
        self.resident: list[int] | None = None  # ids of the parameters read in, while resident

    def __deepcopy__(self, memo):
        return DiskWeights(self.files, self.prefix)


def attach(module: nn.Module, files: TensorFiles, prefix: str) -> None:
    """Mark ``module`` (its parameters on ``meta``) as reading its tensors from ``files`` under ``prefix``."""
    missing = [prefix + name for name, _ in _offloaded(module) if prefix + name not in files]
    if missing:
        raise ValueError(f"the weight files lack {missing[:3]} (of {len(missing)} missing)")
    setattr(module, _ATTRIBUTE, DiskWeights(files, prefix))


def disk_weights(module: nn.Module) -> DiskWeights | None:
    return getattr(module, _ATTRIBUTE, None)


def on_disk(module: nn.Module) -> bool:
    """True while ``module``'s tensors are on disk (not read in)."""
    weights = disk_weights(module)
    return weights is not None and weights.resident is None


def has_disk_modules(model: nn.Module) -> bool:
    return any(disk_weights(module) is not None for module in model.modules())


def _offloaded(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The parameters and persistent buffers of ``module`` (what its state dict holds), by name."""
    yield from module.state_dict(keep_vars=True).items()


def tensors_of(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The tensors ``module`` saves (placeholders while on disk), by name."""
    return list(_offloaded(module))


def read_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``module``'s saved tensors as CPU tensors: read from disk if it is there (the module stays there)."""
    weights = disk_weights(module)
    if weights is None or weights.resident is not None:
        return [(name, tensor.detach().cpu().contiguous()) for name, tensor in _offloaded(module)]
    placeholders = dict(_offloaded(module))
    stored = weights.files.read([weights.prefix + name for name in placeholders])
    return [(name, stored[weights.prefix + name].to(placeholder.dtype)) for name, placeholder in placeholders.items()]


def read_in(module: nn.Module, device: torch.device | str) -> None:
    """Read ``module``'s tensors from disk onto ``device``, each in the dtype the module asks for."""
    weights = disk_weights(module)
    placeholders = dict(_offloaded(module))
    stored = weights.files.read([weights.prefix + name for name in placeholders])
    for name, placeholder in placeholders.items():
        _replace(module, name, stored.pop(weights.prefix + name).to(device=device, dtype=placeholder.dtype))
    weights.resident = [id(p) for p in module.parameters()]


def changed_while_resident(module: nn.Module) -> bool:
    """True if a parameter of ``module`` was replaced since it was read in (surgery happened)."""
    return [id(p) for p in module.parameters()] != disk_weights(module).resident


def drop(module: nn.Module) -> None:
    """Put ``module``'s tensors back on disk: its parameters and persistent buffers become ``meta`` placeholders."""
    for name, tensor in _offloaded(module):
        _replace(module, name, torch.empty_like(tensor, device="meta"))
    disk_weights(module).resident = None
    release_freed_memory()


def release_freed_memory() -> None:
    """Hand the memory of freed tensors back to the system. glibc serves blocks under its mmap
    threshold (which grows to 32 MB as blocks are freed: a 1.5B model's attention projections
    are 1.5-9.4 MB) from a heap that keeps what is freed; reading in and dropping one layer after
    another would otherwise let the process grow by tens of MB a layer (measured on
    Qwen2.5-Coder-1.5B: 1.0 → 2.4 GB over its dense pass)."""
    trim_heap()


def _replace(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Give the parameter or buffer ``name`` of ``module`` the value ``tensor``. A parameter keeps
    its identity (its contents are swapped), so one shared with another module (a tied head)
    stays shared."""
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if attr in owner._parameters:
        param = owner._parameters[attr]
        torch.utils.swap_tensors(param, nn.Parameter(tensor, requires_grad=param.requires_grad))
    else:
        owner._buffers[attr] = tensor


def keep_in_memory(module: nn.Module) -> None:
    """``module`` owns its (changed) tensors from now on; nothing is read from disk for it again."""
    delattr(module, _ATTRIBUTE)


def discard(module: nn.Module) -> None:
    """Free ``module``'s tensors for good (another process keeps them): ``meta`` placeholders, nothing on disk."""
    for name, tensor in _offloaded(module):
        _replace(module, name, torch.empty_like(tensor, device="meta"))


def spill(module: nn.Module, path: str | Path, prefix: str) -> None:
    """Write ``module``'s tensors to the safetensors file ``path`` (named ``prefix`` + name), then
    drop them from memory: the module reads them back from ``path`` when next used."""
    from safetensors.torch import save_file

    state = {prefix + name: tensor.detach().contiguous().cpu() for name, tensor in _offloaded(module)}
    save_file(state, str(path), metadata={"format": "pt"})
    files = TensorFiles(dict.fromkeys(state, Path(path)))
    setattr(module, _ATTRIBUTE, DiskWeights(files, prefix))
    disk_weights(module).resident = [id(p) for p in module.parameters()]
    drop(module)


def disk_units(model: nn.Module, adapter) -> list[tuple[str, nn.Module]]:
    """``(prefix, module)`` of the pieces read from disk whole: each decoder layer, and every other
    module of the decoder or the model with parameters of its own (embeddings, final norm, an
    untied head); a tied head's weight is the embeddings'. Every parameter falls in one piece."""
    names = {id(module): name for name, module in model.named_modules()}
    layers = list(adapter.layers(model))
    units = [(names[id(layer)] + ".", layer) for layer in layers]
    decoder, covered = adapter.decoder(model), {id(p) for layer in layers for p in layer.parameters()}
    for owner in (decoder, model):
        for child in owner.children():
            own = [p for p in child.parameters() if id(p) not in covered]
            if child is decoder or child is adapter.layers(model) or not own:
                continue  # a tied head: its weight is the embeddings' (the same Parameter)
            units.append((names[id(child)] + ".", child))
            covered.update(id(p) for p in child.parameters())
    loose = [name for name, p in model.named_parameters() if id(p) not in covered]
    if loose:
        raise ValueError(f"parameters outside the decoder layers, embeddings, norm and head: {loose[:3]}")
    return units


def units_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(prefix, module)`` of every module of ``model`` that reads its weights from disk, in module order."""
    return [(disk_weights(m).prefix, m) for _, m in model.named_modules() if disk_weights(m) is not None]
