"""Hip radiographs -> network-ready samples.

A sample is a dict ``image``, ``clinical``, ``label``, ``path``:

* ``image`` - float32 (C, H, W). Channel 0 is the radiograph scaled to [0, 1]; channel 1 its
  contrast-enhanced copy (CLAHE plus an edge map: the original work's "concatenated image").
  For early fusion three more constant channels hold the normalised sex, age and BMI.
* ``clinical`` - float32 (3,): sex, age, BMI normalised with statistics of the training split
  only; a missing value is imputed with the training mean (0 after normalisation).
* ``label`` - float32 scalar, 1 = osteoporosis (-1: no binary label, an unscored image).
* ``measure`` - float32 scalar, the T-score/grade behind the label (NaN unknown; graded targets).
* ``index`` - position in the split (seeds per-sample augmentation draws, also on the device).

Decoding, resizing and enhancement happen once per image (kept in memory as uint8 when it fits
in ``cache_gb``); augmentation runs on the fly, for training samples only.

With ``handover="uint8"`` (what ``main.py`` uses) a sample's ``image`` is the two image channels as
uint8 -- a quarter of the bytes to cross from the workers and to the device -- and
:func:`network_image`, on the device, turns a batch of them into the float input above. The float
handover builds its samples with the same function, so both give the network the same numbers
(augmented training images excepted, which the 8-bit handover rounds to 8 bits once more).
"""
from __future__ import annotations

import copy
import logging
import math
import multiprocessing
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from hipx.data import filenames
from hipx.core import fusion
from hipx.data import imaging
from hipx.core.choices import HANDOVERS, MIN_SIDE
from hipx.core.runtime import progress
from hipx.data.splits import IMAGE_SIZE, SPLITS  # noqa: F401 - SPLITS: callers iterate loader.SPLITS

if TYPE_CHECKING:
    from hipx.core.runconfig import RunConfig

logger = logging.getLogger(__name__)

CLINICAL_NAMES = ("sex", "age", "bmi")
IMAGE_CHANNELS = 2  # original + enhanced

# CLAHE on 8x8 tiles with clip limit 2 is the common radiograph setting (Pizer et al. 1987);
# the edge map (Sobel magnitude) makes the cortical rims stand out. Weights: mostly CLAHE.
CLAHE_CLIP, CLAHE_TILES, EDGE_WEIGHT = 2.0, (8, 8), 0.3
MAX_STRETCH = 1.5  # aspect ratio against the network's input beyond which an image is badly distorted


def check_shape(path: str | os.PathLike, shape: tuple[int, ...], size: tuple[int, int]) -> str | None:
    """Refuse an image the network cannot use, naming the file; return a warning (or None) when its
    aspect ratio is far from ``size`` = (H, W), which stretches it. ``predict.py`` applies the same rule."""
    if min(shape[:2]) < MIN_SIDE:
        raise ValueError(f"{path}: image of {shape[0]} x {shape[1]} pixels is too small (at least {MIN_SIDE} on a "
                         f"side; the data set's images are resized to {size[0]} x {size[1]})")
    ratio = (shape[0] / shape[1]) / (size[0] / size[1])
    if not 1 / MAX_STRETCH <= ratio <= MAX_STRETCH:
        return (f"{path}: {shape[0]} x {shape[1]} pixels is far from the aspect of {size[0]} x {size[1]}; "
                "it is stretched (preprocess_filenames.py pads images to one size instead)")
    return None


def enhance(gray: np.ndarray) -> np.ndarray:
    """Contrast-enhanced copy of a [0, 1] radiograph: CLAHE blended with a Sobel edge map."""
    u8 = np.clip(gray * 255.0 + 0.5, 0, 255).astype(np.uint8)
    clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP, tileGridSize=CLAHE_TILES).apply(u8).astype(np.float32) / 255.0
    smooth = cv2.GaussianBlur(clahe, (3, 3), 0)
    sx, sy = cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1)
    # not cv2.magnitude: its SIMD square root rounds differently with the arrays' memory alignment, so the
    # same image could give two enhanced copies within one process (one grey level apart)
    edges = np.sqrt(sx * sx + sy * sy)
    edges /= max(float(np.percentile(edges, 99)), 1e-6)
    return np.clip((1 - EDGE_WEIGHT) * clahe + EDGE_WEIGHT * np.minimum(edges, 1.0), 0.0, 1.0)


