"""The embedded demo data set: synthetic hip radiographs (proximal femur, AP view) with a known cause
of osteoporosis and a mask of where it is drawn, whole pelvis views as a hospital exports them, a
second site (:data:`SITES`) and regimes of how much each source tells. The command is
``synthetic.py``; the data model and the files written: docs/data.md, "The demo data".
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import math
import multiprocessing
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from hipx.data import filenames
from hipx.core import files as fileio
from hipx.core import runtime
from hipx.core.choices import MIN_SIDE
from hipx.data.splits import IMAGE_SIZE, SPLITS, assign_splits

logger = logging.getLogger(__name__)

VERSION = 1  # bump when the pictures or the data model change: old folders are then refused
METADATA = "synthetic.json"
MANIFEST = "manifest.csv"
MASK_DIR = "masks"

CLINICAL_COLUMNS = ("sex", "age", "bmi")
PICTURE_COLUMNS = ("trabecular_density", "trabecular_contrast", "cortical_thickness")
ORACLE_COLUMNS = PICTURE_COLUMNS + CLINICAL_COLUMNS

# Data model. Slopes in z units per year / for women / per kg/m^2, the direction of the known risk
# factors (Kanis et al. 2008, FRAX). The picture shows the *apparent* bone: the soft tissue of
# heavier patients washes it out (scatter), against the true effect of BMI, so the picture alone
# is confounded and clinical data plus picture is clearly best. The unseen patient term, the
# per-image noise (independent for each picture parameter) and the wash-out are tuned for
# ROC-AUCs of about 0.77 / 0.88 / 0.93 for clinical only / picture only / both (docs/data.md, "The demo data").
AGE_SLOPE, FEMALE_SHIFT, BMI_SLOPE = -0.045, -0.6, 0.08
PATIENT_SD, IMAGE_SD, BMI_WASHOUT = 1.0, 1.2, 0.11
Z_CUTOFF = -0.92  # 35 % quantile of z in the population
# The T-score a DXA scan would report: z in SD units, shifted so that the label's cut is the WHO one
# (osteoporosis: T <= -2.5). Written to the manifest's measure column (measures.py).
T_AT_CUTOFF = -2.5


def t_score(z: float) -> float:
    """The drawn density as a T-score: label 1 exactly when T <= -2.5 (z < Z_CUTOFF)."""
    return T_AT_CUTOFF + (z - Z_CUTOFF)
Z_CENTRE, Z_SCALE = -0.45, 1.5  # maps z + noise through a logistic onto each parameter's range
# Population variance of the clinical part of z (age uniform 50-90, 75 % women, BMI SD ~4.5): about a
# third of z's variance, the default clinical share. --clinical-share rescales the clinical part and
# the unseen patient term so that the share changes and the variance of z (so the prevalence) stays.
CLINICAL_VAR = AGE_SLOPE ** 2 * (41 ** 2 - 1) / 12 + FEMALE_SHIFT ** 2 * 0.75 * 0.25 + BMI_SLOPE ** 2 * 4.5 ** 2
DEFAULT_CLINICAL_SHARE = CLINICAL_VAR / (CLINICAL_VAR + PATIENT_SD ** 2)



@dataclass(frozen=True)
class Site:
    """What differs between hospitals (case mix and equipment); the disease model above is shared, so a
    model trained at one site meets a shifted population and other pictures at another, not another
    disease. Site A is the original data set, byte for byte."""
    age: tuple[int, int] = (50, 91)         # uniform, upper end exclusive
    female: float = 0.75                    # share of women
    bmi_mean: float = 26.0
    exposure: float = 1.4                   # attenuation -> film density: 1 - exp(-exposure * attenuation)
    gamma: tuple[float, float] = (0.85, 1.15)
    noise: float = 1.0                      # quantum noise, times site A's
    marker_corners: tuple[int, int] = (0, 1)  # 0 top left, 1 top right, 2 bottom left, 3 bottom right


# Site B: an older population (so more osteoporosis under the same disease model), a harder beam
# (flatter exposure curve), another gamma, more noise, and the side markers at the bottom.
SITES = {"A": Site(), "B": Site(age=(60, 96), female=0.8, bmi_mean=25.0, exposure=1.1, gamma=(1.0, 1.35),
                                noise=1.6, marker_corners=(2, 3))}

# Reference frame of the drawing: width 1, height IMAGE_SIZE H/W (the default aspect); x to the right,
# y down. A right hip as seen on an AP radiograph: head up right (medial), trochanter up left.
REF_H = IMAGE_SIZE[0] / IMAGE_SIZE[1]
HEAD = (0.64, 0.42, 0.15)  # centre x, y, radius


# ---------------------------------------------------------------------------------------------
# Data model

REGIME_KEYS = ("clinical_share", "image_noise")  # synthetic.json keys, written only when set


def check_regime(clinical_share: float | None, image_noise: float | None) -> None:
    """ValueError naming the flag unless the regime's values are in range (None: the default)."""
    if clinical_share is not None and not 0.0 <= clinical_share <= 1.0:
        raise ValueError(f"--clinical-share must be between 0 and 1 (share of the bone density's variance that "
                         f"sex, age and BMI explain; the demo's is {DEFAULT_CLINICAL_SHARE:.2f}); got {clinical_share}")
    if image_noise is not None and not 0.0 <= image_noise <= 100.0:
        raise ValueError(f"--image-noise must be between 0 and 100 (SD of each picture's noise in bone-density "
                         f"units; the demo's is {IMAGE_SD}); got {image_noise}")


