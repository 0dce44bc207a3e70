"""``dcsim reproduce`` end to end on a tiny CIFAR-10-shaped set (the GPU command at toy scale), and its refusals."""

import json

import pytest

from dcsim.cli import EXIT_ERROR, EXIT_OK, main
from dcsim.workflows.reproduce import NAMES, OFFICIAL_QCFS_CURVE, untrained_reason


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory, make_cifar_folder):
    """train/<class>/*.png and test/<class>/*.png: 6 and 3 random 32x32 images per class (class-tinted)."""
    return make_cifar_folder(tmp_path_factory.mktemp("cifar"), 6, 3)


def test_reproduce_command_end_to_end_at_toy_scale(tiny_cifar, tmp_path):
    # the GPU command (bench/gpu_check.sh) with a tiny subset, one epoch per stage and 1/16 of the width
    out = tmp_path / "r18"
    rc = main(
        [
            "reproduce",
            "--dataset",
            "cifar10",
            "--data-root",
            str(tiny_cifar),
            "--arch",
            "resnet18",
            "--width",
            "4",
            "--float-epochs",
            "1",
            "--epochs",
            "1",
            "--train-subset",
            "40",
            "--val-size",
            "20",
            "--max-test",
            "20",
            "--min-accuracy",
            "0",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert rc == EXIT_OK
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete"
    assert list(results["stages"]) == ["data", "train", "ann", "calibration", "qcfs", "qffs"]
    report = json.loads((out / "report.json").read_text())
    assert [m["steps"] for m in report["methods"]] == [27, 4]  # the paper's T for ResNet-18
    assert len(report["methods"][0]["test_accuracy_vs_t"]) == 27 and report["test_samples"] == 20
    assert report["paper"]["official_qcfs_curve"] == OFFICIAL_QCFS_CURVE
    assert [r["method"] for r in report["rows"]] == ["QCFS", "QCFS + DC", "QFFS", "QFFS + DC"]
    md = (out / "report.md").read_text()
    assert "| ResNet-18 QCFS |" in md and "94.27% at 27" in md and "93.79%" in md and "3.02" in md
    assert (out / "zoo" / "manifest.json").exists()
    for name in (
        "model.safetensors",
        "qcfs_val_trace.npz",
        "qffs_test_trace.npz",
        "qcfs_front.png",
        "qcfs_accuracy_vs_t.png",
        "training_curve.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert report["training"]["completed"] and len(report["training"]["epochs"]) == 2


SMALL_CNN = ["reproduce", "--arch", "small_cnn", "--width", "4", "--train-subset", "64", "--quiet"]
"""``dcsim reproduce`` of a width-4 small CNN on 64 digits training images."""


def test_untrained_model_writes_no_report(tmp_path):
    out = tmp_path / "u"
    work = tmp_path / "work"  # --workdir is where the per-epoch state goes, not OUT/model.work
    work.mkdir()
    (work / "notes.txt").write_text("the user's")
    argv = ["--float-epochs", "1", "--epochs", "1", "--min-accuracy", "0.999", "--workdir", str(work)]
    rc = main([*SMALL_CNN, *argv, "--out", str(out)])
    assert rc == EXIT_ERROR
    # the finished run's state is removed from its working folder; the user's file stays
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"] and not (out / "model.work").exists()
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "untrained" and "below the floor" in results["message"]
    assert (out / "model.safetensors").exists() and not (out / "report.md").exists()


def test_budget_too_small_says_so(tmp_path, run_cli):
    out = tmp_path / "b"
    r = run_cli([*SMALL_CNN, "--budget-minutes", "0.0001", "--out", out])
    assert r.code == EXIT_ERROR and "too small" in r.err
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "failed" and "too small" in results["message"]
    assert not (out / "report.md").exists() and not (out / "model.safetensors").exists()


def test_reproduce_lsq_variant_from_a_stored_float_stage(tmp_path):
    stage = tmp_path / "float.safetensors"
    argv = [*SMALL_CNN, "--float-epochs", "1", "--epochs", "1", "--min-accuracy", "0", "--float-stage", str(stage)]
    assert main([*argv, "--out", str(tmp_path / "a")]) == EXIT_OK
    first = json.loads((tmp_path / "a" / "report.json").read_text())["training"]
    assert first["float_stage"] == {"path": str(stage), "read": False} and stage.exists()
    assert main([*argv, "--lsq-lr", "0.002", "--out", str(tmp_path / "b")]) == EXIT_OK
    second = json.loads((tmp_path / "b" / "report.json").read_text())["training"]
    assert second["float_stage"]["read"] and second["epochs"][0] == first["epochs"][0]
    assert second["epochs"][1] != first["epochs"][1]  # another LSQ stage
    assert "the float stage (1 epoch, " in (tmp_path / "b" / "report.md").read_text()
    assert "was read from" not in (tmp_path / "a" / "report.md").read_text()
    assert "bn_reestimate" not in first and "Batch-norm" not in (tmp_path / "a" / "report.md").read_text()
    assert "moving average" not in (tmp_path / "a" / "report.md").read_text()
    argv_c = [*argv, "--clip-mix", "0.5", "--bn-reestimate", "--ema", "0.9", "--out", str(tmp_path / "c")]
    assert main(argv_c) == EXIT_OK
    third = json.loads((tmp_path / "c" / "report.json").read_text())["training"]  # the same float stage
    assert third["float_stage"]["read"] and set(third["bn_reestimate"]) == {"val_before", "val_after", "seconds"}
    report_c = (tmp_path / "c" / "report.md").read_text()
    assert "Batch-norm statistics re-estimated after the LSQ stage" in report_c
    assert "trained_val_acc" in third["epochs"][1] and "trained_val_acc" not in third["epochs"][0]
    assert f"the network as trained scored {100 * third['epochs'][1]['trained_val_acc']:.2f}%" in report_c


def test_untrained_reason():
    assert untrained_reason({"completed": True}, 0.9, 0.5) is None
    assert "2 of 5" in untrained_reason({"completed": False, "epochs": [{}, {}], "planned_epochs": 5}, 0.9, 0.5)
    assert "below the floor" in untrained_reason({"completed": True}, 0.3, 0.5)


@pytest.mark.parametrize(("arch", "stem"), [("whitened_cnn", "spiking"), ("whitened_cnn_analog", "quantized")])
def test_reproduce_whitened_cnn_at_toy_scale(tiny_cifar, tmp_path, arch, stem):
    """The CPU command of the accuracy run (whitened CNNs, channels_last; the analog stem's with the quantized
    QCFS stem), at toy scale."""
    out = tmp_path / "w"
    argv = ["reproduce", "--dataset", "cifar10", "--data-root", str(tiny_cifar), "--arch", arch, "--qcfs-stem", stem]
    argv += ["--width", "4", "--float-epochs", "1", "--epochs", "1", "--train-subset", "40", "--val-size", "20"]
    argv += ["--max-test", "20", "--min-accuracy", "0", "--train-channels-last", "--quiet", "--out", str(out)]
    argv += ["--optimizer", "muon", "--lr", "0.24", "--lsq-lr", "0.06", "--weight-decay", "0.002"]
    argv += ["--train-batch-size", "10", "--schedule", "linear", "--warmup-epochs", "0", "--crop-padding", "2"]
    assert main(argv) == EXIT_OK
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == arch and [m["steps"] for m in report["methods"]] == [27, 4]
    assert report["paper"]["model"] == "resnet18"  # shown for reference, labelled as another network
    md = (out / "report.md").read_text()
    assert "paper's ResNet-18 (another network)" in md
    assert md.startswith(f"# dcsim reproduce: {NAMES[arch]} (width 4, 2-bit activations) on cifar10")
    assert report["training"]["runtime"]["channels_last"] is True
    assert [(m["method"], m["stem"]) for m in report["methods"]] == [("qcfs", stem), ("qffs", "spiking")]
    assert ("QCFS (quantized stem)" in md) == (stem == "quantized")


@pytest.mark.parametrize("case", ["unknown architecture", "not a CIFAR-10 root"])
def test_reproduce_refuses_before_training(tiny_cifar, tmp_path, capsys, case):
    out = tmp_path / "r"
    arch, root = "whitened_cnn", tiny_cifar
    if case == "unknown architecture":
        arch, code, needle = "resnet9000", 2, "--arch"
    else:
        root = tmp_path / "no-such-cifar"
        code, needle = 1, str(root)
    argv = ["reproduce", "--dataset", "cifar10", "--data-root", str(root), "--arch", arch, "--quiet", "--out", str(out)]
    try:
        rc = main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        rc = exit_.code
    assert rc == code
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (out / "model.safetensors").exists()
