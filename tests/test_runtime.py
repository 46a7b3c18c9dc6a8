import os

import pytest
import torch

from hipx.core import runtime


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_are_the_cores_left_after_the_loader_workers(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert runtime.choose_threads(None, 8) == "8 torch threads (16 cores less 8 loader workers)"
    assert torch.get_num_threads() == 8
    assert runtime.choose_threads(None, 20).startswith("1 torch thread (")  # never below one
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: each process its share of the cores
    assert runtime.choose_threads(None, 1) == "3 torch threads (4 cores less 1 loader worker)"
    assert runtime.choose_threads(2, 1) == "2 torch threads (--cpus)"
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert runtime.choose_threads(None, 1) == "5 torch threads (OMP_NUM_THREADS)"
    assert torch.get_num_threads() == 5
