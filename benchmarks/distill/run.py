"""What recovery buys, side by side: distillation vs LoRA vs plain full fine-tuning at the same
token budget, and slimllm + distillation vs FLAP + distillation, on SmolLM2-135M; on Gemma-3-270M
(``--dense gemma3-270m``) 20% of the decoder and its distillation.

Every row is a pruned model and, where named, a recovery run on the LAMBADA BookCorpus passages
(never WikiText-2, PTB or the task sets), each through the command line a user would type. Every
recovery uses the same blocks (``--cutoff``), batch, step count and held-out split (64 blocks,
seed 42), so all rows see the same tokens and none sees the held-out blocks. Measured per row:

- WikiText-2 perplexity on the first 256 windows of 128 tokens (``slimllm eval``; for Gemma, each
  window after a <bos> token, ``--bos``, as Gemma is trained to see one first);
- on the 64 held-out blocks of the training text: KL(dense ‖ model) per token and the share of
  positions where the model's top-1 token is the dense model's (computed here, the same way for
  every row, with :func:`slimllm.distill.loss.token_kl`);
- the recovery's wall time, training time, tokens and peak memory (from its JSON log);
- with ``--tasks ROW,...``, the seven-task mean on 500 seeded documents per task.

Rows already measured (their JSON in ``--out``) are skipped, so an interrupted run continues.

    python benchmarks/distill/run.py --work /tmp/distill --out benchmarks/results/distill
    python benchmarks/distill/run.py --dense gemma3-270m --work /tmp/distill-gemma \
        --out benchmarks/results/distill/gemma3-270m
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the drivers' shared helpers
from logged_run import run_logged

STEPS, BATCH, CUTOFF, VAL_SIZE = 63, 8, 128, 64  # 63 × 8 × 128 = 64,512 training tokens per recovery
COMMON = [
    "--data", "lambada", "--max-steps", str(STEPS), "--batch-size", str(BATCH), "--micro-batch-size", str(BATCH),
    "--cutoff", str(CUTOFF), "--val-size", str(VAL_SIZE), "--eval-steps", "21", "--warmup-steps", "6",
]  # fmt: skip
PRUNES = {
    "slimllm-20": ["--ratio", "0.2"],
    "slimllm-50": ["--ratio", "0.5"],
    "flap-20": ["--ratio", "0.2", "--method", "flap"],
}
# What differs per dense model: how its ratio is counted, how it is evaluated, which rows it has.
DENSE_MODELS = {
    "smollm2-135m": {"prune": [], "eval": [], "rows": None},
    # the embeddings hold 64% of Gemma-3-270M's parameters, so its ratio counts the decoder's
    "gemma3-270m": {
        "prune": ["--ratio-of", "decoder"],
        "eval": ["--bos"],
        "rows": ("dense", "slimllm-20", "slimllm-20 + distill 60 min"),
    },
}
# the budget: 60 minutes of training on 2 cores (~62 tokens/s → ~200 steps), cut at 60 min if slower
DISTILL_60_MIN = [
    "distill", "--teacher", "DENSE", "--lr", "1e-4", "--max-steps", "200", "--max-minutes", "60",
    "--eval-steps", "20", "--warmup-steps", "20",
]  # fmt: skip
RECOVERIES = {
    "distill": ["distill", "--teacher", "DENSE", "--lr", "1e-4"],
    "finetune-full": ["distill", "--teacher", "DENSE", "--lr", "1e-4", "--kl-weight", "0", "--ce-weight", "1"],
    "lora": ["finetune", "--lr", "2e-4"],
    # as many steps as fit in the LoRA row's training time (459 s at the 20% row's 59.6 tokens/s)
    "distill-lora-time": ["distill", "--teacher", "DENSE", "--lr", "1e-4", "--max-steps", "27", "--eval-steps", "9"],
    "distill-60min": DISTILL_60_MIN,
}
ROWS = [
    ("dense", None, None),
    ("slimllm-20", "slimllm-20", None),
    ("slimllm-20 + distill", "slimllm-20", "distill"),
    ("slimllm-20 + lora", "slimllm-20", "lora"),
    ("slimllm-20 + distill at LoRA's time", "slimllm-20", "distill-lora-time"),
    ("slimllm-20 + finetune-full", "slimllm-20", "finetune-full"),
    ("flap-20", "flap-20", None),
    ("flap-20 + distill", "flap-20", "distill"),
    ("slimllm-50", "slimllm-50", None),
    ("slimllm-50 + distill", "slimllm-50", "distill"),
    ("slimllm-20 + distill 60 min", "slimllm-20", "distill-60min"),
    ("slimllm-50 + distill 60 min", "slimllm-50", "distill-60min"),
]


def slug(name: str) -> str:
    return name.replace(" + ", "+").replace("'", "").replace(" ", "-")


@torch.inference_mode()
def held_out_agreement(model_path: str, dense_name: str, dense, tokenizer) -> dict:
    """KL(dense ‖ model) and top-1 agreement on the held-out blocks every recovery left out."""
    import slimllm
    from slimllm.distill import DistillConfig
    from slimllm.distill.loss import token_kl
    from slimllm.finetune.data import prepare_data

    config = DistillConfig(cutoff=CUTOFF, val_size=VAL_SIZE, seed=42)
    blocks = torch.tensor(prepare_data(tokenizer, "lambada", config, quiet=True).validation["input_ids"])
    model = dense if model_path == dense_name else slimllm.load(model_path)[0]
    kl_sum, agree, count = 0.0, 0, 0
    for start in range(0, len(blocks), 8):
        batch = blocks[start : start + 8]
        student, teacher = model(input_ids=batch).logits[:, :-1], dense(input_ids=batch).logits[:, :-1]
        kl_sum += token_kl(student, teacher).double().sum().item()
        agree += (student.argmax(-1) == teacher.argmax(-1)).sum().item()
        count += student.shape[0] * student.shape[1]
    return {"held_out_kl": kl_sum / count, "held_out_top1": agree / count, "held_out_positions": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dense", default="smollm2-135m", choices=DENSE_MODELS, help="the dense model (a built-in)")
    parser.add_argument("--work", required=True, help="folder for the pruned and recovered models")
    parser.add_argument("--out", required=True, help="folder for the per-row JSON results and logs")
    parser.add_argument("--rows", default="all", help="comma-separated row names (default: all)")
    parser.add_argument("--tasks", default="", help="rows that also get the 7-task mean on 500 documents per task")
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    dense_name, per_model = args.dense, DENSE_MODELS[args.dense]
    wanted = set(per_model["rows"] or [row[0] for row in ROWS]) if args.rows == "all" else set(args.rows.split(","))
    with_tasks = set(filter(None, args.tasks.split(",")))
    slimllm_bin = [sys.executable, "-m", "slimllm"]

    import slimllm

    dense, tokenizer = slimllm.load(dense_name)
    for name, prune, recovery in ROWS:
        if name not in wanted:
            continue
        result_path = out / f"{slug(name)}.json"
        result = json.loads(result_path.read_text()) if result_path.is_file() else {}
        if result and (name not in with_tasks or "tasks" in result):
            continue
        log = out / "logs" / f"{slug(name)}.log"
        commands = result.get("commands", [])
        model = dense_name
        if prune is not None:
            model = str(work / prune)
            if not Path(model).is_dir():
                command = [*slimllm_bin, "prune", dense_name, *PRUNES[prune], *per_model["prune"]]
                command += ["--output", model, "--quiet"]
                result["prune_wall_s"] = run_logged(command, log)
                commands.append(shlex.join(["slimllm", *command[3:]]))
        if recovery is not None:
            source, model = model, str(work / slug(name))
            if not Path(model).is_dir():
                recover = [dense_name if word == "DENSE" else word for word in RECOVERIES[recovery]]
                command = [*slimllm_bin, recover[0], source, *COMMON, *recover[1:], "--output", model, "--overwrite"]
                result["recovery_wall_s"] = run_logged(command, log)
                commands.append(shlex.join(["slimllm", *command[3:]]))
            result["recovery"] = recovery_summary(Path(model))
        if "ppl_wikitext2" not in result:
            ppl_json = out / "logs" / f"{slug(name)}.ppl.json"
            command = [*slimllm_bin, "eval", model, "--ppl", "wikitext2", "--tasks", "none", "--ppl-limit", "256"]
            command += per_model["eval"]
            run_logged([*command, "--no-progress", "--json", str(ppl_json)], log)
            commands.append(shlex.join(["slimllm", *command[3:]]))
            result["ppl_wikitext2"] = json.loads(ppl_json.read_text())["models"][0]["perplexity"]["wikitext2"]["ppl"]
        if "held_out_kl" not in result:
            result.update(held_out_agreement(model, dense_name, dense, tokenizer))
        if name in with_tasks and "tasks" not in result:
            tasks_json = out / "logs" / f"{slug(name)}.tasks.json"
            command = [*slimllm_bin, "eval", model, "--ppl", "none", "--tasks", "all", "--task-limit", "500"]
            result["tasks_wall_s"] = run_logged([*command, "--seed", "0", "--json", str(tasks_json)], log)
            commands.append(shlex.join(["slimllm", *command[3:]]))
            result["tasks"] = json.loads(tasks_json.read_text())["models"][0]["zero_shot"]
        result.update(name=name, model=model, commands=commands)
        result_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{name}: {json.dumps({k: v for k, v in result.items() if k not in ('commands', 'tasks')})}", flush=True)


def recovery_summary(folder: Path) -> dict:
    """Tokens, time, memory and held-out curve from the recovery's own log."""
    for name in ("slimllm_distill.json", "slimllm_finetune.json"):
        if (folder / name).is_file():
            log = json.loads((folder / name).read_text())
            break
    train = log["losses"]["train"]
    summary = {
        "log": name,
        "steps": log["result"]["global_step"],
        "train_s": log["timings_s"]["train"],
        "best_step": log["result"]["best_step"],
        "validation": log["losses"]["validation"],
        "config": log["config"],
        "threads": log["training"]["cpu_threads"],
    }
    if "tokens_seen" in log["result"]:
        summary["tokens"] = log["result"]["tokens_seen"]
        summary["peak_rss_gb"] = max(entry.get("peak_rss_gb", 0) for entry in train)
    else:  # slimllm finetune: equal blocks, so steps × batch × cutoff
        summary["tokens"] = log["result"]["global_step"] * BATCH * CUTOFF
    return summary


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
