"""Baseline criteria from the structured-pruning literature, in SlimLLM's harness.

Each criterion scores the same structures SlimLLM prunes (query heads, or key/value groups with
``--gqa group``, and FFN channels) and keeps all but the ``num_prune`` lowest. They see the same
streaming statistics (:class:`~slimllm.importance.AttentionStats`, :class:`~slimllm.importance.MlpStats`)
taken on inputs that went through the already-pruned earlier layers, so every method runs through
one pipeline, surgery and saving. Notation: ``W_o`` = ``o_proj.weight`` (d × h·d_h), whose
column c reads input feature c; ``W_down`` = ``down_proj.weight`` (d × d_ff).

- ``magnitude`` (FLAP's "magnitude-sp"): a head's score is Σ_{c∈head} ‖W_o[:, c]‖₂, a channel's
  ‖W_down[:, j]‖₂. As in FLAP's code, only the output projection's columns are used.
- ``wanda-sp`` (FLAP's structured Wanda): S_c = mean_i |W[i, c]| · ‖X_c‖₂ with X the input of
  ``o_proj``/``down_proj`` over all calibration tokens; a head sums S_c over its columns.
- ``flap`` (FLAP, WIFV metric): m_c = Var(X_c) · ‖W[:, c]‖₂². For attention FLAP squares it,
  standardises m_c² over the layer's columns and averages over each head's columns; for the FFN it
  standardises m_j over the layer's channels. Standardised scores are what FLAP's adaptive
  structure compares across layers (see :class:`FlapAllocation`).
- ``taylor`` (LLM-Pruner, ``param_first``): Σ |w · ∂L/∂w| over every weight of the structure,
  with gradients of the calibration LM loss on the dense model (see :class:`TaylorScores`).
- ``random``: uniform random scores from a seeded generator (the floor).

A key/value head shared by several query heads (grouped-query attention, not in the papers) is
split evenly: each of its g query heads is credited 1/g of the k/v term (Taylor) — the criteria
that read only ``o_proj`` need no such rule.
"""

from __future__ import annotations

import logging

import torch

from slimllm.allocation import Allocation, AllocationError, removed_params
from slimllm.calibrate import hooks, on_device, run_layer
from slimllm.importance import AttentionStats, MlpStats, Selection, lowest_scores_pruned
from slimllm.models.base import UnsupportedModelError
from slimllm.plan import Recovery
from slimllm.recovery import bias_compensation
from slimllm.stats import Moments

logger = logging.getLogger("slimllm.methods")


# -- helpers -------------------------------------------------------------------------------------
def per_head(column_scores: torch.Tensor, head_dim: int, reduce: str = "sum") -> torch.Tensor:
    """Column scores of ``o_proj`` (length h·d_h) reduced to one score per query head."""
    blocks = column_scores.reshape(-1, head_dim)
    return blocks.sum(1) if reduce == "sum" else blocks.mean(1)


def per_unit(head_scores: torch.Tensor, units: list[list[int]]) -> torch.Tensor:
    """Query-head scores summed over each prunable unit."""
    return torch.stack([head_scores[u].sum() for u in units])


def standardise(x: torch.Tensor) -> torch.Tensor:
    """FLAP's ``(x − mean) / std`` over one layer's structures (unbiased std, as torch.std)."""
    x = x.to(torch.float64)
    std = x.std()
    return (x - x.mean()) / std if std > 0 else x - x.mean()


def _selection(scores: torch.Tensor, num_prune: int) -> Selection:
    scores = scores.detach().to(torch.float64).cpu()
    return Selection(lowest_scores_pruned(scores, num_prune), scores.tolist())


def _weight(linear: torch.nn.Linear) -> torch.Tensor:
    return linear.weight.detach().to(torch.float64)


# -- magnitude-sp ---------------------------------------------------------------------------------
class MagnitudeHeads:
    name = "magnitude"

    def select(self, stats: AttentionStats, num_prune: int) -> Selection:
        columns = _weight(stats.parts.o_proj).norm(dim=0)
        return _selection(per_unit(per_head(columns, stats.parts.head_dim), stats.units), num_prune)


