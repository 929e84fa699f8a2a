"""Fine-tuning by distillation: the compressed network learns to reproduce the fp32
policy's outputs on recorded states, through its quantizers (quantization-aware), and
then, DAgger-style, on the states it visits itself, labelled by the fp32 policy.

States recorded from fp32 alone are not enough where a plan changes behaviour: what
goes wrong happens in states fp32 never visits (see ``tests/compress/test_finetune.py``)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["FinetuneResult", "dagger", "distill"]


@dataclass(frozen=True)
class FinetuneResult:
    epochs: int  # epochs of the first distillation that ran (fewer than asked where the deadline came)
    loss_before: float
    loss_after: float
    rounds: int = 0  # DAgger rounds after the first distillation
    states: int = 0  # states distilled on in the last round (recorded + visited)
    lr: float | None = None  # the learning rate the last epoch ran at (after any back-off)
    deadline_reached: bool = False  # stopped at the caller's deadline, the best epoch so far kept

    def to_json(self) -> dict[str, float | int | bool | None]:
        return {"epochs": self.epochs, "loss_before": self.loss_before, "loss_after": self.loss_after,
                "rounds": self.rounds, "states": self.states, "lr": self.lr,
                "deadline_reached": self.deadline_reached}


def _past(deadline: float | None) -> bool:
    """Whether ``deadline`` (a ``time.perf_counter()`` value) has come."""
    return deadline is not None and time.perf_counter() >= deadline


BACKOFF = 10.0  # the learning rate's divisor after an epoch that blew the loss up
BLOWUP = 1.5  # an epoch that leaves the loss above this multiple of the best so far blew it up
TEMPERATURE_SHARE = 0.5  # the distillation temperature, as a share of the teacher's typical action spread
VALUE_WEIGHT = 1e-3  # the MSE term beside the KL for discrete actions: keeps the values on scale
GAP_FLOOR = 0.1  # gap weighting: a state with no gap weighs (1 / GAP_FLOOR) / (1 / (1 + GAP_FLOOR)) = 11x a median one


def temperature(target: torch.Tensor) -> float:
    """The softmax temperature at which the teacher's action preferences are neither
    one-hot nor flat: half the median (over states) standard deviation of its outputs
    over actions. Q-values differ between actions by a thousandth of their size (CartPole:
    Q ~ 105, gaps ~ 0.15), so no fixed temperature suits every network."""
    spread = float(target.std(dim=1).median()) if target.shape[1] > 1 else 0.0
    return max(TEMPERATURE_SHARE * spread, 1e-6)


def _objective(out: torch.Tensor, target: torch.Tensor, tau: float | None,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """Discrete actions (``tau`` set): the KL divergence between the teacher's and the
    student's softmax at temperature ``tau`` (policy distillation, Rusu et al. 2016: the
    greedy action is what must survive), plus a small MSE that keeps the values on scale;
    ``weights`` (one per state, mean 1) weigh each state's KL. Continuous actions (``tau``
    None): MSE on the outputs."""
    mse = nn.functional.mse_loss(out, target)
    if tau is None:
        return mse
    kl = nn.functional.kl_div(nn.functional.log_softmax(out / tau, dim=1),
                              nn.functional.log_softmax(target / tau, dim=1), reduction="none", log_target=True)
    per_state = kl.sum(dim=1)
    kl_mean = (per_state * weights).mean() if weights is not None else per_state.mean()
    return kl_mean + VALUE_WEIGHT * mse


def gap_weights(target: torch.Tensor) -> torch.Tensor:
    """Per state, more weight where the teacher's top two actions are close: 1 / (gap / m +
    GAP_FLOOR) with m the median gap, scaled to mean 1. The states where a small error flips
    the greedy action are the ones distillation must get right (the fragile states of the
    QBC / SQIL line of work)."""
    top2 = target.topk(2, dim=1).values
    gap = (top2[:, 0] - top2[:, 1]).clamp(min=0)
    scale = float(gap.median()) or 1.0
    w = 1.0 / (gap / scale + GAP_FLOOR)
    return w / w.mean()


def _loss(student: nn.Module, x: torch.Tensor, target: torch.Tensor, tau: float | None,
          weights: torch.Tensor | None = None) -> float:
    student.eval()
    with torch.no_grad():
        out = torch.cat([student(x[i:i + 256]) for i in range(0, len(x), 256)])
        return float(_objective(out, target, tau, weights))


def distill(student: nn.Module, teacher: nn.Module, states: np.ndarray, *, epochs: int = 5,
            lr: float = 1e-3, batch_size: int = 64, seed: int = 0, discrete: bool = False,
            deadline: float | None = None, gap_weighted: bool = False) -> FinetuneResult:
    """Train ``student`` in place to match ``teacher`` on ``states`` (quantization-aware
    when the student has quantizers). ``discrete``: the outputs are Q-values or logits of
    discrete actions (see ``_objective``).

    An epoch that leaves the loss on ``states`` above ``BLOWUP`` times the best so far is
    undone and the learning rate divided by ``BACKOFF``: the step size that suits an MLP
    (1e-3 on CartPole) wrecks the Pong CNN, whose held-out agreement 1e-3 took from 0.977
    to 0.637 and 1e-5 to 0.996 (10 epochs), so no fixed rate serves both. The weights of
    the epoch with the lowest loss are kept. At ``deadline`` (a ``time.perf_counter()``
    value) no further epoch starts: the best epoch so far is kept. ``gap_weighted``
    (discrete actions): each state's KL weighted by ``gap_weights``."""
    x = torch.as_tensor(np.asarray(states, dtype=np.float32))
    with torch.no_grad():
        teacher.eval()
        target = torch.cat([teacher(x[i:i + 256]) for i in range(0, len(x), 256)])
    tau = temperature(target) if discrete else None
    weights = gap_weights(target) if gap_weighted and discrete and target.shape[1] > 1 else None
    params = [p for p in student.parameters()]
    for p in params:
        p.requires_grad_(True)
    before = best = _loss(student, x, target, tau, weights)
    best_state = copy.deepcopy(student.state_dict())
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(params, lr=lr)
    ran = 0
    for _ in range(epochs):
        if _past(deadline):
            break
        ran += 1
        student.train()
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            optimizer.zero_grad()
            loss = _objective(student(x[idx]), target[idx], tau, None if weights is None else weights[idx])
            loss.backward()
            optimizer.step()
        after = _loss(student, x, target, tau, weights)
        if not after <= BLOWUP * best:  # the steps are too large for this network: back, smaller, fresh moments
            student.load_state_dict(best_state)
            lr /= BACKOFF
            optimizer = torch.optim.Adam(params, lr=lr)
        elif after < best:
            best, best_state = after, copy.deepcopy(student.state_dict())
    student.load_state_dict(best_state)  # the epoch with the lowest loss
    student.eval()
    for p in params:
        p.requires_grad_(False)
    return FinetuneResult(epochs=ran, loss_before=before, loss_after=best, lr=lr, deadline_reached=ran < epochs)


