"""predict.py: a trained run scores new images exactly as its own test did, and refuses what it cannot score."""
import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from hipx.data import filenames
from hipx.data import loader
import export as export_command
import main
import predict  # the command, driven as a user runs it
from hipx.inference import predict as scoring
from hipx.runs import runfiles
from conftest import write_split


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict") / "data"
    write_split(root / "train", [(f"t{i}", 1 + i % 2, i % 2, i % 3 == 0, 50 + i, 20.0 + i / 3) for i in range(12)])
    write_split(root / "val", [(f"v{i}", 1, i % 2, 1, 60 + i, None if i == 0 else 25.5) for i in range(6)], seed=1)
    write_split(root / "test", [(f"s{i}", 1, i % 2, i % 2, None if i == 3 else 70 + i, 30.25) for i in range(6)],
                seed=2)
    return root


@pytest.fixture(scope="module", params=["True", "no"], ids=["late_fuse", "early_fuse"])
def run(request, data):
    outs = data.parent / f"outs_{request.param}"
    main.main(["--model", "dense_net", "--depth", "10", "--data_dir", str(data), "--image_size", "64", "37",
               "--epoch", "2", "--batch_size", "4", "--workers", "0", "--device", "cpu", "--save_dir", "r",
               "--fold", "x", "--out_root", str(outs), "--late_fuse", request.param])
    return outs / "r" / "foldx"


def test_reproduces_the_runs_test_predictions(run, data, tmp_path):
    out = tmp_path / "pred.csv"
    rows = predict.main(["--run", str(run), str(data / "test"), "--out", str(out), "--device", "cpu",
                         "--batch_size", "4"])
    expected = {r["file"]: r for r in read_csv(run / "test_predictions.csv")}
    written = read_csv(out)
    assert [r["file"] for r in written] == [str(p) for p in sorted((data / "test").iterdir())]
    assert len(rows) == len(expected) == 6
    for r in written:
        e = expected[Path(r["file"]).name]
        assert r["probability"] == e["probability"] and r["prediction"] == e["prediction"]


def same_csv(torch_csv, onnx_csv, threshold, tol=1e-5):
    """Two predict.py CSVs alike: the same columns, files and decisions, probabilities within ``tol`` (a
    decision may differ only for a probability within ``tol`` of the threshold, which is a validation
    image's probability); returns the probabilities of the first."""
    a, b = read_csv(torch_csv), read_csv(onnx_csv)
    assert [list(r) for r in a] == [list(r) for r in b] and len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x["file"] == y["file"]
        assert abs(float(x["probability"]) - float(y["probability"])) <= tol, x["file"]
        assert x["prediction"] == y["prediction"] or abs(float(x["probability"]) - threshold) <= tol
    return [float(r["probability"]) for r in a]


def test_an_exported_run_writes_the_runs_csv_with_onnxruntime(run, data, tmp_path):
    """predict.py --run model.onnx (export.py) scores the test images as predict.py with the run itself."""
    assert export_command.main(["--run", str(run), "--out", str(tmp_path / "m.onnx")]) == 0
    predict.main(["--run", str(run), str(data / "test"), "--out", str(tmp_path / "torch.csv"), "--device", "cpu"])
    rows = predict.main(["--run", str(tmp_path / "m.onnx"), str(data / "test"), "--out", str(tmp_path / "onnx.csv")])
    assert len(rows) == 6 and list(rows[0]) == ["file", "probability", "prediction"]
    probabilities = same_csv(tmp_path / "torch.csv", tmp_path / "onnx.csv", runfiles.load_run(run).threshold)
    assert np.ptp(probabilities) > 1e-4  # the network tells the images apart
    # the graph runs on the CPU and has the run's TTA built in: another is refused, naming the flag
    with pytest.raises(SystemExit, match=r"--device cuda: an exported model .* runs with onnxruntime on the CPU"):
        predict.main(["--run", str(tmp_path / "m.onnx"), str(data / "test"), "--device", "cuda",
                      "--out", str(tmp_path / "x.csv")])
    with pytest.raises(SystemExit, match=r"--tta flip: the graph .*m\.onnx was exported with --tta none built in"):
        predict.main(["--run", str(tmp_path / "m.onnx"), str(data / "test"), "--tta", "flip",
                      "--out", str(tmp_path / "x.csv")])
    with pytest.raises(SystemExit, match=r"no exported model at .*gone\.onnx"):
        predict.main(["--run", str(tmp_path / "gone.onnx"), str(data / "test"), "--out", str(tmp_path / "x.csv")])
    assert not (tmp_path / "x.csv").exists()


