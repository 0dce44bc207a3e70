"""Checks of values and paths given to library entry points, with errors naming the argument or file.

The command line passes its flag names (``name="--batch-size"``); library callers get the keyword's
name. Each raises ValueError (FileNotFoundError for a path that does not exist).
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path


def positive_int(value: object, name: str) -> int:
    """``value`` as an int >= 1; a ValueError naming ``name`` for 0, negatives, bools, floats, NaN."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def finite_number(value: object, name: str, *, positive: bool = False) -> float:
    """``value`` as a finite float (> 0 with ``positive``); a ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
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
