"""The run folder ``outs/<save_dir>/fold<fold>/``: everything written into it, and everything read back.

Written: every file atomically (temporary file in the same folder, then ``os.replace``), so a
crash never leaves a half-written checkpoint or table; a new file gets the permissions of the
user's umask, as ``open()`` would give it. Preprocessing and the demo generator use the same
writer, so torch is imported only where a checkpoint is saved or loaded.

Read back, for every tool (``main.py --test/--resume``, ``predict.py``, ``report.py``,
``visualize_gradcam.py``): :func:`load_run` (the validated checkpoint with the run's
configuration), :func:`read_predictions` (a split's scored images) and :func:`split_files` (the
images of the run's train, val and test). Checkpoints hold only tensors and plain Python values
and are read with ``torch.load(weights_only=True)``: a file that would need unpickling arbitrary
objects is refused.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from hipx.core.files import (  # noqa: F401 - runfiles.write_* : the run folder's writers
    TEMP_NAME, _umask, disk_full, _size_text, atomic_write, write_bytes, write_text, _jsonable, write_json, read_json, csv_text, write_csv)
from hipx.core import runconfig
from hipx.core.runconfig import RunConfig

if TYPE_CHECKING:
    import pandas as pd
    import torch

CHECKPOINT_FORMAT = "osteoporosis-hip-classifier/1"
CHECKPOINT_KEYS = ("format", "model", "config", "clinical_stats", "threshold", "epoch")
BEST, LAST = "best.pth", "last.pth"
CONFIG, HISTORY, TEST_METRICS = "config.json", "history.csv", "test_metrics.json"
DATA_FILES = "data_files.csv"  # the images of the run's splits (relative to its data folder) and their sizes
PREDICTIONS = {"val": "val_predictions.csv", "test": "test_predictions.csv"}
PREDICTION_COLUMNS = ("file", "label", "probability", "prediction")
MEASURE_COLUMNS = ("measure", "predicted")  # graded targets (targets.py): measured value, predicted value/class
TRAIN_LOG = "train.log"
# the run report (report.py); report_metrics.json is written last, so its presence means the report is whole
REPORT_MD, REPORT_HTML, REPORT_METRICS, REPORT_FIGURES = ("report.md", "report.html", "report_metrics.json",
                                                         "report_figures")
# the model card (reports/model_card.py), written with every run report and cross-validation summary
MODEL_CARD = "model_card.md"
# what a finished run's test and report consist of; --extend_epochs removes them (they describe the shorter run)
RESULTS = (TEST_METRICS, PREDICTIONS["test"], REPORT_MD, REPORT_HTML, REPORT_METRICS, REPORT_FIGURES, MODEL_CARD)
# a cross-validation run group outs/<save_dir>/: its fold runs fold*/ and the summary over them
CV_SUMMARY, CV_REPORT, CV_REPORT_HTML = "cv_summary.json", "cv_report.md", "cv_report.html"
RUN_FOLDER = ("a run folder is what main.py writes, outs/<save_dir>/fold<fold>/, holding best.pth (weights with "
              "the run's configuration, clinical statistics and threshold), config.json and test_predictions.csv")


def run_dir(save_dir: str | os.PathLike, fold: str, root: str | os.PathLike = "outs") -> Path:
    """``<root>/<save_dir>/fold<fold>`` as in the original work (``--fold _Dense_LF`` -> ``fold_Dense_LF``)."""
    return Path(root) / str(save_dir) / f"fold{fold}"


def run_group(save_dir: str | os.PathLike, root: str | os.PathLike = "outs") -> "RunGroup":
    """``<root>/<save_dir>``: the run folders of one group (the folds of a cross-validation)."""
    return RunGroup(Path(root) / str(save_dir))


def learning_curve_folder(size: float | int) -> str:
    """The folder, inside a cross-validation's group, of the cross-validation on one learning-curve subset
    size (main.py --learning_curve): ``lc_0.25`` for a fraction of the training patients, ``lc_50`` for 50."""
    return f"lc_{size:g}" if isinstance(size, float) else f"lc_{int(size)}"


# --------------------------------------------------------------------------- claiming a run folder

LOCK = ".lock"  # in a run folder: an empty file, locked (flock) by the job writing the run


@dataclass
class Claim:
    """A run folder held by this process until :meth:`release` or the process ends (the kernel drops
    an flock with its file descriptor, also after kill -9, so a crashed job never blocks the folder)."""

    dir: Path
    fd: int
    created: list[Path]  # the folders this claim made, outermost first

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def undo(self) -> None:
        """Release and remove what the claim made: the run folder if it made it, then each folder above
        it that it made and that is empty (another job's run beside it stays)."""
        self.release()
        for folder in reversed(self.created):
            if folder == self.dir:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                try:
                    os.rmdir(folder)
                except OSError:
                    break


def claim_run(folder: str | os.PathLike, what: str = "another --save_dir / --fold") -> Claim:
    """Hold ``folder`` (made if missing, each missing folder created exclusively) for this process's
    writing; a second job on the same folder is refused at once, naming the pid that holds it."""
    folder = Path(folder)
    created = []
    for path in [*reversed(folder.parents), folder]:
        if not path.is_dir():
            try:
                os.mkdir(path)
                created.append(path)
            except FileExistsError:
                pass  # another job made it a moment ago: not ours to remove
    fd = _flock(folder, lambda holder: f"{folder} is in use by another job (pid {holder}, holding {folder / LOCK}); "
                                       f"one run folder takes one job at a time: wait until it ends, or use {what}")
    return Claim(folder, fd, created)


def hold_run(run: str | os.PathLike | None, doing: str) -> Claim | contextlib.nullcontext:
    """The lock of an existing run folder (or run group; for a checkpoint file, its folder) for a command
    that writes into it (``doing``, e.g. "report.py --run"), to use as ``with hold_run(...):``. While
    another job holds it -- a training, ``main.py --test``, another report -- this one is refused at once
    with one line naming the run and the holder's pid, before anything is written. A folder that is not
    there, or holds no run (no config.json or best.pth, no fold run: e.g. an ONNX export's folder), is not
    held and gets no lock file: the command's own checks say what is missing; nor is None
    (:func:`writing_into` found the command writing elsewhere)."""
    if run is None:
        return contextlib.nullcontext()
    folder = Path(run)
    folder = folder.parent if folder.is_file() else folder
    if not any((folder / name).is_file() for name in (CONFIG, BEST)) and not RunGroup(folder).runs(having=CONFIG):
        return contextlib.nullcontext()
    fd = _flock(folder, lambda holder: f"the run {folder} is in use by another job (pid {holder}, holding "
                                       f"{folder / LOCK}); {doing} writes into it, so it waits: nothing was "
                                       "written, run it again when that job has ended")
    return Claim(folder, fd, [])


def writing_into(run: str | os.PathLike, paths: Iterable[str | os.PathLike | None]) -> Path | None:
    """The run folder that one of ``paths`` (files or folders a command is about to write) lies inside:
    ``run`` itself (a checkpoint file: its folder), or where ``run`` is a run group, the fold run below it
    that holds the path; None where every path lies elsewhere (a reader writing elsewhere holds nothing)."""
    base = Path(os.path.realpath(run))
    base = base.parent if base.is_file() else base
    for path in paths:
        if path is None:
            continue
        target = Path(os.path.realpath(path))
        if target == base or base in target.parents:
            inner = target.relative_to(base).parts[:1]
            fold = base / inner[0] if inner else None
            return fold if fold is not None and (fold / CONFIG).is_file() else base
    return None


def _flock(folder: Path, refusal: Callable[[str], str]) -> int:
    """An open descriptor of ``folder``'s lock file, flocked for this process; UserError(``refusal(pid)``),
    naming the holder, where another job holds it."""
    import fcntl

    from hipx.core.cli import UserError

    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _lock_holder(fd)
        os.close(fd)
        raise UserError(refusal(holder)) from None
    return fd


def _lock_holder(fd: int) -> str:
    """The pid holding an flock on the file of ``fd``, from /proc/locks (Linux); "unknown" elsewhere. The
    lock file itself stays empty, so claiming a finished run's folder never changes a byte of it."""
    inode = os.fstat(fd).st_ino
    try:
        with open("/proc/locks", encoding="ascii") as fh:
            for line in fh:  # "1: FLOCK  ADVISORY  WRITE 12345 08:01:1234567 0 EOF"
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
                    return fields[4]
    except OSError:
        pass
    return "unknown"


def new_group(root: str | os.PathLike, name: str) -> str:
    """``name`` (e.g. a timestamp) made as a new folder under ``root``, or ``name-2``, ``name-3``...
    when taken: two jobs started in the same second never share a default run group."""
    Path(root).mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = name if n == 1 else f"{name}-{n}"
        try:
            os.mkdir(Path(root) / candidate)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"{root}: every name {name}-N is taken; give --save_dir")


