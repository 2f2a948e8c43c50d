"""``slimllm bench`` on tiny random models: outputs, resuming, budgets and the command line."""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest
import torch

from slimllm.bench import BenchSpec, Cell, measure, run_bench
from slimllm.bench import runner as bench_runner
from slimllm.bench.runner import prune_config
from slimllm.cli import build_parser, main
from slimllm.commands.bench import spec_from_args
from slimllm.eval.uncertainty import encode_bits, encode_gold, majority
from tiny_models import VOCAB, byte_tokenizer, tiny_byte_llama, tiny_llama

TINY_SPEED = dict(speed_runs=1, prefill_tokens=16, decode_tokens=2, decode_prompt=4)


def _spec(out, **overrides) -> BenchSpec:
    settings = dict(
        model="tiny", out=str(out), ratios=[0.3], methods=["slimllm", "magnitude"], seeds=[1], tasks=[],
        ppl=["a", "b"], nsamples=12, calib_seqlen=24, batch_size=6, **TINY_SPEED,
    )  # fmt: skip
    return BenchSpec(**{**settings, **overrides})


def _inputs():
    g = torch.Generator().manual_seed(0)
    return dict(
        model=tiny_llama(),
        calib_data=torch.randint(0, VOCAB, (12, 24), generator=g),
        ppl_streams={
            "a": torch.randint(0, VOCAB, (400,), generator=g),
            "b": torch.randint(0, VOCAB, (400,), generator=g),
        },
        progress=False,
        log=lambda _text: None,
    )


@pytest.fixture
def count_prunes(monkeypatch):
    calls = []
    module = importlib.import_module("slimllm.prune")  # the package attribute is the function
    real = module.prune

    def counting(model, tokenizer=None, config=None, data=None, **kwargs):
        calls.append((config.method, config.ratio, config.seed))
        return real(model, tokenizer, config, data, **kwargs)

    monkeypatch.setattr(module, "prune", counting)
    return calls


def test_cells_order_seeds_ablations_and_keys():
    spec = _spec("x", ratios=[0.2, 0.5], seeds=[1, 2], ablations=True, round_to=[8], seed_eval="ppl")
    cells = spec.cells()
    assert cells[0].kind == "dense"
    first_seed = [c for c in cells[1:] if c.seed == 1]
    assert cells[1 : 1 + len(first_seed)] == first_seed  # the whole first-seed table comes first
    assert len(first_seed) == 2 * (2 + 5 + 1) and len(cells) == 1 + len(first_seed) + 2 * 2
    assert all(not c.zero_shot and not c.speed for c in cells if c.seed == 2)
    assert {c.overrides.get("keep_lowest") for c in cells if c.kind == "ablation"} == {None, 0.0}
    assert Cell("slimllm --keep-lowest 0", "ablation", 0.2, 1).key == "slimllm_keep-lowest_0__r0.2__s1"
    assert Cell("wanda-sp@eq11", "main", 0.5, 42).key == "wanda-sp-at-eq11__r0.5__s42"
    assert len({c.key for c in cells}) == len(cells)


def test_options_beyond_the_paper_are_first_seed_rows_with_their_prune_settings():
    spec = _spec("x", ratios=[0.2], seeds=[1, 2], options=["ridge", "calib-128x512"])
    options = [c for c in spec.cells() if c.kind == "option"]
    assert [(c.label, c.seed) for c in options] == [
        ("slimllm --recovery ridge", 1),
        ("slimllm --nsamples 128 --seqlen 512", 1),
    ]
    configs = [prune_config(spec, c) for c in options]
    assert configs[0].options == {"recovery": "ridge"} and configs[0].nsamples == spec.nsamples
    assert (configs[1].nsamples, configs[1].seqlen, configs[1].options) == (128, 512, {})
    assert spec.fingerprint() == _spec("x", ratios=[0.2], seeds=[1, 2]).fingerprint()  # finished cells are reused
    with pytest.raises(ValueError, match="unknown options"):
        _spec("x", options=["magic"]).validate()


DOCS = 40


