"""Progress output: bars on a terminal, one line per stage in a log."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from slimllm import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_bars():
    import datasets
    from transformers.utils import logging as transformers_logging

    yield
    progress.log_lines_unless_terminal(_Terminal())
    transformers_logging.enable_progress_bar()
    datasets.enable_progress_bars()


def test_in_a_log_a_stage_is_one_line_with_its_count_and_time(restore_bars, capsys):
    assert progress.log_lines_unless_terminal(io.StringIO()) is True
    assert list(progress.progress_bar(range(5), desc="layers")) == [0, 1, 2, 3, 4]
    bar = progress.progress_bar(total=3, desc="search", unit="step")
    bar.update(2)
    bar.close()
    bar.close()  # closing twice writes nothing more
    quiet = list(progress.progress_bar(range(2), desc="hidden", disable=True))
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert quiet == [0, 1] and "\r" not in err and len(lines) == 2
    assert lines[0].startswith("layers: 5/5 in ") and lines[0].endswith(" s")
    assert lines[1].startswith("search: 2/3 steps in ")


def test_on_a_terminal_bars_are_tqdm_bars(restore_bars):
    from tqdm.auto import tqdm

    assert progress.log_lines_unless_terminal(_Terminal()) is False
    bar = progress.progress_bar(range(2), desc="x", disable=True)
    assert isinstance(bar, tqdm) and not isinstance(bar, progress.StageLine)


def test_a_command_writing_to_a_log_has_no_bar_redraws(tmp_path):
    """`slimllm eval` on a tiny model, standard error a pipe: no carriage returns, one line per stage."""
    from tiny_models import byte_tokenizer, tiny_byte_llama

    folder = tmp_path / "tiny"
    tiny_byte_llama().save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    finished = subprocess.run(
        [sys.executable, "-m", "slimllm", "eval", str(folder), "--ppl", str(text), "--tasks", "none"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr
    assert "\r" not in finished.stderr and "\r" not in finished.stdout
    assert any(line.startswith(f"PPL {text}: ") and " batches in " in line for line in finished.stderr.splitlines())


def test_datasets_bars_are_off_in_a_log_without_importing_datasets_early():
    code = (
        "import io, sys; from slimllm import progress; progress.log_lines_unless_terminal(io.StringIO()); "
        "early = 'datasets' in sys.modules; import datasets; print(early, datasets.is_progress_bar_enabled())"
    )
    environment = {k: v for k, v in os.environ.items() if k != "HF_DATASETS_DISABLE_PROGRESS_BARS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=True)
    assert done.stdout.split() == ["False", "False"]
