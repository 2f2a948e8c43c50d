"""How precisely accuracies are known: the task mean's standard error, majority-class rates and
paired differences between two models scored on the same documents.

Per-document results travel as compact strings so that cell and report files stay small:
``correct`` is one character per document, ``1`` right and ``0`` wrong on the headline metric;
``gold`` is one digit per document, the index of the right answer (every task here has at most
five choices). Both are aligned with the sorted ``doc_ids`` list of the task.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence


def encode_bits(values: Iterable[float]) -> str:
    """0/1 scores as a string of ``0``/``1`` characters."""
    out = []
    for value in values:
        if value not in (0, 1):
            raise ValueError(f"per-document scores must be 0 or 1, got {value!r}")
        out.append("1" if value else "0")
    return "".join(out)


def decode_bits(text: str) -> list[int]:
    return [int(char) for char in text]


def encode_gold(indices: Iterable[int]) -> str:
    out = []
    for index in indices:
        if not 0 <= index <= 9:
            raise ValueError(f"gold answer index must be a single digit, got {index!r}")
        out.append(str(index))
    return "".join(out)


def majority(gold: Sequence[int] | str) -> dict:
    """The most frequent gold answer and the accuracy of always giving it.

    For yes/no and two-way tasks this is the majority class (BoolQ's "yes"); for multiple choice the
    most frequent gold position. Ties go to the lowest index, so the result does not depend on order.
    """
    values = [int(g) for g in gold]
    if not values:
        raise ValueError("no documents")
    counts = Counter(values)
    best = max(counts.items(), key=lambda item: (item[1], -item[0]))[0]
    return {"answer": best, "rate": counts[best] / len(values), "documents": len(values)}


def mean_stderr(stderrs: Sequence[float | None]) -> float | None:
    """Standard error of the plain mean of independent task scores: sqrt(sum se_i^2) / n.

    None when any task's error is unknown (a task with one document has none).
    """
    if not stderrs or any(e is None or (isinstance(e, float) and math.isnan(e)) for e in stderrs):
        return None
    return math.sqrt(sum(e * e for e in stderrs)) / len(stderrs)


def _mean_and_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def shared_scores(a: dict, b: dict) -> tuple[list[int], list[int], list[int]]:
    """The documents both task results scored, with each one's 0/1 scores, in doc id order."""
    scores_a = dict(zip(a["doc_ids"], decode_bits(a["correct"]), strict=True))
    scores_b = dict(zip(b["doc_ids"], decode_bits(b["correct"]), strict=True))
    shared = sorted(scores_a.keys() & scores_b.keys())
    return shared, [scores_a[d] for d in shared], [scores_b[d] for d in shared]


def paired_task_difference(a: dict, b: dict) -> dict:
    """Accuracy of A minus accuracy of B on the documents both scored, with the standard error
    of the mean of the per-document differences (tighter than two independent errors when the
    models tend to get the same documents right)."""
    shared, scores_a, scores_b = shared_scores(a, b)
    if not shared:
        raise ValueError("the two results share no document")
    diff, stderr = _mean_and_stderr([x - y for x, y in zip(scores_a, scores_b, strict=True)])
    return {"difference": diff, "stderr": stderr, "documents": len(shared)}


def paired_difference(tasks_a: dict[str, dict], tasks_b: dict[str, dict]) -> dict | None:
    """A − B on the mean of the tasks both evaluated per document: the mean of the per-task paired
    differences, with standard error sqrt(sum se_t^2) / T (tasks are independent samples).

    ``tasks_a``/``tasks_b`` map task names to results holding ``doc_ids`` and ``correct``; None
    when no task has per-document results on both sides.
    """
    names = [t for t in tasks_a if t in tasks_b and tasks_a[t].get("correct") and tasks_b[t].get("correct")]
    if not names:
        return None
    per_task = {t: paired_task_difference(tasks_a[t], tasks_b[t]) for t in names}
    mean = math.fsum(d["difference"] for d in per_task.values()) / len(per_task)
    return {"difference": mean, "stderr": mean_stderr([d["stderr"] for d in per_task.values()]), "tasks": per_task}
