"""A run's network, built in one place from the run's configuration, for every action.

    net = run_network(config, state, train_files, stats)   # the training session: one of the two below
    net = new_network(config, train_files, stats)          # a run that starts from nothing
    net = saved_network(state, "outs/demo/fold_a/best.pth")  # a checkpoint's network with its weights
    net = load_network("outs/demo/fold_a", "cuda")         # a run folder or checkpoint file, ready to score

The configuration (``RunConfig``, or a checkpoint's ``config``) fixes the network (``--model``,
``--depth``, ``--growthRate``, ``--norm``, ``--act``, ``--stem``, ``--drop_rate``), its input
(``in_chans``; the fusion mode: late and residual fusion take the clinical vector beside the image)
and its head (``target_spec``: binary, ordinal or continuous). A run that starts from nothing gets,
here and nowhere else, its ``--pretrained`` weights and, for residual fusion, the clinical model
fitted on its training images as its start (:func:`new_network`). A run that goes on from a
checkpoint gets the checkpoint's weights instead (:func:`saved_network`).

Whether a run starts from nothing is one rule, decided where the run is read back
(:func:`hipx.runs.runchecks.prepare_run`): it has no checkpoint to go on from. That holds for a new
run and for a ``--resume`` that finds no ``last.pth`` (a cross-validation fold never started or
deleted, a run stopped or out of disk before its first ``last.pth``); such a run gets exactly what
a new run gets. A ``--resume`` with ``last.pth`` and ``--test`` (``best.pth``) go on from a checkpoint.

Who calls what:
- the training session (``hipx.training.session.build_trainer``: new runs, ``--resume``, ``--test``,
  every cross-validation fold) and through it ``bench.py``: :func:`run_network`;
- scoring and explaining a trained run -- ``predict.py`` (:func:`saved_network`), the heatmaps
  (``visualize_gradcam.py``, the report's case gallery: :func:`load_network`) and an ONNX export
  (``export.py``: :func:`saved_network`); external validation scores through ``predict.py``'s code.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Sequence

from hipx.core import fusion
from hipx.core.cli import UserError
from hipx.core.runconfig import RunConfig
from hipx.runs import runfiles

if TYPE_CHECKING:
    import torch

    from hipx.data.loader import ClinicalStats
    from hipx.models import Classifier

logger = logging.getLogger(__name__)


def run_network(config: RunConfig, state: dict | None, train_files: Sequence[str | os.PathLike],
                stats: ClinicalStats) -> Classifier:
    """The network a training session works on: the checkpoint ``state`` it goes on from (``--resume``
    from last.pth, ``--test`` with best.pth), or, where there is none (the run starts from nothing),
    :func:`new_network`."""
    if state is None:
        return new_network(config, train_files, stats)
    return saved_network(state)


def new_network(config: RunConfig, train_files: Sequence[str | os.PathLike], stats: ClinicalStats) -> Classifier:
    """The network of a run that starts from nothing: built from ``config`` with its ``--pretrained``
    weights, and for residual fusion started as the clinical model of ``train_files`` (on the clinical
    vector normalised by ``stats``, as the network receives it). A ``--pretrained`` source that cannot
    be read is one line (:func:`check_pretrained`)."""
    from hipx.models import build_model_from_config

    check_pretrained(config)
    model = build_model_from_config(config.to_dict(), pretrained=config.pretrained)
    if fusion.mode(config.fusion).clinical_offset:
        start_from_clinical_model(model, train_files, stats, config.data_dir)
    return model


def check_pretrained(config: RunConfig) -> None:
    """Refuse a ``--pretrained`` that cannot be used (an offline ``imagenet``, a wrong path, weights of
    another kind) with one line; the session asks before it reads any data."""
    if not config.pretrained:
        return
    from hipx.models import resolve_pretrained
    from hipx.models.pretrained import PretrainedUnavailable

    try:
        path = resolve_pretrained(config.pretrained, config.model)
    except (ValueError, FileNotFoundError, PretrainedUnavailable) as exc:
        raise UserError(str(exc)) from None
    if not os.path.isfile(path):  # as models.pretrained says it when it loads the file, but before any data is read
        raise UserError(f"pretrained weights file not found: {path}")


def start_from_clinical_model(model: Classifier, train_files: Sequence[str | os.PathLike],
                              stats: ClinicalStats, data_dir: str | os.PathLike | None = None) -> None:
    """Residual fusion: the network starts as the clinical model of the training images, on the
    network's own normalisation, with no correction yet: for the binary label the logistic regression
    (the clinical baseline's model), for a graded target the regression of the measurement (continuous)
    or its cumulative-link model (ordinal), read from ``data_dir``'s manifest (``hipx.core.measures``)."""
    from hipx.inference import clinical

    from hipx.core import measures

    spec = model.target
    measure = measures.read(data_dir) if spec.graded and data_dir is not None else None
    values = measure.of(train_files) if measure is not None else [float("nan")] * len(train_files)
    try:
        fit = clinical.start_model(train_files, stats, spec, values)
        coef, intercept, offsets = fit.coef, fit.intercept, fit.offsets
    except clinical.BaselineUnavailable as exc:
        logger.warning("residual fusion without a clinical model (%s): the image alone is learnt", exc)
        coef, intercept, offsets = [0.0] * model.n_clinical, 0.0, None
    model.set_clinical_model(coef, intercept, offsets)
    logger.info("residual fusion starts from the clinical model: %s = %.3f + %s + the correction", spec.head_text,
                intercept, " + ".join(f"{c:.3f} {name}" for c, name in zip(coef, clinical.FEATURES)))


def saved_network(state: dict, source: str = "the checkpoint") -> Classifier:
    """A checkpoint's network (``state`` as ``runfiles.load_checkpoint`` returns it) with its saved
    weights, in eval mode on the CPU; ``source`` names the file when the weights do not fit."""
    from hipx.models import build_model_from_checkpoint

    return build_model_from_checkpoint(state, source)


def load_network(run: str | os.PathLike | runfiles.Run, device: str | torch.device = "cpu",
                 checkpoint: str = runfiles.BEST) -> Classifier:
    """A trained network ready to score, in eval mode on ``device``: ``run`` is a run folder or a
    checkpoint file (read with ``runfiles.load_run``: ``checkpoint``, default best.pth, of a folder), or
    a ``runfiles.Run`` that ``load_run`` returned."""
    if isinstance(run, runfiles.Run) and run.state is None:
        run = run.dir
    if not isinstance(run, runfiles.Run):
        run = runfiles.load_run(run, checkpoint)
    return saved_network(run.state, str(run.checkpoint)).to(device)
