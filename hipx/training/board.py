"""TensorBoard event files of a training or pretraining run (``main.py --tensorboard``,
``pretrain.py --tensorboard``), written into ``<run>/tensorboard/`` and watched while it trains:

    tensorboard --logdir outs/<save_dir> --host 127.0.0.1

The step is the epoch. Every epoch: history.csv's columns as scalars (:func:`tag` names them: the
losses, the validation metrics, the learning rate, the speed) and, for a classifier, the validation
ROC and precision-recall curves as one image (the run report's figure). On the first batch of epoch
1 and of every :data:`IMAGE_EVERY`-th epoch: a few training inputs exactly as the network receives
them (after augmentation), one image per channel.

The trainer and the pretraining loop only call :class:`Board` (:func:`open_board` gives None when the
flag is off, and under torchrun on every rank but 0). A resumed run opens the folder with
``purge_step`` at the first epoch it trains: what an interrupted session logged after its last saved
epoch is dropped from the display, so each epoch shows once.

Stdlib only at import (``options.check_settings`` asks :func:`check_available` before torch loads).
"""
from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any, Mapping

from hipx.core.cli import UserError

logger = logging.getLogger(__name__)

FOLDER = "tensorboard"  # inside the run folder
IMAGE_EVERY = 10  # the inputs of epoch 1, 10, 20, ...
SHOWN = 8  # images of the batch shown per channel
CHANNELS = ("radiograph", "enhanced")  # the image channels (loader.IMAGE_CHANNELS); clinical planes not shown
INSTALL = "pip install tensorboard==2.21.0 (requirements.txt)"

# history.csv's columns and their tags; a validation metric val_X is val/X (:func:`tag`)
TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "lr": "optim/lr",
        "train_seconds": "speed/seconds", "train_images_per_s": "speed/images_per_s",
        "train_data_wait": "speed/data_wait",
        # pretrain.py's history
        "loss": "loss/train", "chance_loss": "loss/chance", "pos_top1": "train/positives_found",
        "seconds": "speed/seconds", "images_per_s": "speed/images_per_s"}
# validation columns that are no measure of the epoch: the split's counts, the fixed 0.5 threshold, and
# the confusion counts at it (the rates beside them are shown)
NOT_SHOWN = ("n", "n_pos", "prevalence", "threshold", "tp", "fp", "tn", "fn")


def tag(column: str) -> str | None:
    """The scalar's tag of a history.csv column, or None for a column not shown (epoch, best, counts)."""
    if column in TAGS:
        return TAGS[column]
    if column.startswith("val_") and column[4:] not in NOT_SHOWN:
        return "val/" + column[4:]
    return None


def check_available(flag: str = "--tensorboard") -> None:
    """One line, before anything is trained, when the tensorboard package is missing."""
    try:
        found = importlib.util.find_spec("tensorboard") is not None
    except (ImportError, ValueError):  # a broken or half-removed package
        found = False
    if not found:
        raise SystemExit(f"{flag}: the tensorboard package is not installed in {sys.executable}; install it with "
                         f"{INSTALL}, or leave {flag} out")


class Board:
    """The event files of one run folder ``run_dir``; ``done``: the epochs it already saved (a resumed
    run), whose events stay -- later ones an interrupted session wrote are purged."""

    def __init__(self, run_dir: str | Path, done: int = 0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise UserError(f"--tensorboard: {exc}; install it with {INSTALL}, or leave --tensorboard out") from None
        self.dir = Path(run_dir) / FOLDER
        # step 0 is a residual run's untrained network: a run that starts from nothing purges from it
        self.writer = SummaryWriter(log_dir=str(self.dir), purge_step=done + 1 if done else 0)
        logger.info("TensorBoard event files in %s (watch: tensorboard --logdir %s --host 127.0.0.1)",
                    self.dir, Path(run_dir))

    @staticmethod
    def shows_inputs(epoch: int) -> bool:
        """Whether the first batch of ``epoch`` is shown."""
        return epoch == 1 or epoch % IMAGE_EVERY == 0

    def inputs(self, epoch: int, image: Any, group: str = "inputs") -> None:
        """The first :data:`SHOWN` images of a batch the network receives (float (B, C, H, W) in [0, 1]),
        one grid per image channel, tagged ``<group>/<channel>``."""
        shown = image[:SHOWN].detach().float().clamp(0.0, 1.0).cpu()
        for i, name in enumerate(CHANNELS[: shown.shape[1]]):
            self.writer.add_images(f"{group}/{name}", shown[:, i:i + 1], epoch, dataformats="NCHW")

    def epoch(self, epoch: int, row: Mapping[str, Any], pred: Mapping | None = None,
              threshold: float | None = None) -> None:
        """One epoch's history ``row`` as scalars and, given the validation predictions ``pred``
        (labels, probs), their ROC and precision-recall curves with the operating point at ``threshold``;
        flushed, so a running TensorBoard shows the epoch at once."""
        for column, value in row.items():
            name = tag(column)
            if name is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(name, float(value), epoch)
        if pred is not None:
            self.writer.add_image("val/roc_pr_curves", curves_image(pred["labels"], pred["probs"], threshold, epoch),
                                  epoch, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def curves_image(labels: Any, probs: Any, threshold: float | None, epoch: int):
    """The run report's ROC and precision-recall figure of the validation predictions, as an RGB array."""
    import cv2
    import numpy as np

    from hipx.reports import render
    from hipx.reports.style import NET

    curve = ("network", np.asarray(probs, dtype=float), threshold, NET)
    png = render.figure_roc_pr(np.asarray(labels, dtype=int), [curve], where=f"validation, epoch {epoch}")
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def open_board(on: bool, run_dir: str | Path, done: int = 0) -> Board | None:
    """The run's :class:`Board` when ``on`` (the flag, and rank 0 under torchrun), else None."""
    return Board(run_dir, done) if on else None
