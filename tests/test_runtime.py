import os

import pytest
import torch

from hipx.core import runtime


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_are_every_core_on_the_cpu_and_the_cores_left_after_the_workers_on_a_gpu(monkeypatch,
                                                                                           restore_threads):
    """On the CPU the step is the work: every core (issue 30); on a GPU the loader workers are, so they
    get their cores."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert runtime.choose_threads(None, 8) == ("16 torch threads (16 cores: the training step on the CPU, fewer "
                                               "while other jobs use some)")
    assert runtime.choose_threads(None, 8, adaptive=False) == "16 torch threads (16 cores: the training step on the CPU)"
    assert torch.get_num_threads() == 16
    assert runtime.choose_threads(None, 8, gpu=True) == "8 torch threads (16 cores less 8 loader workers feeding the GPU)"
    assert torch.get_num_threads() == 8
    assert runtime.choose_threads(None, 20, gpu=True).startswith("1 torch thread (")  # never below one
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: each process its share of the cores
    assert runtime.choose_threads(None, 1) == "4 torch threads (4 cores: the training step on the CPU)"  # torchrun: fixed
    assert runtime.choose_threads(None, 1, gpu=True) == "3 torch threads (4 cores less 1 loader worker feeding the GPU)"
    assert runtime.choose_threads(2, 1) == "2 torch threads (--cpus)"
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert runtime.choose_threads(None, 1) == "5 torch threads (OMP_NUM_THREADS)"
    assert torch.get_num_threads() == 5


def test_the_default_plan_gives_back_the_cores_other_jobs_used(monkeypatch, restore_threads):
    """After each epoch the default CPU plan counts the cores other jobs used (the machine's busy time less
    this process's and its workers') and keeps the rest: 2 cores, another job using one -> 1 thread; the
    other job gone -> 2 again. --cpus, OMP_NUM_THREADS and --deterministic (adaptive=False) never change."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    clock = {"t": 0.0, "busy": 0.0, "own": 0.0}
    monkeypatch.setattr(runtime, "machine_busy_seconds", lambda: clock["busy"])
    monkeypatch.setattr(runtime, "cpu_seconds", lambda pid=None: clock["own"])

    def epoch(seconds, own, others):
        clock["t"] += seconds
        clock["own"] += own * seconds
        clock["busy"] += (own + others) * seconds

    assert runtime.choose_threads(None, 1).startswith("2 torch threads")
    runtime._PLAN.clock = lambda: clock["t"]
    runtime._PLAN.mark = runtime._PLAN._read()
    epoch(10, own=1.0, others=1.0)  # a second job started
    assert runtime.share_cores() == ("1 torch thread from the next epoch: other jobs used 1.0 of the 2 cores in the "
                                     "last one")
    assert torch.get_num_threads() == 1
    epoch(10, own=1.0, others=0.9)
    assert runtime.share_cores() is None and torch.get_num_threads() == 1  # unchanged: nothing said
    epoch(10, own=1.0, others=0.1)  # it ended
    assert runtime.share_cores().startswith("2 torch threads from the next epoch") and torch.get_num_threads() == 2
    for fixed in ({"cpus": 2}, {"cpus": None, "adaptive": False}):
        runtime.choose_threads(workers=1, **{"cpus": None, **fixed})
        epoch(10, own=1.0, others=1.0)
        assert runtime.share_cores() is None and torch.get_num_threads() == 2


def test_channels_last_is_on_unless_switched_off():
    """--channels_last auto is NHWC on every device (measured faster on the CPU too, docs/speed.md)."""
    assert runtime.use_channels_last("auto") and runtime.use_channels_last("true")
    assert not runtime.use_channels_last("false")
