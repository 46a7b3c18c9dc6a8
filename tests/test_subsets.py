"""subsets.py: nested, stratified, seeded patient subsets of a fold's training side for learning curves."""
import random
import re
from pathlib import Path

import pytest

from hipx.data import filenames
from hipx.data import folds
from hipx.data import subsets


def training_files(n_patients=60, prevalence=0.3, seed=0, age=None) -> list[Path]:
    """Names of 1 to 3 images per patient (the files need not exist: subsets read names only)."""
    rng = random.Random(seed)
    n_pos = round(prevalence * n_patients)
    out = []
    for i in range(n_patients):
        label = int(i < n_pos)
        for crop in range(1 + rng.randrange(3)):
            out.append(Path("data/train") / filenames.encode(f"P{i:03d}", crop, label, 1, age or 50 + i % 30, 24.5))
    return out


def patients(files):
    return {filenames.decode(f).patient for f in files}


def test_subsets_are_nested_and_keep_every_image_of_a_patient():
    files = training_files()
    out = subsets.nested_subsets(files, [1.0, 0.25, 0.75, 0.5], seed=0)
    assert [s["size"] for s in out] == [0.25, 0.5, 0.75, 1.0]  # smallest first
    assert [s["n_patients"] for s in out] == [15, 30, 45, 60]
    for small, large in zip(out, out[1:]):
        assert set(small["patients"]) < set(large["patients"])
        assert set(small["files"]) < set(large["files"])
    for s in out:
        assert patients(s["files"]) == set(s["patients"])
        chosen = set(s["patients"])  # every image of a chosen patient, none of the others
        assert s["files"] == [f for f in files if filenames.decode(f).patient in chosen]
    assert out[-1]["files"] == files


@pytest.mark.parametrize("prevalence", [0.1, 0.3, 0.5, 0.75])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_every_prefix_holds_each_class_within_one_patient_of_its_share(prevalence, seed):
    labels = subsets.training_labels(training_files(47, prevalence, seed))
    order = subsets.patient_order(labels, seed)
    assert sorted(order) == sorted(labels)
    share = sum(labels.values()) / len(labels)
    for n in range(1, len(order) + 1):
        positives = sum(labels[p] for p in order[:n])
        assert abs(positives - n * share) < 1, (n, positives, n * share)
        if n >= 2:
            assert 0 < positives < n  # both classes from two patients on: every subset can train


def test_same_seed_same_subsets_whatever_the_file_order_and_clinical_values():
    files = training_files()
    first = subsets.nested_subsets(files, [0.25, 0.5], seed=3)
    shuffled = random.Random(1).sample(files, len(files))
    again = subsets.nested_subsets(shuffled, [0.25, 0.5], seed=3)
    assert [s["patients"] for s in again] == [s["patients"] for s in first]
    # the subsets depend on patients and labels only: not on ages, BMIs (what the fusion modes read)
    other_clinical = subsets.nested_subsets(training_files(age=71.5), [0.25, 0.5], seed=3)
    assert [s["patients"] for s in other_clinical] == [s["patients"] for s in first]
    assert subsets.nested_subsets(files, [0.5], seed=4)[0]["patients"] != first[1]["patients"]
    assert subsets.nested_subsets(files, [0.5], seed=[3, 1])[0]["patients"] != first[1]["patients"]


def test_one_size_at_a_time_nests_too_so_a_resumed_curve_gets_the_same_patients():
    files = training_files()
    sizes = [0.25, 10, 0.5, "40", "1.0"]
    alone = {str(s): patients(subsets.subset_files(files, s, seed=[0, 2])) for s in sizes}
    together = subsets.nested_subsets(files, sizes, seed=[0, 2])
    assert [len(alone[str(s["size"])]) for s in together] == [10, 15, 30, 40, 60]
    for s in together:
        assert alone[str(s["size"])] == set(s["patients"])
    assert alone["10"] < alone["0.25"] < alone["0.5"] < alone["40"] < alone["1.0"]


def test_sizes_are_fractions_or_counts():
    assert subsets.resolve_sizes([0.25, 0.5, 1.0], 30) == [8, 15, 30]  # 7.5 rounds half up
    assert subsets.resolve_sizes([10, "20", "0.9", 1.0], 30) == [10, 20, 27, 30]


def test_command_line_sizes_keep_fractions_and_counts_apart():
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--learning_curve", nargs="+", type=subsets.parse_size)
    assert parser.parse_args(["--learning_curve", "0.25", "50", "1.0"]).learning_curve == [0.25, 50, 1.0]
    for bad, message in (("1", "write 1.0 for all the training patients"), ("1.5", "fraction 1.5 is outside (0, 1]"),
                         ("half", "size 'half' is not a number")):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
            subsets.parse_size(bad)


@pytest.mark.parametrize("sizes, message", [
    ([0.0], "fraction 0.0 is outside (0, 1]"),
    ([1.5], "fraction 1.5 is outside (0, 1]"),
    ([1], "is 1 patient(s); a subset needs 2 or more (one of each class); write 1.0"),
    (["1"], "write 1.0 for all the training patients"),
    ([0.01], "fraction 0.01 of 60 training patients is 1 patient(s)"),
    ([61], "asks for 61 patients; the training side holds 60"),
    ([0.5, 30], "sizes 0.5 and 30 both come to 30 of 60 training patients"),
    (["half"], "size 'half' is not a number"),
    ([True], "size True is not a number"),
    ([], "must be a non-empty list"),
])
def test_bad_sizes_are_named(sizes, message):
    with pytest.raises(ValueError) as error:
        subsets.nested_subsets(training_files(), sizes)
    assert message in str(error.value)


def test_a_training_side_with_one_class_or_an_unscored_image_is_refused():
    with pytest.raises(ValueError, match=r"need patients of both classes .* it holds label 0 \(60 patients\)"):
        subsets.nested_subsets(training_files(prevalence=0.0), [0.5])
    unscored = Path("data/unscored") / filenames.encode("U1", 0, None, 1, 60, 22.0)
    with pytest.raises(ValueError, match=r"U1_0_NA-1-60-22.png: label NA .* need label 0 or 1"):
        subsets.nested_subsets(training_files() + [unscored], [0.5])


def test_only_the_training_side_of_a_fold_is_subset(tmp_path):
    for f in training_files(80, 0.3):
        (tmp_path / "train").mkdir(exist_ok=True)
        (tmp_path / "train" / f.name).touch()  # names are all a split needs
    for fold, split in enumerate(folds.oof_splits(tmp_path, 4, seed=0)):
        before = {r: list(split[r]) for r in ("train", "val", "test")}
        chosen = subsets.subset_files(split["train"], 0.5, seed=[0, fold])
        assert set(chosen) < set(split["train"])
        assert not patients(chosen) & (patients(split["val"]) | patients(split["test"]))
        assert {r: list(split[r]) for r in ("train", "val", "test")} == before  # nothing else was touched
        assert len(patients(chosen)) == round(0.5 * len(patients(split["train"])) + 1e-9)
