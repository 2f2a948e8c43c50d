"""``slimllm eval`` end to end on tiny saved models: table, JSON, Markdown, errors."""

from __future__ import annotations

import json

import pytest

from slimllm.cli import main
from slimllm.eval import EvalSettings, count_parameters, evaluate_model
from tiny_models import byte_tokenizer
from tiny_models import tiny_byte_llama as tiny_llama


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Two different tiny LLaMA folders, as ``save_pretrained`` writes them."""
    root = tmp_path_factory.mktemp("models")
    tokenizer = byte_tokenizer()
    folders = []
    for seed in (0, 1):
        folder = root / f"tiny{seed}"
        tiny_llama(seed=seed).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders.append(folder)
    return folders


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n\n".join(f"Line {i} of a small corpus about pruning." for i in range(60)), encoding="utf-8")
    return path


def test_two_models_side_by_side_with_json_and_markdown(model_dirs, text_file, tmp_path, capsys):
    json_path, md_path = tmp_path / "eval.json", tmp_path / "eval.md"
    argv = ["eval", *map(str, model_dirs), "--ppl", str(text_file), "--tasks", "piqa", "--limit", "2"]
    argv += ["--seqlen", "64", "--json", str(json_path), "--markdown", str(md_path), "--device", "cpu"]
    assert main(argv) == 0

    table = capsys.readouterr().out
    assert "tiny0" in table and "tiny1" in table and "PIQA acc*" in table and "±" in table
    report = json.loads(json_path.read_text())
    assert report["settings"]["seqlen"] == 64 and report["settings"]["task_limit"] == 2
    assert report["settings"]["seed"] == 0 and report["settings"]["versions"]["lm_eval"]
    # the report's settings are the EvalSettings the command built, task source resolved
    expected = EvalSettings(
        ppl=(str(text_file),),
        tasks=("piqa",),
        seqlen=64,
        ppl_limit=2,
        task_limit=2,
        task_source="offline",
        device="cpu",
    )
    assert EvalSettings.from_dict(report["settings"]) == expected
    assert report["data"][str(text_file)]["sha256"] and report["data"]["tasks"]["piqa"]["sha256"]
    assert report["wall_s"] > 0 and report["command"].startswith("slimllm eval ")
    first, second = report["models"]
    assert first["parameters"] == count_parameters(tiny_llama())
    assert first["perplexity"][str(text_file)]["windows"] == 2  # --limit caps the windows too
    assert first["zero_shot"]["tasks"]["piqa"]["doc_ids"] == second["zero_shot"]["tasks"]["piqa"]["doc_ids"]
    assert first["perplexity"][str(text_file)]["ppl"] != second["perplexity"][str(text_file)]["ppl"]
    markdown = md_path.read_text()
    assert report["command"] in markdown and "| parameters |" in markdown and "Wall time" in markdown
    # issue 12: the mean with its standard error, and the majority answer's score beside each task
    piqa = first["zero_shot"]["tasks"]["piqa"]
    assert first["zero_shot"]["mean_stderr"] == pytest.approx(piqa["headline_stderr"])  # one task: its own
    rate = max(piqa["gold"].count("0"), piqa["gold"].count("1")) / 2
    assert f"| PIQA majority answer | {100 * rate:.2f} | {100 * rate:.2f} |" in markdown
    se = 100 * piqa["headline_stderr"]
    assert f"| mean of 1 task (*) | {100 * first['zero_shot']['mean']:.2f} ± {se:.2f} |" in markdown


def test_separate_limits_for_perplexity_and_tasks(model_dirs, text_file, tmp_path):
    json_path = tmp_path / "eval.json"
    argv = ["eval", str(model_dirs[0]), "--ppl", str(text_file), "--tasks", "winogrande", "--seqlen", "32"]
    argv += ["--task-limit", "3", "--ppl-limit", "all", "--json", str(json_path), "--no-progress"]
    assert main(argv) == 0
    model = json.loads(json_path.read_text())["models"][0]
    ppl = model["perplexity"][str(text_file)]
    assert ppl["limit"] is None and ppl["windows"] == ppl["tokens_total"] // 32
    assert model["zero_shot"]["tasks"]["winogrande"]["documents"] == 3


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nowhere"), "--ppl", "wikitext2"]) == 2
    assert "model path not found" in capsys.readouterr().err


def test_missing_text_is_reported_before_any_model_loads(model_dirs, tmp_path, capsys):
    assert main(["eval", str(model_dirs[0]), "--ppl", str(tmp_path / "absent.txt")]) == 2
    assert "text file not found" in capsys.readouterr().err


def test_unknown_task_is_a_clear_error(model_dirs, capsys):
    assert main(["eval", str(model_dirs[0]), "--tasks", "mmlu"]) == 2
    assert "unknown zero-shot task" in capsys.readouterr().err


def test_evaluation_hands_a_training_model_back_in_training_mode(text_file):
    model, tokenizer = tiny_llama().train(), byte_tokenizer()
    settings = EvalSettings(ppl=(str(text_file),), seqlen=32, ppl_limit=1)
    result = evaluate_model(model, tokenizer, settings, progress=False)
    assert model.training and result["perplexity"][str(text_file)]["windows"] == 1


def test_eval_settings_round_trip_through_json_and_refuse_bad_values():
    settings = EvalSettings(ppl=["wikitext2"], tasks=["piqa", "boolq"], task_limit=500, seed=3, dtype="bfloat16")
    assert settings.tasks == ("piqa", "boolq")  # lists become tuples: hashable, comparable
    assert EvalSettings.from_json(settings.to_json()) == settings
    assert json.loads(settings.to_json())["tasks"] == ["piqa", "boolq"]
    assert settings.replace(seed=4).seed == 4 and settings.seed == 3
    for bad in ({"tasks": ["mmlu"]}, {"seqlen": 1}, {"task_limit": 0}, {"task_source": "web"}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            EvalSettings(**bad)


@pytest.mark.real_model
@pytest.mark.evaluation_text
def test_smollm2_offline_evaluation(tmp_path):
    json_path = tmp_path / "eval.json"
    argv = ["eval", "smollm2-135m", "--ppl", "wikitext2", "--tasks", "arc_easy", "--limit", "2"]
    argv += ["--json", str(json_path), "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    model = json.loads(json_path.read_text())["models"][0]
    assert model["parameters"] == 134_515_008
    assert model["zero_shot"]["tasks"]["arc_easy"]["documents"] == 2
    assert model["perplexity"]["wikitext2"]["data"]["origin"].endswith("wiki.test.raw")
