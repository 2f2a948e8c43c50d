"""Perplexity with the LLM-Pruner/SlimLLM protocol.

The corpus is joined with "\\n\\n" and tokenised once; the token stream is cut into consecutive,
non-overlapping windows of ``seqlen`` tokens (the tail shorter than one window is dropped, as in
LLM-Pruner); every window is scored on its own, so each token is predicted from at most
``seqlen - 1`` tokens of context and the first token of each window is not scored.
PPL = exp(mean NLL over all scored tokens of all windows).

``bos=True`` puts the tokenizer's <bos> before every window, as context only: models trained to
always see one first (Gemma) score several times worse without it (dense Gemma-3-270M: 386 vs 44
over the first 256 windows). Every window then scores all ``seqlen`` of its tokens, the first one
predicted from <bos> alone.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from slimllm.data.sources import load_text, token_windows, tokenize_stream
from slimllm.eval.settings import DEFAULT_BATCH_SIZE, DEFAULT_SEQLEN
from slimllm.progress import progress_bar


@torch.inference_mode()
def window_nll(
    model, windows: torch.Tensor, *, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False, desc: str = "PPL"
) -> tuple[float, int]:
    """Summed next-token NLL over all windows and the number of tokens it covers.

    The model runs in its own dtype on its own device; the log-softmax is taken in float32 so
    half-precision models are not penalised by rounding in the loss itself.
    """
    device = next(model.parameters()).device
    total_nll = 0.0
    scored = 0
    batches = range(0, windows.shape[0], batch_size)
    for start in progress_bar(batches, desc=desc, unit="batch", disable=not progress, leave=False):
        batch = windows[start : start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        # one window at a time, so the float32 copy of the logits stays one window large
        for window_logits, window in zip(logits, batch, strict=True):
            nll = F.cross_entropy(window_logits[:-1].float(), window[1:], reduction="sum")
            total_nll += nll.item()  # a Python float: float64 accumulation over ~10^6 token losses
            scored += window.numel() - 1
    return total_nll, scored


def perplexity_of_stream(
    model,
    stream: torch.Tensor,
    *,
    seqlen: int = DEFAULT_SEQLEN,
    batch_size: int = DEFAULT_BATCH_SIZE,
    limit: int | None = None,
    bos_token_id: int | None = None,
    progress: bool = False,
    desc: str = "PPL",
) -> dict:
    """Perplexity of a 1-D token stream; see the module docstring for the protocol.

    With ``bos_token_id``, that token goes before every window as context (it is never scored)."""
    windows = token_windows(stream, seqlen, limit)
    if bos_token_id is not None:
        bos = torch.full((windows.shape[0], 1), bos_token_id, dtype=windows.dtype)
        windows = torch.cat([bos, windows], dim=1)
    total_nll, scored = window_nll(model, windows, batch_size=batch_size, progress=progress, desc=desc)
    mean_nll = total_nll / scored
    return {
        "ppl": math.exp(mean_nll),
        "mean_nll": mean_nll,
        "seqlen": seqlen,
        "windows": windows.shape[0],
        "tokens_total": int(stream.numel()),
        "tokens_in_windows": int(windows.numel()),
        "tokens_scored": scored,
        "limit": limit,
        "bos": bos_token_id is not None,
    }


def perplexity(
    model,
    tokenizer,
    source: str = "wikitext2",
    *,
    seqlen: int = DEFAULT_SEQLEN,
    batch_size: int = DEFAULT_BATCH_SIZE,
    limit: int | None = None,
    bos: bool = False,
    progress: bool = True,
) -> dict:
    """Perplexity of ``model`` on a text source, with the LLM-Pruner/SlimLLM protocol.

    ``source`` is anything :func:`slimllm.data.sources.load_text` takes: ``wikitext2`` (raw test),
    ``ptb`` (validation), or a local ``.txt``/``.jsonl`` file. ``limit`` keeps the first windows;
    ``bos`` puts the tokenizer's <bos> before each (an error if it has none).
    Returns ``ppl``, ``mean_nll``, the window and token counts, ``data`` (source, origin, sha256)
    and ``wall_s``.
    """
    start = time.perf_counter()
    if bos and tokenizer.bos_token_id is None:
        raise ValueError("bos: the tokenizer has no <bos> token to put before each window")
    text, info = load_text(source, quiet=True)
    stream = tokenize_stream(tokenizer, text)
    result = perplexity_of_stream(
        model,
        stream,
        seqlen=seqlen,
        batch_size=batch_size,
        limit=limit,
        bos_token_id=tokenizer.bos_token_id if bos else None,
        progress=progress,
        desc=f"PPL {source}",
    )
    return {**result, "data": info.to_dict(), "wall_s": time.perf_counter() - start}
