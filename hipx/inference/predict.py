"""Scoring hip radiographs with a trained run (the library of ``predict.py``): the probability of
osteoporosis, the run's decision, and for a graded target the measurement it predicts.

    rows = predict("outs/<save_dir>/fold<fold>", ["data/test"], clinical_csv=None)   # or a run group
    rows = predict("model.onnx", ["data/test"])                     # an export.py model, with onnxruntime
    rows = predict(run, ["new_scans/"], clinical_csv="clinical.csv", as_trained="auto")  # raw files, DICOM too
    write_predictions("predictions.csv", rows)

Everything about the network comes from the run's ``best.pth`` (architecture, image size, fusion mode,
clinical normalisation statistics, threshold); inputs are built by ``loader.run_dataset`` exactly as the
run's validation and test images. A hospital's raw file (``as_trained`` raw, or auto for a file not in
the data folder's format) first goes through the run's recorded preprocessing
(:func:`hipx.data.preprocessing.run_preprocessing`): one row per hip, with its crop box on the raw
image; a file or hip that cannot be cut (no femur found, blank, unreadable) gets a row with the reason
instead of a probability. An exported model (``export.py``'s ``model.onnx``) is scored alike with
onnxruntime on the CPU, its threshold, target and raw files' preprocessing read from the JSON beside it.
Every image and its clinical values are checked before any network runs (:class:`PredictError` names the
file). The command line and its output: ``predict.py``.
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from hipx.core import fusion, runtime, targets
from hipx.core.choices import AS_TRAINED
from hipx.core.cli import UserError
from hipx.data import filenames, imaging, loader, preprocessing
from hipx.inference import network
from hipx.runs import runfiles

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = imaging.IMAGE_SUFFIXES  # and DICOM files without a suffix (imaging.is_image_file)
CROP_SUFFIXES = (".png", ".npy")  # what a data folder (preprocess_filenames.py, synthetic.py) holds
# the columns a raw file's rows add: which hip, its crop box on the raw image, why it was not scored
RAW_COLUMNS = ("side", "box_x0", "box_y0", "box_x1", "box_y1", "note")
MISSING = ("", "na", "nan", "none", "null")


class PredictError(ValueError):
    """An input that cannot be scored by this run; the message names the file."""


def collect_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, and the images below folders (recursively, sorted: :func:`imaging.find_images`, as
    ``pretrain.py`` lists its folders); duplicates removed, order kept."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            try:
                out += imaging.find_images([path])
            except ValueError:
                raise PredictError(f"{path}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)}, or DICOM "
                                   "without a suffix; searched recursively)") from None
        elif path.is_file():
            if not imaging.is_image_file(path):
                raise PredictError(f"{path}: not an image ({', '.join(IMAGE_EXTENSIONS)}, or DICOM without a "
                                   "suffix); give image files or folders of images, e.g. python predict.py --run "
                                   "RUN data/test --out predictions.csv")
            out.append(path)
        else:
            raise PredictError(f"{path}: no such file or folder")
    seen: set[str] = set()
    return [p for p in out if not (str(p) in seen or seen.add(str(p)))]


def in_data_folder_format(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a data folder's image: a .png or .npy named in the file-name format
    (``filenames.PATTERN``). ``--as-trained auto`` scores such a file as it is and cuts every other."""
    path = Path(path)
    if path.suffix.lower() not in CROP_SUFFIXES:
        return False
    try:
        filenames.decode(path)
    except filenames.FileNameError:
        return False
    return True


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


def clinical_values(files: Sequence[Path], table: Mapping[str, tuple[float, float, float]] | None = None,
                    required: bool = True) -> np.ndarray:
    """(n, 3) sex, age, BMI per file: from ``table`` (by path as given, then by file name), else the name.
    A file with neither is refused when ``required`` (the run's fusion mode uses the values), else
    given NaN (an image-only run never reads them)."""
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
                if required:
                    unknown.append(str(f))
                    continue
                value = (math.nan,) * len(loader.CLINICAL_NAMES)
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


@dataclass
class Item:
    """One output row: a file or one hip of a raw file, scored (``crop``: the raw file's crop, None: read
    the file) or not (``note`` says why)."""

    file: Path
    clinical: np.ndarray
    raw: bool = False
    crop: np.ndarray | None = None
    side: str = ""
    box: tuple[int, int, int, int] | None = None
    note: str = ""

    @property
    def scored(self) -> bool:
        return not self.note


def _no_preprocessing(run: str | os.PathLike, data_dir: str) -> str:
    return (f"--run {run} records no preprocessing (no {preprocessing.FILE} in the run folder, and its data folder "
            f"{data_dir} holds no {preprocessing.DATA_FOLDER_CONFIG}): its images were not made from raw files by "
            "preprocess_filenames.py, or the run predates the record")


