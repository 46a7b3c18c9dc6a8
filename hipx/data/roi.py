"""Proximal-femur region of interest in an AP pelvis (or single-hip) radiograph.

Pure functions of an 8-bit grey array; no files, no training, no network. Used by
``preprocess_filenames.py --roi femur``; the method and its measured accuracy are in docs/roi.md.

Method (all on a copy shrunk to a fixed working size, boxes mapped back to native pixels):

1. Field. Pixels brighter than near-black, opened with a disc larger than letters, give the exposed
   field (or, in a bone-only segmentation on black, the bones); its bounding box drops black borders
   and the text printed in them. A field whose box is mostly black is a bone-only segmentation.
2. Markers and text. Small near-white components with a sharp step down to a darker surround
   (lead R/L letters, burnt-in text, ruler marks) are found on radiographs; those inside a crop
   are painted over with the surrounding grey (OpenCV inpainting), so the network never sees them.
3. Orientation. A bone-only image is upside down when its bottom quarter holds more bone than its
   top quarter (iliac wings are wide, femoral shafts narrow), unless its pubic bones lie low (a
   short view); for a radiograph the long vertical bright bands of the femoral shafts must lie in
   the bottom third, not the top third. An upside-down image is flipped vertically (hip-dev's
   upside-down images are flipped copies).
4. Femoral heads. Each half is mirrored as ``--split-hips`` does (head toward the right edge). A
   generalised Hough transform of a proximal-femur outline (:func:`femur_outline`), on radiographs
   times a fast radial symmetry transform of a head-sized bright disc, times a prior on where the
   head lies in a half (measured on hip-dev), gives candidate centres; the pair (right, left) is
   chosen that scores highest with similar heights and radii (the pelvis is nearly level and
   symmetric), and the distance between the heads sets their radius.
5. Box. From the head centre ``(x, y)`` and radius ``r`` (femoral head about 2.3 cm, neck 5 cm,
   neck-shaft angle about 130 degrees): ``x - 3.5 r`` (greater trochanter) to ``x + 2.3 r``
   (medial to the head), ``y - 4 r`` (above the head) to ``y + 4.6 r`` (below the lesser
   trochanter), then grown to the output's aspect ratio (a taller box takes more shaft) and shifted
   inside the image. The margins above and medially are wide because on radiographs the found
   centre often lies up to two radii too low, on the neck (measured on hip-dev, docs/roi.md).
   A half without structure (no candidate with enough outline support, or none at the other head's
   height) falls back to the half of the field.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from hipx.data.splits import IMAGE_SIZE

logger = logging.getLogger(__name__)

WORK = 384  # working width of the field (pixels): the head is then about 12-30 px in radius
BLACK = 12  # grey level below which a pixel is background (padding or segmented away)
# Where the head lies, as found on hip-dev's 257 images (crops that showed head and neck on the
# contact sheet, docs/roi.md): centre x from the lateral edge of the half (share of the half's
# width), centre y (share of the field's height), radius (share of the field's width); mean and
# spread (about the 10-90 % range / 2.5). Radiographs show soft tissue beside the bones, so their
# field is wider than a bone-only segmentation's.
PRIOR = {"radiograph": dict(x=(0.55, 0.11), y=(0.58, 0.12), r=(0.035, 0.085)),
         "bone": dict(x=(0.41, 0.10), y=(0.56, 0.10), r=(0.05, 0.11))}
BOX = dict(lateral=3.5, medial=2.3, above=4.0, below=4.6)  # box edges in head radii from its centre
MIN_EVIDENCE = 0.03  # share of the femur outline that must find a matching edge (see _support): on
# hip-dev the chosen heads give 0.03-0.6, drawn femurs 0.6, but noise gives 0.15-0.27 too, so this
# only rejects a half without structure (a single-hip view's empty side); see docs/roi.md
MAX_TILT = 0.12  # heads further apart in height than this share of the field: the weaker is doubted
HEAD_PER_DISTANCE = 0.125  # head radius / distance between the head centres (2.3 cm / 18 cm)


@dataclass
class Hip:
    """One hip's crop, oriented like ``split_hips``: femoral head toward the right edge."""

    side: str  # 'right' or 'left' (patient side, radiological display)
    image: np.ndarray
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive) in the input image's pixels
    found: bool  # False: the femur was not found and the crop is the half field
    head: tuple[float, float, float] | None = None  # x, y, r in the input image's pixels
    marks_masked: int = 0  # marker / text components painted over in this crop


