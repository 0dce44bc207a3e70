"""The command line's validation layer (dcsim.cli.checks): bad values and unwritable outputs exit 2 before any work."""

from pathlib import Path

import pytest

from dcsim.cli import EXIT_USAGE


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["train", "--epochs", "-1", "--out", "{tmp}/m.safetensors"], "--epochs"),
        (["train", "--train-batch-size", "0", "--out", "{tmp}/m.safetensors"], "--train-batch-size"),
        (["train", "--lr", "nan", "--out", "{tmp}/m.safetensors"], "--lr"),
        (["train", "--budget-minutes", "0", "--out", "{tmp}/m.safetensors"], "--budget-minutes"),
        (["demo", "--epochs", "1", "--tau", "0", "--out", "{tmp}/d"], "--tau"),
        (["train", "--out", "{tmp}"], "--out"),  # a folder where a file goes
        (["train", "--out", "{tmp}/file/m.safetensors"], "--out"),  # under a file
        (["demo", "--out", "{tmp}/file"], "--out"),  # a file where a folder goes
        (["demo", "--out", "{tmp}/d", "--json", "{tmp}"], "--json"),
        (["bench", "--processes", "0"], "--processes"),
        (["bench", "--processes", "2", "--stream", "4"], "--processes"),
    ],
)
def test_bad_values_and_outputs_exit_2_naming_the_flag_and_write_nothing(tmp_path, run_cli, argv, flag):
    (tmp_path / "file").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    r = run_cli([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert r.code == EXIT_USAGE and flag in r.err and "Traceback" not in r.err
    assert sorted(tmp_path.rglob("*")) == before


def test_eval_needs_exactly_one_of_threshold_and_trace(tmp_path, run_cli):
    ckpt = tmp_path / "m.safetensors"
    r = run_cli(["eval", ckpt, "--method", "qcfs", "--steps", "4"])
    assert r.code == EXIT_USAGE and "--threshold" in r.err
    r = run_cli(["eval", ckpt, "--method", "qcfs", "--threshold", "0.5"])
    assert r.code == EXIT_USAGE and "--steps" in r.err


@pytest.mark.parametrize(
    ("make", "flag"),
    [
        (lambda o: o.EvalOptions(o.ReadoutOptions("qcfs"), steps=4), "--threshold"),
        (lambda o: o.EvalOptions(o.ReadoutOptions("qcfs"), threshold=0.5), "--steps"),
        (lambda o: o.EvalOptions(o.ReadoutOptions("qcfs"), 4, 0.5, select_on_test=True), "--select-on-test"),
        (lambda o: o.ReadoutOptions("qcfs", semantics=o.Semantics.SETTLE), "--qffs-semantics"),
        (lambda o: o.ReadoutOptions("qffs", qcfs_stem="quantized"), "--qcfs-stem"),
        (lambda o: o.StreamOptions("qcfs", Path("t.npz"), qcfs_stem="analog"), "--qcfs-stem"),
        (lambda o: o.ReadoutOptions("qffs", tau="hot"), "--tau"),
        (lambda o: o.ReadoutOptions("qffs", alpha="-1"), "--alpha"),
        (lambda o: o.ReportOptions(tau="0"), "--tau"),
        (lambda o: o.DataOptions("cifar10"), "--data-root"),
        (lambda o: o.EnergyOptions(energy_preset="fp64"), "--energy-preset"),
        (lambda o: o.EnergyOptions(first_layer_macs="twice"), "--first-layer-macs"),
        (lambda o: o.TrainOptions(Path("m.safetensors"), cutout=8), "--augment"),
        (lambda o: o.BenchOptions(processes=0), "--processes"),
        (lambda o: o.BenchOptions(qcfs_stem="analog"), "--qcfs-stem"),
        (lambda o: o.BenchOptions(batches=(1, 0)), "--batches"),
    ],
)
def test_the_rules_between_flags_are_the_typed_options_own(make, flag):
    """A library user building the options gets the command line's refusals (the CLI raises them as exit 2)."""
    from dcsim.workflows import options

    with pytest.raises(ValueError, match=flag):
        make(options)


def test_train_defaults_agree_in_the_parser_the_options_and_the_config():
    """`dcsim train`'s flag defaults, TrainOptions' and TrainConfig's are written in three places: one value each."""
    from dataclasses import MISSING, fields

    from dcsim.cli.parser import build_parser
    from dcsim.training import TrainConfig
    from dcsim.workflows.options import TrainOptions

    args = vars(build_parser().parse_args(["train", "--out", "m.safetensors"]))
    options = {f.name: f.default for f in fields(TrainOptions) if f.default is not MISSING}
    assert options and {k: args[k] for k in options} == options
    config = {f.name: f.default for f in fields(TrainConfig)}
    shared = {k: v for k, v in options.items() if k in config} | {"batch_size": options["train_batch_size"]}
    assert len(shared) >= 15 and shared == {k: config[k] for k in shared}