# --------------------------------------------------------------------------- checkpoints

def probability_text(probability: float) -> str:
    """A probability as a predictions file holds it: 9 significant digits, which give back a 32-bit
    network output exactly, so metrics recomputed from the file equal the run's own."""
    return f"{probability:.9g}"


def save_checkpoint(path: str | os.PathLike, model_state: Mapping[str, Any], config: RunConfig | Mapping,
                    clinical_stats: Mapping, threshold: float, epoch: int, **extra: Any) -> None:
    """Write a checkpoint (weights + everything needed to use them) atomically."""
    import torch

    state = {"format": CHECKPOINT_FORMAT, "model": {k: v.detach().cpu() for k, v in model_state.items()},
             "config": _jsonable(config.to_dict() if isinstance(config, RunConfig) else dict(config)),
             "clinical_stats": _jsonable(dict(clinical_stats)),
             "threshold": float(threshold), "epoch": int(epoch)}
    state.update(extra)  # e.g. optimizer state, validation metrics: tensors and plain values only
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint safely; a clear error for a missing, truncated, foreign or unsafe file.
    The configuration comes back as a plain dict brought up to date (:func:`runconfig.upgrade`: e.g. the
    fusion mode as one value where older runs saved two booleans)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            reason = "it contains pickled Python objects, which are refused for safety (weights_only=True)"
        elif not zipfile.is_zipfile(path) or "PytorchStreamReader" in str(exc):
            reason = (f"the file is damaged or incomplete (torch says: {reason}), e.g. cut short by a full disk, a "
                      "killed copy or a transfer in text mode; copy it again from where the run was made, or train "
                      f"the run again. {missing_advice(path.parent)}")
        raise ValueError(f"cannot load checkpoint {path}: {reason}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a checkpoint of this suite (expected format {CHECKPOINT_FORMAT!r}); "
                         "for pretrained weights use --pretrained")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {', '.join(missing)}")
    if isinstance(state["config"], dict):
        state["config"] = runconfig.upgrade(state["config"])
    return state


