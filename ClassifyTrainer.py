"""The training loop: epochs, validation on all of val, best-epoch selection, checkpointing, and one
test of the best checkpoint.

``ClassifyTrainer`` feeds the network one tensor (the image, with clinical channels for early
fusion); ``LateFuseClassifyTrainer`` (its own file) overrides :meth:`model_inputs` to add the
clinical vector. Everything else is shared.
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
from torch.utils.data import DataLoader
from tqdm import tqdm

import metrics
import runfiles
from runtime import Precision

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class ClassifyTrainer:
    """Train ``model`` on ``loaders['train']``, validate every epoch on ``loaders['val']``, keep the
    best epoch by ``select_metric`` in ``run_dir/best.pth`` and score only that checkpoint on test."""

    def __init__(self, model: torch.nn.Module, loaders: dict[str, DataLoader], loss_fn: Callable,
                 optimizer: torch.optim.Optimizer | None, device: torch.device, run_dir: Path,
                 config: dict, clinical_stats: dict, precision: Precision = Precision(None, False),
                 select_metric: str = "roc_auc") -> None:
        self.model = model.to(device)
        self.loaders = loaders
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.device = device
        self.run_dir = Path(run_dir)
        self.config = config
        self.clinical_stats = clinical_stats
        self.precision = precision
        self.select_metric = select_metric
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler)
        self.history: list[dict] = []
        self.best: dict | None = None

    # -- how a batch reaches the network: the one thing subclasses change -------------------------
    def model_inputs(self, batch: dict) -> tuple[torch.Tensor, ...]:
        return (batch["image"].to(self.device, non_blocking=True),)

    def forward(self, batch: dict) -> torch.Tensor:
        autocast = (torch.autocast(self.device.type, dtype=self.precision.dtype)
                    if self.precision.dtype is not None else nullcontext())
        with autocast:
            return self.model(*self.model_inputs(batch)).float()

    # -- epochs ------------------------------------------------------------------------------------
    def train_one_epoch(self, epoch: int) -> dict:
        """One pass over the training loader; returns the mean loss and timing."""
        loader = self.loaders["train"]
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)  # fresh augmentation draws every epoch
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        self.model.train()
        total, count, start = 0.0, 0, time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch} train", leave=False, dynamic_ncols=True)
        for step, batch in enumerate(bar):
            target = batch["label"].to(self.device, non_blocking=True)
            loss = self.loss_fn(self.forward(batch), target)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss became {loss.item()} at epoch {epoch}, batch {step}; training stopped. "
                    f"The best checkpoint so far is kept at {self.run_dir / runfiles.BEST}. "
                    "Try a lower --lrG or --dtype float.")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += loss.item() * len(target)
            count += len(target)
            bar.set_postfix(loss=f"{total / count:.4f}")
        seconds = time.perf_counter() - start
        return {"train_loss": total / max(count, 1), "train_seconds": seconds,
                "train_images_per_s": count / max(seconds, 1e-9)}

    @torch.no_grad()
    def predict(self, split: str) -> dict:
        """Probabilities for every image of a split, in loader order (no shuffling, no dropping)."""
        self.model.eval()
        labels, probs, paths, total = [], [], [], 0.0
        for batch in tqdm(self.loaders[split], desc=f"{split}", leave=False, dynamic_ncols=True):
            logits = self.forward(batch)
            target = batch["label"].to(self.device)
            total += self.loss_fn(logits, target).item() * len(target)
            probs.append(torch.sigmoid(logits).cpu().numpy())
            labels.append(batch["label"].numpy())
            paths.extend(batch["path"])
        labels = np.concatenate(labels).astype(int)
        probs = np.concatenate(probs).astype(np.float64)
        return {"labels": labels, "probs": probs, "paths": paths, "loss": total / max(len(labels), 1)}

    def validate(self) -> tuple[dict, dict]:
        """Validation metrics (threshold-dependent ones at 0.5) and the predictions."""
        pred = self.predict("val")
        result = metrics.compute_metrics(pred["labels"], pred["probs"], threshold=0.5)
        result["loss"] = pred["loss"]
        result["youden_threshold"] = metrics.youden_threshold(pred["labels"], pred["probs"])
        return result, pred

    def is_better(self, value: float) -> bool:
        if value is None or not math.isfinite(value):
            return False
        return self.best is None or value > self.best["value"]

    def fit(self, epochs: int, start_epoch: int = 1) -> dict:
        """Train for ``epochs`` epochs; returns the best epoch's record."""
        for epoch in tqdm(range(start_epoch, epochs + 1), desc="epochs", dynamic_ncols=True):
            row = {"epoch": epoch, **self.train_one_epoch(epoch)}
            val, pred = self.validate()
            row.update({f"val_{k}": v for k, v in val.items()})
            row["lr"] = self.optimizer.param_groups[0]["lr"]
            value = val[self.select_metric]
            improved = self.is_better(value)
            row["best"] = int(improved)
            if improved:
                self.best = {"epoch": epoch, "value": value, "threshold": val["youden_threshold"]}
                self.save(runfiles.BEST, epoch, val["youden_threshold"], val)
                self.write_predictions("val_predictions.csv", pred, val["youden_threshold"])
            self.history.append(row)
            runfiles.write_csv(self.run_dir / "history.csv", self.history)
            logger.info("epoch %d  train loss %.4f  val loss %.4f  val AUC %.4f  val F2 %.4f  val acc %.4f  "
                        "%s %.4f%s", epoch, row["train_loss"], val["loss"], val["roc_auc"], val["f2"],
                        val["accuracy"], self.select_metric, value, "  (best)" if improved else "")
        if self.best is None:
            raise RuntimeError(f"validation {self.select_metric} was never finite (does val hold both classes?); "
                               "no best checkpoint was written")
        return self.best

    # -- checkpoints and test ------------------------------------------------------------------------
    def save(self, name: str, epoch: int, threshold: float, val_metrics: dict) -> None:
        runfiles.save_checkpoint(self.run_dir / name, self.model.state_dict(), self.config,
                                 self.clinical_stats, threshold, epoch,
                                 val_metrics={k: float(v) for k, v in val_metrics.items()},
                                 select_metric=self.select_metric)

    def write_predictions(self, name: str, pred: dict, threshold: float) -> None:
        rows = [{"file": Path(p).name, "label": int(y), "probability": f"{prob:.6f}",
                 "prediction": int(prob >= threshold)}
                for p, y, prob in zip(pred["paths"], pred["labels"], pred["probs"])]
        runfiles.write_csv(self.run_dir / name, rows, ["file", "label", "probability", "prediction"])

    def test(self) -> dict:
        """Load ``best.pth`` (never the last epoch's weights) and score it once on test."""
        state = runfiles.load_checkpoint(self.run_dir / runfiles.BEST)
        self.model.load_state_dict(state["model"])
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
        runfiles.write_json(self.run_dir / "test_metrics.json", result)
        self.write_predictions("test_predictions.csv", pred, threshold)
        return result
