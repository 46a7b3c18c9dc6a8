"""End to end: main.py exactly as a user runs it, on a tiny generated set."""
import csv
import json
import math

import pytest
import torch

from hipx.core import cli
from hipx.data import filenames
from hipx.training import losses
import main
from hipx import models
from hipx.runs import runfiles


def run_args(data, out_root, *extra):
    return ["--model", "dense_net", "--depth", "10", "--data_dir", str(data), "--image_size", "64", "37",
            "--epoch", "3", "--batch_size", "4", "--workers", "0", "--device", "cpu", "--save_dir", "r",
            "--out_root", str(out_root), "--bootstrap", "0", *extra]


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
@pytest.mark.parametrize("late_fuse,fold", [("True", "_Dense_LF"), ("no", "_Dense_EF")])
def test_train_validate_test_writes_run_and_tests_best_epoch(tiny_data, tmp_path, late_fuse, fold):
    outs = tmp_path / "outs"
    result = main.main(run_args(tiny_data, outs, "--fold", fold, "--late_fuse", late_fuse,
                                "--augment", "cat_elastic", "--augment_p", "0.5"))
    run = outs / "r" / f"fold{fold}"
    for name in ("config.json", "train.log", "history.csv", "best.pth", "test_metrics.json",
                 "test_predictions.csv", "val_predictions.csv"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["fusion"] == ("late" if late_fuse == "True" else "early")
    assert config["in_chans"] == (2 if late_fuse == "True" else 5) and "late_fuse" not in config

    history = read_csv(run / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    # the share of each epoch spent waiting for the loader is recorded (and logged)
    assert all(0.0 <= float(r["train_data_wait"]) <= 1.0 for r in history)
    assert "waiting for data" in (run / "train.log").read_text()
    aucs = [float(r["val_roc_auc"]) for r in history]
    best_epoch = 1 + max(range(3), key=lambda i: (aucs[i], -i))  # first epoch with the highest AUC
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["epoch"] == best_epoch == result["epoch"]
    state = runfiles.load_checkpoint(run / "best.pth")
    assert state["epoch"] == best_epoch and state["threshold"] == metrics["threshold"]
    assert state["clinical_stats"]["names"] == ["sex", "age", "bmi"]

    # every test image scored exactly once, with the checkpoint's threshold
    preds = read_csv(run / "test_predictions.csv")
    test_files = sorted(p.name for p in (tiny_data / "test").iterdir())
    assert sorted(r["file"] for r in preds) == test_files
    assert all(int(r["prediction"]) == (float(r["probability"]) >= metrics["threshold"]) for r in preds)
    assert metrics["n_images"] == len(test_files)

    # --test --overwrite re-scores the same best checkpoint and reproduces the metrics
    again = main.main(["--test", "--overwrite", "--save_dir", "r", "--fold", fold, "--out_root", str(outs),
                       "--data_dir", str(tiny_data), "--workers", "0", "--device", "cpu"])
    for key in ("roc_auc", "accuracy", "f2", "brier"):
        a, b = again["at_threshold"][key], metrics["at_threshold"][key]
        assert (math.isnan(a) and b is None) or a == pytest.approx(b, abs=1e-6)

    # the best checkpoint loads into a freshly built network, with no DataParallel "module." prefixes
    model = models.build_model_from_config(state["config"])
    model.load_state_dict(state["model"])
    assert not any(k.startswith("module.") for k in state["model"])


def test_image_only_run_takes_two_channels_and_no_clinical_data(tiny_data, tmp_path):
    outs = tmp_path / "outs"
    main.main(run_args(tiny_data, outs, "--fold", "io", "--image_only", "--epoch", "1"))
    config = json.loads((outs / "r" / "foldio" / "config.json").read_text())
    assert config["in_chans"] == 2 and config["fusion"] == "image" and "image_only" not in config
    assert config["trainer"] == "ClassifyTrainer"
    assert "model dense_net (image only, 2 input channels" in (outs / "r" / "foldio" / "train.log").read_text()
    with pytest.raises(SystemExit, match="exclude each other"):
        main.main(run_args(tiny_data, outs, "--fold", "x", "--image_only", "--late_fuse", "true"))


def test_existing_run_is_refused_not_overwritten(tiny_data, tmp_path):
    outs = tmp_path / "outs"
    main.main(run_args(tiny_data, outs, "--fold", "a", "--epoch", "1"))
    before = (outs / "r" / "folda" / "best.pth").read_bytes()
    with pytest.raises(cli.UserError, match="already holds a run"):
        main.main(run_args(tiny_data, outs, "--fold", "a", "--epoch", "1"))
    assert (outs / "r" / "folda" / "best.pth").read_bytes() == before


@pytest.mark.parametrize("flags,message", [
    (["--depth", "41"], "--depth 41"),
    (["--augment", "cat_elastic,sideways"], "unknown augmentation"),
    (["--augment_p", "1.5"], "--augment_p"),
    (["--focal_gamma", "3"], "--focal_gamma only applies"),
    (["--t_alpha", "1.0"], "--t_alpha"),
    (["--model", "densenet121", "--stem", "original"], "--stem"),
])
def test_flags_that_make_no_sense_are_refused(tiny_data, tmp_path, flags, message):
    with pytest.raises(SystemExit, match=message):
        main.main(run_args(tiny_data, tmp_path / "outs", *flags))


def test_bad_flag_values_rejected_by_parser(capsys):
    for argv in (["--late_fuse", "maybe"], ["--model", "resnet"], ["--epoch", "0"]):
        with pytest.raises(SystemExit):
            main.build_parser().parse_args(argv)
    assert "expected yes/no/true/false/1/0" in capsys.readouterr().err


def test_single_class_validation_split_is_refused_before_training(tiny_data, tmp_path):
    for p in (tiny_data / "val").iterdir():
        if filenames.decode(p).label == 1:
            p.unlink()
    with pytest.raises(SystemExit, match="val split holds only normal images"):
        main.main(run_args(tiny_data, tmp_path / "outs", "--fold", "x"))
    assert not (tmp_path / "outs").exists()  # nothing written: a fixed data set can be run at once


def test_no_data_says_how_to_make_the_demo_set(tmp_path):
    with pytest.raises(FileNotFoundError, match="synthetic.py"):
        main.main(run_args(tmp_path / "nodata", tmp_path / "outs", "--fold", "x"))


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "best.pth"
    torch.save({"format": runfiles.CHECKPOINT_FORMAT, "model": {}, "obj": main.argparse.Namespace(a=1)}, path)
    with pytest.raises(ValueError, match="pickled"):
        runfiles.load_checkpoint(path)


@pytest.mark.slow
def test_cross_validation_trains_k_folds_and_summarises(tiny_data, tmp_path):
    outs = tmp_path / "outs"
    results = main.main(run_args(tiny_data, outs, "--fold", "_cv", "--folds", "2", "--epoch", "1",
                                 "--bootstrap", "50"))
    assert len(results) == 2
    summary = json.loads((outs / "r" / "cv_summary.json").read_text())
    assert "roc_auc" in json.dumps(summary)
    val_sets = []
    for k in range(2):
        run = outs / "r" / f"fold_cv{k}"
        config = json.loads((run / "config.json").read_text())
        assert (config["cv_folds"], config["cv_fold"]) == (2, k)
        assert (run / "report.html").is_file()
        val_sets.append({r["file"] for r in read_csv(run / "val_predictions.csv")})
    pooled = {p.name for split in ("train", "val") for p in (tiny_data / split).iterdir()}
    assert val_sets[0].isdisjoint(val_sets[1]) and val_sets[0] | val_sets[1] == pooled


def test_every_augmentation_runs_end_to_end(tiny_data, tmp_path):
    import augment
    names = ",".join(augment.AUGMENTATIONS)
    result = main.main(run_args(tiny_data, tmp_path / "outs", "--fold", "aug", "--epoch", "1", "--augment", names,
                                "--augment_p", "1.0", "--late_fuse", "true"))
    config = json.loads((tmp_path / "outs" / "r" / "foldaug" / "config.json").read_text())
    assert config["augment"] == names and result["n_images"] == 6


def test_non_finite_loss_stops_with_epoch_and_batch_and_keeps_best(tiny_data, tmp_path, monkeypatch, caplog):
    calls = {"n": 0}
    real = losses.build_loss

    def exploding(*args, **kwargs):
        loss = real(*args, **kwargs)

        def fn(logits, target):
            calls["n"] += 1
            value = loss(logits, target)
            return value * float("nan") if calls["n"] > 5 else value  # epoch 1: 3 train + 2 val batches
        return fn

    monkeypatch.setattr(losses, "build_loss", exploding)
    with pytest.raises(SystemExit):
        main.main(run_args(tiny_data, tmp_path / "outs", "--fold", "nan"))
    assert "at epoch 2, batch 0" in caplog.text
    run = tmp_path / "outs" / "r" / "foldnan"
    assert runfiles.load_checkpoint(run / "best.pth")["epoch"] == 1
    assert not (run / "test_metrics.json").exists()