class MagnitudeChannels:
    name = "magnitude"

    def select(self, stats: MlpStats, num_prune: int) -> Selection:
        return _selection(_weight(stats.parts.down_proj).norm(dim=0), num_prune)


# -- wanda-sp -------------------------------------------------------------------------------------
def wanda_columns(weight: torch.Tensor, input_square_sum: torch.Tensor) -> torch.Tensor:
    """mean_i |W[i, c]| · ‖X_c‖₂ for every input column c."""
    norms = input_square_sum.to(torch.float64).clamp(min=0).sqrt().to(weight.device)
    return (weight.abs() * norms).mean(0)


class WandaSpHeads:
    name = "wanda-sp"

    def select(self, stats: AttentionStats, num_prune: int) -> Selection:
        columns = wanda_columns(_weight(stats.parts.o_proj), stats.o_input.square_sum)
        return _selection(per_unit(per_head(columns, stats.parts.head_dim), stats.units), num_prune)


class WandaSpChannels:
    name = "wanda-sp"

    def select(self, stats: MlpStats, num_prune: int) -> Selection:
        return _selection(wanda_columns(_weight(stats.parts.down_proj), stats.hidden.square_sum), num_prune)


# -- FLAP -----------------------------------------------------------------------------------------
def fluctuation(weight: torch.Tensor, input_variance: torch.Tensor) -> torch.Tensor:
    """WIFV: Var(X_c) · ‖W[:, c]‖₂² for every input column c."""
    return input_variance.to(torch.float64).to(weight.device) * weight.pow(2).sum(0)


def flap_head_scores(o_weight: torch.Tensor, input_variance: torch.Tensor, head_dim: int, units) -> torch.Tensor:
    """Standardised (WIFV)² of the ``o_proj`` columns, averaged over each unit's columns."""
    z = standardise(fluctuation(o_weight.detach().to(torch.float64), input_variance) ** 2)
    blocks = z.reshape(-1, head_dim)
    return torch.stack([blocks[u].mean() for u in units])


def flap_channel_scores(down_weight: torch.Tensor, hidden_variance: torch.Tensor) -> torch.Tensor:
    """Standardised WIFV of the ``down_proj`` columns."""
    return standardise(fluctuation(down_weight.detach().to(torch.float64), hidden_variance))


class FlapHeads:
    name = "flap"

    def select(self, stats: AttentionStats, num_prune: int) -> Selection:
        scores = flap_head_scores(
            _weight(stats.parts.o_proj), stats.o_input.variance, stats.parts.head_dim, stats.units
        )
        return _selection(scores, num_prune)


class FlapChannels:
    name = "flap"

    def select(self, stats: MlpStats, num_prune: int) -> Selection:
        return _selection(flap_channel_scores(_weight(stats.parts.down_proj), stats.hidden.variance), num_prune)


class BiasCompensation:
    """FLAP's recovery: the removed inputs' mean contribution becomes a bias of the output
    projection, W[:, removed] · E[x_removed] (the means are those of the current inputs)."""

    name = "bias-compensation"
    needs_output_pass = False
    adds_bias = True

    def attention(self, stats: AttentionStats, kept_heads: list[int]) -> Recovery:
        head_dim = stats.parts.head_dim
        kept = set(kept_heads)
        removed = [
            h * head_dim + i for h in range(len(stats.parts.query_to_kv)) if h not in kept for i in range(head_dim)
        ]
        return bias_compensation(stats.o_input.mean, stats.parts.o_proj.weight, removed)

    def mlp(self, stats: MlpStats, kept: list[int], paired) -> Recovery:
        kept_set = set(kept)
        removed = [j for j in range(stats.parts.width) if j not in kept_set]
        return bias_compensation(stats.hidden.mean, stats.parts.down_proj.weight, removed)


