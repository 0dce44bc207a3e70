"""dcsim bench --checkpoint: a given network on real images beside its random-weight twin, with spike rates;
the rounds' statistics of every row (median, min, max, unstable flag, CPU time, threads)."""

import json
from types import SimpleNamespace

import pytest
import torch

from dcsim.cli import EXIT_OK, main
from dcsim.data import load_digits_splits
from dcsim.io.checkpoint import save_checkpoint
from dcsim.models import build_model
from dcsim.workflows.benchmark import (
    BATCH1_INPUTS,
    cut_steps,
    ideal_saving,
    ideal_savings,
    interleaved,
    markdown,
    paired_saving,
    spike_saving,
    spread,
)


def test_bench_checkpoint_rows(tmp_path, checkpoint_meta):
    splits = load_digits_splits(seed=0)
    torch.manual_seed(1)
    model = build_model(checkpoint_meta["architecture"], **checkpoint_meta["arch_kwargs"]).train()
    model(splits["train"].normalized()[:64])  # BN statistics and LSQ steps from real images
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model.eval(), checkpoint_meta)
    out = tmp_path / "b.json"
    argv = f"bench --quick --models small_cnn --repeats 1 --spike-convs off --checkpoint {ckpt} --json {out}"
    assert main(argv.split()) == EXIT_OK
    rows = json.loads(out.read_text())["rows"]
    by = {}
    for r in rows:
        by.setdefault((r["model"], r["weights"]), []).append(r)
    assert set(by) == {("small_cnn", "random"), ("small_cnn 4 trained", "trained"), ("small_cnn 4 random", "random")}
    assert all(len(v) == 8 for v in by.values())  # 2 methods x 2 batches x 2 modes
    assert all(0 < r["spikes_per_neuron_step"] < 1 for r in rows)
    for r in rows:  # a given network's batch-1 case times BATCH1_INPUTS real inputs, one per batch; others a batch
        given = r["model"] != "small_cnn"
        assert r["inputs"] == (BATCH1_INPUTS if given and r["batch"] == 1 else r["batch"]), r
    assert f"| 1 ({BATCH1_INPUTS} inputs) |" in markdown([r for r in rows if r["inputs"] == BATCH1_INPUTS][:1])
    for r in rows:  # one round: median, min and max are that round's time, no spread
        assert r["rounds"] == 1 and r["threads"] >= 1 and r["spread"] == 0 and r["unstable"] is False
        assert r["ms_min"] == r["ms_per_inference"] == r["ms_max"] and r["cpu_ms_per_inference"] >= 0
    early = [r for r in rows if r["mode"] == "early_exit"]
    assert early and all(r["step_saving"] > 0 and r["time_saving_min"] == r["time_saving_max"] for r in early)
    for full, r in zip(rows[::2], rows[1::2], strict=True):  # each case's full row, then its early-exit row
        assert (full["mode"], r["mode"]) == ("full", "early_exit")
        assert (full["model"], full["method"], full["batch"]) == (r["model"], r["method"], r["batch"])
        # one round: the paired saving is that round's, and the ratio divides it by the step saving
        assert r["time_saving"] == pytest.approx(1 - r["ms_per_inference"] / full["ms_per_inference"])
        assert r["time_saving_over_step_saving"] == pytest.approx(r["time_saving"] / r["step_saving"])
        # the spike saving: the spikes early exit leaves out (none where the steps it skips emit none), and the
        # ratio to it (undefined then)
        assert 0 <= r["spike_saving"] < 1
        ratio = r["time_saving_over_spike_saving"]
        assert ratio is None if r["spike_saving"] == 0 else ratio == pytest.approx(r["time_saving"] / r["spike_saving"])
    assert any(r["spike_saving"] > 0 for r in early)
    assert not any("ideal_saving" in r for r in rows)  # timed with --ideal only
    rows[1]["unstable"] = True
    table = markdown(rows).splitlines()
    assert "unstable" not in table[2] and "unstable" in table[3]


