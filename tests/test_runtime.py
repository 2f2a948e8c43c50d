"""slimllm.runtime: the thread count follows the cores other processes leave free."""

import sys

import pytest
import torch

from slimllm import runtime
from slimllm.runtime import CoreShare


class _Clock:
    """Scripted /proc/stat ticks, process CPU time and wall time (seconds; 100 ticks a second)."""

    def __init__(self, monkeypatch, cpus: int):
        self.busy = self.total = 0
        self.cpu = self.wall = 0.0
        self.cpus = cpus
        monkeypatch.setattr(runtime, "_busy_ticks", lambda: (self.busy, self.total))
        monkeypatch.setattr(runtime.time, "process_time", lambda: self.cpu)
        monkeypatch.setattr(runtime.time, "perf_counter", lambda: self.wall)

    def advance(self, seconds: float, own_cores: float, other_cores: float) -> None:
        self.wall += seconds
        self.cpu += own_cores * seconds
        self.busy += round((own_cores + other_cores) * seconds * 100)
        self.total += round(self.cpus * seconds * 100)


def test_threads_follow_the_cores_other_processes_leave(monkeypatch):
    clock = _Clock(monkeypatch, cpus=2)
    previous = torch.get_num_threads()
    with CoreShare() as cores:
        cores.cores, cores._online = 2, 2
        clock.advance(1.0, own_cores=2.0, other_cores=0.0)
        assert cores.adjust() == 2
        clock.advance(1.0, own_cores=1.0, other_cores=1.0)  # another process took a core
        assert cores.adjust() == 1 and torch.get_num_threads() == 1
        clock.advance(1.0, own_cores=1.0, other_cores=3.0)  # more than the machine: still one thread
        assert cores.adjust() == 1
        clock.advance(0.05, own_cores=1.0, other_cores=0.0)  # too short to tell: keep the count
        assert cores.adjust() == 1
        clock.advance(1.0, own_cores=1.0, other_cores=0.0)  # the other process ended
        assert cores.adjust() == 2
        clock.advance(2.0, own_cores=1.5, other_cores=0.25)
        assert cores.others_busy() == pytest.approx(0.25)
    assert torch.get_num_threads() == previous
    assert cores.used == [2, 1, 1, 1, 2]


def test_a_fixed_thread_count_is_kept_and_restored(monkeypatch):
    _Clock(monkeypatch, cpus=2)
    previous = torch.get_num_threads()
    with CoreShare(fixed=1) as cores:
        assert torch.get_num_threads() == 1
        assert cores.adjust() == 1
    assert torch.get_num_threads() == previous


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_the_busy_share_is_read_from_proc_stat_on_linux():
    busy, total = runtime._busy_ticks()
    assert 0 < busy < total
