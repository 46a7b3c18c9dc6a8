"""cv_report.py: the summary of the tested fold runs (cv_summary.json, cv_report.md)."""
import csv
import re
import json

import pytest

from hipx.reports import cv as cv_report
from hipx.data import filenames
from hipx.runs import runfiles


def write_fold(run, rows, threshold, design="oof", clinical=False, epoch=3):
    """A tested fold run folder: rows of (patient, label, probability); clinical: sex and age vary."""
    run.mkdir(parents=True)
    files = [filenames.encode(p, 1, y, *((i % 2, 60 + i, 25.0) if clinical else (None, None, None)))
             for i, (p, y, _) in enumerate(rows)]
    with open(run / "test_predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "probability", "prediction"])
        for f, (_, y, prob) in zip(files, rows):
            w.writerow([f, y, prob, int(prob >= threshold)])
    from hipx.stats import metrics
    y = [r[1] for r in rows]
    p = [r[2] for r in rows]
    m = metrics.compute_metrics(y, p, threshold)
    (run / "test_metrics.json").write_text(json.dumps(
        {"epoch": epoch, "threshold": threshold, "n_images": len(rows),
         "at_threshold": {k: (None if isinstance(v, float) and v != v else v) for k, v in m.items()}}))
    config = {**NETWORK, "cv_folds": 2, "cv_fold": int(run.name[-1]), "cv_design": design,
              "data_dir": str(run.parent / "no_data")}  # no manifest there: no subgroups unless data_dir is given
    (run / "config.json").write_text(json.dumps(config))
    # the checkpoint holds the threshold the test metrics must have used (no weights needed to summarise)
    runfiles.save_checkpoint(run / "best.pth", {}, config, {}, threshold, epoch)


NETWORK = {"model": "dense_net", "fusion": "early", "in_chans": 5, "image_size": [64, 37], "depth": 10,
           "growthRate": 4, "norm": "bn", "act": "relu", "stem": "downsample"}


@pytest.mark.filterwarnings("ignore::UserWarning")  # seven patients: some resamples hold one class
def test_oof_summary_pools_every_patient_with_ci_and_counts_folds(tmp_path):
    from hipx.stats import metrics
    save = tmp_path / "cv"
    fold0 = [("a", 1, 0.9), ("b", 0, 0.2), ("c", 1, 0.4), ("d", 0, 0.6)]
    fold1 = [("e", 1, 0.7), ("f", 1, 0.8), ("g", 1, 0.95)]  # one class only: its AUC is undefined
    write_fold(save / "fold0", fold0, 0.5)
    write_fold(save / "fold1", fold1, 0.75)
    summary = cv_report.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=200, seed=0)
    assert summary["design"] == "oof" and "every patient is tested exactly once" in summary["design_text"]
    pooled = summary["pooled"]
    rows = fold0 + fold1
    assert pooled["n_patients"] == 7 and pooled["n_images"] == 7
    auc = pooled["metrics"]["roc_auc"]
    assert auc["point"] == pytest.approx(metrics.roc_auc([r[1] for r in rows], [r[2] for r in rows]))
    assert auc["low"] <= auc["point"] <= auc["high"]
    # sensitivity from each fold's own decision: a, f, g positive; c (0.4 < 0.5) and e (0.7 < 0.75) missed
    assert pooled["metrics"]["sensitivity"]["point"] == pytest.approx(3 / 5)
    assert summary["per_metric"]["roc_auc"] == {"mean": 0.75, "sd": pytest.approx(float("nan"), nan_ok=True),
                                                "n_folds": 1, "of": 2}
    assert "baseline_roc_auc" not in summary["per_metric"] and "no clinical-only baseline" in summary["baseline_note"]
    md = (save / "cv_report.md").read_text()
    assert "Design: out-of-fold" in md and "Pooled out-of-fold result" in md
    assert f"| roc_auc | {auc['point']:.3f} ({auc['low']:.3f} to {auc['high']:.3f}) |" in md
    assert "| folds entered |  |  | 2 of 2 | 1 of 2 |" in md
    assert cv_report.headline(summary).startswith(f"pooled out-of-fold ROC AUC {auc['point']:.3f}")


