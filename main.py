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
import shlex
import shutil
import sys
import time
from pathlib import Path

import choices
import filenames
import runfiles
import splits
from choices import ACTS, MODEL_NAMES, NORMS, STEMS
from cli import UserError, given_flags, positive, run_main, str2bool

# torch and everything built on it are imported inside the functions, after the command line has
# been checked: --help and a mistyped flag answer in well under a second instead of ~5 s.

logger = logging.getLogger("main")

SELECT_METRICS = ("roc_auc", "pr_auc", "f2acc", "f2", "f1", "f0_5", "accuracy", "balanced_accuracy", "mcc")
# settings a run's checkpoint fixes; --test reads them back instead of trusting the command line
MODEL_KEYS = ("model", "fusion", "depth", "growthRate", "norm", "act", "stem", "image_size", "drop_rate")
# where and how fast this session runs, not what the run is: the only flags --resume lets differ
SESSION_KEYS = ("device", "gpus", "workers", "cache_gb", "out_root", "save_dir", "fold", "resume", "test",
                "extend_epochs", "overwrite")
REPORTED = "report_metrics.json"  # report.write_report writes it last
# what a finished run's test and report consist of; an extension removes them (they describe the shorter run)
RESULTS = (runfiles.TEST_METRICS, runfiles.PREDICTIONS["test"], "report.md", "report.html", REPORTED, "report_figures")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data_dir", default="data", help="folder with train/ val/ test/ (default: %(default)s)")
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
    g.add_argument("--fusion", choices=runfiles.FUSION_MODES, default=None, help="how sex, age and BMI reach the "
                   "network: early (constant image channels; the default), late (joined to the pooled image "
                   "features) or image (not at all: an image-only model, for comparison)")
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
                   "this is given), a run folder (its best.pth, e.g. a model trained on demo radiographs) or a "
                   "local weights file")

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
    g.add_argument("--select_metric", choices=SELECT_METRICS, default="roc_auc", help="validation metric that "
                   "picks the best epoch (default: %(default)s; f2acc = 1.5*F2 + accuracy, the original's)")

    g = p.add_argument_group("run")
    g.add_argument("--save_dir", default=None, help="run group under outs/ (default: a new timestamp)")
    g.add_argument("--fold", default="", help="run name; files go to outs/<save_dir>/fold<fold>/")
    g.add_argument("--out_root", default="outs", help="(default: %(default)s)")
    g.add_argument("--test", nargs="?", const=True, default=False, type=str2bool, metavar="BOOL",
                   help="only score the best checkpoint of an existing run (--save_dir/--fold) on test")
    g.add_argument("--overwrite", action="store_true", help="with --test: replace the run's existing test "
                   "result (test_metrics.json, test_predictions.csv and report); refused without it")
    g.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
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
    g.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="bootstrap resamples for the "
                   "report's confidence intervals; 0 = no report (default: %(default)s)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
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


