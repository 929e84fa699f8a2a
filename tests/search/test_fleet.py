"""A fleet: one search for several targets. Every plan is measured on every target, and what
does not depend on the device (states, seeds, fp32 episodes, sensitivities, the episodes of an
identical graph) is made once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import cli_main

FIRST = """name = "host-a"
description = "this machine's CPU, onnxruntime, 1 thread, short timing windows"
reach = "local"
runtime = "onnxruntime"
accelerated_precisions = ["fp32", "int8"]
[protocol]
warmup = 10
calls = 100
"""

SECOND = """name = "host-b"
description = "this machine's CPU again, onnxruntime or LiteRT, 1 thread"
reach = "local"
runtime = ["onnxruntime", "litert"]
accelerated_precisions = ["fp32", "int8"]
[protocol]
warmup = 10
calls = 100
"""


def _on(base, target, store):  # type: ignore[no-untyped-def]
    """The session's CartPole problem (states, references, episodes) on ``target``, sharing ``store``."""
    from autoquant.search import SearchProblem

    return SearchProblem(
        base.bundle, base.table, target, states=base.states, held_out=base.held_out,
        reference_onnx=base.reference_onnx, settings=base.settings, episode_seeds=base.episode_seeds,
        fp32_episodes=base.fp32_episodes, random_episodes=base.random_episodes,
        target_fingerprint=f"{target.name}-test", store=store)


def test_a_graph_played_for_one_target_is_not_played_again_for_another(cartpole_problem) -> None:  # type: ignore[no-untyped-def]
    """Two targets sharing a store: the same plan on the same runtime builds the same graph
    (its metadata aside), so the second target takes the first's episodes, says from where,
    and still measures its own latency. A plan of its own plays its own episodes."""
    from autoquant.compress import CompressionPlan, LayerSpec
    from autoquant.search._problem import PlayStore
    from autoquant.targets import HostTarget, MeasureProtocol

    store = PlayStore()
    protocol = MeasureProtocol(warmup=5, calls=30)
    a = _on(cartpole_problem, HostTarget("host-a", protocol=protocol), store)
    b = _on(cartpole_problem, HostTarget("host-b", protocol=protocol), store)
    always = lambda ratio, proxy: (True, None)  # noqa: E731 - play every plan
    plan = CompressionPlan({"fc1": LayerSpec(8, 8), "fc2": LayerSpec(8, 8)})
    first = a.evaluate(plan, always)
    again = b.evaluate(plan.on("onnxruntime"), always)  # a target with several runtimes names it
    assert first.played and again.played and first.shared_from is None
    shared = again.reward["shared_from"]
    assert shared == {"runtime": "onnxruntime", "target": "host-a", "identical_graph": True}
    assert again.shared_from == "onnxruntime on host-a"
    assert again.reward["rewards"] == first.reward["rewards"] and again.retention == first.retention
    assert again.latency["target"] == "host-b" and again.key != first.key
    own = b.evaluate(CompressionPlan({"fc2": LayerSpec(8, 8)}), always)
    assert own.played and own.shared_from is None
    seeds = list(cartpole_problem.episode_seeds)
    model = cartpole_problem.reference_onnx
    assert a.play(model, seeds) is b.play(model, seeds)  # confirmation plays a graph once for the fleet


