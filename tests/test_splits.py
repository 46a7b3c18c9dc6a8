"""splits.py: one patient-level, label-stratified rule for preprocessing, cross-validation and the demo data."""
import logging

import pytest

from hipx.data import filenames
from hipx.data import folds
from hipx.data import splits
import synthetic


def test_assign_splits_is_stratified_deterministic_and_patient_level():
    labels = {f"p{i}": int(i < 30) for i in range(100)}
    result = splits.assign_splits(labels, (0.7, 0.15, 0.15), seed=3)
    assert result == splits.assign_splits(labels, (0.7, 0.15, 0.15), seed=3)
    assert result != splits.assign_splits(labels, (0.7, 0.15, 0.15), seed=4)
    for split, (n_pos, n_neg) in {"train": (21, 49), "val": (5, 10), "test": (4, 11)}.items():
        members = [p for p, s in result.items() if s == split]
        assert sum(labels[p] for p in members) in (n_pos - 1, n_pos, n_pos + 1)
        assert abs(len(members) - (n_pos + n_neg)) <= 1


def test_allocation_by_largest_remainder_keeps_one_of_each_class_in_val_and_test():
    assert splits.allocate(315, splits.DEFAULT_FRACTIONS) == [221, 47, 47]  # the demo set's normal patients
    assert splits.allocate(10, (0.7, 0.15, 0.15)) == [7, 2, 1]  # remainders .5 .5 .5: first in order
    assert splits.allocate(3, (0.7, 0.15, 0.15)) == [1, 1, 1]  # largest remainder alone: 2, 1, 0
    assert splits.allocate(4, (0.7, 0.15, 0.15)) == [2, 1, 1]
    assert splits.allocate(2, (0.7, 0.15, 0.15)) == [2, 0, 0]  # too few for all three: as allocated
    assert splits.allocate(4, (0.8, 0.2, 0.0)) == [3, 1, 0]  # no test wanted: none given
    labels = {f"p{i}": int(i < 3) for i in range(20)}  # 3 osteoporotic patients
    result = splits.assign_splits(labels)
    assert sorted(result[p] for p in labels if labels[p]) == ["test", "train", "val"]


def test_assign_folds_partition_and_stratify():
    labels = {f"p{i}": int(i % 4 == 0) for i in range(40)}
    folds = splits.assign_folds(labels, 5, seed=0)
    assert set(folds) == set(labels) and set(folds.values()) == set(range(5))
    for k in range(5):
        members = [p for p, f in folds.items() if f == k]
        assert len(members) == 8 and sum(labels[p] for p in members) == 2


def test_folds_warn_when_a_class_has_fewer_patients_than_folds(caplog):
    with caplog.at_level(logging.WARNING, logger="splits"):
        splits.assign_folds({"a": 1, "b": 0, "c": 0, "d": 0}, 3)
    assert "only 1 patients with label 1 for 3 folds" in caplog.text


def test_crossval_deals_patients_with_the_shared_rule(tmp_path):
    rows = [(f"p{i}", crop, int(i % 3 == 0), 1, 60, 25.0) for i in range(23) for crop in range(1, 2 + i % 3)]
    for split, part in (("train", rows[:30]), ("val", rows[30:]), ("test", [("s0", 1, 0, 1, 60, 25.0)])):
        (tmp_path / split).mkdir()
        for row in part:
            (tmp_path / split / filenames.encode(*row)).write_bytes(b"")
    labels = splits.patient_labels((r[0], r[2]) for r in rows)
    expected = splits.assign_folds(labels, 4, seed=5)
    for fold in folds.crossval_splits(tmp_path, 4, seed=5):
        assert {filenames.decode(f).patient for f in fold["val"]} == {p for p, k in expected.items()
                                                                       if k == fold["fold"]}


def test_demo_generator_splits_patients_with_the_shared_rule(tmp_path):
    manifest = synthetic.generate(tmp_path / "d", 40, seed=2, size=(32, 20))
    patients = manifest.drop_duplicates("patient")
    expected = splits.assign_splits(dict(zip(patients["patient"], patients["label"])), seed=2)
    assert dict(zip(patients["patient"], patients["split"])) == expected


def test_patient_label_is_osteoporotic_if_any_image_is():
    assert splits.patient_labels([("a", 0), ("a", 1), ("b", 0)]) == {"a": 1, "b": 0}


def test_fractions_must_be_three_that_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        splits.assign_splits({"a": 0}, (0.5, 0.5, 0.5))


def test_shared_patients_names_each_patient_in_two_splits_with_its_files():
    files = {"train": ["d/train/a_1_0-1-60-20.png", "d/train/b_1_1-0-70-25.png"],
             "val": ["d/val/c_1_0-1-65-22.png"],
             "test": ["d/test/a_2_0-1-60-20.png", "d/test/c_2_0-1-65-22.png"]}
    assert splits.shared_patients(files) == {"a": {"train": ["a_1_0-1-60-20.png"], "test": ["a_2_0-1-60-20.png"]},
                                             "c": {"val": ["c_1_0-1-65-22.png"], "test": ["c_2_0-1-65-22.png"]}}
    assert splits.shared_patients({"train": files["train"], "val": files["val"]}) == {}