@pytest.mark.filterwarnings("ignore::UserWarning")  # six patients: some resamples hold one class
def test_cv_report_html_has_no_literal_markdown_and_its_tables_scroll(tmp_path):
    """The per-fold table's mean row is bold in the HTML as in the Markdown (not '**mean ± SD**' as text),
    and every table sits in a box that scrolls sideways, so the twelve-column per-fold table stays on the page."""
    save = tmp_path / "cv"
    write_fold(save / "fold0", [("a", 1, 0.9), ("b", 0, 0.2), ("c", 1, 0.4)], 0.5)
    write_fold(save / "fold1", [("d", 1, 0.7), ("e", 0, 0.8), ("f", 0, 0.1)], 0.75)
    cv_report.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=50)
    assert "| **mean ± SD** |" in (save / "cv_report.md").read_text()
    html = (save / "cv_report.html").read_text()
    assert "**" not in html and "<td><strong>mean ± SD</strong></td>" in html
    assert html.count("<table>") == html.count('<div class="table-scroll"><table>') > 0
    assert ".table-scroll{max-width:100%;overflow-x:auto" in html
    # a figure is never broken across lines ("0.894 ±" above "0.032"): its cell does not wrap, prose does
    assert "td.num{white-space:nowrap}" in html
    assert re.search(r'<td class="num">0\.\d+ ± 0\.\d+</td>', html)
    assert '<td class="num">fold0</td>' not in html and "<td>fold0</td>" in html


def test_oof_summary_refuses_a_patient_tested_twice(tmp_path):
    save = tmp_path / "cv"
    write_fold(save / "fold0", [("a", 1, 0.9), ("b", 0, 0.2)], 0.5)
    write_fold(save / "fold1", [("a", 1, 0.7), ("c", 0, 0.1)], 0.5)
    with pytest.raises(ValueError, match="tested in more than one fold"):
        cv_report.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=50)


def test_summary_refuses_a_fold_whose_test_metrics_are_stale(tmp_path):
    """As runfiles.Run.test_metrics: metrics scored at another threshold than best.pth holds are refused."""
    save = tmp_path / "cv"
    write_fold(save / "fold0", [("a", 1, 0.9), ("b", 0, 0.2)], 0.5)
    write_fold(save / "fold1", [("c", 1, 0.7), ("d", 0, 0.1)], 0.5)
    runfiles.save_checkpoint(save / "fold1" / "best.pth", {}, {**NETWORK, "cv_folds": 2}, {}, 0.3, 3)
    with pytest.raises(ValueError, match=r"fold1: test_metrics.json used threshold 0.5 but best.pth holds 0.3"):
        cv_report.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=50)


def write_manifest(data, rows, column, values):
    """A data folder's manifest.csv: one train/ file per (patient, label, _) row with ``column``."""
    data.mkdir(parents=True, exist_ok=True)
    with open(data / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "patient", column])
        for (p, y, _), v in zip(rows, values):
            w.writerow([f"train/{filenames.encode(p, 1, y, None, None, None)}", p, v])


def write_clinical_data(data, folds, field):
    """A data folder holding the folds' images (named as :func:`write_fold` with ``clinical`` names them,
    empty files: only the names are read) and a manifest.csv with ``field`` per image."""
    (data / "train").mkdir(parents=True)
    names = [filenames.encode(p, 1, y, i % 2, 60 + i, 25.0) for rows in folds for i, (p, y, _) in enumerate(rows)]
    for name in names:
        (data / "train" / name).write_bytes(b"")
    with open(data / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "patient", "field"])
        for name, value in zip(names, field):
            w.writerow([f"train/{name}", filenames.decode(name).patient, value])


@pytest.mark.filterwarnings("ignore::UserWarning")  # few patients: some resamples hold one class
def test_oof_subgroups_pool_each_manifest_value_and_field_is_shown_by_default(tmp_path):
    from hipx.stats import metrics
    save, data = tmp_path / "cv", tmp_path / "data"
    fold0 = [("a", 1, 0.9), ("b", 0, 0.2), ("c", 1, 0.4), ("d", 0, 0.6), ("e", 1, 0.3)]
    fold1 = [("f", 1, 0.7), ("g", 0, 0.8), ("h", 1, 0.95), ("i", 0, 0.1), ("j", 0, 0.5)]
    rows = fold0 + fold1
    field = ["radiograph", "radiograph", "bone_only", "bone_only", "radiograph",
             "bone_only", "radiograph", "radiograph", "bone_only", "bone_only"]
    write_fold(save / "fold0", fold0, 0.5)
    write_fold(save / "fold1", fold1, 0.5)
    write_manifest(data, rows, "field", field)
    summary = cv_report.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=200, data_dir=data)
    groups = {g["value"]: g for g in summary["subgroups"]}
    assert sorted(groups) == ["bone_only", "radiograph"] and {g["column"] for g in groups.values()} == {"field"}
    for value, g in groups.items():
        part = [r for r, f in zip(rows, field) if f == value]
        assert g["n_images"] == g["n_patients"] == len(part)
        assert g["n_osteoporosis_images"] == sum(r[1] for r in part)
        assert g["roc_auc"]["point"] == pytest.approx(metrics.roc_auc([r[1] for r in part], [r[2] for r in part]))
    assert "## Subgroups" in (save / "cv_report.md").read_text()
    # a column named on purpose; one with a single class in a value has no AUC there
    write_manifest(data, rows, "hip", ["right"] * 9 + ["left"])
    summary = cv_report.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=50, by=["hip"], data_dir=data)
    left = [g for g in summary["subgroups"] if g["value"] == "left"][0]
    assert left["n_images"] == 1 and left["roc_auc"] is None
    assert "n/a (one class)" in (save / "cv_report.md").read_text()
    with pytest.raises(ValueError, match=r"--by sex: no such column in .*manifest.csv; it has patient, hip"):
        cv_report.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=50, by=["sex"], data_dir=data)
    # without the column the default shows no subgroups
    assert cv_report.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=50,
                                     data_dir=data)["subgroups"] == []
    # a manifest that misses tested images: refused when asked for, skipped (not fatal) by default
    write_manifest(data, rows[:-1], "field", field[:-1])
    with pytest.raises(ValueError, match=r"--by field: 1 tested image\(s\) are not in"):
        cv_report.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=50, by=["field"], data_dir=data)
    assert cv_report.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=50,
                                     data_dir=data)["subgroups"] == []


