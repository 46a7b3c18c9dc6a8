"""Training-time augmentations of the two-channel hip radiograph (``augment.py --preview`` draws a grid).

Every augmentation is a pure function ``f(image, rng) -> image`` of a float32 ``(C, H, W)`` array in
[0, 1] (channel 0 the radiograph, channel 1 its enhanced copy) and a ``numpy.random.Generator``:
no global random state, the input is never modified, the output has the same shape, dtype float32
and range [0, 1]. The loader calls an :class:`Augmenter` on training samples only, with a generator
seeded from ``[seed, epoch, index]``, before it appends any clinical channels.

* Geometric transforms (``crop``, ``flip``, ``rotate``, ``cut``, ``cat_elastic``) apply the same
  parameters to every channel, so a feature moves the same way in all of them.
* ``elastic`` warps only the radiograph and recomputes channel 1 with ``enhance`` from the warped
  radiograph, as the loader would have computed it from such a film.
* Photometric transforms (``gamma``, ``contrast``, ``noise``) follow the same rule: they change
  channel 0 and recompute channel 1 with ``enhance``. Called without ``enhance`` (standalone use,
  one-channel images) they apply the same change to every channel. :class:`Augmenter` insists on
  ``enhance`` for them, because a gamma curve on a CLAHE output is not an image the loader ever
  produces at test time.

Elastic warps follow elasticdeform's model (Ronneberger et al. 2015, U-Net; elasticdeform 0.5):
a random displacement on a coarse ``points x points`` grid whose corner points sit on the image
corners, interpolated to every pixel by cubic B-splines, output(x) = input(x + d(x)), mirrored at
the border. :func:`warp_grid` computes exactly elasticdeform's displacement field (the spline
interpolation is linear in the grid values, so it is two small matrix products) and resamples with
``cv2.remap`` (cubic convolution where ``elasticdeform.deform_grid(..., order=3, mode='mirror')``
uses a cubic B-spline): sampling positions agree within 0.1 px and smooth images within about one
grey level (tests/test_augment.py checks both), 7-15x faster (a full-size two-channel image on the
2-core dev box: 8-15 ms against 100-175 ms for elasticdeform's order 3, 65-130 ms for its order 1).
The displacement is drawn from the caller's ``rng``, not by ``elasticdeform.deform_random_grid``,
which uses NumPy's global state.
"""
from __future__ import annotations

import functools
import io
import logging
import math
import os
from typing import Callable, Sequence

import cv2
import numpy as np
from scipy import ndimage

from hipx.core.choices import AUGMENT_NAMES, parse_augment, unknown_augmentation  # noqa: F401 (parse_augment: augment's API)
from hipx.core import files as fileio
from hipx.data.splits import IMAGE_SIZE

logger = logging.getLogger(__name__)

Enhance = Callable[[np.ndarray], np.ndarray]