@dataclass
class Result:
    hips: list[Hip]
    flipped: bool = False  # the input was upside down and has been turned
    bone_only: bool = False  # a segmentation on black rather than a radiograph
    marks_found: int = 0  # marker / text components in the whole image (each crop counts its own painted ones)
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- field and markers

def field_box(img: np.ndarray) -> tuple[tuple[int, int, int, int], bool]:
    """Bounding box ``(x0, y0, x1, y1)`` of the exposed field, and whether it is a bone-only image."""
    h, w = img.shape
    s = WORK / max(h, w)
    small = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    mask = (small > BLACK).astype(np.uint8)
    k = max(3, round(0.03 * WORK)) | 1  # wider than printed letters, narrower than a femoral shaft
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return (0, 0, w, h), False
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = [i + 1 for i, a in enumerate(areas) if a >= 0.02 * areas.max()]
    x0 = min(stats[i, cv2.CC_STAT_LEFT] for i in keep)
    y0 = min(stats[i, cv2.CC_STAT_TOP] for i in keep)
    x1 = max(stats[i, cv2.CC_STAT_LEFT] + stats[i, cv2.CC_STAT_WIDTH] for i in keep)
    y1 = max(stats[i, cv2.CC_STAT_TOP] + stats[i, cv2.CC_STAT_HEIGHT] for i in keep)
    inside = small[y0:y1, x0:x1]
    bone_only = float(np.mean(inside <= BLACK)) > 0.25
    box = (int(math.floor(x0 / s)), int(math.floor(y0 / s)), min(w, int(math.ceil(x1 / s))), min(h, int(math.ceil(y1 / s))))
    return box, bone_only


