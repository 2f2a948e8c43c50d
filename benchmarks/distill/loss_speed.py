"""Time and memory of the distillation loss alone, fused (slimllm.distill.loss.kl_and_nll) against
the plain autograd forms (token_kl + next_token_nll), on logits of SmolLM2's shape.

Each variant runs in its own process (so its peak RSS is its own), forward and backward, ``--repeats``
times after one warm-up; the median time is reported. The two variants alternate, so a busy
machine slows both alike.

    python benchmarks/distill/loss_speed.py --batch 8 --length 128 --vocab 49152
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def measure(variant: str, batch: int, length: int, vocab: int, repeats: int) -> dict:
    import torch

    from slimllm.distill.loss import kl_and_nll, next_token_nll, next_tokens, token_kl

    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(batch, length, vocab, generator=generator) * 3
    base = torch.randn(batch, length, vocab, generator=generator) * 3
    labels = torch.randint(0, vocab, (batch, length), generator=generator)
    times = []
    for _ in range(repeats + 1):
        student = base.clone().requires_grad_(True)
        start = time.perf_counter()
        if variant == "fused":
            kl, nll, _ = kl_and_nll(student, teacher, next_tokens(labels))
        else:
            kl, nll = token_kl(student, teacher), next_token_nll(student, labels)
        (kl.mean() + nll.mean()).backward()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return {"variant": variant, "median_s": statistics.median(times[1:]), "peak_rss_gb": round(peak, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two variants")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.batch, args.length, args.vocab, args.repeats)))
        return
    sizes = ["--batch", str(args.batch), "--length", str(args.length), "--vocab", str(args.vocab)]
    results = []
    for _ in range(args.rounds):
        for variant in ("autograd", "fused"):
            command = [sys.executable, __file__, "--variant", variant, *sizes, "--repeats", str(args.repeats)]
            results.append(json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout))
    for variant in ("autograd", "fused"):
        runs = [result for result in results if result["variant"] == variant]
        print(
            f"{variant}: {min(run['median_s'] for run in runs):.3f} s per forward+backward, "
            f"peak RSS {max(run['peak_rss_gb'] for run in runs):.2f} GB "
            f"({args.batch} x {args.length} positions x {args.vocab} tokens)"
        )


if __name__ == "__main__":
    main()
