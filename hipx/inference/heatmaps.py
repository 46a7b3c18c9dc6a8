"""Heatmaps of a trained run (the library of ``visualize_gradcam.py``): what the network looked at, drawn
over the radiograph, and how much of it lies on the demo data's femur.

    summary = run(args)            # args: visualize_gradcam.build_parser().parse_args(...)
    cases = explain(model, dataset, "expected_gradients", references=reference_inputs(run))

The network (model, fusion mode, image size, normalisation, threshold) comes from the run's best.pth,
and the inputs are built by the loader exactly as at test time, so the picture explains the run's own
test scores. A hospital's raw file (``--image scan.dcm``: a whole pelvis, DICOM included) is cut by the
run's recorded preprocessing exactly as ``predict.py`` cuts it
(:func:`hipx.inference.predict.cut_items`): one picture per hip, the crop ``predict.py`` scored, with
its probability. The maps themselves are :mod:`hipx.inference.cam`'s; here the cases are chosen,
explained, drawn and written. Methods, targets and outputs: docs/heatmaps.md.
"""
from __future__ import annotations

import argparse
import io
import logging
import math
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure  # no pyplot: no global state, Agg renders the PNG

from hipx.core import fusion, runtime
from hipx.core.choices import CAM_EXPLAIN_CHOICES, CAM_TARGETS, OUTCOMES
from hipx.data import filenames, imaging, loader
from hipx.inference.cam import LAYER_METHODS, NAMES, REFERENCE_METHODS, compute_cam, predict_logit, resolve_layer
from hipx.inference import network
from hipx.inference import predict as scoring
from hipx.prepare.synthetic import mask_path, region_mask  # the demo generator's masks
from hipx.runs import runfiles

logger = logging.getLogger(__name__)

CAMS_DIR = "cams"
PREDICTIONS = runfiles.PREDICTIONS["test"]
LABELS = {0: "normal", 1: "osteoporosis"}
ALPHA, DPI = 0.4, 150
LOCALISATION_TARGETS = ("osteoporosis", "predicted")  # --localisation without --explain
TARGET_TEXT = {"osteoporosis": "the osteoporosis logit", "normal": "the normal class (negated logit)",
               "predicted": "the predicted class"}


# ---------------------------------------------------------------------------------------------
# The run and its inputs

def load_network(run: runfiles.Run, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The run's best network in eval mode on ``device``."""
    return network.load_network(run, device)


def test_files(run: runfiles.Run, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The run's test images (``--data_dir`` overrides where they are), sorted as the loader lists them."""
    return runfiles.split_files(run.config, data_dir)["test"]


def _check_path(path: Path) -> None:
    """Refuse a folder or a missing file given to ``--image``."""
    if path.is_dir():
        raise FileNotFoundError(f"--image {path} is a folder; give image files (or --all / --index for the run's "
                                "test split, --data_dir for where it lies)")
    if not path.is_file():
        raise FileNotFoundError(f"--image {path}: no such file")


def check_image(path: str | os.PathLike) -> Path:
    """Refuse, naming the file, anything the loader could not turn into a network input."""
    path = Path(path)
    _check_path(path)
    filenames.scored(path)  # label and clinical values come from the name
    try:
        imaging.read_scaled(path)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. OpenCV refusing a two-channel PNG
        raise ValueError(f"{path}: cannot read it as a grey radiograph ({type(exc).__name__}: {exc}); expected a "
                         ".png (8/16 bit, grey or colour) or a 2-D .npy") from exc
    return path


def pick_indices(files: Sequence[Path], indices: Sequence[int], where: str) -> list[Path]:
    """``files`` at ``indices`` (``--index``); an index out of range names the valid ones and ``where``."""
    bad = [i for i in indices if not 0 <= i < len(files)]
    if bad:
        raise IndexError(f"--index {bad[0]} is out of range: {where} holds {len(files)} images, so valid indices "
                         f"are 0..{len(files) - 1}")
    return [files[i] for i in indices]


def prediction_rows(run_dir: str | os.PathLike) -> dict[str, dict]:
    """The run's test predictions by file name: label, probability, prediction."""
    return {r["file"]: r for r in runfiles.read_predictions(run_dir, "test").to_dict("records")}


def select_cases(run_dir: str | os.PathLike, files: Sequence[Path], kinds: Sequence[str], top: int,
                 threshold: float) -> list[Path]:
    """The ``top`` most confident test cases of each kind (tp, fp, fn, tn) at the run's threshold:
    highest probability first for predicted osteoporosis, lowest first for predicted normal."""
    rows = prediction_rows(run_dir)
    by_name = {p.name: p for p in files}
    absent = [name for name in rows if name not in by_name]
    if absent:
        raise ValueError(f"{Path(run_dir) / PREDICTIONS} lists {len(absent)} files that are not in the test split "
                         f"(e.g. {absent[0]}); does --data_dir point at the run's data?")
    chosen = []
    for kind in kinds:
        label, predicted = OUTCOMES[kind]
        match = [(float(r["probability"]), name) for name, r in rows.items()
                 if int(r["label"]) == label and (float(r["probability"]) >= threshold) == bool(predicted)]
        match.sort(key=lambda t: (-t[0] if predicted else t[0], t[1]))
        if not match:
            logger.warning("no %s case among the %d test images at threshold %.3f", kind, len(rows), threshold)
        chosen += [by_name[name] for _, name in match[:top]]
    if not chosen:
        raise ValueError(f"no test image is of kind {', '.join(kinds)} at threshold {threshold:.3f}")
    return chosen


def reference_inputs(run: runfiles.Run, data_dir: str | os.PathLike | None = None, n: int = 16,
                     seed: int = 0, files: Sequence[Path] | None = None) -> torch.Tensor:
    """``(n, C, H, W)``: ``n`` of the run's training images (a fixed draw for ``seed``), built as the network
    saw them without augmentation: the reference population of ``--method expected_gradients``. ``files``:
    the run's training images when the caller knows them (a cross-validation fold), else from ``data_dir``."""
    try:
        files = runfiles.split_files(run.config, data_dir)["train"] if files is None else list(files)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}. Expected gradients compares each image with the run's training images; "
                                "pass --data_dir where the run's data set lies now") from exc
    chosen = sorted(np.random.default_rng(seed).choice(len(files), size=min(n, len(files)), replace=False))
    dataset = loader.run_dataset([files[i] for i in chosen], run.config, run.clinical_stats, desc="references")
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


