"""cam.py against captum, the field's reference implementation of these attribution methods.

Grad-CAM = captum's LayerGradCam; occlusion = captum's Occlusion (on the windows both place); expected
gradients = captum's IntegratedGradients from each reference (midpoint rule) averaged over references,
and in expectation captum's GradientShap. Grad-CAM++ and Score-CAM have no captum counterpart (their
hand-computed checks are in test_gradcam.py).
"""
import numpy as np
import pytest
import torch

from hipx.inference import cam
from hipx.models import build_model

captum_attr = pytest.importorskip("captum.attr")

H, W = 64, 40


@pytest.fixture(params=["early", "late"])
def case(request):
    torch.manual_seed(0)
    late = request.param == "late"
    model = build_model("dense_net", in_chans=2 if late else 5, late_fuse=late, depth=10, growth_rate=4).eval()
    image = torch.rand(1, 2 if late else 5, H, W)
    if not late:
        image[:, 2:] = torch.tensor([0.5, -1.0, 0.3])[None, :, None, None]  # constant clinical planes
    clinical = torch.tensor([[1.0, -0.4, 0.7]]) if late else None
    return model, image, clinical, cam.ImageOnly(model, clinical)


@pytest.mark.parametrize("target", cam.TARGETS)
def test_gradcam_equals_captum_layer_gradcam(case, target):
    model, image, clinical, net = case
    net = cam.target_net(net, target)
    name, module = cam.resolve_layer(model)
    ours = cam.grad_cam(net, image, module, name)
    signed = captum_attr.LayerGradCam(net, module).attribute(image)[0, 0]  # before the ReLU
    theirs = captum_attr.LayerGradCam(net, module).attribute(image, relu_attributions=True)[0, 0]
    assert signed.abs().max() > 1e-6  # not a vacuous comparison of two zero maps
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours, torch.relu(signed), rtol=1e-4, atol=1e-6)
    heat = cam.compute_cam(model, image, clinical[0] if clinical is not None else None, "gradcam", target=target)
    np.testing.assert_allclose(heat, cam.to_heatmap(theirs, (H, W)), rtol=1e-4, atol=1e-5)


def test_occlusion_equals_captum_occlusion(case):
    """cam.occlusion averages the positive drops of the logit; captum averages the drops of whatever it is
    given, so it is given min(logit, logit of the image): its drops are exactly the positive ones."""
    model, image, clinical, net = case
    window, stride = 8, 4  # (64 - 8) and (40 - 8) are multiples of 4: both place the same windows
    ours = cam.occlusion(net, image, cam.IMAGE_CHANNELS, window=window, stride=stride)
    with torch.no_grad():
        base = net(image)
    clipped = lambda x: torch.minimum(net(x), base)  # noqa: E731
    img = image[:, :cam.IMAGE_CHANNELS]
    rest = image[:, cam.IMAGE_CHANNELS:]
    fill = img.mean(dim=(2, 3), keepdim=True).expand_as(img)

    def on_image(x):  # captum occludes the picture channels only, as cam.occlusion does
        return clipped(torch.cat([x, rest.expand(len(x), -1, -1, -1)], dim=1))

    theirs = captum_attr.Occlusion(on_image).attribute(
        img, sliding_window_shapes=(cam.IMAGE_CHANNELS, window, window), strides=(cam.IMAGE_CHANNELS, stride, stride),
        baselines=fill, perturbations_per_eval=64)
    assert ours.max() > 0
    for channel in range(cam.IMAGE_CHANNELS):
        torch.testing.assert_close(ours, theirs[0, channel], rtol=1e-4, atol=1e-6)


def test_expected_gradients_equal_captum_integrated_gradients_averaged_over_references(case):
    model, image, clinical, net = case
    torch.manual_seed(1)
    references = torch.rand(3, *image.shape[1:])
    references[:, cam.IMAGE_CHANNELS:] = 9.0  # ignored: the clinical planes stay the image's
    steps = 6
    ours = cam.expected_gradients_attribution(net, image, references, cam.IMAGE_CHANNELS, steps=steps)
    ig = captum_attr.IntegratedGradients(net)
    per_reference = []
    for ref in references:
        baseline = image.clone()
        baseline[:, :cam.IMAGE_CHANNELS] = ref[:cam.IMAGE_CHANNELS]
        per_reference.append(ig.attribute(image, baselines=baseline, n_steps=steps, method="riemann_middle")[0])
    theirs = torch.stack(per_reference).mean(0)
    assert not theirs[cam.IMAGE_CHANNELS:].any()  # nothing attributed to the clinical planes
    torch.testing.assert_close(ours, theirs[:cam.IMAGE_CHANNELS], rtol=1e-4, atol=1e-7)


def test_expected_gradients_match_captum_gradient_shap_in_expectation():
    """GradientShap draws a reference and a point on the path at random; with many draws its mean is the
    same integral cam approximates with a fine midpoint rule (Erion et al. 2021)."""
    torch.manual_seed(0)
    model = build_model("dense_net", in_chans=2, late_fuse=False, depth=10, growth_rate=4).eval()
    image, references = torch.rand(1, 2, 32, 20), 0.2 * torch.rand(4, 2, 32, 20)  # darker: a clear logit gap
    ours = cam.expected_gradients_attribution(model, image, references, 2, steps=64, batch_size=256)
    state = np.random.get_state()  # captum draws the points on the path with numpy's global generator
    try:
        np.random.seed(2)
        torch.manual_seed(2)
        theirs = captum_attr.GradientShap(model).attribute(image, baselines=references, n_samples=2000,
                                                           stdevs=0.0)[0]
    finally:
        np.random.set_state(state)
    with torch.no_grad():
        gap = float(model(image) - model(references).mean())
    assert abs(gap) > 0.05
    assert float(ours.sum()) == pytest.approx(gap, rel=0.01)  # completeness
    assert float(theirs.sum()) == pytest.approx(gap, rel=0.03)
    assert np.corrcoef(ours.flatten().numpy(), theirs.flatten().numpy())[0, 1] > 0.99