# -- LLM-Pruner's Taylor --------------------------------------------------------------------------
class TaylorScores:
    """First-order Taylor importance from one backward pass of the calibration loss.

    ``prepare`` is the method's ``prepare`` hook: it sums the gradients of the LM loss over the
    calibration windows (the dense model, as LLM-Pruner), then stores per layer Σ|w·g| per query
    head (q rows + o columns + 1/g of its k/v rows) and per channel (gate row + up row + down
    column). The criteria look the scores up by the layer's ``o_proj``/``down_proj`` module.
    Only the projection weights get gradients; flags and ``.grad`` are restored afterwards.
    """

    def __init__(self, batch_size: int = 8):
        self.batch_size = batch_size
        self.heads: dict[torch.nn.Module, torch.Tensor] = {}
        self.channels: dict[torch.nn.Module, torch.Tensor] = {}
        self.memory: dict[str, float] = {}

    def memory_estimate(self, model, adapter, windows: torch.Tensor) -> dict[str, float]:
        """Bytes the backward pass needs: weights, the projection gradients and activations."""
        config = model.config
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        projections = [p for layer in adapter.layers(model) for p in _projection_weights(adapter, layer)]
        grads = sum(p.numel() * 4 for p in projections)
        tokens = min(self.batch_size, windows.shape[0]) * windows.shape[1]
        per_token_layer = 10 * config.hidden_size + 3 * config.intermediate_size
        activations = tokens * 4 * (per_token_layer * config.num_hidden_layers + 3 * config.vocab_size)
        return {
            "weights": weights,
            "gradients": grads,
            "activations": activations,
            "total": weights + grads + activations,
        }

    def prepare(self, model, adapter, layer0_batches, windows: torch.Tensor, device) -> None:
        self.memory = self.memory_estimate(model, adapter, windows)
        size = {k: _human_bytes(v) for k, v in self.memory.items()}
        logger.warning(
            "taylor: the backward pass over %d calibration windows needs about %s "
            "(weights %s + projection gradients %s + activations of one batch of %d %s)",
            windows.shape[0], size["total"], size["weights"], size["gradients"], self.batch_size, size["activations"],
        )  # fmt: skip
        layers = list(adapter.layers(model))
        params = [p for layer in layers for p in _projection_weights(adapter, layer)]
        all_params = list(model.parameters())
        if not {id(p) for p in params} <= {id(p) for p in all_params}:
            raise UnsupportedModelError(
                f"taylor needs each projection's own weight gradient; {model.config.model_type} fuses its "
                "projections (q/k/v or gate/up), so use another method"
            )
        flags = [p.requires_grad for p in all_params]
        home = next(model.parameters()).device
        try:
            for p in all_params:
                p.requires_grad_(False)
            for p in params:
                p.requires_grad_(True)
                p.grad = None
            if torch.device(device) != home:
                model.to(device)
            with torch.enable_grad():
                for start in range(0, windows.shape[0], self.batch_size):
                    batch = windows[start : start + self.batch_size].to(device)
                    out = model(input_ids=batch, labels=batch, use_cache=False)
                    # the mean over windows, so the scale does not depend on the batch size
                    (out.loss * batch.shape[0] / windows.shape[0]).backward()
            for layer in layers:
                self._score_layer(adapter, layer)
        finally:
            for p in params:
                p.grad = None
            for p, flag in zip(all_params, flags, strict=True):
                p.requires_grad_(flag)
            if torch.device(device) != home:
                model.to(home)

    @torch.no_grad()
    def _score_layer(self, adapter, layer) -> None:
        attn, mlp = adapter.attention(layer), adapter.mlp(layer)
        dh = attn.head_dim

        def salience(linear: torch.nn.Linear) -> torch.Tensor:
            grad = linear.weight.grad
            if grad is None:
                return torch.zeros_like(linear.weight, dtype=torch.float64, device="cpu")
            return (linear.weight.detach().to(torch.float64) * grad.to(torch.float64)).abs().cpu()

        q = salience(attn.q_proj).sum(1).reshape(-1, dh).sum(1)
        o = salience(attn.o_proj).sum(0).reshape(-1, dh).sum(1)
        kv = (salience(attn.k_proj).sum(1) + salience(attn.v_proj).sum(1)).reshape(-1, dh).sum(1)
        sharing = torch.bincount(torch.tensor(attn.query_to_kv), minlength=kv.numel()).to(torch.float64)
        shared = torch.tensor([kv[g] / sharing[g] for g in attn.query_to_kv], dtype=torch.float64)
        self.heads[attn.o_proj] = q + o + shared
        self.channels[mlp.down_proj] = (
            salience(mlp.gate_proj).sum(1) + salience(mlp.up_proj).sum(1) + salience(mlp.down_proj).sum(0)
        )

    def head_scores(self, stats: AttentionStats) -> torch.Tensor:
        try:
            return self.heads[stats.parts.o_proj]
        except KeyError:
            raise RuntimeError("taylor scores missing for this layer: the method's prepare hook did not run") from None

    def channel_scores(self, stats: MlpStats) -> torch.Tensor:
        try:
            return self.channels[stats.parts.down_proj]
        except KeyError:
            raise RuntimeError("taylor scores missing for this layer: the method's prepare hook did not run") from None


