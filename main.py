"""Train, validate and test an osteoporosis classifier on hip X-rays.

    python3 main.py --model dense_net --fold _Dense_LF --augment cat_elastic --late_fuse True

Data: ``--data_dir`` (default ``data/``) holds ``train/ val/ test/`` with images named
``<patient>_<crop>_<label>-<sex>-<age>-<bmi>.png`` (see ``filenames.py``); make the demo set with
``python3 synthetic.py --out data``. Every epoch is validated on all of val; the best epoch by
``--select_metric`` is kept in ``outs/<save_dir>/fold<fold>/best.pth`` and only that checkpoint is
scored on test, at the threshold chosen on validation.

An interrupted run (Ctrl-C, a lost machine) continues exactly where its last finished epoch left it:

    python3 main.py --resume --save_dir <save_dir> --fold <fold>

Every setting comes from the run; ``--resume --extend_epochs N`` trains a finished run N epochs
longer (docs/troubleshooting.md).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import NoReturn

from hipx.core import choices
from hipx.data import filenames
from hipx.core import fusion
from hipx.core import runconfig
from hipx.runs import runfiles
from hipx.data import splits
from hipx.core.choices import ACTS, MODEL_NAMES, NORMS, STEMS
from hipx.core.cli import (UserError, add_bootstrap, add_data_dir, add_device, add_seed, given_flags, positive, run_main,
                 str2bool)
from hipx.runs.runchecks import Action, Outcome, command, extend, finished, prepare_run, resume_command
from hipx.core.runconfig import RunConfig

# torch and everything built on it are imported inside the functions, after the command line has
# been checked: --help and a mistyped flag answer in well under a second instead of ~5 s.

logger = logging.getLogger("main")

SELECT_METRICS = ("roc_auc", "pr_auc", "f2acc", "f2", "f1", "f0_5", "accuracy", "balanced_accuracy", "mcc")
# what a run's settings are -- which the checkpoint fixes (--test reads them back instead of trusting the
# command line), which only say where and how fast this session runs (the only flags --resume lets
# differ) -- is said once, by the fields of runconfig.RunConfig



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    add_data_dir(g)
    g.add_argument("--image_size", type=positive(int), nargs=2, metavar=("H", "W"), default=list(splits.IMAGE_SIZE),
                   help="resize to H x W for the network (default: %(default)s, the original size)")
    g.add_argument("--augment", default="", help="augmentation(s) for training, comma-separated from: "
                   f"{', '.join(choices.AUGMENT_NAMES)}; empty = none (default)")
    g.add_argument("--augment_p", type=float, default=0.3, help="share of training samples augmented, drawn "
                   "afresh every epoch (default: %(default)s)")
    g.add_argument("--sampler", choices=("none", "weight"), default="none",
                   help="weight = class-balanced sampling of training images (default: %(default)s)")
    g.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default: %(default)s)")
    g.add_argument("--cache_gb", type=float, default=4.0, help="keep decoded images in memory up to this size "
                   "per split (default: %(default)s)")
    g.add_argument("--handover", choices=choices.HANDOVERS, default="uint8", help="what loader workers hand "
                   "over: uint8 images finished on the device (default) or float network inputs (as before "
                   "2026-12; training images are then not rounded to 8 bits after augmentation)")
    g.add_argument("--augment_device", choices=("auto", "true", "false"), default="auto", help="augment on the "
                   f"device with one sampling grid per batch ({', '.join(choices.DEVICE_AUGMENTATIONS)}); "
                   "auto: on CUDA when every --augment has a device version (default: %(default)s)")
    g.add_argument("--allow_shared_patients", action="store_true", help="train although one patient has images "
                   "in two splits (refused by default: it inflates the validation and test scores)")

    g = p.add_argument_group("model")
    g.add_argument("--model", choices=MODEL_NAMES, default="dense_net", help="network (default: %(default)s)")
    g.add_argument("--fusion", choices=fusion.NAMES, default=None, help="how sex, age and BMI reach the "
                   "network: early (constant image channels; the default), late (joined to the pooled image "
                   "features), residual (starts as the clinical logistic regression fitted on train, the "
                   "image adds a correction; for small sets where the clinical values may carry the signal, "
                   "docs/fusion.md) or image (not at all: an image-only model, for comparison)")
    g.add_argument("--late_fuse", type=str2bool, default=False, metavar="BOOL",
                   help="the original work's flag: True = --fusion late; False = early fusion")
    g.add_argument("--image_only", action="store_true", help="= --fusion image; excludes --late_fuse True")
    g.add_argument("--depth", type=int, default=40, help="DenseNet-BC depth, (depth-4) %% 6 == 0 (dense_net only)")
    g.add_argument("--growthRate", type=positive(int), default=12, help="DenseNet-BC growth rate (dense_net only)")
    g.add_argument("--norm", choices=NORMS, default="bn", help="batch, instance or batch-instance norm")
    g.add_argument("--act", choices=ACTS, default="relu", help="activation (default: %(default)s)")
    g.add_argument("--stem", choices=STEMS, default="downsample", help="dense_net stem: 'downsample' (stride-4, "
                   "default) or 'original' (full-resolution 3x3 conv of the original work: a GPU workload)")
    g.add_argument("--drop_rate", type=float, default=0.0, help="dropout before the classifier")
    g.add_argument("--pretrained", default=None, metavar="imagenet|RUN|PATH", help="start from: imagenet = "
                   "torchvision's ImageNet weights (densenet121/169/201; downloaded into torch's cache only when "
                   "this is given), a run folder (its best.pth, e.g. a model trained on demo radiographs), a "
                   "pretrain.py run folder (its encoder.pth, learnt without labels) or a local weights file")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epoch", type=positive(int), default=50, help="epochs (default: %(default)s)")
    g.add_argument("--batch_size", type=positive(int), default=12, help="(default: %(default)s)")
    g.add_argument("--lrG", type=positive(float), default=1e-3, help="Adam learning rate (default: %(default)s)")
    g.add_argument("--beta", type=float, default=0.9, help="Adam beta1 (default: %(default)s)")
    g.add_argument("--sched", choices=("cosine", "none"), default="cosine", help="learning-rate schedule over "
                   "the epochs: cosine decay to 0 (default) or constant --lrG")
    g.add_argument("--loss", choices=choices.LOSSES, default="bce", help="binary cross-entropy or focal loss")
    g.add_argument("--focal_gamma", type=float, default=None, help="focal loss gamma (--loss focal; default 2)")
    g.add_argument("--t_alpha", type=float, default=None, help="weight of the osteoporosis class in the loss, "
                   "in (0, 1); the normal class gets 1 - t_alpha (default: unweighted)")
    g.add_argument("--ema", type=float, default=0.0, metavar="DECAY", help="weight averaging: validate, save and "
                   "test the exponential moving average of the weights, updated every step with this decay, "
                   "e.g. 0.99; 0 = off (default)")
    g.add_argument("--tta", choices=choices.TTA_CHOICES, default="none", help="test-time augmentation for "
                   "validation and test: flip = mean probability of each image and its left/right mirror "
                   "(default: %(default)s)")
    g.add_argument("--target", choices=("binary", "ordinal", "continuous"), default="binary", help="what the "
                   "network learns: binary = the yes/no label (default); ordinal = ordered classes of the "
                   "measurement (a grade's levels, or the WHO classes of a T-score); continuous = the T-score or "
                   "BMD itself. Needs the measurement in the data folder's manifest.csv (preprocess_filenames.py "
                   "--tscore-col/--grade-col/--bmd-col; the demo has its T-score). Every metric is on one "
                   "osteoporosis score, at --cut (docs/targets.md)")
    g.add_argument("--cut", type=float, default=None, metavar="VALUE", help="the clinical cut: osteoporosis when "
                   "the measurement <= VALUE (default: -2.5 for a T-score, 2 for a grade; BMD needs it)")
    g.add_argument("--select_metric", choices=SELECT_METRICS, default="roc_auc", help="validation metric that "
                   "picks the best epoch (default: %(default)s; f2acc = 1.5*F2 + accuracy, the original's)")

    g = p.add_argument_group("run")
    g.add_argument("--save_dir", default=None, help="run group under outs/ (default: a new timestamp)")
    g.add_argument("--fold", default="", help="run name; files go to outs/<save_dir>/fold<fold>/")
    g.add_argument("--out_root", default="outs", help="(default: %(default)s)")
    g.add_argument("--config", default=None, metavar="RUN_OR_JSON", help="re-run a saved configuration as a new "
                   "run: a run folder outs/<save_dir>/fold<fold> or its config.json; flags given beside it "
                   "override it (each is logged), e.g. --save_dir for the new run's folder")
    g.add_argument("--test", nargs="?", const=True, default=False, type=str2bool, metavar="BOOL",
                   help="only score the best checkpoint of an existing run (--save_dir/--fold) on test")
    g.add_argument("--overwrite", action="store_true", help="with --test: replace the run's existing test "
                   "result (test_metrics.json, test_predictions.csv and report); refused without it")
    add_seed(g, "the run: weights, data order and sampling, augmentation, folds, the report's bootstrap")
    g.add_argument("--folds", type=int, default=0, metavar="K", help="K-fold cross-validation: K runs "
                   "fold<fold>0..K-1 on patient-level folds (design: --cv); writes outs/<save_dir>/cv_summary.json "
                   "and cv_report.md")
    g.add_argument("--cv", choices=("auto", *choices.CV_DESIGNS), default="auto", help="cross-validation design: "
                   "oof = out-of-fold, all images pooled, fold k is model k's test set, so every patient is tested "
                   "once (validation carved from the other folds, --cv_val); heldout = fold k of train+val "
                   "validates model k, every model is tested on the same test/; auto (default) = oof when the "
                   "data has no test/ images, else heldout")
    g.add_argument("--cv_val", type=float, default=choices.CV_VAL_FRACTION, metavar="FRACTION",
                   help="--cv oof: share of each fold's training patients (per class) that validates it "
                   "(default: %(default)s)")
    add_bootstrap(g, off="no report")
    add_device(g)
    g.add_argument("--gpus", default=None, help="CUDA device index to use, e.g. 0 (several: use torchrun)")
    g.add_argument("--cpus", type=positive(int), default=None, help="CPU threads for torch (default: the cores "
                   "left after the --workers loader processes, at least 1)")
    g.add_argument("--compile", action="store_true", help="torch.compile the network (pays on long GPU runs "
                   "only: see docs/gpu-pipeline.md)")
    g.add_argument("--dtype", choices=("auto", "float", "half"), default="auto", help="auto: fp16/bf16 autocast "
                   "on CUDA, fp32 on CPU; float: always fp32; half: reduced precision")
    g.add_argument("--channels_last", choices=("auto", "true", "false"), default="auto",
                   help="NHWC memory layout; auto: on for CUDA and for large images on CPU")
    g.add_argument("--resume", action="store_true", help="continue the run --save_dir/--fold from its last.pth, "
                   "with every setting from the run (a different value on the command line is refused)")
    g.add_argument("--extend_epochs", type=positive(int), default=None, metavar="N", help="with --resume: train "
                   "a finished run N epochs longer; a cosine schedule restarts from --lrG and decays to 0 over "
                   "the N epochs; best.pth, test and report files are renewed")
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels (exactly reproducible, "
                   "slower)")
    g.add_argument("--sync_bn", action="store_true", help="SyncBatchNorm across torchrun processes")
    return p


def check_network(x: argparse.Namespace | RunConfig) -> None:
    """Refuse network settings (--model, --depth, --stem, --image_size) that do not make a network;
    pretrain.py checks its encoder with the same rules."""
    if x.model == "dense_net" and (x.depth < 10 or (x.depth - 4) % 6):
        raise SystemExit(f"--depth {x.depth}: DenseNet-BC needs depth >= 10 with (depth - 4) divisible by 6, "
                         "e.g. 40, 100, 190")
    if x.model != "dense_net" and x.stem != "downsample":
        raise SystemExit(f"--stem {x.stem}: only dense_net has a choice of stem")
    smallest = 32 if x.model in choices.TORCHVISION_DENSENETS else choices.MIN_SIDE  # their total stride
    if min(x.image_size) < smallest:
        raise SystemExit(f"--image_size {x.image_size[0]} {x.image_size[1]}: each side must be at least "
                         f"{smallest} pixels for --model {x.model}")


def check_args(args: argparse.Namespace) -> None:
    """Refuse flag combinations that make no sense, naming the flag; ``args`` is not changed."""
    check_settings(args, flags=True)


def check_settings(x: argparse.Namespace | RunConfig, flags: bool = False) -> None:
    """Refuse settings that make no sense, naming the flag: of the command line (``flags``, with the
    flags that are no setting: the actions and the older fusion spellings) or of a configuration
    read with ``--config``."""
    check_network(x)
    if not 0.0 <= x.augment_p <= 1.0:
        raise SystemExit(f"--augment_p {x.augment_p}: must be within [0, 1]")
    if not 0.0 <= x.beta < 1.0:
        raise SystemExit(f"--beta {x.beta}: Adam beta1 must be within [0, 1)")
    if x.t_alpha is not None and not 0.0 < x.t_alpha < 1.0:
        raise SystemExit(f"--t_alpha {x.t_alpha}: must be within (0, 1)")
    if flags and x.focal_gamma is not None and x.loss != "focal":
        raise SystemExit("--focal_gamma only applies with --loss focal")
    if x.focal_gamma is not None and x.focal_gamma < 0:
        raise SystemExit(f"--focal_gamma {x.focal_gamma}: must be >= 0")
    if x.workers < 0:
        raise SystemExit(f"--workers {x.workers}: must be >= 0")
    if not 0.0 <= x.drop_rate < 1.0:
        raise SystemExit(f"--drop_rate {x.drop_rate}: must be within [0, 1)")
    if flags:
        if (x.test or x.resume) and x.save_dir is None:
            raise SystemExit(f"--{'test' if x.test else 'resume'} needs an existing run: give its --save_dir "
                             "(and --fold)")
        if x.overwrite and not x.test:
            raise SystemExit("--overwrite only applies with --test (scoring a run again replaces its test result)")
        if x.test and x.resume:
            raise SystemExit("--test and --resume exclude each other: --resume trains, --test only scores")
        if x.config and (x.test or x.resume):
            raise SystemExit(f"--config re-runs a saved configuration as a new run; --{'test' if x.test else 'resume'}"
                             " reads the run's own (give its --save_dir and --fold instead)")
        try:
            fusion.from_flags(x.fusion, x.late_fuse, x.image_only)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    elif x.fusion not in fusion.NAMES:
        raise SystemExit(f"--fusion {x.fusion}: choose one of {', '.join(fusion.NAMES)}")
    chosen = (fusion.from_flags(x.fusion, x.late_fuse, x.image_only) or fusion.DEFAULT) if flags else x.fusion
    if x.target != "binary" and fusion.mode(chosen).clinical_offset:
        raise SystemExit(f"--target {x.target} and --fusion residual exclude each other: residual fusion starts from "
                         "the clinical logistic regression of the binary label")
    if x.target != "binary" and (x.loss != "bce" or x.t_alpha is not None):
        raise SystemExit(f"--loss {x.loss}/--t_alpha weigh the binary label's loss; --target {x.target} has its own "
                         "(targets.py)")
    if x.folds == 1 or x.folds < 0:
        raise SystemExit(f"--folds {x.folds}: give K >= 2 folds, or 0 for the fixed train/val split")
    if not 0.0 <= x.ema < 1.0:
        raise SystemExit(f"--ema {x.ema}: the decay must be within [0, 1), e.g. 0.99 (0 = off)")
    if not 0.0 < x.cv_val < 1.0:
        raise SystemExit(f"--cv_val {x.cv_val}: must be within (0, 1), e.g. 0.2")
    if x.bootstrap < 0:
        raise SystemExit(f"--bootstrap {x.bootstrap}: must be >= 0 (0 = no report)")
    if x.sync_bn and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        raise SystemExit("--sync_bn only applies to torchrun runs with several processes")
    if flags and x.extend_epochs and not x.resume:
        raise SystemExit("--extend_epochs N trains an existing, finished run longer: give it with --resume "
                         "--save_dir/--fold")
    try:
        names = choices.parse_augment(x.augment)
    except ValueError as exc:
        raise SystemExit(f"--augment: {exc}") from None
    if x.augment_device == "true":
        if x.handover != "uint8":
            raise SystemExit("--augment_device true needs --handover uint8 (the device finishes the images)")
        missing = choices.without_device_version(names)
        if missing:
            raise SystemExit(f"--augment_device true: --augment {','.join(missing)} has no device version; on the "
                             f"device: {', '.join(choices.DEVICE_AUGMENTATIONS)}")


def settings(args: argparse.Namespace, given: set[str]) -> tuple[RunConfig, list[str]]:
    """The run's configuration, built once: from the flags, or with ``--config`` a saved run's with the
    flags given beside it over it. Returns it and a line for each flag that overrode the saved value."""
    cfg = RunConfig.from_args(args)
    if not args.config:
        return cfg, []
    path = Path(args.config)
    source = runfiles.Run(path).config_file if path.is_dir() else path
    try:
        saved = RunConfig.from_dict(runfiles.read_json(source))
    except FileNotFoundError:
        raise UserError(f"--config {args.config}: no {source} (no such file); give a run folder "
                        f"outs/<save_dir>/fold<fold> or its {runfiles.CONFIG}") from None
    except (ValueError, TypeError) as exc:  # not JSON, or not a configuration of this suite
        raise UserError(f"--config {source}: not a run configuration ({exc})") from None
    keys = [k for k in runconfig.FIELDS if k in given or (k == "fusion" and given & {"late_fuse", "image_only"})]
    notes = [f"--{k} {getattr(cfg, k)} (the saved configuration says {getattr(saved, k)})"
             for k in keys if getattr(cfg, k) != getattr(saved, k)]
    changes = {k: getattr(cfg, k) for k in keys}
    if saved.restarts:  # one run of the whole length: the saved schedule restarts belong to --extend_epochs
        changes["restarts"] = []
        notes.append(f"the saved run was extended at epochs {saved.restarts}; this run trains its {saved.epoch} "
                     "epochs in one schedule")
    cfg = saved.replace(**changes)
    check_settings(cfg)
    return cfg, notes


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

    import augment
    from hipx.data import loader
    from hipx.core import runtime

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


def main(argv: list[str] | None = None) -> dict | list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = given_flags(parser, argv)
    check_args(args)
    if "late_fuse" in given and not args.late_fuse and (args.image_only or args.fusion not in (None, "early")):
        mode = args.fusion or "image"
        other = f"--fusion {mode}" if args.fusion else "--image_only"
        raise SystemExit(f"--late_fuse False (early fusion) and {other} exclude each other: give one fusion mode, "
                         f"e.g. only --fusion {mode}")
    cfg, overrides = settings(args, given)  # the one configuration; args is not read after this
    if given & {"late_fuse", "image_only"}:  # the older spellings of --fusion: checked as --fusion on --resume/--test
        given = given | {"fusion"}
    action = Action(test=bool(args.test), resume=args.resume, extend_epochs=args.extend_epochs,
                    overwrite=args.overwrite)
    from hipx.core import runtime

    runtime.short_openmp_spin()  # before torch loads: threads that wait do not spin away a shared core
    dist_info = runtime.init_distributed(cfg.device)
    runtime.setup_logging(level=logging.INFO if dist_info.is_main else logging.WARNING)
    for note in overrides:
        logger.info("--config %s: %s", args.config, note)
    made = []  # a default run group (and --out_root) this job made: removed again if it fails and leaves them empty
    if cfg.save_dir is None and not dist_info.enabled:
        made = [] if Path(cfg.out_root).exists() else [Path(cfg.out_root)]
        cfg = cfg.replace(save_dir=runfiles.new_group(cfg.out_root, time.strftime("%Y%m%d-%H%M%S")))
        made.append(Path(cfg.out_root) / cfg.save_dir)
    elif cfg.save_dir is None:  # torchrun: every rank names it alike
        cfg = cfg.replace(save_dir=time.strftime("%Y%m%d-%H%M%S"))
    try:
        result = _main(cfg, action, given, dist_info)
    except BaseException:
        for folder in reversed(made):
            try:
                os.rmdir(folder)  # only while empty: a run saved there stays
            except OSError:
                break
        raise
    runtime.leave_distributed(dist_info)
    return result


def _main(cfg: RunConfig, action: Action, given: set[str], dist_info) -> dict | list[dict]:
    if cfg.pretrained and not action.reads_run:
        from hipx.models import resolve_pretrained
        from hipx.models.pretrained import PretrainedUnavailable

        try:  # at once: an offline --pretrained imagenet or a wrong path stops before any data is read
            resolve_pretrained(cfg.pretrained, cfg.model)
        except (ValueError, FileNotFoundError, PretrainedUnavailable) as exc:
            raise UserError(str(exc)) from None
    if cfg.runs_folds:
        from hipx.training import crossval

        return crossval.cross_validate(cfg, lambda fold_cfg: run(fold_cfg, action, given, dist_info),
                                       dist_info.is_main)
    return run(cfg, action, given, dist_info).result


def run(cfg: RunConfig, action: Action, given: set[str], dist_info) -> Outcome:
    """Train (or resume, or only test) one run folder. A new run that fails or is interrupted before
    its first epoch is saved leaves no folder behind; a refused command writes nothing into the run."""
    out = runfiles.run_dir(cfg.save_dir, cfg.fold, cfg.out_root)
    cfg, config, stats, resume_state = prepare_run(cfg, action, given, out)
    if action.resume and config is not None and finished(out, config, resume_state) and not action.extend_epochs:
        logger.info("the run %s finished all %d epochs (best epoch %d) and is tested; nothing to resume, "
                    "nothing changed. To train it longer: %s --extend_epochs N", out, config.epoch,
                    int(resume_state["best"]["epoch"]), resume_command(cfg))
        result = runfiles.load_run(out).test_metrics()
        summary(result, out)
        return Outcome(result, cfg, unchanged=True)
    if action.resume and not Path(cfg.data_dir).is_dir():
        raise UserError(f"the run's data folder {cfg.data_dir} is not there; nothing was changed. If it moved, "
                        f"continue with: {resume_command(cfg)} --data_dir NEW_FOLDER (accepted when it holds the "
                        f"images the run recorded in {runfiles.Run(out).file(runfiles.DATA_FILES)})")
    files = runfiles.split_files(cfg, cfg.data_dir)
    # refuses unusable splits before any file is written
    data_summary = describe(files, training=not action.test, folds=cfg.cv_folds)
    if not action.test:
        check_patients(files, cfg.allow_shared_patients)
    if action.extend_epochs and resume_state is None:  # after the data checks: the run stays as it was
        raise UserError(f"--extend_epochs: the run {out} has not finished an epoch yet; continue it with "
                        f"{resume_command(cfg)}")
    claim = runfiles.claim_run(out) if dist_info.is_main else None  # a second job on this folder stops here
    created = claim if claim is not None and config is None and claim.dir in claim.created else None
    if claim is not None and config is None and any(p.name != runfiles.LOCK for p in out.iterdir()):
        claim.release()  # another job wrote a run here since prepare_run looked
        raise UserError(f"{out} already holds a run (another job wrote it a moment ago); nothing was changed. "
                        f"Choose another --save_dir / --fold, or continue that run with {resume_command(cfg)}")
    try:
        if action.extend_epochs:
            config = extend(cfg, action.extend_epochs, config, resume_state, out)
            cfg = cfg.replace(epoch=config.epoch, restarts=config.restarts)
        threads = use_settings(cfg)
        result = train_and_test(cfg, action, config, stats, resume_state, out, dist_info, files, data_summary,
                                threads)
        return Outcome(result, cfg)
    except KeyboardInterrupt:
        interrupted(out, created, command(*sys.argv[1:]), resume_command(cfg))
    except BaseException:
        if created is not None and saved_epochs(out) == 0:
            remove_run(created)  # a failed start leaves nothing: the same command works once the cause is fixed
        raise
    finally:
        if claim is not None:
            claim.release()


def interrupted(out: Path, created: Path | runfiles.Claim | None, again: str, resume: str) -> NoReturn:
    """Ctrl-C: one line saying what is kept and the command that continues (``resume``) or, for a new
    run stopped before its first epoch was saved, whose folder ``created`` is removed, starts it
    ``again``; then exit 130. pretrain.py stops the same way."""
    done = saved_epochs(out)
    if done == 0 and created is not None:
        remove_run(created)
        logger.error("interrupted before the first epoch finished; nothing was kept. Start again with: %s", again)
    elif done == 0:
        logger.error("interrupted in epoch 1, before any epoch was saved; continue (from epoch 1) with: %s", resume)
    else:
        logger.error("interrupted in epoch %d; epochs 1-%d are saved in %s; continue exactly from there with: %s",
                     done + 1, done, runfiles.Run(out).file(runfiles.LAST), resume)
    raise SystemExit(130) from None


def use_settings(cfg: RunConfig) -> str:
    """Threads and determinism, once prepare_run has read a resumed run's settings: both change the
    last digits of the results, so a resumed run uses the ones it was configured with. Returns the
    threads chosen, in words."""
    from hipx.core import runtime

    threads = runtime.choose_threads(cfg.cpus, cfg.workers)
    if cfg.deterministic:
        runtime.make_deterministic()
    return threads


def saved_epochs(out: Path) -> int:
    """Epochs saved in the run's history.csv (0 when none finished)."""
    return runfiles.Run(out).saved_epochs()