def check_args(args: argparse.Namespace) -> None:
    """Refuse flag combinations that make no sense, naming the flag."""
    if args.model == "dense_net" and (args.depth < 10 or (args.depth - 4) % 6):
        raise SystemExit(f"--depth {args.depth}: DenseNet-BC needs depth >= 10 with (depth - 4) divisible by 6, "
                         "e.g. 40, 100, 190")
    if args.model != "dense_net" and args.stem != "downsample":
        raise SystemExit(f"--stem {args.stem}: only dense_net has a choice of stem")
    if not 0.0 <= args.augment_p <= 1.0:
        raise SystemExit(f"--augment_p {args.augment_p}: must be within [0, 1]")
    if not 0.0 <= args.beta < 1.0:
        raise SystemExit(f"--beta {args.beta}: Adam beta1 must be within [0, 1)")
    if args.t_alpha is not None and not 0.0 < args.t_alpha < 1.0:
        raise SystemExit(f"--t_alpha {args.t_alpha}: must be within (0, 1)")
    if args.focal_gamma is not None and args.loss != "focal":
        raise SystemExit("--focal_gamma only applies with --loss focal")
    if args.focal_gamma is None:
        args.focal_gamma = 2.0
    if args.focal_gamma < 0:
        raise SystemExit(f"--focal_gamma {args.focal_gamma}: must be >= 0")
    if args.workers < 0:
        raise SystemExit(f"--workers {args.workers}: must be >= 0")
    if not 0.0 <= args.drop_rate < 1.0:
        raise SystemExit(f"--drop_rate {args.drop_rate}: must be within [0, 1)")
    if (args.test or args.resume) and args.save_dir is None:
        raise SystemExit(f"--{'test' if args.test else 'resume'} needs an existing run: give its --save_dir "
                         "(and --fold)")
    if args.overwrite and not args.test:
        raise SystemExit("--overwrite only applies with --test (scoring a run again replaces its test result)")
    if args.test and args.resume:
        raise SystemExit("--test and --resume exclude each other: --resume trains, --test only scores")
    if args.image_only and args.late_fuse:
        raise SystemExit("--image_only and --late_fuse True exclude each other: late fusion needs the clinical data")
    given = {args.fusion} if args.fusion else set()
    given |= {"late"} if args.late_fuse else {"image"} if args.image_only else set()
    if len(given) > 1:
        raise SystemExit(f"--fusion {args.fusion} and --{'late_fuse True' if args.late_fuse else 'image_only'} "
                         "exclude each other: give one fusion mode")
    args.fusion = given.pop() if given else None  # None: early for a new run, the run's own for --test/--resume
    if args.folds == 1 or args.folds < 0:
        raise SystemExit(f"--folds {args.folds}: give K >= 2 folds, or 0 for the fixed train/val split")
    if not 0.0 <= args.ema < 1.0:
        raise SystemExit(f"--ema {args.ema}: the decay must be within [0, 1), e.g. 0.99 (0 = off)")
    if not 0.0 < args.cv_val < 1.0:
        raise SystemExit(f"--cv_val {args.cv_val}: must be within (0, 1), e.g. 0.2")
    if args.bootstrap < 0:
        raise SystemExit(f"--bootstrap {args.bootstrap}: must be >= 0 (0 = no report)")
    if args.sync_bn and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        raise SystemExit("--sync_bn only applies to torchrun runs with several processes")
    if args.extend_epochs and not args.resume:
        raise SystemExit("--extend_epochs N trains an existing, finished run longer: give it with --resume "
                         "--save_dir/--fold")
    smallest = 32 if args.model in choices.TORCHVISION_DENSENETS else choices.MIN_SIDE  # their total stride
    if min(args.image_size) < smallest:
        raise SystemExit(f"--image_size {args.image_size[0]} {args.image_size[1]}: each side must be at least "
                         f"{smallest} pixels for --model {args.model}")
    try:
        args.augment = ",".join(choices.parse_augment(args.augment))
    except ValueError as exc:
        raise SystemExit(f"--augment: {exc}") from None
    if args.augment_device == "true":
        if args.handover != "uint8":
            raise SystemExit("--augment_device true needs --handover uint8 (the device finishes the images)")
        missing = choices.without_device_version(choices.parse_augment(args.augment))
        if missing:
            raise SystemExit(f"--augment_device true: --augment {','.join(missing)} has no device version; on the "
                             f"device: {', '.join(choices.DEVICE_AUGMENTATIONS)}")


def augment_on_device(args, device):
    """The device-side augmenter of ``--augment_device`` (auto: on CUDA when it can), or None."""
    import augment_device

    names = choices.parse_augment(args.augment)
    use = {"true": True, "false": False}.get(args.augment_device, device.type == "cuda")
    if not (use and names and args.handover == "uint8" and augment_device.supported(names)):
        return None
    return augment_device.DeviceAugmenter(names, args.augment_p, args.seed)


