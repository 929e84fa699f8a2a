"""ActorQ bundles: exported from a real search (CartPole DQN) and through the library
(Pong Nature-CNN, 50 % pruned int8), rebuilt from learner weights, refused by networks
they do not fit."""

from __future__ import annotations

import copy
import io
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import cli_main, policy_path


def _state_dict_of_zip(path: Path) -> dict[str, torch.Tensor]:
    with zipfile.ZipFile(path) as z:
        return torch.load(io.BytesIO(z.read("policy.pth")), weights_only=True, map_location="cpu")


def _assert_reproduces(got: np.ndarray, want: np.ndarray) -> None:
    """Same greedy action on >= 99.5 % of the states, outputs within a small tolerance."""
    agreement = float(np.mean(got.argmax(axis=1) == want.argmax(axis=1)))
    assert agreement >= 0.995, f"actions agree on {agreement:.3%} of the states"
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale + 1e-6)


def _assert_one_line_refusal(exc: BaseException, *words: str) -> None:
    from autoquant.actorq import NetworkMismatchError
    from autoquant.errors import AutoquantError

    assert isinstance(exc, NetworkMismatchError) and isinstance(exc, AutoquantError)
    text = str(exc)
    assert "\n" not in text and len(text) < 400, text
    for word in words:
        assert word in text, text


# --- a bundle exported from a real CartPole DQN search ------------------------------------