def dagger(student: nn.Module, teacher: nn.Module, states: np.ndarray, *, rounds: int,
           visit: Callable[[], np.ndarray] | None, deadline: float | None = None,
           **options: float | int) -> FinetuneResult:
    """Distill on ``states``, then ``rounds`` times: add the states the student visits
    itself (``visit()``: states the student, as it now is, visits acting greedily) and
    distill on all of them, continuing from the weights so far and at the learning rate the
    previous round ended at. ``options``: ``distill``'s. At ``deadline`` (see ``distill``)
    no further epoch or round starts."""
    if rounds and visit is None:
        raise ValueError("DAgger rounds need visit(): the states the student visits itself")
    data = np.asarray(states, dtype=np.float32)
    first = distill(student, teacher, data, deadline=deadline, **options)  # type: ignore[arg-type]
    last, ran = first, 0
    for _ in range(rounds):
        if _past(deadline):
            break
        ran += 1
        data = np.concatenate([data, np.asarray(visit(), dtype=np.float32)])  # type: ignore[misc]
        options = {**options, "lr": last.lr}  # type: ignore[dict-item]  # where the back-off left it
        last = distill(student, teacher, data, deadline=deadline, **options)  # type: ignore[arg-type]
    return FinetuneResult(epochs=first.epochs, loss_before=first.loss_before, loss_after=last.loss_after,
                          rounds=ran, states=len(data), lr=last.lr,
                          deadline_reached=first.deadline_reached or last.deadline_reached or ran < rounds)
