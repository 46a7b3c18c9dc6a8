"""The measurement section of a report: how well a run trained on the measurement itself (``main.py
--target continuous|ordinal``, :mod:`measures`) predicts it, beside the binary metrics that stay as
they are.

    from hipx.reports.measurement import target_spec, measurement, measurement_figures, report_blocks
    spec = target_spec(config)                  # None for a binary run: nothing is added
    block = measurement(predictions, spec, n_boot=2000, seed=0)
    figures = measurement_figures(block, predictions, spec)
    blocks = report_blocks(block)               # render's block language

Continuous targets (T-score, BMD): mean absolute error in the measure's unit, Pearson r and Spearman
rho between the predicted and the measured value. Ordinal targets (Singh grade, WHO class): the
mean absolute error in classes, Spearman rho between predicted and measured class, the confusion
table of classes and Cohen's kappa with quadratic weights (Cohen, Psychol Bull 1968;70:213-220).
Every statistic has a 95 % interval from a bootstrap over patients (:func:`confidence.bootstrap_weighted`:
all images of a drawn patient together). Only images with a measured value count.

The statistics are written as functions of frequency weights over the images, so one formula gives
the point estimate (weight 1 each) and every resample (the weights are how often each image was
drawn); with weight 1 they equal scipy's pearsonr/spearmanr and scikit-learn's
mean_absolute_error/cohen_kappa_score (tests/test_measure_report.py).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hipx.stats import confidence
from hipx.data import filenames
from hipx.core import measures
from hipx.core import targets
from hipx.runs import runfiles
from hipx.reports.style import BASE, NET, ci, interval_text, png, style_axes

ALPHA = 0.05
FIGURE = {"continuous": "measure_scatter", "ordinal": "measure_confusion"}  # report_figures/<name>.png
UNSCORED_TEXT = ("Images without a binary label (the data folder's {folder}/ images, e.g. Singh grades 3-4{count}) "
                 "train an ordinal or continuous model but are never scored: every binary metric of this report "
                 "compares osteoporosis with normal images only and keeps its meaning.")


# --------------------------------------------------------------------------- the target

def target_spec(config: Mapping | None) -> dict | None:
    """The run's graded target (``config["target_spec"]``), checked; None for a binary run (no spec, or
    kind "binary"). Raises ValueError naming the field that is wrong."""
    spec = (config or {}).get("target_spec")
    if not spec or spec.get("kind", "binary") == "binary":
        return None
    kind = spec.get("kind")
    if kind not in targets.KINDS:
        raise ValueError(f"config target_spec kind {kind!r}; expected one of {', '.join(targets.KINDS)}")
    out = dict(spec)
    cut = spec.get("cut")
    out["cut"] = None if cut is None else float(cut)
    if kind == "ordinal":
        bounds = [float(b) for b in spec.get("bounds") or ()]
        if not bounds or any(b >= c for b, c in zip(bounds, bounds[1:])):
            raise ValueError(f"config target_spec bounds {spec.get('bounds')!r}: an ordinal target needs one or more "
                             "increasing bounds between its classes")
        classes = [str(c) for c in spec.get("classes") or range(len(bounds) + 1)]
        if len(classes) != len(bounds) + 1:
            raise ValueError(f"config target_spec: {len(classes)} class names for {len(bounds)} bounds; "
                             f"expected {len(bounds) + 1}")
        out.update(bounds=bounds, classes=classes)
    return out


def run_target_spec(run: Any) -> dict | None:
    """:func:`target_spec` of a run folder (a :class:`runfiles.Run`, loaded or not, or its path): its
    ``config.json``, else the configuration stored in its loaded checkpoint."""
    run = run if isinstance(run, runfiles.Run) else runfiles.Run(Path(run))
    if run.config_file.is_file():
        return target_spec(run.read_config())
    return target_spec(run.state["config"]) if run.state else None


def group_target_spec(run_dirs: Sequence[str | os.PathLike]) -> dict | None:
    """The one target of a group of fold runs; ValueError when the folds were trained on different ones."""
    specs = [run_target_spec(d) for d in run_dirs]
    # each fold standardises a continuous target on its own training images: mean and SD may differ
    same = [{k: v for k, v in (s or {}).items() if k not in ("mean", "sd")} for s in specs]
    if any(s != same[0] for s in same[1:]):
        kinds = sorted({(s or {}).get("kind", "binary") for s in specs})
        raise ValueError(f"the fold runs were trained on different targets ({', '.join(kinds)} or different cuts "
                         "or classes); summarise the folds of one cross-validation")
    return specs[0] if specs else None


def classes_of(values: Any, bounds: Sequence[float]) -> np.ndarray:
    """The class of each value: how many bounds it exceeds (class 0 the lowest, i.e. worst; targets.py's rule)."""
    return targets.TargetSpec(kind="ordinal", bounds=tuple(bounds)).classify(values)


def cut_class(spec: Mapping) -> int | None:
    """The highest class whose values all lie at or below the clinical cut (the osteoporosis classes are 0..this)."""
    return None if spec.get("cut") is None else targets.TargetSpec.from_dict(spec).cut_class


def unscored_count(data_dir: str | os.PathLike | None) -> int | None:
    """Images in the data folder's :data:`measures.UNSCORED` folder, or None where it has none."""
    folder = Path(data_dir) / measures.UNSCORED if data_dir is not None else None
    if folder is None or not folder.is_dir():
        return None
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in filenames.EXTENSIONS)