def _raw_items(path: Path, clinical: np.ndarray, pipeline: preprocessing.Preprocessing,
               image_size: tuple[int, int]) -> list[Item]:
    """A raw file through the run's preprocessing: one item per hip (or the whole image); an item with a
    note where the file cannot be cut, or where a hip's femoral head was not found."""
    try:
        crops = pipeline.apply(path)
    except (imaging.ImageReadError, imaging.BoxError, imaging.OddImageError) as exc:
        reason = " ".join(str(exc).split())
        return [Item(path, clinical, raw=True, note=f"not scored: {reason}")]
    found = [c for c in crops if c.found]
    if not found:
        why = "; ".join(c.note.replace("; using the half field", "") for c in crops if c.note)
        return [Item(path, clinical, raw=True, note=f"not scored: no femur found ({why})")]
    items = []
    for c in crops:
        if c.found:
            stretched = loader.check_shape(f"{path} ({c.side or 'image'})", c.image.shape, image_size)
            if stretched:
                logger.warning("%s", stretched)
        items.append(Item(path, clinical, raw=True, crop=c.image if c.found else None, side=c.side, box=c.box,
                          note="" if c.found else f"not scored: {c.note.replace('; using the half field', '')}"))
    return items


def cut_items(files: Sequence[Path], clinical: np.ndarray, model: "RunModel | OnnxScorer",
              as_trained: str) -> tuple[list[Item], int]:
    """The rows to score for ``files`` (their clinical values beside them): a data folder's image as it is
    (checked, refused with :class:`PredictError`), a raw file cut by the model's recorded preprocessing
    into one item per hip (``as_trained``: see :func:`predict`). Returns the items and how many files
    were cut. Every file is checked or cut before any network runs; ``visualize_gradcam.py`` cuts new
    scans with this too, so that its pictures show what ``predict.py`` scored."""
    if as_trained not in AS_TRAINED:
        raise PredictError(f"as_trained {as_trained!r}: choose one of {', '.join(AS_TRAINED)}")
    pipeline = None if as_trained == "crops" else model.preprocessing()
    if as_trained == "raw" and pipeline is None:
        raise PredictError(f"--as-trained raw: {model.no_record()}. Score images in the data folder's format "
                           "(--as-trained crops)")
    raw = [pipeline is not None and (as_trained == "raw" or not in_data_folder_format(f)) for f in files]
    if any(raw):
        pipeline.check_repeatable(f"--run {model.name}")  # before any file is cut (apply would say it at the first)
    items: list[Item] = []
    for f, values, cut in zip(files, clinical, raw):
        if cut:
            items += _raw_items(f, values, pipeline, model.image_size)
            continue
        if imaging.is_dicom(f):
            raise PredictError(f"{f}: a DICOM file is a raw radiograph, and {model.no_record()}. Cut it into crops "
                               "with preprocess_filenames.py as the run's data folder was made, and score those")
        check_image(f, model.image_size)
        items.append(Item(f, values))
    return items, sum(raw)


