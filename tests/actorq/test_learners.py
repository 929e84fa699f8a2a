"""The learner registry of ``autoquant actorq run``: ``--learner`` and the learner options
are generated from it, every learner has a CartPole preset, and a learner given another
learner's hyperparameters is refused in one line. No Ray run here."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, cli_main


@pytest.fixture(scope="module")
def dqn_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example CartPole DQN with fc1 in int8, as an ActorQ bundle (a few hundred states)."""
    from autoquant.actorq import write_bundle
    from autoquant.compress import CompressionPlan, LayerSpec, compress
    from autoquant.evaluate import record_states
    from autoquant.policy import load_policy

    policy = load_policy(EXAMPLES / "cartpole_dqn.zip", env_id="CartPole-v1")
    states = record_states(policy, n=256, seed=0).states
    out = tmp_path_factory.mktemp("learners") / "bundle"
    write_bundle(compress(policy, CompressionPlan({"fc1": LayerSpec(8, 8)}), states, rounding="nearest"), out)
    return out


def _help() -> str:
    proc = cli_main("actorq", "run", "--help")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _squeezed(text: str) -> str:
    """``text`` without whitespace: argparse wraps help lines, at hyphens too."""
    return re.sub(r"\s+", "", text)


def _one_line(proc, *words: str) -> str:  # type: ignore[no-untyped-def]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.startswith("autoquant: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_help_lists_every_learner_and_its_options() -> None:
    from autoquant.actorq import learners

    text = _help()
    entries = learners()
    assert {"dqn", "ppo", "impala"} <= set(entries)
    choices = re.search(r"--learner \{([^}]*)\}", text)
    assert choices is not None and choices.group(1).split(",") == list(entries)
    for entry in entries.values():
        assert _squeezed(f"{entry.name}: {entry.help}") in _squeezed(text), entry.name
        for option in entry.options:
            assert re.search(rf"^\s+{re.escape(option.flag)} ", text, re.MULTILINE), (entry.name, option.flag)


def test_every_learner_has_a_cartpole_preset_of_its_own_type() -> None:
    from autoquant.actorq import learners

    for entry in learners().values():
        source, preset = entry.preset("CartPole-v1")
        assert isinstance(preset, entry.config) and "CartPole-v1" in source, (entry.name, source)
        fields = {f.name for f in dataclasses.fields(entry.config)}
        assert {option.field for option in entry.options} <= fields
        assert set(preset.to_json()) == fields


def test_a_learner_given_another_learners_hyperparameters_is_refused_in_one_line(dqn_bundle: Path) -> None:
    from autoquant.actorq import ActorRunConfig, learners, run_actorq
    from autoquant.errors import UsageError

    others = [entry for name, entry in learners().items() if name != "dqn"]
    assert others
    for other in others:
        _, wrong = other.preset("CartPole-v1")
        config = ActorRunConfig(bundle=str(dqn_bundle), env_id="CartPole-v1", learner=wrong, learner_algo="dqn")
        with pytest.raises(UsageError) as caught:
            run_actorq(config)  # refused before Ray starts
        message = str(caught.value)
        assert "\n" not in message and "DQN learner" in message and type(wrong).__name__ in message, message


def test_an_option_of_another_learner_or_an_unknown_learner_is_one_line(dqn_bundle: Path) -> None:
    proc = cli_main("actorq", "run", "--bundle", str(dqn_bundle), "--env", "CartPole-v1", "--n-steps", "64")
    _one_line(proc, "--n-steps sets a PPO or IMPALA learner's option", "this run's learner is DQN")
    proc = cli_main("actorq", "run", "--bundle", str(dqn_bundle), "--env", "CartPole-v1", "--learner", "a3c")
    _one_line(proc, "--learner", "a3c")
    proc = cli_main("actorq", "run", "--bundle", str(dqn_bundle), "--env", "CartPole-v1", "--batch-size", "0")
    _one_line(proc, "--batch-size", "expected an integer from 1")


def test_a_registered_learner_reaches_the_command_line() -> None:
    """A third learner is one entry: once registered, --learner and --help name it and its options."""
    from autoquant.actorq import DQN_LEARNER, LearnerOption, learners, register_learner

    extra = dataclasses.replace(DQN_LEARNER, name="dqn-copy", help="a copy of the DQN learner, for this test",
                                natural=(), options=(*DQN_LEARNER.options,
                                                     LearnerOption("--tau", "tau", float, "soft update coefficient")))
    register_learner(extra)
    try:
        text = _help()
        assert "{dqn,ppo,impala,dqn-copy}" in text and _squeezed("dqn-copy: a copy of the DQN learner") in _squeezed(text)
        assert _squeezed("--tau TAU learner: DQN-COPY: soft update coefficient") in _squeezed(text), text
    finally:
        learners().pop("dqn-copy")
