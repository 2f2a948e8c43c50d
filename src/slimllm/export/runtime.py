"""Run exported GGUF files in llama.cpp (llama-cpp-python): window perplexity and speed.

Perplexity follows :mod:`slimllm.eval.ppl` exactly (same windows of token ids, every window scored
on its own, first token of each window not scored), so llama.cpp and PyTorch are compared on the
same tokens. Speed follows llama-bench: prompt processing of one ``n``-token batch, and generation
of ``m`` tokens one at a time after it, each timed separately.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("running GGUF files needs llama-cpp-python: pip install 'slimllm[serve]'") from error
    return llama_cpp


def open_model(path, *, n_ctx: int, n_batch: int | None = None, logits_all: bool = False, threads=None, **kwargs):
    llama_cpp = _llama_cpp()
    threads = threads or os.cpu_count() or 1
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_batch or n_ctx,
        n_ubatch=n_batch or n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=logits_all,
        verbose=False,
        **kwargs,
    )


def window_nll(path, windows: torch.Tensor, *, threads: int | None = None) -> tuple[float, int]:
    """Summed next-token NLL of every window (scored on its own) and the number of scored tokens."""
    seqlen = windows.shape[1]
    llm = open_model(path, n_ctx=seqlen, logits_all=True, threads=threads)
    total, scored = 0.0, 0
    try:
        for window in windows.tolist():
            llm.reset()
            llm.eval(window)
            logits = np.asarray(llm.scores[: seqlen - 1], dtype=np.float64)
            top = logits.max(axis=1, keepdims=True)
            log_z = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
            total += float((log_z - logits[np.arange(seqlen - 1), window[1:]]).sum())
            scored += seqlen - 1
    finally:
        llm.close()
    return total, scored


def speed(
    path,
    prompt: list[int],
    generate: list[int],
    *,
    repeats: int = 5,
    threads: int | None = None,
    flash_attn: bool = True,
) -> dict:
    """Prompt-processing and generation tokens/s, median of ``repeats`` (after one warm-up run).

    The prompt goes in as one batch; then the ``generate`` tokens go in one at a time, as a greedy
    decoder would feed them (fixed tokens, so no sampler time is counted).
    """
    llm = open_model(
        path, n_ctx=len(prompt) + len(generate) + 8, n_batch=len(prompt), threads=threads, flash_attn=flash_attn
    )
    pp, tg = [], []
    try:
        for run in range(repeats + 1):
            llm.reset()
            start = time.perf_counter()
            llm.eval(prompt)
            middle = time.perf_counter()
            for token in generate:
                llm.eval([token])
            end = time.perf_counter()
            if run:  # the first run warms caches and pages the weights in
                pp.append(len(prompt) / (middle - start))
                tg.append(len(generate) / (end - middle))
    finally:
        llm.close()
    return {
        "pp_tokens_per_s": statistics.median(pp),
        "tg_tokens_per_s": statistics.median(tg),
        "pp_runs": pp,
        "tg_runs": tg,
    }
