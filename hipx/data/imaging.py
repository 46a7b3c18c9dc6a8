"""Image files -> grey pixel arrays: the suite's one place that decodes images.

Two readers, for two kinds of file. :func:`read_image` turns a hospital export's X-ray (PNG 8/16
bit, JPEG, TIFF, DICOM) into the data set's 8-bit grey picture (``preprocess_filenames.py``);
:func:`read_scaled` reads a data folder's image (PNG or ``.npy``) for the network as float [0, 1]
keeping its grey levels (``loader.py``, ``predict.py``, ``visualize_gradcam.py``). Beside them the
geometry preprocessing applies to a decoded export: the crop box, the two hips, the fixed size;
:func:`find_images`, which lists the image files below folders (``pretrain.py``, ``predict.py``); and
:data:`DECODING`, the rules of :func:`read_image` as data, which a data folder records
(``preprocessing.py``). How each format is decoded: docs/data.md, "The rules in full".
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps

from hipx.data.splits import IMAGE_SIZE

logger = logging.getLogger(__name__)

DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
# what find_images lists: every format read_image or read_scaled decodes (and DICOM without a suffix)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy", ".dcm", ".dicom", ".dic")
SKIP_FOLDERS = ("masks",)  # synthetic.py's femur masks beside the images: not radiographs

# How read_image turns an export's file into 8-bit grey, as data. A data folder records it
# (hipx.data.preprocessing), so that a run can tell whether this code decodes a new file as its
# images were decoded. Raise "version" whenever read_image gives other pixels for the same file.
DECODING = {
    "reader": "hipx.data.imaging.read_image",
    "version": 1,
    "output": "uint8 grey (H, W)",
    "raster": {
        "8-bit grey": "kept as is",
        "16-bit, 32-bit and float grey": "scaled by the image's own min/max to 0..255, rounded",
        "colour": "ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B), rounded; alpha dropped",
        "exif orientation": "applied",
    },
    "dicom": {
        "rescale": "modality LUT (RescaleSlope / RescaleIntercept or the Modality LUT Sequence)",
        "window": "the first WindowCenter / WindowWidth, VOILUTFunction LINEAR, LINEAR_EXACT or SIGMOID "
                  "(DICOM PS3.3 C.11.2.1.2), rounded",
        "without a window": "min/max of the rescaled values",
        "VOI LUT Sequence": "not applied (the window is)",
        "MONOCHROME1": "inverted after windowing (255 - grey), so that bone is bright",
        "colour": "as a colour raster",
        "multi-frame": "refused",
        "files without a suffix": "read when bytes 128-131 are 'DICM'",
    },
}


class ImageReadError(ValueError):
    """An image file that cannot be decoded into a 2-D grey image."""


class OddImageError(ValueError):
    """An image that decodes but cannot be a training image (roi.image_problem): too small, or blank."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class BoxError(ValueError):
    """A crop box that does not fit the image."""


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Any supported file (PNG 8/16 bit, JPEG, TIFF, DICOM) as an 8-bit grey image (H, W).

    8-bit grey stays as it is; colour becomes BT.601 luma; other depths are scaled by their own
    min/max. DICOM gets its modality LUT, its window (else min/max), and MONOCHROME1 inverted.
    Raises :class:`ImageReadError` naming the file.
    """
    path = Path(path)
    try:
        if _is_dicom(path):
            return _read_dicom(path)
        return _read_raster(path)
    except ImageReadError:
        raise
    except Exception as exc:  # decoders raise anything from OSError to struct.error on bad data
        raise ImageReadError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"


def is_dicom(path: str | os.PathLike) -> bool:
    """Whether :func:`read_image` reads ``path`` as DICOM (its suffix, else the 'DICM' magic at byte 128);
    False for a file that cannot be opened."""
    try:
        return _is_dicom(Path(path))
    except OSError:
        return False


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether :func:`find_images` lists ``path``: a suffix of :data:`IMAGE_SUFFIXES`, or no suffix and the
    DICOM magic; hidden files (and a killed run's temporary files) never."""
    path = Path(path)
    if path.name.startswith("."):
        return False
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:  # DICOM files often have no suffix: the 'DICM' magic at byte 128
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return True  # listed, so the unreadable file is reported, not silently ignored