def probability_scale(state: Mapping, val: pd.DataFrame | None, spec: Mapping | None) -> dict | None:
    """A continuous target: how its osteoporosis probability's scale was set, from the checkpoint ``state``
    (best.pth): the residual SD (in training SDs) fitted on validation at the best epoch (its
    ``val_metrics``' ``residual_sd``; the network's ``logit_scale`` = 1.702 / SD, :func:`targets.scale_for`)
    over the validation images with a measurement (``val``: val_predictions.csv), or for a run made before
    the fitted scale the assumed one (:data:`targets.LOGIT_PER_SD`). None for other targets."""
    if not spec or spec.get("kind") != "continuous":
        return None
    buffer = (state.get("model") or {}).get("logit_scale")
    per_sd = float(buffer) if buffer is not None else targets.LOGIT_PER_SD
    sd = (state.get("val_metrics") or {}).get("residual_sd")
    n = None
    if val is not None and "measure" in val.columns:
        n = int(np.isfinite(pd.to_numeric(val["measure"], errors="coerce")).sum())
    return {"fitted": sd is not None, "residual_sd": float(sd) if sd is not None else targets.PROBIT_TO_LOGIT / per_sd,
            "logit_per_sd": per_sd, "n_images": n, "training_sd": float(spec.get("sd", 1.0))}


def scale_text(scale: Mapping, name: str | None, unit: str = "") -> str:
    """The continuous probability's scale in words, e.g. 'probability from a residual SD of 0.78 training SDs
    (0.94 T-score units) fitted on validation (30 images)'."""
    name = name or "value"
    units = UNIT_TEXT.get(unit, unit) or "units"
    in_units = f"{scale['residual_sd'] * scale['training_sd']:.3g} {units}"
    if not scale["fitted"]:
        return (f"probability from an assumed residual SD of {scale['residual_sd']:.2f} training SDs ({in_units}; "
                f"{scale['logit_per_sd']:g} logits per training SD), not fitted: the run was made before the scale was "
                "fitted on validation")
    where = f" ({scale['n_images']} images with a measured {name})" if scale.get("n_images") is not None else ""
    return (f"probability from a residual SD of {scale['residual_sd']:.2f} training SDs ({in_units}) fitted on "
            f"validation{where}")


# --------------------------------------------------------------------------- statistics of weighted images

