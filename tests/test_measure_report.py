"""measure_report.py: predicted against measured value of a graded target (MAE, Pearson/Spearman, the class
table and quadratic kappa with patient-bootstrap CIs) and its section in the run and cross-validation reports."""
import csv
import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import cohen_kappa_score, confusion_matrix, mean_absolute_error

from hipx.reports import cv as cv_report
from hipx.data import filenames
from hipx.data import loader
from hipx.reports import measurement as mr
import report
from hipx.reports import run_report
from hipx.runs import runfiles
from conftest import write_split

NETWORK = {"model": "dense_net", "fusion": "early", "in_chans": 5, "image_size": [64, 37], "depth": 10,
           "growthRate": 4, "norm": "bn", "act": "relu", "stem": "downsample"}
TSCORE = {"kind": "continuous", "name": "T-score", "cut": -2.5, "mean": -1.2, "sd": 1.3}
GRADE = {"kind": "ordinal", "name": "grade", "cut": 2.0, "bounds": [1, 2, 3, 4, 5],
         "classes": ["1", "2", "3", "4", "5", "6"]}
WHO = {"kind": "ordinal", "name": "T-score", "cut": -2.5, "bounds": [-2.5, -1.0],
       "classes": ["osteoporosis", "osteopenia", "normal"]}
PNG = b"\x89PNG\r\n\x1a\n"


def made_up(n_patients=40, per_patient=2, seed=0):
    """T-scores (rounded: ties) and a noisy prediction of them, ``per_patient`` images per patient."""
    rng = np.random.default_rng(seed)
    level = np.repeat(rng.normal(-1.5, 1.2, n_patients), per_patient)
    measured = np.round(level + rng.normal(0, 0.3, level.size), 1)
    predicted = np.round(0.6 * measured + rng.normal(0, 0.8, level.size), 1)
    return measured, predicted, np.repeat([f"p{i}" for i in range(n_patients)], per_patient)


# --------------------------------------------------------------------------- statistics

def test_continuous_statistics_equal_scipy_and_sklearn():
    m, p, g = made_up()
    s = mr.continuous_statistics(m, p, g, n_boot=200)
    assert s["mae"]["point"] == pytest.approx(mean_absolute_error(m, p), abs=1e-12)
    assert s["pearson_r"]["point"] == pytest.approx(pearsonr(p, m)[0], abs=1e-12)
    assert s["spearman_rho"]["point"] == pytest.approx(spearmanr(p, m)[0], abs=1e-12)
    for v in s.values():
        assert v["low"] < v["point"] < v["high"] and v["n_boot_valid"] == 200 and v["interval"] == "bca"


@pytest.mark.parametrize("spec", [WHO, GRADE])
def test_ordinal_statistics_equal_sklearn_over_all_classes(spec):
    m, p, g = made_up(seed=1)
    if spec is GRADE:  # grades 1..6 from the T-score's range
        m, p = np.clip(np.round(m + 4.5), 1, 6), np.clip(np.round(p + 4.5), 1, 6)
    k = len(spec["classes"])
    mc, pc = mr.classes_of(m, spec["bounds"]), mr.classes_of(p, spec["bounds"])
    s = mr.ordinal_statistics(mc, pc, k, g, n_boot=200)
    assert s["mae_classes"]["point"] == pytest.approx(mean_absolute_error(mc, pc), abs=1e-12)
    assert s["spearman_rho"]["point"] == pytest.approx(spearmanr(pc, mc)[0], abs=1e-12)
    assert s["kappa_quadratic"]["point"] == pytest.approx(
        cohen_kappa_score(mc, pc, weights="quadratic", labels=list(range(k))), abs=1e-12)
    assert s["confusion"] == confusion_matrix(mc, pc, labels=list(range(k))).tolist()
    for key in ("mae_classes", "spearman_rho", "kappa_quadratic"):
        assert s[key]["low"] <= s[key]["point"] <= s[key]["high"]


