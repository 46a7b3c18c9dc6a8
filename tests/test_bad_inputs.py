"""A user's mistakes, driven through the four scripts exactly as a user runs them (subprocesses).

Every case asserts: the exit status; no traceback; a message naming the file, row, field or flag
at fault; every input and every existing run folder byte-identical afterwards (and no new run
folder). Then --resume: a finished run is left byte-identical; Ctrl-C (SIGINT) and kill -9 in the
middle of an epoch, followed by the command the run printed (README's), end exactly as an
uninterrupted run; --extend_epochs trains a finished run longer with the stated schedule.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from conftest import ctrl_c_as_in_a_terminal, write_split

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("train_seconds", "train_images_per_s", "train_data_wait")  # wall-clock columns of history.csv


def run_script(script: str, *args, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "HIPX_DEBUG"}, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and folder under ``roots`` with a hash of its bytes."""
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


def train_args(data: Path, outs: Path, save_dir: str, *extra) -> list[str]:
    return ["--depth", "10", "--data_dir", data, "--image_size", "64", "37", "--batch_size", "4", "--workers", "0",
            "--device", "cpu", "--cpus", "1", "--out_root", outs, "--save_dir", save_dir, "--fold", "_a",
            "--epoch", "2", "--bootstrap", "0", *extra]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> SimpleNamespace:
    """Tiny data, one trained run and a small hospital export, shared by every case."""
    root = tmp_path_factory.mktemp("world")
    data = root / "data"
    write_split(data / "train", [(f"t{i}", 1, i % 2, i % 2, 50 + i, 20.0 + i) for i in range(12)])
    write_split(data / "val", [(f"v{i}", 1, i % 2, 1, 60 + i, 25.5) for i in range(6)], seed=1)
    write_split(data / "test", [(f"s{i}", 1, i % 2, 0, 70 + i, 30.25) for i in range(6)], seed=2)
    outs = root / "outs"
    done = run_script("main.py", *train_args(data, outs, "r"))
    assert done.returncode == 0, done.stderr
    export = root / "export"
    (export / "raw").mkdir(parents=True)
    rows = ["patient_id,image,label,sex,age,bmi"]
    for i in range(8):
        cv2.imwrite(str(export / "raw" / f"p{i}.png"), np.random.default_rng(i).integers(0, 255, (64, 37), np.uint8))
        rows.append(f"P{i},p{i}.png,{i % 2},F,{50 + i},{22 + i}")
    rows[3] = "P2,p2.png,0,F,999,22"  # an impossible age on CSV line 4
    (export / "patient_list.csv").write_text("\n".join(rows) + "\n")
    (export / "no_label.csv").write_text("patient_id,image,sex\nP0,p0.png,F\n")
    (export / "full").mkdir()
    (export / "full" / "mine.txt").write_text("keep me")
    return SimpleNamespace(root=root, data=data, outs=outs, run=outs / "r" / "fold_a", export=export)


def copy_data(world, tmp_path: Path) -> Path:
    return Path(shutil.copytree(world.data, tmp_path / "data"))


def image(path: Path, size=(64, 37)) -> Path:
    cv2.imwrite(str(path), np.full(size, 90, np.uint8))
    return path


# -- main.py: flags (answered before torch is imported) ---------------------------------------------
def _train(w, t, *extra):
    return train_args(w.data, w.outs, "new", *extra)


FLAG_CASES = [
    ("epoch_zero", lambda w, t: _train(w, t, "--epoch", "0"), 2, ["--epoch"]),
    ("unknown_model", lambda w, t: _train(w, t, "--model", "resnet"), 2, ["--model", "resnet"]),
    ("bad_depth", lambda w, t: _train(w, t, "--depth", "41"), 1, ["--depth 41"]),
    ("image_size_1", lambda w, t: _train(w, t, "--image_size", "1", "1"), 1, ["--image_size 1 1"]),
    ("image_size_densenet121", lambda w, t: _train(w, t, "--model", "densenet121", "--image_size", "24", "24"), 1,
     ["--image_size 24 24", "32"]),
    ("late_fuse_maybe", lambda w, t: _train(w, t, "--late_fuse", "maybe"), 2, ["--late_fuse"]),
    ("unknown_augmentation", lambda w, t: _train(w, t, "--augment", "cat_elastic,sideways"), 1,
     ["--augment", "sideways"]),
    ("augment_p", lambda w, t: _train(w, t, "--augment_p", "1.5"), 1, ["--augment_p 1.5"]),
    ("t_alpha", lambda w, t: _train(w, t, "--t_alpha", "1"), 1, ["--t_alpha"]),
    ("focal_gamma_without_focal", lambda w, t: _train(w, t, "--focal_gamma", "3"), 1, ["--focal_gamma"]),
    ("resume_without_save_dir", lambda w, t: ["--resume"], 1, ["--resume", "--save_dir"]),
    ("test_and_resume", lambda w, t: _train(w, t, "--test", "--resume"), 1, ["--test", "--resume"]),
    ("extend_without_resume", lambda w, t: _train(w, t, "--extend_epochs", "3"), 1, ["--extend_epochs"]),
    ("image_only_late_fuse", lambda w, t: _train(w, t, "--image_only", "--late_fuse", "true"), 1, ["--image_only"]),
    ("one_fold", lambda w, t: _train(w, t, "--folds", "1"), 1, ["--folds 1"]),
    ("unknown_flag", lambda w, t: _train(w, t, "--epochs", "3"), 2, ["--epochs"]),
]


