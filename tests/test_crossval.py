"""crossval.py: K patient-level folds over train + val; test held out."""
import csv
import json
from collections import Counter

import pytest

import crossval
import filenames


def make_split(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        (folder / filenames.encode(*row)).write_bytes(b"")


@pytest.fixture
def data(tmp_path):
    """23 train+val patients, some with two or three images, a third osteoporotic; 4 test patients."""
    root = tmp_path / "data"
    rows = [(f"p{i}", crop, int(i % 3 == 0), 1, 60, 25.0) for i in range(23) for crop in range(1, 2 + i % 3)]
    make_split(root / "train", rows[:30])
    make_split(root / "val", rows[30:])
    make_split(root / "test", [(f"s{i}", 1, i % 2, 1, 60, 25.0) for i in range(4)])
    return root


def patients(files):
    return {filenames.decode(f).patient for f in files}


@pytest.mark.parametrize("k", [2, 5])
def test_folds_partition_patients(data, k):
    splits = crossval.crossval_splits(data, k, seed=3)
    pooled = sorted(p for s in ("train", "val") for p in (data / s).iterdir())
    assert [s["fold"] for s in splits] == list(range(k))
    val_patients = [patients(s["val"]) for s in splits]
    # every train+val patient is in exactly one validation fold; test patients in none
    counts = Counter(p for v in val_patients for p in v)
    assert set(counts) == patients(pooled) and set(counts.values()) == {1}
    for s in splits:
        assert not patients(s["train"]) & patients(s["val"])  # no patient on both sides of a fold
        assert sorted(s["train"] + s["val"]) == pooled  # every image used once per fold
        assert not any(f.parent.name == "test" for f in s["train"] + s["val"])
        labels = {filenames.decode(f).label for f in s["val"]}
        assert labels == {0, 1}  # stratified: 8 osteoporotic patients reach every fold
    sizes = [len(v) for v in val_patients]
    assert max(sizes) - min(sizes) <= 1
    assert crossval.crossval_splits(data, k, seed=3) == splits  # same seed, same folds


def test_manifest_fold_column_decides(data):
    pooled = sorted(p for s in ("train", "val") for p in (data / s).iterdir())
    fold_of = {p: int(p[1:]) % 3 for p in patients(pooled)}
    with open(data / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "patient", "split", "fold", "label"])
        for f in pooled:
            w.writerow([f"{f.parent.name}/{f.name}", filenames.decode(f).patient, f.parent.name,
                        fold_of[filenames.decode(f).patient], filenames.decode(f).label])
        for f in sorted((data / "test").iterdir()):
            w.writerow([f"test/{f.name}", filenames.decode(f).patient, "test", "NA", 0])
    splits = crossval.crossval_splits(data, 3, seed=0)
    for s in splits:
        assert patients(s["val"]) == {p for p, k in fold_of.items() if k == s["fold"]}
    with pytest.raises(ValueError, match=r"has folds \[0, 1, 2\], but 5 folds"):
        crossval.crossval_splits(data, 5)

    text = (data / "manifest.csv").read_text().splitlines()
    row = next(i for i, line in enumerate(text) if line.startswith("train/p2_2_"))
    text[row] = text[row].replace(",train,2,", ",train,0,", 1)  # the second image of p2 in another fold
    (data / "manifest.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match="patient p2 has images in folds"):
        crossval.crossval_splits(data, 3)


def test_too_many_folds_and_k_below_two_are_refused(data):
    with pytest.raises(ValueError, match="at least 30 patients"):
        crossval.crossval_splits(data, 30)
    with pytest.raises(ValueError, match="k >= 2"):
        crossval.crossval_splits(data, 1)



# --------------------------------------------------------------------------- out-of-fold design

@pytest.mark.parametrize("k", [2, 4])
def test_oof_every_patient_tested_exactly_once_and_no_patient_in_two_roles(data, k):
    splits = crossval.oof_splits(data, k, seed=5, val_fraction=0.25)
    everything = sorted(p for s in ("train", "val", "test") for p in (data / s).iterdir())
    tested = Counter(p for s in splits for p in patients(s["test"]))
    assert set(tested) == patients(everything) and set(tested.values()) == {1}  # the test split is pooled too
    for s in splits:
        roles = [patients(s[r]) for r in ("train", "val", "test")]
        assert not roles[0] & roles[1] and not roles[0] & roles[2] and not roles[1] & roles[2]
        assert sorted(s["train"] + s["val"] + s["test"]) == everything
        for r in ("train", "val"):
            assert {filenames.decode(f).label for f in s[r]} == {0, 1}  # carved stratified by label
        # the validation part is about a quarter of the patients outside the test fold
        n_rest = len(patients(everything)) - len(roles[2])
        assert abs(len(roles[1]) - 0.25 * n_rest) <= 2
    assert crossval.oof_splits(data, k, seed=5, val_fraction=0.25) == splits
    assert crossval.fold_files(data, "oof", k, 1, seed=5, val_fraction=0.25) == \
        {r: splits[1][r] for r in ("train", "val", "test")}


def test_design_auto_is_oof_without_a_test_split(data, tmp_path):
    assert crossval.resolve_design(data, "auto") == "heldout"
    assert crossval.resolve_design(data, "oof") == "oof"
    empty = tmp_path / "no_test"  # preprocess_filenames.py --split 1 0 0: empty val/ and test/
    make_split(empty / "train", [(f"p{i}", 1, i % 2, 1, 60, 25.0) for i in range(12)])
    (empty / "val").mkdir()
    (empty / "test").mkdir()
    assert crossval.resolve_design(empty, "auto") == "oof"
    splits = crossval.oof_splits(empty, 3)
    assert sorted(f for s in splits for f in s["test"]) == sorted((empty / "train").iterdir())
    with pytest.raises(ValueError, match="unknown cross-validation design 'loo'"):
        crossval.resolve_design(data, "loo")


def test_config_files_follow_the_design(data):
    oof = crossval.config_files({"cv_folds": 3, "cv_fold": 2, "cv_seed": 1, "cv_design": "oof", "cv_val": 0.3}, data)
    assert oof == crossval.fold_files(data, "oof", 3, 2, seed=1, val_fraction=0.3)
    old = crossval.config_files({"cv_folds": 3, "cv_fold": 0, "seed": 4}, data)  # a run from before designs
    assert old["val"] == crossval.crossval_splits(data, 3, 4)[0]["val"]
    assert [f.parent.name for f in old["test"]] == ["test"] * 4
    assert crossval.config_files({"seed": 0}, data) is None


# --------------------------------------------------------------------------- the summary

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
    import metrics
    y = [r[1] for r in rows]
    p = [r[2] for r in rows]
    m = metrics.compute_metrics(y, p, threshold)
    (run / "test_metrics.json").write_text(json.dumps(
        {"epoch": epoch, "threshold": threshold, "n_images": len(rows),
         "at_threshold": {k: (None if isinstance(v, float) and v != v else v) for k, v in m.items()}}))
    (run / "config.json").write_text(json.dumps({"cv_folds": 2, "cv_fold": int(run.name[-1]), "cv_design": design}))


@pytest.mark.filterwarnings("ignore::UserWarning")  # seven patients: some resamples hold one class
def test_oof_summary_pools_every_patient_with_ci_and_counts_folds(tmp_path):
    import metrics
    save = tmp_path / "cv"
    fold0 = [("a", 1, 0.9), ("b", 0, 0.2), ("c", 1, 0.4), ("d", 0, 0.6)]
    fold1 = [("e", 1, 0.7), ("f", 1, 0.8), ("g", 1, 0.95)]  # one class only: its AUC is undefined
    write_fold(save / "fold0", fold0, 0.5)
    write_fold(save / "fold1", fold1, 0.75)
    summary = crossval.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=200, seed=0)
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
    assert "| folds entered | | | 2 of 2 | 1 of 2 |" in md
    assert crossval.headline(summary).startswith(f"pooled out-of-fold ROC AUC {auc['point']:.3f}")