def _human_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _projection_weights(adapter, layer) -> list[torch.nn.Parameter]:
    attn, mlp = adapter.attention(layer), adapter.mlp(layer)
    return [
        m.weight
        for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    ]


class TaylorHeads:
    name = "taylor"

    def __init__(self, scores: TaylorScores):
        self.scores = scores

    def select(self, stats: AttentionStats, num_prune: int) -> Selection:
        return _selection(per_unit(self.scores.head_scores(stats), stats.units), num_prune)


class TaylorChannels:
    name = "taylor"

    def __init__(self, scores: TaylorScores):
        self.scores = scores

    def select(self, stats: MlpStats, num_prune: int) -> Selection:
        return _selection(self.scores.channel_scores(stats), num_prune)


# -- random ---------------------------------------------------------------------------------------
class RandomScores:
    """One seeded generator for the whole run: layers draw in order, so a seed fixes the choice."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, dtype=torch.float64)


class RandomHeads:
    name = "random"

    def __init__(self, scores: RandomScores):
        self.scores = scores

    def select(self, stats: AttentionStats, num_prune: int) -> Selection:
        return _selection(self.scores.draw(len(stats.units)), num_prune)


class RandomChannels:
    name = "random"

    def __init__(self, scores: RandomScores):
        self.scores = scores

    def select(self, stats: MlpStats, num_prune: int) -> Selection:
        return _selection(self.scores.draw(stats.parts.width), num_prune)


# -- FLAP's adaptive structure --------------------------------------------------------------------
def attention_units(query_to_kv: list[int], gqa: str) -> list[list[int]]:
    """The prunable units of a layer (same rule as the pipeline)."""
    if gqa == "query":
        return [[h] for h in range(len(query_to_kv))]
    return [[h for h, kv in enumerate(query_to_kv) if kv == g] for g in range(max(query_to_kv) + 1)]


def _grab(linear: torch.nn.Linear, moments: Moments):
    """A hook registration that streams ``linear``'s input into ``moments``."""
    return lambda: linear.register_forward_pre_hook(lambda _module, args: moments.update(args[0]))