# -- main.py: data, files and runs ----------------------------------------------------------------
def _bad_data(change):
    """A copy of the data with ``change(data)`` applied, trained on with the otherwise good command."""
    def build(w, t):
        data = copy_data(w, t)
        change(data)
        return train_args(data, w.outs, "new")
    return build


def _rename(split, old, new):
    return lambda d: (d / split / old).rename(d / split / new)


DATA_CASES = [
    ("no_data_folder", lambda w, t: train_args(t / "nowhere", w.outs, "new"), 1, ["nowhere", "synthetic.py"]),
    ("no_val_folder", _bad_data(lambda d: shutil.rmtree(d / "val")), 1, ["val", "train|val|test"]),
    ("empty_split", _bad_data(lambda d: [p.unlink() for p in (d / "test").iterdir()]), 1, ["test", "no .png"]),
    ("undecodable_image", _bad_data(lambda d: (d / "train" / "t0_1_0-0-50-20.png").write_bytes(b"not a png")), 1,
     ["t0_1_0-0-50-20.png", "cannot decode"]),
    ("label_field", _bad_data(_rename("train", "t0_1_0-0-50-20.png", "t0_1_2-0-50-20.png")), 1,
     ["t0_1_2-0-50-20.png", "label '2'"]),
    ("sex_field", _bad_data(_rename("train", "t0_1_0-0-50-20.png", "t0_1_0-F-50-20.png")), 1,
     ["t0_1_0-F-50-20.png", "sex 'F'"]),
    ("age_out_of_range", _bad_data(_rename("train", "t0_1_0-0-50-20.png", "t0_1_0-0-999999999-20.png")), 1,
     ["t0_1_0-0-999999999-20.png", "age 999999999", "0..130"]),
    ("bmi_out_of_range", _bad_data(_rename("val", "v1_1_1-1-61-25.5.png", "v1_1_1-1-61-2.png")), 1,
     ["v1_1_1-1-61-2.png", "bmi 2", "5..150"]),
    ("missing_field", _bad_data(_rename("test", "s0_1_0-0-70-30.25.png", "s0_1_0-0-70.png")), 1,
     ["s0_1_0-0-70.png", "label-sex-age-bmi"]),
    ("tiny_image", _bad_data(lambda d: image(d / "train" / "t0_1_0-0-50-20.png", (4, 4))), 1,
     ["t0_1_0-0-50-20.png", "4 x 4", "too small"]),
    ("patient_in_two_splits", _bad_data(lambda d: image(d / "test" / "t3_2_1-1-53-23.png")), 1,
     ["patient t3", "train (t3_1_1-1-53-23.png)", "test (t3_2_1-1-53-23.png)", "--allow_shared_patients"]),
    ("one_class_val", _bad_data(lambda d: [p.unlink() for p in (d / "val").glob("*_1-*")]), 1,
     ["val split holds only normal"]),
    ("missing_pretrained", lambda w, t: _train(w, t, "--pretrained", t / "weights.pth"), 1, ["weights.pth"]),
    ("existing_run", lambda w, t: train_args(w.data, w.outs, "r"), 1, ["already holds a run", "--resume"]),
    ("resume_other_epochs", lambda w, t: ["--resume", "--save_dir", "r", "--fold", "_a", "--out_root", w.outs,
                                          "--epoch", "9"], 1, ["--epoch 9", "--epoch 2", "--extend_epochs"]),
    ("resume_other_lr", lambda w, t: ["--resume", "--save_dir", "r", "--fold", "_a", "--out_root", w.outs,
                                      "--lrG", "0.1"], 1, ["--lrG 0.1"]),
    ("resume_other_fusion", lambda w, t: ["--resume", "--save_dir", "r", "--fold", "_a", "--out_root", w.outs,
                                          "--late_fuse", "True"], 1, ["--fusion late", "--fusion early"]),
    ("resume_nothing", lambda w, t: ["--resume", "--save_dir", "nothing", "--fold", "_a", "--out_root", w.outs], 1,
     ["--resume", "nothing"]),
    ("test_without_run", lambda w, t: ["--test", "--save_dir", "nothing", "--fold", "_a", "--out_root", w.outs], 1,
     ["best.pth"]),
]


