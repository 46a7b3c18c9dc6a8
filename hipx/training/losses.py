"""Losses on one osteoporosis logit per image."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hipx.core.choices import LOSSES  # noqa: F401 (torch-free names for the command lines)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float | None = None) -> torch.Tensor:
    """Binary focal loss (Lin et al., ICCV 2017): BCE scaled by (1 - p_t)^gamma; ``alpha`` weights the
    positive class (1 - alpha the negative). gamma = 0 and alpha None is plain BCE."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    loss = (1 - p_t) ** gamma * bce
    if alpha is not None:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.mean()


def build_loss(name: str, focal_gamma: float = 2.0, alpha: float | None = None):
    """``bce`` (optionally class-weighted by ``alpha``) or ``focal``; returns loss(logits, target)."""
    if name == "bce":
        return lambda logits, target: focal_loss(logits, target, 0.0, alpha)
    if name == "focal":
        return lambda logits, target: focal_loss(logits, target, focal_gamma, alpha)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