def make_loaders(args, stats, files: dict, dist_info=None, device_augment: bool = False) -> dict:
    """Training: a fresh (optionally class-balanced) order each epoch, sharded over ranks.
    Validation and test: every image exactly once, in file order (sharded over ranks and gathered).
    With ``device_augment`` the training workers only decode (the trainer augments)."""
    import torch
    from torch.utils.data import DataLoader

    import augment
    import loader
    import runtime

    dist_info = dist_info or runtime.Dist()
    names = [] if device_augment else augment.parse_augment(args.augment)
    augmenter = augment.Augmenter(names, p=args.augment_p, enhance=loader.enhance) if names else None
    out = {}
    for split in loader.SPLITS:
        train = split == "train"
        ds = loader.HipDataset(files[split], stats, tuple(args.image_size), early_fuse=args.fusion == "early",
                               augment=augmenter if train else None, seed=args.seed, cache_gb=args.cache_gb,
                               desc=split, handover=args.handover)
        if train:
            sampler = loader.EpochSampler(ds.labels, args.seed, args.sampler == "weight", dist_info.rank,
                                          dist_info.world)
        else:
            sampler = loader.ShardSampler(len(ds), dist_info.rank, dist_info.world)
        # a last training batch of one image would make BatchNorm's statistics meaningless
        # persistent workers: no start-up every epoch (the dataset's epoch is shared with them)
        out[split] = DataLoader(ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                                pin_memory=torch.cuda.is_available(), persistent_workers=args.workers > 0,
                                worker_init_fn=loader.quiet_worker if args.workers > 0 else None,
                                drop_last=train and len(sampler) % args.batch_size == 1)
    return out


def describe(files: dict, training: bool, folds: int = 0) -> str:
    """Images and cases per split; training needs both classes in train and val (of each fold of
    ``folds``-fold cross-validation)."""
    parts = []
    for split in files:
        labels = [filenames.decode(f).label for f in files[split]]
        parts.append(f"{split} {len(labels)} images ({sum(labels)} osteoporosis)")
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


def command(*arguments: str) -> str:
    """``python main.py ARGUMENTS`` as the user can paste it: this interpreter (relative when it lies
    below the current folder, e.g. .venv/bin/python) and this script."""
    python = sys.executable or "python3"
    if python.startswith(os.getcwd() + os.sep):
        python = os.path.relpath(python)
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith("main.py") else "main.py"
    return shlex.join([python, script, *map(str, arguments)])


def resume_command(args: argparse.Namespace) -> str:
    """The command that continues this run."""
    fold = args.fold
    extra = []
    if getattr(args, "cv_folds", 0):  # a cross-validation fold: continue the whole cross-validation
        fold = fold[: len(fold) - len(str(args.cv_fold))]
        extra = ["--folds", str(args.cv_folds)]
    if args.out_root != "outs":
        extra += ["--out_root", str(args.out_root)]
    return command("--resume", "--save_dir", args.save_dir, "--fold", fold, *extra)


def test_command(args: argparse.Namespace) -> str:
    """The command that scores this run on test."""
    extra = ["--out_root", str(args.out_root)] if args.out_root != "outs" else []
    return command("--test", "--save_dir", args.save_dir, "--fold", args.fold, *extra)


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _same(key: str, a, b) -> bool:
    if key in ("data_dir", "pretrained") and isinstance(a, str) and isinstance(b, str):
        return os.path.normpath(a) == os.path.normpath(b)
    return list(a) == list(b) if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) else a == b


def refuse_changes(args: argparse.Namespace, given: set[str], config: dict, out: Path) -> None:
    """``--resume`` continues the run as configured: a flag given with another value than the run's
    is refused, naming it (the session's device, GPUs, workers and cache may differ)."""
    shown, same = _shown, _same

    for key in sorted(given - set(SESSION_KEYS)):
        if key == "data_dir" and not same(key, args.data_dir, config.get("data_dir", args.data_dir)):
            moved_data(args, config, out)
            continue
        if key == "folds" and config.get("cv_folds") and args.folds != config["cv_folds"]:
            right = resume_command(argparse.Namespace(**{**vars(args), "cv_folds": config["cv_folds"]}))
            raise UserError(f"--folds {args.folds}: the cross-validation {out.parent} has {config['cv_folds']} folds "
                            f"and --resume continues it as configured; continue it with: {right}")
        if key in config and not same(key, getattr(args, key), config[key]):
            raise UserError(f"--{key} {shown(getattr(args, key))}: the run {out} was configured with --{key} "
                            f"{shown(config[key])}, and --resume continues a run exactly as configured (leave the "
                            f"flag out: {resume_command(args)}). To train longer use --resume --extend_epochs N; to "
                            "train differently start a new run (another --save_dir or --fold)")


