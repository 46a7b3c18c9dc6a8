"""--tensorboard (hipx/training/board.py): the event files of main.py and pretrain.py runs parse with
TensorBoard's own reader and hold what history.csv holds, the learning rate, the training inputs and
the validation curves; a resumed run adds its epochs once; without the flag nothing is written."""
import csv
import math
import sys

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hipx.core.cli import run_main
from hipx.core.runconfig import RunConfig
from hipx.runs import runchecks
from hipx.training import board
from hipx.training import pretrain as pretraining
import main
import pretrain
import synthetic

SIZE = ("88", "51")
torch.set_num_threads(1)


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def events(folder):
    """Every event the folder's files hold, read as TensorBoard reads them (all images kept)."""
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def assert_scalars_are_history(acc, history):
    """Each shown column of history.csv is its tag's scalar, one per epoch (float32, as TensorBoard keeps it)."""
    shown = [c for c in history[0] if board.tag(c) is not None]
    assert len(shown) >= 5, shown
    for column in shown:
        got = scalars(acc, board.tag(column))
        assert [s for s, _ in got] == [int(r["epoch"]) for r in history], column
        for (_, value), row in zip(got, history):
            want = float(row[column])
            assert (math.isnan(value) and math.isnan(want)) or value == pytest.approx(want, rel=1e-6, abs=1e-9), column


