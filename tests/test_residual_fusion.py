"""Residual fusion (--fusion residual): the network starts as the clinical logistic model, the image
adding a correction; and the pooled out-of-fold clinical baseline of a cross-validation."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from hipx.reports import baseline
from hipx.data import filenames
from hipx.data import loader
from hipx.runs import runfiles
import synthetic
from hipx.models import build_model, build_model_from_config

ROOT = Path(__file__).resolve().parents[1]


def residual_model(seed=0, head="late", target=None):
    torch.manual_seed(seed)
    return build_model("dense_net", in_chans=2, late_fuse=True, depth=10, growth_rate=4,
                       clinical_offset=True, residual_head=head, target=target).eval()


RESIDUAL_CONFIG = {"model": "dense_net", "in_chans": 2, "fusion": "residual", "depth": 10, "growthRate": 4,
                   "norm": "bn", "act": "relu", "stem": "downsample"}


@pytest.mark.parametrize("head", ["late", "linear"])
def test_untrained_residual_network_is_the_clinical_model(head):
    model = residual_model(head=head)
    coef, intercept = [0.7, -1.3, 0.25], -0.4
    model.set_clinical_model(coef, intercept)
    image = torch.rand(5, 2, 64, 37)
    clinical = torch.randn(5, 3)
    expected = clinical.double() @ torch.tensor(coef, dtype=torch.float64) + intercept
    torch.testing.assert_close(model(image, clinical).double(), expected, rtol=0, atol=1e-5)
    # the image changes nothing yet: its correction starts at zero
    torch.testing.assert_close(model(torch.rand(5, 2, 64, 37), clinical), model(image, clinical))


def test_residual_network_without_clinical_signal_is_the_image_network():
    image_only = build_model("dense_net", in_chans=2, late_fuse=False, depth=10, growth_rate=4).eval()
    residual = residual_model(seed=1, head="linear")
    residual.set_clinical_model([0.0, 0.0, 0.0], 0.0)
    state = {k: v for k, v in image_only.state_dict().items()}
    missing, unexpected = residual.load_state_dict(state, strict=False)
    assert set(missing) == {"clinical_coef", "clinical_intercept"} and not unexpected
    image = torch.rand(4, 2, 64, 37)
    torch.testing.assert_close(residual(image, torch.randn(4, 3)), image_only(image))


def test_set_clinical_model_resets_a_pretrained_head_and_checks_its_length():
    model = residual_model()
    with torch.no_grad():
        model.classifier.weight.fill_(1.0)
    model.set_clinical_model([1.0, 2.0, 3.0], 0.5)
    assert not model.classifier.weight.detach().any() and not model.classifier.bias.detach().any()
    with pytest.raises(ValueError, match="2 coefficients for 3 clinical values"):
        model.set_clinical_model([1.0, 2.0], 0.0)
    plain = build_model("dense_net", in_chans=2, late_fuse=True, depth=10, growth_rate=4)
    with pytest.raises(ValueError, match="no clinical offset"):
        plain.set_clinical_model([1.0, 2.0, 3.0], 0.0)


@pytest.mark.parametrize("saved_head, head", [({"residual_head": "late"}, "late"), ({}, "linear")])
def test_the_offset_travels_with_the_weights(saved_head, head):
    """A run's configuration names its residual head; one made before the late head (no key) is linear."""
    model = residual_model(head=head)
    model.set_clinical_model([0.5, -0.5, 1.5], 0.25)
    with torch.no_grad():
        model.classifier.weight.normal_()  # a trained correction
    again = build_model_from_config({**RESIDUAL_CONFIG, **saved_head}).eval()
    again.load_state_dict(model.state_dict())
    image, clinical = torch.rand(3, 2, 64, 37), torch.randn(3, 3)
    torch.testing.assert_close(again(image, clinical), model(image, clinical))


def test_the_late_head_corrects_with_the_clinical_values_beside_the_image():
    """Residual fusion's correction sees the clinical embedding (late fusion's head): with the image
    features' weights at zero, a clinical-only correction still moves the logit."""
    model = residual_model()
    model.set_clinical_model([0.0, 0.0, 0.0], 0.0)
    with torch.no_grad():
        model.classifier.weight[0, model.num_features:] = 1.0  # the clinical embedding's part only
    image = torch.rand(4, 2, 64, 37)
    a, b = torch.zeros(4, 3), torch.full((4, 3), 2.0)
    assert not torch.allclose(model(image, a), model(image, b))
    torch.testing.assert_close(model(torch.rand(4, 2, 64, 37), b), model(image, b))


