"""What the network learns (``main.py --target``) and the one osteoporosis score it gives, whatever it learns.

* ``binary`` (the default): the yes/no label, one logit.
* ``ordinal``: ordered classes of the measurement -- a grade's levels (Singh 1-6) or the WHO classes
  of a T-score (osteoporosis <= -2.5 < osteopenia <= -1 < normal) -- with a cumulative-link head:
  one image score ``h`` and ordered offsets, ``logit P(class <= k) = h + delta_k`` with ``delta_0 = 0``
  (McCullagh 1980; CORAL-like shared weights, Cao et al. 2020). With two classes it *is* the binary model.
* ``continuous``: the measurement itself (T-score, BMD), standardised on the training images, with a
  robust (Huber) loss.

The clinical cut (osteoporosis when the value <= ``cut``: T <= -2.5, grade <= 2) turns every output into
one osteoporosis logit, which :class:`models.Classifier` returns as it always has: validation picks
the best epoch and the threshold on it, and every metric, report, CV summary, ``compare.py``,
``predict.py`` and the heatmaps read it unchanged. For ordinal targets it is ``logit P(class <= c)``
of the cut's class ``c``; for continuous ones ``scale * (z_cut - z_hat)``, a monotone map of the
predicted value whose scale is fitted on the run's validation images at every validation (the residual's
SD: ``P(value <= cut) = Phi((z_cut - z_hat) / SD)``, :func:`scale_for`) and saved with the weights; runs
made before that used :data:`LOGIT_PER_SD`, a residual of half a training SD. Lower is always worse: a lower predicted
value is a higher osteoporosis score.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

from hipx.core import measures

if TYPE_CHECKING:  # NumPy is imported where it is used: main.py --help takes KINDS from here, before any library
    import numpy as np

KINDS = ("binary", "ordinal", "continuous")
DEFAULT = "binary"
LOGIT_PER_SD = 3.4  # continuous: osteoporosis logit per training SD below the cut (logistic ~ normal, SD 0.5)
# the logistic curve closest to the normal CDF: Phi(x) ~ sigmoid(1.702 x) (Bowling et al., J Ind Eng Manag 2009)
PROBIT_TO_LOGIT = 1.702
MIN_RESIDUAL_SD = 0.05  # a fitted residual SD below this (in training SDs) is taken as this: no infinite logits
HUBER_DELTA = 1.0  # in training SDs: squared loss within, absolute beyond (robust to a mislabelled scan)


class TargetError(ValueError):
    """A target that the data cannot give (no measurement, no cut, one class, ...)."""


@dataclass(frozen=True)
class TargetSpec:
    """A run's target, fixed when it starts (``RunConfig.target_spec``): what is learnt and how it
    becomes the osteoporosis score. ``bounds``: class of a value v = number of bounds b with v > b
    (class 0 the lowest, i.e. worst); ``classes``: a name per class. ``mean``/``sd``: the training
    measurements' (continuous)."""
    kind: str = DEFAULT
    name: str | None = None  # the measurement (measures.NAMES), None for a binary run without one
    cut: float | None = None
    bounds: tuple = field(default_factory=tuple)
    classes: tuple = field(default_factory=tuple)
    mean: float = 0.0
    sd: float = 1.0

    @classmethod
    def from_dict(cls, saved: Mapping | None) -> "TargetSpec":
        if not saved:
            return cls()
        values = dict(saved)
        values["bounds"] = tuple(float(b) for b in values.get("bounds", ()))
        values["classes"] = tuple(values.get("classes", ()))
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bounds"], d["classes"] = list(self.bounds), list(self.classes)
        return d

    @property
    def n_classes(self) -> int:
        return len(self.bounds) + 1

    # -- what each kind means for the rest of the suite: the one place that asks which kind it is -----
    @property
    def graded(self) -> bool:
        """Learns the measurement behind the label (every kind but the binary label)."""
        return self.kind != "binary"

    @property
    def n_offsets(self) -> int:
        """Learnt class offsets beyond the first (ordinal, more than two classes): the head's extra parameters."""
        return self.n_classes - 2 if self.kind == "ordinal" else 0

    @property
    def fitted_scale(self) -> bool:
        """The probability's scale is fitted on validation (continuous: the residual's SD, :func:`scale_for`)."""
        return self.kind == "continuous"

    @property
    def predicted_column(self) -> str | None:
        """The column ``predict.py`` writes the prediction in the measurement's terms to (None: binary)."""
        return {"continuous": f"predicted_{self.name}", "ordinal": "predicted_class"}.get(self.kind)

    @property
    def head_text(self) -> str:
        """What the head's output ``h`` is, as the log names it."""
        return {"continuous": f"standardised {self.name}", "ordinal": f"{self.name} score"}.get(self.kind, "logit")

    @property
    def predicted_is_class(self) -> bool:
        """The predicted value is a class index (ordinal), not a value on the measurement's scale."""
        return self.kind == "ordinal"

    def predicted_text(self, value: float) -> str:
        """One predicted value as ``predict.py`` writes it: the value, or the class at a (mean) class index."""
        if self.predicted_is_class:
            return self.classes[int(min(max(round(value), 0), self.n_classes - 1))]
        return f"{value:.4g}"

    @property
    def cut_class(self) -> int:
        """Ordinal: osteoporosis is class <= this (the classes whose values all lie at or below the cut)."""
        return int(sum(b <= self.cut for b in self.bounds)) - 1

    @property
    def z_cut(self) -> float:
        return (self.cut - self.mean) / self.sd

    def classify(self, values: np.ndarray) -> np.ndarray:
        """Ordinal class of each measured value (-1 where NaN)."""
        import numpy as np

        values = np.asarray(values, dtype=float)
        out = (values[:, None] > np.asarray(self.bounds, dtype=float)[None, :]).sum(axis=1)
        return np.where(np.isnan(values), -1, out)

    def describe(self) -> str:
        if self.kind == "binary":
            return "binary label"
        if self.kind == "continuous":
            return (f"continuous {self.name} (train mean {self.mean:.3g}, SD {self.sd:.3g}; "
                    f"osteoporosis at {self.name} <= {self.cut:g})")
        return (f"ordinal {self.name}, {self.n_classes} classes ({', '.join(self.classes)}); osteoporosis: "
                f"{', '.join(self.classes[:self.cut_class + 1])}")


