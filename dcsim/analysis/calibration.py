"""Temperature scaling (Guo et al., 2017) and expected calibration error.

The temperature tau is fitted on the quantized ANN's validation logits by minimizing the
negative log-likelihood of softmax(logits / tau); the SNN readout then uses S_t / (alpha * tau).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check_logits(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must have shape [N, K] with N >= 1, got {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape [{logits.shape[0]}], got {tuple(labels.shape)}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits contain NaN or infinite values")


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """tau > 0 minimizing NLL(softmax(logits / tau), labels); logits float [N, K], labels int64 [N].

    Optimizes log(tau) with L-BFGS in float64 (so tau stays positive).
    """
    _check_logits(logits, labels)
    z = logits.detach().double().cpu()
    y = labels.cpu()
    log_tau = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_tau], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_tau.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    tau = float(log_tau.detach().exp())
    if not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"temperature scaling diverged (tau={tau})")
    return tau


def nll(logits: torch.Tensor, labels: torch.Tensor, tau: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / tau)."""
    _check_logits(logits, labels)
    return float(F.cross_entropy(logits.double().cpu() / tau, labels.cpu()))


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> float:
    """ECE with ``bins`` equal-width confidence bins: sum_b |B|/N * |acc(B) - conf(B)|.

    confidence: float [N] in [0, 1]; correct: bool [N]. Bin b holds confidences in (b/B, (b+1)/B]
    (confidence 0 falls in the first bin).
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    conf = confidence.double().cpu()
    corr = correct.double().cpu()
    if conf.shape != corr.shape or conf.dim() != 1 or conf.numel() == 0:
        raise ValueError("confidence and correct must be non-empty 1-D tensors of equal length")
    idx = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if bool(sel.any()):
            ece += float(sel.double().mean()) * abs(float(corr[sel].mean()) - float(conf[sel].mean()))
    return ece


def calibration_report(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict:
    """Fit tau and report NLL and ECE before and after: {"tau", "nll_before", "nll_after", "ece_before", "ece_after"}."""
    tau = fit_temperature(logits, labels)
    correct = logits.argmax(1).cpu() == labels.cpu()
    p1 = torch.softmax(logits.double(), 1).max(1).values
    p2 = torch.softmax(logits.double() / tau, 1).max(1).values
    return {
        "tau": tau,
        "nll_before": nll(logits, labels),
        "nll_after": nll(logits, labels, tau),
        "ece_before": expected_calibration_error(p1, correct, bins),
        "ece_after": expected_calibration_error(p2, correct, bins),
    }
