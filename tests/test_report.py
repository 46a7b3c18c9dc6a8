"""report.py and hipx/reports/run_report.py: the run report (CIs over patients, thresholds from validation
only, baseline comparison, calibration, embedded figures, sections numbered when assembled)."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from hipx.reports import baseline
from hipx.stats import confidence
from hipx.stats import decision
from hipx.stats import evaluation
from hipx.data import filenames
from hipx.data import folds
import main
from hipx.stats import metrics
import report
from hipx.reports import run_report
from hipx.runs import runfiles
from conftest import write_report_data

SECTIONS = ("## Summary", "## 1. Data", "## 2. Training", "## 3. Discrimination on test",
            "## 4. Test metrics with 95% confidence intervals", "## 5. Confusion matrix at the validation threshold",
            "## 6. Calibration", "## 7. Clinical usefulness: decision curve",
            "## 8. Does the image add to age, sex and BMI?", "## 9. Subgroups", "## 10. Case gallery",
            "## 11. Methods and notes")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run; test patients s0..s3 have two images each."""
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    write_report_data(data)
    main.main(["--model", "dense_net", "--depth", "10", "--data_dir", str(data), "--image_size", "64", "37",
               "--epoch", "2", "--batch_size", "4", "--workers", "0", "--device", "cpu", "--save_dir", "r",
               "--fold", "_LF", "--late_fuse", "True", "--out_root", str(root / "outs")])
    return root / "outs" / "r" / "fold_LF", data