# --------------------------------------------------------------------------- the run folder

@dataclass(frozen=True)
class Run:
    """A run folder ``outs/<save_dir>/fold<fold>/``: the one place that names its files, writes them
    (atomically) and reads them back. ``Run(folder)`` names, writes and reads; :func:`load_run` adds
    the validated checkpoint (``checkpoint``, ``state``) and with it the configuration stored with
    the weights, the threshold and the staleness check of :meth:`test_metrics`."""

    dir: Path
    checkpoint: Path | None = None
    state: dict | None = None

    # -- names ------------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.dir / name

    @property
    def config_file(self) -> Path:
        return self.dir / CONFIG

    @property
    def log_file(self) -> Path:
        return self.dir / TRAIN_LOG

    def predictions_file(self, split: str) -> Path:
        return self.dir / PREDICTIONS[split]

    # -- the loaded checkpoint --------------------------------------------------------------------
    def _state(self) -> dict:
        if self.state is None:
            raise ValueError(f"{self.dir}: its checkpoint was not read (runfiles.load_run reads it)")
        return self.state

    @property
    def config(self) -> RunConfig:
        """The configuration stored with the weights, typed (load_run has checked it names a network)."""
        return RunConfig.from_dict(self._state()["config"])

    @property
    def threshold(self) -> float:
        """The decision threshold chosen on validation at the best epoch."""
        return float(self._state()["threshold"])

    @property
    def epoch(self) -> int:
        return int(self._state()["epoch"])

    @property
    def clinical_stats(self) -> dict:
        return self._state()["clinical_stats"]

    @property
    def select_metric(self) -> str:
        return self._state().get("select_metric", self.config.select_metric)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.config.image_size)

    @property
    def fusion(self) -> str:
        return self.config.fusion

    # -- writing ----------------------------------------------------------------------------------
    def save_checkpoint(self, name: str, model_state: Mapping[str, Any], config: RunConfig | Mapping,
                        clinical_stats: Mapping,
                        threshold: float, epoch: int, **extra: Any) -> Path:
        """``best.pth`` or ``last.pth`` (:func:`save_checkpoint`)."""
        if name not in (BEST, LAST):
            raise ValueError(f"a run's checkpoints are {BEST} and {LAST}, not {name!r}")
        save_checkpoint(self.dir / name, model_state, config, clinical_stats, threshold, epoch, **extra)
        return self.dir / name

    def write_config(self, config: RunConfig | Mapping) -> Path:
        return write_json(self.config_file, config.to_dict() if isinstance(config, RunConfig) else config)

    def write_history(self, rows: Sequence[Mapping]) -> Path:
        return write_csv(self.dir / HISTORY, rows)

    def write_predictions(self, split: str, rows: Iterable[Mapping]) -> Path:
        """``<split>_predictions.csv``: file, label, probability (:func:`probability_text`), prediction;
        for graded targets also :data:`MEASURE_COLUMNS`."""
        rows = list(rows)
        graded = bool(rows) and all(c in rows[0] for c in MEASURE_COLUMNS)
        return write_csv(self.predictions_file(split), rows, PREDICTION_COLUMNS + (MEASURE_COLUMNS if graded else ()))

    def write_test_metrics(self, result: Mapping) -> Path:
        return write_json(self.dir / TEST_METRICS, result)

    def write_report(self, markdown: str, html: str, numbers: Mapping, figures: Mapping[str, bytes],
                     card: str | None = None) -> Path:
        """The run report: ``report_figures/*.png``, ``report.md``, ``report.html``, the model card
        ``model_card.md`` (where ``card`` is given) and, last, ``report_metrics.json`` (its presence says
        the report is whole). Returns the HTML's path."""
        for name, png in figures.items():
            write_bytes(self.dir / REPORT_FIGURES / f"{name}.png", png)
        write_text(self.dir / REPORT_MD, markdown)
        write_text(self.dir / REPORT_HTML, html)
        if card is not None:
            write_text(self.dir / MODEL_CARD, card)
        write_json(self.dir / REPORT_METRICS, numbers)
        return self.dir / REPORT_HTML

    def remove_results(self) -> None:
        """Remove the test and report files (:data:`RESULTS`), e.g. before a run is trained longer."""
        import shutil

        for name in RESULTS:
            path = self.dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    # -- reading ----------------------------------------------------------------------------------
    def read_config(self) -> dict:
        """``config.json`` as written (old runs' keys as they were; ``RunConfig.from_dict`` converts them)."""
        return read_json(self.config_file)

    def load_checkpoint(self, name: str = BEST) -> dict:
        return load_checkpoint(self.dir / name)

    def has_checkpoint(self, name: str = BEST) -> bool:
        return (self.dir / name).is_file()

    def is_tested(self) -> bool:
        return (self.dir / TEST_METRICS).is_file()

    def has_report(self) -> bool:
        return (self.dir / REPORT_METRICS).is_file()

    def has_predictions(self, split: str) -> bool:
        return self.predictions_file(split).is_file()

    def saved_epochs(self) -> int:
        """Epochs saved in ``history.csv`` (0 when none finished)."""
        path = self.dir / HISTORY
        return max(len(path.read_text(encoding="utf-8").strip().splitlines()) - 1, 0) if path.is_file() else 0

    def predictions(self, split: str = "test") -> "pd.DataFrame":
        return read_predictions(self.dir, split)

    def history(self) -> "pd.DataFrame | None":
        import pandas as pd

        path = self.dir / HISTORY
        return pd.read_csv(path) if path.is_file() else None

    def report_metrics(self) -> dict | None:
        """``report_metrics.json`` (None before the run has a report)."""
        return read_json(self.dir / REPORT_METRICS) if self.has_report() else None

    def test_metrics(self) -> dict | None:
        """``test_metrics.json`` (None before the run was tested); refused when it was scored at another
        threshold than the checkpoint holds, i.e. it is stale."""
        path = self.dir / TEST_METRICS
        if not path.is_file():
            return None
        metrics = read_json(path)
        if not math.isclose(metrics["threshold"], self.threshold):
            raise ValueError(f"{self.dir}: {TEST_METRICS} used threshold {metrics['threshold']} but {self.checkpoint.name} "
                             f"holds {self.threshold}; re-score the run (main.py --test --overwrite) before using it")
        return metrics

    def unchecked_test_metrics(self) -> dict:
        """``test_metrics.json`` without the staleness check: only for a run that has just been tested
        here, whose checkpoint is the one scored."""
        return read_json(self.dir / TEST_METRICS)


