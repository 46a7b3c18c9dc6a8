import json

import cv2
import numpy as np
import pandas as pd
import pytest

from hipx.data import filenames
import synthetic

SIZE = (128, 74)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "data"
    manifest = synthetic.generate(out, 40, seed=3, size=SIZE)
    return out, manifest


def test_names_decode_to_the_manifest_values(small):
    out, manifest = small
    assert len(manifest) == 80 and set(manifest["crop"]) == {1, 2}
    for row in manifest.itertuples():
        info = filenames.decode(row.file)
        assert (info.patient, info.crop, info.label) == (row.patient, row.crop, row.label)
        assert (info.sex, info.age, info.bmi) == (row.sex, row.age, row.bmi)
        assert row.file.startswith(row.split + "/") and (out / row.file).is_file()
    assert manifest.equals(synthetic.read_manifest(out))


def test_images_are_8bit_grey_of_the_asked_size(small):
    out, manifest = small
    for file in manifest["file"][:10]:
        image = cv2.imread(str(out / file), cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint8 and image.shape == SIZE
        assert image.std() > 10  # a picture, not a blank


def test_split_by_patient_stratified_with_both_hips_together(small):
    _, manifest = small
    assert (manifest.groupby("patient")["split"].nunique() == 1).all()
    assert (manifest.groupby("patient").size() == 2).all()
    patients = manifest.drop_duplicates("patient")
    fractions = patients["split"].value_counts(normalize=True)
    assert 0.6 <= fractions["train"] <= 0.8 and fractions["val"] > 0.05 and fractions["test"] > 0.05
    for split, part in patients.groupby("split"):
        assert part["label"].nunique() == 2, split  # stratified: both classes everywhere


def test_generation_parameters_recorded(small):
    out, _ = small
    meta = json.loads((out / synthetic.METADATA).read_text())
    assert (meta["n"], meta["seed"], meta["size"]) == (40, 3, list(SIZE))


def _generated_bytes(out, seed, n=6):
    synthetic.generate(out, n, seed=seed, size=(64, 37))
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = _generated_bytes(tmp_path / "a", seed=5)
    b = _generated_bytes(tmp_path / "b", seed=5)
    c = _generated_bytes(tmp_path / "c", seed=6)
    assert a == b
    assert a.keys() != c.keys() or any(a[k] != c[k] for k in a)


def test_a_patients_pictures_do_not_depend_on_n(tmp_path):
    few = synthetic.generate(tmp_path / "few", 4, seed=2, size=(64, 37))
    many = synthetic.generate(tmp_path / "many", 9, seed=2, size=(64, 37))
    for row in few.itertuples():
        other = many[(many["patient"] == row.patient) & (many["crop"] == row.crop)].iloc[0]
        assert (tmp_path / "few" / row.file).read_bytes() == (tmp_path / "many" / other["file"]).read_bytes()


def test_masks_mark_the_femur(small):
    out, manifest = small
    for row in manifest.head(8).to_dict("records"):
        stored = cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED)
        assert stored.shape == SIZE and set(np.unique(stored)) == {0, 255}
        assert 0.05 < (stored > 0).mean() < 0.6
        mask = synthetic.region_mask(out / row["file"])
        assert mask.dtype == bool and np.array_equal(mask, stored > 0)
        assert np.array_equal(synthetic.region_mask_from_params(SIZE, row), mask)
        image = cv2.imread(str(out / row["file"]), cv2.IMREAD_GRAYSCALE)
        assert image[mask].mean() > np.median(image[~mask])  # bone is brighter than its surroundings


def test_region_mask_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="masks"):
        synthetic.region_mask(tmp_path / "train" / "x_1_0-1-60-22.5.png")


def test_picture_shows_the_bone_density(small):
    # denser cancellous bone draws a brighter femur relative to the soft tissue beside it
    out, manifest = small
    contrast = []
    for row in manifest.itertuples():
        image = cv2.imread(str(out / row.file), cv2.IMREAD_GRAYSCALE).astype(float)
        mask = synthetic.region_mask(out / row.file)
        contrast.append(image[mask].mean() - image[~mask].mean())
    rho = pd.Series(contrast).corr(manifest["trabecular_density"], method="spearman")
    assert rho > 0.5


@pytest.mark.slow
def test_oracle_beats_clinical_and_picture_alone(tmp_path):
    manifest = synthetic.generate(tmp_path / "d", 300, seed=0, size=(32, 19))
    assert 0.25 < manifest["label"].mean() < 0.45
    oracle = synthetic.oracle_auc(manifest)
    clinical = synthetic.oracle_auc(manifest, synthetic.CLINICAL_COLUMNS)
    picture = synthetic.oracle_auc(manifest, synthetic.PICTURE_COLUMNS)
    assert 0.88 < oracle < 0.98
    assert 0.6 < clinical < oracle and 0.75 < picture < oracle


def test_oracle_with_one_class_is_nan_with_warning(small):
    _, manifest = small
    with pytest.warns(UserWarning, match="class"):
        assert np.isnan(synthetic.oracle_auc(manifest.assign(label=0)))


