"""Pruning one decoder layer: its heads, then its channels, each with the method's criteria and
recovery, on the layer's calibration inputs; the running parameter budget kept on target."""

from __future__ import annotations

import torch

from slimllm.allocation import Allocation, attention_units, removed_params
from slimllm.config import PruneConfig
from slimllm.importance import AttentionStats, MlpStats
from slimllm.layer_walk import (
    DenseStates,
    LayerActivations,
    LayerBatch,
    activations_for_layer,
    collect_attention_stats,
    collect_mlp_stats,
    collect_paired_outputs,
    dense_states,
    dense_states_with_attention_stats,
    propagate,
)
from slimllm.methods import Method
from slimllm.plan import LayerPlan
from slimllm.runtime import count_parameters
from slimllm.surgery import head_rows, prune_channels, prune_heads, recover_attention, recover_mlp


class LayerPruner:
    """Prunes one layer at a time, keeping the running parameter budget on target.

    The layer's ``o_proj`` and ``down_proj`` inputs are kept (within ``config.cache_gb``) while it
    is pruned, so that after each surgery the changed part is replayed from them rather than run
    again: the statistics pass over the attention, one pass over the FFN and the propagation
    are the only passes (docs/method.md, "Cost").

    A recovery that aims at the dense model's hidden states (``--recovery ridge-dense``) has the
    dense model run alongside: each layer, before it is pruned, runs once more on the dense
    model's own inputs (:func:`slimllm.layer_walk.dense_states`). One that aims at the dense
    layer's output (``ridge-layer``) runs the dense layer to its output on the pruned model's
    inputs instead, in the same pass as the attention statistics."""

    def __init__(self, adapter, method: Method, config: PruneConfig, allocation: Allocation, costs, device):
        self.adapter, self.method, self.config = adapter, method, config
        self.allocation, self.costs, self.device = allocation, costs, device
        self.adds_bias = method.adds_bias
        self.surplus = 0.0  # parameters removed beyond the plan so far (kv heads that went with their queries)
        self.cache_peak_bytes = 0
        self.recomputed_layers: list[int] = []
        self.dense_alongside = method.recovery.dense_targets and adapter.residual_outputs
        self.dense_inputs: list[LayerBatch] | None = None  # the dense model's inputs to the next layer

    def __call__(self, index: int, layer, batches: list[LayerBatch], cosine: float) -> tuple[LayerPlan, list]:
        """Prune layer ``index`` in place; returns its plan and its outputs (the next layer's inputs)."""
        record = self.blank_record(index, layer, self.allocation.ratios[index], cosine)
        planned_units = self.allocation.units_to_prune[index]
        planned_channels = self.allocation.channels_to_prune[index]
        kept = self.activations(index, layer, batches, bool(planned_units or planned_channels))
        dense, attention_stats = None, None
        if self.dense_alongside and self.method.recovery.dense_inputs:
            dense = dense_states(self.adapter, layer, index, self.dense_inputs or batches)
            self.dense_inputs = dense.output
        elif self.dense_alongside:
            # On the pruned model's own inputs, the dense state after the attention less the input
            # is o_proj's own dense output, which the attention's ridge already aims at: only the
            # dense layer's output is new, and the pass that yields it also takes the statistics.
            if planned_units:
                dense, attention_stats = dense_states_with_attention_stats(
                    self.adapter, layer, index, batches, self.units(layer), self.device, kept,
                    split=self.method.recovery.held_out_moments,
                )  # fmt: skip
            else:
                dense = dense_states(self.adapter, layer, index, batches, after_attention=False)
        if planned_units:
            if attention_stats is None:
                attention_stats = self.attention_stats(layer, index, batches, kept, dense)
            removed = self.apply_attention(layer, attention_stats, planned_units, record, kept)
            self.surplus += removed - removed_params(self.costs[index], planned_units, 0, self.adds_bias)
        if planned_channels:
            # Spend or give back the surplus here, in whole channels, so the total stays on target.
            adjust = round(self.surplus / self.costs[index].channel_params)
            channels = min(self.adapter.mlp(layer).width - 1, max(0, planned_channels - adjust))
            removed = self.prune_mlp(layer, index, batches, channels, record, kept, dense) if channels else 0
            self.surplus += removed - removed_params(self.costs[index], 0, planned_channels, self.adds_bias)
        self.cache_peak_bytes = max(self.cache_peak_bytes, kept.peak_bytes)
        return record, propagate(self.adapter, layer, index, batches, kept)

    def blank_record(self, index: int, layer, ratio: float, cosine: float) -> LayerPlan:
        attn, mlp = self.adapter.attention(layer), self.adapter.mlp(layer)
        return LayerPlan(
            index=index,
            kept_heads=list(range(attn.num_heads)),
            kept_kv_heads=list(range(attn.num_kv_heads)),
            query_to_kv=list(attn.query_to_kv),
            kept_channels=list(range(mlp.width)),
            ratio=ratio,
            cosine=cosine,
        )

    def activations(self, index: int, layer, batches, pruned: bool) -> LayerActivations:
        if not pruned:
            return LayerActivations(device=None)
        attn, mlp = self.adapter.attention(layer), self.adapter.mlp(layer)
        widths = attn.o_proj.in_features + mlp.width
        if self.method.recovery.needs_output_pass:
            widths += mlp.down_proj.out_features
        kept = activations_for_layer(batches, widths, self.device, self.config.cache_gb * 2**30)
        if not kept.keeping:
            self.recomputed_layers.append(index)
        return kept

    def units(self, layer) -> list[list[int]]:
        return attention_units(self.adapter.attention(layer).query_to_kv, self.config.gqa)

    def attention_stats(
        self, layer, index: int, batches, kept: LayerActivations, dense: DenseStates | None = None
    ) -> AttentionStats:
        split = self.method.recovery.held_out_moments
        return collect_attention_stats(
            self.adapter, layer, index, batches, self.units(layer), self.device, kept, split=split, dense=dense
        )

    def apply_attention(self, layer, stats: AttentionStats, num_units: int, record: LayerPlan, kept) -> int:
        """Select and cut the heads on ``stats`` (taken on this layer while dense), fold the recovery in."""
        adapter = self.adapter
        before = count_parameters(adapter.attention_module(layer))
        selection = self.method.heads.select(stats, num_units)
        kept_heads = sorted(h for u in selection.kept for h in stats.units[u])
        recovery = self.method.recovery.attention(stats, kept_heads)  # from the dense o_proj, before surgery
        record.kept_kv_heads, record.query_to_kv = prune_heads(adapter, layer, kept_heads)
        record.kept_heads, record.head_scores = kept_heads, selection.scores
        kept.keep_attention_columns(torch.tensor(head_rows(kept_heads, stats.parts.head_dim), dtype=torch.long))
        if recovery is not None:
            recover_attention(adapter, layer, recovery)
            record.attn_recovery = recovery
        return before - count_parameters(adapter.attention_module(layer))

    def prune_mlp(
        self, layer, index: int, batches, num_channels: int, record: LayerPlan, kept, dense: DenseStates | None = None
    ) -> int:
        stats = self.mlp_stats(layer, index, batches, kept, dense)
        return self.apply_mlp(layer, index, batches, stats, num_channels, record, kept)

    def mlp_stats(
        self, layer, index: int, batches, kept: LayerActivations, dense: DenseStates | None = None
    ) -> MlpStats:
        paired_pass = self.method.recovery.needs_output_pass
        split = self.method.recovery.held_out_moments or getattr(self.method.channels, "needs_full_moments", False)
        return collect_mlp_stats(
            self.adapter, layer, index, batches, self.device, kept, paired_pass=paired_pass, split=split, dense=dense
        )

    def apply_mlp(self, layer, index: int, batches, stats: MlpStats, num_channels: int, record: LayerPlan, kept) -> int:
        """Select and cut the channels on ``stats`` (taken on this FFN while dense), fold the recovery in."""
        adapter = self.adapter
        before = count_parameters(adapter.mlp_module(layer))
        kept_channels = self.method.channels.select(stats, num_channels).kept
        paired = None
        if self.method.recovery.needs_output_pass:
            paired = collect_paired_outputs(adapter, layer, index, batches, kept_channels, self.device, kept)
        recovery = self.method.recovery.mlp(stats, kept_channels, paired)
        prune_channels(adapter, layer, kept_channels)
        kept.keep_mlp_channels(torch.tensor(kept_channels, dtype=torch.long))
        record.kept_channels = kept_channels
        if recovery is not None:
            recover_mlp(adapter, layer, recovery)
            record.mlp_recovery = recovery
        return before - count_parameters(adapter.mlp_module(layer))
