"""Which half of ``--method obs`` moves the result: OBS heads with the paper's channels, and the
paper's heads with OBS channels, both with ``--recovery ridge`` (docs/method.md §5c).

    python benchmarks/obs_components.py --nsamples 32 --seqlen 128 --seed 42

Prints the WikiText-2 perplexity on the first 256 windows of 128 tokens and the prune time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slimllm.cli import main
from slimllm.importance import FeatureSpaceChannels, PearsonGreedyHeads
from slimllm.importance.obs import ObsChannels, ObsHeads
from slimllm.methods.base import Criteria, MethodSpec, RidgeRecovery, register

MIXES = {
    "obs-heads": lambda config: Criteria(ObsHeads(), FeatureSpaceChannels(), RidgeRecovery()),
    "obs-channels": lambda config: Criteria(PearsonGreedyHeads(), ObsChannels(), RidgeRecovery()),
}


def run(name: str, ratio: float, nsamples: int, seqlen: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out, result = Path(folder) / "pruned", Path(folder) / "eval.json"
        settings = ["--ratio", str(ratio), "--nsamples", str(nsamples), "--seqlen", str(seqlen), "--seed", str(seed)]
        start = time.perf_counter()
        prune = ["prune", "smollm2-135m", "--method", name, "--recovery", "ridge", "--output", str(out), "--quiet"]
        main([*prune, *settings])
        seconds = time.perf_counter() - start
        command = [sys.executable, "-m", "slimllm", "eval", str(out), "--ppl", "wikitext2", "--tasks", "none"]
        subprocess.run([*command, "--ppl-limit", "256", "--json", str(result), "--no-progress"], check=True)
        ppl = json.loads(result.read_text())["models"][0]["perplexity"]["wikitext2"]["ppl"]
    settings = {"ratio": ratio, "nsamples": nsamples, "seqlen": seqlen, "seed": seed}
    return {"mix": name, **settings, "ppl": ppl, "prune_s": seconds}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    for name, build in MIXES.items():
        register(MethodSpec(name, "", "eq11", build))
    for name in MIXES:
        print(json.dumps(run(name, args.ratio, args.nsamples, args.seqlen, args.seed)), flush=True)
