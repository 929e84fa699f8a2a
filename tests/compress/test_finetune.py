"""Fine-tuning by distillation raises fidelity on an aggressive plan."""

from __future__ import annotations

from autoquant.compress import CompressionPlan, compress
from autoquant.evaluate import fidelity, record_states
from autoquant.policy import analyse, load_policy
from autoquant.targets import OrtRunner
from tests.conftest import policy_path


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