def find_images(folders: Sequence[str | os.PathLike]) -> list[Path]:
    """Every image file below ``folders`` (recursively, sorted, each file once): :func:`is_image_file`;
    ``masks/`` folders (synthetic.py's femur masks) are left out. Raises naming a folder that is
    missing (``FileNotFoundError``) or holds none (``ValueError``). ``pretrain.py`` and ``predict.py``
    list their folders with it."""
    found: dict[Path, Path] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder; give folders of radiographs (PNG, JPEG, TIFF, "
                                    "DICOM or .npy, searched recursively)")
        here = [p for p in sorted(folder.rglob("*")) if p.is_file() and is_image_file(p)
                and not any(part in SKIP_FOLDERS for part in p.relative_to(folder).parts[:-1])]
        if not here:
            raise ValueError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)} or DICOM without a suffix)")
        for p in here:
            found.setdefault(p.resolve(), p)
    return sorted(found.values())


def _read_raster(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)  # show it the way a viewer does
    if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif im.mode == "1":
        im = im.convert("L")
    return _to_uint8(np.asarray(im), path)


def _to_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 3:
        channels = arr.shape[2]
        if channels in (2, 4):  # grey+alpha, RGB+alpha: drop alpha
            arr = arr[..., :-1]
        if arr.shape[2] == 3:
            luma = arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # ITU-R BT.601
            if arr.dtype == np.uint8:
                return np.clip(np.rint(luma), 0, 255).astype(np.uint8)
            arr = luma
        elif arr.shape[2] == 1:
            arr = arr[..., 0]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageReadError(f"{path}: expected a 2-D image, got an array of shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    return _minmax(arr, path)


def _minmax(arr: np.ndarray, path: Path) -> np.ndarray:
    a = arr.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        raise ImageReadError(f"{path}: no finite pixel values")
    lo, hi = float(a[finite].min()), float(a[finite].max())
    if hi <= lo:
        logger.warning("%s: every pixel has the same value %g; written black", path, lo)
        return np.zeros(a.shape, np.uint8)
    a = np.where(finite, a, lo)
    return np.clip(np.rint((a - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def _first(value) -> float | None:
    """A DICOM value that may be multi-valued (several windows): its first entry."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        if len(value) == 0:
            return None
        value = value[0]
    return float(value)


def apply_window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM VOI window to 0..255 (float), formulas of DICOM PS3.3 C.11.2.1.2."""
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - (center - width / 2.0)) / width * 255.0, 0, 255)
    if width <= 1:
        return np.where(x <= center - 0.5, 0.0, 255.0)
    return np.clip(((x - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0, 0, 255)


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom  # imported here: only DICOM inputs pay for it
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(path, force=path.suffix.lower() in DICOM_SUFFIXES)
    if "PixelData" not in ds:
        raise ImageReadError(f"{path}: DICOM file without pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(f"{path}: multi-frame DICOM ({frames} frames) is not supported; export one frame")
    arr = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if not photometric.startswith("MONOCHROME"):
        return _to_uint8(arr, path)  # colour (pydicom returns RGB)
    values = apply_modality_lut(arr, ds).astype(np.float64)  # rescale slope / intercept
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        grey = np.rint(apply_window(values, center, width, function)).astype(np.uint8)
    else:
        grey = _minmax(values, path)
    if photometric == "MONOCHROME1":  # low values are bright: invert so bone is bright
        grey = 255 - grey
    return grey


def read_scaled(path: str | os.PathLike) -> np.ndarray:
    """A data folder's image -- ``.png`` (8 or 16 bit, grey or colour) or ``.npy`` (2-D) -- as float32
    in [0, 1], scaled by its type's range (a ``.npy`` outside 0..255 by its min/max), not by its own
    min/max as :func:`read_image` scales an export, so that a grey level means the same in every file.
    Raises ``ValueError`` naming the file."""
    path = os.fspath(path)
    if path.lower().endswith(".npy"):
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - any decoding failure is the file's fault
            raise ValueError(f"{path}: cannot read .npy file ({exc})") from exc
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"{path}: expected a 2-D numeric array, got shape {array.shape} dtype {array.dtype}")
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise ValueError(f"{path}: array contains NaN or infinite values")
        lo, hi = float(array.min()), float(array.max())
        if array.dtype == np.uint8 or hi > 1.0 or lo < 0.0:
            # integer-valued images: scale by the type's range when it looks like 8 bit, else min-max
            array = array / 255.0 if (lo >= 0 and hi <= 255) else (array - lo) / max(hi - lo, 1e-12)
        return np.clip(array, 0.0, 1.0)
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{path}: cannot decode image (missing, corrupt or not an image)")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    return unit_scale(image)


def unit_scale(image: np.ndarray) -> np.ndarray:
    """A grey uint8 or uint16 image as float32 in [0, 1], by its type's range: what :func:`read_scaled`
    gives for the PNG holding it (a crop made in memory is read as its written file would be)."""
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    return image.astype(np.float32) / scale


# ----------------------------------------------------------------------------- geometry of an export's image

def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    if img.shape == (h, w):
        return img.copy()
    shrink = h * w < img.shape[0] * img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def fit_image(img: np.ndarray, size: Sequence[int] = IMAGE_SIZE, fit: str = "pad") -> np.ndarray:
    """Resize a 2-D image to exactly ``size`` = (height, width).

    ``pad`` keeps the aspect ratio and centres the image on black; ``crop`` keeps the ratio and
    cuts the centre; ``stretch`` ignores the ratio.
    """
    H, W = int(size[0]), int(size[1])
    if H < 1 or W < 1:
        raise ValueError(f"size must be positive, got {tuple(size)}")
    if fit not in ("pad", "crop", "stretch"):
        raise ValueError(f"fit {fit!r} not supported; use 'pad', 'crop' or 'stretch'")
    h, w = img.shape[:2]
    if fit == "stretch":
        return _resize(img, H, W)
    scale = min(H / h, W / w) if fit == "pad" else max(H / h, W / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if fit == "pad":
        nh, nw = min(nh, H), min(nw, W)
        out = np.zeros((H, W), dtype=img.dtype)
        top, left = (H - nh) // 2, (W - nw) // 2
        out[top:top + nh, left:left + nw] = _resize(img, nh, nw)
        return out
    nh, nw = max(nh, H), max(nw, W)
    resized = _resize(img, nh, nw)
    top, left = (nh - H) // 2, (nw - W) // 2
    return np.ascontiguousarray(resized[top:top + H, left:left + W])


def split_hips(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An AP pelvis (radiological display) -> (right hip, left hip mirrored).

    The image's left half is the patient's right hip, returned as is; the right half is the left
    hip, mirrored so that both show the femoral head toward their right edge.
    """
    h, w = img.shape[:2]
    half = w // 2
    if half < 1:
        raise ImageReadError(f"image of width {w} cannot be split into two hips")
    right_hip = img[:, :half]
    left_hip = img[:, w - half:][:, ::-1]
    return np.ascontiguousarray(right_hip), np.ascontiguousarray(left_hip)


def crop_box(img: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """Cut ``img[y0:y1, x0:x1]``; raise :class:`BoxError` if the box is not inside the image."""
    x0, y0, x1, y1 = box
    h, w = img.shape[:2]
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise BoxError(f"box x0={x0} y0={y0} x1={x1} y1={y1} is not inside the image ({w} wide, {h} high)")
    return np.ascontiguousarray(img[y0:y1, x0:x1])

