"""Searched allocation (beyond the paper; docs/method.md §6b): per-layer head and channel counts
chosen by the pruned model's KL divergence to the dense model on held-out calibration windows.

- **Start**: Eq. 11's counts.
- **Candidates**: each layer's attention and FFN are pruned on their own, on the dense model's
  inputs to that layer (the calibration batches outside the held-out quarter), with the method's
  own criteria and recovery, at any head count and at FFN widths on a grid (:class:`SearchSpace`).
  They are built when the search first asks for them and kept (EvoPress's database).
- **Objective**: a candidate model runs one attention and one FFN candidate per layer on the
  held-out windows; its loss is the mean over tokens of KL(dense ‖ candidate)
  (:func:`token_kl`). Layers before the first changed one are not rerun.
- **Search**: a (1+1) evolution. A child moves one to three parts (a layer's attention or FFN)
  one level up or down, then other FFNs move one grid step at a time until the parameters removed
  are back within half a step of the target; it replaces the parent when its KL is lower.
  It stops after ``--search-minutes`` (or ``--search-steps`` candidates).
- **Result**: the best counts, with single channels moved so that the total is within half a
  channel of the target, exactly as the Eq. 11 solver leaves it. The usual layer walk then prunes
  the model with them, so the final model sees the pruned model's own inputs.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from dataclasses import dataclass

import torch
from torch import nn

from slimllm.allocation import (
    Allocation,
    AllocationError,
    LayerCosts,
    SearchOptions,
    allocate,
    close_gap,
    removed_params,
)
from slimllm.config import ConfigError, PruneConfig
from slimllm.layer_pruner import LayerPruner
from slimllm.layer_walk import LayerBatch, on_device, run_layer
from slimllm.methods import Method
from slimllm.methods.base import RegressionRecovery, RidgeRecovery
from slimllm.models.base import ModelAdapter
from slimllm.progress import progress_bar
from slimllm.runtime import CoreShare
from slimllm.stats import held_out_batches

GRID_STEPS = 32  # FFN widths searched: multiples of width / 32 (48 channels in SmolLM2)
MAX_KL_TOKENS = 2048  # held-out tokens scored per candidate (cost: one forward of this many)
PART_MEMORY = 2  # kept candidate parts may take this many times the dense layers' memory
MAX_FIT_TOKENS = 4096  # tokens the candidate layers are pruned on (their activations are kept per layer)


@dataclass(frozen=True)
class SearchSpace:
    """Levels of each layer: attention units pruned (0 … ``max_units``) and FFN grid levels
    (``level × step`` channels, 0 … ``max_level``), and the parameter budget they must meet."""

    costs: tuple[LayerCosts, ...]
    max_units: tuple[int, ...]
    step: tuple[int, ...]
    max_level: tuple[int, ...]
    target: float
    adds_bias: bool

    @classmethod
    def build(cls, costs: list[LayerCosts], target: float, options: SearchOptions, adds_bias: bool) -> SearchSpace:
        steps, max_units, max_levels = [], [], []
        for cost in costs:
            step = max(1, round(cost.width / GRID_STEPS))
            step = options.round_to * max(1, math.ceil(step / options.round_to))
            cap = min(cost.width - 1, math.floor(options.max_layer_ratio * cost.width))
            steps.append(step)
            max_levels.append(max(0, cap // step))
            max_units.append(min(cost.num_units - 1, math.floor(options.max_layer_ratio * cost.num_units)))
        return cls(tuple(costs), tuple(max_units), tuple(steps), tuple(max_levels), target, adds_bias)

    @property
    def tolerance(self) -> float:
        """Half the largest FFN step, in parameters: how far from the target a candidate may be."""
        return max(step * cost.channel_params for step, cost in zip(self.step, self.costs, strict=True)) / 2

    def channels(self, index: int, level: int) -> int:
        return level * self.step[index]

    def removed(self, state: State) -> float:
        return sum(
            removed_params(cost, units, self.channels(i, level), self.adds_bias)
            for i, (cost, units, level) in enumerate(zip(self.costs, state.units, state.levels, strict=True))
        )

    def rebalance(self, state: State, rng: random.Random, fixed: set[int] = frozenset()) -> bool:
        """Move FFN levels (not those in ``fixed``) one step at a time, at random, until ``state``
        removes the target to within :attr:`tolerance`; False when no FFN has room left."""
        for _ in range(10 * sum(self.max_level) + 10):
            gap = self.removed(state) - self.target
            if abs(gap) <= self.tolerance:
                return True
            move = -1 if gap > 0 else 1
            room = [
                i for i, level in enumerate(state.levels) if i not in fixed and 0 <= level + move <= self.max_level[i]
            ]
            if not room:
                return False
            state.levels[rng.choice(room)] += move
        return False


@dataclass
class State:
    units: list[int]
    levels: list[int]

    def copy(self) -> State:
        return State(list(self.units), list(self.levels))

    def first_difference(self, other: State) -> int | None:
        mine, theirs = zip(self.units, self.levels, strict=True), zip(other.units, other.levels, strict=True)
        return next((index for index, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b), None)


def mutate(state: State, space: SearchSpace, rng: random.Random) -> State | None:
    """One to three single-level moves, then the budget restored by the other FFNs (None if it cannot be)."""
    child = state.copy()
    moved: set[int] = set()
    for _ in range(rng.choice((1, 1, 2, 3))):
        index, move = rng.randrange(len(child.units)), rng.choice((-1, 1))
        if rng.random() < 0.5:
            if 0 <= child.units[index] + move <= space.max_units[index]:
                child.units[index] += move
        elif 0 <= child.levels[index] + move <= space.max_level[index]:
            child.levels[index] += move
            moved.add(index)
    # Rebalancing moves only FFNs not moved above, so it cannot undo the child's change.
    if child.first_difference(state) is None or not space.rebalance(child, rng, moved):
        return None
    return child


def token_kl(logits: torch.Tensor, dense_log_probs: torch.Tensor) -> torch.Tensor:
    """KL(dense ‖ model) of each token: Σ_v p_dense(v) (log p_dense(v) − log p_model(v))."""
    log_q = torch.log_softmax(logits.float(), dim=-1)
    return (dense_log_probs.exp() * (dense_log_probs - log_q)).sum(-1)


class CandidateLayers:
    """Each layer's attention and FFN pruned on their own at a given count, built on first use and
    kept; :meth:`layer` puts one of each into a shell of the dense layer.

    A layer's statistics (and its kept activations) are taken once per part, on the dense layer:
    a new count is a selection, a copy, a cut and a recovery, with no pass over the layer."""

    def __init__(self, adapter: ModelAdapter, pruner: LayerPruner, layers, fit_inputs: list[list[LayerBatch]], device):
        self.adapter, self.pruner, self.layers = adapter, pruner, layers
        self.fit_inputs, self.device = fit_inputs, device
        self.parts: dict[tuple[int, str, int], nn.Module] = {}
        self.stats: dict[tuple[int, str], tuple] = {}
        self.budget_bytes = PART_MEMORY * sum(_nbytes(layer) for layer in layers)
        self.forgotten = 0
        self.shells = [_shell(layer) for layer in layers]
        first = layers[0]
        self.names = (
            _child_name(first, adapter.attention_module(first)),
            _child_name(first, adapter.mlp_module(first)),
        )
        self.seconds = 0.0

    def part(self, index: int, kind: str, count: int) -> nn.Module:
        dense = self.layers[index]
        if count == 0:
            return self.adapter.attention_module(dense) if kind == "attention" else self.adapter.mlp_module(dense)
        key = (index, kind, count)
        if key not in self.parts:
            start = time.perf_counter()
            stats, kept = self._stats(index, kind)
            layer = copy.deepcopy(dense)
            record = self.pruner.blank_record(index, layer, 0.0, float("nan"))
            with on_device(layer, self.device):
                if kind == "attention":
                    self.pruner.apply_attention(layer, stats, count, record, copy.copy(kept))
                else:
                    self.pruner.apply_mlp(layer, index, self.fit_inputs[index], stats, count, record, copy.copy(kept))
            part = self.adapter.attention_module(layer) if kind == "attention" else self.adapter.mlp_module(layer)
            self.parts[key] = part
            self.seconds += time.perf_counter() - start
        return self.parts[key]

    def _stats(self, index: int, kind: str) -> tuple:
        if (index, kind) not in self.stats:
            layer, batches = self.layers[index], self.fit_inputs[index]
            kept = self.pruner.activations(index, layer, batches, True)
            with on_device(layer, self.device):
                if kind == "attention":
                    stats = self.pruner.attention_stats(layer, index, batches, kept)
                else:
                    stats = self.pruner.mlp_stats(layer, index, batches, kept)
            kept.attention_input = None  # the candidates replay nothing of the attention
            self.stats[(index, kind)] = (stats, kept)
        return self.stats[(index, kind)]

    def forget_unused(self, units: list[int], channels: list[int]) -> None:
        """Over the memory budget, drop the parts other than these counts' (rebuilt if asked for again)."""
        if sum(_nbytes(part) for part in self.parts.values()) <= self.budget_bytes:
            return
        used = {(i, "attention", u) for i, u in enumerate(units)} | {(i, "mlp", c) for i, c in enumerate(channels)}
        for key in [key for key in self.parts if key not in used]:
            del self.parts[key]
            self.forgotten += 1

    def layer(self, index: int, units: int, channels: int) -> nn.Module:
        shell = self.shells[index]
        setattr(shell, self.names[0], self.part(index, "attention", units))
        setattr(shell, self.names[1], self.part(index, "mlp", channels))
        return shell


