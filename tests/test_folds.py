"""folds.py: K patient-level folds over train + val (test held out), or out-of-fold over everything."""
import csv
from collections import Counter

import pytest

from hipx.data import filenames
from hipx.data import folds


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
    splits = folds.crossval_splits(data, k, seed=3)
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
    assert folds.crossval_splits(data, k, seed=3) == splits  # same seed, same folds


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
    splits = folds.crossval_splits(data, 3, seed=0)
    for s in splits:
        assert patients(s["val"]) == {p for p, k in fold_of.items() if k == s["fold"]}
    with pytest.raises(ValueError, match=r"has folds \[0, 1, 2\], but 5 folds"):
        folds.crossval_splits(data, 5)

    text = (data / "manifest.csv").read_text().splitlines()
    row = next(i for i, line in enumerate(text) if line.startswith("train/p2_2_"))
    text[row] = text[row].replace(",train,2,", ",train,0,", 1)  # the second image of p2 in another fold
    (data / "manifest.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match="patient p2 has images in folds"):
        folds.crossval_splits(data, 3)


def test_too_many_folds_and_k_below_two_are_refused(data):
    with pytest.raises(ValueError, match="at least 30 patients"):
        folds.crossval_splits(data, 30)
    with pytest.raises(ValueError, match="k >= 2"):
        folds.crossval_splits(data, 1)



# --------------------------------------------------------------------------- out-of-fold design

@pytest.mark.parametrize("k", [2, 4])
def test_oof_every_patient_tested_exactly_once_and_no_patient_in_two_roles(data, k):
    splits = folds.oof_splits(data, k, seed=5, val_fraction=0.25)
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
    assert folds.oof_splits(data, k, seed=5, val_fraction=0.25) == splits
    assert folds.fold_files(data, "oof", k, 1, seed=5, val_fraction=0.25) == \
        {r: splits[1][r] for r in ("train", "val", "test")}


def test_design_auto_is_oof_without_a_test_split(data, tmp_path):
    assert folds.resolve_design(data, "auto") == "heldout"
    assert folds.resolve_design(data, "oof") == "oof"
    empty = tmp_path / "no_test"  # preprocess_filenames.py --split 1 0 0: empty val/ and test/
    make_split(empty / "train", [(f"p{i}", 1, i % 2, 1, 60, 25.0) for i in range(12)])
    (empty / "val").mkdir()
    (empty / "test").mkdir()
    assert folds.resolve_design(empty, "auto") == "oof"
    splits = folds.oof_splits(empty, 3)
    assert sorted(f for s in splits for f in s["test"]) == sorted((empty / "train").iterdir())
    with pytest.raises(ValueError, match="unknown cross-validation design 'loo'"):
        folds.resolve_design(data, "loo")


def test_config_files_follow_the_design(data):
    oof = folds.config_files({"cv_folds": 3, "cv_fold": 2, "cv_seed": 1, "cv_design": "oof", "cv_val": 0.3}, data)
    assert oof == folds.fold_files(data, "oof", 3, 2, seed=1, val_fraction=0.3)
    old = folds.config_files({"cv_folds": 3, "cv_fold": 0, "seed": 4}, data)  # a run from before designs
    assert old["val"] == folds.crossval_splits(data, 3, 4)[0]["val"]
    assert [f.parent.name for f in old["test"]] == ["test"] * 4
    assert folds.config_files({"seed": 0}, data) is None


# --------------------------------------------------------------------------- the summary


def test_the_folds_are_described_once_however_often_they_are_read(data, tmp_path, caplog):
    """A cross-validation's report reads each fold's images several times (baseline, data section);
    the line describing the folds is logged once per data folder, not once per read."""
    caplog.set_level("INFO", logger=folds.logger.name)
    for fold in (0, 1, 2, 0):
        folds.fold_files(data, "oof", 3, fold, seed=5)
    folds.crossval_splits(data, 3, seed=5)
    folds.crossval_splits(data, 3, seed=5)
    lines = [r.getMessage() for r in caplog.records if "cross-validation over" in r.getMessage()]
    assert len(lines) == 2 and str(data) in lines[0] and "out-of-fold" in lines[0] and "train+val" in lines[1]
    other = tmp_path / "other"
    make_split(other / "train", [(f"q{i}", 1, i % 2, 1, 60, 25.0) for i in range(12)])
    folds.oof_splits(other, 3, seed=5)
    assert sum(str(other) in r.getMessage() for r in caplog.records) == 1  # another folder is told of
