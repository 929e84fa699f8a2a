"""RunConfig: frozen, validated when made (each check in one place: the scoring settings in
ProblemSettings, the rest in RunConfig), read back from run.json without trust."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from autoquant.errors import TargetError, UsageError
from autoquant.search import ProblemSettings, RunConfig


def test_defaults_are_valid_and_frozen() -> None:
    config = RunConfig(policy=Path("p.zip"))
    assert config.settings == ProblemSettings() and config.settings.min_retention == 0.98
    assert config.policy == Path("p.zip") and RunConfig(policy="p.zip") == config  # a path, however given
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_trials = 3  # type: ignore[misc]
    assert config.replace(n_trials=3).n_trials == 3 and config.n_trials == 200


def test_the_target_is_resolved_once_and_kept_by_replace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The target's TOML is read when the config is made, not again by each copy of it."""
    import autoquant.search._artifacts as artifacts

    reads: list[str] = []
    real = artifacts.find_target_spec
    monkeypatch.setattr(artifacts, "find_target_spec", lambda name: reads.append(name) or real(name))
    config = RunConfig(policy=Path("p.zip"))
    again = config.replace(n_trials=3).replace(policy=Path("q.zip"), env_id="CartPole-v1")
    assert reads == ["host"] and again.spec is config.spec and again.spec.name == "host"
    assert config.replace(target="arm-a72-emulated").spec.name == "arm-a72-emulated" and len(reads) == 2


@pytest.mark.parametrize(("changes", "error", "words"), [
    ({"agent": "dqn"}, UsageError, "unknown agent 'dqn'"),
    ({"method": "everything"}, UsageError, "unknown search space 'everything'"),
    ({"target": "gpu9000"}, TargetError, "unknown target 'gpu9000'"),
    ({"n_trials": 0}, UsageError, "--trials must be an integer from 1 to 100,000"),
    ({"n_trials": True}, UsageError, "--trials must be an integer from 1 to 100,000"),
    ({"n_trials": 10**9}, UsageError, "--trials must be an integer from 1 to 100,000"),
    ({"n_states": 10**9}, UsageError, "--states must be an integer from 1 to 65,536"),
    ({"confirm_episodes": 0}, UsageError, "--confirm-episodes must be an integer from 1 to 10,000"),
    ({"time_budget_s": float("inf")}, UsageError, "--time-budget must be a positive number of seconds"),
    ({"time_budget_s": -1.0}, UsageError, "--time-budget must be a positive number of seconds"),
    ({"policy": ""}, UsageError, "needs a policy file"),
    ({"settings": {"min_retention": 0.9}}, UsageError, "a run's settings are a ProblemSettings"),
])
def test_bad_values_are_refused_when_made(changes: dict, error: type, words: str) -> None:
    with pytest.raises(error) as info:
        RunConfig(**{"policy": "p.zip", **changes})
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("changes", "words"), [
    ({"seed": 2**64}, "--seed must be an integer from 0 to 2,147,483,647"),
    ({"finetune_epochs": 10**20}, "--finetune (epochs) must be an integer from 0 to 1,000"),
    ({"episodes": 10**6}, "--episodes must be an integer from 1 to 10,000"),
    ({"min_retention": 2.0}, "--min-retention must be in (0, 1.5]"),
    ({"min_retention": "high"}, "--min-retention must be in (0, 1.5], got 'high'"),
    ({"mode": "best"}, "mode must be one of"),
    ({"fidelity_floor": 1.5}, "--fidelity-floor must be in [0, 1]"),
    ({"confidence": 1.0}, "--confidence must be in [0.5, 1)"),
    ({"proxy_states": 0}, "--proxy-states must be an integer from 1 to 65,536"),
    ({"n_envs": 0}, "--envs must be an integer from 1 to 256"),
    ({"bias_correction": "yes"}, "bias_correction must be true or false, got 'yes'"),
])
def test_bad_settings_are_refused_by_the_settings(changes: dict, words: str) -> None:
    with pytest.raises(UsageError) as info:
        ProblemSettings(**changes)
    assert words in str(info.value)


def test_round_trip_and_no_trust_from_the_file() -> None:
    config = RunConfig(policy="p.zip", conv_strides=(4, 2, 1), argv=("autoquant", "search"),
                       settings=ProblemSettings(min_retention=0.9, seed=3))
    data = config.to_json()
    assert data["conv_strides"] == [4, 2, 1] and data["policy"] == "p.zip" and "trust_pickle" not in data
    assert data["settings"]["min_retention"] == 0.9 and "min_retention" not in data and "target_spec" not in data
    assert RunConfig.from_json(data) == config
    assert RunConfig.from_json({**data, "trust_pickle": True}) == config  # an older run.json's key means nothing
    with pytest.raises(UsageError, match="config.settings"):
        RunConfig.from_json({k: v for k, v in data.items() if k != "settings"})


def test_bias_correction_is_on_for_new_runs_and_off_for_runs_made_before_it() -> None:
    """A run.json written before the setting existed built its plans without bias correction,
    and resuming it must build them so again."""
    assert ProblemSettings().bias_correction is True
    data = RunConfig(policy="p.zip").to_json()
    assert data["settings"]["bias_correction"] is True and RunConfig.from_json(data).settings.bias_correction
    older = {**data, "settings": {k: v for k, v in data["settings"].items() if k != "bias_correction"}}
    assert RunConfig.from_json(older).settings.bias_correction is False
    off = RunConfig(policy="p.zip", settings=ProblemSettings(bias_correction=False))
    assert RunConfig.from_json(off.to_json()) == off