def candidate_method(method: Method) -> Method:
    """The method the candidate parts are pruned with: ``method`` itself, except that the ridge
    recovery is replaced by the paper's regression (it adds the same biases, so the budget is the
    same). The ridge refit solves five systems per part, which would take most of the search's
    time; the final layer walk still uses the ridge."""
    if isinstance(method.recovery, RidgeRecovery):
        return dataclasses.replace(method, recovery=RegressionRecovery())
    return method


def _nbytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.parameters())


def _shell(layer: nn.Module) -> nn.Module:
    """A copy of ``layer`` sharing its submodules, whose own submodules can be replaced."""
    shell = copy.copy(layer)
    shell._modules = dict(layer._modules)
    shell._parameters = dict(layer._parameters)
    shell._buffers = dict(layer._buffers)
    return shell


def _child_name(parent: nn.Module, child: nn.Module) -> str:
    return next(name for name, module in parent.named_children() if module is child)


class KlObjective:
    """Mean token KL of a candidate model to the dense one on the held-out batches, rerunning
    only the layers from the first one that differs from the last accepted state."""

    def __init__(self, model, adapter: ModelAdapter, space: SearchSpace, candidates: CandidateLayers, held_out, device):
        self.model, self.adapter, self.space = model, adapter, space
        self.candidates, self.device = candidates, device
        self.dense_log_probs = None
        self.inputs: list[list[LayerBatch]] = [held_out]  # inputs of each layer under the accepted state
        self.accepted: State | None = None
        self.tokens = _tokens(held_out)

    @torch.no_grad()
    def set_dense(self, final_hidden: list[LayerBatch]) -> None:
        self.dense_log_probs = [torch.log_softmax(self._logits(batch).float(), dim=-1) for batch in final_hidden]

    @torch.no_grad()
    def __call__(self, state: State) -> tuple[float, list[list[LayerBatch]]]:
        start = 0 if self.accepted is None else state.first_difference(self.accepted)
        if start is None:
            start = len(state.units)
        inputs = self.inputs[: start + 1]
        for index in range(start, len(state.units)):
            layer = self.candidates.layer(index, state.units[index], self.space.channels(index, state.levels[index]))
            with on_device(layer, self.device):
                inputs.append(run_layer(layer, index, inputs[-1]))
        total = 0.0
        for batch, dense in zip(inputs[-1], self.dense_log_probs, strict=True):
            total += token_kl(self._logits(batch), dense).double().sum().item()
        return total / self.tokens, inputs

    def accept(self, state: State, inputs: list[list[LayerBatch]]) -> None:
        self.accepted, self.inputs = state.copy(), inputs

    def _logits(self, batch: LayerBatch) -> torch.Tensor:
        return self.adapter.logits(self.model, batch.hidden.to(self.device))


