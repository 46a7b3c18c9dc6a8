"""imaging.py: every export format decoded to 8-bit grey, the geometry of an export's image, and a
data folder's images read for the network."""
import cv2
import numpy as np
import pytest
from PIL import Image

from hipx.data import imaging


# ----------------------------------------------------------------------------- image files of every kind

def write_dicom(path, stored, photometric="MONOCHROME2", slope=None, intercept=None, center=None, width=None):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def gradient(h=48, w=30, top=20, bottom=220, dtype=np.uint8):
    return np.tile(np.linspace(top, bottom, h)[:, None], (1, w)).astype(dtype)


def pelvis(h=40, w=80, noise=0.0, seed=0):
    """Symmetric AP-pelvis-like picture: two bright femoral heads near the midline, shafts going down-out."""
    y, x = np.mgrid[0:h, 0:w].astype(float)
    img = np.zeros((h, w))
    for cx, direction in ((0.35 * w, -1), (0.65 * w, 1)):
        img += 200 * np.exp(-((x - cx) ** 2 + (y - 0.35 * h) ** 2) / (2 * (0.07 * w) ** 2))
        shaft_x = cx + direction * 0.25 * (y - 0.35 * h)
        img += 120 * np.exp(-((x - shaft_x) ** 2) / (2 * 2.0 ** 2)) * (y > 0.35 * h)
    img += np.random.default_rng(seed).normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_image(path, kind):
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "png8":
        Image.fromarray(gradient()).save(path)
    elif kind == "png16":
        Image.fromarray(gradient(top=1000, bottom=60000, dtype=np.uint16)).save(path)
    elif kind == "jpg":
        g = gradient()
        Image.fromarray(np.stack([g, g // 2, 255 - g], axis=-1)).save(path, quality=95)
    elif kind == "tif":
        Image.fromarray(gradient(top=300, bottom=4000, dtype=np.uint16)).save(path)
    elif kind == "dcm":
        write_dicom(path, gradient(top=100, bottom=3000, dtype=np.uint16), slope=2, intercept=-100,
                    center=2500, width=5000)
    elif kind == "dcm1":
        write_dicom(path, gradient(top=100, bottom=3000, dtype=np.uint16), photometric="MONOCHROME1")
    elif kind == "pelvis":
        Image.fromarray(pelvis()).save(path)
    else:
        raise ValueError(kind)


KINDS = {"png8": ".png", "png16": ".png", "jpg": ".jpg", "tif": ".tif", "dcm": ".dcm", "dcm1": ".dcm",
         "pelvis": ".png"}


# ----------------------------------------------------------------------------- reading images

@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_format_reads_as_8_bit_grey(tmp_path, kind):
    path = tmp_path / f"x{KINDS[kind]}"
    write_image(path, kind)
    img = imaging.read_image(path)
    assert img.dtype == np.uint8 and img.ndim == 2
    if kind != "pelvis":
        assert img.shape == (48, 30)
        column = img[:, 5].astype(int)
        if kind == "dcm1":
            assert column[0] > column[-1]  # inverted
        else:
            assert column[0] < column[-1]


def test_8_bit_kept_and_16_bit_scaled_by_own_min_max(tmp_path):
    write_image(tmp_path / "a.png", "png8")
    write_image(tmp_path / "b.png", "png16")
    assert np.array_equal(imaging.read_image(tmp_path / "a.png"), gradient())
    b = imaging.read_image(tmp_path / "b.png")
    assert b.min() == 0 and b.max() == 255


def test_colour_becomes_luma(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert np.all(imaging.read_image(tmp_path / "c.png") == round(0.299 * 200))


def test_dicom_monochrome1_high_raw_value_comes_out_dark(tmp_path):
    stored = np.full((10, 12), 100, np.uint16)
    stored[2, 3] = 4000
    write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1")
    img = imaging.read_image(tmp_path / "m1.dcm")
    assert img[2, 3] == 0 and img[0, 0] == 255
    write_dicom(tmp_path / "m2.dcm", stored, photometric="MONOCHROME2")
    assert imaging.read_image(tmp_path / "m2.dcm")[2, 3] == 255


def test_dicom_rescale_then_window_from_file(tmp_path):
    # stored 50, 75, 550 -> slope 2, intercept -100 -> 0, 50, 1000; window 50/100 -> 0, ~129, 255.
    # Without the rescale 75 would be ~193; with min-max instead of the window 50 would be ~13.
    stored = np.array([[50, 75, 550]], np.uint16).repeat(4, axis=0)
    write_dicom(tmp_path / "w.dcm", stored, slope=2, intercept=-100, center=50, width=100)
    img = imaging.read_image(tmp_path / "w.dcm")
    assert img[0, 0] == 0 and img[0, 2] == 255
    assert abs(int(img[0, 1]) - 129) <= 1


def test_dicom_with_several_windows_uses_the_first(tmp_path):
    stored = np.array([[0, 50, 100]], np.uint16).repeat(3, axis=0)
    write_dicom(tmp_path / "w.dcm", stored, center=[50, 1000], width=[101, 10])
    assert abs(int(imaging.read_image(tmp_path / "w.dcm")[0, 1]) - 128) <= 1


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_corrupt_file_names_the_file(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(imaging.ImageReadError, match="bad.png"):
        imaging.read_image(path)


# ----------------------------------------------------------------------------- geometry

@pytest.mark.parametrize("fit", ["pad", "crop", "stretch"])
@pytest.mark.parametrize("shape", [(48, 30), (30, 90), (200, 20), (5, 5)])
def test_fit_gives_exact_size(fit, shape):
    img = np.full(shape, 200, np.uint8)
    assert imaging.fit_image(img, (64, 37), fit).shape == (64, 37)


def test_default_size_is_704_by_407():
    out = imaging.fit_image(np.full((100, 80), 255, np.uint8))
    assert out.shape == (704, 407) and out.dtype == np.uint8


def test_pad_keeps_aspect_ratio_with_black_border_and_crop_fills():
    img = np.full((20, 40), 255, np.uint8)  # wide: padded above and below
    padded = imaging.fit_image(img, (64, 37), "pad")
    rows = np.flatnonzero(padded[:, 18] > 0)
    assert padded[0, 18] == 0 and padded[-1, 18] == 0
    assert abs(len(rows) - round(20 * 37 / 40)) <= 1  # height scaled by the same factor as the width
    assert imaging.fit_image(img, (64, 37), "crop").min() == 255


def test_split_hips_mirrored_crops_match_and_head_is_toward_right_edge():
    img = pelvis(h=60, w=120, noise=3)
    right, left = imaging.split_hips(img)
    assert right.shape == left.shape == (60, 60)
    mirrored = np.corrcoef(right.ravel(), left.ravel())[0, 1]
    unmirrored = np.corrcoef(right.ravel(), left[:, ::-1].ravel())[0, 1]
    assert mirrored > 0.95 and unmirrored < mirrored - 0.3
    for crop in (right, left):  # femoral head (brightest blob) is medial: toward the crop's right edge
        assert np.argmax(crop[int(0.35 * 60)]) > 30


def test_crop_box_outside_image_is_an_error():
    with pytest.raises(imaging.BoxError, match="not inside the image"):
        imaging.crop_box(np.zeros((10, 10), np.uint8), (0, 0, 11, 5))



# ----------------------------------------------------------------------------- a data folder's images

def test_read_png_and_npy_agree(tmp_path):
    img = (np.arange(64 * 37) % 256).astype(np.uint8).reshape(64, 37)
    cv2.imwrite(str(tmp_path / "a_1_0-1-50-20.png"), img)
    np.save(tmp_path / "a_1_0-1-50-20.npy", img)
    png = imaging.read_scaled(tmp_path / "a_1_0-1-50-20.png")
    npy = imaging.read_scaled(tmp_path / "a_1_0-1-50-20.npy")
    assert png.dtype == np.float32 and png.min() >= 0 and png.max() <= 1
    np.testing.assert_allclose(png, npy, atol=1e-6)


@pytest.mark.parametrize("content", [b"not an image", b""])
def test_corrupt_image_names_the_file(tmp_path, content):
    path = tmp_path / "a_1_0-1-50-20.png"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="a_1_0-1-50-20.png"):
        imaging.read_scaled(path)


def test_npy_must_be_2d(tmp_path):
    np.save(tmp_path / "a_1_0-1-50-20.npy", np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="2-D"):
        imaging.read_scaled(tmp_path / "a_1_0-1-50-20.npy")
