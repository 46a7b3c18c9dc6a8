import logging
import math

import pytest
import torch
import torchvision
from torch import nn

from hipx import models
from hipx.models import MODEL_NAMES, BatchInstanceNorm2d, build_model, count_parameters

torch.set_num_threads(1)

H, W = 64, 37
IMAGE_CHANS, N_CLINICAL = 2, 3
SMALL = dict(depth=10, growth_rate=4)  # keeps dense_net tiny; ignored by the torchvision families


def make(name="dense_net", late_fuse=False, **kwargs):
    in_chans = IMAGE_CHANS if late_fuse else IMAGE_CHANS + N_CLINICAL
    return build_model(name, in_chans=in_chans, late_fuse=late_fuse, **{**SMALL, **kwargs})


def inputs(model, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, model.in_chans, H, W, generator=g)
    clinical = torch.randn(batch, N_CLINICAL, generator=g) if model.late_fuse else None
    return image, clinical


def types_in(module):
    return {type(m) for m in module.modules()}


# the two largest torchvision families take seconds each on a CPU: make test runs them, make test-fast not
BIG = ("densenet169", "densenet201")
NAMES = [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in MODEL_NAMES]


@pytest.mark.parametrize("late_fuse", [False, True], ids=["early", "late"])
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(name, late_fuse):
    model = make(name, late_fuse)
    image, clinical = inputs(model)
    image.requires_grad_(True)
    out = model(image, clinical)
    assert out.shape == (2,)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
    assert model.features.conv0.weight.grad is not None
    assert model.late_fuse is late_fuse
    assert (model.clinical_mlp is not None) is late_fuse


@pytest.mark.parametrize("name,num_features,last_block", [
    ("dense_net", None, "denseblock3"), ("densenet121", 1024, "denseblock4"),
    pytest.param("densenet169", 1664, "denseblock4", marks=pytest.mark.slow),
    pytest.param("densenet201", 1920, "denseblock4", marks=pytest.mark.slow),
])
def test_features_head_and_cam_layer(name, num_features, last_block):
    model = make(name).eval()
    image, _ = inputs(model)
    names = [n for n, _ in model.features.named_children()]
    assert names[0] == "conv0" and names[-1] == "norm5" and "transition1" in names
    assert model.default_cam_layer == f"features.{last_block}"
    assert dict(model.named_modules())[model.default_cam_layer] is getattr(model.features, last_block)
    feats = model.forward_features(image)
    assert feats.dim() == 4 and feats.shape[1] == model.num_features
    if num_features:
        assert model.num_features == num_features
    with torch.no_grad():
        assert torch.allclose(model.forward_head(feats), model(image))
        # forward_features ends with norm5 and the activation
        assert torch.allclose(feats, torch.relu(model.features(image)))


def test_dense_net_bc_structure():
    model = build_model("dense_net", in_chans=5, late_fuse=False, depth=40, growth_rate=12)
    blocks = [getattr(model.features, f"denseblock{i}") for i in (1, 2, 3)]
    assert all(len(b) == 6 for b in blocks)  # (40 - 4) / 6 bottleneck layers per block
    assert not hasattr(model.features, "denseblock4")
    layer = blocks[0].denselayer1
    assert layer.conv1.kernel_size == (1, 1) and layer.conv1.out_channels == 4 * 12
    assert layer.conv2.kernel_size == (3, 3) and layer.conv2.out_channels == 12
    assert model.features.conv0.out_channels == 24 and model.features.conv0.in_channels == 5
    # compression 0.5: transition1 halves 24 + 6 * 12 = 96 channels
    assert model.features.transition1.conv.out_channels == 48
    assert model.features.transition2.conv.out_channels == (48 + 72) // 2
    assert model.num_features == 60 + 72


@pytest.mark.parametrize("name", ["dense_net", "densenet121"])
@pytest.mark.parametrize("norm,expected", [("bn", nn.BatchNorm2d), ("in", nn.InstanceNorm2d),
                                           ("bin", BatchInstanceNorm2d)])
def test_norm_option_swaps_layers(name, norm, expected):
    model = make(name, norm=norm)
    found = types_in(model.features)
    assert expected in found
    others = {nn.BatchNorm2d, nn.InstanceNorm2d, BatchInstanceNorm2d} - {expected}
    assert not found & others
    image, _ = inputs(model)
    model(image).sum().backward()


@pytest.mark.parametrize("name", ["dense_net", "densenet121"])
@pytest.mark.parametrize("act,expected", [("relu", nn.ReLU), ("elu", nn.ELU), ("leaky", nn.LeakyReLU),
                                          ("prelu", nn.PReLU)])