def test_weighted_statistics_equal_those_of_the_repeated_sample():
    """A resample is frequency weights: each statistic equals the plain one on the images repeated that often."""
    m, p, _ = made_up(n_patients=30, per_patient=1, seed=2)
    w = np.random.default_rng(3).integers(0, 3, size=(4, m.size)).astype(float)
    mc, pc = mr.classes_of(m, WHO["bounds"]), mr.classes_of(p, WHO["bounds"])
    for row, mae, r, rho, kappa in zip(w, mr.weighted_mae(w, p, m), mr.weighted_pearson(w, p, m),
                                       mr.weighted_spearman(w, p, m), mr.weighted_kappa(w, mc, pc, 3)):
        idx = np.repeat(np.arange(m.size), row.astype(int))
        assert mae == pytest.approx(mean_absolute_error(m[idx], p[idx]), abs=1e-12)
        assert r == pytest.approx(pearsonr(p[idx], m[idx])[0], abs=1e-12)
        assert rho == pytest.approx(spearmanr(p[idx], m[idx])[0], abs=1e-12)
        assert kappa == pytest.approx(cohen_kappa_score(mc[idx], pc[idx], weights="quadratic", labels=[0, 1, 2]),
                                      abs=1e-12)


@pytest.mark.parametrize("interval", ["bca", "percentile"])
def test_bootstrap_weighted_draws_the_resamples_of_bootstrap_ci(interval):
    """The Brier score as a statistic of weights gets exactly bootstrap_ci's interval (same patients drawn)."""
    from hipx.stats import confidence
    from hipx.stats import metrics
    rng = np.random.default_rng(6)
    y, p = rng.integers(0, 2, 60), rng.random(60)
    groups = np.repeat(np.arange(30), 2)
    want = confidence.bootstrap_ci(y, p, metrics.brier, groups=groups, n_boot=300, seed=7, interval=interval)
    got = confidence.bootstrap_weighted(lambda w: mr.weighted_mae(w, (p - y) ** 2, np.zeros(60)), 60, groups=groups,
                                        n_boot=300, seed=7, interval=interval)
    for key in ("point", "low", "high"):
        assert got[key] == pytest.approx(want[key], abs=1e-12)
    assert got["interval"] == want["interval"] == interval


def test_a_constant_side_gives_nan_not_a_spurious_correlation():
    w = np.ones((1, 4))
    x = np.array([0.1, 0.1, 0.1, 0.1]) * 3  # not exactly representable: centring leaves rounding noise
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert np.isnan(mr.weighted_pearson(w, x, y)[0]) and np.isnan(mr.weighted_spearman(w, x, y)[0])
    assert np.isnan(mr.weighted_kappa(w, np.zeros(4, int), np.zeros(4, int), 3)[0])


@pytest.mark.parametrize("kind", ["continuous", "ordinal"])
def test_intervals_resample_patients_not_images(kind):
    """Every patient's images twice: the points stay, the patient bootstrap draws the same patients and so
    gives the same interval, while a bootstrap over images (wrongly) narrows it."""
    m, p, g = made_up(n_patients=30, per_patient=1, seed=4)
    twice = (np.repeat(m, 2), np.repeat(p, 2), np.repeat(g, 2))

    def stats(measured, predicted, groups):
        if kind == "continuous":
            return mr.continuous_statistics(measured, predicted, groups, n_boot=400, seed=5)
        out = mr.ordinal_statistics(mr.classes_of(measured, WHO["bounds"]), mr.classes_of(predicted, WHO["bounds"]),
                                    3, groups, n_boot=400, seed=5)
        out.pop("confusion")
        return out

    once, doubled, images = stats(m, p, g), stats(*twice), stats(twice[0], twice[1], None)
    for key in once:
        assert doubled[key]["point"] == pytest.approx(once[key]["point"], abs=1e-12)
        assert doubled[key]["low"] == pytest.approx(once[key]["low"], abs=1e-9)
        assert doubled[key]["high"] == pytest.approx(once[key]["high"], abs=1e-9)
        width = once[key]["high"] - once[key]["low"]
        assert images[key]["high"] - images[key]["low"] < 0.85 * width, key


