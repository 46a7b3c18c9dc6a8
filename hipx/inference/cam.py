"""Class activation maps: where in a radiograph a network's osteoporosis logit comes from.

    heat = compute_cam(model, image, clinical, method="gradcam")   # (H, W) float32 in [0, 1]

Five methods (Grad-CAM, Grad-CAM++, Score-CAM, occlusion, expected gradients) behind one call, so
that ``visualize_gradcam.py`` and its localisation measure treat them alike; only the radiograph
channels are masked or occluded, and hooks, train/eval modes and gradients are left as found.
The methods with their papers, the targets, and why a reference population matters for a loss of
bone: docs/heatmaps.md.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hipx.core.choices import CAM_METHODS as METHODS, CAM_TARGETS as TARGETS  # the names --method and --target offer
from hipx.data.loader import IMAGE_CHANNELS  # the radiograph and its enhanced copy lead every network input

NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM", "occlusion": "Occlusion",
         "expected_gradients": "Expected Gradients"}
LAYER_METHODS = ("gradcam", "gradcam++", "scorecam")  # the others explain the input pixels, not a layer
REFERENCE_METHODS = ("expected_gradients",)  # need reference inputs


class ImageOnly(nn.Module):
    """The network as a function of the image alone: a late-fusion model gets the patient's
    clinical vector, held fixed, for every image of a batch (masked or occluded copies included)."""

    def __init__(self, model: nn.Module, clinical: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.clinical = None if clinical is None else clinical.reshape(1, -1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.clinical is None:
            return self.model(image)
        return self.model(image, self.clinical.expand(image.shape[0], -1))


class Negated(nn.Module):
    """``-net(x)``: the normal class's logit of a one-logit binary model, whose osteoporosis logit is ``net(x)``.

    Grad-CAM's weights flip sign, so the map shows where the image argues *against* osteoporosis;
    occlusion and Score-CAM measure rises of the logit instead of drops.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return -self.net(image)


def target_net(net: nn.Module, target: str = "osteoporosis") -> nn.Module:
    """The function of the image whose evidence is mapped for ``target`` (one of :data:`TARGETS`)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    return net if target == "osteoporosis" else Negated(net)


def layer_names(model: nn.Module) -> list[str]:
    """Layers worth hooking: the children of ``model.features`` (``features.denseblock3``...)."""
    features = getattr(model, "features", None)
    if isinstance(features, nn.Module):
        return [f"features.{name}" for name, _ in features.named_children()]
    return [name for name, _ in model.named_children()]


def resolve_layer(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Module]:
    """``(name, module)`` for ``layer``, by default the model's ``default_cam_layer`` (last dense block)."""
    name = layer or getattr(model, "default_cam_layer", "")
    if not name:
        raise ValueError("no layer given and the model has no default_cam_layer; name one, e.g. "
                         f"{', '.join(layer_names(model)[-3:])}")
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        raise ValueError(f"unknown layer {name!r}; valid layers include {', '.join(layer_names(model))} "
                         "(any name from model.named_modules())")
    return name, modules[name]


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; every module's own train/eval flag restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def capture(module: nn.Module, name: str) -> Iterator[dict]:
    """Record ``module``'s output in ``store["activation"]`` on every forward; the hook is removed on exit.

    The network continues with a copy, so an in-place activation right after the layer (torchvision's
    ``relu(inplace=True)``) cannot overwrite the recorded tensor; gradients still flow through it.
    """
    store: dict = {}

    def hook(_module, _inputs, output):
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"layer {name!r} outputs {shape}; a class activation map needs a convolutional "
                             "feature map (B, C, h, w), e.g. a dense block or features.norm5")
        store["activation"] = output
        return output.clone()

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def to_heatmap(cam: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(h, w) map -> (H, W) float32: bilinear upsampling, negatives and non-finite values to 0, max to 1.

    Dividing by the maximum (not min-max) keeps "no evidence" at 0, so an all-zero map stays zeros.
    """
    cam = torch.nan_to_num(cam.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    up = F.interpolate(cam[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    up = up.clamp_min(0.0)
    peak = float(up.max())
    if peak > 0.0 and math.isfinite(peak):
        up = up / peak
    return up.clamp_(0.0, 1.0).cpu().numpy().astype(np.float32)


def _activation_and_gradient(net: Callable, x: torch.Tensor, module: nn.Module,
                             name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Activation of ``module`` for input ``x`` (1, C, H, W) and d logit / d activation."""
    # A leaf input that requires grad makes the activation part of the graph even for a frozen
    # model; autograd.grad (not backward) leaves every parameter's .grad untouched.
    x = x.detach().requires_grad_(True)
    with capture(module, name) as store, torch.enable_grad():
        logit = net(x)
        if "activation" not in store:
            raise ValueError(f"layer {name!r} is not used when the network scores an image; choose a layer "
                             "of the image path, e.g. a dense block")
        activation = store["activation"]
        (grad,) = torch.autograd.grad(logit.sum(), activation)
    return activation.detach()[0], grad.detach()[0]


def grad_cam(net: Callable, x: torch.Tensor, module: nn.Module, name: str) -> torch.Tensor:
    a, g = _activation_and_gradient(net, x, module, name)
    weights = g.mean(dim=(1, 2))
    return torch.relu((weights[:, None, None] * a).sum(0))


def grad_cam_pp(net: Callable, x: torch.Tensor, module: nn.Module, name: str) -> torch.Tensor:
    a, g = _activation_and_gradient(net, x, module, name)
    g2 = g * g
    denom = 2.0 * g2 + a.sum(dim=(1, 2), keepdim=True) * g2 * g
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)),
                        torch.zeros_like(denom))
    weights = (alpha * torch.relu(g)).sum(dim=(1, 2))
    return torch.relu((weights[:, None, None] * a).sum(0))