def build_spec(kind: str, measure: measures.Measures | None, train_values: Sequence[float],
               cut: float | None = None, absent: str | None = None) -> TargetSpec:
    """The target of a new run from its training images' measured values (NaN where unknown); ``absent``:
    why the data folder has no measurement (:func:`measures.absence`), where ``measure`` is None.
    Raises :class:`TargetError` with one line a user can act on."""
    import numpy as np

    if kind not in KINDS:
        raise TargetError(f"--target {kind}: choose one of {', '.join(KINDS)}")
    if kind == "binary":
        return TargetSpec(name=measure.name if measure else None)
    if measure is None:
        absent = absent or f"the data folder's {measures.MANIFEST} has none (no '{measures.COLUMN}' column)"
        raise TargetError(f"--target {kind} learns from the measurement behind the label, and {absent}: preprocess "
                          "with --tscore-col, --grade-col or --bmd-col (docs/data.md), or train --target binary")
    kind_info = measure.kind
    given = cut is not None
    cut = kind_info.cut if cut is None else float(cut)
    if cut is None:
        raise TargetError(f"--target {kind} on {measure.name}: there is no standard cut; give --cut VALUE "
                          f"(osteoporosis when {measure.name} <= VALUE)")
    values = np.asarray([v for v in train_values if not math.isnan(v)], dtype=float)
    if len(values) < 2:
        raise TargetError(f"--target {kind}: {len(values)} training image(s) have a {measure.name}; at least 2 needed")
    _check_cut_splits(kind, measure, values, cut, given)
    if kind == "continuous":
        sd = float(values.std())
        if sd <= 0:
            raise TargetError(f"--target continuous: every training image has {measure.name} {values[0]:g}")
        return TargetSpec("continuous", measure.name, cut, mean=float(values.mean()), sd=sd)
    if kind_info.scale == "grade":
        levels = sorted(set(values.tolist()))
        bounds = tuple(levels[:-1])
        classes = tuple(f"{measure.name} {v:g}" for v in levels)
    elif measure.name == "T-score":
        bounds = measures.WHO_BOUNDS
        classes = ("osteoporosis", "osteopenia", "normal")
    else:
        raise TargetError(f"--target ordinal needs ordered classes: a grade, or a T-score (WHO classes); "
                          f"{measure.name} has none: use --target continuous")
    spec = TargetSpec("ordinal", measure.name, cut, bounds=tuple(float(b) for b in bounds), classes=classes)
    if not 0 <= spec.cut_class <= spec.n_classes - 2 or (kind_info.scale != "grade" and cut not in bounds):
        raise TargetError(f"--cut {cut:g}: for ordinal {measure.name} the cut must split the classes "
                          f"({', '.join(classes)}): one of {', '.join(f'{b:g}' for b in bounds)}")
    if len(set(spec.classify(values).tolist())) < 2:
        raise TargetError(f"--target ordinal: the training images hold one class of {measure.name} only")
    return spec


