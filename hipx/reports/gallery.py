"""The run report's case gallery: the most confident hits and misses, each with its heatmap.

    cases, figures = case_gallery(run_dir, files, n=2)   # report.py --gallery N; files: split -> images

For each outcome at the run's threshold -- true positive, true negative, false positive, false
negative -- the ``n`` test images the run was most sure of (highest probability among predicted
osteoporosis, lowest among predicted normal; :func:`hipx.inference.heatmaps.select_cases`), drawn with
their expected-gradients map of the osteoporosis score against ``references`` of the run's training
radiographs (:mod:`cam`; README, Grad-CAM, says why this method), their probability and sex, age and
BMI. The probabilities are those of ``test_predictions.csv``; the maps are recomputed from
``best.pth``. The most confident misses are where a reader learns most about a model's failure
(label noise, an artefact it relies on, a subgroup it does not know).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from hipx.core import runtime
from hipx.core.choices import OUTCOME_NAMES
from hipx.data import loader
from hipx.inference import heatmaps
from hipx.reports.style import png
from hipx.runs import runfiles

logger = logging.getLogger(__name__)

ORDER = ("tp", "tn", "fp", "fn")  # the outcome kinds (choices.OUTCOMES), hits before misses
METHOD = "expected_gradients"
N_REFERENCES = 16  # training radiographs the maps are measured against (visualize_gradcam.py's default)


def case_gallery(run_dir: str | os.PathLike, files: Mapping[str, Sequence[Path]], n: int = 2, device: str = "auto",
                 n_references: int = N_REFERENCES) -> tuple[list[dict], dict[str, bytes]]:
    """Rows (kind, file, label, probability, sex, age, bmi) and one PNG sheet per outcome kind
    (``gallery_tp`` ...) holding its ``n`` most confident test images; kinds without a case are left out.
    ``files``: the run's images by split (its ``train`` gives the references, its ``test`` the cases)."""
    if n < 1:
        return [], {}
    run = runfiles.load_run(run_dir)
    rows_by_file = heatmaps.prediction_rows(run_dir)
    device = runtime.select_device(device, None)
    model = heatmaps.load_network(run, device)
    references = heatmaps.reference_inputs(run, n=n_references, files=files["train"]).to(device)
    rows, figures = [], {}
    for kind in ORDER:
        title = f"Most confident {OUTCOME_NAMES[kind]}s"
        try:
            paths = heatmaps.select_cases(run_dir, files["test"], [kind], n, run.threshold)
        except ValueError:  # no test image of this kind at the threshold
            continue
        dataset = loader.run_dataset(paths, run.config, run.clinical_stats, desc=f"gallery {kind}")
        cases = heatmaps.explain(model, dataset, METHOD, target="osteoporosis", threshold=run.threshold,
                                 tta=run.config.tta, fusion_mode=run.fusion, references=references)
        for case in cases:
            stored = rows_by_file[case.path.name]
            if not np.isclose(case.probability, float(stored["probability"]), atol=1e-4):
                logger.warning("gallery: %s scores %.4f now but %.4f in test_predictions.csv", case.path.name,
                               case.probability, float(stored["probability"]))
            rows.append({"kind": kind, "file": case.path.name, "label": int(stored["label"]),
                         "probability": float(stored["probability"]), "sex": case.info.sex, "age": case.info.age,
                         "bmi": case.info.bmi})
        title_text = (f"{title}: expected gradients of the osteoporosis score vs {len(references)} training "
                      f"radiographs\nrun {run.dir.parent.name}/{run.dir.name}, epoch {run.epoch}")
        figures[f"gallery_{kind}"] = png(heatmaps.render_sheet(cases, run.threshold, title_text, cols=max(2, n)))
    return rows, figures