def test_report_files_sections_and_embedded_figures(run):
    run_dir, data = run
    result = run_report.write_report(run_dir, n_boot=200)
    md = (run_dir / "report.md").read_text()
    html = (run_dir / "report.html").read_text()
    for section in SECTIONS:
        assert section in md and section[3:] in html
    kinds = {c["kind"] for c in result["gallery"]}
    # training, ROC/PR, confusion, calibration, decision, and one gallery sheet per outcome shown
    assert html.count("data:image/png;base64,") == 5 + len(kinds) and kinds
    assert "report_figures/" not in html  # self-contained
    for name in ("training", "roc_pr", "confusion", "calibration", "decision"):
        assert (run_dir / run_report.FIGURE_DIR / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"report_figures/{name}.png" in md
    assert not [p for p in run_dir.rglob("*.tmp")]  # written atomically, nothing half-done left
    saved = json.loads((run_dir / "report_metrics.json").read_text())
    assert saved["network"]["threshold"] == runfiles.load_checkpoint(run_dir / "best.pth")["threshold"]
    assert saved["n_boot"] == 200 and saved["data"]["test"]["images"] == 12 and saved["data"]["test"]["patients"] == 8
    assert "the training images found reproduce" in saved["checks"][0]
    assert any(c.startswith("all 22 metrics recomputed from test_predictions.csv equal test_metrics.json")
               for c in saved["checks"]), saved["checks"]
    for key in ("slope", "intercept", "brier", "n_clipped"):
        assert key in saved["network"]["calibration"] and key in saved["baseline"]["calibration"]
    for key in ("calibration_slope", "calibration_intercept"):  # with a bootstrap interval
        assert set(saved["network"]["metrics"][key]) >= {"point", "low", "high", "interval"}
    assert saved["network"]["metrics"]["roc_auc"]["interval"] == "bca"  # the default; defined on this data
    assert set(saved["comparison"]) == {"auc_difference", "delong_test"}
    assert "Primary result: network test ROC AUC" in md and "AUC difference network - clinical-only baseline" in md
    assert "conditional on this trained model and on the threshold chosen on validation" in md
    assert result["network"]["threshold"] == saved["network"]["threshold"]
    pred = pd.read_csv(run_dir / "test_predictions.csv")
    curve = saved["network"]["decision_curve"]
    np.testing.assert_allclose(curve["net_benefit"], decision.net_benefit(pred["label"], pred["probability"],
                                                                          curve["thresholds"]))
    assert curve["run_threshold"] == saved["network"]["threshold"] and "decision_curve" in saved["baseline"]
    assert ("| Threshold probability | Net benefit (95% CI), Network | Net benefit (95% CI), Clinical baseline | "
            "Treat all |") in md
    nb = curve["net_benefit_ci"][0]  # 5 %, patient bootstrap on the report's resamples
    assert nb["threshold"] == 0.05 and nb["point"] == pytest.approx(curve["net_benefit"][0], abs=1e-12)
    assert nb["low"] <= nb["point"] <= nb["high"] and nb["n_boot_valid"] == saved["n_boot"]
    assert nb == decision.net_benefit_ci(pred["label"], pred["probability"], [0.05],
                                         groups=[filenames.decode(f).patient for f in pred["file"]],
                                         n_boot=saved["n_boot"], seed=saved["seed"])[0]
    assert f"| 5% | {nb['point']:.3f} ({nb['low']:.3f} to {nb['high']:.3f}) |" in md
    assert "report_figures/decision.png" in md


def test_gallery_shows_the_most_confident_case_of_each_outcome_and_can_be_left_out(run):
    run_dir, _ = run
    result = run_report.write_report(run_dir, n_boot=50, gallery=1)
    pred = pd.read_csv(run_dir / "test_predictions.csv")
    t = result["network"]["threshold"]
    outcome = {(1, True): "tp", (0, False): "tn", (0, True): "fp", (1, False): "fn"}
    pred["kind"] = [outcome[(label, p >= t)] for label, p in zip(pred["label"], pred["probability"])]
    want = {}
    for kind, rows in pred.groupby("kind"):
        pick = rows["probability"].idxmax() if kind in ("tp", "fp") else rows["probability"].idxmin()
        want[kind] = pred.loc[pick, "file"]
    assert {c["kind"]: c["file"] for c in result["gallery"]} == want
    for c in result["gallery"]:
        assert c["probability"] == pytest.approx(pred.set_index("file").loc[c["file"], "probability"])
        assert (run_dir / run_report.FIGURE_DIR / f"gallery_{c['kind']}.png").is_file()
    md = (run_dir / "report.md").read_text()
    assert "## 10. Case gallery" in md and f"report_figures/gallery_{result['gallery'][0]['kind']}.png" in md
    assert f"| {result['gallery'][0]['kind'].upper()} | {result['gallery'][0]['file']} |" in md
    none = run_report.write_report(run_dir, n_boot=50, gallery=0)
    assert none["gallery"] == [] and "No case gallery (--gallery 0)." in (run_dir / "report.md").read_text()
    assert (run_dir / "report.html").read_text().count("data:image/png;base64,") == 5
    assert not list((run_dir / run_report.FIGURE_DIR).glob("gallery_*.png"))  # the earlier report's sheets are gone


def test_intervals_are_over_patients_from_the_best_epochs_predictions(run):
    run_dir, _ = run
    result = run_report.write_report(run_dir, n_boot=200, seed=1)
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
    before = run_report.write_report(run_dir, n_boot=200)
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
    after = run_report.write_report(run2, data_dir=data2, n_boot=200)
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
        run_report.write_report(run_dir, data_dir=other, n_boot=50)
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
    result = run_report.write_report(run_dir, data_dir=leaky, n_boot=50)
    assert "LEAK: 1 patient(s) have images in both train and test (e.g. s1)" in result["checks"][1]
    assert "Check: LEAK" in (run_dir / "report.md").read_text()


def test_every_recomputed_metric_is_cross_checked_against_test_metrics_json(run, tmp_path):
    run_dir, data = run
    changed = tmp_path / "r" / "fold_LF"
    shutil.copytree(run_dir, changed)
    pred = pd.read_csv(changed / "test_predictions.csv", dtype={"file": str})
    assert all(len(f"{v:.9g}") > 8 for v in pred["probability"] if 0 < v < 1)  # full precision, not %.6f
    pred.loc[0, "probability"] = 1 - pred.loc[0, "probability"]  # one prediction edited after testing
    pred.to_csv(changed / "test_predictions.csv", index=False)
    result = run_report.write_report(changed, data_dir=data, n_boot=50)
    mismatch = [c for c in result["checks"] if c.startswith("MISMATCH")]
    assert mismatch and "roc_auc" in mismatch[0]
    assert "Check: MISMATCH" in (changed / "report.md").read_text()


def test_no_baseline_and_no_sentence_about_it_without_clinical_values(run, tmp_path):
    run_dir, data = run
    bare, moved = tmp_path / "data", tmp_path / "r" / "fold_LF"
    shutil.copytree(run_dir, moved)
    renamed = {}
    for split in ("train", "val", "test"):  # the same images with sex, age and BMI unknown
        for path in sorted((data / split).iterdir()):
            i = filenames.decode(path)
            name = filenames.encode(i.patient, i.crop, i.label, None, None, None)
            (bare / split).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, bare / split / name)
            renamed[path.name] = name
    for csv in ("test_predictions.csv", "val_predictions.csv"):
        pred = pd.read_csv(moved / csv, dtype={"file": str})
        pred["file"] = pred["file"].map(renamed)
        pred.to_csv(moved / csv, index=False)
    result = run_report.write_report(moved, data_dir=bare, n_boot=50)
    assert result["baseline"] is None and result["comparison"] is None
    assert "no clinical value varies in the training split (sex missing, age missing, bmi missing)" in \
        result["baseline_absent"]
    md = (moved / "report.md").read_text()
    assert "No clinical-only baseline" in md and "does not show that the image adds" not in md
    assert "Clinical baseline" not in md and result["subgroups"] == []
    assert json.loads((moved / "report_metrics.json").read_text())["baseline"] is None