def test_act_option_swaps_layers(name, act, expected):
    model = make(name, late_fuse=True, act=act)
    found = types_in(model)
    others = {nn.ReLU, nn.ELU, nn.LeakyReLU, nn.PReLU} - {expected}
    assert expected in found and not found & others
    assert isinstance(model.final_act, expected)
    if act == "leaky":
        assert model.final_act.negative_slope == pytest.approx(0.1)
    if act == "prelu":  # one slope per channel, sized from the norm layer before it
        assert model.features.denseblock1.denselayer1.relu1.num_parameters == \
            model.features.denseblock1.denselayer1.norm1.num_features
        assert model.final_act.num_parameters == model.num_features
    image, clinical = inputs(model)
    out = model(image, clinical)
    out.sum().backward()
    assert torch.isfinite(out).all()


def test_batch_instance_norm_mixes_and_clamps_gate():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 6) * 3 + 1
    norm = BatchInstanceNorm2d(3)
    bn = nn.BatchNorm2d(3)
    assert torch.allclose(norm(x), bn(x), atol=1e-5)  # rho starts at 1: batch norm
    norm.rho.data.fill_(0.0)
    assert torch.allclose(norm(x), nn.functional.instance_norm(x), atol=1e-5)
    norm.rho.data = torch.tensor([1.7, -0.3, 0.25])
    out = norm(x)
    assert norm.rho.tolist() == pytest.approx([1.0, 0.0, 0.25])
    out.pow(2).sum().backward()
    # the gradient reaches the gate even at the bounds, so it can leave them (paper: clamp after the step)
    assert norm.rho.grad.abs().min() > 0


def test_memory_efficient_gives_same_output_and_gradients():
    torch.manual_seed(0)
    plain = make("dense_net", norm="bin", act="prelu")
    efficient = make("dense_net", norm="bin", act="prelu", memory_efficient=True)
    efficient.load_state_dict(plain.state_dict())
    image, _ = inputs(plain)
    outs = []
    for model in (plain, efficient):
        out = model(image)
        out.sum().backward()
        outs.append((out, model.features.conv0.weight.grad))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5)
    assert torch.allclose(outs[0][1], outs[1][1], atol=1e-5)


def _block1_size(model, image):
    sizes = {}

    def hook(module, args, output):
        sizes["block1"] = tuple(output.shape[-2:])

    model.features.denseblock1.register_forward_hook(hook)
    model(image)
    return sizes["block1"]


def test_stems_resolution():
    original = make("dense_net", stem="original")
    downsample = make("dense_net", stem="downsample")
    image, _ = inputs(original)
    assert _block1_size(original, image) == (H, W)
    assert _block1_size(downsample, image) == (math.ceil(H / 4), math.ceil(W / 4))
    assert original.features.conv0.kernel_size == (3, 3) and original.features.conv0.stride == (1, 1)
    assert not hasattr(original.features, "pool0")
    assert downsample.features.conv0.kernel_size == (7, 7) and hasattr(downsample.features, "pool0")


def test_late_fusion_uses_clinical_vector():
    model = make("dense_net", late_fuse=True).eval()
    image, clinical = inputs(model)
    with torch.no_grad():
        a = model(image, clinical)
        b = model(image, clinical + torch.tensor([1.0, -2.0, 0.5]))
    assert not torch.allclose(a, b)


def test_fusion_mode_checks_clinical_argument():
    early, late = make("dense_net"), make("dense_net", late_fuse=True)
    image, _ = inputs(early)
    with pytest.raises(ValueError, match="early-fusion"):
        early(image, torch.zeros(2, N_CLINICAL))
    image, clinical = inputs(late)
    with pytest.raises(ValueError, match="needs the clinical vector"):
        late(image)
    with pytest.raises(ValueError, match=r"clinical of shape \(2, 3\)"):
        late(image, clinical[:, :2])
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        late(torch.zeros(2, 5, H, W), clinical)


@pytest.mark.parametrize("kwargs,message", [
    (dict(name="foo"), "unknown model 'foo'; choose one of dense_net, densenet121, densenet169, densenet201"),
    (dict(norm="gn"), "unknown norm 'gn'; choose one of bn, in, bin"),
    (dict(act="gelu"), "unknown act 'gelu'; choose one of relu, elu, leaky, prelu"),
    (dict(stem="tiny"), "unknown stem 'tiny'; choose one of downsample, original"),
    (dict(depth=41), r"\(depth - 4\) % 6 == 0.*got depth 41"),
    (dict(depth=4), "got depth 4"),
    (dict(name="densenet121", stem="original"), "dense_net only"),
    (dict(drop_rate=1.0), "drop_rate"),
])
def test_bad_arguments(kwargs, message):
    args = dict(name="dense_net", in_chans=2, late_fuse=False, depth=10)
    with pytest.raises(ValueError, match=message):
        build_model(**{**args, **kwargs})


def test_depth_and_growth_ignored_by_torchvision_families():
    model = build_model("densenet121", in_chans=2, late_fuse=False, depth=41, growth_rate=3)
    assert model.num_features == 1024


