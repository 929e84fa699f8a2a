"""The asynchronous IMPALA learner with V-trace, and the monitor: V-trace against the paper's
sum, re-calibration against the bundle's own calibration, the monitor's decisions on real
quantized networks, and a real run on local Ray actors."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.actorq.conftest import CARTPOLE_BOUNDS
from tests.actorq.test_run import _assert_one_line
from tests.conftest import cli_main, policy_path

PPO_ZIP = ("ppo-CartPole-v1", "CartPole-v1.zip")


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _paper_vtrace(log_rhos: np.ndarray, discounts: np.ndarray, rewards: np.ndarray, values: np.ndarray,
                  bootstrap: np.ndarray, rho_bar: float, c_bar: float) -> np.ndarray:
    """v_s = V(x_s) + sum_{t>=s} (prod_{i<t} gamma_i) (prod_{s<=i<t} c_i) rho_t delta_t (IMPALA, eq. 1),
    written out as the double sum, with gamma_i the discount after step i."""
    rhos = np.exp(log_rhos)
    T, B = values.shape
    following = np.concatenate([values[1:], bootstrap[None]])
    vs = np.array(values, dtype=np.float64)
    for s in range(T):
        for b in range(B):
            factor = 1.0
            for t in range(s, T):
                delta = min(rho_bar, rhos[t, b]) * (rewards[t, b] + discounts[t, b] * following[t, b] - values[t, b])
                vs[s, b] += factor * delta
                factor *= discounts[t, b] * min(c_bar, rhos[t, b])
    return vs


def test_vtrace_is_the_papers_sum_and_on_policy_gives_n_step_returns() -> None:
    from autoquant.actorq._impala import vtrace

    rng = np.random.default_rng(0)
    T, B = 7, 3
    values, rewards = rng.normal(size=(T, B)), rng.normal(size=(T, B))
    discounts = np.where(rng.random((T, B)) < 0.2, 0.0, 0.9)  # some episodes end inside the unroll
    bootstrap = rng.normal(size=B)
    log_rhos = rng.normal(scale=0.8, size=(T, B))  # weights well above and below the clips
    for rho_bar, c_bar in ((1.0, 1.0), (2.0, 1.5)):
        vs, advantages = vtrace(log_rhos, discounts, rewards, values, bootstrap, rho_bar=rho_bar, c_bar=c_bar)
        want = _paper_vtrace(log_rhos, discounts, rewards, values, bootstrap, rho_bar, c_bar)
        np.testing.assert_allclose(vs, want, rtol=1e-12, atol=1e-12)
        following = np.concatenate([want[1:], bootstrap[None]])
        np.testing.assert_allclose(advantages, np.minimum(rho_bar, np.exp(log_rhos))
                                   * (rewards + discounts * following - values), rtol=1e-12, atol=1e-12)
    # On-policy (every ratio 1): the targets are the discounted returns, bootstrapped at the end.
    vs, _ = vtrace(np.zeros((T, B)), discounts, rewards, values, bootstrap)
    returns = np.empty((T, B))
    acc = bootstrap.copy()
    for t in range(T - 1, -1, -1):
        acc = rewards[t] + discounts[t] * acc
        returns[t] = acc
    np.testing.assert_allclose(vs, returns, rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def calibration_states() -> np.ndarray:
    """The states ``ppo_bundle`` was calibrated on (conftest makes them the same way)."""
    from autoquant.evaluate import record_states
    from autoquant.policy import load_policy

    policy = load_policy(policy_path(*PPO_ZIP), env_id="CartPole-v1")
    states = record_states(policy, n=1024, seed=0).states
    spread = np.random.default_rng(0).uniform(*CARTPOLE_BOUNDS, size=(1024, 4)).astype(np.float32)
    return np.concatenate([states, spread])


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    """The reference CartPole PPO's policy state dict (what its learner would broadcast)."""
    with zipfile.ZipFile(policy_path(*PPO_ZIP)) as z:
        state = torch.load(io.BytesIO(z.read("policy.pth")), weights_only=True, map_location="cpu")
    return {key: value.numpy() for key, value in state.items()}


def test_recalibration_on_the_calibration_states_gives_the_bundles_scales(
        ppo_bundle: Path, calibration_states: np.ndarray, weights: dict[str, np.ndarray]) -> None:
    from autoquant.actorq import ActorQuantizer, load_bundle
    from autoquant.actorq._monitor import activation_inputs, recalibrated
    from autoquant.compress import percentile_scale

    bundle = load_bundle(ppo_bundle)
    inputs = activation_inputs(bundle, weights, calibration_states)
    assert sorted(inputs) == ["fc1", "fc2", "fc3"]
    for name, x in inputs.items():
        act = bundle.manifest["layers"][name]["input_activation"]
        assert percentile_scale(x, signed=act["signed"]) == act["scale"], name  # exactly what calibration found
    x, _ = ActorQuantizer(bundle).build(weights).prepare(calibration_states)
    before = ActorQuantizer(bundle).build(weights).forward(x)
    same = recalibrated(bundle, {name: bundle.manifest["layers"][name]["input_activation"]["scale"]
                                 for name in inputs})
    np.testing.assert_array_equal(ActorQuantizer(same).build(weights).forward(x), before)
    # A wider input range: the graph's quantizer and the int32 bias scale both follow.
    wide = recalibrated(bundle, {"fc1": 4 * bundle.manifest["layers"]["fc1"]["input_activation"]["scale"]})
    assert wide.manifest["recalibrated"]["fc1"]["to"] == pytest.approx(wide.layers[0].input_scale)
    assert not np.array_equal(ActorQuantizer(wide).build(weights).forward(x), before)


