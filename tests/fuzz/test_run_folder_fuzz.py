"""Fuzz what a run folder and an ActorQ bundle hold: run.json (through ``load_run``),
confirm.json, the recorded state sets and the bundle manifest. Each reader gives its value
or one line of AutoquantError, never another exception and never a read outside the folder.

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


def _one_line(exc: AutoquantError) -> None:
    assert "\n" not in str(exc) and "Traceback" not in str(exc)


_CONFIG_KEYS = st.sampled_from(["policy", "env_id", "target", "device", "secret_file", "storage", "seed", "episodes",
                                "sticky_actions", "n_trials", "method", "agent", "min_retention"]) | st.text(max_size=6)
_RUN_JSON = st.fixed_dictionaries(
    {"format": st.just("autoquant.run") | json_values(), "version": st.sampled_from([1, 2, 3]) | json_values(),
     "config": st.dictionaries(_CONFIG_KEYS, json_values(), max_size=6) | json_values(),
     "policy": st.fixed_dictionaries({"sha256": st.text(max_size=8) | json_values()}) | json_values(),
     "target": st.fixed_dictionaries({"fingerprint": st.text(max_size=8)}) | json_values(),
     "reference": st.fixed_dictionaries({"seeds": st.lists(st.integers(), max_size=3), "fp32": json_values(),
                                         "random": json_values()}) | json_values(),
     "study_name": st.text(max_size=8) | json_values()})
_BYTES = (st.binary(max_size=256) | nested().map(str.encode)
          | _RUN_JSON.map(lambda d: json.dumps(d, allow_nan=True).encode()))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run")


@fuzz(150)
@given(_BYTES)
def test_load_run_reads_any_run_json_or_says_why_in_one_line(folder: Path, raw: bytes) -> None:
    from autoquant.search import load_run

    (folder / "run.json").write_bytes(raw)
    with pytest.raises(AutoquantError) as caught:  # no policy file is ever where a fuzzed run.json says
        load_run(folder)
    _one_line(caught.value)


@fuzz(150)
@given(st.binary(max_size=256) | nested().map(str.encode) | json_values().map(lambda v: json.dumps(v).encode())
       | st.fixed_dictionaries({"format": st.just("autoquant.confirm"), "trial": json_values()}).map(
           lambda d: json.dumps(d).encode()))
def test_confirm_json_is_a_dict_of_its_format_or_one_line(folder: Path, raw: bytes) -> None:
    from autoquant.search import CONFIRM_FORMAT, read_confirm

    (folder / "best").mkdir(exist_ok=True)
    (folder / "best" / "confirm.json").write_bytes(raw)
    try:
        data = read_confirm(folder)
    except AutoquantError as exc:
        _one_line(exc)
        return
    assert isinstance(data, dict) and data["format"] == CONFIRM_FORMAT


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

