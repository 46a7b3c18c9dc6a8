"""A trained run, or a cross-validation group's fold ensemble, as one ONNX graph with its preprocessing
written beside it as JSON; and that graph scored with onnxruntime on the CPU.

    export(run="outs/demo/fold0", out="model.onnx")        # model.onnx + model.preprocessing.json
    model = OnnxModel("model.onnx")
    out = model.score(files)                               # {"probability": (n,), ...} as predict.py scores
    out = model.run(image, clinical)                       # inputs already prepared (numpy)

The graph does what ``predict.py`` does after the loader: the network of each fold (``fusion.network_inputs``),
the probability (``fusion.probability``, with the flip mean where the run validated with ``--tta flip``),
the mean over the fold models, and for a graded target (``targets.py``) the predicted value or class.

Inputs (batch dimension dynamic, height and width the run's):

* one run: ``image`` float32 (B, C, H, W) exactly as ``loader.run_dataset`` builds it -- the radiograph and
  its enhanced copy, for early fusion followed by the normalised sex, age and BMI as constant planes -- and,
  for late and residual fusion, ``clinical`` float32 (B, 3), the normalised vector;
* a fold ensemble: ``image`` float32 (B, 2, H, W) and, where the folds use the clinical values,
  ``clinical_raw`` float64 (B, 3), the values themselves (NaN where unknown). Every fold normalises them
  with its own training split's statistics, so no one normalised input fits them all: the graph does it
  per fold, in float64 as ``loader.ClinicalStats.normalise`` does, and builds a fold's early-fusion planes.

Outputs: ``probability`` float32 (B,); a continuous target adds ``predicted_value`` float32 (B,), an ordinal
one ``predicted_class`` int64 (B,), an index into the target's classes (0 the lowest). The JSON
(:func:`preprocessing_spec`, docs/export.md) says how to build the inputs from an image file exactly as the
loader does, and holds the threshold, the fusion mode and the target; where the run records how its data
folder's images were cut from a hospital's raw files (``preprocessing.json``), the JSON holds that record too
(``raw_preprocessing``), so that ``predict.py --run model.onnx`` cuts raw files, DICOM included, as the run's
were cut.
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hipx.core import files, fusion, targets
from hipx.core.choices import MIN_SIDE
from hipx.core.cli import UserError
from hipx.data import loader, preprocessing
from hipx.inference import network
from hipx.models import BatchInstanceNorm2d
from hipx.runs import runfiles

logger = logging.getLogger(__name__)

FORMAT = "hipx-onnx/1"  # the JSON's format tag; a reader refuses another
OPSET = 18  # ONNX opset: onnxruntime >= 1.14 (2023) and most inference servers read it
MIN_OPSET = 18  # torch's exporter writes 18 and later itself; below, onnx's version converter fails on some graphs
JSON_SUFFIX = ".preprocessing.json"
EXPORTER_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._dynamo")
CHECK_TOLERANCE = 1e-4  # export refuses a graph whose probabilities differ more from PyTorch's on random inputs

# loader.enhance's literals beside its named constants (tests/test_export.py rebuilds the loader's input
# from the JSON bit for bit, so these cannot drift from the loader unnoticed)
TO_UINT8_OFFSET = 0.5  # clip(gray * 255 + 0.5, 0, 255) -> uint8: round half up, by truncation
BLUR_KSIZE = (3, 3)
BLUR_SIGMA = 0  # OpenCV derives it from the kernel size (0.8 for 3 x 3)
SOBEL_KSIZE = 3
EDGE_PERCENTILE = 99
EDGE_FLOOR = 1e-6


class ExportError(UserError):
    """A run that cannot be exported, an output that may not be written, or an exported model that cannot
    be used; the message names which and what is accepted."""


def preprocessing_path(onnx_path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.preprocessing.json`` beside it."""
    path = Path(onnx_path)
    return path.with_name(path.stem + JSON_SUFFIX)


# ----------------------------------------------------------------------------- the run(s) to export

