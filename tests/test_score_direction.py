"""The continuous target's score direction in the fast suite (issue 32, item 8: caught only by
test_targets' 12-epoch training, marked slow): a lower measured T-score must give a higher osteoporosis
probability -- in the loss the network learns from, and end to end in what the run and predict.py write."""
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

import main
import predict
from hipx.core import targets
from hipx.models import build_model
from test_targets import write_measured

SIZE = (64, 37)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_continuous_loss_is_least_where_the_network_predicts_the_measurement():
    """Free logits fitted to the loss alone land where the network's predicted value is the measured one,
    so the probability falls as the measurement rises and crosses 0.5 at the cut."""
    spec = targets.TargetSpec("continuous", "T-score", -2.5, mean=-1.5, sd=1.2)
    network = build_model("dense_net", in_chans=2, late_fuse=False, depth=10, growth_rate=4, target=spec)
    measured = torch.tensor([-4.0, -3.1, -2.6, -2.4, -1.0, 0.5])
    logit = torch.zeros(len(measured), requires_grad=True)
    optimiser = torch.optim.LBFGS([logit], lr=1.0, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        optimiser.zero_grad()
        loss = targets.loss(spec, logit, (measured <= spec.cut).float(), measured)
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        torch.testing.assert_close(network.predicted_value(logit), measured, atol=1e-4, rtol=0)
        probability = torch.sigmoid(logit)
    assert (torch.diff(probability) < 0).all()  # ordered by rising T-score: a falling probability
    assert ((probability > 0.5) == (measured <= spec.cut)).all()


@pytest.fixture(scope="module")
def continuous_run(tmp_path_factory):
    """A 6-epoch continuous-target run (about 2 s) on images whose lit share is linear in the T-score."""
    tmp = tmp_path_factory.mktemp("direction")
    rng = np.random.default_rng(0)
    values = {split: rng.permutation(np.linspace(-4.0, 0.5, n)).round(3).tolist()
              for split, n in (("train", 24), ("val", 8), ("test", 8))}
    data = write_measured(tmp / "data", values)
    main.main(["--data_dir", str(data), "--image_size", *map(str, SIZE), "--depth", "10", "--growthRate", "6",
               "--workers", "0", "--device", "cpu", "--bootstrap", "0", "--image_only", "--target", "continuous",
               "--epoch", "6", "--batch_size", "8", "--lrG", "1e-2", "--out_root", str(tmp / "outs"),
               "--save_dir", "c"])
    return data, tmp / "outs" / "c" / "fold"


def test_a_short_continuous_run_scores_low_t_scores_as_osteoporosis(continuous_run, tmp_path):
    data, run = continuous_run
    test = read_csv(run / "test_predictions.csv")
    measured = np.array([float(r["measure"]) for r in test])
    predicted = np.array([float(r["predicted"]) for r in test])
    probability = np.array([float(r["probability"]) for r in test])
    labels = np.array([int(r["label"]) for r in test])
    assert spearmanr(probability, predicted)[0] == pytest.approx(-1.0)  # one score, the right way round
    assert ((probability >= 0.5) == (predicted <= -2.5)).all()
    assert spearmanr(predicted, measured)[0] > 0.7  # learnt as measured, not mirrored
    assert roc_auc_score(labels, probability) > 0.8
    # predict.py gives the same score and predicted T-score for the same images
    out = tmp_path / "p.csv"
    predict.main(["--run", str(run), str(data / "test"), "--out", str(out), "--device", "cpu"])
    scored = {Path(r["file"]).name: r for r in read_csv(out)}
    for r in test:
        assert float(scored[r["file"]]["probability"]) == pytest.approx(float(r["probability"]), abs=1e-6)
        assert float(scored[r["file"]]["predicted_T-score"]) == pytest.approx(float(r["predicted"]), abs=2e-3)
