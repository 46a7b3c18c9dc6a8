"""predict.py on a hospital's raw files: whole AP pelvis views (PNG and DICOM) go through the run's
recorded preprocessing (preprocessing.py) and score exactly as the data folder's crops of the same
images; an image without a femur gets its line; an image-only run needs no clinical values."""
import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import export as export_command
import main
import predict  # the command, driven as a user runs it
import preprocess_filenames as pf
import visualize_gradcam as vg
from hipx.data import filenames, imaging, preprocessing, roi
from hipx.inference import export, heatmaps
from hipx.inference import predict as scoring
from hipx.models import build_model
from hipx.prepare import datafolder, synthetic
from hipx.runs import runfiles
from test_imaging import write_dicom

HIP = (214, 102)  # each hip of a generated view: small, so that a view is cut in a fraction of a second
SPLITS = ("train", "val", "test")


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A hospital export of 12 AP pelvis views -- every third written as DICOM (12-bit with a rescale and a
    window; MONOCHROME1 without a file suffix) -- its data folder made with --roi femur, and the
    clinical values of each raw file as a --csv."""
    root = tmp_path_factory.mktemp("raw")
    export = root / "export"
    synthetic.generate_pelvis(export, 12, seed=4, hip_size=HIP, upside_down=0.2)
    rows = read_csv(export / "patient_list.csv")
    for i, row in enumerate(rows):
        if i % 3 != 1:
            continue
        png = export / "raw" / row["image"]
        grey = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE).astype(np.uint16)
        if i % 2:
            row["image"] = png.stem + ".dcm"
            write_dicom(export / "raw" / row["image"], grey * 16 + 100, slope=1, intercept=-100, center=2040,
                        width=4100)
        else:
            row["image"] = png.stem  # DICOM without a suffix, told by its 'DICM' magic
            write_dicom(export / "raw" / row["image"], (255 - grey) * 16, photometric="MONOCHROME1")
        png.unlink()
    with open(export / "patient_list.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    data = root / "data"
    assert pf.main(["--images", str(export / "raw"), "--csv", str(export / "patient_list.csv"), "--out", str(data),
                    "--roi", "femur", "--size", "64", "37", "--split", "0.5", "0.25", "0.25",
                    "--tscore-col", "t_score"]) == 0
    manifest = read_csv(data / "manifest.csv")
    clinical = root / "clinical.csv"  # the values the crops' names carry, by raw file name
    with open(clinical, "w", newline="") as fh:
        fh.write("file,sex,age,bmi\n")
        for m in manifest:
            if m["hip"] == "right":
                sex, age, bmi = filenames.decode(m["file"]).clinical
                fh.write(f"{m['source']},{sex!r},{age!r},{bmi!r}\n")
    return dict(root=root, raw=export / "raw", data=data, manifest=manifest, clinical=clinical)


@pytest.fixture(scope="module")
def run(world):
    """A tiny early-fusion run trained on the data folder, its preprocessing recorded as main.py will."""
    outs = world["root"] / "outs"
    main.main(["--model", "dense_net", "--depth", "10", "--data_dir", str(world["data"]), "--image_size", "64", "37",
               "--epoch", "1", "--batch_size", "4", "--workers", "0", "--device", "cpu", "--save_dir", "r",
               "--fold", "x", "--out_root", str(outs), "--bootstrap", "0"])
    folder = outs / "r" / "foldx"
    assert preprocessing.record_preprocessing(world["data"], folder) == folder / preprocessing.FILE
    return folder


def image_only_run(folder, data_dir):
    """An image-only run folder trained on ``data_dir`` (weights as built: the scores need not be good, only
    repeatable), as tests/test_runfiles.py saves one."""
    folder.mkdir()
    model = build_model("dense_net", in_chans=2, late_fuse=False, depth=10, growth_rate=4)
    config = {"model": "dense_net", "fusion": "image", "in_chans": 2, "image_size": [64, 37], "depth": 10,
              "growthRate": 4, "norm": "bn", "act": "relu", "stem": "downsample", "data_dir": str(data_dir)}
    runfiles.save_checkpoint(folder / runfiles.BEST, model.state_dict(), config,
                             {"mean": [0.5, 60, 25], "std": [0.5, 10, 4]}, 0.5, 1)
    return folder


@pytest.fixture(scope="module")
def image_run(world):
    folder = image_only_run(world["root"] / "image_only", world["data"])
    preprocessing.record_preprocessing(world["data"], folder)
    return folder


def crop_probabilities(run, world):
    """{(raw file name, hip): (probability, crop box)} of the data folder's crops, scored as they are."""
    rows = scoring.predict(run, [world["data"] / s for s in SPLITS], as_trained="crops")
    by_file = {Path(r["file"]).relative_to(world["data"]).as_posix(): r["probability"] for r in rows}
    return {(m["source"], m["hip"]): (by_file[m["file"]], tuple(map(int, m["roi_box"].split())))
            for m in world["manifest"]}