def _varies(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per weight row: do the images drawn (weight > 0) hold two or more different values of ``x``?"""
    drawn = w > 0
    return np.where(drawn, x, np.inf).min(axis=1) < np.where(drawn, x, -np.inf).max(axis=1)


def weighted_mae(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean absolute difference of ``x`` and ``y`` for each row of (B, n) frequency weights."""
    return (w @ np.abs(x - y)) / w.sum(axis=1)


def weighted_pearson(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r for each weight row (``x``, ``y``: (n,) or (B, n)); NaN where either side is constant."""
    total = w.sum(axis=1, keepdims=True)
    dx = x - (w * x).sum(axis=1, keepdims=True) / total
    dy = y - (w * y).sum(axis=1, keepdims=True) / total
    sxx, syy, sxy = (w * dx * dx).sum(axis=1), (w * dy * dy).sum(axis=1), (w * dx * dy).sum(axis=1)
    ok = _varies(w, np.broadcast_to(x, w.shape)) & _varies(w, np.broadcast_to(y, w.shape))
    return np.where(ok, sxy / np.sqrt(np.where(ok, sxx * syy, 1.0)), np.nan)


def weighted_ranks(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(B, n) midranks of ``x`` within each resample: the rank an image's value gets in the sample that
    repeats image i w[b, i] times (ties share their mean rank, as scipy.stats.rankdata)."""
    n = x.size
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], n]
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.repeat(np.arange(starts.size), ends - starts)
    cum = np.concatenate([np.zeros((w.shape[0], 1)), np.cumsum(w[:, order], axis=1)], axis=1)
    before, count = cum[:, starts], cum[:, ends] - cum[:, starts]
    return (before + (count + 1) / 2)[:, inverse]


