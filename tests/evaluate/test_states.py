"""StateSet recording and its pickle-free file format."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autoquant.evaluate import StateSet, record_states


def test_pong_states_are_prepared_frames(pong_states) -> None:  # type: ignore[no-untyped-def]
    assert pong_states.states.shape == (128, 4, 84, 84)
    assert pong_states.states.dtype == np.float32
    assert 0.0 <= pong_states.states.min() and pong_states.states.max() <= 1.0


def test_recording_is_reproducible_and_round_trips(cartpole_dqn, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = record_states(cartpole_dqn, n=300, seed=3)
    b = record_states(cartpole_dqn, n=300, seed=3)
    np.testing.assert_array_equal(a.states, b.states)
    path = tmp_path / "states.npz"
    a.save(path)
    c = StateSet.load(path)
    np.testing.assert_array_equal(c.states, a.states)
    assert (c.env_id, c.seed) == ("CartPole-v1", 3)