def test_foreign_folder_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        synthetic.generate(tmp_path, 4, seed=0, size=(64, 37))
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(["--out", str(tmp_path), "--n", "4", "--size", "64", "37"])
    assert exit_info.value.code == 2 and "not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_rerun_identical_is_a_no_op_and_other_parameters_refused(tmp_path, capsys):
    out = tmp_path / "d"
    argv = ["--out", str(out), "--n", "20", "--seed", "1", "--size", "64", "37",
            "--examples", str(tmp_path / "examples.png")]
    assert synthetic.main(argv) == 0
    assert (tmp_path / "examples.png").stat().st_size > 1000
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert synthetic.main(argv[:-2]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    printed = capsys.readouterr().out
    assert "40 images of 20 patients" in printed and "nan" not in printed
    with pytest.raises(FileExistsError, match="n=20.*n=21"):
        synthetic.generate(out, 21, seed=1, size=(64, 37))


def test_site_b_is_an_older_sicker_population_with_other_pictures_in_the_same_format(tmp_path):
    a = synthetic.generate(tmp_path / "A", 150, seed=2, size=(64, 37))
    b = synthetic.generate(tmp_path / "B", 150, seed=2, size=(64, 37), site="B")
    assert b["age"].min() >= 60 and b["age"].mean() > a["age"].mean() + 5
    assert b["label"].mean() > a["label"].mean() + 0.05  # same disease model, older patients
    assert set(a["marker_corner"]) == {0, 1} and set(b["marker_corner"]) == {2, 3}
    assert set(b.columns) == set(a.columns)
    for row in b.itertuples():  # names decode to the manifest, as at site A
        info = filenames.decode(tmp_path / "B" / row.file)
        assert (info.label, info.age, info.sex) == (row.label, row.age, row.sex)
    # the marker is burned into a bottom corner: the bottom rows hold the brightest pixels, the top ones not
    for name in b["file"].iloc[:6]:
        image = cv2.imread(str(tmp_path / "B" / name), cv2.IMREAD_GRAYSCALE)
        assert image[-12:].max() > 200 and image[:12].max() < image[-12:].max() - 40
    meta = json.loads((tmp_path / "B" / synthetic.METADATA).read_text())
    assert meta["site"] == "B" and meta["site_parameters"]["noise"] == synthetic.SITES["B"].noise
    assert "site" not in json.loads((tmp_path / "A" / synthetic.METADATA).read_text())  # site A as before
    with pytest.raises(FileExistsError, match="site=B.*site=A"):
        synthetic.generate(tmp_path / "B", 150, seed=2, size=(64, 37))


def test_site_a_is_the_default_data_set_byte_for_byte(tmp_path):
    assert _generated_bytes(tmp_path / "default", seed=5) == {
        k: v for k, v in _generated_bytes_site(tmp_path / "a", seed=5, site="A").items()}
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(tmp_path / "p"), "--pelvis", "--site", "B"])


def _generated_bytes_site(out, seed, site, n=6):
    synthetic.generate(out, n, seed=seed, size=(64, 37), site=site)
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_the_command_logs_in_the_format_of_every_command(tmp_path):
    """``python synthetic.py`` logs as main.py, report.py and the others do (time, level, message;
    hipx.core.runtime.setup_logging), not in a format of its own."""
    import re
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "synthetic.py"), "--out", str(tmp_path / "d"), "--n", "4",
                           "--size", "32", "19", "--examples", str(tmp_path / "examples.png")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    log = done.stderr.splitlines()
    assert log and all(re.fullmatch(r"\d\d:\d\d:\d\d (INFO|WARNING) .+", line) for line in log), log
    assert any(line.endswith(f"INFO examples drawn to {tmp_path / 'examples.png'}") for line in log)
    assert not any("hipx.prepare.synthetic:" in line or "__main__:" in line for line in log)
    assert done.stdout.startswith(f"{tmp_path / 'd'}: 8 images of 4 patients")


def test_printed_advice_spells_the_commands_as_readme_does():
    """README says ``python main.py ...``; no message, help text or docstring of a command or of the
    package suggests ``python3 ...`` instead."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    sources = [*root.glob("*.py"), *(root / "hipx").rglob("*.py"), *(root / "scripts").glob("*.py")]
    spelled = [f"{p.relative_to(root)}:{n}" for p in sources
               for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if "python3 " in line]
    assert spelled == []


def test_worker_processes_draw_the_same_files_as_one_process(small, tmp_path, monkeypatch):
    """The demo's data are drawn on every core (issue 30); each hip has its own seed, so the files
    and the manifest are byte for byte those of one process drawing them in order."""
    import contextlib

    from hipx.prepare import synthetic as lib

    monkeypatch.setattr(lib, "_pool", lambda n: contextlib.nullcontext(None))
    out, manifest = small
    alone = tmp_path / "alone"
    assert lib.generate(alone, 40, seed=3, size=SIZE).equals(manifest)
    assert (alone / lib.MANIFEST).read_bytes() == (out / lib.MANIFEST).read_bytes()
    for name in manifest["file"].tolist() + manifest["mask"].tolist():
        assert (alone / name).read_bytes() == (out / name).read_bytes(), name