def test_oof_summary_refuses_a_patient_tested_twice(tmp_path):
    save = tmp_path / "cv"
    write_fold(save / "fold0", [("a", 1, 0.9), ("b", 0, 0.2)], 0.5)
    write_fold(save / "fold1", [("a", 1, 0.7), ("c", 0, 0.1)], 0.5)
    with pytest.raises(ValueError, match="tested in more than one fold"):
        crossval.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=50)


def write_manifest(data, rows, column, values):
    """A data folder's manifest.csv: one train/ file per (patient, label, _) row with ``column``."""
    data.mkdir(parents=True, exist_ok=True)
    with open(data / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "patient", column])
        for (p, y, _), v in zip(rows, values):
            w.writerow([f"train/{filenames.encode(p, 1, y, None, None, None)}", p, v])


@pytest.mark.filterwarnings("ignore::UserWarning")  # few patients: some resamples hold one class
def test_oof_subgroups_pool_each_manifest_value_and_field_is_shown_by_default(tmp_path):
    import metrics
    save, data = tmp_path / "cv", tmp_path / "data"
    fold0 = [("a", 1, 0.9), ("b", 0, 0.2), ("c", 1, 0.4), ("d", 0, 0.6), ("e", 1, 0.3)]
    fold1 = [("f", 1, 0.7), ("g", 0, 0.8), ("h", 1, 0.95), ("i", 0, 0.1), ("j", 0, 0.5)]
    rows = fold0 + fold1
    field = ["radiograph", "radiograph", "bone_only", "bone_only", "radiograph",
             "bone_only", "radiograph", "radiograph", "bone_only", "bone_only"]
    write_fold(save / "fold0", fold0, 0.5)
    write_fold(save / "fold1", fold1, 0.5)
    write_manifest(data, rows, "field", field)
    summary = crossval.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=200, data_dir=data)
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
    summary = crossval.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=50, by=["hip"], data_dir=data)
    left = [g for g in summary["subgroups"] if g["value"] == "left"][0]
    assert left["n_images"] == 1 and left["roc_auc"] is None
    assert "n/a (one class)" in (save / "cv_report.md").read_text()
    with pytest.raises(ValueError, match=r"--by sex: no such column in .*manifest.csv; it has patient, hip"):
        crossval.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=50, by=["sex"], data_dir=data)
    # without the column the default shows no subgroups
    assert crossval.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=50,
                                     data_dir=data)["subgroups"] == []
    # a manifest that misses tested images: refused when asked for, skipped (not fatal) by default
    write_manifest(data, rows[:-1], "field", field[:-1])
    with pytest.raises(ValueError, match=r"--by field: 1 tested image\(s\) are not in"):
        crossval.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=50, by=["field"], data_dir=data)
    assert crossval.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=50,
                                     data_dir=data)["subgroups"] == []