def find_marks(img: np.ndarray) -> np.ndarray:
    """Boolean mask of burnt-in markers, text and ruler marks: small near-white components with a
    sharp step down to a much darker surround (lead letters and printed overlays are not blurred
    by the patient, bone edges are)."""
    h, w = img.shape
    size = max(h, w)
    k = max(5, round(0.08 * size)) | 1
    # white top-hat: what is brighter than its neighbourhood at the scale of a marker
    tophat = cv2.morphologyEx(img, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    bright = ((img >= 235) & (tophat >= 60)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    out = np.zeros((h, w), bool)
    max_area, min_area = 0.01 * h * w, max(6, round(2e-5 * h * w))
    ring_k = np.ones((2 * max(2, size // 300) + 1,) * 2, np.uint8)
    for i in range(1, n):
        x, y, bw, bh, area = stats[i]
        if not min_area <= area <= max_area:
            continue
        pad = ring_k.shape[0]
        xa, ya, xb, yb = max(0, x - pad), max(0, y - pad), min(w, x + bw + pad), min(h, y + bh + pad)
        comp = labels[ya:yb, xa:xb] == i
        ring = cv2.dilate(comp.astype(np.uint8), ring_k).astype(bool) & ~comp
        patch = img[ya:yb, xa:xb]
        if ring.any() and float(patch[comp].mean()) - float(patch[ring].mean()) >= 70:
            out[ya:yb, xa:xb] |= comp
    if out.any():
        out = cv2.dilate(out.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    return out


# ----------------------------------------------------------------------------- orientation

def is_upside_down(img: np.ndarray, field: tuple[int, int, int, int], bone_only: bool) -> bool:
    """True when the femoral shafts point up. Bone-only: more bone in the bottom quarter of the field
    than in its top quarter (wide iliac wings belong above, narrow shafts below), unless the bone
    in the middle of the width (pubic bones) lies in the bottom 30 % (a short upright view).
    Radiograph: the long bright vertical bands of the shafts, in the outer thirds of the field,
    belong in its bottom third, not its top third (where the iliac wings are)."""
    x0, y0, x1, y1 = field
    crop = img[y0:y1, x0:x1]
    if crop.shape[0] < 8 or crop.shape[1] < 8:
        return False
    if bone_only:
        bone = crop > BLACK
        q = max(1, crop.shape[0] // 4)
        top, bottom = float(np.mean(bone[:q])), float(np.mean(bone[-q:]))
        # a short view (pelvis with femur stubs) has its pubic bones below: bone in the middle
        # fifth of the width lies low in an upright view, high in an upside-down one
        middle = bone[:, int(0.42 * bone.shape[1]):int(0.58 * bone.shape[1])].mean(axis=1)
        centroid = float((middle * np.arange(middle.size)).sum() / max(middle.sum(), 1e-6) / middle.size)
        return bottom > 1.15 * top and (middle.sum() == 0 or centroid < 0.7)
    s = 128 / crop.shape[1]
    small = cv2.resize(crop, (128, max(8, round(crop.shape[0] * s))), interpolation=cv2.INTER_AREA).astype(np.float32)
    # bright vertical bands about a shaft wide: minus the horizontal second derivative, after
    # smoothing along y so that only long vertical structures keep their contrast
    smooth = cv2.GaussianBlur(small, (0, 0), sigmaX=2.0, sigmaY=6.0)
    ridge = np.maximum(-cv2.Sobel(smooth, cv2.CV_32F, 2, 0, ksize=5), 0)
    n, third = small.shape[0], small.shape[1] // 3
    outer = np.concatenate([ridge[:, :third], ridge[:, -third:]], axis=1)
    top, bottom = float(outer[: n // 3].mean()), float(outer[-(n // 3):].mean())
    return top > 1.3 * bottom


# ----------------------------------------------------------------------------- femoral head

def radial_symmetry(img: np.ndarray, radii: Sequence[int], alpha: float = 2.0) -> np.ndarray:
    """Fast radial symmetry transform for bright discs (Loy and Zelinsky 2003, IEEE PAMI 25(8)):
    each strong edge pixel votes ``r`` pixels along its gradient (toward the brighter side), for
    every radius; the sum over radii of ``(votes / k)^alpha * magnitude`` smoothed by ``r / 4``."""
    f = img.astype(np.float32)
    gx = cv2.Sobel(f, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(f, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.hypot(gx, gy)
    thr = np.percentile(mag, 80)
    ys, xs = np.nonzero(mag > thr)
    m = mag[ys, xs]
    ux, uy = gx[ys, xs] / m, gy[ys, xs] / m
    h, w = f.shape
    total = np.zeros((h, w), np.float32)
    for r in radii:
        px = np.rint(xs + r * ux).astype(np.int64)
        py = np.rint(ys + r * uy).astype(np.int64)
        ok = (px >= 0) & (px < w) & (py >= 0) & (py < h)
        idx = py[ok] * w + px[ok]
        votes = np.bincount(idx, minlength=h * w).astype(np.float32).reshape(h, w)
        magn = np.bincount(idx, weights=m[ok], minlength=h * w).astype(np.float32).reshape(h, w)
        k = 9.9 if r > 1 else 8.0
        o = np.minimum(votes, k) / k
        fr = (o ** alpha) * magn / (magn.max() + 1e-6)
        total += cv2.GaussianBlur(fr, (0, 0), max(1.0, r / 4.0))
    return total / max(1, len(radii))


def _segment(a: tuple[float, float], b: tuple[float, float], normal: tuple[float, float], step: float,
             weight: float = 1.0) -> list[tuple[float, ...]]:
    n = max(2, int(math.hypot(b[0] - a[0], b[1] - a[1]) / step) + 1)
    return [(a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, normal[0], normal[1], weight)
            for t in np.linspace(0, 1, n)]


def _arc(radius: float, start_deg: float, stop_deg: float, inward: bool, step: float, weight: float
         ) -> list[tuple[float, ...]]:
    out = []
    for a in np.arange(math.radians(start_deg), math.radians(stop_deg), step / radius):
        c, s = math.cos(a), math.sin(a)
        out.append((radius * c, radius * s, -c if inward else c, -s if inward else s, weight))
    return out


def femur_outline(step: float = 0.1) -> np.ndarray:
    """Points ``(x, y, nx, ny, weight)`` of the edges around a proximal femur with the normal
    pointing away from the bone, in femoral head radii from the head centre; x toward the medial
    side (the head), y down (AP view, as ``split_hips`` orients a hip). From adult proportions:
    neck about 1.3 radii wide, inclined 130 degrees to the shaft; femoral offset (head centre to
    shaft axis) about 1.9 radii; shaft about 1.4 radii across; greater trochanter tip 0.7 radii
    above the head centre; the acetabular roof over the head, a joint space away (radius 1.25).
    The head and the roof weigh more: long straight shaft edges cannot fix the height."""
    pts = _arc(1.0, 175, 465, False, step, 2.0)  # head, but where the neck leaves it (105-175 deg)
    pts += _arc(1.25, 195, 335, True, step, 1.5)  # acetabular roof: bone above, facing the head
    axis = (-math.cos(math.radians(40)), math.sin(math.radians(40)))  # neck axis, toward the shaft
    up, down = (-axis[1], axis[0]), (axis[1], -axis[0])
    up, down = (up, down) if up[1] < 0 else (down, up)
    for n in (up, down):
        pts += _segment((axis[0] * 1.0 + n[0] * 0.65, axis[1] * 1.0 + n[1] * 0.65),
                        (axis[0] * 2.0 + n[0] * 0.65, axis[1] * 2.0 + n[1] * 0.65), n, step)
    lateral, medial = -2.6, -1.2  # shaft edges
    pts += _segment((lateral, -0.3), (lateral, 4.5), (-1.0, 0.0), step)  # trochanter and shaft, lateral
    pts += _segment((lateral + 0.1, -0.7), (-1.7, -0.6), (0.0, -1.0), step)  # trochanter tip
    pts += _segment((-1.15, 1.9), (medial, 4.5), (1.0, 0.0), step)  # calcar and shaft, medial
    return np.array(pts, np.float32)


OUTLINE = femur_outline()
ANGLE_BINS = 24


def _head_candidates(half: np.ndarray, field_w: float, bone_only: bool, n: int = 6
                     ) -> list[tuple[float, float, float, float, float]]:
    """Up to ``n`` (x, y, r, score, evidence) femoral head candidates in one mirrored half (head toward the
    right), in the half's pixels, by a generalised Hough transform (Ballard 1981) of
    :func:`femur_outline`: every edge pixel votes for the head centres from which a point of the
    outline with the opposite normal (bone is brighter than what surrounds it) would fall on it,
    at each radius the head can have. Evidence: the share of the outline (weighted) that found a
    matching edge. Score: the evidence relative to the best in the half (on a radiograph times
    the radial symmetry of a round head at that radius), times a broad anatomical prior on where
    the head lies in a half."""
    h, w = half.shape
    prior_of = PRIOR["bone" if bone_only else "radiograph"]
    lo, hi = prior_of["r"]
    radii = np.geomspace(lo * field_w, hi * field_w, 9)
    f = cv2.GaussianBlur(half.astype(np.float32), (0, 0), max(1.0, lo * field_w / 6))
    gx = cv2.Sobel(f, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(f, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.hypot(gx, gy)
    ys, xs = np.nonzero(mag > max(1e-3, float(np.percentile(mag, 75))))
    if ys.size < 16:  # a flat picture: nothing to find
        return []
    weight = np.minimum(mag[ys, xs] / (float(np.percentile(mag[ys, xs], 90)) + 1e-6), 1.0)
    # an edge whose gradient points along g matches outline points whose outward normal is -g
    ebin = np.floor((np.arctan2(-gy[ys, xs], -gx[ys, xs]) + math.pi) / (2 * math.pi) * ANGLE_BINS).astype(int) % ANGLE_BINS
    tbin = np.floor((np.arctan2(OUTLINE[:, 3], OUTLINE[:, 2]) + math.pi) / (2 * math.pi) * ANGLE_BINS).astype(int) % ANGLE_BINS
    edge_bins = np.full((h, w), -1, np.int16)
    edge_bins[ys, xs] = ebin
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    (px, sx), (py, sy) = prior_of["x"], prior_of["y"]
    prior = np.exp(-0.5 * (((xx / w - px) / sx) ** 2 + ((yy / h - py) / sy) ** 2))
    ght, frst = [], []
    for r in radii:
        acc = np.zeros(h * w, np.float64)
        for b in range(ANGLE_BINS):
            e = np.flatnonzero(ebin == b)
            if e.size == 0:
                continue
            t = np.flatnonzero(np.minimum((tbin - b) % ANGLE_BINS, (b - tbin) % ANGLE_BINS) <= 1)
            if t.size == 0:
                continue
            cx = np.rint(xs[e][:, None] - r * OUTLINE[t, 0][None, :]).astype(np.int64)
            cy = np.rint(ys[e][:, None] - r * OUTLINE[t, 1][None, :]).astype(np.int64)
            ok = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
            acc += np.bincount((cy * w + cx)[ok], weights=(weight[e][:, None] * OUTLINE[t, 4][None, :])[ok],
                               minlength=h * w)
        ght.append(cv2.GaussianBlur(acc.reshape(h, w).astype(np.float32), (0, 0), max(1.0, r / 5))
                   / (r * float(OUTLINE[:, 4].sum()) * 0.1))
        if not bone_only:
            frst.append(radial_symmetry(f, [int(round(r))]))
    # the outline fixes where a femur is, the radial symmetry that a round head sits there
    ght = np.stack(ght)
    ght = ght / max(float(np.max(ght)), 1e-9)
    frst = np.stack(frst) / (max(float(np.max(frst)), 1e-9)) if frst else None
    # (a bone-only segmentation's head often merges with the acetabulum: its outline alone decides)
    both = ght if bone_only else np.sqrt(ght * frst)
    k = np.argmax(both, axis=0)
    best = np.take_along_axis(both, k[None], axis=0)[0]
    best_r = radii[k].astype(np.float32)
    score = best * prior
    out = []
    work = score.copy()
    for _ in range(n):
        y, x = np.unravel_index(int(np.argmax(work)), work.shape)
        value = float(work[y, x])
        if value <= 0:
            break
        r = float(best_r[y, x])
        out.append((float(x), float(y), r, value, _support(edge_bins, x, y, r)))
        cv2.circle(work, (int(x), int(y)), max(2, int(1.5 * r)), 0.0, -1)
    return out


def _support(edge_bins: np.ndarray, x: float, y: float, r: float) -> float:
    """Share of the outline (weighted) that, placed with its head at (x, y) and radius r, has an
    edge of its own orientation (one bin either side) within a pixel of it."""
    h, w = edge_bins.shape
    tbin = np.floor((np.arctan2(OUTLINE[:, 3], OUTLINE[:, 2]) + math.pi) / (2 * math.pi) * ANGLE_BINS).astype(int) % ANGLE_BINS
    px = np.rint(x + r * OUTLINE[:, 0]).astype(int)
    py = np.rint(y + r * OUTLINE[:, 1]).astype(int)
    hit = np.zeros(len(OUTLINE), bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            qx, qy = px + dx, py + dy
            ok = (qx >= 0) & (qx < w) & (qy >= 0) & (qy < h)
            b = np.full(len(OUTLINE), -1)
            b[ok] = edge_bins[qy[ok], qx[ok]]
            near = np.minimum((b - tbin) % ANGLE_BINS, (tbin - b) % ANGLE_BINS) <= 1
            hit |= ok & (b >= 0) & near
    return float((OUTLINE[:, 4] * hit).sum() / OUTLINE[:, 4].sum())


def _pair(right: list, left: list, height: float) -> tuple[tuple | None, tuple | None]:
    """The (right, left) candidates with the best summed score, penalised for differing heights
    and radii; a side without candidates is None."""
    if not right or not left:
        return (right[0] if right else None), (left[0] if left else None)
    best, pick = -1e9, (right[0], left[0])
    for a in right:
        for b in left:
            dy = abs(a[1] - b[1]) / height
            dr = abs(math.log(a[2] / b[2]))
            value = a[3] + b[3] - 4.0 * max(0.0, dy - 0.04) - 1.0 * max(0.0, dr - 0.2)
            if value > best:
                best, pick = value, (a, b)
    return pick


# ----------------------------------------------------------------------------- boxes

def femur_box(head: tuple[float, float, float], aspect: float) -> tuple[float, float, float, float]:
    """Box (x0, y0, x1, y1) around a proximal femur whose head is at (x, y) with radius r, in a view
    with the head toward the right; grown to height / width = ``aspect``."""
    x, y, r = head
    x0, x1 = x - BOX["lateral"] * r, x + BOX["medial"] * r
    y0, y1 = y - BOX["above"] * r, y + BOX["below"] * r
    w, h = x1 - x0, y1 - y0
    if h / w < aspect:
        y1 = y0 + aspect * w  # more shaft
    else:
        grow = (h / aspect - w) / 2
        x0, x1 = x0 - grow, x1 + grow
    return x0, y0, x1, y1


def hip_box(head: tuple[float, float, float], side: str, shape: tuple[int, int], aspect: float
            ) -> tuple[int, int, int, int]:
    """Integer box (x0, y0, x1, y1) in an upright AP view of ``shape`` (H, W) around the proximal
    femur of the ``side`` ('right': image left half, 'left': image right half) hip whose head is
    (x, y, r) in its pixels: :func:`femur_box` in the hip's ``split_hips`` orientation."""
    h, w = shape
    x, y, r = head
    if side == "left":  # mirror into the orientation of the right hip, and back
        x0, y0, x1, y1 = femur_box((w - 1 - x, y, r), aspect)
        x0, x1 = w - x1, w - x0
    else:
        x0, y0, x1, y1 = femur_box((x, y, r), aspect)
    return _fit_inside((x0, y0, x1, y1), w, h)


def _fit_inside(box: tuple[float, float, float, float], w: int, h: int) -> tuple[int, int, int, int]:
    """Shift the box inside a (h, w) image where it is smaller than the image, else clip it."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    if bw <= w:
        shift = max(0.0, -x0) - max(0.0, x1 - w)
        x0, x1 = x0 + shift, x1 + shift
    if bh <= h:
        shift = max(0.0, -y0) - max(0.0, y1 - h)
        y0, y1 = y0 + shift, y1 + shift
    x0, y0 = max(0, int(round(x0))), max(0, int(round(y0)))
    x1, y1 = min(w, int(round(x1))), min(h, int(round(y1)))
    return x0, y0, max(x0 + 1, x1), max(y0 + 1, y1)


def parameters() -> dict:
    """The finder's constants as data: what a data folder made with ``--roi femur`` records
    (hipx.data.preprocessing), so that a run can tell whether this code cuts a new image as its
    images were cut. Any change to the method's constants shows here."""
    return {"method": "generalised Hough transform of a proximal-femur outline (docs/roi.md)",
            "work": WORK, "black": BLACK, "prior": {k: {a: list(v) for a, v in d.items()} for k, d in PRIOR.items()},
            "box": dict(BOX), "min_evidence": MIN_EVIDENCE, "max_tilt": MAX_TILT,
            "head_per_distance": HEAD_PER_DISTANCE, "angle_bins": ANGLE_BINS, "min_roi_side": MIN_ROI_SIDE}


# ----------------------------------------------------------------------------- images that hold no hip

MIN_SOURCE_SIDE = 24  # below: an icon or an export's thumbnail (16-20 px), not a radiograph, however enlarged
MIN_ROI_SIDE = 64  # --roi femur: a head is 3-8 % of the width (PRIOR), so below this it is a few pixels
MIN_GREY_RANGE = 8  # grey levels between the 0.5th and 99.5th percentiles: less is a blank exposure


def image_problem(img: np.ndarray, roi: bool = False) -> tuple[str, str] | None:
    """Why ``img`` (8-bit grey) cannot become a training image, as (skipped.csv reason, sentence):
    a side shorter than :data:`MIN_SOURCE_SIDE` (:data:`MIN_ROI_SIDE` for ``roi``), or blank or
    near-constant (all black, all white, one grey). None for an image worth using."""
    h, w = img.shape[:2]
    smallest = MIN_ROI_SIDE if roi else MIN_SOURCE_SIDE
    if min(h, w) < smallest:
        return "too_small", (f"{h} x {w} pixels: each side must be at least {smallest} pixels"
                             f"{' for --roi femur' if roi else ''} (a thumbnail is not a radiograph)")
    step = max(1, min(h, w) // 512)  # a subsample is enough to tell a blank image
    low, high = np.percentile(img[::step, ::step], (0.5, 99.5))
    if high - low < MIN_GREY_RANGE:
        return "blank_image", (f"blank or near-constant image (99 % of its pixels within grey levels "
                               f"{low:.0f}-{high:.0f}): it holds nothing to learn from")
    return None


# ----------------------------------------------------------------------------- the whole image

def find_hips(img: np.ndarray, aspect: float = IMAGE_SIZE[0] / IMAGE_SIZE[1]) -> Result:
    """Both hips' proximal-femur crops of an AP pelvis radiograph ``img`` (8-bit grey, H x W).

    Returns the crops in the order of ``split_hips`` (patient's right hip = image left half, then the
    left hip mirrored), each cut at native resolution with height / width ``aspect`` where the image
    allows, markers inside painted over; orientation fixed first.
    """
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {img.shape}")
    H, W = img.shape
    result = Result(hips=[])
    field, result.bone_only = field_box(img)
    # a bone-only segmentation has no markers left, and its bone ends sharply on black
    marks = np.zeros(img.shape, bool) if result.bone_only else find_marks(img)
    n_marks = cv2.connectedComponents(marks.astype(np.uint8))[0] - 1 if marks.any() else 0
    result.marks_found = n_marks
    if is_upside_down(img, field, result.bone_only):
        result.flipped = True
        img = img[::-1]
        marks = marks[::-1]
        x0, y0, x1, y1 = field
        field = (x0, H - y1, x1, H - y0)
    fx0, fy0, fx1, fy1 = field
    fw, fh = fx1 - fx0, fy1 - fy0
    mid = fx0 + fw // 2
    s = WORK / fw
    small = cv2.resize(img[fy0:fy1, fx0:fx1], (WORK, max(8, round(fh * s))), interpolation=cv2.INTER_AREA)
    smallmarks = cv2.resize(marks[fy0:fy1, fx0:fx1].astype(np.uint8), (small.shape[1], small.shape[0]),
                            interpolation=cv2.INTER_NEAREST).astype(bool)
    if smallmarks.any():  # markers must not attract the head finder either
        small = cv2.inpaint(small, smallmarks.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    half_w = WORK // 2
    right_half = small[:, :half_w]
    left_half = small[:, WORK - half_w:][:, ::-1]
    cands = [_head_candidates(part, WORK, result.bone_only) for part in (right_half, left_half)]
    heads = _pair(cands[0], cands[1], small.shape[0])
    if heads[0] is not None and heads[1] is not None and abs(heads[0][1] - heads[1][1]) > MAX_TILT * small.shape[0]:
        # a level pelvis has its heads at one height: the side with less evidence found something else
        weaker = 0 if heads[0][4] < heads[1][4] else 1
        heads = tuple(None if i == weaker else c for i, c in enumerate(heads))
    if heads[0] is not None and heads[1] is not None:
        # the distance between the heads (about 18 cm) fixes the scale better than one edge does
        distance = (WORK - 1 - heads[1][0]) - heads[0][0]
        if 0.25 * WORK < distance < 0.85 * WORK:
            r = HEAD_PER_DISTANCE * distance
            heads = tuple((c[0], c[1], r) + tuple(c[3:]) for c in heads)

    for side, head, mirrored in (("right", heads[0], False), ("left", heads[1], True)):
        if head is not None and head[4] >= MIN_EVIDENCE:
            hx, hy, hr = head[0], head[1], head[2]
            if mirrored:
                hx = WORK - 1 - hx
            # back to native pixels of the (oriented) image
            native_head = (fx0 + (hx + 0.5) / s - 0.5, fy0 + (hy + 0.5) / s - 0.5, hr / s)
            box, found = hip_box(native_head, side, (H, W), aspect), True
        else:
            half = fw // 2
            box = (fx0, fy0, fx0 + half, fy1) if side == "right" else (fx1 - half, fy0, fx1, fy1)
            found, native_head = False, None
            why = (f"outline evidence {head[4]:.3f} < {MIN_EVIDENCE}" if head is not None
                   else "no candidate at the other head's height" if any(heads) else "no edges")
            result.notes.append(f"{side} hip: femoral head not found ({why}); using the half field")
        x0, y0, x1, y1 = box
        crop = np.ascontiguousarray(img[y0:y1, x0:x1])
        m = marks[y0:y1, x0:x1]
        hip_masked = 0
        if m.any():
            crop = cv2.inpaint(crop, m.astype(np.uint8), 3, cv2.INPAINT_TELEA)
            hip_masked = cv2.connectedComponents(m.astype(np.uint8))[0] - 1
        if mirrored:
            crop = np.ascontiguousarray(crop[:, ::-1])
        if result.flipped:  # report boxes and heads in the input image's pixels
            box = (x0, H - y1, x1, H - y0)
            if native_head is not None:
                native_head = (native_head[0], H - 1 - native_head[1], native_head[2])
        result.hips.append(Hip(side, crop, box, found, native_head, hip_masked))
    return result
