"""Summarise the CPU recovery benchmark: WikiText-2 perplexity before and after, losses, run time.

    python benchmarks/finetune/summarize.py benchmarks/finetune/results

Reads ``ppl-before.json`` / ``ppl-after.json`` (written by ``slimllm eval --json``) and
``slimllm_finetune.json`` (the fine-tune's log); writes ``summary.md`` beside them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def wikitext_ppl(path: Path) -> tuple[float, dict]:
    report = json.loads(path.read_text())
    return report["models"][0]["perplexity"]["wikitext2"]["ppl"], report["settings"]


def summary(results: Path) -> str:
    before, settings = wikitext_ppl(results / "ppl-before.json")
    after, _ = wikitext_ppl(results / "ppl-after.json")
    log = json.loads((results / "slimllm_finetune.json").read_text())
    config, data, result = log["config"], log["data"], log["result"]
    train, validation = log["losses"]["train"], log["losses"]["validation"]
    window_note = f"first {settings.get('ppl_limit') or settings.get('limit')} windows" if settings else "windows"
    lines = [
        "| model | WikiText-2 PPL (seqlen 128) |",
        "|---|---|",
        f"| SmolLM2-135M pruned 20 % (SlimLLM) | {before:.2f} |",
        f"| + LoRA, {result['global_step']} steps on {data['source']} | {after:.2f} |",
        "",
        f"- perplexity: `slimllm eval --ppl wikitext2 --ppl-limit`, {window_note} of 128 tokens, same before and after",
        f"- data: {data['train']} training blocks of {config['cutoff']} tokens, {data['validation']} held out "
        f"({data['origin']})",
        f"- LoRA r={config['lora_r']}, alpha={config['lora_alpha']}, lr {config['learning_rate']}, "
        f"batch {config['batch_size']} (micro {config['micro_batch_size']}), warm-up {config['warmup_steps']}, "
        f"seed {config['seed']}",
        f"- training loss {train[0]['loss']:.3f} (step 1) → {train[-1]['loss']:.3f} (step {train[-1]['step']}); "
        "validation loss "
        + " → ".join(f"{entry['loss']:.3f} (step {entry['step']})" for entry in validation)
        + f"; best kept: step {result['best_step']}",
        f"- fine-tune time: {log['timings_s']['train'] / 60:.1f} min training, {log['timings_s']['total'] / 60:.1f} "
        f"min in all, on {log['training']['device']} ({log['versions']['torch']})",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    results = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results")
    text = summary(results)
    (results / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
