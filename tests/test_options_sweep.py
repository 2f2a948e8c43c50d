"""benchmarks/options_sweep.py: the table it writes from its points."""

import pytest

from benchmark_scripts import load_benchmark_script


@pytest.fixture(scope="module")
def sweep():
    return load_benchmark_script("options_sweep")


def _point(option, seed, ppl, kl=None):
    return {
        "ratio": 0.2, "option": option, "size": "32x128", "seed": seed, "ppl": ppl, "prune_s": 10.0 * seed,
        "command": f"slimllm prune smollm2-135m --seed {seed}", "search_kl": kl,
    }  # fmt: skip


def test_rows_average_the_seeds_of_each_option(sweep):
    points = [
        _point("best", 43, 110.0, [0.6, 0.5]),
        _point("best", 42, 100.0, [0.61, 0.52]),
        _point("default", 42, 120.0),
    ]
    table = sweep.render_markdown(points, 256)
    best = next(line for line in table.splitlines() if "| best |" in line)
    assert "| 42, 43 | 100.00, 110.00 | 105.00 | 425 |" in best
    assert "0.610 → 0.520; 0.600 → 0.500" in best
    default = next(line for line in table.splitlines() if "| default |" in line)
    assert default.endswith("| 120.00 | 420 | – |")
    assert set(sweep.OPTIONS) >= {"default", "ridge", "search", "best"}
