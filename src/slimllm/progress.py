"""Progress bars that draw on a terminal and write one line per stage into a log.

A command whose standard error is not a terminal (CI, ``> log``) calls
:func:`log_lines_unless_terminal`: from then on every bar made by :func:`progress_bar` draws
nothing and, when its stage ends, writes one line with what it counted and how long it took;
transformers' and datasets' own bars are switched off and lm-eval's are routed here
(:func:`slimllm.eval.harness.quiet_lm_eval`). Used as a library (a notebook included), slimllm
keeps tqdm's bars.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm as plain_tqdm
from tqdm.auto import tqdm

_log_lines = False


def log_lines_unless_terminal(stream=None) -> bool:
    """Switch every bar to one line per stage when ``stream`` (standard error) is not a terminal."""
    global _log_lines
    stream = sys.stderr if stream is None else stream
    _log_lines = not (hasattr(stream, "isatty") and stream.isatty())
    if _log_lines:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        if sys.modules.get("datasets") is not None:
            sys.modules["datasets"].disable_progress_bars()
        else:  # read when datasets is first imported: a prune that never loads a dataset skips its import
            os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    return _log_lines


def logging_lines() -> bool:
    return _log_lines


def progress_bar(iterable=None, **kwargs):
    """``tqdm(iterable, **kwargs)``, or, when writing to a log, its one-line-per-stage stand-in."""
    return (StageLine if _log_lines else tqdm)(iterable, **kwargs)


class _Discard:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


class StageLine(plain_tqdm):
    """A tqdm that draws nothing and, when closed (or exhausted), writes one line to standard
    error: ``DESC: N/TOTAL UNITs in S s``."""

    def __init__(self, iterable=None, **kwargs):
        kwargs["file"] = _Discard()
        super().__init__(iterable, **kwargs)
        self._written = self.disable

    def close(self) -> None:
        if not self._written:
            self._written = True
            seconds = self._time() - self.start_t
            count = f"{self.n}/{self.total:g}" if self.total else f"{self.n}"
            plural = "es" if self.unit.endswith(("s", "ch", "sh", "x")) else "s"
            unit = "" if self.unit == "it" else f" {self.unit}{plural}"
            print(f"{self.desc or 'done'}: {count}{unit} in {seconds:.1f} s", file=sys.stderr, flush=True)
        super().close()