def _check_cut_splits(kind: str, measure: measures.Measures, values: "np.ndarray", cut: float, given: bool) -> None:
    """A cut with every training value on one side makes every image the same class: the score would
    say osteoporosis (or not) for everyone. Refused, naming the training range and what is accepted."""
    if not math.isfinite(cut):
        raise TargetError(f"--cut {cut}: give a finite number (osteoporosis when {measure.name} <= VALUE)")
    below = int((values <= cut).sum())
    lo, hi = float(values.min()), float(values.max())
    if 0 < below < len(values) or lo == hi:  # one value only: refused below, as no target can be learnt
        return
    side = "above" if below == 0 else "at or below"
    what = f"--cut {cut:g}" if given else f"--cut {cut:g} (the default for a {measure.name})"
    accepted = f"give a cut from {lo:g} up to (not including) {hi:g}"
    if kind == "ordinal" and measure.kind.scale != "grade":  # a T-score's classes: the cut is a WHO bound
        fits = [f"{b:g}" for b in measures.WHO_BOUNDS if lo <= b < hi]
        accepted = (f"give a class bound within them: {', '.join(fits)}" if fits else
                    f"no class bound ({', '.join(f'{b:g}' for b in measures.WHO_BOUNDS)}) lies within them: train "
                    "--target continuous with a cut within them, or --target binary")
    raise TargetError(f"{what}: every training image's {measure.name} lies {side} it ({len(values)} images with a "
                      f"{measure.name}, from {lo:g} to {hi:g}), so the cut separates none of them and --target {kind} "
                      f"would score every image alike; {accepted}")


# -- torch: the score and the loss ---------------------------------------------------------------------
def cumulative_logits(spec: TargetSpec, logit, deltas):
    """Ordinal: ``(B, K-1)`` logits of P(class <= k), from the osteoporosis logit (that of k = cut class)."""
    return (logit - deltas[spec.cut_class])[:, None] + deltas[None, :]


def score(spec: TargetSpec, h, deltas=None, scale=None):
    """The head's output ``h`` -> the osteoporosis logit: ordinal ``h + delta_c`` (c the cut's class),
    continuous ``scale * (z_cut - h)`` (``h`` the predicted standardised value), binary ``h``."""
    if spec.kind == "ordinal":
        return h + deltas[spec.cut_class]
    if spec.kind == "continuous":
        return (LOGIT_PER_SD if scale is None else scale) * (spec.z_cut - h)
    return h


def predicted_value(spec: TargetSpec, logit, deltas=None, scale=None):
    """The prediction in the measurement's terms, from the osteoporosis logit: continuous the value
    (T-score, BMD; ``scale`` the network's logit per SD, :data:`LOGIT_PER_SD` unless fitted), ordinal
    the median class index (0 = lowest); None for binary."""
    import torch

    if spec.kind == "continuous":
        return spec.mean + spec.sd * (spec.z_cut - logit / (LOGIT_PER_SD if scale is None else scale))
    if spec.kind == "ordinal":
        return (cumulative_logits(spec, logit, deltas) < 0).sum(dim=1).to(torch.float32)
    return None


def residual_sd(spec: TargetSpec, measured, predicted) -> float | None:
    """Continuous: the root mean square of ``measured - predicted`` in training SDs over the images with a
    measurement (None where there is none)."""
    import numpy as np

    measured, predicted = np.asarray(measured, dtype=float), np.asarray(predicted, dtype=float)
    known = np.isfinite(measured) & np.isfinite(predicted)
    if not known.any():
        return None
    return max(float(np.sqrt(np.mean(((measured[known] - predicted[known]) / spec.sd) ** 2))), MIN_RESIDUAL_SD)


def scale_for(sd: float) -> float:
    """The osteoporosis logit per training SD below the cut when the measurement scatters with ``sd``
    (training SDs) around the prediction: P(value <= cut) = Phi((z_cut - z_hat) / sd)."""
    return PROBIT_TO_LOGIT / sd


def loss(spec: TargetSpec, logit, label, measure, deltas=None, binary_loss=None, scale=None):
    """The training loss of a batch. Binary: ``binary_loss(logit, label)`` (BCE or focal). Ordinal: the
    summed BCE of the K-1 cumulative logits (an image without a measurement keeps its label's task).
    Continuous: Huber on the standardised value, over images with a measurement."""
    import torch
    import torch.nn.functional as F

    if spec.kind == "binary":
        return binary_loss(logit, label)
    known = ~torch.isnan(measure)
    if spec.kind == "continuous":
        if not known.any():
            return logit.sum() * 0.0
        z_hat = spec.z_cut - logit / (LOGIT_PER_SD if scale is None else scale)
        z = (measure - spec.mean) / spec.sd
        return F.huber_loss(z_hat[known], z[known], delta=HUBER_DELTA)
    cum = cumulative_logits(spec, logit, deltas)
    bounds = torch.as_tensor(spec.bounds, dtype=measure.dtype, device=measure.device)
    klass = (measure[:, None] > bounds[None, :]).sum(dim=1)
    target = (klass[:, None] <= torch.arange(len(spec.bounds), device=measure.device)[None, :]).to(cum.dtype)
    weight = known[:, None].expand_as(target).clone()
    if (~known).any():  # without a measurement only the cut's own task is known: the label
        target[~known, spec.cut_class] = label[~known].to(cum.dtype)
        weight[~known, spec.cut_class] = label[~known] >= 0
    weight = weight.to(cum.dtype)
    bce = F.binary_cross_entropy_with_logits(cum, target, reduction="none")
    return (bce * weight).sum() / max(len(logit), 1)
