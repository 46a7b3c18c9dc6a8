"""The training loop: epochs, validation on all of val, best-epoch selection, checkpointing, and one
test of the best checkpoint.

``ClassifyTrainer`` feeds the network one tensor (the image, with clinical channels for early
fusion); ``LateFuseClassifyTrainer`` (its own file) overrides :meth:`model_inputs` to add the
clinical vector. Everything else is shared, including torchrun (DDP) runs: each rank trains on its
share of every epoch, validation and test predictions are gathered from all ranks so metrics equal
the single-process ones, and only rank 0 logs and writes files.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from hipx.core import fusion
from hipx.core import runtime
from hipx.data import loader
from hipx.stats import metrics
from hipx.runs import runfiles
from hipx.core import targets
from hipx.core.choices import TTA_CHOICES
from hipx.core.runconfig import RunConfig
from hipx.core.runtime import Dist, Precision, progress

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DistributedDataParallel wrapper (checkpoints never carry ``module.``)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


class ClassifyTrainer:
    """Train ``model`` on ``loaders['train']``, validate every epoch on ``loaders['val']``, keep the
    best epoch by ``select_metric`` in ``run_dir/best.pth`` (and every epoch in ``last.pth`` for
    ``--resume``) and score only the best checkpoint on test."""

    def __init__(self, *, model: torch.nn.Module, loaders: dict[str, DataLoader], loss_fn: Callable,
                 optimizer: torch.optim.Optimizer | None, device: torch.device, run_dir: Path,
                 config: RunConfig, clinical_stats: dict, precision: Precision = Precision(None, False),
                 select_metric: str = "roc_auc", seed: int = 0, channels_last: bool = False,
                 dist_info: Dist = Dist(), scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                 ema_decay: float = 0.0, tta: str = "none",
                 device_augment: Callable | None = None, validate_start: bool = False) -> None:
        self.model = model
        # weight averaging: validation, checkpoints and test use the exponential moving average of
        # the weights (and BatchNorm buffers) instead of the last step's (Polyak & Juditsky 1992;
        # as timm's ModelEmaV2); ema_decay 0 = off
        self.ema = (torch.optim.swa_utils.AveragedModel(
            unwrap(model), multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            if ema_decay > 0 else None)
        if tta not in TTA_CHOICES:
            raise ValueError(f"unknown test-time augmentation {tta!r}; choose {' or '.join(TTA_CHOICES)}")
        self.tta = tta
        self.loaders = loaders
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = device
        self.run_dir = Path(run_dir)
        self.run = runfiles.Run(self.run_dir)  # names and writes the run's files
        self.config = config
        self.clinical_stats = clinical_stats
        self.precision = precision
        self.select_metric = select_metric
        self.seed = seed
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.dist = dist_info
        self.fusion = config.fusion  # what the network receives (fusion.network_inputs)
        self.early_fuse = fusion.mode(self.fusion).clinical_planes
        self.device_augment = device_augment  # augment_device.DeviceAugmenter, applied to training batches
        self.epoch = 0
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler)
        self.history: list[dict] = []
        self.best: dict | None = None
        # score the untrained network as epoch 0, a candidate for the best epoch: residual fusion starts
        # as the clinical model, so the image's correction is kept only where it validates better
        self.validate_start = validate_start
        self.board = None  # board.Board: the run's TensorBoard event files (--tensorboard, rank 0), set by the session

    # -- how a batch reaches the network: the one thing subclasses change -------------------------
    def image(self, batch: dict) -> torch.Tensor:
        """The image input on the device. An 8-bit batch is finished here by the loader's
        :func:`loader.network_image` (after the device-side augmentation, when training); a float
        batch already is the network's input."""
        image = batch["image"].to(self.device, non_blocking=True)
        if image.dtype == torch.uint8:
            clinical = batch["clinical"].to(self.device, non_blocking=True) if self.early_fuse else None
            if self.device_augment is not None and self.model.training:
                image = self.device_augment(loader.network_image(image, clinical, False), batch["index"], self.epoch)
            image = loader.network_image(image, clinical, self.early_fuse)
        return image.contiguous(memory_format=self.memory_format)

    def clinical(self, batch: dict) -> torch.Tensor | None:
        """The clinical vector on the device, where the fusion mode gives it to the network."""
        if not fusion.mode(self.fusion).clinical_vector:
            return None
        return batch["clinical"].to(self.device, non_blocking=True)

    def model_inputs(self, batch: dict) -> tuple[torch.Tensor, ...]:
        return fusion.network_inputs(self.fusion, self.image(batch), self.clinical(batch))

    def forward(self, batch: dict, model: torch.nn.Module | None = None) -> torch.Tensor:
        autocast = (torch.autocast(self.device.type, dtype=self.precision.dtype)
                    if self.precision.dtype is not None else nullcontext())
        with autocast:
            return (model or self.model)(*self.model_inputs(batch)).float()

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated, saved and tested: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def bar(self, iterable, **kwargs):
        return progress(iterable, enabled=self.dist.is_main, **kwargs)

    def batch_loss(self, logits: torch.Tensor, batch: dict, model: torch.nn.Module | None = None) -> torch.Tensor:
        """The loss of the run's target (targets.py): the binary loss of the label, or that of the grade or
        measurement behind it."""
        net = unwrap(model or self.model)
        label = batch["label"].to(self.device, non_blocking=True)
        if not net.target.graded:
            return self.loss_fn(logits, label)
        return targets.loss(net.target, logits, label, batch["measure"].to(self.device, non_blocking=True),
                            net.ordinal_offsets(), scale=net.logit_scale)

    def train_step(self, batch: dict, where: str = "") -> torch.Tensor:
        """One optimiser step on one batch; returns the (detached) loss. ``where`` names the step in
        the error raised when the loss is not finite."""
        loss = self.batch_loss(self.forward(batch), batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss became {loss.item()}{where}; training stopped. "
                f"The best checkpoint so far is kept at {self.run.file(runfiles.BEST)}. "
                "Try a lower --lrG or --dtype float.")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(unwrap(self.model))
        return loss.detach()

    # -- epochs ------------------------------------------------------------------------------------
    def train_one_epoch(self, epoch: int) -> dict:
        """One pass over the training loader; returns the mean loss, timing and the share of the
        epoch spent waiting for the loader (``loss.item()`` synchronises every step, so that wait is
        time the accelerator had no batch: more ``--workers`` when it is large)."""
        loader = self.loaders["train"]
        for part in (loader.dataset, loader.sampler):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)  # fresh order and augmentation draws every epoch
        torch.manual_seed(self.seed * 100003 + epoch)  # dropout etc.: a resumed epoch draws the same
        self.epoch = epoch  # the device-side augmentation draws afresh every epoch
        self.model.train()
        total, count, start = 0.0, 0, time.perf_counter()
        waited, ready = 0.0, start
        bar = self.bar(loader, desc=f"epoch {epoch} train", leave=False)
        for step, batch in enumerate(bar):
            waited += time.perf_counter() - ready
            if step == 0 and self.board is not None and self.board.shows_inputs(epoch):
                with torch.no_grad():  # the batch's input as train_step gives it (augmentation draws are seeded)
                    self.board.inputs(epoch, self.image(batch))
            loss = self.train_step(batch, f" at epoch {epoch}, batch {step}")
            n = len(batch["label"])
            total += loss.item() * n
            count += n
            bar.set_postfix(loss=f"{total / count:.4f}")
            ready = time.perf_counter()
        seconds = time.perf_counter() - start
        total, count = self.all_reduce_sum(total, count)
        return {"train_loss": total / max(count, 1), "train_seconds": seconds,
                "train_images_per_s": count / max(seconds, 1e-9), "train_data_wait": waited / max(seconds, 1e-9)}

    def all_reduce_sum(self, *values: float) -> list[float]:
        if not self.dist.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    @torch.no_grad()
    def predict(self, split: str) -> dict:
        """Probabilities for every image of a split, in file order; under torchrun each rank scores
        its shard and the shards are gathered, so every rank holds all predictions."""
        model = self.eval_model
        model.eval()
        loader = self.loaders[split]
        indices = list(iter(loader.sampler))
        probs, values, total = [], [], 0.0
        net = unwrap(model)
        for batch in self.bar(loader, desc=split, leave=False):
            # with flip TTA: the logit of the averaged probability, whose loss is reported
            prob, logits = fusion.scored(lambda b: self.forward(b, model), batch, self.tta, self.forward(batch, model))
            total += self.batch_loss(logits, batch, model).item() * len(logits)
            probs.append(prob.cpu().numpy())
            value = net.predicted_value(logits)
            values.append(np.full(len(logits), np.nan) if value is None else value.float().cpu().numpy())
        probs = np.concatenate(probs).astype(np.float64) if probs else np.zeros(0)
        values = np.concatenate(values).astype(np.float64) if values else np.zeros(0)
        part = (indices, probs.tolist(), values.tolist(), total)
        parts = [part]
        if self.dist.enabled:
            parts = [None] * self.dist.world
            dist.all_gather_object(parts, part)
        n = len(loader.dataset)
        out, predicted = np.full(n, np.nan), np.full(n, np.nan)
        total = 0.0
        for idx, p, v, t in parts:
            out[idx] = p
            predicted[idx] = v
            total += t
        if np.isnan(out).any():
            raise RuntimeError(f"{split}: {int(np.isnan(out).sum())} images were not scored")
        ds = loader.dataset
        return {"labels": np.asarray(ds.labels, dtype=int), "probs": out, "paths": list(ds.files),
                "loss": total / max(n, 1), "measure": np.asarray(ds.measure, dtype=np.float64),
                "predicted": predicted}

    def validate(self) -> tuple[dict, dict]:
        """Validation metrics (threshold-dependent ones at 0.5) and the predictions. A continuous target's
        probability is first fitted to validation (:meth:`fit_scale`)."""
        pred = self.predict("val")
        residual_sd = self.fit_scale(pred)
        if residual_sd is not None:
            pred = self.predict("val")  # the same ranking, probabilities on the fitted scale
        result = metrics.compute_metrics(pred["labels"], pred["probs"], threshold=0.5)
        result["loss"] = pred["loss"]
        if residual_sd is not None:
            result["residual_sd"] = residual_sd
        result["youden_threshold"] = metrics.youden_threshold(pred["labels"], pred["probs"])
        return result, pred

    def fit_scale(self, pred: dict) -> float | None:
        """A continuous target: the SD of the validation images' residual (measured minus predicted, in
        training SDs) sets the probability's scale, P(osteoporosis) = Phi((z_cut - z_hat) / SD) in its
        logistic form (``targets.scale_for``), saved with the weights as the network's ``logit_scale``.
        Returns the SD (None for other targets, or where no validation image has a measurement)."""
        net = unwrap(self.eval_model)
        if not net.target.fitted_scale:
            return None
        sd = targets.residual_sd(net.target, pred["measure"], pred["predicted"])
        if sd is None:
            return None
        scale = targets.scale_for(sd)
        for model in {id(m): m for m in (net, unwrap(self.model))}.values():
            model.logit_scale.fill_(scale)
        return sd

    def is_better(self, value: float) -> bool:
        if value is None or not math.isfinite(value):
            return False
        return self.best is None or value > self.best["value"]

    def fit(self, epochs: int) -> dict:
        """Train until epoch ``epochs`` (continuing after the history a resumed run restored);
        returns the best epoch's record."""
        start = len(self.history) + 1
        if start == 1 and self.validate_start:
            self.score_start()
        for epoch in self.bar(range(start, epochs + 1), desc="epochs", initial=start - 1, total=epochs):
            row = {"epoch": epoch, **self.train_one_epoch(epoch)}
            val, pred = self.validate()
            row.update({f"val_{k}": v for k, v in val.items()})
            row["lr"] = self.optimizer.param_groups[0]["lr"]
            if self.scheduler is not None:
                self.scheduler.step()
            value = val[self.select_metric]
            improved = self.is_better(value)
            row["best"] = int(improved)
            self.history.append(row)
            if improved:
                self.best = {"epoch": epoch, "value": value, "threshold": val["youden_threshold"]}
            if self.dist.is_main:
                if improved:
                    self.save(runfiles.BEST, epoch, val["youden_threshold"], val)
                    self.write_predictions("val", pred, val["youden_threshold"])
                self.run.write_history(self.history)
                self.save_last(epoch)
            if self.board is not None:
                self.board.epoch(epoch, row, pred, val["youden_threshold"])
            # the metric names are history.csv's columns (val_roc_auc, ...); the selecting one is added if not shown
            shown = {"roc_auc": val["roc_auc"], "f2": val["f2"], "accuracy": val["accuracy"]}
            shown.setdefault(self.select_metric, value)
            logger.info("epoch %d  train loss %.4f  val loss %.4f  %s  %.1f img/s (%.0f%% waiting for data)%s", epoch,
                        row["train_loss"], val["loss"], "  ".join(f"val {k} {v:.4f}" for k, v in shown.items()),
                        row["train_images_per_s"], 100 * row["train_data_wait"], "  (best)" if improved else "")
            shared = runtime.share_cores()  # the default plan on the CPU: the cores other jobs left this one
            if shared:
                logger.info("%s", shared)
        if self.best is None:
            raise RuntimeError(f"validation {self.select_metric} was never finite (does val hold both classes?); "
                               "no best checkpoint was written")
        return self.best

    def score_start(self) -> None:
        """Validate the network before any training step as epoch 0 (not a row of the history)."""
        val, pred = self.validate()
        value = val[self.select_metric]
        if self.is_better(value):
            self.best = {"epoch": 0, "value": value, "threshold": val["youden_threshold"]}
            if self.dist.is_main:
                self.save(runfiles.BEST, 0, val["youden_threshold"], val)
                self.write_predictions("val", pred, val["youden_threshold"])
        if self.board is not None:
            self.board.epoch(0, {f"val_{k}": v for k, v in val.items()}, pred, val["youden_threshold"])
        logger.info("epoch 0 (before training: the clinical model alone)  val loss %.4f  val %s %.4f",
                    val["loss"], self.select_metric, value)

    # -- checkpoints and test ------------------------------------------------------------------------
    def save(self, name: str, epoch: int, threshold: float, val_metrics: dict, **extra) -> None:
        self.run.save_checkpoint(name, unwrap(self.eval_model).state_dict(), self.config, self.clinical_stats,
                                 threshold, epoch, val_metrics={k: float(v) for k, v in val_metrics.items()},
                                 select_metric=self.select_metric, **extra)

    def save_last(self, epoch: int) -> None:
        """Everything ``--resume`` needs to continue exactly after ``epoch``."""
        val = {k[4:]: v for k, v in self.history[-1].items() if k.startswith("val_")}
        self.save(runfiles.LAST, epoch, val["youden_threshold"], val,
                  trained=unwrap(self.model).state_dict() if self.ema is not None else None,
                  ema_averaged=int(self.ema.n_averaged) if self.ema is not None else None,
                  optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
                  scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
                  history=[{k: v if isinstance(v, int) else float(v) for k, v in row.items()} for row in self.history],
                  best=dict(self.best) if self.best else None)

    def restore(self, state: dict) -> None:
        """Continue from a ``last.pth`` written by :meth:`save_last` (with weight averaging its
        ``model`` is the average, ``trained`` the optimiser's weights)."""
        if self.ema is not None:
            unwrap(self.model).load_state_dict(state["trained"])
            self.ema.module.load_state_dict(state["model"])
            self.ema.n_averaged.fill_(int(state["ema_averaged"]))
        else:
            unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        self.history = [{k: (int(v) if k in ("epoch", "best") else v) for k, v in row.items()}
                        for row in state["history"]]
        self.best = dict(state["best"]) if state["best"] else None
        if self.best:
            self.best["epoch"] = int(self.best["epoch"])

    def write_predictions(self, split: str, pred: dict, threshold: float) -> None:
        rows = [{"file": Path(p).name, "label": int(y), "probability": runfiles.probability_text(prob),
                 "prediction": int(prob >= threshold)}
                for p, y, prob in zip(pred["paths"], pred["labels"], pred["probs"])]
        if unwrap(self.model).target.graded:  # the measurement and its prediction beside them
            for row, m, v in zip(rows, pred["measure"], pred["predicted"]):
                row.update(measure="" if np.isnan(m) else f"{m:.9g}", predicted=f"{v:.9g}")
        self.run.write_predictions(split, rows)

    def test(self) -> dict:
        """Load ``best.pth`` (never the last epoch's weights) and score it once on test."""
        if self.dist.enabled:
            dist.barrier()  # rank 0 has finished writing best.pth
        state = self.run.load_checkpoint(runfiles.BEST)
        unwrap(self.eval_model).load_state_dict(state["model"])
        threshold = float(state["threshold"])
        pred = self.predict("test")
        result = {
            "checkpoint": runfiles.BEST,
            "epoch": int(state["epoch"]),
            "select_metric": state.get("select_metric", self.select_metric),
            "threshold": threshold,
            "threshold_source": "validation (Youden's J) at the best epoch",
            "n_images": int(len(pred["labels"])),
            "loss": pred["loss"],
            "at_threshold": metrics.compute_metrics(pred["labels"], pred["probs"], threshold=threshold),
            "at_0.5": metrics.compute_metrics(pred["labels"], pred["probs"], threshold=0.5),
        }
        if self.dist.is_main:
            self.run.write_test_metrics(result)
            self.write_predictions("test", pred, threshold)
        return result


class LateFuseClassifyTrainer(ClassifyTrainer):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if not fusion.mode(self.fusion).clinical_vector:
            raise ValueError(f"LateFuseClassifyTrainer trains a network that takes the clinical vector, not "
                             f"{fusion.text(self.fusion)}")
