"""One side-by-side table from several `slimllm eval --json` reports taken with the same settings.

    python benchmarks/eval/combine.py benchmarks/eval/results/{dense,pruned20,pruned50}-smollm2-135m.json \
        --markdown benchmarks/eval/results/smollm2-135m.md

Refuses reports whose settings (seqlen, limits, seed, task source) or data (sha256 of every text
and task file) differ: their numbers would not be comparable.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from slimllm.eval.report import markdown_table, notes, write_text_atomic

# Settings that must agree for two columns to be comparable (versions may differ in patch level).
COMPARED_SETTINGS = ("seqlen", "ppl_limit", "ppl_protocol", "tasks", "task_limit", "seed", "num_fewshot", "task_source")


def _fingerprint(report: dict) -> tuple[dict, str]:
    settings = {key: report["settings"][key] for key in COMPARED_SETTINGS}
    return settings, json.dumps(report["data"], sort_keys=True)


def combine(reports: list[dict]) -> dict:
    first_settings, first_data = _fingerprint(reports[0])
    for report in reports[1:]:
        settings, data = _fingerprint(report)
        if settings != first_settings:
            raise SystemExit(f"settings differ: {first_settings} vs {settings}")
        if data != first_data:
            raise SystemExit("the reports were measured on different data (sha256 of a text or task differs)")
    return {**reports[0], "models": [model for report in reports for model in report["models"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="JSON files written by slimllm eval --json")
    parser.add_argument("--markdown", type=Path, help="write the table here (default: print it)")
    args = parser.parse_args()
    reports = [json.loads(path.read_text()) for path in args.reports]
    merged = combine(reports)
    lines = ["# slimllm eval: side by side", ""]
    for path, report in zip(args.reports, reports, strict=True):
        lines += [f"- `{report['command']}`: {report['wall_s']:.0f} s ({report['wall_s'] / 60:.1f} min), `{path.name}`"]
    lines += ["", markdown_table(merged), ""]
    lines += [f"- {line}" for line in notes(merged)]
    text = "\n".join(lines) + "\n"
    if args.markdown:
        write_text_atomic(args.markdown, text)
    print(text, end="")


if __name__ == "__main__":
    main()