# ---------------------------------------------------------------------------------------------
# Maps

@dataclass
class Case:
    """One explained image: what the network saw (channel 0), its heatmap and its prediction."""

    path: Path
    info: filenames.SampleInfo
    image: np.ndarray  # (H, W) radiograph channel of the network input, [0, 1]
    heatmap: np.ndarray  # (H, W) in [0, 1]
    probability: float
    original_size: tuple[int, int]  # (H, W) of the file, or of a raw file's crop: the real aspect ratio
    target: str = "osteoporosis"  # whose evidence the heatmap shows (cam.TARGETS)
    side: str = ""  # a raw file's hip ('right', 'left'; '' for the whole image)
    box: tuple[int, int, int, int] | None = None  # a raw file's crop box on the raw image; None: a data folder's file

    @property
    def name(self) -> str:
        """The file's name, and for a crop cut from a raw file its hip."""
        return self.path.name + (f" ({self.side} hip)" if self.side else "")

    def prediction(self, threshold: float) -> int:
        return int(self.probability >= threshold)


def resolve_target(target: str, probability: float, threshold: float | None) -> str:
    """The class whose evidence to map: ``target`` itself, or for ``"predicted"`` the class the run
    predicts (osteoporosis iff ``probability >= threshold``, as :meth:`Case.prediction`)."""
    if target in CAM_TARGETS:
        return target
    if target != "predicted":
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(CAM_EXPLAIN_CHOICES)}")
    if threshold is None:
        raise ValueError("target 'predicted' needs the run's threshold")
    return LABELS[int(probability >= threshold)]


def explain(model: torch.nn.Module, dataset: loader.HipDataset, method: str = "gradcam", layer: str | None = None,
            target: str = "osteoporosis", threshold: float | None = None, tta: str = "none", *,
            fusion_mode: str, infos: Sequence[filenames.SampleInfo] | None = None, **cam_kwargs) -> list[Case]:
    """Heatmap and probability for every image of ``dataset`` for a network of ``fusion_mode`` (the
    run's); ``target`` as :func:`resolve_target`. ``tta="flip"`` (a run validated with ``--tta flip``):
    the probability, as the run reported it, is the mean of the image's and its mirror's
    (:func:`fusion.probability`); the heatmap explains the image's own logit. ``infos``: label and clinical
    values per image where the dataset was given its clinical values (its ``infos`` None)."""
    infos = dataset.infos if infos is None else infos
    cases = []
    for i in runtime.progress(range(len(dataset)), enabled=len(dataset) >= 5, desc=NAMES[method], leave=False):
        sample = dataset[i]
        # the clinical vector where the mode gives the network one (held fixed while the image is explained)
        clinical = fusion.clinical_input(fusion_mode, sample["clinical"])

        def logit(b: dict) -> torch.Tensor:
            return torch.tensor([predict_logit(model, b["image"], clinical)], dtype=torch.float64)

        as_run = {"image": sample["image"]}  # what the run's validation and test scored
        probability = float(fusion.probability(logit, as_run, tta))
        explained = resolve_target(target, probability, threshold)
        heat = compute_cam(model, sample["image"], clinical, method, layer, target=explained, **cam_kwargs)
        path = Path(sample["path"])
        crop = dataset.images[i] if dataset.images is not None else None  # cut from a raw file: its shape
        size = crop.shape[:2] if crop is not None else imaging.read_scaled(path).shape[:2]
        cases.append(Case(path, infos[i], sample["image"][0].numpy().copy(), heat, probability, tuple(size),
                          explained))
    return cases