def test_classes_count_the_bounds_a_value_exceeds():
    assert mr.classes_of([1, 2, 3, 6], GRADE["bounds"]).tolist() == [0, 1, 2, 5]
    assert mr.classes_of([-3.0, -2.5, -2.4, -1.0, -0.9], WHO["bounds"]).tolist() == [0, 0, 1, 1, 2]
    assert mr.cut_class(mr.target_spec({"target_spec": GRADE})) == 1  # grades 1-2
    assert mr.cut_class(mr.target_spec({"target_spec": WHO})) == 0  # osteoporosis only


def test_target_spec_is_none_for_binary_runs_and_names_a_wrong_field():
    assert mr.target_spec({}) is None and mr.target_spec({"target_spec": {"kind": "binary"}}) is None
    assert mr.target_spec({"target_spec": TSCORE})["cut"] == -2.5
    with pytest.raises(ValueError, match="kind 'grades'"):
        mr.target_spec({"target_spec": {"kind": "grades"}})
    with pytest.raises(ValueError, match="increasing bounds"):
        mr.target_spec({"target_spec": {**GRADE, "bounds": [2, 1]}})
    with pytest.raises(ValueError, match="5 class names for 5 bounds; expected 6"):
        mr.target_spec({"target_spec": {**GRADE, "classes": list("12345")}})


def test_predictions_without_the_columns_are_refused_naming_the_file():
    table = pd.DataFrame({"file": ["a_1_1-NA-NA-NA.png"], "label": [1], "probability": [0.9], "patient": ["a"]})
    with pytest.raises(ValueError, match="test_predictions.csv has no 'measure' or 'predicted' column"):
        mr.measurement(table, TSCORE, source="test_predictions.csv")


# --------------------------------------------------------------------------- reports of hand-made runs

def _value(spec, label, i):
    """A measured value on the right side of the cut (T-score or grade), and the run's predicted value."""
    if spec["kind"] == "continuous":
        measured = (-3.2 if label else -0.8) + 0.1 * (i % 5)
        return measured, measured + (0.4 if i % 3 else -0.5)
    grade = (1 + i % 2) if label else (5 + i % 2)
    return grade, min(5, max(0, grade - 1 + (1 if i % 4 == 0 else 0)))  # predicted class 0..5


