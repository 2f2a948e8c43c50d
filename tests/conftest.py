"""Fixtures: a tiny random model of each family, and calibration token windows."""

from __future__ import annotations

import pytest
import torch

from tiny_models import FAMILIES, VOCAB, logits, tiny_llama  # noqa: F401  (older tests import them from here)


@pytest.fixture(params=sorted(FAMILIES))
def tiny_model(request):
    return FAMILIES[request.param]()


@pytest.fixture
def calib_data():
    return torch.randint(0, VOCAB, (12, 24), generator=torch.Generator().manual_seed(7))
