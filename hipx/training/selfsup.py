"""Self-supervised pretraining of the image encoder: SimCLR on unlabelled hip radiographs.

    views = Views()                                   # two random views of one radiograph
    model = SimCLR.build(config)                      # encoder (a classifier's ``features``) + projector
    loss = nt_xent(model(view1), model(view2), 0.5)   # NT-Xent (Chen et al. 2020, SimCLR)

Method. SimCLR (Chen et al., ICML 2020) pulls the embeddings of two random views of the same
radiograph together and pushes those of the other images in the batch away (NT-Xent, a
cross-entropy over cosine similarities divided by a temperature). Chosen over BYOL / SimSiam / DINO
for a small CPU budget: one network and one forward pass per view (no momentum teacher, no
multi-crop); no collapse mode to watch (a collapsed encoder cannot find the other view among the
batch, so a falling loss is learning, and the share of positives found, ``pos_top1``, says how much);
and it is the method of the medical-image studies that beat ImageNet starts with in-domain
pretraining on X-rays (Azizi et al. 2021, ICCV). Its weakness, fewer negatives in a small batch,
costs less on a few thousand images than on ImageNet; the temperature 0.5 is the SimCLR paper's
setting for small data and batches (CIFAR-10, its appendix B.9).

Views. Radiograph-appropriate, reusing ``augment.py``'s transforms and the loader's enhancement:
a random resized crop (35-100 % of the area, aspect within 3/4-4/3 of the image's), left/right
mirror, a small rotation, an elastic warp, gamma, window/level, noise and CLAHE on the radiograph;
then the loader's enhanced channel (CLAHE + edges) is computed from the changed radiograph, so a
view has exactly the two channels a classifier reads. No colour jitter (grey images) and no blur
(it would wipe out the trabecular texture that carries the bone density).

Images. :func:`find_images` lists every image under some folders (PNG, JPEG, TIFF, BMP, DICOM,
``.npy``); :func:`decode` reads one with the decoders of ``imaging.py`` (``.npy`` with
``loader.py``'s) and, with ``roi="femur"``, cuts both hips' proximal femurs as ``--roi femur`` does
(``roi.py``); each image or crop is fitted to the size by padding (``imaging.fit_image``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from hipx.data import augment
from hipx.data import imaging
from hipx.data import loader
from hipx.core.choices import MIN_SIDE

ENCODER_PREFIXES = ("features.", "final_act.")  # what main.py --pretrained takes; the projector stays behind

# CLAHE on the radiograph itself as a view: clip limits drawn in 1-4 (2 is the loader's setting,
# Pizer et al. 1987), the spread of equalisation that hospital processing applies to films.
CLAHE_CLIPS = (1.0, 4.0)


# ----------------------------------------------------------------------------- images

find_images = imaging.find_images  # one listing of image folders for pretrain.py and predict.py


def decode(path: str | os.PathLike, size: tuple[int, int], roi: str | None = None) -> list[np.ndarray]:
    """The uint8 (H, W) images ``path`` gives at ``size``: the image itself, or with ``roi='femur'``
    both hips' proximal-femur crops. Raises ValueError naming the file when it cannot be used."""
    from hipx.data import roi as roi_finder

    path = Path(path)
    if path.suffix.lower() == ".npy":
        gray = np.round(imaging.read_scaled(path) * 255.0).astype(np.uint8)
    else:
        gray = imaging.read_image(path)
    if min(gray.shape) < MIN_SIDE:
        raise ValueError(f"{path}: image of {gray.shape[0]} x {gray.shape[1]} pixels is too small "
                         f"(at least {MIN_SIDE} on a side)")
    parts = [hip.image for hip in roi_finder.find_hips(gray, aspect=size[0] / size[1]).hips] if roi else [gray]
    return [imaging.fit_image(part, size, "pad") for part in parts]


# ----------------------------------------------------------------------------- views

def random_resized_crop(gray: np.ndarray, rng: np.random.Generator, scale: tuple[float, float],
                        ratio: tuple[float, float]) -> np.ndarray:
    """A window of ``scale`` of the area whose aspect is the image's times a log-uniform factor in
    ``ratio``, resized back to the image's size (SimCLR's crop, aspect relative to a portrait hip)."""
    h, w = gray.shape
    area = h * w * rng.uniform(*scale)
    r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    ch = min(h, max(1, round(math.sqrt(area * r * h / w))))
    cw = min(w, max(1, round(math.sqrt(area / (r * h / w)))))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    window = gray[y0:y0 + ch, x0:x0 + cw]
    return np.clip(cv2.resize(window, (w, h), interpolation=cv2.INTER_CUBIC), 0.0, 1.0).astype(np.float32)


