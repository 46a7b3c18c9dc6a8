"""Graded targets (main.py --target binary|ordinal|continuous, targets.py): one osteoporosis score,
the right way round, from the measurement behind the label."""
import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import roc_auc_score

from hipx.data import filenames
from hipx.core import measures
from hipx.core import targets
from hipx.models import build_model

ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 37)


def write_measured(root: Path, values: dict[str, list[float]], name: str = "T-score", cut: float = -2.5,
                   seed: int = 0) -> Path:
    """A data folder whose images show their measurement: the share of rows lit from the top is
    linear in the value (a known linear relation), plus noise; label = value <= cut."""
    rng = np.random.default_rng(seed)
    rows = []
    lo, hi = min(min(v) for v in values.values()), max(max(v) for v in values.values())
    for split, split_values in values.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for i, value in enumerate(split_values):
            share = 0.1 + 0.8 * (value - lo) / (hi - lo)
            image = rng.normal(40, 10, SIZE)
            image[: int(round(share * SIZE[0])), :] += 160
            label = int(value <= cut)
            fname = filenames.encode(f"{split[:2]}{i:03d}", 1, label, 1, 70, 25.0)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / split / fname)
            rows.append({"file": f"{split}/{fname}", "split": split, "label": label,
                         "measure": repr(float(value)), "measure_name": name})
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def run_main(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=900)


def small(data, save_dir, target, *extra):
    return ["--data_dir", data, "--image_size", *SIZE, "--depth", 10, "--growthRate", 6, "--workers", 0,
            "--cpus", 1, "--bootstrap", 0, "--image_only", "--out_root", "outs", "--save_dir", save_dir,
            "--target", target, *extra]


# -- the spec ------------------------------------------------------------------------------------------
def measure(name, values):
    return measures.Measures(name, {f"f{i}.png": v for i, v in enumerate(values)})


def test_ordinal_classes_of_a_t_score_are_the_who_classes():
    spec = targets.build_spec("ordinal", measure("T-score", [-3.0, -2.0, 0.5]), [-3.0, -2.0, 0.5])
    assert spec.classes == ("osteoporosis", "osteopenia", "normal")
    assert spec.classify(np.array([-2.5, -2.49, -1.0, -0.99, np.nan])).tolist() == [0, 1, 1, 2, -1]
    assert spec.cut_class == 0


def test_ordinal_grades_cut_at_two_score_grades_one_and_two():
    spec = targets.build_spec("ordinal", measure("grade", [1, 2, 5, 6, 3]), [1, 2, 3, 5, 6])
    assert spec.bounds == (1.0, 2.0, 3.0, 5.0) and spec.cut_class == 1
    osteoporosis = spec.classify(np.array([1, 2, 3, 5, 6])) <= spec.cut_class
    assert osteoporosis.tolist() == [True, True, False, False, False]


@pytest.mark.parametrize("kind, name, values, cut, words", [
    ("continuous", None, [], None, "--tscore-col"),
    ("continuous", "BMD", [0.7, 0.9], None, "--cut"),
    ("ordinal", "BMD", [0.7, 0.9], 0.8, "--target continuous"),
    ("ordinal", "T-score", [-3, 0], -2.0, "--cut -2"),
    ("continuous", "T-score", [-1.0, -1.0], None, "every training image"),
])
def test_a_target_the_data_cannot_give_is_one_line(kind, name, values, cut, words):
    with pytest.raises(targets.TargetError, match=words.replace("-", r"\-")):
        targets.build_spec(kind, measure(name, values) if name else None, values, cut)


# -- the score's direction -----------------------------------------------------------------------------
def net(spec, seed=0):
    torch.manual_seed(seed)
    return build_model("dense_net", in_chans=2, late_fuse=False, depth=10, growth_rate=4, target=spec).eval()