def test_subgroups_count_images_and_leave_out_one_class_groups(run):
    run_dir, data = run
    result = run_report.write_report(run_dir, n_boot=50)
    pred = pd.read_csv(run_dir / "test_predictions.csv", dtype={"file": str})
    info = {f: filenames.decode(f) for f in pred["file"]}
    assert result["subgroups"], "the fixture's test set has both classes in some subgroups"
    for s in result["subgroups"]:
        field, bands = next((f, b) for v, f, b in run_report.SUBGROUPS if v == s["variable"])
        low, high = next((lo, hi) for label, lo, hi in bands if label == s["group"])
        rows = pred[[low <= getattr(info[f], field) < high for f in pred["file"]]]
        assert (s["images"], s["positives"]) == (len(rows), int(rows["label"].sum()))
        assert s["patients"] == len({info[f].patient for f in rows["file"]})
        assert 0 < s["positives"] < s["images"]  # one-class subgroups are left out
        assert s["roc_auc"]["point"] == pytest.approx(metrics.roc_auc(rows["label"], rows["probability"]))
    shown = {(s["variable"], s["group"]) for s in result["subgroups"]}
    for variable, field, bands in run_report.SUBGROUPS:
        for label, low, high in bands:
            labels = {int(r.label) for r in pred.itertuples() if low <= getattr(info[r.file], field) < high}
            assert ((variable, label) in shown) == (labels == {0, 1})


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


def test_sections_are_numbered_when_assembled_and_an_absent_one_takes_no_number():
    from hipx.reports import render
    sections = (render.Section(None, lambda r: [("h1", "T")]),
                render.Section("Summary", lambda r: [("p", "s")], numbered=False),
                render.Section("A", lambda r: [("p", r["a"])]), render.Section("Absent", lambda r: None),
                render.Section("B", lambda r: []))
    assert render.assemble(sections, {"a": "x"}) == [("h1", "T"), ("h2", "Summary"), ("p", "s"), ("h2", "1. A"),
                                                     ("p", "x"), ("h2", "2. B")]
    numbered = [s.title for s in render.RUN_REPORT if s.title and s.numbered]
    assert [f"## {i}. {t}" for i, t in enumerate(numbered, 1)] == [s for s in SECTIONS if s != "## Summary"]


def test_report_intervals_cover_the_point_and_shrink_with_more_patients():
    widths = []
    for n in (40, 400):
        y, p, g = calibrated(n, seed=n, images_per_patient=2)
        res = evaluation.evaluate(y, p, 0.5, g, n_boot=200, seed=0)
        for key in ("roc_auc", "sensitivity", "specificity", "brier"):
            ci = res["metrics"][key]
            assert ci["low"] <= ci["point"] <= ci["high"]
        widths.append(res["metrics"]["roc_auc"]["high"] - res["metrics"]["roc_auc"]["low"])
    assert widths[1] < widths[0] / 2  # ~ 1 / sqrt(n): ten times the patients, about a third of the width


@pytest.mark.slow
def test_calibration_slope_of_a_calibrated_predictor_is_near_one():
    y, p, g = calibrated(4000, seed=0)
    cal = evaluation.evaluate(y, p, 0.5, g, n_boot=20, seed=0)["calibration"]
    assert cal["slope"] == pytest.approx(1.0, abs=0.12)
    assert cal["intercept"] == pytest.approx(0.0, abs=0.1)
    overconfident = evaluation.evaluate(y, np.clip(1 / (1 + ((1 - p) / p) ** 2), 0, 1), 0.5, g, n_boot=20, seed=0)
    assert overconfident["calibration"]["slope"] == pytest.approx(0.5, abs=0.08)


def test_cross_validation_run_is_described_with_its_folds_train_and_val(run):
    _, data = run
    config = {"data_dir": str(data), "cv_folds": 3, "cv_fold": 1, "seed": 4}
    files = runfiles.split_files(config)
    split = folds.crossval_splits(data, 3, 4)[1]
    assert files["train"] == split["train"] and files["val"] == split["val"]
    assert [f.name for f in files["test"]] == sorted(p.name for p in (data / "test").iterdir())


def test_the_subgroup_table_says_which_intervals_left_resamples_out():
    """The console's warning about resamples left out, explained beside the run report's subgroup table."""
    import warnings
    from hipx.reports import cohort, render
    rng = np.random.default_rng(3)
    test = pd.DataFrame({"label": [1, 0] * 8 + [1, 0, 0, 1], "probability": rng.random(20),
                         "patient": [f"p{i}" for i in range(20)], "sex": [1.0] * 16 + [0.0] * 4,
                         "age": [70.0] * 20, "bmi": [22.0] * 20})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        groups = cohort.subgroups(test, n_boot=100, seed=0)
    male = [g for g in groups if g["group"] == "male"][0]
    left_out = 100 - male["roc_auc"]["n_boot_valid"]
    assert left_out > 0  # four patients: many resamples hold one class
    (warned,) = [str(w.message) for w in caught if issubclass(w.category, confidence.ResamplesDropped)]
    assert f"Sex male {left_out} of 100" in warned and "Sex female" not in warned
    note = render._subgroups({"subgroups": groups, "interval": "bca", "n_boot": 100})[-1][1]
    assert note.endswith(f"so that subgroup's interval rests on the resamples left (resamples left out: Sex male "
                         f"{left_out} of 100).")
    every = [{**g, "roc_auc": {**g["roc_auc"], "n_boot_valid": 100}} for g in groups]
    assert "left out:" not in render._subgroups({"subgroups": every, "interval": "bca", "n_boot": 100})[-1][1]
