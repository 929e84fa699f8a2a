"""The on-policy learners learn from quantized Ray actors: PPO (synchronous, truncated importance
sampling) and IMPALA (asynchronous, V-trace, with the monitor). Both run in this process on one
local Ray instance the module starts once (``run_actorq`` joins a Ray that is already up and
leaves it up); the command line's own run is ``test_run.py``'s."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, object_store_memory=256 * 1024 ** 2)
    try:
        yield
    finally:
        ray.shutdown()


def _run(**options: Any) -> dict[str, Any]:
    from autoquant.actorq import ActorRunConfig, run_actorq

    report = run_actorq(ActorRunConfig(env_id="CartPole-v1", actors=2, envs_per_actor=4, eval_episodes=10, **options))
    assert report["ray"]["address"] == "local" and ray.is_initialized()  # joined, not started
    return report


@pytest.mark.slow
def test_ppo_learns_from_quantized_actors_with_importance_sampling(ppo_bundle: Path, local_ray: None) -> None:
    """Actors sample from their int8 policy and ship log-probs; the PPO learner weights each
    sample by min(pi_learner / pi_actor, 2) and learns; 2 actors x 4 envs, batched policy calls."""
    report = _run(bundle=str(ppo_bundle), steps=20_480)
    learner = report["learner"]
    assert learner["algo"] == "PPO" and learner["correction"] == "tis" and learner["is_truncation"] == 2.0
    assert learner["hyperparameters_source"] == "rl-zoo3 ppo.yml CartPole-v1"
    assert learner["policy_kwargs"]["net_arch"] == {"pi": [64, 64], "vf": [64, 64]}
    assert learner["policy_kwargs"]["activation_fn"] == "Tanh"
    # 32 steps x 8 envs per iteration.
    assert report["env_steps"] == 256 * 80 and learner["iterations"] == 80
    weights = learner["importance_weights"]
    assert weights["iterations"] == 80 and 0.9 < weights["rho_mean"] < 1.1 and weights["rho_min"] < 1 < weights["rho_max"]
    assert report["actors"]["envs_per_actor"] == 4 and report["broadcasts"]["count"] == 80
    per_actor = report["per_actor"]
    assert all(a["policy_steps"] == 4 * a["policy_calls"] for a in per_actor)  # one batched call per lockstep step
    final, random = report["final"]["learner_fp32"], report["final"]["random"]
    assert final["mean"] > random["mean"] + 100, ([e["mean"] for e in report["curve"]["eval"]], random["mean"])
    assert report["final"]["actor"]["mean"] > random["mean"] + 100


@pytest.mark.slow
def test_impala_learns_from_asynchronous_int8_actors_with_vtrace_and_the_monitor(ppo_bundle: Path,
                                                                                 local_ray: None) -> None:
    report = _run(bundle=str(ppo_bundle), learner_algo="impala", steps=40_000, eval_every=10_000, seed=1,
                  monitor=True, stop_at=400.0)
    learner = report["learner"]
    assert learner["algo"] == "IMPALA" and learner["correction"] == "vtrace"
    assert learner["hyperparameters"]["n_steps"] == 32 and learner["hyperparameters"]["batch_chunks"] == 2
    vt = learner["vtrace"]
    # Actors act while the learner trains: unrolls arrive acted with older weights.
    assert vt["updates"] == learner["updates"] > 10 and vt["policy_lag_updates"]["mean"] > 0
    assert 0.5 < vt["rho_mean"] < 1.5 and vt["rho_min"] < 1 < vt["rho_max"] and 0 < vt["kl_mu_pi_mean"] < 0.5
    assert sorted(learner["kl_mu_pi_per_actor"]) == sorted(learner["agreement_per_actor"]) == ["0", "1"]
    assert all(0.5 < a <= 1 for a in learner["agreement_per_actor"].values())
    per_update = learner["per_update"]
    assert len(per_update) == vt["updates"] and all(u["lag_updates"] >= 0 for u in per_update)
    monitor = report["monitor"]
    assert monitor["checks"] > 5 and monitor["levels"][-1] == "fp32" and monitor["kl"]["mean"] < 0.02
    assert sum(monitor["checks_per_level"].values()) == monitor["checks"]
    evals = report["curve"]["eval"]
    random = report["final"]["random"]["mean"]
    threshold = report["threshold"]
    if threshold.get("reached"):  # stopped at the evaluation that reached it
        assert evals[-1]["mean"] >= 400 and threshold["env_steps"] == evals[-1]["step"] == report["env_steps"]
        assert 0 < threshold["train_wall_s"] < threshold["loop_s"]
    else:  # the whole budget, and the report says it never got there
        assert threshold == {"score": 400.0, "reached": False} and report["env_steps"] >= 40_000
        assert max(e["mean"] for e in evals) < 400
    assert max(e["mean"] for e in evals[1:]) > random + 100, ([e["mean"] for e in evals], random)
