"""The command line's validation layer (dcsim.cli.checks): bad values and unwritable outputs exit 2 before any work."""

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
