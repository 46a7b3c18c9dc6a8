"""main.py --folds K --learning_curve: every fold trained again on nested subsets of its training patients
(outs/<save_dir>/lc_<size>/), the curve of the network and of the clinical baseline in the CV summary,
resumable size by size (issue 31). Generated data: 60 demo patients at 88 x 51, 3 folds, 2 epochs."""
from __future__ import annotations

import base64
import csv
import json
import re
import shutil
from pathlib import Path

import pytest

import main
from hipx.core.cli import UserError
from hipx.core.runconfig import RunConfig
from hipx.data import filenames
from hipx.reports import cv as cv_report
from hipx.runs import runchecks, runfiles

SIZES = ("0.25", "0.5")
FOLDS = 3
FLAGS = ["--model", "dense_net", "--depth", "10", "--growthRate", "4", "--image_size", "88", "51", "--epoch", "2",
         "--batch_size", "8", "--workers", "0", "--device", "cpu", "--cpus", "1", "--deterministic",
         "--bootstrap", "200", "--fold", "_r", "--folds", str(FOLDS), "--cv", "oof"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from hipx.prepare import synthetic

    root = tmp_path_factory.mktemp("lc") / "data"
    synthetic.generate(root, 60, seed=3, size=(88, 51))
    return root


@pytest.fixture(scope="module")
def outs(data, tmp_path_factory) -> Path:
    """The cross-validation with its learning curve, made once and never changed by a test."""
    outs = tmp_path_factory.mktemp("outs")
    main.main([*FLAGS, "--data_dir", str(data), "--out_root", str(outs), "--save_dir", "lc",
               "--learning_curve", *SIZES, "--target_auc", "0.8"])
    return outs


def data_files(run: Path) -> dict[str, list[str]]:
    with open(run / runfiles.DATA_FILES, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {split: [r["file"] for r in rows if r["split"] == split] for split in ("train", "val", "test")}


def patients(files) -> set[str]:
    return {filenames.decode(f).patient for f in files}


@pytest.mark.slow
def test_sub_runs_train_on_nested_stratified_subsets_with_the_folds_own_validation_and_test(outs, data):
    group = outs / "lc"
    for k in range(FOLDS):
        full = data_files(group / f"fold_r{k}")
        parts = [data_files(group / runfiles.learning_curve_folder(float(s)) / f"fold_r{k}") for s in SIZES] + [full]
        everyone = patients(full["train"])
        share = sum(filenames.decode(f).label for f in full["train"]) / len(full["train"])
        for size, part in zip([*map(float, SIZES), 1.0], parts):
            assert part["val"] == full["val"] and part["test"] == full["test"]  # only the training side is subset
            chosen = patients(part["train"])
            assert len(chosen) == int(size * len(everyone) + 0.5)
            # a patient comes with every image they have in the fold's training side, never split
            assert sorted(part["train"]) == sorted(f for f in full["train"] if filenames.decode(f).patient in chosen)
            labels = {filenames.decode(f).patient: filenames.decode(f).label for f in part["train"]}
            assert 0 < sum(labels.values()) < len(labels)  # both classes
        for small, large in zip(parts, parts[1:]):
            assert set(small["train"]) < set(large["train"])  # nested
        config = RunConfig.from_dict(json.loads((group / "lc_0.25" / f"fold_r{k}" / runfiles.CONFIG).read_text()))
        assert (config.cv_subset, config.cv_fold, config.save_dir) == (0.25, k, "lc/lc_0.25")
        # the same patients for every mode: the subset depends on the folds and the seed, not the network
        for fusion in ("late", "image", "residual"):
            again = runfiles.split_files(config.replace(fusion=fusion), data)["train"]
            assert sorted(Path(f).name for f in again) == sorted(Path(f).name for f in parts[0]["train"])


@pytest.mark.slow
def test_the_report_holds_the_curve_and_its_numbers_are_the_summarys(outs):
    group = outs / "lc"
    summary = json.loads((group / runfiles.CV_SUMMARY).read_text())
    curve = summary["learning_curve"]
    assert [p["size"] for p in curve["points"]] == [0.25, 0.5, 1.0]
    assert [p["n_patients"] for p in curve["points"]] == sorted(p["n_patients"] for p in curve["points"])
    # the full size is the cross-validation itself: its point is the pooled AUC with the same interval
    pooled = summary["pooled"]
    for point, auc in ((curve["points"][-1], pooled["metrics"]["roc_auc"]),
                       (curve["baseline_points"][-1], pooled["baseline"]["metrics"]["roc_auc"])):
        assert (point["auc"], point["low"], point["high"]) == (auc["point"], auc["low"], auc["high"])
    fit = curve["fit"]
    assert fit["n_points"] == 3 and [e["multiple"] for e in fit["extrapolation"]] == [2, 5, 10]
    assert fit["target"]["auc"] == 0.8 and curve["baseline_fit"] is not None

    report = (group / runfiles.CV_REPORT).read_text()
    assert report == cv_report.render_cv_report("lc", summary)  # every number of the report is cv_summary.json's
    assert "## Learning curve: would more patients help?" in report and f"> {fit['verdict']}" in report
    for p, b in zip(curve["points"], curve["baseline_points"]):
        size = "1.0 (the cross-validation)" if p["size"] == 1.0 else f"{p['size']:g}"
        assert (f"| {size} | {p['n_patients']:g} | {p['auc']:.3f} ({p['low']:.3f} to {p['high']:.3f}) | "
                f"{b['auc']:.3f} ({b['low']:.3f} to {b['high']:.3f}) |") in report
    ten = fit["extrapolation"][2]
    assert f"| {ten['n_patients']:g} | 10 | {ten['auc']:.3f} ({ten['low']:.3f} to {ten['high']:.3f}) |" in report
    assert f"trains each model on {curve['points'][-1]['n_patients']:g} of its 60 patients" in report
    html = (group / runfiles.CV_REPORT_HTML).read_text()
    assert html.count(fit["verdict"][:80]) == 1
    figure = re.search(r'<img alt="Pooled AUC against training patients \(log scale\)[^"]*" '
                       r'src="data:image/png;base64,([^"]+)"', html)
    assert figure and base64.b64decode(figure.group(1))[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_out_of_fold_curves_also_give_the_mean_within_folds(outs):
    """Out of fold the report adds each size's mean of the folds' own test AUCs (pooling mixes fold models'
    probability scales), with its own fit, for the network and the clinical baseline."""
    import numpy as np
    import pandas as pd

    from hipx.stats import metrics

    group = outs / "lc"
    curve = json.loads((group / runfiles.CV_SUMMARY).read_text())["learning_curve"]
    within = curve["within_folds"]
    assert [p["n_patients"] for p in within["points"]] == [p["n_patients"] for p in curve["points"]]
    folds = sorted(group.glob("fold*"))
    assert len(folds) == FOLDS
    aucs = []
    for fold in folds:
        pred = pd.read_csv(fold / "test_predictions.csv")
        aucs.append(metrics.roc_auc(pred["label"], pred["probability"]))
    assert within["points"][-1]["auc"] == pytest.approx(float(np.mean(aucs)))
    assert all(p["low"] <= p["auc"] <= p["high"] for p in within["points"] + within["baseline_points"])
    assert within["fit"]["n_points"] == 3
    report = (group / runfiles.CV_REPORT).read_text()
    assert "Within folds. The same models, scored within their own test folds." in report


@pytest.mark.slow
def test_resume_after_deleting_one_sizes_fold_remakes_only_it(outs, tmp_path):
    copy = Path(shutil.copytree(outs, tmp_path / "outs"))
    group = copy / "lc"
    gone = group / "lc_0.5" / "fold_r1"
    kept = {p: p.read_bytes() for p in group.glob("**/best.pth") if p.parent != gone}
    before = {name: (gone / name).read_bytes() for name in (runfiles.DATA_FILES, "test_predictions.csv")}
    summary = (group / runfiles.CV_SUMMARY).read_text()
    shutil.rmtree(gone)
    main.main(["--resume", "--save_dir", "lc", "--fold", "_r", "--folds", str(FOLDS), "--out_root", str(copy),
               "--workers", "0"])
    assert {p: p.read_bytes() for p in kept} == kept  # every other fold of every size stays as it was
    assert {name: (gone / name).read_bytes() for name in before} == before  # the same patients, the same result
    assert (group / runfiles.CV_SUMMARY).read_text() == summary


def test_learning_curve_flags_are_refused_where_they_make_no_sense(tiny_data, tmp_path):
    base = ["--data_dir", str(tiny_data), "--out_root", str(tmp_path / "outs"), "--save_dir", "x"]
    for extra, message in ((["--learning_curve"], "add --folds K"),
                           (["--target_auc", "0.8", "--folds", "2"], "add --learning_curve"),
                           (["--folds", "2", "--learning_curve", "--target_auc", "0.4"], "within \\(0.5, 1\\)")):
        with pytest.raises(SystemExit, match=message):
            main.main([*base, *extra])
    with pytest.raises(SystemExit):  # argparse: one patient is no subset
        main.main([*base, "--folds", "2", "--learning_curve", "1"])
    # sizes that do not fit a fold's training patients: one line naming the fold, before anything is written
    for sizes, message in ((["0.01"], "fold 0 trains on .* patients: .*0.01.* a subset needs 2 or more"),
                           (["1.0"], "1.0 is the cross-validation itself"),
                           (["0.5", "0.51"], "both come to")):
        with pytest.raises(UserError, match=message):
            main.main([*base, "--folds", "2", "--cv", "oof", "--learning_curve", *sizes])
    assert not (tmp_path / "outs" / "x").exists()


def test_a_learning_curve_folds_resume_command_continues_its_whole_cross_validation():
    cfg = RunConfig(save_dir="lc/lc_0.25", fold="_r1", cv_folds=3, cv_fold=1, cv_subset=0.25)
    assert runchecks.resume_command(cfg).endswith("--resume --save_dir lc --fold _r --folds 3")
    assert runfiles.learning_curve_folder(0.25) == "lc_0.25" and runfiles.learning_curve_folder(50) == "lc_50"


@pytest.mark.slow
def test_report_cv_summarises_the_curve_again_for_another_target(outs, tmp_path):
    import report

    group = Path(shutil.copytree(outs / "lc", tmp_path / "lc"))
    before = json.loads((group / runfiles.CV_SUMMARY).read_text())["learning_curve"]
    report.main(["--cv", str(group), "--target_auc", "0.55"])
    after = json.loads((group / runfiles.CV_SUMMARY).read_text())["learning_curve"]
    assert after["points"] == before["points"] and after["baseline_points"] == before["baseline_points"]
    assert after["fit"]["target"]["auc"] == 0.55 and after["target_auc"] == 0.55
    assert "AUC 0.550" in (group / runfiles.CV_REPORT).read_text()
    with pytest.raises(SystemExit, match="use it with --cv"):
        report.main(["--run", str(group / "fold_r0"), "--target_auc", "0.7"])
