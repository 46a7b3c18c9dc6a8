"""python pretrain.py films/ more_films/ --image_size 176 102 --epoch 100 --save_dir ssl

Pretrain the image encoder on unlabelled radiographs (self-supervised, SimCLR), then fine-tune it:

    python main.py --pretrained outs/ssl --image_only --image_size 176 102 ...

Images: every image below the FOLDERs (PNG 8/16 bit, JPEG, TIFF, BMP, DICOM, ``.npy``; searched
recursively) and/or the images of a data folder's splits (``--data_dir``, labels ignored); with
``--roi femur`` both hips' proximal femurs are cut from each image as ``preprocess_filenames.py
--roi femur`` does. An image that cannot be read is skipped, counted in the log and listed in
``skipped.csv``. The method and the views are described in ``hipx/training/selfsup.py``, the session
in ``hipx/training/pretrain.py``; docs/pretraining.md says how to use it and what it measured.

The run folder ``outs/<save_dir>/`` (never overwritten without ``--overwrite``) holds
``encoder.pth`` (the ``features.*`` tensors ``main.py --pretrained`` loads into any fusion mode;
the classifier head starts new), ``history.csv`` and ``loss_curve.png``, ``config.json``,
``train.log``, ``images.csv`` and ``skipped.csv``, and ``last.pth``, from which an interrupted run
continues exactly (``--tensorboard`` adds ``tensorboard/``, TensorBoard's event files):

    python pretrain.py --resume --save_dir <save_dir>
"""
from __future__ import annotations

import argparse

from hipx.core.choices import ACTS, MODEL_NAMES, NORMS, STEMS
from hipx.core.cli import add_data_dir, add_device, add_seed, given_flags, positive, run_main
from hipx.data import splits

# the session (torch and everything built on it) is imported by main(), after the command line has been
# checked: --help and a mistyped flag answer at once


def build_parser() -> argparse.ArgumentParser:
    """Every flag of pretrain.py. The "run" group holds the flags every script shares (seed, device,
    threads, workers, data folder); model flags carry main.py's names, so configurations match."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("images (labels are never read)")
    g.add_argument("folders", nargs="*", metavar="FOLDER", help="folders of radiographs, searched recursively "
                   "(PNG, JPEG, TIFF, BMP, DICOM, .npy; masks/ subfolders left out)")
    add_data_dir(g, default=None, unset="none; the images of its --splits are used, labels ignored")
    g.add_argument("--splits", nargs="+", choices=splits.SPLITS, default=list(splits.SPLITS),
                   help="splits of --data_dir to use (default: all). Leave out images you will score on")
    g.add_argument("--roi", choices=("femur",), default=None, help="femur: pretrain on both hips' proximal-femur "
                   "crops of each image (roi.py, as preprocess_filenames.py --roi femur)")
    g.add_argument("--image_size", type=positive(int), nargs=2, metavar=("H", "W"), default=list(splits.IMAGE_SIZE),
                   help="images are fitted (padded) to H x W (default: %(default)s; the size you fine-tune at)")

    g = p.add_argument_group("encoder (main.py's flags: fine-tune with the same ones)")
    g.add_argument("--model", choices=MODEL_NAMES, default="dense_net", help="network (default: %(default)s)")
    g.add_argument("--depth", type=int, default=40, help="DenseNet-BC depth (dense_net only)")
    g.add_argument("--growthRate", type=positive(int), default=12, help="DenseNet-BC growth rate (dense_net only)")
    g.add_argument("--norm", choices=NORMS, default="bn", help="(default: %(default)s)")
    g.add_argument("--act", choices=ACTS, default="relu", help="(default: %(default)s)")
    g.add_argument("--stem", choices=STEMS, default="downsample", help="(default: %(default)s)")

    g = p.add_argument_group("method (SimCLR)")
    g.add_argument("--temperature", type=positive(float), default=0.5, help="NT-Xent temperature (default: "
                   "%(default)s)")
    g.add_argument("--proj_dim", type=positive(int), default=128, help="projector output (default: %(default)s)")
    g.add_argument("--proj_hidden", type=positive(int), default=512, help="projector hidden layer (default: "
                   "%(default)s)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epoch", type=positive(int), default=100, help="epochs (default: %(default)s)")
    g.add_argument("--batch_size", type=positive(int), default=32, help="images per step, two views each; the "
                   "other images of the batch are the negatives (default: %(default)s)")
    g.add_argument("--lr", type=positive(float), default=1e-3, help="Adam learning rate, cosine decay to 0 "
                   "(default: %(default)s)")
    g.add_argument("--weight_decay", type=float, default=1e-6, help="(default: %(default)s, SimCLR's)")

    g = p.add_argument_group("run")
    g.add_argument("--save_dir", default=None, help="run folder outs/<save_dir>/ (default: pretrain-<time>)")
    g.add_argument("--out_root", default="outs", help="(default: %(default)s)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run folder of that name")
    g.add_argument("--resume", action="store_true", help="continue the run --save_dir from its last.pth with "
                   "every setting from the run")
    add_seed(g, "the views, the batches and the initial weights")
    g.add_argument("--workers", type=int, default=2, help="DataLoader worker processes drawing the views "
                   "(default: %(default)s)")
    add_device(g)
    g.add_argument("--gpus", default=None, help="CUDA device index to use, e.g. 0 (several: use torchrun)")
    g.add_argument("--cpus", type=positive(int), default=None, help="CPU threads for torch (default: the cores "
                   "left after the --workers processes, at least 1)")
    g.add_argument("--dtype", choices=("auto", "float", "half"), default="auto", help="auto: fp16/bf16 autocast "
                   "on CUDA, fp32 on CPU")
    g.add_argument("--channels_last", choices=("auto", "true", "false"), default="auto")
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels (exactly reproducible "
                   "on GPU, slower)")
    g.add_argument("--tensorboard", action="store_true", help="write TensorBoard event files into the run folder's "
                   "tensorboard/: the loss, positives found and learning rate per epoch, a few pairs of views; watch "
                   "with tensorboard --logdir outs/<save_dir> --host 127.0.0.1 (with --resume: give it again)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse flag combinations that make no sense, naming the flag."""
    from hipx.training.options import check_network  # main.py's rules for the network flags (no torch import)

    check_network(args)
    if args.batch_size < 2:
        raise SystemExit(f"--batch_size {args.batch_size}: SimCLR needs at least 2 images per step (the others "
                         "are each image's negatives)")
    if args.workers < 0:
        raise SystemExit(f"--workers {args.workers}: must be >= 0")
    if args.weight_decay < 0:
        raise SystemExit(f"--weight_decay {args.weight_decay}: must be >= 0")
    if args.resume and args.save_dir is None:
        raise SystemExit("--resume needs the run to continue: give its --save_dir")
    if args.resume and args.overwrite:
        raise SystemExit("--resume and --overwrite exclude each other: --resume continues the run, --overwrite "
                         "replaces it")
    if not args.resume and not args.folders and args.data_dir is None:
        raise SystemExit("no images: give one or more FOLDERs of radiographs and/or --data_dir DATA_FOLDER")
    if args.tensorboard:
        from hipx.training import board  # stdlib only at import

        board.check_available()


def main(argv: list[str] | None = None) -> dict:
    """Pretrain (or ``--resume``) the encoder the flags name; returns the last epoch's losses."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = given_flags(parser, argv)
    check_args(args)
    from hipx.training import pretrain as pretraining

    return pretraining.start(args, given, argv)


if __name__ == "__main__":
    run_main(main)