def test_heldout_summary_has_a_fold_ensemble_on_the_shared_test_set(tmp_path):
    import metrics
    save = tmp_path / "cv"
    ids = [("a", 1), ("b", 0), ("c", 1), ("d", 0), ("e", 1), ("f", 0)]
    p0 = [0.9, 0.3, 0.4, 0.5, 0.8, 0.1]
    p1 = [0.7, 0.6, 0.6, 0.2, 0.4, 0.3]
    write_fold(save / "fold0", [(i, y, p) for (i, y), p in zip(ids, p0)], 0.5, "heldout", True)
    write_fold(save / "fold1", [(i, y, p) for (i, y), p in zip(ids, p1)], 0.3, "heldout", True)
    summary = crossval.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=100)
    ens = summary["ensemble"]
    mean = [(a + b) / 2 for a, b in zip(p0, p1)]
    assert ens["metrics"]["roc_auc"]["point"] == pytest.approx(metrics.roc_auc([y for _, y in ids], mean))
    assert ens["threshold"] == pytest.approx(0.4) and "pooled" not in summary
    assert "baseline_note" not in summary  # clinical values vary here
    assert "Fold-ensemble test result" in (save / "cv_report.md").read_text()


@pytest.mark.slow
def test_main_folds_oof_tests_every_patient_once_and_writes_the_summary(tiny_data, tmp_path):
    import main
    outs = tmp_path / "outs"
    main.main(["--model", "dense_net", "--depth", "10", "--data_dir", str(tiny_data), "--image_size", "64", "37",
               "--epoch", "1", "--batch_size", "4", "--workers", "0", "--device", "cpu", "--save_dir", "r",
               "--out_root", str(outs), "--bootstrap", "30", "--folds", "3", "--cv", "oof", "--cv_val", "0.25",
               "--image_only"])
    everything = {p.name for s in ("train", "val", "test") for p in (tiny_data / s).iterdir()}
    tested = Counter()
    for k in range(3):
        run = outs / "r" / f"fold{k}"
        config = json.loads((run / "config.json").read_text())
        assert (config["cv_design"], config["cv_folds"], config["cv_fold"]) == ("oof", 3, k)
        with open(run / "test_predictions.csv", newline="") as fh:
            test = {row["file"] for row in csv.DictReader(fh)}
        with open(run / "val_predictions.csv", newline="") as fh:
            val = {row["file"] for row in csv.DictReader(fh)}
        assert not patients(test) & patients(val)
        # the report of a fold describes the fold's own three parts (read back from its config)
        assert json.loads((run / "report_metrics.json").read_text())["data"]["test"]["images"] == len(test)
        tested.update(test)
    assert set(tested) == everything and set(tested.values()) == {1}
    summary = json.loads((outs / "r" / "cv_summary.json").read_text())
    assert summary["design"] == "oof" and summary["pooled"]["n_images"] == len(everything)
    assert "Design: out-of-fold" in (outs / "r" / "cv_report.md").read_text()


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
