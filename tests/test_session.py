"""The training session's one rule for a run that starts from nothing (issue 32, item 1): a --resume
that finds no last.pth -- a cross-validation fold never started or deleted, a run stopped before its
first last.pth, a run whose disk filled while writing it -- gets exactly what a new run gets (residual
fusion's clinical start, --pretrained weights, a fold its group's configuration), shown by the
resumed run equalling the uninterrupted one byte for byte (--deterministic, one thread)."""
from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from conftest import write_split
import main
from hipx.core import files as atomic
from hipx.core.cli import UserError
from hipx.core.runconfig import SESSION_KEYS
from hipx.runs import runfiles

FLAGS = ["--model", "dense_net", "--depth", "10", "--growthRate", "4", "--image_size", "64", "37", "--epoch", "1",
         "--batch_size", "4", "--workers", "0", "--device", "cpu", "--cpus", "1", "--deterministic", "--bootstrap",
         "0"]
SAME = ("test_predictions.csv", "val_predictions.csv")  # what a run scored, byte for byte


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("session") / "data"
    write_split(root / "train", [(f"t{i}", 1 + i % 2, i % 2, i % 3 == 0, 50 + i, 20.0 + i / 3) for i in range(12)])
    write_split(root / "val", [(f"v{i}", 1, i % 2, 1, 60 + i, 25.5 + i) for i in range(6)], seed=1)
    write_split(root / "test", [(f"s{i}", 1, i % 2, i % 2, 70 + i, 30.25) for i in range(6)], seed=2)
    return root


@pytest.fixture(scope="module")
def source(data, tmp_path_factory) -> Path:
    """An image-only run whose best.pth the --pretrained runs start from."""
    outs = tmp_path_factory.mktemp("source")
    main.main([*FLAGS, "--data_dir", str(data), "--image_only", "--out_root", str(outs), "--save_dir", "src",
               "--fold", "_s"])
    return outs / "src" / "fold_s"


@pytest.fixture(scope="module", params=["residual", "pretrained"])
def flags(request, data, source) -> list[str]:
    """A new run's flags: residual fusion (its clinical start) or image-only from --pretrained weights."""
    start = ["--fusion", "residual"] if request.param == "residual" else ["--image_only", "--pretrained", str(source)]
    return [*FLAGS, "--data_dir", str(data), *start]


@pytest.fixture(scope="module")
def made(flags, tmp_path_factory) -> Path:
    """The run of ``flags``, uninterrupted: what every resumed run must equal (never changed by a test)."""
    outs = tmp_path_factory.mktemp("made")
    main.main([*flags, "--out_root", str(outs), "--save_dir", "made", "--fold", "_a"])
    return outs / "made" / "fold_a"


def assert_same_run(made: Path, again: Path, source: Path | None = None) -> None:
    """``again`` scored every image as ``made`` did, with the same best weights; it started as a new run."""
    for name in SAME:
        assert (again / name).read_bytes() == (made / name).read_bytes(), name
    a, b = (runfiles.load_checkpoint(d / runfiles.BEST)["model"] for d in (made, again))
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((made / runfiles.CONFIG).read_text())
    log = (again / runfiles.TRAIN_LOG).read_text()
    if config["fusion"] == "residual":
        assert "residual fusion starts from the clinical model" in log and "epoch 0 (before training" in log
    else:
        assert f"{config['pretrained']}/best.pth: loaded" in log


def test_a_run_stopped_before_its_first_last_pth_resumes_as_the_new_run_it_was(flags, made, tmp_path):
    outs = tmp_path / "outs"
    main.main([*flags, "--out_root", str(outs), "--save_dir", "killed", "--fold", "_a"])
    killed = outs / "killed" / "fold_a"
    for path in killed.iterdir():  # killed in its first epoch: config.json written, no last.pth yet
        if path.name not in (runfiles.CONFIG, runfiles.LOCK):
            path.unlink()
    main.main(["--resume", "--save_dir", "killed", "--fold", "_a", "--out_root", str(outs)])
    assert_same_run(made, killed)
    assert "it starts from nothing" in (killed / runfiles.TRAIN_LOG).read_text()