def draw_patient(rng: np.random.Generator, site: Site = SITES["A"], clinical_share: float | None = None) -> dict:
    """Clinical values and latent bone density of one patient. ``clinical_share``: the share of z's
    variance that sex, age and BMI explain in site A's population (None: the demo's own,
    :data:`DEFAULT_CLINICAL_SHARE`)."""
    sex = int(rng.random() < site.female)
    age = int(rng.integers(*site.age))
    bmi = round(float(np.clip(rng.normal(site.bmi_mean, 4.5), 17.0, 38.0)), 2)
    clinical = AGE_SLOPE * (age - 70) + FEMALE_SHIFT * sex + BMI_SLOPE * (bmi - 26.0)
    unseen = PATIENT_SD * rng.normal()
    if clinical_share is not None:  # same total variance and mean, so about the same prevalence
        total = CLINICAL_VAR + PATIENT_SD ** 2
        mean = FEMALE_SHIFT * 0.75
        clinical = mean + math.sqrt(clinical_share * total / CLINICAL_VAR) * (clinical - mean)
        unseen *= math.sqrt((1.0 - clinical_share) * total) / PATIENT_SD
    z = clinical + unseen
    return dict(sex=sex, age=age, bmi=bmi, z=float(z), label=int(z < Z_CUTOFF))


def draw_picture(patient: dict, rng: np.random.Generator, site: Site = SITES["A"],
                 image_noise: float = IMAGE_SD) -> dict:
    """Parameters of one picture of ``patient`` (from :func:`draw_patient`): its apparent bone
    density through noisy bone parameters (per-image noise SD ``image_noise`` in z units), plus
    pose and exposure."""
    apparent = patient["z"] - BMI_WASHOUT * (patient["bmi"] - 26.0)

    def from_z(lo: float, hi: float) -> float:
        t = (apparent + image_noise * rng.normal() - Z_CENTRE) / Z_SCALE
        return lo + (hi - lo) / (1.0 + math.exp(-t))

    return dict(
        trabecular_density=from_z(0.15, 0.95),   # mean attenuation of cancellous bone
        trabecular_contrast=from_z(0.15, 0.75),  # amplitude of the trabecular streaks
        cortical_thickness=from_z(0.012, 0.06),  # shaft cortex, in image widths (before scale)
        rotation_deg=float(rng.uniform(-4.0, 4.0)),
        shift_x=float(rng.uniform(-0.04, 0.04)),
        shift_y=float(rng.uniform(-0.04, 0.04)),
        scale=float(rng.uniform(0.93, 1.07)),
        gamma=float(rng.uniform(*site.gamma)),
        brightness=float(rng.uniform(-0.05, 0.05)),
        contrast=float(rng.uniform(0.88, 1.12)),
        marker_corner=site.marker_corners[int(rng.integers(0, 2))],  # see Site
    )


# ---------------------------------------------------------------------------------------------
# Drawing

def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth union of two signed distances (polynomial smooth minimum, Quilez 2013)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _circle(x, y, cx, cy, r):
    return np.hypot(x - cx, y - cy) - r


def _capsule(x, y, a, b, ra, rb):
    """Signed distance to a segment a-b with radius tapering from ra to rb."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    h = np.clip(((x - a[0]) * dx + (y - a[1]) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(x - a[0] - dx * h, y - a[1] - dy * h) - (ra + (rb - ra) * h)


def _ellipse(x, y, cx, cy, a, b, angle_deg=0.0):
    """Approximate signed distance to an ellipse (first-order, good near the outline)."""
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    u = (x - cx) * c + (y - cy) * s
    v = -(x - cx) * s + (y - cy) * c
    k0 = np.hypot(u / a, v / b)
    k1 = np.hypot(u / (a * a), v / (b * b))
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _femur_sdf(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance (reference units, < 0 inside) of the proximal femur."""
    hx, hy, hr = HEAD
    head = _circle(x, y, hx, hy, hr)
    neck = _capsule(x, y, (hx, hy), (0.36, 0.67), 0.082, 0.10)
    greater = _ellipse(x, y, 0.25, 0.62, 0.115, 0.17, -12.0)
    inter = _ellipse(x, y, 0.35, 0.78, 0.16, 0.15, 0.0)
    lesser = _ellipse(x, y, 0.48, 0.91, 0.06, 0.04, 30.0)
    shaft = _capsule(x, y, (0.33, 0.85), (0.43, 2.2), 0.125, 0.115)
    d = _smin(head, neck, 0.03)
    d = _smin(d, greater, 0.05)
    d = _smin(d, inter, 0.09)
    d = _smin(d, shaft, 0.06)
    return _smin(d, lesser, 0.06)


