"""Residual fusion for graded targets (issue 32, items 2 and 3): the network starts as the clinical model of
the measurement -- the ridge regression of the standardised T-score, or its cumulative-link model -- and a
continuous target's probability takes its scale from the validation residual, saved with the weights."""
import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

import main
from hipx.core import measures, targets
from hipx.core.runconfig import RunConfig
from hipx.data import filenames, loader
from hipx.inference import clinical, network
from hipx.prepare import synthetic
from hipx.runs import runfiles
from hipx.stats import clinical_models

SIZE = (64, 37)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """40 demo patients with their true T-score in manifest.csv."""
    data = tmp_path_factory.mktemp("graded") / "data"
    synthetic.generate(data, 40, seed=2, size=SIZE)
    return data


def new_residual(data, kind):
    files = {s: filenames.list_split(data, s) for s in loader.SPLITS}
    values = measures.read(data).of(files["train"])
    spec = targets.build_spec(kind, measures.read(data), values)
    stats = loader.ClinicalStats.fit([filenames.decode(f) for f in files["train"]])
    config = RunConfig(data_dir=str(data), image_size=list(SIZE), fusion="residual", depth=10, growthRate=4,
                       in_chans=2, target=kind, target_spec=spec.to_dict(), residual_head="late")
    torch.manual_seed(0)
    return network.new_network(config, files["train"], stats).eval(), files, values, spec, stats


def val_batch(files, stats, config_size=SIZE):
    infos = [filenames.decode(f) for f in files["val"]]
    clin = torch.tensor(np.stack([stats.normalise(i.clinical) for i in infos]), dtype=torch.float32)
    return torch.rand(len(infos), 2, *config_size), clin


def test_continuous_residual_starts_as_the_ridge_regression_of_the_measurement(demo):
    model, files, values, spec, stats = new_residual(demo, "continuous")
    train = loader.clinical_table(files["train"])
    X = clinical.design(train, stats)
    z = (np.asarray(values) - spec.mean) / spec.sd
    ridge = Ridge(alpha=1.0).fit(X, z)
    image, clin = val_batch(files, stats)
    with torch.no_grad():
        predicted = model.predicted_value(model(image, clin)).double().numpy()
    by_hand = spec.mean + spec.sd * ridge.predict(clin.double().numpy())
    np.testing.assert_allclose(predicted, by_hand, atol=1e-4)
    # the image is not looked at yet: another picture, the same prediction
    with torch.no_grad():
        again = model.predicted_value(model(torch.rand_like(image), clin)).double().numpy()
    np.testing.assert_allclose(again, predicted, atol=1e-6)


def test_ordinal_residual_starts_as_the_cumulative_link_model_of_the_classes(demo):
    model, files, values, spec, stats = new_residual(demo, "ordinal")
    X = clinical.design(loader.clinical_table(files["train"]), stats)
    fit = clinical_models.fit_cumulative_link(X, spec.classify(np.asarray(values)), spec.n_classes)
    image, clin = val_batch(files, stats)
    with torch.no_grad():
        logit = model(image, clin).double()
    h = clin.double().numpy() @ fit.coef + fit.intercept
    np.testing.assert_allclose(logit.numpy(), h + fit.offsets[spec.cut_class], atol=1e-4)
    np.testing.assert_allclose(model.ordinal_offsets().detach().double().numpy(), fit.offsets, atol=1e-4)


@pytest.mark.parametrize("kind", ["continuous", "ordinal"])
def test_graded_residual_trains_from_the_clinical_model(demo, tmp_path, kind, caplog):
    result = main.main(["--fusion", "residual", "--target", kind, "--data_dir", str(demo), "--image_size", *map(str, SIZE),
                        "--depth", "10", "--growthRate", "4", "--epoch", "1", "--batch_size", "16", "--workers", "0",
                        "--cpus", "1", "--bootstrap", "0", "--out_root", str(tmp_path / "outs"), "--save_dir", "g",
                        "--fold", "_x"])
    run = tmp_path / "outs" / "g" / "fold_x"
    log = (run / runfiles.TRAIN_LOG).read_text()
    assert "residual fusion starts from the clinical model" in log and "epoch 0 (before training" in log
    assert (run / runfiles.TEST_METRICS).is_file() and result
    config = runfiles.load_run(run).config
    assert config.residual_head == "late"


def test_the_continuous_scale_is_fitted_on_validation_and_saved(demo, tmp_path):
    main.main(["--image_only", "--target", "continuous", "--data_dir", str(demo), "--image_size", *map(str, SIZE),
               "--depth", "10", "--growthRate", "4", "--epoch", "2", "--batch_size", "16", "--workers", "0",
               "--cpus", "1", "--bootstrap", "0", "--out_root", str(tmp_path / "outs"), "--save_dir", "c",
               "--fold", "_x"])
    run = tmp_path / "outs" / "c" / "fold_x"
    state = runfiles.load_checkpoint(run / runfiles.BEST)
    sd = state["val_metrics"]["residual_sd"]
    assert state["model"]["logit_scale"].item() == pytest.approx(targets.PROBIT_TO_LOGIT / sd, rel=1e-6)
    # the validation predictions: the residual SD of measured against predicted is the one fitted
    val = runfiles.read_predictions(run, "val")
    spec = targets.TargetSpec.from_dict(state["config"]["target_spec"])
    assert targets.residual_sd(spec, val["measure"], val["predicted"]) == pytest.approx(sd, rel=1e-5)
    # and the probabilities are Phi((cut - predicted) / (SD * training SD)) in logistic form
    z_gap = (spec.cut - val["predicted"].to_numpy(dtype=float)) / spec.sd
    expected = 1 / (1 + np.exp(-targets.PROBIT_TO_LOGIT * z_gap / sd))
    np.testing.assert_allclose(val["probability"].to_numpy(dtype=float), expected, atol=1e-5)


def test_residual_sd_of_known_residuals():
    spec = targets.TargetSpec("continuous", "T-score", -2.5, mean=-1.0, sd=2.0)
    measured = np.array([-1.0, 0.0, np.nan, 1.0])
    predicted = np.array([-1.0, 1.0, 5.0, 0.0])
    assert targets.residual_sd(spec, measured, predicted) == pytest.approx(math.sqrt((0 + 0.25 + 0.25) / 3))
    assert targets.residual_sd(spec, [np.nan], [1.0]) is None
    assert targets.scale_for(0.5) == pytest.approx(3.404)