def load_members(run: str | os.PathLike) -> list[runfiles.Run]:
    """The run(s) ``run`` names, loaded (``runfiles.load_run``); the folds of a group must share their image
    size, fusion mode and target, as one graph takes one input."""
    members = [runfiles.load_run(r) for r in runfiles.model_runs(run)]
    shapes = {(m.image_size, m.fusion, m.config.target) for m in members}
    if len(shapes) > 1:
        raise ExportError(f"--run {run}: the fold models differ in image size, fusion mode or target "
                          f"({sorted(shapes)}); an ensemble is the folds of one cross-validation run")
    specs = {str(targets.TargetSpec.from_dict(m.config.target_spec).to_dict()) for m in members}
    if len(specs) > 1:
        raise ExportError(f"--run {run}: the fold models' targets differ (classes, cut or scale); an ensemble "
                          "is the folds of one cross-validation run")
    return members


# ----------------------------------------------------------------------------- the graph, in PyTorch

class FrozenBatchInstanceNorm(nn.Module):
    """``models.BatchInstanceNorm2d`` in eval mode with its gate clamped once, here: the layer clamps the gate
    in place on every call, which torch's exporter cannot trace (it crashes the process). The same operations
    in the same order, so the same numbers."""

    def __init__(self, layer: BatchInstanceNorm2d) -> None:
        super().__init__()
        self.eps = layer.eps
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, getattr(layer, name).detach().clone())
        self.register_buffer("rho", layer.rho.detach().clamp(0.0, 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_bn = F.batch_norm(x, self.running_mean, self.running_var, None, None, False, 0.0, self.eps)
        x_in = F.instance_norm(x, eps=self.eps)
        rho = self.rho.view(1, -1, 1, 1)
        out = rho * x_bn + (1.0 - rho) * x_in
        return out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def frozen(model: nn.Module) -> nn.Module:
    """``model`` (eval mode) with every batch-instance norm replaced by :class:`FrozenBatchInstanceNorm`."""
    for name, child in model.named_children():
        if isinstance(child, BatchInstanceNorm2d):
            setattr(model, name, FrozenBatchInstanceNorm(child))
        else:
            frozen(child)
    return model


class MemberScore(nn.Module):
    """One trained network as predict.py scores it: ``(image, clinical)`` -> ``(probability, value)``.

    ``stats`` (mean, std of sex, age, BMI): the clinical input is raw (float64, NaN unknown) and is
    normalised here first, with ``planes`` (early fusion) appended to the image as the loader does."""

    def __init__(self, model: nn.Module, fusion_name: str, tta: str,
                 stats: loader.ClinicalStats | None = None, planes: bool = False) -> None:
        super().__init__()
        self.model, self.fusion, self.tta, self.planes = model, fusion_name, tta, planes
        self.raw = stats is not None
        if self.raw:
            self.register_buffer("mean", torch.tensor(stats.mean, dtype=torch.float64))
            self.register_buffer("std", torch.tensor(stats.std, dtype=torch.float64))

    def normalised(self, raw: torch.Tensor) -> torch.Tensor:
        """``loader.ClinicalStats.normalise`` on a batch: float64, a missing value -> 0 (the training mean)."""
        z = (raw.to(torch.float64) - self.mean) / self.std
        return torch.where(torch.isnan(z), torch.zeros_like(z), z).to(torch.float32)

    def forward(self, image: torch.Tensor, clinical: torch.Tensor | None = None):
        if self.raw and clinical is not None:
            clinical = self.normalised(clinical)
            if self.planes:
                image = loader.network_image(image, clinical, early_fuse=True)

        def forward(batch: dict) -> torch.Tensor:
            inputs = fusion.network_inputs(self.fusion, batch["image"], batch["clinical"])
            return self.model(*inputs).float().reshape(-1)

        p, logit = fusion.scored(forward, {"image": image, "clinical": clinical}, self.tta)
        if not self.model.target.graded:
            return p, None
        return p, self.model.predicted_value(logit)


class ExportedScore(nn.Module):
    """What the ONNX graph computes: the mean over the member networks of their probability and, for a
    graded target, of their predicted value (an ordinal class index rounded as predict.py rounds it)."""

    def __init__(self, members: Sequence[MemberScore], spec: targets.TargetSpec) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.spec = spec

    def forward(self, image: torch.Tensor, clinical: torch.Tensor | None = None):
        scored = [m(image, clinical) for m in self.members]
        probability = torch.stack([p for p, _ in scored]).mean(dim=0)
        if not self.spec.graded:
            return (probability,)
        value = torch.stack([v for _, v in scored]).mean(dim=0)
        if self.spec.predicted_is_class:  # np.round and torch.round both round half to even, as ONNX Round
            value = torch.clamp(torch.round(value), 0, self.spec.n_classes - 1).to(torch.int64)
        return probability, value


def member_tta(member: runfiles.Run, tta: str) -> str:
    """The test-time augmentation a member is scored with: ``auto`` as the run validated (its ``--tta``)."""
    return member.config.tta if tta == "auto" else tta


def build_module(members: Sequence[runfiles.Run], tta: str = "auto", clinical_input: str | None = None
                 ) -> ExportedScore:
    """The PyTorch module the graph is exported from. ``clinical_input``: ``normalised`` (one run's default)
    or ``raw`` (a fold ensemble's, the only choice there: each fold normalises with its own statistics)."""
    clinical_input = clinical_input or ("raw" if len(members) > 1 else "normalised")
    if clinical_input not in ("normalised", "raw"):
        raise ValueError(f"clinical_input {clinical_input!r}: choose normalised or raw")
    if clinical_input == "normalised" and len(members) > 1:
        raise ValueError("a fold ensemble takes the raw clinical values: each fold normalises them with its own "
                         "training statistics")
    mode = fusion.mode(members[0].fusion)
    scores = []
    for m in members:
        model = frozen(network.saved_network(m.state, str(m.checkpoint)))  # eval mode, on the CPU
        stats = loader.ClinicalStats.from_dict(m.clinical_stats) if clinical_input == "raw" and \
            mode.uses_clinical else None
        scores.append(MemberScore(model, m.fusion, member_tta(m, tta), stats, planes=mode.clinical_planes))
    return ExportedScore(scores, targets.TargetSpec.from_dict(members[0].config.target_spec)).eval()


def input_layout(members: Sequence[runfiles.Run], clinical_input: str) -> list[dict]:
    """The graph's inputs: name, dtype, shape (``batch`` dynamic) and what each channel or column holds."""
    mode = fusion.mode(members[0].fusion)
    h, w = members[0].image_size
    planes = mode.clinical_planes and clinical_input == "normalised"
    channels = ["radiograph", "enhanced", *(f"{n} (normalised, constant plane)" for n in loader.CLINICAL_NAMES
                                            if planes)]
    layout = [{"name": "image", "dtype": "float32", "shape": ["batch", len(channels), h, w], "channels": channels,
               "range": [0.0, 1.0]}]
    if clinical_input == "raw" and mode.uses_clinical:
        layout.append({"name": "clinical_raw", "dtype": "float64", "shape": ["batch", len(loader.CLINICAL_NAMES)],
                       "columns": list(loader.CLINICAL_NAMES),
                       "values": "the values themselves (sex 1 female / 0 male, age in years, BMI); NaN where "
                                 "unknown: each fold normalises them with its own statistics inside the graph"})
    elif mode.clinical_vector:
        layout.append({"name": "clinical", "dtype": "float32", "shape": ["batch", len(loader.CLINICAL_NAMES)],
                       "columns": list(loader.CLINICAL_NAMES),
                       "values": "normalised: (value - mean) / std, 0 where unknown (see clinical)"})
    return layout


def output_layout(spec: targets.TargetSpec, members: int) -> list[dict]:
    of = f" (the mean of the {members} fold models')" if members > 1 else ""
    layout = [{"name": "probability", "dtype": "float32", "shape": ["batch"],
               "meaning": f"P(osteoporosis){of}; osteoporosis when >= threshold"}]
    if spec.graded and not spec.predicted_is_class:
        layout.append({"name": "predicted_value", "dtype": "float32", "shape": ["batch"],
                       "meaning": f"the predicted {spec.name}"
                                  + (" (mean of the fold models')" if members > 1 else "")})
    elif spec.graded:
        layout.append({"name": "predicted_class", "dtype": "int64", "shape": ["batch"],
                       "meaning": "index into target.classes (0 the lowest)"
                                  + (", at the fold models' mean class index rounded half to even" if members > 1
                                     else "")})
    return layout


def example_inputs(layout: Sequence[Mapping], batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the graph's layout (``batch`` >= 2: torch.export treats a size of 1 as fixed);
    raw clinical values are plausible ones with one missing."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for item in layout:
        shape = (batch, *item["shape"][1:])
        if item["name"] == "clinical_raw":
            rows = [[1.0, 72.0, 24.5], [0.0, 58.5, math.nan]]
            out.append(torch.tensor([rows[i % 2] for i in range(batch)], dtype=torch.float64))
        elif item["name"] == "clinical":
            out.append(torch.randn(shape, generator=g))
        else:
            out.append(torch.rand(shape, generator=g))
    return tuple(out)


# ----------------------------------------------------------------------------- the JSON

def preprocessing_spec(members: Sequence[runfiles.Run], tta: str, clinical_input: str, onnx_bytes: bytes,
                       opset: int, onnx_name: str, raw: preprocessing.Preprocessing | None = None) -> dict:
    """Everything another program needs to build the graph's input from an image file exactly as
    ``loader.run_dataset`` does, and to read its output (docs/export.md). ``raw``: the run's record of how
    its images were cut from raw files (``preprocessing.run_preprocessing``), None where it records none."""
    first = members[0]
    mode = fusion.mode(first.fusion)
    spec = targets.TargetSpec.from_dict(first.config.target_spec)
    ttas = sorted({member_tta(m, tta) for m in members})
    return {
        "format": FORMAT,
        "model": onnx_name,
        "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "bytes": len(onnx_bytes),
        "opset": opset,
        "exported": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "torch": torch.__version__},
        "runs": runs_spec(members, tta),
        "fusion": mode.name,
        "fusion_text": mode.text,
        "tta": ttas[0] if len(ttas) == 1 else ttas,
        "threshold": float(np.mean([m.threshold for m in members])),
        "threshold_rule": "osteoporosis when probability >= threshold (the validation threshold; a fold "
                          "ensemble's is the mean of its folds')",
        "target": {**spec.to_dict(), "text": spec.describe()},
        "inputs": input_layout(members, clinical_input),
        "outputs": output_layout(spec, len(members)),
        "image": image_spec(first.image_size),
        "clinical": clinical_spec(members, clinical_input),
        "raw_preprocessing": None if raw is None else raw.to_dict(),
    }


def runs_spec(members: Sequence[runfiles.Run], tta: str) -> list[dict]:
    """The runs in the graph: folder, checkpoint, epoch, threshold, test-time augmentation and network."""
    return [{"run": str(m.dir), "checkpoint": m.checkpoint.name, "epoch": m.epoch, "threshold": m.threshold,
             "tta": member_tta(m, tta), "model": m.config.model, "depth": m.config.depth} for m in members]


def image_spec(image_size: Sequence[int]) -> dict:
    """How an image file becomes the graph's ``image`` input, step by step as the loader does it, at
    ``image_size`` (H, W)."""
    h, w = image_size
    return {
        "what": "a data folder's image: one proximal-femur crop as preprocess_filenames.py writes it "
                "(or the demo's synthetic.py); a raw hospital file is first cut as raw_preprocessing says "
                "(where the run records it), each crop then read as its 8-bit PNG would be",
        "decode": {
            "image_file": "PNG (also JPEG, TIFF, BMP): cv2.imread(path, cv2.IMREAD_UNCHANGED); colour -> "
                          "cv2.cvtColor(COLOR_BGR2GRAY, or COLOR_BGRA2GRAY with alpha); then float32 / scale "
                          "of its dtype",
            "scale": {"uint8": 255.0, "uint16": 65535.0},
            "npy": "a 2-D array as float32: if it is uint8 or outside [0, 1], / 255 when within 0..255, "
                   "else (x - min) / (max - min); then clipped to [0, 1]",
            "min_side": MIN_SIDE,
        },
        "size": [h, w],
        "resize": {"function": "cv2.resize(gray, (width, height), interpolation=...)",
                   "when": "the decoded image's shape differs from size",
                   "interpolation_if_taller": "INTER_AREA", "interpolation_otherwise": "INTER_LINEAR",
                   "then": "clip to [0, 1], float32"},
        "enhance": {
            "to_uint8": {"scale": 255.0, "offset": TO_UINT8_OFFSET,
                         "rule": "uint8(clip(gray * scale + offset, 0, 255)), float32 arithmetic, truncated"},
            "clahe": {"clip_limit": loader.CLAHE_CLIP, "tile_grid_size": list(loader.CLAHE_TILES),
                      "then": "float32 / 255"},
            "gaussian_blur": {"ksize": list(BLUR_KSIZE), "sigma": BLUR_SIGMA},
            "sobel": {"ksize": SOBEL_KSIZE, "ddepth": "CV_32F", "of": "the blurred CLAHE image, dx and dy"},
            "edges": "sqrt(sx * sx + sy * sy) in float32 (numpy, not cv2.magnitude), divided by "
                     "max(percentile(edges, edge_percentile) (numpy's linear), edge_floor)",
            "edge_percentile": EDGE_PERCENTILE, "edge_floor": EDGE_FLOOR,
            "edge_weight": loader.EDGE_WEIGHT,
            "blend": "clip((1 - edge_weight) * clahe + edge_weight * min(edges, 1), 0, 1)",
        },
        "channels": ["radiograph", "enhanced"],
        "quantise": {"scale": 255.0, "rounding": "half to even (numpy.round)", "dtype": "uint8",
                     "rule": "both channels: uint8(round(channel * 255)) as the loader's cache keeps them, "
                             "then float32(value) / 255 for the network"},
        "layout": "NCHW float32",
    }


def clinical_spec(members: Sequence[runfiles.Run], clinical_input: str) -> dict:
    """The sex, age and BMI: how they are coded, whether and how they reach the network, and the
    statistics that normalise them (the run's, or each fold's where the graph takes them ``raw``)."""
    first = members[0]
    mode = fusion.mode(first.fusion)
    clinical = {
        "names": list(loader.CLINICAL_NAMES),
        "coding": {"sex": "1 female, 0 male", "age": "years", "bmi": "kg/m^2"},
        "used": mode.uses_clinical,
        "reaches_the_network_as": "constant image planes after the two image channels" if mode.clinical_planes
        else "a vector beside the image" if mode.clinical_vector else "not at all (image only)",
        "normalise": "z = (value - mean) / std, computed in float64, then cast to float32",
        "missing": "z = 0 where a value is unknown (NaN): imputed with the training mean",
    }
    if clinical_input == "raw":
        clinical["input"] = "raw: the graph normalises per fold, with each fold's mean and std below"
        clinical["per_fold"] = [{"run": str(m.dir), **loader.ClinicalStats.from_dict(m.clinical_stats).to_dict()}
                                for m in members]
    else:
        clinical["input"] = "normalised, with this mean and std (the run's training split)"
        stats = loader.ClinicalStats.from_dict(first.clinical_stats)
        clinical["mean"], clinical["std"] = stats.mean, stats.std
    return clinical


# ----------------------------------------------------------------------------- export

def check_out(out: str | os.PathLike, overwrite: bool) -> tuple[Path, Path]:
    """The ONNX file and its JSON to write; refused before any work when ``out`` is not an ``.onnx`` name,
    is a folder, or (without ``overwrite``) either file exists."""
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ExportError(f"--out {out}: give a file name ending in .onnx (the preprocessing is written beside "
                          f"it as <name>{JSON_SUFFIX}), e.g. --out model.onnx")
    if out.is_dir():
        raise ExportError(f"--out {out} is a folder; give the .onnx file to write, e.g. --out {out / 'model.onnx'}")
    json_path = preprocessing_path(out)
    existing = [str(p) for p in (out, json_path) if p.exists()]
    if existing and not overwrite:
        raise ExportError(f"--out {out}: {' and '.join(existing)} {'exist' if len(existing) > 1 else 'exists'}; "
                          "nothing was written. Pass --overwrite to replace "
                          f"{'them' if len(existing) > 1 else 'it'}, or choose another --out")
    return out, json_path


def to_onnx(module: ExportedScore, layout: Sequence[Mapping], outputs: Sequence[Mapping], opset: int = OPSET
            ) -> bytes:
    """``module`` as ONNX bytes (torch's torch.export-based exporter), batch dimension dynamic."""
    import onnx

    names = [item["name"] for item in layout]
    batch = torch.export.Dim("batch")
    dynamic = tuple({0: batch} for _ in names)
    quiet = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [q.level for q in quiet]
    try:
        # the exporter's notes (that both inputs share one batch dimension, which initialisers its optimiser
        # merged) are for its developers; its errors still raise
        for q in quiet:
            q.setLevel(logging.WARNING)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, example_inputs(layout), dynamo=True, opset_version=opset,
                                        input_names=names, output_names=[o["name"] for o in outputs],
                                        dynamic_shapes=dynamic, verbose=False, optimize=True)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    proto = program.model_proto
    written = {o.domain: o.version for o in proto.opset_import}.get("", None)
    if written != opset:
        raise RuntimeError(f"the exporter wrote opset {written}, not the {opset} asked for")
    for node in proto.graph.node:  # the exporter's per-node stack traces: a third of the file, of no use here
        del node.metadata_props[:]
    proto.producer_name, proto.doc_string = "hipx export.py", f"preprocessing: see <name>{JSON_SUFFIX} beside it"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def session(model: bytes | str | os.PathLike, threads: int | None = None):
    """An onnxruntime session on the CPU; ``threads``: intra-op threads (None: onnxruntime's choice)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its notes on unused initialisers are not the user's business
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def check_graph(module: ExportedScore, onnx_bytes: bytes, layout: Sequence[Mapping]) -> float:
    """The largest difference between onnxruntime's and PyTorch's probability on random inputs (batch 3);
    ``RuntimeError`` beyond :data:`CHECK_TOLERANCE` (a fault of the exporter, not of the run)."""
    inputs = example_inputs(layout, batch=3, seed=1)
    with torch.no_grad():
        expected = module(*inputs)[0].numpy()
    got = session(onnx_bytes).run(None, {item["name"]: x.numpy() for item, x in zip(layout, inputs)})[0]
    diff = float(np.max(np.abs(got - expected)))
    if not diff <= CHECK_TOLERANCE:
        raise RuntimeError(f"the exported graph's probabilities differ from PyTorch's by {diff:.3g} on random "
                           f"inputs (more than {CHECK_TOLERANCE:g}); nothing was written")
    return diff


def export(run: str | os.PathLike, out: str | os.PathLike, tta: str = "auto", overwrite: bool = False,
           opset: int = OPSET, clinical_input: str | None = None) -> tuple[Path, Path]:
    """Write ``run``'s best checkpoint (a run folder or checkpoint file), or a cross-validation group's fold
    ensemble, as one ONNX graph at ``out`` and its preprocessing JSON beside it, both atomically.
    ``tta``: ``auto`` (each model as its run validated), ``none`` or ``flip``. Returns both paths."""
    import onnx

    if tta not in ("auto", "none", "flip"):
        raise ValueError(f"tta {tta!r}: choose auto, none or flip")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ExportError(f"--opset {opset}: choose {MIN_OPSET} to {newest} (onnx {onnx.__version__} writes up to "
                          f"{newest}; torch's exporter from {MIN_OPSET})")
    out, json_path = check_out(out, overwrite)
    with runfiles.hold_run(runfiles.writing_into(run, [out, json_path]), "export.py --out inside the run"):
        return _export(run, out, json_path, tta, opset, clinical_input)


def _export(run: str | os.PathLike, out: Path, json_path: Path, tta: str, opset: int,
            clinical_input: str | None) -> tuple[Path, Path]:
    """:func:`export` once its flags are checked (and the run's lock held where ``out`` lies inside it)."""
    members = load_members(run)
    raw = preprocessing.run_preprocessing(run)  # how a raw file is cut as the run's images were; None: no record
    module = build_module(members, tta, clinical_input)
    clinical_input = "raw" if any(m.raw for m in module.members) else "normalised"
    layout, outputs = input_layout(members, clinical_input), output_layout(module.spec, len(members))
    onnx_bytes = to_onnx(module, layout, outputs, opset)
    diff = check_graph(module, onnx_bytes, layout)
    spec = preprocessing_spec(members, tta, clinical_input, onnx_bytes, opset, out.name, raw)
    files.write_bytes(out, onnx_bytes)
    files.write_json(json_path, spec)  # last: its hash names the graph just written
    logger.info("exported %s (%s) to %s (%.1f MB) and %s; onnxruntime agrees with PyTorch within %.1g on random "
                "inputs", run, f"mean of {len(members)} fold models" if len(members) > 1 else
                f"epoch {members[0].epoch}", out, len(onnx_bytes) / 1e6, json_path.name, diff)
    return out, json_path


# ----------------------------------------------------------------------------- scoring an exported model

class OnnxModel:
    """An exported model (``model.onnx`` with ``model.preprocessing.json`` beside it) scored with
    onnxruntime on the CPU.

    :meth:`run` scores prepared inputs (numpy, the JSON's layout); :meth:`score` scores image files (or
    crops cut from raw files), building the inputs with the loader exactly as a run's test images (the
    JSON's size and statistics). ``threshold``, ``target`` (``targets.TargetSpec``), ``fusion``, ``tta``,
    ``image_size`` and ``raw_preprocessing`` come from the JSON.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.path = Path(path)
        json_path = preprocessing_path(self.path)
        if not self.path.is_file():
            raise ExportError(f"no exported model at {self.path}; write one with python export.py --run RUN "
                              f"--out {self.path}")
        if not json_path.is_file():
            raise ExportError(f"{self.path}: its preprocessing {json_path.name} is missing beside it; export the "
                              "run again (python export.py --run RUN --out ...)")
        spec = files.read_json(json_path)
        if spec.get("format") != FORMAT:
            raise ExportError(f"{json_path}: format {spec.get('format')!r}, expected {FORMAT!r}")
        data = self.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != spec.get("sha256"):
            raise ExportError(f"{json_path} describes another graph than {self.path} (its sha256 differs); the two "
                              "files must come from one export: export the run again")
        self.preprocessing = spec
        self.session = session(data, threads)
        self.inputs = {item["name"]: item for item in spec["inputs"]}
        self.output_names = [o["name"] for o in spec["outputs"]]

    @property
    def threshold(self) -> float:
        return float(self.preprocessing["threshold"])

    @property
    def target(self) -> targets.TargetSpec:
        return targets.TargetSpec.from_dict(self.preprocessing["target"])

    @property
    def fusion(self) -> str:
        return self.preprocessing["fusion"]

    @property
    def tta(self) -> str | list:
        return self.preprocessing["tta"]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.preprocessing["image"]["size"])

    @property
    def uses_clinical(self) -> bool:
        return bool(self.preprocessing["clinical"]["used"])

    @property
    def raw_preprocessing(self) -> preprocessing.Preprocessing | None:
        """How the run's images were cut from raw files (``preprocessing.Preprocessing``), None where the
        export records none (a run on the demo data, or an export made before the JSON held it)."""
        record = self.preprocessing.get("raw_preprocessing")
        return None if record is None else preprocessing.Preprocessing.from_dict(
            record, f"{preprocessing_path(self.path)} (raw_preprocessing)")

    def run(self, image: np.ndarray, clinical: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Outputs (``probability``, and ``predicted_value``/``predicted_class`` for a graded target) of
        prepared inputs: ``image`` (B, C, H, W) and, where the graph takes one, the clinical input (B, 3),
        as the JSON's ``inputs`` describe them."""
        feeds = {}
        for name, item in self.inputs.items():
            given = image if name == "image" else clinical
            if given is None:
                raise ValueError(f"{self.path}: the graph needs its {name} input, shape {item['shape']}")
            array = np.ascontiguousarray(given, dtype=np.dtype(item["dtype"]))
            if array.ndim != len(item["shape"]) or list(array.shape[1:]) != list(item["shape"][1:]):
                raise ValueError(f"{self.path}: {name} of shape {tuple(array.shape)}; the graph takes "
                                 f"({', '.join(str(s) for s in item['shape'])})")
            feeds[name] = array
        if clinical is not None and len(self.inputs) == 1:
            raise ValueError(f"{self.path}: this graph takes no clinical input ({self.preprocessing['fusion_text']}"
                             "; early fusion's values are planes of the image)")
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def dataset(self, paths: Sequence[str | os.PathLike], clinical: Sequence[Sequence[float]] | None = None,
                images: Sequence[np.ndarray | None] | None = None) -> loader.HipDataset:
        """The images as the graph reads them, built by the loader (8-bit as its cache, no augmentation)
        with the JSON's size, clinical statistics and fusion; ``clinical`` (n, 3) raw values when the
        file names do not carry them, and ``images`` the uint8 crops cut from raw files (None: read the
        file), as ``loader.HipDataset`` takes them."""
        prep = self.preprocessing
        raw = "clinical_raw" in self.inputs
        stats = loader.ClinicalStats([0.0] * 3, [1.0] * 3) if raw or not prep["clinical"].get("mean") else \
            loader.ClinicalStats(prep["clinical"]["mean"], prep["clinical"]["std"])
        planes = fusion.mode(prep["fusion"]).clinical_planes and not raw
        return loader.HipDataset(paths, stats, self.image_size, early_fuse=planes, clinical=clinical,
                                 desc="onnx", images=images)

    def score(self, paths: Sequence[str | os.PathLike], clinical: Sequence[Sequence[float]] | None = None,
              batch_size: int = 16, images: Sequence[np.ndarray | None] | None = None) -> dict[str, np.ndarray]:
        """Every output for image files, in their order: ``probability`` (n,) and for a graded target the
        predicted value or class. ``clinical``: (n, 3) raw sex, age, BMI (NaN unknown) where the file names
        do not carry them; ``images``: crops cut from raw files, as :meth:`dataset` takes them."""
        dataset = self.dataset(paths, clinical, images)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.output_names}
        for start in range(0, len(dataset), batch_size):
            index = range(start, min(start + batch_size, len(dataset)))
            image = np.stack([dataset[i]["image"].numpy() for i in index])
            if "clinical_raw" in self.inputs:
                vector = np.asarray([dataset.raw_clinical[i] for i in index], dtype=np.float64)
            elif "clinical" in self.inputs:
                vector = dataset.clinical[list(index)]
            else:
                vector = None
            for name, value in self.run(image, vector).items():
                parts[name].append(value)
        return {name: np.concatenate(v) if v else np.zeros(0) for name, v in parts.items()}
