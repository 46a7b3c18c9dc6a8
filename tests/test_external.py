"""external.py: a trained run scored on another hospital's data, with recalibration on a named part only."""
import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit

from hipx.core import cli
from hipx.stats import confidence
from hipx.reports import external
import main
from hipx.stats import metrics
import report
from hipx.runs import runfiles
import synthetic


def _hashes(folder):
    """sha256 of every file under ``folder`` outside external/."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and external.OUT_DIR not in p.relative_to(folder).parts}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained on site A, and a site-B folder."""
    root = tmp_path_factory.mktemp("external")
    synthetic.generate(root / "A", 24, seed=0, size=(64, 37))
    synthetic.generate(root / "B", 20, seed=1, size=(64, 37), site="B")
    main.main(["--model", "dense_net", "--depth", "10", "--data_dir", str(root / "A"), "--image_size", "64", "37",
               "--epoch", "2", "--batch_size", "4", "--workers", "0", "--device", "cpu", "--save_dir", "r",
               "--fold", "_LF", "--late_fuse", "True", "--out_root", str(root / "outs")])
    return root / "outs" / "r" / "fold_LF", root


def test_own_test_folder_reproduces_the_test_metrics_and_the_run_is_untouched(trained, tmp_path):
    run, root = trained
    own = tmp_path / "own"
    shutil.copytree(root / "A" / "test", own / "test")
    before = _hashes(run)
    result = external.validate(run, own, name="own", n_boot=100, device="cpu")
    stored = runfiles.read_json(run / runfiles.TEST_METRICS)["at_threshold"]
    for key, value in result["at_threshold"].items():
        if key in ("tp", "fp", "tn", "fn", "n", "n_pos"):
            assert value == stored[key], key
        elif stored.get(key) is not None and np.isfinite(value):
            assert value == pytest.approx(stored[key], abs=1e-6), key
    assert result["threshold"] == runfiles.load_checkpoint(run / runfiles.BEST)["threshold"]
    out = run / "external" / "own"
    for name in ("external_report.md", "external_report.html", "external_metrics.json", "external_predictions.csv"):
        assert (out / name).is_file()
    html = (out / "external_report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "external_figures/" not in html
    # the same images as the run's own test, so the case mix differs from development only by sampling
    assert [row["development"] is not None for row in result["case_mix"]] == [True] * 4
    assert _hashes(run) == before  # nothing of the run changed
    saved = (out / "external_metrics.json").read_bytes()
    with pytest.raises(external.ExternalError, match="exists.*choose another --name"):
        external.validate(run, own, name="own", n_boot=100, device="cpu")
    assert (out / "external_metrics.json").read_bytes() == saved
    assert not list((run / "external").glob(".*"))  # no temporary folder left


def test_site_b_with_recalibration_on_its_val_split_from_the_command_line(trained, capsys):
    run, root = trained
    before = _hashes(run)
    report.main(["--run", str(run), "--external", str(root / "B"), "--name", "B_recal", "--recalibrate", "intercept",
                 "--calibrate_on", "val", "--bootstrap", "50", "--data_dir", str(root / "A")])
    printed = capsys.readouterr().out
    assert printed.startswith("external B_recal: ") and "recalibrated (intercept on" in printed
    out = run / "external" / "B_recal"
    pred = pd.read_csv(out / "external_predictions.csv")
    manifest = synthetic.read_manifest(root / "B")
    assert len(pred) == len(manifest)  # every image of the folder
    assert (pred["part"] == "calibration").tolist() == (pred["split"] == "val").tolist()
    saved = json.loads((out / "external_metrics.json").read_text())
    assert saved["images"] == int((pred["part"] == "evaluation").sum())
    assert saved["parts"]["calibration"]["splits"] == ["val"]
    evaluation = pred[pred["part"] == "evaluation"]
    assert saved["as_trained"]["metrics"]["roc_auc"]["point"] == pytest.approx(
        metrics.roc_auc(evaluation["label"], evaluation["probability"]), abs=1e-6)
    val = pred[pred["part"] == "calibration"]
    fit = confidence.recalibration(val["label"], val["probability"])
    assert saved["recalibration"]["a"] == pytest.approx(fit["a"], abs=1e-5)
    ages = [row for row in saved["case_mix"] if row["variable"].startswith("Age")][0]
    assert ages["external"]["mean"] > ages["development"]["mean"] and ages["standardised_difference"] > 0
    md = (out / "external_report.md").read_text()
    assert "fitted on" in md and "which the recalibration never saw" in md and "## 5. Clinical usefulness" in md
    assert _hashes(run) == before


def test_recalibration_on_a_part_never_touches_the_rest():
    rng = np.random.default_rng(0)
    n = 120
    table = pd.DataFrame({"patient": [f"P{i // 2:03d}" for i in range(n)], "split": ["val"] * 40 + ["test"] * 80,
                          "label": (rng.random(n) < 0.4).astype(int)})
    table["probability"] = expit(rng.normal(size=n) + 1.5 * table["label"] - 0.8)
    part = external.calibration_part(table, "val", seed=0)
    assert part.sum() == 40
    base = external.numbers(table, part, 0.4, "logistic", n_boot=50, seed=0, interval="percentile")
    # change everything about the evaluated images: the recalibration does not move
    other = table.copy()
    other.loc[~part, "label"] = 1 - other.loc[~part, "label"]
    other.loc[~part, "probability"] = rng.random(int((~part).sum()))
    moved = external.numbers(other, part, 0.4, "logistic", n_boot=50, seed=0, interval="percentile")
    assert moved["recalibration"] == base["recalibration"]
    # change the calibration images: the numbers on the evaluated images as trained do not move
    third = table.copy()
    third.loc[part, "probability"] = expit(logit(third.loc[part, "probability"]) + 1.0)
    kept = external.numbers(third, part, 0.4, "logistic", n_boot=50, seed=0, interval="percentile")
    assert kept["as_trained"]["metrics"] == base["as_trained"]["metrics"]
    assert kept["recalibration"] != base["recalibration"]
    # the decisions stay the run's: the threshold goes through the same map
    assert base["recalibrated"]["confusion"] == base["as_trained"]["confusion"]


def test_a_share_of_patients_keeps_patients_whole_and_follows_the_seed():
    table = pd.DataFrame({"patient": [f"P{i // 2:03d}" for i in range(100)], "split": ["test"] * 100})
    a = external.calibration_part(table, "0.3", seed=1)
    assert table.loc[a, "patient"].nunique() == 15 and a.sum() == 30
    assert not set(table.loc[a, "patient"]) & set(table.loc[~a, "patient"])
    assert (external.calibration_part(table, "0.3", seed=1) == a).all()
    assert not (external.calibration_part(table, "0.3", seed=2) == a).all()
    for bad, message in (("1.5", "share of its patients between 0 and 1"), ("val", "has no val/ images"),
                         ("test", "every external image")):
        with pytest.raises(external.ExternalError, match=message):
            external.calibration_part(table, bad, seed=0)


def test_standardised_difference_hand_values():
    assert external.standardised_difference([1, 2, 3], [2, 3, 4], binary=False) == pytest.approx(1.0)
    # proportions 0.5 and 0.75: (0.75 - 0.5) / sqrt((0.25 + 0.1875) / 2)
    assert external.standardised_difference([0, 1, 0, 1], [1, 1, 1, 0], binary=True) == pytest.approx(
        0.25 / np.sqrt(0.21875))


@pytest.mark.parametrize("argv, message", [
    (["--name", "B"], "--name belongs to an external validation: add --external"),
    (["--external", "X", "--recalibrate", "intercept"], "--recalibrate and --calibrate_on go together"),
    (["--external", "X", "--name", "../up"], "--name '../up': give a plain folder name"),
])
def test_mistakes_get_one_line(trained, argv, message):
    run, root = trained
    argv = [a if a != "X" else str(root / "B") for a in argv]
    with pytest.raises(SystemExit, match=message):
        report.main(["--run", str(run), *argv])


def test_a_folder_of_one_class_is_one_line_before_anything_is_scored(trained, tmp_path, capsys):
    run, root = trained
    normal = tmp_path / "normal"
    normal.mkdir()
    from hipx.data import filenames
    kept = [p for split in ("train", "val", "test") for p in sorted((root / "B" / split).glob("*.png"))
            if filenames.decode(p).label == 0]
    for path in kept:
        (normal / path.name).write_bytes(path.read_bytes())
    before = _hashes(run)
    patients = len({filenames.decode(p).patient for p in kept})
    with pytest.raises(SystemExit) as stop:
        cli.run_main(report.main, ["--run", str(run), "--external", str(normal), "--bootstrap", "50"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 1 and len(err) == 1 and "Traceback" not in err[0]
    assert (f"--external {normal}: all {len(kept)} images (of {patients} patients) are normal (label 0), none with "
            "osteoporosis: the ROC AUC is undefined for one class") in err[0]
    assert _hashes(run) == before and not (run / "external" / "normal").exists()
    # recalibrated on a part of one class: refused alike, naming --calibrate_on
    table = pd.DataFrame({"patient": ["a", "b", "c", "d"], "label": [0, 0, 1, 0], "split": ["val", "val", "test",
                                                                                              "test"]})
    with pytest.raises(external.ExternalError, match="--calibrate_on val: all 2 images .* a recalibration needs both"):
        external.check_classes(table[table["split"] == "val"], "--calibrate_on val", "a recalibration needs both "
                               "classes")


def test_a_cross_validation_group_is_scored_by_its_fold_ensemble(trained, tmp_path):
    run, root = trained
    group = tmp_path / "cv"
    for fold in ("fold1", "fold2"):  # two copies of one model: the ensemble's mean is that model's probability
        shutil.copytree(run, group / fold, ignore=shutil.ignore_patterns(external.OUT_DIR))
    single = external.validate(run, root / "B", name="single_for_cv", n_boot=50, device="cpu")
    both = external.validate(group, root / "B", name="B", n_boot=50, device="cpu")
    assert both["model"] == {"kind": "fold ensemble", "folds": ["fold1", "fold2"]}
    assert both["at_threshold"] == pytest.approx(single["at_threshold"])
    assert (group / "external" / "B" / "external_report.md").read_text().count("the mean of its 2 fold models") == 1