# ----------------------------------------------------------------------------- the record

def test_the_data_folder_records_its_pipeline_and_the_run_copies_it(world, run):
    pre = preprocessing.Preprocessing.from_data_folder(world["data"])
    assert (pre.size, pre.roi, pre.split_hips, pre.fit, pre.box_cols) == ((64, 37), "femur", True, "pad", None)
    assert pre.decoding == imaging.DECODING and pre.roi_parameters == roi.parameters() and not pre.assumed
    assert pre.differences() == []
    recorded = json.loads((run / preprocessing.FILE).read_text())
    assert recorded["data_folder"] == str(world["data"].resolve())
    assert recorded["roi"]["aspect"] == 64 / 37 and recorded["decoding"]["dicom"]["MONOCHROME1"].startswith("inverted")
    assert preprocessing.run_preprocessing(run) == pre == preprocessing.Preprocessing.from_dict(pre.to_dict())
    # a data folder made before the record: its flags, the decoding and the finder's parameters assumed
    old = world["root"] / "old_data"
    old.mkdir()
    config = json.loads((world["data"] / datafolder.CONFIG).read_text())
    del config["preprocessing"]
    (old / datafolder.CONFIG).write_text(json.dumps(config))
    assumed = preprocessing.Preprocessing.from_data_folder(old)
    assert (assumed.size, assumed.roi, assumed.split_hips) == (pre.size, pre.roi, pre.split_hips)
    assert assumed.assumed == ("decoding", "checks", "roi parameters")
    # the demo data folder (synthetic.py) records nothing: nothing is copied, runs score files as they are
    assert preprocessing.record_preprocessing(world["raw"], world["root"]) is None
    assert preprocessing.run_preprocessing(world["root"] / "nowhere") is None


def test_apply_makes_the_data_folders_images_bit_for_bit(world):
    pre = preprocessing.Preprocessing.from_data_folder(world["data"])
    by_source = {}
    for m in world["manifest"]:
        by_source.setdefault(m["source"], []).append(m)
    assert any(not Path(s).suffix for s in by_source) and any(s.endswith(".dcm") for s in by_source)
    for source, entries in by_source.items():
        crops = pre.apply(world["raw"] / source)
        assert [c.side for c in crops] == [m["hip"] for m in entries] == ["right", "left"]
        for crop, m in zip(crops, entries):
            assert np.array_equal(crop.image, cv2.imread(str(world["data"] / m["file"]), cv2.IMREAD_GRAYSCALE))
            assert " ".join(map(str, crop.box)) == m["roi_box"] and crop.found


def test_split_hips_and_whole_image_pipelines_and_the_export_box(tmp_path):
    img = np.tile(np.arange(101, dtype=np.uint8), (60, 1)) * 2
    hips = preprocessing.Preprocessing(size=(32, 20), split_hips=True).cut(img).crops
    assert [(c.side, c.box) for c in hips] == [("right", (0, 0, 50, 60)), ("left", (51, 0, 101, 60))]
    for crop, part in zip(hips, imaging.split_hips(img)):
        assert np.array_equal(crop.image, imaging.fit_image(part, (32, 20), "pad"))
    (whole,) = preprocessing.Preprocessing(size=(30, 50), fit="stretch").cut(img).crops
    assert whole.side == "" and whole.box == (0, 0, 101, 60) and whole.image.shape == (30, 50)
    # the export's box per row (--box-cols): boxes on the raw image; a new file without one is refused
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), img)
    boxed = preprocessing.Preprocessing(size=(32, 20), split_hips=True, box_cols=("a", "b", "c", "d"))
    assert [c.box for c in boxed.apply(path, box=(10, 5, 90, 55))] == [(10, 5, 50, 55), (50, 5, 90, 55)]
    with pytest.raises(preprocessing.PreprocessingError, match=r"--box-cols a b c d"):
        boxed.apply(path)
    with pytest.raises(imaging.OddImageError, match=r"x\.png: blank or near-constant"):
        cv2.imwrite(str(path), np.full((60, 101), 7, np.uint8))
        boxed.apply(path, box=(0, 0, 101, 60))


