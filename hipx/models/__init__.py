"""Networks: :func:`build_model` turns ``--model``, ``--norm``, ``--act``, ``--stem``... into a :class:`Classifier`.

    model = build_model("dense_net", in_chans=2, late_fuse=True)      # DenseNet-BC, depth 40, k 12
    logits = model(image, clinical)                                   # (B,): one logit per image

Every model is a :class:`Classifier` around a DenseNet ``features`` Sequential; Grad-CAM should hook
``model.default_cam_layer`` (the last dense block, e.g. ``"features.denseblock4"``) or
``"features.norm5"``.
"""
from __future__ import annotations

from torch import nn

from .classifier import Classifier
from .densenet import STEMS, TORCHVISION_DENSENETS, densenet_bc_features, last_dense_block, torchvision_features
from .layers import ACTS, NORMS, BatchInstanceNorm2d, check_choice, convert_norm_act
from .pretrained import load_pretrained, resolve as resolve_pretrained

__all__ = ["MODEL_NAMES", "NORMS", "ACTS", "STEMS", "Classifier", "BatchInstanceNorm2d", "build_model",
           "build_model_from_config", "build_model_from_checkpoint", "count_parameters", "load_pretrained",
           "resolve_pretrained"]

from hipx.core import fusion  # noqa: E402
from hipx.core import targets  # noqa: E402
from hipx.core.choices import MODEL_NAMES  # noqa: E402

assert MODEL_NAMES[1:] == tuple(TORCHVISION_DENSENETS), "choices.MODEL_NAMES lists every network"


def build_model(name: str, in_chans: int, late_fuse: bool, n_clinical: int = 3, depth: int = 40,
                growth_rate: int = 12, norm: str = "bn", act: str = "relu", stem: str = "downsample",
                pretrained: str | None = None, drop_rate: float = 0.0,
                memory_efficient: bool = False, clinical_offset: bool = False,
                target: "targets.TargetSpec | None" = None, residual_head: str = "late") -> Classifier:
    """Build a binary classifier (one logit per image).

    Args:
        name: one of :data:`MODEL_NAMES`. ``dense_net`` is DenseNet-BC with 3 dense blocks;
            ``densenet121/169/201`` are torchvision's (random weights unless ``pretrained``).
        in_chans: image channels the network receives (for early fusion: image + clinical channels).
        late_fuse: join an MLP embedding of the ``(B, n_clinical)`` clinical vector to the pooled features.
        n_clinical: length of the clinical vector (late fusion only).
        depth, growth_rate: DenseNet-BC depth (``(depth - 4) % 6 == 0``) and growth rate k;
            ``dense_net`` only, ignored by the torchvision families.
        norm: one of :data:`NORMS` (batch, instance, batch-instance normalisation).
        act: one of :data:`ACTS`, used throughout (dense layers, final activation, clinical MLP).
        stem: one of :data:`STEMS`; ``original`` (full resolution, very memory-hungry) exists for
            ``dense_net`` only, the torchvision families always downsample by 4.
        pretrained: ``"imagenet"`` (torchvision families), a run folder or a weights file, see
            :mod:`models.pretrained`.
        drop_rate: dropout before the final linear layer.
        memory_efficient: recompute the dense layers' bottleneck inputs in backward (torch
            checkpointing) instead of storing them: less memory, slower.
        clinical_offset: residual fusion (with ``late_fuse``): the logit is a fixed clinical
            logistic model (:meth:`Classifier.set_clinical_model`) plus the image's correction.
        residual_head: residual fusion's correction, ``"late"`` (image features and the clinical
            embedding) or ``"linear"`` (image features only; runs made before the late head).
        target: what the head learns (``targets.TargetSpec``; default the binary label).
    """
    check_choice(name, MODEL_NAMES, "model")
    check_choice(norm, NORMS, "norm")
    check_choice(act, ACTS, "act")
    check_choice(stem, STEMS, "stem")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive integer; got {in_chans!r}")
    if late_fuse and (not isinstance(n_clinical, int) or n_clinical < 1):
        raise ValueError(f"late fusion needs n_clinical >= 1 clinical values; got {n_clinical!r}")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1); got {drop_rate!r}")

    if name == "dense_net":
        features, num_features = densenet_bc_features(in_chans, depth, growth_rate, stem, memory_efficient)
    else:
        if stem != "downsample":
            raise ValueError(f"stem {stem!r} exists for dense_net only; {name} always uses the 'downsample' stem")
        features, num_features = torchvision_features(name, in_chans, memory_efficient)
    convert_norm_act(features, norm, act)
    model = Classifier(features, num_features, in_chans, late_fuse, n_clinical, act, drop_rate,
                       cam_layer=f"features.{last_dense_block(features)}", clinical_offset=clinical_offset,
                       target=target, residual_head=residual_head)
    if pretrained:
        load_pretrained(model, resolve_pretrained(pretrained, name))
    return model


def build_model_from_config(config: dict, pretrained: str | None = None) -> Classifier:
    """The network a run's configuration (``config.json`` / a checkpoint's ``config``, with its
    ``fusion`` mode) describes: the one place that maps main.py's flags to :func:`build_model`."""
    return build_model(config["model"], in_chans=config["in_chans"],
                       late_fuse=fusion.mode(config["fusion"]).clinical_vector,
                       clinical_offset=fusion.mode(config["fusion"]).clinical_offset,
                       residual_head=config.get("residual_head") or "linear",
                       depth=config["depth"], growth_rate=config["growthRate"], norm=config["norm"],
                       act=config["act"], stem=config["stem"], drop_rate=config.get("drop_rate", 0.0),
                       pretrained=pretrained, target=targets.TargetSpec.from_dict(config.get("target_spec")))


def build_model_from_checkpoint(state: dict, source: str = "the checkpoint") -> Classifier:
    """A trained network: built from a checkpoint's configuration and loaded with its weights, in
    eval mode on the CPU. ``state`` as ``runfiles.load_checkpoint`` returns it; ``source`` names the
    file in the error when the weights do not fit the configured network."""
    config = state["config"]
    model = build_model_from_config(config)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"{source}: the weights do not fit the configured network ({config['model']}, "
                         f"{config['in_chans']} input channels, {config['fusion']} fusion): "
                         f"{str(exc).splitlines()[0]}") from exc
    return model.eval()


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
