"""Safe, once-only extraction of ``.tar.gz`` / ``.tgz`` / ``.tar`` archives."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

EXTRACTED_MARKER = ".dcsim-extracted"
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def _archive_stem(archive: Path) -> str:
    name = archive.name
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return archive.stem


def _writable(folder: Path) -> bool:
    """Writable, and with some write permission bit set (a read-only marked folder counts as such even for root)."""
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def _default_extract_dir(archive: Path) -> Path:
    """``<archive folder>/<stem>`` where that folder is writable, else ``$XDG_CACHE_HOME/dcsim/<stem>-<hash>``."""
    if _writable(archive.parent):
        return archive.parent / _archive_stem(archive)
    digest = hashlib.sha256(str(archive.resolve()).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dcsim" / f"{_archive_stem(archive)}-{digest}"


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith(("/", "\\")) or ".." in name.parts or ":" in member.name:
        raise ValueError(f"{archive}: refusing to extract member {member.name!r}: absolute path or '..' component")
    if not (member.isfile() or member.isdir()):
        raise ValueError(
            f"{archive}: refusing to extract member {member.name!r}: only regular files and folders "
            "are allowed (no links or devices)"
        )


def extract_archive(archive: str | os.PathLike[str], extract_to: str | os.PathLike[str] | None = None) -> Path:
    """Extract a ``.tar.gz`` / ``.tgz`` / ``.tar`` archive safely; returns the folder it was extracted to.

    Every member is checked before anything is written: absolute names, ``..`` components, links
    and devices are refused (ValueError naming the member), and tarfile's ``"data"`` filter is
    applied as well. extract_to defaults to a sibling folder named after the archive
    (``cifar10-jpeg.tar.gz`` -> ``cifar10-jpeg/``), or ``$XDG_CACHE_HOME/dcsim/<stem>-<hash>``
    (default ``~/.cache/dcsim/``) when the archive's folder is read-only (not writable, or with no
    write permission bit set). A marker file written last
    (``.dcsim-extracted``, recording the archive's path, size and modification time) makes a second
    call return at once; an interrupted extraction has no marker and is redone.
    """
    archive = Path(archive)
    if not archive.exists():
        raise FileNotFoundError(f"{archive}: no such archive")
    if not archive.is_file():
        raise ValueError(f"{archive}: not a file")
    dest = Path(extract_to) if extract_to is not None else _default_extract_dir(archive)
    st = archive.stat()
    stamp = json.dumps({"archive": str(archive.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    marker = dest / EXTRACTED_MARKER
    if marker.is_file() and marker.read_text() == stamp:
        return dest
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(archive, m)
            dest.mkdir(parents=True, exist_ok=True)
            marker.unlink(missing_ok=True)
            bar = tqdm(members, desc=f"extracting {archive.name}", unit="file", disable=None, leave=False)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=bar, filter="data")
            else:  # Python without extraction filters: the member checks above already refuse unsafe entries
                tar.extractall(dest, members=bar)
    except OSError as err:
        if err.filename is not None:  # writing into dest failed: the error already names the file
            raise
        raise ValueError(f"{archive}: cannot read the archive ({err})") from err
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise ValueError(f"{archive}: cannot read the archive ({err})") from err
    marker.write_text(stamp)
    return dest