def test_lower_predicted_value_is_a_higher_osteoporosis_score():
    image = torch.rand(16, 2, *SIZE)
    continuous = net(targets.TargetSpec("continuous", "T-score", -2.5, mean=-1.5, sd=1.2))
    with torch.no_grad():
        continuous.classifier.bias.fill_(0.3)
        logit = continuous(image)
        value = continuous.predicted_value(logit)
        z_hat = continuous.classifier(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(
            continuous.forward_features(image), 1), 1)).squeeze(1)
    torch.testing.assert_close(value, -1.5 + 1.2 * z_hat)  # the head's output is the standardised value
    assert spearmanr(logit.numpy(), value.numpy())[0] == pytest.approx(-1.0)
    # the logit crosses 0 (probability 0.5) exactly where the predicted value is the cut
    assert float(continuous.predicted_value(torch.zeros(1))) == pytest.approx(-2.5)
    assert float(continuous.score(torch.tensor([(-2.5 + 1.5) / 1.2]))) == pytest.approx(0.0, abs=1e-6)

    ordinal = net(targets.TargetSpec("ordinal", "grade", 2.0, bounds=(1.0, 2.0, 3.0, 4.0, 5.0),
                                     classes=tuple(f"grade {g}" for g in range(1, 7))))
    with torch.no_grad():
        logits = torch.linspace(-6, 6, 25)
        classes = ordinal.predicted_value(logits)
    # a higher osteoporosis logit never predicts a higher (better) grade
    assert (np.diff(classes.numpy()) <= 0).all() and classes[0] > classes[-1]


def test_ordinal_offsets_are_ordered_and_cumulative_probabilities_rise():
    spec = targets.TargetSpec("ordinal", "grade", 2.0, bounds=(1.0, 2.0, 3.0, 4.0, 5.0), classes=tuple("123456"))
    model = net(spec)
    with torch.no_grad():
        model.ordinal_steps.copy_(torch.tensor([-3.0, 0.0, 2.0, -1.0]))
    deltas = model.ordinal_offsets()
    assert deltas[0] == 0 and (torch.diff(deltas) > 0).all()
    cum = targets.cumulative_logits(spec, torch.tensor([0.4, -2.0]), deltas)
    assert cum[:, spec.cut_class].tolist() == pytest.approx([0.4, -2.0])
    assert (torch.diff(cum, dim=1) > 0).all()


def test_ordinal_loss_with_two_classes_is_the_binary_loss():
    spec = targets.TargetSpec("ordinal", "grade", 2.0, bounds=(2.0,), classes=("low", "high"))
    logit = torch.randn(9)
    value = torch.tensor([1, 2, 5, 6, 1, 5, 2, 6, float("nan")])
    label = (value <= 2).float()
    label[-1] = 1.0  # no measurement: the label's task remains
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logit, label)
    got = targets.loss(spec, logit, label, value, torch.zeros(1))
    torch.testing.assert_close(got, expected)


def test_continuous_loss_skips_images_without_a_measurement():
    spec = targets.TargetSpec("continuous", "T-score", -2.5, mean=-2.0, sd=1.0)
    logit = torch.tensor([0.0, 1.0, 2.0])
    both = targets.loss(spec, logit, torch.zeros(3), torch.tensor([-3.0, float("nan"), -1.0]))
    alone = targets.loss(spec, logit[[0, 2]], torch.zeros(2), torch.tensor([-3.0, -1.0]))
    torch.testing.assert_close(both, alone)


