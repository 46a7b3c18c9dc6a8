"""The flags of a training run (``main.py``) and the configuration they make, checked before torch loads.

    args = build_parser(main.__doc__).parse_args(argv)
    cfg, notes = settings(args, given_flags(parser, argv))   # a RunConfig; ``--config`` merged; checked

:func:`build_parser` declares every flag once (``bench.py`` builds its configurations from the same
flags); the names users choose from come from where they live (``choices``, ``fusion``,
``targets``). :func:`check_settings` refuses settings that make no sense, naming the flag, whether
they came from the command line or from a configuration read with ``--config``;
:func:`check_network` is the network's part, which ``pretrain.py`` applies to its encoder. What a
setting *is* -- fixed by the checkpoint, or only where this session runs -- is said once, by the
fields of :class:`runconfig.RunConfig`.

Stdlib and ``hipx.core`` only at import: ``main.py --help`` and a mistyped flag answer at once.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from hipx.core import choices
from hipx.core import fusion
from hipx.core import runconfig
from hipx.core import targets
from hipx.core.choices import ACTS, MODEL_NAMES, NORMS, STEMS
from hipx.core.cli import UserError, add_bootstrap, add_data_dir, add_device, add_seed, positive, str2bool
from hipx.core.runconfig import RunConfig
from hipx.data import splits

SELECT_METRICS = ("roc_auc", "pr_auc", "f2acc", "f2", "f1", "f0_5", "accuracy", "balanced_accuracy", "mcc")


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """Every flag of ``main.py`` (``description``: its docstring, shown by ``--help``), in four groups as
    ``--help`` lists them; ``bench.py`` builds its configurations from the same flags."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_data_flags(p.add_argument_group("data"))
    _add_model_flags(p.add_argument_group("model"))
    _add_optimisation_flags(p.add_argument_group("optimisation"))
    run = p.add_argument_group("run")
    _add_run_folder_flags(run)
    _add_evaluation_flags(run)
    _add_hardware_flags(run)
    _add_session_flags(run)
    return p


def _add_data_flags(g: argparse._ArgumentGroup) -> None:
    """The data folder, the image size, augmentation, sampling and how the loader hands images over."""
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


