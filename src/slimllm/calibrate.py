"""The layer-by-layer walk: capture what enters layer 0, then run one layer at a time.

Only the current layer needs to be on the compute device; the hidden states of the calibration
batches (N × d) are the only activations kept between layers.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from slimllm.models.base import ModelAdapter

_LAYER_KWARGS = ("attention_mask", "position_ids", "position_embeddings", "cache_position")


class StopForward(Exception):
    """Raised by a hook once it has what it needs, to skip the rest of a forward pass."""


@dataclass
class LayerBatch:
    hidden: torch.Tensor
    kwargs: dict


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value


@contextlib.contextmanager
def on_device(module: nn.Module, device: torch.device | str) -> Iterator[nn.Module]:
    """Move ``module`` to ``device`` for the block, then back where it was."""
    home = next(itertools.chain(module.parameters(), module.buffers())).device
    if torch.device(device) == home:
        yield module
        return
    module.to(device)
    try:
        yield module
    finally:
        module.to(home)


@torch.no_grad()
def capture_layer_inputs(
    model: nn.Module, adapter: ModelAdapter, windows: torch.Tensor, batch_size: int, device: torch.device | str
) -> list[LayerBatch]:
    """The hidden states and keyword arguments that reach the first decoder layer, per batch."""
    first = adapter.layers(model)[0]
    captured: list[LayerBatch] = []

    def grab(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        kept = {key: _to(kwargs[key], device) for key in _LAYER_KWARGS if kwargs.get(key) is not None}
        captured.append(LayerBatch(hidden.detach().to(device), kept))
        raise StopForward

    handle = first.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with on_device(adapter.embeddings(model), device), on_device(adapter.rotary(model), device):
            for start in range(0, windows.shape[0], batch_size):
                batch = windows[start : start + batch_size].to(device)
                with contextlib.suppress(StopForward):
                    model(input_ids=batch, use_cache=False)
    finally:
        handle.remove()
    return captured


@torch.no_grad()
def run_layer(layer: nn.Module, batches: list[LayerBatch], *, keep_outputs: bool = True) -> list[LayerBatch]:
    """Run every batch through ``layer``; a hook may raise :class:`StopForward` to cut it short."""
    outputs = []
    for batch in batches:
        try:
            out = layer(batch.hidden, use_cache=False, **batch.kwargs)
        except StopForward:
            continue
        if keep_outputs:
            out = out[0] if isinstance(out, tuple) else out
            outputs.append(LayerBatch(out.detach(), batch.kwargs))
    return outputs


@contextlib.contextmanager
def hooks(*registrations: Callable[[], torch.utils.hooks.RemovableHandle]) -> Iterator[None]:
    handles = [register() for register in registrations]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def token_cosine(inputs: list[LayerBatch], outputs: list[LayerBatch]) -> float:
    """Mean over all calibration tokens of cos(x_in, x_out)."""
    total, count = 0.0, 0
    for before, after in zip(inputs, outputs, strict=True):
        cos = torch.nn.functional.cosine_similarity(before.hidden.double(), after.hidden.double(), dim=-1)
        total += float(cos.sum())
        count += cos.numel()
    return total / count