def test_heldout_summary_has_a_fold_ensemble_on_the_shared_test_set(tmp_path):
    from hipx.stats import metrics
    save = tmp_path / "cv"
    ids = [("a", 1), ("b", 0), ("c", 1), ("d", 0), ("e", 1), ("f", 0)]
    p0 = [0.9, 0.3, 0.4, 0.5, 0.8, 0.1]
    p1 = [0.7, 0.6, 0.6, 0.2, 0.4, 0.3]
    write_fold(save / "fold0", [(i, y, p) for (i, y), p in zip(ids, p0)], 0.5, "heldout", True)
    write_fold(save / "fold1", [(i, y, p) for (i, y), p in zip(ids, p1)], 0.3, "heldout", True)
    summary = cv_report.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=100)
    ens = summary["ensemble"]
    mean = [(a + b) / 2 for a, b in zip(p0, p1)]
    assert ens["metrics"]["roc_auc"]["point"] == pytest.approx(metrics.roc_auc([y for _, y in ids], mean))
    assert ens["threshold"] == pytest.approx(0.4) and "pooled" not in summary
    assert "baseline_note" not in summary  # clinical values vary here
    assert "Fold-ensemble test result" in (save / "cv_report.md").read_text()


def test_report_by_is_checked_with_one_line(tmp_path):
    import report
    save, data = tmp_path / "cv", tmp_path / "data"
    rows = [("a", 1, 0.9), ("b", 0, 0.2)]
    write_fold(save / "fold0", rows, 0.5)
    write_manifest(data, rows, "field", ["radiograph", "bone_only"])
    with pytest.raises(SystemExit, match="use it with --cv SAVE_DIR"):
        report.main(["--run", str(save / "fold0"), "--by", "field"])
    with pytest.raises(SystemExit, match=r"^--by site: no such column in .*manifest.csv; it has patient, field$"):
        report.main(["--cv", str(save), "--by", "site", "--data_dir", str(data), "--bootstrap", "20"])


@pytest.mark.filterwarnings("ignore::UserWarning")  # four patients: some resamples hold one class
def test_report_cv_takes_the_groups_lock(tmp_path, capsys):
    """report.py --cv rewrites the group's summary: while another job holds the group (main.py --folds
    writing its summary, another report) it is refused before anything is written; once free it works."""
    import report
    from hipx.core.cli import run_main
    save = tmp_path / "cv"
    write_fold(save / "fold0", [("a", 1, 0.9), ("b", 0, 0.2)], 0.5)
    write_fold(save / "fold1", [("c", 1, 0.7), ("d", 0, 0.4)], 0.5)
    claim = runfiles.claim_run(save)
    try:
        with pytest.raises(SystemExit) as exc:
            run_main(report.main, ["--cv", str(save), "--bootstrap", "20"])
        assert exc.value.code == 1
        assert "in use by another job" in capsys.readouterr().err
        assert not (save / "cv_summary.json").exists() and not (save / "cv_report.md").exists()
    finally:
        claim.release()
    report.main(["--cv", str(save), "--bootstrap", "20"])
    assert (save / "cv_summary.json").is_file()


