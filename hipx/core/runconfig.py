"""A run's configuration, typed: :class:`RunConfig`, built from ``main.py``'s flags once, written
to ``config.json`` and into every checkpoint, and read back from both.

    cfg = RunConfig.from_args(args)               # the flags, with the three fusion flags as one mode
    cfg = RunConfig.from_dict(read_json(path))    # a saved run, old runs' keys converted (upgrade)
    cfg = cfg.replace(save_dir="again")           # a changed copy: a configuration is never edited in place

Runs saved before a setting existed carry no key for it (or an older spelling); :func:`upgrade`
is the one place that converts them. Each field says its role (:data:`NETWORK`: the checkpoint
fixes it, ``--test`` keeps the run's; :data:`SESSION`: where and how fast this session runs, the
only flags ``--resume`` lets differ; :data:`DERIVED`: measured when the run starts).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from hipx.core import choices
from hipx.core import fusion

NETWORK, SESSION, DERIVED = "network", "session", "derived"
# flags that say what to do with a run, not what the run is: never part of a configuration
ACTIONS = ("test", "resume", "extend_epochs", "config", "overwrite")
# keys older runs saved that say nothing today: the two fusion booleans (now ``fusion``), the actions,
# and the thread count, which the session chooses (runtime.choose_threads)
RETIRED = ("late_fuse", "image_only", "threads", *ACTIONS)


def _f(default: Any = None, role: str = "", required: bool = False) -> Any:
    """A field with its ``role``; ``required``: a checkpoint's configuration must name it (no default
    can rebuild the network when it is missing)."""
    factory = (lambda: list(default)) if isinstance(default, (list, tuple)) else None
    kwargs = {"default_factory": factory} if factory else {"default": default}
    return field(**kwargs, metadata={"role": role, "required": required})


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run; the defaults are ``main.py``'s (tests/test_runconfig.py checks that
    they agree) and stand in for keys an older run did not save."""

    # data
    data_dir: str = _f("data")
    image_size: list = _f(choices.IMAGE_SIZE, NETWORK, required=True)
    augment: str = _f("")
    augment_p: float = _f(0.3)
    sampler: str = _f("none")
    workers: int = _f(2, SESSION)
    cache_gb: float = _f(4.0, SESSION)
    handover: str = _f("uint8")
    augment_device: str = _f("auto")
    allow_shared_patients: bool = _f(False)
    # model
    model: str = _f("dense_net", NETWORK, required=True)
    fusion: str = _f(fusion.DEFAULT, NETWORK, required=True)
    depth: int = _f(40, NETWORK, required=True)
    growthRate: int = _f(12, NETWORK, required=True)
    norm: str = _f("bn", NETWORK, required=True)
    act: str = _f("relu", NETWORK, required=True)
    stem: str = _f("downsample", NETWORK, required=True)
    drop_rate: float = _f(0.0, NETWORK)
    pretrained: str | None = _f(None)
    # optimisation
    epoch: int = _f(50)
    batch_size: int = _f(12)
    lrG: float = _f(1e-3)
    beta: float = _f(0.9)
    sched: str = _f("cosine")
    loss: str = _f("bce")
    focal_gamma: float = _f(2.0)
    t_alpha: float | None = _f(None)
    ema: float = _f(0.0)
    tta: str = _f("none")
    select_metric: str = _f("roc_auc")
    # what is learnt (targets.py): the binary label, ordinal classes or the continuous measurement
    target: str = _f("binary", NETWORK)
    cut: float | None = _f(None)
    # run
    save_dir: str | None = _f(None, SESSION)
    fold: str = _f("", SESSION)
    out_root: str = _f("outs", SESSION)
    seed: int = _f(0)
    folds: int = _f(0)
    cv: str = _f("auto")
    cv_val: float = _f(choices.CV_VAL_FRACTION)
    # a learning curve of the cross-validation: nested training subsets (fractions, or patient counts) of
    # every fold, and the AUC whose patients the report estimates
    learning_curve: list | None = _f(None)
    target_auc: float | None = _f(None)
    bootstrap: int = _f(2000)
    device: str = _f("auto", SESSION)
    gpus: str | None = _f(None, SESSION)
    cpus: int | None = _f(None)
    compile: bool = _f(False)
    dtype: str = _f("auto")
    channels_last: str = _f("auto")
    deterministic: bool = _f(False)
    sync_bn: bool = _f(False)
    tensorboard: bool = _f(False, SESSION)  # what this session writes beside the run, not what the run is
    # one fold of a cross-validation (crossval.py sets them; folds.config_files reads them)
    cv_folds: int = _f(0)
    cv_fold: int | None = _f(None)
    cv_seed: int | None = _f(None)
    cv_design: str | None = _f(None)
    # a fold of a learning curve: it trains on this subset of the fold's training patients (data/subsets.py)
    cv_subset: float | int | None = _f(None)
    # measured when the run starts (main.py), and the epochs where --extend_epochs restarted the schedule
    in_chans: int | None = _f(None, NETWORK, required=True)
    trainer: str | None = _f(None, DERIVED)
    clinical_names: list | None = _f(None, DERIVED)
    torch: str | None = _f(None, DERIVED)
    world_size: int | None = _f(None, DERIVED)
    restarts: list = _f((), DERIVED)
    target_spec: dict | None = _f(None, DERIVED)  # targets.TargetSpec of the training images
    # residual fusion's correction (models.classifier.RESIDUAL_HEADS): None, runs made before it, is "linear"
    residual_head: str | None = _f(None, DERIVED)

    # -- building -----------------------------------------------------------------------------------
    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunConfig:
        """The configuration the flags name: ``--fusion``/``--late_fuse``/``--image_only`` as one mode
        (:func:`fusion.from_flags`; early when none names one), ``--augment`` in its canonical
        spelling, ``--focal_gamma`` 2 when not given, ``--learning_curve`` without sizes as
        :data:`choices.LEARNING_CURVE_SIZES`. ``args`` itself is not changed."""
        values = {k: v for k, v in vars(args).items() if k in FIELDS}
        values["fusion"] = fusion.from_flags(args.fusion, args.late_fuse, args.image_only) or fusion.DEFAULT
        values["augment"] = ",".join(choices.parse_augment(args.augment))
        values["focal_gamma"] = 2.0 if args.focal_gamma is None else args.focal_gamma
        if values.get("learning_curve") == []:  # --learning_curve with no sizes
            values["learning_curve"] = list(choices.LEARNING_CURVE_SIZES)
        return cls(**values)

    @classmethod
    def from_dict(cls, saved: Mapping) -> RunConfig:
        """A saved configuration (``config.json``, a checkpoint's): :func:`upgrade`d, keys of no
        setting ignored. Raises ``ValueError`` naming the keys a network needs when they are missing."""
        values = upgrade(saved)
        missing = [k for k in REQUIRED if k not in values]
        if missing:
            raise ValueError(f"the configuration lacks {', '.join(missing)}; it cannot say which network to build")
        return cls(**{k: v for k, v in values.items() if k in FIELDS})

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """What ``config.json`` and a checkpoint hold: every field under its flag's name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    # -- what the settings mean ---------------------------------------------------------------------
    @property
    def is_fold(self) -> bool:
        """One fold of a cross-validation (its files come from the fold's design, seed and number)."""
        return bool(self.cv_folds)

    @property
    def runs_folds(self) -> bool:
        """``--folds K`` asked for a whole cross-validation (not one fold of one)."""
        return bool(self.folds) and self.cv_fold is None


def upgrade(saved: Mapping) -> dict:
    """The one place where a saved configuration of an older run is brought up to date: the fusion
    mode from the two booleans older runs saved (``late_fuse``, ``image_only``), keys that are no
    setting any more (:data:`RETIRED`) dropped, and the settings a run made before they existed
    used, where that differs from today's default (a fold's seed is the run's seed; folds from
    before there were designs are ``heldout``). Missing settings otherwise read as the defaults."""
    values = dict(saved)
    if "fusion" in values or "late_fuse" in values:
        values["fusion"] = fusion.of_config(values)
    for key in RETIRED:
        values.pop(key, None)
    if values.get("cv_folds"):
        values.setdefault("cv_design", "heldout")
        values.setdefault("cv_seed", values.get("seed", 0))
    if values.get("cv_val") is None and "cv_val" in values:
        values["cv_val"] = choices.CV_VAL_FRACTION
    return values


FIELDS = {f.name: f for f in fields(RunConfig)}
# what a checkpoint's configuration must name; an error lists the network's kind and input first
REQUIRED = tuple(sorted((f.name for f in fields(RunConfig) if f.metadata["required"]),
                        key=lambda k: ("model", "fusion", "in_chans").index(k) if k in ("model", "fusion", "in_chans")
                        else 3))
NETWORK_KEYS = tuple(f.name for f in fields(RunConfig) if f.metadata["role"] == NETWORK)
SESSION_KEYS = tuple(f.name for f in fields(RunConfig) if f.metadata["role"] == SESSION)
