"""Exact resume after SIGKILL, and torchrun (2 gloo processes on CPU) against one process."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hipx.data import filenames
from hipx.data import loader
import main
from hipx.stats import metrics
from hipx.runs import runfiles
from hipx.models import build_model_from_checkpoint
from conftest import write_split

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_data(tmp_path):
    root = tmp_path / "data"
    write_split(root / "train", [(f"t{i}", 1, i % 2, i % 3 == 0, 50 + i, 20.0 + i / 3) for i in range(40)],
                size=(96, 56))
    write_split(root / "val", [(f"v{i}", 1, i % 2, 1, 60 + i, 25.5) for i in range(9)], size=(96, 56), seed=1)
    write_split(root / "test", [(f"s{i}", 1, i % 2, 0, 70 + i, 30.25) for i in range(7)], size=(96, 56), seed=2)
    return root


def cmd(data, outs, save_dir, *extra):
    return [sys.executable, str(ROOT / "main.py"), "--depth", "10", "--data_dir", str(data), "--image_size", "96",
            "56", "--batch_size", "4", "--workers", "0", "--device", "cpu", "--cpus", "1", "--out_root",
            str(outs), "--save_dir", save_dir, "--fold", "_x", "--seed", "3", *extra]


def history_rows(run):
    path = run / "history.csv"
    if not path.exists():
        return 0
    return len(path.read_text().strip().splitlines()) - 1


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(small_data, tmp_path):
    outs = tmp_path / "outs"
    common = ["--epoch", "4", "--deterministic", "--augment", "cat_elastic", "--late_fuse", "true"]
    subprocess.run(cmd(small_data, outs, "straight", *common), check=True, capture_output=True, cwd=ROOT)

    run = outs / "killed" / "fold_x"
    proc = subprocess.Popen(cmd(small_data, outs, "killed", *common), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while history_rows(run) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # in epoch 3
    proc.wait()
    assert 2 <= history_rows(run) < 4, "the kill should land before the run finished"
    assert not (run / "test_metrics.json").exists()
    runfiles.load_checkpoint(run / "last.pth")  # whole, not truncated

    subprocess.run(cmd(small_data, outs, "killed", "--resume", "--epoch", "4"), check=True, capture_output=True,
                   cwd=ROOT)
    a = json.loads((outs / "straight" / "fold_x" / "test_metrics.json").read_text())
    b = json.loads((run / "test_metrics.json").read_text())
    assert a["epoch"] == b["epoch"]
    assert a["at_threshold"] == b["at_threshold"]
    ha = list(csv.DictReader(open(outs / "straight" / "fold_x" / "history.csv")))
    hb = list(csv.DictReader(open(run / "history.csv")))
    assert [r["val_roc_auc"] for r in ha] == [r["val_roc_auc"] for r in hb]
    assert [float(r["train_loss"]) for r in ha] == pytest.approx([float(r["train_loss"]) for r in hb], abs=1e-9)


def test_resume_of_a_foreign_or_truncated_checkpoint_is_refused_and_files_kept(small_data, tmp_path):
    run = tmp_path / "outs" / "r" / "fold_x"
    run.mkdir(parents=True)
    (run / "last.pth").write_bytes(b"\x80\x02garbage")
    before = (run / "last.pth").read_bytes()
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        main.main(cmd(small_data, tmp_path / "outs", "r", "--resume")[2:])
    assert (run / "last.pth").read_bytes() == before


def evaluate_single_process(run, data, split):
    trained = runfiles.load_run(run)
    model = build_model_from_checkpoint(trained.state)
    ds = loader.run_dataset(loader.list_split(data, split), trained.config, trained.clinical_stats)
    late = trained.fusion == "late"
    with torch.no_grad():
        probs = [torch.sigmoid(model(ds[i]["image"][None], ds[i]["clinical"][None] if late else None))
                 .item() for i in range(len(ds))]
    return trained.state, ds.labels, np.array(probs)


@pytest.mark.slow
@pytest.mark.parametrize("late_fuse", ["true", "false"])
def test_torchrun_two_gloo_processes_match_single_process(small_data, tmp_path, late_fuse):
    outs = tmp_path / "outs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(torchrun + cmd(small_data, outs, "ddp", "--epoch", "2", "--late_fuse", late_fuse,
                                         "--sampler", "weight", "--bootstrap", "200")[1:],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    runs = list(outs.iterdir())
    assert [p.name for p in runs] == ["ddp"] and [p.name for p in runs[0].iterdir()] == ["fold_x"]
    run = runs[0] / "fold_x"
    assert sorted(p.name for p in run.iterdir()) == sorted(
        [".lock", "config.json", "data_files.csv", "train.log", "history.csv", "best.pth", "last.pth",
         "test_metrics.json", "test_predictions.csv", "val_predictions.csv", "report.md", "report.html",
         "report_metrics.json", "report_figures", "model_card.md"])
    assert not list(run.glob(".*.tmp"))  # one writer: no rank raced another over a file

    # the checkpoint loads without DDP (no 'module.' prefix) and reproduces the gathered metrics
    state, labels, probs = evaluate_single_process(run, small_data, "val")
    assert not any(k.startswith("module.") for k in state["model"])
    assert state["val_metrics"]["roc_auc"] == pytest.approx(metrics.roc_auc(labels, probs), abs=1e-6)
    _, labels, probs = evaluate_single_process(run, small_data, "test")
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["at_threshold"]["roc_auc"] == pytest.approx(metrics.roc_auc(labels, probs), abs=1e-6)
    assert test["n_images"] == 7
