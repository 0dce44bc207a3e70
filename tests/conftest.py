"""Shared test configuration: hypothesis profiles for the property tests (tests/test_properties.py).

``ci`` (default): derandomized (the same examples on every run), a bounded number of examples,
no per-example deadline (shared CI machines have noisy timings) and no example database.
``long``: 100 times the examples of ``ci``. Choose with DCSIM_HYPOTHESIS_PROFILE=long.

Shared fixtures: ``run_cli`` (a ``dcsim`` command with its exit code and captured output),
``digits_checkpoint`` (a trained digits model, made once per session), ``checkpoint_meta`` (the
metadata of a small digits CNN), ``make_cifar_folder`` (a tiny CIFAR-10-shaped image folder) and ``torch_threads``
(torch's intra-op threads set for one test, restored after it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from PIL import Image

from dcsim.cli import EXIT_OK, main
from dcsim.conversion.official import CIFAR10_CLASSES
from dcsim.data import load_digits_splits

CI_EXAMPLES = 30
settings.register_profile(
    "ci",
    max_examples=CI_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("long", settings.get_profile("ci"), max_examples=100 * CI_EXAMPLES)
settings.load_profile(os.environ.get("DCSIM_HYPOTHESIS_PROFILE", "ci"))


# ------------------------------------------------------------------ shared fixtures


class CliResult(NamedTuple):
    """What one ``dcsim`` command did: its exit code and what it wrote to stdout and stderr."""

    code: int
    out: str
    err: str


@pytest.fixture()
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[[Sequence[str | Path]], CliResult]:
    """``run_cli([...])``: ``dcsim.cli.main`` on the arguments (as strings), with its own stdout and stderr captured."""

    def run(argv: Sequence[str | Path]) -> CliResult:
        capsys.readouterr()  # drop what came before
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture()
def torch_threads() -> Iterator[Callable[[int], None]]:
    """``torch_threads(n)``: torch's intra-op threads set to n for the rest of the test, restored after it."""
    saved = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A width-8 small CNN trained by ``dcsim train`` on digits (2 float + 3 LSQ epochs, on the CPU), made
    once per session; ``dcsim train --json`` wrote its summary beside it (same name, ``.json``)."""
    out = tmp_path_factory.mktemp("digits-checkpoint") / "model.safetensors"
    argv = ["train", "--epochs", "3", "--float-epochs", "2", "--lr", "0.05", "--width", "8", "--device", "cpu"]
    assert main([*argv, "--quiet", "--out", str(out), "--json", str(out.with_suffix(".json"))]) == EXIT_OK
    return out


@pytest.fixture()
def checkpoint_meta() -> dict[str, Any]:
    """Checkpoint metadata of a width-4, 2-bit small CNN on digits (classes and normalization of the digits splits)."""
    test = load_digits_splits(seed=0)["test"]
    return {
        "architecture": "small_cnn",
        "arch_kwargs": {"num_classes": 10, "in_channels": 1, "bits": 2, "width": 4},
        "classes": test.classes,
        "normalization": {"mean": list(test.mean), "std": list(test.std)},
        "dataset": "digits",
        "accuracy": {},
    }


@pytest.fixture(scope="session")
def make_cifar_folder() -> Callable[[Path, int, int], Path]:
    """``make_cifar_folder(root, train_per_class, test_per_class)``: root/{train,test}/<CIFAR-10 class>/*.png,
    random 32x32 images (seeded) with one channel tinted by the class; returns ``root``."""

    def make(root: Path, train_per_class: int, test_per_class: int) -> Path:
        rng = np.random.default_rng(0)
        for split, n in (("train", train_per_class), ("test", test_per_class)):
            for c, name in enumerate(CIFAR10_CLASSES):
                (root / split / name).mkdir(parents=True)
                for i in range(n):
                    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                    img[..., c % 3] = 40 + 20 * c
                    Image.fromarray(img).save(root / split / name / f"{i}.png")
        return root

    return make
