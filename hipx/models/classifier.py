"""The classifier every network family shares: a feature extractor, a pooled head, optional late fusion.

Early fusion needs nothing here: the clinical values arrive as extra constant image channels and
the network only sees ``in_chans`` channels. Late fusion joins a small MLP embedding of the clinical
vector to the globally pooled image features, right before the final linear layer. Residual fusion
(``clinical_offset``) starts from the clinical logistic regression: a linear term of the clinical
vector (``clinical_coef``, ``clinical_intercept``, set by :meth:`Classifier.set_clinical_model`)
plus the image's correction through a zero-initialised head, so the untrained network *is* the
clinical model and training only moves away from it where that validates better (docs/fusion.md).

Whatever the target (``targets.py``: binary, ordinal grades, a continuous T-score), the network
returns one osteoporosis logit per image; an ordinal head adds its ordered class offsets
(``ordinal_steps``), a continuous one reads its single output as the standardised value.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from hipx.core import targets

from .layers import make_act

CLINICAL_HIDDEN = 16


class Classifier(nn.Module):
    """Binary osteoporosis classifier returning one logit per image, shape ``(B,)``.

    Attributes: ``features`` (layers named ``conv0``, ``denseblock1``, ``transition1``, ...,
    ``norm5``), ``num_features``, ``in_chans``, ``late_fuse``, ``n_clinical``, ``default_cam_layer``
    (e.g. ``"features.denseblock4"``, the module path Grad-CAM should hook), ``final_act`` (applied
    after ``features.norm5``), ``clinical_mlp`` (late fusion only, else None), ``classifier``.
    """

    def __init__(self, features: nn.Sequential, num_features: int, in_chans: int, late_fuse: bool,
                 n_clinical: int = 3, act: str = "relu", drop_rate: float = 0.0, cam_layer: str = "",
                 clinical_offset: bool = False, target: targets.TargetSpec | None = None) -> None:
        super().__init__()
        self.target = target or targets.TargetSpec()
        if self.target.kind != "binary" and clinical_offset:
            raise ValueError("residual fusion starts from the clinical logistic regression: binary targets only")
        if clinical_offset and not late_fuse:
            raise ValueError("the clinical offset (residual fusion) needs the clinical vector: build with late_fuse=True")
        self.features = features
        self.num_features = num_features
        self.in_chans = in_chans
        self.late_fuse = bool(late_fuse)
        self.n_clinical = n_clinical if late_fuse else 0
        self.default_cam_layer = cam_layer
        # Not in-place: a Grad-CAM hook on features.norm5 must see its output unmodified.
        self.final_act = make_act(act, num_features)
        self.clinical_offset = bool(clinical_offset)
        if self.clinical_offset:
            # the clinical model's log-odds per unit of the normalised clinical vector: set to the clinical
            # logistic regression before training (set_clinical_model), then trained with the rest, so the
            # clinical coefficients can become the ones that hold beside the image (e.g. BMI's, which the
            # picture confounds); saved with the weights
            self.clinical_coef = nn.Parameter(torch.zeros(n_clinical))
            self.clinical_intercept = nn.Parameter(torch.zeros(()))
        if self.late_fuse and not self.clinical_offset:
            self.clinical_mlp = nn.Sequential(
                nn.Linear(n_clinical, CLINICAL_HIDDEN), make_act(act, CLINICAL_HIDDEN),
                nn.Linear(CLINICAL_HIDDEN, CLINICAL_HIDDEN), make_act(act, CLINICAL_HIDDEN),
            )
            head_in = num_features + CLINICAL_HIDDEN
        else:
            self.clinical_mlp = None
            head_in = num_features
        self.drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(head_in, 1)
        for m in [self.classifier, *(self.clinical_mlp or [])]:
            if isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)
        if self.clinical_offset:
            nn.init.zeros_(self.classifier.weight)  # the image's correction starts at nothing
        if self.target.kind == "ordinal" and self.target.n_classes > 2:
            # gaps between the ordered class offsets, through softplus: one class-width apart at the start
            self.ordinal_steps = nn.Parameter(torch.full((self.target.n_classes - 2,), math.log(math.e - 1)))
        else:
            self.ordinal_steps = None

    def ordinal_offsets(self) -> torch.Tensor:
        """``delta_k`` of the cumulative logits ``h + delta_k`` (ordinal targets): 0, then increasing."""
        zero = self.classifier.bias.new_zeros(1)
        if self.ordinal_steps is None:
            return zero
        return torch.cat([zero, torch.cumsum(nn.functional.softplus(self.ordinal_steps), 0)])

    def score(self, h: torch.Tensor) -> torch.Tensor:
        """The head's output ``h`` -> the osteoporosis logit (targets.py)."""
        if self.target.kind == "ordinal":
            return h + self.ordinal_offsets()[self.target.cut_class]
        if self.target.kind == "continuous":
            return targets.LOGIT_PER_SD * (self.target.z_cut - h)
        return h

    def predicted_value(self, logit: torch.Tensor) -> torch.Tensor | None:
        """The prediction in the measurement's terms (value or class index), None for binary targets."""
        return targets.predicted_value(self.target, logit, self.ordinal_offsets())

    def set_clinical_model(self, coef, intercept: float) -> None:
        """Start from the clinical model: the fixed clinical logit ``coef . clinical + intercept``
        (residual fusion; e.g. the clinical baseline's logistic regression fitted on the training
        split) and a zero image correction, whatever weights a pretrained start brought to the head."""
        if not self.clinical_offset:
            raise ValueError("set_clinical_model: this network has no clinical offset (build with clinical_offset=True)")
        coef = torch.as_tensor(coef, dtype=self.clinical_coef.dtype).reshape(-1)
        if coef.numel() != self.n_clinical:
            raise ValueError(f"set_clinical_model: {coef.numel()} coefficients for {self.n_clinical} clinical values")
        with torch.no_grad():
            self.clinical_coef.copy_(coef)
            self.clinical_intercept.fill_(float(intercept))
            self.classifier.weight.zero_()
            self.classifier.bias.zero_()

    def clinical_logit(self, clinical: torch.Tensor) -> torch.Tensor:
        """The clinical model's logit ``(B,)`` (residual fusion only)."""
        return clinical.to(self.clinical_coef.dtype) @ self.clinical_coef + self.clinical_intercept

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` -> ``(B, num_features, h, w)``, after the final norm and activation."""
        if image.dim() != 4 or image.shape[1] != self.in_chans:
            raise ValueError(f"expected an image batch of shape (B, {self.in_chans}, H, W)"
                             f"{' (image + clinical channels)' if not self.late_fuse else ''}; "
                             f"got {tuple(image.shape)}")
        return self.final_act(self.features(image))

    def forward_head(self, feats: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        """Global average pool, late fusion with ``clinical`` ``(B, n_clinical)`` if enabled -> logits ``(B,)``."""
        self._check_clinical(clinical, feats.shape[0])
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(feats, 1), 1)
        if self.clinical_offset:
            return self.classifier(self.drop(x)).squeeze(1) + self.clinical_logit(clinical).to(x.dtype)
        if self.late_fuse:
            x = torch.cat([x, self.clinical_mlp(clinical.to(x.dtype))], dim=1)
        return self.score(self.classifier(self.drop(x)).squeeze(1))

    def forward(self, image: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        """One logit (osteoporosis) per image: ``(B,)``. ``clinical`` is required iff ``late_fuse``."""
        self._check_clinical(clinical, image.shape[0])
        return self.forward_head(self.forward_features(image), clinical)

    def _check_clinical(self, clinical: torch.Tensor | None, batch: int) -> None:
        if not self.late_fuse:
            if clinical is not None:
                raise ValueError("this early-fusion model takes the clinical data as image channels; "
                                 "call it without a clinical vector (or build it with late_fuse=True)")
            return
        if clinical is None:
            raise ValueError(f"this late-fusion model needs the clinical vector, shape (B, {self.n_clinical}); "
                             "call model(image, clinical)")
        if tuple(clinical.shape) != (batch, self.n_clinical):
            raise ValueError(f"expected clinical of shape ({batch}, {self.n_clinical}); got {tuple(clinical.shape)}")
