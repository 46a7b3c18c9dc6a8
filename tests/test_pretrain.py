"""pretrain.py and selfsup.py on drawn radiographs: the loss falls, the encoder fine-tunes in every
model family and fusion mode, an interrupted run resumes to the same weights, bad images are skipped
and counted, and a user's mistake gets one line."""
import csv
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from hipx.core.cli import run_main
from hipx.data import loader
from hipx.models import build_model
from hipx.runs import runfiles
from hipx.training import pretrain as pretraining
from hipx.training import selfsup
import main
import pretrain
import synthetic
from conftest import ctrl_c_as_in_a_terminal

ROOT = Path(__file__).resolve().parents[1]
SIZE = ("64", "37")
torch.set_num_threads(1)


def pretrain_args(outs: Path, save_dir: str, *more) -> list[str]:
    return ["--image_size", *SIZE, "--depth", "10", "--batch_size", "16", "--workers", "0", "--device", "cpu",
            "--out_root", str(outs), "--save_dir", save_dir, *map(str, more)]


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> Path:
    """synthetic.py's drawn radiographs: 40 patients, 80 images of 64 x 37 in train/ val/ test/."""
    root = tmp_path_factory.mktemp("drawn") / "data"
    assert synthetic.main(["--out", str(root), "--n", "40", "--seed", "0", "--size", *SIZE]) == 0
    return root


@pytest.fixture(scope="module")
def straight(drawn, tmp_path_factory):
    """An uninterrupted 3-epoch pretraining run on the drawn data folder's images."""
    outs = tmp_path_factory.mktemp("outs")
    pretrain.main(["--data_dir", str(drawn), *pretrain_args(outs, "straight", "--epoch", 3)])
    return outs / "straight"