def test_the_monitor_recalibrates_clipping_inputs_and_moves_precision_by_kl(
        ppo_bundle: Path, calibration_states: np.ndarray, weights: dict[str, np.ndarray]) -> None:
    """Real quantized networks: states 3x outside the calibrated range make the input
    quantizer clip (re-calibration lowers KL); on the policy's own states the int8 network is
    over a bound of 0.02 (precision goes up to fp32); once the learner's policy is the int8
    one, the level below is calm and, after ``patience`` checks, precision comes back down."""
    from autoquant.actorq import ActorQuantizer, Fp32ActorBuilder, load_bundle
    from autoquant.actorq._monitor import Monitor

    int8 = load_bundle(ppo_bundle)
    learner = Fp32ActorBuilder(int8).build(weights)  # the learner's policy: the fp32 network

    def learner_log_probs(states: np.ndarray) -> np.ndarray:
        return _log_softmax(learner.forward(learner.prepare(states)[0]))

    wide_states = calibration_states * 3
    monitor = Monitor([int8], learner_log_probs, kl_bound=10.0)
    assert monitor.check(0, 0, weights, wide_states)
    (decision,) = monitor.decisions
    assert decision["action"] == "recalibrate" and "fc1" in decision["scales"]
    old, new = decision["scales"]["fc1"]
    assert new > 1.25 * old and decision["kl_after"] < decision["kl_before"] / 2, decision
    assert monitor.builder_id == 1 and monitor.builder.bundle.manifest["recalibrated"]["fc1"]["to"] == new
    assert not monitor.check(1, 1, weights, wide_states)  # calibrated now: nothing moves

    policy_states = calibration_states[:1024]
    ladder = Monitor([int8], learner_log_probs, kl_bound=0.02, patience=2, recalibrate=False)
    assert ladder.check(0, 0, weights, policy_states)
    raised = ladder.decisions[-1]
    assert raised["action"] == "raise" and raised["to"] == "fp32", raised
    assert raised["kl_before"] > 0.02 and raised["kl_after"] < 1e-9, raised
    assert ladder.level == 1 and isinstance(ladder.builder, Fp32ActorBuilder)
    int8_actor = ActorQuantizer(int8).build(weights)
    ladder.learner_log_probs = lambda states: _log_softmax(int8_actor.forward(int8_actor.prepare(states)[0]))
    assert not ladder.check(1, 1, weights, policy_states)  # one calm check of two
    assert ladder.check(2, 2, weights, policy_states)
    lowered = ladder.decisions[-1]
    assert lowered["action"] == "lower" and lowered["kl_below"] < 1e-9 and ladder.level == 0, lowered
    report = ladder.to_json()
    assert [d["action"] for d in report["decisions"]] == ["raise", "lower"] and report["checks"] == 3
    assert report["levels"][-1] == "fp32" and report["final_level"] == report["levels"][0]
    assert report["checks_per_level"] == {report["levels"][0]: 1, "fp32": 2}
    by_level = report["kl_by_level"]  # the int8 level measured in use once, then as the level below twice
    assert by_level[report["levels"][0]]["checks"] == 3 and by_level["fp32"]["checks"] == 2


@pytest.mark.slow
def test_impala_and_monitor_refuse_bad_input_in_one_line(ppo_bundle: Path, tmp_path: Path) -> None:
    one_line = _assert_one_line
    base = ("actorq", "run", "--bundle", str(ppo_bundle), "--env", "CartPole-v1")
    one_line(cli_main(*base, "--learner", "impala", "--correction", "tis"), "tis", "vtrace")
    one_line(cli_main(*base, "--learner", "ppo", "--correction", "vtrace"), "vtrace", "PPO")
    one_line(cli_main(*base, "--monitor", "--fp32-actors"), "--monitor", "--fp32-actors")
    one_line(cli_main(*base, "--precision-level", str(ppo_bundle)), "--monitor")
    one_line(cli_main(*base, "--stop-at", "400", "--eval-episodes", "0"), "--stop-at", "--eval-episodes 0")
    one_line(cli_main(*base, "--learner", "impala", "--rho-bar", "0.5"), "rho_bar", ">= 1")
    one_line(cli_main(*base, "--monitor", "--kl-bound", "0"), "--kl-bound")



def test_the_inference_server_batches_its_clients_and_never_leaves_one_waiting(
        ppo_bundle: Path, weights: dict[str, np.ndarray], calibration_states: np.ndarray) -> None:
    """SEED RL's server, driven by asyncio as Ray drives it: three clients' requests are one
    policy call once all three are in, each gets its own rows back; a malformed request is
    refused to its caller alone."""
    import asyncio

    from autoquant.actorq import ActorQuantizer
    from autoquant.actorq._central import InferenceServer

    server = InferenceServer(ActorQuantizer(ppo_bundle), weights, wait_ms=10_000, clients=3)  # no timer would fire
    batches = [calibration_states[i * 5:(i + 1) * 5 + i] for i in range(3)]  # 5, 6 and 7 rows

    async def three() -> list[tuple[np.ndarray, np.ndarray]]:
        return await asyncio.gather(*(server.act(b) for b in batches))

    answers = asyncio.run(three())
    assert [len(a) for a, _ in answers] == [5, 6, 7] and server.stats()["calls"] == 1 == server.calls
    assert server.rows == 18 and all(np.all(lp <= 0) for _, lp in answers)
    with pytest.raises(ValueError, match="batch of observations"):
        asyncio.run(server.act(calibration_states[0]))  # one observation, not a batch
    assert server.queue == [] and server.calls == 1
