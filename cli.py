"""Value types for the scripts' command lines (argparse ``type=``), so every script refuses a bad
value the same way, naming what is accepted."""
from __future__ import annotations

import argparse


def str2bool(text: str | bool) -> bool:
    """yes/no, true/false, t/f, y/n, 1/0 (any case), as the original's ``--late_fuse True``."""
    if isinstance(text, bool):
        return text
    value = text.strip().lower()
    if value in ("yes", "true", "t", "y", "1"):
        return True
    if value in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes/no/true/false/1/0, got {text!r}")


def positive(kind=int):
    """A parser of numbers of ``kind`` that must be > 0: ``type=positive(int)``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


positive_int = positive(int)
