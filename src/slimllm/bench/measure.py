"""Peak memory of a block, inference speed of a model, and a model's shape signature."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import statistics
import threading
import time
from collections.abc import Iterator

import torch

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _status_kib(field: str) -> int | None:
    try:
        with open(_STATUS) as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mib() -> float | None:
    """The process's resident set size now, in MiB (Linux; None elsewhere)."""
    kib = _status_kib("VmRSS")
    return kib / 1024 if kib is not None else None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where not possible."""
    try:
        with open(_CLEAR_REFS, "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak process RSS (and peak CUDA allocation on a GPU) while the block runs.

    On Linux the kernel's own high-water mark is reset at entry and read at exit, so short
    spikes count. Elsewhere a thread samples the RSS every 10 ms (``method`` says which).
    """

    def __init__(self, device: str | torch.device | None = None):
        self.device = torch.device(device) if device else None
        self.start_mib: float | None = None
        self.peak_mib: float | None = None
        self.gpu_peak_mib: float | None = None
        self.method = "none"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled = 0.0

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            now = rss_mib()
            if now is not None:
                self._sampled = max(self._sampled, now)

    def __enter__(self) -> PeakMemory:
        self.start_mib = rss_mib()
        if self.start_mib is not None and _reset_peak_rss():
            self.method = "VmHWM"
        elif self.start_mib is not None:
            self.method = "sampled"
            self._sampled = self.start_mib
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.method == "VmHWM":
            kib = _status_kib("VmHWM")
            self.peak_mib = kib / 1024 if kib is not None else None
        elif self.method == "sampled":
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak_mib = max(self._sampled, rss_mib() or 0.0)
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.gpu_peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20

    def to_dict(self) -> dict:
        return {
            "rss_start_mib": self.start_mib,
            "rss_peak_mib": self.peak_mib,
            "rss_increase_mib": (self.peak_mib - self.start_mib) if self.peak_mib and self.start_mib else None,
            "gpu_peak_mib": self.gpu_peak_mib,
            "method": self.method,
        }


# -- speed ----------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def prefill_seconds(model, ids: torch.Tensor) -> float:
    """Wall time of one forward pass over ``ids`` (no cache)."""
    device = _device(model)
    ids = ids.to(device)
    _sync(device)
    start = time.perf_counter()
    model(input_ids=ids, use_cache=False)
    _sync(device)
    return time.perf_counter() - start


def _cache_keyword(model) -> str:
    """The name under which this transformers version's models take the KV cache (renamed in 5.24)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.inference_mode()
def decode_seconds(model, prompt: torch.Tensor, new_tokens: int) -> float:
    """Wall time of ``new_tokens`` greedy steps with the KV cache, after an untimed prefill of
    ``prompt`` (so the time is the decoding alone; no early stop at end-of-text)."""
    from transformers import DynamicCache

    device = _device(model)
    cache = {_cache_keyword(model): DynamicCache(config=model.config)}  # filled in place by every step
    token = model(input_ids=prompt.to(device), use_cache=True, **cache).logits[:, -1:].argmax(-1)
    _sync(device)
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = model(input_ids=token, use_cache=True, **cache).logits[:, -1:].argmax(-1)
    _sync(device)
    return time.perf_counter() - start


def compare_speed(
    dense,
    pruned,
    *,
    vocab_size: int,
    runs: int = 3,
    prefill_tokens: int = 512,
    decode_tokens: int = 128,
    decode_prompt: int = 128,
    seed: int = 0,
) -> dict:
    """Prefill latency (batch 1 × ``prefill_tokens``) and decode throughput (batch 1,
    ``decode_tokens`` new tokens with the KV cache) of ``pruned`` against ``dense``.

    The two models alternate within each run (after one warm-up each), so slow drifts of a shared
    machine hit both alike; medians of ``runs`` runs; ratios are dense time / pruned time.
    """
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (1, prefill_tokens), generator=generator)
    prompt = torch.randint(0, vocab_size, (1, decode_prompt), generator=generator)
    models = {"dense": dense, "pruned": pruned}
    for model in models.values():  # warm-up: allocator, kernels, caches
        prefill_seconds(model, ids[:, : min(prefill_tokens, 64)])
        decode_seconds(model, prompt, min(decode_tokens, 4))
    times: dict[str, dict[str, list[float]]] = {name: {"prefill": [], "decode": []} for name in models}
    for _ in range(runs):
        for name, model in models.items():
            times[name]["prefill"].append(prefill_seconds(model, ids))
        for name, model in models.items():
            times[name]["decode"].append(decode_seconds(model, prompt, decode_tokens))
    result: dict = {"runs": runs, "prefill_tokens": prefill_tokens, "decode_tokens": decode_tokens}
    for name in models:
        prefill = statistics.median(times[name]["prefill"])
        decode = statistics.median(times[name]["decode"])
        result[name] = {
            "prefill_s": prefill,
            "decode_s": decode,
            "decode_tokens_per_s": decode_tokens / decode,
            "prefill_all_s": times[name]["prefill"],
            "decode_all_s": times[name]["decode"],
        }
    result["prefill_speedup"] = result["dense"]["prefill_s"] / result["pruned"]["prefill_s"]
    result["decode_speedup"] = result["dense"]["decode_s"] / result["pruned"]["decode_s"]
    return result


def shape_signature(model) -> str:
    """A short hash of every parameter's name and shape: equal for models that compute alike."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        digest.update(f"{name}:{tuple(param.shape)};".encode())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (unchanged when None)."""
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def machine_info(threads: int | None = None) -> dict:
    info = {
        "cpu_count": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    with contextlib.suppress(OSError, AttributeError):
        info["load_average_at_start"] = os.getloadavg()
    return info
