"""Synaptic operations and energy where users see them (issue 27): ``evaluate_live_runs``' counts, ``dcsim eval`` and
``dcsim report`` columns and JSON, the per-layer PNG, and the energy flags' checks (exit 2 before any work)."""

import json

import pytest
import torch

import dcsim
from dcsim.analysis import energy
from dcsim.analysis.plots import plot_sops_per_layer
from dcsim.cli import EXIT_OK, EXIT_USAGE, main
from dcsim.workflows.dynamic_confidence import evaluate_live_runs
from dyadic import dyadic_inputs, small

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("energy") / "model.safetensors"
    argv = ["train", "--epochs", "2", "--float-epochs", "2", "--lr", "0.05", "--width", "8", "--quiet"]
    assert main([*argv, "--out", str(out)]) == EXIT_OK
    return out


def _energy_ok(run: dict, model: dict) -> None:
    """E = e_mac x MACs + e_ac x SOPs (pJ -> uJ), to float tolerance."""
    expected = (model["e_mac"] * run["macs_per_inference"] + model["e_ac"] * run["sops_per_inference"]) / 1e6
    assert run["energy_uj"] == pytest.approx(expected, rel=1e-12)


def _eval(ckpt, tmp_path, name: str, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    argv = ["eval", str(ckpt), "--method", "qcfs", "--steps", "4", "--threshold", "0.8", "--json", str(out)]
    assert main([*argv, *extra]) == EXIT_OK
    return json.loads(out.read_text())


def test_evaluate_live_carries_the_engine_counts():
    net, shape = small("qcfs")
    engine = dcsim.Engine(net, count_ops=True)
    x, y = dyadic_inputs(20, shape, 1), torch.zeros(20, dtype=torch.int64)
    direct = engine.early_exit(x, 5, dcsim.Readout(), 0.6)
    live = evaluate_live_runs(engine, x, y, 5, dcsim.Readout(), {"dc": 0.6}, batch_size=7)["dc"]  # three batches
    assert live.result.sops is not None and live.result.macs is not None
    assert torch.equal(live.result.sops, direct.sops) and torch.equal(live.result.macs, direct.macs)
    assert torch.equal(live.result.exit_step, direct.exit_step)
    uncounted = evaluate_live_runs(dcsim.Engine(net, count_ops=False), x, y, 5, dcsim.Readout(), {"dc": 0.6})["dc"]
    assert uncounted.result.sops is None and uncounted.result.macs is None


def test_eval_energy_columns(ckpt, tmp_path, capsys):
    e = _eval(ckpt, tmp_path, "fp32")
    rep = e["energy"]
    model, ann, runs = rep["energy_model"], rep["ann"], rep["runs"]
    assert model == {"e_mac": 4.6, "e_ac": 0.9, "name": "fp32"} and rep["first_layer"] == "once"
    assert set(runs) == {"no_dc", "dc"}
    no, dc = runs["no_dc"], runs["dc"]
    assert no["mean_steps"] == 4 and dc["mean_steps"] == pytest.approx(e["mean_steps"])
    assert 0 < dc["sops_per_inference"] <= no["sops_per_inference"]
    for a, b in zip(dc["per_layer"], no["per_layer"], strict=True):
        assert a["layer"] == b["layer"] and a["sops_per_inference"] <= b["sops_per_inference"]
    assert dc["macs_per_inference"] == no["macs_per_inference"] > 0  # the image-fed conv, once per inference
    for run in (no, dc):
        _energy_ok(run, model)
        assert run["energy_ratio_to_ann"] == pytest.approx(run["energy_uj"] / ann["energy_uj"])
    assert ann["energy_uj"] == pytest.approx(4.6 * ann["macs_per_inference"] / 1e6)
    assert ann["macs_per_inference"] == sum(p["macs"] for p in ann["per_layer"]) > dc["macs_per_inference"]
    # the flat columns are the DC run's, with the ANN's beside them
    for key in ("sops_per_inference", "macs_per_inference", "energy_uj", "energy_ratio_to_ann"):
        assert e[key] == dc[key]
    assert e["ann_macs_per_inference"] == ann["macs_per_inference"] and e["ann_energy_uj"] == ann["energy_uj"]
    assert e["spikes_per_neuron"] > 0  # Table 3's column stays
    # the no-DC run is the wall-clock comparison too (both timed warm)
    assert e["no_dc"]["mean_steps"] == 4 and e["no_dc"]["ms_per_inference"] > 0
    assert e["no_dc"]["spikes_per_neuron"] >= e["spikes_per_neuron"]  # counted to T, the DC run to each exit
    assert e["time_saving"] == pytest.approx(1 - e["ms_per_inference"] / e["no_dc"]["ms_per_inference"])
    assert e["time_to_step_saving"] == pytest.approx(e["time_saving"] / e["saving"])

    # user constants override the preset's, the counts do not change
    o = _eval(ckpt, tmp_path, "override", "--energy-preset", "int8", "--e-mac", "2")
    assert o["energy"]["energy_model"] == {"e_mac": 2.0, "e_ac": 0.03, "name": "int8 (user constants)"}
    for label in ("no_dc", "dc"):
        run = o["energy"]["runs"][label]
        assert run["sops_per_inference"] == runs[label]["sops_per_inference"]
        _energy_ok(run, o["energy"]["energy_model"])
    assert o["energy"]["ann"]["energy_uj"] == pytest.approx(2.0 * ann["macs_per_inference"] / 1e6)

    # the image-fed layer's MACs at every step: T times (no DC), mean steps times (DC)
    p = _eval(ckpt, tmp_path, "per_step", "--first-layer-macs", "per-step", "--e-ac", "0.5")
    runs_p = p["energy"]["runs"]
    assert p["energy"]["first_layer"] == "per_step" and p["energy"]["energy_model"]["e_ac"] == 0.5
    assert runs_p["no_dc"]["macs_per_inference"] == 4 * no["macs_per_inference"]
    assert runs_p["dc"]["macs_per_inference"] == pytest.approx(dc["mean_steps"] * dc["macs_per_inference"])
    _energy_ok(runs_p["dc"], p["energy"]["energy_model"])

    # no early exit (th_c 1): one run, no DC
    capsys.readouterr()
    n = _eval(ckpt, tmp_path, "no_exit", "--threshold", "1")
    assert set(n["energy"]["runs"]) == {"no_dc"} and "time_saving" not in n
    assert n["sops_per_inference"] == no["sops_per_inference"]


def test_report_energy_columns_json_and_png(ckpt, tmp_path):
    argv = ["report", str(ckpt), "--out", str(tmp_path), "--qcfs-steps", "4", "--qffs-steps", "2"]
    assert main([*argv, "--energy-preset", "fp16"]) == EXIT_OK
    md = (tmp_path / "report.md").read_text()
    assert "| SOPs/inference | MACs/inference | energy (uJ) | energy / ANN |" in md and "spikes/neuron" in md
    assert "| ANN |" in md and "E_MAC 1.5 pJ, E_AC 0.4 pJ" in md
    rep = json.loads((tmp_path / "report.json").read_text())
    assert set(rep["energy"]) == {"qcfs", "qffs"}
    for method, e in rep["energy"].items():
        assert e["energy_model"]["name"] == "fp16"
        no, dc = e["runs"]["no_dc"], e["runs"]["dc"]
        assert dc["sops_per_inference"] <= no["sops_per_inference"]
        assert [p["layer"] for p in no["per_layer"]] == [p["layer"] for p in dc["per_layer"]]
        assert len(no["per_layer"]) >= 2 and e["ann"]["per_layer"]
        for run in (no, dc):
            _energy_ok(run, e["energy_model"])
        png = tmp_path / f"{method}_sops_per_layer.png"
        assert png.read_bytes()[:8] == PNG and f"{method}_sops_per_layer.png" in md
    rows = {r["method"]: r for r in rep["rows"]}
    assert len(rows) == 4
    for method in ("qcfs", "qffs"):
        runs = rep["energy"][method]["runs"]
        for mode, label in (("", "no_dc"), (" + DC", "dc")):
            row = rows[method.upper() + mode]
            assert row["sops_per_inference"] == runs[label]["sops_per_inference"]
            assert row["energy_uj"] == runs[label]["energy_uj"]
            assert row["ann_energy_uj"] == rep["energy"][method]["ann"]["energy_uj"]
            assert row["spikes_per_neuron"] > 0


def test_plot_sops_per_layer(tmp_path):
    net, shape = small("qcfs")
    engine = dcsim.Engine(net, count_ops=True)
    x = dyadic_inputs(8, shape, 2)
    runs = {"no_dc": engine.early_exit(x, 4, dcsim.Readout(), 1.0), "dc": engine.early_exit(x, 4, dcsim.Readout(), 0.5)}
    rep = energy.report(net, shape, runs)
    assert plot_sops_per_layer(rep, tmp_path / "s.png", "small").read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="runs"):
        plot_sops_per_layer({"ann": {}}, tmp_path / "t.png", "bad")
    assert not (tmp_path / "t.png").exists()