# -- preprocess_filenames.py ------------------------------------------------------------------------
def _pre(*extra):
    return lambda w, t: ["--images", w.export / "raw", "--out", t / "out", "--size", "64", "37", *extra]


PREPROCESS_CASES = [
    ("no_images_folder", lambda w, t: ["--images", t / "nope", "--out", t / "out"], 1, ["--images", "nope"]),
    ("missing_csv", _pre("--csv", "missing.csv"), 1, ["--csv missing.csv"]),
    ("no_label_column", lambda w, t: ["--images", w.export / "raw", "--csv", w.export / "no_label.csv", "--out",
                                      t / "out"], 1, ["no_label.csv", "label"]),
    ("strict_bad_age", lambda w, t: ["--images", w.export / "raw", "--csv", w.export / "patient_list.csv", "--out",
                                     t / "out", "--strict"], 1, ["line 4", "age '999'"]),
    ("split_sum", _pre("--split", "0.5", "0.5", "0.5"), 2, ["--split"]),
    ("size_zero", _pre("--size", "0", "10"), 2, ["--size"]),
    ("size_below_training_minimum", _pre("--size", "8", "37"), 2, ["--size", "at least 16"]),
    ("output_not_empty", lambda w, t: ["--images", w.export / "raw", "--csv", w.export / "patient_list.csv", "--out",
                                       w.export / "full"], 1, ["full", "not empty"]),
    ("one_fold", _pre("--folds", "1"), 2, ["--folds"]),
]


# -- predict.py -------------------------------------------------------------------------------------
def _predict(images, *extra):
    return lambda w, t: ["--run", w.run, *images(w, t), "--out", t / "p.csv", "--device", "cpu", *extra]


def _existing_out(w, t):
    (t / "p.csv").write_text("earlier results\n")
    return ["--run", w.run, w.data / "test", "--out", t / "p.csv", "--device", "cpu"]


def _clinical_csv(w, t):
    image(t / "scan 1.png")
    (t / "clinical.csv").write_text("file,sex,age,bmi\nscan 1.png,2,50,20\n")
    return ["--run", w.run, t / "scan 1.png", "--csv", t / "clinical.csv", "--out", t / "p.csv", "--device", "cpu"]


PREDICT_CASES = [
    ("existing_out", _existing_out, 1, ["--out", "p.csv", "--overwrite"]),
    ("out_is_folder", lambda w, t: ["--run", w.run, w.data / "test", "--out", w.data, "--device", "cpu"], 1,
     ["--out", "folder"]),
    ("missing_run", lambda w, t: ["--run", t / "no_run", w.data / "test", "--out", t / "p.csv"], 1, ["no_run"]),
    ("missing_image", _predict(lambda w, t: [t / "gone.png"]), 1, ["gone.png"]),
    ("tiny_image", _predict(lambda w, t: [image(t / "x_1_0-1-50-20.png", (4, 4))]), 1,
     ["x_1_0-1-50-20.png", "too small"]),
    ("name_without_clinical_values", _predict(lambda w, t: [image(t / "scan 1.png")]), 1, ["scan 1.png", "--csv"]),
    ("clinical_csv_bad_sex", _clinical_csv, 1, ["clinical.csv line 2", "sex '2'"]),
    ("unknown_device", _predict(lambda w, t: [w.data / "test"], "--device", "tpu"), 2, ["--device"]),
]


# -- visualize_gradcam.py ---------------------------------------------------------------------------
def _cam(which):
    return lambda w, t: ["--run", w.run, *which(w, t), "--device", "cpu", "--out", t / "cams"]


GRADCAM_CASES = [
    ("image_is_folder", _cam(lambda w, t: ["--image", w.data / "test"]), 1, ["--image", "is a folder"]),
    ("missing_image", _cam(lambda w, t: ["--image", t / "gone.png"]), 1, ["--image", "gone.png"]),
    ("malformed_name", _cam(lambda w, t: ["--image", image(t / "scan.png")]), 1, ["scan.png"]),
    ("index_out_of_range", _cam(lambda w, t: ["--index", "0", "99"]), 1, ["--index 99", "0..5"]),
    ("missing_run", lambda w, t: ["--run", t / "no_run", "--index", "0"], 1, ["no_run"]),
    ("negative_smooth", _cam(lambda w, t: ["--index", "0", "--smooth", "-1"]), 1, ["--smooth"]),
    ("unknown_method", _cam(lambda w, t: ["--index", "0", "--method", "lime"]), 2, ["--method", "lime"]),
    ("no_image_choice", lambda w, t: ["--run", w.run], 2, ["--image", "--index"]),
]

