"""roi.py on generated AP pelvis views with known femoral heads, and preprocess_filenames.py --roi femur."""
import csv

import cv2
import numpy as np
import pytest

import preprocess_filenames as pf
from hipx.data import roi
import synthetic

ASPECT = 704 / 407
HIP = (214, 102)  # each hip of a generated view: small, so a view takes a fraction of a second


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def views(n, seed=0, **kwargs):
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        yield synthetic.draw_pelvis(synthetic.draw_patient(rng), rng, HIP, **kwargs)


def true_boxes(shape, heads):
    return [roi.hip_box(head, side, shape, ASPECT) for head, side in zip(heads, ("right", "left"))]


@pytest.fixture(scope="module")
def found():
    """(view, true heads, result) for 8 upright views, every other with a black border and text."""
    out = []
    for i, (view, heads) in enumerate(views(8)):
        if i % 2:
            view, heads = synthetic.draw_pelvis(*_again(i), HIP, border=8)
        out.append((view, heads, roi.find_hips(view, ASPECT)))
    return out


def _again(i, seed=0):
    rng = np.random.default_rng([seed, i])
    return synthetic.draw_patient(rng), rng


def test_found_boxes_overlap_the_true_femur_boxes(found):
    ious = [iou(hip.box, truth) for view, heads, result in found
            for hip, truth in zip(result.hips, true_boxes(view.shape, heads))]
    assert all(hip.found for _, _, result in found for hip in result.hips)
    assert np.mean(ious) >= 0.7, ious
    assert min(ious) >= 0.4, ious


def test_heads_found_within_half_a_radius(found):
    for _, heads, result in found:
        for hip, (x, y, r) in zip(result.hips, heads):
            hx, hy, hr = hip.head
            assert np.hypot(hx - x, hy - y) < 0.5 * r
            assert 0.7 < hr / r < 1.4


def test_crops_are_the_boxes_oriented_as_split_hips(found):
    view, _, result = found[0]
    right, left = result.hips
    assert (right.side, left.side) == ("right", "left")
    x0, y0, x1, y1 = right.box
    assert right.image.shape == (y1 - y0, x1 - x0)
    # the left hip is mirrored: its head lies toward the crop's right edge, like the right hip's
    for hip in result.hips:
        hx = hip.head[0] - hip.box[0]
        if hip.side == "left":
            hx = hip.box[2] - 1 - hip.head[0]
        assert hx > 0.5 * hip.image.shape[1]
    # aspect of the output where the image allows it
    assert abs(right.image.shape[0] / right.image.shape[1] - ASPECT) < 0.05


def test_upside_down_view_is_turned_and_gives_the_same_boxes():
    (view, heads), = views(1, seed=3)
    upright = roi.find_hips(view, ASPECT)
    flipped = roi.find_hips(np.ascontiguousarray(view[::-1]), ASPECT)
    assert not upright.flipped and flipped.flipped
    h = view.shape[0]
    for a, b in zip(upright.hips, flipped.hips):
        x0, y0, x1, y1 = b.box  # in the flipped input's pixels
        assert iou(a.box, (x0, h - y1, x1, h - y0)) > 0.9
        assert a.image.shape == b.image.shape


def drawn_bones() -> np.ndarray:
    """A bone-only segmentation on black, upright: iliac wings, femoral heads and shafts, pubic bones."""
    img = np.zeros((300, 400), np.uint8)
    for cx in (100, 300):
        cv2.ellipse(img, (cx, 70), (60, 60), 0, 0, 360, 180, -1)  # iliac wings
        cv2.circle(img, (cx + (40 if cx < 200 else -40), 160), 30, 200, -1)  # heads
        shaft = cx - 50 if cx < 200 else cx + 50
        cv2.rectangle(img, (shaft - 15, 170), (shaft + 15, 299), 200, -1)  # shafts
    cv2.rectangle(img, (150, 180), (250, 200), 160, -1)  # pubic bones
    return img


def test_bone_only_orientation_from_wings_above_and_shafts_below():
    img = drawn_bones()
    box, bone_only = roi.field_box(img)
    assert bone_only
    assert not roi.is_upside_down(img, box, bone_only)
    flipped = img[::-1]
    assert roi.is_upside_down(flipped, roi.field_box(flipped)[0], True)


