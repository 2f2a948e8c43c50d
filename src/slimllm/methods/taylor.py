"""LLM-Pruner's first-order Taylor importance (``param_first``), from one backward pass of the
calibration loss on the dense model."""

from __future__ import annotations

import logging

import torch

from slimllm.importance import AttentionStats, MlpStats, Selection
from slimllm.importance.baselines import per_unit, selection
from slimllm.methods.base import Criteria, MethodSpec, NoRecovery, register
from slimllm.models.base import UnsupportedModelError

logger = logging.getLogger("slimllm.methods")


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
        return selection(per_unit(self.scores.head_scores(stats), stats.units), num_prune)


class TaylorChannels:
    name = "taylor"

    def __init__(self, scores: TaylorScores):
        self.scores = scores

    def select(self, stats: MlpStats, num_prune: int) -> Selection:
        return selection(self.scores.channel_scores(stats), num_prune)


def _taylor(config, options) -> Criteria:
    scores = TaylorScores(batch_size=config.batch_size)
    return Criteria(TaylorHeads(scores), TaylorChannels(scores), NoRecovery(), prepare=scores.prepare)


register(MethodSpec("taylor", "Σ |w · ∂L/∂w| over each structure (LLM-Pruner)", "uniform", _taylor, whole_model=True))
