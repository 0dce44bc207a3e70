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
        "--batch1-images",
        "3",
        "--batches-per-call",
        "2",
        "--processes",
        "4",
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
