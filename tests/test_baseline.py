"""baseline.py: the clinical-only logistic regression, fitted on train, thresholded on val, blind to test."""
import math

import numpy as np
import pytest

from hipx.reports import baseline
from hipx.data import filenames
from hipx.stats import metrics


def make_split(folder, rows):
    """Empty files are enough: the baseline reads only names. rows: (patient, crop, label, sex, age, bmi)."""
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        (folder / filenames.encode(*row)).write_bytes(b"")


def age_driven_rows(prefix, n, seed, missing_age=()):
    """Older patients more often osteoporotic; sex and BMI noise; two crops for every third patient."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        age = float(rng.integers(45, 90))
        label = int(rng.random() < 1 / (1 + math.exp(-(age - 67) / 5)))
        sex = int(rng.random() < 0.7)
        bmi = round(float(rng.normal(25, 3)), 2)
        for crop in (1, 2) if i % 3 == 0 else (1,):
            rows.append((f"{prefix}{i}", crop, label, sex, None if i in missing_age else age, bmi))
    return rows


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    make_split(root / "train", age_driven_rows("a", 80, 0))
    make_split(root / "val", age_driven_rows("b", 30, 1, missing_age={0}))
    make_split(root / "test", age_driven_rows("c", 30, 2))
    return root


def test_fit_on_train_threshold_on_val(data):
    base = baseline.clinical_baseline(data)
    assert set(base) >= {"val", "test", "threshold", "coef", "intercept", "clinical_stats", "n_train"}
    for split in ("val", "test"):
        table = base[split]
        assert list(table.columns) == ["file", "patient", "label", "probability"]
        assert sorted(table["file"]) == sorted(p.name for p in (data / split).iterdir())
        assert table["patient"].tolist() == [filenames.decode(f).patient for f in table["file"]]
        assert table["probability"].between(0, 1).all()
    val = base["val"]
    assert base["threshold"] == metrics.youden_threshold(val["label"], val["probability"])
    assert base["coef"]["age"] > 0.5  # age drives the label; it must be picked up
    assert metrics.roc_auc(base["test"]["label"], base["test"]["probability"]) > 0.7


def test_missing_value_is_imputed_with_the_training_mean(data):
    base = baseline.clinical_baseline(data)
    stats = base["clinical_stats"]
    missing = base["val"].iloc[[0]]  # patient b0 has no age
    info = filenames.decode(missing["file"].iloc[0])
    assert math.isnan(info.age)
    # the same patient with the training mean age gets the same probability
    z = [(v - m) / s for v, m, s in zip((info.sex, stats["mean"][1], info.bmi), stats["mean"], stats["std"])]
    logit = base["intercept"] + sum(base["coef"][k] * v for k, v in zip(("sex", "age", "bmi"), z))
    assert missing["probability"].iloc[0] == pytest.approx(1 / (1 + math.exp(-logit)), rel=1e-6)  # float32 inputs


def test_no_test_value_influences_fit_or_threshold(data, tmp_path):
    before = baseline.clinical_baseline(data)
    for path in (data / "test").iterdir():  # flip every test label (and drop the test ages)
        i = filenames.decode(path)
        path.rename(path.with_name(filenames.encode(i.patient, i.crop, 1 - i.label, i.sex, None, i.bmi)))
    after = baseline.clinical_baseline(data)
    assert after["threshold"] == before["threshold"]
    assert after["coef"] == before["coef"] and after["intercept"] == before["intercept"]
    assert after["val"]["probability"].tolist() == before["val"]["probability"].tolist()
    assert (after["test"]["label"].to_numpy() == 1 - before["test"]["label"].to_numpy()).all()


def test_explicit_files_as_for_a_crossval_fold(data):
    files = {s: sorted((data / s).iterdir()) for s in ("train", "val", "test")}
    files["train"], files["val"] = files["train"] + files["val"][:10], files["val"][10:]
    base = baseline.clinical_baseline(files=files)
    assert base["n_train"] == len(files["train"]) and len(base["val"]) == len(files["val"])


def test_one_class_splits_are_refused(tmp_path):
    root = tmp_path / "data"
    make_split(root / "train", [(f"a{i}", 1, 0, 1, 60 + i, 25.0) for i in range(5)])
    make_split(root / "val", [(f"b{i}", 1, i % 2, 1, 60 + i, 25.0) for i in range(4)])
    make_split(root / "test", [(f"c{i}", 1, i % 2, 1, 60 + i, 25.0) for i in range(4)])
    with pytest.raises(ValueError, match="training split holds only label 0"):
        baseline.clinical_baseline(root)
    with pytest.raises(ValueError, match="files must name the images of train, val, test"):
        baseline.clinical_baseline(files={"train": []})


@pytest.mark.parametrize("sex,age,bmi,says", [
    (None, None, None, "sex missing, age missing, bmi missing"),
    (1, 70.0, None, "sex constant, age constant, bmi missing"),
])
def test_no_baseline_without_varying_clinical_values(tmp_path, sex, age, bmi, says):
    root = tmp_path / "data"
    for split, n in (("train", 10), ("val", 6), ("test", 6)):
        make_split(root / split, [(f"{split}{i}", 1, i % 2, sex, age, bmi) for i in range(n)])
    with pytest.raises(baseline.BaselineUnavailable, match=f"no clinical value varies in the training split \\({says}\\)"):
        baseline.clinical_baseline(root)


def test_one_varying_value_is_enough_for_a_baseline(tmp_path):
    root = tmp_path / "data"
    for split, n in (("train", 12), ("val", 6), ("test", 6)):
        make_split(root / split, [(f"{split}{i}", 1, i % 2, None, 50.0 + 10 * (i % 2) + i, None) for i in range(n)])
    assert baseline.clinical_baseline(root)["coef"]["age"] > 0