# ---------------------------------------------------------------------------------------------
# Localisation on the demo data

def localisation_ratio(heat: np.ndarray, mask: np.ndarray) -> float:
    """Share of the heatmap's mass inside ``mask`` divided by the mask's share of the image.

    1 is chance (a flat map), ``1 / mask share`` the most possible (all mass on the region), 0 none.
    ``mask`` may be fractional (pixel coverage). NaN when undefined: an all-zero map or an empty mask.
    """
    heat = np.asarray(heat, dtype=np.float64)
    mask = np.asarray(mask, dtype=np.float64)
    if heat.shape != mask.shape:
        raise ValueError(f"heatmap {heat.shape} and mask {mask.shape} differ in shape")
    total, area = float(heat.sum()), float(mask.mean())
    if not total > 0 or not area > 0:
        return math.nan
    return float((heat * mask).sum() / total / area)


def read_mask(image: Path, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 at the network's size: the fraction of each input pixel on the image's region
    (the demo generator's mask, :func:`hipx.prepare.synthetic.region_mask`)."""
    mask = region_mask(image).astype(np.float32)
    return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def _summary(rows: list[dict]) -> dict:
    ratios = np.array([r["ratio"] for r in rows], dtype=np.float64)
    ok = np.isfinite(ratios)
    if ok.any():
        inside = np.array([r["inside_share"] for r in rows])[ok]
        hits = np.array([r["peak_on_region"] for r in rows])[ok]
        return {"n": len(rows), "n_undefined": int((~ok).sum()), "mean_ratio": float(ratios[ok].mean()),
                "median_ratio": float(np.median(ratios[ok])), "mean_inside_share": float(inside.mean()),
                "mean_mask_share": float(np.mean([r["mask_share"] for r in rows])),
                "peak_on_region": float(hits.mean())}
    return {"n": len(rows), "n_undefined": int((~ok).sum()), "mean_ratio": math.nan, "median_ratio": math.nan,
            "mean_inside_share": math.nan, "mean_mask_share": math.nan, "peak_on_region": math.nan}


def cam_localisation(run: runfiles.Run, model: torch.nn.Module, data_dir: str | os.PathLike | None = None,
                     method: str = "gradcam", layer: str | None = None, split: str = "test",
                     target: str = "osteoporosis", **cam_kwargs) -> dict:
    """How much of the heatmap falls on the region where the demo data draw the disease signal.

    For each image of ``split``: ``ratio`` = share of heatmap mass inside the mask / mask's share of
    the image (1 = chance, see :func:`localisation_ratio`); also whether the map's peak lies on the
    region (the pointing game). Returns the summary over all images (``"all"``) and per class
    (``"normal"``, ``"osteoporosis"``) with mean and median ratio, plus one row per image (``"images"``).
    Images with an all-zero map count in ``n_undefined`` and are left out of the means. ``target`` is
    whose evidence is mapped (:func:`resolve_target`; ``"predicted"`` uses the run's threshold); each
    row's ``explained`` says which class its map shows. ``run`` and its ``model`` (:func:`load_network`)
    are loaded once by the caller, whatever the number of targets.
    """
    data_dir = Path(data_dir or run.config.data_dir)
    files = runfiles.split_files(run.config, data_dir)[split]
    folder = mask_path(files[0]).parent
    if not folder.is_dir():
        raise FileNotFoundError(f"no masks folder {folder}: the localisation measure needs the region masks the "
                                f"demo generator writes (python synthetic.py --out {data_dir} writes "
                                f"{folder.parent}/<split>/<image file name>); real radiographs have none")
    missing = [p.name for p in files if not mask_path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(files)} {split} images have no mask in {folder} "
                                f"(e.g. {missing[0]}); regenerate the data with synthetic.py")
    size = run.image_size
    layer_name = resolve_layer(model, layer)[0] if method in LAYER_METHODS else ""
    if method in REFERENCE_METHODS and cam_kwargs.get("references") is None:
        cam_kwargs["references"] = reference_inputs(run, data_dir).to(next(model.parameters()).device)
    rows = []
    threshold = run.threshold
    dataset = loader.run_dataset(files, run.config, run.clinical_stats, desc="cam")
    for case in explain(model, dataset, method, layer, target, threshold, tta=run.config.tta,
                        fusion_mode=run.fusion,
                        **cam_kwargs):
        mask = read_mask(case.path, size)
        heat = case.heatmap.astype(np.float64)
        ratio = localisation_ratio(heat, mask)
        peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
        rows.append({"file": case.path.name, "label": case.info.label, "probability": case.probability,
                     "target": target, "explained": case.target, "ratio": ratio,
                     "inside_share": float((heat * mask).sum() / heat.sum()) if heat.sum() > 0
                     else math.nan, "mask_share": float(mask.mean()),
                     "peak_on_region": int(mask[peak] >= 0.5) if heat.max() > 0 else 0})
    n_references = len(cam_kwargs["references"]) if method in REFERENCE_METHODS else None
    return {"run": str(run.dir), "data_dir": str(data_dir), "split": split, "method": method, "layer": layer_name,
            "n_references": n_references, "target": target, "threshold": threshold, "epoch": run.epoch, "chance": 1.0,
            "all": _summary(rows),
            **{LABELS[k]: _summary([r for r in rows if r["label"] == k]) for k in (0, 1)}, "images": rows}


# ---------------------------------------------------------------------------------------------
# Pictures

def _clinical_text(info: filenames.SampleInfo) -> str:
    sex = {1.0: "female", 0.0: "male"}.get(info.sex, "NA")  # NaN matches neither key
    age = "NA" if math.isnan(info.age) else f"{info.age:g}"
    bmi = "NA" if math.isnan(info.bmi) else f"{info.bmi:.1f}"
    return f"age {age}, sex {sex}, BMI {bmi}"


_OUTCOME_OF = {pair: kind for kind, pair in OUTCOMES.items()}  # (label, prediction) -> kind


def _outcome(label: int, prediction: int) -> str:
    return _OUTCOME_OF[(label, prediction)].upper()


def caption(case: Case, threshold: float, short: bool = False) -> str:
    """File name, true label, probability against the run's threshold, whose evidence the map shows,
    age/sex/BMI (NA if missing). A crop of a raw file: its hip and box, its label unknown."""
    pred = case.prediction(threshold)
    label = case.info.label
    if label is None:  # a new scan: no label, so no outcome
        box = case.box
        where = "" if box is None else f", box x {box[0]}-{box[2]}, y {box[1]}-{box[3]}"
        if short:
            return (f"{case.name}\np {case.probability:.2f}, predicted {LABELS[pred]}, map {case.target}\n"
                    f"{_clinical_text(case.info)}")
        return (f"{case.name}{where}\ntrue: unknown    predicted: {LABELS[pred]}\n"
                f"p(osteoporosis) = {case.probability:.3f}    threshold {threshold:.3f}\n"
                f"map: evidence for {case.target}    {_clinical_text(case.info)}")
    if short:
        return (f"{case.path.name}\ntrue {LABELS[label]}, p {case.probability:.2f} ({_outcome(label, pred)}), "
                f"map {case.target}\n{_clinical_text(case.info)}")
    return (f"{case.path.name}\ntrue: {LABELS[label]}    predicted: {LABELS[pred]} ({_outcome(label, pred)})\n"
            f"p(osteoporosis) = {case.probability:.3f}    threshold {threshold:.3f}\n"
            f"map: evidence for {case.target}    {_clinical_text(case.info)}")


def _draw(ax, image: np.ndarray, heatmap: np.ndarray, original_size: tuple[int, int], alpha: float = ALPHA):
    h0, w0 = original_size
    extent = (0, w0, h0, 0)  # the file's size: the real aspect ratio whatever the network's input size
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, extent=extent, interpolation="bilinear")
    ax.imshow(heatmap, cmap="jet", vmin=0.0, vmax=1.0, alpha=alpha, extent=extent, interpolation="bilinear")
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def _colorbar(fig: Figure, axes, label: str) -> None:
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), colormaps["jet"]), ax=axes, shrink=0.7, pad=0.02)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=6)