def clahe(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The radiograph equalised by CLAHE on the loader's tiles with a clip limit in :data:`CLAHE_CLIPS`."""
    u8 = np.clip(gray * 255.0 + 0.5, 0, 255).astype(np.uint8)
    tool = cv2.createCLAHE(clipLimit=float(rng.uniform(*CLAHE_CLIPS)), tileGridSize=loader.CLAHE_TILES)
    return tool.apply(u8).astype(np.float32) / 255.0


@dataclass(frozen=True)
class Views:
    """One random view of a radiograph: ``Views()(gray, rng)`` -> float32 (2, H, W) in [0, 1], the
    radiograph and the loader's enhanced copy, as a classifier receives them. Probabilities per step."""

    crop_scale: tuple[float, float] = (0.35, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    p_flip: float = 0.5
    p_rotate: float = 0.3
    p_elastic: float = 0.3
    p_gamma: float = 0.8
    p_contrast: float = 0.8
    p_noise: float = 0.2
    p_clahe: float = 0.2

    def __call__(self, gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = random_resized_crop(gray, rng, self.crop_scale, self.crop_ratio)[None]
        # augment.py's transforms on the one radiograph channel (enhance=None: the change itself)
        for p, transform in ((self.p_flip, augment.flip), (self.p_rotate, augment.rotate),
                             (self.p_elastic, augment.cat_elastic), (self.p_gamma, augment.gamma),
                             (self.p_contrast, augment.contrast), (self.p_noise, augment.noise)):
            if rng.random() < p:
                x = transform(x, rng)
        radiograph = clahe(x[0], rng) if rng.random() < self.p_clahe else x[0]
        return np.stack([radiograph, loader.enhance(radiograph)])


class TwoViews(Dataset):
    """Two views of every image of ``images`` (uint8 (N, H, W)), drawn from generators seeded by
    (seed, epoch, index, view): the same whatever the workers, afresh every epoch (:meth:`set_epoch`,
    in shared memory so persistent workers see it). Items are uint8 like the loader's 8-bit handover."""

    def __init__(self, images: np.ndarray, views: Views, seed: int = 0) -> None:
        self.images, self.views, self.seed = images, views, seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.images)

    def view(self, index: int, which: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, int(self._epoch), index, which])
        image = self.views(self.images[index].astype(np.float32) / 255.0, rng)
        return torch.from_numpy(np.round(image * 255.0).astype(np.uint8))

    def __getitem__(self, index: int) -> dict:
        return {"view1": self.view(index, 1), "view2": self.view(index, 2), "index": index}


# ----------------------------------------------------------------------------- network and loss

class SimCLR(nn.Module):
    """A classifier's encoder (``features`` and ``final_act``, named as in :class:`models.Classifier`,
    so its weights load with ``--pretrained``), global average pooling, and SimCLR's projector: a
    two-layer MLP whose output the loss compares (the pooled features are what fine-tuning keeps)."""

    def __init__(self, features: nn.Module, final_act: nn.Module, num_features: int, hidden: int = 512,
                 out: int = 128) -> None:
        super().__init__()
        self.features, self.final_act = features, final_act
        self.projector = nn.Sequential(nn.Linear(num_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, out))

    @classmethod
    def build(cls, config: dict) -> "SimCLR":
        """From a pretraining configuration (pretrain.py's flags): the encoder of
        ``models.build_model`` with the loader's image channels."""
        from hipx.models import build_model

        net = build_model(config["model"], in_chans=loader.IMAGE_CHANNELS, late_fuse=False, depth=config["depth"],
                          growth_rate=config["growthRate"], norm=config["norm"], act=config["act"],
                          stem=config["stem"])
        return cls(net.features, net.final_act, net.num_features, config["proj_hidden"], config["proj_dim"])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(F.adaptive_avg_pool2d(self.final_act(self.features(image)), 1), 1)
        return self.projector(pooled)

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The tensors ``main.py --pretrained`` loads: ``features.*`` and ``final_act.*``."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items() if k.startswith(ENCODER_PREFIXES)}


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float,
            gathered: tuple[torch.Tensor, torch.Tensor, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's NT-Xent loss of the projections of two views ``z1``, ``z2`` (b, d) of b images, and
    the share of the 2b anchors whose most similar other embedding is their positive.

    Every anchor's positive is its image's other view; the 2B - 2 views of the other images are its
    negatives (B = b, or under torchrun the global batch: ``gathered`` = (all z1, all z2, offset of
    this rank's rows). A random encoder scores about log(2B - 1).
    """
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    all1, all2, offset = gathered if gathered is not None else (z1, z2, 0)
    all1, all2 = F.normalize(all1.float(), dim=1), F.normalize(all2.float(), dim=1)
    b, total = z1.shape[0], all1.shape[0]
    anchors = torch.cat([z1, z2])
    logits = anchors @ torch.cat([all1, all2]).T / temperature
    own = torch.arange(b, device=z1.device) + offset
    self_cols = torch.cat([own, own + total])
    positive = torch.cat([own + total, own])
    logits = logits.masked_fill(F.one_hot(self_cols, 2 * total).bool(), float("-inf"))
    loss = F.cross_entropy(logits, positive)
    found = (logits.argmax(dim=1) == positive).float().mean()
    return loss, found.detach()


def chance_loss(batch: int) -> float:
    """NT-Xent of embeddings that tell nothing apart: log(2B - 1)."""
    return math.log(2 * batch - 1)
