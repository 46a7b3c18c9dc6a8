import math

import pytest

from hipx.data import filenames


@pytest.mark.parametrize("args,expected", [
    (("20180187", 1, 0, 1, 44, 25.03404305), "20180187_1_0-1-44-25.03404305.png"),
    (("p7", 2, 1, 0, 71.5, None), "p7_2_1-0-71.5-NA.png"),
    (("x", 1, 1, None, None, math.nan, ".npy"), "x_1_1-NA-NA-NA.npy"),
])
def test_encode_matches_original_format(args, expected):
    assert filenames.encode(*args) == expected


@pytest.mark.parametrize("bmi", [25.03404305, 18.0, 31.123456789012345, 22.1])
def test_round_trip_keeps_bmi_unrounded(bmi):
    info = filenames.decode(filenames.encode("id_with_underscore", 3, 1, 1, 60, bmi))
    assert info.patient == "id_with_underscore"
    assert (info.crop, info.label, info.sex, info.age) == (3, 1, 1.0, 60.0)
    assert info.bmi == bmi


def test_decode_missing_values_are_nan_and_directory_ignored():
    info = filenames.decode("data/train/42_1_0-NA-55-NA.npy")
    assert info.patient == "42" and math.isnan(info.sex) and info.age == 55 and math.isnan(info.bmi)


@pytest.mark.parametrize("name", [
    "20180187_1_2-1-44-25.0.png",     # label outside 0/1
    "20180187_1_0-3-44-25.0.png",     # sex outside 0/1
    "20180187_0-1-44-25.0.png",       # no crop
    "20180187_1_0-1-44.png",          # missing bmi
    "20180187_1_0-1-abc-25.0.png",    # non-numeric age
    "20180187_1_0-1-44-25.0.jpg",     # unsupported extension
    "20180187_1_0-1-44-25.0",         # no extension
])
def test_malformed_names_name_the_file_and_the_pattern(name):
    with pytest.raises(filenames.FileNameError) as err:
        filenames.decode("some/dir/" + name)
    assert name in str(err.value)
    assert "<patient>_<crop>_<label>-<sex>-<age>-<bmi>" in str(err.value)


@pytest.mark.parametrize("kwargs", [dict(label=2), dict(sex=2), dict(patient="a/b"), dict(ext=".jpg"), dict(age=-1)])
def test_encode_refuses_bad_values(kwargs):
    base = dict(patient="p", crop=1, label=0, sex=1, age=50, bmi=22.5)
    base.update(kwargs)
    with pytest.raises(ValueError):
        filenames.encode(**base)


@pytest.mark.parametrize("name,message", [
    ("p_1_2-1-44-25.0.png", "label '2' is not 0 (normal), 1 (osteoporosis) or NA (no binary label: unscored/ only)"),
    ("p_1_0-F-44-25.0.png", "sex 'F' is not 1 (female), 0 (male) or NA"),
    ("p_1_0-1-abc-25.0.png", "age 'abc' is not a number"),
    ("p_1_0-1-44-x.png", "bmi 'x' is not a number"),
    ("p_x_0-1-44-25.0.png", "crop 'x' is not a whole number"),
    ("p_0-1-44-25.0.png", "no crop number"),
    ("p_1_0-1-44.png", "3 '-'-separated values"),
    ("p_1_0-1-999999999-25.0.png", "age 999999999 is outside the plausible range 0..130"),
    ("p_1_0-1-44-2.png", "bmi 2 is outside the plausible range 5..150"),
])
def test_a_malformed_name_names_the_field_and_what_is_accepted(name, message):
    with pytest.raises(filenames.FileNameError, match=message.replace("(", r"\(").replace(")", r"\)")):
        filenames.decode(name)


def test_plausible_ranges_are_the_ones_preprocessing_applies():
    from hipx.prepare import patient_table
    assert patient_table.AGE_RANGE == filenames.AGE_RANGE == (0.0, 130.0)
    assert patient_table.BMI_RANGE == filenames.BMI_RANGE


# ----------------------------------------------------------------------------- label NA: unscored/ only

def test_label_none_is_written_na_and_read_back_as_none():
    name = filenames.encode("p1", 3, None, 1, 70, 24.5)
    assert name == "p1_3_NA-1-70-24.5.png"
    info = filenames.decode("data/unscored/" + name)
    assert info.label is None and (info.patient, info.crop, info.sex, info.age) == ("p1", 3, 1.0, 70.0)
    assert filenames.field_spans(name)["label"] == (5, 7)


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_a_split_holding_a_label_na_image_is_refused_naming_the_file(tmp_path):
    _touch(tmp_path / "train", "a_1_0-1-50-22.png", "b_1_NA-1-50-22.png")
    with pytest.raises(ValueError, match=r"b_1_NA-1-50-22.png: label NA \(no binary label\) belongs in unscored/"):
        filenames.list_split(tmp_path, "train")
    with pytest.raises(filenames.FileNameError, match="belongs in unscored/"):
        filenames.scored(tmp_path / "train" / "b_1_NA-1-50-22.png")
    assert filenames.scored(tmp_path / "train" / "a_1_0-1-50-22.png").label == 0


def test_list_unscored_lists_sorted_checked_images_and_nothing_when_absent(tmp_path):
    assert filenames.list_unscored(tmp_path) == []
    _touch(tmp_path / "unscored")
    assert filenames.list_unscored(tmp_path) == []
    _touch(tmp_path / "unscored", "b_2_NA-0-61-NA.png", "a_1_NA-1-50-22.png", "notes.txt")
    assert [p.name for p in filenames.list_unscored(tmp_path)] == ["a_1_NA-1-50-22.png", "b_2_NA-0-61-NA.png"]
    _touch(tmp_path / "unscored", "c_1_NA-2-50-22.png")
    with pytest.raises(filenames.FileNameError, match="c_1_NA-2-50-22.png.*sex '2'"):
        filenames.list_unscored(tmp_path)