def graded_spec(kind):
    from hipx.core import targets
    if kind == "ordinal":
        return targets.TargetSpec("ordinal", "T-score", -2.5, bounds=(-2.5, -1.0),
                                  classes=("osteoporosis", "osteopenia", "normal"))
    return targets.TargetSpec("continuous", "T-score", -2.5, mean=-1.5, sd=1.2)


def test_untrained_ordinal_residual_is_the_clinical_cumulative_link_model():
    from hipx.core import targets
    spec = graded_spec("ordinal")
    model = residual_model(target=spec)
    coef, intercept, offsets = [0.4, -0.9, 0.2], -1.1, [0.0, 1.7]
    model.set_clinical_model(coef, intercept, offsets)
    image, clinical = torch.rand(5, 2, 64, 37), torch.randn(5, 3)
    h = clinical.double() @ torch.tensor(coef, dtype=torch.float64) + intercept
    logit = model(image, clinical).double()
    torch.testing.assert_close(logit, h + offsets[spec.cut_class], rtol=0, atol=1e-5)
    cum = targets.cumulative_logits(spec, logit, model.ordinal_offsets().double())
    torch.testing.assert_close(cum, h[:, None] + torch.tensor(offsets, dtype=torch.float64)[None, :],
                               rtol=0, atol=1e-5)


def test_untrained_continuous_residual_predicts_the_clinical_regression():
    spec = graded_spec("continuous")
    model = residual_model(target=spec)
    coef, intercept = [0.3, -0.6, 0.1], 0.2
    model.set_clinical_model(coef, intercept)
    image, clinical = torch.rand(5, 2, 64, 37), torch.randn(5, 3)
    z_hat = clinical.double() @ torch.tensor(coef, dtype=torch.float64) + intercept
    value = model.predicted_value(model(image, clinical)).double()
    torch.testing.assert_close(value, spec.mean + spec.sd * z_hat, rtol=0, atol=1e-4)


def test_clinical_model_is_the_baselines_regression(tiny_data):
    files = {s: filenames.list_split(tiny_data, s) for s in loader.SPLITS}
    stats = loader.ClinicalStats.fit([filenames.decode(f) for f in files["train"]])
    coef, intercept = baseline.clinical_model(files["train"], stats)
    base = baseline.clinical_baseline(files=files)
    np.testing.assert_allclose(coef, [base["coef"][name] for name in baseline.FEATURES], rtol=1e-12)
    assert intercept == pytest.approx(base["intercept"], rel=1e-12)