class FlapAllocation:
    """FLAP's adaptive structure ("AL-AM"): one global threshold over the standardised scores of
    every head and channel of every layer, on statistics of the dense model.

    ``prepare`` walks the dense layers once (the inputs of each layer are the dense outputs of the
    one before, as in FLAP) and records the standardised head and channel scores. ``__call__`` is
    the method's ``allocator``: structures are removed from the lowest score up, each weighing
    what it costs in parameters (a head's q rows and o columns; a channel's three vectors), until
    the removed total is closest to the target fraction of *all* parameters. Differences from
    FLAP, both forced by the harness: each layer keeps at least one unit and one channel, and with
    ``round_to`` > 1 the kept channels are rounded to multiples afterwards (the realised ratio is
    reported).
    """

    def __init__(self, gqa: str = "query", adds_bias: bool = True):
        self.gqa = gqa
        self.adds_bias = adds_bias
        self.head_scores: list[torch.Tensor] = []
        self.channel_scores: list[torch.Tensor] = []

    @torch.no_grad()
    def prepare(self, model, adapter, layer0_batches, windows, device) -> None:
        self.head_scores, self.channel_scores = [], []
        batches = layer0_batches
        for index, layer in enumerate(adapter.layers(model)):
            attn, mlp = adapter.attention(layer), adapter.mlp(layer)
            o_in = Moments(attn.o_proj.in_features, device, full=False, where="o_proj input (FLAP)")
            h_in = Moments(mlp.width, device, full=False, where="down_proj input (FLAP)")
            with on_device(layer, device), hooks(_grab(attn.o_proj, o_in), _grab(mlp.down_proj, h_in)):
                batches = run_layer(layer, index, batches)
            units = attention_units(attn.query_to_kv, self.gqa)
            self.head_scores.append(flap_head_scores(_weight(attn.o_proj), o_in.variance, attn.head_dim, units).cpu())
            self.channel_scores.append(flap_channel_scores(_weight(mlp.down_proj), h_in.variance).cpu())

    def __call__(self, cosines, costs, dense_params: int, config):
        if len(self.head_scores) != len(costs):
            raise RuntimeError("FLAP allocation needs its prepare hook to run first")
        target = config.ratio * dense_params
        items = []  # (score, layer, is_head)
        for i, (heads, channels) in enumerate(zip(self.head_scores, self.channel_scores, strict=True)):
            items += [(float(s), i, True) for s in heads]
            items += [(float(s), i, False) for s in channels]
        items.sort(key=lambda t: (t[0], t[1], t[2]))
        units = [0] * len(costs)
        chans = [0] * len(costs)

        def total() -> float:
            return sum(removed_params(c, u, k, self.adds_bias) for c, u, k in zip(costs, units, chans, strict=True))

        removed = 0.0
        for _score, i, is_head in items:
            c = costs[i]
            if (is_head and units[i] >= c.num_units - 1) or (not is_head and chans[i] >= c.width - 1):
                continue
            before = removed_params(c, units[i], chans[i], self.adds_bias)
            if is_head:
                units[i] += 1
            else:
                chans[i] += 1
            step = removed_params(c, units[i], chans[i], self.adds_bias) - before
            if removed + step - target > target - removed:  # the closest prefix (FLAP's argmin)
                if is_head:
                    units[i] -= 1
                else:
                    chans[i] -= 1
                break
            removed += step
        else:
            if removed < target - max(c.channel_params for c in costs):
                raise AllocationError(f"FLAP allocation cannot remove {config.ratio:.1%} of the parameters")
        if config.round_to > 1:
            for i, c in enumerate(costs):
                if chans[i] and c.width >= config.round_to:
                    keep = c.width - chans[i]
                    keep = max(config.round_to, config.round_to * round(keep / config.round_to))
                    chans[i] = min(c.width - 1, max(0, c.width - keep))
        ratios = []
        for c, u, k in zip(costs, units, chans, strict=True):
            prunable = c.num_units * c.unit_params + c.width * c.channel_params
            ratios.append((u * c.unit_params + k * c.channel_params) / prunable if prunable else 0.0)
        selected = [i for i in range(len(costs)) if units[i] or chans[i]]
        return Allocation(
            selected=selected,
            ratios=ratios,
            units_to_prune=units,
            channels_to_prune=chans,
            r0=sum(ratios) / len(ratios) if ratios else 0.0,
            pruned_layers=len(selected),
            alpha=0.0,  # not Eq. 11
            target_removed=round(target),
            planned_removed=round(total()),
        )


__all__ = [
    "BiasCompensation",
    "FlapAllocation",
    "FlapChannels",
    "FlapHeads",
    "MagnitudeChannels",
    "MagnitudeHeads",
    "RandomChannels",
    "RandomHeads",
    "RandomScores",
    "TaylorChannels",
    "TaylorHeads",
    "TaylorScores",
    "WandaSpChannels",
    "WandaSpHeads",
    "fluctuation",
    "standardise",
    "wanda_columns",
]
