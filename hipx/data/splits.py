"""The data set's layout: split names, the image size, and how patients are dealt to splits and folds.

    from hipx.data.splits import SPLITS, assign_splits, assign_folds
    split_of = assign_splits({"P001": 1, "P002": 0, ...}, seed=0)   # patient -> "train" / "val" / "test"
    fold_of = assign_folds({p: y for p, y in labels.items() if split_of[p] != "test"}, k=5)

One rule for preprocessing (``preprocess_filenames.py``), cross-validation (``folds.py``) and
the demo generator (``synthetic.py``): every image of a patient goes where the patient goes, and
patients are stratified by label (a patient counts as osteoporotic if any of their images is), so
each split and fold has the prevalence of the whole set. No torch here: preprocessing imports it.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)

from hipx.core.choices import DEFAULT_FRACTIONS, IMAGE_SIZE, SPLITS  # noqa: F401 - re-exported: the names splits always gave


def patient_labels(pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Patient -> label from (patient, image label) pairs: 1 if any image of the patient is 1."""
    labels: dict[str, int] = {}
    for patient, label in pairs:
        labels[patient] = max(labels.get(patient, 0), int(label))
    return labels


def allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` patients of one label by ``fractions``, largest remainder first (ties in order).
    Every split with a fraction above zero gets at least one when there are enough patients, taken
    from the largest, so validation and test can see every class (an AUC needs both)."""
    import numpy as np  # in the functions: main.py reads IMAGE_SIZE for --help before NumPy loads

    exact = [f * n for f in fractions]
    counts = [math.floor(e) for e in exact]
    order = sorted(range(len(fractions)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[i] = 1
    return counts


def assign_splits(labels: Mapping[str, int], fractions: Sequence[float] = DEFAULT_FRACTIONS,
                  seed: int = 0) -> dict[str, str]:
    """Patient -> 'train' / 'val' / 'test', stratified by the patient's label.

    Deterministic for the same patients, labels, fractions and seed (patients are sorted first,
    then shuffled within each label by ``numpy.random.default_rng(seed)``).
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must be three numbers >= 0 that sum to 1, got {list(fractions)}")
    import numpy as np

    rng = np.random.default_rng(seed)
    result: dict[str, str] = {}
    for label in sorted(set(labels.values())):
        patients = sorted(p for p, y in labels.items() if y == label)
        patients = [patients[i] for i in rng.permutation(len(patients))]
        start = 0
        for split, count in zip(SPLITS, allocate(len(patients), fractions)):
            for p in patients[start:start + count]:
                result[p] = split
            start += count
    return result


def assign_folds(labels: Mapping[str, int], k: int, seed: int = 0) -> dict[str, int]:
    """Patient -> fold 0..k-1, stratified by label: the patients of each class are shuffled (seeded)
    and dealt round-robin, continuing across classes so fold sizes stay balanced."""
    import numpy as np

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"cross-validation needs k >= 2 folds, got {k!r}")
    if k > len(labels):
        raise ValueError(f"{k} folds need at least {k} patients, there are {len(labels)}")
    rng = np.random.default_rng([seed, 1])  # a stream independent of assign_splits' for the same seed
    result: dict[str, int] = {}
    position = 0
    for label in sorted(set(labels.values())):
        patients = sorted(p for p, y in labels.items() if y == label)
        if len(patients) < k:
            logger.warning("only %d patients with label %d for %d folds: some validation folds lack that class",
                           len(patients), label, k)
        for i in rng.permutation(len(patients)):
            result[patients[i]] = position % k
            position += 1
    return result


def shared_patients(files: Mapping[str, Iterable]) -> dict[str, dict[str, list[str]]]:
    """Patients with images in two or more splits of ``files`` (split -> image paths named as
    ``filenames.py`` writes them): patient -> split -> file names, sorted by patient."""
    from hipx.data import filenames  # torch-free; imported here because filenames.py is the higher-level module

    where: dict[str, dict[str, list[str]]] = {}
    for split, paths in files.items():
        for path in paths:
            where.setdefault(filenames.decode(path).patient, {}).setdefault(split, []).append(os.path.basename(path))
    return {p: where[p] for p in sorted(where) if len(where[p]) > 1}