CASES = ([("main.py", *c) for c in FLAG_CASES + DATA_CASES]
         + [("preprocess_filenames.py", *c) for c in PREPROCESS_CASES]
         + [("predict.py", *c) for c in PREDICT_CASES]
         + [("visualize_gradcam.py", *c) for c in GRADCAM_CASES])
# mistakes found only after torch has loaded (a run, a checkpoint or an image read): 3-6 s each in a
# subprocess, so `pytest -m "not slow"` leaves them to `make test`
TORCH_CASES = {("main.py", n) for n in ("missing_pretrained", "tiny_image", "undecodable_image", "test_without_run",
                                        "resume_nothing", "resume_other_epochs", "resume_other_lr",
                                        "resume_other_fusion")}
TORCH_CASES |= {(s, c[0]) for s, cases in (("predict.py", PREDICT_CASES), ("visualize_gradcam.py", GRADCAM_CASES))
                for c in cases if c[2] == 1}


@pytest.mark.parametrize("script,name,build,code,names",
                         [pytest.param(*c, marks=pytest.mark.slow) if (c[0], c[1]) in TORCH_CASES else c
                          for c in CASES], ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_mistake_gets_one_clear_line_and_changes_nothing(world, tmp_path, script, name, build, code, names):
    args = build(world, tmp_path)
    before = snapshot(world.root, tmp_path)
    proc = run_script(script, *args, cwd=tmp_path)
    said = proc.stdout + proc.stderr
    assert proc.returncode == code, said
    assert "Traceback" not in said
    for text in names:
        assert text in said, f"{text!r} not in:\n{said}"
    assert snapshot(world.root, tmp_path) == before  # inputs, existing runs: byte-identical; no new run folder


def test_a_real_bug_keeps_its_traceback_and_hipx_debug_shows_it_for_mistakes(world, tmp_path):
    proc = run_script("main.py", "--resume", "--save_dir", "nothing", "--fold", "_a", "--out_root", world.outs,
                      env={"HIPX_DEBUG": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "UserError" in proc.stderr


def test_help_and_flag_errors_do_not_import_torch():
    for script in ("main", "predict", "visualize_gradcam", "report", "preprocess_filenames"):
        for argv in (["--help"], ["--no_such_flag"]):
            probe = (f"import sys, runpy\nsys.argv = ['{script}.py', *{argv!r}]\n"
                     f"try:\n    runpy.run_path('{script}.py', run_name='__main__')\n"
                     "except SystemExit:\n    pass\n"
                     "print('torch' in sys.modules, 'numpy' in sys.modules)\n")
            proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert proc.stdout.strip().splitlines()[-1] == "False False", (script, argv, proc.stderr[-500:])


# -- --resume -----------------------------------------------------------------------------------------
def test_resuming_a_finished_run_says_so_and_changes_nothing(world):
    before = snapshot(world.outs)
    proc = run_script("main.py", "--resume", "--save_dir", "r", "--fold", "_a", "--out_root", world.outs)
    assert proc.returncode == 0, proc.stderr
    assert "finished all 2 epochs" in proc.stderr and "nothing changed" in proc.stderr
    assert "--extend_epochs N" in proc.stderr
    assert snapshot(world.outs) == before


def read_history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(fh)]


@pytest.mark.slow
def test_extend_epochs_trains_a_finished_run_longer_and_renews_its_results(world, tmp_path):
    run = tmp_path / "outs" / "r" / "fold_a"
    shutil.copytree(world.run, run)
    proc = run_script("main.py", "--resume", "--save_dir", "r", "--fold", "_a", "--out_root", tmp_path / "outs",
                      "--extend_epochs", "2")
    assert proc.returncode == 0, proc.stderr
    history = read_history(run)
    assert [int(r["epoch"]) for r in history] == [1, 2, 3, 4]
    assert history[:2] == read_history(world.run)  # the first epochs are the run's own
    lr = [float(r["lr"]) for r in history]
    assert lr[2] == pytest.approx(1e-3) and lr[3] == pytest.approx(0.5e-3)  # a new cosine cycle over 2 epochs
    assert json.loads((run / "config.json").read_text())["epoch"] == 4
    tested = json.loads((run / "test_metrics.json").read_text())
    best = max(range(4), key=lambda i: (float(history[i]["val_roc_auc"]), -i)) + 1
    assert tested["epoch"] == best  # test and best.pth describe the same epoch
    assert "extending the run from 2 to 4 epochs" in (run / "train.log").read_text()


@pytest.fixture(scope="module")
def straight(world, tmp_path_factory):
    """An uninterrupted run to compare interrupted ones with (images large enough to interrupt an epoch;
    eight short epochs, so a signal sent after epoch 2 lands well before the run ends)."""
    root = tmp_path_factory.mktemp("resume")
    data = root / "data"
    write_split(data / "train", [(f"t{i}", 1, i % 2, i % 3 == 0, 50 + i, 20.0 + i / 3) for i in range(40)],
                size=(96, 56))
    write_split(data / "val", [(f"v{i}", 1, i % 2, 1, 60 + i, 25.5) for i in range(9)], size=(96, 56), seed=1)
    write_split(data / "test", [(f"s{i}", 1, i % 2, 0, 70 + i, 30.25) for i in range(7)], size=(96, 56), seed=2)
    outs = root / "outs"
    args = ["--depth", "10", "--data_dir", data, "--image_size", "96", "56", "--batch_size", "4", "--workers", "1",
            "--device", "cpu", "--cpus", "1", "--out_root", outs, "--fold", "_x", "--seed", "3", "--epoch", "8",
            "--deterministic", "--augment", "cat_elastic", "--late_fuse", "true", "--bootstrap", "0"]
    done = run_script("main.py", *args, "--save_dir", "straight")
    assert done.returncode == 0, done.stderr
    return SimpleNamespace(args=args, outs=outs, run=outs / "straight" / "fold_x")


def interrupt(straight, save_dir: str, sig: int) -> tuple[subprocess.Popen, str]:
    """Start the run, send ``sig`` once two epochs are saved (in epoch 3), return the process and its output."""
    run = straight.outs / save_dir / "fold_x"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *map(str, straight.args), "--save_dir", save_dir],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=ctrl_c_as_in_a_terminal)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if (run / "history.csv").is_file() and len(read_history(run)) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(sig)
    said, _ = proc.communicate(timeout=300)
    assert 2 <= len(read_history(run)) < 8, "the signal should land before the run finished"
    assert not (run / "test_metrics.json").exists()
    return proc, said


