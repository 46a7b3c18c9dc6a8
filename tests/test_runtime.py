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
    assert runtime.choose_threads(None, 8) == "16 torch threads (16 cores: the training step on the CPU)"
    assert torch.get_num_threads() == 16
    assert runtime.choose_threads(None, 8, gpu=True) == "8 torch threads (16 cores less 8 loader workers feeding the GPU)"
    assert torch.get_num_threads() == 8
    assert runtime.choose_threads(None, 20, gpu=True).startswith("1 torch thread (")  # never below one
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: each process its share of the cores
    assert runtime.choose_threads(None, 1) == "4 torch threads (4 cores: the training step on the CPU)"
    assert runtime.choose_threads(None, 1, gpu=True) == "3 torch threads (4 cores less 1 loader worker feeding the GPU)"
    assert runtime.choose_threads(2, 1) == "2 torch threads (--cpus)"
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert runtime.choose_threads(None, 1) == "5 torch threads (OMP_NUM_THREADS)"
    assert torch.get_num_threads() == 5