def moved_data(args: argparse.Namespace, config: dict, out: Path) -> None:
    """``--resume --data_dir NEW`` for a run whose data folder moved: accepted when NEW holds the images
    (and sizes) the run recorded in data_files.csv; refused, saying what differs, otherwise."""
    listing = {**config, "data_dir": args.data_dir}
    try:
        files = runfiles.split_files(listing, args.data_dir)
        differ = runfiles.data_files_differ(out, files, args.data_dir)
    except (OSError, ValueError) as exc:
        differ = str(exc)
    if differ:
        raise UserError(f"--data_dir {args.data_dir}: the run {out} was trained on {config.get('data_dir')}, and "
                        f"--resume continues it on the same images only; {differ}. Continue on the run's own folder "
                        f"with {resume_command(args)}")
    logger.info("the run's data folder moved from %s to %s: it holds the images the run recorded, so the run goes "
                "on with it", config.get("data_dir"), args.data_dir)
    args.moved_data_dir = args.data_dir


def prepare_run(args, given: set[str], save_dir: str, out: Path):
    """Config and clinical statistics of this run: new, or read back from an existing run for
    ``--test`` (best.pth) and ``--resume`` (last.pth, or config.json of a run stopped in its first
    epoch). Returns (config, stats, resume_state); for ``--resume`` every setting of the run is
    copied onto ``args``."""
    new_fold_of_cv = args.resume and getattr(args, "cv_folds", 0) and not out.exists()
    if not (args.test or args.resume) or new_fold_of_cv:
        if out.exists() and any(p.name != runfiles.LOCK for p in out.iterdir()):
            how = (f"it stopped before finishing its first epoch: continue it with --resume"
                   if not (out / runfiles.LAST).exists() else "continue it with --resume, score it with --test")
            raise UserError(f"{out} already holds a run; nothing was changed. {how[0].upper() + how[1:]}, or choose "
                            f"another --save_dir / --fold (e.g. {resume_command(args)})")
        return None, None, None
    import loader

    if args.test:
        if not (out / runfiles.BEST).is_file():
            raise UserError(f"--test: no {runfiles.BEST} in {out} to score (check --save_dir, --fold and "
                            f"--out_root). {runfiles.missing_advice(out)}")
        state = runfiles.load_checkpoint(out / runfiles.BEST)
        config = dict(state["config"])
        for key in MODEL_KEYS:  # the run fixes the network: a command line that disagrees is refused
            if key in config and key in given and not _same(key, getattr(args, key), config[key]):
                raise UserError(f"--{key} {_shown(getattr(args, key))}: the run {out} was trained with --{key} "
                                f"{_shown(config[key])}, and --test scores it as trained; leave the flag out: "
                                f"{test_command(args)}")
            setattr(args, key, config[key])
        if (out / runfiles.TEST_METRICS).is_file() and not args.overwrite:
            raise UserError(f"{out} already holds its test result ({runfiles.TEST_METRICS}); nothing was changed. "
                            f"To score the run again and replace it: {test_command(args)} --overwrite")
        if "bootstrap" not in given:  # the run's own report settings, e.g. --bootstrap 0 = no report
            args.bootstrap = config.get("bootstrap", args.bootstrap)
        if "data_dir" not in given:
            args.data_dir = config["data_dir"]
        for key in ("cv_folds", "cv_fold", "cv_seed", "cv_design", "cv_val"):  # a fold keeps its own splits
            if key in config:
                setattr(args, key, config[key])
        return config, loader.ClinicalStats.from_dict(state["clinical_stats"]), None

    state, config_file = None, out / runfiles.CONFIG
    if (out / runfiles.LAST).is_file():
        state = runfiles.load_checkpoint(out / runfiles.LAST)
        config = dict(state["config"])
    elif config_file.is_file():  # killed in its first epoch: start it again, as configured
        config = runfiles.read_json(config_file)
    else:
        first_fold = out.parent / f"fold{args.fold}0" / runfiles.CONFIG
        if not getattr(args, "cv_folds", 0) and first_fold.is_file():
            k = runfiles.read_json(first_fold).get("cv_folds")
            raise UserError(f"--resume: {out.parent} holds a {k}-fold cross-validation (fold{args.fold}0 ...), not "
                            f"one run fold{args.fold}; give its number of folds: "
                            f"{resume_command(args)} --folds {k}")
        raise UserError(f"--resume: no run to continue at {out} (no {runfiles.LAST} or config.json); check "
                        "--save_dir, --fold and --out_root, or start a new run without --resume")
    refuse_changes(args, given, config, out)
    for key, value in config.items():
        if key in vars(args) and key not in SESSION_KEYS:
            setattr(args, key, value)
    if getattr(args, "moved_data_dir", None):  # checked by moved_data: the same images in their new place
        args.data_dir = args.moved_data_dir
    for key in ("cv_folds", "cv_fold", "cv_seed", "cv_design", "cv_val"):
        if key in config:
            setattr(args, key, config[key])
    stats = loader.ClinicalStats.from_dict(state["clinical_stats"]) if state else None
    return config, stats, state