def fake_documents(seed: int, tasks) -> dict:
    """Zero-shot results with per-document scores: the same documents and gold answers for every
    model, scores that differ by model (pruned models have other parameter counts)."""
    gold_rng, rng = np.random.default_rng(0), np.random.default_rng(seed)
    per_task = {}
    for task in tasks:
        gold = gold_rng.integers(0, 2, size=DOCS)
        correct = (rng.random(DOCS) < 0.6).astype(int)
        per_task[task] = {
            "headline": correct.mean(),
            "headline_stderr": correct.std(ddof=1) / math.sqrt(DOCS),
            "acc": correct.mean(),
            "documents": DOCS,
            "doc_ids": list(range(100, 100 + DOCS)),
            "correct": encode_bits(correct.tolist()),
            "gold": encode_gold(gold.tolist()),
            "majority": majority(gold.tolist()),
        }
    mean = float(np.mean([t["headline"] for t in per_task.values()]))
    return {"tasks": per_task, "mean": mean, "limit": DOCS, "seed": 0}


def direct_paired(cell_a: dict, cell_b: dict) -> tuple[float, float]:
    """Mean over tasks of the mean per-document difference, and its standard error, with numpy."""
    means, variances = [], []
    for task, a in cell_a["eval"]["zero_shot"]["tasks"].items():
        b = cell_b["eval"]["zero_shot"]["tasks"][task]
        assert a["doc_ids"] == b["doc_ids"]
        d = np.array([int(x) for x in a["correct"]]) - np.array([int(x) for x in b["correct"]])
        means.append(d.mean())
        variances.append(d.var(ddof=1) / len(d))
    return float(np.mean(means)), math.sqrt(sum(variances)) / len(means)


CELL_OF = {"slimllm": "slimllm__r0.3__s1", "magnitude": "magnitude__r0.3__s1", "dense": "dense"}


