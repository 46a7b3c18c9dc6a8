"""export.py: a run, or a fold ensemble, as one ONNX graph whose onnxruntime output equals PyTorch's, and a
preprocessing JSON from which numpy and OpenCV alone rebuild the loader's input bit for bit."""
import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import export as export_command
import main
import predict
from conftest import write_split
from hipx.core import fusion, targets
from hipx.core.cli import run_main
from hipx.data import filenames, loader
from hipx.inference import export
from hipx.models import build_model, build_model_from_checkpoint
from hipx.runs import runfiles

SIZE = (64, 37)
TOL = 1e-5  # the bound for onnxruntime against PyTorch
ORDINAL = targets.TargetSpec("ordinal", "Singh grade", 2.0, bounds=(1.0, 2.0, 3.0, 4.0, 5.0),
                             classes=tuple(f"Singh grade {g}" for g in range(1, 7)))
CONTINUOUS = targets.TargetSpec("continuous", "T-score", -2.5, mean=-2.4, sd=1.1)


# ----------------------------------------------------------------------------- runs, made without training

def save_run(folder: Path, fusion_name: str, tta: str, spec: targets.TargetSpec | None = None, seed: int = 0,
             stats: dict | None = None, norm: str = "bn", act: str = "relu") -> Path:
    """A run folder whose best.pth holds a depth-10 network with every weight and batch-norm statistic drawn
    at random (a fresh network's zero head and unit statistics would hide a misplaced channel)."""
    spec = spec or targets.TargetSpec()
    mode = fusion.mode(fusion_name)
    in_chans = 2 + (3 if mode.clinical_planes else 0)
    torch.manual_seed(seed)
    model = build_model("dense_net", in_chans=in_chans, late_fuse=mode.clinical_vector, depth=10, growth_rate=4,
                        clinical_offset=mode.clinical_offset, target=spec, norm=norm, act=act)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.2 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    config = {"model": "dense_net", "image_size": list(SIZE), "depth": 10, "growthRate": 4, "norm": norm,
              "act": act, "stem": "downsample", "fusion": fusion_name, "in_chans": in_chans, "tta": tta,
              "target": spec.kind, "target_spec": spec.to_dict(),
              "residual_head": "late" if mode.clinical_offset else None}
    stats = stats or {"names": list(loader.CLINICAL_NAMES), "mean": [0.6, 61.5, 24.2], "std": [0.49, 9.5, 3.7]}
    runfiles.save_checkpoint(folder / runfiles.BEST, model.state_dict(), config, stats, 0.4 + seed / 100, 3)
    return folder


def spread_classes(folder: Path, images) -> Path:
    """An ordinal run whose image scores spread over its classes on ``images`` (a random network scores every
    image alike): the head's weights scaled up, then its bias set so that the median image sits mid-classes."""
    state = runfiles.load_checkpoint(folder / runfiles.BEST)
    model = build_model_from_checkpoint(state)
    with torch.no_grad():
        model.classifier.weight.mul_(30.0)
        model.classifier.bias.zero_()
        runfiles.save_checkpoint(folder / runfiles.BEST, model.state_dict(), state["config"], state["clinical_stats"],
                                 state["threshold"], state["epoch"])
        p, _ = torch_scores([folder], images, tta="none")
        offsets = model.ordinal_offsets()
        h = np.log(p / (1 - p)) - float(offsets[ORDINAL.cut_class])  # the head's output
        model.classifier.bias.fill_(-float(np.median(h)) - float(offsets.mean()))
    runfiles.save_checkpoint(folder / runfiles.BEST, model.state_dict(), state["config"], state["clinical_stats"],
                             state["threshold"], state["epoch"])
    return folder


