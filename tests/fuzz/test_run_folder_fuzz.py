"""Fuzz what a run folder and an ActorQ bundle hold: run.json (through ``read_run_info`` and
``load_run``), confirm.json, the recorded state sets and the bundle manifest. Each reader gives
its value or one line of AutoquantError, never another exception and never a read outside the
folder. Besides random bytes and shapes, run.json (versions 2 and 3) and confirm.json are fuzzed
as a file autoquant wrote with one field, at any depth, replaced by any JSON value or removed:
what the typed readers accept, they write back unchanged.

Examples per run: 150 + 150 + 120 + 150 (570), a few seconds on 2 cores."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoquant.errors import AutoquantError
from tests.fuzz.common import fuzz, json_values, nested

_GONE = object()  # a field removed instead of replaced


def _one_line(exc: AutoquantError) -> None:
    assert "\n" not in str(exc) and "Traceback" not in str(exc)


_CONFIG_KEYS = st.sampled_from(["policy", "env_id", "target", "device", "secret_file", "storage", "seed", "episodes",
                                "sticky_actions", "n_trials", "method", "agent", "min_retention",
                                "settings"]) | st.text(max_size=6)
_RUN_JSON = st.fixed_dictionaries(
    {"format": st.just("autoquant.run") | json_values(), "version": st.sampled_from([1, 2, 3, 4]) | json_values(),
     "config": st.dictionaries(_CONFIG_KEYS, json_values(), max_size=6) | json_values(),
     "policy": st.fixed_dictionaries({"path": st.text(max_size=8), "sha256": st.text(max_size=8) | json_values()})
     | json_values(),
     "target": st.fixed_dictionaries({"name": st.text(max_size=8), "facts": json_values(),
                                      "fingerprint": st.text(max_size=8)}) | json_values(),
     "reference": st.fixed_dictionaries({"seeds": st.lists(st.integers(), max_size=3), "fp32": json_values(),
                                         "random": json_values()}) | json_values(),
     "study_name": st.text(max_size=8) | json_values()})


def _episodes() -> object:
    from autoquant.evaluate import EpisodeStats

    return EpisodeStats(seeds=(1, 2, 3), rewards=(10.0, 12.5, 9.0), lengths=(100, 120, 90), steps_per_s=500.0)


def _run_json(version: int) -> dict:
    """A run.json as autoquant writes it (version 2: the scoring settings flat in ``config``)."""
    from autoquant.search import PolicyInfo, References, RunConfig, RunInfo, TargetInfo

    policy = Path("/nonexistent/autoquant/policy.zip")  # never a file: load_run always stops at it
    info = RunInfo(config=RunConfig(policy=policy, env_id="CartPole-v1", sticky_actions=0.0),
                   policy=PolicyInfo(path=policy, sha256="0" * 64, algo="dqn", env_id="CartPole-v1"),
                   target=TargetInfo(name="host", facts={"cpu": "x", "threads": 1}, fingerprint="host|x|1.0|1"),
                   references=References(seeds=(1, 2, 3), fp32=_episodes(), random=_episodes(), fp32_size_bytes=640,
                                         onnxruntime_int8={"latency_ratio": 0.7, "retention": 0.99}),
                   study_name="run", space={"layers": {}}, protocol={"name": "seeded starts", "sticky_actions": 0.0},
                   created="2026-01-01T00:00:00+00:00", autoquant_version="0.1.0")
    data = info.to_json()
    if version == 2:
        data["version"] = 2
        data["config"] = {**{k: v for k, v in data["config"].items() if k != "settings"}, **data["config"]["settings"]}
    return data


def _confirm_json() -> dict:
    """A best/confirm.json as autoquant writes it."""
    from autoquant.compress import CompressionPlan
    from autoquant.search import Attempt, ConfirmedPlan, ConfirmFigures, Confirmation, SearchFigures

    protocol = {"name": "seeded starts", "sticky_actions": 0.0, "starts": None}
    paired = {"retention": 0.99, "distinct_pairs": 3, "exact": False}
    best = ConfirmedPlan(
        trial=4, plan=CompressionPlan.from_json({"format": "autoquant.plan", "version": 1, "layers": {
            "fc1": {"weight_bits": 8, "act_bits": 8, "prune_ratio": 0.25}}}), summary="fc1 w8a8 p0.25",
        search=SearchFigures(latency_ratio=0.6, retention=0.995, size_ratio=0.3),
        confirm=ConfirmFigures(seeds=(1, 2, 3), episodes=3, retention=0.99, retention_low=0.9, retention_high=1.08,
                               exact=False, distinct_pairs=3, distinct_games={"candidate": 3, "reference": 3},
                               protocol=protocol, sticky_actions=0.0, reward=_episodes(), fp32_reward=_episodes(),
                               random_reward=_episodes()),
        size_bytes=640, kernels={"layers": {"fc1": "int8"}}, fine_tuned=None)
    return Confirmation(attempts=(Attempt(trial=4, summary="fc1 w8a8 p0.25", retention=0.99, passed=True,
                                          reward=_episodes(), paired=paired),),
                        best=best, protocol=protocol, autoquant_version="0.1.0").to_json()


def _paths(value: object, at: tuple = ()) -> list[tuple]:
    """Every key path into the objects of ``value`` (not into lists)."""
    if not isinstance(value, dict):
        return []
    return [p for k, v in value.items() for p in [(*at, k), *_paths(v, (*at, k))]]


def _with(doc: dict, path: tuple, value: object) -> dict:
    """``doc`` with the field at ``path`` replaced by ``value`` (removed for _GONE)."""
    doc = json.loads(json.dumps(doc))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if value is _GONE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


def _one_field_off(make: object) -> st.SearchStrategy[bytes]:
    """The document ``make()`` gives, with one field replaced by any JSON value or removed."""
    def strategy() -> st.SearchStrategy[bytes]:
        doc = make()  # type: ignore[operator]
        return st.tuples(st.sampled_from(_paths(doc)), json_values() | st.just(_GONE)).map(
            lambda change: json.dumps(_with(doc, *change), allow_nan=True).encode())
    return st.deferred(strategy)


_BYTES = (st.binary(max_size=256) | nested().map(str.encode)
          | _RUN_JSON.map(lambda d: json.dumps(d, allow_nan=True).encode())
          | _one_field_off(lambda: _run_json(3)) | _one_field_off(lambda: _run_json(2)))


def _json_text(value: object) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run")


@pytest.mark.slow
@fuzz(150)
@given(_BYTES)
def test_load_run_reads_any_run_json_or_says_why_in_one_line(folder: Path, raw: bytes) -> None:
    from autoquant.search import RunInfo, load_run, read_run_info

    (folder / "run.json").write_bytes(raw)
    try:
        info = read_run_info(folder)
    except AutoquantError as exc:
        _one_line(exc)
    else:
        again = RunInfo.from_json(info.to_json(), what="run.json")  # written back as read
        assert again.version == 3 and _json_text(again.to_json()) == _json_text(info.to_json())
    with pytest.raises(AutoquantError) as caught:  # no policy file is ever where a fuzzed run.json says
        load_run(folder)
    _one_line(caught.value)


@fuzz(150)
@given(st.binary(max_size=256) | nested().map(str.encode) | json_values().map(lambda v: json.dumps(v).encode())
       | st.fixed_dictionaries({"format": st.just("autoquant.confirm"), "trial": json_values()}).map(
           lambda d: json.dumps(d).encode()) | _one_field_off(_confirm_json))
def test_confirm_json_is_a_confirmed_plan_or_one_line(folder: Path, raw: bytes) -> None:
    from autoquant.search import Confirmation, read_confirm

    (folder / "best").mkdir(exist_ok=True)
    (folder / "best" / "confirm.json").write_bytes(raw)
    try:
        found = read_confirm(folder)
    except AutoquantError as exc:
        _one_line(exc)
        return
    assert isinstance(found, Confirmation) and found.best is not None
    again = Confirmation.from_json(found.to_json(), what="confirm.json", confirmed=True)
    assert _json_text(again.to_json()) == _json_text(found.to_json())


def test_the_documents_the_fuzz_starts_from_are_read(folder: Path) -> None:
    """Unchanged, the run.json of either version and the confirm.json the mutations start from are
    read (so the fuzz reaches past the first check), version 2's flat settings as version 3's."""
    from autoquant.search import RunInfo, read_confirm

    v2, v3 = (RunInfo.from_json(_run_json(v), what="run.json") for v in (2, 3))
    assert v2.version == 2 and v3.version == 3 and v2.replace(version=3) == v3 and v2.to_json() == _run_json(3)
    (folder / "best").mkdir(exist_ok=True)
    (folder / "best" / "confirm.json").write_text(json.dumps(_confirm_json()))
    found = read_confirm(folder)
    assert found is not None and found.best is not None and found.to_json() == _confirm_json()


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


_VALID = _npz({"states": np.zeros((2, 4), np.float32),
               "meta": np.array(json.dumps({"format": "autoquant.states", "version": 1, "env_id": "CartPole-v1",
                                            "seed": 0, "epsilon": 0.05}))})


def _mutate(data: bytes, at: int, junk: bytes) -> bytes:
    at %= len(data)
    return data[:at] + junk + data[at + len(junk):]


@fuzz(120)
@given(st.binary(max_size=256) | st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=8)).map(
    lambda t: _mutate(_VALID, *t)) | st.sampled_from([_VALID, _npz({"states": np.zeros((2,), np.float64)})]))
def test_a_state_set_loads_or_says_why_in_one_line(folder: Path, raw: bytes) -> None:
    from autoquant.evaluate import StateSet

    (folder / "states.npz").write_bytes(raw)
    try:
        states = StateSet.load(folder / "states.npz")
    except AutoquantError as exc:
        _one_line(exc)
        return
    assert states.states.dtype == np.float32


_FILE_ENTRY = st.fixed_dictionaries({"path": st.sampled_from(["graph.onnx", "../graph.onnx", "/etc/hostname",
                                                              "sub/x", "", ".."]) | json_values(),
                                     "sha256": st.text(max_size=8) | json_values()})
_MANIFEST = st.fixed_dictionaries(
    {"format": st.just("autoquant.actorq") | json_values(), "version": st.sampled_from([1, 2]) | json_values(),
     "files": st.dictionaries(st.sampled_from(["graph", "template", "arrays"]) | st.text(max_size=4),
                              _FILE_ENTRY | json_values(), max_size=4) | json_values()})


@fuzz(150)
@given(st.binary(max_size=256) | nested().map(str.encode) | _MANIFEST.map(lambda d: json.dumps(d).encode()))
def test_a_bundle_manifest_loads_or_says_why_in_one_line(folder: Path, raw: bytes) -> None:
    from autoquant.actorq import load_bundle

    bundle = folder / "bundle"
    bundle.mkdir(exist_ok=True)
    (bundle / "actorq.json").write_bytes(raw)  # the manifest's name, as a bundle's reader sees it
    with pytest.raises(AutoquantError) as caught:  # no fuzzed manifest names files that are all there
        load_bundle(bundle)
    _one_line(caught.value)


def test_the_valid_state_set_of_the_fuzz_loads(folder: Path) -> None:
    """The seed the mutations start from is a state set the reader accepts."""
    from autoquant.evaluate import StateSet

    (folder / "ok.npz").write_bytes(_VALID)
    assert StateSet.load(folder / "ok.npz").states.shape == (2, 4)
    with zipfile.ZipFile(io.BytesIO(_VALID)) as archive:
        assert sorted(archive.namelist()) == ["meta.npy", "states.npy"]

