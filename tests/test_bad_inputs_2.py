"""A user's mistakes, round two (issue 23), driven as subprocesses as a user runs them: two jobs at once
on one run folder, finished results that must not change, dead ends that must name the way out, odd
images, a full disk and the remaining one-line messages. Each case asserts the exit status, no
traceback, the message naming the file/flag/path, and inputs and finished runs byte-identical.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_bad_inputs import ROOT, run_script, snapshot, train_args, world  # noqa: F401 (world: a fixture)


def start(*args, cwd: Path = ROOT) -> subprocess.Popen:
    env = {**{k: v for k, v in os.environ.items() if k != "HIPX_DEBUG"}, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def assert_one_line(proc_code: int, said: str, code: int, *names: str) -> None:
    assert proc_code == code, said
    assert "Traceback" not in said and "Logging error" not in said, said
    for text in names:
        assert text in said, f"{text!r} not in:\n{said}"


# -- 1. two jobs at once --------------------------------------------------------------------------
@pytest.mark.slow
def test_two_jobs_on_one_run_folder_the_second_is_refused_naming_the_first(world, tmp_path):
    outs = tmp_path / "outs"
    args = train_args(world.data, outs, "two", "--epoch", "6")
    first, second = start(*args), start(*args)  # started together, as two shells would
    said = {p.pid: p.communicate(timeout=600)[0] for p in (first, second)}
    codes = {p.pid: p.returncode for p in (first, second)}
    assert sorted(codes.values()) == [0, 1], said
    winner = next(pid for pid, c in codes.items() if c == 0)
    loser = next(pid for pid, c in codes.items() if c == 1)
    assert_one_line(1, said[loser], 1, str(outs / "two" / "fold_a"), f"in use by another job (pid {winner}",
                    "another --save_dir / --fold")
    log = (outs / "two" / "fold_a" / "train.log").read_text()
    assert log.count("run folder ") == 1 and "error" not in log  # one job's log, nothing of the refused one
    before = snapshot(outs)
    again = run_script("main.py", *args)  # the finished run stays as it was
    assert again.returncode == 1 and "already holds a run" in again.stderr
    assert snapshot(outs) == before


@pytest.mark.slow
def test_two_jobs_started_in_the_same_second_without_save_dir_get_two_run_groups(world, tmp_path):
    outs = tmp_path / "outs"
    args = [a for a in train_args(world.data, outs, "x") if a != "x" and a != "--save_dir"]
    jobs = [start(*args, "--seed", str(seed)) for seed in (1, 2)]
    said = [p.communicate(timeout=600)[0] for p in jobs]
    assert [p.returncode for p in jobs] == [0, 0], said
    groups = sorted(p.name for p in outs.iterdir())
    assert len(groups) == 2, groups
    for group in groups:
        assert (outs / group / "fold_a" / "test_metrics.json").is_file()
    seeds = {(outs / g / "fold_a" / "config.json").read_text().count('"seed": 1') for g in groups}
    assert seeds == {0, 1}  # each job's own run, neither replaced


# -- 2. finished results never change ---------------------------------------------------------------
@pytest.fixture(scope="module")
def cv(world, tmp_path_factory):
    """A finished 2-fold cross-validation with its own --bootstrap 200."""
    outs = tmp_path_factory.mktemp("cv") / "outs"
    done = run_script("main.py", *train_args(world.data, outs, "CV", "--folds", "2", "--bootstrap", "200"))
    assert done.returncode == 0, done.stderr
    return outs


def copy_run(world, tmp_path: Path) -> Path:
    import shutil

    outs = tmp_path / "outs"
    shutil.copytree(world.run, outs / "r" / "fold_a")
    return outs


@pytest.mark.slow
def test_resuming_a_finished_cross_validation_changes_nothing(cv):
    before = snapshot(cv)
    proc = run_script("main.py", "--resume", "--save_dir", "CV", "--fold", "_a", "--folds", "2", "--out_root", cv)
    assert proc.returncode == 0, proc.stderr
    assert "nothing changed" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(cv) == before  # the summary keeps its 200 resamples and its intervals


@pytest.mark.slow
def test_report_cv_keeps_the_summary_s_own_resamples(cv, tmp_path):
    import shutil

    group = Path(shutil.copytree(cv / "CV", tmp_path / "CV"))
    before = (group / "cv_summary.json").read_bytes()
    proc = run_script("report.py", "--cv", group)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((group / "cv_summary.json").read_text())["n_boot"] == 200
    assert (group / "cv_summary.json").read_bytes() == before


def _test_again(world, tmp_path, *extra):
    outs = copy_run(world, tmp_path)
    return outs, ["--test", "--save_dir", "r", "--fold", "_a", "--out_root", outs, "--device", "cpu", "--cpus", "1",
                  *extra]


FINISHED_CASES = [
    ("report_cv_on_a_plain_run", "report.py", lambda w, t: ["--cv", w.outs / "r"], 1,
     ["--cv", "fold_a is not a cross-validation fold", "report.py --run"]),
    ("test_again_without_overwrite", "main.py", lambda w, t: _test_again(w, t)[1], 1,
     ["already holds its test result", "--test --save_dir r --fold _a", "--overwrite"]),
    ("test_with_another_fusion", "main.py", lambda w, t: _test_again(w, t, "--fusion", "late")[1], 1,
     ["--fusion late", "trained with --fusion early", "leave the flag out", "--test --save_dir r --fold _a"]),
    ("test_with_late_fuse_true", "main.py", lambda w, t: _test_again(w, t, "--late_fuse", "True", "--overwrite")[1],
     1, ["--fusion late", "trained with --fusion early"]),
    ("overwrite_without_test", "main.py", lambda w, t: train_args(w.data, w.outs, "new", "--overwrite"), 1,
     ["--overwrite", "--test"]),
    ("refused_extension_writes_nothing", "main.py",
     lambda w, t: ["--resume", "--save_dir", "r", "--fold", "_a", "--out_root", copy_run(w, t), "--extend_epochs",
                   "2", "--data_dir", t / "nowhere"], 1, ["nowhere"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,script,build,code,names", FINISHED_CASES, ids=[c[0] for c in FINISHED_CASES])
def test_a_refused_command_leaves_finished_results_as_they_were(world, tmp_path, name, script, build, code, names):
    args = build(world, tmp_path)
    before = snapshot(world.root, tmp_path)
    proc = run_script(script, *args, cwd=tmp_path)
    assert_one_line(proc.returncode, proc.stdout + proc.stderr, code, *names)
    assert snapshot(world.root, tmp_path) == before  # train.log gains no error line either


@pytest.mark.slow
def test_scoring_again_with_overwrite_keeps_the_run_s_bootstrap_setting(world, tmp_path):
    outs, args = _test_again(world, tmp_path, "--overwrite")
    run = outs / "r" / "fold_a"
    before = json.loads((run / "test_metrics.json").read_text())
    proc = run_script("main.py", *args)
    assert proc.returncode == 0, proc.stderr
    again = json.loads((run / "test_metrics.json").read_text())  # the same checkpoint scores the same
    for key in ("roc_auc", "accuracy", "brier"):
        assert again["at_threshold"][key] == pytest.approx(before["at_threshold"][key], abs=1e-6)
    assert not (run / "report_metrics.json").exists()  # the run was made with --bootstrap 0: no report


# -- 3. dead ends: every refusal names the command that works ---------------------------------------
@pytest.mark.slow
def test_a_moved_data_folder_continues_with_resume_data_dir_when_it_holds_the_same_images(world, tmp_path):
    import shutil

    data, outs = Path(shutil.copytree(world.data, tmp_path / "before")), tmp_path / "outs"
    done = run_script("main.py", *train_args(data, outs, "m"))
    assert done.returncode == 0, done.stderr
    moved = data.rename(tmp_path / "after")
    resume = ["--resume", "--save_dir", "m", "--fold", "_a", "--out_root", outs, "--extend_epochs", "1"]
    before = snapshot(tmp_path)
    gone = run_script("main.py", *resume)
    assert_one_line(gone.returncode, gone.stderr, 1, str(data), "--resume --save_dir m --fold _a",
                    "--data_dir NEW_FOLDER", "data_files.csv")
    changed = Path(shutil.copytree(moved, tmp_path / "changed"))
    next((changed / "train").iterdir()).unlink()
    before = snapshot(tmp_path)
    other = run_script("main.py", *resume, "--data_dir", changed)
    assert_one_line(other.returncode, other.stderr, 1, f"--data_dir {changed}", "1 recorded image(s) missing",
                    "--resume --save_dir m --fold _a")
    assert snapshot(tmp_path) == before  # both refusals: nothing written, not even a train.log line
    ok = run_script("main.py", *resume, "--data_dir", moved)
    assert ok.returncode == 0, ok.stderr
    assert "holds the images the run recorded" in ok.stderr


@pytest.mark.slow
def test_resuming_a_cross_validation_names_its_folds(cv):
    before = snapshot(cv)
    base = ["--resume", "--save_dir", "CV", "--fold", "_a", "--out_root", cv]
    proc = run_script("main.py", *base)
    assert_one_line(proc.returncode, proc.stderr, 1, "2-fold cross-validation", "--resume --save_dir CV --fold _a",
                    "--folds 2")
    proc = run_script("main.py", *base, "--folds", "3")
    assert_one_line(proc.returncode, proc.stderr, 1, "--folds 3", "has 2 folds",
                    "--resume --save_dir CV --fold _a --folds 2")
    assert "leave the flag out" not in proc.stderr
    assert snapshot(cv) == before


@pytest.mark.slow
@pytest.mark.parametrize("osteoporosis,folds,advice", [(0, 3, "no osteoporosis images at all"),
                                                       (3, 2, "use --folds 3"),
                                                       (2, 3, "3 or more")])
def test_one_class_folds_get_advice_that_works(tmp_path, osteoporosis, folds, advice):
    from conftest import write_split

    data = tmp_path / "data"
    write_split(data / "train", [(f"t{i}", 1, int(i < osteoporosis), 0, 50 + i, 22.0) for i in range(12)])
    before = snapshot(tmp_path)
    proc = run_script("main.py", *train_args(data, tmp_path / "outs", "oof", "--folds", folds, "--cv", "oof"))
    assert_one_line(proc.returncode, proc.stderr, 1, advice)
    assert "larger --cv_val" not in proc.stderr
    assert snapshot(tmp_path) == before


# -- 4. odd images --------------------------------------------------------------------------------
ODD = {"one_pixel": (1, 1), "crop_7x12": (7, 12), "thumb_20x20": (20, 20)}


@pytest.mark.parametrize("roi", [False, True], ids=["plain", "roi_femur"])
def test_tiny_and_blank_images_are_skipped_with_their_reason(tmp_path, roi):
    import csv

    import cv2
    import numpy as np

    raw = tmp_path / "export" / "raw"
    raw.mkdir(parents=True)
    rows = ["patient_id,image,label,sex,age,bmi"]
    rng = np.random.default_rng(0)
    images = {**{name: rng.integers(0, 255, size, np.uint8) for name, size in ODD.items()},
              "black": np.zeros((300, 400), np.uint8), "white": np.full((300, 400), 255, np.uint8),
              "grey": np.full((300, 400), 128, np.uint8) + rng.integers(0, 3, (300, 400), np.uint8)}
    images.update({f"good{i}": rng.integers(0, 255, (300, 400), np.uint8) for i in range(4)})
    for i, (name, img) in enumerate(images.items()):
        cv2.imwrite(str(raw / f"{name}.png"), img)
        rows.append(f"P{i},{name}.png,{i % 2},F,{50 + i},{22 + i}")
    (raw.parent / "patient_list.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    args = ["--images", raw, "--csv", raw.parent / "patient_list.csv", "--out", out, "--size", "64", "37",
            "--split", "1", "0", "0", *(["--roi", "femur"] if roi else [])]
    before = snapshot(raw.parent)
    proc = run_script("preprocess_filenames.py", *args, cwd=tmp_path)
    assert_one_line(proc.returncode, proc.stdout + proc.stderr, 0)
    assert snapshot(raw.parent) == before
    skipped = {r["image"]: r for r in csv.DictReader(open(out / "skipped.csv"))}
    for name, (h, w) in ODD.items():
        assert skipped[f"{name}.png"]["reason"] == "too_small", skipped
        assert f"{h} x {w} pixels" in skipped[f"{name}.png"]["message"]
    for name in ("black", "white", "grey"):
        assert skipped[f"{name}.png"]["reason"] == "blank_image"
    manifest = list(csv.DictReader(open(out / "manifest.csv")))
    assert {Path(r["source"]).stem for r in manifest} == {f"good{i}" for i in range(4)}
    written = sorted(p.name for p in (out / "train").iterdir())
    assert written == sorted(Path(r["file"]).name for r in manifest)  # nothing of a skipped image on disk


# -- 5. a full disk ---------------------------------------------------------------------------------
@pytest.fixture
def full_disk(tmp_path):
    """A 1 MB tmpfs filled to the last byte (needs root and permission to mount; else skipped)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
