"""Fidelity on recorded states: does the compressed network act like the fp32 one?"""

from __future__ import annotations

from typing import Any

import numpy as np

from autoquant.policy import ActionSpec

__all__ = ["fidelity", "value_retention"]


def fidelity(reference: np.ndarray, candidate: np.ndarray, action: ActionSpec) -> dict[str, Any]:
    """Compare raw outputs of both networks on the same (held-out) states.

    Discrete actions: ``action_agreement`` (share of states with the same greedy
    action) and ``value_retention`` (see there). Continuous: ``action_error`` (mean |difference| of the actions, as a
    fraction of the half range of the action space). Both: ``output_error``, the
    mean |difference| of the Q-values / logits / means relative to their mean size.
    """
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    diff = np.abs(candidate - reference)
    scale = float(np.mean(np.abs(reference))) or 1.0
    out: dict[str, Any] = {
        "states": int(len(reference)),
        "output_error": float(diff.mean() / scale),
        "output_max_abs_error": float(diff.max()) if diff.size else 0.0,
        "output_mse": float(np.mean(diff ** 2) / (float(np.mean(reference ** 2)) or 1.0)) if diff.size else 0.0,
    }
    if action.discrete:
        agree = action.actions(reference) == action.actions(candidate)
        out["action_agreement"] = float(np.mean(agree))
        out["value_retention"] = value_retention(reference, candidate, action)
    else:
        a_ref = action.actions(reference).astype(np.float64)
        a_cand = action.actions(candidate).astype(np.float64)
        if action.low is not None:
            half = (np.array(action.high) - np.array(action.low)).reshape(action.action_shape) / 2
        else:
            half = np.ones(action.action_shape)
        out["action_error"] = float(np.mean(np.abs(a_cand - a_ref) / half))
    return out


def value_retention(reference: np.ndarray, candidate: np.ndarray, action: ActionSpec) -> float:
    """How much of fp32's own preference the candidate's actions keep, judged by fp32.

    On each state the candidate's greedy action costs ``regret = s[a_fp32] - s[a_cand]`` of
    fp32's scores ``s`` (Q-values, or logits); a uniformly random action costs
    ``s[a_fp32] - mean(s)``. Returns ``1 - mean(regret) / mean(random regret)``: 1 when every
    action agrees, 0 for acting at random. Unlike agreement it forgives disagreeing where
    fp32 itself hardly minds, and weighs disagreeing where it matters.
    """
    scores = np.asarray(action.scores(np.asarray(reference, dtype=np.float64)), dtype=np.float64)
    chosen = action.actions(np.asarray(candidate, dtype=np.float32))
    best = scores.max(axis=1)
    regret = best - scores[np.arange(len(scores)), chosen]
    random_regret = best - scores.mean(axis=1)
    denominator = float(random_regret.mean())
    if denominator <= 0.0:
        return 1.0 if float(regret.mean()) <= 0.0 else 0.0
    return float(1.0 - regret.mean() / denominator)
