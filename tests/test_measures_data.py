"""The measurement behind the label (T-score, BMD, grade) kept through preprocessing into
manifest.csv, images without a binary label in unscored/, measures.read, and the demo's T-score."""
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from hipx.prepare import datafolder
from hipx.data import filenames
from hipx.core import measures
import preprocess_filenames as pf
import synthetic
from test_preprocess import Export, output_images, read_csv


@pytest.fixture
def export(tmp_path):
    return Export(tmp_path, n_patients=4, kinds=["png8"])
from test_roi import HIP


def _values(rows, column):
    return {r["image"]: r[column] for r in rows}


def _close(text, csv_text):
    return math.isclose(float(text), float(csv_text.replace(",", ".")))


def test_tscore_survives_split_hips_and_both_crops_carry_it(tmp_path):
    export = Export(tmp_path, n_patients=6, kinds=["pelvis"])
    export.columns = ["patient_id", "image", "T_score", "sex", "age", "bmi"]
    for i, row in enumerate(export.rows):
        row["T_score"] = ["-3.1", "-1,2", "0.4", "-2.5", "-2.6", "1"][i % 6]
    export.rows[-1]["T_score"] = "-0.7"  # P00's second image: its own value
    export.write()
    assert pf.main(export.args("--tscore-col", "t_score", "--split-hips")) == 0
    manifest = read_csv(export.out / "manifest.csv")
    tscore = _values(export.rows, "T_score")
    assert len(manifest) == 2 * len(export.rows)
    for m in manifest:
        assert m["measure_name"] == "T-score" and _close(m["measure"], tscore[m["source"]])
        assert m["label"] == str(int(float(m["measure"]) <= -2.5))
    for source in tscore:
        assert sorted(m["hip"] for m in manifest if m["source"] == source) == ["left", "right"]
    read = measures.read(export.out)
    assert read.name == "T-score" and read.kind.cut == -2.5
    files = output_images(export.out)
    assert len(read.values) == len(files)
    by_file = {Path(m["file"]).name: float(m["measure"]) for m in manifest}
    assert read.of(files) == [by_file[f.name] for f in files]


@pytest.mark.parametrize("kinds", [["dcm"], ["dcm1"]])
def test_grade_survives_a_dicom_input(tmp_path, kinds):
    export = Export(tmp_path, n_patients=4, kinds=kinds)
    export.columns = ["patient_id", "image", "label", "singh", "sex", "age", "bmi"]
    for i, row in enumerate(export.rows):
        row["singh"] = str(1 + i % 6)
    export.write()
    assert pf.main(export.args("--grade-col", "Singh")) == 0
    manifest = read_csv(export.out / "manifest.csv")
    assert all(m["source"].endswith(".dcm") for m in manifest if m["source"] != "p00b.png")
    grade = _values(export.rows, "singh")
    assert {m["source"]: m["measure"] for m in manifest} == grade  # written as whole numbers
    assert {m["measure_name"] for m in manifest} == {"grade"}
    by_name = {Path(m["file"]).name: float(grade[m["source"]]) for m in manifest}
    files = output_images(export.out)
    assert measures.read(export.out).of(files) == [by_name[f.name] for f in files]


def test_grade_survives_roi_femur(tmp_path):
    raw = tmp_path / "export"
    synthetic.generate_pelvis(raw, 3, seed=1, hip_size=HIP, upside_down=0.5)
    table = pd.read_csv(raw / "patient_list.csv")
    table["grade"] = [2, 5, 4][: len(table)]
    table.to_csv(raw / "patient_list.csv", index=False)
    out = tmp_path / "out"
    assert pf.main(["--images", str(raw / "raw"), "--csv", str(raw / "patient_list.csv"), "--out", str(out),
                    "--roi", "femur", "--size", "64", "37", "--grade-col", "grade"]) == 0
    manifest = read_csv(out / "manifest.csv")
    assert len(manifest) == 2 * len(table)
    expected = {image: str(g) for image, g in zip(table["image"], table["grade"])}
    for m in manifest:
        assert m["measure"] == expected[m["source"]] and m["roi"] in ("femur", "half")
    assert set(measures.read(out).values.values()) == {float(g) for g in table["grade"]}


