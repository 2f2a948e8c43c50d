"""What pruning buys in llama.cpp: dense SmolLM2-135M against its 20% and 50% pruned models.

Each model is exported with ``slimllm export --to gguf`` (architecture deci for all three, so the
comparison is like with like) as F16, Q8_0 and Q4_K_M, then run in llama.cpp through
llama-cpp-python on this CPU:

- file size;
- WikiText-2 perplexity over the first N windows of 128 tokens (slimllm eval's windows and
  token ids; llama.cpp's logits);
- prompt processing (one 512-token batch) and generation (128 tokens, one at a time) tokens/s,
  median of 5 runs, each after a warm-up run, round robin over all files, flash attention on;
- speed ratios to the dense model of the same type, beside the ideal ratio from the decoder's
  parameter counts (dense decoder / pruned decoder).

    python benchmarks/serve/run.py                       # prunes out/smollm2-20 and -50 if missing
    python benchmarks/serve/run.py --quants f16,q8_0 --ppl-windows 32 --repeats 3   # quicker
    python benchmarks/serve/run.py --dense qwen2.5-coder-1.5b --pruned 20%=/work/runs/scale/qwen-20-out-of-core \
        --quants q8_0 --ppl-windows 0 --out benchmarks/serve/results-qwen2.5-coder-1.5b   # another model

Results: ``benchmarks/serve/results/results.json`` and ``results.md``. GGUF files go to
``--work`` (default ``out/serve``; not committed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def ensure_pruned(ratio: float, folder: Path) -> None:
    if (folder / "config.json").is_file():
        return
    print(f"pruning SmolLM2-135M by {ratio:.0%} into {folder} (default settings)", flush=True)
    command = [sys.executable, "-m", "slimllm", "prune", "smollm2-135m", "--ratio", str(ratio)]
    # one torch thread: on a busy 2-core machine OpenMP threads spin-wait on each other (docs/results.md, "Speed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*command, "--output", str(folder), "--quiet"], check=True, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dense", default="smollm2-135m", help="built-in name or folder of the dense model")
    parser.add_argument("--pruned", default="", help="NAME=FOLDER,... pruned folders (instead of --ratios)")
    parser.add_argument("--ratios", default="0.2,0.5", help="SmolLM2-135M: prune out/smollm2-RR if missing")
    parser.add_argument("--quants", default="f16,q8_0,q4_k_m")
    parser.add_argument("--ppl-windows", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--generate", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    # One llama.cpp thread by default: on a shared 2-core machine its threads spin-wait on each other
    # at every barrier while other processes hold a core (8 windows: 5.4 s at 1 thread, 37.8 s at 2).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pad-ffn", type=int, default=32, help="slimllm export --pad-ffn")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "serve")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)

    import llama_cpp
    from transformers import AutoTokenizer

    import slimllm
    from slimllm.data.sources import load_text, tokenize_stream
    from slimllm.eval.ppl import token_windows
    from slimllm.export import export_gguf, load_source
    from slimllm.export.runtime import speed, window_nll
    from slimllm.export.source import decoder_parameters
    from slimllm.io import cache_dir

    wall = time.perf_counter()
    load_before = os.getloadavg()
    if Path(args.dense).is_dir():
        models = {"dense": Path(args.dense)}
    else:
        slimllm.load(args.dense, on_disk=True)  # converts a built-in into the cache once
        models = {"dense": cache_dir() / args.dense}
    label = Path(args.dense).name
    if args.pruned:
        models.update({name: Path(folder) for name, folder in (item.split("=", 1) for item in args.pruned.split(","))})
    else:
        for ratio in [float(r) for r in args.ratios.split(",") if r]:
            folder = ROOT / "out" / f"smollm2-{round(ratio * 100)}"
            ensure_pruned(ratio, folder)
            models[f"{ratio:.0%}"] = folder

    tokenizer = AutoTokenizer.from_pretrained(str(models["dense"]))
    text, info = load_text("wikitext2", quiet=True)
    stream = tokenize_stream(tokenizer, text)
    windows = token_windows(stream, 128, args.ppl_windows) if args.ppl_windows else None
    prompt = stream[: args.prompt].tolist()
    generate = stream[args.prompt : args.prompt + args.generate].tolist()

    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, folder in models.items():
        source = load_source(folder)
        decoder = decoder_parameters(source.layers)
        output_params = source.embed.numel()  # the output matmul runs for every token, tied or not
        del source
        for quant in [q for q in args.quants.split(",") if q]:
            path = args.work / f"{label}-{name.rstrip('%')}-{quant}-pad{args.pad_ffn}.gguf"
            start = time.perf_counter()
            report = export_gguf(folder, path, quant=quant, threads=args.threads, pad_ffn=args.pad_ffn)
            export_s = time.perf_counter() - start
            start = time.perf_counter()
            total, scored = (float("nan"), 1)  # --ppl-windows 0: speed only
            if windows is not None:
                total, scored = window_nll(path, windows, threads=args.threads)
            ppl_s = time.perf_counter() - start
            row = {
                "model": name,
                "folder": str(folder),
                "quant": quant,
                "file_bytes": report.file_bytes,
                "decoder_params": decoder,
                "output_params": output_params,
                "gguf_decoder_params": report.written_decoder_params,
                "head_count": report.head_count,
                "head_count_kv": report.head_count_kv,
                "feed_forward_length": report.feed_forward_length,
                "fallbacks": len(report.fallbacks),
                "fallback_types": sorted({f["type"] for f in report.fallbacks}),
                "ppl": float(torch.tensor(total / scored, dtype=torch.float64).exp()),
                "ppl_windows": int(windows.shape[0]) if windows is not None else 0,
                "path": str(path),
                "export_s": export_s,
                "ppl_s": ppl_s,
            }
            rows.append(row)
            print(
                f"{name:>5} {quant:>6}: {row['file_bytes'] / 2**20:6.1f} MiB  PPL {row['ppl']:8.2f}  "
                f"({len(report.fallbacks)} fallbacks; export {export_s:.0f} s, PPL {ppl_s:.0f} s)",
                flush=True,
            )
    # speed: round robin over all files, so a change in machine load hits every model alike
    for row in rows:
        row["pp_runs"], row["tg_runs"] = [], []
    for round_ in range(args.repeats):
        for row in rows:
            timing = speed(row["path"], prompt, generate, repeats=1, threads=args.threads, flash_attn=True)
            row["pp_runs"] += timing["pp_runs"]
            row["tg_runs"] += timing["tg_runs"]
        print(f"speed round {round_ + 1}/{args.repeats} done", flush=True)
    for row in rows:
        row["pp_tokens_per_s"] = statistics.median(row["pp_runs"])
        row["tg_tokens_per_s"] = statistics.median(row["tg_runs"])
        print(
            f"{row['model']:>5} {row['quant']:>6}: pp {row['pp_tokens_per_s']:7.1f} tok/s  "
            f"tg {row['tg_tokens_per_s']:6.1f} tok/s",
            flush=True,
        )
    dense = {row["quant"]: row for row in rows if row["model"] == "dense"}
    for row in rows:
        base = dense[row["quant"]]
        row["ideal_ratio"] = base["decoder_params"] / row["decoder_params"]
        row["ideal_ratio_with_output"] = (base["decoder_params"] + base["output_params"]) / (
            row["decoder_params"] + row["output_params"]
        )
        row["size_ratio"] = row["file_bytes"] / base["file_bytes"]
        row["pp_ratio"] = row["pp_tokens_per_s"] / base["pp_tokens_per_s"]
        row["tg_ratio"] = row["tg_tokens_per_s"] / base["tg_tokens_per_s"]
        row["pp_vs_ideal"] = row["pp_ratio"] / row["ideal_ratio"]
        row["tg_vs_ideal"] = row["tg_ratio"] / row["ideal_ratio"]
    wall_s = time.perf_counter() - wall
    command = "python benchmarks/serve/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {
        "command": command.strip(),
        "wall_s": wall_s,
        "settings": vars(args) | {"work": str(args.work), "out": str(args.out)},
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "llama_cpp_python": llama_cpp.__version__,
            "torch": torch.__version__,
        },
        "data": info.to_dict(),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(result) + "\n")
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    settings = result["settings"]
    lines = [
        f"`{result['command']}` — {result['wall_s'] / 60:.1f} min wall time, {settings['threads']} threads, "
        f"llama-cpp-python {result['machine']['llama_cpp_python']}, load average "
        f"{result['machine']['load_average_before'][0]:.1f} before / {result['machine']['load_average_after'][0]:.1f} "
        "after.",
        "",
        f"PPL: WikiText-2, first {settings['ppl_windows']} windows of 128 tokens. Speed: {settings['prompt']}-token "
        f"prompt in one batch (pp) and {settings['generate']} generated tokens (tg), median of "
        f"{settings['repeats']}, flash attention on, FFN widths zero-padded to multiples of {settings['pad_ffn']}. "
        "Ratios are to the dense model of the same type; ideal = dense "
        "decoder parameters / pruned decoder parameters; ideal+out also counts the output layer (vocab × hidden), "
        "which every token runs and pruning does not shrink.",
        "",
        "| model | type | file MiB | size × | PPL | pp tok/s | pp × | tg tok/s | tg × | ideal × | ideal+out × "
        "| pp/ideal | tg/ideal | fallbacks |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        fallbacks = f"{row['fallbacks']} ({', '.join(row['fallback_types'])})" if row["fallbacks"] else "0"
        lines.append(
            f"| {row['model']} | {row['quant'].upper()} | {row['file_bytes'] / 2**20:.1f} | {row['size_ratio']:.2f} | "
            f"{row['ppl']:.2f} | {row['pp_tokens_per_s']:.0f} | {row['pp_ratio']:.2f} | {row['tg_tokens_per_s']:.1f} | "
            f"{row['tg_ratio']:.2f} | {row['ideal_ratio']:.2f} | {row['ideal_ratio_with_output']:.2f} | "
            f"{row['pp_vs_ideal']:.2f} | {row['tg_vs_ideal']:.2f} | "
            f"{fallbacks} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
