"""Standard errors, majority-class rates and paired differences against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slimllm.eval.task_table import TASK_TABLE, TASKS, chance_of_mean
from slimllm.eval.uncertainty import (
    decode_bits,
    encode_bits,
    encode_gold,
    majority,
    mean_stderr,
    paired_difference,
    paired_task_difference,
)


def task_result(doc_ids, scores) -> dict:
    return {"doc_ids": list(doc_ids), "correct": encode_bits(scores)}


def test_bits_round_trip_and_refuse_non_binary_scores():
    assert encode_bits([1.0, 0.0, 1, 0]) == "1010"
    assert decode_bits("1010") == [1, 0, 1, 0]
    with pytest.raises(ValueError):
        encode_bits([0.5])
    with pytest.raises(ValueError):
        encode_gold([10])


def test_majority_rate_of_a_hand_made_document_list():
    # BoolQ-like: 5 "yes" (1) against 3 "no" (0)
    assert majority([1, 0, 1, 1, 0, 1, 0, 1]) == {"answer": 1, "rate": 5 / 8, "documents": 8}
    # four-way multiple choice from a gold string: position 2 is most frequent (3 of 7)
    assert majority("2012320") == {"answer": 2, "rate": 3 / 7, "documents": 7}
    # a tie goes to the lowest index, whatever the order
    assert majority([3, 1, 3, 1])["answer"] == majority([1, 3, 1, 3])["answer"] == 1


def test_mean_stderr_is_that_of_the_mean_of_independent_task_means():
    rng = np.random.default_rng(0)
    tasks = [rng.integers(0, 2, size=n).astype(float) for n in (50, 80, 120, 30, 200, 75, 64)]
    per_task_se = [t.std(ddof=1) / math.sqrt(len(t)) for t in tasks]
    # Var(mean of 7 independent means) = sum Var_i / 49
    expected = math.sqrt(sum(np.var(t, ddof=1) / len(t) for t in tasks)) / 7
    assert mean_stderr(per_task_se) == pytest.approx(expected, rel=1e-12)
    assert mean_stderr([0.02, None]) is None and mean_stderr([]) is None


def test_paired_difference_against_numpy_on_synthetic_documents():
    rng = np.random.default_rng(1)
    tasks_a, tasks_b, direct_means, direct_vars = {}, {}, [], []
    for task, n in zip(TASKS, (60, 45, 90, 33, 70, 52, 41), strict=True):
        ids = np.sort(rng.choice(1000, size=n, replace=False))
        a = rng.integers(0, 2, size=n)
        # B agrees with A on most documents: the paired error is then much smaller than the unpaired one
        b = np.where(rng.random(n) < 0.8, a, 1 - a)
        # B's documents in another order, plus one A did not score: only shared ones are paired
        order = rng.permutation(n)
        tasks_a[task] = task_result(ids.tolist(), a.tolist())
        tasks_b[task] = task_result([*ids[order].tolist(), 5000], [*b[order].tolist(), 1])
        d = (a - b).astype(float)
        direct_means.append(d.mean())
        direct_vars.append(d.var(ddof=1) / n)
    result = paired_difference(tasks_a, tasks_b)
    assert result["difference"] == pytest.approx(np.mean(direct_means), abs=1e-12)
    assert result["stderr"] == pytest.approx(math.sqrt(sum(direct_vars)) / 7, rel=1e-12)
    assert result["tasks"]["piqa"]["documents"] == 45
    first = tasks_a[TASKS[0]]
    paired = paired_task_difference(first, tasks_b[TASKS[0]])
    a = np.array(decode_bits(first["correct"]), dtype=float)
    unpaired = math.sqrt(2 * a.var(ddof=1) / len(a))
    assert paired["stderr"] < unpaired


def test_paired_difference_needs_per_document_results():
    assert paired_difference({"piqa": {"headline": 0.5}}, {"piqa": {"headline": 0.4}}) is None
    with pytest.raises(ValueError, match="share no document"):
        paired_task_difference(task_result([1, 2], [1, 0]), task_result([3], [1]))


def test_task_table_is_complete_and_chance_is_the_mean_of_guessing():
    assert TASKS == ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
    assert chance_of_mean(TASKS) == pytest.approx((3 * 0.5 + 4 * 0.25) / 7)
    assert {info.headline_metric for info in TASK_TABLE.values()} == {"acc", "acc_norm"}
