"""The layer-by-layer walk: capture what enters layer 0, run one layer at a time, and collect
the streaming statistics of the layer being pruned.

Only the current layer needs to be on the compute device; the hidden states of the calibration
batches (N × d) are the only activations kept between layers. Within a layer, the inputs of
``o_proj`` and ``down_proj`` may be kept (:class:`LayerActivations`) so that, after the surgery,
the attention and the FFN are *replayed* from them (the new projection applied to the kept
columns) instead of being run again.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from slimllm import offload, parallel
from slimllm.importance import AttentionStats, MlpStats
from slimllm.models.base import ModelAdapter
from slimllm.stats import HeldOutMoments, Moments, PairedColumnMoments

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
    """Move ``module`` to ``device`` for the block, then back where it was.

    A module whose weights are on disk (:mod:`slimllm.offload`) is read onto ``device`` and its
    weights dropped again after the block, unless the block replaced some of them (surgery):
    then it keeps its new weights, in CPU memory."""
    if offload.on_disk(module):
        offload.read_in(module, device)
        try:
            yield module
        finally:
            if offload.changed_while_resident(module):
                module.to("cpu")
                offload.keep_in_memory(module)
            else:
                offload.drop(module)
        return
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
    total, count = parallel.merge_sums(total, count)
    return total / count


def _held_out_moments(dim: int, batches: list[LayerBatch], device, where: str) -> HeldOutMoments:
    """Held-out-apart moments over ``batches``, numbered globally when they are one process's share."""
    first, total = parallel.global_batches(len(batches))
    return HeldOutMoments(dim, total, device, where, first_batch=first)


