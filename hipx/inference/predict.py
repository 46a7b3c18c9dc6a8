"""Scoring hip radiographs with a trained run (the library of ``predict.py``): the probability of
osteoporosis, the run's decision, and for a graded target the measurement it predicts.

    rows = predict("outs/<save_dir>/fold<fold>", ["data/test"], clinical_csv=None)   # or a run group
    write_predictions("predictions.csv", rows)

Everything about the network comes from the run's ``best.pth`` (architecture, image size, fusion mode,
clinical normalisation statistics, threshold); inputs are built by ``loader.run_dataset`` exactly as the
run's validation and test images. Every image and its clinical values are checked before any network
runs (:class:`PredictError` names the file). The command line and its output: ``predict.py``.
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from hipx.core import fusion, runtime, targets
from hipx.core.cli import UserError
from hipx.data import filenames, imaging, loader
from hipx.models import build_model_from_checkpoint
from hipx.runs import runfiles

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".npy", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MISSING = ("", "na", "nan", "none", "null")


class PredictError(ValueError):
    """An input that cannot be scored by this run; the message names the file."""


def collect_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, and the images inside folders (sorted); duplicates removed, order kept."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise PredictError(f"{path}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            out += found
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise PredictError(f"{path}: not an image ({', '.join(IMAGE_EXTENSIONS)}); give image files or "
                                   "folders of images, e.g. python3 predict.py --run RUN data/test --out "
                                   "predictions.csv")
            out.append(path)
        else:
            raise PredictError(f"{path}: no such file or folder")
    seen: set[str] = set()
    return [p for p in out if not (str(p) in seen or seen.add(str(p)))]


def _number(text: str, where: str, column: str) -> float:
    if text is None or text.strip().lower() in MISSING:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise PredictError(f"{where}: {column} {text!r} is not a number (empty or NA for missing)") from None
    if not math.isfinite(value) or value < 0:
        raise PredictError(f"{where}: {column} {text!r} must be a finite number >= 0")
    if column == "sex" and value not in (0.0, 1.0):
        raise PredictError(f"{where}: sex {text!r} must be 1 (female), 0 (male) or empty/NA")
    return value


def read_clinical_csv(path: str | os.PathLike) -> dict[str, tuple[float, float, float]]:
    """``file,sex,age,bmi`` rows -> {file as written: (sex, age, bmi)}; errors name the line."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        missing = [c for c in ("file", *loader.CLINICAL_NAMES) if c not in header]
        if missing:
            raise PredictError(f"--csv {path}: missing column(s) {', '.join(missing)}; expected file,sex,age,bmi")
        table: dict[str, tuple[float, float, float]] = {}
        for line, row in enumerate(reader, start=2):
            row = {k.strip().lower(): v for k, v in row.items() if k is not None}
            where = f"--csv {path} line {line}"
            name = (row["file"] or "").strip()
            if not name:
                raise PredictError(f"{where}: empty file")
            if name in table:
                raise PredictError(f"{where}: {name} is listed twice")
            table[name] = tuple(_number(row[c], where, c) for c in loader.CLINICAL_NAMES)
    return table


def clinical_values(files: Sequence[Path], table: Mapping[str, tuple[float, float, float]] | None = None
                    ) -> np.ndarray:
    """(n, 3) sex, age, BMI per file: from ``table`` (by path as given, then by file name), else the name."""
    table = table or {}
    by_name: dict[str, tuple] = {}
    for key, value in table.items():
        by_name.setdefault(Path(key).name, value)
    rows, unknown = [], []
    for f in files:
        value = table.get(str(f), by_name.get(f.name))
        if value is None:
            try:
                value = filenames.decode(f).clinical
            except filenames.FileNameError:
                unknown.append(str(f))
                continue
        rows.append(value)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise PredictError(f"no sex/age/BMI for {shown}: the name does not follow {filenames.PATTERN} and the "
                           "file is not in --csv (columns file,sex,age,bmi; NA where unknown)")
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(loader.CLINICAL_NAMES))


def check_image(path: Path, image_size: tuple[int, int]) -> None:
    """Refuse, naming the file, an image the network cannot score (``imaging.read_scaled`` gives a finite 2-D
    array or raises), before any model runs; warn about a far-off aspect ratio."""
    try:
        gray = imaging.read_scaled(path)
    except ValueError as exc:
        raise PredictError(str(exc)) from None
    try:
        stretched = loader.check_shape(path, gray.shape, image_size)
    except ValueError as exc:
        raise PredictError(str(exc)) from None
    if stretched:
        logger.warning("%s", stretched)


def run_checkpoints(run: str | os.PathLike) -> list[Path]:
    """What ``--run`` names: a checkpoint file or a run folder (one model), or a cross-validation run
    group ``outs/<save_dir>`` (the ``fold*/`` run folders inside with a ``best.pth``: a fold ensemble)."""
    path = Path(run)
    if path.is_dir() and not runfiles.Run(path).has_checkpoint(runfiles.BEST):
        folds = [fold.dir for fold in runfiles.RunGroup(path).runs(having=runfiles.BEST)]
        if folds:
            return folds
        raise PredictError(f"--run {path}: neither a run folder (no {runfiles.BEST}) nor a cross-validation run "
                           f"group (no fold*/{runfiles.BEST} inside). {runfiles.missing_advice(path)}")
    return [path]