def make_run(root, spec=None, unscored=0):
    """A scored run folder without weights (run_report.write_report with gallery=0 needs none): data/ with
    train/val/test, config.json with ``spec``, best.pth holding the threshold, test_predictions.csv with
    measure and predicted columns (one test image unmeasured)."""
    data = root / "data"
    train = write_split(data / "train", [(f"t{i}", 1, i % 2, i % 2, 50 + i, 20.0 + i) for i in range(10)])
    write_split(data / "val", [(f"v{i}", 1, i % 2, i % 2, 60 + i, 25.0) for i in range(6)], seed=1)
    test = write_split(data / "test", [(f"s{i // 2}", 1 + i % 2, (i // 2) % 2, i % 3 == 0, 55 + i, 22.0 + i)
                                       for i in range(16)], seed=2)
    if unscored:
        write_split(data / "unscored", [(f"u{i}", 1, 0, 1, 70, 24.0) for i in range(unscored)], seed=3)
    run = root / "outs" / "g" / "fold_X"
    run.mkdir(parents=True)
    config = {**NETWORK, "data_dir": str(data), **({"target_spec": spec} if spec else {})}
    (run / "config.json").write_text(json.dumps(config))
    stats = loader.ClinicalStats.fit([filenames.decode(f) for f in train]).to_dict()
    runfiles.save_checkpoint(run / "best.pth", {}, config, stats, 0.5, 2)
    rows = []
    for i, path in enumerate(test):
        label = filenames.decode(path).label
        prob = 0.3 + 0.4 * label + 0.02 * (i % 5)
        row = {"file": path.name, "label": label, "probability": prob, "prediction": int(prob >= 0.5)}
        if spec:
            measured, predicted = _value(spec, label, i)
            row.update(measure="" if i == 0 else measured, predicted=predicted)
        rows.append(row)
    with open(run / "test_predictions.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return run


@pytest.mark.filterwarnings("ignore::UserWarning")  # eight test patients: some resamples hold one class
def test_continuous_run_report_has_the_measurement_section_and_scatter(tmp_path):
    run = make_run(tmp_path, TSCORE, unscored=2)
    result = run_report.write_report(run, n_boot=100, gallery=0)
    block = result["measurement"]
    pred = pd.read_csv(run / "test_predictions.csv").dropna(subset=["measure"])
    assert block["n_scored"] == 16 and block["n_images"] == 15 and block["n_without_measure"] == 1
    assert block["n_patients"] == 8 and block["n_unscored_in_data"] == 2
    assert block["statistics"]["pearson_r"]["point"] == pytest.approx(pearsonr(pred["predicted"], pred["measure"])[0])
    assert block["statistics"]["mae"]["point"] == pytest.approx(mean_absolute_error(pred["measure"],
                                                                                    pred["predicted"]))
    md, html = (run / "report.md").read_text(), (run / "report.html").read_text()
    for text in ("## Measurement: predicted against measured T-score", "Of the 16 scored test images, 15 of 8 "
                 "patients have a measured T-score", "2 image(s) in this data folder", "| Pearson r, predicted",
                 "never scored: every binary metric", "report_figures/measure_scatter.png"):
        assert text in md, text
    assert md.index("## Measurement") < md.index("## 11. Methods and notes")
    assert "Measurement: predicted against measured T-score" in html
    assert html.count("data:image/png;base64,") == 5  # ROC/PR, confusion, calibration, decision + the scatter
    assert (run / "report_figures" / "measure_scatter.png").read_bytes()[:8] == PNG
    saved = json.loads((run / "report_metrics.json").read_text())
    assert saved["measurement"]["statistics"]["spearman_rho"]["point"] == pytest.approx(
        spearmanr(pred["predicted"], pred["measure"])[0])
    assert not list(run.rglob("*.tmp"))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_ordinal_run_report_has_the_class_table_kappa_and_heat_map(tmp_path, capsys):
    run = make_run(tmp_path, GRADE)
    result = report.main(["--run", str(run), "--bootstrap", "100", "--gallery", "0"])
    block = result["measurement"]
    pred = pd.read_csv(run / "test_predictions.csv").dropna(subset=["measure"])
    mc = mr.classes_of(pred["measure"], GRADE["bounds"])
    assert block["confusion"] == confusion_matrix(mc, pred["predicted"], labels=list(range(6))).tolist()
    assert block["statistics"]["kappa_quadratic"]["point"] == pytest.approx(
        cohen_kappa_score(mc, pred["predicted"], weights="quadratic", labels=list(range(6))))
    assert block["n_unscored_in_data"] is None and "quadratic kappa" in capsys.readouterr().out
    md = (run / "report.md").read_text()
    assert "| Cohen's κ, quadratic weights |" in md
    assert "| Measured \\ predicted | 1 | 2 | 3 | 4 | 5 | 6 | Images |" in md
    assert "report_figures/measure_confusion.png" in md and "data folder's unscored/ images" in md
    assert (run / "report_figures" / "measure_confusion.png").read_bytes()[:8] == PNG
    assert not (run / "report_figures" / "measure_scatter.png").exists()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_binary_run_report_has_no_measurement(tmp_path):
    run = make_run(tmp_path)
    result = run_report.write_report(run, n_boot=100, gallery=0)
    md = (run / "report.md").read_text()
    assert "measurement" not in result and "Measurement" not in md and "unscored" not in md
    assert not list((run / "report_figures").glob("measure_*"))
    assert "measurement" not in json.loads((run / "report_metrics.json").read_text())


# --------------------------------------------------------------------------- cross-validation

def write_fold(run, rows, spec, design="oof"):
    """A tested fold without weights: rows of (patient, label, probability, measure, predicted)."""
    run.mkdir(parents=True)
    config = {**NETWORK, "cv_folds": 2, "cv_fold": int(run.name[-1]), "cv_design": design,
              "data_dir": str(run.parent / "no_data"), **({"target_spec": spec} if spec else {})}
    (run / "config.json").write_text(json.dumps(config))
    runfiles.save_checkpoint(run / "best.pth", {}, config, {}, 0.5, 3)
    with open(run / "test_predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "probability", "prediction", "measure", "predicted"])
        for patient, y, prob, measure, predicted in rows:
            w.writerow([filenames.encode(patient, 1, y, None, None, None), y, prob, int(prob >= 0.5), measure,
                        predicted])
    (run / "test_metrics.json").write_text(json.dumps({"epoch": 3, "threshold": 0.5, "n_images": len(rows),
                                                       "at_threshold": {}}))


def folds(n=24, seed=0):
    rng = np.random.default_rng(seed)
    t = np.round(rng.normal(-2.0, 1.2, n), 2)
    pred = np.round(t + rng.normal(0, 0.6, n), 2)
    rows = [(f"p{i}", int(t[i] <= -2.5), float(1 / (1 + np.exp(3 * (pred[i] + 2.5)))), t[i], pred[i])
            for i in range(n)]
    if not any(r[1] for r in rows[: n // 2]) or all(r[1] for r in rows[: n // 2]):
        raise AssertionError("made-up fold holds one class")
    return rows[: n // 2], rows[n // 2:]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cv_summary_pools_the_folds_measurements(tmp_path):
    save = tmp_path / "cv"
    a, b = folds()
    write_fold(save / "fold0", a, TSCORE)
    write_fold(save / "fold1", b, TSCORE)
    summary = cv_report.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=100)
    block = summary["measurement"]
    rows = a + b
    assert block["n_images"] == 24 and block["what"] == "out-of-fold"
    assert block["statistics"]["pearson_r"]["point"] == pytest.approx(pearsonr([r[4] for r in rows],
                                                                               [r[3] for r in rows])[0])
    saved = json.loads((save / "cv_summary.json").read_text())
    assert saved["measurement"]["statistics"]["mae"]["point"] == pytest.approx(
        mean_absolute_error([r[3] for r in rows], [r[4] for r in rows]))
    md, html = (save / "cv_report.md").read_text(), (save / "cv_report.html").read_text()
    assert "## Measurement: predicted against measured T-score" in md and "measure_scatter" not in md
    assert "Of the 24 scored out-of-fold images, 24 of 24 patients" in md
    assert html.count("data:image/png;base64,") == 4  # ROC/PR, calibration, decision + the scatter
    assert "T-score MAE" in cv_report.headline(summary)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cv_summary_of_binary_folds_has_no_measurement_and_mixed_targets_are_refused(tmp_path):
    a, b = folds()
    save = tmp_path / "binary"
    write_fold(save / "fold0", a, None)
    write_fold(save / "fold1", b, None)
    summary = cv_report.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=100)
    assert "measurement" not in summary and "Measurement" not in (save / "cv_report.md").read_text()
    assert (save / "cv_report.html").read_text().count("data:image/png;base64,") == 3
    mixed = tmp_path / "mixed"
    write_fold(mixed / "fold0", a, TSCORE)
    write_fold(mixed / "fold1", b, None)
    with pytest.raises(ValueError, match="different targets"):
        cv_report.write_cv_summary(mixed, [mixed / "fold0", mixed / "fold1"], n_boot=100)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_heldout_folds_say_the_measurement_needs_out_of_fold_predictions(tmp_path):
    a, _ = folds()
    save = tmp_path / "heldout"
    write_fold(save / "fold0", a, TSCORE, design="heldout")
    write_fold(save / "fold1", a, TSCORE, design="heldout")
    summary = cv_report.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=50)
    assert "measurement" not in summary and "ensemble" in summary
    assert "Measurement: the measurement statistics pool out-of-fold predictions" in (save / "cv_report.md").read_text()
