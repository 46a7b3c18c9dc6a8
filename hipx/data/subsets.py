"""Nested patient subsets of a fold's training side, for learning curves: which training images a
model sees when it learns from 25 %, 50 % or 100 % of the fold's training patients.

    from hipx.data.subsets import subset_files, nested_subsets
    train = folds.fold_files("data", "oof", 5, k, seed=0)["train"]
    quarter = subset_files(train, 0.25, seed=[0, k])      # the images of a quarter of the patients
    for s in nested_subsets(train, [0.25, 0.5, 1.0], seed=[0, k]):
        s["n_patients"], s["files"]
    parser.add_argument("--learning_curve", nargs="+", type=parse_size)   # 0.25 -> fraction, 50 -> patients

One seeded order of the training patients (:func:`patient_order`) and a subset is its first N
patients (the rule ``scripts/nested_subset.py`` uses for whole data folders), so:

- every smaller subset lies inside every larger one, for any sizes and in separate calls (a fold
  can be resumed fraction by fraction and gets the same patients);
- every image of a patient comes with the patient (one patient, one label: 1 if any image is 1,
  :func:`splits.patient_labels`);
- the order interleaves the two classes so that every prefix of N patients holds each class's share
  of the training side to within one patient (Bresenham's rule: the next patient is of the class
  furthest below its share), with one patient of each class first so that every subset of two or
  more patients can train a classifier;
- the subsets depend on the file names and the seed only, never on the fusion mode, the target or
  the network: every mode of a comparison learns from the same patients.

Only the training side is subset: the caller keeps the fold's validation and test images as they are,
so every point of a learning curve is chosen and scored on the same patients.
"""
from __future__ import annotations

import argparse
import math
import numbers
import os
from typing import Mapping, Sequence

import numpy as np

from hipx.data import filenames
from hipx.data.splits import patient_labels

# numpy stream of the subsets, apart from assign_splits' (seed), assign_folds' ([seed, 1]) and
# carve_validation's ([seed, 2, fold]), so that drawing subsets never repeats a draw of the folds
_STREAM = 3

Size = float | int | str


def training_labels(files: Sequence[str | os.PathLike]) -> dict[str, int]:
    """Patient -> label (1 if any image of the patient is 1) of training ``files`` named as
    :mod:`filenames` writes them; ``ValueError`` naming a file with no binary label."""
    pairs = []
    for f in files:
        info = filenames.decode(f)
        if info.label is None:
            raise ValueError(f"{f}: label NA (an unscored image) cannot be in a learning curve's training subsets; "
                             "training images need label 0 or 1")
        pairs.append((info.patient, info.label))
    return patient_labels(pairs)


def _rng(seed: int | Sequence[int]) -> np.random.Generator:
    entropy = [int(s) for s in np.atleast_1d(np.asarray(seed, dtype=object))]
    if not entropy or any(s < 0 for s in entropy):
        raise ValueError(f"seed must be a non-negative integer or a sequence of them, got {seed!r}")
    return np.random.default_rng([entropy[0], _STREAM, *entropy[1:]])  # [seed, 3, fold]: no other stream's


def patient_order(labels: Mapping[str, int], seed: int | Sequence[int] = 0) -> list[str]:
    """Every patient of ``labels`` (patient -> 0/1) in one seeded, stratified order: the first N
    patients of it are the subset of N. Each class is shuffled (patients sorted first, so the order
    depends on the patients and the seed, not on the mapping's order); then one patient of each class
    (the larger class first), then always the next patient of the class furthest below its share
    ``N * n_class / n_all`` (ties: the lower label). Every prefix then holds each class to within one
    patient of its share. ``ValueError`` when one class is missing."""
    classes = sorted(set(int(y) for y in labels.values()))
    if classes != [0, 1]:
        found = ", ".join(f"label {y}" for y in classes) or "no patients"
        raise ValueError(f"learning-curve subsets need patients of both classes (0 normal, 1 osteoporosis) on the "
                         f"training side; it holds {found} ({len(labels)} patients)")
    rng = _rng(seed)
    queues = {}
    for y in classes:
        patients = sorted(p for p, v in labels.items() if int(v) == y)
        queues[y] = [patients[i] for i in rng.permutation(len(patients))]
    total = len(labels)
    share = {y: len(queues[y]) / total for y in classes}
    taken = {y: 0 for y in classes}
    order: list[str] = []
    for y in sorted(classes, key=lambda v: (-len(queues[v]), v)):  # one of each class first
        order.append(queues[y][0])
        taken[y] = 1
    while len(order) < total:
        n = len(order) + 1
        y = max((v for v in classes if taken[v] < len(queues[v])), key=lambda v: (n * share[v] - taken[v], -v))
        order.append(queues[y][taken[y]])
        taken[y] += 1
    return order