class RunModel:
    """A trained run, or a cross-validation group's fold models (their mean), scored in PyTorch."""

    def __init__(self, run: str | os.PathLike, device: str = "cpu", tta: str = "auto",
                 members: Sequence[runfiles.Run] | None = None) -> None:
        self.name, self.device, self.tta = str(run), device, tta
        # weights_only=True: pickles refused; ``members``: the run(s) already loaded (visualize_gradcam.py)
        self.members = list(members) if members else [runfiles.load_run(r) for r in runfiles.model_runs(run)]
        shapes = {(tuple(m.image_size), m.fusion) for m in self.members}
        if len(shapes) > 1:
            raise PredictError(f"--run {run}: the fold models differ in image size or fusion mode ({sorted(shapes)}); "
                               "an ensemble needs the folds of one cross-validation run")
        first = self.members[0]
        self.image_size = tuple(first.image_size)
        self.uses_clinical = fusion.mode(first.fusion).uses_clinical
        self.spec = targets.TargetSpec.from_dict(first.config.target_spec)
        self.threshold = float(np.mean([m.threshold for m in self.members]))
        self.described = (f"mean of {len(self.members)} fold models" if len(self.members) > 1
                          else f"epoch {first.epoch}")
        self.data_dir = first.config.data_dir

    def preprocessing(self) -> preprocessing.Preprocessing | None:
        return preprocessing.run_preprocessing(self.name, data_dir=self.data_dir)

    def no_record(self) -> str:
        return _no_preprocessing(self.name, self.data_dir)

    @torch.no_grad()
    def score(self, items: Sequence[Item], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Probability and (graded targets) predicted value of each item, the mean over the fold models."""
        probs, values = np.zeros(len(items)), np.zeros(len(items))
        dev = runtime.select_device(self.device, None)
        first = self.members[0]
        crops = [item.crop for item in items]
        # decoded once; each fold model normalises the clinical values
        dataset = loader.run_dataset([item.file for item in items], first.config, first.clinical_stats,
                                     clinical=[item.clinical for item in items], desc="predict",
                                     images=crops if any(c is not None for c in crops) else None)
        for trained in self.members:
            dataset = dataset.with_clinical_stats(loader.ClinicalStats.from_dict(trained.clinical_stats))
            model = network.saved_network(trained.state, str(trained.checkpoint))
            model.to(dev)
            scored_as = trained.config.tta if self.tta == "auto" else self.tta

            def forward(batch: dict) -> torch.Tensor:
                inputs = fusion.network_inputs(trained.fusion, batch["image"].to(dev), batch["clinical"].to(dev))
                return model(*inputs).float().reshape(-1)

            member: list[float] = []
            value: list[float] = []
            for batch in DataLoader(dataset, batch_size=batch_size):
                p, logit = fusion.scored(forward, batch, scored_as)
                member += p.cpu().double().tolist()
                if self.spec.graded:  # the measurement it stands for (graded targets, targets.py)
                    value += model.predicted_value(logit).cpu().double().tolist()
            probs += np.asarray(member, dtype=np.float64) / len(self.members)
            if value:
                values += np.asarray(value, dtype=np.float64) / len(self.members)
        return probs, values


class OnnxScorer:
    """An exported model (``export.py``: ``model.onnx`` with ``model.preprocessing.json`` beside it) scored
    with onnxruntime on the CPU; threshold, target, image size, fusion and the raw files' preprocessing
    come from its JSON."""

    def __init__(self, path: str | os.PathLike, device: str = "auto", tta: str = "auto") -> None:
        from hipx.inference import export  # onnxruntime: only for an exported model

        if device not in ("auto", "cpu"):
            raise PredictError(f"--device {device}: an exported model ({path}) runs with onnxruntime on the CPU; "
                               "leave --device out or give --device cpu")
        self.name = str(path)
        self.model = export.OnnxModel(path)
        if tta != "auto" and tta != self.model.tta:
            raise PredictError(f"--tta {tta}: the graph {path} was exported with --tta {self.model.tta} built in; "
                               f"leave --tta out, or export the run again with export.py --tta {tta}")
        self.image_size = self.model.image_size
        self.uses_clinical = self.model.uses_clinical
        self.spec = self.model.target
        self.threshold = self.model.threshold
        runs = self.model.preprocessing["runs"]
        self.described = "onnxruntime" + (f", mean of {len(runs)} fold models" if len(runs) > 1 else
                                          f", epoch {runs[0]['epoch']}")
        self.no_record_text = (f"--run {path} records no preprocessing ({export.preprocessing_path(path).name} has no "
                               "raw_preprocessing): the run's images were not made from raw files by "
                               "preprocess_filenames.py, or the export predates the record")

    def preprocessing(self) -> preprocessing.Preprocessing | None:
        return self.model.raw_preprocessing

    def no_record(self) -> str:
        return self.no_record_text

    def score(self, items: Sequence[Item], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        crops = [item.crop for item in items]
        out = self.model.score([item.file for item in items], [item.clinical for item in items], batch_size,
                               images=crops if any(c is not None for c in crops) else None)
        value = out.get("predicted_value", out.get("predicted_class"))
        return (out["probability"].astype(np.float64),
                np.zeros(len(items)) if value is None else value.astype(np.float64))


def is_onnx(run: str | os.PathLike) -> bool:
    """Whether ``--run`` names an exported model (a ``.onnx`` file) rather than a run."""
    return Path(run).suffix.lower() == ".onnx"


def open_model(run: str | os.PathLike, device: str = "cpu", tta: str = "auto") -> RunModel | OnnxScorer:
    """``run`` as :func:`predict` scores with it: an exported ``.onnx`` file, else a run, checkpoint or group."""
    return OnnxScorer(run, device, tta) if is_onnx(run) else RunModel(run, device, tta)


def predict(run: str | os.PathLike, images: Sequence[str | os.PathLike],
            clinical_csv: str | os.PathLike | None = None, device: str = "cpu",
            batch_size: int = 16, tta: str = "auto", as_trained: str = "crops") -> list[dict]:
    """Rows ``file, probability, prediction`` for every image, in input order.

    ``run`` may be a cross-validation run group: the probability is then the mean of its K fold
    models and the decision uses the mean of their validation thresholds. It may be an exported model
    (``model.onnx``, ``export.py``): scored with onnxruntime on the CPU, with the threshold, target and
    raw files' preprocessing of its JSON. ``tta``: ``flip`` also scores each image's left/right mirror
    and averages the two probabilities; ``auto`` does what the run was validated with (its ``--tta``;
    an exported graph has it built in).
    ``as_trained``: ``crops`` (default here, as before) scores every file as a data folder's image;
    ``raw`` cuts every file by the run's recorded preprocessing first; ``auto`` (``predict.py``'s
    default) cuts the files not in the data folder's format (:func:`in_data_folder_format`) where the
    run records its preprocessing. A raw file gives one row per hip with :data:`RAW_COLUMNS`
    (probability and prediction None, and the reason in ``note``, for what could not be scored);
    crop files in the same call leave those columns empty.
    Clinical values are asked for only where the run's fusion mode uses them. Every image and its
    clinical values are checked before the network runs; the first problem raises
    :class:`PredictError` (or ``ValueError`` for an unusable checkpoint) naming the file.
    """
    if as_trained not in AS_TRAINED:
        raise PredictError(f"as_trained {as_trained!r}: choose one of {', '.join(AS_TRAINED)}")
    model = open_model(run, device, tta)
    files = collect_images(images)
    table = read_clinical_csv(clinical_csv) if clinical_csv else None
    clinical = clinical_values(files, table, required=model.uses_clinical)
    items, n_raw = cut_items(files, clinical, model, as_trained)  # refused or cut before any scoring
    scored = [item for item in items if item.scored]
    probs, values = model.score(scored, batch_size) if scored else (np.zeros(0), np.zeros(0))
    spec, threshold = model.spec, model.threshold
    logger.info("scored %d images%s with %s (%s, threshold %.4f from validation)", len(scored),
                f" ({sum(i.raw for i in scored)} of them cut from {n_raw} raw files as the run was trained; "
                f"{len(items) - len(scored)} rows not scored)" if n_raw else "", Path(run), model.described,
                threshold)
    rows = []
    results = iter(zip(probs, values))
    for item in items:
        row: dict = {"file": str(item.file), "probability": None, "prediction": None}
        if item.scored:
            p, v = next(results)
            row.update(probability=float(p), prediction=int(p >= threshold))
            if spec.graded:  # e.g. predicted_T-score, or the class at the ensemble's mean class index
                row[spec.predicted_column] = spec.predicted_text(v)
        elif spec.graded:
            row[spec.predicted_column] = ""
        if n_raw:
            box = item.box or ("",) * 4
            row.update(side=item.side, box_x0=box[0], box_y0=box[1], box_x1=box[2], box_y1=box[3], note=item.note)
        rows.append(row)
    return rows


def write_predictions(path: str | os.PathLike, rows: Sequence[Mapping]) -> None:
    """``rows`` of :func:`predict` as ``file,probability,prediction[,predicted_...][,side,box_x0,box_y0,box_x1,
    box_y1,note]``, written atomically; an unscored row's probability and prediction are empty."""
    extra = [k for k in rows[0] if k.startswith("predicted_")] if rows else []
    raw = list(RAW_COLUMNS) if rows and RAW_COLUMNS[0] in rows[0] else []
    text = [{**r, "probability": "" if r["probability"] is None else runfiles.probability_text(r["probability"]),
             "prediction": "" if r["prediction"] is None else r["prediction"]} for r in rows]
    runfiles.write_csv(path, text, ["file", "probability", "prediction", *extra, *raw])


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
    with runfiles.hold_run(runfiles.writing_into(args.run, [out]), "predict.py --out inside the run"):
        try:
            rows = predict(args.run, args.images, args.csv, args.device, args.batch_size, args.tta,
                           getattr(args, "as_trained", "crops"))
        except (ValueError, FileNotFoundError, UserError) as exc:  # PredictError, unusable checkpoint or export
            raise SystemExit(str(exc)) from None  # one line, without a traceback (cli.run_main)
        write_predictions(args.out, rows)
    scored = [r for r in rows if r["prediction"] is not None]
    skipped = [r for r in rows if r["prediction"] is None]
    if not scored:
        raise SystemExit(f"nothing was scored: {skipped[0]['file']}: {skipped[0]['note']}"
                         f"{f' (and {len(skipped) - 1} more)' if len(skipped) > 1 else ''}; the reasons are in "
                         f"{args.out}")
    print(f"{len(scored)} predictions ({sum(r['prediction'] for r in scored)} osteoporosis) written to {args.out}"
          + (f"; {len(skipped)} not scored (the note column says why)" if skipped else ""))
    return rows