@dataclass(frozen=True)
class RunGroup:
    """A run group ``outs/<save_dir>/``: its run folders ``fold*/`` and, for a cross-validation, the
    summary over them (``cv_summary.json``, ``cv_report.md``)."""

    dir: Path

    def run(self, fold: str) -> Run:
        return Run(self.dir / f"fold{fold}")

    def runs(self, having: str = BEST) -> list[Run]:
        """The run folders ``fold*/`` that hold ``having`` (a checkpoint, or ``test_metrics.json``), sorted."""
        return [Run(d) for d in sorted(self.dir.glob("fold*")) if (d / having).is_file()]

    @property
    def summary_file(self) -> Path:
        return self.dir / CV_SUMMARY

    @property
    def report_file(self) -> Path:
        return self.dir / CV_REPORT

    @property
    def html_report_file(self) -> Path:
        return self.dir / CV_REPORT_HTML

    @property
    def card_file(self) -> Path:
        return self.dir / MODEL_CARD

    def write_cv_summary(self, summary: Mapping, markdown: str, html: str | None = None,
                         card: str | None = None) -> Path:
        """``cv_report.md``, ``cv_report.html`` (self-contained, with the figures), the model card
        ``model_card.md`` (where ``card`` is given) and, last, ``cv_summary.json``."""
        write_text(self.report_file, markdown)
        if html is not None:
            write_text(self.html_report_file, html)
        if card is not None:
            write_text(self.card_file, card)
        write_json(self.summary_file, summary)
        return self.summary_file