def where_text(method: str, layer: str, n_references: int | None = None) -> str:
    """How the method looks: at which layer, or against how many reference radiographs."""
    if method in LAYER_METHODS:
        return f" at {layer}"
    if method in REFERENCE_METHODS:
        return f" vs {n_references or 'the'} training radiographs"
    return ""


def title_for(method: str, layer: str, run: str, epoch: int, target: str = "osteoporosis",
              n_references: int | None = None) -> str:
    """The pictures' title: method, whose evidence, where it looks; run and epoch."""
    where = where_text(method, layer, n_references)
    return f"{NAMES[method]} of {TARGET_TEXT[target]}{where}\nrun {run}, epoch {epoch}"


# characters of 7-point text per inch of figure width, with room to spare: a title is wrapped to the
# picture's width, since one long line is centred and cut at both ends ("xpected Gradients")
CHARS_PER_INCH = 15
LINE_INCHES = 7 * 1.3 / 72  # one line of 7-point text and its leading


def _wrap(text: str, inches: float) -> str:
    return "\n".join(textwrap.fill(line, max(20, int(inches * CHARS_PER_INCH)), break_on_hyphens=False,
                                   break_long_words=False)  # a run's path stays whole
                     for line in text.splitlines())


def render_case(case: Case, threshold: float, title: str) -> Figure:
    """One case at its file's aspect ratio, with its caption and the heatmap's colour bar; the figure is
    as tall as the picture plus its title's and caption's lines (and :func:`_png` keeps every text whole)."""
    aspect = case.original_size[0] / case.original_size[1]
    width = 3.0
    title = _wrap(title, width + 1.0)
    text = caption(case, threshold)
    lines = title.count("\n") + text.count("\n") + 2
    fig = Figure(figsize=(width + 1.0, width * aspect + lines * LINE_INCHES + 0.4), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    _draw(ax, case.image, case.heatmap, case.original_size)
    ax.set_title(title, fontsize=7)
    ax.set_xlabel(text, fontsize=7, loc="left")
    _colorbar(fig, ax, "relative contribution (0 none, 1 most)")
    return fig


def render_sheet(cases: Sequence[Case], threshold: float, title: str, cols: int | None = None) -> Figure:
    """All ``cases`` on one contact sheet of ``cols`` columns (default: up to 4), each with a short caption."""
    n = len(cases)
    cols = max(1, min(cols or min(n, 4), n))
    rows = math.ceil(n / cols)
    aspect = float(np.median([c.original_size[0] / c.original_size[1] for c in cases]))
    cell = 2.2
    title = _wrap(f"{title}, threshold {threshold:.3f}", cols * cell + 0.9)
    fig = Figure(figsize=(cols * cell + 0.9, rows * (cell * aspect + 0.55) + (title.count("\n") + 1) * LINE_INCHES
                          + 0.3), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, case in zip(axes.flat, cases):
        _draw(ax, case.image, case.heatmap, case.original_size)
        ax.set_xlabel(caption(case, threshold, short=True), fontsize=5.5, loc="left")
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=7)
    _colorbar(fig, axes, "relative contribution (0 none, 1 most)")
    return fig


def render_localisation(results: dict | Sequence[dict], example: Case | None = None,
                        mask: np.ndarray | None = None) -> Figure:
    """Ratios per class against chance (1), one panel per target, and one example (the first target's
    median image) with the region outlined."""
    results = [results] if isinstance(results, dict) else list(results)
    n = len(results)
    fig = Figure(figsize=(4.0 * n + (3.0 if example is not None else 0.0), 4.2), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, n + (example is not None), squeeze=False,
                        width_ratios=[1.4] * n + [1] if example is not None else None)[0]
    rng = np.random.default_rng(0)  # jitter of the dots only
    for ax, result in zip(axes, results):
        for k, name in enumerate(("normal", "osteoporosis")):
            ratios = np.array([r["ratio"] for r in result["images"] if LABELS[r["label"]] == name], dtype=float)
            ratios = ratios[np.isfinite(ratios)]
            if ratios.size:
                ax.boxplot([ratios], positions=[k], widths=0.5, showfliers=False)
                ax.scatter(k + rng.uniform(-0.15, 0.15, ratios.size), ratios, s=8, alpha=0.6,
                           color=("tab:blue", "tab:red")[k])
        ax.axhline(result["chance"], color="grey", linestyle="--", linewidth=1)
        ax.text(1.9, result["chance"], "chance ", ha="right", va="bottom", fontsize=7, color="grey")
        ax.set_xticks([0, 1], [f"true normal (n={result['normal']['n']})",
                               f"true osteoporosis (n={result['osteoporosis']['n']})"], fontsize=7)
        ax.set_xlim(-0.6, 1.9)
        ax.set_ylabel("heatmap share on region / region's share of image", fontsize=7)
        ax.tick_params(labelsize=7)
        s = result["all"]
        where = where_text(result["method"], result["layer"], result.get("n_references"))
        target = TARGET_TEXT[result.get("target", "osteoporosis")]
        ax.set_title(f"{NAMES[result['method']]} of {target}{where}, {result['split']} images\nmean "
                     f"{s['mean_ratio']:.2f}, median {s['median_ratio']:.2f}, peak on region "
                     f"{s['peak_on_region']:.0%}", fontsize=7)
    if example is not None:
        ax = axes[-1]
        _draw(ax, example.image, example.heatmap, example.original_size)
        h0, w0 = example.original_size
        if mask is not None:
            ys, xs = (np.arange(n) + 0.5 for n in mask.shape)
            ax.contour(xs * w0 / mask.shape[1], ys * h0 / mask.shape[0], mask, levels=[0.5], colors="white",
                       linewidths=0.8)
        ratio = localisation_ratio(example.heatmap, mask) if mask is not None else math.nan
        ax.set_xlabel(f"{example.path.name}\nmedian case of {results[0].get('target', 'osteoporosis')}: ratio "
                      f"{ratio:.2f}; region outlined", fontsize=6, loc="left")
    return fig


def _png(fig: Figure) -> bytes:
    """The PNG of ``fig`` holding everything drawn: the box is that of the drawn artists plus a margin,
    so a title or a caption line that does not fit the figure's size widens the picture, never is cut."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.08)
    return buf.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write a PNG atomically (:func:`runfiles.write_bytes`)."""
    runfiles.write_bytes(path, _png(fig))
    return Path(path)


def save_array(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a heatmap as float32 ``.npy`` atomically."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, dtype=np.float32), allow_pickle=False)
    runfiles.write_bytes(path, buf.getvalue())
    return Path(path)


# ---------------------------------------------------------------------------------------------
# What the command does with its flags (visualize_gradcam.py)

def _slug(method: str, target: str = "osteoporosis") -> str:
    # gradcam++ -> gradcampp: no '+' in file names; the default target keeps the names it always had
    return method.replace("+", "p") + ("" if target == "osteoporosis" else f"_{target}")


def localisation_table(results: Sequence[dict]) -> str:
    """One line per target and class: n, mean and median ratio, peak on region (1 = chance)."""
    first = results[0]
    where = where_text(first["method"], first["layer"], first.get("n_references"))
    lines = [f"{NAMES[first['method']]}{where} localisation, {first['split']} images: heatmap share on region / "
             "region's share of image (1 = chance)",
             f"{'target':13s} {'true class':13s} {'n':>4s} {'mean':>6s} {'median':>6s} {'peak on region':>15s}"]
    for result in results:
        for k in ("all", "normal", "osteoporosis"):
            c = result[k]
            lines.append(f"{result['target']:13s} {k:13s} {c['n']:4d} {c['mean_ratio']:6.2f} {c['median_ratio']:6.2f} "
                         f"{c['peak_on_region']:15.0%}"
                         + (f"  ({c['n_undefined']} all-zero maps left out)" if c["n_undefined"] else ""))
    return "\n".join(lines)


def _cam_kwargs(args: argparse.Namespace, run: runfiles.Run, device) -> dict:
    """The per-method options of the command line, as compute_cam takes them."""
    kwargs = {"window": args.window, "batch_size": args.batch_size, "steps": args.steps, "smooth": args.smooth}
    if args.method in REFERENCE_METHODS:
        kwargs["references"] = reference_inputs(run, args.data_dir, args.references).to(device)
    return kwargs


def _write_localisation(args: argparse.Namespace, device, out: Path) -> dict:
    """``--localisation``: the measure for each target, written as JSON, CSV and one figure."""
    targets = [args.explain] if args.explain else list(LOCALISATION_TARGETS)
    trained = runfiles.load_run(args.run)
    model = load_network(trained, device)
    kwargs = _cam_kwargs(args, trained, device)
    results = [cam_localisation(trained, model, args.data_dir, args.method, args.layer, target=target, **kwargs)
               for target in targets]
    name = f"localisation_{_slug(args.method)}" + (f"_{args.explain}" if args.explain else "")
    common = {k: v for k, v in results[0].items() if k in ("run", "data_dir", "split", "method", "layer",
                                                            "n_references", "threshold", "epoch", "chance")}
    summary = {**common, "targets": {r["target"]: {k: r[k] for k in ("all", "normal", "osteoporosis")}
                                     for r in results}}
    runfiles.write_json(out / f"{name}.json", summary)
    runfiles.write_csv(out / f"{name}.csv", [row for r in results for row in r["images"]])  # column target
    example, mask = _median_example(results[0], trained, model, args, kwargs)
    figure = Path(args.save) if args.save else out / f"{name}.png"
    save_figure(render_localisation(results, example, mask), figure)
    summary["written"] = [str(out / f"{name}.json"), str(out / f"{name}.csv"), str(figure)]
    print(localisation_table(results))
    for path in summary["written"]:
        print(path)
    return summary


def _median_example(result: dict, trained: runfiles.Run, model: torch.nn.Module, args: argparse.Namespace,
                    cam_kwargs: dict) -> tuple[Case | None, np.ndarray | None]:
    """The localisation figure's example: the image of median ratio of ``result`` (one target's), with
    its region mask; (None, None) when every map is all zero."""
    finite = [r for r in result["images"] if math.isfinite(r["ratio"])]
    if not finite:
        return None, None
    row = sorted(finite, key=lambda r: r["ratio"])[len(finite) // 2]
    path = Path(result["data_dir"]) / "test" / row["file"]
    dataset = loader.run_dataset([path], trained.config, trained.clinical_stats)
    (example,) = explain(model, dataset, args.method, args.layer, row["explained"], tta=trained.config.tta,
                         fusion_mode=trained.fusion, **cam_kwargs)
    return example, read_mask(path, trained.image_size)


def _check_args(args: argparse.Namespace) -> None:
    """Refuse or warn about flags that do not go together, before the run is read."""
    if args.layer and args.method not in LAYER_METHODS:
        logger.warning("--layer %s ignored: %s looks at the input pixels, not at a layer", args.layer, args.method)
    if args.smooth is not None and not (math.isfinite(args.smooth) and args.smooth >= 0):
        raise SystemExit(f"--smooth {args.smooth}: must be a finite number of pixels >= 0")


def choose_files(args: argparse.Namespace, trained: runfiles.Run) -> list[Path]:
    """The images ``--image``, ``--index``, ``--select`` or ``--all`` name, checked before any map is made."""
    if args.image:
        files = [check_image(p) for p in args.image]
    else:
        all_test = test_files(trained, args.data_dir)
        if args.index is not None:
            files = pick_indices(all_test, args.index, f"the test split of {args.data_dir or trained.config.data_dir}")
        elif args.select:
            files = select_cases(args.run, all_test, args.select, args.top, trained.threshold)
        else:
            files = all_test
    if args.save and len(files) > 1 and not args.sheet:
        raise SystemExit(f"--save names one picture but {len(files)} cases were chosen: add --sheet, or choose one")
    return files


@dataclass
class Chosen:
    """The inputs to explain: the loader's dataset, per row the label and clinical values where the dataset
    was given them (``infos``; None: read from the names) and the raw file's item (``items``: side and box,
    None for a data folder's file), and what of the raw files could not be cut (``skipped``, with the
    reason in its note)."""

    dataset: loader.HipDataset
    infos: list[filenames.SampleInfo] | None = None
    items: list[scoring.Item | None] | None = None
    skipped: list[scoring.Item] = field(default_factory=list)


def raw_inputs(args: argparse.Namespace, trained: runfiles.Run) -> Chosen | None:
    """``--image`` files that are a hospital's raw radiographs (not a .png/.npy named in the file-name format),
    cut by the run's recorded preprocessing exactly as ``predict.py`` cuts them
    (:func:`hipx.inference.predict.cut_items`): one row per hip found; their sex, age and BMI from ``--csv``
    (or the name) where the run uses them. None where no file is raw or the run records no preprocessing:
    every file is then read as a data folder's image (:func:`choose_files`), as before."""
    given = [Path(p) for p in args.image]
    for path in given:
        _check_path(path)
    raw = [p for p in given if not scoring.in_data_folder_format(p)]
    if not raw:
        return None
    model = scoring.RunModel(args.run, members=[trained])
    try:
        pipeline = model.preprocessing()
    except ValueError as exc:  # an unreadable record: one line
        raise SystemExit(str(exc)) from None
    if pipeline is None:
        return None
    try:
        table = scoring.read_clinical_csv(args.csv) if getattr(args, "csv", None) else None
        values = dict(zip(map(str, raw), scoring.clinical_values(raw, table, required=model.uses_clinical)))
        items: list[scoring.Item] = []
        for path in given:
            if str(path) in values:
                items += scoring.cut_items([path], values[str(path)][None], model, "raw")[0]
            else:
                items.append(scoring.Item(check_image(path), np.asarray(filenames.decode(path).clinical)))
    except ValueError as exc:  # PredictError, a record this code cannot repeat: one line naming the file
        raise SystemExit(str(exc)) from None
    drawn = [item for item in items if item.scored]
    skipped = [item for item in items if not item.scored]
    for item in skipped:
        print(f"{item.file}{f' ({item.side} hip)' if item.side else ''}: no heatmap, "
              f"{item.note.removeprefix('not scored: ')}")
    if not drawn:
        raise SystemExit(f"nothing to draw: {skipped[0].file}: {skipped[0].note}"
                         + (f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""))
    if args.save and len(drawn) > 1 and not args.sheet:
        raise SystemExit(f"--save names one picture but {len(drawn)} cases were cut (one per hip): add --sheet, "
                         "or choose one")
    infos = [filenames.SampleInfo(item.file.stem, 0, None, *map(float, item.clinical)) if item.raw
             else filenames.scored(item.file) for item in drawn]
    dataset = loader.run_dataset([item.file for item in drawn], trained.config, trained.clinical_stats,
                                 clinical=[item.clinical for item in drawn], images=[item.crop for item in drawn],
                                 desc="cam")
    return Chosen(dataset, infos, [item if item.raw else None for item in drawn], skipped)


def choose_inputs(args: argparse.Namespace, trained: runfiles.Run) -> Chosen:
    """What to explain: the raw files among ``--image`` cut as ``predict.py`` cuts them (:func:`raw_inputs`),
    else the files :func:`choose_files` names, built by the loader as at test time."""
    chosen = raw_inputs(args, trained) if args.image else None
    if chosen is None:
        files = choose_files(args, trained)
        chosen = Chosen(loader.run_dataset(files, trained.config, trained.clinical_stats, desc="cam"))
    return chosen


def write_pictures(args: argparse.Namespace, cases: Sequence[Case], threshold: float, title: str, out: Path,
                   target: str) -> list[Path]:
    """One picture per case, or with ``--sheet`` one contact sheet, each with its raw heatmap (.npy)
    unless ``--no_npy``; ``--save`` names the one picture. Returns the files written, in order."""
    written = []
    if args.sheet:
        png = Path(args.save) if args.save else out / f"sheet_{_slug(args.method, target)}.png"
        written.append(save_figure(render_sheet(cases, threshold, title, args.cols), png))
        if not args.no_npy:  # (N, H, W) in the sheet's order
            written.append(save_array(np.stack([c.heatmap for c in cases]), png.with_suffix(".npy")))
    else:
        for case in cases:
            stem = case.path.stem + (f"_{case.side}" if case.side else "")  # a raw file: one picture per hip
            png = Path(args.save) if args.save else out / f"{stem}_{_slug(args.method, target)}.png"
            written.append(save_figure(render_case(case, threshold, title), png))
            if not args.no_npy:
                written.append(save_array(case.heatmap, png.with_suffix(".npy")))
    return written


def run(args: argparse.Namespace) -> dict:
    """What ``visualize_gradcam.py`` does with its parsed flags (its ``build_parser``): the chosen cases'
    pictures, or with ``--localisation`` the localisation measure (:func:`_write_localisation`'s summary).
    Returns the files written and, for pictures, each case's probability, prediction and explained class."""
    runtime.setup_logging()
    _check_args(args)
    device = runtime.select_device(args.device, None)
    out = Path(args.out) if args.out else Path(args.run) / CAMS_DIR
    into = runfiles.writing_into(args.run, [out if args.localisation or not args.save else None, args.save])
    with runfiles.hold_run(into, "visualize_gradcam.py"):  # writing into a run: its lock; elsewhere none
        if args.localisation:
            return _write_localisation(args, device, out)
        return _pictures(args, device, out)


def _pictures(args: argparse.Namespace, device, out: Path) -> dict:
    """The chosen cases' pictures in ``out`` (or ``--save``), and what :func:`run` returns for them."""
    trained = runfiles.load_run(args.run)
    model = load_network(trained, device)
    threshold = trained.threshold
    layer = resolve_layer(model, args.layer)[0] if args.method in LAYER_METHODS else ""
    chosen = choose_inputs(args, trained)
    target = args.explain or "osteoporosis"
    kwargs = _cam_kwargs(args, trained, device)
    cases = explain(model, chosen.dataset, args.method, args.layer, target, threshold, tta=trained.config.tta,
                    fusion_mode=trained.fusion, infos=chosen.infos, **kwargs)
    for case, item in zip(cases, chosen.items or ()):
        if item is not None:  # a crop cut from a raw file: which hip, where
            case.side, case.box = item.side, item.box
    _check_against_predictions(args.run, cases)
    title = title_for(args.method, layer, str(args.run), trained.epoch, target,
                      len(kwargs["references"]) if "references" in kwargs else None)
    written = write_pictures(args, cases, threshold, title, out, target)
    for path in written:
        print(path)
    return {"written": [str(p) for p in written], "threshold": threshold, "method": args.method, "layer": layer,
            "target": target, "cases": [{"file": c.path.name, "label": c.info.label, "probability": c.probability,
                                         "prediction": c.prediction(threshold), "target": c.target,
                                         **({"side": c.side, "box": c.box} if c.box is not None else {})}
                                        for c in cases],
            "not_drawn": [{"file": str(i.file), "side": i.side, "note": i.note} for i in chosen.skipped]}


def _check_against_predictions(run_dir: str, cases: Sequence[Case]) -> None:
    """Warn when a probability differs from the run's test predictions: other images or a stale run."""
    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        return
    rows = prediction_rows(run_dir)
    for case in cases:
        if case.box is not None:  # cut from a raw file: not one of the run's test images
            continue
        row = rows.get(case.path.name)
        # reduced precision on a GPU (bf16 autocast) moves test probabilities by well under 0.02
        if row is not None and abs(float(row["probability"]) - case.probability) > 0.02:
            logger.warning("%s: probability %.4f here but %s in %s; is --data_dir the run's data, and the "
                           "run's test predictions up to date?", case.path.name, case.probability,
                           row["probability"], path)
