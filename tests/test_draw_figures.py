"""scripts/draw_figures.py draws the README's pictures from the built models and filenames.py."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import pytest

from hipx.data import filenames
from hipx.data import loader
from hipx.models import build_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "draw_figures.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("draw_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    return out, _load_script().main(["--out", str(out)])


def test_three_pictures_written(drawn):
    out, _ = drawn
    for name in ("Dense.png", "Dense2.png", "explanation.png"):
        image = cv2.imread(str(out / name))
        assert image is not None, name
        assert image.shape[1] == 1800  # 9 inches at 200 dpi: about 800 px in a README, text still legible


@pytest.mark.parametrize("mode", ["early", "late"])
def test_drawn_channels_equal_the_built_model(drawn, mode):
    _, numbers = drawn
    d = numbers[mode]
    late = mode == "late"
    in_chans = loader.IMAGE_CHANNELS + (0 if late else len(loader.CLINICAL_NAMES))
    model = build_model("dense_net", in_chans=in_chans, late_fuse=late)
    assert d["input_channels"] == model.in_chans == (2 if late else 5)
    assert d["input_size"] == (176, 102)
    # DenseNet-BC-40, k = 12: stem 2k = 24; each block adds 6 layers x 12; transitions halve
    assert [s["channels"] for s in d["stages"]] == [24, 96, 48, 120, 60, 132]
    assert [s["size"] for s in d["stages"]] == [(44, 26), (44, 26), (22, 13), (22, 13), (11, 6), (11, 6)]
    assert [s["layers"] for s in d["stages"] if s["kind"] == "block"] == [6, 6, 6]
    assert d["stages"][0]["channels"] == model.features.conv0.out_channels
    assert d["stages"][2]["channels"] == model.features.transition1.conv.out_channels
    assert d["pooled"] == model.num_features == 132
    assert d["head_in"] == model.classifier.in_features == (148 if late else 132)
    if late:
        mlp = [m for m in model.clinical_mlp if hasattr(m, "in_features")]
        assert d["clinical"]["mlp"] == [mlp[0].in_features, *(m.out_features for m in mlp)] == [3, 16, 16]
        assert d["clinical"]["enters"] == "pooled features"
    else:
        assert d["clinical"] == {**d["clinical"], "enters": "input channels", "channels": 3}


def test_file_name_fields_as_filenames_reads_them(drawn):
    _, numbers = drawn
    name, fields = numbers["filename"]["name"], numbers["filename"]["fields"]
    info = filenames.decode(name)
    assert filenames.encode(info.patient, info.crop, info.label, info.sex, info.age, info.bmi) == name
    assert fields["patient"] == info.patient and int(fields["crop"]) == info.crop
    assert int(fields["label"]) == info.label == 1  # the picture shows an osteoporotic hip
    assert (float(fields["sex"]), float(fields["age"]), float(fields["bmi"])) == info.clinical
    f = fields
    assert f"{f['patient']}_{f['crop']}_{f['label']}-{f['sex']}-{f['age']}-{f['bmi']}.{f['ext']}" == name


def test_field_spans_marks_missing_values():
    name = filenames.encode("a_b", 2, 0, None, 61, None, ext=".npy")
    spans = filenames.field_spans(name)
    assert {k: name[a:b] for k, (a, b) in spans.items()} == {
        "patient": "a_b", "crop": "2", "label": "0", "sex": "NA", "age": "61", "bmi": "NA", "ext": "npy"}
    with pytest.raises(filenames.FileNameError):
        filenames.field_spans("a_1_0-1-61.png")


def test_existing_pictures_are_kept_without_overwrite(drawn):
    out, _ = drawn
    before = (out / "Dense.png").read_bytes()
    with pytest.raises(SystemExit, match="--overwrite"):
        _load_script().main(["--out", str(out)])
    assert (out / "Dense.png").read_bytes() == before