def load_run(run: str | os.PathLike, checkpoint: str = BEST) -> Run:
    """A run folder (or a checkpoint file) read back: its ``checkpoint`` (default ``best.pth``) loaded
    with :func:`load_checkpoint` and its configuration checked to say which network and input to
    build (:data:`runconfig.REQUIRED`). Errors say what a run folder is and how to make one."""
    path = Path(run)
    if path.is_file():
        folder, ckpt = path.parent, path
    elif path.is_dir():
        folder, ckpt = path, path / checkpoint
        if not ckpt.is_file():
            found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
            raise FileNotFoundError(f"{path} holds no {checkpoint} (found: {found}); {RUN_FOLDER}. "
                                    f"{missing_advice(path)}")
    else:
        raise FileNotFoundError(f"no run folder {path} (and no checkpoint file of that name): {RUN_FOLDER}. "
                                "Train one with e.g. python main.py --save_dir NAME --fold _X")
    try:
        state = load_checkpoint(ckpt)
    except ValueError as exc:
        raise ValueError(f"{exc}. Using a run needs the run's configuration (model, fusion mode, input channels, "
                         "image size), clinical statistics and threshold stored with the weights, as main.py "
                         f"writes {checkpoint}") from exc
    config = state["config"]
    missing = [k for k in runconfig.REQUIRED if not isinstance(config, dict) or k not in config]
    if missing:
        raise ValueError(f"{ckpt}: the checkpoint's configuration lacks {', '.join(missing)}; it cannot say which "
                         f"network to build. {RUN_FOLDER}")
    return Run(folder, ckpt, state)


