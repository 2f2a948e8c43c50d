"""The simple baselines: ``magnitude`` (FLAP's magnitude-sp), ``wanda-sp`` and ``random``.

Published with one ratio in every layer and no recovery; the scores are in
:mod:`slimllm.importance.baselines`.
"""

from __future__ import annotations

import torch

from slimllm.importance import AttentionStats, MlpStats, Selection
from slimllm.importance.baselines import per_head, per_unit, selection, wanda_columns, weight64
from slimllm.methods.base import Criteria, MethodSpec, NoRecovery, register


# -- magnitude-sp ---------------------------------------------------------------------------------
class MagnitudeHeads:
    name = "magnitude"

    def select(self, stats: AttentionStats, num_prune: int) -> Selection:
        columns = weight64(stats.parts.o_proj).norm(dim=0)
        return selection(per_unit(per_head(columns, stats.parts.head_dim), stats.units), num_prune)


class MagnitudeChannels:
    name = "magnitude"

    def select(self, stats: MlpStats, num_prune: int) -> Selection:
        return selection(weight64(stats.parts.down_proj).norm(dim=0), num_prune)


class WandaSpHeads:
    name = "wanda-sp"

    def select(self, stats: AttentionStats, num_prune: int) -> Selection:
        columns = wanda_columns(weight64(stats.parts.o_proj), stats.o_input.square_sum)
        return selection(per_unit(per_head(columns, stats.parts.head_dim), stats.units), num_prune)


class WandaSpChannels:
    name = "wanda-sp"

    def select(self, stats: MlpStats, num_prune: int) -> Selection:
        return selection(wanda_columns(weight64(stats.parts.down_proj), stats.hidden.square_sum), num_prune)


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
        return selection(self.scores.draw(len(stats.units)), num_prune)


class RandomChannels:
    name = "random"

    def __init__(self, scores: RandomScores):
        self.scores = scores

    def select(self, stats: MlpStats, num_prune: int) -> Selection:
        return selection(self.scores.draw(stats.parts.width), num_prune)


register(MethodSpec("magnitude", "‖W‖ of the output projection's columns (FLAP's magnitude-sp)", "uniform",
                    lambda config, options: Criteria(MagnitudeHeads(), MagnitudeChannels(), NoRecovery())))  # fmt: skip
register(MethodSpec("wanda-sp", "|W| · ‖X‖ of the output projection's columns (FLAP's structured Wanda)", "uniform",
                    lambda config, options: Criteria(WandaSpHeads(), WandaSpChannels(), NoRecovery())))  # fmt: skip


def _random(config, options) -> Criteria:
    scores = RandomScores(config.seed)
    return Criteria(RandomHeads(scores), RandomChannels(scores), NoRecovery())


register(MethodSpec("random", "seeded uniform random scores (the floor)", "uniform", _random))
