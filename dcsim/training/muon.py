"""The fast recipe's optimizer: orthogonalized momentum for conv filters, Nesterov SGD for the rest.

Designed after the fast CIFAR-10 trainers (Keller Jordan's airbench94 with Muon): each conv
filter bank W [out, in, kh, kw] that feeds a batch norm (so the network does not depend on its
scale) is renormalised to ||W|| = sqrt(out) before every step and moved by the momentum's
nearest semi-orthogonal matrix, found with a few Newton-Schulz iterations; biases, the linear
head and the LSQ step sizes take plain Nesterov SGD at their own learning rates. The learning
rates of all groups follow one schedule (see :func:`dcsim.training.loop.learning_rate`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..models.lsq import LSQActivation

NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Quintic iteration X <- a X + (b A + c A^2) X, A = X X^T: steep at zero (slope a), so three steps
bring each singular value of a matrix of unit Frobenius norm from 0.02 up into roughly [0.5, 1.5]
(the Muon optimizer's choice); smaller ones grow by up to a^3 and stay positive."""
FILTER_MOMENTUM = 0.6
OTHER_MOMENTUM = 0.85
BIAS_LR_PER_IMAGE = 0.053 / 0.24
"""Biases' learning rate per image of the batch, relative to the filters' (mean loss)."""
HEAD_LR_PER_IMAGE = 0.67 / 0.24
"""The head's learning rate per image of the batch times its input features squared, relative to
the filters' (mean loss; for a head initialised with weights of std 1 / features)."""
STEP_LR_RATIO = 1.0 / 3.0
"""LSQ step sizes' learning rate relative to the filters'."""


def orthogonalize(g: torch.Tensor, steps: int = 3) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with the singular vectors of ``g`` [m, n] (float32).

    Normalises g to unit Frobenius norm, then runs ``steps`` quintic Newton-Schulz iterations on
    the wide orientation (m <= n); singular values end in roughly [0.5, 1.5], not exactly 1 (see
    NEWTON_SCHULZ_COEFFICIENTS).
    """
    if g.ndim != 2:
        raise ValueError(f"orthogonalize: g must be a matrix [m, n], got shape {tuple(g.shape)}")
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    x = g / (g.norm() + 1e-7)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Groups with ``orthogonal=True`` take the filter update, the others Nesterov SGD with
    (coupled) weight decay. Per parameter the state holds ``momentum_buffer`` (as SGD's)."""

    def __init__(self, groups: Iterable[dict[str, Any]]) -> None:
        defaults = {"lr": 0.0, "momentum": OTHER_MOMENTUM, "weight_decay": 0.0, "orthogonal": False}
        super().__init__(list(groups), defaults)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("Muon.step takes no closure")
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd and not group["orthogonal"]:
                    g = g.add(p, alpha=wd)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = g.clone()
                else:
                    buf.mul_(mu).add_(g)
                update = g.add(buf, alpha=mu)  # Nesterov
                if group["orthogonal"]:
                    p.mul_(p.shape[0] ** 0.5 / p.norm().clamp_min(1e-12))
                    update = orthogonalize(update.reshape(p.shape[0], -1)).view_as(p)
                p.add_(update, alpha=-lr)


def muon_groups(model: nn.Module, batch_size: int) -> list[dict[str, Any]]:
    """Parameter groups of :class:`Muon` for ``model``, each with ``lr_ratio`` (its learning rate
    over the schedule's) and ``decays`` (whether weight decay applies):

    - "filters": the weights of every ``nn.Conv2d`` that trains (orthogonal; no decay);
    - "biases": every other 1-D parameter except batch-norm weights (left out: they stay as they
      are, 1 at initialisation), LSQ steps and the linear layers' biases, at BIAS_LR_PER_IMAGE * batch_size;
    - "head": the weights and biases of the ``nn.Linear`` layers, at HEAD_LR_PER_IMAGE * batch_size /
      in_features^2 (the largest in_features; the logits' biases at the biases' rate would swamp them);
    - "steps": the LSQ step sizes, at STEP_LR_RATIO, no decay.
    A parameter of another kind is an error naming it.
    """
    filters: list[nn.Parameter] = []
    biases: list[nn.Parameter] = []
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    features = max((m.in_features for m in linear), default=1)
    steps: list[nn.Parameter] = []
    heads: list[nn.Parameter] = []
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if isinstance(module, nn.Conv2d) and pname == "weight":
                filters.append(p)
            elif isinstance(module, nn.Linear) and pname in ("weight", "bias"):
                heads.append(p)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm) and pname == "weight":
                continue
            elif isinstance(module, LSQActivation) and pname == "step":
                steps.append(p)
            elif p.ndim == 1:
                biases.append(p)
            else:
                raise ValueError(f"muon: no update rule for parameter {name}.{pname} of shape {tuple(p.shape)}")
    groups = [
        {"params": filters, "lr_ratio": 1.0, "decays": False, "orthogonal": True, "momentum": FILTER_MOMENTUM,
         "name": "filters"},
        {"params": biases, "lr_ratio": BIAS_LR_PER_IMAGE * batch_size, "decays": True, "name": "biases"},
        {"params": heads, "lr_ratio": HEAD_LR_PER_IMAGE * batch_size / features**2, "decays": True, "name": "head"},
        {"params": steps, "lr_ratio": STEP_LR_RATIO, "decays": False, "name": "steps"},
    ]  # fmt: skip
    return [g for g in groups if g["params"]]


BATCHNORM_MOMENTUM = 0.4
"""The fast recipe's batch-norm running statistics: 0.4 of each new batch (PyTorch's convention)."""


def fast_recipe_init_(model: nn.Module) -> None:
    """The fast recipe's initialisation of a freshly built ``model``, in place: each trainable
    conv's first min(in, out) filters are the identity (dirac: filter i passes input channel i), each linear layer's weights are
    rescaled to a standard deviation of 1 / in_features (a small head, for the head's learning
    rate above), and batch norms keep running statistics with momentum BATCHNORM_MOMENTUM."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = BATCHNORM_MOMENTUM
            if isinstance(module, nn.Conv2d) and module.weight.requires_grad and module.groups == 1:
                nn.init.dirac_(module.weight[: module.in_channels])
            elif isinstance(module, nn.Linear):
                module.weight.mul_(1.0 / (module.weight.std() * module.in_features))
