"""Training augmentation on the device: the geometric transforms of :mod:`augment` applied to a
whole batch of tensors with one sampling grid, so DataLoader workers only hand over decoded images.

The same generator as the CPU path, ``numpy.random.default_rng([seed, epoch, index])``, chooses each
sample's transform and draws its parameters with :mod:`augment`'s own functions
(:meth:`augment.Augmenter.choose`, :func:`augment.crop_window`, :func:`augment.rotation_matrix`,
:func:`augment.cut_box`, :func:`augment.random_displacement`): a sample gets exactly the transform it
would have got on the CPU. Only the resampling differs: ``torch.nn.functional.grid_sample`` with
bicubic interpolation (cubic convolution, a = -0.75, as OpenCV's ``INTER_CUBIC``) and reflection at
the border (with ``align_corners=True`` the mirror of ``BORDER_REFLECT_101``), where the CPU path
calls ``cv2.resize`` / ``warpAffine`` / ``remap``; ``tests/test_augment_device.py`` checks that the
sampling positions agree and that outputs agree within a few grey levels.

``elastic`` and the photometric transforms recompute the enhanced channel (CLAHE) from the changed
radiograph, which has no device version here: they stay on the CPU (:data:`DEVICE_AUGMENTATIONS`
lists what runs on the device).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hipx.data import augment
from hipx.core.choices import DEVICE_AUGMENTATIONS, without_device_version

_IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def supported(names: Sequence[str]) -> bool:
    """Whether every augmentation in ``names`` has a device version."""
    return not without_device_version(list(names))


@dataclass
class Plan:
    """One sample's draw: output pixel (x, y) samples the input at ``affine @ (x, y, 1)`` plus the
    elastic ``displacement`` (control grid, (dy, dx) planes as :func:`augment.warp_grid`); ``box``
    (y0, x0, h, w) is a cut-out filled with each channel's mean."""

    name: str | None
    affine: np.ndarray = field(default_factory=_IDENTITY.copy)
    displacement: np.ndarray | None = None
    box: tuple[int, int, int, int] | None = None

    @property
    def warps(self) -> bool:
        return self.name not in (None, "cut", "flip")


class DeviceAugmenter:
    """``augmenter(images, indices, epoch)``: augment a float batch (B, C, H, W) in [0, 1] on its
    device, sample ``indices[i]`` with the generator ``[seed, epoch, indices[i]]``; probability
    ``p`` and the choice of one of ``names`` per sample as :class:`augment.Augmenter`. Every
    channel moves alike (call it before clinical planes are appended; they would be unchanged)."""

    def __init__(self, names: Sequence[str] | str, p: float = 0.3, seed: int = 0) -> None:
        names = augment.parse_augment(names) if isinstance(names, str) else list(names)
        missing = without_device_version(names)
        if missing:
            raise ValueError(f"augmentation(s) {', '.join(missing)} have no device version (they recompute the "
                             f"enhanced channel); on the device: {', '.join(DEVICE_AUGMENTATIONS)}")
        self.chooser = augment.Augmenter(names, p)  # checks p; chooses as the CPU path does
        self.seed = int(seed)

    def __repr__(self) -> str:
        return f"DeviceAugmenter(names={self.chooser.names}, p={self.chooser.p})"

    def plan(self, shape: Sequence[int], index: int, epoch: int) -> Plan:
        """The draw of sample ``index`` in ``epoch`` for an image of ``(..., H, W)``."""
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        name = self.chooser.choose(rng)
        h, w = shape[-2:]
        if name == "flip":
            return Plan(name, np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0]]))
        if name == "crop":  # cv2.resize: output pixel X samples x0 + (X + 0.5) * cw / w - 0.5
            y0, x0, ch, cw = augment.crop_window(shape, rng)
            sx, sy = cw / w, ch / h
            return Plan(name, np.array([[sx, 0.0, x0 + 0.5 * sx - 0.5], [0.0, sy, y0 + 0.5 * sy - 0.5]]))
        if name == "rotate":  # warpAffine samples the input at the inverse of its matrix
            import cv2
            return Plan(name, cv2.invertAffineTransform(augment.rotation_matrix(shape, rng)))
        if name == "cat_elastic":
            return Plan(name, displacement=augment.random_displacement(shape, rng))
        if name == "cut":
            return Plan(name, box=augment.cut_box(shape, rng))
        return Plan(name)

    @staticmethod
    def source_positions(plans: Sequence[Plan], shape: Sequence[int], device: torch.device) -> torch.Tensor:
        """(n, H, W, 2) input pixel positions (x, y) every output pixel samples, one plan each."""
        h, w = shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                                torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
        affine = torch.as_tensor(np.stack([p.affine for p in plans]), dtype=torch.float32, device=device)
        a = affine[:, :, :, None, None]
        pos = a[:, :, 0] * xs + a[:, :, 1] * ys + a[:, :, 2]  # (n, 2: x, y, H, W)
        warped = [i for i, p in enumerate(plans) if p.displacement is not None]
        if warped:
            points = plans[warped[0]].displacement.shape[1:]
            wy = torch.tensor(augment.spline_weights(h, points[0]), dtype=torch.float32, device=device)
            wx = torch.tensor(augment.spline_weights(w, points[1]), dtype=torch.float32, device=device)
            d = torch.as_tensor(np.stack([plans[i].displacement for i in warped]), dtype=torch.float32, device=device)
            shift = torch.einsum("hp,nkpq,wq->nkhw", wy, d, wx)  # (n, 2: dy, dx, H, W)
            pos[warped] += shift.flip(1)
        return pos.permute(0, 2, 3, 1)

    def __call__(self, images: torch.Tensor, indices: Sequence[int] | torch.Tensor, epoch: int) -> torch.Tensor:
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"expected a float batch (B, C, H, W), got {tuple(images.shape)} {images.dtype}")
        indices = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
        plans = [self.plan(images.shape, i, epoch) for i in indices]
        out = images
        warp = [i for i, p in enumerate(plans) if p.warps]
        if warp:
            h, w = images.shape[-2:]
            pos = self.source_positions([plans[i] for i in warp], images.shape, images.device)
            scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], device=images.device)
            grid = pos * scale - 1.0  # align_corners=True: -1 and 1 are the centres of the edge pixels
            sampled = F.grid_sample(images[warp], grid, mode="bicubic", padding_mode="reflection",
                                    align_corners=True).clamp_(0.0, 1.0)  # cubic overshoot, as the CPU path clips
            out = images.clone()
            out[warp] = sampled
        for i, p in enumerate(plans):
            if p.name in ("flip", "cut") and out is images:
                out = images.clone()
            if p.name == "flip":  # exact, as the CPU path's mirror
                out[i] = images[i].flip(-1)
            elif p.box is not None:
                y0, x0, ph, pw = p.box
                out[i, :, y0:y0 + ph, x0:x0 + pw] = images[i].mean(dim=(1, 2), keepdim=True)
        return out