def _pelvis_sdf(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance of the pelvis near the hip: ilium above the acetabular roof, the medial
    wall and the ischium around the obturator foramen, with the acetabular cup carved out."""
    hx, hy, hr = HEAD
    ilium = _ellipse(x, y, 0.86, -0.02, 0.56, 0.33, 12.0)
    medial = _ellipse(x, y, 1.06, 0.86, 0.34, 0.78, 0.0)
    body = _smin(ilium, medial, 0.10)
    foramen = _ellipse(x, y, 1.01, 1.16, 0.10, 0.19, -10.0)
    cup = _circle(x, y, hx, hy, hr + 0.02)  # head plus joint space
    return np.maximum(body, -np.minimum(foramen, cup))


def _streak_table(bounds: tuple[float, float], spacing: float, pixel: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
    """1-D noise (unit variance) for parallel streaks across a coordinate in ``bounds``: streaks
    run where the coordinate is constant. Blurred to the pixel size so small images get averaged
    texture, not aliasing. Returns (table, first coordinate, step); see :func:`_streaks`."""
    lo, hi = bounds
    step = spacing / 3.0
    n = int((hi - lo) / step) + 2
    sigma = max(1.0, 0.5 * pixel / step)
    radius = int(3 * sigma) + 1
    line = rng.standard_normal(n + 2 * radius).astype(np.float32)
    kernel = np.exp(-0.5 * np.square(np.arange(-radius, radius + 1) / sigma))
    line = np.convolve(line, kernel / kernel.sum(), mode="valid").astype(np.float32)
    return line / max(float(line.std()), 1e-6), lo, step


def _streaks(table: tuple[np.ndarray, float, float], coord: np.ndarray) -> np.ndarray:
    line, lo, step = table
    index = ((coord - lo) * (1.0 / step)).astype(np.int32)  # nearest sample: step << streak width
    return line[np.clip(index, 0, line.size - 1)]


COARSE = 4  # smooth fields (distances, weights) are computed on a 4x coarser grid, then upsampled
_GRIDS: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray, float]] = {}


def _grid(size: tuple[int, int], step: int = 1) -> tuple[np.ndarray, np.ndarray, float]:
    """Reference coordinates (before pose) of the pixel centres of a (H, W) image, or of the
    centres of a grid ``step`` times coarser that :func:`_up` maps back onto it; and the size
    of one full-resolution pixel in reference units."""
    key = (size[0], size[1], step)
    if key not in _GRIDS:
        h, w = size
        hc, wc = max(2, -(-h // step)), max(2, -(-w // step))
        unit = min(w / 1.0, h / REF_H)  # pixels per reference unit: the frame fits the image
        # centre of coarse cell j in full-resolution pixel coordinates (half-pixel convention)
        cols = (np.arange(wc, dtype=np.float64) + 0.5) * (w / wc)
        rows = (np.arange(hc, dtype=np.float64) + 0.5) * (h / hc)
        gx, gy = np.meshgrid(((cols - w / 2) / unit + 0.5).astype(np.float32),
                             ((rows - h / 2) / unit + REF_H / 2).astype(np.float32))
        _GRIDS[key] = (gx, gy, 1.0 / unit)
    return _GRIDS[key]


def _posed(size: tuple[int, int], p: dict, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Reference coordinates seen at each pixel once the patient is rotated, shifted and scaled."""
    gx, gy, _ = _grid(size, step)
    cx, cy = 0.5 + p["shift_x"], REF_H / 2 + p["shift_y"]
    t = math.radians(p["rotation_deg"])
    c, s = math.cos(t) / p["scale"], math.sin(t) / p["scale"]
    dx, dy = gx - cx, gy - cy
    return 0.5 + c * dx + s * dy, REF_H / 2 - s * dx + c * dy


def _up(field: np.ndarray, size: tuple[int, int], cubic: bool = False) -> np.ndarray:
    """``field`` stretched over a (H, W) image, pixel centres on pixel centres."""
    return cv2.resize(field, (size[1], size[0]), interpolation=cv2.INTER_CUBIC if cubic else cv2.INTER_LINEAR)


def region_mask_from_params(size: tuple[int, int], params: dict) -> np.ndarray:
    """Boolean (H, W) mask of the femur drawn with these pose parameters (a manifest row will do):
    the region whose cortex and trabeculae carry the disease signal."""
    x, y = _posed(size, params, COARSE)
    return _up(_femur_sdf(x, y), size) < 0


def _layout(size: tuple[int, int], params: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The smooth fields of one picture, on the coarse grid: distances, texture coordinates and
    weights, soft tissue."""
    hx, hy, hr = HEAD
    x, y = _posed(size, params, COARSE)
    gx, gy, _ = _grid(size, COARSE)
    fan_x, fan_y, arc_x, arc_y = 0.53, 0.95, 0.47, 0.92
    arc_r = np.hypot(x - arc_x, y - arc_y)
    shaft = _smoothstep(0.72, 0.98, y)
    # Trabecular groups (Singh et al. 1970): principal compressive (a fan from the head's dome
    # down to the calcar), principal tensile (arcs from below the greater trochanter over the
    # neck into the head; they fade first with bone loss), longitudinal in trochanter and shaft.
    w_fan = np.exp(-(np.square(x - hx) + np.square(y - hy - 0.05)) * (1 / (2 * 0.13 ** 2)))
    w_fan += 0.7 * np.exp(-np.square((x - 0.52) / 0.06)) * _smoothstep(0.5, 0.6, y) * _smoothstep(0.9, 0.75, y)
    tensile = float(np.clip((params["trabecular_density"] - 0.2) / 0.5, 0.25, 1.0))
    w_arc = (0.6 * tensile * _smoothstep(0.25, 0.29, arc_r) * _smoothstep(0.44, 0.38, arc_r)
             * _smoothstep(0.12, 0.25, x) * _smoothstep(arc_y - 0.1, arc_y - 0.25, y))
    w_along = _smoothstep(0.5, 0.9, y) * (1.0 - 0.5 * w_fan) * (1.0 - 0.6 * shaft)
    # soft tissue: the lateral skin line on the left, thicker towards the medial side
    skin = 0.03 + 0.06 * np.square(gy / REF_H) + 0.015 * np.sin(3.0 * gy + params["shift_y"] * 20)
    soft = _smoothstep(-0.015, 0.03, gx - skin) * (0.22 + 0.14 * _smoothstep(0.0, 1.0, gx) - 0.05 * gy / REF_H)
    # the pelvis is densest above the acetabulum and thin in the iliac wing and the ischium
    p_dense = 0.12 * np.exp(-(np.square(x - 0.72) + np.square(y - 0.2)) * (1 / (2 * 0.12 ** 2)))
    p_dense += 0.1 - 0.06 * _smoothstep(0.6, 1.2, y) + 0.03 * cv2.GaussianBlur(
        rng.standard_normal(x.shape).astype(np.float32), (0, 0), 3.0) * 6.0
    # trabeculae are not ruled lines: bend each group's coordinate with a smooth random warp
    warp = [cv2.GaussianBlur(rng.standard_normal(x.shape).astype(np.float32), (0, 0), 2.0) for _ in range(3)]
    return dict(sdf=_femur_sdf(x, y), pelvis=_pelvis_sdf(x, y),
                fan=np.arctan2(x - fan_x, fan_y - y) * 0.55 + 0.03 * warp[0],
                arc=arc_r + 0.05 * warp[1], along=x - 0.08 * y + 0.03 * warp[2],
                shaft=shaft, w_fan=w_fan, w_arc=w_arc, w_along=w_along, soft=soft, p_dense=p_dense)


def _attenuation(f: dict[str, np.ndarray], params: dict, pixel: float) -> np.ndarray:
    """Attenuation of soft tissue, pelvis and femur from full-resolution fields ``f``."""
    # Femur. Cortex: a shell as wide as the drawn parameter in the shaft and a third of it in the
    # head and neck; seen edge-on it is brightest towards its inner border. Cancellous bone
    # fills the rest, thicker towards the middle (the chord through a cylinder); the shaft's
    # medullary canal holds little of it.
    depth, shaft = -f["sdf"], f["shaft"]
    inside = np.clip(depth * (1.0 / pixel) + 0.5, 0.0, 1.0)  # anti-aliased edge
    rel = depth / (params["cortical_thickness"] * (0.35 + 0.65 * shaft))
    cortex = np.clip(np.minimum(0.55 + 0.45 * rel, (1.35 - rel) * (1 / 0.35)), 0.0, 1.0) * inside
    cancel = (1.0 - 0.7 * shaft) * np.sqrt(np.clip(depth * 10.0, 0.0, 1.0)) * np.clip(rel * 2.5 - 1.5, 0.0, 1.0)
    texture = (f["w_fan"] * f["fan"] + f["w_arc"] * f["arc"] + f["w_along"] * f["along"]) * (0.6 + 0.4 * f["breaks"])
    texture += (0.3 - 0.15 * shaft) * f["grain"]
    trab = np.maximum(params["trabecular_density"] * (1.0 + params["trabecular_contrast"] * texture), 0.0)
    femur = 0.2 * inside + 0.65 * cortex + 0.6 * cancel * trab
    # Pelvis: flat bone with a bright cortical outline (the acetabular roof over the head).
    p_depth = -f["pelvis"]
    p_inside = np.clip(p_depth * (1.0 / pixel) + 0.5, 0.0, 1.0)
    p_cortex = np.exp(-np.square((p_depth - 0.008) * (1 / 0.007)))
    pelvis = p_inside * (0.06 + f["p_dense"] + 0.08 * np.sqrt(np.clip(p_depth * 8.0, 0.0, 1.0)) + 0.25 * p_cortex)
    return f["soft"] * (1.0 + 0.04 * f["lumps"]) + pelvis + femur


def render(size: tuple[int, int], params: dict, side: str, rng: np.random.Generator,
           site: Site = SITES["A"]) -> tuple[np.ndarray, np.ndarray]:
    """Draw one hip: uint8 (H, W) radiograph and uint8 (H, W) region mask (255 on the femur).

    ``params`` as from :func:`draw_picture`; ``side`` is the burned-in marker letter; ``rng``
    draws the texture and noise.
    """
    h, w = size
    pixel = _grid(size)[2] / params["scale"]
    coarse = _layout(size, params, rng)
    spacing = 0.012  # trabecular streaks about 5 px apart at full size
    tables = {k: _streak_table((float(coarse[k].min()), float(coarse[k].max())), spacing * s, pixel, rng)
              for k, s in (("fan", 1.0), ("arc", 1.0), ("along", 1.2))}
    # smooth random fields with about 30, 60 and 3 blobs across: streaks come and go (breaks),
    # the fine grain of cancellous bone, lumps of soft tissue
    smooth = {k: rng.standard_normal((int(cells * REF_H) + 3, cells + 3)).astype(np.float32)
              for k, cells in (("breaks", 30), ("grain", 60), ("lumps", 3))}
    f = {k: _up(v, size) for k, v in coarse.items()}
    f.update({k: _streaks(tables[k], f[k]) for k in tables})
    f.update({k: _up(v, size, cubic=True) for k, v in smooth.items()})
    attenuation = _attenuation(f, params, pixel)
    mask = np.where(f["sdf"] < 0, 255, 0).astype(np.uint8)

    image = 1.0 - cv2.exp(-site.exposure * attenuation)
    image = cv2.GaussianBlur(image, (0, 0), 0.7)  # detector blur
    image = cv2.pow(np.clip(image, 1e-6, 1.0), params["gamma"])
    image = (image - 0.5) * params["contrast"] + (0.5 + params["brightness"])
    # quantum noise: fewer photons behind bone, so more noise where the image is bright
    image += site.noise * (0.012 + 0.025 * np.clip(image, 0.0, 1.0)) * rng.standard_normal(size, dtype=np.float32)
    out = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)

    # burned-in side marker (a lead letter, so white) in a corner
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 1.6 * max(h, w) / 700.0
    thick = max(1, round(3 * max(h, w) / 700.0))
    (tw, th), _ = cv2.getTextSize(side, font, scale, thick)
    margin = max(2, round(0.04 * w))
    org_x = margin if params["marker_corner"] in (0, 2) else w - margin - tw
    org_y = margin + th if params["marker_corner"] < 2 else h - margin
    cv2.putText(out, side, (org_x, org_y), font, scale, 245, thick, cv2.LINE_AA)
    return out, mask


# ---------------------------------------------------------------------------------------------
# Data set on disk

def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG")
    return buf.tobytes()


def _write_hips(job: tuple) -> list[dict]:
    """Draw, render and write one patient's two hips; their manifest rows. Each hip draws from its own
    seed, so the files are the same whichever process draws them."""
    out, split, pid, patient, hip_seqs, size, hospital, image_noise = job
    rows = []
    for crop, side in ((1, "R"), (2, "L")):
        rng = np.random.default_rng(hip_seqs[crop])
        params = draw_picture(patient, rng, hospital, IMAGE_SD if image_noise is None else image_noise)
        image, mask = render(size, params, side, rng, hospital)
        name = filenames.encode(pid, crop, patient["label"], patient["sex"], patient["age"], patient["bmi"])
        fileio.write_bytes(out / split / name, _png(image), fsync=False)
        fileio.write_bytes(mask_path(out / split / name), _png(mask), fsync=False)
        rows.append(dict(file=f"{split}/{name}", split=split, patient=pid, crop=crop, side=side,
                         label=patient["label"], sex=patient["sex"], age=patient["age"],
                         bmi=patient["bmi"], z=patient["z"], **params,
                         measure=t_score(patient["z"]), measure_name="T-score",
                         mask=mask_path(Path(split) / name).as_posix()))
    return rows


def _pool(n_jobs: int) -> contextlib.AbstractContextManager:
    """Worker processes on every core this process may use (drawing is NumPy on small arrays: one core
    each); none (a null context giving None) on one core or for a handful of patients."""
    cores = runtime.usable_cores()
    if cores < 2 or n_jobs < 16:
        return contextlib.nullcontext(None)
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    return concurrent.futures.ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context(method))


def _existing(out: Path, meta: dict) -> pd.DataFrame | None:
    """Manifest of an identical earlier run in ``out``; None if ``out`` is new or empty.

    Refuses (FileExistsError) a folder holding anything else, so no data is mixed or lost.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    if not any(out.iterdir()):
        return None
    meta_path = out / METADATA
    if not meta_path.is_file():
        raise FileExistsError(
            f"--out {out} is not empty and holds no {METADATA}: it is not a synthetic data set (or an "
            f"interrupted run). Refusing to write into it; choose a new or empty folder, or remove it.")
    try:
        found = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise FileExistsError(f"{meta_path} is not valid JSON ({exc}); remove {out} and run again") from exc
    keys = ("version", "n", "seed", "size", "site", *REGIME_KEYS)
    found.setdefault("site", "A")  # folders without a site are site A's
    meta = {"site": "A", **meta}
    if any(found.get(k) != meta.get(k) for k in keys):
        have = ", ".join(f"{k}={found.get(k)}" for k in keys if k in found or k in meta)
        want = ", ".join(f"{k}={meta.get(k)}" for k in keys if k in found or k in meta)
        raise FileExistsError(
            f"--out {out} holds a synthetic data set made with {have}; asked for {want}. "
            f"Remove it or choose another folder.")
    manifest = read_manifest(out)
    missing = [f for f in manifest["file"].tolist() + manifest["mask"].tolist() if not (out / f).is_file()]
    if missing:
        raise FileExistsError(f"{out} was made with the same parameters but {len(missing)} files listed in "
                              f"{MANIFEST} are missing (first: {missing[0]}); remove {out} and run again")
    logger.info("%s already holds the synthetic data set with %s; nothing to do", out,
                ", ".join(f"{k}={meta[k]}" for k in keys if k in meta))
    return manifest


def read_manifest(out_dir: str | os.PathLike) -> pd.DataFrame:
    """The manifest of a synthetic data set (patient ids kept as text, numbers exactly as drawn)."""
    return pd.read_csv(Path(out_dir) / MANIFEST, dtype={"patient": str, "split": str, "file": str, "mask": str},
                       float_precision="round_trip")


def generate(out_dir: str | os.PathLike, n_patients: int, seed: int,
             size: tuple[int, int] = IMAGE_SIZE, site: str = "A", clinical_share: float | None = None,
             image_noise: float | None = None) -> pd.DataFrame:
    """Write the data set for ``n_patients`` patients (two images each) of hospital ``site`` (:data:`SITES`)
    and return its manifest. ``clinical_share`` and ``image_noise`` set the regime (:func:`draw_patient`,
    :func:`draw_picture`); None keeps the demo's own.

    A folder already holding the same data set (same n, seed, size, site, regime) is left as it is.
    """
    out = Path(out_dir)
    size = (int(size[0]), int(size[1]))
    if n_patients < 1:
        raise ValueError(f"the number of patients must be at least 1, got {n_patients}")
    if min(size) < MIN_SIDE:
        raise ValueError(f"image size (H, W) must be at least {MIN_SIDE} x {MIN_SIDE} pixels, got {size}")
    if site not in SITES:
        raise ValueError(f"site {site!r} not known; use one of {sorted(SITES)}")
    check_regime(clinical_share, image_noise)
    meta = dict(generator="synthetic.py", version=VERSION, n=int(n_patients), seed=int(seed), size=list(size))
    if site != "A":  # site A's folders stay as they were
        meta.update(site=site, site_parameters=asdict(SITES[site]))
    meta.update({k: float(v) for k, v in zip(REGIME_KEYS, (clinical_share, image_noise)) if v is not None})
    hospital = SITES[site]
    existing = _existing(out, meta)
    if existing is not None:
        return existing

    # One child seed per patient (and per hip below): a patient's images do not depend on n.
    seqs = np.random.SeedSequence(seed).spawn(n_patients)
    hips = [seq.spawn(3) for seq in seqs]  # clinical, right hip, left hip
    patients = [draw_patient(np.random.default_rng(h[0]), hospital, clinical_share) for h in hips]
    labels = np.array([p["label"] for p in patients])
    width = max(5, len(str(n_patients - 1)))
    pids = [f"P{i:0{width}d}" for i in range(n_patients)]
    split_of = assign_splits(dict(zip(pids, labels.tolist())), seed=seed)  # sorted ids: the order drawn

    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
        (out / MASK_DIR / split).mkdir(parents=True, exist_ok=True)
    jobs = [(out, split_of[pid], pid, patient, hip_seqs, size, hospital, image_noise)
            for pid, patient, hip_seqs in zip(pids, patients, hips)]
    rows = []
    with tqdm(total=2 * n_patients, desc="synthetic", unit="img", disable=None) as bar, \
            _pool(len(jobs)) as pool:  # no bar when redirected
        for pair in (pool.map(_write_hips, jobs, chunksize=8) if pool else map(_write_hips, jobs)):
            rows += pair
            bar.update(len(pair))
    manifest = pd.DataFrame(rows)
    fileio.write_text(out / MANIFEST, manifest.to_csv(index=False))
    # written last: its presence says the folder is complete
    fileio.write_text(out / METADATA, json.dumps(meta, indent=1) + "\n")
    logger.info("wrote %d images of %d patients to %s", len(manifest), n_patients, out)
    return manifest


def head_in_pixels(size: tuple[int, int], params: dict) -> tuple[float, float, float]:
    """Centre (x, y) and radius of the femoral head drawn with these pose parameters in a (H, W)
    hip image (pixel centres at integer coordinates): the inverse of :func:`_posed`."""
    h, w = size
    unit = 1.0 / _grid(size)[2]
    hx, hy, hr = HEAD
    t = math.radians(params["rotation_deg"])
    c, s = math.cos(t) / params["scale"], math.sin(t) / params["scale"]
    u, v = hx - 0.5, hy - REF_H / 2
    det = c * c + s * s
    dx, dy = (c * u - s * v) / det, (s * u + c * v) / det
    gx, gy = 0.5 + params["shift_x"] + dx, REF_H / 2 + params["shift_y"] + dy
    return (gx - 0.5) * unit + w / 2 - 0.5, (gy - REF_H / 2) * unit + h / 2 - 0.5, hr * params["scale"] * unit


PELVIS_HIP_SIZE = (428, 204)  # (height, width) of each hip in a pelvis view: taller than a hip crop,
# with the femoral head about halfway down, as on an AP pelvis radiograph
PELVIS_LIST = "patient_list.csv"
PELVIS_TRUTH = "pelvis.csv"


def draw_pelvis(patient: dict, rng: np.random.Generator, hip_size: tuple[int, int] = PELVIS_HIP_SIZE,
                border: int = 0, upside_down: bool = False) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
    """An AP pelvis view of ``patient`` (from :func:`draw_patient`) as a hospital exports it: the
    right hip on the image's left, the left hip mirrored on its right, the symphysis between them
    as far apart as in an adult (femoral heads about 8 head radii apart), side markers, optionally
    a black ``border`` with a burnt-in text line below the field, optionally upside down.

    Returns the uint8 image and the femoral heads (x, y, r) in its pixels, right hip first.
    """
    h, w = hip_size
    # drawn 3 widths high (the frame is centred, so the abdomen shows above the pelvis) and cut
    # below, so that the head lies about halfway down as on an AP pelvis radiograph
    drawn = (max(h, 3 * w), w)
    right_p, left_p = draw_picture(patient, rng), draw_picture(patient, rng)
    right = render(drawn, right_p, "", rng)[0][:h]  # markers are put on the whole view below
    left = render(drawn, left_p, "", rng)[0][:h]
    right_head, left_head = head_in_pixels(drawn, right_p), head_in_pixels(drawn, left_p)
    # gap so that the heads lie 8 radii apart (about 18 cm for a 2.3 cm head)
    radius = (right_head[2] + left_head[2]) / 2
    gap = max(2, round(8.0 * radius - (w - 1 - right_head[0]) - (w - 1 - left_head[0])))
    ramp = np.linspace(0.0, 1.0, gap, dtype=np.float32)[None, :]
    middle = (1 - ramp) * right[:, -1:].astype(np.float32) + ramp * left[:, -1:].astype(np.float32)
    view = np.hstack([right, np.clip(middle, 0, 255).astype(np.uint8), left[:, ::-1]])
    heads = [right_head, (w + gap + (w - 1 - left_head[0]), left_head[1], left_head[2])]
    font, size = cv2.FONT_HERSHEY_SIMPLEX, 1.2 * h / 700.0 * 2
    thick = max(2, round(4 * h / 700.0))
    for letter, corner in (("R", 0), ("L", 1)):
        (tw, th), _ = cv2.getTextSize(letter, font, size, thick)
        margin = max(2, round(0.04 * w))
        x = margin if corner == 0 else view.shape[1] - margin - tw
        cv2.putText(view, letter, (x, margin + th), font, size, 245, thick, cv2.LINE_AA)
    if border:
        view = cv2.copyMakeBorder(view, border, 2 * border, border, border, cv2.BORDER_CONSTANT, value=0)
        heads = [(x + border, y + border, r) for x, y, r in heads]
        scale = max(0.3, border / 40)
        cv2.putText(view, "Page 1 of 1   1 cm", (border, view.shape[0] - border // 2), cv2.FONT_HERSHEY_SIMPLEX,
                    scale, 200, 1, cv2.LINE_AA)
    if upside_down:
        view = np.ascontiguousarray(view[::-1])
        heads = [(x, view.shape[0] - 1 - y, r) for x, y, r in heads]
    return view, heads


def generate_pelvis(out_dir: str | os.PathLike, n_patients: int, seed: int,
                    hip_size: tuple[int, int] = PELVIS_HIP_SIZE, upside_down: float = 0.1) -> pd.DataFrame:
    """Write ``n_patients`` AP pelvis views as a hospital export: ``raw/<patient>.png``,
    ``patient_list.csv`` (patient_id, image, label, sex, age, bmi, t_score; the T-score rounded to 0.1 as
    a DXA report gives it, so label = t_score <= -2.5 only up to that rounding) for ``preprocess_filenames.py``,
    and ``pelvis.csv`` with the truth (head centres and radii in raw pixels, border, upside_down).
    A share ``upside_down`` of the views is stored upside down; every other view has a black border."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} is not empty; choose a new or empty folder")
    (out / "raw").mkdir(parents=True, exist_ok=True)
    rows, truth = [], []
    width = max(5, len(str(n_patients - 1)))
    for i, seq in enumerate(np.random.SeedSequence([seed, 2]).spawn(n_patients)):
        rng = np.random.default_rng(seq)
        patient = draw_patient(rng)
        flip = bool(rng.random() < upside_down)
        border = int(round(0.06 * hip_size[1])) if i % 2 else 0
        view, heads = draw_pelvis(patient, rng, hip_size, border=border, upside_down=flip)
        pid = f"V{i:0{width}d}"
        fileio.write_bytes(out / "raw" / f"{pid}.png", _png(view), fsync=False)
        rows.append(dict(patient_id=pid, image=f"{pid}.png", label=patient["label"], sex=patient["sex"],
                         age=patient["age"], bmi=patient["bmi"], t_score=round(t_score(patient["z"]), 1)))
        truth.append(dict(image=f"{pid}.png", height=view.shape[0], width=view.shape[1], border=border,
                          upside_down=int(flip), **{f"{side}_{k}": v for side, head in zip(("right", "left"), heads)
                                                    for k, v in zip(("x", "y", "r"), head)}))
    fileio.write_text(out / PELVIS_LIST, pd.DataFrame(rows).to_csv(index=False))
    frame = pd.DataFrame(truth)
    fileio.write_text(out / PELVIS_TRUTH, frame.to_csv(index=False))
    logger.info("wrote %d AP pelvis views to %s", n_patients, out)
    return frame


def mask_path(image_path: str | os.PathLike) -> Path:
    """Where the region mask of ``DIR/<split>/<name>`` lies: ``DIR/masks/<split>/<name>``."""
    path = Path(image_path)
    return path.parent.parent / MASK_DIR / path.parent.name / path.name


def region_mask(image_path: str | os.PathLike) -> np.ndarray:
    """Boolean (H, W) mask of where the disease signal is drawn (the femur) in a synthetic image.

    Read from :func:`mask_path`; for Grad-CAM checks (how much of the heat map falls on the bone).
    """
    path = mask_path(image_path)
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise FileNotFoundError(f"no region mask {path} for {image_path}; masks exist only for images "
                                f"made by synthetic.py, under <DIR>/{MASK_DIR}/<split>/")
    return mask > 127


# ---------------------------------------------------------------------------------------------
# How much the label can be known

def oracle_auc(manifest: pd.DataFrame, columns: Sequence[str] = ORACLE_COLUMNS) -> float:
    """ROC-AUC on the test rows of a logistic regression on ``columns`` (standardised), fitted on
    the train rows. The default, picture parameters plus sex, age and BMI, is the best a model
    of the images and clinical data can hope for; ``CLINICAL_COLUMNS`` or ``PICTURE_COLUMNS``
    give the share of each source. NaN (with a warning) when the test rows hold one class."""
    # scikit-learn is needed only here; importing it at the top would slow every import
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    columns = list(columns)
    missing = [c for c in columns + ["split", "label"] if c not in manifest.columns]
    if missing:
        raise KeyError(f"manifest lacks columns {missing}; expected a manifest from synthetic.generate")
    train, test = manifest[manifest["split"] == "train"], manifest[manifest["split"] == "test"]
    for name, part in (("train", train), ("test", test)):
        if part["label"].nunique() < 2:
            warnings.warn(f"the {name} rows hold {part['label'].nunique()} class(es); ROC-AUC is undefined")
            return math.nan
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(train[columns].to_numpy(float), train["label"].to_numpy())
    return float(roc_auc_score(test["label"].to_numpy(), model.predict_proba(test[columns].to_numpy(float))[:, 1]))


def plot_examples(out_dir: str | os.PathLike, manifest: pd.DataFrame, path: str | os.PathLike,
                  per_label: int = 2) -> None:
    """Grid of ``per_label`` normal and osteoporosis images: full size on top, and below at the
    demo network's quarter resolution (176 x 102), where the signal must still show. Typical
    cases: per label, the right hips whose picture parameters are nearest the label's median."""
    import matplotlib  # only for this picture

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    cols = list(PICTURE_COLUMNS)
    score = ((manifest[cols] - manifest[cols].mean()) / manifest[cols].std()).mean(axis=1)
    picks = []
    for value in (0, 1):
        rows = (manifest["label"] == value) & (manifest["crop"] == 1)
        distance = (score[rows] - score[rows].median()).abs().sort_values(kind="stable")
        picks.append(manifest.loc[distance.index[:per_label]])
    picks = pd.concat(picks)
    fig, axes = plt.subplots(2, len(picks), figsize=(2.3 * len(picks), 8.4), squeeze=False,
                             gridspec_kw=dict(hspace=0.12, wspace=0.05))
    for col, (_, row) in enumerate(picks.iterrows()):
        image = cv2.imread(str(Path(out_dir) / row["file"]), cv2.IMREAD_GRAYSCALE)
        small = cv2.resize(image, (102, 176), interpolation=cv2.INTER_AREA)
        title = (f"{'osteoporosis' if row['label'] else 'normal'}\n"
                 f"{'F' if row['sex'] else 'M'}, {row['age']} y, BMI {row['bmi']:.1f}")
        for ax, img in zip(axes[:, col], (image, small)):
            ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="antialiased")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, col].set_title(title, fontsize=9)
    axes[0, 0].set_ylabel(f"{image.shape[0]} x {image.shape[1]}")
    axes[1, 0].set_ylabel("176 x 102 (demo input)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.write_bytes(path, buf.getvalue())