# -- kept activations and replay ---------------------------------------------------------------
@dataclass
class LayerActivations:
    """Per-batch activations of the layer being pruned, kept so the layer need not run again.

    ``attention_input[b]`` entered ``o_proj`` for batch b (after the attention surgery, only the
    kept heads' columns); ``mlp_hidden[b]`` entered ``down_proj`` (after the FFN surgery, only the
    kept channels); ``mlp_output[b]`` is the dense ``down_proj`` output, for the paired pass.
    ``device`` is where they are kept, or None: nothing is kept and every stage runs the layer.
    """

    device: torch.device | None
    attention_input: list[torch.Tensor] | None = None
    mlp_hidden: list[torch.Tensor] | None = None
    mlp_output: list[torch.Tensor] | None = None
    peak_bytes: int = 0

    def note_size(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self.nbytes)

    @property
    def keeping(self) -> bool:
        return self.device is not None

    @property
    def nbytes(self) -> int:
        kept = (self.attention_input or []) + (self.mlp_hidden or []) + (self.mlp_output or [])
        return sum(t.numel() * t.element_size() for t in kept)

    def store(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as kept: detached, where the activations are kept."""
        return x.detach().to(self.device)

    def keep_attention_columns(self, columns: torch.Tensor) -> None:
        if self.attention_input is not None:
            self.attention_input = [x.index_select(-1, columns.to(x.device)) for x in self.attention_input]

    def keep_mlp_channels(self, channels: torch.Tensor) -> None:
        if self.mlp_hidden is not None:
            self.mlp_hidden = [h.index_select(-1, channels.to(h.device)) for h in self.mlp_hidden]
        self.mlp_output = None


def activations_for_layer(
    batches: list[LayerBatch], widths: int, compute_device: torch.device, cap_bytes: float
) -> LayerActivations:
    """Where this layer's activations can be kept: ``widths`` features per token (the ``o_proj``
    and ``down_proj`` inputs and, for the paired pass, the FFN output) fit under ``cap_bytes`` on
    the compute device if it has room, else in CPU memory; otherwise nowhere (recompute)."""
    tokens = sum(batch.hidden.shape[:-1].numel() for batch in batches)
    needed = tokens * widths * batches[0].hidden.element_size()
    if needed > cap_bytes:
        return LayerActivations(device=None)
    device = torch.device(compute_device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        if needed > free // 2:
            device = torch.device("cpu")
    return LayerActivations(device=device)


@contextlib.contextmanager
def _replaced_forward(module: nn.Module, forward: Callable) -> Iterator[None]:
    previous = module.__dict__.get("forward")  # an instance-level wrapper (e.g. a dispatch hook) is kept
    module.forward = forward
    try:
        yield
    finally:
        if previous is None:
            del module.forward
        else:
            module.forward = previous


@contextlib.contextmanager
def replaying(adapter: ModelAdapter, layer: nn.Module, kept: LayerActivations, *, mlp: bool) -> Iterator[None]:
    """Within the block, the layer's attention (and, with ``mlp``, its FFN) returns its current
    output projection applied to the kept inputs, batch by batch, instead of computing it; parts
    with nothing kept run as usual. Each ``run_layer`` inside the block must be a single pass."""
    with contextlib.ExitStack() as stack:
        if kept.attention_input is not None:
            o_proj, inputs = adapter.attention(layer).o_proj, iter(kept.attention_input)

            def attention(*_args, **_kwargs):  # (output, attention weights), as the attention returns
                return o_proj(next(inputs).to(o_proj.weight.device)), None

            stack.enter_context(_replaced_forward(adapter.attention_module(layer), attention))
        if mlp and kept.mlp_hidden is not None:
            down, hidden = adapter.mlp(layer).down_proj, iter(kept.mlp_hidden)

            def feed_forward(*_args, **_kwargs):
                return down(next(hidden).to(down.weight.device))

            stack.enter_context(_replaced_forward(adapter.mlp_module(layer), feed_forward))
        yield


# -- the dense model alongside (--recovery ridge-dense) ---------------------------------------
@dataclass
class DenseStates:
    """The dense model's hidden states at one layer, on its own inputs: ``after_attention[b]``
    (the layer input plus the attention's output; ``None`` where not asked for) and ``output[b]``
    (the next layer's input)."""

    after_attention: list[torch.Tensor] | None
    output: list[LayerBatch]


@torch.no_grad()
def dense_states(
    adapter: ModelAdapter,
    layer,
    index: int,
    dense_inputs: list[LayerBatch],
    *registrations,
    after_attention: bool = True,
) -> DenseStates:
    """Run the dense ``layer`` on the dense model's inputs (with the hooks of ``registrations``
    in place). The family adds ``o_proj``'s output to the residual stream as it is
    (``adapter.residual_outputs``), so the state after the attention is the input plus that output.
    Without ``after_attention`` only the outputs are kept (one hidden-state copy less per batch)."""
    if not adapter.residual_outputs:
        raise ValueError(f"{type(adapter).__name__}: the attention output is not added to the residual as it is")
    attention_outputs = []

    def grab(_module, _args, out):
        attention_outputs.append(out.detach())

    grabbing = [lambda: adapter.attention(layer).o_proj.register_forward_hook(grab)] if after_attention else []
    with hooks(*grabbing, *registrations):
        outputs = run_layer(layer, index, dense_inputs)
    if not after_attention:
        return DenseStates(None, outputs)
    after = [batch.hidden + out for batch, out in zip(dense_inputs, attention_outputs, strict=True)]
    return DenseStates(after, outputs)


def _difference(a: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
    """a − Σ others in float64 (the states are close; their low-precision difference is not)."""
    out = a.to(torch.float64)
    for other in others:
        out = out - other.to(out.device, torch.float64)
    return out


def _joined(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.cat([x.to(torch.float64), target.to(x.device)], dim=-1)


# -- the statistics of one layer ---------------------------------------------------------------
class _AttentionRecorder:
    """A pre-hook on ``o_proj`` that folds each batch's input into the attention statistics (see
    :func:`collect_attention_stats`); :meth:`stats` gives them once every batch has passed."""

    def __init__(self, adapter, layer, index, batches, units, device, kept, *, split, dense):
        self.parts, self.units, self.kept = adapter.attention(layer), units, kept
        self.batches, self.dense = batches, dense
        where = f"o_proj input of layer {index}"
        self.width = self.parts.o_proj.in_features
        self.target_dims = self.parts.o_proj.out_features if dense is not None else 0
        split = split or dense is not None
        # Where the held-out-apart moments are kept, the moments of x are their leading block
        # (the same sums, merged): one Gram per token, not two.
        self.moments = None if split else Moments(self.width, device, where=where)
        self.held_out = _held_out_moments(self.width + self.target_dims, batches, device, where) if split else None
        self.store = [] if kept.keeping and adapter.heads_independent else None
        self.batch_number = itertools.count()

    def __call__(self, _module, args) -> None:
        x = args[0]
        number = next(self.batch_number)
        if self.dense is not None:
            self.held_out.update(
                _joined(x, _difference(self.dense.after_attention[number], self.batches[number].hidden))
            )
        elif self.held_out is not None:
            self.held_out.update(x)
        else:
            self.moments.update(x)
        if self.store is not None:
            self.store.append(self.kept.store(x))

    def stats(self) -> AttentionStats:
        if self.held_out is not None:
            parallel.merge_held_out(self.held_out)
        else:
            parallel.merge_moments(self.moments)
        self.kept.attention_input = self.store
        self.kept.note_size()
        moments = self.moments if self.held_out is None else self.held_out.total.leading(self.width)
        return AttentionStats(moments, self.parts, self.units, self.held_out, target_dims=self.target_dims)


def _stop(*_args) -> None:
    raise StopForward


@torch.no_grad()
def collect_attention_stats(
    adapter: ModelAdapter,
    layer,
    index: int,
    batches,
    units,
    device,
    kept: LayerActivations,
    *,
    split: bool = False,
    dense: DenseStates | None = None,
) -> AttentionStats:
    """The moments of the ``o_proj`` input (with ``split``, also apart for held-out batches);
    its activations are kept when ``kept`` says so and the family's heads are independent
    (replaying them after the surgery is then exact). With ``dense``, the held-out-apart moments
    are those of [x, t], t = the dense model's state after the attention − this layer's input."""
    recorder = _AttentionRecorder(adapter, layer, index, batches, units, device, kept, split=split, dense=dense)
    o_proj = recorder.parts.o_proj
    with hooks(lambda: o_proj.register_forward_pre_hook(recorder), lambda: o_proj.register_forward_pre_hook(_stop)):
        run_layer(layer, index, batches, keep_outputs=False)
    return recorder.stats()


@torch.no_grad()
def dense_states_with_attention_stats(
    adapter: ModelAdapter, layer, index: int, batches, units, device, kept: LayerActivations, *, split: bool = False
) -> tuple[DenseStates, AttentionStats]:
    """:func:`dense_states` on ``batches`` and :func:`collect_attention_stats` on the same
    ``batches``, in one pass over the dense layer (the statistics pass stops at ``o_proj``; this
    one goes on to the layer's output)."""
    recorder = _AttentionRecorder(adapter, layer, index, batches, units, device, kept, split=split, dense=None)
    o_proj = recorder.parts.o_proj
    states = dense_states(
        adapter, layer, index, batches, lambda: o_proj.register_forward_pre_hook(recorder), after_attention=False
    )
    return states, recorder.stats()


@torch.no_grad()
def collect_mlp_stats(
    adapter: ModelAdapter,
    layer,
    index: int,
    batches,
    device,
    kept: LayerActivations,
    *,
    paired_pass: bool,
    split: bool = False,
    dense: DenseStates | None = None,
) -> MlpStats:
    """The moments of the FFN's input, hidden activations and output (with ``split``, also the
    full covariance of the hidden activations, held-out batches apart), the attention replayed
    from ``kept``; keeps the ``down_proj`` inputs (and, for ``paired_pass``, its outputs) and,
    where the attention ran, the ``o_proj`` inputs. With ``dense``, the held-out-apart moments are
    those of [H, t], t = the dense model's layer output − this layer's state after its attention."""
    parts = adapter.mlp(layer)
    mlp_module = adapter.mlp_module(layer)
    where = f"FFN of layer {index}"
    d = parts.down_proj.out_features
    target_dims = d if dense is not None else 0
    inputs = Moments(d, device, full=False, where=where)
    hidden = Moments(parts.width, device, full=False, where=where)
    output = Moments(d, device, where=where)
    split = split or dense is not None
    hidden_split = _held_out_moments(parts.width + target_dims, batches, device, where) if split else None
    hidden_store = [] if kept.keeping else None
    output_store = [] if kept.keeping and paired_pass else None
    attention_store = [] if kept.keeping and kept.attention_input is None else None
    batch_number, attention_output = itertools.count(), {}

    def grab_attention(_module, args):
        attention_store.append(kept.store(args[0]))

    def grab_attention_output(_module, _args, out):
        attention_output["current"] = out

    def grab_input(_module, args):
        inputs.update(args[0])

    def grab_hidden(_module, args):
        hidden.update(args[0])
        if dense is not None:
            number = next(batch_number)
            target = _difference(dense.output[number].hidden, batches[number].hidden, attention_output.pop("current"))
            hidden_split.update(_joined(args[0], target))
        elif hidden_split is not None:
            hidden_split.update(args[0])
        if hidden_store is not None:
            hidden_store.append(kept.store(args[0]))

    def grab_output(_module, _args, out):
        output.update(out)
        if output_store is not None:
            output_store.append(kept.store(out))
        raise StopForward

    registrations = [
        lambda: mlp_module.register_forward_pre_hook(grab_input),
        lambda: parts.down_proj.register_forward_pre_hook(grab_hidden),
        lambda: parts.down_proj.register_forward_hook(grab_output),
    ]
    if attention_store is not None:
        registrations.append(lambda: adapter.attention(layer).o_proj.register_forward_pre_hook(grab_attention))
    if dense is not None:
        registrations.append(lambda: adapter.attention(layer).o_proj.register_forward_hook(grab_attention_output))
    with replaying(adapter, layer, kept, mlp=False), hooks(*registrations):
        run_layer(layer, index, batches, keep_outputs=False)
    for moments in (inputs, hidden, output):
        parallel.merge_moments(moments)
    if hidden_split is not None:
        parallel.merge_held_out(hidden_split)
    if attention_store is not None:
        kept.attention_input = attention_store
    kept.mlp_hidden, kept.mlp_output = hidden_store, output_store
    kept.note_size()
    return MlpStats(inputs, hidden, output, parts, hidden_split, target_dims=target_dims)


def _paired_update(moments, hidden, dense, index, kept_weight, bias) -> None:
    approx = torch.nn.functional.linear(hidden.index_select(-1, index.to(hidden.device)), kept_weight, bias)
    moments.update(dense, approx)


@torch.no_grad()
def collect_paired_outputs(
    adapter: ModelAdapter, layer, index: int, batches, kept_channels: list[int], device, kept: LayerActivations
) -> PairedColumnMoments:
    """Moments of the dense FFN output and of the kept channels' output (same ``down_proj``, the
    other channels dropped), on the same tokens: from the kept activations when there are any,
    else from one more pass over the layer."""
    down = adapter.mlp(layer).down_proj
    weight, bias = down.weight, down.bias
    moments = PairedColumnMoments(down.out_features, device, where=f"FFN output of layer {index}")
    channels = torch.tensor(kept_channels, dtype=torch.long, device=weight.device)
    kept_weight = weight.index_select(1, channels)
    if kept.mlp_hidden is not None and kept.mlp_output is not None:
        for hidden, dense in zip(kept.mlp_hidden, kept.mlp_output, strict=True):
            _paired_update(moments, hidden.to(weight.device), dense.to(weight.device), channels, kept_weight, bias)
        parallel.merge_paired(moments)
        return moments

    def grab(_module, args):
        hidden = args[0]
        _paired_update(moments, hidden, torch.nn.functional.linear(hidden, weight, bias), channels, kept_weight, bias)
        raise StopForward

    with replaying(adapter, layer, kept, mlp=False), hooks(lambda: down.register_forward_pre_hook(grab)):
        run_layer(layer, index, batches, keep_outputs=False)
    parallel.merge_paired(moments)
    return moments


@torch.no_grad()
def propagate(adapter: ModelAdapter, layer, index: int, batches, kept: LayerActivations) -> list[LayerBatch]:
    """The pruned layer's outputs for every batch, replaying whatever ``kept`` holds."""
    with replaying(adapter, layer, kept, mlp=True):
        return run_layer(layer, index, batches)
