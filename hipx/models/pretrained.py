"""Initialise a model from pretrained weights: ``--pretrained imagenet``, a run folder, or a weights file.

``imagenet`` (densenet121/169/201 only) takes torchvision's ImageNet weights through its weights API
and torch's hub cache (``$TORCH_HOME/hub/checkpoints``); they are downloaded only when that flag is
given and the file is not cached yet, and without a connection the run stops at once, naming
``--pretrained PATH`` for a copy fetched elsewhere. A run folder (``outs/<save_dir>/fold<fold>``)
means its ``best.pth``: e.g. a model trained on demo radiographs, fine-tuned on your own; a
pretraining run folder of ``pretrain.py`` means its ``encoder.pth`` (the encoder learnt without
labels: ``features.*`` only, the head starts new). Anything else is a local file; nothing else is
ever downloaded.

Accepted: a state dict, or a dict holding one under ``"model"`` or ``"state_dict"``, saved with
``torch.save`` and readable with ``weights_only=True`` (tensors and plain Python values only; a file
with pickled objects is refused, since unpickling it could run arbitrary code). Keys may carry
``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefixes and may be torchvision's (``features.*``,
``classifier.*``, including the old ``norm.1`` spelling of its published DenseNet files).

Tensors whose shape does not fit are skipped, except the first convolution ``features.conv0.weight``
trained on another number of channels. Trained on this suite's two image channels (radiograph,
enhanced copy: a ``pretrain.py`` encoder, an image-only or late-fusion run) and loaded into a model
with more (early fusion: the clinical planes follow the image channels), its kernel is kept for the
image channels and the clinical channels keep the model's initialisation. Otherwise (e.g. RGB
ImageNet weights for 2 or 5 input channels) the kernel is averaged over the input channels and
repeated for every channel of the model, scaled by ``old_channels / new_channels`` so an image of
constant intensity gives the same response.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import socket
import urllib.error
import urllib.parse
import zipfile
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from .densenet import TORCHVISION_DENSENETS

logger = logging.getLogger(__name__)

IMAGENET = "imagenet"
RUN_CHECKPOINT = "best.pth"  # the checkpoint of a run folder (runfiles.BEST; models/ does not import the app)
ENCODER_FILE = "encoder.pth"  # the weights of a pretraining run folder (pretrain.ENCODER)
DOWNLOAD_TIMEOUT_S = 30  # per socket operation: an offline machine fails at once, a slow link still finishes

FIRST_CONV = "features.conv0.weight"
IMAGE_CHANNELS = 2  # the loader's radiograph + enhanced copy (loader.IMAGE_CHANNELS), first in every input
HEAD_PREFIXES = ("classifier.", "clinical_mlp.", "final_act.")
_PREFIX = re.compile(r"^(?:module\.|_orig_mod\.)+")
# torchvision's published DenseNet files spell 'denselayer1.norm.1.weight' for 'denselayer1.norm1.weight'
_OLD_TV_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


class PretrainedUnavailable(RuntimeError):
    """ImageNet weights are neither cached nor downloadable (offline)."""


def imagenet_weights(name: str) -> str:
    """Path of torchvision's ImageNet weights for ``name`` in torch's hub cache; fetched through
    torchvision's weights API (``IMAGENET1K_V1``) when not cached yet."""
    if name not in TORCHVISION_DENSENETS:
        raise ValueError(f"--pretrained imagenet exists for {', '.join(TORCHVISION_DENSENETS)} only, not {name}; "
                         "choose one of them with --model, or give --pretrained PATH")
    weights = tvm.get_model_weights(name).IMAGENET1K_V1
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urllib.parse.urlparse(weights.url).path))
    if os.path.isfile(cached):
        return cached
    logger.info("fetching torchvision's ImageNet weights for %s from %s into %s", name, weights.url, cached)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        weights.get_state_dict(progress=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise PretrainedUnavailable(
            f"--pretrained imagenet: torchvision's {name} ImageNet weights are not cached ({cached}) and could not be "
            f"downloaded from {weights.url} ({getattr(exc, 'reason', exc)}). On a machine without internet, fetch "
            f"that file elsewhere and give it with --pretrained PATH (or copy it to {cached})") from None
    finally:
        socket.setdefaulttimeout(previous)
    return cached


def resolve(pretrained: str | os.PathLike, model_name: str) -> str:
    """The weights file ``--pretrained`` means: ImageNet weights from the cache for ``imagenet``, a run
    folder's ``best.pth``, a pretraining run folder's ``encoder.pth``, or the file itself. Raises
    for a folder holding neither."""
    if str(pretrained) == IMAGENET:
        return imagenet_weights(model_name)
    path = Path(pretrained)
    if path.is_dir():
        for name in (RUN_CHECKPOINT, ENCODER_FILE):
            if (path / name).is_file():
                return str(path / name)
        raise FileNotFoundError(f"--pretrained {path}: a folder must be a run folder holding {RUN_CHECKPOINT} "
                                f"(outs/<save_dir>/fold<fold>) or a pretrain.py run folder holding {ENCODER_FILE} "
                                "(outs/<save_dir>)")
    if path.is_file() and not _torch_file(path):
        raise ValueError(f"--pretrained {path}: not a torch weights file (torch.save writes a zip archive); give "
                         "imagenet, a run folder (outs/<save_dir>/fold<fold>), a pretrain.py run folder or a .pth "
                         "file of weights, e.g. --pretrained outs/demo/fold_x")
    return str(path)


def _torch_file(path: Path) -> bool:
    """A zip archive (torch.save since 1.6) or a legacy pickle (first byte 0x80): what torch.load reads."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    return zipfile.is_zipfile(path) or head[:1] == b"\x80"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the tensors of a weights file, with keys cleaned up (prefixes stripped, old names renamed)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"refusing to load {path}: it contains pickled Python objects, not only tensors "
                         "(loading them could run arbitrary code). Save just the weights, e.g. "
                         f"torch.save(model.state_dict(), path). torch said: {str(exc).splitlines()[-1]}") from exc
    except Exception as exc:  # torch raises RuntimeError, KeyError, EOFError... for files that are not its own
        raise ValueError(f"cannot read {path} as a torch weights file: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path} holds no state dict (a dict of tensor names to tensors, "
                         f"possibly under 'model' or 'state_dict'); got {type(obj).__name__}")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{path} is not a state dict: entries {not_tensors[:5]} are not tensors; expected a "
                         "dict of tensors, possibly under a 'model' or 'state_dict' key")
    state = {}
    for key, value in obj.items():
        key = _PREFIX.sub("", key)
        match = _OLD_TV_KEY.match(key)
        state[match.group(1) + match.group(2) if match else key] = value
    return state


def adapt_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """``(O, C, kh, kw)`` kernel -> ``(O, in_chans, kh, kw)``: channel mean, repeated, scaled by ``C / in_chans``."""
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_chans, 1, 1) * (weight.shape[1] / in_chans)


def extend_first_conv(weight: torch.Tensor, model_weight: torch.Tensor) -> torch.Tensor:
    """A kernel of the :data:`IMAGE_CHANNELS` image channels into a model with more input channels:
    the image channels get it unchanged, the others (early fusion's clinical planes) keep ``model_weight``'s."""
    out = model_weight.detach().clone()
    out[:, :weight.shape[1]] = weight
    return out


def _summary(keys: list[str]) -> str:
    return f"{len(keys)} ({', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''})"


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> dict[str, list[str]]:
    """Copy the fitting tensors of ``path`` into ``model``; returns the keys per outcome.

    Outcomes: ``loaded``, ``adapted`` (first conv, other channel count), ``skipped`` (shape mismatch),
    ``missing`` (in the model, not in the file), ``unexpected`` (in the file, not in the model).
    Raises ValueError when nothing at all fits: that is the wrong file, not a partial match.
    """
    source = read_state_dict(path)
    target = model.state_dict()
    new_state: dict[str, torch.Tensor] = {}
    report: dict[str, list[str]] = {"loaded": [], "adapted": [], "skipped": [], "missing": [], "unexpected": []}
    for key, tensor in source.items():
        if key not in target:
            report["unexpected"].append(key)
        elif tensor.shape == target[key].shape:
            new_state[key] = tensor
            report["loaded"].append(key)
        elif (key == FIRST_CONV and tensor.dim() == 4
              and tensor.shape[:1] + tensor.shape[2:] == target[key].shape[:1] + target[key].shape[2:]):
            report["adapted"].append(key)
            if tensor.shape[1] == IMAGE_CHANNELS < target[key].shape[1]:
                new_state[key] = extend_first_conv(tensor, target[key])
                logger.info("%s: %s %s kept for the %d image channels; the other %d input channels keep their "
                            "initialisation", path, key, tuple(tensor.shape), IMAGE_CHANNELS,
                            target[key].shape[1] - IMAGE_CHANNELS)
            else:
                new_state[key] = adapt_first_conv(tensor, target[key].shape[1])
                logger.info("%s: %s %s adapted to %d input channels (channel mean x %d/%d)", path, key,
                            tuple(tensor.shape), target[key].shape[1], tensor.shape[1], target[key].shape[1])
        else:
            report["skipped"].append(key)
    report["missing"] = [k for k in target if k not in source]
    # counters such as BatchNorm's num_batches_tracked fit any network: they prove nothing
    if not [k for k in report["loaded"] + report["adapted"] if not k.endswith("num_batches_tracked")]:
        raise ValueError(f"no tensor of {path} fits this model (e.g. file keys {list(source)[:3]}, "
                         f"model keys {list(target)[:3]}): is it weights for another network?")
    model.load_state_dict(new_state, strict=False)

    logger.info("%s: loaded %d tensors, adapted %d", path, len(report["loaded"]), len(report["adapted"]))
    for outcome, why in (("skipped", "shape mismatch"), ("missing", "not in the file, kept at initialisation"),
                         ("unexpected", "not in the model")):
        body = [k for k in report[outcome] if not k.startswith(HEAD_PREFIXES)]
        head = [k for k in report[outcome] if k.startswith(HEAD_PREFIXES)]
        if body:
            logger.warning("%s: %s (%s): %s", path, outcome, why, _summary(body))
        if head:  # a new head for the binary task is expected
            logger.info("%s: head %s (%s): %s", path, outcome, why, _summary(head))
    return report