def test_a_new_run_whose_disk_filled_while_writing_last_pth_starts_again_with_the_same_command(flags, made, tmp_path,
                                                                                              monkeypatch):
    outs = tmp_path / "outs"
    command = [*flags, "--out_root", str(outs), "--save_dir", "full", "--fold", "_a"]
    save = runfiles.Run.save_checkpoint

    def disk_full(self, name, *args, **kwargs):
        if name == runfiles.LAST:
            raise atomic.disk_full(self.dir / name, 4096)
        return save(self, name, *args, **kwargs)

    monkeypatch.setattr(runfiles.Run, "save_checkpoint", disk_full)
    with pytest.raises(OSError, match="no space left on the device.*run the command again"):
        main.main(command)
    assert not (outs / "full" / "fold_a").exists()  # nothing to go on from was saved: nothing kept
    monkeypatch.undo()
    main.main(command)  # "run the command again" works
    assert_same_run(made, outs / "full" / "fold_a")


def test_a_run_left_by_a_full_disk_before_its_first_last_pth_resumes_as_the_new_run_it_was(made, tmp_path):
    """What a resumed run (whose folder stays) leaves when the disk fills while it writes its first
    last.pth: best.pth, config.json and history.csv; --resume, the command again, starts it anew."""
    outs = tmp_path / "outs"
    left = Path(shutil.copytree(made, outs / "left" / "fold_a"))
    for name in (runfiles.LAST, runfiles.TEST_METRICS, runfiles.PREDICTIONS["test"]):
        (left / name).unlink()
    assert {runfiles.BEST, runfiles.CONFIG, runfiles.HISTORY} <= {p.name for p in left.iterdir()}
    main.main(["--resume", "--save_dir", "left", "--fold", "_a", "--out_root", str(outs)])
    assert_same_run(made, left)
    assert json.loads((left / runfiles.CONFIG).read_text())["save_dir"] == "left"


def test_a_run_whose_disk_filled_at_a_later_last_pth_advises_resume_and_resumes_to_the_same_run(data, tmp_path,
                                                                                                monkeypatch):
    """The disk fills while epoch 2 writes last.pth: best.pth, config.json, history.csv and epoch 1's last.pth
    stay. Running the same command again would be refused ("already holds a run"); the advice printed is
    the --resume that works, and it ends as the uninterrupted run."""
    outs = tmp_path / "outs"
    flags = [*FLAGS, "--data_dir", str(data), "--image_only", "--epoch", "2", "--out_root", str(outs)]
    main.main([*flags, "--save_dir", "whole", "--fold", "_a"])
    save = runfiles.Run.save_checkpoint

    def disk_full(self, name, model_state, config, stats, threshold, epoch, **extra):
        if name == runfiles.LAST and epoch == 2:
            raise atomic.disk_full(self.dir / name, 4096)
        return save(self, name, model_state, config, stats, threshold, epoch, **extra)

    monkeypatch.setattr(runfiles.Run, "save_checkpoint", disk_full)
    command = [*flags, "--save_dir", "full", "--fold", "_a"]
    with pytest.raises(OSError) as full:
        main.main(command)
    monkeypatch.undo()
    said = str(full.value)
    assert said.startswith(f"no space left on the device to write {outs / 'full' / 'fold_a' / runfiles.LAST}")
    assert "run the command again" not in said and said.endswith(f"(it goes on after epoch 1, saved in {runfiles.LAST})")
    left = outs / "full" / "fold_a"
    assert {runfiles.BEST, runfiles.LAST, runfiles.CONFIG, runfiles.HISTORY} <= {p.name for p in left.iterdir()}
    assert runfiles.load_checkpoint(left / runfiles.LAST)["epoch"] == 1
    with pytest.raises(UserError, match="already holds a run"):  # the advice it used to give
        main.main(command)
    advised = shlex.split(said.split("continue the run with: ")[1].split(" (it goes on")[0])
    assert advised[2:] == ["--resume", "--save_dir", "full", "--fold", "_a", "--out_root", str(outs)]
    main.main(advised[2:])  # python main.py ARGUMENTS: the arguments
    assert "resuming after epoch 1 of 2" in (left / runfiles.TRAIN_LOG).read_text()
    for name in SAME:
        assert (left / name).read_bytes() == (outs / "whole" / "fold_a" / name).read_bytes(), name
    a, b = (runfiles.load_checkpoint(d / runfiles.BEST)["model"] for d in (outs / "whole" / "fold_a", left))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_cross_validation_fold_never_started_or_deleted_is_made_as_its_group_made_it(flags, tmp_path,
                                                                                      monkeypatch):
    outs = tmp_path / "outs"
    made = [*flags, "--out_root", str(outs), "--save_dir", "cv", "--fold", "_r", "--folds", "2", "--cv", "oof"]
    main.main(made)
    group = outs / "cv"
    kept = group.parent / "kept"
    shutil.copytree(group / "fold_r1", kept)
    elsewhere = tmp_path / "elsewhere"  # no data/ here: nothing moved, the group's own data folder is used
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    printed = ["--resume", "--save_dir", "cv", "--fold", "_r", "--folds", "2", "--out_root", str(outs),
               "--workers", "0"]  # the command the run prints, and a session flag --resume lets differ
    for how, command in (("deleted", printed), ("never started", printed), ("the command that made it",
                                                                             [*made, "--resume"])):
        shutil.rmtree(group / "fold_r1")
        if how == "never started":
            (group / "fold_r1").mkdir()
        before = (group / "fold_r0" / runfiles.BEST).read_bytes()
        results = main.main(command)
        assert len(results) == 2, how
        assert (group / "fold_r0" / runfiles.BEST).read_bytes() == before  # the finished fold stays as it was
        assert_same_run(kept, group / "fold_r1")
        again, first = (json.loads((d / runfiles.CONFIG).read_text()) for d in (group / "fold_r1", kept))
        differ = {k for k in first if again[k] != first[k]}
        assert differ <= set(SESSION_KEYS), (how, differ)  # the group's configuration, not the command line's defaults


