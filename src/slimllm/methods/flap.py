"""FLAP (An et al., AAAI 2024): fluctuation scores, bias compensation, and the adaptive structure
that compares standardised scores across layers."""

from __future__ import annotations

import torch

from slimllm import parallel
from slimllm.allocation import (
    Allocation,
    AllocationError,
    FlapAllocationOptions,
    attention_units,
    removed_params,
    rounded_channel_count,
)
from slimllm.importance import AttentionStats, MlpStats, Selection
from slimllm.importance.baselines import flap_channel_scores, flap_head_scores, selection, weight64
from slimllm.layer_walk import hooks, on_device, run_layer
from slimllm.methods.base import Criteria, MethodSpec, register
from slimllm.plan import Recovery
from slimllm.recovery import bias_compensation
from slimllm.stats import Moments


class FlapHeads:
    name = "flap"

    def select(self, stats: AttentionStats, num_prune: int) -> Selection:
        scores = flap_head_scores(
            weight64(stats.parts.o_proj), stats.o_input.variance, stats.parts.head_dim, stats.units
        )
        return selection(scores, num_prune)


class FlapChannels:
    name = "flap"

    def select(self, stats: MlpStats, num_prune: int) -> Selection:
        return selection(flap_channel_scores(weight64(stats.parts.down_proj), stats.hidden.variance), num_prune)


class BiasCompensation:
    """FLAP's recovery: the removed inputs' mean contribution becomes a bias of the output
    projection, W[:, removed] · E[x_removed] (the means are those of the current inputs)."""

    name = "bias-compensation"
    needs_output_pass = False
    held_out_moments = False
    dense_targets = False
    dense_inputs = False
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


# -- FLAP's adaptive structure --------------------------------------------------------------------
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

    def __init__(self, gqa: str = "query", adds_bias: bool = True, options: FlapAllocationOptions | None = None):
        self.gqa = gqa
        self.adds_bias = adds_bias
        self.options = options or FlapAllocationOptions()
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
            with on_device(layer, device):  # the scores read the weights: inside, where they are resident
                with hooks(_grab(attn.o_proj, o_in), _grab(mlp.down_proj, h_in)):
                    batches = run_layer(layer, index, batches)
                parallel.merge_moments(o_in)
                parallel.merge_moments(h_in)
                units = attention_units(attn.query_to_kv, self.gqa)
                o_weight, down_weight = weight64(attn.o_proj), weight64(mlp.down_proj)
                self.head_scores.append(flap_head_scores(o_weight, o_in.variance, attn.head_dim, units).cpu())
                self.channel_scores.append(flap_channel_scores(down_weight, h_in.variance).cpu())

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
        round_to = self.options.round_to
        if round_to > 1:
            rounded = [rounded_channel_count(k, c.width, round_to) for k, c in zip(chans, costs, strict=True)]
            chans = [r if k else 0 for r, k in zip(rounded, chans, strict=True)]
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


register(
    MethodSpec(
        "flap",
        "fluctuation of the output projection's inputs, bias compensation, FLAP's adaptive structure",
        "flap",
        lambda config, options: Criteria(FlapHeads(), FlapChannels(), BiasCompensation()),
    )
)
