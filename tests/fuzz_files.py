"""Corpus generator for the file fuzz tests (tests/test_fuzz.py): mutations of a valid file
(checkpoints, traces, CIFAR-10 batch folders and their .tar.gz archives).

Each mutation is (kind, bytes). Byte-level kinds (``truncate``, ``bitflip``, ``data-bitflip``,
``header-length``, ``splice``) may only load if the content is unchanged; structural kinds
(``wrong-dtype``, ``wrong-shape``, ``bad-meta``, ...) build files that are well-formed but hold
unexpected arrays or metadata, and may load only as a valid object.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import tarfile

import numpy as np

BYTE_LEVEL = frozenset({"truncate", "bitflip", "data-bitflip", "header-length", "splice", "pickle"})


def byte_mutation(blob: bytes, rng: np.random.Generator, data_start: int = 0) -> tuple[str, bytes]:
    """One random byte-level mutation of ``blob``; data_start: where the payload begins (for data-bitflip)."""
    kind = str(rng.choice(["truncate", "bitflip", "bitflip", "data-bitflip", "header-length", "splice", "pickle"]))
    b = bytearray(blob)
    if kind == "truncate":
        return kind, bytes(b[: int(rng.integers(0, len(b)))])
    if kind in ("bitflip", "data-bitflip"):
        lo = data_start if kind == "data-bitflip" else 0
        for _ in range(int(rng.integers(1, 9))):
            b[int(rng.integers(lo, len(b)))] ^= 1 << int(rng.integers(0, 8))
        return kind, bytes(b)
    if kind == "header-length":  # the first 8 bytes: safetensors' header size (zip: the local header magic)
        sizes = [0, 1, len(b), len(b) * 2, 2**40, 2**63 - 1, 2**64 - 1]
        b[:8] = struct.pack("<Q", sizes[int(rng.integers(0, len(sizes)))])
        return kind, bytes(b)
    if kind == "splice":  # a block of the file copied over another place
        n = int(rng.integers(1, 64))
        src, dst = int(rng.integers(0, max(1, len(b) - n))), int(rng.integers(0, max(1, len(b) - n)))
        b[dst : dst + n] = blob[src : src + n]
        return kind, bytes(b)
    return kind, pickle.dumps({"weights": np.zeros(3), "exec": print})  # a pickle under the expected name


def safetensors_header(blob: bytes) -> tuple[dict, int]:
    """(header JSON, start of the tensor data) of a safetensors file."""
    size = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8 : 8 + size]), 8 + size


def with_safetensors_header(blob: bytes, header: dict) -> bytes:
    """``blob`` with its safetensors header replaced (the data unchanged)."""
    _, start = safetensors_header(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob[start:]


def checkpoint_mutation(blob: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """A random mutation of a safetensors checkpoint: byte level, or a structurally edited header."""
    header, start = safetensors_header(blob)
    if rng.random() < 0.6:
        return byte_mutation(blob, rng, start)
    names = sorted(k for k in header if k != "__metadata__")
    name = names[int(rng.integers(0, len(names)))]
    kind = str(rng.choice(["wrong-dtype", "wrong-shape", "wrong-offsets", "bad-meta", "drop-tensor"]))
    h = json.loads(json.dumps(header))
    if kind == "wrong-dtype":
        h[name]["dtype"] = str(rng.choice(["F16", "BF16", "I32", "I64", "U8", "BOOL", "F64", "XX"]))
    elif kind == "wrong-shape":
        shape = h[name]["shape"]
        shapes = [[*shape, 1], shape[::-1], [0], [], [2**40], [-1]]
        h[name]["shape"] = shapes[int(rng.integers(0, len(shapes)))]
    elif kind == "wrong-offsets":
        a, b = h[name]["data_offsets"]
        offsets = [[b, a], [a, b + 4], [a + 1, b + 1], [0, 2**62]]
        h[name]["data_offsets"] = offsets[int(rng.integers(0, len(offsets)))]
    elif kind == "drop-tensor":
        del h[name]
    else:
        meta = json.loads(h["__metadata__"]["dcsim"])
        key = str(rng.choice(["arch_kwargs", "architecture", "classes", "format_version", "accuracy"]))
        meta[key] = [None, 7, "x", {"width": 2**40}, -1, 2.5][int(rng.integers(0, 6))]
        h["__metadata__"]["dcsim"] = json.dumps(meta)
    return kind, with_safetensors_header(blob, h)


def npz_bytes(arrays: dict[str, np.ndarray], allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays) if not allow_pickle else np.savez(
        buf, **{k: np.asarray(v, dtype=object) if k == "conf" else v for k, v in arrays.items()}
    )
    return buf.getvalue()


def trace_mutation(blob: bytes, arrays: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[str, bytes]:
    """A random mutation of a trace .npz: byte level, or the arrays edited and saved again."""
    if rng.random() < 0.6:
        return byte_mutation(blob, rng)
    a = {k: v.copy() for k, v in arrays.items()}
    name = str(rng.choice(["labels", "pred", "conf", "meta"]))
    kind = str(rng.choice(["wrong-dtype", "wrong-shape", "bad-values", "missing", "object-array"]))
    if kind == "missing":
        del a[name]
    elif kind == "object-array":
        return kind, npz_bytes(a, allow_pickle=True)
    elif name == "meta":
        a["meta"] = [np.array("{not json"), np.array(3), np.array(["{}"]), np.array('["list"]')][
            int(rng.integers(0, 4))
        ]
    elif kind == "wrong-dtype":
        a[name] = a[name].astype(rng.choice([np.float16, np.complex64, np.bool_, np.uint64, "U3", "datetime64[s]"]))
    elif kind == "wrong-shape":
        a[name] = [a[name][:1], a[name].reshape(-1), a[name][..., None], a[name][:0]][int(rng.integers(0, 4))]
    else:
        a[name] = a[name].astype(np.float64)
        a[name].flat[int(rng.integers(0, a[name].size))] = [np.nan, np.inf, -1.0, 2.0, 1e300][int(rng.integers(0, 5))]
    return kind, npz_bytes(a)


# ------------------------------------------------------------------ CIFAR-10 python batches and archives

CIFAR_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
CIFAR_CLASSES = (b"cat", b"dog", b"frog")


class Opens:
    """A pickle that, if unpickled by a trusting reader, creates the file ``path`` (executed code)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def cifar_batch_files(per_batch: int = 3, protocol: int = 2) -> dict[str, bytes]:
    """A tiny valid ``cifar-10-batches-py``: {file name: bytes}, 3 classes, ``per_batch`` images per batch file."""
    rng = np.random.default_rng(0)
    files = {}
    for name in CIFAR_FILES:
        batch = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 3, per_batch).tolist(),
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"{j}.png".encode() for j in range(per_batch)],
        }
        files[name] = pickle.dumps(batch, protocol=protocol)
    files["batches.meta"] = pickle.dumps(
        {b"label_names": list(CIFAR_CLASSES), b"num_cases_per_batch": per_batch, b"num_vis": 3072}, protocol=protocol
    )
    return files


