"""RunConfig: frozen, validated when made, read back from run.json without trust."""

from __future__ import annotations

import dataclasses

import pytest

from autoquant.errors import TargetError, UsageError
from autoquant.search import RunConfig


def test_defaults_are_valid_and_frozen() -> None:
    config = RunConfig(policy="p.zip")
    assert config.settings.min_retention == 0.98 and config.settings.mode == "single"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_trials = 3  # type: ignore[misc]
    assert config.replace(n_trials=3).n_trials == 3 and config.n_trials == 200


@pytest.mark.parametrize(("changes", "error", "words"), [
    ({"agent": "dqn"}, UsageError, "unknown agent 'dqn'"),
    ({"method": "everything"}, UsageError, "unknown search space 'everything'"),
    ({"target": "gpu9000"}, TargetError, "unknown target 'gpu9000'"),
    ({"n_trials": 0}, UsageError, "--trials must be an integer from 1 to 100,000"),
    ({"n_trials": True}, UsageError, "--trials must be an integer from 1 to 100,000"),
    ({"n_trials": 10**9}, UsageError, "--trials must be an integer from 1 to 100,000"),
    ({"n_states": 10**9}, UsageError, "--states must be an integer from 1 to 65,536"),
    ({"seed": 2**64}, UsageError, "--seed must be an integer from 0 to 2,147,483,647"),
    ({"finetune_epochs": 10**20}, UsageError, "--finetune (epochs) must be an integer from 0 to 1,000"),
    ({"episodes": 10**6}, UsageError, "--episodes must be an integer from 1 to 10,000"),
    ({"min_retention": 2.0}, UsageError, "--min-retention must be in (0, 1.5]"),
    ({"mode": "best"}, UsageError, "mode must be one of"),
    ({"fidelity_floor": 1.5}, UsageError, "--fidelity-floor must be in [0, 1]"),
    ({"policy": ""}, UsageError, "needs a policy file"),
    ({"confidence": 1.0}, UsageError, "--confidence must be in [0.5, 1)"),
    ({"proxy_states": 0}, UsageError, "--proxy-states must be an integer from 1 to 65,536"),
])
def test_bad_values_are_refused_when_made(changes: dict, error: type, words: str) -> None:
    with pytest.raises(error, match=None) as info:
        RunConfig(**{"policy": "p.zip", **changes})
    assert words in str(info.value)


def test_round_trip_and_no_trust_from_the_file() -> None:
    config = RunConfig(policy="p.zip", conv_strides=(4, 2, 1), argv=("autoquant", "search"))
    data = config.to_json()
    assert data["conv_strides"] == [4, 2, 1] and "trust_pickle" not in data
    assert RunConfig.from_json(data) == config
    assert RunConfig.from_json({**data, "trust_pickle": True}) == config  # an older run.json's key means nothing
