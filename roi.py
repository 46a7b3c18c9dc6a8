"""Proximal-femur region of interest in an AP pelvis (or single-hip) radiograph.

Pure functions of an 8-bit grey array; no files, no training, no network. Used by
``preprocess_filenames.py --roi femur``; the method and its measured accuracy are in docs/roi.md.

Method (all on a copy shrunk to a fixed working size, boxes mapped back to native pixels):

1. Field. Pixels brighter than near-black, opened with a disc larger than letters, give the exposed
   field (or, in a bone-only segmentation on black, the bones); its bounding box drops black borders
   and the text printed in them. A field whose box is mostly black is a bone-only segmentation.
2. Markers and text. Small, flat, near-saturated components with a sharp edge against a darker
   surround (lead R/L letters, burnt-in text, ruler marks) are found; those inside a crop are
   painted over with the surrounding grey (OpenCV inpainting), so the network never sees them.
3. Orientation. A bone-only image is upside down when its bottom quarter holds more bone than its
   top quarter (iliac wings are wide, femoral shafts narrow); for a radiograph the vertical bright
   bands of the femoral shafts must lie below the heads. An upside-down image is flipped vertically
   (hip-dev's upside-down images are flipped copies).
4. Femoral heads. Each half is mirrored as ``--split-hips`` does (head toward the right edge). A
   fast radial symmetry transform (Loy and Zelinsky 2003, bright disc: gradients point to its
   centre) over the radii a femoral head can have for this field width, times a broad anatomical
   prior on where the head lies in a half, gives candidate centres; the pair (right, left) is chosen
   that scores highest with similar heights and radii (the pelvis is nearly level and symmetric).
5. Box. From the head centre ``(x, y)`` and radius ``r`` (femoral head about 2.3 cm, neck 5 cm,
   neck-shaft angle about 130 degrees): ``x - 4.0 r`` (greater trochanter) to ``x + 1.7 r``
   (medial to the head), ``y - 1.8 r`` (above the head) to ``y + 4.6 r`` (below the lesser
   trochanter), then grown to the output's aspect ratio (a taller box takes more shaft) and shifted
   inside the image. A half whose best head is weak falls back to the half of the field.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

logger = logging.getLogger(__name__)

WORK = 384  # working width of the field (pixels): the head is then about 12-30 px in radius
BLACK = 12  # grey level below which a pixel is background (padding or segmented away)
HEAD_RADIUS = (0.035, 0.085)  # femoral head radius as a share of the field width
BOX = dict(lateral=4.0, medial=1.7, above=1.8, below=4.6)  # box edges in head radii from its centre
MIN_SCORE = 0.1
HEAD_PER_DISTANCE = 0.125  # head radius / distance between the head centres (2.3 cm / 18 cm)  # relative head evidence under which a half falls back (see _head_candidates)


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
    marks_found: int = 0  # marker / text components in the whole image
    marks_masked: int = 0  # of which painted over inside a crop
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
    """Boolean mask of burnt-in markers and text: small, near-saturated, flat components whose edge
    is much brighter than their surround (lead letters, printed text, ruler ticks)."""
    h, w = img.shape
    size = max(h, w)
    k = max(5, round(0.04 * size)) | 1
    # white top-hat: what is brighter than its neighbourhood at the scale of a letter
    tophat = cv2.morphologyEx(img, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    bright = (img >= 230) & (tophat >= 110)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bright.astype(np.uint8), connectivity=8)
    out = np.zeros((h, w), bool)
    max_area = 0.002 * h * w
    for i in range(1, n):
        x, y, bw, bh, area = stats[i]
        if area < 4 or area > max_area:
            continue
        if max(bw, bh) > 0.25 * size:  # a long line is a ruler edge only if thin
            if min(bw, bh) > 0.01 * size:
                continue
        out[labels == i] = True
    if out.any():
        out = cv2.dilate(out.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return out


# ----------------------------------------------------------------------------- orientation

def is_upside_down(img: np.ndarray, field: tuple[int, int, int, int], bone_only: bool) -> bool:
    """True when the femoral shafts point up. Bone-only: more bone in the bottom quarter of the field
    than in its top quarter (wide iliac wings above, narrow shafts below in an upright view)."""
    x0, y0, x1, y1 = field
    crop = img[y0:y1, x0:x1]
    if crop.size == 0:
        return False
    if bone_only:
        q = max(1, crop.shape[0] // 4)
        top = float(np.mean(crop[:q] > BLACK))
        bottom = float(np.mean(crop[-q:] > BLACK))
        return bottom > 1.15 * top
    return False


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


def _head_candidates(half: np.ndarray, field_w: float, bone_only: bool, n: int = 6
                     ) -> list[tuple[float, float, float, float]]:
    """Up to ``n`` (x, y, r, score) head candidates in one mirrored half (head toward the right),
    in the half's pixels. Score: symmetry response times the anatomical prior, relative to the
    response's 99.9th percentile over the half (so comparable between images)."""
    h, w = half.shape
    lo, hi = HEAD_RADIUS
    radii = np.unique(np.rint(np.geomspace(lo * field_w, hi * field_w, 7)).astype(int))
    radii = radii[radii >= 2]
    blur = cv2.GaussianBlur(half, (0, 0), max(1.0, lo * field_w / 4))
    # per radius, keep which radius gave the best response at each pixel
    best = np.zeros((h, w), np.float32)
    best_r = np.zeros((h, w), np.float32)
    for r in radii:
        s = radial_symmetry(blur, [int(r)])
        better = s > best
        best[better], best_r[better] = s[better], r
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # prior: head centre about halfway across the half and halfway down the field
    px, py, sy = (0.42, 0.5, 0.12) if bone_only else (0.58, 0.55, 0.2)
    prior = np.exp(-0.5 * (((xx / w - px) / 0.18) ** 2 + ((yy / h - py) / sy) ** 2))
    score = best * prior
    ref = float(np.percentile(best, 99.9)) + 1e-6
    out = []
    work = score.copy()
    for _ in range(n):
        y, x = np.unravel_index(int(np.argmax(work)), work.shape)
        value = float(work[y, x])
        if value <= 0:
            break
        r = float(best_r[y, x])
        out.append((float(x), float(y), r, value / ref))
        cv2.circle(work, (int(x), int(y)), max(2, int(1.2 * r)), 0.0, -1)
    return out


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