def test_inputs_equal_what_hipdataset_serves(run, data):
    """predict.py's input (clinical values given, not decoded from the names) is what training served."""
    trained = runfiles.load_run(run)
    stats = loader.ClinicalStats.from_dict(trained.clinical_stats)
    files = loader.list_split(data, "test")
    ds = loader.HipDataset(files, stats, (64, 37), early_fuse=trained.fusion == "early")
    served = loader.run_dataset(files, trained.config, trained.clinical_stats, clinical=scoring.clinical_values(files))
    assert served.channels == ds.channels
    for i in range(len(files)):
        assert np.array_equal(served[i]["image"].numpy(), ds[i]["image"].numpy())
        assert np.array_equal(served[i]["clinical"].numpy(), ds[i]["clinical"].numpy())
        assert served[i]["label"].item() == -1  # unknown when the values are given


def test_clinical_values_from_csv_for_files_outside_the_naming_format(run, data, tmp_path):
    original = sorted((data / "test").iterdir())[1]
    info = filenames.decode(original)
    plain = tmp_path / "scan 1.png"
    shutil.copy(original, plain)
    table = tmp_path / "clinical.csv"
    table.write_text(f"file,sex,age,bmi\n{plain.name},{int(info.sex)},{info.age:g},{info.bmi:g}\n")
    rows = scoring.predict(run, [original, plain], clinical_csv=table)
    assert rows[0]["probability"] == pytest.approx(rows[1]["probability"], abs=1e-6)
    # a missing value is imputed with the training mean, as in training
    table.write_text(f"file,sex,age,bmi\n{plain},{int(info.sex)},NA,{info.bmi:g}\n")
    assert np.isnan(scoring.clinical_values([plain], scoring.read_clinical_csv(table))[0, 1])

    with pytest.raises(SystemExit, match=r"no sex/age/BMI for .*scan 1\.png"):
        predict.main(["--run", str(run), str(plain), "--out", str(tmp_path / "p.csv"), "--device", "cpu"])
    table.write_text(f"file,sex,age,bmi\n{plain.name},2,60,25\n")
    with pytest.raises(SystemExit, match=r"clinical\.csv line 2: sex '2'"):
        predict.main(["--run", str(run), str(plain), "--csv", str(table), "--out", str(tmp_path / "p.csv"),
                      "--device", "cpu"])
    assert not (tmp_path / "p.csv").exists()


def test_colour_image_is_scored_as_its_grey_version(run, data, tmp_path):
    original = sorted((data / "test").iterdir())[0]
    colour = tmp_path / original.name
    cv2.imwrite(str(colour), cv2.cvtColor(cv2.imread(str(original), cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2BGR))
    a, b = scoring.predict(run, [original, colour])
    assert a["probability"] == pytest.approx(b["probability"], abs=1e-6)


@pytest.mark.parametrize("kind,message", [
    ("npy3d", r"expected a 2-D numeric array"),
    ("garbage", r"cannot decode image"),
    ("tiny", r"too small"),
    ("nan", r"NaN or infinite"),
])
def test_unusable_images_are_refused_naming_the_file(run, data, tmp_path, kind, message):
    name = filenames.encode("bad", 1, 0, 1, 60, 25.0, ext=".npy" if kind in ("npy3d", "nan") else ".png")
    path = tmp_path / name
    if kind == "npy3d":
        np.save(path, np.zeros((64, 37, 3), np.float32))
    elif kind == "nan":
        np.save(path, np.full((64, 37), np.nan, np.float32))
    elif kind == "garbage":
        path.write_text("not an image")
    else:
        cv2.imwrite(str(path), np.zeros((8, 5), np.uint8))
    good = sorted((data / "test").iterdir())[0]
    out = tmp_path / "p.csv"
    with pytest.raises(SystemExit, match=message) as err:
        predict.main(["--run", str(run), str(good), str(path), "--out", str(out), "--device", "cpu"])
    assert name in str(err.value)
    assert not out.exists()  # nothing written when one image is refused


def test_checkpoint_with_pickled_object_is_refused(tmp_path, data):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": runfiles.CHECKPOINT_FORMAT, "model": {}, "config": main.argparse.Namespace(a=1),
                "clinical_stats": {}, "threshold": 0.5, "epoch": 1}, run / "best.pth")
    with pytest.raises(SystemExit, match="pickled Python objects"):
        predict.main(["--run", str(run), str(data / "test"), "--out", str(tmp_path / "p.csv"), "--device", "cpu"])
    with pytest.raises(SystemExit, match="no checkpoint"):
        predict.main(["--run", str(tmp_path / "nowhere"), str(data / "test"), "--device", "cpu"])


