"""cli.py: the flags several scripts share keep each script's default, and run_script checks the
command line before the imports below it."""
import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def parsers() -> dict[str, argparse.ArgumentParser]:
    import compare
    import main
    import predict
    import preprocess_filenames
    import report
    import synthetic
    import visualize_gradcam
    return {"main": main.build_parser(), "predict": predict.build_parser(), "report": report.build_parser(),
            "compare": compare.build_parser(), "visualize_gradcam": visualize_gradcam.build_parser(),
            "preprocess_filenames": preprocess_filenames.build_parser(), "synthetic": synthetic.build_parser()}


def default(parser: argparse.ArgumentParser, flag: str):
    return next(a.default for a in parser._actions if flag in a.option_strings)


def test_each_script_keeps_its_defaults():
    p = parsers()
    assert {name: default(p[name], "--seed") for name in ("main", "report", "compare", "preprocess_filenames",
                                                          "synthetic")} == dict.fromkeys(
        ("main", "report", "compare", "preprocess_filenames", "synthetic"), 0)
    assert default(p["main"], "--data_dir") == "data"
    assert default(p["report"], "--data_dir") is None and default(p["visualize_gradcam"], "--data_dir") is None
    assert default(p["predict"], "--out") == "predictions.csv" and default(p["visualize_gradcam"], "--out") is None
    for name in ("main", "predict", "visualize_gradcam"):
        assert default(p[name], "--device") == "auto"
    for name in ("main", "compare"):
        assert default(p[name], "--bootstrap") == 2000
    assert default(p["report"], "--bootstrap") is None  # with --cv the summary's own resamples, else 2000


def test_bootstrap_zero_means_no_report_in_main_only(capsys):
    p = parsers()
    assert p["main"].parse_args(["--bootstrap", "0"]).bootstrap == 0
    with pytest.raises(SystemExit):
        p["report"].parse_args(["--run", "x", "--bootstrap", "0"])
    assert "--bootstrap: must be > 0, got 0" in capsys.readouterr().err


def test_out_is_required_where_there_is_no_default(capsys):
    with pytest.raises(SystemExit):
        parsers()["synthetic"].parse_args(["--n", "5"])
    assert "the following arguments are required: --out" in capsys.readouterr().err
    assert parsers()["compare"].parse_args(["a", "b"]).out is None  # compare prints its table without --out


def test_shared_flags_are_grouped_in_help():
    text = parsers()["report"].format_help()
    group = text[text.index("confidence intervals"):]
    assert "--bootstrap N" in group and "--interval" in group and "seed of the bootstrap" in group


def test_run_script_checks_flags_before_the_imports_below_it(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text(textwrap.dedent('''
        import argparse, sys
        from hipx.core.cli import UserError, run_script

        def build_parser():
            p = argparse.ArgumentParser()
            p.add_argument("--n", type=int, required=True)
            return p

        def main(argv=None):
            args = build_parser().parse_args(argv)
            if args.n < 0:
                raise UserError(f"--n {args.n}: must be >= 0")
            print("ran", args.n, "heavy" in sys.modules)
            return 3

        if __name__ == "__main__":
            run_script(build_parser, __file__)

        import heavy  # noqa: E402
    '''))
    (tmp_path / "heavy.py").write_text("print('heavy loaded')\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def run(*args):
        return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=60)

    helped = run("--help")
    assert helped.returncode == 0 and "heavy loaded" not in helped.stdout
    wrong = run("--m", "1")
    assert wrong.returncode == 2 and "heavy loaded" not in wrong.stdout
    done = run("--n", "2")
    assert done.returncode == 3 and done.stdout.splitlines() == ["heavy loaded", "ran 2 True"]
    mistake = run("--n", "-1")
    assert mistake.returncode == 1 and mistake.stderr.strip() == "tool.py: error: --n -1: must be >= 0"


def test_run_main_shows_python_warnings_as_one_log_line(tmp_path):
    """A warning raised meanwhile is one line in the log's format (no ``file.py:55: Category:`` and no
    source line): the project's own in its words, a library's naming its kind and the library."""
    library = tmp_path / "site-packages" / "somelib"
    library.mkdir(parents=True)
    (library / "__init__.py").write_text("import warnings\n\ndef old():\n"
                                         "    warnings.warn('old() is deprecated,\\nuse new()', UserWarning)\n")
    script = tmp_path / "tool.py"
    script.write_text(textwrap.dedent('''
        import logging
        from hipx.core.cli import run_main

        def main(argv=None):
            from hipx.stats import metrics
            import somelib
            metrics.roc_auc([1, 1], [0.2, 0.3])
            somelib.old()
            print("done")

        if __name__ == "__main__":
            run_main(main)
    '''))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(library.parent)]))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=60)
    assert done.returncode == 0 and done.stdout == "done\n"
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr
    for line in lines:
        stamp, level, text = line.split(" ", 2)
        assert len(stamp) == 8 and stamp[2] == stamp[5] == ":" and level == "WARNING"
    assert lines[0].endswith("WARNING roc_auc undefined for this split (one class or 0/0) and set to NaN: n_pos=2, "
                             "n_neg=0")
    assert lines[1].endswith("WARNING old() is deprecated, use new() (UserWarning from somelib)")
