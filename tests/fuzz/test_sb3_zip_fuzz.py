"""Fuzz the SB3 zip reader (``load_policy`` on a zip): the real CartPole zip with its
``data`` JSON changed (spaces, policy class, kwargs), with ``data`` or ``policy.pth``
bytes mutated (rezipped, so the CRC is right and the parsers see them), zips of
arbitrary members and compressions, and bytes that are no zip. Either a policy or an
AutoquantError (PolicyLoadError, or EnvMismatchError once an env is known), never
another exception, and never code from the file run.

Examples per run: 100 + 100 + 60 + 80 + 100 (440), about 8 s on 2 cores."""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from autoquant.errors import AutoquantError
from autoquant.policy import load_policy
from tests.fuzz.common import fuzz, json_values, nested

_SPACE_TYPES = st.sampled_from([
    "<class 'gym.spaces.discrete.Discrete'>", "<class 'gymnasium.spaces.box.Box'>",
    "<class 'gym.spaces.multi_discrete.MultiDiscrete'>", "Box", "Discrete",
]) | st.text(max_size=10)
_SHAPES = st.lists(st.integers(-2, 300), max_size=4) | st.text(max_size=12) | json_values()
_SPACES = st.fixed_dictionaries(
    {":type:": _SPACE_TYPES},
    optional={":serialized:": st.text(max_size=8), "n": st.integers(-2, 300) | json_values(), "shape": _SHAPES,
              "_shape": _SHAPES, "dtype": st.sampled_from(["float32", "uint8", "int64"]) | json_values()},
)
_KWARGS = st.fixed_dictionaries({}, optional={
    "net_arch": json_values() | st.text(max_size=20), "activation_fn": st.sampled_from(
        ["<class 'torch.nn.modules.activation.Tanh'>", "ReLU", "Sigmoid"]) | json_values(),
    "normalize_images": json_values(), "clip_mean": json_values(), ":serialized:": st.text(max_size=8)})
_CLASSES = st.fixed_dictionaries({"__module__": st.sampled_from([
    "stable_baselines3.dqn.policies", "stable_baselines3.common.policies", "sb3_contrib.qrdqn.policies",
    "stable_baselines3.sac.policies", "os"]) | json_values()})
_CHANGES = st.dictionaries(
    st.sampled_from(["policy_class", "observation_space", "action_space", "policy_kwargs", "use_sde",
                     "n_epochs"]),
    st.one_of(_SPACES, _KWARGS, _CLASSES, json_values()), max_size=4)


@pytest.fixture(scope="module")
def members(cartpole_dqn_path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(cartpole_dqn_path) as z:
        return {name: z.read(name) for name in z.namelist() if name != "policy.optimizer.pth"}


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zips") / "policy.zip"


def _write(path: Path, entries: list[tuple[str, bytes, int]]) -> None:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as z:
        warnings.simplefilter("ignore", UserWarning)  # duplicate names are part of the fuzz
        for name, blob, method in entries:
            z.writestr(zipfile.ZipInfo(name), blob, compress_type=method)
    path.write_bytes(buf.getvalue())


def _load(path: Path) -> None:
    try:
        load_policy(path)
    except AutoquantError as exc:
        assert "\n" not in str(exc), str(exc)
        event(f"refused: {type(exc).__name__}: {str(exc).replace(str(path), '')[:40]}")
    else:
        event("loaded")


def _mutate(blob: bytes, edits: list[tuple[int, bytes]]) -> bytes:
    out = bytearray(blob)
    for position, new in edits:
        at = position % (len(out) + 1)
        out[at:at + len(new)] = new
    return bytes(out)


@pytest.mark.slow
@fuzz(100)
@given(_CHANGES)
def test_changed_data_json(members: dict[str, bytes], out: Path, changes: dict[str, Any]) -> None:
    data = {**json.loads(members["data"]), **changes}
    _write(out, [(n, json.dumps(data).encode() if n == "data" else b, zipfile.ZIP_DEFLATED)
                 for n, b in members.items()])
    _load(out)


_EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), st.binary(min_size=1, max_size=4)), min_size=1, max_size=6)


@fuzz(100)
@given(st.one_of(_EDITS.map(lambda e: ("edit", e)), json_values().map(lambda v: ("json", v)),
                 nested(st.integers(1, 50_000)).map(lambda t: ("text", t))))
def test_mutated_or_replaced_data(members: dict[str, bytes], out: Path, change: tuple[str, Any]) -> None:
    kind, value = change
    if kind == "edit":
        data = _mutate(members["data"], value)
    else:
        data = (json.dumps(value) if kind == "json" else value).encode()
    _write(out, [(n, data if n == "data" else b, zipfile.ZIP_STORED) for n, b in members.items()])
    _load(out)


@fuzz(60)
@given(_EDITS)
def test_mutated_policy_pth(members: dict[str, bytes], out: Path, edits: list[tuple[int, bytes]]) -> None:
    pth = members["policy.pth"]
    edits = [(p % len(pth), b) for p, b in edits]
    _write(out, [(n, _mutate(b, edits) if n == "policy.pth" else b, zipfile.ZIP_STORED) for n, b in members.items()])
    _load(out)


_NAMES = st.sampled_from(["data", "policy.pth", "archive/constants.pkl", "archive/data.pkl", "pytorch_variables.pth",
                          "x/../data", ""]) | st.text(min_size=1, max_size=8)
_METHODS = st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])


@pytest.mark.slow
@fuzz(80)
@given(st.lists(st.tuples(_NAMES, st.binary(max_size=256) | st.sampled_from(["data", "policy.pth"]), _METHODS),
                max_size=5))
def test_zips_of_arbitrary_members(members: dict[str, bytes], out: Path,
                                   entries: list[tuple[str, bytes | str, int]]) -> None:
    _write(out, [(name or "_", members[blob] if isinstance(blob, str) else blob, method)
                 for name, blob, method in entries])
    _load(out)


@fuzz(100)
@given(st.binary(max_size=2048) | st.binary(max_size=64).map(lambda b: b"PK\x03\x04" + b)
       | st.binary(max_size=64).map(lambda b: b"PK\x05\x06" + b))
def test_bytes_that_are_no_zip(out: Path, raw: bytes) -> None:
    out.write_bytes(raw)
    _load(out)
