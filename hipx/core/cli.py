"""What every script shares on its command line: value types (argparse ``type=``), so every script
refuses a bad value the same way naming what is accepted; the flags several scripts take (data
folder, device, seed, output, bootstrap), each declared once here with its one default and help
text; and the entry point, :func:`run_main`, which turns a user's mistake into one clear line and
a non-zero exit instead of a traceback (:func:`run_script` for a script with heavy imports).

Stdlib (and choices.py) only: a script imports this before torch, so ``--help`` and flag errors answer
at once.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Callable, Sequence

from hipx.core.choices import CI_INTERVALS, DEVICES

DEBUG_VARIABLE = "HIPX_DEBUG"  # HIPX_DEBUG=1: full tracebacks, also for a user's mistake
INTERRUPTED = 130  # the shell's exit status for Ctrl-C (128 + SIGINT)
_PROJECT = Path(__file__).resolve().parents[2]  # the checkout: its commands, and the package below them


class UserError(Exception):
    """A problem with the user's data, files or flags; the message names which and what is accepted."""


def str2bool(text: str | bool) -> bool:
    """yes/no, true/false, t/f, y/n, 1/0 (any case), as the original's ``--late_fuse True``."""
    if isinstance(text, bool):
        return text
    value = text.strip().lower()
    if value in ("yes", "true", "t", "y", "1"):
        return True
    if value in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes/no/true/false/1/0, got {text!r}")


def positive(kind=int):
    """A parser of numbers of ``kind`` that must be > 0: ``type=positive(int)``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


positive_int = positive(int)


# ----------------------------------------------------------------------------- flags several scripts take
# ``where`` is a parser or an argument group (``parser.add_argument_group("run")``).

def add_data_dir(where, default: str | None = "data", unset: str = "") -> None:
    """``--data_dir``, the data folder; ``unset`` says what a script does when the default is None."""
    shown = "%(default)s" if default is not None else unset
    where.add_argument("--data_dir", default=default, help=f"data folder with train/ val/ test/ (default: {shown})")


def add_device(where) -> None:
    """``--device``: where the network runs."""
    where.add_argument("--device", choices=DEVICES, default="auto",
                       help="where the network runs; auto: CUDA when available, else the CPU (default: %(default)s)")


def add_seed(where, what: str) -> None:
    """``--seed``; ``what`` it seeds, e.g. "the bootstrap"."""
    where.add_argument("--seed", type=int, default=0, help=f"seed of {what} (default: %(default)s)")


def add_bootstrap(where, off: str | None = None, interval: bool = False, seed: bool = False,
                  default: int | None = 2000, unset: str = "") -> None:
    """``--bootstrap N``, patient-bootstrap resamples for confidence intervals; with ``interval`` also
    ``--interval``, with ``seed`` the bootstrap's own ``--seed``. ``off``: what 0 means, for a script
    that accepts it (it refuses a negative N itself); otherwise N must be positive. ``unset``: what a
    None ``default`` means."""
    shown = "%(default)s" if default is not None else unset
    where.add_argument("--bootstrap", type=int if off else positive_int, default=default, metavar="N",
                       help="patient-bootstrap resamples for the confidence intervals"
                            + (f"; 0 = {off}" if off else "") + f" (default: {shown})")
    if interval:
        where.add_argument("--interval", choices=CI_INTERVALS, default="bca",
                           help="bootstrap interval: bca = bias-corrected and accelerated, percentile = plain "
                                "percentile (default: %(default)s)")
    if seed:
        add_seed(where, "the bootstrap")


def add_output(where, what: str, default: str | None = None, unset: str | None = None,
               overwrite: str | None = None) -> None:
    """``--out`` (``what`` goes there; required when there is neither ``default`` nor ``unset``, the
    text for a None default) and, for a script that refuses to replace its earlier output,
    ``--overwrite`` (``overwrite``: what it replaces)."""
    required = default is None and unset is None
    shown = "" if required else " (default: %(default)s)" if default is not None else f" (default: {unset})"
    where.add_argument("--out", required=required, default=default, help=what + shown)
    if overwrite:
        add_overwrite(where, overwrite)


def add_overwrite(where, what: str, note: str = "") -> None:
    """``--overwrite``: a script's earlier output (``what``) is replaced only when it is given."""
    where.add_argument("--overwrite", action="store_true", help=f"allow replacing {what} (refused otherwise){note}")


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """Destinations the user set on the command line (a flag left at its default is not listed),
    e.g. ``{"epoch", "save_dir"}``: argparse fills in a default only where the namespace lacks it."""
    unset = object()
    namespace = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != argparse.SUPPRESS})
    parsed = parser.parse_args(argv, namespace)
    return {dest for dest, value in vars(parsed).items() if value is not unset}


