"""hipx/reports/model_card.py: model_card.md beside every run report and CV summary, its figures read
from report_metrics.json / cv_summary.json (equal to test_metrics.json), never typed; its words follow
the intervals (wide subgroup CI, miscalibration, a difference whose CI holds 0)."""
import copy
import json
import math
import re
import warnings

import pytest

import main
import report
from conftest import write_report_data
from hipx.reports import model_card
from hipx.runs import runfiles

TINY = ["--model", "dense_net", "--depth", "10", "--image_size", "64", "37", "--batch_size", "4", "--workers", "0",
        "--device", "cpu", "--bootstrap", "200"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny data folder (test patients s0..s3 with two images each), a run trained and tested on it
    (main.py writes its report, so its card) and a 2-fold out-of-fold cross-validation of it."""
    root = tmp_path_factory.mktemp("card")
    data = root / "data"
    write_report_data(data)
    outs = root / "outs"
    with warnings.catch_warnings():  # tiny test sets: some bootstrap resamples hold one class
        warnings.simplefilter("ignore")
        main.main([*TINY, "--data_dir", str(data), "--epoch", "2", "--save_dir", "r", "--fold", "_LF",
                   "--late_fuse", "True", "--out_root", str(outs)])
        main.main([*TINY, "--data_dir", str(data), "--epoch", "1", "--save_dir", "cv", "--fold", "_a", "--folds", "2",
                   "--cv", "oof", "--out_root", str(outs)])
    return {"run": outs / "r" / "fold_LF", "group": outs / "cv", "data": data}


def numbers(tree) -> list[float]:
    """Every number in a JSON tree (booleans are not numbers) but the decision curves' hundreds of points,
    which the card does not show and which would hold almost any figure."""
    if isinstance(tree, dict):
        return [x for k, v in tree.items() if "decision_curve" not in k for x in numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in numbers(v)]
    if isinstance(tree, (int, float)) and not isinstance(tree, bool) and math.isfinite(tree):
        return [float(tree)]
    return []


FIGURE = re.compile(r"(?<![\w.])-?\d+\.\d{3}(?!\d)")  # how the card writes a figure: fmt's three decimals


def made_of(card: str) -> dict:
    """When and by which code a CV card says it was written (not in cv_summary.json, which stays byte-identical)."""
    commit = re.search(r"suite commit (.+?) \(of the code", card).group(1)
    return {"created": re.search(r"^Written from \S+ \(.*?\) on (.+?); it is rewritten", card, re.M).group(1),
            "suite_commit": None if commit == "not known" else commit}


def section(card: str, title: str) -> str:
    """The text of the card's section ``title`` (up to the next heading)."""
    start = card.index(f". {title}\n")
    end = card.find("\n## ", start)
    return card[start:] if end < 0 else card[start:end]


def ci_of(text: str, label: str) -> tuple[float, float, float]:
    """(point, low, high) of '<label> 0.812 (0.731 to 0.884)' in ``text``."""
    m = re.search(re.escape(label) + r" (-?\d+\.\d{3}) \((-?\d+\.\d{3}) to (-?\d+\.\d{3})\)", text)
    assert m, f"{label!r} with an interval not found in:\n{text}"
    return tuple(float(g) for g in m.groups())


def as3(d: dict, key: str = "point") -> tuple[float, float, float]:
    return tuple(round(d[k], 3) for k in (key, "low", "high"))


def row(text: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is ``first``."""
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {first} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_the_run_card_is_written_with_the_report_and_its_figures_equal_test_metrics(world):
    run = world["run"]
    card = (run / model_card.MODEL_CARD).read_text()  # main.py --bootstrap wrote the report, and with it the card
    saved = json.loads((run / runfiles.REPORT_METRICS).read_text())
    tested = json.loads((run / runfiles.TEST_METRICS).read_text())
    assert card == model_card.run_card(saved)  # filled from report_metrics.json alone
    net = saved["network"]
    primary = section(card, "Primary result beside the clinical baseline")
    point, low, high = ci_of(primary, "Primary result: network test ROC AUC")
    assert (point, low, high) == as3(net["metrics"]["roc_auc"])
    assert point == round(tested["at_threshold"]["roc_auc"], 3)
    assert f"over {saved['data']['test']['patients']} patients" in primary
    network = row(primary, "Network")
    for cell, key in zip(network[1:], ("roc_auc", "pr_auc", "brier", "sensitivity", "specificity")):
        assert float(cell.split()[0]) == round(tested["at_threshold"][key], 3), key
    assert row(primary, "Clinical baseline")[1] == "{:.3f} ({:.3f} to {:.3f})".format(
        *as3(saved["baseline"]["metrics"]["roc_auc"]))
    assert ci_of(primary, "ROC AUC difference") == as3(saved["comparison"]["auc_difference"], "diff")
    threshold = section(card, "Threshold and how it was chosen")
    assert f"Threshold {tested['threshold']:.3f} on the predicted probability" in threshold
    assert f"epoch {tested['epoch']}" in threshold and "Chosen on validation, never on test" in threshold
    calibration = section(card, "Calibration")
    cells = row(calibration, "Network")
    assert cells[1] == "{:.3f} ({:.3f} to {:.3f})".format(*as3(net["metrics"]["calibration_intercept"]))
    assert cells[2] == "{:.3f} ({:.3f} to {:.3f})".format(*as3(net["metrics"]["calibration_slope"]))
    data = section(card, "Data")
    for split in ("train", "val", "test", "all"):
        d = saved["data"][split]
        cells = row(data, split)
        assert cells[1:3] == [str(d["images"]), str(d["patients"])]
        assert cells[3] == f"{d['osteoporosis_images']} ({100 * d['prevalence']:.1f}%)"
        assert cells[5] == (f"{d['age']['mean']:.1f} ± {d['age']['sd']:.1f} ({d['age']['min']:.1f} to "
                            f"{d['age']['max']:.1f})")
    assert row(data, "test")[1] == str(tested["n_images"])
    assert "| val | 8 | 8 |" in data and row(data, "val")[8] == "0.0 / 0.0 / 12.5"  # one val BMI missing
    assert str(world["data"]) in data
    details = section(card, "Model details")
    assert "late fusion of sex, age and BMI" in details and "64 x 37 pixels" in details
    assert "batch size 4" in details and "epoch 2 of 2" in details
    use = section(card, "Intended use and out-of-scope uses")
    assert "research" in use and "Not a medical device" in use
    assert not list(run.glob(".*.tmp"))  # written atomically


def test_a_card_holds_no_figure_that_is_not_in_its_numbers(world):
    """Every three-decimal figure of both cards is one of the numbers of the JSON it was made from, and
    every one-decimal figure of the data table is one of them or a share in percent."""
    for card_file, json_file in ((world["run"] / "model_card.md", world["run"] / "report_metrics.json"),
                                 (world["group"] / "model_card.md", world["group"] / "cv_summary.json")):
        card, tree = card_file.read_text(), json.loads(json_file.read_text())
        values = numbers(tree)
        known = {f"{v:.3f}" for v in values}
        figures = FIGURE.findall(card)
        assert len(figures) > 30
        assert [f for f in figures if f not in known] == [], card_file
        shares = {f"{v:.1f}" for v in values} | {f"{100 * v:.1f}" for v in values}
        data = section(card, "Data").split("\n\n")[1]  # the table only
        one_decimal = re.findall(r"(?<![\w.])\d+\.\d(?!\d)", data)
        assert one_decimal and [f for f in one_decimal if f not in shares] == []


def test_the_cv_card_reports_the_pooled_out_of_fold_results_of_cv_summary(world):
    group = world["group"]
    card = (group / "model_card.md").read_text()
    summary = json.loads((group / runfiles.CV_SUMMARY).read_text())
    assert card == model_card.cv_card(summary, group, made_of(card))
    pooled = summary["pooled"]
    primary = section(card, "Primary result beside the clinical baseline")
    assert ci_of(primary, "pooled out-of-fold ROC AUC") == as3(pooled["metrics"]["roc_auc"])
    assert f"over {pooled['n_patients']} patients" in primary
    assert ci_of(primary, "ROC AUC difference") == as3(pooled["comparison"]["auc_difference"], "diff")
    for cell, key in zip(row(primary, "Clinical baseline")[1:], ("roc_auc", "pr_auc", "brier")):
        assert cell == "{:.3f} ({:.3f} to {:.3f})".format(*as3(pooled["baseline"]["metrics"][key]))
    calibration = section(card, "Calibration")
    assert row(calibration, "Network")[2] == "{:.3f} ({:.3f} to {:.3f})".format(
        *as3(pooled["metrics"]["calibration_slope"]))
    threshold = section(card, "Threshold and how it was chosen")
    for fold in summary["folds"]:
        assert f"{fold['run']} {fold['threshold']:.3f}" in threshold
    data = section(card, "Data")
    assert row(data, "all images")[1:3] == [str(summary["data"]["all"]["images"]),
                                            str(summary["data"]["all"]["patients"])]
    for k in (0, 1):  # the folds' test parts together are every image once
        assert row(data, f"fold_a{k} test")[1] == str(summary["data"]["folds"][f"fold_a{k}"]["test"]["images"])
    assert sum(summary["data"]["folds"][f"fold_a{k}"]["test"]["images"] for k in (0, 1)) == pooled["n_images"]
    for g in pooled["clinical_subgroups"]:
        assert row(section(card, "Subgroups"), f"{g['variable']}: {g['group']}")[4] == \
            "{:.3f} ({:.3f} to {:.3f})".format(*as3(g["roc_auc"]))
    assert "2 folds; out-of-fold" in section(card, "Model details")
    assert "2 models, one per fold" in section(card, "Weaknesses and caveats")
    # each fold's own card says it is one fold of the group
    assert "fold 0 of a 2-fold cross-validation" in (group / "fold_a0" / "model_card.md").read_text()


def test_report_py_writes_the_card_and_extend_epochs_removes_it(world, tmp_path):
    run = world["run"]
    (run / "model_card.md").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report.main(["--run", str(run), "--bootstrap", "50", "--gallery", "0"])
    assert (run / "model_card.md").is_file() and "Only 50 bootstrap resamples" in (run / "model_card.md").read_text()
    assert runfiles.MODEL_CARD in runfiles.RESULTS
    copy_dir = tmp_path / "fold_x"
    copy_dir.mkdir()
    (copy_dir / runfiles.MODEL_CARD).write_text("old card")
    runfiles.Run(copy_dir).remove_results()  # what --extend_epochs does before training on
    assert not (copy_dir / runfiles.MODEL_CARD).exists()


# --------------------------------------------------------------------------- the words follow the intervals

@pytest.fixture(scope="module")
def saved(world):
    return json.loads((world["run"] / "report_metrics.json").read_text())


def _set(d: dict, point: float, low: float, high: float, key: str = "point") -> None:
    d.update({key: point, "low": low, "high": high})


def test_weaknesses_name_a_wide_subgroup_interval_and_only_a_wide_one(saved):
    numbers_ = copy.deepcopy(saved)
    for g in numbers_["subgroups"]:
        _set(g["roc_auc"], 0.8, 0.75, 0.85)
    wide = numbers_["subgroups"][0]
    _set(wide["roc_auc"], 0.712, 0.456, 0.934)
    card = model_card.run_card(numbers_)
    weak = section(card, "Weaknesses and caveats")
    assert f"Wide subgroup intervals (wider than 0.2): {wide['variable']}: {wide['group']} ROC AUC 0.712 " \
           "(0.456 to 0.934)." in weak
    assert "0.750 to 0.850" not in weak
    assert row(section(card, "Subgroups"), f"{wide['variable']}: {wide['group']}")[5] == "wide: more than 0.2"
    for g in numbers_["subgroups"]:
        _set(g["roc_auc"], 0.8, 0.75, 0.85)
    assert "Wide subgroup intervals" not in model_card.run_card(numbers_)


@pytest.mark.parametrize("low, high, words", [
    (-0.05, 0.12, "No difference shown: the interval holds 0"),
    (0.03, 0.2, "The network is shown better than the clinical values alone: the interval lies above 0."),
    (-0.3, -0.02, "The clinical values alone are shown better than the network: the interval lies below 0."),
])
def test_the_difference_is_worded_by_its_interval(saved, low, high, words):
    numbers_ = copy.deepcopy(saved)
    _set(numbers_["comparison"]["auc_difference"], (low + high) / 2, low, high, key="diff")
    card = model_card.run_card(numbers_)
    assert words in section(card, "Primary result beside the clinical baseline")
    named = "The network is not shown better than the clinical values alone" in section(card, "Weaknesses and caveats")
    assert named == (low <= 0)


def test_miscalibration_is_named_where_an_interval_shows_it(saved):
    numbers_ = copy.deepcopy(saved)
    metrics = numbers_["network"]["metrics"]
    _set(metrics["calibration_intercept"], 0.1, -0.4, 0.6)
    _set(metrics["calibration_slope"], 0.9, 0.5, 1.3)
    card = model_card.run_card(numbers_)
    assert "Network: no miscalibration shown" in section(card, "Calibration")
    assert "Network calibration" not in card
    _set(metrics["calibration_slope"], 0.512, 0.301, 0.724)
    card = model_card.run_card(numbers_)
    sentence = "the slope, 0.512 (0.301 to 0.724), lies below 1: the probabilities are too extreme (over-confident)"
    assert sentence in section(card, "Calibration") and sentence in section(card, "Weaknesses and caveats")


def test_few_patients_and_no_baseline_are_named(saved):
    numbers_ = copy.deepcopy(saved)
    numbers_["baseline"] = numbers_["comparison"] = None
    numbers_["baseline_absent"] = "sex, age and BMI are missing in these images"
    weak = section(model_card.run_card(numbers_), "Weaknesses and caveats")
    assert "Not compared with the clinical values: sex, age and BMI are missing in these images." in weak
    test = saved["data"]["test"]
    assert f"rests on {test['patients']} patients, {test['osteoporosis_patients']} with osteoporosis" in weak
    assert "One training run (seed 0)" in weak


def test_data_source_reads_the_record_the_data_folder_s_maker_left(tmp_path):
    assert model_card.data_source(tmp_path) == {"made_by": None}
    (tmp_path / "synthetic.json").write_text(json.dumps({"generator": "synthetic.py", "version": 1, "n": 40}))
    assert model_card.data_source(tmp_path) == {"made_by": "synthetic.py", "record": str(tmp_path / "synthetic.json"),
                                                "version": 1, "n": 40}
    (tmp_path / "preprocess_config.json").write_text(json.dumps(
        {"images": "/raw", "csv": "/raw/list.csv", "settings": {"roi": "femur", "split_hips": True, "fit": "pad",
                                                                "size": [704, 407], "strict": False}}))
    src = model_card.data_source(tmp_path)
    assert src["made_by"] == "preprocess_filenames.py" and src["roi"] == "femur" and src["split_hips"] is True
    view = {"data_source": src, "data_dir": str(tmp_path)}
    assert "femur region cut (femur), each hip a separate image, size 704 x 407 (pad)" in model_card.source_text(view)


def test_suite_commit_is_none_outside_a_git_checkout(tmp_path):
    assert model_card.suite_commit(tmp_path) is None


def test_a_heldout_cv_card_reports_the_fold_ensemble_and_describes_the_tested_images(tmp_path):
    """Fold runs whose data folder is gone: the card still reports the ensemble of cv_summary.json, and its data
    table describes the tested images from their file names."""
    from test_cv_report import write_fold
    from hipx.reports import cv as cv_report
    save = tmp_path / "cv"
    ids = [("a", 1), ("b", 0), ("c", 1), ("d", 0), ("e", 1), ("f", 0)]
    write_fold(save / "fold0", [(i, y, p) for (i, y), p in zip(ids, [0.9, 0.3, 0.4, 0.5, 0.8, 0.1])], 0.5,
               "heldout", True)
    write_fold(save / "fold1", [(i, y, p) for (i, y), p in zip(ids, [0.7, 0.6, 0.6, 0.2, 0.4, 0.3])], 0.3,
               "heldout", True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = cv_report.write_cv_summary(save, [save / "fold0", save / "fold1"], n_boot=100)
    card = (save / "model_card.md").read_text()
    assert card == model_card.cv_card(json.loads((save / "cv_summary.json").read_text()), save, made_of(card))
    primary = section(card, "Primary result beside the clinical baseline")
    assert ci_of(primary, "fold-ensemble test ROC AUC") == as3(summary["ensemble"]["metrics"]["roc_auc"])
    assert "holds no clinical baseline for the fold ensemble" in primary
    data = section(card, "Data")
    assert row(data, "tested images")[1:3] == ["6", "6"] and "could not be read" in data
    assert "The fold ensemble decides at the mean of the folds' thresholds, 0.400" in card
    assert "Not compared with the clinical values" in section(card, "Weaknesses and caveats")
