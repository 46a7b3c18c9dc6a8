"""runfiles.py: the run folder written atomically with the user's permissions, and read back in one place."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hipx.runs import runfiles
from hipx.models import build_model, build_model_from_checkpoint

CONFIG = {"model": "dense_net", "in_chans": 2, "image_size": [64, 37], "depth": 10, "growthRate": 4, "norm": "bn",
          "act": "relu", "stem": "downsample", "data_dir": "data"}


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_users_umask_not_0600(tmp_path, umask):
    old = os.umask(umask)
    try:
        runfiles.write_text(tmp_path / "a.txt", "x")
        runfiles.write_json(tmp_path / "sub" / "b.json", {"v": 1})
        runfiles.write_bytes(tmp_path / "c.png", b"\x89PNG", fsync=False)
        with open(tmp_path / "plain.txt", "w") as fh:  # what open() gives a new file
            fh.write("x")
    finally:
        os.umask(old)
    for name in ("a.txt", "sub/b.json", "c.png"):
        assert mode(tmp_path / name) == mode(tmp_path / "plain.txt") == 0o666 & ~umask, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "c.png", "plain.txt", "sub"]  # no temp files


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    runfiles.write_text(tmp_path / "a.txt", "old")

    def broken(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        runfiles.atomic_write(tmp_path / "a.txt", broken)
    assert (tmp_path / "a.txt").read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_writer_imports_without_torch():
    code = "from hipx.runs import runfiles; from hipx.data import splits; import sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "False"


def save(run, config, late=False):
    model = build_model("dense_net", in_chans=config["in_chans"], late_fuse=late, depth=10, growth_rate=4)
    runfiles.save_checkpoint(run / runfiles.BEST, model.state_dict(), config, {"mean": [0, 0, 0], "std": [1, 1, 1]},
                             0.4, 3)
    return model


@pytest.mark.parametrize("old,fusion", [({"late_fuse": True}, "late"), ({"late_fuse": False}, "early"),
                                        ({"late_fuse": False, "image_only": True}, "image"),
                                        ({"fusion": "image"}, "image")])
def test_fusion_is_one_value_and_old_two_boolean_configs_still_load(tmp_path, old, fusion):
    config = {**CONFIG, **old, "in_chans": 5 if fusion == "early" else 2}
    model = save(tmp_path, config, late=fusion == "late")
    run = runfiles.load_run(tmp_path)
    assert run.fusion == fusion and run.config.fusion == fusion
    assert "late_fuse" not in run.state["config"] and "image_only" not in run.state["config"]
    assert "late_fuse" not in run.config.to_dict() and "image_only" not in run.config.to_dict()
    assert (run.threshold, run.epoch, run.image_size, run.dir) == (0.4, 3, (64, 37), tmp_path)
    rebuilt = build_model_from_checkpoint(run.state)
    assert rebuilt.late_fuse == (fusion == "late") and not rebuilt.training
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values()))
    assert runfiles.load_run(tmp_path / runfiles.BEST).state["epoch"] == 3  # a checkpoint file will do


def test_weights_that_do_not_fit_the_configuration_are_named(tmp_path):
    save(tmp_path, {**CONFIG, "fusion": "late"}, late=True)
    state = runfiles.load_checkpoint(tmp_path / runfiles.BEST)
    state["config"]["fusion"] = "early"  # no clinical MLP in the configured network
    with pytest.raises(ValueError, match="best.pth: the weights do not fit the configured network"):
        build_model_from_checkpoint(state, "best.pth")


def test_unknown_fusion_mode_is_refused(tmp_path):
    save(tmp_path, {**CONFIG, "fusion": "middle"})
    with pytest.raises(ValueError, match="fusion mode 'middle': choose one of early, late, image"):
        runfiles.load_run(tmp_path)


def test_stale_test_metrics_are_refused(tmp_path):
    save(tmp_path, {**CONFIG, "fusion": "image"})
    run = runfiles.load_run(tmp_path)
    assert run.test_metrics() is None and run.history() is None
    runfiles.write_json(tmp_path / runfiles.TEST_METRICS, {"threshold": 0.5})
    with pytest.raises(ValueError, match="used threshold 0.5 but best.pth holds 0.4"):
        run.test_metrics()


def test_predictions_carry_patients_and_missing_ones_say_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"test_predictions.csv not found.*main.py --test"):
        runfiles.read_predictions(tmp_path)
    runfiles.write_csv(tmp_path / "val_predictions.csv", [{"file": "p7_1_1-1-70-22.5.png", "label": 1,
                                                          "probability": 0.8, "prediction": 1}])
    table = runfiles.read_predictions(tmp_path, "val")
    assert table["patient"].tolist() == ["p7"] and table["probability"].tolist() == [0.8]
    runfiles.write_csv(tmp_path / "test_predictions.csv", [{"file": "x", "p": 1}])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['label', 'probability'\]"):
        runfiles.read_predictions(tmp_path)


def test_split_files_from_folders_or_given(tiny_data, tmp_path):
    files = runfiles.split_files({"data_dir": str(tiny_data)})
    assert {s: len(v) for s, v in files.items()} == {"train": 12, "val": 6, "test": 6}
    assert runfiles.split_files({}, files={s: [str(f) for f in v] for s, v in files.items()}) == files
    with pytest.raises(FileNotFoundError, match=r"data folder .*nowhere \(from the run's configuration\) not found"):
        runfiles.split_files({"data_dir": str(tmp_path / "nowhere")})
    with pytest.raises(ValueError, match="missing \\['test'\\]"):
        runfiles.split_files({}, files={"train": [], "val": []})


def test_run_folder_names_writes_and_reads_its_files(tmp_path):
    """runfiles.Run is the one owner of a run folder's files, for single runs and run groups alike."""
    run = runfiles.Run(tmp_path / "outs" / "g" / "fold_A")
    assert run.dir == runfiles.run_dir("g", "_A", tmp_path / "outs") and run.saved_epochs() == 0
    run.write_config({"model": "dense_net"})
    run.write_history([{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.4}])
    run.write_predictions("test", [{"file": "p1_1_1-1-60-25.png", "label": 1, "probability": "0.75",
                                    "prediction": 1}])
    run.write_test_metrics({"threshold": 0.5, "epoch": 2})
    html = run.write_report("# r\n", "<html></html>", {"n_boot": 10}, {"roc": b"\x89PNG"})
    assert run.read_config() == {"model": "dense_net"} and run.saved_epochs() == 2
    assert run.predictions("test")["patient"].tolist() == ["p1"] and run.is_tested()
    assert html == run.dir / "report.html" and run.report_metrics() == {"n_boot": 10}
    assert (run.dir / "report_figures" / "roc.png").read_bytes() == b"\x89PNG"
    with pytest.raises(ValueError, match="checkpoint was not read"):
        run.test_metrics()  # the staleness check needs the checkpoint: load_run reads it
    run.remove_results()
    assert not run.is_tested() and not run.has_report() and not (run.dir / "report_figures").exists()
    assert run.read_config() == {"model": "dense_net"}  # the run itself stays
    group = runfiles.run_group("g", tmp_path / "outs")
    assert group.runs(having=runfiles.CONFIG) == [run] and group.runs() == []  # no best.pth yet
    group.write_cv_summary({"n_folds": 1}, "# cv\n")
    assert runfiles.read_json(group.summary_file) == {"n_folds": 1} and group.report_file.read_text() == "# cv\n"
