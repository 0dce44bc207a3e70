"""Shared argument checks of the library: integers, reals, confidence thresholds and paths, with errors that name the argument or file.

The command line passes its flag names (``name="--batch-size"``); library callers get the keyword's name.
"""

from __future__ import annotations

import math
import numbers
import os
import stat
from pathlib import Path


def check_int(value: object, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (bools refused); a ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_real(
    value: object,
    name: str,
    low: float | None = None,
    high: float | None = None,
    low_allowed: bool = True,
    high_allowed: bool = True,
) -> float:
    """``value`` as a finite float in [low, high] (``low_allowed`` / ``high_allowed`` False: above low /
    below high); bools refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    x = float(value)
    below = low is not None and (x < low or (x == low and not low_allowed))
    above = high is not None and (x > high or (x == high and not high_allowed))
    if below or above:
        bounds = (
            f"{'[' if low_allowed else '('}{low if low is not None else '-inf'}, "
            f"{high if high is not None else 'inf'}{']' if high_allowed else ')'}"
        )
        raise ValueError(f"{name} must be in {bounds}, got {value!r}")
    return x


def check_threshold(value: object, name: str = "threshold") -> float:
    """``value`` as a float in [0, 1] (a confidence threshold); bools and NaN refused, a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def kind_of(path: str | os.PathLike[str]) -> str:
    """What ``path`` is, in words: "a folder", "a regular file", "a FIFO (named pipe)", ... (not following
    a final symlink's absence: a dangling link is "a broken symbolic link")."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else "missing"
    for test, words in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return words
    return "not a regular file or folder"


def existing(path: str | os.PathLike[str], name: str, *, folder: bool = True, file: bool = False) -> Path:
    """``path`` as a Path when it is a folder (``folder``) or a regular file (``file``); a
    FileNotFoundError or ValueError naming ``name`` and the path otherwise (a FIFO, a socket, a device
    or another kind of file is never read: reading a FIFO would wait forever)."""
    p = Path(path)
    kind = kind_of(p)
    if kind == "missing":
        raise FileNotFoundError(
            f"{name} {p}: no such {'file or folder' if folder and file else 'folder' if folder else 'file'}"
        )
    if (folder and kind == "a folder") or (file and kind == "a regular file"):
        return p
    wanted = " or ".join(w for w, ok in (("a folder", folder), ("a regular file", file)) if ok)
    raise ValueError(f"{name} {p}: must be {wanted}, but it is {kind}")


def writable(path: str | os.PathLike[str], name: str, *, folder: bool) -> Path:
    """``path`` as a Path that can be written as a file (``folder`` False) or filled as a folder (checked on its
    first existing ancestor); a ValueError naming ``name`` and the path otherwise (a folder where a file goes or
    the reverse, a pipe or device where a file goes, a path under a file, no permission)."""
    p = Path(path)
    if p.exists() and p.is_dir() != folder:
        raise ValueError(f"{name} {p}: {'a file, not a folder' if folder else 'is a folder; give a file path'}")
    if p.exists() and not folder and not stat.S_ISREG(p.stat().st_mode):
        raise ValueError(f"{name} {p}: not a regular file (a pipe, socket or device), so it cannot be replaced")
    parent = p if folder else p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{name} {p}: lies under a file ({parent}), so nothing can be written there")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {p}: no permission to write in {parent}")
    return p