def train_args(data, outs, save_dir, *extra):
    return ["--data_dir", str(data), "--depth", "10", "--image_size", *SIZE, "--epoch", "2", "--batch_size", "8",
            "--workers", "0", "--device", "cpu", "--bootstrap", "0", "--out_root", str(outs), "--save_dir", save_dir,
            "--augment", "flip,crop", "--augment_p", "0.5", *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """synthetic.py's drawn radiographs: 40 patients, 80 images of 88 x 51."""
    root = tmp_path_factory.mktemp("tb") / "data"
    assert synthetic.main(["--out", str(root), "--n", "40", "--seed", "0", "--size", *SIZE]) == 0
    return root


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """Two epochs with --tensorboard, then one more (--resume --extend_epochs 1 --tensorboard); and the
    same two epochs without the flag."""
    outs = tmp_path_factory.mktemp("outs")
    main.main(train_args(data, outs, "tb", "--tensorboard"))
    main.main(["--resume", "--extend_epochs", "1", "--tensorboard", "--save_dir", "tb", "--out_root", str(outs),
               "--workers", "0", "--device", "cpu"])
    main.main(train_args(data, outs, "plain"))
    return outs / "tb" / "fold", outs / "plain" / "fold"


def test_the_scalars_are_the_history_and_the_learning_rate_the_schedules(runs):
    run, _ = runs
    acc = events(run / board.FOLDER)
    history = read_rows(run / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert_scalars_are_history(acc, history)  # the extended epoch appended once, epochs 1-2 not repeated
    assert {"loss/train", "loss/val", "val/roc_auc", "val/pr_auc", "optim/lr"} <= set(acc.Tags()["scalars"])
    # cosine from --lrG 1e-3 to 0 over the two epochs, restarted at --lrG by --extend_epochs
    lr = [value for _, value in scalars(acc, "optim/lr")]
    assert lr == pytest.approx([1e-3, 0.5e-3, 1e-3], rel=1e-6)
    assert lr == pytest.approx([float(r["lr"]) for r in history], rel=1e-6)  # the optimiser's, as history.csv has it


def test_the_inputs_and_the_validation_curves_are_images(runs):
    run, _ = runs
    acc = events(run / board.FOLDER)
    for tag in ("inputs/radiograph", "inputs/enhanced"):
        shown = acc.Images(tag)
        assert [e.step for e in shown] == [1]  # epoch 1's first batch (then every board.IMAGE_EVERY-th epoch)
        # one row of the batch's 8 images at the network's size, not blank
        assert (shown[0].height, shown[0].width) == (88, 8 * 51)
        assert shown[0].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
    curves = acc.Images("val/roc_pr_curves")
    assert [e.step for e in curves] == [1, 2, 3]
    assert all(e.width > 600 and e.height > 300 for e in curves)


def test_the_images_show_the_augmented_input(runs):
    import cv2

    run, _ = runs
    acc = events(run / board.FOLDER)
    grid = cv2.imdecode(np.frombuffer(acc.Images("inputs/radiograph")[0].encoded_image_string, np.uint8),
                        cv2.IMREAD_GRAYSCALE)
    assert grid.std() > 10  # radiographs, not an empty canvas
    tiles = [grid[:, i * 51:(i + 1) * 51] for i in range(8)]
    assert len({t.tobytes() for t in tiles}) == 8  # eight different images


def test_without_the_flag_nothing_is_written_and_training_is_the_same(runs):
    run, plain = runs
    assert not (plain / board.FOLDER).exists()
    logged, alone = read_rows(run / "history.csv")[:2], read_rows(plain / "history.csv")
    for column in ("train_loss", "val_loss", "val_roc_auc", "lr"):
        assert [r[column] for r in logged] == [r[column] for r in alone], column


def test_a_resumed_session_replaces_the_epochs_an_interrupted_one_logged(tmp_path):
    first = board.Board(tmp_path, done=0)
    for epoch in (1, 2, 3):  # epoch 3 was logged, then the session stopped before saving it
        first.epoch(epoch, {"epoch": epoch, "train_loss": float(epoch), "best": 1})
    first.close()
    again = board.Board(tmp_path, done=2)  # --resume goes on after the 2 saved epochs
    for epoch in (3, 4):
        again.epoch(epoch, {"epoch": epoch, "train_loss": 10.0 * epoch})
    again.close()
    assert len(list((tmp_path / board.FOLDER).glob("events.out.tfevents.*"))) == 2
    assert scalars(events(tmp_path / board.FOLDER), "loss/train") == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_the_resume_command_keeps_the_flag():
    assert runchecks.resume_command(RunConfig(save_dir="r", tensorboard=True)).endswith("--tensorboard")
    assert "--tensorboard" not in runchecks.resume_command(RunConfig(save_dir="r"))


def pretrain_args(data, outs, save_dir, *extra):
    return ["--data_dir", str(data), "--image_size", *SIZE, "--depth", "10", "--batch_size", "16", "--workers", "0",
            "--device", "cpu", "--out_root", str(outs), "--save_dir", save_dir, *extra]


def test_pretraining_logs_its_history_views_and_resumes_once(data, tmp_path, monkeypatch, caplog):
    outs = tmp_path / "outs"
    one_epoch = pretraining.train_one_epoch

    def interrupted(*a, **k):
        if a[9] == 2:  # the epoch argument: Ctrl-C in epoch 2
            raise KeyboardInterrupt
        return one_epoch(*a, **k)

    monkeypatch.setattr(pretraining, "train_one_epoch", interrupted)
    with pytest.raises(SystemExit):
        pretrain.main(pretrain_args(data, outs, "ssl", "--epoch", "3", "--tensorboard"))
    said = [r.getMessage() for r in caplog.records if "interrupted" in r.getMessage()]
    assert said[-1].endswith(f"pretrain.py --resume --save_dir ssl --out_root {outs} --tensorboard")
    monkeypatch.setattr(pretraining, "train_one_epoch", one_epoch)
    pretrain.main(["--resume", "--save_dir", "ssl", "--out_root", str(outs), "--tensorboard"])

    run = outs / "ssl"
    acc = events(run / board.FOLDER)
    history = read_rows(run / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert_scalars_are_history(acc, history)
    lr = [value for _, value in scalars(acc, "optim/lr")]
    assert lr == pytest.approx([1e-3 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)], rel=1e-6)
    for view in ("view1", "view2"):
        shown = acc.Images(f"inputs/{view}/radiograph")
        assert [e.step for e in shown] == [1] and (shown[0].height, shown[0].width) == (88, 8 * 51)

    pretrain.main(pretrain_args(data, outs, "plain", "--epoch", "1"))
    assert not (outs / "plain" / board.FOLDER).exists()


@pytest.mark.parametrize("script", [main, pretrain])
def test_without_tensorboard_installed_the_flag_is_one_line(script, data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    argv = (train_args(data, tmp_path, "r", "--tensorboard") if script is main
            else pretrain_args(data, tmp_path, "p", "--tensorboard"))
    monkeypatch.setattr(sys, "argv", [f"{script.__name__}.py"])
    with pytest.raises(SystemExit) as stop:
        run_main(script.main, argv)
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tensorboard: the tensorboard package is not installed" in err[0], err
    assert "pip install tensorboard" in err[0] and "Traceback" not in err[0]
    assert not any(tmp_path.iterdir())  # nothing was started