def remove_run(created: Path | runfiles.Claim) -> None:
    """Remove what a failed start made: a folder (pretrain.py), or what a run folder's claim made."""
    from hipx.core import runtime

    runtime.close_log_file()
    if isinstance(created, runfiles.Claim):
        created.undo()
    else:
        shutil.rmtree(created, ignore_errors=True)


def build_trainer(cfg: RunConfig, config: RunConfig, loaders: dict, stats, device, out: Path, dist_info=None,
                  device_augmenter=None, action: Action = Action()):
    """The network of the run's ``config`` (on ``device``, compiled and DDP-wrapped as this session's
    ``cfg`` asks), optimiser and the trainer of its fusion mode: what ``train_and_test`` trains and
    ``bench.py`` times."""
    import torch

    from hipx.training import losses
    from hipx.core import runtime
    from hipx.training.trainer import ClassifyTrainer
    from LateFuseClassifyTrainer import LateFuseClassifyTrainer
    from hipx.models import build_model_from_config, count_parameters

    dist_info = dist_info or runtime.Dist()
    precision = runtime.select_precision(cfg.dtype, device)
    channels_last = runtime.use_channels_last(cfg.channels_last, device, tuple(cfg.image_size))
    model = build_model_from_config(config.to_dict(), pretrained=None if action.reads_run else cfg.pretrained)
    if fusion.mode(config.fusion).clinical_offset and not action.reads_run:
        start_from_clinical_model(model, loaders["train"].dataset.files, stats)
    logger.info("model %s (%s, %d input channels, %.2f M parameters); precision %s; channels_last %s",
                config.model, fusion.text(config.fusion), config.in_chans,
                count_parameters(model) / 1e6, precision.name, channels_last)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if cfg.compile:
        model.compile()  # in place: checkpoints keep the plain parameter names
        logger.info("torch.compile: the first training and the first validation batch compile the network")
    if dist_info.enabled:
        if cfg.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    trainer_cls = LateFuseClassifyTrainer if fusion.mode(config.fusion).clinical_vector else ClassifyTrainer
    optimizer = scheduler = None
    if not action.test:
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lrG, betas=(cfg.beta, 0.999))
        if cfg.sched == "cosine":  # over the run's epochs, or since the last --extend_epochs restart
            cycle = cfg.epoch - (config.restarts or [0])[-1]
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cycle)
    return trainer_cls(model=model, loaders=loaders, loss_fn=losses.build_loss(cfg.loss, cfg.focal_gamma, cfg.t_alpha),
                       optimizer=optimizer, scheduler=scheduler, device=device, run_dir=out, config=config,
                       clinical_stats=stats.to_dict(), precision=precision, select_metric=cfg.select_metric,
                       seed=cfg.seed, channels_last=channels_last, dist_info=dist_info,
                       device_augment=device_augmenter, ema_decay=config.ema, tta=config.tta,
                       validate_start=fusion.mode(config.fusion).clinical_offset)