def _add_model_flags(g: argparse._ArgumentGroup) -> None:
    """The network: its architecture, the fusion mode and the weights it starts from."""
    g.add_argument("--model", choices=MODEL_NAMES, default="dense_net", help="network (default: %(default)s)")
    g.add_argument("--fusion", choices=fusion.NAMES, default=None, help=fusion.help_text())
    g.add_argument("--late_fuse", type=str2bool, default=None, metavar="BOOL",
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


def _add_optimisation_flags(g: argparse._ArgumentGroup) -> None:
    """The loss, the optimiser and its schedule, weight averaging, test-time augmentation, the target
    and the metric that picks the best epoch."""
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
    g.add_argument("--target", choices=targets.KINDS, default=targets.DEFAULT, help="what the "
                   "network learns: binary = the yes/no label (default); ordinal = ordered classes of the "
                   "measurement (a grade's levels, or the WHO classes of a T-score); continuous = the T-score or "
                   "BMD itself. Needs the measurement in the data folder's manifest.csv (preprocess_filenames.py "
                   "--tscore-col/--grade-col/--bmd-col; the demo has its T-score). Every metric is on one "
                   "osteoporosis score, at --cut (docs/targets.md)")
    g.add_argument("--cut", type=float, default=None, metavar="VALUE", help="the clinical cut: osteoporosis when "
                   "the measurement <= VALUE (default: -2.5 for a T-score, 2 for a grade; BMD needs it)")
    g.add_argument("--select_metric", choices=SELECT_METRICS, default="roc_auc", help="validation metric that "
                   "picks the best epoch (default: %(default)s; f2acc = 1.5*F2 + accuracy, the original's)")


def _add_run_folder_flags(g: argparse._ArgumentGroup) -> None:
    """Where the run's folder is, the configuration it re-runs, --test of an existing run, and the seed."""
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


def _add_evaluation_flags(g: argparse._ArgumentGroup) -> None:
    """Cross-validation, the learning curve and the report's bootstrap."""
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
    g.add_argument("--learning_curve", nargs="*", type=learning_curve_size, default=None, metavar="SIZE",
                   help="with --folds K: also train every fold on nested subsets of its training patients (stratified, "
                   "seeded by --seed and the fold, the same patients for every mode; validation and test parts "
                   "unchanged) and draw the learning curve in cv_report: pooled AUC of the network and of the "
                   "clinical baseline against training patients, the inverse power law fitted to it and "
                   "extrapolated to 2x, 5x and 10x. Sizes are fractions (0.25) or patient counts (50); 1.0 is "
                   "the cross-validation itself. Without sizes: "
                   f"{' '.join(f'{s:g}' for s in choices.LEARNING_CURVE_SIZES)}. Each size is a cross-validation "
                   "of its own in outs/<save_dir>/lc_<size>/ (docs/learning-curve.md)")
    g.add_argument("--target_auc", type=float, default=None, metavar="AUC", help="with --learning_curve: the AUC "
                   "whose number of training patients the report estimates from the fitted curve, e.g. 0.8")
    add_bootstrap(g, off="no report")


def _add_hardware_flags(g: argparse._ArgumentGroup) -> None:
    """Where and how the network computes: device, threads, compilation, precision, memory layout."""
    add_device(g)
    g.add_argument("--gpus", default=None, help="CUDA device index to use, e.g. 0 (several: use torchrun)")
    g.add_argument("--cpus", type=positive(int), default=None, help="CPU threads for torch, fixed (default: on the "
                   "CPU every core, given back while other jobs use some; on a GPU the cores less the --workers)")
    g.add_argument("--compile", action="store_true", help="torch.compile the network (pays on long GPU runs "
                   "only: see docs/gpu-pipeline.md)")
    g.add_argument("--dtype", choices=("auto", "float", "half"), default="auto", help="auto: fp16/bf16 autocast "
                   "on CUDA, fp32 on CPU; float: always fp32; half: reduced precision")
    g.add_argument("--channels_last", choices=("auto", "true", "false"), default="auto",
                   help="NHWC memory layout; auto: on (faster on CUDA and on the CPU: docs/speed.md)")


def _add_session_flags(g: argparse._ArgumentGroup) -> None:
    """Continuing a run, determinism, torchrun's SyncBatchNorm and TensorBoard logging."""
    g.add_argument("--resume", action="store_true", help="continue the run --save_dir/--fold from its last.pth, "
                   "with every setting from the run (a different value on the command line is refused)")
    g.add_argument("--extend_epochs", type=positive(int), default=None, metavar="N", help="with --resume: train "
                   "a finished run N epochs longer; a cosine schedule restarts from --lrG and decays to 0 over "
                   "the N epochs; best.pth, test and report files are renewed")
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels (exactly reproducible, "
                   "slower)")
    g.add_argument("--sync_bn", action="store_true", help="SyncBatchNorm across torchrun processes")
    g.add_argument("--tensorboard", action="store_true", help="write TensorBoard event files into the run folder's "
                   "tensorboard/: losses, validation metrics and learning rate per epoch, the validation ROC curve, a "
                   "few augmented training inputs; watch with tensorboard --logdir outs/<save_dir> --host 127.0.0.1 "
                   "(with --resume: give it again to go on logging)")


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


def check_settings(cfg: RunConfig) -> None:
    """Refuse settings that make no sense, naming the flag: of the command line or of a configuration
    read with ``--config`` (the flags that are no setting -- the actions -- are main.py's to check)."""
    check_network(cfg)
    _check_ranges(cfg)
    if cfg.fusion not in fusion.NAMES:
        raise SystemExit(f"--fusion {cfg.fusion}: choose one of {', '.join(fusion.NAMES)}")
    if cfg.target != "binary" and (cfg.loss != "bce" or cfg.t_alpha is not None):
        raise SystemExit(f"--loss {cfg.loss}/--t_alpha weigh the binary label's loss; --target {cfg.target} has its "
                         "own (targets.py)")
    if cfg.folds == 1 or cfg.folds < 0:
        raise SystemExit(f"--folds {cfg.folds}: give K >= 2 folds, or 0 for the fixed train/val split")
    _check_learning_curve(cfg)
    if cfg.sync_bn and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        raise SystemExit("--sync_bn only applies to torchrun runs with several processes")
    if cfg.tensorboard:
        from hipx.training import board  # stdlib only at import

        board.check_available()
    _check_augment(cfg)


def _check_ranges(cfg: RunConfig) -> None:
    """The numbers that must lie within a range."""
    if not 0.0 <= cfg.augment_p <= 1.0:
        raise SystemExit(f"--augment_p {cfg.augment_p}: must be within [0, 1]")
    if not 0.0 <= cfg.beta < 1.0:
        raise SystemExit(f"--beta {cfg.beta}: Adam beta1 must be within [0, 1)")
    if cfg.t_alpha is not None and not 0.0 < cfg.t_alpha < 1.0:
        raise SystemExit(f"--t_alpha {cfg.t_alpha}: must be within (0, 1)")
    if cfg.focal_gamma is not None and cfg.focal_gamma < 0:
        raise SystemExit(f"--focal_gamma {cfg.focal_gamma}: must be >= 0")
    if cfg.workers < 0:
        raise SystemExit(f"--workers {cfg.workers}: must be >= 0")
    if not 0.0 <= cfg.drop_rate < 1.0:
        raise SystemExit(f"--drop_rate {cfg.drop_rate}: must be within [0, 1)")
    if not 0.0 <= cfg.ema < 1.0:
        raise SystemExit(f"--ema {cfg.ema}: the decay must be within [0, 1), e.g. 0.99 (0 = off)")
    if not 0.0 < cfg.cv_val < 1.0:
        raise SystemExit(f"--cv_val {cfg.cv_val}: must be within (0, 1), e.g. 0.2")
    if cfg.bootstrap < 0:
        raise SystemExit(f"--bootstrap {cfg.bootstrap}: must be >= 0 (0 = no report)")
    if cfg.cut is not None and not math.isfinite(cfg.cut):
        raise SystemExit(f"--cut {cfg.cut}: give a finite number, the clinical cut (osteoporosis when the measurement "
                         "<= VALUE), e.g. -2.5 for a T-score")


def learning_curve_size(text: str) -> float | int:
    """``type=`` of --learning_curve: '0.25' a fraction, '50' patients (:func:`subsets.parse_size`, imported
    only when the flag is given: ``--help`` answers without NumPy)."""
    from hipx.data.subsets import parse_size

    return parse_size(text)


def _check_learning_curve(cfg: RunConfig) -> None:
    """--learning_curve belongs to a cross-validation of the binary label; --target_auc to a learning curve.
    Whether the sizes fit each fold's training patients is checked against the folds (crossval.py)."""
    if cfg.learning_curve is not None and not cfg.folds:
        raise SystemExit("--learning_curve: a learning curve's points are pooled out-of-fold AUCs of a "
                         "cross-validation; add --folds K (e.g. --folds 5)")
    if cfg.learning_curve is not None and cfg.target != "binary":
        raise SystemExit(f"--learning_curve with --target {cfg.target}: the subsets are drawn by the binary label, "
                         "and a graded target also trains on unscored images that they cannot share out; use "
                         "--target binary for the learning curve")
    if cfg.target_auc is not None and cfg.learning_curve is None:
        raise SystemExit("--target_auc: the patients an AUC needs are read off the learning curve; add "
                         "--learning_curve (with --folds K)")
    if cfg.target_auc is not None and not 0.5 < cfg.target_auc < 1:
        raise SystemExit(f"--target_auc {cfg.target_auc}: give an AUC within (0.5, 1), e.g. 0.8")


def _check_augment(cfg: RunConfig) -> None:
    """--augment names known augmentations; --augment_device true only with ones that have a device version."""
    try:
        names = choices.parse_augment(cfg.augment)
    except ValueError as exc:
        raise SystemExit(f"--augment: {exc}") from None
    if cfg.augment_device == "true":
        if cfg.handover != "uint8":
            raise SystemExit("--augment_device true needs --handover uint8 (the device finishes the images)")
        missing = choices.without_device_version(names)
        if missing:
            raise SystemExit(f"--augment_device true: --augment {','.join(missing)} has no device version; on the "
                             f"device: {', '.join(choices.DEVICE_AUGMENTATIONS)}")


def from_flags(args: argparse.Namespace) -> RunConfig:
    """The configuration the flags name (:meth:`RunConfig.from_args`); flags that name two fusion modes
    (:func:`fusion.from_flags`, the one place that checks them) or an unknown augmentation are one line."""
    try:
        choices.parse_augment(args.augment)
    except ValueError as exc:
        raise SystemExit(f"--augment: {exc}") from None
    try:
        return RunConfig.from_args(args)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def settings(args: argparse.Namespace, given: set[str]) -> tuple[RunConfig, list[str]]:
    """The run's configuration, built once and checked: from the flags, or with ``--config`` a saved
    run's with the flags given beside it over it. Returns it and a line for each flag that overrode the
    saved value."""
    from hipx.runs import runchecks, runfiles

    cfg = from_flags(args)
    notes: list[str] = []
    if args.config:
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
        if saved.restarts:  # a run that starts from nothing trains its epochs in one schedule (runchecks.afresh)
            notes.append(f"the saved run was extended at epochs {saved.restarts}; this run trains its {saved.epoch} "
                         "epochs in one schedule")
        cfg = runchecks.afresh(saved).replace(**{k: getattr(cfg, k) for k in keys})
    check_settings(cfg)
    return cfg, notes