def test_bench_ideal_times_the_full_run_cut_at_each_exit_step(tmp_path):
    out = tmp_path / "b.json"
    argv = f"bench --quick --models small_cnn --batches 8 --repeats 2 --spike-convs off --ideal --json {out}"
    assert main(argv.split()) == EXIT_OK
    rows = json.loads(out.read_text())["rows"]
    early = [r for r in rows if r["mode"] == "early_exit"]
    assert {r["method"] for r in early} == {"qcfs", "qffs"}
    for r in early:
        assert r["ideal_saving_min"] <= r["ideal_saving"] <= r["ideal_saving_max"] < 1
        assert r["ideal_saving_over_step_saving"] == pytest.approx(r["ideal_saving"] / r["step_saving"])
        of_ideal = r["time_saving_over_ideal_saving"]
        assert (
            of_ideal is None
            if r["ideal_saving"] <= 0
            else of_ideal == pytest.approx(r["time_saving"] / r["ideal_saving"])
        )
    full_row, early_row = markdown(rows).splitlines()[2:4]
    assert full_row.count("|") == early_row.count("|") == 23  # 22 columns, the ideal's among them
    ideal_cell = early_row.split("|")[-5].strip()
    assert ideal_cell == f"{early[0]['ideal_saving_over_step_saving']:.2f} / " + (
        "-" if early[0]["time_saving_over_ideal_saving"] is None else f"{early[0]['time_saving_over_ideal_saving']:.2f}"
    )


def test_spike_saving_is_the_share_of_spikes_left_out():
    full = SimpleNamespace(spikes=torch.tensor([[6, 2], [4, 0]]))  # 12 spikes over 2 samples, 2 layers
    assert spike_saving(full, SimpleNamespace(spikes=torch.tensor([[3, 1], [2, 0]]))) == pytest.approx(0.5)
    assert spike_saving(full, full) == 0.0
    silent = SimpleNamespace(spikes=torch.zeros(2, 2, dtype=torch.int64))
    assert spike_saving(silent, silent) == 0.0  # nothing to save, not "everything saved"


def test_ideal_saving_skips_each_samples_unneeded_steps_at_the_no_dc_cost():
    exits = torch.tensor([2, 1, 4, 2])  # T = 4: the runs cut at 1 and 2 steps are needed, not at 3
    assert cut_steps(exits, 4) == [1, 2]
    # step 1 for all (1.0 s), step 2 for 3 of 4 (0.8 s), steps 3-4 for 1 of 4 (1.2 s) of the 3.0 s run
    assert ideal_saving(exits, 4, {1: 1.0, 2: 1.8}, 3.0) == pytest.approx(1 - (1.0 + 0.75 * 0.8 + 0.25 * 1.2) / 3.0)
    assert ideal_saving(torch.tensor([4, 4]), 4, {}, 3.0) == 0.0  # no sample stops early: nothing to save


@pytest.mark.parametrize("seed", range(5))
def test_ideal_saving_is_the_step_saving_where_every_step_costs_the_same(seed):
    g = torch.Generator().manual_seed(seed)
    steps = int(torch.randint(2, 30, (1,), generator=g))
    exits = torch.randint(1, steps + 1, (int(torch.randint(1, 50, (1,), generator=g)),), generator=g)
    per_step = float(torch.rand(1, generator=g)) + 0.1
    cuts = {t: t * per_step for t in cut_steps(exits, steps)}
    step_saving = 1 - float(exits.double().mean()) / steps
    assert ideal_saving(exits, steps, cuts, steps * per_step) == pytest.approx(step_saving, abs=1e-9)


@pytest.mark.parametrize(
    "exits, cuts, full, match",
    [
        ([1, 4], {}, 2.0, "cut at steps \\[1\\]"),
        ([1, 4], {1: 0.5, 2: 1.0}, 2.0, "cut at steps \\[1\\]"),
        ([0, 4], {}, 2.0, "exit_step must hold steps in 1..4"),
        ([5], {}, 2.0, "exit_step must hold steps in 1..4"),
        ([], {}, 2.0, "exit_step must hold"),
        ([4], {}, 0.0, "full_seconds must be > 0"),
    ],
)
def test_ideal_saving_refuses_what_does_not_describe_one_run(exits, cuts, full, match):
    with pytest.raises(ValueError, match=match):
        ideal_saving(torch.tensor(exits, dtype=torch.int64), 4, cuts, full)


def test_spread_flags_rows_whose_rounds_differ_by_more_than_ten_percent():
    s = spread([1.0, 1.05, 1.1, 1.02])
    assert (s["median"], s["min"], s["max"]) == pytest.approx((1.035, 1.0, 1.1))
    assert s["spread"] == pytest.approx(0.1 / 1.035) and s["unstable"] is False
    assert spread([1.0, 1.2, 1.1])["unstable"] is True


