"""preprocess_filenames.py on small exports built here: every format, the splits, safety, bad input."""
import csv
import hashlib
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hipx.prepare import datafolder
from hipx.data import filenames
import preprocess_filenames as pf
from hipx.runs import runfiles
from hipx.data.splits import SPLITS
from test_imaging import KINDS, write_image

SIZE = ["--size", "64", "37"]
COLUMNS = ["patient_id", "image", "label", "sex", "age", "bmi"]


# ----------------------------------------------------------------------------- fixtures

class Export:
    """A hospital export in tmp_path/export: raw/ with images, patient_list.csv beside it."""

    def __init__(self, base: Path, n_patients: int = 12, kinds=None):
        self.base = base / "export"
        self.raw = self.base / "raw"
        self.csv = self.base / "patient_list.csv"
        self.out = base / "data"
        self.columns = list(COLUMNS)
        self.rows = []
        kinds = kinds or ["png8", "png16", "jpg", "tif", "dcm", "dcm1"]
        for i in range(n_patients):
            kind = kinds[i % len(kinds)]
            image = f"sub/p{i:02d}{KINDS[kind]}" if i % 4 == 0 else f"p{i:02d}{KINDS[kind]}"
            write_image(self.raw / image, kind)
            self.rows.append({"patient_id": f"P{i:02d}", "image": image, "label": str(i % 2),
                              "sex": "F" if i % 3 else "M", "age": str(50 + i), "bmi": f"{20 + i * 0.37:.4f}"})
        # a patient with two images: crops 1 and 2 in CSV order
        write_image(self.raw / "p00b.png", "png8")
        self.rows.append(dict(self.rows[0], image="p00b.png", age="51"))
        self.write()

    def add_image(self, name, kind="png8"):
        write_image(self.raw / name, kind)
        return name

    def write(self, rows=None, columns=None):
        columns = columns or self.columns
        with open(self.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows if rows is not None else self.rows)

    def args(self, *extra):
        return ["--csv", str(self.csv), "--images", str(self.raw), "--out", str(self.out), *SIZE, *extra]

    def line_of(self, index):
        return index + 2  # header is line 1


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def tree_hashes(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def output_images(out):
    return sorted(p for split in SPLITS for p in (out / split).glob("*.png"))


@pytest.fixture
def export(tmp_path):
    return Export(tmp_path)


# ----------------------------------------------------------------------------- the command

def test_end_to_end_names_sizes_splits_manifest(export, capsys):
    (export.raw / "notes.txt").write_text("not an image")
    before = tree_hashes(export.base)
    assert pf.main(export.args("--folds", "2")) == 0
    assert tree_hashes(export.base) == before  # inputs byte-for-byte unchanged
    out = export.out
    files = output_images(out)
    assert len(files) == len(export.rows)
    manifest = read_csv(out / "manifest.csv")
    assert sorted(m["file"] for m in manifest) == sorted(p.relative_to(out).as_posix() for p in files)
    by_image = {r["image"]: r for r in export.rows}
    patient_split = {}
    for m in manifest:
        info = filenames.decode(m["file"])
        row = by_image[m["source"]]
        assert info.patient == row["patient_id"] == m["patient"]
        assert info.label == int(row["label"])
        assert info.sex == (1.0 if row["sex"] == "F" else 0.0)
        assert info.age == float(row["age"]) and info.bmi == float(row["bmi"])
        assert int(m["row"]) == export.line_of(export.rows.index(row))
        assert patient_split.setdefault(info.patient, m["split"]) == m["split"]  # no patient in two splits
        with Image.open(out / m["file"]) as im:
            assert im.size == (37, 64) and im.mode == "L"
    crops = sorted(int(m["crop"]) for m in manifest if m["patient"] == "P00")
    assert crops == [1, 2]
    assert next(m for m in manifest if m["source"] == "p00b.png")["crop"] == "2"
    # folds: every train/val patient once, test patients none
    folds = {m["patient"]: m["fold"] for m in manifest}
    assert all(m["fold"] == folds[m["patient"]] for m in manifest)  # one fold per patient
    assert all((f == "NA") == (patient_split[p] == "test") for p, f in folds.items())
    assert {f for f in folds.values() if f != "NA"} == {"0", "1"}
    skipped = read_csv(out / "skipped.csv")
    assert [(s["image"], s["reason"]) for s in skipped] == [("notes.txt", "not_in_csv")]
    assert not (out / datafolder.MARKER).exists() and (out / "preprocess.log").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "prevalence" in printed and "not_in_csv" in printed


def test_default_size_from_the_command_line(tmp_path):
    export = Export(tmp_path, n_patients=2, kinds=["png8"])
    export.write(export.rows[:2])
    assert pf.main(["--csv", str(export.csv), "--images", str(export.raw), "--out", str(export.out)]) == 0
    for path in output_images(export.out):
        with Image.open(path) as im:
            assert im.size == (407, 704)


def test_split_hips_writes_two_crops_per_image(tmp_path):
    export = Export(tmp_path, n_patients=4, kinds=["pelvis"])
    assert pf.main(export.args("--split-hips")) == 0
    manifest = read_csv(export.out / "manifest.csv")
    p00 = sorted((int(m["crop"]), m["hip"]) for m in manifest if m["patient"] == "P00")
    assert p00 == [(1, "right"), (2, "left"), (3, "right"), (4, "left")]
    by_crop = {m["crop"]: np.asarray(Image.open(export.out / m["file"]), float)
               for m in manifest if m["patient"] == "P01"}
    assert np.corrcoef(by_crop["1"].ravel(), by_crop["2"].ravel())[0, 1] > 0.95


def test_tscore_derives_label(export):
    export.columns = ["patient_id", "image", "tscore", "sex", "age", "bmi"]
    tscores = ["-2.6", "-2.5", "-2.4", "0.3", "-3,1"]  # -2.5 itself is osteoporosis; decimal comma accepted
    for row, t in zip(export.rows, tscores * 3):
        row["tscore"] = t
    export.write()
    assert pf.main(export.args("--tscore-col", "TScore")) == 0
    manifest = read_csv(export.out / "manifest.csv")
    expected = {"-2.6": "1", "-2.5": "1", "-2.4": "0", "0.3": "0", "-3,1": "1"}
    for m in manifest:
        row = next(r for r in export.rows if r["image"] == m["source"])
        assert m["label"] == expected[row["tscore"]]


def test_bmi_from_height_and_weight_in_cm_or_m(export):
    export.columns = ["patient_id", "image", "label", "sex", "age", "height", "weight"]
    for i, row in enumerate(export.rows):
        row["height"], row["weight"] = ("160" if i % 2 else "1.60"), "64"
    export.write()
    assert pf.main(export.args()) == 0
    assert {m["bmi"] for m in read_csv(export.out / "manifest.csv")} == {"25"}


def test_missing_clinical_columns_become_na_and_are_logged(export, capsys):
    export.columns = ["patient_id", "image", "label"]
    export.write()
    assert pf.main(export.args()) == 0
    for path in output_images(export.out):
        info = filenames.decode(path)
        assert math.isnan(info.sex) and math.isnan(info.age) and math.isnan(info.bmi)
        assert path.name.endswith("-NA-NA-NA.png")
    err = capsys.readouterr().err
    assert "no sex column" in err and "no age column" in err and "BMI is NA" in err


def test_empty_clinical_value_is_na(export):
    export.rows[3]["age"] = ""
    export.rows[3]["sex"] = "NaN"
    export.write()
    assert pf.main(export.args()) == 0
    m = next(m for m in read_csv(export.out / "manifest.csv") if m["source"] == export.rows[3]["image"])
    assert m["age"] == "NA" and m["sex"] == "NA" and "-NA-NA-" in m["file"]


def test_custom_columns_and_sex_map(export):
    export.columns = ["PatID", "File", "Osteo", "Gender", "Age", "BMI"]
    rows = [{"PatID": r["patient_id"], "File": r["image"], "Osteo": r["label"],
             "Gender": {"F": "w", "M": "m"}[r["sex"]], "Age": r["age"], "BMI": r["bmi"]} for r in export.rows]
    export.write(rows)
    assert pf.main(export.args("--id-col", "patid", "--image-col", "File", "--label-col", "Osteo",
                               "--sex-col", "Gender", "--sex-map", "w=1,m=0")) == 0
    manifest = read_csv(export.out / "manifest.csv")
    assert len(manifest) == len(rows)
    assert {m["sex"] for m in manifest} == {"0", "1"}


def test_split_column_and_box_columns(export):
    export.columns = COLUMNS + ["set", "x0", "y0", "x1", "y1"]
    for i, row in enumerate(export.rows):
        row["set"] = ["train", "val", "TEST"][int(row["patient_id"][1:]) % 3]
        row.update(x0="0", y0="0", x1="30", y1="24") if i == 1 else row.update(x0="", y0="", x1="", y1="")
    export.rows[2].update(x0="0", y0="0", x1="99", y1="10")  # larger than the image
    export.write()
    assert pf.main(export.args("--split-col", "set", "--box-cols", "x0", "y0", "x1", "y1", "--fit", "stretch")) == 0
    manifest = read_csv(export.out / "manifest.csv")
    assert all(m["split"] == ["train", "val", "test"][int(m["patient"][1:]) % 3] for m in manifest)
    boxed = next(m for m in manifest if m["source"] == export.rows[1]["image"])
    column = np.asarray(Image.open(export.out / boxed["file"]))[:, 10].astype(int)
    assert column[-1] < 130  # only the top (dark) half of the gradient survived the box
    skipped = read_csv(export.out / "skipped.csv")
    assert [(s["row"], s["reason"]) for s in skipped] == [(str(export.line_of(2)), "bad_box")]


def test_crop_column_numbers_crops_and_a_repeated_crop_is_skipped(export):
    export.columns = COLUMNS + ["crop"]
    for row in export.rows:
        row["crop"] = "1"
    export.rows[-1]["crop"] = "3"  # P00's second image
    export.rows[5]["crop"] = "1.5"
    export.rows.append(dict(export.rows[1], image=export.add_image("p01b.png"), crop="1"))
    export.write()
    assert pf.main(export.args("--crop-col", "crop")) == 0
    manifest = read_csv(export.out / "manifest.csv")
    assert sorted(m["crop"] for m in manifest if m["patient"] == "P00") == ["1", "3"]
    skipped = {(s["row"], s["reason"]) for s in read_csv(export.out / "skipped.csv")}
    last = str(len(export.rows) + 1)
    assert skipped == {("7", "unparsable_value"), ("3", "duplicate_crop"), (last, "duplicate_crop")}


def test_semicolon_csv_with_bom_and_blank_rows(export):
    export.write()
    text = export.csv.read_text().replace(",", ";")
    export.csv.write_bytes(b"\xef\xbb\xbf" + (text + ";;;;;\n\n").encode())
    assert pf.main(export.args("--strict")) == 0  # a row of empty fields is listed, not an error
    assert len(read_csv(export.out / "manifest.csv")) == len(export.rows)
    assert [s["reason"] for s in read_csv(export.out / "skipped.csv")] == ["empty_row"]


def test_finds_misspelt_csv_and_says_so(export, tmp_path, capsys):
    export.csv.rename(export.base / "pateint_list.csv")
    args = ["--images", str(export.raw), "--out", str(export.out), *SIZE]
    assert pf.main(args) == 0
    assert "pateint_list.csv (found automatically" in capsys.readouterr().err


# ----------------------------------------------------------------------------- safety

def test_non_empty_output_is_refused_and_overwrite_replaces_only_own_files(export, capsys):
    export.out.mkdir()
    (export.out / "mine.txt").write_text("keep me")
    assert pf.main(export.args()) == 1
    assert "is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in export.out.iterdir()) == ["mine.txt"]

    assert pf.main(export.args("--overwrite", "--seed", "1")) == 0
    first = {p.name: p.parent.name for p in output_images(export.out)}
    (export.out / "train" / "readme.md").write_text("also mine")
    assert pf.main(export.args()) == 1  # a finished run is never touched again without --overwrite
    assert pf.main(export.args("--overwrite", "--seed", "2")) == 0
    second = {p.name: p.parent.name for p in output_images(export.out)}
    assert first.keys() == second.keys() and first != second  # same files, other splits, no stale copies
    assert (export.out / "mine.txt").read_text() == "keep me"
    assert (export.out / "train" / "readme.md").read_text() == "also mine"


def test_overwrite_removes_the_temporary_files_a_killed_run_left(export):
    assert pf.main(export.args()) == 0
    # what runfiles.atomic_write leaves when killed between writing and renaming
    left = [Path(tempfile.mkstemp(prefix=".x_1_0-NA-NA-NA.png.", suffix=".tmp", dir=export.out / "train")[1]),
            Path(tempfile.mkstemp(prefix=".manifest.csv.", suffix=".tmp", dir=export.out)[1])]
    assert all(runfiles.TEMP_NAME.match(p.name) for p in left)
    assert pf.main(export.args("--overwrite", "--seed", "1")) == 0
    assert not any(p.exists() for p in left)


@pytest.mark.parametrize("where", ["same", "inside", "containing"])
def test_output_overlapping_the_images_is_refused(export, capsys, where):
    out = {"same": export.raw, "inside": export.raw / "out", "containing": export.base}[where]
    before = tree_hashes(export.base)
    args = ["--csv", str(export.csv), "--images", str(export.raw), "--out", str(out), "--overwrite", *SIZE]
    assert pf.main(args) == 1
    assert "must be outside --images" in capsys.readouterr().err
    assert tree_hashes(export.base) == before


def test_interrupted_run_is_resumed_by_the_same_command(export, monkeypatch, capsys):
    real_write = datafolder.fileio.write_bytes
    calls = {"n": 0}

    def flaky_write(path, data, fsync=True):
        if Path(path).suffix == ".png":
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt
        return real_write(path, data, fsync)

    monkeypatch.setattr(datafolder.fileio, "write_bytes", flaky_write)
    assert pf.main(export.args()) == 130
    assert (export.out / datafolder.MARKER).is_file() and len(output_images(export.out)) == 4
    assert not list(export.out.rglob("*.tmp"))
    monkeypatch.setattr(datafolder.fileio, "write_bytes", real_write)

    assert pf.main(export.args("--seed", "5")) == 1  # other settings: refused, nothing changed
    assert "interrupted run made from a different CSV or settings" in capsys.readouterr().err
    assert len(output_images(export.out)) == 4

    kept = {p: p.stat().st_mtime_ns for p in output_images(export.out)}
    assert pf.main(export.args()) == 0
    assert "resuming" in capsys.readouterr().err
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # already written files were kept
    resumed = sorted(p.relative_to(export.out) for p in output_images(export.out))
    assert not (export.out / datafolder.MARKER).exists()
    assert len(read_csv(export.out / "manifest.csv")) == len(export.rows) == len(resumed)

    fresh = export.out.parent / "fresh"
    assert pf.main(export.args()[:-len(SIZE) - 2] + ["--out", str(fresh), *SIZE]) == 0
    assert sorted(p.relative_to(fresh) for p in output_images(fresh)) == resumed


# ----------------------------------------------------------------------------- bad input

def _dup_same(e):
    e.rows.append(dict(e.rows[1]))
    return len(e.rows) - 1


def _dup_different(e):
    e.rows.append(dict(e.rows[1], label="1" if e.rows[1]["label"] == "0" else "0"))
    return len(e.rows) - 1


def _set(index, **values):
    def mutate(e):
        e.rows[index].update(values)
        return index
    return mutate


def _missing_file(e):
    e.rows[2]["image"] = "nope.png"
    return 2


def _corrupt(e):
    (e.raw / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    e.rows[2]["image"] = "broken.png"
    return 2


def _escape(e):
    write_image(e.base / "outside.png", "png8")
    e.rows[2]["image"] = "../outside.png"
    return 2


def _absolute(e):
    e.rows[2]["image"] = str(e.raw / e.rows[2]["image"])
    return 2


def _conflicting_sex(e):
    e.rows.append(dict(e.rows[1], image=e.add_image("p01b.png"), sex="M" if e.rows[1]["sex"] == "F" else "F"))
    return len(e.rows) - 1


BAD = {
    "duplicate image (same values)": (_dup_same, "duplicate_image", "already listed on line 3"),
    "duplicate image (different values)": (_dup_different, "duplicate_image", "listed on lines 3, 15"),
    "unparsable age": (_set(1, age="abc"), "unparsable_value", "age 'abc' is not a number"),
    "label 2": (_set(1, label="2"), "invalid_label", "label '2' must be 0 (normal) or 1 (osteoporosis)"),
    "NaN label": (_set(1, label="NaN"), "missing_value", "label is missing"),
    "implausible age": (_set(1, age="440"), "out_of_range", "age '440' is outside the plausible range"),
    "unknown sex": (_set(1, sex="X"), "unparsable_value", "sex 'X' is not in the sex map"),
    "missing file": (_missing_file, "missing_file", "image file not found"),
    "corrupt file": (_corrupt, "unreadable_image", "cannot read image"),
    "../ escape": (_escape, "path_escape", "contains '..'"),
    "absolute path": (_absolute, "absolute_path", "is absolute"),
    "conflicting sex": (_conflicting_sex, "conflicting_sex", "conflicting sex across rows"),
    "id with '-'": (_set(1, patient_id="P-01"), "invalid_id", "--sanitize-ids"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_row_is_skipped_with_its_reason_or_fatal_with_strict(tmp_path, capsys, case):
    mutate, reason, message = BAD[case]
    export = Export(tmp_path)
    index = mutate(export)
    export.write()
    before = tree_hashes(export.base)
    assert pf.main(export.args()) == 0
    skipped = [s for s in read_csv(export.out / "skipped.csv") if s["reason"] != "not_in_csv"]
    assert skipped, case
    assert str(export.line_of(index)) in {s["row"] for s in skipped}
    assert {s["reason"] for s in skipped} == {reason}
    assert all(message in s["message"] for s in skipped)
    manifest = read_csv(export.out / "manifest.csv")
    assert str(export.line_of(index)) not in {m["row"] for m in manifest}
    assert len(manifest) + len(skipped) == len(export.rows)  # every row is accounted for
    assert f"line {export.line_of(index)}" in capsys.readouterr().err

    strict_out = tmp_path / "strict"
    args = export.args("--strict")
    args[args.index("--out") + 1] = str(strict_out)
    assert pf.main(args) == 1
    err = capsys.readouterr().err
    assert "--strict" in err and message in err and f"line {export.line_of(index)}" in err
    if reason != "unreadable_image":  # CSV problems stop the run before anything is written
        assert not strict_out.exists()
    assert tree_hashes(export.base) == before


def test_conflicting_sex_skips_every_row_of_that_patient(export):
    _conflicting_sex(export)
    export.write()
    assert pf.main(export.args()) == 0
    skipped = read_csv(export.out / "skipped.csv")
    assert {s["row"] for s in skipped if s["reason"] == "conflicting_sex"} == {"3", str(len(export.rows) + 1)}


def test_sanitize_ids_rewrites_and_keeps_the_original(export):
    export.rows[1]["patient_id"] = "P-01/x"
    export.write()
    assert pf.main(export.args("--sanitize-ids")) == 0
    m = next(m for m in read_csv(export.out / "manifest.csv") if m["patient_csv"] == "P-01/x")
    assert m["patient"] == "P_01_x" and filenames.decode(m["file"]).patient == "P_01_x"


def test_sanitized_ids_that_collide_are_skipped(export):
    export.rows[1]["patient_id"] = "P-03"
    export.rows[3]["patient_id"] = "P_03"
    export.write()
    assert pf.main(export.args("--sanitize-ids")) == 0
    skipped = read_csv(export.out / "skipped.csv")
    assert {s["row"] for s in skipped if s["reason"] == "id_collision"} == {"3", "5"}


@pytest.mark.parametrize("flags,drop,expected", [
    ([], "patient_id", "no id column"),
    ([], "label", "--tscore-col"),
    (["--age-col", "years"], None, "--age-col 'years'"),
    (["--tscore-col", "t"], None, "--tscore-col 't'"),
])
def test_missing_column_is_fatal_and_lists_present_columns(export, capsys, flags, drop, expected):
    if drop:
        export.columns = [c for c in COLUMNS if c != drop]
        export.write()
    assert pf.main(export.args(*flags)) == 1
    err = capsys.readouterr().err
    present = [c for c in COLUMNS if c != drop]
    assert expected in err and "columns present: " + ", ".join(present) in err
    assert not export.out.exists()


def test_flag_conflicts_are_usage_errors(export):
    with pytest.raises(SystemExit):
        pf.main(export.args("--split", "0.5", "0.5", "0.5"))
    with pytest.raises(SystemExit):
        pf.main(export.args("--split-hips", "--crop-col", "c"))
    with pytest.raises(SystemExit):
        pf.main(export.args("--fit", "squash"))


def test_one_class_split_warns(tmp_path, capsys):
    export = Export(tmp_path, n_patients=4, kinds=["png8"])
    for row in export.rows:
        row["label"] = "0"
    export.write()
    assert pf.main(export.args()) == 0
    assert "has only class 0" in capsys.readouterr().err