def finished(out: Path, config: dict, state: dict | None) -> bool:
    """Whether a run trained all its epochs and wrote its test (and report) files."""
    done = state is not None and len(state.get("history") or []) >= int(config["epoch"])
    return done and (out / runfiles.TEST_METRICS).is_file() and (not config.get("bootstrap") or (out / REPORTED).is_file())


def extend(args: argparse.Namespace, config: dict, state: dict, out: Path) -> dict:
    """``--resume --extend_epochs N`` on a finished run: N more epochs, a new cosine cycle from --lrG
    (warm restart) for the cosine schedule, and the old test and report files removed, since they
    describe the shorter run; the extended run writes them anew when it ends."""
    done = len(state.get("history") or [])
    if done < int(config["epoch"]):
        raise UserError(f"--extend_epochs: the run {out} has finished {done} of its {config['epoch']} epochs; "
                        f"finish it first ({resume_command(args)}), then extend it")
    config = {**config, "epoch": done + args.extend_epochs,
              "restarts": [*config.get("restarts", []), done]}
    args.epoch = config["epoch"]
    for name in RESULTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return config


def main(argv: list[str] | None = None) -> dict | list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = given_flags(parser, argv)
    check_args(args)
    if "late_fuse" in given and not args.late_fuse and args.fusion not in (None, "early"):
        other = f"--fusion {args.fusion}" if "fusion" in given else "--image_only"
        raise SystemExit(f"--late_fuse False (early fusion) and {other} exclude each other: give one fusion mode, "
                         f"e.g. only --fusion {args.fusion}")
    if given & {"late_fuse", "image_only"}:  # the older spellings of --fusion: checked as --fusion on --resume/--test
        given.add("fusion")
        args.fusion = args.fusion or "early"  # only an explicit --late_fuse False leaves it unset
    import runtime

    runtime.short_openmp_spin()  # before torch loads: threads that wait do not spin away a shared core
    dist_info = runtime.init_distributed(args.device)
    runtime.setup_logging(level=logging.INFO if dist_info.is_main else logging.WARNING)
    made = []  # a default run group (and --out_root) this job made: removed again if it fails and leaves them empty
    if args.save_dir is None and not dist_info.enabled:
        made = [] if Path(args.out_root).exists() else [Path(args.out_root)]
        args.save_dir = runfiles.new_group(args.out_root, time.strftime("%Y%m%d-%H%M%S"))
        made.append(Path(args.out_root) / args.save_dir)
    args.save_dir = args.save_dir or time.strftime("%Y%m%d-%H%M%S")  # torchrun: every rank names it alike
    try:
        return _main(args, given, dist_info)
    except BaseException:
        for folder in reversed(made):
            try:
                os.rmdir(folder)  # only while empty: a run saved there stays
            except OSError:
                break
        raise


def _main(args: argparse.Namespace, given: set[str], dist_info) -> dict | list[dict]:
    import runtime

    if args.pretrained and not (args.test or args.resume):
        from models import resolve_pretrained
        from models.pretrained import PretrainedUnavailable

        try:  # at once: an offline --pretrained imagenet or a wrong path stops before any data is read
            resolve_pretrained(args.pretrained, args.model)
        except (ValueError, FileNotFoundError, PretrainedUnavailable) as exc:
            raise UserError(str(exc)) from None
    result = run(args, given, dist_info) if not args.folds else cross_validate(args, given, dist_info)
    runtime.leave_distributed(dist_info)
    return result