def test_interleaved_rounds_alternate_their_order():
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = interleaved(fns, torch.device("cpu"), 3)
    assert calls == list("abc") + list("abc") + list("cba") + list("abc")  # warm-up, then forward and back
    assert all(len(times[name]["wall"]) == 3 for name in "abc")


def test_paired_saving_takes_each_rounds_saving_and_their_median():
    # a slow spell in rounds 2-3 slows both runs alike: each round saves 40%, 40%, 40%, 25%
    base, dc = [1.0, 2.0, 2.0, 1.0], [0.6, 1.2, 1.2, 0.75]
    p = paired_saving(dc, base)
    assert (p["median"], p["min"], p["max"]) == pytest.approx((0.4, 0.25, 0.4))
    # the ratio of the medians mixes rounds: 1 - 0.975 / 1.5 = 35%
    assert 1 - spread(dc)["median"] / spread(base)["median"] == pytest.approx(0.35)
    with pytest.raises(ValueError, match="3 and 4 rounds"):
        paired_saving(dc[:3], base)
    with pytest.raises(ValueError, match="0 and 0 rounds"):
        paired_saving([], [])


def test_bench_converts_every_qcfs_case_with_the_qcfs_stem(tmp_path, checkpoint_meta, monkeypatch):
    """--qcfs-stem quantized reaches each QCFS conversion (the trained net, its twin, the standard set, streaming),
    QFFS keeps the spiking stem, and the rows and tables say which stem ran; --batches sets every case's batches."""
    import dcsim.workflows.benchmark as benchmark

    splits = load_digits_splits(seed=0)
    torch.manual_seed(1)
    model = build_model(checkpoint_meta["architecture"], **checkpoint_meta["arch_kwargs"]).train()
    model(splits["train"].normalized()[:64])
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model.eval(), checkpoint_meta)
    converted = []

    def recording_convert(model, method, stem="spiking"):
        net = benchmark.convert.__wrapped__(model, method=method, stem=stem)
        converted.append((method, stem, net.stem))
        return net

    recording_convert.__wrapped__ = benchmark.convert  # type: ignore[attr-defined]
    monkeypatch.setattr(benchmark, "convert", recording_convert)
    out = tmp_path / "b.json"
    argv = (
        f"bench --quick --models small_cnn --repeats 1 --chunk 1 --spike-convs off --checkpoint {ckpt} --qcfs-stem quantized "
        f"--batches 1 3 --stream 2 --json {out}"
    )
    assert main(argv.split()) == EXIT_OK
    assert {(m, s) for m, s, _ in converted} == {("qcfs", "quantized"), ("qffs", "spiking")}
    assert all(stem == net_stem for _, stem, net_stem in converted)
    result = json.loads(out.read_text())
    for r in result["rows"] + result["stream_rows"]:
        assert r["stem"] == ("quantized" if r["method"] == "qcfs" else "spiking")
    cases = {(r["model"], r["method"], r["batch"]) for r in result["rows"]}
    models = ("small_cnn", "small_cnn 4 trained", "small_cnn 4 random")
    assert cases == {(m, meth, b) for m in models for meth in ("qcfs", "qffs") for b in (1, 3)}  # --batches
    table = markdown(result["rows"]).splitlines()[2:]
    assert all(("| qcfs (quantized stem) |" in line) != ("| qffs |" in line) for line in table)


def test_ideal_savings_is_each_rounds_ideal_saving():
    exits = torch.tensor([2, 1, 4, 2])
    cut_walls, full_walls = {1: [1.0, 1.2, 0.9], 2: [1.8, 2.0, 1.7]}, [3.0, 3.5, 2.9]
    expected = [
        ideal_saving(exits, 4, {1: c1, 2: c2}, f) for c1, c2, f in zip(*cut_walls.values(), full_walls, strict=True)
    ]
    assert ideal_savings(exits, 4, cut_walls, full_walls) == expected
    assert len(set(expected)) == 3  # the rounds differ, so a mixed-up round would show
    with pytest.raises(ValueError, match="full run's 3 rounds"):
        ideal_savings(exits, 4, {1: [1.0, 1.2], 2: [1.8, 2.0, 1.7]}, full_walls)
