"""Scale-out measurements: peak memory of a trace read from disk, ranks vs threads, bit-identical traces.

    python bench/bench_scale_out.py make DIR --images 20000            # synthetic ImageNet-style folder (JPEG 224x224)
    python bench/bench_scale_out.py make DIR5 --images 100000 --link-from DIR   # 5x, hard links to DIR's files
    python bench/bench_scale_out.py model DIR --out m.safetensors       # a small 2-class checkpoint for DIR
    python bench/bench_scale_out.py rss DIR --ckpt m.safetensors        # peak resident memory of `dcsim trace`
    python bench/bench_scale_out.py ranks DIR --ckpt m.safetensors      # 2 ranks x 1 thread vs 1 rank x 2 threads,
                                                                        # and 1 / 2 / 3 ranks bit for bit

DIR/val/<class>/ holds the images traced (the test split); DIR/train/<class>/ a few for calibration.
Memory is sampled every 0.1 s from /proc: the main process's resident set and the sum over the
process and its DataLoader workers (the sum counts pages shared after fork once per process).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("c0", "c1")
TRAIN_PER_CLASS = 8


def _image(rng: np.random.Generator, k: int) -> Image.Image:
    """224x224 RGB: a smooth colour gradient per class plus mild noise (JPEGs of ~10-20 KB)."""
    y, x = np.mgrid[0:224, 0:224].astype(np.float32) / 224
    base = np.stack([x * 255, y * 255, (1 - x) * 128 + 64 * k], axis=-1)
    noise = rng.normal(0, 12, base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def make(root: Path, images: int, link_from: Path | None) -> None:
    rng = np.random.default_rng(0)
    for k, cls in enumerate(CLASSES):
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
        (root / "val" / cls).mkdir(parents=True, exist_ok=True)
        for i in range(TRAIN_PER_CLASS):
            _image(rng, k).save(root / "train" / cls / f"{i:06d}.jpg", quality=90)
    sources = sorted((link_from / "val").glob("*/*.jpg")) if link_from else []
    for i in range(images):
        cls = CLASSES[i % len(CLASSES)]
        dest = root / "val" / cls / f"{i:07d}.jpg"
        if sources:
            os.link(sources[i % len(sources)], dest)
        else:
            _image(rng, i % len(CLASSES)).save(dest, quality=90)
    print(f"{root}: {images} images in val/, {TRAIN_PER_CLASS * len(CLASSES)} in train/")


def model(root: Path, out: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dcsim",
            "train",
            "--dataset",
            "imagefolder",
            "--data-root",
            str(root),
            "--loader",
            "memory",
            "--val-size",
            "2",
            "--epochs",
            "1",
            "--width",
            "2",
            "--quiet",
            "--device",
            "cpu",
            "--train-batch-size",
            "4",
            "--out",
            str(out),
        ],
        check=True,
    )


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_measured(cmd: list[str], env: dict) -> dict:
    """Run cmd; peak RSS of the main process and of the process tree (bytes), wall seconds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    peak_main = peak_tree = 0
    while proc.poll() is None:
        peak_main = max(peak_main, _rss(proc.pid))
        peak_tree = max(peak_tree, sum(_rss(p) for p in _tree(proc.pid)))
        time.sleep(0.1)
    if proc.returncode:
        raise SystemExit(f"{cmd}: exit code {proc.returncode}")
    return {
        "peak_rss_main_mb": peak_main / 2**20,
        "peak_rss_tree_mb": peak_tree / 2**20,
        "wall_s": time.perf_counter() - t0,
    }


def _trace_cmd(root: Path, ckpt: Path, out: Path, batch: int, workers: int, steps: int) -> list[str]:
    return [
        "-m",
        "dcsim",
        "trace",
        str(ckpt),
        "--dataset",
        "imagefolder",
        "--data-root",
        str(root),
        "--loader",
        "disk",
        "--loader-workers",
        str(workers),
        "--val-size",
        "2",
        "--split",
        "test",
        "--method",
        "qcfs",
        "--steps",
        str(steps),
        "--batch-size",
        str(batch),
        "--device",
        "cpu",
        "--tau",
        "1",
        "--out",
        str(out),
    ]


def rss(root: Path, ckpt: Path, batch: int, workers: int, steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        res = run_measured(
            [
                sys.executable,
                *_trace_cmd(root, ckpt, Path(tmp) / "t.npz", batch, workers, steps),
                "--json",
                str(Path(tmp) / "t.json"),
            ],
            dict(os.environ),
        )
        res |= {
            "samples": json.loads((Path(tmp) / "t.json").read_text())["samples"],
            "batch": batch,
            "workers": workers,
            "steps": steps,
        }
    print(json.dumps(res))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(ranks: int, threads: int, cmd: list[str], json_out: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    launcher = (
        [sys.executable]
        if ranks == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={ranks}",
            "--master-addr=127.0.0.1",
            f"--master-port={_port()}",
        ]
    )
    subprocess.run([*launcher, *cmd, "--json", str(json_out)], env=env, check=True)
    return json.loads(json_out.read_text())


def ranks(root: Path, ckpt: Path, batch: int, steps: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        seconds: dict[str, list[float]] = {"1x2": [], "2x1": []}
        for _ in range(repeats):  # interleaved
            for key, (n, threads) in (("1x2", (1, 2)), ("2x1", (2, 1))):
                res = _launch(n, threads, _trace_cmd(root, ckpt, t / f"{key}.npz", batch, 1, steps), t / "r.json")
                seconds[key].append(res["trace_seconds"])
        traces = {}
        for n in (1, 2, 3):
            _launch(n, 1, _trace_cmd(root, ckpt, t / f"r{n}.npz", batch, 1, steps), t / "r.json")
            traces[n] = np.load(t / f"r{n}.npz")
        identical = all(np.array_equal(traces[1][k], traces[n][k]) for n in (2, 3) for k in traces[1].files)
        print(
            json.dumps(
                {
                    "samples": len(traces[1]["labels"]),
                    "batch": batch,
                    "steps": steps,
                    "seconds_1rank_x_2threads": seconds["1x2"],
                    "seconds_2ranks_x_1thread": seconds["2x1"],
                    "throughput_ratio_2x1_over_1x2": min(seconds["1x2"]) / min(seconds["2x1"]),
                    "traces_identical_1_2_3_ranks": identical,
                }
            )
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("make")
    m.add_argument("root", type=Path)
    m.add_argument("--images", type=int, required=True)
    m.add_argument("--link-from", type=Path)
    c = sub.add_parser("model")
    c.add_argument("root", type=Path)
    c.add_argument("--out", type=Path, required=True)
    for name in ("rss", "ranks"):
        r = sub.add_parser(name)
        r.add_argument("root", type=Path)
        r.add_argument("--ckpt", type=Path, required=True)
        r.add_argument("--batch", type=int, default=64)
        r.add_argument("--steps", type=int, default=2)
        if name == "rss":
            r.add_argument("--workers", type=int, default=2)
        else:
            r.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    if a.what == "make":
        make(a.root, a.images, a.link_from)
    elif a.what == "model":
        model(a.root, a.out)
    elif a.what == "rss":
        rss(a.root, a.ckpt, a.batch, a.workers, a.steps)
    else:
        ranks(a.root, a.ckpt, a.batch, a.steps, a.repeats)


if __name__ == "__main__":
    main()
