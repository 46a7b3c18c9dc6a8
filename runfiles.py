"""The run folder ``outs/<save_dir>/fold<fold>/`` and everything written into it.

Every file is written atomically (temporary file in the same folder, then ``os.replace``), so a
crash never leaves a half-written checkpoint or table. Checkpoints hold only tensors and plain
Python values and are read with ``torch.load(weights_only=True)``: a file that would need
unpickling arbitrary objects is refused.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    import torch

CHECKPOINT_FORMAT = "osteoporosis-hip-classifier/1"
CHECKPOINT_KEYS = ("format", "model", "config", "clinical_stats", "threshold", "epoch")
BEST, LAST = "best.pth", "last.pth"


def run_dir(save_dir: str | os.PathLike, fold: str, root: str | os.PathLike = "outs") -> Path:
    """``<root>/<save_dir>/fold<fold>`` as in the original work (``--fold _Dense_LF`` -> ``fold_Dense_LF``)."""
    return Path(root) / str(save_dir) / f"fold{fold}"


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    _atomic_write(Path(path), lambda fh: fh.write(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null means "undefined"
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, Path)):
        return str(value)  # also plain-str copies of str subclasses such as torch.__version__
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


def write_json(path: str | os.PathLike, data: Mapping) -> None:
    write_text(path, json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping], fieldnames: list[str] | None = None) -> None:
    rows = list(rows)
    fieldnames = fieldnames or (list(rows[0].keys()) if rows else [])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def save_checkpoint(path: str | os.PathLike, model_state: Mapping[str, torch.Tensor], config: Mapping,
                    clinical_stats: Mapping, threshold: float, epoch: int, **extra: Any) -> None:
    """Write a checkpoint (weights + everything needed to use them) atomically."""
    import torch  # here, not at the top: the scripts read run folders before they need torch

    state = {"format": CHECKPOINT_FORMAT, "model": {k: v.detach().cpu() for k, v in model_state.items()},
             "config": _jsonable(dict(config)), "clinical_stats": _jsonable(dict(clinical_stats)),
             "threshold": float(threshold), "epoch": int(epoch)}
    state.update(extra)  # e.g. optimizer state, validation metrics: tensors and plain values only
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint safely; a clear error for a missing, truncated, foreign or unsafe file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            reason = "it contains pickled Python objects, which are refused for safety (weights_only=True)"
        raise ValueError(f"cannot load checkpoint {path}: {reason}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a checkpoint of this suite (expected format {CHECKPOINT_FORMAT!r}); "
                         "for pretrained weights use --pretrained")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {', '.join(missing)}")
    return state
