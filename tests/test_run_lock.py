"""The run-folder lock (runfiles.claim_run) in the fast suite: one run folder takes one job at a time
(issue 32, item 8: caught only by test_bad_inputs_2's two real trainings, marked slow)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import main
from hipx.core.cli import UserError
from hipx.runs import runfiles

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import sys; from hipx.runs import runfiles; claim = runfiles.claim_run(sys.argv[1]); "
        "print('held', flush=True); sys.stdin.read(); claim.release()")


def train_args(data: Path, outs: Path) -> list[str]:
    return ["--model", "dense_net", "--depth", "10", "--growthRate", "6", "--data_dir", str(data),
            "--image_size", "64", "37", "--epoch", "1", "--batch_size", "4", "--workers", "0", "--device", "cpu",
            "--bootstrap", "0", "--save_dir", "r", "--fold", "x", "--out_root", str(outs)]


def test_a_second_claim_is_refused_naming_the_holder_until_the_first_is_released(tmp_path):
    folder = tmp_path / "outs" / "r" / "foldx"
    first = runfiles.claim_run(folder)
    try:
        with pytest.raises(UserError, match=rf"in use by another job \(pid {os.getpid()}\b"):
            runfiles.claim_run(folder)
    finally:
        first.release()
    runfiles.claim_run(folder).release()  # free again once released
    assert [p.name for p in folder.iterdir()] == [runfiles.LOCK]


def test_main_refuses_a_run_folder_another_process_holds_and_writes_nothing(tiny_data, tmp_path):
    outs = tmp_path / "outs"
    folder = outs / "r" / "foldx"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"{folder}.* in use by another job \(pid {holder.pid}\b"):
            main.main(train_args(tiny_data, outs))
        assert [p.name for p in folder.iterdir()] == [runfiles.LOCK]  # refused before any file was written
    finally:
        holder.communicate("", timeout=60)  # end of input: the holder releases the folder and exits
    assert holder.returncode == 0
    main.main(train_args(tiny_data, outs))  # the same command, once the folder is free, trains
    assert (folder / runfiles.BEST).is_file()
