"""bench/table2_cpu.py's worker processes get the measurement's own options (``--processes P``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def table2(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import table2_cpu

    return table2_cpu


def test_worker_command_repeats_every_option(table2, tmp_path):
    argv = [
        "zoo/a",
        "zoo/b",
        "--data-root",
        "cifar.tar.gz",
        "--batches",
        "1",
        "32",
        "--rounds",
        "5",
        "--threads",
        "2",
        "--cache",
        str(tmp_path / "cache.pt"),
        "--methods",
        "qffs",
        "--qcfs-stem",
        "quantized",
        "--batch1-images",
        "3",
        "--batches-per-call",
        "2",
        "--processes",
        "4",
        "--ideal",
        "--json",
        str(tmp_path / "out.json"),
    ]
    args = table2.parser().parse_args(argv)
    command = table2.worker_command(args, tmp_path / "worker.json")
    assert command[:2] == [sys.executable, str(BENCH / "table2_cpu.py")]
    worker = table2.parser().parse_args(command[2:])
    expected = vars(args) | {"processes": 1, "json": tmp_path / "worker.json"}
    assert vars(worker) == expected


@pytest.mark.parametrize(
    "bad", [["--processes", "0"], ["--batches-per-call", "0"], ["--batches", "512", "--batches-per-call", "2"]]
)
def test_bad_values_are_refused_before_any_work(table2, bad, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["table2_cpu.py", "zoo/a", "--data-root", "x", *bad])
    with pytest.raises(SystemExit) as exc:
        table2.main()
    assert exc.value.code == 2
    assert bad[0] in capsys.readouterr().err


def test_plan_bound_reads_the_plan_of_both_runs(table2):
    """The batch-1 plan's ratios: V(0) of the DC run against the no-DC run's, with and without the rest of a
    sample's run (the measured no-DC ms minus its calls)."""
    from types import SimpleNamespace

    from dcsim.sim.chunking import ChunkPlanner

    planner = ChunkPlanner()
    for k, seconds in [(1, 0.002)] * 3 + [(2, 0.003)] * 3:  # c(k) = 1 + k ms, extended past 2 steps
        planner.observe_call(k, seconds)
    case = SimpleNamespace(steps=4, readout="r", threshold=0.5)
    for step in (1, 1, 1, 4):
        planner.observe_exit((4, "r", 0.5), 4, step)
    planner.observe_exit((4, "r", 1.0), 4, 4)
    engine = SimpleNamespace(chunk_planner=planner)
    step_saving = 0.5
    out = table2.plan_bound(engine, case, ms_no_dc=6.0, step_saving=step_saving)
    calls = {
        "no_dc": 1000 * planner.expected_seconds((4, "r", 1.0), 4),
        "dc_now": 1000 * planner.expected_seconds((4, "r", 0.5), 4),
    }
    assert calls["no_dc"] == pytest.approx(5.0)  # all four steps in one call
    assert out["calls_ms"] == pytest.approx(calls)
    assert out["rest_ms"] == pytest.approx(1.0)
    assert out["calls_only"] == pytest.approx((1 - calls["dc_now"] / 5.0) / step_saving)
    assert out["predicted"] == pytest.approx((1 - (calls["dc_now"] + 1.0) / 6.0) / step_saving)
    assert calls["dc_now"] < 5.0