def cifar_mutation(files: dict[str, bytes], rng: np.random.Generator, marker: str) -> tuple[str, dict[str, bytes]]:
    """The folder's files with one of them mutated: byte level, or a well-formed pickle of the wrong content
    (wrong dtypes and shapes, bad labels, missing keys, other objects, and a pickle that runs code)."""
    out = dict(files)
    name = str(rng.choice([*CIFAR_FILES, "batches.meta"]))
    if rng.random() < 0.5:
        kind, out[name] = byte_mutation(files[name], rng)
        return kind, out
    kind = str(
        rng.choice(
            [
                "wrong-dtype",
                "wrong-shape",
                "bad-labels",
                "missing-key",
                "not-a-dict",
                "code",
                "missing-file",
                "bad-names",
            ]
        )
    )
    n = 3
    good = {b"labels": [0, 1, 2], b"data": np.zeros((n, 3072), np.uint8)}
    if kind == "missing-file":
        del out[name]
        return kind, out
    if kind == "code":
        obj: object = {b"labels": Opens(marker), b"data": good[b"data"]} if rng.random() < 0.5 else Opens(marker)
    elif name == "batches.meta" or kind == "bad-names":
        name = "batches.meta"
        names = [[], [b"a", 3], "cat", [None], [b"\xff\xfe"], [b"x"] * 2]
        obj = {b"label_names": names[int(rng.integers(0, len(names)))]}
    elif kind == "wrong-dtype":
        dtype = rng.choice([np.float32, np.int64, np.bool_, np.uint16, "U1"])
        obj = good | {b"data": good[b"data"].astype(dtype)}
    elif kind == "wrong-shape":
        shapes = [(n, 1024), (n * 3072,), (n, 3, 32, 32), (0, 3072), (n + 1, 3072)]
        obj = good | {b"data": np.zeros(shapes[int(rng.integers(0, len(shapes)))], np.uint8)}
    elif kind == "bad-labels":
        labels = [[0, 1], [0, 1, 3], [-1, 0, 1], [0.5, 1, 2], "abc", [[0], [1], [2]], [2**70, 0, 1], None]
        obj = good | {b"labels": labels[int(rng.integers(0, len(labels)))]}
    elif kind == "missing-key":
        dropped = [b"labels", b"data"][int(rng.integers(0, 2))]
        obj = {k: v for k, v in good.items() if k != dropped}
    else:
        obj = [[1, 2], b"bytes", 3, None, np.zeros(3)][int(rng.integers(0, 5))]
    out[name] = pickle.dumps(obj, protocol=int(rng.choice([2, 4])))
    return kind, out