def split_batches(batches: list) -> tuple[list, list]:
    """The calibration batches the candidates are fitted on, and the held-out ones (the last quarter)."""
    if len(batches) < 2:
        raise ConfigError(
            "the allocation search holds out a quarter of the calibration batches, so it needs at least two: "
            "raise --nsamples above --batch-size"
        )
    held = held_out_batches(len(batches))
    return batches[:-held], batches[-held:]


def _tokens(batches: list[LayerBatch]) -> int:
    return sum(batch.hidden.shape[:-1].numel() for batch in batches)


def _cap_tokens(batches: list[LayerBatch], limit: int) -> list[LayerBatch]:
    kept: list[LayerBatch] = []
    for batch in batches:
        if kept and _tokens(kept) + _tokens([batch]) > limit:
            break
        kept.append(batch)
    return kept


class AllocationSearch:
    """The search's setup (dense pass, candidate layers, objective) and its loop: ``run()``
    refines ``start`` (Eq. 11's counts) and returns an :class:`Allocation` whose ``search`` holds
    the report (KL at the start and the end, candidates, settings found, time)."""

    @torch.no_grad()
    def __init__(
        self,
        model,
        adapter: ModelAdapter,
        method: Method,
        config: PruneConfig,
        start: Allocation,
        costs: list[LayerCosts],
        layer0_inputs: list[LayerBatch],
        device,
        *,
        cosines: list[float],
        ratio_base: int,
        progress: bool = True,
        cores: CoreShare | None = None,
    ):
        self.begin = time.perf_counter()
        self.cores = cores
        self.config, self.start, self.costs, self.progress = config, start, costs, progress
        self.options: SearchOptions = method.allocation_options
        self.cosines, self.ratio_base = cosines, ratio_base
        fit, held_out = split_batches(layer0_inputs)
        fit, held_out = _cap_tokens(fit, MAX_FIT_TOKENS), _cap_tokens(held_out, MAX_KL_TOKENS)
        layers = adapter.layers(model)
        self.space = SearchSpace.build(costs, start.target_removed, self.options, method.adds_bias)
        fit_inputs, held = [], held_out
        for index, layer in enumerate(
            progress_bar(layers, desc="search: dense pass", disable=not progress, leave=False)
        ):
            self._adjust_threads()
            fit_inputs.append(fit)
            with on_device(layer, device):
                fit, held = run_layer(layer, index, fit), run_layer(layer, index, held)
        pruner = LayerPruner(adapter, candidate_method(method), config, start, costs, device)
        self.candidates = CandidateLayers(adapter, pruner, layers, fit_inputs, device)
        self.objective = KlObjective(model, adapter, self.space, self.candidates, held_out, device)
        self.objective.set_dense(held)
        self.fit_tokens = _tokens(fit_inputs[0])

    def _adjust_threads(self) -> None:
        if self.cores is not None:
            self.cores.adjust()

    def start_state(self, rng: random.Random) -> State:
        """Eq. 11's counts, FFN widths snapped to the grid and the budget restored."""
        state = self.state_from(self.start, 1.0, rng)
        if state is None:
            raise ConfigError("the allocation search found no FFN widths on its grid that meet the parameter target")
        return state

    def state_from(self, allocation: Allocation, head_share: float, rng: random.Random) -> State | None:
        """``allocation``'s counts with ``head_share`` times its heads in each layer, the FFN taking
        up (or giving back) the difference so each layer keeps its budget; the FFN widths snapped
        to the grid, then the total restored. None when the budget cannot be met."""
        space, units, levels = self.space, [], []
        for i, cost in enumerate(self.costs):
            heads, channels = allocation.units_to_prune[i], allocation.channels_to_prune[i]
            budget = removed_params(cost, heads, channels, space.adds_bias)
            heads = min(space.max_units[i], round(head_share * heads))
            left = budget - removed_params(cost, heads, 0, space.adds_bias)
            level = round(left / cost.channel_params / space.step[i])
            units.append(heads)
            levels.append(min(space.max_level[i], max(0, level)))
        state = State(units, levels)
        return state if space.rebalance(state, rng) else None

    def eq11_settings(self, around: dict | None = None) -> list[tuple[str, float]]:
        """The coordinate phase's trials: the heads' share of each layer's budget, Eq. 11's α and
        L_p. The first pass spans a wide grid around Eq. 11's own settings; later passes (``around``
        the best so far) try half-steps either side."""
        total = len(self.costs)
        if around is None:
            alpha, count = self.start.alpha, self.start.pruned_layers
            trials = [("head_share", v) for v in (0.0, 0.5, 1.5, 2.0)]
            trials += [("alpha", alpha * f) for f in (0.0, 0.5, 1.5, 2.0)]
            layer_counts = {max(1, round(total * f)) for f in (0.5, 2 / 3, 5 / 6, 1.0)} - {count}
            return trials + [("layers", v) for v in sorted(layer_counts)]
        share, alpha, count = around["head_share"], around["alpha"], around["layers"]
        trials = [("head_share", max(0.0, share + d)) for d in (-0.25, 0.25) if share + d >= 0]
        trials += [("alpha", alpha * f) for f in (0.75, 1.5)] if alpha > 0 else [("alpha", self.start.alpha / 2)]
        return trials + [("layers", c) for c in (count - 2, count + 2) if 1 <= c <= total]

    def eq11_allocation(self, alpha: float, layers: int) -> Allocation | None:
        try:
            return allocate(
                self.cosines,
                self.costs,
                self.ratio_base,
                ratio=self.config.ratio,
                pruned_layers=layers,
                alpha=alpha,
                max_layer_ratio=self.options.max_layer_ratio,
                regression=self.space.adds_bias,
                round_to=self.options.round_to,
            )
        except AllocationError:
            return None

    @torch.no_grad()
    def run(self) -> Allocation:
        config, options, space, objective = self.config, self.options, self.space, self.objective
        rng = random.Random(config.seed)
        state = self.start_state(rng)
        best, inputs = objective(state)
        objective.accept(state, inputs)
        start_kl, evaluations, accepted, history = best, 1, 0, [(1, best)]
        deadline = self.begin + 60 * options.search_minutes
        bar = progress_bar(
            total=options.search_steps, desc="search: KL to dense", disable=not self.progress, leave=False
        )
        settings = {"head_share": 1.0, "alpha": self.start.alpha, "layers": self.start.pruned_layers}
        coordinates, improved_in_pass = self.eq11_settings(), False

        def within_budget() -> bool:
            steps = options.search_steps
            return time.perf_counter() < deadline and (steps is None or evaluations < steps)

        while within_budget():
            trial = None
            if not coordinates and improved_in_pass:  # another, finer pass while passes help
                coordinates, improved_in_pass = self.eq11_settings(settings), False
            if coordinates:  # first, passes over Eq. 11's own settings, one at a time
                name, value = coordinates.pop(0)
                trial = {**settings, name: value}
                allocation = self.eq11_allocation(trial["alpha"], trial["layers"])
                child = None if allocation is None else self.state_from(allocation, trial["head_share"], rng)
            else:  # then single-level moves
                child = mutate(state, space, rng)
            if child is None:
                continue
            self._adjust_threads()
            loss, inputs = objective(child)
            kept = child if loss < best else state
            self.candidates.forget_unused(kept.units, [space.channels(i, g) for i, g in enumerate(kept.levels)])
            evaluations += 1
            bar.update(1)
            if loss < best:
                state, best, accepted = child, loss, accepted + 1
                settings = trial or settings
                improved_in_pass = improved_in_pass or trial is not None
                objective.accept(child, inputs)
                history.append((evaluations, best))
                bar.set_postfix(kl=f"{best:.4f}", start=f"{start_kl:.4f}")
        bar.close()
        report = {
            "start_kl": start_kl,
            "kl": best,
            "evaluations": evaluations,
            "eq11_settings": settings,
            "accepted": accepted,
            "history": history,
            "candidate_parts_built": len(self.candidates.parts) + self.candidates.forgotten,
            "candidate_parts_forgotten": self.candidates.forgotten,
            "candidate_seconds": self.candidates.seconds,
            "seconds": time.perf_counter() - self.begin,
            "held_out_tokens": objective.tokens,
            "fit_tokens": self.fit_tokens,
            "ffn_step_channels": list(space.step),
            "minutes": options.search_minutes,
            "steps": options.search_steps,
        }
        return _as_allocation(state, space, self.start, self.costs, options, report)


def _as_allocation(
    state: State, space: SearchSpace, start: Allocation, costs: list[LayerCosts], options: SearchOptions, report: dict
) -> Allocation:
    channels = {i: space.channels(i, level) for i, level in enumerate(state.levels)}
    prunable = [cost.num_units * cost.unit_params + cost.width * cost.channel_params for cost in costs]
    ratios = {
        i: removed_params(costs[i], state.units[i], channels[i], space.adds_bias) / prunable[i]
        for i in range(len(costs))
    }
    if options.round_to == 1:
        channels = close_gap(space.target - space.removed(state), channels, ratios, costs, options.max_layer_ratio)
    planned = sum(removed_params(costs[i], state.units[i], channels[i], space.adds_bias) for i in range(len(costs)))
    return Allocation(
        selected=[i for i in range(len(costs)) if state.units[i] or channels[i]],
        ratios=[ratios[i] for i in range(len(costs))],
        units_to_prune=list(state.units),
        channels_to_prune=[channels[i] for i in range(len(costs))],
        r0=start.r0,
        pruned_layers=start.pruned_layers,
        alpha=start.alpha,
        target_removed=start.target_removed,
        planned_removed=round(planned),
        search=report,
    )