def _graded(export, grades, labels):
    """Rewrite the export with a Singh grade per row and the given labels ('' = none)."""
    export.columns = ["patient_id", "image", "label", "singh", "sex", "age", "bmi"]
    for row, grade, label in zip(export.rows, grades, labels):
        row["singh"], row["label"] = grade, label
    export.write()


def test_rows_with_a_grade_but_no_label_go_to_unscored(tmp_path, capsys):
    export = Export(tmp_path, n_patients=12, kinds=["png8"])
    grades = ["1", "6", "3", "4", "2", "5", "1", "6", "4", "2", "5", "3", "1"]
    labels = ["1" if g in "12" else "0" if g in "56" else "" for g in grades]
    labels[12] = "1"  # P00's second image: labelled, while P02's and P03's only images are not
    _graded(export, grades, labels)
    assert pf.main(export.args("--grade-col", "singh", "--folds", "2", "--split", "0.5", "0.25", "0.25")) == 0
    out = export.out
    manifest = read_csv(out / "manifest.csv")
    unscored = [m for m in manifest if m["split"] == "unscored"]
    expected = sorted(r["image"] for r in export.rows if r["label"] == "")
    assert sorted(m["source"] for m in unscored) == expected and len(expected) == 4
    for m in unscored:
        assert m["file"].startswith("unscored/") and "_NA-" in m["file"]
        assert m["label"] == "NA" and m["fold"] == "NA" and m["measure"] in ("3", "4")
        assert filenames.decode(m["file"]).label is None
    assert [p.relative_to(out).as_posix() for p in filenames.list_unscored(out)] == sorted(m["file"] for m in unscored)
    # train/val/test and the folds hold the labelled images only, every one of them
    listed = [p for split in ("train", "val", "test") for p in filenames.list_split(out, split)]
    assert sorted(p.name for p in listed) == sorted(Path(m["file"]).name for m in manifest if m["split"] != "unscored")
    assert all(filenames.decode(p).label in (0, 1) for p in listed)
    scored_patients = {m["patient"] for m in manifest if m["split"] != "unscored"}
    assert {m["patient"] for m in manifest if m["fold"] != "NA"} <= scored_patients
    assert {"P02", "P03"}.isdisjoint(scored_patients)
    read = measures.read(out)
    assert read.name == "grade" and read.of(filenames.list_unscored(out)) == [3.0, 4.0, 4.0, 3.0]  # P02 P03 P08 P11
    printed = capsys.readouterr()
    assert "unscored: 4 images of 4 patients with a grade but no label" in printed.out
    total = next(line for line in printed.out.splitlines() if line.startswith("total"))
    assert total.split()[2] == str(len(manifest) - 4)
    assert "4 of them without a label to unscored/" in (out / "preprocess.log").read_text()
    assert "patient(s) have images in unscored/ and labelled ones" not in printed.err  # P02, P03 have no label


def test_a_patient_with_labelled_and_unscored_images_is_named(tmp_path, capsys):
    export = Export(tmp_path, n_patients=4, kinds=["png8"])
    _graded(export, ["1", "6", "2", "5", "3"], ["1", "0", "1", "0", ""])  # P00's second image: grade 3
    assert pf.main(export.args("--grade-col", "singh")) == 0
    assert "1 patient(s) have images in unscored/ and labelled ones (e.g. P00)" in capsys.readouterr().err
    manifest = read_csv(export.out / "manifest.csv")
    assert sorted((m["crop"], m["split"] == "unscored") for m in manifest if m["patient"] == "P00") == [
        ("1", False), ("2", True)]


