"""--pretrained imagenet through torchvision's weights API and cache, offline; --pretrained RUN."""
import urllib.error

import pytest
import torch
import torchvision

import main
from hipx.core.cli import UserError
from hipx import models
from hipx.models import build_model, pretrained

torch.set_num_threads(1)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch cache; nothing may be downloaded (a fetch attempt fails as offline)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    return tmp_path / "torch", calls


def cache_imagenet_file(home, name="densenet121"):
    """A random densenet121 in torchvision's published format (old 'norm.1' keys) where its weights
    API caches the ImageNet file."""
    torch.manual_seed(2)
    state = torchvision.models.densenet121(weights=None).state_dict()
    url = torchvision.models.get_model_weights(name).IMAGENET1K_V1.url
    path = home / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True)
    old = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in state.items()}
    torch.save(old, path)
    return path, state


def test_imagenet_weights_come_from_torchvisions_cache(torch_home):
    home, calls = torch_home
    path, state = cache_imagenet_file(home)
    assert pretrained.imagenet_weights("densenet121") == str(path)
    model = build_model("densenet121", in_chans=2, late_fuse=False, pretrained="imagenet")
    got = model.state_dict()
    assert torch.equal(got["features.denseblock3.denselayer5.norm1.weight"],
                       state["features.denseblock3.denselayer5.norm1.weight"])
    assert torch.equal(got["features.denseblock2.denselayer1.conv2.weight"],
                       state["features.denseblock2.denselayer1.conv2.weight"])
    # the RGB first convolution becomes a 2-channel one with the same response to a constant image
    assert got["features.conv0.weight"].shape == (64, 2, 7, 7)
    assert torch.allclose(got["features.conv0.weight"].sum(1), state["features.conv0.weight"].sum(1), atol=1e-5)
    assert not calls  # cached: nothing fetched


def test_offline_imagenet_stops_at_once_naming_pretrained_path(torch_home, tmp_path):
    _, calls = torch_home
    with pytest.raises(pretrained.PretrainedUnavailable, match=r"--pretrained PATH"):
        pretrained.imagenet_weights("densenet169")
    assert calls == [torchvision.models.get_model_weights("densenet169").IMAGENET1K_V1.url]
    # main.py stops before reading any data or writing a run folder
    with pytest.raises(UserError, match=r"not cached .* --pretrained PATH"):
        main.main(["--model", "densenet121", "--pretrained", "imagenet", "--data_dir", str(tmp_path / "none"),
                   "--out_root", str(tmp_path / "outs"), "--device", "cpu"])
    assert not (tmp_path / "outs").exists()


def test_imagenet_is_refused_for_dense_net(torch_home, tmp_path):
    with pytest.raises(UserError, match="exists for densenet121, densenet169, densenet201 only"):
        main.main(["--model", "dense_net", "--pretrained", "imagenet", "--out_root", str(tmp_path / "outs")])
    assert not torch_home[1]


def test_a_run_folder_starts_fine_tuning_from_its_best_checkpoint(tiny_data, tmp_path):
    outs = tmp_path / "outs"
    common = ["--model", "dense_net", "--depth", "10", "--data_dir", str(tiny_data), "--image_size", "64", "37",
              "--epoch", "1", "--batch_size", "4", "--workers", "0", "--device", "cpu", "--out_root", str(outs),
              "--bootstrap", "0", "--image_only"]
    main.main([*common, "--save_dir", "demo", "--fold", "0"])
    source = outs / "demo" / "fold0"
    start = build_model("dense_net", in_chans=2, late_fuse=False, depth=10, pretrained=str(source))
    best = torch.load(source / "best.pth", weights_only=True)["model"]
    for key, value in best.items():
        assert torch.equal(start.state_dict()[key], value), key
    # a learning rate too small to move a weight: the fine-tuned run must still hold the source's weights
    main.main([*common, "--save_dir", "ft", "--fold", "0", "--pretrained", str(source), "--lrG", "1e-12"])
    tuned = torch.load(outs / "ft" / "fold0" / "best.pth", weights_only=True)["model"]
    weights = [k for k, v in best.items() if v.is_floating_point() and "running_" not in k]
    assert weights and all(torch.allclose(tuned[k], best[k], atol=1e-6) for k in weights)
    with pytest.raises(UserError, match="a folder must be a run folder holding best.pth"):
        main.main([*common, "--save_dir", "ft2", "--pretrained", str(outs)])
    assert models.resolve_pretrained(str(source / "best.pth"), "dense_net") == str(source / "best.pth")
