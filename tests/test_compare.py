"""compare.py: runs side by side on the same test patients, paired differences with Holm, seeds."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

import compare
from hipx.reports import compare as comparison
from hipx.stats import confidence
from hipx.data import filenames
from hipx.stats import metrics
from hipx.runs import runfiles

N_PATIENTS = 40


def make_run(folder, probs, threshold=0.5, seed=0, fusion="late", files=None, labels=None):
    """A run folder holding what compare.py reads: best.pth and test_predictions.csv."""
    files, labels = files if files is not None else FILES, labels if labels is not None else LABELS
    config = {"model": "dense_net", "fusion": fusion, "in_chans": 2, "image_size": [64, 37], "depth": 10,
              "growthRate": 12, "norm": "bn", "act": "relu", "stem": "downsample", "epoch": 3, "seed": seed,
              "save_dir": folder.parent.name, "fold": folder.name}
    runfiles.save_checkpoint(folder / runfiles.BEST, {}, config, {"mean": [0, 0, 0], "std": [1, 1, 1]}, threshold, 2)
    runfiles.write_csv(folder / "test_predictions.csv",
                       [{"file": f, "label": int(y), "probability": f"{p:.9g}", "prediction": int(p >= threshold)}
                        for f, y, p in zip(files, labels, probs)])
    return folder


rng = np.random.default_rng(0)
LABELS = np.repeat((rng.random(N_PATIENTS) < 0.4).astype(int), 2)   # two hips per patient, one label
FILES = [filenames.encode(f"p{i // 2}", 1 + i % 2, int(y), 1, 70, 25.0) for i, y in enumerate(LABELS)]
PATIENT = np.repeat(rng.normal(size=N_PATIENTS), 2)


def scores(strength, seed):
    noise = np.random.default_rng(seed).normal(size=LABELS.size)
    return expit(strength * (2 * LABELS - 1) + PATIENT + noise)


@pytest.fixture
def runs(tmp_path):
    return [make_run(tmp_path / "cmp" / "fold_LF", scores(1.5, 1)),
            make_run(tmp_path / "cmp" / "fold_EF", scores(1.0, 2), fusion="early", threshold=0.45),
            make_run(tmp_path / "cmp" / "fold_IO", scores(0.3, 3), fusion="image", threshold=0.6)]


def test_table_differences_holm_and_files(runs, tmp_path, capsys):
    out = tmp_path / "comparison"
    result = compare.main([*map(str, runs), "--out", str(out), "--bootstrap", "300"])
    y = LABELS
    probs = [pd.read_csv(r / "test_predictions.csv")["probability"].to_numpy() for r in runs]
    for row, p, r in zip(result["runs"], probs, runs):
        assert row["roc_auc"]["point"] == pytest.approx(metrics.roc_auc(y, p))
        t = runfiles.load_checkpoint(r / runfiles.BEST)["threshold"]
        assert row["sensitivity"]["point"] == pytest.approx(metrics.threshold_metrics(y, p, t)["sensitivity"])
    groups = [filenames.decode(f).patient for f in FILES]
    for d, p in zip(result["differences"], probs[1:]):
        want = confidence.paired_bootstrap_diff(y, p, probs[0], metrics.roc_auc, groups=groups, n_boot=300, seed=0)
        assert d["diff"] == pytest.approx(want["diff"]) and d["p_value"] == pytest.approx(want["p_value"])
    np.testing.assert_allclose([d["p_holm"] for d in result["differences"]],
                               confidence.holm([d["p_value"] for d in result["differences"]]))
    assert result["across_seeds"] == []  # three different configurations
    md, html = (out / "comparison.md").read_text(), (out / "comparison.html").read_text()
    assert "comparison_figures/roc_pr.png" in md and html.count("data:image/png;base64,") == 1
    assert "p, Holm-adjusted" in md and "cmp/fold_IO" in html
    assert json.loads((out / "comparison.json").read_text())["test_patients"] == N_PATIENTS
    assert not list(out.rglob("*.tmp"))
    printed = capsys.readouterr().out
    assert "| cmp/fold_LF | late fusion of sex, age and BMI |" in printed


def test_without_out_the_table_is_printed_and_nothing_written(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    compare.main([*map(str, runs), "--bootstrap", "50"])
    printed = capsys.readouterr().out
    assert "| cmp/fold_EF | early fusion" in printed and "AUC difference" not in printed.splitlines()[0]
    assert "comparison in" not in printed
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_existing_comparison_is_kept_without_overwrite(runs, tmp_path):
    out = tmp_path / "comparison"
    compare.main([*map(str, runs[:2]), "--out", str(out), "--bootstrap", "50"])
    before = (out / "comparison.md").read_text()
    with pytest.raises(SystemExit, match="already holds a comparison; pass --overwrite"):
        compare.main([*map(str, runs), "--out", str(out), "--bootstrap", "50"])
    assert (out / "comparison.md").read_text() == before
    compare.main([*map(str, runs), "--out", str(out), "--bootstrap", "50", "--overwrite"])
    assert "cmp/fold_IO" in (out / "comparison.md").read_text()


def test_runs_on_other_test_patients_are_refused(runs, tmp_path):
    other = make_run(tmp_path / "x" / "fold_other", scores(1.0, 4)[2:], files=FILES[2:], labels=LABELS[2:])
    with pytest.raises(SystemExit, match="scored other test images than .*: 2 only in the first"):
        compare.main([str(runs[0]), str(other), "--out", str(tmp_path / "c")])
    relabelled = make_run(tmp_path / "x" / "fold_relabel", scores(1.0, 4), labels=1 - LABELS)
    with pytest.raises(SystemExit, match="carry other labels"):
        compare.main([str(runs[0]), str(relabelled), "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="at least two run folders"):
        compare.main([str(runs[0]), "--out", str(tmp_path / "c")])
    assert not (tmp_path / "c").exists()


def test_seeds_of_one_configuration_are_summarised_as_mean_and_sd(runs, tmp_path):
    seeds = [make_run(tmp_path / "s" / f"fold_LF_seed{s}", scores(1.5, 10 + s), seed=s) for s in (1, 2)]
    result, _ = comparison.compare_runs([*runs, *seeds], n_boot=50)
    assert len(result["across_seeds"]) == 1
    group = result["across_seeds"][0]
    assert group["seeds"] == [0, 1, 2] and group["runs"][0] == "cmp/fold_LF"
    aucs = [metrics.roc_auc(LABELS, scores(1.5, s)) for s in (1, 11, 12)]
    assert group["roc_auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert group["roc_auc"]["sd"] == pytest.approx(np.std(aucs, ddof=1))
    md = comparison.comparison_blocks(result)
    assert any(b[0] == "h2" and b[1] == "Repeats with different seeds" for b in md)