# --- pretrained weights -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory):
    """A random 3-channel torchvision densenet121 with its 1000-class head, saved as a state dict."""
    torch.manual_seed(1)
    net = torchvision.models.densenet121(weights=None)
    state = net.state_dict()
    path = tmp_path_factory.mktemp("weights") / "densenet121.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("in_chans", [2, 5])
def test_pretrained_loads_features_and_adapts_first_conv(imagenet_like, in_chans, caplog):
    path, state = imagenet_like
    with caplog.at_level(logging.INFO, logger="hipx.models.pretrained"):
        model = build_model("densenet121", in_chans=in_chans, late_fuse=False, pretrained=str(path))
    loaded = model.state_dict()
    for key, value in state.items():
        if key.startswith("features.") and key != "features.conv0.weight":
            assert torch.equal(loaded[key], value), key
    expected = state["features.conv0.weight"].mean(1, keepdim=True).repeat(1, in_chans, 1, 1) * 3 / in_chans
    assert torch.allclose(loaded["features.conv0.weight"], expected)
    # same response to a constant image as the RGB kernel
    assert torch.allclose(loaded["features.conv0.weight"].sum(1), state["features.conv0.weight"].sum(1), atol=1e-5)
    assert loaded["classifier.weight"].shape == (1, 1024)
    assert "adapted to" in caplog.text and "classifier.weight" in caplog.text


def test_pretrained_report_and_bin_keeps_batch_norm_weights(imagenet_like):
    path, state = imagenet_like
    model = build_model("densenet121", in_chans=2, late_fuse=True, norm="bin")
    report = models.load_pretrained(model, path)
    assert report["adapted"] == ["features.conv0.weight"]
    assert set(report["skipped"]) == {"classifier.weight", "classifier.bias"}
    assert "features.norm5.rho" in report["missing"] and "clinical_mlp.0.weight" in report["missing"]
    assert not report["unexpected"]
    assert torch.equal(model.features.norm5.running_var, state["features.norm5.running_var"])


def test_pretrained_strips_module_prefix_and_wrapper_keys(tmp_path):
    source = make("dense_net", late_fuse=True)
    path = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, path)
    model = make("dense_net", late_fuse=True, pretrained=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    image, clinical = inputs(model)
    with torch.no_grad():
        assert torch.equal(source.eval()(image, clinical), model.eval()(image, clinical))


def test_pretrained_accepts_old_torchvision_key_names(tmp_path, imagenet_like):
    _, state = imagenet_like
    old = {k.replace("denselayer1.norm1.", "denselayer1.norm.1."): v for k, v in state.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    torch.save({"state_dict": old}, tmp_path / "old.pth")
    model = build_model("densenet121", in_chans=3, late_fuse=False, pretrained=str(tmp_path / "old.pth"))
    assert torch.equal(model.features.denseblock1.denselayer1.norm1.weight,
                       state["features.denseblock1.denselayer1.norm1.weight"])


class NotATensor:
    pass


def test_pretrained_refuses_pickled_objects(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"model": make("dense_net").state_dict(), "obj": NotATensor()}, path)
    with pytest.raises(ValueError, match="refusing to load .*unsafe.pth.*pickled"):
        make("dense_net", pretrained=str(path))


@pytest.mark.parametrize("content,message", [
    ({"epoch": 3, "lr": 0.1}, "not a state dict"),
    ({"features.whatever": torch.zeros(1), "features.norm5.num_batches_tracked": torch.tensor(5)},
     "no tensor of .* fits this model"),
])
def test_pretrained_refuses_non_weights(tmp_path, content, message):
    path = tmp_path / "other.pth"
    torch.save(content, path)
    with pytest.raises(ValueError, match=message):
        make("dense_net", pretrained=str(path))


def test_pretrained_missing_file_names_path(tmp_path):
    path = tmp_path / "nope" / "weights.pth"
    with pytest.raises(FileNotFoundError, match=str(path)):
        make("dense_net", pretrained=str(path))


def test_count_parameters():
    model = make("dense_net", late_fuse=True)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    model.features.requires_grad_(False)
    assert count_parameters(model) == sum(p.numel() for n, p in model.named_parameters() if not n.startswith("features."))


@pytest.mark.parametrize("late_fuse", [False, True], ids=["early", "late"])
def test_grad_cam_hooks_see_activations_and_gradients(late_fuse):
    model = make("dense_net", late_fuse).eval()
    modules = dict(model.named_modules())
    seen = {}

    def keep(name):
        def hook(module, args, output):
            seen[name] = output
            output.register_hook(lambda grad: seen.__setitem__(name + ".grad", grad))
        return hook

    for name in (model.default_cam_layer, "features.norm5"):
        modules[name].register_forward_hook(keep(name))
    image, clinical = inputs(model)
    model(image, clinical).sum().backward()
    for name in (model.default_cam_layer, "features.norm5"):
        assert seen[name + ".grad"].shape == seen[name].shape and seen[name + ".grad"].abs().sum() > 0
    # the final activation is not in place: the hooked norm5 output keeps its negative values
    assert (seen["features.norm5"] < 0).any()