def weighted_spearman(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho (Pearson r of midranks) for each weight row; NaN where either side is constant."""
    rho = weighted_pearson(w, weighted_ranks(w, x), weighted_ranks(w, y))
    return np.where(_varies(w, x) & _varies(w, y), rho, np.nan)


def weighted_confusion(w: np.ndarray, truth: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """(B, k, k) weighted counts: rows the measured class, columns the predicted class."""
    onehot = np.zeros((truth.size, k * k))
    onehot[np.arange(truth.size), truth * k + pred] = 1.0
    return (w @ onehot).reshape(-1, k, k)


def weighted_kappa(w: np.ndarray, truth: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Cohen's kappa with quadratic weights (i - j)^2 over all k classes, for each weight row; NaN where
    the agreement expected by chance is perfect (one class on both sides)."""
    c = weighted_confusion(w, truth, pred, k)
    expected = c.sum(axis=2)[:, :, None] * c.sum(axis=1)[:, None, :] / c.sum(axis=(1, 2))[:, None, None]
    i = np.arange(k)
    q = (i[:, None] - i[None, :]) ** 2.0
    observed, chance = (q * c).sum(axis=(1, 2)), (q * expected).sum(axis=(1, 2))
    return np.where(chance > 0, 1 - observed / np.where(chance > 0, chance, 1.0), np.nan)


def _interval(statistic, n: int, groups: Any, n_boot: int, seed: int, interval: str) -> dict:
    return confidence.bootstrap_weighted(statistic, n, groups=groups, n_boot=n_boot, seed=seed, alpha=ALPHA,
                                         interval=interval)


def _check(measured: Any, predicted: Any) -> tuple[np.ndarray, np.ndarray]:
    m, p = np.asarray(measured, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if m.ndim != 1 or m.shape != p.shape or m.size == 0:
        raise ValueError(f"measured and predicted must be 1-D of one length, got {m.shape} and {p.shape}")
    if not (np.isfinite(m).all() and np.isfinite(p).all()):
        raise ValueError("measured and predicted must be finite numbers (leave unmeasured images out)")
    return m, p


def continuous_statistics(measured: Any, predicted: Any, groups: Any = None, n_boot: int = 2000, seed: int = 0,
                          interval: str = "bca") -> dict[str, dict]:
    """``mae``, ``pearson_r`` and ``spearman_rho`` of predicted against measured values, each
    ``dict(point, low, high, n_boot_valid, interval)`` over the same resamples of patients (``groups``)."""
    m, p = _check(measured, predicted)
    stats = {"mae": lambda w: weighted_mae(w, p, m), "pearson_r": lambda w: weighted_pearson(w, p, m),
             "spearman_rho": lambda w: weighted_spearman(w, p, m)}
    return {k: _interval(f, m.size, groups, n_boot, seed, interval) for k, f in stats.items()}


def ordinal_statistics(measured_class: Any, predicted_class: Any, n_classes: int, groups: Any = None,
                       n_boot: int = 2000, seed: int = 0, interval: str = "bca") -> dict[str, Any]:
    """``mae_classes``, ``spearman_rho`` and ``kappa_quadratic`` of predicted against measured classes
    (0..n_classes-1), with intervals as :func:`continuous_statistics`, and ``confusion`` (measured rows x
    predicted columns, counts of images)."""
    m, p = _check(measured_class, predicted_class)
    bad = (m != np.round(m)) | (m < 0) | (m >= n_classes) | (p != np.round(p)) | (p < 0) | (p >= n_classes)
    if bad.any():
        raise ValueError(f"classes must be whole numbers 0..{n_classes - 1}; {int(bad.sum())} are not "
                         f"(e.g. measured {m[bad][0]:g}, predicted {p[bad][0]:g})")
    mi, pi = m.astype(np.int64), p.astype(np.int64)
    stats = {"mae_classes": lambda w: weighted_mae(w, p, m), "spearman_rho": lambda w: weighted_spearman(w, p, m),
             "kappa_quadratic": lambda w: weighted_kappa(w, mi, pi, n_classes)}
    out: dict[str, Any] = {k: _interval(f, m.size, groups, n_boot, seed, interval) for k, f in stats.items()}
    out["confusion"] = weighted_confusion(np.ones((1, m.size)), mi, pi, n_classes)[0].astype(int).tolist()
    return out


# --------------------------------------------------------------------------- a run's (or pooled) predictions

def measured_rows(predictions: pd.DataFrame, spec: Mapping, source: str = "the predictions") -> pd.DataFrame:
    """The scored images with a measured value: ``measure`` and ``predicted`` as numbers (predicted classes
    checked for an ordinal target). ValueError naming ``source`` when a column is missing or wrong."""
    missing = [c for c in ("measure", "predicted") if c not in predictions.columns]
    if missing:
        raise ValueError(f"{source} has no {' or '.join(repr(c) for c in missing)} column, which a run trained on "
                         f"a {spec['kind']} target writes; re-score it with main.py --test --overwrite")
    table = predictions.assign(measure=pd.to_numeric(predictions["measure"], errors="coerce"),
                               predicted=pd.to_numeric(predictions["predicted"], errors="coerce"))
    rows = table[np.isfinite(table["measure"])]
    if rows["predicted"].isna().any():
        raise ValueError(f"{source}: no predicted value for {rows['file'][rows['predicted'].isna()].iloc[0]}")
    return rows.reset_index(drop=True)


def measurement(predictions: pd.DataFrame, spec: Mapping, n_boot: int = 2000, seed: int = 0,
                interval: str = "bca", data_dir: str | os.PathLike | None = None,
                source: str = "the predictions", what: str = "test") -> dict:
    """The numbers of the measurement section: the target, how many scored images (and patients) have a
    measured value and how many have none, and the statistics of :func:`continuous_statistics` or
    :func:`ordinal_statistics` over them. ``predictions``: scored images with file, patient, measure and
    predicted (:func:`runfiles.read_predictions`); ``data_dir``: where to count the unscored images."""
    rows = measured_rows(predictions, spec, source)
    kind = measures.NAMES.get(spec.get("name"))
    block: dict[str, Any] = {
        "kind": spec["kind"], "name": spec.get("name"), "unit": kind.unit if kind else "", "cut": spec.get("cut"),
        "what": what, "n_scored": len(predictions), "n_images": len(rows),
        "n_patients": int(rows["patient"].nunique()), "n_without_measure": len(predictions) - len(rows),
        "n_unscored_in_data": unscored_count(data_dir), "n_boot": int(n_boot), "seed": int(seed),
        "interval": interval, "statistics": None}
    if len(rows) < 2:
        block["absent"] = f"{len(rows)} scored image(s) have a measured value; the statistics need two or more"
        return block
    groups = rows["patient"].to_numpy()
    if spec["kind"] == "continuous":
        block["statistics"] = continuous_statistics(rows["measure"], rows["predicted"], groups, n_boot, seed,
                                                    interval)
    else:
        k = len(spec["classes"])
        stats = ordinal_statistics(classes_of(rows["measure"], spec["bounds"]), rows["predicted"], k, groups, n_boot,
                                   seed, interval)
        block.update(confusion=stats.pop("confusion"), classes=list(spec["classes"]), bounds=list(spec["bounds"]),
                     cut_class=cut_class(spec))
        block["statistics"] = stats
    return block


# --------------------------------------------------------------------------- figures

def figure_scatter(measured: np.ndarray, predicted: np.ndarray, label: np.ndarray | None, name: str, unit: str,
                   cut: float | None) -> bytes:
    """Predicted against measured value, the identity line and the clinical cut on both axes."""
    fig = Figure(figsize=(5.4, 5.2))
    ax = fig.add_subplot()
    low = float(min(measured.min(), predicted.min()))
    high = float(max(measured.max(), predicted.max()))
    pad = 0.05 * (high - low or 1.0)
    lim = (low - pad, high + pad)
    ax.plot(lim, lim, color="grey", ls="--", lw=1, label="identity (predicted = measured)")
    if label is None:
        ax.scatter(measured, predicted, s=14, color=NET, alpha=0.7, lw=0)
    else:
        for value, text, colour in ((0, "normal", NET), (1, "osteoporosis", BASE)):
            keep = label == value
            ax.scatter(measured[keep], predicted[keep], s=14, color=colour, alpha=0.7, lw=0, label=text)
    if cut is not None:
        ax.axvline(cut, color="#c0392b", ls=":", lw=1.5, label=f"clinical cut {cut:g}")
        ax.axhline(cut, color="#c0392b", ls=":", lw=1.5)
    units = f" ({unit})" if unit else ""
    ax.set(xlim=lim, ylim=lim, xlabel=f"measured {name}{units}", ylabel=f"predicted {name}{units}")
    ax.set_aspect("equal")
    ax.set_title(f"Predicted against measured {name} ({measured.size} images)", fontsize=11)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    style_axes(ax)
    fig.tight_layout()
    return png(fig)


def figure_confusion_table(confusion: Sequence[Sequence[int]], classes: Sequence[str], cut: int | None,
                           name: str) -> bytes:
    """Heat-mapped table of measured (rows) against predicted (columns) classes, each cell's count and
    share of its row; the clinical cut drawn between the osteoporosis classes and the rest."""
    m = np.asarray(confusion)
    k = len(classes)
    fig = Figure(figsize=(1.2 + 0.85 * k, 1.0 + 0.75 * k))
    ax = fig.add_subplot()
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, f"{v}\n{100 * share[i, j]:.0f}%" if rows[i, 0] else "0", ha="center", va="center",
                fontsize=8, color="white" if share[i, j] > 0.6 else "black")
    if cut is not None and cut < k - 1:
        ax.axvline(cut + 0.5, color="#c0392b", ls="--", lw=1.5)
        ax.axhline(cut + 0.5, color="#c0392b", ls="--", lw=1.5)
    ax.set_xticks(range(k), classes, rotation=30 if max(map(len, classes)) > 3 else 0)
    ax.set_yticks(range(k), classes)
    ax.set(xlabel=f"predicted {name}", ylabel=f"measured {name}")
    ax.set_title("Classes (colour: share of the row)" + ("; dashed: the cut" if cut is not None else ""),
                 fontsize=10)
    fig.tight_layout()
    return png(fig)


def measurement_figures(block: Mapping, predictions: pd.DataFrame, spec: Mapping) -> dict[str, bytes]:
    """The section's figure (:data:`FIGURE`): the scatter (continuous) or the class table (ordinal);
    none where the statistics are absent."""
    if not block.get("statistics"):
        return {}
    name = block.get("name") or "value"
    if block["kind"] == "ordinal":
        return {FIGURE["ordinal"]: figure_confusion_table(block["confusion"], block["classes"], block["cut_class"],
                                                          "class" if name == "T-score" else name)}
    rows = measured_rows(predictions, spec)
    label = rows["label"].to_numpy(dtype=np.int64) if "label" in rows else None
    return {FIGURE["continuous"]: figure_scatter(rows["measure"].to_numpy(float), rows["predicted"].to_numpy(float),
                                                 label, name, block.get("unit", ""), block.get("cut"))}


# --------------------------------------------------------------------------- text

UNIT_TEXT = {"SD": "T-score units"}  # not "(SD)" beside an error, which reads as its standard deviation
STAT_LABELS = {"mae": "Mean absolute error ({unit})", "pearson_r": "Pearson r, predicted against measured",
               "spearman_rho": "Spearman ρ, predicted against measured",
               "mae_classes": "Mean absolute error (classes)",
               "kappa_quadratic": "Cohen's κ, quadratic weights"}


def headline(block: Mapping | None) -> str:
    """'; <name> MAE 0.61 (0.52 to 0.70), Pearson r ...' for the console, '' without statistics."""
    if not block or not block.get("statistics"):
        return ""
    s = block["statistics"]
    if block["kind"] == "continuous":
        return f"; {block['name']} MAE {ci(s['mae'])}, Pearson r {ci(s['pearson_r'])}"
    return f"; {block['name']} classes MAE {ci(s['mae_classes'])}, quadratic kappa {ci(s['kappa_quadratic'])}"


def report_blocks(block: Mapping, figures: bool = True) -> list[tuple]:
    """The measurement section in :mod:`render`'s block language; ``figures``: with the figure
    (run reports and cv_report.html; not cv_report.md, which has none)."""
    name, unit = block.get("name") or "measured value", block.get("unit") or ""
    kind = block["kind"]
    cut = block.get("cut")
    b: list[tuple] = [("h2", f"Measurement: predicted against measured {name}")]
    target = ("a continuous target: the network predicts the value itself" if kind == "continuous" else
              f"an ordinal target: the network predicts one of {len(block.get('classes') or [])} ordered classes")
    cut_text = (f" Its osteoporosis score, P({name} <= {cut:g}), is the probability every binary metric of this "
                "report uses." if cut is not None else "")
    if block.get("scale"):
        cut_text += (f" It is the {scale_text(block['scale'], name, unit)}: P = Φ((cut - predicted) / SD), in its "
                     "logistic form, at the best epoch (best.pth).")
    b.append(("p", f"The run was trained on the {name} ({target}).{cut_text} This section compares its prediction "
                   "with the measurement."))
    patients = f" of {block['n_patients']} patients" if block.get("n_images") else ""
    none = block["n_without_measure"]
    b.append(("p", f"Of the {block['n_scored']} scored {block.get('what', 'test')} images, {block['n_images']}"
                   f"{patients} have a measured {name} and count here; {none} "
                   f"{'has' if none == 1 else 'have'} none and {'is' if none == 1 else 'are'} left out."))
    count = block.get("n_unscored_in_data")
    b.append(("p", UNSCORED_TEXT.format(folder=measures.UNSCORED,
                                        count=f"; {count} image(s) in this data folder" if count is not None else "")))
    stats = block.get("statistics")
    if not stats:
        b.append(("p", f"No statistics: {block.get('absent', 'no measured values')}."))
        return b
    keys = ("mae", "pearson_r", "spearman_rho") if kind == "continuous" else ("mae_classes", "spearman_rho",
                                                                              "kappa_quadratic")
    b.append(("table", ["Statistic", "Value (95 % CI)"],
              [[STAT_LABELS[k].format(unit=UNIT_TEXT.get(unit, unit) or "units"), ci(stats[k])] for k in keys]))
    if kind == "ordinal":
        classes = block["classes"]
        bounds = block["bounds"]
        b.append(("table", ["Measured \\ predicted", *classes, "Images"],
                  [[c, *(str(v) for v in row), str(sum(row))] for c, row in zip(classes, block["confusion"])]))
        b.append(("note", f"Classes of the measured {name}: a value's class is the number of bounds "
                          f"({', '.join(f'{v:g}' for v in bounds)}) it exceeds, so the first class is the worst. "
                          "Rows: measured class; columns: predicted class. Quadratic weights count a miss by two "
                          "classes four times a miss by one."))
    if figures:
        caption = (f"Predicted against measured {name}, one dot per image; dashed: identity; dotted: the clinical "
                   "cut on both axes." if kind == "continuous" else
                   "Measured (rows) against predicted (columns) classes; colour: share of the row; dashed: the cut "
                   "between the osteoporosis classes and the rest.")
        b.append(("figures", [(FIGURE[kind], caption)]))
    b.append(("note", f"95 % CIs: {interval_text(block['interval'])} over patients ({block['n_boot']} resamples, seed "
                      f"{block['seed']}; all images of a drawn patient together). Spearman ρ uses midranks for ties. "
                      "These statistics describe the measurement; the osteoporosis/normal metrics are unchanged."))
    return b