def model_runs(run: str | os.PathLike) -> list[Path]:
    """What a scoring command's ``--run`` names: a checkpoint file or a run folder (one model), or a
    cross-validation run group ``outs/<save_dir>`` (its ``fold*/`` run folders with a ``best.pth``: a fold
    ensemble). Raises ``ValueError`` naming the folder when it is neither."""
    path = Path(run)
    if path.is_dir() and not Run(path).has_checkpoint(BEST):
        folds = [fold.dir for fold in RunGroup(path).runs(having=BEST)]
        if folds:
            return folds
        raise ValueError(f"--run {path}: neither a run folder (no {BEST}) nor a cross-validation run group (no "
                         f"fold*/{BEST} inside). {missing_advice(path)}")
    return [path]


def missing_advice(folder: str | os.PathLike) -> str:
    """What to do about a run folder whose best.pth is missing or unusable: continue the run from its
    last.pth when it has one (a best.pth is written at every better epoch), else train it again."""
    folder = Path(folder)
    save_dir, fold = folder.parent.name, folder.name[4:] if folder.name.startswith("fold") else folder.name
    root = f" --out_root {folder.parent.parent}" if folder.parent.parent.name != "outs" else ""
    if (folder / LAST).is_file() and not (folder / TEST_METRICS).is_file():  # unfinished: --resume goes on
        return (f"It holds {LAST}: python main.py --resume --save_dir {save_dir} --fold {fold}{root} continues "
                f"the run and writes {BEST} at its best epoch")
    return f"Train the run again: python main.py --save_dir {save_dir} --fold {fold}{root} ... (a new name)"


