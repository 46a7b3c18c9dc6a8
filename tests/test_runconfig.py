"""runconfig.py: the typed run configuration, built from the flags once and read back from saved runs."""
import json
from pathlib import Path

import pytest

from hipx.core import cli
import main
from hipx.core import runconfig
from hipx.core.runconfig import RunConfig

FIXTURE = Path(__file__).parent / "fixtures" / "old_run"  # a run made by main.py at cc93d00, before RunConfig


def test_defaults_are_main_pys_defaults():
    """The dataclass's defaults stand in for keys old runs lack; they must be the flags' own."""
    parser = main.build_parser()
    defaults = {a.dest: a.default for a in parser._actions if a.dest in runconfig.FIELDS}
    cfg = RunConfig()
    differ = {k: (v, getattr(cfg, k)) for k, v in defaults.items()
              if k not in ("fusion", "focal_gamma") and list(v if isinstance(v, (list, tuple)) else [v])
              != list(getattr(cfg, k) if isinstance(getattr(cfg, k), (list, tuple)) else [getattr(cfg, k)])}
    assert differ == {}
    # every flag that is a setting is a field; the rest are actions or the fusion flags' older spellings
    rest = {a.dest for a in parser._actions} - set(runconfig.FIELDS) - {"help"}
    assert rest == {"late_fuse", "image_only", "test", "resume", "extend_epochs", "config", "overwrite"}


@pytest.mark.parametrize("flags,fusion", [([], "early"), (["--late_fuse", "True"], "late"), (["--image_only"], "image"),
                                          (["--fusion", "late", "--late_fuse", "yes"], "late"),
                                          (["--late_fuse", "False"], "early")])
def test_from_args_normalises_the_three_fusion_flags_once(flags, fusion):
    args = main.build_parser().parse_args([*flags, "--augment", "flip, crop"])
    before = vars(args).copy()
    cfg = RunConfig.from_args(args)
    assert cfg.fusion == fusion and cfg.augment == "flip,crop" and cfg.focal_gamma == 2.0
    assert vars(args) == before  # the flags are read, never edited


def test_old_keys_are_converted_in_one_place():
    old = {"model": "dense_net", "late_fuse": False, "image_only": True, "in_chans": 2, "image_size": [64, 37],
           "depth": 10, "growthRate": 4, "norm": "bn", "act": "relu", "stem": "downsample", "threads": "1 thread",
           "test": False, "resume": False, "cv_folds": 3, "cv_fold": 1, "seed": 7, "cv_val": None}
    cfg = RunConfig.from_dict(old)
    assert cfg.fusion == "image" and cfg.tta == "none" and cfg.drop_rate == 0.0 and cfg.ema == 0.0
    assert (cfg.cv_design, cfg.cv_seed, cfg.cv_val) == ("heldout", 7, 0.2)  # a fold from before designs
    assert "late_fuse" not in cfg.to_dict() and "threads" not in cfg.to_dict()
    with pytest.raises(ValueError, match="lacks in_chans"):
        RunConfig.from_dict({k: v for k, v in old.items() if k != "in_chans"})
    with pytest.raises(ValueError, match="fusion mode 'mid'"):
        RunConfig.from_dict({**old, "fusion": "mid"})


def test_a_config_json_made_before_runconfig_reads_back():
    saved = json.loads((FIXTURE / "config.json").read_text())
    cfg = RunConfig.from_dict(saved)
    assert (cfg.fusion, cfg.tta, cfg.in_chans, cfg.image_size) == ("late", "flip", 2, [64, 37])
    assert cfg.cv_folds == 0 and not cfg.is_fold and not cfg.runs_folds
    assert RunConfig.from_dict(cfg.to_dict()) == cfg  # written and read back unchanged


def test_config_reruns_a_saved_fold_run_exactly_and_logs_what_the_flags_change(tiny_data, tmp_path, caplog):
    """main.py --config outs/<run>/fold<k>/config.json --save_dir again reproduces that run."""
    outs = tmp_path / "outs"
    flags = ["--model", "dense_net", "--depth", "10", "--growthRate", "4", "--data_dir", str(tiny_data),
             "--image_size", "64", "37", "--epoch", "2", "--batch_size", "4", "--workers", "0", "--device", "cpu",
             "--out_root", str(outs), "--bootstrap", "0", "--deterministic", "--cpus", "1", "--late_fuse", "True"]
    main.main([*flags, "--save_dir", "cv", "--fold", "_a", "--folds", "2", "--cv", "heldout"])
    fold = outs / "cv" / "fold_a1"
    with caplog.at_level("INFO", logger="main"):
        again = main.main(["--config", str(fold / "config.json"), "--save_dir", "again"])
    rerun = outs / "again" / "fold_a1"  # one run, not a second cross-validation
    assert sorted(p.name for p in (outs / "again").iterdir()) == ["fold_a1"]
    for name in ("test_metrics.json", "test_predictions.csv", "val_predictions.csv"):
        assert (rerun / name).read_bytes() == (fold / name).read_bytes(), name
    assert again["n_images"] == 6
    saved, rerun_config = (json.loads((d / "config.json").read_text()) for d in (fold, rerun))
    assert {k for k in saved if saved[k] != rerun_config[k]} == {"save_dir"}
    assert "--save_dir again (the saved configuration says cv)" in caplog.text
    # a run folder names its config.json; a flag beside it changes the new run only
    main.main(["--config", str(fold), "--save_dir", "longer", "--epoch", "3"])
    assert json.loads((outs / "longer" / "fold_a1" / "config.json").read_text())["epoch"] == 3
    with pytest.raises(cli.UserError, match=r"--config .*nowhere: no .*nowhere \(no such file\); give a run folder"):
        main.main(["--config", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="--config re-runs a saved configuration as a new run; --test"):
        main.main(["--config", str(fold), "--test", "--save_dir", "cv", "--fold", "_a1"])


def test_a_run_made_before_runconfig_still_loads_for_every_tool(tiny_data, tmp_path):
    """The fixture is a run main.py wrote at cc93d00 (its config.json and best.pth, late fusion, flip TTA):
    --test, predict.py, visualize_gradcam.py and report.py read it as they read a new run."""
    import shutil

    import report
    import visualize_gradcam
    from hipx.inference import predict

    run = tmp_path / "outs" / "old" / "fold_old"
    shutil.copytree(FIXTURE, run)
    result = main.main(["--test", "--save_dir", "old", "--fold", "_old", "--out_root", str(tmp_path / "outs"),
                        "--data_dir", str(tiny_data), "--workers", "0", "--device", "cpu", "--bootstrap", "0"])
    tested = json.loads((run / "test_metrics.json").read_text())
    assert result["n_images"] == tested["n_images"] == 6 and tested["epoch"] == 1
    rows = predict.predict(run, [tiny_data / "test"])  # --tta auto: the run's own (flip), as --test scored it
    scored = {Path(r["file"]).name: r["probability"] for r in rows}
    with open(run / "test_predictions.csv") as fh:
        import csv
        for row in csv.DictReader(fh):
            assert scored[row["file"]] == pytest.approx(float(row["probability"]), abs=1e-6)
    visualize_gradcam.main(["--run", str(run), "--index", "0", "--method", "gradcam", "--data_dir", str(tiny_data),
                            "--no_npy", "--device", "cpu"])
    assert list((run / "cams").glob("*.png"))
    saved = report.main(["--run", str(run), "--data_dir", str(tiny_data), "--bootstrap", "20"])
    assert saved["run_config"]["fusion"] == "late" and (run / "report.html").is_file()