@pytest.fixture(scope="module")
def cv_group(data):
    """A 2-fold cross-validation run (held-out test) trained with weight averaging and flip TTA."""
    outs = data.parent / "outs_cv"
    main.main(["--model", "dense_net", "--depth", "10", "--data_dir", str(data), "--image_size", "64", "37",
               "--epoch", "2", "--batch_size", "4", "--workers", "0", "--device", "cpu", "--save_dir", "cv",
               "--out_root", str(outs), "--folds", "2", "--cv", "heldout", "--ema", "0.9", "--tta", "flip",
               "--bootstrap", "0"])
    return outs / "cv"


def test_fold_run_with_ema_and_tta_reproduces_its_test_predictions(cv_group, data):
    # best.pth holds the averaged weights and predict.py mirrors as the run validated (--tta flip)
    for fold in ("fold0", "fold1"):
        rows = scoring.predict(cv_group / fold, [data / "test"])
        expected = {r["file"]: float(r["probability"]) for r in read_csv(cv_group / fold / "test_predictions.csv")}
        for r in rows:
            assert r["probability"] == pytest.approx(expected[Path(r["file"]).name], abs=2e-6)
    state = runfiles.load_checkpoint(cv_group / "fold0" / "last.pth")
    assert state["ema_averaged"] > 0 and state["trained"].keys() == state["model"].keys()
    assert any(not torch.equal(state["trained"][k], state["model"][k]) for k in state["model"])


def test_fold_ensemble_is_the_mean_of_the_fold_models(cv_group, data, tmp_path, monkeypatch):
    folds = [scoring.predict(cv_group / f, [data / "test"]) for f in ("fold0", "fold1")]
    out = tmp_path / "ens.csv"
    decoded, read = [], scoring.imaging.read_scaled
    monkeypatch.setattr(scoring.imaging, "read_scaled", lambda path: decoded.append(path) or read(path))
    rows = predict.main(["--run", str(cv_group), str(data / "test"), "--out", str(out), "--device", "cpu"])
    assert len(decoded) == 2 * len(rows)  # checked once, decoded once for both fold models
    thresholds = [runfiles.load_checkpoint(cv_group / f / "best.pth")["threshold"] for f in ("fold0", "fold1")]
    for r, a, b in zip(rows, *folds):
        assert r["probability"] == pytest.approx((a["probability"] + b["probability"]) / 2, abs=1e-9)
        assert r["prediction"] == int(r["probability"] >= sum(thresholds) / 2)
    assert len(read_csv(out)) == 6
    with pytest.raises(SystemExit, match="nor a cross-validation run group"):
        predict.main(["--run", str(tmp_path), str(data / "test"), "--device", "cpu"])


def test_flip_tta_averages_an_image_and_its_mirror(run, data, monkeypatch):
    files = sorted((data / "test").iterdir())[:3]
    plain = scoring.predict(run, files, tta="none")
    both = scoring.predict(run, files, tta="flip")
    real = scoring.loader.run_dataset

    class Mirrored(torch.utils.data.Dataset):
        def __init__(self, ds):
            self.ds = ds

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            return {**self.ds[i], "image": torch.flip(self.ds[i]["image"], dims=(-1,))}

        def with_clinical_stats(self, stats):
            return Mirrored(self.ds.with_clinical_stats(stats))

    monkeypatch.setattr(scoring.loader, "run_dataset", lambda *a, **k: Mirrored(real(*a, **k)))
    mirror = scoring.predict(run, files, tta="none")  # the network's inputs mirrored left/right
    for a, b, ab in zip(plain, mirror, both):
        assert ab["probability"] == pytest.approx((a["probability"] + b["probability"]) / 2, abs=1e-6)
    assert any(abs(a["probability"] - b["probability"]) > 1e-4 for a, b in zip(plain, mirror))