def test_pretraining_lowers_its_loss_and_writes_the_run_folder(straight):
    history = read_rows(straight / "history.csv")
    losses = [float(row["loss"]) for row in history]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    assert math.isclose(float(history[0]["chance_loss"]), math.log(2 * 16 - 1))
    config = runfiles.read_json(straight / "config.json")
    assert config["method"] == "simclr" and config["n_images"] == 80 and config["n_skipped"] == 0
    assert len(read_rows(straight / "images.csv")) == 80 and read_rows(straight / "skipped.csv") == []
    assert (straight / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "epoch 3  loss" in (straight / "train.log").read_text()
    encoder = torch.load(straight / "encoder.pth", weights_only=True)
    assert encoder and all(k.startswith(("features.", "final_act.")) for k in encoder)
    assert "features.conv0.weight" in encoder and not any(k.startswith("projector.") for k in encoder)


@pytest.mark.parametrize("fusion", ["early", "late", "image"])
def test_main_fine_tunes_from_the_run_folder_in_every_fusion_mode(straight, drawn, tmp_path, fusion):
    outs = tmp_path / "outs"
    # a learning rate too small to move a weight: the fine-tuned run still holds the pretrained encoder
    main.main(["--data_dir", str(drawn), "--model", "dense_net", "--depth", "10", "--image_size", *SIZE,
               "--fusion", fusion, "--epoch", "1", "--batch_size", "8", "--workers", "0", "--device", "cpu",
               "--bootstrap", "0", "--out_root", str(outs), "--save_dir", "ft", "--fold", "0",
               "--pretrained", str(straight), "--lrG", "1e-12"])
    tuned = torch.load(outs / "ft" / "fold0" / "best.pth", weights_only=True)["model"]
    encoder = torch.load(straight / "encoder.pth", weights_only=True)
    weights = [k for k, v in encoder.items() if v.is_floating_point() and "running_" not in k]
    for key in weights:
        got = tuned[key]
        if key == "features.conv0.weight" and fusion == "early":  # 2 image + 3 clinical input channels
            assert got.shape[1] == 5 and got[:, 2:].abs().sum() > 0  # the clinical planes: initialised afresh
            got = got[:, :2]
        assert torch.allclose(got, encoder[key], atol=1e-6), key


def test_a_torchvision_densenet_encoder_loads_into_its_family(drawn, tmp_path):
    outs = tmp_path / "outs"
    pretrain.main([str(drawn / "train"), *pretrain_args(outs, "tv", "--epoch", 1),
                   "--model", "densenet121", "--batch_size", "8"])
    encoder = torch.load(outs / "tv" / "encoder.pth", weights_only=True)
    for in_chans, late in ((2, True), (5, False)):
        model = build_model("densenet121", in_chans=in_chans, late_fuse=late, pretrained=str(outs / "tv"))
        got = model.state_dict()
        for key in ("features.denseblock4.denselayer16.conv2.weight", "features.norm5.running_mean"):
            assert torch.equal(got[key], encoder[key]), key


def test_resume_after_an_interruption_equals_an_uninterrupted_run(straight, drawn, tmp_path, monkeypatch, caplog):
    outs = tmp_path / "outs"
    args = ["--data_dir", str(drawn), *pretrain_args(outs, "cut", "--epoch", 3)]
    one_epoch = pretraining.train_one_epoch

    def interrupted(*a, **k):
        if a[9] == 2:  # the epoch argument: Ctrl-C in the middle of epoch 2
            raise KeyboardInterrupt
        return one_epoch(*a, **k)

    monkeypatch.setattr(pretraining, "train_one_epoch", interrupted)
    with pytest.raises(SystemExit) as stop:
        pretrain.main(args)
    assert stop.value.code == 130
    said = [r.getMessage() for r in caplog.records if "interrupted" in r.getMessage()]
    assert len(said) == 1 and "interrupted in epoch 2; epochs 1-1 are saved" in said[0]
    assert said[0].endswith(f"pretrain.py --resume --save_dir cut --out_root {outs}")
    assert len(read_rows(outs / "cut" / "history.csv")) == 1

    monkeypatch.setattr(pretraining, "train_one_epoch", one_epoch)
    pretrain.main(["--resume", "--save_dir", "cut", "--out_root", str(outs)])
    resumed = torch.load(outs / "cut" / "encoder.pth", weights_only=True)
    whole = torch.load(straight / "encoder.pth", weights_only=True)
    assert resumed.keys() == whole.keys()
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    losses = [[row["loss"] for row in read_rows(run / "history.csv")] for run in (outs / "cut", straight)]
    assert losses[0] == losses[1]


def test_unreadable_images_are_skipped_and_counted(drawn, tmp_path):
    films = tmp_path / "films"
    (films / "ward").mkdir(parents=True)
    for path in sorted((drawn / "train").glob("*.png"))[:20]:
        (films / "ward" / path.name).write_bytes(path.read_bytes())
    (films / "ward" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (films / "empty.dcm").write_bytes(b"")
    cv2.imwrite(str(films / "tiny.png"), np.zeros((5, 5), np.uint8))
    outs = tmp_path / "outs"
    pretrain.main([str(films), *pretrain_args(outs, "skip", "--epoch", 1, "--batch_size", 8)])
    run = outs / "skip"
    skipped = read_rows(run / "skipped.csv")
    assert sorted(Path(row["file"]).name for row in skipped) == ["corrupt.png", "empty.dcm", "tiny.png"]
    assert all(row["reason"] for row in skipped)
    assert "too small" in next(row["reason"] for row in skipped if row["file"].endswith("tiny.png"))
    assert runfiles.read_json(run / "config.json")["n_skipped"] == 3
    assert "skipped 3 of 23 files" in (run / "train.log").read_text()


def test_femur_crops_give_two_images_per_pelvis(tmp_path):
    synthetic.generate_pelvis(tmp_path / "export", 2, seed=1, hip_size=(214, 102), upside_down=0.0)
    files = selfsup.find_images([tmp_path / "export"])
    assert len(files) == 2 and all(f.suffix == ".png" for f in files)
    crops = selfsup.decode(files[0], (64, 37), roi="femur")
    assert len(crops) == 2 and all(c.shape == (64, 37) and c.dtype == np.uint8 for c in crops)
    assert selfsup.decode(files[0], (64, 37))[0].shape == (64, 37)


def test_views_are_reproducible_two_channel_radiographs(drawn):
    gray = cv2.imread(str(sorted((drawn / "train").glob("*.png"))[0]), cv2.IMREAD_GRAYSCALE) / 255.0
    views = selfsup.Views()
    a = views(gray.astype(np.float32), np.random.default_rng([0, 1, 2]))
    b = views(gray.astype(np.float32), np.random.default_rng([0, 1, 2]))
    c = views(gray.astype(np.float32), np.random.default_rng([0, 1, 3]))
    assert a.shape == (2, 64, 37) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(a[1], loader.enhance(a[0]))  # the enhanced channel of the changed radiograph


def test_nt_xent_against_a_hand_computed_value():
    z = torch.eye(2)
    loss, found = selfsup.nt_xent(z, z.clone(), temperature=1.0)
    # each anchor: positive similarity 1, two others 0 -> -log(e / (e + 2))
    assert math.isclose(loss.item(), -math.log(math.e / (math.e + 2)), rel_tol=1e-6)
    assert found.item() == 1.0
    gathered = (torch.cat([torch.zeros(2, 2), z]), torch.cat([torch.zeros(2, 2), z]), 2)
    far, _ = selfsup.nt_xent(z, z.clone(), 1.0, gathered)  # two more images (on another rank) as negatives
    assert math.isclose(far.item(), -math.log(math.e / (math.e + 2 + 4)), rel_tol=1e-6)


@pytest.mark.parametrize("argv, says", [
    (["/no/such/folder"], "no/such/folder: no such folder"),
    ([], "no images: give one or more FOLDERs"),
    (["--resume", "--save_dir", "none"], "--resume: no pretraining run at"),
    (["--batch_size", "1", "x"], "--batch_size 1: SimCLR needs at least 2"),
    (["--data_dir", "/no/data"], "no folder /no/data/train"),
])
def test_a_mistake_gets_one_line(argv, says, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        run_main(pretrain.main, [*argv, "--out_root", str(tmp_path / "outs"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 1 and len(err) == 1 and "Traceback" not in err[0], err
    assert says in err[0] and "error:" in err[0]
    assert not (tmp_path / "outs").exists()


def test_existing_runs_and_unreadable_folders_are_refused_in_one_line(straight, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"nothing")
    cases = [([str(bad), "--save_dir", "new", "--out_root", str(tmp_path)], "none of the 1 image files could be read"),
             ([str(bad), "--save_dir", straight.name, "--out_root", str(straight.parent)], "already holds a run"),
             (["--resume", "--save_dir", straight.name, "--out_root", str(straight.parent), "--epoch", "9"],
              "--epoch 9: the run"),
             (["--epoch", "0", str(bad)], "argument --epoch: must be > 0")]
    for argv, says in cases:
        with pytest.raises(SystemExit) as stop:
            run_main(pretrain.main, argv)
        err = capsys.readouterr().err
        assert stop.value.code in (1, 2) and "Traceback" not in err and says in err, err
    assert not (tmp_path / "new").exists()


def test_resume_of_a_finished_run_changes_no_byte_and_refuses_other_images(drawn, tmp_path, capsys, caplog):
    films = tmp_path / "films"
    films.mkdir()
    for path in sorted((drawn / "train").glob("*.png"))[:16]:
        (films / path.name).write_bytes(path.read_bytes())
    outs = tmp_path / "outs"
    pretrain.main([str(films), *pretrain_args(outs, "r", "--epoch", 1, "--batch_size", 8)])
    run = outs / "r"
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()}
    capsys.readouterr()
    caplog.set_level("INFO")
    with pytest.raises(SystemExit) as stop:  # finished: nothing to train, nothing written, exit 0
        run_main(pretrain.main, ["--resume", "--save_dir", "r", "--out_root", str(outs)])
    said = capsys.readouterr()
    assert stop.value.code == 0
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()} == before
    assert f"the pretraining run {run} finished all 1 epochs; nothing to resume, nothing changed" in caplog.text
    assert said.out.startswith(f"encoder (1 epochs, final loss ") and f"in {run / 'encoder.pth'}; fine-tune" in said.out
    # stopped after epoch 1 of 2, then resumed on other images: refused before anything is written
    config = runfiles.read_json(run / "config.json")
    runfiles.write_json(run / "config.json", {**config, "epoch": 2})
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    (films / "new.png").write_bytes((films / sorted(p.name for p in films.iterdir())[0]).read_bytes())
    with pytest.raises(SystemExit) as stop:
        run_main(pretrain.main, ["--resume", "--save_dir", "r", "--out_root", str(outs)])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 1 and len(err) == 1 and "the images are not those the run" in err[0], err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


@pytest.mark.slow
def test_ctrl_c_exits_130_with_the_resume_command(drawn, tmp_path):
    outs = tmp_path / "outs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "pretrain.py", "--data_dir", str(drawn), *pretrain_args(outs, "sig", "--epoch", 8)]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=ctrl_c_as_in_a_terminal)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if (outs / "sig" / "history.csv").is_file() and len(read_rows(outs / "sig" / "history.csv")) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    said, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in said, said
    line = next(line for line in said.splitlines() if "interrupted in epoch" in line)
    command = line.split("continue exactly from there with: ")[1]
    resumed = subprocess.run(shlex.split(command), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert len(read_rows(outs / "sig" / "history.csv")) == 8


@pytest.mark.slow
def test_torchrun_two_gloo_processes_pretrain_one_encoder(drawn, tmp_path):
    outs = tmp_path / "outs"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run([*torchrun, "pretrain.py", "--data_dir", str(drawn),
                           *pretrain_args(outs, "ddp", "--epoch", 2, "--batch_size", 8)], cwd=ROOT, text=True,
                          capture_output=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    history = read_rows(outs / "ddp" / "history.csv")
    assert len(history) == 2 and math.isclose(float(history[0]["chance_loss"]), math.log(2 * 16 - 1))
    assert "rank 0 of 2" in (outs / "ddp" / "train.log").read_text()
    assert torch.load(outs / "ddp" / "encoder.pth", weights_only=True)