@pytest.fixture(scope="module")
def cartpole_export(cartpole_dqn_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 6-trial random joint search, and the bundle of a complete trial that quantizes and prunes."""
    import optuna

    root = tmp_path_factory.mktemp("actorq_cartpole")
    run = root / "run"
    proc = cli_main("search", "--policy", str(cartpole_dqn_path), "--method", "joint", "--agent", "random",
                    "--trials", "6", "--out", str(run), "--quiet", "--episodes", "3", "--confirm-episodes", "3",
                    "--states", "256", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((run / "run.json").read_text())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=info["study_name"], storage=f"sqlite:///{run / 'study.db'}")
    chosen = None
    for trial in study.get_trials(deepcopy=False):
        plan = trial.user_attrs.get("plan")
        if trial.state.name != "COMPLETE" or not plan:
            continue
        specs = plan["layers"].values()
        if any(s["act_bits"] != "float" for s in specs) and any(s["prune_ratio"] > 0 for s in specs):
            chosen = trial
            break
    assert chosen is not None, "no complete trial both quantizes and prunes"
    out = root / "actor"
    proc = cli_main("export", str(run), "--trial", str(chosen.number), "--format", "actorq", "--out", str(out),
                    "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {"run": run, "out": out, "trial": chosen, "cli": json.loads(proc.stdout), "info": info}


@pytest.mark.slow
def test_cartpole_bundle_is_versioned_json_and_arrays(cartpole_export: dict[str, Any]) -> None:
    from autoquant.actorq import BUNDLE_FORMAT, BUNDLE_VERSION

    out, trial = cartpole_export["out"], cartpole_export["trial"]
    assert sorted(p.name for p in out.iterdir()) == ["actorq.json", "arrays.npz", "graph.onnx", "plan.json",
                                                     "template.onnx"]
    manifest = json.loads((out / "actorq.json").read_text())
    assert manifest["format"] == BUNDLE_FORMAT and manifest["version"] == BUNDLE_VERSION
    assert manifest["autoquant_version"] and manifest["libraries"]["onnxruntime"]
    assert manifest["plan"] == trial.user_attrs["plan"]
    with np.load(out / "arrays.npz", allow_pickle=False) as arrays:  # no pickles inside
        kept = {key: arrays[key] for key in arrays.files}

    from autoquant.compress import kept_count

    for name, spec in manifest["plan"]["layers"].items():
        layer = manifest["layers"][name]
        fp = next(e for e in manifest["fingerprint"]["layers"] if e["name"] == name)
        assert fp["source"].startswith("q_net.q_net.") and fp["weight_key"] == f"{fp['source']}.weight"
        assert layer["weight_bits"] == (None if spec["weight_bits"] == "float" else spec["weight_bits"])
        if spec["prune_ratio"] > 0:
            indices = kept[layer["kept_out"]]
            assert len(indices) == kept_count(fp["weight_shape"][0], spec["prune_ratio"], 8)
            assert len(set(indices.tolist())) == len(indices) and indices.max() < fp["weight_shape"][0]
        if spec["act_bits"] != "float":
            bits = spec["weight_bits"]
            assert layer["weight_quant"]["granularity"] == "per_channel"
            assert layer["weight_quant"]["int_max"] == 2 ** (bits - 1) - 1
            act = layer["input_activation"]
            assert act["granularity"] == "per_tensor" and act["bits"] == 8 and act["scale"] > 0
            assert isinstance(act["signed"], bool) and act["zero_point"] == 0
    assert manifest["fingerprint"]["layers"][0]["weight_shape"] == [256, 4]
    assert manifest["activations"] and all({"scale", "zero_point", "bits", "signed"} <= set(a)
                                           for a in manifest["activations"])
    assert manifest["target"]["name"] == "host" and "int8" in manifest["target"]["accelerated_precisions"]
    result = json.loads(trial.user_attrs["result"])
    assert manifest["measured"]["trial"] == trial.number
    assert manifest["measured"]["latency_ratio"] == result["latency_ratio"]
    assert manifest["measured"]["fp32_reward"]["mean"] == cartpole_export["info"]["reference"]["fp32"]["mean"]
    assert "reward" in manifest["measured"] and "retention" in manifest["measured"]
    broadcast = manifest["broadcast"]
    assert any("integer weights" in s for s in broadcast["recomputed"])
    assert any("activation" in s for s in broadcast["fixed"]) and any("kept" in s for s in broadcast["fixed"])
    payload = broadcast["payload_bytes"]
    assert payload["central"] < payload["fp32_state_dict"] / 4
    assert cartpole_export["cli"]["format"] == "actorq"


@pytest.mark.slow
def test_cartpole_rebuild_reproduces_the_exported_plan(cartpole_export: dict[str, Any],
                                                       cartpole_dqn_path: Path) -> None:
    from autoquant.actorq import ActorQuantizer
    from autoquant.evaluate import StateSet
    from autoquant.runtimes import OrtRunner

    quantizer = ActorQuantizer(cartpole_export["out"])
    learner = _state_dict_of_zip(cartpole_dqn_path)  # the SB3 DQN policy.state_dict(), q_net_target too
    policy = quantizer.build(learner)
    run = cartpole_export["run"]
    states = np.concatenate([StateSet.load(run / "held_out.npz").states, StateSet.load(run / "states.npz").states])
    template = OrtRunner((cartpole_export["out"] / "template.onnx").read_bytes())(states)
    got = policy.forward(states)
    _assert_reproduces(got, template)
    # SB3's predict: one observation -> one action, a batch -> a batch; no recurrent state.
    action, state = policy.predict(states[0])
    assert state is None and action.shape == () and int(action) == int(template[0].argmax())
    actions, _ = policy.predict(states[:5], deterministic=False)  # DQN acts greedily, as SB3's DQN policy
    np.testing.assert_array_equal(actions, template[:5].argmax(axis=1))
    # Central quantization: the learner's payload builds the same actor.
    payload = quantizer.quantize(learner)
    assert {v.dtype for k, v in payload.items() if k.endswith("/weight")} == {np.dtype(np.int8)}
    np.testing.assert_array_equal(quantizer.build_quantized(payload).forward(states), got)


@pytest.mark.slow
def test_cartpole_bundle_refuses_other_networks(cartpole_export: dict[str, Any], pong_pt_path: Path) -> None:
    from autoquant.actorq import ActorQuantizer, NetworkMismatchError

    quantizer = ActorQuantizer(cartpole_export["out"])
    lunar = _state_dict_of_zip(policy_path("dqn-LunarLander-v2", "LunarLander-v2.zip"))
    with pytest.raises(NetworkMismatchError) as info:
        quantizer.build(lunar)
    _assert_one_line_refusal(info.value, "q_net.q_net.0.weight", "(256, 8)", "(256, 4)")
    wider = {k: v for k, v in _state_dict_of_zip(cartpole_export["info"]["policy"]["path"]).items()}
    wider["q_net.q_net.0.weight"] = torch.zeros(64, 4)
    wider["q_net.q_net.0.bias"] = torch.zeros(64)
    wider["q_net.q_net.2.weight"] = torch.zeros(64, 64)
    with pytest.raises(NetworkMismatchError) as info:
        quantizer.build(wider)
    _assert_one_line_refusal(info.value, "(64, 4)")
    pong = torch.load(pong_pt_path, weights_only=True)
    with pytest.raises(NetworkMismatchError) as info:
        quantizer.build(pong)
    _assert_one_line_refusal(info.value, "q_net.q_net.0.weight", "original key names")
    with pytest.raises(NetworkMismatchError) as info:
        quantizer.build_quantized({"actorq/fc1/weight": np.zeros((3, 3), np.int8)})
    _assert_one_line_refusal(info.value, "payload")


@pytest.mark.slow
def test_altered_or_foreign_bundles_are_refused(cartpole_export: dict[str, Any], tmp_path: Path) -> None:
    from autoquant.actorq import BundleFormatError, load_bundle

    bad = tmp_path / "altered"
    shutil.copytree(cartpole_export["out"], bad)
    data = bytearray((bad / "template.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bad / "template.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleFormatError, match="sha256"):
        load_bundle(bad)
    newer = tmp_path / "newer"
    shutil.copytree(cartpole_export["out"], newer)
    manifest = json.loads((newer / "actorq.json").read_text())
    manifest["version"] = 99
    (newer / "actorq.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleFormatError, match="version 99"):
        load_bundle(newer)
    with pytest.raises(BundleFormatError, match="not an ActorQ bundle"):
        load_bundle(tmp_path)


# --- the Pong Nature-CNN, 50 % pruned int8, through the library --------------------------------


def _prune_like(net: torch.nn.Sequential, input_shape: tuple[int, ...], kept: dict[str, list[int]]
                ) -> torch.nn.Sequential:
    """``net`` with exactly the bundle's channels kept, by Torch-Pruning's own dependency graph
    (an independent account of which inputs go across Flatten)."""
    import torch_pruning as tp

    net = copy.deepcopy(net)
    for p in net.parameters():
        p.requires_grad_(True)
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros((1, *input_shape)))
    for name, module in net.named_children():
        if name not in kept:
            continue
        drop = sorted(set(range(module.weight.shape[0])) - set(kept[name]))
        fn = tp.prune_conv_out_channels if isinstance(module, torch.nn.Conv2d) else tp.prune_linear_out_channels
        graph.get_pruning_group(module, fn, idxs=drop).prune()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@pytest.fixture(scope="module")
def pong_bundle(pong, pong_states, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from autoquant.actorq import load_bundle, write_bundle
    from autoquant.compress import CompressionPlan, compress
    from autoquant.policy import analyse

    plan = CompressionPlan.uniform(analyse(pong), weight_bits=8, act_bits=8, prune_ratio=0.5)
    compressed = compress(pong, plan, pong_states.states, rounding="nearest")
    out = tmp_path_factory.mktemp("actorq_pong")
    write_bundle(compressed, out)
    return compressed, load_bundle(out)


@pytest.mark.slow
def test_pong_rebuild_reproduces_the_plan_across_flatten(pong_bundle, pong_states, pong_pt_path: Path) -> None:  # type: ignore[no-untyped-def]
    from autoquant.actorq import ActorQuantizer
    from autoquant.runtimes import OrtRunner

    compressed, bundle = pong_bundle
    fc1 = next(r for r in bundle.layers if r.name == "fc1")
    conv3 = next(r for r in bundle.layers if r.name == "conv3")
    assert conv3.kept_out is not None and len(conv3.kept_out) == 32
    assert fc1.slots["weight"].shape == (256, 32 * 7 * 7) and fc1.weight_shape == (512, 3136)
    learner = torch.load(pong_pt_path, weights_only=True)  # plain nn.Sequential keys: 0.weight, ..., 9.bias
    quantizer = ActorQuantizer(bundle)
    policy = quantizer.build(learner)
    states = pong_states.states
    template = OrtRunner(compressed.onnx)(states)
    _assert_reproduces(policy.forward(states), template)
    # The rebuilt fc1 integers are the exported ones: the Flatten expansion picks the right columns.
    payload = quantizer.quantize(learner)
    import onnx
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load_from_string(bundle.template).graph.initializer}
    for name, value in payload.items():
        np.testing.assert_array_equal(value, inits[name], err_msg=name)
    # predict takes raw uint8 frames, as the env gives them.
    frames = np.clip(np.rint(states[:4] * 255), 0, 255).astype(np.uint8)
    actions, _ = policy.predict(frames)
    assert actions.shape == (4,) and actions.dtype.kind == "i"


def _perturbed(learner: dict[str, torch.Tensor], *, seed: int) -> dict[str, torch.Tensor]:
    """A learner's weights after some training: each tensor moved by 5 % of its spread."""
    generator = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * v.std() * torch.randn(v.shape, generator=generator) for k, v in learner.items()}