def test_bench_writes_every_output_and_resumes(tmp_path, count_prunes, monkeypatch):
    def fake_zero_shot(model, tokenizer, settings):  # the real one needs a tokenizer; tested below
        return fake_documents(sum(p.numel() for p in model.parameters()), settings.tasks)

    monkeypatch.setattr(bench_runner, "zero_shot_with", fake_zero_shot)
    spec = _spec(tmp_path / "out", tasks=["piqa", "boolq"], task_limit=2)
    results = run_bench(spec, **_inputs())
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {
        "results.json",
        "results.md",
        "layers.png",
        "perplexity.png",
        "accuracy.png",
    }
    assert sorted(count_prunes) == [("magnitude", 0.3, 1), ("slimllm", 0.3, 1)]
    saved = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in saved["rows"]] == ["slimllm", "magnitude"]
    for row in saved["rows"]:
        assert row["ppl"]["a"]["mean"] > 1 and row["acc"]["mean"] > 0.25
        assert abs(row["realised_ratio"]["mean"] - 0.3) < 0.02
    cell = json.loads((out / "cells" / "magnitude__r0.3__s1.json").read_text())
    assert cell["config"]["method"] == "magnitude" and cell["prune"]["memory"]["rss_peak_mib"] > 0
    assert len(cell["code"]["src_sha256"]) == 16 and list(saved["settings"]["code_versions"].values()) == [3]
    assert cell["speed"]["dense"]["prefill_s"] > 0 and cell["speed"]["decode_tokens"] == 2
    assert len(cell["layers"]) == 4 and cell["eval"]["zero_shot"]["tasks"]["piqa"]["documents"] == DOCS
    markdown = (out / "results.md").read_text()
    assert "| slimllm | 1 |" in markdown and "| magnitude | 1 |" in markdown and "## Speed" in markdown
    assert "Where SlimLLM stands" in markdown and "![" in markdown
    assert results["standings"] and {s["metric"] for s in results["standings"]} == {"a", "b", "acc"}

    # issue 12: the mean's standard error, the majority answer beside each score, paired differences
    cells = {label: json.loads((out / "cells" / f"{name}.json").read_text()) for label, name in CELL_OF.items()}
    row = next(r for r in saved["rows"] if r["label"] == "slimllm")
    task_errors = [t["headline_stderr"] for t in cells["slimllm"]["eval"]["zero_shot"]["tasks"].values()]
    assert row["acc_stderr"] == pytest.approx(math.sqrt(sum(e * e for e in task_errors)) / 2)
    gold = cells["dense"]["eval"]["zero_shot"]["tasks"]["piqa"]["gold"]
    assert row["majority"]["piqa"] == max(gold.count("0"), gold.count("1")) / DOCS
    assert "*majority answer*" in markdown and "avg acc % ↑ (± s.e.)" in markdown
    paired = {(p["reference"], p["baseline"]): p for p in saved["paired"]}
    assert set(paired) == {("slimllm", "magnitude"), ("slimllm", "dense")}
    for (reference, baseline), entry in paired.items():
        difference, stderr = direct_paired(cells[reference], cells[baseline])
        assert entry["difference"] == pytest.approx(difference, abs=1e-12)
        assert entry["stderr"] == pytest.approx(stderr, rel=1e-12)
        assert entry["tasks"]["piqa"]["documents"] == DOCS
    acc_standing = next(x for x in saved["standings"] if x["metric"] == "acc")
    assert acc_standing["noise"] == pytest.approx(2 * paired[("slimllm", "magnitude")]["stderr"])
    assert "SlimLLM against each baseline on the same documents" in markdown
    assert f"| 30% | slimllm | magnitude | {100 * paired[('slimllm', 'magnitude')]['difference']:+.2f} |" in markdown

    # resuming: nothing is pruned again, and the outputs are rebuilt from the cell files
    mtime = (out / "cells" / "slimllm__r0.3__s1.json").stat().st_mtime_ns
    again = run_bench(spec, **_inputs())
    assert len(count_prunes) == 2 and (out / "cells" / "slimllm__r0.3__s1.json").stat().st_mtime_ns == mtime
    assert [r["label"] for r in again["rows"]] == ["slimllm", "magnitude"]
    assert len(again["invocations"]) == 2

    # rebuilding the report measures nothing and keeps the machine state taken before measuring
    saved = json.loads((out / "results.json").read_text())
    saved["machine"]["load_average_at_start"] = [42.0, 0.0, 0.0]
    (out / "results.json").write_text(json.dumps(saved))
    rebuilt = bench_runner.Bench(spec, **_inputs()).report()
    assert len(count_prunes) == 2 and len(rebuilt["invocations"]) == 2
    assert rebuilt["machine"]["load_average_at_start"] == [42.0, 0.0, 0.0]
    assert "load average at start 42.0" in (out / "results.md").read_text()

    # a missing cell is measured again, only that one
    (out / "cells" / "magnitude__r0.3__s1.json").unlink()
    run_bench(spec, **_inputs())
    assert count_prunes[2:] == [("magnitude", 0.3, 1)]

    # a changed evaluation setting invalidates the finished cells
    run_bench(_spec(tmp_path / "out", tasks=["piqa", "boolq"], task_limit=3), **_inputs())
    assert len(count_prunes) == 5


def test_a_cell_is_measured_again_when_its_row_now_means_other_settings(tmp_path):
    """A preset redefined keeps its label and key: the recorded settings decide, not the name."""
    spec = _spec(tmp_path / "out", options=["best"])
    bench = bench_runner.Bench(spec, **_inputs())
    cell = next(c for c in spec.cells() if c.kind == "option")
    record = {"status": "done", "fingerprint": spec.fingerprint(), "config": prune_config(spec, cell).to_dict()}
    assert bench.is_finished(cell, record)
    older = {**record, "config": {k: v for k, v in record["config"].items() if k != "search_minutes"}}
    assert bench.is_finished(cell, older)  # a field added since: its default is what ran then
    for changed in ({"recovery": "regression"}, {"nsamples": 32}, {"search_minutes": 7.0}, {"retired_field": 1}):
        assert not bench.is_finished(cell, {**record, "config": {**record["config"], **changed}}), changed


def test_budget_stops_before_new_cells(tmp_path, count_prunes):
    results = run_bench(_spec(tmp_path / "out", budget_minutes=0), **_inputs())
    assert count_prunes == [] and results["skipped"][0] == "dense" and len(results["skipped"]) == 3
    assert "Not measured" in (tmp_path / "out" / "results.md").read_text()