def read_predictions(run: str | os.PathLike, split: str = "test") -> "pd.DataFrame":
    """A run's scored images of ``split`` (``test_predictions.csv``: the best checkpoint on test;
    ``val_predictions.csv``: validation at the best epoch): file, label, probability, prediction,
    with each file's patient id added."""
    import pandas as pd

    from hipx.data import filenames

    if split not in PREDICTIONS:
        raise ValueError(f"predictions exist for {', '.join(PREDICTIONS)}, not {split!r}")
    path = Path(run) / PREDICTIONS[split]
    if not path.is_file():
        how = ("main.py scores the run on test (python main.py --test --save_dir <save_dir> --fold <fold>)"
               if split == "test" else "main.py trains the run (at its best epoch)")
        raise FileNotFoundError(f"{path} not found: it is written when {how}")
    table = pd.read_csv(path, dtype={"file": str})
    missing = {"file", "label", "probability"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected file,label,probability,prediction")
    table["patient"] = [filenames.decode(f).patient for f in table["file"]]
    return table


def split_files(config: RunConfig | Mapping, data_dir: str | os.PathLike | None = None,
                files: Mapping[str, Sequence[str | os.PathLike]] | None = None) -> dict[str, list[Path]]:
    """The images of a run's train, val and test, as main.py trained and scored it.

    ``files`` (split -> image paths) when given; else the folders of ``data_dir`` (default: the
    run's ``data_dir``), with train and val of cross-validation fold ``cv_fold`` of ``cv_folds``
    (:func:`folds.config_files`) when the configuration names one.
    """
    from hipx.data.splits import SPLITS

    if files is not None:
        missing = [s for s in SPLITS if s not in files]
        if missing:
            raise ValueError(f"files must name the images of {', '.join(SPLITS)}; missing {missing}")
        return {s: [Path(f) for f in files[s]] for s in SPLITS}
    from hipx.data import filenames

    config = config.to_dict() if isinstance(config, RunConfig) else runconfig.upgrade(config)
    source = "--data_dir" if data_dir is not None else "the run's configuration"
    data_dir = Path(data_dir if data_dir is not None else config.get("data_dir", RunConfig.data_dir))
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder {data_dir} (from {source}) not found; pass the folder with train/ "
                                f"val/ test/ the run was trained on (--data_dir), or make the demo set with "
                                f"python synthetic.py --out {data_dir}")
    if config.get("cv_folds"):
        from hipx.data import folds

        parts = folds.config_files(config, data_dir)  # the fold's design decides its three parts
    else:
        parts = {s: filenames.list_split(data_dir, s) for s in SPLITS}
    if config.get("target", "binary") != "binary":
        parts["train"] = parts["train"] + unscored_for_training(data_dir, parts)
    return parts


def unscored_for_training(data_dir: str | os.PathLike, parts: Mapping[str, Sequence[Path]]) -> list[Path]:
    """The data folder's images without a binary label (``unscored/``, measures.py) that may train a graded
    target beside ``parts``: all but those of a patient whose images validate or test this run."""
    from hipx.data import filenames

    held = {filenames.decode(f).patient for split in ("val", "test") for f in parts[split]}
    return [f for f in filenames.list_unscored(data_dir) if filenames.decode(f).patient not in held]


def write_data_files(run: str | os.PathLike, files: Mapping[str, Sequence[str | os.PathLike]],
                     data_dir: str | os.PathLike) -> Path:
    """Record the images a run uses (split, path within ``data_dir``, bytes): a moved data folder can be
    checked against it (:func:`data_files_differ`)."""
    rows = [{"split": split, "file": os.path.relpath(f, data_dir), "bytes": os.path.getsize(f)}
            for split in files for f in files[split]]
    return write_csv(Path(run) / DATA_FILES, rows, ["split", "file", "bytes"])


def data_files_differ(run: str | os.PathLike, files: Mapping[str, Sequence[str | os.PathLike]],
                      data_dir: str | os.PathLike) -> str | None:
    """None when ``files`` (from ``data_dir``) are the images, with the sizes, the run recorded in
    ``data_files.csv``; else a short sentence saying what differs."""
    path = Path(run) / DATA_FILES
    if not path.is_file():
        return f"the run records no {DATA_FILES} (it was made before runs recorded their images) to compare with"
    with open(path, newline="", encoding="utf-8") as fh:
        recorded = {(r["split"], r["file"], int(r["bytes"])) for r in csv.DictReader(fh)}
    found = {(s, os.path.relpath(f, data_dir), os.path.getsize(f)) for s in files for f in files[s]}
    if recorded == found:
        return None
    missing, extra = sorted(recorded - found), sorted(found - recorded)
    parts = [f"{len(missing)} recorded image(s) missing or changed (e.g. {missing[0][0]}/{missing[0][1]})"] if missing \
        else []
    parts += [f"{len(extra)} image(s) the run never used (e.g. {extra[0][0]}/{extra[0][1]})"] if extra else []
    return " and ".join(parts)
