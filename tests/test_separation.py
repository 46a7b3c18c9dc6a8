"""Training never reaches evaluation (issue 32, items 6 and 8): guards that fail when augmentation or the
training statistics leak into validation and test, end to end through the commands.

* A run trained with an augmentation that changes every training image strongly must score its validation
  and test images exactly as ``predict.py`` does (which never augments): for the loader path
  (``--augment_device false``) and the device path (``--augment_device true``, forced on the CPU).
* The clinical normalisation saved in ``best.pth`` is the mean/SD of the training images' sex, age and BMI
  alone, computed here from the file names; validation and test hold values that would move it visibly.

The other guards of that item: test_clustered_delong.py (the clustered variance's cross term),
test_run_lock.py (the run-folder lock) and test_score_direction.py (the continuous target's direction).
"""
import csv
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

import main
import predict
from conftest import write_split
from hipx.data import augment, augment_device, filenames, loader
from hipx.runs import runfiles

SIZE = (64, 37)
# one per path: the loader workers may use every augmentation, the device only those with a device version
PATHS = {
    "loader": ("crop,rotate,noise", "false", "early"),
    "device": ("crop,rotate,cut", "true", "late"),
}


def read_csv(path: Path) -> dict[str, dict]:
    """Rows of a predictions file by file name (predict.py writes the path as given, the run the name)."""
    with open(path, newline="") as fh:
        return {Path(r["file"]).name: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Train, val and test whose clinical values lie far apart: statistics fitted on more than the
    training images move visibly. One missing BMI in train (not counted) and in val."""
    root = tmp_path_factory.mktemp("separation") / "data"
    write_split(root / "train", [(f"t{i}", 1 + i % 2, i % 2, int(i % 3 == 0), 40 + 2 * i,
                                  None if i == 5 else 18.0 + i / 2) for i in range(12)])
    write_split(root / "val", [(f"v{i}", 1, i % 2, 1, 82 + i, None if i == 0 else 36.0 + i) for i in range(6)],
                seed=1)
    write_split(root / "test", [(f"s{i}", 1, i % 2, 1, 90 + i, 44.0) for i in range(6)], seed=2)
    return root


@pytest.fixture(scope="module", params=list(PATHS))
def run(request, data) -> tuple[str, Path]:
    """A tiny run (depth 10, 2 epochs) with every training sample augmented (--augment_p 1)."""
    names, on_device, fusion_mode = PATHS[request.param]
    outs = data.parent / f"outs_{request.param}"
    main.main(["--model", "dense_net", "--depth", "10", "--growthRate", "6", "--data_dir", str(data),
               "--image_size", *map(str, SIZE), "--epoch", "2", "--batch_size", "4", "--workers", "0",
               "--device", "cpu", "--bootstrap", "0", "--save_dir", "r", "--fold", "x", "--out_root", str(outs),
               "--fusion", fusion_mode, "--augment", names, "--augment_p", "1", "--augment_device", on_device])
    return request.param, outs / "r" / "foldx"


def test_the_run_took_the_augmentation_path_it_was_given(run):
    """Without this the device test could pass on the loader path (or with no augmentation at all)."""
    path, folder = run
    log = (folder / "train.log").read_text()
    said = "augmentation on the device" if path == "device" else "augmentation in the loader workers"
    assert said in log


def test_the_augmentation_changes_every_image_strongly(data):
    """The guards below have teeth: at --augment_p 1 every sample changes, some pixels by many grey
    levels, so an augmented validation or test image would move its probability far beyond 1e-6."""
    ds = loader.HipDataset(loader.list_split(data, "val"), loader.ClinicalStats([0.0] * 3, [1.0] * 3), SIZE)
    images = np.stack([ds.load(i) for i in range(len(ds))])
    cpu = augment.Augmenter(augment.parse_augment(PATHS["loader"][0]), p=1.0, enhance=loader.enhance)
    changed = np.stack([np.abs(cpu(image, np.random.default_rng([0, 1, i])) - image)
                        for i, image in enumerate(images)])
    assert changed.max(axis=(1, 2, 3)).min() > 20 / 255 and changed.mean() > 2 / 255
    device = augment_device.DeviceAugmenter(PATHS["device"][0], p=1.0, seed=0)
    batch = torch.from_numpy(images)
    moved = (device(batch, list(range(len(ds))), epoch=1) - batch).abs()
    assert float(moved.amax(dim=(1, 2, 3)).min()) > 20 / 255 and float(moved.mean()) > 2 / 255


@pytest.mark.parametrize("split", ["val", "test"])
def test_val_and_test_predictions_equal_predict_py_without_augmentation(run, data, tmp_path, split):
    _, folder = run
    out = tmp_path / f"{split}.csv"
    predict.main(["--run", str(folder), str(data / split), "--out", str(out), "--device", "cpu"])
    scored, saved = read_csv(out), read_csv(folder / f"{split}_predictions.csv")
    assert sorted(saved) == sorted(scored) == sorted(p.name for p in (data / split).iterdir())
    got = np.array([float(saved[f]["probability"]) for f in sorted(saved)])
    expected = np.array([float(scored[f]["probability"]) for f in sorted(saved)])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=f"{split}_predictions.csv against predict.py")


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and population SD of the known values (a missing value is imputed later, not counted)."""
    known = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(known), statistics.pstdev(known)


def test_checkpoint_clinical_statistics_are_those_of_the_training_images_alone(run, data):
    _, folder = run
    saved = runfiles.load_checkpoint(folder / runfiles.BEST)["clinical_stats"]
    assert saved["names"] == ["sex", "age", "bmi"]
    infos = {split: [filenames.decode(p) for p in sorted((data / split).iterdir())]
             for split in ("train", "val", "test")}
    pooled = infos["train"] + infos["val"] + infos["test"]
    for j, name in enumerate(saved["names"]):
        train_mean, train_sd = mean_sd([getattr(i, name) for i in infos["train"]])
        pooled_mean, _ = mean_sd([getattr(i, name) for i in pooled])
        # the data make a leak visible: pooling moves each mean by more than a third of the training SD
        assert abs(pooled_mean - train_mean) > train_sd / 3, name
        assert saved["mean"][j] == pytest.approx(train_mean, rel=1e-12), name
        assert saved["std"][j] == pytest.approx(train_sd, rel=1e-12), name