# ----------------------------------------------------------------------------- predict.py on raw files

def test_raw_pelvis_files_score_as_their_preprocessed_crops(world, run, tmp_path):
    out = tmp_path / "raw.csv"
    rows = predict.main(["--run", str(run), str(world["raw"]), "--csv", str(world["clinical"]), "--out", str(out),
                         "--device", "cpu"])
    expected = crop_probabilities(run, world)
    written = read_csv(out)
    assert list(written[0]) == ["file", "probability", "prediction", "side", "box_x0", "box_y0", "box_x1", "box_y1",
                                "note"]
    assert len(rows) == len(written) == len(expected) == 24
    assert {Path(r["file"]).name for r in rows} == {m["source"] for m in world["manifest"]}  # PNG, .dcm, no suffix
    for r, w in zip(rows, written):
        probability, box = expected[(Path(r["file"]).name, r["side"])]
        assert r["probability"] == pytest.approx(probability, abs=1e-6)
        assert (r["box_x0"], r["box_y0"], r["box_x1"], r["box_y1"]) == box
        assert w["note"] == "" and w["prediction"] in ("0", "1")
    assert np.ptp([r["probability"] for r in rows]) > 1e-4  # the network tells the crops apart


@pytest.mark.parametrize("which", ["run", "image_run"])
def test_an_export_cuts_raw_files_as_the_run_does(world, which, request, tmp_path):
    """export.py writes the run's preprocessing into its JSON, and predict.py --run model.onnx cuts the raw
    PNG and DICOM views by it: the run's own CSV (rows per hip, boxes, notes), probabilities within 1e-5."""
    run = request.getfixturevalue(which)
    onnx = tmp_path / "m.onnx"
    assert export_command.main(["--run", str(run), "--out", str(onnx)]) == 0
    recorded = export.OnnxModel(onnx).raw_preprocessing
    assert recorded == preprocessing.run_preprocessing(run) and recorded.roi == "femur"
    flat = tmp_path / "scans"
    flat.mkdir()
    cv2.imwrite(str(flat / "flat.png"), np.full((120, 200), 90, np.uint8))  # nothing to cut: a row with a note
    table = tmp_path / "clinical.csv"
    table.write_text(world["clinical"].read_text() + "flat.png,1,70,25\n")
    clinical = [] if which == "image_run" else ["--csv", str(table)]
    written = {}
    for name, model in (("torch", run), ("onnx", onnx)):
        predict.main(["--run", str(model), str(world["raw"]), str(flat), *clinical, "--out",
                      str(tmp_path / f"{name}.csv"), "--device", "cpu"])
        written[name] = read_csv(tmp_path / f"{name}.csv")
    a, b = written["torch"], written["onnx"]
    assert len(a) == len(b) == 25 and list(a[0]) == list(b[0])
    threshold = export.OnnxModel(onnx).threshold
    for x, y in zip(a, b):
        keys = [k for k in x if k not in ("probability", "prediction")]
        assert [x[k] for k in keys] == [y[k] for k in keys]
        if x["probability"]:
            assert abs(float(x["probability"]) - float(y["probability"])) <= 1e-5
            # the threshold is a validation image's probability: that very crop may fall either side of it
            assert x["prediction"] == y["prediction"] or abs(float(x["probability"]) - threshold) <= 1e-5
    assert "flat.png: blank or near-constant image" in b[-1]["note"] and b[-1]["probability"] == ""
    assert np.ptp([float(r["probability"]) for r in b if r["probability"]]) > 1e-4


def test_an_export_of_a_run_without_a_record_refuses_dicom(world, tmp_path):
    bare = image_only_run(tmp_path / "bare", tmp_path / "gone")
    assert export_command.main(["--run", str(bare), "--out", str(tmp_path / "m.onnx")]) == 0
    assert runfiles.read_json(tmp_path / "m.preprocessing.json")["raw_preprocessing"] is None
    dicom = sorted(world["raw"].glob("*.dcm"))[0]
    with pytest.raises(SystemExit, match=r"\.dcm: a DICOM file is a raw radiograph, and --run .*m\.onnx records no "
                                         r"preprocessing \(m\.preprocessing\.json has no raw_preprocessing\)"):
        predict.main(["--run", str(tmp_path / "m.onnx"), str(dicom), "--out", str(tmp_path / "p.csv")])
    assert not (tmp_path / "p.csv").exists()


# ----------------------------------------------------------------------------- heatmaps of raw files

