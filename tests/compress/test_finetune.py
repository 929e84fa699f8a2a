"""Fine-tuning by distillation (and DAgger) raises fidelity and reward on aggressive plans."""

from __future__ import annotations

from typing import Any

import pytest

from autoquant.compress import CompressionPlan, LayerSpec, compress
from autoquant.evaluate import (dagger_visitor, episode_seeds, fidelity, onnx_actor, paired_comparison, play_episodes,
                                random_actor, record_states)
from autoquant.policy import analyse, load_policy
from autoquant.runtimes import OrtRunner
from tests.conftest import policy_path


@pytest.mark.slow
def test_distillation_raises_fidelity_of_3_bit_weights() -> None:
    bundle = load_policy(policy_path("ppo-CartPole-v1", "CartPole-v1.zip"))
    train = record_states(bundle, n=1024, seed=0).states
    held_out = record_states(bundle, n=1024, seed=7).states
    reference = bundle.forward(held_out)
    plan = CompressionPlan.uniform(analyse(bundle), weight_bits=3)
    plain = compress(bundle, plan, train, rounding="nearest")
    tuned = compress(bundle, plan, train, rounding="nearest", finetune_epochs=5)
    before = fidelity(reference, OrtRunner(plain.onnx)(held_out), bundle.action)
    after = fidelity(reference, OrtRunner(tuned.onnx)(held_out), bundle.action)
    assert tuned.finetune is not None and tuned.finetune.loss_after < tuned.finetune.loss_before
    assert after["output_error"] < 0.6 * before["output_error"], (before, after)
    assert after["action_agreement"] >= before["action_agreement"]
    assert tuned.kernels.layers == {"fc1": "int8", "fc2": "int8", "fc3": "int8"}


@pytest.mark.slow
def test_finetuning_raises_the_reward_of_an_aggressive_plan_and_dagger_is_what_does_it() -> None:
    """Real CartPole episodes on fixed seeds. Every layer at 4 bits and half the hidden units
    pruned loses nearly all of the DQN's reward; distillation on fp32's recorded states alone
    recovers little of it (the plan fails in states fp32 never visits); two DAgger rounds on
    the plan's own states recover it."""
    bundle = load_policy(policy_path("dqn-CartPole-v1", "CartPole-v1.zip"))
    states = record_states(bundle, n=1024, seed=0).states
    plan = CompressionPlan({"fc1": LayerSpec(4, 8, 0.5), "fc2": LayerSpec(4, 8, 0.5), "fc3": LayerSpec(4, 8)})
    seeds = episode_seeds(7, 10)
    fp32 = play_episodes(bundle.predict, "CartPole-v1", seeds, n_envs=5)
    floor = play_episodes(random_actor(bundle.action_space, 7), "CartPole-v1", seeds, n_envs=5)

    def retention(**finetune: Any) -> tuple[float, Any]:
        compressed = compress(bundle, plan, states, rounding="nearest", visit=dagger_visitor(bundle, seed=0),
                              **finetune)
        episodes = play_episodes(onnx_actor(bundle, compressed.onnx), "CartPole-v1", seeds, n_envs=5)
        return paired_comparison(episodes, fp32, floor)["retention"], compressed.finetune

    plain, _ = retention()
    recorded_only, _ = retention(finetune_epochs=10, finetune_rounds=0)
    dagger, result = retention(finetune_epochs=10, finetune_rounds=2)
    assert fp32.mean > 400  # the reference policy is strong on these seeds
    assert plain < 0.3, plain
    assert dagger > 0.9 and dagger > recorded_only + 0.3, (plain, recorded_only, dagger)
    assert result.rounds == 2 and result.states > len(states)  # the plan's own states were added
    assert result.loss_after < result.loss_before


def test_gap_weights_favour_near_ties_and_change_what_distillation_fits() -> None:
    """Weights have mean 1 and grow as fp32's top two actions close in; gap-weighted
    distillation runs, lowers its own (weighted) loss, and fits the network differently."""
    import numpy as np
    import torch

    from autoquant.compress._finetune import GAP_FLOOR, gap_weights

    target = torch.tensor([[1.0, 0.0], [1.0, 0.5], [0.75, 1.0], [1.0, 0.9], [1.0, 1.0]])  # gaps 1, .5, .25, .1, 0
    w = gap_weights(target)
    assert float(w.mean()) == pytest.approx(1.0) and bool(torch.all(w[1:] > w[:-1]))
    assert float(w[-1] / w[2]) == pytest.approx((1 / GAP_FLOOR) / (1 / (1 + GAP_FLOOR)))  # a tie vs the median gap

    bundle = load_policy(policy_path("dqn-CartPole-v1", "CartPole-v1.zip"))
    train = record_states(bundle, n=512, seed=0).states
    plan = CompressionPlan.uniform(analyse(bundle), weight_bits=3)
    plain = compress(bundle, plan, train, rounding="nearest", finetune_epochs=2, verify_kernels=False)
    weighted = compress(bundle, plan, train, rounding="nearest", finetune_epochs=2, verify_kernels=False,
                        finetune_gap_weighted=True)
    assert weighted.finetune is not None and weighted.finetune.loss_after <= weighted.finetune.loss_before
    assert weighted.onnx != plain.onnx
    outputs = [OrtRunner(c.onnx)(train[:64]) for c in (plain, weighted)]
    assert not np.array_equal(*outputs)