def test_seed_rows_report_mean_and_std(tmp_path):
    inputs = _inputs()
    spec = _spec(tmp_path / "out", methods=["random"], seeds=[1, 2, 3], speed=False)
    results = run_bench(spec, **inputs)
    (row,) = results["rows"]
    values = row["ppl"]["a"]["values"]
    assert row["seeds"] == [1, 2, 3] and len(set(values)) == 3  # the random criterion depends on the seed
    assert row["ppl"]["a"]["std"] == pytest.approx(torch.tensor(values, dtype=torch.float64).std().item())
    assert " ± " in (tmp_path / "out" / "results.md").read_text()


def test_peak_memory_sees_an_allocation_and_shapes_are_compared():
    with measure.PeakMemory() as memory:
        block = torch.ones(40 * 2**20 // 4)  # 40 MiB, touched
        del block
    assert memory.peak_mib - memory.start_mib > 30
    a, b = tiny_llama(), tiny_llama(seed=3)
    assert measure.shape_signature(a) == measure.shape_signature(b)
    assert measure.shape_signature(a) != measure.shape_signature(tiny_llama(intermediate_size=64))


def test_cli_parses_the_issue_command():
    argv = [
        "bench",
        "smollm2-135m",
        "--ratios",
        "0.2,0.5",
        "--methods",
        "slimllm,magnitude,wanda-sp,flap,taylor,random",
    ]
    argv += ["--ablations", "--out", "benchmarks/results/smollm2-135m", "--limit", "100", "--ppl-limit", "32"]
    argv += ["--round-to", "8", "--seeds", "42,43", "--tasks", "piqa,boolq", "--threads", "1"]
    spec = spec_from_args(build_parser().parse_args(argv))
    assert spec.ratios == [0.2, 0.5] and spec.methods[-1] == "random" and spec.ablations
    assert spec.task_limit == 100 and spec.ppl_limit == 32 and spec.round_to == [8] and spec.seeds == [42, 43]
    assert spec.tasks == ["piqa", "boolq"] and spec.threads == 1
    accuracy = ["bench", "m", "--out", "o", "--accuracy"]
    assert spec_from_args(build_parser().parse_args(accuracy)).task_limit == 500
    assert spec_from_args(build_parser().parse_args([*accuracy, "--task-limit", "30"])).task_limit == 30
    assert spec_from_args(build_parser().parse_args(["bench", "m", "--out", "o"])).task_limit is None
    none = spec_from_args(build_parser().parse_args(["bench", "m", "--out", "o", "--tasks", "none"]))
    assert none.tasks == [] and none.seeds == [42, 43, 44] and len(none.tasks) == 0


def test_cli_end_to_end_on_a_saved_model(tmp_path):
    """Load from a folder, calibrate on a text file, perplexity and a real zero-shot task."""
    folder = tmp_path / "dense"
    tiny_byte_llama().save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(f"Line {i} of a small corpus about pruning heads and channels." for i in range(80)))
    out = tmp_path / "bench"
    argv = ["bench", str(folder), "--out", str(out), "--ratios", "0.3", "--methods", "slimllm,wanda-sp", "--seeds", "5"]
    argv += ["--ppl", str(text), "--seqlen", "64", "--tasks", "piqa", "--limit", "2", "--calib", str(text)]
    argv += ["--nsamples", "8", "--calib-seqlen", "32", "--speed-runs", "1", "--prefill-tokens", "16"]
    argv += ["--decode-tokens", "2", "--decode-prompt", "4", "--quiet"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in results["rows"]] == ["slimllm", "wanda-sp"]
    assert results["dense"]["eval"]["zero_shot"]["tasks"]["piqa"]["documents"] == 2
    assert results["rows"][0]["acc"]["n"] == 1 and results["command"].startswith("slimllm bench")
    assert main([*argv, "--report-only"]) == 0
    assert main(["bench", str(folder), "--out", str(out), "--ratios", "1.5"]) == 2


def test_methods_beyond_the_paper_are_options_not_default_rows():
    from slimllm.bench.spec import DEFAULT_METHODS, OPTIONS
    from slimllm.methods import available_methods

    assert "obs" in available_methods() and "obs" not in DEFAULT_METHODS
    assert OPTIONS["obs-ridge"] == {"method": "obs", "recovery": "ridge"}
    assert set(DEFAULT_METHODS) == set(available_methods()) - {"obs"}
