"""Fixtures: a tiny random model of each family, and calibration token windows."""

from __future__ import annotations

import os

import pytest
import torch

from tiny_models import FAMILIES, VOCAB

EVALUATION_TEXT_MISSING = (
    "WikiText-2/PTB are not beside this clone: put the shared data folder at ../shared/data (or set "
    "SLIMLLM_SHARED_DATA to it); with a hub connection `datasets` fetches them instead"
)


def pytest_runtest_setup(item):
    """Tests marked ``evaluation_text`` skip with a reason on a clone without the evaluation texts;
    under ``SLIMLLM_REQUIRE_DATA=1`` (set by .ci/run) they fail instead, so CI never skips silently."""
    if item.get_closest_marker("evaluation_text") is None:
        return
    from slimllm.data.sources import shared_data_dir

    if shared_data_dir() is None:
        if os.environ.get("SLIMLLM_REQUIRE_DATA") == "1":
            pytest.fail(EVALUATION_TEXT_MISSING)
        pytest.skip(EVALUATION_TEXT_MISSING)


@pytest.fixture(params=sorted(FAMILIES))
def tiny_model(request):
    return FAMILIES[request.param]()


@pytest.fixture
def calib_data():
    return torch.randint(0, VOCAB, (12, 24), generator=torch.Generator().manual_seed(7))
