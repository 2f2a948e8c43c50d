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

# Keyword arguments of a decoder layer that belong to one forward pass over a whole sequence
# and never to calibration: the KV cache and its switches.
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "use_cache", "cache_position")


class StopForward(Exception):
    """Raised by a hook once it has what it needs, to skip the rest of a forward pass."""


@dataclass
class LayerBatch:
    """A batch of hidden states entering a layer, and what the model passes each layer with it.

    ``layer_kwargs[i]`` holds the mask, positions and rotary embeddings the model gives layer
    ``i``; layers of different kinds (sliding-window and global, local and global RoPE) differ.
    """

    hidden: torch.Tensor
    layer_kwargs: list[dict]


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


class _Recorder(nn.Module):
    """Stands in for a decoder layer: records the keyword arguments it gets, passes hidden states on."""

    def __init__(self, layer: nn.Module, record: dict, device, first: bool, last: bool):
        super().__init__()
        self.record, self.device, self.first, self.last = record, device, first, last
        if hasattr(layer, "attention_type"):  # models that pick masks by layer kind read it
            self.attention_type = layer.attention_type

    def forward(self, hidden_states, *args, **kwargs):
        if self.first:
            self.record["hidden"] = hidden_states.detach().to(self.device)
        kept = {k: _to(v, self.device) for k, v in kwargs.items() if v is not None and k not in _CACHE_KWARGS}
        self.record["layer_kwargs"].append(kept)
        if self.last:
            raise StopForward
        return hidden_states


@torch.no_grad()
def capture_layer_inputs(
    model: nn.Module, adapter: ModelAdapter, windows: torch.Tensor, batch_size: int, device: torch.device | str
) -> list[LayerBatch]:
    """Per batch, the hidden states entering the first decoder layer and every layer's keyword arguments.

    The decoder layers are swapped for recorders for one pass, so only the embeddings, masks and
    rotary embeddings are computed.
    """
    layers = adapter.layers(model)
    originals = list(layers)
    last = len(originals) - 1
    captured: list[LayerBatch] = []
    try:
        with contextlib.ExitStack() as stack:
            for module in adapter.around_layers(model):  # embeddings, rotary embeddings, ...
                stack.enter_context(on_device(module, device))
            for start in range(0, windows.shape[0], batch_size):
                record: dict = {"layer_kwargs": []}
                for index, layer in enumerate(originals):
                    layers[index] = _Recorder(layer, record, device, first=index == 0, last=index == last)
                with contextlib.suppress(StopForward):
                    model(input_ids=windows[start : start + batch_size].to(device), use_cache=False)
                captured.append(LayerBatch(record["hidden"], record["layer_kwargs"]))
    finally:
        for index, layer in enumerate(originals):
            layers[index] = layer
    return captured


@torch.no_grad()
def run_layer(
    layer: nn.Module, index: int, batches: list[LayerBatch], *, keep_outputs: bool = True
) -> list[LayerBatch]:
    """Run every batch through decoder layer ``index``; a hook may raise :class:`StopForward` to cut it short."""
    outputs = []
    for batch in batches:
        try:
            out = layer(batch.hidden, use_cache=False, **batch.layer_kwargs[index])
        except StopForward:
            continue
        if keep_outputs:
            out = out[0] if isinstance(out, tuple) else out
            outputs.append(LayerBatch(out.detach(), batch.layer_kwargs))
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