# ----------------------------------------------------------------------------- the whole image

def find_hips(img: np.ndarray, aspect: float = 704 / 407) -> Result:
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
    marks = find_marks(img)
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
    if heads[0] is not None and heads[1] is not None:
        # the distance between the heads (about 18 cm) fixes the scale better than one edge does
        distance = (WORK - 1 - heads[1][0]) - heads[0][0]
        if 0.25 * WORK < distance < 0.85 * WORK:
            r = HEAD_PER_DISTANCE * distance
            heads = tuple((c[0], c[1], r, c[3]) for c in heads)

    masked_total = np.zeros_like(marks)
    for side, head, mirrored in (("right", heads[0], False), ("left", heads[1], True)):
        if head is not None and head[3] >= MIN_SCORE:
            hx, hy, hr = head[0], head[1], head[2]
            if mirrored:
                hx = WORK - 1 - hx
            # back to native pixels of the (oriented) image
            nx, ny, nr = fx0 + (hx + 0.5) / s - 0.5, fy0 + (hy + 0.5) / s - 0.5, hr / s
            if mirrored:  # box in the mirrored frame, mapped back
                mx = W - 1 - nx
                bx0, by0, bx1, by1 = femur_box((mx, ny, nr), aspect)
                bx0, bx1 = W - bx1, W - bx0
            else:
                bx0, by0, bx1, by1 = femur_box((nx, ny, nr), aspect)
            box = _fit_inside((bx0, by0, bx1, by1), W, H)
            found, native_head = True, (nx, ny, nr)
        else:
            half = fw // 2
            box = (fx0, fy0, fx0 + half, fy1) if side == "right" else (fx1 - half, fy0, fx1, fy1)
            found, native_head = False, None
            result.notes.append(f"{side} hip: femoral head not found (best evidence "
                                f"{head[3] if head else 0:.2f} < {MIN_SCORE}); using the half field")
        x0, y0, x1, y1 = box
        crop = np.ascontiguousarray(img[y0:y1, x0:x1])
        m = marks[y0:y1, x0:x1]
        hip_masked = 0
        if m.any():
            crop = cv2.inpaint(crop, m.astype(np.uint8), 3, cv2.INPAINT_TELEA)
            masked_total[y0:y1, x0:x1] |= m
            hip_masked = cv2.connectedComponents(m.astype(np.uint8))[0] - 1
        if mirrored:
            crop = np.ascontiguousarray(crop[:, ::-1])
        if result.flipped:  # report boxes and heads in the input image's pixels
            box = (x0, H - y1, x1, H - y0)
            if native_head is not None:
                native_head = (native_head[0], H - 1 - native_head[1], native_head[2])
        result.hips.append(Hip(side, crop, box, found, native_head, hip_masked))
    if masked_total.any():
        result.marks_masked = cv2.connectedComponents(masked_total.astype(np.uint8))[0] - 1
    return result