def _parse(text: str) -> float | int:
    """A size as the command line gives it: text with a decimal point is a fraction, without one a count."""
    stripped = text.strip()
    try:
        return float(stripped) if any(ch in stripped for ch in ".eE") else int(stripped)
    except ValueError:
        raise ValueError(f"learning-curve size {text!r} is not a number; give fractions of the training "
                         "patients such as 0.25 0.5 1.0, or whole numbers of patients such as 50 100") from None


def parse_size(text: str) -> float | int:
    """``type=`` for a command-line flag of sizes: '0.25' -> 0.25 (a fraction), '50' -> 50 (patients),
    '1' refused (one patient; 1.0 is every patient). Checks what it can without the data; :func:`resolve_sizes`
    checks the rest against a fold's patients. A plain ``type=float`` would turn '50' into a fraction."""
    try:
        size = _parse(text)
        _count(size, 10 ** 9)  # the range checks, which do not need the patients
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return size


def _count(size: Size, n_patients: int) -> int:
    """Patients of one size: a fraction (a float in (0, 1], or text with a decimal point) of
    ``n_patients``, rounded half up, or a whole number of patients (an int, or text without one)."""
    given = size
    if isinstance(size, str):
        size = _parse(size)
    if isinstance(size, bool) or not isinstance(size, numbers.Real):
        raise ValueError(f"learning-curve size {given!r} is not a number; give fractions such as 0.25 or patient "
                         "counts such as 50")
    if isinstance(size, numbers.Integral):
        n = int(size)
        if n < 2:
            raise ValueError(f"learning-curve size {given!r} is {n} patient(s); a subset needs 2 or more (one of "
                             "each class); write 1.0 for all the training patients")
    else:
        if not (math.isfinite(size) and 0 < size <= 1):
            raise ValueError(f"learning-curve fraction {given!r} is outside (0, 1]; give fractions of the training "
                             "patients such as 0.25 0.5 1.0, or whole numbers of patients such as 50 100")
        n = math.floor(size * n_patients + 0.5)
        if n < 2:
            raise ValueError(f"learning-curve fraction {given!r} of {n_patients} training patients is {n} patient(s); "
                             "a subset needs 2 or more (one of each class): give a larger fraction")
    if n > n_patients:
        raise ValueError(f"learning-curve size {given!r} asks for {n} patients; the training side holds "
                         f"{n_patients}: give {n_patients} or fewer, or a fraction such as 1.0")
    return n


def resolve_sizes(sizes: Sequence[Size], n_patients: int) -> list[int]:
    """Patient counts of ``sizes`` (fractions or counts, see :func:`_count`) for a training side of
    ``n_patients``, in the order given; ``ValueError`` for an empty list, a bad size or two sizes
    that come to the same count."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or not sizes:
        raise ValueError(f"learning-curve sizes must be a non-empty list such as 0.25 0.5 1.0, got {sizes!r}")
    counts = [_count(s, n_patients) for s in sizes]
    seen: dict[int, Size] = {}
    for size, n in zip(sizes, counts):
        if n in seen:
            raise ValueError(f"learning-curve sizes {seen[n]!r} and {size!r} both come to {n} of {n_patients} "
                             "training patients; give sizes that differ by a patient or more")
        seen[n] = size
    return counts


def nested_subsets(files: Sequence[str | os.PathLike], sizes: Sequence[Size],
                   seed: int | Sequence[int] = 0) -> list[dict]:
    """The nested subsets of training ``files`` for ``sizes`` (fractions of the training patients such
    as 0.25 0.5 1.0, or patient counts), smallest first. Each is a dict: ``size`` (as given),
    ``n_patients``, ``n_osteoporosis`` (patients of label 1), ``patients`` (sorted) and ``files`` (those
    of ``files`` that belong to them, in the order given). Pass the fold in ``seed`` (e.g.
    ``[cv_seed, fold]``) for an order of its own per fold."""
    files = list(files)
    labels = training_labels(files)
    counts = resolve_sizes(sizes, len(labels))
    order = patient_order(labels, seed)
    out = []
    for size, n in sorted(zip(sizes, counts), key=lambda sc: sc[1]):
        chosen = set(order[:n])
        out.append({"size": size, "n_patients": n, "n_osteoporosis": sum(labels[p] for p in chosen),
                    "patients": sorted(chosen),
                    "files": [f for f in files if filenames.decode(f).patient in chosen]})
    return out


def subset_files(files: Sequence[str | os.PathLike], size: Size, seed: int | Sequence[int] = 0) -> list:
    """The training ``files`` of one subset (a fraction or a patient count), in the order given: the
    same as :func:`nested_subsets` gives for that size with the same files and seed, so a run of one
    size at a time (resuming) gets nested subsets too."""
    return nested_subsets(files, [size], seed)[0]["files"]