def test_without_a_measure_column_an_empty_label_is_still_skipped(tmp_path):
    export = Export(tmp_path, n_patients=4, kinds=["png8"])
    export.rows[2]["label"] = ""
    export.write()
    assert pf.main(export.args()) == 0
    assert not (export.out / "unscored").exists() and filenames.list_unscored(export.out) == []
    skipped = read_csv(export.out / "skipped.csv")
    assert [(s["row"], s["reason"]) for s in skipped] == [(str(export.line_of(2)), "missing_value")]
    assert "measure" not in read_csv(export.out / "manifest.csv")[0]
    assert measures.read(export.out) is None


def test_empty_label_and_empty_grade_is_skipped_and_a_labelled_row_keeps_an_empty_measure(tmp_path):
    export = Export(tmp_path, n_patients=6, kinds=["png8"])
    _graded(export, ["1", "", "", "5", "2", "6", "1"], ["1", "", "0", "0", "1", "0", "1"])
    assert pf.main(export.args("--grade-col", "singh")) == 0
    skipped = read_csv(export.out / "skipped.csv")
    assert [(s["row"], s["reason"]) for s in skipped] == [(str(export.line_of(1)), "missing_value")]
    assert "label is missing (column 'label') and so is the grade ('' in column 'singh')" in skipped[0]["message"]
    manifest = {m["source"]: m for m in read_csv(export.out / "manifest.csv")}
    assert manifest[export.rows[2]["image"]]["measure"] == "" and manifest[export.rows[2]["image"]]["label"] == "0"
    assert len(measures.read(export.out).values) == len(manifest) - 1


@pytest.mark.parametrize("flag,cell,message", [
    ("--grade-col", "three", "grade 'three' is not a number (column 'measure_cell')"),
    ("--grade-col", "2.5", "grade '2.5' is not a whole number (column 'measure_cell'); grades are ordered levels "
                                 "such as Singh 1-6"),
    ("--bmd-col", "850", "BMD '850' is outside the plausible range 0.05..3 (column 'measure_cell')"),
    ("--tscore-col", "-2.x", "T-score '-2.x' is not a number (column 'measure_cell')"),
])
def test_a_bad_measure_cell_gives_one_line_naming_the_row_and_column(tmp_path, capsys, flag, cell, message):
    export = Export(tmp_path, n_patients=4, kinds=["png8"])
    export.columns = ["patient_id", "image", "measure_cell", "sex", "age", "bmi"] + (
        [] if flag == "--tscore-col" else ["label"])
    for row in export.rows:
        row["measure_cell"] = "-1" if flag == "--tscore-col" else "1"
    export.rows[3]["measure_cell"] = cell
    export.write()
    assert pf.main(export.args(flag, "measure_cell")) == 0
    skipped = read_csv(export.out / "skipped.csv")
    assert [(s["row"], s["message"]) for s in skipped] == [(str(export.line_of(3)), message)]
    warned = [line for line in capsys.readouterr().err.splitlines() if "(skipped)" in line]
    assert warned == [f"WARNING patient_list.csv line {export.line_of(3)}: {message} (skipped)"]
    assert pf.main(export.args(flag, "measure_cell", "--strict", "--overwrite")) == 1
    assert f"line {export.line_of(3)}: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--grade-col", "--bmd-col", "--tscore-col"])
def test_an_empty_measure_column_is_named_empty_before_anything_is_written(tmp_path, capsys, flag):
    export = Export(tmp_path, n_patients=4, kinds=["png8"])
    export.columns = ["patient_id", "image", "measure_cell", "sex", "age", "bmi"] + (
        [] if flag == "--tscore-col" else ["label"])
    for i, row in enumerate(export.rows):
        row["measure_cell"] = "NA" if i % 2 else ""
    export.write()
    assert pf.main(export.args(flag, "measure_cell")) == 1
    err = capsys.readouterr().err
    assert (f"{flag} 'measure_cell': the column is empty in {export.csv} (none of its {len(export.rows)} rows has a "
            "value)") in err and "Traceback" not in err and "no such column" not in err
    assert not export.out.exists()


