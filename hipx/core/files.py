"""Writing files atomically: a temporary file in the same folder, then ``os.replace``, so a crash never
leaves a half-written checkpoint, table or image; a new file gets the permissions of the user's umask, as
``open()`` would give it. Every writer of the suite (runs, preprocessing, the demo generator, reports) uses
these. Stdlib only.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

# the names atomic_write gives its temporary files (mkstemp: ".<name>.<random>.tmp"), so that a tool
# can recognise what a killed run left behind
TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def disk_full(path: str | os.PathLike, needed: int | None = None) -> OSError:
    """The error for a write of ``path`` that found its file system full: one line naming the path, the
    space the file needs (when known) and the space free there."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = f"{_size_text(shutil.disk_usage(folder).free)} is free there"
    except OSError:
        free = "the free space there is unknown"
    need = f"it needs {_size_text(needed)} and " if needed else ""
    error = OSError(f"no space left on the device to write {path}: {need}{free}; free some space (or write "
                    f"somewhere else) and {RUN_AGAIN}")
    error.errno = errno.ENOSPC
    return error


RUN_AGAIN = "run the command again"  # what disk_full advises: right where a failed command left nothing behind


def disk_full_advice(error: OSError, then: str) -> OSError:
    """A full disk's error (:func:`disk_full`'s, or the system's ENOSPC) with the advice ``then`` instead
    of running the same command again: for a command that left its work behind to go on from (a run that
    continues with --resume). Any other error comes back as it was."""
    if getattr(error, "errno", None) != errno.ENOSPC:
        return error
    text = str(error)
    text = text[: -len(RUN_AGAIN)] + then if text.endswith(RUN_AGAIN) else f"{text}; free some space and {then}"
    advised = OSError(text)
    advised.errno = errno.ENOSPC
    return advised


def _size_text(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def atomic_write(path: str | os.PathLike, write: Callable[[Any], Any], fsync: bool = True,
                 size: int | None = None) -> Path:
    """Write ``path`` through ``write(binary file)`` into a temporary file beside it, then rename it
    over ``path``: readers see the old file or the whole new one, never a part. The file gets the
    permissions a plain ``open()`` would give it (0666 less the umask), not ``mkstemp``'s 0600, so
    colleagues who may read the folder may read the run. ``fsync=False`` skips forcing the data to disk
    (many small files, e.g. a generated image set, where a crash means starting again anyway)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # see TEMP_NAME
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and "no space left on the device" not in str(exc):
            raise disk_full(path, size) from None
        raise
    return path


def write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> Path:
    return atomic_write(path, lambda fh: fh.write(data), fsync, size=len(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


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


def write_json(path: str | os.PathLike, data: Mapping) -> Path:
    return write_text(path, json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def csv_text(rows: Iterable[Mapping], fieldnames: Sequence[str] | None = None) -> str:
    rows = list(rows)
    fieldnames = list(fieldnames or (list(rows[0].keys()) if rows else []))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping], fieldnames: Sequence[str] | None = None) -> Path:
    return write_text(path, csv_text(rows, fieldnames))