def test_markers_found_and_painted_over_but_not_the_femur(found):
    view, heads, result = found[0]
    marks = roi.find_marks(view)
    assert marks[: view.shape[0] // 6, : view.shape[1] // 6].any()  # the R in the top left corner
    assert marks[: view.shape[0] // 6, -view.shape[1] // 6:].any()  # the L in the top right corner
    yy, xx = np.mgrid[0:view.shape[0], 0:view.shape[1]]
    for x, y, r in heads:
        assert not marks[np.hypot(xx - x, yy - y) < 1.5 * r].any()
    assert result.marks_found >= 2
    # a side marker burnt in beside the right femur, inside its crop, is painted over there
    x, y, r = heads[0]
    marked = view.copy()
    cv2.putText(marked, "R", (int(x - 2.5 * r), int(y + 3 * r)), cv2.FONT_HERSHEY_SIMPLEX, r / 20, 255,
                max(1, int(r / 10)))
    right = roi.find_hips(marked, ASPECT).hips[0]
    assert right.marks_masked >= 1
    assert right.image.max() < 235  # no near-white marker pixels are left in the crop


def test_nothing_to_find_falls_back_to_the_half_field():
    img = np.full((120, 200), 90, np.uint8)
    result = roi.find_hips(img, ASPECT)
    assert [h.found for h in result.hips] == [False, False]
    assert result.hips[0].box == (0, 0, 100, 120) and result.hips[1].box == (100, 0, 200, 120)
    assert np.array_equal(result.hips[1].image, img[:, 100:][:, ::-1])
    assert len(result.notes) == 2


def test_single_hip_view_finds_that_hip_and_falls_back_on_the_empty_side():
    (view, heads), = views(1, seed=5)
    view = view.copy()
    view[:, view.shape[1] // 2:] = 90  # the left hip is not on this radiograph
    result = roi.find_hips(view, ASPECT)
    right, left = result.hips
    assert right.found and not left.found
    assert iou(right.box, true_boxes(view.shape, heads)[0]) > 0.6
    assert "left hip" in result.notes[0]


def test_preprocess_roi_femur_counts_in_manifest_and_summary(tmp_path, capsys):
    export = tmp_path / "export"
    frame = synthetic.generate_pelvis(export, 4, seed=1, hip_size=HIP, upside_down=0.5)
    # one image with nothing to find (two flat greys; a blank one is skipped): both hips fall back to the halves
    flat = np.full((120, 200), 90, np.uint8)
    flat[:, 100:] = 130
    cv2.imwrite(str(export / "raw" / "blank.png"), flat)
    with open(export / "patient_list.csv", "a", newline="") as f:
        csv.writer(f).writerow(["B0", "blank.png", 0, 1, 70, 25, -1.0])
    out = tmp_path / "out"
    assert pf.main(["--images", str(export / "raw"), "--csv", str(export / "patient_list.csv"), "--out", str(out),
                    "--roi", "femur", "--size", "64", "37", "--split", "1", "0", "0", "--folds", "2"]) == 0
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert len(rows) == 10 and {r["hip"] for r in rows} == {"right", "left"}
    assert sum(r["roi"] == "half" for r in rows) == 2
    assert {r["roi"] for r in rows if r["patient"] == "B0"} == {"half"}
    n_flipped = int(frame["upside_down"].sum())
    assert sum(r["flipped"] == "1" for r in rows) == 2 * n_flipped
    for r in rows:
        assert cv2.imread(str(out / r["file"]), cv2.IMREAD_GRAYSCALE).shape == (64, 37)
    printed = capsys.readouterr().out
    assert f"  {'femur found':<26}{8:>6}" in printed
    assert f"  {'fell back to half image':<26}{2:>6}" in printed
    assert f"  {'images turned upright':<26}{n_flipped:>6}" in printed


def test_manifest_field_tells_bone_only_segmentations_from_radiographs(tmp_path, capsys):
    export = tmp_path / "export"
    synthetic.generate_pelvis(export, 2, seed=3, hip_size=HIP, upside_down=0.0)
    cv2.imwrite(str(export / "raw" / "bones.png"), drawn_bones())
    with open(export / "patient_list.csv", "a", newline="") as f:
        csv.writer(f).writerow(["S0", "bones.png", 1, 1, 70, 25, -3.0])
    out = tmp_path / "out"
    assert pf.main(["--images", str(export / "raw"), "--csv", str(export / "patient_list.csv"), "--out", str(out),
                    "--roi", "femur", "--size", "64", "37", "--split", "1", "0", "0"]) == 0
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert {r["patient"]: r["field"] for r in rows} == {**{r["patient"]: "radiograph" for r in rows}, "S0": "bone_only"}
    assert f"  {'bone-only segmentations':<26}{1:>6}" in capsys.readouterr().out


def test_roi_excludes_crop_col(tmp_path, capsys):
    with pytest.raises(SystemExit):
        pf.main(["--images", str(tmp_path), "--out", str(tmp_path / "o"), "--roi", "femur", "--crop-col", "c"])
    assert "--roi cuts two hips per image and numbers the crops itself; it excludes --crop-col" in capsys.readouterr().err