def start_from_clinical_model(model, train_files, stats) -> None:
    """Residual fusion: the network starts as the clinical logistic regression of the training
    images (the clinical baseline's model, on the network's own normalisation) with no image part."""
    from hipx.reports import baseline

    try:
        coef, intercept = baseline.clinical_model(train_files, stats)
    except baseline.BaselineUnavailable as exc:
        logger.warning("residual fusion without a clinical model (%s): the image alone is learnt", exc)
        coef, intercept = [0.0] * model.n_clinical, 0.0
    model.set_clinical_model(coef, intercept)
    logger.info("residual fusion starts from the clinical model: logit = %.3f + %s + the image's correction",
                intercept, " + ".join(f"{c:.3f} {name}" for c, name in zip(coef, baseline.FEATURES)))


def train_and_test(cfg: RunConfig, action: Action, config: RunConfig | None, stats, resume_state, out: Path,
                   dist_info, files: dict, data_summary: str, threads: str) -> dict:
    import torch
    from tqdm.contrib.logging import logging_redirect_tqdm

    from hipx.data import loader
    import report
    from hipx.core import runtime
    from hipx.training.trainer import NonFiniteLossError

    device = runtime.select_device_for(dist_info, cfg.device, cfg.gpus)
    if stats is None:
        stats = loader.ClinicalStats.fit([filenames.decode(f) for f in files["train"]],
                                         warn=fusion.mode(cfg.fusion).uses_clinical)
    if dist_info.enabled:
        torch.distributed.barrier()  # every rank has checked the run folder before rank 0 creates it
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        runtime.setup_logging(runfiles.Run(out).log_file)
    runtime.seed_everything(cfg.seed, dist_info.rank)
    logger.info("run folder %s; device %s%s; %s", out, device,
                f" (rank 0 of {dist_info.world})" if dist_info.enabled else "", threads)
    logger.info("data %s: %s", cfg.data_dir, data_summary)
    if action.extend_epochs:  # runchecks.extend made config.restarts end with the epochs done before
        logger.info("extending the run from %d to %d epochs%s; its test and report files were removed and are "
                    "written again for the best epoch when the run ends", config.restarts[-1], config.epoch,
                    " (the cosine schedule restarts at --lrG)" if config.sched == "cosine" else "")

    device_augmenter = None if action.test else augment_on_device(cfg, device)
    logger.info("loader hands over %s images; augmentation %s", cfg.handover,
                f"on the device ({device_augmenter})" if device_augmenter else
                ("in the loader workers" if cfg.augment else "none"))
    measure, spec = target_of(cfg, config, files)
    logger.info("target: %s", spec.describe())
    loaders = make_loaders(cfg, stats, files, dist_info, device_augmenter is not None,
                           measure if spec.kind != "binary" else None)
    if config is None:  # a new run: its configuration, with what the data and this machine say
        config = cfg.replace(in_chans=loaders["train"].dataset.channels, target_spec=spec.to_dict(),
                             trainer="LateFuseClassifyTrainer" if fusion.mode(cfg.fusion).clinical_vector
                             else "ClassifyTrainer",
                             clinical_names=list(loader.CLINICAL_NAMES), torch=torch.__version__,
                             world_size=dist_info.world)
    if dist_info.is_main and not action.test and (resume_state is None or action.extend_epochs):
        runfiles.Run(out).write_config(config.to_dict())
    if dist_info.is_main and not action.test and not runfiles.Run(out).file(runfiles.DATA_FILES).is_file():
        runfiles.write_data_files(out, files, cfg.data_dir)
    trainer = build_trainer(cfg, config, loaders, stats, device, out, dist_info, device_augmenter, action)
    with logging_redirect_tqdm():
        if not action.test:
            if resume_state is not None:
                if action.extend_epochs:  # weights, optimizer moments and history go on; the schedule restarts
                    resume_state = {**resume_state, "scheduler": None}
                trainer.restore(resume_state)
                if action.extend_epochs:
                    for group in trainer.optimizer.param_groups:
                        group["lr"] = group["initial_lr"] = cfg.lrG
                    if dist_info.is_main:
                        trainer.save_last(len(trainer.history))  # from here --resume continues the extended run
                logger.info("resuming after epoch %d of %d", len(trainer.history), cfg.epoch)
            try:
                best = trainer.fit(cfg.epoch)
            except NonFiniteLossError as exc:
                logger.error("%s", exc)
                raise SystemExit(1) from None
            logger.info("best epoch %d (val %s %.4f); scoring its checkpoint on test", best["epoch"],
                        cfg.select_metric, best["value"])
        result = trainer.test()
    if dist_info.is_main:
        numbers = {}
        if cfg.bootstrap:
            numbers = report.write_report(out, data_dir=cfg.data_dir, n_boot=cfg.bootstrap, seed=cfg.seed,
                                          files={k: [str(f) for f in v] for k, v in files.items()})
        summary(result, out, numbers.get("measurement"))
    runtime.close_log_file()
    return result


