"""report.py: the run report (CIs over patients, thresholds from validation only, baseline comparison,
calibration, embedded figures) and the cross-validation summary."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

import baseline
import confidence
import crossval
import filenames
import main
import metrics
import report
import runfiles
from conftest import write_split

SECTIONS = ("## Summary", "## 1. Data", "## 2. Training", "## 3. Discrimination on test",
            "## 4. Test metrics with 95% confidence intervals", "## 5. Confusion matrix at the validation threshold",
            "## 6. Calibration", "## 7. Does the image add to age, sex and BMI?", "## 8. Methods and notes")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run; test patients s0..s3 have two images each."""
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    write_split(data / "train", [(f"t{i}", 1 + i % 2, i % 2, i % 3 == 0, 50 + i, 20.0 + i / 3) for i in range(12)])
    write_split(data / "val", [(f"v{i}", 1, i % 2, i % 2, 60 + i, None if i == 0 else 25.5 + i) for i in range(8)],
                seed=1)
    write_split(data / "test", [(f"s{i // 2 if i < 8 else i}", 1 + i % 2, (i // 2) % 2 if i < 8 else i % 2,
                                 i % 3 == 0, 55 + 2 * i, 22.0 + i) for i in range(12)], seed=2)
    main.main(["--model", "dense_net", "--depth", "10", "--data_dir", str(data), "--image_size", "64", "37",
               "--epoch", "2", "--batch_size", "4", "--workers", "0", "--device", "cpu", "--save_dir", "r",
               "--fold", "_LF", "--late_fuse", "True", "--out_root", str(root / "outs")])
    return root / "outs" / "r" / "fold_LF", data


def test_report_files_sections_and_embedded_figures(run):
    run_dir, data = run
    result = report.write_report(run_dir, n_boot=200)
    md = (run_dir / "report.md").read_text()
    html = (run_dir / "report.html").read_text()
    for section in SECTIONS:
        assert section in md and section[3:] in html
    assert html.count("data:image/png;base64,") == 4  # training, ROC/PR, confusion, calibration
    assert "report_figures/" not in html  # self-contained
    for name in ("training", "roc_pr", "confusion", "calibration"):
        assert (run_dir / report.FIGURE_DIR / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"report_figures/{name}.png" in md
    assert not [p for p in run_dir.rglob("*.tmp")]  # written atomically, nothing half-done left
    saved = json.loads((run_dir / "report_metrics.json").read_text())
    assert saved["network"]["threshold"] == runfiles.load_checkpoint(run_dir / "best.pth")["threshold"]
    assert saved["n_boot"] == 200 and saved["data"]["test"]["images"] == 12 and saved["data"]["test"]["patients"] == 8
    assert "the training images found reproduce" in saved["checks"][0]
    for key in ("slope", "intercept", "brier"):
        assert key in saved["network"]["calibration"] and key in saved["baseline"]["calibration"]
    assert set(saved["comparison"]) == {"auc_difference", "delong_test"}
    assert result["network"]["threshold"] == saved["network"]["threshold"]


def test_intervals_are_over_patients_from_the_best_epochs_predictions(run):
    run_dir, _ = run
    result = report.write_report(run_dir, n_boot=200, seed=1)
    pred = pd.read_csv(run_dir / "test_predictions.csv")
    y, p = pred["label"].to_numpy(), pred["probability"].to_numpy()
    t = result["network"]["threshold"]
    groups = [filenames.decode(f).patient for f in pred["file"]]
    by_patient = confidence.bootstrap_metrics(y, p, t, groups=groups, n_boot=200, seed=1)
    by_image = confidence.bootstrap_metrics(y, p, t, groups=None, n_boot=200, seed=1)
    got = result["network"]["metrics"]["roc_auc"]
    assert got == pytest.approx(by_patient["roc_auc"], nan_ok=True)
    assert (got["low"], got["high"]) != (by_image["roc_auc"]["low"], by_image["roc_auc"]["high"])
    assert got["point"] == pytest.approx(metrics.roc_auc(y, p))
    assert result["network"]["delong_auc"]["auc"] == pytest.approx(got["point"])


@pytest.mark.slow
def test_no_test_value_influences_any_threshold(run, tmp_path):
    run_dir, data = run
    before = report.write_report(run_dir, n_boot=200)
    data2, run2 = tmp_path / "data", tmp_path / "r" / "fold_LF"
    shutil.copytree(data, data2)
    shutil.copytree(run_dir, run2)
    renamed = {}
    for path in (data2 / "test").iterdir():  # flip every test label
        i = filenames.decode(path)
        new = filenames.encode(i.patient, i.crop, 1 - i.label, i.sex, i.age, i.bmi)
        path.rename(path.with_name(new))
        renamed[path.name] = new
    pred = pd.read_csv(run2 / "test_predictions.csv")
    pred["file"] = pred["file"].map(renamed)
    pred["label"] = 1 - pred["label"]
    pred.to_csv(run2 / "test_predictions.csv", index=False)
    after = report.write_report(run2, data_dir=data2, n_boot=200)
    assert after["network"]["threshold"] == before["network"]["threshold"]
    assert after["baseline"]["threshold"] == before["baseline"]["threshold"]
    assert after["baseline"]["coef"] == before["baseline"]["coef"]
    # ... while the test metrics did read the new labels
    auc = before["network"]["metrics"]["roc_auc"]["point"]
    assert after["network"]["metrics"]["roc_auc"]["point"] == pytest.approx(1 - auc)
    assert after["baseline"]["threshold"] == baseline.clinical_baseline(data2)["threshold"]


def test_report_refuses_a_data_folder_the_run_did_not_score(run, tmp_path):
    run_dir, data = run
    other = tmp_path / "data"
    shutil.copytree(data, other)
    next((other / "test").iterdir()).unlink()
    with pytest.raises(ValueError, match="test images found .* differ from those in test_predictions.csv"):
        report.write_report(run_dir, data_dir=other, n_boot=50)
    with pytest.raises(SystemExit, match="not found"):
        report.main(["--run", str(run_dir), "--data_dir", str(tmp_path / "nowhere")])


@pytest.mark.slow
def test_patient_in_two_splits_is_flagged(run, tmp_path):
    run_dir, data = run
    leaky = tmp_path / "data"
    shutil.copytree(data, leaky)
    first = sorted((leaky / "train").iterdir())[0]
    i = filenames.decode(first)
    first.rename(first.with_name(filenames.encode("s1", 7, i.label, i.sex, i.age, i.bmi)))
    result = report.write_report(run_dir, data_dir=leaky, n_boot=50)
    assert "LEAK: 1 patient(s) have images in both train and test (e.g. s1)" in result["checks"][1]
    assert "Check: LEAK" in (run_dir / "report.md").read_text()


def test_cli(run, capsys):
    run_dir, _ = run
    report.main(["--run", str(run_dir), "--bootstrap", "200"])
    assert "test ROC AUC" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        report.build_parser().parse_args(["--run", str(run_dir), "--bootstrap", "0"])


def calibrated(n_patients, seed, images_per_patient=1):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 0.95, n_patients)
    y = (rng.random(n_patients) < p).astype(int)
    groups = np.arange(n_patients)
    return (np.repeat(y, images_per_patient), np.repeat(p, images_per_patient),
            np.repeat(groups, images_per_patient))


def test_report_intervals_cover_the_point_and_shrink_with_more_patients():
    widths = []
    for n in (40, 400):
        y, p, g = calibrated(n, seed=n, images_per_patient=2)
        res = report.evaluate(y, p, 0.5, g, n_boot=200, seed=0)
        for key in ("roc_auc", "sensitivity", "specificity", "brier"):
            ci = res["metrics"][key]
            assert ci["low"] <= ci["point"] <= ci["high"]
        widths.append(res["metrics"]["roc_auc"]["high"] - res["metrics"]["roc_auc"]["low"])
    assert widths[1] < widths[0] / 2  # ~ 1 / sqrt(n): ten times the patients, about a third of the width


def test_calibration_slope_of_a_calibrated_predictor_is_near_one():
    y, p, g = calibrated(4000, seed=0)
    cal = report.evaluate(y, p, 0.5, g, n_boot=20, seed=0)["calibration"]
    assert cal["slope"] == pytest.approx(1.0, abs=0.12)
    assert cal["intercept"] == pytest.approx(0.0, abs=0.1)
    overconfident = report.evaluate(y, np.clip(1 / (1 + ((1 - p) / p) ** 2), 0, 1), 0.5, g, n_boot=20, seed=0)
    assert overconfident["calibration"]["slope"] == pytest.approx(0.5, abs=0.08)


def test_cv_summary_mean_sd_and_files(tmp_path):
    save_dir = tmp_path / "cv"
    folds = []
    for k, (auc, sens) in enumerate([(0.7, 0.6), (0.8, 0.9), (0.9, 0.75)]):
        fold = save_dir / f"fold{k}"
        runfiles.write_json(fold / "test_metrics.json", {"epoch": k + 1, "threshold": 0.4 + k / 10, "n_images": 10,
                                                          "at_threshold": {"roc_auc": auc, "sensitivity": sens,
                                                                           "mcc": None}})
        folds.append(fold)
    summary = report.write_cv_summary(save_dir, folds)
    assert summary["n_folds"] == 3 and [f["run"] for f in summary["folds"]] == ["fold0", "fold1", "fold2"]
    assert summary["mean"]["roc_auc"] == pytest.approx(0.8)
    assert summary["sd"]["roc_auc"] == pytest.approx(0.1)
    assert summary["mean"]["sensitivity"] == pytest.approx(0.75)
    assert np.isnan(summary["mean"]["mcc"])
    saved = json.loads((save_dir / "cv_summary.json").read_text())
    assert saved["sd"]["roc_auc"] == pytest.approx(0.1) and saved["mean"]["mcc"] is None
    md = (save_dir / "cv_report.md").read_text()
    assert "| fold1 | 2 | 0.500 |" in md and "0.800 ± 0.100" in md
    again = report.main(["--cv", str(save_dir)])
    assert again["mean"]["roc_auc"] == pytest.approx(0.8)


def test_cross_validation_run_is_described_with_its_folds_train_and_val(run):
    _, data = run
    config = {"data_dir": str(data), "cv_folds": 3, "cv_fold": 1, "seed": 4}
    files = runfiles.split_files(config)
    split = crossval.crossval_splits(data, 3, 4)[1]
    assert files["train"] == split["train"] and files["val"] == split["val"]
    assert [f.name for f in files["test"]] == sorted(p.name for p in (data / "test").iterdir())
