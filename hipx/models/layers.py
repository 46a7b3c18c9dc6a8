"""Normalisation and activation choices (``--norm``, ``--act``) and the swap that applies them.

Both network families are built with torchvision's BatchNorm2d + ReLU layers; :func:`convert_norm_act`
then replaces those modules in place, so every family honours ``--norm`` and ``--act`` the same way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hipx.core.choices import ACTS, NORMS  # noqa: E402 (torch-free names for the command lines)

LEAKY_SLOPE = 0.1


class BatchInstanceNorm2d(nn.Module):
    """Batch-Instance Normalization (Nam & Kim, NeurIPS 2018, https://arxiv.org/abs/1805.07925).

    ``y = (rho * BN(x) + (1 - rho) * IN(x)) * weight + bias`` with one learnable gate ``rho`` in [0, 1]
    per channel, initialised to 1 (plain batch norm). Parameter and buffer names match BatchNorm2d,
    so batch-norm weights (e.g. ImageNet ones) load into it unchanged; only ``rho`` is new.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.rho = nn.Parameter(torch.ones(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The paper clamps rho to [0, 1] after every optimizer step. Clamping the stored value before
        # it is used is the same thing without an optimizer hook. A differentiable rho.clamp(0, 1)
        # would not do: its gradient is 0 at the bounds, so a gate starting at 1 would never move.
        # `.data` keeps autograd's version counter unchanged (values in range stay as they are), so
        # pending graphs and checkpoint recomputation remain valid.
        self.rho.data.clamp_(0.0, 1.0)
        if self.training:
            self.num_batches_tracked.add_(1)
        x_bn = F.batch_norm(x, self.running_mean, self.running_var, None, None,
                            self.training, self.momentum, self.eps)
        x_in = F.instance_norm(x, eps=self.eps)
        rho = self.rho.view(1, -1, 1, 1)
        out = rho * x_bn + (1.0 - rho) * x_in
        return out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


def check_choice(value: str, accepted: tuple[str, ...], what: str) -> None:
    """Refuse a value that is not one of ``accepted``, naming what it is and listing the choices."""
    if value not in accepted:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(accepted)}")


def make_norm(kind: str, num_features: int) -> nn.Module:
    """A 2-D normalisation layer: ``bn`` BatchNorm2d, ``in`` InstanceNorm2d(affine), ``bin`` BatchInstanceNorm2d."""
    check_choice(kind, NORMS, "norm")
    if kind == "bn":
        return nn.BatchNorm2d(num_features)
    if kind == "in":
        return nn.InstanceNorm2d(num_features, affine=True)
    return BatchInstanceNorm2d(num_features)


def make_act(kind: str, num_channels: int, inplace: bool = False) -> nn.Module:
    """An activation: ``relu``, ``elu``, ``leaky`` (LeakyReLU, slope 0.1) or ``prelu`` (one slope per channel)."""
    check_choice(kind, ACTS, "act")
    if kind == "relu":
        return nn.ReLU(inplace=inplace)
    if kind == "elu":
        return nn.ELU(inplace=inplace)
    if kind == "leaky":
        return nn.LeakyReLU(LEAKY_SLOPE, inplace=inplace)
    return nn.PReLU(num_channels)


def convert_norm_act(module: nn.Module, norm: str, act: str) -> nn.Module:
    """Replace every BatchNorm2d by ``norm`` and every ReLU by ``act``, recursively, in place.

    A per-channel PReLU needs the channel count at each ReLU; in torchvision's DenseNet every ReLU
    follows a norm layer within the same parent, so the count is that of the last norm seen.
    Returns ``module`` for chaining.
    """
    check_choice(norm, NORMS, "norm")
    check_choice(act, ACTS, "act")
    channels = None
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            channels = child.num_features
            if norm != "bn":
                setattr(module, name, make_norm(norm, channels))
        elif isinstance(child, nn.ReLU):
            if channels is None:
                raise ValueError(f"cannot size the {act!r} activation at {name!r}: no norm layer before it")
            if act != "relu":
                setattr(module, name, make_act(act, channels, inplace=child.inplace))
        else:
            convert_norm_act(child, norm, act)
    return module
