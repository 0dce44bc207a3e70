"""Corpus generator for the file fuzz tests (tests/test_fuzz.py): mutations of a valid file.

Each mutation is (kind, bytes). Byte-level kinds (``truncate``, ``bitflip``, ``data-bitflip``,
``header-length``, ``splice``) may only load if the content is unchanged; structural kinds
(``wrong-dtype``, ``wrong-shape``, ``bad-meta``, ...) build files that are well-formed but hold
unexpected arrays or metadata, and may load only as a valid object.
"""

from __future__ import annotations

import io
import json
import pickle
import struct

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
        b[dst:dst + n] = blob[src:src + n]
        return kind, bytes(b)
    return kind, pickle.dumps({"weights": np.zeros(3), "exec": print})  # a pickle under the expected name


def safetensors_header(blob: bytes) -> tuple[dict, int]:
    """(header JSON, start of the tensor data) of a safetensors file."""
    size = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + size]), 8 + size


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
    np.savez(buf, **arrays) if not allow_pickle else np.savez(buf, **{k: np.asarray(v, dtype=object) if k == "conf" else v
                                                                      for k, v in arrays.items()})
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
        a["meta"] = [np.array("{not json"), np.array(3), np.array(["{}"]), np.array('["list"]')][int(rng.integers(0, 4))]
    elif kind == "wrong-dtype":
        a[name] = a[name].astype(rng.choice([np.float16, np.complex64, np.bool_, np.uint64, "U3", "datetime64[s]"]))
    elif kind == "wrong-shape":
        a[name] = [a[name][:1], a[name].reshape(-1), a[name][..., None], a[name][:0]][int(rng.integers(0, 4))]
    else:
        a[name] = a[name].astype(np.float64)
        a[name].flat[int(rng.integers(0, a[name].size))] = [np.nan, np.inf, -1.0, 2.0, 1e300][int(rng.integers(0, 5))]
    return kind, npz_bytes(a)