def target_of(cfg: RunConfig, config: RunConfig | None, files: dict):
    """The data folder's measurement (``measures.read``) and the run's target: a saved run's own, or for
    a new run fitted to its training images (targets.build_spec). A user's mistake is one line."""
    from hipx.core import measures
    from hipx.core import targets

    try:
        measure = measures.read(cfg.data_dir)
        if config is not None:
            return measure, targets.TargetSpec.from_dict(config.target_spec)
        train = measure.of(files["train"]) if measure is not None else []
        return measure, targets.build_spec(cfg.target, measure, train, cfg.cut)
    except (measures.MeasureError, targets.TargetError) as exc:
        raise UserError(str(exc)) from None


def summary(result: dict, out: Path, measurement: dict | None = None) -> None:
    """The test result on the console; ``measurement``: the report's predicted-against-measured block."""
    from hipx.reports import measurement as measure_report

    m = result["at_threshold"]
    print(f"test set ({result['n_images']} images), best epoch {result['epoch']}, "
          f"threshold {result['threshold']:.3f} from validation:")
    keys = ("roc_auc", "pr_auc", "accuracy", "sensitivity", "specificity", "f0_5", "f1", "f2", "brier")
    print("  " + "  ".join(f"{k} {_number(m[k])}" for k in keys))
    if measurement:
        print("  predicted against measured: " + measure_report.headline(measurement).lstrip("; "))
    print(f"files in {out}")


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    run_main(main)
