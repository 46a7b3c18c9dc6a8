"""Several runs side by side on the same test patients, with paired tests against the first
(``python compare.py RUN RUN ... [--out FOLDER]``).

    from hipx.reports.compare import compare_runs, write_comparison
    result, table = compare_runs(["outs/cmp/fold_Dense_LF", "outs/cmp/fold_Dense_EF"], n_boot=2000)
    write_comparison("outs/cmp/compare", result, table)

What is computed for each run and each pair, and the files written, are told in ``compare.py``'s
docstring (the command's ``--help``); here: every run must have scored the same test images with the
same labels (refused otherwise); files are written atomically and kept unless ``overwrite``.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from hipx.core import runtime
from hipx.reports import render as report_render
from hipx.reports import run_report
from hipx.reports.style import PALETTE, ci, fmt, interval_text, p_text
from hipx.runs import runfiles
from hipx.stats import confidence, metrics

logger = logging.getLogger(__name__)

OUTPUTS = ("comparison.md", "comparison.html", "comparison.json")
FIGURE_DIR = "comparison_figures"
# Configuration entries that do not change what is trained: runs differing only here are seeds of one setup.
NOT_CONFIGURATION = ("seed", "save_dir", "fold", "out_root", "test", "resume", "bootstrap", "device", "gpus", "cpus",
                     "workers", "cache_gb", "world_size", "torch", "data_dir", "deterministic")


class CompareError(ValueError):
    """Runs that cannot be compared; the message says which and why."""


def aligned_runs(run_dirs: Sequence[str | os.PathLike]) -> tuple[list[dict], pd.DataFrame]:
    """Load every run and put their test predictions side by side, one row per test image.

    Returns the runs (:func:`run_report.run_facts`) and a table with file, label, patient and one
    probability column ``p0``, ``p1``, ... per run, in the first run's order. Raises
    :class:`CompareError` when a run scored other test images or other labels than the first.
    """
    if len(run_dirs) < 2:
        raise CompareError("give at least two run folders to compare")
    runs = [run_report.run_facts(d) for d in run_dirs]
    first = runs[0]["test"]
    table = first[["file", "label", "patient"]].copy()
    for i, run in enumerate(runs):
        test = run["test"]
        ours, theirs = set(first["file"]), set(test["file"])
        if ours != theirs:
            only_first, only_this = sorted(ours - theirs), sorted(theirs - ours)
            raise CompareError(f"{run['dir']} scored other test images than {runs[0]['dir']}: "
                               f"{len(only_first)} only in the first (e.g. {only_first[:2]}), {len(only_this)} only "
                               f"in this one (e.g. {only_this[:2]}); runs are compared on the same test patients only")
        merged = table[["file", "label"]].merge(test[["file", "label", "probability"]], on="file", how="left",
                                                suffixes=("", "_run"), validate="one_to_one")
        differ = merged["label"] != merged["label_run"]
        if differ.any():
            raise CompareError(f"{run['dir']}: {int(differ.sum())} test image(s) carry other labels than in "
                               f"{runs[0]['dir']} (e.g. {merged.loc[differ, 'file'].iloc[0]})")
        table[f"p{i}"] = merged["probability"].to_numpy(dtype=np.float64)
    return runs, table


def configuration(config: Mapping) -> tuple:
    """What a run trains, without its seed and bookkeeping: equal for repeats of one setup."""
    return tuple(sorted((k, repr(v)) for k, v in config.items() if k not in NOT_CONFIGURATION))


def seed_groups(runs: Sequence[Mapping]) -> list[list[int]]:
    """Indices of runs that share a configuration and differ in seed, each group of two or more runs."""
    groups: dict[tuple, list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(configuration(run["config"]), []).append(i)
    return [g for g in groups.values() if len(g) > 1 and len({runs[i]["config"].get("seed") for i in g}) == len(g)]


def compare_runs(run_dirs: Sequence[str | os.PathLike], names: Sequence[str] | None = None, n_boot: int = 2000,
                 seed: int = 0, interval: str = "bca") -> tuple[dict, pd.DataFrame]:
    """The numbers of a comparison (see the module docstring) and the aligned prediction table."""
    runs, table = aligned_runs(run_dirs)
    if names is not None and len(names) != len(runs):
        raise CompareError(f"--names gives {len(names)} name(s) for {len(runs)} runs")
    names = list(names) if names else [f"{r['dir'].parent.name}/{r['dir'].name}" for r in runs]
    y, groups = table["label"].to_numpy(dtype=np.int64), table["patient"].to_numpy()
    rows, diffs = [], []
    for i, run in enumerate(runs):
        p = table[f"p{i}"].to_numpy()
        boot = confidence.bootstrap_metrics(y, p, run["threshold"], groups=groups, n_boot=n_boot, seed=seed,
                                            interval=interval)
        rows.append({"name": names[i], "run_dir": str(run["dir"]), "fusion": report_render.fusion_text(run["config"]),
                     "seed": run["config"].get("seed"), "epoch": run["epoch"], "threshold": run["threshold"],
                     **{k: boot[k] for k in ("roc_auc", "sensitivity", "specificity")}})
        if i:
            diffs.append({"name": names[i], "versus": names[0],
                          **confidence.paired_bootstrap_diff(y, p, table["p0"].to_numpy(), metrics.roc_auc,
                                                             groups=groups, n_boot=n_boot, seed=seed)})
    for d, adjusted in zip(diffs, confidence.holm([d["p_value"] for d in diffs])):
        d["p_holm"] = float(adjusted)
    across = []
    for g in seed_groups(runs):
        across.append({"runs": [names[i] for i in g], "seeds": [runs[i]["config"].get("seed") for i in g],
                       **{k: metrics.mean_sd([rows[i][k]["point"] for i in g])
                          for k in ("roc_auc", "sensitivity", "specificity")}})
        for i in g:
            rows[i]["across_seeds"] = len(across) - 1
    result = {"created": time.strftime("%Y-%m-%d %H:%M"), "n_boot": int(n_boot), "seed": int(seed),
              "interval": interval, "test_images": len(table), "test_patients": int(table["patient"].nunique()),
              "test_positives": int(y.sum()), "runs": rows, "differences": diffs, "across_seeds": across}
    return result, table


def comparison_blocks(r: dict) -> list[tuple]:
    """The comparison as report_render blocks."""
    how = interval_text(r["interval"])
    b: list[tuple] = [("h1", "Comparison of runs on the same test patients")]
    b.append(("p", f"{len(r['runs'])} runs, each scored on the same {r['test_images']} test images of "
                   f"{r['test_patients']} patients ({r['test_positives']} with osteoporosis). Made {r['created']}."))
    seeds = r["across_seeds"]
    header = ["Run", "Inputs", f"ROC AUC ({how} 95% CI)", "Sensitivity (95% CI)", "Specificity (95% CI)",
              "Threshold (validation)"]
    if seeds:
        header.append("ROC AUC across seeds (mean ± SD, runs)")
    rows = []
    for row in r["runs"]:
        cells = [row["name"], row["fusion"], ci(row["roc_auc"]), ci(row["sensitivity"]), ci(row["specificity"]),
                 fmt(row["threshold"])]
        if seeds:
            g = seeds[row["across_seeds"]] if "across_seeds" in row else None
            cells.append(f"{fmt(g['roc_auc']['mean'])} ± {fmt(g['roc_auc']['sd'])} ({g['roc_auc']['n']})" if g else "")
        rows.append(cells)
    b.append(("table", header, rows))
    b.append(("note", f"{how} intervals over test patients ({r['n_boot']} resamples, seed {r['seed']}; percentile for "
                      "sensitivity and specificity). Sensitivity and specificity are at each run's own threshold, "
                      "chosen on its validation split, and are conditional on that trained model and threshold."))
    b.append(("h2", f"AUC difference against {r['runs'][0]['name']}"))
    b.append(("table", ["Run", "AUC difference (95% CI)", "p, paired bootstrap", "p, Holm-adjusted"],
              [[d["name"], ci(d, "diff"), p_text(d["p_value"]), p_text(d["p_holm"])] for d in r["differences"]]))
    b.append(("note", "Paired bootstrap over patients: every run is scored on the same resampled patients, so the "
                      f"difference keeps the pairing. Holm's step-down adjustment over the {len(r['differences'])} "
                      "comparisons controls the chance of any false positive at 0.05."))
    if seeds:
        b.append(("h2", "Repeats with different seeds"))
        b.append(("table", ["Runs", "Seeds", "ROC AUC", "Sensitivity", "Specificity"],
                  [[", ".join(g["runs"]), ", ".join(map(str, g["seeds"])),
                    *(f"{fmt(g[k]['mean'])} ± {fmt(g[k]['sd'])}" for k in ("roc_auc", "sensitivity", "specificity"))]
                   for g in seeds]))
        b.append(("note", "Mean ± SD of the point estimates across training repeats of one configuration: how much "
                          "retraining moves a number, beside its CI, which shows how much the test patients do."))
    b.append(("h2", "ROC curves"))
    b.append(("figures", [("roc_pr", "ROC (left) and precision-recall (right) curves of every run on the same test "
                                     "images; dots: each run's operating point at its validation threshold.")]))
    return b


def refuse_existing(out_dir: str | os.PathLike, overwrite: bool) -> None:
    """CompareError when ``out_dir`` already holds a comparison and ``overwrite`` is not given."""
    existing = [Path(out_dir) / name for name in OUTPUTS if (Path(out_dir) / name).exists()]
    if existing and not overwrite:
        raise CompareError(f"{out_dir} already holds a comparison; pass --overwrite to replace it, or choose "
                           f"another --out (found {existing[0].name})")


def write_comparison(out_dir: str | os.PathLike, result: dict, table: pd.DataFrame, overwrite: bool = False) -> Path:
    """comparison.md (+ figure), comparison.html and comparison.json in ``out_dir``; refuses to replace
    existing files unless ``overwrite``."""
    refuse_existing(out_dir, overwrite)
    out = Path(out_dir)
    y = table["label"].to_numpy(dtype=np.int64)
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(result["runs"]))]
    figures = {"roc_pr": report_render.figure_roc_pr(
        y, [(row["name"], table[f"p{i}"].to_numpy(), row["threshold"], c)
            for i, (row, c) in enumerate(zip(result["runs"], colours))])}
    blocks = comparison_blocks(result)
    for name, png in figures.items():
        runfiles.write_bytes(out / FIGURE_DIR / f"{name}.png", png)
    runfiles.write_text(out / "comparison.md", report_render.render_markdown(blocks, figure_dir=FIGURE_DIR))
    runfiles.write_text(out / "comparison.html", report_render.render_html(blocks, figures, "Comparison of runs"))
    runfiles.write_json(out / "comparison.json", result)
    return out / "comparison.html"


def run_command(args: argparse.Namespace) -> dict:
    """What ``python compare.py`` does with its parsed flags: the comparison's numbers, its table on the
    terminal and, with ``args.out``, its files there. A user's mistake ends as SystemExit with one line."""
    runtime.setup_logging()
    into = next(filter(None, (runfiles.writing_into(run, [args.out]) for run in args.runs)), None) if args.out else None
    try:
        with runfiles.hold_run(into, "compare.py --out inside a run"):  # --out elsewhere: no lock
            page, result = _compare(args)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(str(exc)) from None  # one line, without a traceback (cli.run_main)
    print(report_render.render_markdown(comparison_blocks(result)[2:-2]).strip())
    if page is not None:
        print(f"\ncomparison in {page}")
    return result


def _compare(args: argparse.Namespace) -> tuple[Path | None, dict]:
    """:func:`run_command`'s work: the comparison's numbers and, with ``args.out``, its page (else None)."""
    if args.out is not None:
        refuse_existing(args.out, args.overwrite)  # before the bootstrap, not after
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)  # undefined values show as n/a
        result, table = compare_runs(args.runs, args.names, args.bootstrap, args.seed, args.interval)
    page = None if args.out is None else write_comparison(args.out, result, table, overwrite=args.overwrite)
    return page, result
