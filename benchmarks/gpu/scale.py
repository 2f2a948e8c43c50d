"""Pruning time and memory at real sizes on one CUDA GPU: randomly initialised models with the
shapes of Qwen2.5-1.5B and Llama-3-8B (no checkpoint can reach the lent GPU machine; the time and
memory of a prune depend on the shapes, not on the weights' values, so these rows say nothing
about quality).

For each shape: a random bfloat16 model folder (safetensors shards, a byte-level tokenizer), then
``slimllm prune FOLDER --ratio 0.2 --ratio-of decoder --device cuda --dtype bfloat16`` out of core
(one decoder layer on the GPU at a time), each a fresh process: wall time, the prune's own seconds,
peak GPU memory (the report's ``torch.cuda.max_memory_allocated``), peak RSS (``wait4``). The
calibration text is this repository's docs/ (the byte tokenizer makes 4 KB one 32 x 128 window
set); it is not evaluation text. Rows go to ``OUT/NAME.json`` as they finish and ``OUT/summary.md``.

    python benchmarks/gpu/scale.py OUT                      # on a CUDA machine
    python benchmarks/gpu/scale.py OUT --dry-run            # anywhere: a tiny shape on the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHAPES = {
    "tiny": dict(family="llama", hidden_size=64, intermediate_size=160, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512),
    "qwen2.5-1.5b-shape": dict(family="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                               num_attention_heads=12, num_key_value_heads=2, vocab_size=151936),
    "llama-3-8b-shape": dict(family="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                             num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                             rope_theta=500000.0),
}  # fmt: skip


def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    vocab["</s>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", bos_token="</s>")


def random_folder(folder: Path, shape: str, device: str) -> dict:
    """A randomly initialised bfloat16 model of ``shape`` saved as safetensors shards."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    if (folder / "config.json").is_file():
        return {"reused": True}
    options = dict(SHAPES[shape])
    family = options.pop("family")
    config = (LlamaConfig if family == "llama" else Qwen2Config)(tie_word_embeddings=False, **options)
    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, max_shard_size="4GB")
    byte_tokenizer().save_pretrained(folder)
    del model
    return {"params": params, "build_and_save_s": time.perf_counter() - start}


def prune(source: Path, output: Path, device: str, calib: Path, log: Path, timeout: float, *options: str) -> dict:
    arguments = ["prune", str(source), "--ratio", "0.2", "--ratio-of", "decoder", "--device", device,
                 "--dtype", "bfloat16", "--calib", str(calib), "--output", str(output), "--overwrite",
                 "--quiet", *options]  # fmt: skip
    command = [sys.executable, "-m", "slimllm", *arguments]
    start = time.perf_counter()
    with log.open("a") as handle:
        handle.write(f"$ {shlex.join(command)}\n")
        handle.flush()
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                return {"command": shlex.join(["slimllm", *arguments]), "timed_out_after_s": timeout}
            time.sleep(0.5)
    result = {"command": shlex.join(["slimllm", *arguments]), "wall_s": time.perf_counter() - start,
              "peak_rss_gib": usage.ru_maxrss / 2**20, "exit": os.waitstatus_to_exitcode(status)}  # fmt: skip
    if result["exit"] == 0:
        report = json.loads((output / "slimllm_report.json").read_text())
        peak_gpu = (report.get("device_memory") or {}).get("peak_allocated_bytes", 0)
        result.update(seconds=report["seconds"], params=report["params"], peak_gpu_gib=peak_gpu / 2**30)
    return result


def summarize(out: Path) -> str:
    """``OUT/summary.md`` from every row in ``OUT`` (rows of several calls together)."""
    rows = [json.loads(path.read_text()) for path in sorted(out.glob("*.json"))]
    order = {"default": 0, "in-memory": 1, "best": 2}
    rows.sort(key=lambda row: (row["model"].get("params", 0), order.get(row["run"], 9)))
    lines = ["| shape | run | prune s | process wall s | peak GPU GiB | peak RSS GiB | parameters |"]
    lines.append("|---|---|---|---|---|---|---|")
    for row in rows:
        if "seconds" not in row:
            lines.append(f"| {row['shape']} | {row['run']} | failed or timed out | | | | |")
            continue
        params = row["params"]
        lines.append(
            f"| {row['shape']} | {row['run']} | {row['seconds']['total']:.1f} | {row['wall_s']:.1f} | "
            f"{row['peak_gpu_gib']:.2f} | {row['peak_rss_gib']:.2f} | {params['dense']:,} → {params['pruned']:,} |"
        )
    machines = sorted({json.dumps(row["machine"], sort_keys=True) for row in rows})
    commands = [f"    {row['command']}" for row in rows]
    text = "\n".join([*machines, "", *lines, "", "Commands (each model folder random, bfloat16):", "", *commands])
    (out / "summary.md").write_text(text + "\n")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="results folder (created)")
    parser.add_argument("--work", default="/tmp/slimllm-gpu-scale", help="model folders (tens of GB)")
    parser.add_argument("--dry-run", action="store_true", help="the tiny shape on the CPU")
    parser.add_argument("--shapes", default="qwen2.5-1.5b-shape,llama-3-8b-shape")
    parser.add_argument("--runs", help="SHAPE:RUN,... instead of the default plan (RUN: default, best, in-memory)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per prune before it is killed")
    args = parser.parse_args()

    import torch
    from device import benchmark_device

    device = benchmark_device(args.dry_run, "benchmarks/gpu/scale.py")
    if device is None:
        return 2
    shapes = ["tiny"] if args.dry_run else args.shapes.split(",")
    if args.runs and args.dry_run:
        args.runs = ",".join("tiny:" + item.split(":")[1] for item in args.runs.split(","))
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    calib = work / "calib.txt"
    calib.write_text("\n\n".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))))
    machine = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "cpus": os.cpu_count(),
               "platform": platform.platform(), "torch": torch.__version__}  # fmt: skip
    # The default prune of every shape first; --preset best (16x the calibration tokens) on the
    # smallest shape only, last: it shows the factor without an 8B run of its own.
    plan = [(shape, "default") for shape in shapes] + [(shapes[0], "best")]
    if args.runs:
        plan = [tuple(item.split(":")) for item in args.runs.split(",")]
    options_of = {"default": (), "best": ("--preset", "best"), "in-memory": ("--in-memory",)}
    built: dict[str, dict] = {}
    rows = []
    for shape, name in plan:
        source = work / shape
        if shape not in built:
            built[shape] = random_folder(source, shape, device)
        row = {"shape": shape, "run": name, "model": built[shape], "machine": machine}
        row.update(prune(source, work / f"{shape}-{name}", device, calib, out / f"{shape}-{name}.log",
                         args.timeout, *options_of[name]))  # fmt: skip
        (out / f"{shape}-{name}.json").write_text(json.dumps(row, indent=2) + "\n")
        print(json.dumps(row), flush=True)
        rows.append(row)
    summary = summarize(out)
    print(summary)
    return 0 if all("seconds" in row for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
