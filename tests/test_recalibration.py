"""The continuous target's fitted probability scale in the report and the model card, and report.py
--recalibrate on a run's own validation images (issue 32, item 3): fitted on val_predictions.csv, reported
on test_predictions.csv, written beside the run without changing a byte of it."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit

import main
import report
from hipx.core import cli
from hipx.core import targets
from hipx.data import filenames
from hipx.reports import measurement as measure_report
from hipx.reports import recalibration
from hipx.runs import runfiles
from hipx.stats import confidence, metrics
from test_targets import write_measured

SIZE = (64, 37)


def hashes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and recalibration.OUT_DIR not in p.relative_to(folder).parts}


def flip_extremes(data: Path, split: str) -> None:
    """The label of the split's lowest and highest measured value flipped (a label from another source than
    the measurement), so that no score separates the classes and a recalibration has something to fit."""
    manifest = pd.read_csv(data / "manifest.csv")
    rows = manifest[manifest["split"] == split]
    for index in (rows["measure"].idxmin(), rows["measure"].idxmax()):
        old = data / manifest.at[index, "file"]
        label = 1 - int(manifest.at[index, "label"])
        new = old.with_name(filenames.encode(filenames.decode(old).patient, 1, label, 1, 70, 25.0))
        old.rename(new)
        manifest.loc[index, ["file", "label"]] = [f"{split}/{new.name}", label]
    manifest.to_csv(data / "manifest.csv", index=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 4-epoch continuous-target run (a few seconds) and its report: its best.pth holds the fitted scale."""
    tmp = tmp_path_factory.mktemp("recal")
    rng = np.random.default_rng(1)
    values = {split: rng.permutation(np.linspace(-4.0, 0.5, n)).round(3).tolist()
              for split, n in (("train", 24), ("val", 12), ("test", 12))}
    data = write_measured(tmp / "data", values)
    for split in ("val", "test"):
        flip_extremes(data, split)
    main.main(["--data_dir", str(data), "--image_size", *map(str, SIZE), "--depth", "10", "--growthRate", "6",
               "--workers", "0", "--device", "cpu", "--cpus", "1", "--bootstrap", "0", "--image_only", "--target",
               "continuous", "--epoch", "4", "--batch_size", "8", "--lrG", "1e-2", "--out_root", str(tmp / "outs"),
               "--save_dir", "c"])
    folder = tmp / "outs" / "c" / "fold"
    report.main(["--run", str(folder), "--bootstrap", "50", "--gallery", "0"])
    return folder


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_report_and_the_card_state_the_fitted_scale(run):
    state = runfiles.load_checkpoint(run / runfiles.BEST)
    sd = state["val_metrics"]["residual_sd"]
    spec = state["config"]["target_spec"]
    text = (f"probability from a residual SD of {sd:.2f} training SDs ({sd * spec['sd']:.3g} T-score units) fitted on "
            "validation (12 images with a measured T-score)")
    saved = json.loads((run / "report_metrics.json").read_text())["measurement"]["scale"]
    assert saved == {"fitted": True, "residual_sd": pytest.approx(sd), "training_sd": pytest.approx(spec["sd"]),
                     "logit_per_sd": pytest.approx(targets.PROBIT_TO_LOGIT / sd, rel=1e-6), "n_images": 12}
    for name in ("report.md", "report.html", "model_card.md"):
        assert text in (run / name).read_text(), name
    assert f"--run {run} --recalibrate intercept" in (run / "report.md").read_text()


def test_a_run_made_before_the_fitted_scale_says_its_scale_was_assumed():
    spec = {"kind": "continuous", "name": "T-score", "cut": -2.5, "mean": -1.0, "sd": 1.2}
    scale = measure_report.probability_scale({"model": {}, "val_metrics": {"roc_auc": 0.8}}, None, spec)
    assert scale["fitted"] is False and scale["logit_per_sd"] == targets.LOGIT_PER_SD
    assert measure_report.scale_text(scale, "T-score", "SD").startswith(
        "probability from an assumed residual SD of 0.50 training SDs (0.601 T-score units; 3.4 logits per training "
        "SD), not fitted")
    assert measure_report.probability_scale({"model": {}}, None, {**spec, "kind": "ordinal"}) is None


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", ["intercept", "logistic"])
def test_recalibrate_fits_on_validation_reports_test_and_leaves_the_run_as_it_was(run, method, capsys):
    before = hashes(run)
    result = report.main(["--run", str(run), "--recalibrate", method, "--bootstrap", "50"])
    assert hashes(run) == before  # not a byte of the run changed
    out = run / recalibration.OUT_DIR / method
    val, test = runfiles.read_predictions(run, "val"), runfiles.read_predictions(run, "test")
    fit = confidence.recalibration(val["label"], val["probability"], slope=method == "logistic")
    assert result["recalibration"]["a"] == pytest.approx(fit["a"], abs=1e-6)
    assert result["recalibration"]["b"] == pytest.approx(fit["b"], abs=1e-6)
    assert (method == "intercept") == (result["recalibration"]["b"] == 1.0)
    # every number on the test images, with the probabilities recalibrated by the fit on validation
    p_new = expit(fit["a"] + fit["b"] * logit(np.clip(test["probability"].to_numpy(float), 1e-6, 1 - 1e-6)))
    assert result["images"] == len(test) and result["parts"]["calibration"]["images"] == len(val)
    assert result["recalibrated"]["metrics"]["brier"]["point"] == pytest.approx(
        metrics.compute_metrics(test["label"], p_new, 0.5)["brier"], abs=1e-9)
    written = pd.read_csv(out / recalibration.PREDICTIONS)
    assert written["file"].tolist() == test["file"].tolist()
    np.testing.assert_allclose(written["recalibrated_probability"], p_new, atol=1e-8)
    assert result["recalibrated"]["confusion"] == result["as_trained"]["confusion"]  # every decision kept
    saved = json.loads((out / recalibration.METRICS).read_text())
    assert saved["recalibration"]["a"] == pytest.approx(fit["a"], abs=1e-6)
    md = (out / recalibration.REPORT).read_text()
    assert f"refitted on its own {len(val)} validation images" in md and "which the recalibration never saw" in md
    assert "probability from a residual SD of" in md
    assert (out / recalibration.REPORT_HTML).read_text().count("data:image/png;base64,") == 2
    printed = capsys.readouterr().out
    assert printed.startswith(f"recalibrated ({method} on {len(val)} validation images): on {len(test)} test images")


@pytest.mark.parametrize("argv, says", [
    (["--cv", "X", "--recalibrate", "intercept"], "--recalibrate refits one run's probabilities: give it with --run"),
    (["--run", "X", "--recalibrate", "intercept", "--calibrate_on", "val"],
     "--calibrate_on belongs to an external validation: add --external DATA_DIR (without it, --recalibrate fits on "
     "the run's own validation images)"),
    (["--run", "NOVAL", "--recalibrate", "logistic"], "val_predictions.csv not found"),
])
def test_recalibrate_mistakes_are_one_line(run, tmp_path, argv, says, capsys):
    novall = tmp_path / "noval"
    novall.mkdir()
    for name in (runfiles.BEST, runfiles.CONFIG, runfiles.PREDICTIONS["test"]):
        (novall / name).write_bytes((run / name).read_bytes())
    argv = [str(run) if a == "X" else str(novall) if a == "NOVAL" else a for a in argv]
    with pytest.raises(SystemExit) as stop:
        cli.run_main(report.main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 1 and len(err) == 1 and says in err[0], err
    assert not (novall / recalibration.OUT_DIR).exists()
