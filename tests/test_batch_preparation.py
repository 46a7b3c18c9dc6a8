"""The trainer's batch preparation, driven through main.py as a user runs it: the 8-bit handover
trains on the same numbers as the float one, and device-side augmentation runs end to end."""
import json

import pytest

import main
from hipx.runs import runfiles


def run_args(data, out_root, fold, *extra):
    return ["--model", "dense_net", "--depth", "10", "--data_dir", str(data), "--image_size", "40", "24",
            "--epoch", "2", "--batch_size", "4", "--workers", "0", "--device", "cpu", "--save_dir", "r",
            "--fold", fold, "--out_root", str(out_root), "--bootstrap", "0", "--deterministic", "--cpus", "1", *extra]


@pytest.mark.parametrize("late_fuse", ["True", "False"])
def test_uint8_and_float_handover_train_identically(tiny_data, tmp_path, late_fuse):
    """Without augmentation the network receives the same tensors, so the deterministic runs agree
    to the last digit: training losses, validation and test predictions."""
    outs = tmp_path / "outs"
    runs = {}
    for handover in ("uint8", "float"):
        main.main(run_args(tiny_data, outs, handover, "--late_fuse", late_fuse, "--handover", handover))
        runs[handover] = outs / "r" / f"fold{handover}"
    a, b = (runfiles.load_checkpoint(runs[h] / "last.pth") for h in ("uint8", "float"))
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    assert (runs["uint8"] / "test_predictions.csv").read_text() == (runs["float"] / "test_predictions.csv").read_text()
    assert (runs["uint8"] / "val_predictions.csv").read_text() == (runs["float"] / "val_predictions.csv").read_text()
    log = (runs["uint8"] / "train.log").read_text()
    assert "loader hands over uint8 images" in log and "1 torch thread (--cpus)" in log


def test_device_augmentation_end_to_end(tiny_data, tmp_path):
    outs = tmp_path / "outs"
    result = main.main(run_args(tiny_data, outs, "_dev", "--late_fuse", "True", "--augment", "flip,cat_elastic",
                                "--augment_p", "1", "--augment_device", "true"))
    run = outs / "r" / "fold_dev"
    assert "augmentation on the device (DeviceAugmenter(names=['flip', 'cat_elastic'], p=1.0))" in \
        (run / "train.log").read_text()
    assert json.loads((run / "config.json").read_text())["augment_device"] == "true"
    assert result["n_images"] == 6
    # auto on CPU augments in the workers
    main.main(run_args(tiny_data, outs, "_auto", "--augment", "flip", "--epoch", "1"))
    assert "augmentation in the loader workers" in (outs / "r" / "fold_auto" / "train.log").read_text()


@pytest.mark.parametrize("extra,message", [
    (["--augment", "gamma", "--augment_device", "true"], "--augment gamma has no device version"),
    (["--augment", "flip", "--augment_device", "true", "--handover", "float"], "needs --handover uint8"),
])
def test_device_augmentation_refusals_name_the_flag(tiny_data, tmp_path, extra, message):
    with pytest.raises(SystemExit, match=message):
        main.main(run_args(tiny_data, tmp_path / "outs", "_x", *extra))
