"""crossval.py: main.py --folds K runs every fold and writes the summary."""
import csv
import json
from collections import Counter

import pytest

from hipx.data import filenames


def patients(files):
    return {filenames.decode(f).patient for f in files}


@pytest.mark.slow
def test_main_folds_oof_tests_every_patient_once_and_writes_the_summary(tiny_data, tmp_path):
    import main
    outs = tmp_path / "outs"
    main.main(["--model", "dense_net", "--depth", "10", "--data_dir", str(tiny_data), "--image_size", "64", "37",
               "--epoch", "1", "--batch_size", "4", "--workers", "0", "--device", "cpu", "--save_dir", "r",
               "--out_root", str(outs), "--bootstrap", "30", "--folds", "3", "--cv", "oof", "--cv_val", "0.25",
               "--image_only"])
    everything = {p.name for s in ("train", "val", "test") for p in (tiny_data / s).iterdir()}
    tested = Counter()
    for k in range(3):
        run = outs / "r" / f"fold{k}"
        config = json.loads((run / "config.json").read_text())
        assert (config["cv_design"], config["cv_folds"], config["cv_fold"]) == ("oof", 3, k)
        with open(run / "test_predictions.csv", newline="") as fh:
            test = {row["file"] for row in csv.DictReader(fh)}
        with open(run / "val_predictions.csv", newline="") as fh:
            val = {row["file"] for row in csv.DictReader(fh)}
        assert not patients(test) & patients(val)
        # the report of a fold describes the fold's own three parts (read back from its config)
        assert json.loads((run / "report_metrics.json").read_text())["data"]["test"]["images"] == len(test)
        tested.update(test)
    assert set(tested) == everything and set(tested.values()) == {1}
    summary = json.loads((outs / "r" / "cv_summary.json").read_text())
    assert summary["design"] == "oof" and summary["pooled"]["n_images"] == len(everything)
    assert "Design: out-of-fold" in (outs / "r" / "cv_report.md").read_text()