def run_main(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_uninformative_image_keeps_the_clinical_ranking(tmp_path):
    """Pictures that show nothing (noise SD 100): the residual network ranks the test patients as the
    clinical logistic regression does (its start), within the noise that training adds."""
    data = tmp_path / "data"
    synthetic.generate(data, 80, seed=3, size=(64, 37), clinical_share=0.9, image_noise=100.0)
    done = run_main("--fusion", "residual", "--data_dir", data, "--image_size", 64, 37, "--epoch", 2,
                    "--batch_size", 16, "--workers", 0, "--cpus", 1, "--bootstrap", 0, "--save_dir", "r",
                    "--fold", "_x", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    test = runfiles.read_predictions(tmp_path / "outs" / "r" / "fold_x", "test")
    files = {s: filenames.list_split(data, s) for s in loader.SPLITS}
    base = baseline.clinical_baseline(files=files)["test"]
    both = test.assign(file=test["file"]).merge(base.assign(file=base["file"].map(lambda f: Path(f).name)),
                                                on="file", suffixes=("_net", "_base"))
    assert len(both) == len(test) > 20
    rho = spearmanr(both["probability_net"], both["probability_base"]).statistic
    assert rho > 0.95, rho
    log = (tmp_path / "outs" / "r" / "fold_x" / "train.log").read_text()
    assert "residual fusion starts from the clinical model" in log and "epoch 0 (before training" in log


@pytest.mark.slow
def test_cv_report_pools_a_baseline_refitted_per_fold(tmp_path):
    data = tmp_path / "data"
    synthetic.generate(data, 40, seed=1, size=(64, 37))
    done = run_main("--fusion", "late", "--data_dir", data, "--image_size", 64, 37, "--epoch", 1,
                    "--batch_size", 16, "--workers", 0, "--cpus", 1, "--bootstrap", 50, "--folds", 2,
                    "--cv", "oof", "--save_dir", "cv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    group = tmp_path / "outs" / "cv"
    summary = json.loads((group / "cv_summary.json").read_text())
    # by hand: per fold, standardise sex/age/BMI on its training images, fit, score its test images
    rows = []
    for k in range(2):
        config = json.loads((group / f"fold{k}" / "config.json").read_text())
        paths = runfiles.split_files(config)

        def table(split):
            infos = [filenames.decode(f) for f in paths[split]]
            return np.array([i.clinical for i in infos], dtype=float), np.array([i.label for i in infos])

        (x_train, y_train), (x_test, y_test) = table("train"), table("test")
        mean, sd = x_train.mean(axis=0), x_train.std(axis=0)
        fit = LogisticRegression(C=1.0, max_iter=1000).fit((x_train - mean) / sd, y_train)
        rows.append(pd.DataFrame({"file": [p.name for p in paths["test"]], "label": y_test,
                                  "probability": fit.predict_proba((x_test - mean) / sd)[:, 1]}))
    by_hand = pd.concat(rows)
    pooled = summary["pooled"]
    assert pooled["baseline"]["metrics"]["roc_auc"]["point"] == pytest.approx(
        roc_auc_score(by_hand["label"], by_hand["probability"]), abs=1e-9)
    network = pd.concat(runfiles.read_predictions(group / f"fold{k}", "test") for k in range(2))
    both = network.merge(by_hand, on="file", suffixes=("_net", "_base"))
    assert len(both) == 80
    expected = roc_auc_score(both["label_net"], both["probability_net"]) - roc_auc_score(both["label_net"],
                                                                                      both["probability_base"])
    assert pooled["comparison"]["auc_difference"]["diff"] == pytest.approx(expected, abs=1e-9)
    report = (group / "cv_report.md").read_text()
    assert "| Metric | Network (95 % CI) | Clinical baseline (95 % CI) |" in report
    assert f"pooled ROC AUC difference: {expected:.3f}" in report
    html = (group / "cv_report.html").read_text()  # the same summary a reader can look at, figures inside
    assert html.count('src="data:image/png;base64,') == 3 and "Clinical baseline (95 % CI)" in html
    assert "Net benefit (95% CI), clinical baseline" in html and "<h2>Per fold</h2>" in html


def test_regime_flags_move_what_each_source_tells(tmp_path):
    aucs = {}
    for share, noise in ((0.9, 5.0), (0.05, 0.5)):
        manifest = synthetic.generate(tmp_path / f"d{share}", 600, seed=0, size=(16, 16), clinical_share=share,
                                      image_noise=noise)
        aucs[share] = {name: synthetic.oracle_auc(manifest, cols) for name, cols in
                       (("clinical", synthetic.CLINICAL_COLUMNS), ("picture", synthetic.PICTURE_COLUMNS))}
        assert 0.25 < manifest["label"].mean() < 0.45  # the prevalence stays about 35 %
    assert aucs[0.9]["clinical"] > 0.9 > aucs[0.9]["picture"]
    assert aucs[0.05]["picture"] > 0.9 > aucs[0.05]["clinical"]


def test_default_regime_is_the_demo_and_a_different_regime_is_refused(tmp_path):
    plain = synthetic.generate(tmp_path / "a", 20, seed=0, size=(16, 16))
    same = synthetic.generate(tmp_path / "b", 20, seed=0, size=(16, 16), clinical_share=None, image_noise=None)
    pd.testing.assert_frame_equal(plain, same)
    assert "clinical_share" not in json.loads((tmp_path / "a" / synthetic.METADATA).read_text())
    with pytest.raises(FileExistsError, match="clinical_share=0.5"):
        synthetic.generate(tmp_path / "a", 20, seed=0, size=(16, 16), clinical_share=0.5)


@pytest.mark.parametrize("flag, value", [("--clinical-share", "1.5"), ("--image-noise", "-1")])
def test_bad_regime_flag_is_named(tmp_path, flag, value):
    done = subprocess.run([sys.executable, str(ROOT / "synthetic.py"), "--out", str(tmp_path / "d"), "--n", "5",
                           flag, value], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert flag in done.stderr
    assert not (tmp_path / "d").exists()
