"""Class activation maps (cam.py), heatmaps.py and the picture-writing script (visualize_gradcam.py), train-free:
tiny random networks saved as runs of main.py over a tiny generated data set."""
import csv
import json
import math
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hipx.inference import cam
from hipx.data import filenames
from hipx.data import loader
from hipx.runs import runfiles
import visualize_gradcam as vg  # the command, driven as a user runs it
from hipx.core.choices import OUTCOMES
from hipx.inference import heatmaps
from hipx.models import build_model
from hipx.prepare import synthetic

torch.set_num_threads(1)

H, W = 64, 37


def make_run(root, data, name="dense_net", late_fuse=True, seed=0, threshold=0.5):
    """A run folder as main.py leaves it: config.json and best.pth with the configuration."""
    torch.manual_seed(seed)
    in_chans = loader.IMAGE_CHANNELS + (0 if late_fuse else len(loader.CLINICAL_NAMES))
    model = build_model(name, in_chans=in_chans, late_fuse=late_fuse, depth=10, growth_rate=4)
    config = {"model": name, "late_fuse": late_fuse, "in_chans": in_chans, "depth": 10, "growthRate": 4,
              "norm": "bn", "act": "relu", "stem": "downsample", "image_size": [H, W], "drop_rate": 0.0,
              "data_dir": str(data), "seed": seed}
    stats = loader.ClinicalStats.fit([filenames.decode(p) for p in loader.list_split(data, "train")])
    run = root / "outs" / "r" / f"fold_{name}_{'LF' if late_fuse else 'EF'}"
    runfiles.write_json(run / "config.json", config)
    runfiles.save_checkpoint(run / runfiles.BEST, model.state_dict(), config, stats.to_dict(), threshold, 1)
    return run


def load(run):
    """(network, run) as visualize_gradcam.py loads them (heatmaps.load_network)."""
    trained = runfiles.load_run(run)
    return heatmaps.load_network(trained), trained


def inputs(files, trained):
    return loader.run_dataset(files, trained.config, trained.clinical_stats)


def first_test_sample(run):
    model, trained = load(run)
    sample = inputs(heatmaps.test_files(trained)[:1], trained)[0]
    return model, sample["image"], sample["clinical"] if trained.fusion == "late" else None


def no_hooks_left(model):
    return all(not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks
               and not m._backward_pre_hooks for m in model.modules())


@pytest.fixture
def lf_run(tiny_data, tmp_path):
    return make_run(tmp_path, tiny_data, late_fuse=True)


# -- the maps ------------------------------------------------------------------------------------

@pytest.mark.parametrize("late_fuse", [False, True], ids=["early", "late"])
@pytest.mark.parametrize("name", ["dense_net", "densenet121"])
def test_gradcam_map_for_both_families_and_fusion_modes(tiny_data, tmp_path, name, late_fuse):
    model, image, clinical = first_test_sample(make_run(tmp_path, tiny_data, name, late_fuse))
    assert image.shape == (model.in_chans, H, W)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()  # the caller's mode must come back
    heat = cam.compute_cam(model, image, clinical)
    assert heat.shape == (H, W) and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0
    assert heat.max() in (0.0, 1.0)  # normalised by its peak
    assert no_hooks_left(model)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())  # eval: BN stats untouched
    assert np.array_equal(cam.compute_cam(model, image, clinical), heat)


@pytest.mark.parametrize("method", cam.METHODS)
@pytest.mark.parametrize("late_fuse", [False, True], ids=["early", "late"])
def test_every_method_gives_a_normalised_map_and_releases_hooks(tiny_data, tmp_path, method, late_fuse):
    model, image, clinical = first_test_sample(make_run(tmp_path, tiny_data, late_fuse=late_fuse))
    refs = torch.rand(3, *image.shape)
    heat = cam.compute_cam(model, image, clinical, method, window=8, batch_size=64, references=refs)
    assert heat.shape == (H, W) and np.isfinite(heat).all() and 0.0 <= heat.min() <= heat.max() <= 1.0
    assert no_hooks_left(model) and all(p.grad is None for p in model.parameters())


def cut_at_block(model, block):
    """(activation, rest): the network cut after ``features.<block>``."""
    k = [n for n, _ in model.features.named_children()].index(block)
    return (lambda x: model.features[:k + 1](x)), (lambda a: model.features[k + 1:](a))