# --- Parameters for hip radiographs (full size, proximal femur, portrait) -----------------------------
# Zoom-crop 1.0-1.3x with the same scale on both axes (bone proportions are the diagnostic shape):
# at 1.3x the crop still holds ~77% of each side, so head, neck and trochanters stay in view while
# the bone shifts by up to ~12% of the frame, about the spread of patient positioning between films.
CROP_SCALE = (1.0, 1.3)
# Patients lie on the table within roughly +/-15 degrees of the standard AP hip position; larger
# angles turn the femoral shaft implausibly far from vertical.
ROTATE_DEGREES = 15.0
# Cut-out (DeVries & Taylor 2017) of one patch 5-15% of each side: about the size of the femoral
# head at most, so it hides part of the evidence without blanking the whole neck.
CUT_SIDE = (0.05, 0.15)
# Elastic displacement std as a fraction of the shorter side (0.02 -> ~8 px at full size, ~0.7 px at
# 64 x 37) on a 4 x 4 control grid (control spacing ~135 x 235 px at full size). Neighbouring
# control points then differ by far less than their spacing, so the warp bends the shaft and neck
# visibly but smoothly and never folds. Measured over 300 draws at full size: mean displacement
# 8 px, local stretch/compression 6% on average and 22% at the worst place of a median draw
# (0.03 gave 34%, too much: cortical thickness is itself a sign of osteoporosis).
ELASTIC_SIGMA = 0.02
ELASTIC_POINTS = 4
# Exposure/processing differences between X-ray units: gamma 0.7-1.4, drawn log-uniformly so that
# brightening and darkening are equally likely (log 0.7 ~ -log 1.4).
GAMMA_RANGE = (0.7, 1.4)
# Window/level differences: contrast stretch about the image mean and brightness offset, both small
# so that bone density (the label) is not faked by a brighter image.
CONTRAST_RANGE = (0.9, 1.1)
BRIGHTNESS_RANGE = (-0.05, 0.05)
# Quantum noise std, in [0, 1] units: 1 to 5 grey levels of an 8-bit film. The films are
# log-transformed and post-processed, so the signal dependence of the original photon noise is
# unknown; additive Gaussian noise of a random level stands in for it.
NOISE_SIGMA = (0.004, 0.02)


def _as_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"expected an image of shape (C, H, W), got shape {image.shape}")
    return image.astype(np.float32, copy=False)


def _finish(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)