def test_grade_and_bmd_exclude_each_other_and_help_names_the_flags(export, capsys):
    with pytest.raises(SystemExit):
        pf.main(export.args("--grade-col", "a", "--bmd-col", "b"))
    assert "give either --grade-col or --bmd-col, not both" in capsys.readouterr().err
    help_text = pf.build_parser().format_help()
    assert "--grade-col NAME" in help_text and "--bmd-col NAME" in help_text and "unscored" in help_text


def test_the_resume_fingerprint_covers_the_measure_flags(export):
    def fingerprint(*extra):
        args = pf.build_parser().parse_args(export.args(*extra))
        return datafolder.settings_fingerprint(args, b"csv", export.raw)[0]

    plain = fingerprint()
    assert len({plain, fingerprint("--grade-col", "g"), fingerprint("--bmd-col", "g"),
                fingerprint("--tscore-col", "g"), fingerprint("--grade-col", "h")}) == 5


def test_an_interrupted_run_with_a_grade_column_is_refused_with_another(tmp_path, capsys):
    export = Export(tmp_path, n_patients=4, kinds=["png8"])
    _graded(export, ["1", "3", "5", "6", "2"], ["1", "", "0", "0", "1"])
    assert pf.main(export.args("--grade-col", "singh")) == 0
    marker = {"fingerprint": datafolder.settings_fingerprint(
        pf.build_parser().parse_args(export.args("--grade-col", "singh")), export.csv.read_bytes(),
        export.raw.resolve())[0]}
    (export.out / datafolder.MARKER).write_text(json.dumps(marker))
    (export.out / "manifest.csv").unlink()
    assert pf.main(export.args("--bmd-col", "singh")) == 1
    assert "interrupted run made from a different CSV or settings" in capsys.readouterr().err
    assert pf.main(export.args("--grade-col", "singh")) == 0  # the same command finishes it
    assert len(filenames.list_unscored(export.out)) == 1
    assert pf.main(export.args("--overwrite")) == 0  # --overwrite removes unscored/'s images too
    assert filenames.list_unscored(export.out) == []


def test_synthetic_manifest_t_score_is_at_or_below_the_cut_exactly_where_label_is_1(tmp_path):
    manifest = synthetic.generate(tmp_path / "d", 40, seed=0, size=(64, 37))
    written = pd.read_csv(tmp_path / "d" / "manifest.csv")
    assert (written["measure_name"] == "T-score").all()
    assert ((written["measure"] <= -2.5) == (written["label"] == 1)).all()
    assert 0 < written["label"].sum() < len(written)
    read = measures.read(tmp_path / "d")
    files = [f for split in ("train", "val", "test") for f in filenames.list_split(tmp_path / "d", split)]
    assert all((v <= -2.5) == (filenames.decode(f).label == 1) for f, v in zip(files, read.of(files)))
    assert len(manifest) == len(files)


def test_split_column_is_not_needed_on_unscored_rows(tmp_path):
    export = Export(tmp_path, n_patients=6, kinds=["png8"])
    _graded(export, ["1", "6", "3", "2", "5", "4", "1"], ["1", "0", "", "1", "0", "", "1"])
    export.columns.append("part")
    for row, part in zip(export.rows, ["train", "val", "", "test", "", "train", "train"]):
        row["part"] = part
    export.write()
    assert pf.main(export.args("--grade-col", "singh", "--split-col", "part")) == 0
    manifest = {m["patient"]: m["split"] for m in read_csv(export.out / "manifest.csv")}
    assert manifest == {"P00": "train", "P01": "val", "P02": "unscored", "P03": "test", "P05": "unscored"}
    skipped = read_csv(export.out / "skipped.csv")
    assert [(s["row"], s["reason"]) for s in skipped] == [(str(export.line_of(4)), "unparsable_value")]
    assert "split '' (column 'part') must be train, val or test" in skipped[0]["message"]