def save_group(folder: Path, fusion_name: str, tta: str) -> Path:
    """A cross-validation run group of two folds, each with its own clinical statistics and threshold."""
    save_run(folder / "fold0", fusion_name, tta, seed=1)
    save_run(folder / "fold1", fusion_name, tta, seed=2,
             stats={"names": list(loader.CLINICAL_NAMES), "mean": [0.4, 66.0, 27.0], "std": [0.5, 12.0, 5.0]})
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Test images as a data folder holds them: the run's size, larger (INTER_AREA), smaller (INTER_LINEAR),
    16-bit and colour; one BMI and one age unknown."""
    folder = tmp_path_factory.mktemp("export_images")
    paths = write_split(folder, [(f"p{i}", 1, i % 2, i % 2, None if i == 1 else 60 + 3 * i,
                                  None if i == 2 else 22.0 + i * 1.7) for i in range(3)], size=SIZE, seed=3)
    rng = np.random.default_rng(4)
    big = (rng.random((90, 52)) * 255).astype(np.uint8)
    cv2.imwrite(str(folder / filenames.encode("p3", 1, 1, 1, 77, 31.5)), big)
    deep = (rng.random((50, 29)) * 65535).astype(np.uint16)
    cv2.imwrite(str(folder / filenames.encode("p4", 1, 0, 0, 55, 19.25)), deep)
    colour = (rng.random((*SIZE, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(folder / filenames.encode("p5", 2, 1, 1, 81, 26.0)), colour)
    return sorted(folder.iterdir())


# ----------------------------------------------------------------------------- PyTorch, as predict.py scores

def torch_scores(run_dirs, files, tta="auto"):
    """Probability and predicted value of ``files`` by the run(s) in PyTorch, each network fed by
    ``loader.run_dataset`` with its own statistics, averaged over the runs as predict.py averages folds."""
    probs, values = [], []
    for folder in run_dirs:
        run = runfiles.load_run(folder)
        model = build_model_from_checkpoint(run.state)
        batch = next(iter(DataLoader(loader.run_dataset(files, run.config, run.clinical_stats), batch_size=99)))

        def forward(b):
            return model(*fusion.network_inputs(run.fusion, b["image"], b["clinical"])).float().reshape(-1)

        with torch.no_grad():
            p = fusion.probability(forward, batch, run.config.tta if tta == "auto" else tta)
            v = model.predicted_value(torch.logit(p.clamp(1e-7, 1 - 1e-7)))
        probs.append(p.double().numpy())
        values.append(None if v is None else v.double().numpy())
    return np.mean(probs, axis=0), None if values[0] is None else np.mean(values, axis=0)


CASES = {  # name: (how the run is made, its fusion mode)
    "early": (lambda d, tta, images: save_run(d, "early", tta), "early"),
    "late": (lambda d, tta, images: save_run(d, "late", tta), "late"),
    "image": (lambda d, tta, images: save_run(d, "image", tta), "image"),
    "residual": (lambda d, tta, images: save_run(d, "residual", tta), "residual"),
    "ordinal": (lambda d, tta, images: spread_classes(save_run(d, "late", tta, ORDINAL), images), "late"),
    "continuous": (lambda d, tta, images: save_run(d, "early", tta, CONTINUOUS), "early"),
    # batch-instance norm (gates drawn beyond [0, 1], which the layer clamps) and per-channel PReLU
    "bin_prelu": (lambda d, tta, images: save_run(d, "late", tta, norm="bin", act="prelu"), "late"),
    "ensemble_late": (lambda d, tta, images: save_group(d, "late", tta), "late"),
    "ensemble_early": (lambda d, tta, images: save_group(d, "early", tta), "early"),
}
# every case with and without flip TTA; the fast set holds each case once and each TTA in every kind
FAST = {("early", "flip"), ("late", "none"), ("image", "flip"), ("residual", "none"), ("ordinal", "flip"),
        ("continuous", "none"), ("bin_prelu", "flip"), ("ensemble_late", "flip"), ("ensemble_early", "none")}
PARAMS = [pytest.param((case, tta), id=f"{case}-{tta}", marks=() if (case, tta) in FAST else pytest.mark.slow)
          for case in CASES for tta in ("none", "flip")]


@pytest.fixture(scope="module", params=PARAMS)
def exported(request, tmp_path_factory, images):
    case, tta = request.param
    root = tmp_path_factory.mktemp(f"export_{case}_{tta}")
    run = CASES[case][0](root / "run", tta, images)
    out, json_path = export.export(run, root / "model.onnx")
    members = runfiles.model_runs(run)
    return {"case": case, "tta": tta, "run": run, "members": members, "onnx": out, "json": json_path}


def test_onnxruntime_equals_pytorch_on_image_files(exported, images):
    model = export.OnnxModel(exported["onnx"])
    got = model.score(images, batch_size=4)  # batches of 4 and 2: the batch dimension is free
    prob, value = torch_scores(exported["members"], images)
    assert got["probability"].shape == (len(images),)
    assert np.abs(got["probability"] - prob).max() <= TOL
    assert 0.005 < prob.min() and prob.max() < 0.995 and np.ptp(prob) > 1e-3  # a test that could fail
    spec = targets.TargetSpec.from_dict(runfiles.load_run(exported["members"][0]).config.target_spec)
    if spec.kind == "continuous":
        assert set(got) == {"probability", "predicted_value"}
        assert np.abs(got["predicted_value"] - value).max() <= TOL
    elif spec.kind == "ordinal":
        assert set(got) == {"probability", "predicted_class"} and got["predicted_class"].dtype == np.int64
        expected = np.clip(np.round(value), 0, spec.n_classes - 1).astype(int)
        assert got["predicted_class"].tolist() == expected.tolist() and len(set(expected)) >= 3
    else:
        assert set(got) == {"probability"}
    assert model.threshold == pytest.approx(np.mean([runfiles.load_run(m).threshold for m in exported["members"]]))


def test_flip_is_in_the_graph_as_the_run_validated(exported, images):
    """The graph's probability is the flip mean exactly where the run's config says --tta flip."""
    model = export.OnnxModel(exported["onnx"])
    got = model.score(images[:3])["probability"]
    with_flip, _ = torch_scores(exported["members"], images[:3], tta="flip")
    without, _ = torch_scores(exported["members"], images[:3], tta="none")
    assert np.abs(with_flip - without).max() > 10 * TOL  # the mirror changes the score
    expected = with_flip if exported["tta"] == "flip" else without
    assert np.abs(got - expected).max() <= TOL and model.tta == exported["tta"]


def test_graph_inputs_and_outputs_and_a_free_batch(exported):
    model = export.OnnxModel(exported["onnx"])
    prep = model.preprocessing
    mode = fusion.mode(CASES[exported["case"]][1])
    ensemble = exported["case"].startswith("ensemble")
    names = [i.name for i in model.session.get_inputs()]
    if ensemble:
        assert names == ["image", "clinical_raw"]
        assert prep["inputs"][0]["shape"] == ["batch", 2, *SIZE] and prep["inputs"][1]["dtype"] == "float64"
    else:
        assert names == ["image", "clinical"] if mode.clinical_vector else names == ["image"]
        assert prep["inputs"][0]["shape"] == ["batch", 5 if mode.clinical_planes else 2, *SIZE]
    assert model.session.get_inputs()[0].shape[0] == "batch"
    g = np.random.default_rng(0)
    for batch in (1, 5):
        image = g.random((batch, *prep["inputs"][0]["shape"][1:]), dtype=np.float32)
        clinical = g.normal(size=(batch, 3)) if len(names) > 1 else None
        out = model.run(image, clinical)
        assert out["probability"].shape == (batch,) and np.isfinite(out["probability"]).all()
    assert (prep["fusion"], prep["target"]["kind"]) == (
        mode.name, {"ordinal": "ordinal", "continuous": "continuous"}.get(exported["case"], "binary"))
    assert prep["bytes"] == exported["onnx"].stat().st_size


# ----------------------------------------------------------------------------- the JSON, followed with numpy and cv2

def decode(path: Path, rules: dict) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    return image.astype(np.float32) / np.float32(rules["scale"][image.dtype.name])


def enhanced(gray: np.ndarray, e: dict) -> np.ndarray:
    u8 = np.clip(gray * e["to_uint8"]["scale"] + e["to_uint8"]["offset"], 0, 255).astype(np.uint8)
    clahe = cv2.createCLAHE(clipLimit=e["clahe"]["clip_limit"], tileGridSize=tuple(e["clahe"]["tile_grid_size"]))
    c = clahe.apply(u8).astype(np.float32) / 255.0
    smooth = cv2.GaussianBlur(c, tuple(e["gaussian_blur"]["ksize"]), e["gaussian_blur"]["sigma"])
    k = e["sobel"]["ksize"]
    sx, sy = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=k), cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=k)
    edges = np.sqrt(sx * sx + sy * sy)
    edges /= max(float(np.percentile(edges, e["edge_percentile"])), e["edge_floor"])
    w = e["edge_weight"]
    return np.clip((1 - w) * c + w * np.minimum(edges, 1.0), 0.0, 1.0)


def input_from_json(path: Path, clinical_raw, prep: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """The graph's image input (C, H, W) and clinical input for one file, from the JSON's fields only."""
    im = prep["image"]
    gray = decode(path, im["decode"])
    h, w = im["size"]
    if gray.shape != (h, w):
        name = im["resize"]["interpolation_if_taller" if gray.shape[0] > h else "interpolation_otherwise"]
        gray = cv2.resize(gray, (w, h), interpolation=getattr(cv2, name))
    gray = np.clip(gray, 0.0, 1.0).astype(np.float32)
    q = im["quantise"]
    channels = np.round(np.stack([gray, enhanced(gray, im["enhance"])]) * np.float32(q["scale"])).astype(np.uint8)
    image = channels.astype(np.float32) / np.float32(q["scale"])
    inputs = {i["name"]: i for i in prep["inputs"]}
    if "clinical_raw" in inputs:  # a fold ensemble: the values themselves, each fold normalises them
        return image, np.asarray(clinical_raw, dtype=inputs["clinical_raw"]["dtype"])
    c = prep["clinical"]
    z = (np.asarray(clinical_raw, dtype=np.float64) - np.asarray(c["mean"])) / np.asarray(c["std"])
    z = np.where(np.isnan(z), 0.0, z).astype(np.float32)  # missing: the training mean
    if inputs["image"]["shape"][1] > len(im["channels"]):  # early fusion: constant planes
        image = np.concatenate([image, np.broadcast_to(z[:, None, None], (len(z), h, w))])
    return image, (z if "clinical" in inputs else None)


def test_json_preprocessing_rebuilds_the_loaders_input_bit_for_bit(exported, images):
    """What numpy and OpenCV make of the files, following the JSON alone, is what predict.py feeds each
    network (``loader.run_dataset``), to the bit; a fold ensemble's image is the folds' common two channels."""
    prep = export.OnnxModel(exported["onnx"]).preprocessing
    assert prep == runfiles.read_json(exported["json"])
    served = {}
    for member in exported["members"]:
        trained = runfiles.load_run(member)
        served[member] = loader.run_dataset(images, trained.config, trained.clinical_stats)
    shapes = set()
    for i, path in enumerate(images):
        shapes.add(cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape)
        image, vector = input_from_json(path, filenames.decode(path).clinical, prep)
        assert image.dtype == np.float32
        for sample in (dataset[i] for dataset in served.values()):
            assert image.tobytes() == sample["image"].numpy()[:len(image)].tobytes(), path.name
            if vector is not None and vector.dtype == np.float32:
                assert vector.tobytes() == sample["clinical"].numpy().tobytes(), path.name
    assert len(shapes) == 4 and any(math.isnan(v) for p in images for v in filenames.decode(p).clinical)


def test_onnx_scores_are_what_predict_writes(exported, images, tmp_path):
    """Inputs made from the JSON alone, scored by onnxruntime: predict.py's CSV (9 digits; for a graded target
    its predicted T-score to 4 digits, its class by name), for one run or a fold ensemble's mean."""
    model = export.OnnxModel(exported["onnx"])
    built = [input_from_json(p, filenames.decode(p).clinical, model.preprocessing) for p in images]
    vectors = None if built[0][1] is None else np.stack([v for _, v in built])
    got = model.run(np.stack([image for image, _ in built]), vectors)
    predict.main(["--run", str(exported["run"]), *map(str, images), "--out", str(tmp_path / "p.csv"),
                  "--device", "cpu"])
    with open(tmp_path / "p.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert np.abs(got["probability"] - np.array([float(r["probability"]) for r in rows])).max() <= TOL
    assert [int(p >= model.threshold) for p in got["probability"]] == [int(r["prediction"]) for r in rows]
    spec = model.target
    if spec.kind == "continuous":
        assert got["predicted_value"] == pytest.approx([float(r["predicted_T-score"]) for r in rows], rel=1e-3)
    elif spec.kind == "ordinal":
        assert [spec.classes[k] for k in got["predicted_class"]] == [r["predicted_class"] for r in rows]
    if exported["case"].startswith("ensemble"):
        assert [f["mean"] for f in model.preprocessing["clinical"]["per_fold"]] == [[0.6, 61.5, 24.2],
                                                                                  [0.4, 66.0, 27.0]]
        assert model.threshold == pytest.approx((0.41 + 0.42) / 2)


def test_predict_with_the_export_writes_the_runs_csv(exported, images, tmp_path):
    """predict.py --run model.onnx writes what predict.py --run RUN writes: the same rows, columns, decisions
    and predicted measures (a graded target's T-score to its 4 written digits), probabilities within 1e-5;
    early, late, image-only, residual, graded runs and fold ensembles."""
    written = {}
    for name, run in (("torch", exported["run"]), ("onnx", exported["onnx"])):
        predict.main(["--run", str(run), *map(str, images), "--out", str(tmp_path / f"{name}.csv"), "--device", "cpu"])
        with open(tmp_path / f"{name}.csv", newline="") as fh:
            written[name] = list(csv.DictReader(fh))
    a, b = written["torch"], written["onnx"]
    assert [list(r) for r in a] == [list(r) for r in b] and len(a) == len(images)
    threshold = export.OnnxModel(exported["onnx"]).threshold
    for x, y in zip(a, b):
        assert abs(float(x["probability"]) - float(y["probability"])) <= TOL
        assert x["file"] == y["file"]
        assert x["prediction"] == y["prediction"] or abs(float(x["probability"]) - threshold) <= TOL
        if "predicted_T-score" in x:
            assert float(x["predicted_T-score"]) == pytest.approx(float(y["predicted_T-score"]), abs=2e-3)
        if "predicted_class" in x:
            assert x["predicted_class"] == y["predicted_class"]
    assert len({r["prediction"] for r in a}) == 2 or np.ptp([float(r["probability"]) for r in a]) > 1e-3


def test_trained_run_exports_and_scores_its_test_images_as_main_did(tmp_path):
    """One epoch of main.py (early fusion, flip TTA), exported with the command: onnxruntime on the test
    images gives the run's own test_predictions.csv."""
    data = tmp_path / "data"
    write_split(data / "train", [(f"t{i}", 1 + i % 2, i % 2, i % 3 == 0, 50 + i, 20.0 + i / 3) for i in range(12)])
    write_split(data / "val", [(f"v{i}", 1, i % 2, 1, 60 + i, None if i == 0 else 25.5) for i in range(6)], seed=1)
    write_split(data / "test", [(f"s{i}", 1, i % 2, 0, 70 + i, 30.25) for i in range(6)], seed=2)
    main.main(["--model", "dense_net", "--depth", "10", "--data_dir", str(data), "--image_size", *map(str, SIZE),
               "--epoch", "1", "--batch_size", "4", "--workers", "0", "--device", "cpu", "--save_dir", "r",
               "--fold", "x", "--out_root", str(tmp_path / "outs"), "--tta", "flip", "--bootstrap", "0"])
    run = tmp_path / "outs" / "r" / "foldx"
    assert export_command.main(["--run", str(run), "--out", str(tmp_path / "m.onnx")]) == 0
    files = loader.list_split(data, "test")
    got = export.OnnxModel(tmp_path / "m.onnx").score(files)["probability"]
    with open(run / "test_predictions.csv", newline="") as fh:
        expected = {r["file"]: float(r["probability"]) for r in csv.DictReader(fh)}
    assert np.abs(got - np.array([expected[f.name] for f in files])).max() <= TOL


# ----------------------------------------------------------------------------- refusals, one line each

def one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        run_main(export_command.main, argv)
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_not_a_run_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = one_line_error(capsys, ["--run", str(tmp_path / "empty"), "--out", str(tmp_path / "m.onnx")])
    assert "neither a run folder (no best.pth) nor a cross-validation run group" in err
    err = one_line_error(capsys, ["--run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.onnx")])
    assert f"no run folder {tmp_path / 'nowhere'}" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "best.pth").write_bytes(b"not a checkpoint")
    err = one_line_error(capsys, ["--run", str(tmp_path / "bad"), "--out", str(tmp_path / "m.onnx")])
    assert f"cannot load checkpoint {tmp_path / 'bad' / 'best.pth'}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "empty"]  # nothing written


