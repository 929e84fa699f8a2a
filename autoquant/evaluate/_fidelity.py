"""Fidelity on recorded states: does the compressed network act like the fp32 one?"""

from __future__ import annotations

from typing import Any

import numpy as np

from autoquant.policy import ActionSpec

__all__ = ["fidelity"]


def fidelity(reference: np.ndarray, candidate: np.ndarray, action: ActionSpec) -> dict[str, Any]:
    """Compare raw outputs of both networks on the same (held-out) states.

    Discrete actions: ``action_agreement`` (share of states with the same greedy
    action). Continuous: ``action_error`` (mean |difference| of the actions, as a
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
    }
    if action.discrete:
        agree = action.actions(reference) == action.actions(candidate)
        out["action_agreement"] = float(np.mean(agree))
    else:
        a_ref = action.actions(reference).astype(np.float64)
        a_cand = action.actions(candidate).astype(np.float64)
        if action.low is not None:
            half = (np.array(action.high) - np.array(action.low)).reshape(action.action_shape) / 2
        else:
            half = np.ones(action.action_shape)
        out["action_error"] = float(np.mean(np.abs(a_cand - a_ref) / half))
    return out
