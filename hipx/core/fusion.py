"""The fusion mode -- how sex, age and BMI reach the network -- and what the network receives: its
inputs for a batch and the probability a run reports (with flip test-time augmentation, the mean
of an image's and its mirror's). The trainer, ``predict.py`` and ``visualize_gradcam.py`` all ask
here, so a run is scored the same way wherever it is used.

A new mode is one entry in :data:`MODES` (its ``--help`` text included) and, where the network
changes, its head in ``hipx/models/classifier.py`` with the flag that builds it in
``hipx/models/__init__.py`` (``build_model_from_config``); the training session, the network builder
(``hipx.inference.network``), the loader and the trainer ask the mode's properties here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Mode:
    name: str
    text: str  # as logs and reports name it
    clinical_planes: bool  # the clinical values as constant image channels (the loader builds them)
    clinical_vector: bool  # the normalised clinical vector as the network's second input
    clinical_offset: bool = False  # a linear clinical term, started at the logistic regression (models.Classifier)
    help: str = ""  # what main.py --help says of it

    @property
    def uses_clinical(self) -> bool:
        """Whether sex, age and BMI reach the network at all (missing values are then worth a warning)."""
        return self.clinical_planes or self.clinical_vector


MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("early", "early fusion", clinical_planes=True, clinical_vector=False,
         help="constant image channels; the default"),
    Mode("late", "late fusion", clinical_planes=False, clinical_vector=True,
         help="joined to the pooled image features"),
    Mode("image", "image only", clinical_planes=False, clinical_vector=False,
         help="not at all: an image-only model, for comparison"),
    # starts as the clinical baseline's logistic regression, the image adding a correction (docs/fusion.md)
    Mode("residual", "residual fusion (clinical model + image correction)", clinical_planes=False,
         clinical_vector=True, clinical_offset=True,
         help="starts as the clinical logistic regression fitted on train, the image adds a correction; for small "
              "sets where the clinical values may carry the signal, docs/fusion.md"),
)}
NAMES = tuple(MODES)
DEFAULT = "early"


def help_text() -> str:
    """``--fusion``'s help: every mode with what it does."""
    named = [f"{m.name} ({m.help})" for m in MODES.values()]
    return "how sex, age and BMI reach the network: " + ", ".join(named[:-1]) + f" or {named[-1]}"


def mode(name: str) -> Mode:
    if name not in MODES:
        raise ValueError(f"fusion mode {name!r}: choose one of {', '.join(NAMES)}")
    return MODES[name]


def text(name: str) -> str:
    return mode(name).text


def from_flags(fusion: str | None, late_fuse: bool | None, image_only: bool) -> str | None:
    """The mode ``--fusion``, ``--late_fuse`` (the original work's flag: True late, False early; None
    when not given) and ``--image_only`` name together; None when none names one (early for a new
    run, the run's own for --test/--resume). The one place these flags are checked against each
    other: flags that name two modes raise ``ValueError`` naming them."""
    if image_only and late_fuse:
        raise ValueError("--image_only and --late_fuse True exclude each other: late fusion needs the clinical data")
    given = {fusion} if fusion else set()
    given |= {"late"} if late_fuse else {"image"} if image_only else set()
    if len(given) > 1:
        raise ValueError(f"--fusion {fusion} and --{'late_fuse True' if late_fuse else 'image_only'} exclude each "
                         "other: give one fusion mode")
    if late_fuse is False and given - {"early"}:
        named = given.pop()
        other = f"--fusion {named}" if fusion else "--image_only"
        raise ValueError(f"--late_fuse False (early fusion) and {other} exclude each other: give one fusion mode, "
                         f"e.g. only --fusion {named}")
    if late_fuse is False:
        return "early"
    return given.pop() if given else None


def of_config(config: Mapping) -> str:
    """The mode a saved configuration names. Runs written before it was one value carry two
    booleans: ``late_fuse`` (late fusion) and ``image_only``; neither means early fusion."""
    name = config.get("fusion")
    if name is None and "late_fuse" in config:
        name = "late" if config["late_fuse"] else "image" if config.get("image_only") else "early"
    return mode(name).name


def clinical_input(name: str, clinical: torch.Tensor | None) -> torch.Tensor | None:
    """The clinical vector the network of mode ``name`` is given beside the image, or None."""
    return clinical if mode(name).clinical_vector else None


def network_inputs(name: str, image: torch.Tensor, clinical: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """What the network of mode ``name`` is called with: the image (for early fusion with its
    clinical planes already in it) and, where the mode takes one, the clinical vector."""
    if not mode(name).clinical_vector:
        return (image,)
    if clinical is None:
        raise ValueError(f"{text(name)} needs the clinical vector of every image")
    return image, clinical


def probability(forward: Callable[[dict], torch.Tensor], batch: dict, tta: str = "none",
                logits: torch.Tensor | None = None) -> torch.Tensor:
    """P(osteoporosis) of a batch as a run scores it: the sigmoid of the logit, or with ``tta`` flip the
    mean of the image's and its left/right mirror's (:func:`scored`)."""
    return scored(forward, batch, tta, logits)[0]


def scored(forward: Callable[[dict], torch.Tensor], batch: dict, tta: str = "none",
           logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probability, logit)`` of a batch as a run scores it. The logit is the network's own, or with
    ``tta`` flip that of the mean probability computed in log space, so it is exact where the 32-bit
    probability has rounded to 0 or 1: a graded target's predicted value is read from it
    (:func:`targets.predicted_value`), never from a clamped probability."""
    import torch
    import torch.nn.functional as F

    own = forward(batch) if logits is None else logits
    if tta != "flip":
        return torch.sigmoid(own), own
    mirror = forward({**batch, "image": torch.flip(batch["image"], dims=(-1,))})
    logit = (torch.logaddexp(F.logsigmoid(own), F.logsigmoid(mirror))
             - torch.logaddexp(F.logsigmoid(-own), F.logsigmoid(-mirror)))
    return (torch.sigmoid(own) + torch.sigmoid(mirror)) / 2, logit
