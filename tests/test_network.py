"""hipx/inference/network.py: the one place a run's network is built -- from nothing (target head,
fusion, --pretrained weights, residual fusion's clinical start) or from a checkpoint's weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import main
from hipx.core.cli import UserError
from hipx.core.runconfig import RunConfig
from hipx.data import filenames, loader
from hipx.inference import clinical, network
from hipx.runs import runfiles

CONFIG = RunConfig(model="dense_net", depth=10, growthRate=4, image_size=[64, 37], in_chans=2)


def training(tiny_data):
    files = filenames.list_split(tiny_data, "train")
    return files, loader.ClinicalStats.fit([filenames.decode(f) for f in files])


def test_residual_fusion_starts_as_the_clinical_model_of_the_training_images(tiny_data):
    files, stats = training(tiny_data)
    model = network.new_network(CONFIG.replace(fusion="residual"), files, stats)
    coef, intercept = clinical.clinical_model(files, stats)
    np.testing.assert_allclose(model.clinical_coef.detach().double().numpy(), coef, rtol=1e-6)
    assert model.clinical_intercept.item() == pytest.approx(intercept, rel=1e-6)
    assert not model.classifier.weight.detach().any()  # the image's correction starts at zero


def test_pretrained_weights_are_loaded_and_the_network_fits_its_configuration(tiny_data, tmp_path):
    outs = tmp_path / "outs"
    main.main(["--depth", "10", "--growthRate", "4", "--data_dir", str(tiny_data), "--image_size", "64", "37",
               "--epoch", "1", "--batch_size", "4", "--workers", "0", "--device", "cpu", "--bootstrap", "0",
               "--image_only", "--out_root", str(outs), "--save_dir", "src", "--fold", "_s"])
    source = outs / "src" / "fold_s"
    files, stats = training(tiny_data)
    fresh = network.new_network(CONFIG.replace(fusion="late", pretrained=str(source)), files, stats)
    best = runfiles.load_checkpoint(source / runfiles.BEST)["model"]
    got = fresh.state_dict()
    assert all(torch.equal(got[k], v) for k, v in best.items() if k.startswith("features."))
    assert fresh.late_fuse and fresh.in_chans == 2
    with pytest.raises(UserError, match="no-such-weights"):
        network.new_network(CONFIG.replace(pretrained=str(tmp_path / "no-such-weights")), files, stats)

    # a checkpoint's network: its saved weights, whatever --pretrained its configuration names
    trained = network.load_network(source)
    assert not trained.training
    assert all(torch.equal(trained.state_dict()[k], v) for k, v in best.items())
    state = runfiles.load_checkpoint(source / runfiles.BEST)
    goes_on = network.run_network(RunConfig.from_dict(state["config"]), state, files, stats)
    assert all(torch.equal(goes_on.state_dict()[k], v) for k, v in best.items())
    assert network.load_network(runfiles.load_run(source)).state_dict().keys() == best.keys()
