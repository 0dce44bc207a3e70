"""Atomic file output (write beside the target, then rename, so nothing half-written remains) and
exclusive use of a working folder."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..checks import writable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unnamed_file(folder: Path) -> tuple[int, str] | None:
    """(fd, a name that reopens it) of a new file in ``folder`` that has no name yet (Linux O_TMPFILE),
    or None where the system or the file system cannot make one."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        fd = os.open(folder, flag | os.O_RDWR, 0o600)
    except OSError:  # EOPNOTSUPP, EISDIR (old kernels), ...: fall back to a named temporary file
        return None
    return fd, f"/proc/self/fd/{fd}"


def _link_unnamed(fd: int, target: Path) -> None:
    """Give the unnamed file ``fd`` (see _unnamed_file) the name ``target``."""
    proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.link(str(fd), target, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def check_writable(path: str | os.PathLike, name: str = "output") -> Path:
    """``path`` as a Path, once a file can be written there (:func:`dcsim.checks.writable`), with its folder
    made if missing; a ValueError naming ``name`` and the path otherwise. Call it before the work whose
    result goes there."""
    path = writable(path, name, folder=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{name} {path}: cannot make its folder ({err.strerror or err})") from None
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's process
        return True
    return True


def _remove_stale(path: Path) -> None:
    """Remove temporary files of ``path`` left by dcsim processes that were killed mid-write: only
    names of the form ``.<name>.<pid>-<random>.tmp`` whose process no longer runs on this machine."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)-[A-Za-z0-9_]+\.tmp")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        m = pattern.fullmatch(name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            stale = path.parent / name
            if stale.is_file() and not stale.is_symlink():
                stale.unlink(missing_ok=True)


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary file name beside ``path``; on success rename it to ``path``, else delete it.

    The parent folder is created if missing; the file gets the usual permissions (0666 & ~umask).
    Where the system allows (Linux: O_TMPFILE), the temporary file has no name in the folder while
    it is written, so a process killed mid-write (SIGKILL, power loss) leaves nothing behind; it is
    named ``.<name>.<pid>-<random>.tmp`` only for the instant between linking it and renaming it over
    ``path`` (elsewhere: while it is written). A name of that form left by a killed process is
    removed by the next write of ``path``. The name yielded must be written by opening it
    (``open(tmp, "wb")``), not by replacing it.
    """
    path = check_writable(path, "output")
    _remove_stale(path)
    prefix = f".{path.name}.{os.getpid()}-"
    unnamed = _unnamed_file(path.parent)
    if unnamed is not None:
        fd, name = unnamed
        try:
            yield name
            os.fchmod(fd, 0o666 & ~_umask())
            for _ in range(100):  # give it a unique temporary name, then rename it over path
                tmp = path.parent / f"{prefix}{os.urandom(6).hex()}.tmp"
                try:  # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N (a dir fd makes Python call linkat, not link)
                    _link_unnamed(fd, tmp)
                    break
                except FileExistsError:
                    continue
            else:
                raise FileExistsError(f"{path.parent}: cannot find a free temporary name")
            try:
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        finally:
            os.close(fd)
        return
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    os.close(fd)
    try:
        yield tmp_name
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


_UNSAFE_ADVICE = ("weights_only", "allow_pickle", "arbitrary code", "unpickl", "pickle")


def library_detail(err: BaseException) -> str:
    """A library error's first line for a dcsim message, or only its type when that line passes on
    the library's advice to load unsafely (``weights_only=False``, ``allow_pickle=True``): dcsim never
    suggests that, so its messages carry their own explanation instead."""
    lines = str(err).strip().splitlines()
    first = lines[0].strip() if lines else ""
    if not first or any(word in first.lower() for word in _UNSAFE_ADVICE) or len(first) > 200:
        return type(err).__name__
    return f"{type(err).__name__}: {first}"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def exclusive_folder(folder: str | os.PathLike, *, held: bool = True) -> Iterator[Path]:
    """Hold ``folder`` (created if missing) for this process for the block: an exclusive lock on
    folder/.lock, which the system releases when the process ends however it ends (no stale locks).

    Another process holding it is a ValueError naming the folder and that process's pid; a folder
    that cannot be made or written (a file of that name, no permission) is a ValueError naming it.
    ``held=False`` (ranks other than 0) yields the folder without locking.
    """
    folder = Path(folder)
    if not held:
        yield folder
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise ValueError(f"{folder}: cannot use as a working folder ({err.strerror or err})") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ValueError(
                f"{folder}: another dcsim run (pid {owner}) is using this folder; wait for it to end, "
                "or give another --workdir / --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)