def cross_validate(args: argparse.Namespace, given: set[str], dist_info) -> list[dict]:
    import crossval

    design = crossval.resolve_design(args.data_dir, args.cv)
    logger.info("cross-validation design: %s", crossval.DESIGN_TEXT[design])
    results, runs, unchanged, n_boot, seed = [], [], [], args.bootstrap, args.seed
    for k in range(args.folds):
        fold_args = argparse.Namespace(**vars(args))
        fold_args.fold, fold_args.cv_folds, fold_args.cv_fold, fold_args.cv_seed, fold_args.cv_design = \
            f"{args.fold}{k}", args.folds, k, args.seed, design
        logger.info("cross-validation fold %d (folds 0-%d): fold%s", k, args.folds - 1, fold_args.fold)
        results.append(run(fold_args, given, dist_info))
        runs.append(runfiles.run_dir(args.save_dir, fold_args.fold, args.out_root))
        unchanged.append(getattr(fold_args, "unchanged", False))
        n_boot, seed = fold_args.bootstrap, fold_args.seed  # a resumed fold has its run's own settings
    group = Path(args.out_root) / args.save_dir
    if dist_info.is_main and all(unchanged) and (group / "cv_summary.json").is_file():
        logger.info("every fold of the cross-validation %s is finished and tested; its summary stays as it was, "
                    "nothing changed", group)
        print(crossval.headline(runfiles.read_json(group / "cv_summary.json")))
        print(f"cross-validation summary: {group / 'cv_report.md'}")
    elif dist_info.is_main:
        cv = crossval.write_cv_summary(Path(args.out_root) / args.save_dir, runs, n_boot=n_boot or 2000,
                                       seed=seed)
        print(crossval.headline(cv))
        print(f"cross-validation summary: {Path(args.out_root) / args.save_dir / 'cv_report.md'}")
    return results


def run(args: argparse.Namespace, given: set[str], dist_info) -> dict:
    """Train (or resume, or only test) one run folder; returns the test metrics. A new run that fails
    or is interrupted before its first epoch is saved leaves no folder behind."""
    out = runfiles.run_dir(args.save_dir, args.fold, args.out_root)
    config, stats, resume_state = prepare_run(args, given, args.save_dir, out)
    if args.resume and config is not None:
        if finished(out, config, resume_state) and not args.extend_epochs:
            logger.info("the run %s finished all %d epochs (best epoch %d) and is tested; nothing to resume, "
                        "nothing changed. To train it longer: %s --extend_epochs N", out, config["epoch"],
                        int(resume_state["best"]["epoch"]), resume_command(args))
            result = runfiles.read_json(out / runfiles.TEST_METRICS)
            summary(result, out)
            args.unchanged = True  # cross_validate: a group of unchanged folds keeps its summary too
            return result
    if args.resume and not Path(args.data_dir).is_dir():
        raise UserError(f"the run's data folder {args.data_dir} is not there; nothing was changed. If it moved, "
                        f"continue with: {resume_command(args)} --data_dir NEW_FOLDER (accepted when it holds the "
                        f"images the run recorded in {out / runfiles.DATA_FILES})")
    files = runfiles.split_files(vars(args), args.data_dir)
    # refuses unusable splits before any file is written
    data_summary = describe(files, training=not args.test, folds=getattr(args, "cv_folds", 0))
    if not args.test:
        check_patients(files, args.allow_shared_patients)
    if args.extend_epochs and resume_state is None:  # after the data checks: the run stays as it was
        raise UserError(f"--extend_epochs: the run {out} has not finished an epoch yet; continue it with "
                        f"{resume_command(args)}")
    claim = runfiles.claim_run(out) if dist_info.is_main else None  # a second job on this folder stops here
    created = claim if claim is not None and config is None and claim.dir in claim.created else None
    if claim is not None and config is None and any(p.name != runfiles.LOCK for p in out.iterdir()):
        claim.release()  # another job wrote a run here since prepare_run looked
        raise UserError(f"{out} already holds a run (another job wrote it a moment ago); nothing was changed. "
                        f"Choose another --save_dir / --fold, or continue that run with {resume_command(args)}")
    try:
        if args.extend_epochs:
            config = extend(args, config, resume_state, out)
        use_settings(args)
        return train_and_test(args, config, stats, resume_state, out, dist_info, files, data_summary)
    except KeyboardInterrupt:
        done = _saved_epochs(out)
        if done == 0 and created is not None:
            _remove(created)
            logger.error("interrupted before the first epoch finished; nothing was kept. Start again with: %s",
                         command(*sys.argv[1:]))
        elif done == 0:
            logger.error("interrupted in epoch 1, before any epoch was saved; continue (from epoch 1) with: %s",
                         resume_command(args))
        else:
            logger.error("interrupted in epoch %d; epochs 1-%d are saved in %s; continue exactly from there with: %s",
                         done + 1, done, out / runfiles.LAST, resume_command(args))
        raise SystemExit(130) from None
    except BaseException:
        if created is not None and _saved_epochs(out) == 0:
            _remove(created)  # a failed start leaves nothing: the same command works once the cause is fixed
        raise
    finally:
        if claim is not None:
            claim.release()