BAD = [
    (["--energy-preset", "fp64"], "--energy-preset"),
    (["--energy-preset", "FP32"], "--energy-preset"),
    (["--e-mac", "-1"], "--e-mac"),
    (["--e-mac", "nan"], "--e-mac"),
    (["--e-ac", "inf"], "--e-ac"),
    (["--e-ac", "-0.5"], "--e-ac"),
    (["--first-layer-macs", "twice"], "--first-layer-macs"),
    (["--first-layer-macs", "per_step"], "--first-layer-macs"),
]
COMMANDS = {
    "eval": ["eval", "{tmp}/m.safetensors", "--method", "qcfs", "--steps", "4", "--threshold", "0.5"],
    "report": ["report", "{tmp}/m.safetensors", "--out", "{tmp}/r"],
    "demo": ["demo", "--out", "{tmp}/d"],
    "reproduce": ["reproduce", "--out", "{tmp}/p"],
}


@pytest.mark.parametrize(("flags", "flag"), BAD)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_energy_flags_exit_2_naming_the_flag_and_write_nothing(tmp_path, capsys, command, flags, flag):
    before = sorted(tmp_path.rglob("*"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in COMMANDS[command]]
    assert main([*argv, *flags, "--json", str(tmp_path / "out.json")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err
    assert sorted(tmp_path.rglob("*")) == before


def test_presets_in_the_help_are_the_library_presets(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    for name, m in energy.PRESETS.items():
        assert f"{name} {m.e_mac:g}/{m.e_ac:g}" in " ".join(out.split())