def cut_at_transition_norm(model, transition="transition2"):
    """Cut inside a transition, after its norm (which torchvision follows by an in-place ReLU)."""
    k = [n for n, _ in model.features.named_children()].index(transition)
    t = getattr(model.features, transition)
    return (lambda x: t.norm(model.features[:k](x))), \
        (lambda a: model.features[k + 1:](t.pool(t.conv(torch.relu(a)))))


def reference_gradcam(model, image, clinical, cut, plus=False):
    """Grad-CAM(++) without hooks: the network cut in two and differentiated with autograd."""
    head, rest = cut
    with torch.enable_grad():
        a = head(image[None]).detach().requires_grad_(True)
        logit = model.forward_head(model.final_act(rest(a)), None if clinical is None else clinical[None])
        (g,) = torch.autograd.grad(logit.sum(), a)
    a, g = a[0].detach().double().numpy(), g[0].double().numpy()
    if plus:  # Chattopadhay et al. 2018, Eq. 19 with the exponential of the logit
        denom = 2 * g ** 2 + a.sum(axis=(1, 2), keepdims=True) * g ** 3
        alpha = np.divide(g ** 2, denom, out=np.zeros_like(g), where=denom != 0)
        weights = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    else:
        weights = g.mean(axis=(1, 2))
    raw = np.maximum(np.tensordot(weights, a, axes=1), 0)
    up = F.interpolate(torch.from_numpy(raw)[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    up = up.numpy()
    return up / up.max() if up.max() > 0 else up


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
@pytest.mark.parametrize("late_fuse", [False, True], ids=["early", "late"])
def test_gradcam_matches_hand_computation(tiny_data, tmp_path, method, late_fuse):
    model, image, clinical = first_test_sample(make_run(tmp_path, tiny_data, late_fuse=late_fuse))
    # the last block (default), an earlier one, and a layer followed by torchvision's in-place ReLU:
    # the map must use that layer's own output, not the ReLU's
    for layer, cut in (("features.denseblock3", cut_at_block(model, "denseblock3")),
                       ("features.denseblock2", cut_at_block(model, "denseblock2")),
                       ("features.transition2.norm", cut_at_transition_norm(model))):
        expected = reference_gradcam(model, image, clinical, cut, plus=method == "gradcam++")
        got = cam.compute_cam(model, image, clinical, method, layer=None if layer.endswith("3") else layer)
        assert expected.max() == 1.0, layer  # a map with something in it
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=layer)


class RegionModel(nn.Module):
    """logit = sum of channel 0 over a fixed region: the evidence lies exactly there."""

    def __init__(self, region):
        super().__init__()
        self.features = nn.Sequential(OrderedDict(conv=nn.Conv2d(2, 1, 1, bias=False)))
        nn.init.constant_(self.features.conv.weight, 0.0)
        with torch.no_grad():
            self.features.conv.weight[0, 0] = 1.0
        self.register_buffer("region", torch.as_tensor(region, dtype=torch.float32))
        self.default_cam_layer = "features.conv"

    def forward(self, image):
        return (self.features(image)[:, 0] * self.region).sum(dim=(1, 2))


def test_occlusion_and_scorecam_find_the_region_the_logit_depends_on():
    region = np.zeros((H, W), np.float32)
    region[20:36, 10:22] = 1
    image = torch.zeros(2, H, W)
    image[0] = torch.from_numpy(region)
    model = RegionModel(region)
    heat = cam.compute_cam(model, image, method="occlusion", window=4)
    assert heat[region > 0].min() > 0 and heat.max() == 1.0
    assert heat[:12].max() == 0 and heat[48:].max() == 0  # no window there touches the region
    assert heatmaps.localisation_ratio(heat, region) > 0.5 / region.mean()
    scored = cam.compute_cam(model, image, method="scorecam")
    assert heatmaps.localisation_ratio(scored, region) == pytest.approx(1 / region.mean(), rel=0.05)


class BoneModel(RegionModel):
    """logit = -(mean brightness of a region) + 0.5: bright bone argues against osteoporosis, the way
    a trained network reads the femur. Osteoporosis is an absence, of nothing in the picture."""

    def forward(self, image):
        return 0.5 - torch.relu(self.features(image)[:, 0] * self.region).sum(dim=(1, 2)) / self.region.sum()


def test_expected_gradients_find_missing_bone_where_gradcam_cannot():
    region = np.zeros((H, W), np.float32)
    region[20:36, 10:22] = 1
    model = BoneModel(region)
    references = torch.full((4, 2, H, W), 0.2)
    references[:, 0, 20:36, 10:22] = 0.8  # typical patients: bright bone
    image = torch.full((2, H, W), 0.2)
    image[0, 20:36, 10:22] = 0.3  # this one: faint bone, a higher osteoporosis logit
    assert cam.predict_logit(model, image) > cam.predict_logit(model, references[0])
    # evidence for osteoporosis against the zero activation: none anywhere (all-zero map)
    assert not cam.compute_cam(model, image, method="gradcam").any()
    # against typical patients: exactly where the bone is missing
    heat = cam.compute_cam(model, image, method="expected_gradients", references=references, smooth=0)
    assert heat.max() == 1.0 and heat[region == 0].max() == 0.0
    assert heatmaps.localisation_ratio(heat, region) == pytest.approx(1 / region.mean())
    smoothed = cam.compute_cam(model, image, method="expected_gradients", references=references)
    assert 0.5 / region.mean() < heatmaps.localisation_ratio(smoothed, region) < 1 / region.mean()


@pytest.mark.parametrize("late_fuse", [False, True], ids=["early", "late"])
def test_expected_gradients_add_up_to_the_logit_difference(tiny_data, tmp_path, late_fuse):
    model, image, clinical = first_test_sample(make_run(tmp_path, tiny_data, late_fuse=late_fuse))
    model.eval()
    torch.manual_seed(1)
    refs = image[None].repeat(3, 1, 1, 1)
    refs[:, :2] = torch.rand(3, 2, H, W)  # early fusion: the patient's clinical planes are kept
    net = cam.ImageOnly(model, clinical)
    attribution = cam.expected_gradients_attribution(net, image[None], refs, 2, steps=64, batch_size=64)
    assert attribution.shape == (2, H, W)
    with torch.no_grad():
        gap = float(net(image[None])[0] - net(refs).mean())
    assert float(attribution.sum()) == pytest.approx(gap, rel=0.05, abs=1e-3)  # completeness
    same = cam.compute_cam(model, image, clinical, "expected_gradients", references=image[None].repeat(2, 1, 1, 1))
    assert not same.any()  # an image like the references: no evidence either way


def test_expected_gradients_need_fitting_references(lf_run):
    model, image, clinical = first_test_sample(lf_run)
    with pytest.raises(ValueError, match="needs reference inputs"):
        cam.compute_cam(model, image, clinical, "expected_gradients")
    with pytest.raises(ValueError, match=r"references must be \(N, C, H, W\)"):
        cam.compute_cam(model, image, clinical, "expected_gradients", references=torch.rand(2, 2, H + 1, W))


def test_references_are_a_fixed_draw_of_the_runs_training_images(lf_run, tiny_data, tmp_path):
    _, state = load(lf_run)
    refs = heatmaps.reference_inputs(state, n=3)
    assert refs.shape == (3, 2, H, W) and torch.equal(refs, heatmaps.reference_inputs(state, n=3))
    train = inputs(loader.list_split(tiny_data, "train"), state)
    pool = [train[i]["image"] for i in range(len(train))]
    assert all(any(torch.equal(r, t) for t in pool) for r in refs)
    assert len(heatmaps.reference_inputs(state, n=1000)) == len(pool)  # at most the whole split
    with pytest.raises(FileNotFoundError, match="--data_dir"):
        heatmaps.reference_inputs(state, tmp_path / "moved")


def test_cli_expected_gradients(lf_run, tiny_data):
    result = vg.main(["--run", str(lf_run), "--index", "0", "--method", "expected_gradients", "--references", "3",
                      "--steps", "2"])
    png = Path(result["written"][0])
    assert png.name.endswith("_expected_gradients.png")
    read_png(png)
    heat = np.load(png.with_suffix(".npy"))
    assert heat.shape == (H, W) and np.isfinite(heat).all() and 0 <= heat.min() <= heat.max() <= 1
    with pytest.raises(SystemExit, match="--smooth"):
        vg.main(["--run", str(lf_run), "--index", "0", "--method", "expected_gradients", "--smooth", "-1"])


def test_localisation_ratio_by_hand():
    mask = np.zeros((4, 5))
    mask[:2, :2] = 1  # 4 of 20 pixels: share 0.2
    assert heatmaps.localisation_ratio(np.ones((4, 5)), mask) == pytest.approx(1.0)  # flat map: chance
    only_inside = mask * 0.7
    assert heatmaps.localisation_ratio(only_inside, mask) == pytest.approx(5.0)  # all mass on the region
    half = np.where(mask > 0, 1.0, 0.25)  # 4 inside of 4 + 16 * 0.25 = 8 in all
    assert heatmaps.localisation_ratio(half, mask) == pytest.approx(0.5 / 0.2)
    assert math.isnan(heatmaps.localisation_ratio(np.zeros((4, 5)), mask))
    assert math.isnan(heatmaps.localisation_ratio(np.ones((4, 5)), np.zeros((4, 5))))


def test_all_zero_map_stays_zero():
    heat = cam.to_heatmap(torch.zeros(3, 2), (H, W))
    assert heat.shape == (H, W) and not heat.any()
    heat = cam.to_heatmap(torch.tensor([[float("nan"), 1.0], [-2.0, 4.0]]), (8, 8))
    assert np.isfinite(heat).all() and heat.max() == 1.0 and heat.min() == 0.0


# -- errors ---------------------------------------------------------------------------------------

def test_unknown_layer_lists_valid_ones_and_wrong_layers_release_hooks(lf_run):
    model, image, clinical = first_test_sample(lf_run)
    with pytest.raises(ValueError, match=r"unknown layer 'features\.denseblock9'.*features\.denseblock3"):
        cam.compute_cam(model, image, clinical, layer="features.denseblock9")
    with pytest.raises(ValueError, match="convolutional feature map"):
        cam.compute_cam(model, image, clinical, layer="classifier")  # (B, 1): not a map
    assert no_hooks_left(model)
    toy = RegionModel(np.ones((H, W)))
    toy.spare = nn.Conv2d(2, 1, 1)  # never called
    for method in ("gradcam", "scorecam"):
        with pytest.raises(ValueError, match="'spare' is not used"):
            cam.compute_cam(toy, torch.zeros(2, H, W), method=method, layer="spare")
    assert no_hooks_left(toy)


def test_missing_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no run folder .*holding best\.pth"):
        vg.main(["--run", str(tmp_path / "outs" / "nope"), "--index", "0"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no best\.pth"):
        runfiles.load_run(tmp_path / "empty")


def test_checkpoint_without_configuration(lf_run):
    model, _ = load(lf_run)
    torch.save(model.state_dict(), lf_run / runfiles.BEST)  # a bare state dict
    with pytest.raises(ValueError, match="needs the run's configuration"):
        runfiles.load_run(lf_run)
    torch.save({"format": runfiles.CHECKPOINT_FORMAT, "model": model.state_dict(), "clinical_stats": {},
                "threshold": 0.5, "epoch": 1}, lf_run / runfiles.BEST)
    with pytest.raises(ValueError, match="lacks config.*configuration"):
        vg.main(["--run", str(lf_run), "--index", "0"])
    runfiles.save_checkpoint(lf_run / runfiles.BEST, model.state_dict(), {"model": "dense_net"}, {}, 0.5, 1)
    with pytest.raises(ValueError, match="configuration lacks fusion, in_chans"):
        runfiles.load_run(lf_run)


def test_index_out_of_range_names_valid_range(lf_run):
    with pytest.raises(IndexError, match=r"--index 6 is out of range.*6 images.*valid indices are 0\.\.5"):
        vg.main(["--run", str(lf_run), "--index", "0", "6"])
    with pytest.raises(IndexError, match=r"0\.\.5"):
        vg.main(["--run", str(lf_run), "--index", "-1"])


def test_images_of_the_wrong_kind_are_refused_naming_the_file(lf_run, tmp_path):
    cube = tmp_path / filenames.encode("p1", 1, 1, 1, 70, 22.5, ext=".npy")
    np.save(cube, np.zeros((3, H, W), np.float32))
    with pytest.raises(ValueError, match=rf"{cube.name}.*expected a 2-D numeric array"):
        vg.main(["--run", str(lf_run), "--image", str(cube)])
    garbage = tmp_path / filenames.encode("p2", 1, 0, 0, 60, 25.0)
    garbage.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=rf"{garbage.name}.*cannot decode"):
        vg.main(["--run", str(lf_run), "--image", str(garbage)])
    unnamed = tmp_path / "hip.png"
    cv2.imwrite(str(unnamed), np.zeros((H, W), np.uint8))
    with pytest.raises(filenames.FileNameError, match="hip.png.*does not match"):
        vg.main(["--run", str(lf_run), "--image", str(unnamed)])
    with pytest.raises(FileNotFoundError, match="no such file"):
        vg.main(["--run", str(lf_run), "--image", str(tmp_path / "absent.png")])


def test_bad_flags_fail_at_once(capsys):
    for argv in (["--run", "x", "--index", "0", "--method", "lime"], ["--run", "x", "--select", "tx"],
                 ["--run", "x"], ["--run", "x", "--all", "--index", "1"], ["--run", "x", "--all", "--top", "0"]):
        with pytest.raises(SystemExit):
            vg.build_parser().parse_args(argv)
    assert "invalid choice" in capsys.readouterr().err


# -- the pictures -----------------------------------------------------------------------------------

def read_png(path):
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None and image.ndim == 3 and min(image.shape[:2]) > 100
    return image


def test_default_method_is_the_one_that_localises_on_the_demo():
    # README "Does the heatmap fall on the bone?": expected_gradients 2.22, Grad-CAM below chance
    assert vg.build_parser().parse_args(["--run", "r", "--all"]).method == "expected_gradients"


def test_cli_writes_png_and_npy_for_one_index(lf_run, tiny_data):
    result = vg.main(["--run", str(lf_run), "--index", "0", "--method", "gradcam"])
    first = loader.list_split(tiny_data, "test")[0]
    png = lf_run / "cams" / f"{first.stem}_gradcam.png"
    image = read_png(png)
    assert image.shape[0] > image.shape[1]  # a portrait hip crop stays portrait
    heat = np.load(png.with_suffix(".npy"))
    assert heat.shape == (H, W) and np.isfinite(heat).all() and 0 <= heat.min() <= heat.max() <= 1
    assert result["written"] == [str(png), str(png.with_suffix(".npy"))]
    assert result["cases"][0]["file"] == first.name and result["cases"][0]["label"] == filenames.decode(first).label
    assert not list((lf_run / "cams").glob("*.tmp"))  # written atomically


@pytest.mark.parametrize("late_fuse", [False, True], ids=["early", "late"])
def test_cli_sheet_of_all_test_images(tiny_data, tmp_path, late_fuse):
    run = make_run(tmp_path, tiny_data, late_fuse=late_fuse)
    out = tmp_path / "pictures"
    vg.main(["--run", str(run), "--all", "--sheet", "--out", str(out), "--method", "gradcam++"])
    read_png(out / "sheet_gradcampp.png")
    assert np.load(out / "sheet_gradcampp.npy").shape == (6, H, W)


def test_save_writes_exactly_one_file(lf_run, tmp_path):
    target = tmp_path / "images" / "Grad_CAM.png"
    vg.main(["--run", str(lf_run), "--index", "1", "2", "--sheet", "--save", str(target), "--no_npy",
             "--method", "gradcam"])
    read_png(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["Grad_CAM.png"]
    with pytest.raises(SystemExit, match="add --sheet"):
        vg.main(["--run", str(lf_run), "--index", "1", "2", "--save", str(target)])


def test_select_takes_the_most_confident_of_each_kind(lf_run, tiny_data):
    files = loader.list_split(tiny_data, "test")
    # made-up probabilities: the selection reads only the CSV and the run's threshold (0.5)
    probs = [0.9, 0.7, 0.2, 0.95, 0.4, 0.05]
    rows = [{"file": p.name, "label": filenames.decode(p).label, "probability": q, "prediction": int(q >= 0.5)}
            for p, q in zip(files, probs)]
    runfiles.write_csv(lf_run / heatmaps.PREDICTIONS, rows)
    labels = [r["label"] for r in rows]
    expect = {kind: sorted([r for r in rows if (r["label"], int(r["probability"] >= 0.5)) == OUTCOMES[kind]],
                           key=lambda r: -r["probability"] if OUTCOMES[kind][1] else r["probability"])
              for kind in OUTCOMES}
    assert 0 in labels and 1 in labels
    chosen = heatmaps.select_cases(lf_run, files, ["tp", "fp", "fn", "tn"], 1, 0.5)
    assert [p.name for p in chosen] == [expect[k][0]["file"] for k in OUTCOMES if expect[k]]
    result = vg.main(["--run", str(lf_run), "--select", "tn", "fp", "--top", "2", "--no_npy", "--method", "gradcam"])
    assert [c["file"] for c in result["cases"]] == [r["file"] for k in ("tn", "fp") for r in expect[k][:2]]
    assert not list((lf_run / "cams").glob("*.npy"))


def test_select_without_predictions_says_how_to_make_them(lf_run):
    with pytest.raises(FileNotFoundError, match="main.py --test"):
        vg.main(["--run", str(lf_run), "--select", "tp"])


def test_caption_shows_label_probability_threshold_and_clinical_values(lf_run, tiny_data):
    model, trained = load(lf_run)
    val = loader.list_split(tiny_data, "val")[0]  # BMI missing in the file name
    (case,) = heatmaps.explain(model, inputs([val], trained), "gradcam", fusion_mode=trained.fusion)
    text = heatmaps.caption(case, 0.25)
    info = filenames.decode(val)
    assert val.name in text and f"true: {heatmaps.LABELS[info.label]}" in text
    assert f"p(osteoporosis) = {case.probability:.3f}" in text and "threshold 0.250" in text
    assert f"age {info.age:g}, sex female, BMI NA" in text
    assert case.original_size == (H, W)


@pytest.mark.parametrize("n_cases", [0, 1, 3])  # 0: the single-image picture; else a --sheet of n cases
def test_pictures_keep_their_title_and_every_caption_line_whole(tmp_path, n_cases):
    """No text is cut at the picture's edge: the title (long, wrapped: a Grad-CAM layer and a run's long
    path) and the caption's last line ("map: evidence for ..., BMI ...") lie inside the PNG with a white
    margin around them, at the demo's aspect ratio."""
    from PIL import Image
    rng = np.random.default_rng(0)
    names = [f"P0000{i}_1_1-1-75-20.26.png" for i in range(max(1, n_cases))]
    cases = [heatmaps.Case(Path(name), filenames.decode(name), rng.random((176, 102)), rng.random((176, 102)), 0.61,
                           (704, 407)) for name in names]
    title = heatmaps.title_for("gradcam", "features.denseblock3", "outs/demo-20261207-125500/fold_Dense_LF", 12)
    fig = (heatmaps.render_case(cases[0], 0.387, title) if n_cases == 0 else
           heatmaps.render_sheet(cases, 0.387, title))
    png = heatmaps.save_figure(fig, tmp_path / "picture.png")
    pixels = np.asarray(Image.open(png).convert("L"))
    ink = np.argwhere(pixels < 200)
    (top, left), (bottom, right) = ink.min(axis=0), ink.max(axis=0)
    assert min(top, left, pixels.shape[0] - 1 - bottom, pixels.shape[1] - 1 - right) >= 5
    texts = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text") and a.get_visible())]
    assert any(t.startswith("Grad-CAM") and "outs/demo-20261207-125500/fold_Dense_LF" in t for t in texts)
    assert any("BMI 20.3" in t for t in texts)


# -- localisation -------------------------------------------------------------------------------------

def write_masks(data):
    for path in loader.list_split(data, "test"):
        mask = np.zeros((H, W), np.uint8)
        mask[H // 4: 3 * H // 4, W // 3: 2 * W // 3] = 255  # where conftest draws the class signal
        synthetic.mask_path(path).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(synthetic.mask_path(path)), mask)


def test_localisation_summary_and_cli(lf_run, tiny_data, tmp_path, monkeypatch):
    model, trained = load(lf_run)
    with pytest.raises(FileNotFoundError, match="synthetic.py"):
        heatmaps.cam_localisation(trained, model, tiny_data)
    write_masks(tiny_data)
    result = heatmaps.cam_localisation(trained, model, tiny_data, "gradcam")
    assert result["all"]["n"] == 6 and result["normal"]["n"] + result["osteoporosis"]["n"] == 6
    area = (H // 2) * (2 * W // 3 - W // 3) / (H * W)
    for row in result["images"]:
        assert row["mask_share"] == pytest.approx(area)
        assert math.isnan(row["ratio"]) or 0 <= row["ratio"] <= 1 / area + 1e-9
    finite = [r["ratio"] for r in result["images"] if math.isfinite(r["ratio"])]
    if finite:
        assert result["all"]["median_ratio"] == pytest.approx(float(np.median(finite)))

    loads = []
    monkeypatch.setattr(runfiles, "load_run", lambda *a, _real=runfiles.load_run: loads.append(a) or _real(*a))
    out = vg.main(["--run", str(lf_run), "--localisation", "--method", "occlusion", "--window", "8",
                   "--batch_size", "128"])
    assert list(out["targets"]) == ["osteoporosis", "predicted"]  # both by default
    assert len(loads) == 1  # the run is read once, whatever the number of targets
    assert all(out["targets"][t]["all"]["n"] == 6 for t in out["targets"])
    saved = json.loads((lf_run / "cams" / "localisation_occlusion.json").read_text())
    assert saved["targets"] == out["targets"] and saved["threshold"] == 0.5
    with open(lf_run / "cams" / "localisation_occlusion.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["target"] for r in rows] == ["osteoporosis"] * 6 + ["predicted"] * 6
    assert all(r["explained"] == heatmaps.LABELS[float(r["probability"]) >= 0.5] for r in rows[6:])
    read_png(lf_run / "cams" / "localisation_occlusion.png")
    synthetic.mask_path(loader.list_split(tiny_data, "test")[2]).unlink()
    with pytest.raises(FileNotFoundError, match="1 of 6 test images have no mask"):
        heatmaps.cam_localisation(trained, model, tiny_data)


# -- target: whose evidence -------------------------------------------------------------------------

class NegatedByHand(nn.Module):
    """The same network with its one output negated: its "osteoporosis" logit is the normal class's."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args):
        return -self.model(*args)


@pytest.mark.parametrize("method", cam.METHODS)
@pytest.mark.parametrize("late_fuse", [False, True], ids=["early", "late"])
def test_normal_target_is_the_map_of_the_negated_model(tiny_data, tmp_path, method, late_fuse):
    model, image, clinical = first_test_sample(make_run(tmp_path, tiny_data, late_fuse=late_fuse))
    kw = {"window": 8, "batch_size": 64, "references": torch.rand(3, *image.shape)}
    normal = cam.compute_cam(model, image, clinical, method, target="normal", **kw)
    layer = f"model.{model.default_cam_layer}"  # the same block, inside the wrapper
    by_hand = cam.compute_cam(NegatedByHand(model), image, clinical, method, layer, **kw)
    np.testing.assert_allclose(normal, by_hand, atol=1e-6)
    assert np.array_equal(cam.compute_cam(model, image, clinical, method, target="osteoporosis", **kw),
                          cam.compute_cam(model, image, clinical, method, **kw))  # the default, unchanged
    assert no_hooks_left(model) and all(p.grad is None for p in model.parameters())


def test_normal_gradcam_is_the_other_half_of_the_signed_map(lf_run):
    """Grad-CAM before the ReLU is linear in the score: the two targets split one signed map."""
    model, image, clinical = first_test_sample(lf_run)
    _, module = cam.resolve_layer(model)
    net = cam.ImageOnly(model, clinical)
    a, g = cam._activation_and_gradient(net, image[None], module, "x")
    signed = (g.mean(dim=(1, 2))[:, None, None] * a).sum(0)
    for target, part in (("osteoporosis", signed.clamp_min(0)), ("normal", (-signed).clamp_min(0))):
        np.testing.assert_allclose(cam.compute_cam(model, image, clinical, target=target),
                                   cam.to_heatmap(part, (H, W)), atol=1e-6)


def test_unknown_target_is_refused(lf_run):
    model, image, clinical = first_test_sample(lf_run)
    with pytest.raises(ValueError, match="unknown target 'benign'.*osteoporosis, normal"):
        cam.compute_cam(model, image, clinical, target="benign")
    with pytest.raises(ValueError, match="predicted.*threshold"):
        heatmaps.resolve_target("predicted", 0.3, None)


def test_predicted_target_picks_the_class_by_the_runs_threshold(lf_run):
    assert heatmaps.resolve_target("predicted", 0.30, 0.3) == "osteoporosis"  # >= threshold, as Case.prediction
    assert heatmaps.resolve_target("predicted", 0.29, 0.3) == "normal"
    assert heatmaps.resolve_target("normal", 0.99, 0.3) == "normal"
    model, trained = load(lf_run)
    dataset = inputs(heatmaps.test_files(trained), trained)
    plain = heatmaps.explain(model, dataset, "gradcam", fusion_mode=trained.fusion)
    threshold = float(np.median([c.probability for c in plain]))  # both predictions occur
    cases = heatmaps.explain(model, dataset, "gradcam", target="predicted", threshold=threshold,
                             fusion_mode=trained.fusion)
    assert {c.target for c in cases} == {"osteoporosis", "normal"}
    for i, (case, base) in enumerate(zip(cases, plain)):
        assert case.target == ("osteoporosis" if case.probability >= threshold else "normal")
        sample = dataset[i]
        expect = cam.compute_cam(model, sample["image"], sample["clinical"], target=case.target)
        assert np.array_equal(case.heatmap, expect)
        if case.target == "osteoporosis":
            assert np.array_equal(case.heatmap, base.heatmap)


@pytest.mark.slow
def test_cli_explain(lf_run, tiny_data):
    first = loader.list_split(tiny_data, "test")[0]
    result = vg.main(["--run", str(lf_run), "--index", "0", "--explain", "normal", "--method", "gradcam"])
    png = lf_run / "cams" / f"{first.stem}_gradcam_normal.png"
    assert result["written"] == [str(png), str(png.with_suffix(".npy"))] and result["target"] == "normal"
    model, image, clinical = first_test_sample(lf_run)
    np.testing.assert_array_equal(np.load(png.with_suffix(".npy")),
                                  cam.compute_cam(model, image, clinical, target="normal"))
    read_png(png)
    title = heatmaps.title_for("gradcam", "features.denseblock2", "r", 1, "normal")
    assert "Grad-CAM of the normal class (negated logit)" in title
    result = vg.main(["--run", str(lf_run), "--all", "--sheet", "--explain", "predicted", "--no_npy",
                      "--method", "gradcam"])
    assert result["written"] == [str(lf_run / "cams" / "sheet_gradcam_predicted.png")]
    assert all(c["target"] == heatmaps.LABELS[c["prediction"]] for c in result["cases"])  # threshold 0.5
    write_masks(tiny_data)
    out = vg.main(["--run", str(lf_run), "--localisation", "--explain", "normal", "--method", "gradcam"])
    assert list(out["targets"]) == ["normal"]
    assert (lf_run / "cams" / "localisation_gradcam_normal.json").is_file()
    with pytest.raises(SystemExit):
        vg.build_parser().parse_args(["--run", "x", "--all", "--explain", "benign"])


def test_target_is_a_deprecated_alias_of_explain(capsys):
    """--explain names the class a map explains; --target, its old name (main.py's --target is the training
    target), still sets it and says it is deprecated."""
    parse = vg.build_parser().parse_args
    assert parse(["--run", "x", "--all"]).explain is None
    assert parse(["--run", "x", "--all", "--explain", "normal"]).explain == "normal"
    assert capsys.readouterr().err == ""
    args = parse(["--run", "x", "--all", "--target", "predicted"])
    assert args.explain == "predicted" and not hasattr(args, "target")
    assert "--target is deprecated; use --explain" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--run", "x", "--all", "--target", "benign"])


@pytest.mark.slow
@pytest.mark.parametrize("tta", ["none", "flip"])
def test_cam_input_is_what_the_network_saw_in_a_real_run(tiny_data, tmp_path, tta):
    """Train one epoch with main.py; the maps' probabilities equal the run's test predictions
    (with --tta flip the mean over the image and its mirror, as the run reported them)."""
    import csv

    import main
    outs = tmp_path / "outs"
    main.main(["--model", "dense_net", "--depth", "10", "--growthRate", "4", "--data_dir", str(tiny_data),
               "--image_size", str(H), str(W), "--epoch", "1", "--batch_size", "4", "--workers", "0",
               "--device", "cpu", "--save_dir", "r", "--fold", "_e", "--out_root", str(outs), "--tta", tta])
    run = outs / "r" / "fold_e"
    result = vg.main(["--run", str(run), "--all", "--sheet", "--no_npy", "--method", "gradcam"])
    with open(run / heatmaps.PREDICTIONS, newline="") as fh:
        expected = {r["file"]: float(r["probability"]) for r in csv.DictReader(fh)}
    assert len(result["cases"]) == len(expected) == 6
    for case in result["cases"]:
        assert case["probability"] == pytest.approx(expected[case["file"]], abs=2e-6)