@pytest.mark.parametrize("which", ["run", "image_run"])
def test_heatmaps_of_raw_files_draw_the_crops_predict_scored(world, which, request, tmp_path, monkeypatch):
    """visualize_gradcam.py --image on raw PNG and DICOM views: one picture per hip, named by side, of the
    very crop predict.py scored (the network's input, bit for bit), with predict.py's probability."""
    run = request.getfixturevalue(which)
    raw = [sorted(world["raw"].glob("*.png"))[0], sorted(world["raw"].glob("*.dcm"))[0],
           next(p for p in sorted(world["raw"].iterdir()) if not p.suffix)]
    clinical = [] if which == "image_run" else ["--csv", str(world["clinical"])]
    drawn = []
    render = heatmaps.render_case
    monkeypatch.setattr(heatmaps, "render_case", lambda case, *a, **k: drawn.append(case) or render(case, *a, **k))
    out = tmp_path / "cams"
    result = vg.main(["--run", str(run), "--image", *map(str, raw), *clinical, "--method", "gradcam", "--out",
                      str(out), "--device", "cpu"])
    rows = scoring.predict(run, raw, world["clinical"], as_trained="auto")
    assert len(result["cases"]) == len(drawn) == len(rows) == 6 and result["not_drawn"] == []
    pre = preprocessing.run_preprocessing(run)
    trained = runfiles.load_run(run)
    for case, row, info in zip(drawn, rows, result["cases"]):
        assert (str(case.path), case.side, case.box) == (row["file"], row["side"], (row["box_x0"], row["box_y0"],
                                                                                   row["box_x1"], row["box_y1"]))
        assert case.probability == pytest.approx(row["probability"], abs=1e-6)
        assert info["side"] == row["side"] and info["label"] is None
        # the crop drawn is the one predict.py scored: the pipeline's crop through the run's loader
        (crop,) = [c for c in pre.apply(case.path) if c.side == case.side]
        served = scoring.loader.run_dataset([case.path], trained.config, trained.clinical_stats,
                                            clinical=[np.zeros(3)], images=[crop.image])[0]["image"][0].numpy()
        assert np.array_equal(case.image, served) and case.original_size == crop.image.shape
        png = out / f"{case.path.stem}_{case.side}_gradcam.png"
        assert str(png) in result["written"] and np.load(png.with_suffix(".npy")).shape == (64, 37)
    text = heatmaps.caption(drawn[0], 0.5)
    assert "true: unknown" in text and "(right hip), box x" in text
    assert np.ptp([c.probability for c in drawn]) > 1e-4


def test_heatmaps_say_where_no_femur_is_found(world, image_run, tmp_path, capsys):
    flat = np.full((120, 200), 90, np.uint8)  # two flat greys: no femoral head
    flat[:, 100:] = 130
    cv2.imwrite(str(tmp_path / "flat.png"), flat)
    good = sorted(world["raw"].glob("*.png"))[0]
    result = vg.main(["--run", str(image_run), "--image", str(tmp_path / "flat.png"), str(good), "--method", "gradcam",
                      "--out", str(tmp_path / "cams"), "--device", "cpu", "--no_npy"])
    printed = capsys.readouterr().out
    assert f"{tmp_path / 'flat.png'}: no heatmap, no femur found (right hip: femoral head not found" in printed
    assert [c["side"] for c in result["cases"]] == ["right", "left"] and len(result["not_drawn"]) == 1
    assert sorted(p.name for p in (tmp_path / "cams").iterdir()) == [f"{good.stem}_left_gradcam.png",
                                                                    f"{good.stem}_right_gradcam.png"]
    with pytest.raises(SystemExit, match=r"nothing to draw: .*flat\.png: not scored: no femur found"):
        vg.main(["--run", str(image_run), "--image", str(tmp_path / "flat.png"), "--method", "gradcam",
                 "--out", str(tmp_path / "none"), "--device", "cpu"])
    with pytest.raises(SystemExit, match=r"--save names one picture but 2 cases were cut \(one per hip\)"):
        vg.main(["--run", str(image_run), "--image", str(good), "--save", str(tmp_path / "one.png"), "--device", "cpu"])
    assert not (tmp_path / "none").exists() and not (tmp_path / "one.png").exists()