def _per_channel(image: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The same 2-D operation on every channel (OpenCV handles at most 4 channels at once)."""
    return _finish(np.stack([fn(np.ascontiguousarray(channel)) for channel in image]))


def _enhanced(gray: np.ndarray, enhance: Enhance) -> np.ndarray:
    out = np.asarray(enhance(gray), dtype=np.float32)
    if out.shape != gray.shape:
        raise ValueError(f"enhance returned shape {out.shape} for an image of shape {gray.shape}")
    return _finish(out)


def _radiograph_then_enhance(image: np.ndarray, change: Callable[[np.ndarray], np.ndarray],
                             enhance: Enhance | None) -> np.ndarray:
    """Apply ``change`` to channel 0 and recompute channel 1 with ``enhance``; without ``enhance``,
    apply the same ``change`` to every channel."""
    if enhance is None:
        return _finish(change(image))
    if image.shape[0] > 2:
        raise ValueError(f"with enhance, expected channels (original, enhanced), got {image.shape[0]} channels; "
                         "augment before appending clinical channels")
    out = np.empty_like(image)
    out[0] = _finish(change(image[0]))
    if image.shape[0] == 2:
        out[1] = _enhanced(out[0], enhance)
    return out


# --- Geometric -----------------------------------------------------------------------------------

# The random parameters of each transform are drawn by one function each, shared with the
# device-side versions (augment_device.py), so both paths draw the same from the same generator.

def crop_window(shape: Sequence[int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(y0, x0, height, width) of a zoom-crop window for an image of ``(..., H, W)``."""
    h, w = shape[-2:]
    scale = rng.uniform(*CROP_SCALE)
    ch, cw = max(1, round(h / scale)), max(1, round(w / scale))
    y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return int(y0), int(x0), ch, cw


def rotation_matrix(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """2 x 3 affine matrix (cv2.warpAffine's, input to output pixels) of a rotation about the centre
    by an angle uniform in +/- :data:`ROTATE_DEGREES`."""
    h, w = shape[-2:]
    angle = rng.uniform(-ROTATE_DEGREES, ROTATE_DEGREES)
    return cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)


def cut_box(shape: Sequence[int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(y0, x0, height, width) of a cut-out patch for an image of ``(..., H, W)``."""
    h, w = shape[-2:]
    ph = max(1, round(h * rng.uniform(*CUT_SIDE)))
    pw = max(1, round(w * rng.uniform(*CUT_SIDE)))
    y0, x0 = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    return int(y0), int(x0), ph, pw


def crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Zoom-crop: a window 1/scale of each side (scale in :data:`CROP_SCALE`) at a random position,
    resized back to (H, W) with cubic interpolation (keeps trabecular texture sharper than linear)."""
    image = _as_image(image)
    h, w = image.shape[1:]
    y0, x0, ch, cw = crop_window(image.shape, rng)
    window = image[:, y0:y0 + ch, x0:x0 + cw]
    return _per_channel(window, lambda c: cv2.resize(c, (w, h), interpolation=cv2.INTER_CUBIC))


def flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Left/right mirror (a left hip becomes a right hip). Never up/down: an upside-down hip is not a
    hip. It has no random parameter; ``rng`` is accepted for the common signature."""
    return np.ascontiguousarray(_as_image(image)[..., ::-1])


def rotate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotation about the centre by an angle uniform in +/- :data:`ROTATE_DEGREES`. The corners are
    filled by reflection (``BORDER_REFLECT_101``, as elastic's 'mirror') so that no black wedges
    tell the network which images were augmented; at <= 15 degrees they are small corner triangles."""
    image = _as_image(image)
    h, w = image.shape[1:]
    matrix = rotation_matrix(image.shape, rng)
    return _per_channel(image, lambda c: cv2.warpAffine(c, matrix, (w, h), flags=cv2.INTER_CUBIC,
                                                        borderMode=cv2.BORDER_REFLECT_101))


def cut(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cut-out of one rectangle, each side a fraction in :data:`CUT_SIDE` of the image side, placed
    wholly inside the image and filled with each channel's mean: a black patch would be darker than
    anything in a radiograph and the strongest edge in the enhanced channel."""
    image = _as_image(image)
    y0, x0, ph, pw = cut_box(image.shape, rng)
    out = image.copy()
    out[:, y0:y0 + ph, x0:x0 + pw] = image.mean(axis=(1, 2), keepdims=True)
    return out


@functools.lru_cache(maxsize=16)
def spline_weights(n: int, points: int) -> np.ndarray:
    """(n, points) matrix taking control values at ``linspace(0, n - 1, points)`` to all ``n``
    pixels by cubic B-spline interpolation with mirror boundary, as elasticdeform interpolates its
    displacement grid (the interpolation is linear in the control values)."""
    where = np.linspace(0.0, points - 1.0, n)
    basis = np.eye(points)
    weights = np.stack([ndimage.map_coordinates(basis[k], [where], order=3, mode="mirror")
                        for k in range(points)], axis=1)
    weights.flags.writeable = False
    return weights


def random_displacement(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Control-grid displacement (2, points, points) in pixels for an image of ``(..., H, W)``:
    normal with std :data:`ELASTIC_SIGMA` times the shorter side (elasticdeform's random grid,
    drawn from ``rng``)."""
    h, w = shape[-2:]
    return rng.normal(0.0, ELASTIC_SIGMA * min(h, w), size=(2, ELASTIC_POINTS, ELASTIC_POINTS))


def warp_grid(image: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """Warp every channel of ``image`` (C, H, W) with one control-grid ``displacement`` (2, P, Q):
    elasticdeform's displacement field exactly, resampled by cubic convolution instead of
    ``elasticdeform.deform_grid(list(image), displacement, order=3, mode='mirror')``'s cubic B-spline
    (positions within 0.1 px, smooth content within ~1 grey level), 7-15x faster."""
    image = _as_image(image)
    h, w = image.shape[1:]
    wy = spline_weights(h, displacement.shape[1])
    wx = spline_weights(w, displacement.shape[2])
    ys, xs = np.indices((h, w), dtype=np.float32)
    map_y = ys + (wy @ displacement[0] @ wx.T).astype(np.float32)
    map_x = xs + (wy @ displacement[1] @ wx.T).astype(np.float32)
    return _per_channel(image, lambda c: cv2.remap(c, map_x, map_y, cv2.INTER_CUBIC,
                                                   borderMode=cv2.BORDER_REFLECT_101))


def cat_elastic(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Elastic warp of the concatenated image: ONE random displacement field applied to every
    channel alike (the original work warped only one of the two channels, misaligning them)."""
    image = _as_image(image)
    return warp_grid(image, random_displacement(image.shape, rng))


def elastic(image: np.ndarray, rng: np.random.Generator, enhance: Enhance) -> np.ndarray:
    """Elastic warp of the radiograph (channel 0); channel 1 is recomputed as
    ``enhance(warped channel 0)``, so the enhanced channel is exactly what the loader would compute
    from the warped film. Further channels are refused (augment before appending clinical ones)."""
    if enhance is None:
        raise ValueError("elastic recomputes the enhanced channel: pass enhance (e.g. loader.enhance)")
    image = _as_image(image)
    displacement = random_displacement(image.shape, rng)
    return _radiograph_then_enhance(image, lambda x: warp_grid(x[None], displacement)[0], enhance)


# --- Photometric ---------------------------------------------------------------------------------

def gamma(image: np.ndarray, rng: np.random.Generator, enhance: Enhance | None = None) -> np.ndarray:
    """Exposure change ``x ** g``, g log-uniform in :data:`GAMMA_RANGE`, on the radiograph with
    channel 1 recomputed by ``enhance``; without ``enhance`` on every channel alike."""
    g = math.exp(rng.uniform(math.log(GAMMA_RANGE[0]), math.log(GAMMA_RANGE[1])))
    return _radiograph_then_enhance(_as_image(image), lambda x: np.power(np.clip(x, 0.0, 1.0), g), enhance)


def contrast(image: np.ndarray, rng: np.random.Generator, enhance: Enhance | None = None) -> np.ndarray:
    """Small window/level jitter: ``(x - mean) * c + mean + b`` with c in :data:`CONTRAST_RANGE` and b
    in :data:`BRIGHTNESS_RANGE`; channel 1 recomputed by ``enhance`` (without it: every channel
    alike, each about its own mean)."""
    c, b = rng.uniform(*CONTRAST_RANGE), rng.uniform(*BRIGHTNESS_RANGE)

    def change(x: np.ndarray) -> np.ndarray:
        mean = x.mean(axis=(-2, -1), keepdims=True)
        return (x - mean) * c + mean + b
    return _radiograph_then_enhance(_as_image(image), change, enhance)


def noise(image: np.ndarray, rng: np.random.Generator, enhance: Enhance | None = None) -> np.ndarray:
    """Additive Gaussian quantum-like noise, std uniform in :data:`NOISE_SIGMA`, on the radiograph
    with channel 1 recomputed by ``enhance`` (whose edge map then sees the noise, as it would on a
    noisier film); without ``enhance`` the same noise field is added to every channel."""
    image = _as_image(image)
    sigma = rng.uniform(*NOISE_SIGMA)
    field = rng.standard_normal(image.shape[1:], dtype=np.float32) * np.float32(sigma)
    return _radiograph_then_enhance(image, lambda x: x + field, enhance)


AUGMENTATIONS: dict[str, Callable[..., np.ndarray]] = {
    "crop": crop, "flip": flip, "rotate": rotate, "cut": cut, "elastic": elastic,
    "cat_elastic": cat_elastic, "gamma": gamma, "contrast": contrast, "noise": noise,
}
# These take ``enhance=`` and recompute channel 1 with it; Augmenter requires it for them.
USES_ENHANCE = frozenset({"elastic", "gamma", "contrast", "noise"})


assert tuple(AUGMENTATIONS) == AUGMENT_NAMES, "choices.AUGMENT_NAMES lists the augmentations users may name"


class Augmenter:
    """Augment a sample with probability ``p``; an augmented sample gets ONE of ``names``, chosen
    uniformly (as in the original work, one transform per sample), so the share of augmented
    samples is ``p`` whatever the number of names. With no names every sample passes unchanged.

    ``enhance`` (the loader's CLAHE + edge function) is required by ``elastic``, ``gamma``,
    ``contrast`` and ``noise``, which recompute the enhanced channel from the changed radiograph.
    Picklable for DataLoader workers when ``enhance`` is a module-level function.
    """

    def __init__(self, names: Sequence[str] | str, p: float = 0.3, enhance: Enhance | None = None) -> None:
        if isinstance(names, str):
            names = parse_augment(names)
        for name in names:
            if name not in AUGMENTATIONS:
                raise unknown_augmentation(name)
        if not 0.0 <= float(p) <= 1.0:  # NaN fails too
            raise ValueError(f"augmentation probability p={p} must be within [0, 1]")
        needing = [n for n in names if n in USES_ENHANCE]
        if needing and enhance is None:
            raise ValueError(f"augmentation(s) {', '.join(needing)} recompute the enhanced channel: "
                             "pass enhance= (e.g. loader.enhance)")
        self.names = list(dict.fromkeys(names))
        self.p = float(p)
        self.enhance = enhance

    def __repr__(self) -> str:
        return f"Augmenter(names={self.names}, p={self.p})"

    def choose(self, rng: np.random.Generator) -> str | None:
        """The transform a sample gets (None: unchanged): the first draws from ``rng``."""
        if not self.names or rng.random() >= self.p:
            return None
        return self.names[rng.integers(len(self.names))]

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str | None]:
        """(augmented image, name of the transform applied or None)."""
        image = _as_image(image)
        name = self.choose(rng)
        if name is None:
            return image, None
        kwargs = {"enhance": self.enhance} if name in USES_ENHANCE else {}
        return AUGMENTATIONS[name](image, rng, **kwargs), name

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(image, rng)[0]


# --- Preview -------------------------------------------------------------------------------------

def preview(path: str, out: str, draws: int = 4, seed: int = 0, size: Sequence[int] | None = None) -> None:
    """Grid of the input's two channels and ``draws`` draws of every augmentation (channel 0; both
    channels for the elastic ones), written to ``out`` as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gray = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise ValueError(f"--preview {path}: cannot read an image from this file")
    if size is not None and tuple(gray.shape) != tuple(size):
        gray = cv2.resize(gray, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    from hipx.data.loader import enhance  # the training input's enhanced channel
    gray = gray.astype(np.float32) / 255.0
    image = np.stack([gray, enhance(gray)])

    # columns: input, then one per augmentation and channel shown
    columns = [("input", None, 0)]
    for name in AUGMENTATIONS:
        columns.append((name, name, 0))
        if name in ("elastic", "cat_elastic"):
            columns.append((name, name, 1))
    h, w = gray.shape
    cell_w = 1.25
    fig, axes = plt.subplots(draws, len(columns), squeeze=False,
                             figsize=(cell_w * len(columns), cell_w * h / w * draws + 0.9))
    for col, (title, name, channel) in enumerate(columns):
        for row in range(draws):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if name is None:  # the input column: original, then enhanced
                if row < 2:
                    ax.imshow(image[row], cmap="gray", vmin=0, vmax=1)
                    ax.set_xlabel(("ch 0 original", "ch 1 enhanced")[row], fontsize=8)
                continue
            fn = AUGMENTATIONS[name]
            rng = np.random.default_rng([seed, row, list(AUGMENTATIONS).index(name)])
            result = fn(image, rng, enhance=enhance) if name in USES_ENHANCE else fn(image, rng)
            ax.imshow(result[channel], cmap="gray", vmin=0, vmax=1)
        if name in ("elastic", "cat_elastic"):
            title += ("\nch 0", "\nch 1 " + ("recomputed" if name == "elastic" else "same field"))[channel]
        axes[0, col].set_title(title, fontsize=9)
    for row in range(draws):
        axes[row, 1].set_ylabel(f"draw {row + 1}", fontsize=9)
    fig.suptitle(f"Augmentations of {os.path.basename(path)} ({h} x {w}); channel 0 unless noted, "
                 f"seed {seed}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    fileio.write_bytes(out, buf.getvalue())