def test_two_boards_whose_numerics_agree_measure_a_graphs_fidelity_once(cartpole_problem, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two boards of a fleet (two targets on one real device server on loopback): the second
    runs the graph on the first 16 held-out states only, finds the first board's outputs
    there, and takes its held-out fidelity and proxy, saying from where; a graph only it
    measures gets its own."""
    from autoquant.compress import CompressionPlan, LayerSpec
    from autoquant.search._problem import FIDELITY_PROBE, PlayStore
    from autoquant.targets import get_target
    from tests.targets.device import start_device

    device = start_device(tmp_path)
    try:
        store = PlayStore()
        boards = []
        for name in ("board-a", "board-b"):  # two boards as a user declares them, both served by one server
            toml = tmp_path / f"{name}.toml"
            toml.write_text(f'name = "{name}"\ndescription = "a board"\nreach = "remote"\nruntime = "onnxruntime"\n'
                            '[protocol]\nwarmup = 5\ncalls = 30\n')
            boards.append(get_target(str(toml), device=device.address, secret_file=str(device.secret_file)))
        a, b = (_on(cartpole_problem, board, store) for board in boards)
        calls = []
        infer = boards[1].infer
        boards[1].infer = lambda model, x: calls.append(len(x)) or infer(model, x)  # type: ignore[method-assign]
        b._device_infer = boards[1].infer
        proxy_too = lambda ratio, proxy: (proxy() > 2.0, "proxy measured")  # noqa: E731 - measure it, play nothing
        plan = CompressionPlan({"fc1": LayerSpec(8, 8), "fc2": LayerSpec(8, 8)})
        first = a.evaluate(plan, proxy_too)
        second = b.evaluate(plan, proxy_too)
        assert "shared_from" not in first.fidelity and first.proxy is not None
        assert second.fidelity["shared_from"]["target"] == "board-a"
        assert second.fidelity["shared_from"]["states"] == FIDELITY_PROBE
        assert second.fidelity["self"]["shared_from"]["target"] == "board-a" and second.proxy == first.proxy
        assert second.fidelity_score == first.fidelity_score
        assert calls == [FIDELITY_PROBE]  # the probe, and neither the held-out states nor the proxy's
        own = b.evaluate(CompressionPlan({"fc2": LayerSpec(8, 8)}), proxy_too)
        assert "shared_from" not in own.fidelity and calls[1] == len(cartpole_problem.held_out)
    finally:
        device.stop()


def test_in_turns_the_targets_share_the_plans_in_order(tmp_path: Path) -> None:
    """``turns``: n plans in all, target k's study holding ceil(n (k + 1) / T) at the end of its
    turn (the ``each`` way is run by ``test_one_search_for_two_targets``)."""
    from autoquant.search import Fleet, FleetInfo
    from autoquant.search._problem import PlayStore

    info = FleetInfo(targets=("a", "b", "c"), members=("a", "b", "c"), n_trials=10)
    fleet = Fleet(folder=tmp_path, info=info, members=dict.fromkeys("abc"), store=PlayStore())  # type: ignore[arg-type]
    assert [fleet.quota(k, None) for k in range(3)] == [4, 7, 10]  # type: ignore[arg-type]
    assert [fleet.quota(k, None, 2) for k in range(3)] == [1, 2, 2]  # type: ignore[arg-type]


def test_a_plan_moves_to_another_targets_space_or_is_refused() -> None:
    from autoquant.compress import CompressionPlan, LayerSpec
    from autoquant.search import SearchSpace
    from autoquant.search._fleet import in_space
    from autoquant.search._space import LayerChoices

    layers = (LayerChoices("fc1", weight_bits=(None, 8), prune_ratios=(0.0, 0.5)),
              LayerChoices("fc2", weight_bits=(None, 8), prune_ratios=(0.0,)))
    one = SearchSpace(name="test", layers=layers, channel_multiple=8)
    two = one.with_runtimes(["onnxruntime", "litert"])
    plan = CompressionPlan({"fc1": LayerSpec(8, 8, 0.5)}, channel_multiple=8)
    assert in_space(plan.on("litert"), two).runtime == "litert"
    assert in_space(plan.on("litert"), one).runtime is None  # a runtime the target lacks: its own
    assert in_space(plan, two).runtime == "onnxruntime"
    assert in_space(CompressionPlan({"fc2": LayerSpec(8, 8, 0.5)}, channel_multiple=8), one) is None
    assert in_space(CompressionPlan({"fc1": LayerSpec(4, 8)}, channel_multiple=8), one) is None


@pytest.mark.parametrize(("targets", "says"), [
    ("host,", "empty name"),
    ("host,host", "more than once"),
    ("host,../x.toml", "more than once"),  # x.toml's folder would be "x": fine; host twice is not
])
def test_a_fleet_of_bad_targets_is_one_line(targets: str, says: str) -> None:
    from autoquant.errors import UsageError
    from autoquant.search import parse_targets

    if targets == "host,../x.toml":
        assert parse_targets(targets) == ["host", "../x.toml"]
        return
    with pytest.raises(UsageError, match=says):
        parse_targets(targets)


@pytest.mark.parametrize(("change", "says"), [
    ({"members": ["host", "../elsewhere"]}, "do not match"),
    ({"targets": ["host"], "members": ["host"]}, "two lists"),
    ({"n_trials": "many"}, "n_trials"),
    ({"version": 99}, "version 99"),
])
def test_a_planted_fleet_file_is_refused(tmp_path: Path, change: dict, says: str) -> None:  # type: ignore[type-arg]
    from autoquant.errors import UsageError
    from autoquant.search import FleetInfo
    from autoquant.search._fleet import read_fleet_info

    data = {**FleetInfo(targets=("host", "arm-a72-emulated"), members=("host", "arm-a72-emulated"),
                        n_trials=4).to_json(), **change}
    (tmp_path / "fleet.json").write_text(json.dumps(data))
    with pytest.raises(UsageError, match=says):
        read_fleet_info(tmp_path)


def test_a_fleet_refuses_one_board_for_several_targets(cartpole_dqn_path: Path, tmp_path: Path) -> None:
    proc = cli_main("search", "--policy", str(cartpole_dqn_path), "--target", "host,arm-a72-emulated",
                    "--device", "127.0.0.1:1", "--out", str(tmp_path / "f"), "--quiet")
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    assert "a fleet has several" in proc.stderr and not (tmp_path / "f").exists()


@pytest.mark.slow
def test_one_search_for_two_targets(cartpole_dqn_path: Path, tmp_path: Path) -> None:
    """A fleet of two host targets (short timing windows), the second with two runtimes, each
    target's agent proposing plans of its own (``each``): one folder, a complete
    run per target sharing states, seeds and fp32 episodes; every plan measured on both; the
    report's plan x target table; export of one target's plan; and resume to a larger budget."""
    from autoquant.compress import CompressionPlan
    from autoquant.search import load_fleet

    first, second = tmp_path / "host-a.toml", tmp_path / "host-b.toml"
    first.write_text(FIRST)
    second.write_text(SECOND)
    out = tmp_path / "fleet"
    targets = f"{first},{second}"
    common = ["--method", "quant", "--episodes", "3", "--confirm-episodes", "3", "--states", "256", "--quiet",
              "--json"]
    proc = cli_main("search", "--policy", str(cartpole_dqn_path), "--target", targets, "--trials", "2",
                    "--fleet-proposals", "each", "--out", str(out), *common)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["fleet"] == ["host-a", "host-b"] and set(summary["targets"]) == {"host-a", "host-b"}
    a, b = out / "host-a", out / "host-b"
    for name in ("states.npz", "held_out.npz", "sensitivities.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    info_a, info_b = (json.loads((f / "run.json").read_text()) for f in (a, b))
    assert info_a["reference"]["seeds"] == info_b["reference"]["seeds"]
    assert info_a["reference"]["fp32"] == info_b["reference"]["fp32"]
    assert info_b["reference"]["onnxruntime_int8"]["shared_from"] == str(first)  # its episodes, its own latency

    fleet = load_fleet(out, targets=targets.split(","))
    plans = {name: {CompressionPlan.from_json(r.plan).on(None).describe() for r in run.records()
                    if r.result is not None} for name, run in fleet.members.items()}
    assert plans["host-a"] == plans["host-b"]  # (no plan on LiteRT maps onto an onnxruntime plan measured before)
    counted = {name: [r for r in run.records() if r.counted] for name, run in fleet.members.items()}
    own = {name: [r for r in found if not (r.proposed_as or "").startswith("fleet: ")] for name, found in counted.items()}
    assert len(own["host-a"]) == len(own["host-b"]) == 2  # each agent proposed its 2 plans...
    assert len(counted["host-b"]) == 4 and 3 <= len(counted["host-a"]) <= 4  # ...measured on both (or a repeat)
    taken = [r for r in fleet.members["host-b"].records() if r.result is not None and r.result.shared_from]
    host_rewards = {r.summary: r.result.reward["rewards"] for r in fleet.members["host-a"].records()
                    if r.result is not None and r.result.played}
    for r in taken:
        assert r.result.shared_from == "onnxruntime on host-a"
        assert r.result.reward["rewards"] == host_rewards[r.summary.removesuffix(" on onnxruntime")]
    report = (out / "report.md").read_text()
    assert "## Plan x target" in report and "| plan | host-a | host-b |" in report
    assert (a / "report.md").is_file() and (b / "report.md").is_file()

    refused = cli_main("export", str(out), "--out", str(tmp_path / "x"))
    assert refused.returncode != 0 and "pass --target NAME" in refused.stderr
    toml_by_name = cli_main("export", str(out), "--target", "host-b", "--trial", "0", "--out", str(tmp_path / "x"))
    assert toml_by_name.returncode != 0 and "target file" in toml_by_name.stderr  # a folder never picks a file
    exported = cli_main("export", str(out), "--target", str(first), "--trial", "0", "--out", str(tmp_path / "e"))
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "e" / "policy.onnx").is_file()

    more = cli_main("search", "--out", str(out), "--resume", "--target", targets, "--trials", "3", *common)
    assert more.returncode == 0, more.stderr
    fleet = load_fleet(out, targets=targets.split(","))
    assert fleet.info.n_trials == 3 and fleet.info.proposals == "each"
    for run in fleet.members.values():  # one more plan of its own each
        assert len([r for r in run.records() if r.counted and not (r.proposed_as or "").startswith("fleet: ")]) == 3
    shutil.rmtree(out / "host-b")
    broken = cli_main("search", "--out", str(out), "--resume", "--target", targets, *common)
    assert broken.returncode != 0 and "missing" in broken.stderr