def test_the_audits_residual_cross_validation_remakes_a_deleted_fold_as_its_group_made_it(data, tmp_path,
                                                                                         monkeypatch, caplog):
    """Issue 32's reproduction: a 3-fold residual --cv oof made from the folder holding data/ (--data_dir data,
    relative), fold2's folder deleted, the same command with --resume: fold2 is made again with the group's
    configuration, the residual start and the group's data folder, which did not move."""
    monkeypatch.chdir(data.parent)
    outs = tmp_path / "outs"
    made = [*FLAGS, "--data_dir", "data", "--fusion", "residual", "--out_root", str(outs), "--save_dir", "cv3",
            "--folds", "3", "--cv", "oof"]
    main.main(made)
    group = outs / "cv3"
    kept = Path(shutil.copytree(group / "fold2", tmp_path / "kept"))
    before = {k: (group / f"fold{k}" / runfiles.BEST).read_bytes() for k in (0, 1)}
    shutil.rmtree(group / "fold2")
    caplog.set_level("INFO")
    results = main.main([*made, "--resume"])
    assert len(results) == 3
    assert "moved" not in caplog.text and "is not there" not in caplog.text
    assert {k: (group / f"fold{k}" / runfiles.BEST).read_bytes() for k in (0, 1)} == before
    assert_same_run(kept, group / "fold2")  # the residual start, the same scores and weights
    again, first = (json.loads((d / runfiles.CONFIG).read_text()) for d in (group / "fold2", kept))
    assert again["data_dir"] == "data" and again["cv_design"] == "oof" and again["fusion"] == "residual"
    assert {k for k in first if again[k] != first[k]} <= set(SESSION_KEYS)


def test_resuming_a_cross_validation_that_never_started_is_refused(data, tmp_path):
    with pytest.raises(UserError, match="no cross-validation to continue at .*start it without --resume"):
        main.main([*FLAGS, "--data_dir", str(data), "--resume", "--save_dir", "none", "--fold", "_r", "--folds", "2",
                   "--out_root", str(tmp_path / "outs")])
    assert not (tmp_path / "outs" / "none").exists()

