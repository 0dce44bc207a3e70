"""dcsim bench --processes: the set run in fresh processes, one after another, and each row's median over them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dcsim.parallel.distributed import World
from dcsim.workflows import bench as bench_mod
from dcsim.workflows.options import BenchOptions, DataOptions
from dcsim.workflows.processes import in_fresh_processes, median_rows, over_processes

WRITE = "import json, os, sys; json.dump({'pid': os.getpid(), 'argv': sys.argv[1:]}, open(sys.argv[1], 'w'))"


def test_each_process_is_fresh_and_its_folder_is_removed():
    seen: list[Path] = []

    def command(path: Path) -> list[str]:
        seen.append(path)
        return [sys.executable, "-c", WRITE, str(path)]

    results = in_fresh_processes(command, 3)
    assert len(results) == 3 and len({r["pid"] for r in results}) == 3
    assert [r["argv"] for r in results] == [[str(p)] for p in seen]
    assert not seen[0].parent.exists()  # the temporary folder is gone


def test_a_failed_process_stops_the_measurement_and_leaves_nothing():
    seen: list[Path] = []

    def command(path: Path) -> list[str]:
        seen.append(path)
        return [sys.executable, "-c", "raise SystemExit(3)"]

    with pytest.raises(subprocess.CalledProcessError):
        in_fresh_processes(command, 2)
    assert len(seen) == 1 and not seen[0].parent.exists()
    with pytest.raises(ValueError, match="processes"):
        in_fresh_processes(command, 0)


def test_over_processes_and_median_rows():
    s = over_processes([1.0, 1.3, 0.9])
    assert (s["median"], s["min"], s["max"]) == (1.0, 0.9, 1.3)
    assert s["spread"] == pytest.approx(0.4) and s["unstable"] is True
    assert over_processes([1.0, 1.05])["unstable"] is False
    assert over_processes([0.5, None])["median"] is None  # a ratio to a step saving of zero in one process
    a = [{"model": "m", "mode": "full", "ms": 2.0, "steps": 4}, {"model": "m", "mode": "dc", "ms": 1.0, "steps": 3}]
    b = [{"model": "m", "mode": "full", "ms": 4.0, "steps": 4}, {"model": "m", "mode": "dc", "ms": 3.0, "steps": 3}]
    c = [{"model": "m", "mode": "full", "ms": 3.0, "steps": 4}, {"model": "m", "mode": "dc", "ms": 1.5, "steps": 3}]
    rows = median_rows([a, b, c], ("model", "mode"), ("ms",))
    assert [r["ms"] for r in rows] == [3.0, 1.5] and [r["steps"] for r in rows] == [4, 3]
    assert rows[0]["processes"]["ms"]["min"] == 2.0 and rows[1]["processes"]["ms"]["max"] == 3.0
    with pytest.raises(ValueError, match="differ in model, mode"):
        median_rows([a, b[::-1]], ("model", "mode"), ("ms",))
    with pytest.raises(ValueError, match="numbers of rows"):
        median_rows([a, b[:1]], ("model", "mode"), ("ms",))


def test_a_worker_gets_every_option_back():
    """Every field of BenchOptions and DataOptions, off its default, survives the trip to a worker process."""
    opts = BenchOptions(True, False, ("small_cnn", "resnet18"), 3, (1, 2), True, ("off",), True, ("fp32", "bf16"),
                        ("on",), Path("zoo/x"), None, 4, "quantized", (1, 256))  # fmt: skip
    data = DataOptions("cifar10", Path("c.tar.gz"), 2000, 3, "memory", 1)
    assert bench_mod._options(BenchOptions, bench_mod._plain(opts)) == opts
    assert bench_mod._options(DataOptions, bench_mod._plain(data)) == data


def _rows(ms_full: float, ms_dc: float, ratio: float | None) -> list[dict]:
    base = {"model": "small_cnn", "method": "qffs", "stem": "spiking", "batch": 32, "engine": "no-graphs", "chunk": 1, "weights": "random",
            "device": "cpu", "threads": 2, "mean_steps": 4.0, "spikes_per_neuron_step": 0.1, "unstable": False,
            "cpu_ms_per_inference": 1.0, "ms_per_step": 1.0, "ratio_to_ann_per_step": 1.0}  # fmt: skip
    full = {**base, "mode": "full", "ms_per_inference": ms_full, "ms_min": 0.0, "ms_max": 9.0}
    dc = {**base, "mode": "early_exit", "ms_per_inference": ms_dc, "step_saving": 0.25, "time_saving": 0.2,
          "time_saving_over_step_saving": ratio, "time_saving_min": 0.1, "time_saving_max": 0.3,
          "time_saving_over_step_saving_min": ratio, "time_saving_over_step_saving_max": ratio}  # fmt: skip
    return [full, dc]


def test_across_processes_runs_the_worker_with_the_same_options_and_takes_medians(monkeypatch, tmp_path):
    opts = BenchOptions(models=("small_cnn",), repeats=2, spike_convs=("off",), processes=3)
    data = DataOptions()
    commands = []

    def fake(command, processes):
        argv = command(tmp_path / "p.json")
        commands.append(argv)
        assert processes == 3 and argv[1:3] == ["-m", "dcsim.workflows.bench"] and argv[4] == str(tmp_path / "p.json")
        ratios = [0.9, 1.2, None]
        return [
            {
                "device": "cpu",
                "allocator": "a",
                "rows": _rows(4.0 + i, 3.0 + i, ratios[i]),
                "stream_rows": [],
                "errors": [],
            }
            for i in range(3)
        ]

    monkeypatch.setattr(bench_mod, "in_fresh_processes", fake)
    out = bench_mod.bench(opts, data, World())
    spec = json.loads(commands[0][3])
    assert bench_mod._options(BenchOptions, spec["options"]) == BenchOptions(
        models=("small_cnn",), repeats=2, spike_convs=("off",), processes=1
    )
    assert bench_mod._options(DataOptions, spec["data"]) == data and spec["device"] == "cpu"
    full, dc = out["rows"]
    assert out["processes"] == 3 and len(out["per_process"]) == 3 and out["allocator"] == "a"
    assert (full["ms_per_inference"], full["ms_min"], full["ms_max"]) == (5.0, 4.0, 6.0)  # over the processes
    assert full["unstable"] is True and dc["ms_per_inference"] == 4.0
    assert dc["time_saving_over_step_saving"] is None  # one process saw no ratio: no median is made up
    assert dc["step_saving"] == 0.25