def use_settings(args: argparse.Namespace) -> None:
    """Threads and determinism, once prepare_run has read a resumed run's settings: both change the
    last digits of the results, so a resumed run uses the ones it was configured with."""
    import runtime

    args.threads = runtime.choose_threads(args.cpus, args.workers)
    if args.deterministic:
        runtime.make_deterministic()


def _saved_epochs(out: Path) -> int:
    """Epochs saved in the run's history.csv (0 when none finished)."""
    path = out / "history.csv"
    return max(len(path.read_text(encoding="utf-8").strip().splitlines()) - 1, 0) if path.is_file() else 0


def _remove(claim: runfiles.Claim) -> None:
    import runtime

    runtime.close_log_file()
    claim.undo()


def build_trainer(args, config: dict, loaders: dict, stats, device, out: Path, dist_info=None,
                  device_augmenter=None):
    """The network (on ``device``, compiled and DDP-wrapped as asked), optimiser and the trainer of
    this run's fusion mode: what ``train_and_test`` trains and ``bench.py`` times."""
    import torch

    import losses
    import runtime
    from ClassifyTrainer import ClassifyTrainer
    from LateFuseClassifyTrainer import LateFuseClassifyTrainer
    from models import build_model_from_config, count_parameters

    dist_info = dist_info or runtime.Dist()
    precision = runtime.select_precision(args.dtype, device)
    channels_last = runtime.use_channels_last(args.channels_last, device, tuple(args.image_size))
    model = build_model_from_config(config, pretrained=None if (args.test or args.resume) else args.pretrained)
    logger.info("model %s (%s, %d input channels, %.2f M parameters); precision %s; channels_last %s",
                config["model"], runfiles.FUSION_TEXT[config["fusion"]], config["in_chans"],
                count_parameters(model) / 1e6, precision.name, channels_last)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if args.compile:
        model.compile()  # in place: checkpoints keep the plain parameter names
        logger.info("torch.compile: the first training and the first validation batch compile the network")
    if dist_info.enabled:
        if args.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    trainer_cls = LateFuseClassifyTrainer if config["fusion"] == "late" else ClassifyTrainer
    optimizer = scheduler = None
    if not args.test:
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lrG, betas=(args.beta, 0.999))
        if args.sched == "cosine":  # over the run's epochs, or since the last --extend_epochs restart
            cycle = args.epoch - (config.get("restarts") or [0])[-1]
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cycle)
    return trainer_cls(model=model, loaders=loaders, loss_fn=losses.build_loss(args.loss, args.focal_gamma,
                                                                              args.t_alpha),
                       optimizer=optimizer, scheduler=scheduler, device=device, run_dir=out, config=config,
                       clinical_stats=stats.to_dict(), precision=precision, select_metric=args.select_metric,
                       seed=args.seed, channels_last=channels_last, dist_info=dist_info,
                       device_augment=device_augmenter, ema_decay=config.get("ema", 0.0),
                       tta=config.get("tta", "none"))