def _with_weights(policy, weights: dict[str, torch.Tensor]) -> torch.nn.Sequential:  # type: ignore[no-untyped-def]
    """A copy of ``policy``'s fp32 network holding ``weights`` (learner key names)."""
    net = copy.deepcopy(policy.net)
    with torch.no_grad():
        for name, module in net.named_children():
            source = policy.layer_sources.get(name)
            if source is not None:
                module.weight.copy_(weights[f"{source}.weight"])
                module.bias.copy_(weights[f"{source}.bias"])
    return net


@pytest.mark.slow
def test_pong_rebuild_follows_new_learner_weights(pong_bundle, pong, pong_states, pong_pt_path: Path) -> None:  # type: ignore[no-untyped-def]
    """New weights of a broadcast: the rebuilt actor is what the graph builder (held to
    Brevitas' export in tests/compress/test_build.py) makes of them with the bundle's fixed
    kept channels and activation ranges."""
    from autoquant.actorq import ActorQuantizer
    from autoquant.compress import build_graph
    from autoquant.runtimes import OrtRunner

    compressed, bundle = pong_bundle
    learner = torch.load(pong_pt_path, weights_only=True)
    moved = _perturbed(learner, seed=1)
    policy = ActorQuantizer(bundle).build({k: v.numpy() for k, v in moved.items()})  # numpy arrays work too

    full = _with_weights(pong, moved)
    pruned = _prune_like(full, pong.input_shape, compressed.kept)
    rebuilt = build_graph(pruned, pong.input_shape, compressed.plan.without_pruning(), pong_states.states,
                          scales=compressed.activation_scales)  # calibrated activation ranges kept
    reference = OrtRunner(rebuilt.onnx)(pong_states.states)
    got = policy.forward(pong_states.states)
    _assert_reproduces(got, reference)
    assert not np.array_equal(got, OrtRunner(compressed.onnx)(pong_states.states)), "the new weights were not used"