# -- end to end ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ordinal_with_two_grades_ranks_as_the_binary_model(tmp_path):
    rng = np.random.default_rng(3)
    grades = {s: rng.choice([1.0, 5.0], n).tolist() for s, n in (("train", 40), ("val", 16), ("test", 16))}
    data = write_measured(tmp_path / "data", grades, name="grade", cut=2.0)
    for target in ("binary", "ordinal"):
        done = run_main(*small(data, target, target, "--epoch", 2, "--seed", 1), cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    read = {t: pd.read_csv(tmp_path / "outs" / t / "fold" / "test_predictions.csv") for t in ("binary", "ordinal")}
    assert (read["binary"]["file"] == read["ordinal"]["file"]).all()
    np.testing.assert_allclose(read["ordinal"]["probability"], read["binary"]["probability"], atol=1e-4)
    assert spearmanr(read["ordinal"]["probability"], read["binary"]["probability"])[0] > 0.999
    assert set(read["ordinal"]["predicted"]) <= {0, 1}


@pytest.mark.slow
def test_continuous_training_recovers_a_known_linear_relation(tmp_path):
    rng = np.random.default_rng(0)
    values = {s: rng.uniform(-4.0, 0.5, n).round(3).tolist() for s, n in (("train", 120), ("val", 30), ("test", 40))}
    data = write_measured(tmp_path / "data", values)
    done = run_main(*small(data, "cont", "continuous", "--epoch", 12, "--batch_size", 16), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    test = pd.read_csv(tmp_path / "outs" / "cont" / "fold" / "test_predictions.csv")
    r = pearsonr(test["predicted"], test["measure"])[0]
    slope = np.polyfit(test["measure"], test["predicted"], 1)[0]
    assert r > 0.9, f"Pearson {r:.3f}"
    assert 0.6 < slope < 1.4, f"slope {slope:.2f}"
    # the score runs the right way: low T-scores get high probabilities, everywhere the probability is used
    assert spearmanr(test["probability"], test["predicted"])[0] == pytest.approx(-1.0)
    assert roc_auc_score(test["label"], test["probability"]) > 0.9
    assert "continuous T-score" in (tmp_path / "outs" / "cont" / "fold" / "train.log").read_text()
    # predict.py writes the predicted T-score beside the probability, as the run scored it
    done = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--run", "outs/cont/fold", str(data / "test"),
                           "--out", "p.csv"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    scored = pd.read_csv(tmp_path / "p.csv").assign(file=lambda d: d["file"].map(lambda f: Path(f).name))
    both = scored.merge(test, on="file", suffixes=("", "_run"))
    assert len(both) == len(test)
    np.testing.assert_allclose(both["predicted_T-score"], both["predicted"], atol=2e-3)
    # and the heatmap explains the same osteoporosis score
    done = subprocess.run([sys.executable, str(ROOT / "visualize_gradcam.py"), "--run", "outs/cont/fold", "--index", "0",
                           "--out", "cams"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list((tmp_path / "cams").glob("*.png"))


def test_graded_target_without_a_measurement_is_one_line(tmp_path):
    data = write_measured(tmp_path / "data", {"train": [-3.0, 0.0, -3.0, 0.0], "val": [-3.0, 0.0],
                                              "test": [-3.0, 0.0]})
    (data / "manifest.csv").unlink()
    done = run_main(*small(data, "x", "continuous", "--epoch", 1), cwd=tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "--tscore-col" in done.stderr
    assert not (tmp_path / "outs" / "x").exists()


@pytest.mark.parametrize("kind, name, values, cut, words", [
    ("continuous", "T-score", [-3.0, -1.0, 0.5], 50.0, "--cut 50: every training image's T-score lies at or below it "
     "(3 images with a T-score, from -3 to 0.5), so the cut separates none of them"),
    ("continuous", "BMD", [0.7, 0.9], 0.1, "lies above it (2 images with a BMD, from 0.7 to 0.9), so the cut separates "
     "none of them and --target continuous would score every image alike; give a cut from 0.7 up to (not including) "
     "0.9"),
    ("continuous", "T-score", [-2.0, 0.5], None, "--cut -2.5 (the default for a T-score): every"),
    ("ordinal", "T-score", [-2.0, -1.5, 0.5], None, "lies above it (3 images with a T-score, from -2 to 0.5), so the "
     "cut separates none of them and --target ordinal would score every image alike; give a class bound within them: "
     "-1"),
    ("ordinal", "T-score", [-0.5, 0.5], -1.0, "no class bound (-2.5, -1) lies within them"),
    ("ordinal", "grade", [3.0, 4.0, 5.0], 2.0, "--cut 2: every training image's grade lies above it"),
    ("continuous", "T-score", [-3.0, 0.0], float("inf"), "--cut inf: give a finite number"),
])
def test_a_cut_that_separates_no_training_image_is_refused_with_the_training_range(kind, name, values, cut, words):
    with pytest.raises(targets.TargetError) as refused:
        targets.build_spec(kind, measure(name, values), values, cut)
    assert words in str(refused.value)
    splitting = {"T-score": -1.0, "BMD": 0.8, "grade": 3.0}[name]  # within the range (and a class bound): accepted
    if math.isfinite(cut or 0) and not (kind == "ordinal" and name == "T-score" and values[0] > -1):
        assert targets.build_spec(kind, measure(name, values), values, splitting).cut == splitting


@pytest.mark.parametrize("flags, words", [
    (["--cut", "50"], "--cut 50: every training image's T-score lies at or below it (4 images with a T-score, from "
                      "-3 to 0), so the cut separates none of them and --target continuous would score every image "
                      "alike; give a cut from -3 up to (not including) 0"),
    (["--cut", "nan"], "--cut nan: give a finite number"),
    (["--cut=-inf"], "--cut -inf: give a finite number"),
    ([], "has a 'measure' column, but it is empty (no row has a value)"),
])
def test_a_target_the_data_cannot_give_stops_before_any_file_is_written(tmp_path, flags, words):
    data = write_measured(tmp_path / "data", {"train": [-3.0, 0.0, -3.0, 0.0], "val": [-3.0, 0.0],
                                              "test": [-3.0, 0.0]})
    if not flags:  # the manifest's measure column is there, with no value in it
        manifest = pd.read_csv(data / "manifest.csv")
        manifest.assign(measure="").to_csv(data / "manifest.csv", index=False)
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    done = run_main(*small(data, "x", "continuous", "--epoch", 1, *flags), cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "outs").exists()
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_unscored_images_train_graded_targets_and_are_never_scored(tmp_path):
    grades = {"train": [1, 6, 1, 6, 2, 5, 1, 6], "val": [1, 6, 2, 5], "test": [1, 6, 2, 5], "unscored": [3, 4, 3, 4]}
    data = write_measured(tmp_path / "data", {s: [float(g) for g in v] for s, v in grades.items()}, name="grade",
                          cut=2.0)
    # unscored/ holds the grades between the classes: label NA, as preprocess_filenames.py writes them;
    # one of them belongs to a test patient and must not train
    manifest = pd.read_csv(data / "manifest.csv")
    test_patient = filenames.decode(sorted((data / "test").iterdir())[0]).patient
    for i, old in enumerate(sorted((data / "unscored").iterdir())):
        patient = test_patient if i == 0 else f"un{i:03d}"
        new = old.with_name(filenames.encode(patient, 2 if i == 0 else 1, None, 1, 70, 25.0))
        old.rename(new)
        manifest.loc[manifest["file"] == f"unscored/{old.name}", ["file", "label"]] = [f"unscored/{new.name}", None]
    manifest.to_csv(data / "manifest.csv", index=False)
    for target in ("ordinal", "binary"):
        done = run_main(*small(data, target, target, "--epoch", 1), cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    used = {t: pd.read_csv(tmp_path / "outs" / t / "fold" / "data_files.csv") for t in ("ordinal", "binary")}
    trained = used["ordinal"][used["ordinal"]["split"] == "train"]["file"].tolist()
    assert sum(f.startswith("unscored/") for f in trained) == 3  # the test patient's one is held out
    assert not any(test_patient in f for f in trained if f.startswith("unscored/"))
    assert not used["binary"]["file"].str.startswith("unscored/").any()
    log = (tmp_path / "outs" / "ordinal" / "fold" / "train.log").read_text()
    assert "3 without a binary label" in log
    for t in ("ordinal", "binary"):
        scored = pd.read_csv(tmp_path / "outs" / t / "fold" / "test_predictions.csv")
        assert len(scored) == 4 and set(scored["label"]) == {0, 1}


@pytest.mark.parametrize("fusion_mode, in_chans", [("early", 5), ("late", 2), ("image", 2)])
@pytest.mark.parametrize("kind", ["ordinal", "continuous"])
def test_every_fusion_mode_learns_a_graded_target(fusion_mode, in_chans, kind):
    from hipx.models import build_model_from_config

    spec = (targets.TargetSpec("ordinal", "T-score", -2.5, bounds=measures.WHO_BOUNDS,
                               classes=("osteoporosis", "osteopenia", "normal")) if kind == "ordinal"
            else targets.TargetSpec("continuous", "T-score", -2.5, mean=-2.0, sd=1.2))
    config = {"model": "dense_net", "in_chans": in_chans, "fusion": fusion_mode, "depth": 10, "growthRate": 4,
              "norm": "bn", "act": "relu", "stem": "downsample", "target_spec": spec.to_dict()}
    torch.manual_seed(0)
    model = build_model_from_config(config)
    inputs = (torch.rand(6, in_chans, *SIZE),) + ((torch.randn(6, 3),) if fusion_mode == "late" else ())
    measure_values = torch.tensor([-3.1, -2.0, 0.4, -2.6, -0.5, -1.5])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        logit = model(*inputs)
        loss = targets.loss(spec, logit, (measure_values <= -2.5).float(), measure_values, model.ordinal_offsets())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert logit.shape == (6,) and losses[-1] < losses[0]
    assert model.predicted_value(logit.detach()).shape == (6,)