def tar_of(entries: list[tuple[tarfile.TarInfo, bytes | None]], compress: bool = True) -> bytes:
    """A .tar.gz (or .tar) of (member header, data) pairs; data None for members without content."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if compress else "w") as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member(name: str, data: bytes | None = None, kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644 if kind != tarfile.DIRTYPE else 0o755
    return info, data


def cifar_archive(files: dict[str, bytes]) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """The members of a valid archive of the batches: cifar-10-batches-py/ and its files."""
    return [_member("cifar-10-batches-py", kind=tarfile.DIRTYPE)] + [
        _member(f"cifar-10-batches-py/{name}", blob) for name, blob in files.items()
    ]


def archive_mutation(files: dict[str, bytes], rng: np.random.Generator, outside: str, marker: str) -> tuple[str, bytes]:
    """A mutated .tar.gz of the batches: byte level, or members that try to escape the extraction folder
    (``..``, absolute names into ``outside``, symbolic and hard links, devices), malformed members, or a
    valid archive of mutated batch files."""
    entries = cifar_archive(files)
    if rng.random() < 0.35:
        return byte_mutation(tar_of(entries), rng)
    kind = str(
        rng.choice(
            [
                "traversal",
                "absolute",
                "symlink",
                "hardlink",
                "device",
                "fifo",
                "duplicate",
                "dir-as-file",
                "huge-size",
                "inner",
                "plain-tar",
            ]
        )
    )
    target = f"cifar-10-batches-py/{rng.choice(CIFAR_FILES)}"
    if kind == "traversal":
        entries.append(
            _member(str(rng.choice(["../escaped", "cifar-10-batches-py/../../escaped", "a/../../escaped"])), b"x")
        )
    elif kind == "absolute":
        entries.append(_member(f"{outside}/escaped", b"x"))
    elif kind in ("symlink", "hardlink"):
        link = str(rng.choice(["/etc/passwd", f"{outside}/escaped", "../escaped", "cifar-10-batches-py/test_batch"]))
        entries = [e for e in entries if e[0].name != target]
        entries.append(_member(target, None, tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE, link))
    elif kind in ("device", "fifo"):
        entries.append(
            _member("cifar-10-batches-py/dev", None, tarfile.CHRTYPE if kind == "device" else tarfile.FIFOTYPE)
        )
    elif kind == "duplicate":  # the same name again with other content: the later member wins, as in tar
        entries.append(_member(target, pickle.dumps({b"labels": [0], b"data": np.zeros((1, 3072), np.uint8)})))
    elif kind == "dir-as-file":
        entries = [e for e in entries if e[0].name != target] + [_member(target, kind=tarfile.DIRTYPE)]
    elif kind == "huge-size":  # a member header announcing more data than the archive holds
        blob = bytearray(tar_of(entries, compress=False))
        size_field = slice(124, 136)  # the first member header's size field (octal)
        blob[size_field] = b"%011o\x00" % (8 << 30)
        return kind, gzip.compress(bytes(blob))
    elif kind == "inner":
        mutated_kind, mutated = cifar_mutation(files, rng, marker)
        return f"inner-{mutated_kind}", tar_of(cifar_archive(mutated))
    else:
        return kind, tar_of(entries, compress=False)
    return kind, tar_of(entries)
