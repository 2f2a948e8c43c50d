"""``slimllm bench``: every pruning method and ablation measured on the same model, calibration
and evaluation, in one resumable run.

    from slimllm.bench import BenchSpec, run_bench
    results = run_bench(BenchSpec("smollm2-135m", out="benchmarks/results/smollm2-135m",
                                  ratios=[0.2, 0.5], methods=["slimllm", "flap"], ablations=True))

Writes ``results.json`` (every number and setting), ``results.md`` (the tables), PNG plots and one
``cells/KEY.json`` per finished (row, ratio, seed) cell; a rerun skips finished cells.
"""

from slimllm.bench.runner import Bench, run_bench
from slimllm.bench.spec import ABLATIONS, DEFAULT_METHODS, BenchSpec, Cell

__all__ = ["ABLATIONS", "DEFAULT_METHODS", "Bench", "BenchSpec", "Cell", "run_bench"]