def test_as_trained_raw_and_crops_say_what_the_files_are(world, run, tmp_path):
    one = sorted(world["raw"].glob("*.dcm"))[0]
    raw = scoring.predict(run, [one], world["clinical"], as_trained="raw")
    auto = scoring.predict(run, [one], world["clinical"], as_trained="auto")
    assert raw == auto and [r["side"] for r in auto] == ["right", "left"]
    # a data folder's crop is scored as it is under auto: the columns of before, no raw columns
    crop = world["data"] / world["manifest"][0]["file"]
    assert list(scoring.predict(run, [crop], as_trained="auto")[0]) == ["file", "probability", "prediction"]
    # the same crop renamed needs --as-trained crops: auto would cut it as a raw radiograph
    renamed = tmp_path / "scan.png"
    shutil.copy(crop, renamed)
    (tmp_path / "c.csv").write_text("file,sex,age,bmi\nscan.png,1,60,25\n")
    assert "side" in scoring.predict(run, [renamed], tmp_path / "c.csv", as_trained="auto")[0]
    assert "side" not in scoring.predict(run, [renamed], tmp_path / "c.csv", as_trained="crops")[0]


def test_an_image_without_a_femur_gets_one_clear_line(world, run, tmp_path, capsys):
    flat = np.full((120, 200), 90, np.uint8)  # two flat greys: no edges, no femoral head
    flat[:, 100:] = 130
    folder = tmp_path / "scans"
    (folder / "deeper").mkdir(parents=True)
    cv2.imwrite(str(folder / "deeper" / "flat.png"), flat)
    cv2.imwrite(str(folder / "blank.png"), np.full((120, 200), 60, np.uint8))
    good = sorted(world["raw"].glob("*.png"))[0]
    shutil.copy(good, folder / good.name)
    table = tmp_path / "clinical.csv"
    table.write_text(world["clinical"].read_text() + "flat.png,1,70,25\nblank.png,0,60,NA\n")
    out = tmp_path / "p.csv"
    rows = predict.main(["--run", str(run), str(folder), "--csv", str(table), "--out", str(out), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "2 predictions" in printed and "2 not scored (the note column says why)" in printed
    written = {(Path(r["file"]).name, r["side"]): r for r in read_csv(out)}
    assert set(written) == {(good.name, "right"), (good.name, "left"), ("flat.png", ""), ("blank.png", "")}
    assert written[("flat.png", "")]["probability"] == "" and written[("flat.png", "")]["prediction"] == ""
    assert written[("flat.png", "")]["note"].startswith("not scored: no femur found (right hip: femoral head not found")
    assert "blank or near-constant image" in written[("blank.png", "")]["note"]
    assert sum(r["prediction"] is not None for r in rows) == 2
    # nothing scored at all: the reasons are still written, and the exit is not 0
    with pytest.raises(SystemExit, match=r"nothing was scored: .*flat\.png: not scored: no femur found"):
        predict.main(["--run", str(run), str(folder / "deeper"), "--csv", str(table), "--out", str(tmp_path / "q.csv"),
                      "--device", "cpu"])
    assert read_csv(tmp_path / "q.csv")[0]["note"].startswith("not scored: no femur found")


def test_image_only_run_scores_raw_files_and_crops_without_clinical_values(world, image_run, tmp_path):
    rows = predict.main(["--run", str(image_run), str(world["raw"]), "--out", str(tmp_path / "p.csv"),
                         "--device", "cpu"])
    expected = crop_probabilities(image_run, world)
    assert len(rows) == 24
    for r in rows:
        assert r["probability"] == pytest.approx(expected[(Path(r["file"]).name, r["side"])][0], abs=1e-6)
    # issue 33: a crop whose name carries no sex/age/BMI is scored by an image-only run
    plain = tmp_path / "scan 1.png"
    shutil.copy(world["data"] / world["manifest"][0]["file"], plain)
    (row,) = scoring.predict(image_run, [plain], as_trained="crops")
    assert row["probability"] == pytest.approx(expected[(world["manifest"][0]["source"], "right")][0], abs=1e-6)


def test_a_clinical_run_asks_for_the_raw_files_values(world, run, tmp_path):
    with pytest.raises(SystemExit, match=r"no sex/age/BMI for .*V00000\.png.*--csv"):
        predict.main(["--run", str(run), str(world["raw"]), "--out", str(tmp_path / "p.csv"), "--device", "cpu"])
    assert not (tmp_path / "p.csv").exists()


def test_a_run_without_its_record_falls_back_to_its_data_folder(world, run, tmp_path):
    older = tmp_path / "older"
    shutil.copytree(run, older)
    (older / preprocessing.FILE).unlink()
    assert preprocessing.run_preprocessing(older) == preprocessing.Preprocessing.from_data_folder(world["data"])
    one = sorted(world["raw"].glob("*.dcm"))
    a = scoring.predict(run, one, world["clinical"], as_trained="auto")
    b = scoring.predict(older, one, world["clinical"], as_trained="auto")
    assert [r["probability"] for r in a] == [r["probability"] for r in b]


def test_what_cannot_be_repeated_is_refused(world, run, tmp_path, monkeypatch):
    dicom = sorted(world["raw"].glob("*.dcm"))[0]
    # a run with no record anywhere (its data folder gone): a DICOM file cannot be cut, nor can --as-trained raw
    bare = image_only_run(tmp_path / "bare", tmp_path / "gone")
    with pytest.raises(SystemExit, match=r"\.dcm: a DICOM file is a raw radiograph, and --run .*records no "
                                         r"preprocessing"):
        predict.main(["--run", str(bare), str(dicom), "--out", str(tmp_path / "p.csv"), "--device", "cpu"])
    with pytest.raises(SystemExit, match=r"--as-trained raw: --run .* records no preprocessing"):
        predict.main(["--run", str(bare), str(dicom), "--as-trained", "raw", "--out", str(tmp_path / "p.csv"),
                      "--device", "cpu"])
    # the femur finder changed since the data folder was made: its crops, not this code's, are the run's
    monkeypatch.setattr(roi, "BOX", {**roi.BOX, "below": 5.0})
    with pytest.raises(SystemExit, match=r"does not repeat how the images were made: the femur finder's parameters "
                                         r"\(box\)"):
        predict.main(["--run", str(run), str(dicom), "--csv", str(world["clinical"]), "--out",
                      str(tmp_path / "p.csv"), "--device", "cpu"])
    assert not (tmp_path / "p.csv").exists()


def test_to_dicom_stores_the_generated_views_as_a_cr_modality_would(tmp_path, capsys):
    """scripts/to_dicom.py (README's new-scans example): 12-bit MONOCHROME1 DICOM with a rescale and a window
    that decode to the PNG's picture and cut into the same hips; the scout view has none; --clinical lists
    every file for predict.py --csv."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("to_dicom", Path(__file__).resolve().parents[1] / "scripts" /
                                                  "to_dicom.py")
    to_dicom = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(to_dicom)
    synthetic.generate_pelvis(tmp_path / "new", 2, seed=1, hip_size=HIP, upside_down=0.0)
    assert to_dicom.main([str(tmp_path / "new"), str(tmp_path / "scans"), "--scout", "--clinical",
                          str(tmp_path / "c.csv")]) == 0
    assert "3 DICOM files written" in capsys.readouterr().out
    pre = preprocessing.Preprocessing(size=(64, 37), roi="femur", split_hips=True)
    patients = read_csv(tmp_path / "new" / "patient_list.csv")
    for row in patients:
        png, dcm = tmp_path / "new" / "raw" / row["image"], tmp_path / "scans" / f"{Path(row['image']).stem}.dcm"
        assert imaging.is_dicom(dcm)
        grey, decoded = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE), imaging.read_image(dcm)
        assert decoded.shape == grey.shape and np.corrcoef(grey.ravel(), decoded.ravel())[0, 1] > 0.99
        assert [c.box for c in pre.apply(dcm)] == [c.box for c in pre.apply(png)]
    assert not any(c.found for c in pre.apply(tmp_path / "scans" / "scout.dcm"))
    table = scoring.read_clinical_csv(tmp_path / "c.csv")
    assert sorted(table) == ["V00000.dcm", "V00001.dcm", "scout.dcm"] and np.isnan(table["scout.dcm"]).all()
    assert table["V00000.dcm"] == tuple(float(patients[0][c]) for c in ("sex", "age", "bmi"))


def test_folders_are_searched_recursively_as_pretrain_lists_them(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "masks").mkdir()
    for name in ("a/x.png", "a/b/y.dcm", "a/masks/m.png", "a/.hidden.png", "a/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    write_dicom(tmp_path / "a" / "b" / "DICOMDIR_IMG", np.zeros((4, 4), np.uint16))
    found = scoring.collect_images([tmp_path / "a"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/b/DICOMDIR_IMG", "a/b/y.dcm", "a/x.png"]
    assert found == imaging.find_images([tmp_path / "a"])
    from hipx.training import selfsup  # pretrain.py's listing, until it calls imaging.find_images itself
    assert selfsup.find_images([tmp_path / "a"]) == found