def test_training_on_a_full_disk_says_where_in_one_line_and_leaves_nothing(world, full_disk):
    before = snapshot(world.root)
    proc = run_script("main.py", *train_args(world.data, full_disk / "outs", "new"))
    said = proc.stdout + proc.stderr
    assert_one_line(proc.returncode, said, 1, "no space left on the device to write", str(full_disk / "outs"),
                    "is free there")
    assert [line for line in said.splitlines() if "error" in line.lower()] == said.strip().splitlines()[-1:]
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]  # the run folder it began is gone
    assert snapshot(world.root) == before


def test_preprocessing_on_a_full_disk_says_where_and_leaves_nothing(world, full_disk):
    out = full_disk / "out"
    proc = run_script("preprocess_filenames.py", "--images", world.export / "raw", "--csv",
                      world.export / "patient_list.csv", "--out", out, "--size", "64", "37")
    assert_one_line(proc.returncode, proc.stdout + proc.stderr, 1, "no space left on the device to write",
                    str(out), "is free there", f"removed {out}")
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_a_write_that_finds_the_disk_full_names_the_file_and_the_space(tmp_path, monkeypatch):
    import errno

    from hipx.runs import runfiles

    def full(fd, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as caught:
        runfiles.write_bytes(tmp_path / "best.pth", b"x" * 3000)
    assert caught.value.errno == errno.ENOSPC
    assert str(caught.value).startswith(f"no space left on the device to write {tmp_path / 'best.pth'}: it needs "
                                        "2.9 KB and ")
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


# -- 6. other one-line messages ---------------------------------------------------------------------
def _copy_data(w, t, change):
    import shutil

    data = Path(shutil.copytree(w.data, t / "data"))
    change(data)
    return train_args(data, t / "outs", "new")


def _run_copy(change):
    def build(w, t):
        run = copy_run(w, t) / "r" / "fold_a"
        change(run)
        return ["--run", run, w.data / "test", "--out", t / "p.csv", "--device", "cpu"]
    return build


def _notes(t):
    (t / "notes.txt").write_text("meeting notes\n")
    return t / "notes.txt"


OTHER_CASES = [
    ("main.py", "late_and_late_fuse_false", lambda w, t: train_args(w.data, t / "outs", "new", "--fusion", "late",
                                                                    "--late_fuse", "False"), 1,
     ["--late_fuse False", "--fusion late", "exclude each other"]),
    ("compare.py", "a_run_with_itself", lambda w, t: [w.run, w.run, "--out", t / "cmp"], 1,
     ["given twice", "compare.py outs/A/fold_x outs/B/fold_x"]),
    ("predict.py", "not_an_image", lambda w, t: ["--run", w.run, _notes(t), "--out", t / "p.csv"], 1,
     ["notes.txt: not an image", "predict.py --run RUN data/test"]),
    ("main.py", "pretrained_text_file", lambda w, t: train_args(w.data, t / "outs", "new", "--pretrained",
                                                                _notes(t)), 1,
     ["--pretrained", "notes.txt: not a torch weights file", "--pretrained outs/demo/fold_x"]),
    ("main.py", "negative_age", lambda w, t: _copy_data(w, t, lambda d: (d / "train" / "t0_1_0-0-50-20.png").rename(
        d / "train" / "t0_1_0-0--5-20.png")), 1, ["t0_1_0-0--5-20.png", "age '-5' is negative", "or NA"]),
    ("main.py", "folder_named_like_an_image", lambda w, t: _copy_data(
        w, t, lambda d: (d / "train" / "t99_1_0-0-50-20.png").mkdir()), 1,
     ["t99_1_0-0-50-20.png is a folder named like an image", "move or rename"]),
    ("predict.py", "corrupt_checkpoint", _run_copy(lambda r: (r / "best.pth").write_bytes(
        (r / "best.pth").read_bytes()[:5000])), 1, ["best.pth", "damaged or incomplete", "copy it again"]),
    ("predict.py", "missing_best", _run_copy(lambda r: (r / "best.pth").unlink()), 1,
     ["--run", "no best.pth", "Train the run again: python main.py --save_dir r --fold _a"]),
    ("main.py", "test_missing_best", lambda w, t: ["--test", "--save_dir", "r", "--fold", "_a", "--out_root",
                                                   _without_best(copy_run(w, t))], 1,
     ["--test: no best.pth", "Train the run again"]),
]


def _without_best(outs: Path) -> Path:
    (outs / "r" / "fold_a" / "best.pth").unlink()
    return outs


@pytest.mark.parametrize("script,name,build,code,names",
                         [pytest.param(*c, marks=pytest.mark.slow) if c[1] not in ("late_and_late_fuse_false",)
                          else c for c in OTHER_CASES], ids=[c[1] for c in OTHER_CASES])
def test_other_mistakes_get_one_line_with_the_way_out(world, tmp_path, script, name, build, code, names):
    args = build(world, tmp_path)
    before = snapshot(world.root, tmp_path)
    proc = run_script(script, *args, cwd=tmp_path)
    assert_one_line(proc.returncode, proc.stdout + proc.stderr, code, *names)
    assert snapshot(world.root, tmp_path) == before


@pytest.mark.slow
def test_device_cuda_without_a_gpu_is_one_line(world, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    before = snapshot(world.root)
    proc = run_script("main.py", *train_args(world.data, tmp_path / "outs", "new", "--device", "cuda"))
    assert_one_line(proc.returncode, proc.stderr, 1, "--device cuda", "no CUDA device", "--device cpu")
    assert not (tmp_path / "outs" / "new").exists() and snapshot(world.root) == before


# -- 7. threads that share cores --------------------------------------------------------------------
@pytest.mark.parametrize("env,expected", [({}, "GOMP_SPINCOUNT=10000 10000"),
                                          ({"OMP_WAIT_POLICY": "ACTIVE"}, "None None"),
                                          ({"GOMP_SPINCOUNT": "5"}, "None 5")])
def test_openmp_threads_spin_briefly_unless_the_user_said_otherwise(env, expected):
    probe = ("import os\nfrom hipx.core import runtime\nset = runtime.short_openmp_spin()\nimport torch\n"
             "print(set, os.environ.get('GOMP_SPINCOUNT'), runtime.short_openmp_spin())")
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env={**clean, **env}, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.split() == [*expected.split(), "None"], proc.stderr  # once torch is loaded: too late