def prepare(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (H, W) and stack original + enhanced: float32 (2, H, W) in [0, 1]."""
    h, w = size
    if gray.shape != (h, w):
        interp = cv2.INTER_AREA if gray.shape[0] > h else cv2.INTER_LINEAR
        gray = cv2.resize(gray, (w, h), interpolation=interp)
    gray = np.clip(gray, 0.0, 1.0).astype(np.float32)
    return np.stack([gray, enhance(gray)])


# uint8 -> float32 [0, 1] as a table: indexing gives the same numbers on every device (a CUDA
# division by a scalar multiplies by its reciprocal, which can differ from numpy in the last bit)
_TO_UNIT = torch.arange(256, dtype=torch.float32) / 255.0


def network_image(image: torch.Tensor, clinical: torch.Tensor, early_fuse: bool) -> torch.Tensor:
    """What the network receives, from a batch of image channels: uint8 (B, 2, H, W) from the 8-bit
    handover (scaled to [0, 1] here, on the batch's device) or float (B, 2, H, W) in [0, 1];
    with ``early_fuse`` the normalised clinical values (B, 3) follow as constant planes.
    Returns float32 (B, C, H, W) on the image's device."""
    if image.dtype == torch.uint8:
        image = _TO_UNIT.to(image.device)[image.int()]
    if not early_fuse:
        return image
    planes = clinical.to(image.dtype)[:, :, None, None].expand(-1, -1, *image.shape[2:])
    return torch.cat([image, planes], dim=1)


list_split = filenames.list_split  # a split folder's files named in the format (filenames owns it)


_WARNED_MISSING: set[str] = set()


@dataclass
class ClinicalStats:
    """Mean and standard deviation of (sex, age, bmi) on the training split."""

    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, infos: Sequence[filenames.SampleInfo], warn: bool = True) -> "ClinicalStats":
        """``warn``: say (once per process and value) when a value is missing for every image; an
        image-only run passes False, it does not use them."""
        values = np.array([i.clinical for i in infos], dtype=np.float64).reshape(-1, len(CLINICAL_NAMES))
        mean, std = [], []
        for j, name in enumerate(CLINICAL_NAMES):
            col = values[:, j][np.isfinite(values[:, j])]
            if col.size == 0:
                if warn and name not in _WARNED_MISSING:
                    _WARNED_MISSING.add(name)
                    logger.warning("clinical value %r is missing for every training image; it will be constant",
                                   name)
                mean.append(0.0), std.append(1.0)
                continue
            mean.append(float(col.mean()))
            sd = float(col.std())
            std.append(sd if sd > 1e-8 else 1.0)
        return cls(mean, std)

    def normalise(self, clinical: Sequence[float]) -> np.ndarray:
        """(value - train mean) / train std; missing (NaN) -> 0, i.e. imputed with the train mean."""
        z = (np.asarray(clinical, dtype=np.float64) - self.mean) / self.std
        return np.nan_to_num(z, nan=0.0).astype(np.float32)

    def to_dict(self) -> dict:
        return {"names": list(CLINICAL_NAMES), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "ClinicalStats":
        return cls([float(v) for v in d["mean"]], [float(v) for v in d["std"]])


def clinical_states(table: pd.DataFrame) -> dict[str, str]:
    """Each clinical value of a :func:`clinical_table`: ``missing``, ``constant`` or ``varies``."""
    states = {}
    for name in CLINICAL_NAMES:
        known = table[name].dropna()
        states[name] = "missing" if known.empty else "constant" if known.nunique() < 2 else "varies"
    return states


def clinical_table(files: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per image: file (name), patient, label, sex, age, bmi (NaN when missing)."""
    rows = []
    for f in files:
        info = filenames.decode(f)
        rows.append({"file": Path(f).name, "patient": info.patient, "label": info.label,
                     "sex": info.sex, "age": info.age, "bmi": info.bmi})
    return pd.DataFrame(rows, columns=["file", "patient", "label", *CLINICAL_NAMES])


def quiet_worker(worker_id: int) -> None:
    """``worker_init_fn`` of the DataLoaders. A worker hands each batch's shared memory to the main
    process through a thread of ``multiprocessing.resource_sharer``; Ctrl-C in the main process
    during that handshake breaks the connection, and the thread reported it with ``sys.excepthook``:
    a traceback under the one-line interrupt message. Connection errors raised in that module are
    dropped; every other error is reported as before."""
    previous = sys.excepthook

    def hook(kind, value, tb) -> None:
        frames, step = [], tb
        while step is not None:
            frames.append(step.tb_frame.f_code.co_filename)
            step = step.tb_next
        broken = isinstance(value, (EOFError, OSError, multiprocessing.AuthenticationError))
        if broken and any(Path(f).name == "resource_sharer.py" for f in frames):
            return
        previous(kind, value, tb)

    sys.excepthook = hook


class HipDataset(Dataset):
    """Images of one split. ``augment`` (train only) is called as ``augment(image, rng)`` with a
    generator seeded from (seed, epoch, index), so a run is reproducible whatever the number of
    workers and each epoch draws afresh (call :meth:`set_epoch`). The epoch lives in shared memory,
    so persistent DataLoader workers see it change. ``clinical`` ((n, 3) raw sex, age, BMI, NaN where
    missing) is for images whose names do not carry them; their labels are then unknown (-1).

    ``handover`` is what a sample's ``image`` is: ``"float"`` the network's input (float32, with
    the clinical planes for early fusion), ``"uint8"`` only the two image channels as uint8, to be
    finished on the device by :func:`network_image`. ``images``: per file, a uint8 grey crop to use
    instead of reading the file (None: read it), as ``predict.py`` gives the crops it cut from raw files."""

    def __init__(self, files: Sequence[str | os.PathLike], stats: ClinicalStats,
                 image_size: tuple[int, int] = IMAGE_SIZE, early_fuse: bool = False,
                 augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
                 seed: int = 0, cache_gb: float = 4.0, desc: str = "",
                 clinical: Sequence[Sequence[float]] | None = None, handover: str = "float",
                 measure: Sequence[float] | None = None,
                 images: Sequence[np.ndarray | None] | None = None) -> None:
        if handover not in HANDOVERS:
            raise ValueError(f"handover {handover!r}: choose one of {', '.join(HANDOVERS)}")
        self.handover = handover
        self.files = [str(f) for f in files]
        if images is not None and len(images) != len(self.files):
            raise ValueError(f"{len(images)} images for {len(self.files)} files")
        self.images = None if images is None else list(images)
        if clinical is None:  # label and clinical values from the file names
            self.infos: list[filenames.SampleInfo] | None = [filenames.decode(f) for f in self.files]
            labels = [-1 if i.label is None else i.label for i in self.infos]  # None: unscored (measures.py)
            clinical = [i.clinical for i in self.infos]
        else:  # images to score whose names need not carry them: the label is unknown (-1)
            self.infos, labels = None, [-1] * len(self.files)
        self.labels = np.array(labels, dtype=np.int64)
        # the measurement behind the label (T-score, grade; NaN unknown) for graded targets (targets.py)
        self.measure = np.full(len(self.files), np.nan, np.float32) if measure is None else \
            np.asarray(measure, dtype=np.float32)
        self.raw_clinical = [tuple(c) for c in clinical]
        self.clinical = self._normalised(stats)
        self.image_size = tuple(image_size)
        self.early_fuse = early_fuse
        self.augment = augment
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.cache: np.ndarray | None = None
        need_gb = len(self.files) * IMAGE_CHANNELS * math.prod(self.image_size) / 1e9
        if need_gb <= cache_gb:
            self._fill_cache(desc)
        else:
            logger.info("%s: %.1f GB needed to cache decoded images > --cache_gb %.1f; decoding on every read",
                        desc or "dataset", need_gb, cache_gb)

    @property
    def channels(self) -> int:
        return IMAGE_CHANNELS + (len(CLINICAL_NAMES) if self.early_fuse else 0)

    def _normalised(self, stats: ClinicalStats) -> np.ndarray:
        return np.stack([stats.normalise(c) for c in self.raw_clinical]) if self.raw_clinical \
            else np.zeros((0, len(CLINICAL_NAMES)), np.float32)

    def with_clinical_stats(self, stats: ClinicalStats) -> "HipDataset":
        """The same images (and decoded cache, shared) with the clinical values normalised by another
        model's training statistics: a fold ensemble decodes each image once."""
        other = copy.copy(self)
        other.clinical = self._normalised(stats)
        return other

    def _fill_cache(self, desc: str) -> None:
        # one contiguous uint8 block: forked DataLoader workers share it without copying
        cache = np.empty((len(self.files), IMAGE_CHANNELS, *self.image_size), dtype=np.uint8)
        stretched = []
        for i, path in enumerate(progress(self.files, enabled=len(self.files) >= 50, leave=False,
                                          desc=f"decode {desc}".strip())):
            gray = self._gray(i)
            stretched.append(check_shape(path, gray.shape, self.image_size))
            cache[i] = np.round(prepare(gray, self.image_size) * 255.0)
        stretched = [s for s in stretched if s]
        if stretched:
            logger.warning("%s%s", stretched[0], f" (and {len(stretched) - 1} more {desc} images)"
                           if len(stretched) > 1 else "")
        self.cache = cache

    def _gray(self, index: int) -> np.ndarray:
        """Image ``index`` as float32 [0, 1]: its file, or the uint8 crop given for it (``images``), read
        as its written PNG would be."""
        given = self.images[index] if self.images is not None else None
        return imaging.read_scaled(self.files[index]) if given is None else imaging.unit_scale(given)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def load_uint8(self, index: int) -> np.ndarray:
        """Image channels (2, H, W) uint8, before augmentation."""
        if self.cache is not None:
            return self.cache[index]
        # the same 8-bit rounding as the cache, so results never depend on --cache_gb
        gray = self._gray(index)
        check_shape(self.files[index], gray.shape, self.image_size)
        return np.round(prepare(gray, self.image_size) * 255.0).astype(np.uint8)

    def load(self, index: int) -> np.ndarray:
        """Image channels (2, H, W) float32 in [0, 1], before augmentation."""
        return _TO_UNIT.numpy()[self.load_uint8(index)]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        clinical = torch.from_numpy(self.clinical[index].copy())
        if self.augment is None:
            image = torch.from_numpy(np.ascontiguousarray(self.load_uint8(index)))
        else:
            image = self.augment(self.load(index), np.random.default_rng([self.seed, self.epoch, index]))
            image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
            if self.handover == "uint8":  # the augmented image rounded to 8 bits again
                image = torch.round(image.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
        if self.handover == "float":
            image = network_image(image[None], clinical[None], self.early_fuse)[0]
        return {"image": image, "clinical": clinical, "label": torch.tensor(float(self.labels[index])),
                "measure": torch.tensor(self.measure[index]), "path": self.files[index], "index": index}


def run_dataset(files: Sequence[str | os.PathLike], config: RunConfig, clinical_stats: dict,
                clinical: Sequence[Sequence[float]] | None = None, desc: str = "",
                images: Sequence[np.ndarray | None] | None = None) -> HipDataset:
    """What a trained run's network reads for ``files``, exactly as its validation and test images:
    the run's image size, clinical normalisation and fusion mode (its ``config``, as ``runfiles.load_run``
    gives it), 8-bit rounding as the cache, no augmentation. ``images``: for a file cut from a raw image
    (``predict.py``), its uint8 crop as the data folder would hold it (None: read the file). The one input
    builder of ``predict.py`` and ``visualize_gradcam.py``."""
    return HipDataset(files, ClinicalStats.from_dict(clinical_stats), tuple(int(v) for v in config.image_size),
                      early_fuse=fusion.mode(config.fusion).clinical_planes, cache_gb=float(config.cache_gb),
                      desc=desc, clinical=clinical, images=images)


class EpochSampler(torch.utils.data.Sampler):
    """Training order for one epoch, the same in one process and under torchrun.

    Every rank draws the same global order from a generator seeded by (seed, epoch) -- a
    permutation, or with ``weighted`` a class-balanced draw with replacement -- and takes every
    ``world``-th index from ``rank`` on. The order depends only on (seed, epoch), so a resumed run
    sees exactly the epochs an uninterrupted one would.
    """

    def __init__(self, labels: Sequence[int], seed: int = 0, weighted: bool = False,
                 rank: int = 0, world: int = 1) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.seed, self.weighted, self.rank, self.world = seed, weighted, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels) // self.world  # equal share per rank (DDP needs equal step counts)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch, 7919])
        n = len(self.labels)
        if self.weighted:  # unscored images (label -1) are a group of their own
            counts = np.bincount(self.labels + 1, minlength=3).astype(np.float64)
            weights = 1.0 / np.maximum(counts, 1)[self.labels + 1]
            order = rng.choice(n, size=n, replace=True, p=weights / weights.sum())
        else:
            order = rng.permutation(n)
        return iter(order[self.rank: len(self) * self.world: self.world].tolist())


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation: rank r sees indices r, r + world, ...; together the ranks see every image once."""

    def __init__(self, n: int, rank: int = 0, world: int = 1) -> None:
        self.indices = list(range(rank, n, world))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)
