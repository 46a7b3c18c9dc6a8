"""Every command that writes into an existing run takes the run's lock (runfiles.hold_run; issue 32,
item 5): ``report.py --run``, ``report.py --external``, ``visualize_gradcam.py`` into the run folder,
``predict.py``, ``export.py`` and ``compare.py`` with ``--out`` inside it. While another job holds the run each is
refused with one line naming the run and the holder's pid, exit 1, and nothing in the run changes;
once the lock is free the same command works; a command writing elsewhere needs no lock."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import compare
import export
import main
import predict
import report
import synthetic
import visualize_gradcam
from hipx.core.cli import run_main
from hipx.runs import runfiles

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import sys; from hipx.runs import runfiles; claim = runfiles.claim_run(sys.argv[1]); "
        "print('held', flush=True); sys.stdin.read(); claim.release()")
COMMANDS = {"report": report, "external": report, "heatmaps": visualize_gradcam, "predict": predict, "export": export,
            "compare": compare}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained run (site A) and another hospital's folder (site B)."""
    root = tmp_path_factory.mktemp("writers")
    synthetic.generate(root / "A", 16, seed=0, size=(64, 37))
    synthetic.generate(root / "B", 12, seed=1, size=(64, 37), site="B")
    main.main(["--model", "dense_net", "--depth", "10", "--growthRate", "6", "--data_dir", str(root / "A"),
               "--image_size", "64", "37", "--epoch", "1", "--batch_size", "4", "--workers", "0", "--device", "cpu",
               "--bootstrap", "0", "--save_dir", "r", "--fold", "x", "--out_root", str(root / "outs")])
    run = root / "outs" / "r" / "foldx"
    shutil.copytree(run, run.with_name("foldy"), ignore=shutil.ignore_patterns(runfiles.LOCK))  # compare.py's other
    return run, root


def argv(command: str, run: Path, root: Path, inside: bool = True) -> list[str]:
    """The command line of ``command`` writing into ``run`` (or, ``inside=False``, into ``root``)."""
    where = run if inside else root
    image = str(sorted((root / "A" / "test").glob("*.png"))[0])
    return {"report": ["--run", str(run), "--bootstrap", "20", "--gallery", "0"],
            "external": ["--run", str(run), "--external", str(root / "B"), "--bootstrap", "20"],
            "heatmaps": ["--run", str(run), "--index", "0", "--method", "gradcam", "--device", "cpu", "--no_npy"]
            + ([] if inside else ["--out", str(root / "cams")]),
            "predict": ["--run", str(run), image, "--out", str(where / "p.csv"), "--device", "cpu"],
            "export": ["--run", str(run), "--out", str(where / "m.onnx")],
            "compare": [str(run), str(run.with_name("foldy")), "--bootstrap", "20", "--out", str(where / "cmp")]}[command]


def snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder`` with its size and modification time."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def refused(command: str, args: list[str], capsys) -> str:
    """Run ``command`` as its __main__ does; it must exit 1 with one line on stderr, which is returned."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_main(COMMANDS[command].main, args)
    assert exit_.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_writer_into_a_held_run_is_refused_in_one_line_and_writes_nothing(trained, command, capsys):
    run, root = trained
    before = snapshot(run)
    with runfiles.claim_run(run):
        line = refused(command, argv(command, run, root), capsys)
    assert f"the run {run} is in use by another job (pid {os.getpid()}," in line and "nothing was written" in line
    assert snapshot(run) == before


def test_a_report_is_refused_while_another_process_holds_the_run(trained, capsys):
    run, root = trained
    before = snapshot(run)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = refused("report", argv("report", run, root), capsys)
        assert f"the run {run} is in use by another job (pid {holder.pid}, holding {run / runfiles.LOCK})" in line
        assert "report.py --run writes into it" in line
    finally:
        holder.communicate("", timeout=60)
    assert snapshot(run) == before


@pytest.mark.parametrize("command, written", [("heatmaps", "cams"), ("predict", "p.csv"), ("compare", "cmp")])
def test_a_command_writing_elsewhere_needs_no_lock(trained, command, written):
    run, root = trained
    before = snapshot(run)
    with runfiles.claim_run(run):
        COMMANDS[command].main(argv(command, run, root, inside=False))
    assert snapshot(run) == before
    assert (root / written).exists()


def test_without_the_lock_each_writer_works(trained):
    run, root = trained
    report.main(argv("report", run, root))
    assert (run / runfiles.REPORT_METRICS).is_file()
    report.main(argv("external", run, root))
    assert (run / "external" / "B" / "external_metrics.json").is_file()
    visualize_gradcam.main(argv("heatmaps", run, root))
    assert any((run / "cams").glob("*.png"))
    predict.main(argv("predict", run, root))
    assert (run / "p.csv").is_file()
    export.main(argv("export", run, root))
    assert (run / "m.onnx").is_file()
    compare.main(argv("compare", run, root))
    assert (run / "cmp" / "comparison.json").is_file()
    with runfiles.claim_run(run):  # each released the lock when it ended
        pass


def test_where_a_command_writes_names_the_run_to_hold(tmp_path):
    group = tmp_path / "cv"
    for fold in ("fold0", "fold1"):
        runfiles.write_json(group / fold / runfiles.CONFIG, {})
    assert runfiles.writing_into(group, [tmp_path / "elsewhere.csv"]) is None
    assert runfiles.writing_into(group, [None, group / "fold1" / "cams" / "a.png"]) == (group / "fold1").resolve()
    assert runfiles.writing_into(group, [group / "external" / "B"]) == group.resolve()
    assert runfiles.writing_into(group / "fold0" / runfiles.CONFIG, [group / "fold0" / "p.csv"]) == \
        (group / "fold0").resolve()
    plain = tmp_path / "onnx"
    plain.mkdir()
    with runfiles.hold_run(plain, "predict.py"):  # no run there: nothing held, no lock file made
        pass
    assert list(plain.iterdir()) == []
    with runfiles.hold_run(group, "report.py --external"):
        with pytest.raises(Exception, match=rf"the run {group} is in use by another job \(pid {os.getpid()},"):
            with runfiles.hold_run(group, "report.py --external"):
                pass
