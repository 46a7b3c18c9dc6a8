"""The classifier every network family shares: a feature extractor, a pooled head, optional late fusion.

Early fusion needs nothing here: the clinical values arrive as extra constant image channels and
the network only sees ``in_chans`` channels. Late fusion joins a small MLP embedding of the clinical
vector to the globally pooled image features, right before the final linear layer. Residual fusion
(``clinical_offset``) starts from the clinical logistic regression: a linear term of the clinical
vector (``clinical_coef``, ``clinical_intercept``, set by :meth:`Classifier.set_clinical_model`)
plus a correction through a zero-initialised head, so the untrained network *is* the clinical model
and training only moves away from it where that validates better (docs/fusion.md). The correction
sees the pooled image features and, as late fusion's head does, an embedding of the clinical vector
(``residual_head="late"``, new runs); runs made before it see the image only (``"linear"``). For
graded targets the clinical term is in the head's units: the standardised measurement (continuous)
or the cumulative-link score with its class offsets (ordinal), from ``hipx.stats.clinical_models``.

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
# residual fusion's correction: "late" sees the image features and the clinical embedding (late fusion's
# head, started at zero); "linear", runs made before it, the image features only
RESIDUAL_HEADS = ("late", "linear")


class Classifier(nn.Module):
    """Binary osteoporosis classifier returning one logit per image, shape ``(B,)``.

    Attributes: ``features`` (layers named ``conv0``, ``denseblock1``, ``transition1``, ...,
    ``norm5``), ``num_features``, ``in_chans``, ``late_fuse``, ``n_clinical``, ``default_cam_layer``
    (e.g. ``"features.denseblock4"``, the module path Grad-CAM should hook), ``final_act`` (applied
    after ``features.norm5``), ``clinical_mlp`` (late fusion only, else None), ``classifier``.
    """

    def __init__(self, features: nn.Sequential, num_features: int, in_chans: int, late_fuse: bool,
                 n_clinical: int = 3, act: str = "relu", drop_rate: float = 0.0, cam_layer: str = "",
                 clinical_offset: bool = False, target: targets.TargetSpec | None = None,
                 residual_head: str = "late") -> None:
        super().__init__()
        self.target = target or targets.TargetSpec()
        if residual_head not in RESIDUAL_HEADS:
            raise ValueError(f"residual_head {residual_head!r}: choose one of {', '.join(RESIDUAL_HEADS)}")
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
        self.residual_head = residual_head if self.clinical_offset else None
        if self.late_fuse and self.residual_head != "linear":
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
        if self.target.n_offsets:
            # gaps between the ordered class offsets, through softplus: one class-width apart at the start
            self.ordinal_steps = nn.Parameter(torch.full((self.target.n_offsets,), math.log(math.e - 1)))
        else:
            self.ordinal_steps = None
        if self.target.fitted_scale:
            # osteoporosis logit per training SD below the cut; validation refits it (the residual's scale)
            self.register_buffer("logit_scale", torch.tensor(targets.LOGIT_PER_SD))
        else:
            self.logit_scale = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "logit_scale"
        if self.logit_scale is not None and key not in state_dict:
            # a continuous run made before validation fitted the scale: it scored with the assumed one
            state_dict[key] = torch.tensor(targets.LOGIT_PER_SD)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def ordinal_offsets(self) -> torch.Tensor:
        """``delta_k`` of the cumulative logits ``h + delta_k`` (ordinal targets): 0, then increasing."""
        zero = self.classifier.bias.new_zeros(1)
        if self.ordinal_steps is None:
            return zero
        return torch.cat([zero, torch.cumsum(nn.functional.softplus(self.ordinal_steps), 0)])

    def score(self, h: torch.Tensor) -> torch.Tensor:
        """The head's output ``h`` -> the osteoporosis logit (targets.py)."""
        return targets.score(self.target, h, self.ordinal_offsets(), self.logit_scale)

    def predicted_value(self, logit: torch.Tensor) -> torch.Tensor | None:
        """The prediction in the measurement's terms (value or class index), None for binary targets."""
        return targets.predicted_value(self.target, logit, self.ordinal_offsets(), self.logit_scale)

    def set_clinical_model(self, coef, intercept: float, offsets=None) -> None:
        """Start from the clinical model: the clinical term ``coef . clinical + intercept`` in the head's
        units (residual fusion: ``hipx.stats.clinical_models`` fitted on the training split; for an
        ordinal target also its class ``offsets``, ``[0, ...]`` increasing) and a zero correction,
        whatever weights a pretrained start brought to the head."""
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
            if offsets is not None and self.ordinal_steps is not None:
                gaps = torch.as_tensor(offsets, dtype=self.ordinal_steps.dtype).diff().clamp_min(1e-4)
                if gaps.numel() != self.ordinal_steps.numel():
                    raise ValueError(f"set_clinical_model: {gaps.numel() + 1} class offsets for "
                                     f"{self.target.n_classes} classes")
                self.ordinal_steps.copy_(gaps + torch.log(-torch.expm1(-gaps)))  # softplus^-1

    def clinical_logit(self, clinical: torch.Tensor) -> torch.Tensor:
        """The clinical term ``(B,)`` in the head's units (residual fusion only)."""
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
        if self.clinical_mlp is not None:
            x = torch.cat([x, self.clinical_mlp(clinical.to(x.dtype))], dim=1)
        h = self.classifier(self.drop(x)).squeeze(1)
        if self.clinical_offset:
            h = h + self.clinical_logit(clinical).to(x.dtype)
        return self.score(h)

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