def assert_same_as_straight(straight, run: Path) -> None:
    assert read_history(run) == read_history(straight.run)
    assert (run / "test_metrics.json").read_bytes() == (straight.run / "test_metrics.json").read_bytes()
    assert (run / "test_predictions.csv").read_bytes() == (straight.run / "test_predictions.csv").read_bytes()


@pytest.mark.slow
def test_ctrl_c_prints_the_command_that_continues_exactly(straight):
    proc, said = interrupt(straight, "sigint", signal.SIGINT)
    assert proc.returncode == 130 and "Traceback" not in said, said
    run = straight.outs / "sigint" / "fold_x"
    line = next(line for line in said.splitlines() if "interrupted in epoch" in line)
    assert line in (run / "train.log").read_text()
    command = line.split("continue exactly from there with: ")[1]
    assert "--resume --save_dir sigint --fold _x" in command
    resumed = subprocess.run(shlex.split(command), cwd=ROOT, capture_output=True, text=True, timeout=600,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr
    assert_same_as_straight(straight, run)


@pytest.mark.slow
def test_kill_9_then_readme_resume_command_ends_as_an_uninterrupted_run(straight):
    proc, _ = interrupt(straight, "killed", signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    # README: python main.py --resume --save_dir S --fold F (every other setting comes from the run)
    resumed = run_script("main.py", "--resume", "--save_dir", "killed", "--fold", "_x", "--out_root", straight.outs)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_as_straight(straight, straight.outs / "killed" / "fold_x")


@pytest.mark.slow
def test_ctrl_c_before_the_first_epoch_leaves_no_folder_and_the_same_command_works(world, tmp_path):
    outs = tmp_path / "outs"
    args = [sys.executable, str(ROOT / "main.py"), *map(str, train_args(world.data, outs, "early"))]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=ctrl_c_as_in_a_terminal)
    while proc.poll() is None and not (outs / "early" / "fold_a" / "config.json").exists():
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    said, _ = proc.communicate(timeout=300)
    if (outs / "early" / "fold_a" / "history.csv").exists():
        pytest.skip("the first epoch finished before the signal landed")
    assert proc.returncode == 130 and "Traceback" not in said, said
    assert "nothing was kept" in said and not (outs / "early").exists()
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
