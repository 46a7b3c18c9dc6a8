"""scripts/texture_check.py: the texture yardstick scores every image once, out of fold."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from hipx.data import folds  # noqa: E402
from hipx.stats import metrics  # noqa: E402
import texture_check  # noqa: E402
from conftest import write_split  # noqa: E402


@pytest.fixture
def labelled(tmp_path):
    """24 patients in train/, two images each; write_split draws label 0 with brighter bone."""
    root = tmp_path / "data"
    write_split(root / "train", [(f"p{i}", crop, i % 2, 1, 60, 25.0) for i in range(24) for crop in (1, 2)])
    return root


def test_every_image_is_scored_once_by_the_fold_that_never_saw_its_patient(labelled, capsys):
    pooled = texture_check.out_of_fold(labelled, folds=4, seed=0)
    assert len(pooled) == 48 and pooled["file"].is_unique
    for split in folds.oof_splits(labelled, 4, 0):
        tested = {Path(f).name for f in split["test"]}
        assert set(pooled.loc[pooled["file"].isin(tested), "patient"]).isdisjoint(
            {Path(f).name.split("_")[0] for f in split["train"] + split["val"]})
    # the drawn difference is a brightness/texture one: the yardstick must see it
    assert metrics.roc_auc(pooled["label"], pooled["probability"]) > 0.9
    assert texture_check.main([str(labelled), "--folds", "4", "--bootstrap", "50"]) == 0
    assert capsys.readouterr().out.startswith("texture model, pooled out-of-fold ROC AUC ")


def test_features_ignore_a_segmentations_black_background():
    import numpy as np
    bone = np.repeat(np.linspace(60, 200, 224)[:, None], 128, axis=1).astype(np.uint8)  # smooth: resizing keeps it
    padded = np.zeros((224, 256), np.uint8)
    padded[:, :128] = bone
    a = texture_check.texture_features(bone)
    b = texture_check.texture_features(padded)
    assert a.shape == (21,)
    assert np.allclose(a[:5], b[:5], atol=0.02)  # intensity percentiles of the bone, not of the black


def test_learning_curve_fits_on_the_networks_nested_training_subsets(labelled, monkeypatch, capsys):
    """--learning_curve: each size's fold model is fitted on that size's nested subset of the fold's
    training patients (the network's subsets), never on its test patients, and the curve is fitted."""
    from hipx.data import subsets

    seen = []
    real = texture_check.make_pipeline

    def recording(*steps):
        model = real(*steps)
        fit = model.fit
        model.fit = lambda x, y: (seen.append(len(y)), fit(x, y))[1]
        return model

    monkeypatch.setattr(texture_check, "make_pipeline", recording)
    pooled = texture_check.out_of_fold(labelled, folds=4, seed=0, size=0.5)
    splits = folds.oof_splits(labelled, 4, 0)
    assert seen == [len(subsets.subset_files(s["train"], 0.5, [0, k])) for k, s in enumerate(splits)]
    assert len(pooled) == 48 and pooled["file"].is_unique
    lines = texture_check.learning_curve(labelled, 4, 0, [0.25, 0.5, 1.0], n_boot=50)
    counts = [float(line.split(": ")[1].split()[0]) for line in lines[:3]]
    full = [len({Path(f).name.split("_")[0] for f in s["train"]}) for s in splits]
    assert counts[0] < counts[1] < counts[2] == sum(full) / len(full)  # 1.0: every training patient of the fold
    # the drawn classes separate perfectly: AUC 1 with a zero-width interval at every size, which the fit refuses
    assert lines[3].startswith("  no fit: learning-curve point 0") and "standard error 0.0" in lines[3]
