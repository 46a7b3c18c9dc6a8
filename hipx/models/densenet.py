"""The DenseNet feature extractors: DenseNet-BC (``dense_net``) and torchvision's densenet121/169/201.

Both are torchvision ``DenseNet`` instances, so they share layers, initialisation and layer names
(``features.conv0``, ``denseblock1``, ``transition1``, ..., ``norm5``); only their ``features``
Sequential is kept (the classifier lives in :mod:`models.classifier`).
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn
from torchvision import models as tvm

from hipx.core.choices import STEMS  # noqa: F401 (torch-free names for the command lines)

from .layers import check_choice

# name -> (torchvision builder, channels of the final feature map)
TORCHVISION_DENSENETS = {
    "densenet121": (tvm.densenet121, 1024),
    "densenet169": (tvm.densenet169, 1664),
    "densenet201": (tvm.densenet201, 1920),
}


def _stem_conv(in_chans: int, out_chans: int, kernel_size: int, stride: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight)  # as torchvision's DenseNet initialises its convolutions
    return conv


def densenet_bc_features(in_chans: int, depth: int = 40, growth_rate: int = 12, stem: str = "downsample",
                         memory_efficient: bool = False) -> tuple[nn.Sequential, int]:
    """DenseNet-BC (Huang et al., CVPR 2017, https://arxiv.org/abs/1608.06993) with three dense blocks.

    Each block has ``(depth - 4) / 6`` bottleneck layers (BN-ReLU-1x1 conv 4k, BN-ReLU-3x3 conv k);
    transitions halve the channels (compression 0.5) and the resolution. ``stem="original"`` is the
    paper's 3x3 stride-1 convolution to 2k channels at full resolution; ``"downsample"`` is the
    ImageNet stem (7x7 stride-2 conv, norm, ReLU, 3x3 stride-2 max-pool), 4x smaller feature maps.
    Returns ``(features, num_features)``.
    """
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(f"DenseNet-BC needs depth >= 10 with (depth - 4) % 6 == 0 "
                         f"(e.g. 10, 40, 100, 190); got depth {depth}")
    if growth_rate < 1:
        raise ValueError(f"growth_rate must be a positive integer; got {growth_rate}")
    check_choice(stem, STEMS, "stem")
    n = (depth - 4) // 6
    net = tvm.DenseNet(growth_rate=growth_rate, block_config=(n, n, n), num_init_features=2 * growth_rate,
                       bn_size=4, num_classes=1, memory_efficient=memory_efficient)
    features = net.features
    if stem == "downsample":
        features.conv0 = _stem_conv(in_chans, 2 * growth_rate, 7, stride=2)
    else:  # the paper's CIFAR stem: one convolution, the first dense layer normalises its output
        layers = OrderedDict(features.named_children())
        for name in ("conv0", "norm0", "relu0", "pool0"):
            del layers[name]
        features = nn.Sequential(OrderedDict([("conv0", _stem_conv(in_chans, 2 * growth_rate, 3, stride=1)),
                                              *layers.items()]))
    return features, features.norm5.num_features


def torchvision_features(name: str, in_chans: int, memory_efficient: bool = False) -> tuple[nn.Sequential, int]:
    """torchvision's densenet121/169/201 (random weights) with ``conv0`` taking ``in_chans`` channels."""
    check_choice(name, tuple(TORCHVISION_DENSENETS), "torchvision DenseNet")
    builder, num_features = TORCHVISION_DENSENETS[name]
    features = builder(weights=None, memory_efficient=memory_efficient).features
    old = features.conv0
    features.conv0 = _stem_conv(in_chans, old.out_channels, old.kernel_size[0], stride=old.stride[0])
    return features, num_features


def last_dense_block(features: nn.Sequential) -> str:
    """Name of the last dense block, e.g. ``"denseblock4"``: the default Grad-CAM target."""
    return [name for name, _ in features.named_children() if name.startswith("denseblock")][-1]