@pytest.mark.slow
def test_fp32_actors_run_the_learners_network(pong_bundle, pong, pong_states, pong_pt_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The baseline of the actorq benchmark: fp32 actors built from a broadcast compute what
    the learner's own fp32 network computes, for the weights of that broadcast."""
    from autoquant.actorq import Fp32ActorBuilder

    _, bundle = pong_bundle
    learner = torch.load(pong_pt_path, weights_only=True)
    builder = Fp32ActorBuilder(bundle)
    states = pong_states.states[:64]
    with torch.no_grad():
        want = pong.net(torch.as_tensor(states)).numpy()
    _assert_reproduces(builder.build(learner).forward(states), want)
    moved = _perturbed(learner, seed=2)
    with torch.no_grad():
        moved_want = _with_weights(pong, moved)(torch.as_tensor(states)).numpy()
    _assert_reproduces(builder.build(moved).forward(states), moved_want)
    assert not np.allclose(moved_want, want)


@pytest.mark.slow
def test_pong_rebuilds_on_a_graph_optimized_once(pong_bundle, pong_states, pong_pt_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The fast rebuild path: the graph optimized on the first build, sessions on it with the
    integer kernels, bit-identical to fresh sessions for every later broadcast; where
    optimization bakes weights into constants of its own (fp32 convs' NCHWc layout), the
    check refuses the path and ``auto`` keeps fresh sessions, saying why."""
    import pickle

    import onnx

    from autoquant.actorq import ActorQError, ActorQuantizer, Fp32ActorBuilder

    _, bundle = pong_bundle
    learner = torch.load(pong_pt_path, weights_only=True)
    states = pong_states.states[:64]
    fast = ActorQuantizer(bundle, rebuild="preoptimized")
    slow = ActorQuantizer(bundle, rebuild="session")
    for seed in (4, 5):
        moved = _perturbed(learner, seed=seed)
        np.testing.assert_array_equal(fast.build(moved).forward(states), slow.build(moved).forward(states))
    assert fast.rebuild_choice["path"] == "preoptimized" and slow.rebuild_choice["path"] == "session"
    # The optimized graph runs the integer kernels.
    ops = {node.op_type for node in onnx.load_from_string(fast.rebuilder.optimized_graph).graph.node}
    assert {"QLinearConv", "QGemm"} <= ops and not ops & {"Conv", "Gemm", "DequantizeLinear"}, ops
    auto = ActorQuantizer(bundle)
    auto.build(learner)
    choice = auto.rebuild_choice
    assert choice["path"] in ("session", "preoptimized") and choice["session_ms"] > 0 and choice["preoptimized_ms"] > 0
    shipped = pickle.loads(pickle.dumps(auto))  # each actor decides on its own machine
    assert shipped.rebuild_choice is None and shipped.rebuilder.optimized_graph is None
    # fp32 convolutions: onnxruntime reorders their weights into blocked constants.
    with pytest.raises(ActorQError) as info:
        Fp32ActorBuilder(bundle, rebuild="preoptimized").build(learner)
    text = str(info.value)
    assert "\n" not in text and "constants of its own" in text and "rebuild='auto'" in text, text
    fp32 = Fp32ActorBuilder(bundle)
    fp32.build(learner)
    assert fp32.rebuild_choice["path"] == "session" and "fp32/conv1/weight" in fp32.rebuild_choice["reason"]


@pytest.mark.slow
def test_pong_bundle_refuses_other_networks(pong_bundle, cartpole_dqn_path: Path) -> None:  # type: ignore[no-untyped-def]
    from autoquant.actorq import ActorQuantizer, NetworkMismatchError

    quantizer = ActorQuantizer(pong_bundle[1])
    with pytest.raises(NetworkMismatchError) as info:
        quantizer.build(_state_dict_of_zip(cartpole_dqn_path))
    _assert_one_line_refusal(info.value, "'0.weight'")
    narrow = {"0.weight": np.zeros((32, 4, 8, 8), np.float32), "0.bias": np.zeros(32, np.float32),
              "2.weight": np.zeros((64, 32, 4, 4), np.float32), "2.bias": np.zeros(64, np.float32),
              "4.weight": np.zeros((64, 64, 3, 3), np.float32), "4.bias": np.zeros(64, np.float32),
              "7.weight": np.zeros((256, 3136), np.float32), "7.bias": np.zeros(256, np.float32),
              "9.weight": np.zeros((6, 256), np.float32), "9.bias": np.zeros(6, np.float32)}
    with pytest.raises(NetworkMismatchError) as info:
        quantizer.build(narrow)
    _assert_one_line_refusal(info.value, "'7.weight'", "(256, 3136)", "(512, 3136)")


@pytest.mark.slow
def test_a_shipped_quantizer_builds_from_numpy_weights(pong_bundle, pong_states, pong_pt_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A quantizer pickled to a remote actor rebuilds from plain numpy weights what the
    original builds (its speed is measured in benchmarks/actorq_rebuild.py, not here)."""
    import pickle

    from autoquant.actorq import ActorQuantizer

    learner = {k: v.numpy() for k, v in torch.load(pong_pt_path, weights_only=True).items()}
    original = ActorQuantizer(pong_bundle[1])
    shipped = pickle.loads(pickle.dumps(original))  # shippable to remote actors
    states = pong_states.states[:32]
    np.testing.assert_array_equal(shipped.build(learner).forward(states), original.build(learner).forward(states))


@pytest.mark.parametrize("layers", [
    {"fc1": (8, 8, 0.0), "fc2": (None, None, 0.75), "fc3": (6, 8, 0.0)},  # a pruned float layer between int8 ones
    {"fc1": (4, None, 0.5), "fc2": (8, 8, 0.5)},  # weight-only quantization (float bias), float head
    {"fc1": (None, None, 0.5), "fc2": (None, None, 0.5)},  # pruning only: a float graph
    {"fc1": (2, 8, 0.5), "fc2": (3, 8, 0.5), "fc3": (5, None, 0.0)},  # sub-8-bit weights
], ids=["float-between-int8", "weight-only", "prune-only", "low-bits"])
def test_every_kind_of_layer_rebuilds_bit_exactly(layers, cartpole_dqn, cartpole_dqn_path: Path,  # type: ignore[no-untyped-def]
                                                  cartpole_states, tmp_path: Path) -> None:
    from autoquant.actorq import ActorQuantizer, write_bundle
    from autoquant.compress import CompressionPlan, LayerSpec, compress
    from autoquant.runtimes import OrtRunner

    plan = CompressionPlan({name: LayerSpec(*spec) for name, spec in layers.items()})
    compressed = compress(cartpole_dqn, plan, cartpole_states.states, rounding="nearest")
    write_bundle(compressed, tmp_path)
    learner = _state_dict_of_zip(cartpole_dqn_path)
    quantizer = ActorQuantizer(tmp_path)
    policy = quantizer.build(learner)
    states = cartpole_states.states
    np.testing.assert_array_equal(policy.forward(states), OrtRunner(compressed.onnx)(states))
    # Whichever rebuild path the first build chose, later broadcasts follow the new weights
    # as a fresh session does.
    assert quantizer.rebuild_choice is not None and quantizer.rebuild_choice["path"] in ("session", "preoptimized")
    moved = _perturbed(learner, seed=3)
    fresh = ActorQuantizer(tmp_path, rebuild="session").build(moved).forward(states)
    np.testing.assert_array_equal(quantizer.build(moved).forward(states), fresh)
    assert not np.array_equal(fresh, policy.forward(states))


@pytest.mark.slow
def test_write_bundle_refuses_gptq_rounding(pong, pong_states, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A plan whose weights are not round-to-nearest of the learner's is not a recipe actors can follow."""
    from autoquant.actorq import ActorQError, write_bundle
    from autoquant.compress import CompressionPlan, LayerSpec, compress

    plan = CompressionPlan({"fc2": LayerSpec(8, 8)})
    compressed = compress(pong, plan, pong_states.states[:64], rounding="gptq")
    with pytest.raises(ActorQError, match="rounding='nearest'"):
        write_bundle(compressed, tmp_path / "b")
    assert not (tmp_path / "b" / "actorq.json").exists()


# --- a bundle is untrusted input (issue 22) -----------------------------------------------------


def _copy_bundle(ppo_bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(ppo_bundle, out)
    return out


def _set_manifest(folder: Path, change: Any) -> None:
    manifest = json.loads((folder / "actorq.json").read_text())
    change(manifest)
    (folder / "actorq.json").write_text(json.dumps(manifest))


def _refused(folder: Path, *words: str) -> str:
    from autoquant.actorq import BundleFormatError, load_bundle

    with pytest.raises(BundleFormatError) as info:
        load_bundle(folder)
    text = str(info.value)
    assert "\n" not in text and len(text) < 400, text
    for word in words:
        assert word in text, text
    return text


@pytest.mark.parametrize("where", ["absolute", "parent", "etc-hostname", "etc-passwd"])
def test_manifest_paths_stay_inside_the_bundle(ppo_bundle: Path, tmp_path: Path, where: str) -> None:
    """``files.graph.path`` naming a file outside the bundle is refused before the file is
    read, even when that file is the very graph the manifest's sha256 asks for."""
    from autoquant.actorq import load_bundle

    bundle = _copy_bundle(ppo_bundle, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(bundle / "graph.onnx", outside / "graph.onnx")  # same bytes: the sha256 matches
    path = {"absolute": str(outside / "graph.onnx"), "parent": "../outside/graph.onnx",
            "etc-hostname": "/etc/hostname", "etc-passwd": "../../../../etc/passwd"}[where]
    assert load_bundle(bundle).graph  # the copy loads as it is
    _set_manifest(bundle, lambda m: m["files"]["graph"].__setitem__("path", path))
    _refused(bundle, "plain file name", "graph")


def test_a_symlink_out_of_the_bundle_is_refused(ppo_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy_bundle(ppo_bundle, tmp_path)
    outside = tmp_path / "elsewhere.onnx"
    (bundle / "graph.onnx").rename(outside)  # the same bytes, outside the folder, linked in
    (bundle / "graph.onnx").symlink_to(outside)
    _refused(bundle, "symlink", "graph.onnx")
    (bundle / "graph.onnx").unlink()
    (bundle / "graph.onnx").symlink_to("/etc/passwd")
    _refused(bundle, "symlink")
    (bundle / "graph.onnx").unlink()
    shutil.copy(outside, bundle / "graph.onnx")
    manifest = bundle / "actorq.json"
    manifest.rename(tmp_path / "actorq.json")
    manifest.symlink_to(tmp_path / "actorq.json")  # the manifest itself, too
    _refused(bundle, "symlink", "actorq.json")


def test_manifest_files_are_exactly_the_three_roles(ppo_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy_bundle(ppo_bundle, tmp_path)
    _set_manifest(bundle, lambda m: m["files"].__setitem__("extra", {"path": "plan.json", "sha256": "0"}))
    _refused(bundle, "exactly the graph, template, arrays")
    bundle = _copy_bundle(ppo_bundle, tmp_path / "b")
    _set_manifest(bundle, lambda m: m.__setitem__("files", ["graph.onnx"]))
    _refused(bundle, "exactly the graph")


def test_an_npz_bomb_is_refused_before_it_inflates(ppo_bundle: Path, tmp_path: Path) -> None:
    """arrays.npz with a member declaring 64 MiB that deflates to 64 KB: refused from the
    zip directory (the sha256 in the manifest matches, so only the caps can refuse it)."""
    import hashlib
    import tracemalloc
    import zipfile

    bundle = _copy_bundle(ppo_bundle, tmp_path)
    arrays = bundle / "arrays.npz"
    header = b"\x93NUMPY\x01\x00" + b"{'descr': '<f4', 'fortran_order': False, 'shape': (16777216,), }".ljust(
        118) + b"\n"
    with zipfile.ZipFile(arrays, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("bomb.npy", header + bytes(64 << 20))
    assert arrays.stat().st_size < 1 << 20
    digest = hashlib.sha256(arrays.read_bytes()).hexdigest()
    _set_manifest(bundle, lambda m: m["files"]["arrays"].__setitem__("sha256", digest))
    tracemalloc.start()
    try:
        _refused(bundle, "bomb.npy", "zip bomb")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak:,} bytes allocated to refuse a 64 MiB member"


@pytest.mark.parametrize("case", ["object-array", "short-data", "not-npy", "nested-manifest"])
def test_malformed_arrays_and_manifests_are_one_line(ppo_bundle: Path, tmp_path: Path, case: str) -> None:
    import hashlib
    import zipfile

    bundle = _copy_bundle(ppo_bundle, tmp_path)
    arrays = bundle / "arrays.npz"
    if case == "nested-manifest":
        (bundle / "actorq.json").write_text("[" * 100_000 + "]" * 100_000)
        _refused(bundle, "nests deeper")
        return
    buffer = io.BytesIO()
    if case == "object-array":
        np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif case == "short-data":
        np.save(buffer, np.zeros(1000, np.float32))
        buffer = io.BytesIO(buffer.getvalue()[:-40])
    else:
        buffer.write(b"print('hello')")
    with zipfile.ZipFile(arrays, "a") as z:
        z.writestr("extra.npy" if case != "not-npy" else "extra.txt", buffer.getvalue())
    digest = hashlib.sha256(arrays.read_bytes()).hexdigest()
    _set_manifest(bundle, lambda m: m["files"]["arrays"].__setitem__("sha256", digest))
    _refused(bundle, {"object-array": "no pickles", "short-data": "corrupt", "not-npy": "not a .npy"}[case])


@pytest.mark.slow
def test_the_pareto_front_exports_as_a_ladder_of_bundles(cartpole_export: dict[str, Any], tmp_path: Path) -> None:
    """``--trial front``: every plan of the run's front as a bundle, cheapest first, which
    ``load_ladder`` reads back; a ladder that names a folder outside itself, or a level that is
    a symlink, is refused in one line, and ``actorq run`` takes a ladder only with --monitor."""
    import shutil

    from autoquant.actorq import load_ladder
    from autoquant.errors import BundleFormatError

    out = tmp_path / "ladder"
    proc = cli_main("export", str(cartpole_export["run"]), "--trial", "front", "--format", "actorq", "--out",
                    str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    levels = result["levels"]
    assert levels and [level["path"] for level in levels] == [f"level-{k}" for k in range(len(levels))]
    latencies = [level["latency_ratio"] for level in levels]
    retentions = [level["retention"] for level in levels]
    assert latencies == sorted(latencies) and retentions == sorted(retentions)  # cheapest first, along the front
    bundles = load_ladder(out)
    assert [b.manifest["measured"]["trial"] for b in bundles] == [level["trial"] for level in levels]
    assert len({b.fingerprint_id for b in bundles}) == 1
    assert cli_main("export", str(cartpole_export["run"]), "--trial", "front", "--out", str(tmp_path / "x")
                    ).returncode == 2  # a ladder is of ActorQ bundles only
    proc = cli_main("actorq", "run", "--bundle", str(out), "--env", "CartPole-v1")
    assert proc.returncode == 2 and "add --monitor" in proc.stderr, proc.stderr
    # Hostile ladders.
    ladder = json.loads((out / "ladder.json").read_text())
    ladder["levels"][0]["path"] = "../actor"
    (out / "ladder.json").write_text(json.dumps(ladder))
    with pytest.raises(BundleFormatError) as caught:
        load_ladder(out)
    assert "\n" not in str(caught.value) and "only a plain folder name" in str(caught.value), caught.value
    ladder["levels"][0]["path"] = "level-0"
    (out / "ladder.json").write_text(json.dumps(ladder))
    shutil.rmtree(out / "level-0")
    (out / "level-0").symlink_to(cartpole_export["out"], target_is_directory=True)
    with pytest.raises(BundleFormatError) as caught:
        load_ladder(out)
    assert "\n" not in str(caught.value) and "a symlink" in str(caught.value), caught.value