@torch.no_grad()
def predict(run: str | os.PathLike, images: Sequence[str | os.PathLike],
            clinical_csv: str | os.PathLike | None = None, device: str = "cpu",
            batch_size: int = 16, tta: str = "auto") -> list[dict]:
    """Rows ``file, probability, prediction`` for every image, in input order.

    ``run`` may be a cross-validation run group: the probability is then the mean of its K fold
    models and the decision uses the mean of their validation thresholds. ``tta``: ``flip`` also
    scores each image's left/right mirror and averages the two probabilities; ``auto`` does what
    the run was validated with (its ``--tta``).
    Every image and its clinical values are checked before the network runs; the first problem
    raises :class:`PredictError` (or ``ValueError`` for an unusable checkpoint) naming the file.
    """
    members = [runfiles.load_run(r) for r in run_checkpoints(run)]  # weights_only=True: pickles refused
    shapes = {(tuple(m.image_size), m.fusion) for m in members}
    if len(shapes) > 1:
        raise PredictError(f"--run {run}: the fold models differ in image size or fusion mode ({sorted(shapes)}); "
                           "an ensemble needs the folds of one cross-validation run")
    files = collect_images(images)
    table = read_clinical_csv(clinical_csv) if clinical_csv else None
    clinical = clinical_values(files, table)
    for f in files:  # refuse before any scoring
        check_image(f, members[0].image_size)
    dev = runtime.select_device(device, None)
    probs, values = np.zeros(len(files)), np.zeros(len(files))
    spec = targets.TargetSpec.from_dict(members[0].config.target_spec)
    dataset = loader.run_dataset(files, members[0].config, members[0].clinical_stats, clinical=clinical,
                                 desc="predict")  # decoded once; each fold model normalises the clinical values
    for trained in members:
        dataset = dataset.with_clinical_stats(loader.ClinicalStats.from_dict(trained.clinical_stats))
        model = build_model_from_checkpoint(trained.state, str(trained.checkpoint))
        model.to(dev)
        scored_as = trained.config.tta if tta == "auto" else tta

        def forward(batch: dict) -> torch.Tensor:
            inputs = fusion.network_inputs(trained.fusion, batch["image"].to(dev), batch["clinical"].to(dev))
            return model(*inputs).float().reshape(-1)

        member: list[float] = []
        value: list[float] = []
        for batch in DataLoader(dataset, batch_size=batch_size):
            p = fusion.probability(forward, batch, scored_as)
            member += p.cpu().double().tolist()
            if spec.kind != "binary":  # the measurement it stands for (graded targets, targets.py)
                value += model.predicted_value(torch.logit(p.clamp(1e-7, 1 - 1e-7))).cpu().double().tolist()
        probs += np.asarray(member, dtype=np.float64) / len(members)
        if value:
            values += np.asarray(value, dtype=np.float64) / len(members)
    threshold = float(np.mean([m.threshold for m in members]))
    logger.info("scored %d images with %s (%s, threshold %.4f from validation)", len(files), Path(run),
                f"mean of {len(members)} fold models" if len(members) > 1 else f"epoch {members[0].epoch}",
                threshold)
    rows = [{"file": str(f), "probability": float(p), "prediction": int(p >= threshold)}
            for f, p in zip(files, probs)]
    if spec.kind == "continuous":  # e.g. predicted_T-score; a fold ensemble's is the mean of its models'
        for row, v in zip(rows, values):
            row[f"predicted_{spec.name}"] = f"{v:.4g}"
    elif spec.kind == "ordinal":  # the class at the ensemble's mean class index
        for row, v in zip(rows, values):
            row["predicted_class"] = spec.classes[int(np.clip(np.round(v), 0, spec.n_classes - 1))]
    return rows


def write_predictions(path: str | os.PathLike, rows: Sequence[Mapping]) -> None:
    """``rows`` of :func:`predict` as ``file,probability,prediction[,predicted_...]``, written atomically."""
    extra = [k for k in rows[0] if k.startswith("predicted_")] if rows else []
    runfiles.write_csv(path, [{**r, "probability": runfiles.probability_text(r["probability"])} for r in rows],
                       ["file", "probability", "prediction", *extra])


def run(args: argparse.Namespace) -> list[dict]:
    """What ``predict.py`` does with its parsed flags (its ``build_parser``): score ``args.images`` with
    ``args.run`` and write ``args.out``; refused, with nothing written, when ``--out`` is a folder or
    exists without ``--overwrite``. Returns the rows written."""
    runtime.setup_logging()
    if args.batch_size < 1:
        raise SystemExit(f"--batch_size {args.batch_size}: must be >= 1")
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give the CSV file to write, e.g. --out {out / 'predictions.csv'}")
    if out.exists() and not args.overwrite:
        raise UserError(f"--out {out} exists; nothing was written. Pass --overwrite to replace it, or choose "
                        "another --out")
    try:
        rows = predict(args.run, args.images, args.csv, args.device, args.batch_size, args.tta)
    except (ValueError, FileNotFoundError) as exc:  # PredictError, unusable checkpoint, missing run
        raise SystemExit(str(exc)) from None  # one line, without a traceback (cli.run_main)
    write_predictions(args.out, rows)
    print(f"{len(rows)} predictions ({sum(r['prediction'] for r in rows)} osteoporosis) written to {args.out}")
    return rows