def raised_by_project(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc`` is this project's code: an error the code raised on
    purpose about the input (its message was written for the user), not one from inside a library."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return False
    return _in_project(frames[-1].filename)


def _in_project(filename: str) -> bool:
    """Whether ``filename`` is one of this project's commands or a module of its package."""
    path = Path(filename).resolve()
    return path.parent == _PROJECT or _PROJECT / "hipx" in path.parents


def is_user_error(exc: BaseException) -> bool:
    """A user's mistake rather than a bug: a :class:`UserError`; a file-system problem (missing file,
    permission, full disk); or a ``ValueError``/``LookupError`` the project raised about its input."""
    if isinstance(exc, (UserError, OSError)):
        return True
    return isinstance(exc, (ValueError, LookupError)) and not isinstance(exc, KeyError) and raised_by_project(exc)


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file=None, line: str | None = None) -> None:
    """``warnings.showwarning`` of the commands: a Python warning becomes one log line in the run's
    format (console and train.log), its message in the project's words, instead of Python's
    ``file.py:55: UndefinedMetricWarning: ...`` followed by the source line. A warning from a library
    names its kind and the library, so it can be looked up."""
    text = _one_line(str(message))
    if not (_in_project(filename) or category.__module__.split(".")[0] == "hipx"):
        parts = Path(filename).parts
        where = next((parts[i + 1] for i, p in enumerate(parts[:-1]) if p in ("site-packages", "dist-packages")),
                     Path(filename).stem)
        text += f" ({category.__name__} from {Path(where).stem})"
    root = logging.getLogger()
    if not root.handlers:  # a command that has not set up its logging yet
        from hipx.core import runtime

        runtime.setup_logging()
    logging.getLogger("hipx.warnings").warning("%s", text)


def _tell(prog: str, message: str) -> None:
    """One line on stderr, and into any log file open (the run's train.log), so the log says why."""
    line = f"{prog}: error: {message}"
    print(line, file=sys.stderr, flush=True)
    record = logging.LogRecord(prog, logging.ERROR, __file__, 0, "%s", (message,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def run_main(main: Callable[[list[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Run a script's ``main`` as its ``__main__`` does: a user's mistake ends with one line
    ``<script>: error: <message>`` and exit status 1, Ctrl-C with 130, both without a traceback.
    Anything else is a bug and keeps its traceback; ``HIPX_DEBUG=1`` shows the traceback always.
    Python warnings meanwhile are log lines (:func:`show_warning`)."""
    prog = os.path.basename(sys.argv[0]) or "python"
    debug = os.environ.get(DEBUG_VARIABLE, "").strip() not in ("", "0")
    shown, warnings.showwarning = warnings.showwarning, show_warning
    try:
        result = main(list(argv) if argv is not None else None)
    except SystemExit as exc:  # argparse has printed its own line; a message of ours is printed as one
        if isinstance(exc.code, str):
            _tell(prog, _one_line(exc.code))
            sys.exit(1)
        raise
    except KeyboardInterrupt:
        if debug:
            raise
        _tell(prog, "interrupted (Ctrl-C)")
        sys.exit(INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - sorted into the user's mistakes and bugs just below
        if debug or not is_user_error(exc):
            raise
        _tell(prog, _one_line(str(exc)) or type(exc).__name__)
        sys.exit(1)
    finally:
        warnings.showwarning = shown
    sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)


def run_script(build_parser: Callable[[], argparse.ArgumentParser], script: str | os.PathLike) -> None:
    """The ``__main__`` of a script whose heavy imports (torch, pandas, the image libraries) stand
    below this call: the flags are checked first, so ``--help`` and a mistyped flag answer at once;
    then the script is imported as its module -- loading those libraries -- and its ``main`` is run
    by :func:`run_main`. ``script`` is the script's ``__file__``; the call never returns."""
    build_parser().parse_args()
    run_main(importlib.import_module(Path(script).stem).main)


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in message.strip().splitlines() if line.strip())
