"""The command line's validation layer (dcsim.cli.checks): bad values and unwritable outputs exit 2 before any work."""

import pytest

from dcsim.cli import EXIT_USAGE, main


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
def test_bad_values_and_outputs_exit_2_naming_the_flag_and_write_nothing(tmp_path, capsys, argv, flag):
    (tmp_path / "file").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err
    assert sorted(tmp_path.rglob("*")) == before


def test_eval_needs_exactly_one_of_threshold_and_trace(tmp_path, capsys):
    ckpt = tmp_path / "m.safetensors"
    assert main(["eval", str(ckpt), "--method", "qcfs", "--steps", "4"]) == EXIT_USAGE
    assert "--threshold" in capsys.readouterr().err
    assert main(["eval", str(ckpt), "--method", "qcfs", "--threshold", "0.5"]) == EXIT_USAGE
    assert "--steps" in capsys.readouterr().err