@pytest.fixture(scope="module")
def image_export(tmp_path_factory):
    """An image-only run exported with the command."""
    root = tmp_path_factory.mktemp("image_export")
    run = save_run(root / "run", "image", "none")
    assert export_command.main(["--run", str(run), "--out", str(root / "m.onnx")]) == 0
    return root


def test_existing_out_is_refused_without_overwrite(image_export, tmp_path, capsys):
    run, out = image_export / "run", tmp_path / "m.onnx"
    out.write_bytes(b"keep")
    err = one_line_error(capsys, ["--run", str(run), "--out", str(out)])
    assert f"--out {out}: {out} exists; nothing was written. Pass --overwrite" in err
    assert out.read_bytes() == b"keep" and not (tmp_path / "m.preprocessing.json").exists()
    err = one_line_error(capsys, ["--run", str(run), "--out", str(tmp_path / "m.bin")])
    assert "--out " in err and "ending in .onnx" in err
    export_command.main(["--run", str(run), "--out", str(out), "--overwrite"])
    assert out.read_bytes() == (image_export / "m.onnx").read_bytes()  # the same graph from the same run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.preprocessing.json"]  # no temp files
    out.unlink()  # the JSON alone also blocks a new export: it would be replaced
    err = one_line_error(capsys, ["--run", str(run), "--out", str(out)])
    assert "m.preprocessing.json exists" in err


def test_an_onnx_file_and_a_json_of_another_export_are_refused(image_export, tmp_path):
    for name in ("m.onnx", "m.preprocessing.json"):
        (tmp_path / name).write_bytes((image_export / name).read_bytes())
    assert export.OnnxModel(tmp_path / "m.onnx").fusion == "image"
    (tmp_path / "m.onnx").write_bytes((tmp_path / "m.onnx").read_bytes() + b" ")
    with pytest.raises(export.ExportError, match="describes another graph"):
        export.OnnxModel(tmp_path / "m.onnx")
    (tmp_path / "m.preprocessing.json").unlink()
    with pytest.raises(export.ExportError, match="m.preprocessing.json is missing"):
        export.OnnxModel(tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"image of shape \(2, 5, 64, 37\); the graph takes \(batch, 2, 64, 37\)"):
        export.OnnxModel(image_export / "m.onnx").run(np.zeros((2, 5, *SIZE), np.float32))
