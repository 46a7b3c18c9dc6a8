"""Score hip radiographs with a trained run: probability of osteoporosis and the run's decision.

    python3 predict.py --run outs/<save_dir>/fold<fold> data/test more/image.png --out predictions.csv
    python3 predict.py --run outs/<save_dir> new/ --out predictions.csv   # fold ensemble of a --folds run

IMAGES are files or folders (their .png/.npy/.jpg/.tif images, not recursive). Sex, age and BMI
come from the file name (``filenames.PATTERN``) or, for any file listed there, from ``--csv``
with columns ``file,sex,age,bmi`` (``file`` as given on the command line or just the file name;
sex 1 female / 0 male; an empty or NA value is imputed with the training mean, as in training).

Everything about the network comes from the run's ``best.pth``: architecture, image size,
fusion mode, clinical normalisation statistics and the threshold chosen on validation. Inputs
are built by ``loader.run_dataset``, exactly as the run's validation and test images (grey [0, 1],
resized, enhanced copy, 8-bit like the loader's cache, no augmentation). A colour image is converted to
grey, as the loader does. Refused, with the file named and nothing written: a file that does not
decode, an array that is not 2-D, non-finite values, an image under 16 pixels on a side.

Output (written atomically): ``file,probability,prediction`` with prediction 1 (osteoporosis)
when probability >= the run's threshold; a run with a graded target (``main.py --target``) adds the
measurement it predicts (``predicted_T-score``, ``predicted_class``). An existing ``--out`` is replaced only with ``--overwrite``.
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

from hipx.core.choices import TTA_CHOICES
from hipx.core.cli import UserError, add_device, add_output, run_script


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders")
    p.add_argument("--run", required=True, help="run folder outs/<save_dir>/fold<fold> (its best.pth), a "
                   "checkpoint file, or a cross-validation run group outs/<save_dir> (mean of its fold models)")
    p.add_argument("--tta", choices=("auto", *TTA_CHOICES), default="auto", help="flip: average each image's "
                   "probability with its left/right mirror's; auto (default): as the run was validated (--tta)")
    p.add_argument("--csv", default=None, metavar="CLINICAL.csv", help="sex/age/BMI for files whose names do not "
                   "carry them: columns file,sex,age,bmi")
    add_output(p, "output CSV", default="predictions.csv", overwrite="--out if it exists")
    add_device(p)
    p.add_argument("--batch_size", type=int, default=16, help="(default: %(default)s)")
    return p


if __name__ == "__main__":
    run_script(build_parser, __file__)  # --help and a mistyped flag answer before the ~5 s torch import below

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from hipx.data import filenames  # noqa: E402
from hipx.core import fusion  # noqa: E402
from hipx.data import imaging  # noqa: E402
from hipx.data import loader  # noqa: E402
from hipx.runs import runfiles  # noqa: E402
from hipx.core import runtime  # noqa: E402
from hipx.core import targets  # noqa: E402
from hipx.models import build_model_from_checkpoint  # noqa: E402

logger = logging.getLogger("predict")

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
    extra = [k for k in rows[0] if k.startswith("predicted_")] if rows else []
    runfiles.write_csv(path, [{**r, "probability": runfiles.probability_text(r["probability"])} for r in rows],
                       ["file", "probability", "prediction", *extra])


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
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
