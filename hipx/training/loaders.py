"""The data of a training run: its loaders (train, val, test) and the checks on its splits before any
file is written.

    summary = describe(files, training=True)           # images and cases per split; one-class splits refused
    check_patients(files, allow=False)                 # one patient in two splits refused
    loaders = make_loaders(cfg, stats, files)          # dict of DataLoaders (train shuffled, val/test in order)

Augmentation runs in the loader workers (``hipx.data.augment``), or on the device with
:func:`augment_on_device` (``hipx.data.augment_device``), never on validation or test images.
"""
from __future__ import annotations

import logging

from hipx.core import choices
from hipx.core import fusion
from hipx.core.cli import UserError
from hipx.core.runconfig import RunConfig
from hipx.data import filenames
from hipx.data import splits

logger = logging.getLogger(__name__)


def augment_on_device(cfg: RunConfig, device):
    """The device-side augmenter of ``--augment_device`` (auto: on CUDA when it can), or None."""
    from hipx.data import augment_device

    names = choices.parse_augment(cfg.augment)
    use = {"true": True, "false": False}.get(cfg.augment_device, device.type == "cuda")
    if not (use and names and cfg.handover == "uint8" and augment_device.supported(names)):
        return None
    return augment_device.DeviceAugmenter(names, cfg.augment_p, cfg.seed)


def make_loaders(cfg: RunConfig, stats, files: dict, dist_info=None, device_augment: bool = False,
                 measure=None) -> dict:
    """Training: a fresh (optionally class-balanced) order each epoch, sharded over ranks.
    Validation and test: every image exactly once, in file order (sharded over ranks and gathered).
    With ``device_augment`` the training workers only decode (the trainer augments). ``measure``: the
    data folder's ``measures.Measures``, which graded targets learn from."""
    import torch
    from torch.utils.data import DataLoader

    from hipx.core import runtime
    from hipx.data import augment, loader

    dist_info = dist_info or runtime.Dist()
    names = [] if device_augment else augment.parse_augment(cfg.augment)
    augmenter = augment.Augmenter(names, p=cfg.augment_p, enhance=loader.enhance) if names else None
    out = {}
    for split in loader.SPLITS:
        train = split == "train"
        ds = loader.HipDataset(files[split], stats, tuple(cfg.image_size),
                               early_fuse=fusion.mode(cfg.fusion).clinical_planes,
                               augment=augmenter if train else None, seed=cfg.seed, cache_gb=cfg.cache_gb,
                               desc=split, handover=cfg.handover,
                               measure=measure.of(files[split]) if measure is not None else None)
        if train:
            sampler = loader.EpochSampler(ds.labels, cfg.seed, cfg.sampler == "weight", dist_info.rank,
                                          dist_info.world)
        else:
            sampler = loader.ShardSampler(len(ds), dist_info.rank, dist_info.world)
        # a last training batch of one image would make BatchNorm's statistics meaningless
        # persistent workers: no start-up every epoch (the dataset's epoch is shared with them)
        out[split] = DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                                pin_memory=torch.cuda.is_available(), persistent_workers=cfg.workers > 0,
                                worker_init_fn=loader.quiet_worker if cfg.workers > 0 else None,
                                drop_last=train and len(sampler) % cfg.batch_size == 1)
    return out


def describe(files: dict, training: bool, folds: int = 0) -> str:
    """Images and cases per split; training needs both classes in train and val (of each fold of
    ``folds``-fold cross-validation)."""
    parts = []
    for split in files:
        labels = [filenames.decode(f).label for f in files[split]]
        unscored = labels.count(None)  # images without a binary label: train graded targets only
        labels = [y for y in labels if y is not None]
        parts.append(f"{split} {len(labels)} images ({sum(labels)} osteoporosis)"
                     + (f" + {unscored} without a binary label (train only, never scored)" if unscored else ""))
        if training and split != "test" and len(set(labels)) < 2:
            raise SystemExit(f"the {split} split holds only {'osteoporosis' if labels[0] else 'normal'} images "
                             f"({len(labels)}); training and choosing the best epoch need both classes in train "
                             f"and val. {_one_class_advice(split, folds)}")
    return ", ".join(parts)


def _one_class_advice(split: str, folds: int) -> str:
    if folds > 2:
        return (f"With --folds {folds} a fold's {split} part is too small to hold both: use fewer folds (e.g. "
                f"--folds {folds - 1}), or add data")
    if folds:
        return "Even 2 folds leave a fold with one class: cross-validation needs more patients of each class"
    return "Re-split the data (preprocess_filenames.py splits stratified by label)"


def check_patients(files: dict, allow: bool) -> None:
    """One patient's images in two splits inflate the validation and test scores: refused, naming the
    patient and the files, unless ``--allow_shared_patients`` (then a warning)."""
    shared = splits.shared_patients(files)
    if not shared:
        return
    patient, where = next(iter(shared.items()))
    text = " and ".join(f"{split} ({', '.join(names[:2])}{', ...' if len(names) > 2 else ''})"
                        for split, names in where.items())
    more = f" ({len(shared) - 1} more patients too: {', '.join(sorted(shared)[1:4])}...)" if len(shared) > 1 else ""
    message = f"patient {patient} has images in {text}{more}"
    if allow:
        logger.warning("%s; trained anyway (--allow_shared_patients): validation and test scores are optimistic",
                       message)
        return
    raise UserError(f"{message}. One patient's images must stay in one split, or the validation and test scores "
                    "are inflated: re-split by patient (preprocess_filenames.py does), or pass "
                    "--allow_shared_patients")
