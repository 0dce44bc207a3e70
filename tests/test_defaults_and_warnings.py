"""The default `dcsim bench` set on a CPU, its progress line, and convert()'s warning for LSQ
layers whose step size was never initialised."""

import warnings

import pytest
import torch
from torch import nn

import dcsim
from dcsim.models.lsq import LSQActivation
from dcsim.workflows.benchmark import FULL_MODELS, progress_line, skipped_models, standard_set


def test_cpu_default_bench_set_is_the_quick_one_and_names_what_it_skips():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    default = standard_set(cpu)
    assert default == standard_set(cpu, quick=True)
    assert {m for m, _, _ in default} == {"small_cnn", "resnet18"}
    assert skipped_models(default) == ["vgg16", "resnet50"]
    full = standard_set(cpu, full=True)
    assert {m for m, _, _ in full} == set(FULL_MODELS) and skipped_models(full) == []
    assert standard_set(gpu) == standard_set(gpu, full=True)
    with pytest.raises(ValueError, match="exclude"):
        standard_set(cpu, quick=True, full=True)


def test_progress_line_estimates_the_time_left():
    assert progress_line(2, 8, 30.0, "cases") == "[2/8] cases; 30 s elapsed, about 90 s left"


def _model(bits: int = 2) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), LSQActivation(bits), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()


def test_convert_warns_about_never_initialised_steps():
    with pytest.warns(UserWarning, match=r"LSQActivation layer\(s\) '1' still have the untrained step size 1\.0"):
        dcsim.convert(_model())


def test_convert_is_silent_for_initialised_or_set_steps():
    trained = _model().train()
    trained(torch.randn(4, 1, 6, 6))  # the LSQ initialisation from data
    chosen = _model()
    with torch.no_grad():
        chosen[1].step.fill_(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dcsim.convert(trained.eval())
        dcsim.convert(chosen)
