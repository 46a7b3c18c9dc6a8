"""Shared fixtures: tiny image sets in the original file-name format, made on the fly."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "2")

from hipx.data import filenames  # noqa: E402


def pytest_configure(config):
    # `make test` (and CI) run everything; `make test-fast` leaves these out: pytest -m "not slow"
    config.addinivalue_line("markers", "slow: several processes or a long end-to-end training run "
                            "(deselect with -m \"not slow\")")


def ctrl_c_as_in_a_terminal() -> None:
    """``preexec_fn`` of a child the test sends SIGINT: Ctrl-C as a terminal delivers it. A suite started in
    the background of a non-interactive shell (``make test &``) inherits SIGINT ignored, and Python then
    installs no KeyboardInterrupt handler in the child, so the signal would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def write_split(folder: Path, rows: list[tuple], size=(64, 37), seed=0) -> list[Path]:
    """rows of (patient, crop, label, sex, age, bmi); images get brighter bone for label 0."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for patient, crop, label, sex, age, bmi in rows:
        img = rng.integers(0, 60, size=size, dtype=np.uint8)
        img[size[0] // 4: 3 * size[0] // 4, size[1] // 3: 2 * size[1] // 3] += 120 if label == 0 else 60
        path = folder / filenames.encode(patient, crop, label, sex, age, bmi)
        cv2.imwrite(str(path), img)
        paths.append(path)
    return paths


def write_report_data(root: Path) -> Path:
    """root/train|val|test for the report tests: test patients s0..s3 have two images each, one missing
    BMI in val, both sexes in every split."""
    write_split(root / "train", [(f"t{i}", 1 + i % 2, i % 2, i % 3 == 0, 50 + i, 20.0 + i / 3) for i in range(12)])
    write_split(root / "val", [(f"v{i}", 1, i % 2, i % 2, 60 + i, None if i == 0 else 25.5 + i) for i in range(8)],
                seed=1)
    write_split(root / "test", [(f"s{i // 2 if i < 8 else i}", 1 + i % 2, (i // 2) % 2 if i < 8 else i % 2,
                                 i % 3 == 0, 55 + 2 * i, 22.0 + i) for i in range(12)], seed=2)
    return root


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """data/train|val|test with both classes in every split, one missing BMI in val."""
    root = tmp_path / "data"
    write_split(root / "train", [(f"t{i}", 1 + i % 2, i % 2, i % 3 == 0, 50 + i, 20.0 + i / 3) for i in range(12)])
    write_split(root / "val", [(f"v{i}", 1, i % 2, 1, 60 + i, None if i == 0 else 25.5) for i in range(6)], seed=1)
    write_split(root / "test", [(f"s{i}", 1, i % 2, 0, 70 + i, 30.25) for i in range(6)], seed=2)
    return root