@pytest.mark.filterwarnings("ignore::UserWarning")  # few patients: some resamples hold one class
def test_report_cv_by_prints_each_subgroups_pooled_auc_on_the_console(tmp_path, capsys):
    """``report.py --cv SAVE --by field`` says on the console what cv_report.md says: one line per value."""
    import report
    from hipx.stats import metrics
    save, data = tmp_path / "cv", tmp_path / "data"
    fold0 = [("a", 1, 0.9), ("b", 0, 0.2), ("c", 1, 0.4), ("d", 0, 0.6), ("e", 1, 0.3)]
    fold1 = [("f", 1, 0.7), ("g", 0, 0.8), ("h", 1, 0.95), ("i", 0, 0.1), ("j", 0, 0.5)]
    rows = fold0 + fold1
    field = ["radiograph"] * 6 + ["bone_only"] * 4
    write_fold(save / "fold0", fold0, 0.5)
    write_fold(save / "fold1", fold1, 0.5)
    write_manifest(data, rows, "field", field)
    summary = report.main(["--cv", str(save), "--by", "field", "--data_dir", str(data), "--bootstrap", "50"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("pooled out-of-fold ROC AUC") and out[0].endswith("cv_report.md")
    for value in ("bone_only", "radiograph"):
        part = [r for r, f in zip(rows, field) if f == value]
        auc = metrics.roc_auc([r[1] for r in part], [r[2] for r in part])
        ci = [g["roc_auc"] for g in summary["subgroups"] if g["value"] == value][0]
        line = [x for x in out if x.startswith(f"  field {value}: ")]
        assert line == [f"  field {value}: ROC AUC {auc:.3f} ({ci['low']:.3f} to {ci['high']:.3f}) over "
                        f"{len(part)} images of {len(part)} patients ({sum(r[1] for r in part)} osteoporosis)"]
    assert len(out) == 3


def small_clinical_cv(tmp_path):
    """Two tested folds of five patients each with sex and age, and a data folder whose manifest gives
    each image a field (six radiographs, four bone-only): small subgroups, whose resamples hold one class."""
    save, data = tmp_path / "cv", tmp_path / "data"
    fold0 = [("a", 1, 0.9), ("b", 0, 0.2), ("c", 1, 0.4), ("d", 0, 0.6), ("e", 1, 0.3)]
    fold1 = [("f", 1, 0.7), ("g", 0, 0.8), ("h", 1, 0.95), ("i", 0, 0.1), ("j", 0, 0.5)]
    write_fold(save / "fold0", fold0, 0.5, clinical=True)
    write_fold(save / "fold1", fold1, 0.5, clinical=True)
    write_clinical_data(data, [fold0, fold1], ["radiograph"] * 6 + ["bone_only"] * 4)
    return save, data


def test_resamples_left_out_of_subgroup_intervals_are_warned_once_and_explained_beside_the_tables(tmp_path):
    """Small subgroups: resamples holding one class are left out of their AUC intervals; one warning
    names every such subgroup, and the sentence beside each subgroup table says which and why."""
    import warnings
    from hipx.stats import confidence
    save, data = small_clinical_cv(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = cv_report.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=50, by=["field"],
                                             data_dir=data)
    dropped = [str(w.message) for w in caught if issubclass(w.category, confidence.ResamplesDropped)]
    manifest = [g for g in summary["subgroups"] if g["roc_auc"]["n_boot_valid"] < 50]
    clinical = [g for g in summary["pooled"]["clinical_subgroups"] if g["roc_auc"]["n_boot_valid"] < 50]
    assert manifest and clinical
    named = [m for m in dropped if "field " in m]
    assert len(named) == 1 and all(f"field {g['value']} {50 - g['roc_auc']['n_boot_valid']} of 50" in named[0]
                                   for g in manifest)
    banded = [m for m in dropped if "Sex " in m or "Age " in m or "BMI " in m]
    assert len(banded) == 1 and all(f"{g['variable']} {g['group']} {50 - g['roc_auc']['n_boot_valid']} of 50" in banded[0] for g in clinical)
    assert not [w for w in caught if "precision" in str(w.message) and "undefined" in str(w.message)]
    md = (save / "cv_report.md").read_text()
    for paragraph in ("By sex, age band and BMI band", "The pooled out-of-fold probabilities within each value"):
        text = [line for line in md.splitlines() if line.startswith(paragraph)][0]
        assert "some bootstrap resamples hold patients of one class only" in text and "resamples left out: " in text


def test_report_cv_console_is_log_lines_and_the_result(tmp_path):
    """What ``python report.py --cv`` prints: log lines in one format (no Python warning with its source
    line), the resamples left out said once, the headline and the subgroups on stdout."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    save, data = small_clinical_cv(tmp_path)
    done = subprocess.run([sys.executable, str(root / "report.py"), "--cv", str(save), "--by", "field", "--data_dir",
                           str(data), "--bootstrap", "50"], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(root)))
    assert done.returncode == 0, done.stderr
    log = done.stderr.splitlines()
    assert all(re.match(r"\d\d:\d\d:\d\d (INFO|WARNING) ", line) for line in log), done.stderr
    assert sum("some bootstrap resamples hold patients of one class only" in line for line in log) == 2  # bands, field
    assert not re.search(r"\.py:\d+: \w+Warning", done.stderr)
    out = done.stdout.splitlines()
    assert out[0].startswith("pooled out-of-fold ROC AUC") and [x.split(":")[0] for x in out[1:]] == [
        "  field bone_only", "  field radiograph"]
