"""The names a user chooses from on the command lines: networks, normalisations, activations, stems,
losses, augmentations, heatmap methods and targets, test outcomes (tp, fp, fn, tn), bootstrap intervals
and devices, with the smallest image side.

The modules that implement them (``models``, ``losses``, ``augment``, ``cam``, ``loader``) import
their names from here; the scripts build their parsers from here. Nothing here imports torch,
NumPy or OpenCV, so ``--help`` and a mistyped flag answer at once instead of after the ~5 s
torch import.
"""
from __future__ import annotations

MIN_SIDE = 16  # smallest image side accepted anywhere: CLAHE works on 8 x 8 tiles, the networks stride 16

TORCHVISION_DENSENETS = ("densenet121", "densenet169", "densenet201")
MODEL_NAMES = ("dense_net", *TORCHVISION_DENSENETS)
NORMS = ("bn", "in", "bin")
ACTS = ("relu", "elu", "leaky", "prelu")
STEMS = ("downsample", "original")
LOSSES = ("bce", "focal")

AUGMENT_NAMES = ("crop", "flip", "rotate", "cut", "elastic", "cat_elastic", "gamma", "contrast", "noise")
# those with a device version (augment_device.py): the others recompute the enhanced channel (CLAHE)
DEVICE_AUGMENTATIONS = ("crop", "flip", "rotate", "cut", "cat_elastic")
HANDOVERS = ("uint8", "float")  # what DataLoader workers hand over (loader.HipDataset)
TTA_CHOICES = ("none", "flip")  # test-time augmentation (fusion.probability)
AS_TRAINED = ("auto", "raw", "crops")  # predict.py: what its images are (raw radiographs or a data folder's crops)

CAM_METHODS = ("gradcam", "gradcam++", "scorecam", "occlusion", "expected_gradients")
CAM_TARGETS = ("osteoporosis", "normal")  # whose evidence a map shows: the logit, or the negated logit
# visualize_gradcam.py --explain: a class, or per image the class the run predicts at its threshold
CAM_EXPLAIN_CHOICES = (*CAM_TARGETS, "predicted")
# the method that localises on the demo (docs/heatmaps.md, "Does the heatmap fall on the bone?")
CAM_DEFAULT_METHOD = "expected_gradients"

# the outcome of a test image at the run's threshold: kind -> (true label, prediction), as
# visualize_gradcam.py --select and the report's case gallery name them
OUTCOMES = {"tp": (1, 1), "fp": (0, 1), "fn": (1, 0), "tn": (0, 0)}
OUTCOME_NAMES = {"tp": "true positive", "fp": "false positive", "fn": "false negative", "tn": "true negative"}
CI_INTERVALS = ("bca", "percentile")  # bootstrap confidence intervals (confidence.py)
DEVICES = ("auto", "cpu", "cuda")  # --device (runtime.select_device)
CV_DESIGNS = ("oof", "heldout")  # cross-validation designs (folds.py)
CV_VAL_FRACTION = 0.2  # share of a fold's training patients that validates it (--cv oof)
# main.py --learning_curve given without sizes: each subset half the next, so that the points lie evenly on
# the curve's log axis; the four subsets together hold 0.94 times the training patients of the
# cross-validation itself (1.0), so they cost about as much training again
LEARNING_CURVE_SIZES = (0.0625, 0.125, 0.25, 0.5, 1.0)


def unknown_augmentation(name: str) -> ValueError:
    return ValueError(f"unknown augmentation {name!r}; choose from {', '.join(AUGMENT_NAMES)} "
                      "(comma-separated), or 'none'")


def without_device_version(names: list[str] | tuple[str, ...]) -> list[str]:
    """The augmentations of ``names`` that have no device version (augment_device.py)."""
    return [name for name in names if name not in DEVICE_AUGMENTATIONS]


def parse_augment(spec: str | None) -> list[str]:
    """``"crop"`` or ``"crop,flip"`` -> names in the given order, duplicates dropped;
    ``None``, ``""`` and ``"none"`` -> ``[]``. An unknown name raises ValueError listing valid ones."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return []
    names: list[str] = []
    for name in (part.strip() for part in spec.split(",")):
        if not name:
            continue
        if name not in AUGMENT_NAMES:
            if name.lower() == "none":
                raise ValueError(f"'none' cannot be combined with other augmentations (got {spec!r})")
            raise unknown_augmentation(name)
        if name not in names:
            names.append(name)
    return names

# the splits of a data folder, their default shares, and the network input size
SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)
IMAGE_SIZE = (704, 407)  # (height, width) of the original work's hip crops