def train_and_test(args, config, stats, resume_state, out: Path, dist_info, files: dict, data_summary: str) -> dict:
    import torch
    from tqdm.contrib.logging import logging_redirect_tqdm

    import loader
    import report
    import runtime
    from ClassifyTrainer import NonFiniteLossError

    device = runtime.select_device_for(dist_info, args.device, args.gpus)
    if stats is None:
        stats = loader.ClinicalStats.fit([filenames.decode(f) for f in files["train"]], warn=args.fusion != "image")
    if dist_info.enabled:
        torch.distributed.barrier()  # every rank has checked the run folder before rank 0 creates it
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        runtime.setup_logging(out / "train.log")
    runtime.seed_everything(args.seed, dist_info.rank)
    logger.info("run folder %s; device %s%s; %s", out, device,
                f" (rank 0 of {dist_info.world})" if dist_info.enabled else "", args.threads)
    logger.info("data %s: %s", args.data_dir, data_summary)
    if args.extend_epochs:  # extend() made config["restarts"] end with the epochs done before
        logger.info("extending the run from %d to %d epochs%s; its test and report files were removed and are "
                    "written again for the best epoch when the run ends", config["restarts"][-1], config["epoch"],
                    " (the cosine schedule restarts at --lrG)" if config.get("sched") == "cosine" else "")

    args.fusion = args.fusion or "early"
    device_augmenter = None if args.test else augment_on_device(args, device)
    logger.info("loader hands over %s images; augmentation %s", args.handover,
                f"on the device ({device_augmenter})" if device_augmenter else
                ("in the loader workers" if args.augment else "none"))
    loaders = make_loaders(args, stats, files, dist_info, device_augmenter is not None)
    if config is None:
        flags = {k: v for k, v in vars(args).items() if k not in ("late_fuse", "image_only")}  # said by fusion
        config = {**flags, "in_chans": loaders["train"].dataset.channels,
                  "trainer": "LateFuseClassifyTrainer" if args.fusion == "late" else "ClassifyTrainer",
                  "clinical_names": list(loader.CLINICAL_NAMES), "torch": torch.__version__,
                  "world_size": dist_info.world}
    if dist_info.is_main and not args.test and (resume_state is None or args.extend_epochs):
        runfiles.write_json(out / runfiles.CONFIG, config)
    if dist_info.is_main and not args.test and not (out / runfiles.DATA_FILES).is_file():
        runfiles.write_data_files(out, files, args.data_dir)
    trainer = build_trainer(args, config, loaders, stats, device, out, dist_info, device_augmenter)
    with logging_redirect_tqdm():
        if not args.test:
            if resume_state is not None:
                if args.extend_epochs:  # weights, optimizer moments and history go on; the schedule restarts
                    resume_state = {**resume_state, "scheduler": None}
                trainer.restore(resume_state)
                if args.extend_epochs:
                    for group in trainer.optimizer.param_groups:
                        group["lr"] = group["initial_lr"] = args.lrG
                    if dist_info.is_main:
                        trainer.save_last(len(trainer.history))  # from here --resume continues the extended run
                logger.info("resuming after epoch %d of %d", len(trainer.history), args.epoch)
            try:
                best = trainer.fit(args.epoch)
            except NonFiniteLossError as exc:
                logger.error("%s", exc)
                raise SystemExit(1) from None
            logger.info("best epoch %d (val %s %.4f); scoring its checkpoint on test", best["epoch"],
                        args.select_metric, best["value"])
        result = trainer.test()
    if dist_info.is_main:
        if args.bootstrap:
            report.write_report(out, data_dir=args.data_dir, n_boot=args.bootstrap, seed=args.seed,
                                files={k: [str(f) for f in v] for k, v in files.items()})
        summary(result, out)
    runtime.close_log_file()
    return result


def summary(result: dict, out: Path) -> None:
    m = result["at_threshold"]
    print(f"test set ({result['n_images']} images), best epoch {result['epoch']}, "
          f"threshold {result['threshold']:.3f} from validation:")
    keys = ("roc_auc", "pr_auc", "accuracy", "sensitivity", "specificity", "f0_5", "f1", "f2", "brier")
    print("  " + "  ".join(f"{k} {_number(m[k])}" for k in keys))
    print(f"files in {out}")


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    run_main(main)