@torch.no_grad()
def _scores(net: Callable, inputs: Iterator[torch.Tensor]) -> torch.Tensor:
    return torch.cat([net(batch).float() for batch in inputs])


@torch.no_grad()
def score_cam(net: Callable, x: torch.Tensor, module: nn.Module, name: str, image_channels: int,
              batch_size: int = 32) -> torch.Tensor:
    with capture(module, name) as store:
        net(x)
        if "activation" not in store:
            raise ValueError(f"layer {name!r} is not used when the network scores an image; choose a layer "
                             "of the image path, e.g. a dense block")
        a = store["activation"][0].float()  # (K, h, w)
    masks = F.interpolate(a[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
    lo, hi = masks.amin(dim=(1, 2), keepdim=True), masks.amax(dim=(1, 2), keepdim=True)
    useful = (hi - lo).flatten() > 1e-12  # a constant map masks nothing in particular
    if not useful.any():
        return torch.zeros_like(a[0])
    masks = (masks[useful] - lo[useful]) / (hi[useful] - lo[useful])
    blank = x.clone()
    blank[:, :image_channels] = 0.0

    def masked():
        for chunk in masks.split(batch_size):
            batch = x.repeat(len(chunk), 1, 1, 1)
            batch[:, :image_channels] *= chunk[:, None]
            yield batch

    gain = _scores(net, masked()) - _scores(net, iter([blank]))
    weights = torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
    weights[useful] = torch.softmax(gain, dim=0)
    return torch.relu((weights[:, None, None] * a).sum(0))


@torch.no_grad()
def occlusion(net: Callable, x: torch.Tensor, image_channels: int, window: int | None = None,
              stride: int | None = None, batch_size: int = 32) -> torch.Tensor:
    """Mean drop of the logit over the windows hiding each pixel; windows of about 1/8 of the image
    width by default (of the order of the femoral neck), moved by half a window."""
    h, w = x.shape[-2:]
    window = max(1, min(window or round(min(h, w) / 8), h, w))
    stride = max(1, stride or window // 2)

    def starts(n: int) -> list[int]:
        s = list(range(0, n - window + 1, stride))
        return s if s[-1] == n - window else s + [n - window]  # the last window reaches the border

    boxes = [(y, x0) for y in starts(h) for x0 in starts(w)]
    fill = x[:, :image_channels].mean(dim=(2, 3), keepdim=True)  # grey: each channel's mean

    def occluded():
        for i in range(0, len(boxes), batch_size):
            chunk = boxes[i:i + batch_size]
            batch = x.repeat(len(chunk), 1, 1, 1)
            for j, (y, x0) in enumerate(chunk):
                batch[j, :image_channels, y:y + window, x0:x0 + window] = fill[0]
            yield batch

    base = _scores(net, iter([x]))[0]
    drops = torch.relu(base - _scores(net, occluded()))
    heat = torch.zeros(h, w, dtype=torch.float32, device=x.device)
    count = torch.zeros_like(heat)
    for (y, x0), drop in zip(boxes, drops):
        heat[y:y + window, x0:x0 + window] += drop
        count[y:y + window, x0:x0 + window] += 1
    return heat / count.clamp_min(1)


def expected_gradients_attribution(net: Callable, x: torch.Tensor, references: torch.Tensor, image_channels: int,
                                   steps: int = 4, batch_size: int = 32) -> torch.Tensor:
    """Signed attribution ``(image_channels, H, W)`` of ``net(x) - mean_r net(r)`` to the pixels of ``x``.

    For each reference ``r`` (``references`` is ``(N, C, H, W)``; only its leading ``image_channels``
    are used, the rest of the input, e.g. early fusion's clinical planes, stays ``x``'s): the gradient
    at the midpoints ``r + (s + 1/2) / steps * (x - r)``, ``s = 0..steps-1``, times ``x - r``; then the
    mean over references. The sum over all pixels approaches ``net(x) - mean net(r)`` as ``steps`` grows.
    """
    if references.dim() != 4 or references.shape[1:] != x.shape[1:] or len(references) == 0:
        raise ValueError(f"references must be (N, C, H, W) like the input {tuple(x.shape[1:])}; got "
                         f"{tuple(references.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    base = x.repeat(len(references), 1, 1, 1)
    base[:, :image_channels] = references[:, :image_channels].to(x)
    delta = x - base  # zero outside the image channels
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps
    points = (base[:, None] + alphas[None, :, None, None, None] * delta[:, None]).flatten(0, 1)
    grads = []
    with torch.enable_grad():
        for chunk in points.split(batch_size):
            chunk = chunk.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(net(chunk).sum(), chunk)
            grads.append(g.detach())
    mean_grad = torch.cat(grads).unflatten(0, (len(references), steps)).mean(dim=1)
    return (delta * mean_grad).mean(dim=0)[:image_channels]


def expected_gradients(net: Callable, x: torch.Tensor, references: torch.Tensor, image_channels: int,
                       steps: int = 4, batch_size: int = 32, smooth: float | None = None) -> torch.Tensor:
    """The map: positive part of the attribution summed over the image channels, Gaussian-smoothed
    (``smooth`` pixels, default 1/32 of the image width: about the femoral cortex's width)."""
    attribution = expected_gradients_attribution(net, x, references, image_channels, steps, batch_size).sum(0)
    sigma = float(smooth if smooth is not None else x.shape[-1] / 32)
    if sigma > 0:
        radius = max(1, math.ceil(3 * sigma))
        t = torch.arange(-radius, radius + 1, dtype=attribution.dtype, device=attribution.device)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        kernel = kernel / kernel.sum()
        a = F.pad(attribution[None, None], (radius, radius, radius, radius), mode="replicate")
        a = F.conv2d(F.conv2d(a, kernel.view(1, 1, -1, 1)), kernel.view(1, 1, 1, -1))
        attribution = a[0, 0]
    return torch.relu(attribution)


def compute_cam(model: nn.Module, image: torch.Tensor, clinical: torch.Tensor | None = None,
                method: str = "gradcam", layer: str | None = None, *, image_channels: int = IMAGE_CHANNELS,
                batch_size: int = 32, window: int | None = None, target: str = "osteoporosis",
                references: torch.Tensor | None = None, steps: int = 4, smooth: float | None = None) -> np.ndarray:
    """Class activation map of ``target``'s score for one input, upsampled to its size.

    Args:
        model: a :class:`models.Classifier` (any module returning one logit per image works).
        image: ``(C, H, W)`` or ``(1, C, H, W)``, the network's input as the loader builds it.
        clinical: ``(n_clinical,)`` normalised clinical vector, required iff the model fuses late.
        method: one of :data:`METHODS`.
        layer: module name to explain (default ``model.default_cam_layer``); only for :data:`LAYER_METHODS`.
        image_channels: leading channels holding the picture; the rest are never masked.
        batch_size: inputs per forward pass for Score-CAM, occlusion and expected gradients.
        window: occlusion window in pixels (default about 1/8 of the shorter side).
        target: ``"osteoporosis"`` (the logit) or ``"normal"`` (the negated logit), see :data:`TARGETS`.
        references: ``(N, C, H, W)`` inputs built like ``image`` (the run's training images), required by
            ``expected_gradients``; ``steps`` its path points per reference, ``smooth`` its Gaussian
            sigma in pixels (default width / 32).

    Returns ``(H, W)`` float32 in [0, 1] (max 1 unless the map is all zero).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if method in REFERENCE_METHODS and references is None:
        raise ValueError(f"method {method!r} needs reference inputs (N, C, H, W), e.g. the run's training images "
                         "(heatmaps.reference_inputs)")
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"expected one image (C, H, W) or (1, C, H, W); got shape {tuple(image.shape)}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = image.detach().to(device=device, dtype=torch.float32)
    if clinical is not None:
        clinical = clinical.detach().to(device=device, dtype=torch.float32).reshape(1, -1)
    net = target_net(ImageOnly(model, clinical), target)
    size = tuple(x.shape[-2:])
    with evaluating(model):
        if method == "occlusion":
            cam = occlusion(net, x, image_channels, window=window, batch_size=batch_size)
        elif method == "expected_gradients":
            refs = references.detach().to(device=device, dtype=torch.float32)
            cam = expected_gradients(net, x, refs, image_channels, steps, batch_size, smooth)
        else:
            name, module = resolve_layer(model, layer)
            if method == "gradcam":
                cam = grad_cam(net, x, module, name)
            elif method == "gradcam++":
                cam = grad_cam_pp(net, x, module, name)
            else:
                cam = score_cam(net, x, module, name, image_channels, batch_size=batch_size)
    return to_heatmap(cam, size)


@torch.no_grad()
def predict_logit(model: nn.Module, image: torch.Tensor, clinical: torch.Tensor | None = None) -> float:
    """The osteoporosis logit of one input, in eval mode (the model's modes restored)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = (image[None] if image.dim() == 3 else image).to(device=device, dtype=torch.float32)
    c = None if clinical is None else clinical.to(device=device, dtype=torch.float32).reshape(1, -1)
    with evaluating(model):
        return float(ImageOnly(model, c)(x).float()[0])
