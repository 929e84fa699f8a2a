"""Hostile and broken policy files (issue 13): each is refused with one PolicyLoadError
(exit 2 and one line from the CLI), runs nothing from the file, and costs bounded
memory. The files are real: SB3 zips rebuilt from the CartPole policy with one thing
changed, torch files written by torch, TorchScript compiled by torch.jit."""

from __future__ import annotations

import base64
import io
import json
import os
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from autoquant.errors import PolicyLoadError
from autoquant.policy import load_policy, read_zoo_yaml
from tests.conftest import cli_main
from tests.policy.test_cli_errors import _assert_one_line_error


class FileWriter(torch.nn.Module):
    """A policy whose forward writes a file: what a TorchScript archive can do."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        written = torch.from_file(self.target, shared=True, size=4)
        return self.fc(x) + written.sum() * 0


def _sb3_zip(source: Path, out: Path, *, data: Callable[[dict], object] | bytes | None = None,
             policy: Callable[[dict], object] | bytes | None = None) -> Path:
    """``source`` (a real SB3 zip) rewritten with its ``data`` JSON and/or ``policy.pth``
    state dict changed."""
    with zipfile.ZipFile(source) as z:
        members = {name: z.read(name) for name in z.namelist()}
    if callable(data):
        members["data"] = json.dumps(data(json.loads(members["data"]))).encode()
    elif data is not None:
        members["data"] = data
    if callable(policy):
        buf = io.BytesIO()
        torch.save(policy(torch.load(io.BytesIO(members["policy.pth"]), weights_only=True)), buf)
        members["policy.pth"] = buf.getvalue()
    elif policy is not None:
        members["policy.pth"] = policy
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, blob in members.items():
            z.writestr(name, blob)
    return out


def _with(key: str, value: object) -> Callable[[dict], dict]:
    def change(data: dict) -> dict:
        return {**data, key: value}
    return change


# --- 1. TorchScript is code -------------------------------------------------------------


def test_torchscript_runs_nothing_without_trust(tmp_path: Path) -> None:
    marker = tmp_path / "written-by-the-policy"
    path = tmp_path / "policy.pt"
    torch.jit.script(FileWriter(str(marker))).save(str(path))
    with pytest.raises(PolicyLoadError, match="TorchScript is code.*--trust-pickle"):
        load_policy(path)
    _assert_one_line_error(cli_main("inspect", "--policy", str(path)), "TorchScript", "--trust-pickle")
    assert not marker.exists()
    load_policy(path, trust_pickle=True)  # opted in: its code runs, as the flag says
    assert marker.exists()


# --- 6. malformed SB3 zips and zoo metadata: one line, exit 2 ----------------------------


@pytest.mark.parametrize(
    ("name", "change", "needle"),
    [
        ("deep-data", lambda: b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nests deeper than"),
        ("list-data", lambda: b"[1, 2, 3]", "JSON list"),
        ("huge-field", lambda: _with("policy_kwargs", {":serialized:": base64.b64encode(os.urandom(13 << 20)).decode()}),
         "over the cap"),
        ("nested-repr", lambda: _with("observation_space", {":serialized:": "", "shape": "[" * 150 + "]" * 150}),
         "no readable shape"),
        ("n-abc", lambda: _with("action_space", {":type:": "<class 'gym.spaces.discrete.Discrete'>", "n": "abc"}),
         "n is 'abc'"),
        ("n-zero", lambda: _with("action_space", {":type:": "<class 'gym.spaces.discrete.Discrete'>", "n": 0}),
         "not a positive integer"),
        ("shape-huge", lambda: _with("observation_space", {"shape": [100_000, 100_000]}), "over the cap"),
    ],
)
def test_malformed_sb3_data_is_one_error(tmp_path: Path, cartpole_dqn_path: Path, name: str,
                                         change: Callable[[], object], needle: str) -> None:
    path = _sb3_zip(cartpole_dqn_path, tmp_path / f"{name}.zip", data=change())
    with pytest.raises(PolicyLoadError, match=needle):
        load_policy(path)


def test_malformed_sb3_zip_from_the_cli(tmp_path: Path, cartpole_dqn_path: Path) -> None:
    deep = _sb3_zip(cartpole_dqn_path, tmp_path / "deep.zip", data=b"[" * 50_000 + b"]" * 50_000)
    _assert_one_line_error(cli_main("inspect", "--policy", str(deep)), "nests deeper than")


def test_args_yml_ordereddict_with_two_items(tmp_path: Path, cartpole_dqn_path: Path) -> None:
    folder = tmp_path / "zoo"
    folder.mkdir()
    args = folder / "args.yml"
    args.write_text("!!python/object/apply:collections.OrderedDict\n- - [env, CartPole-v1]\n- - [algo, dqn]\n")
    with pytest.raises(PolicyLoadError, match="one list of pairs"):
        read_zoo_yaml(args)
    policy = folder / "policy.zip"
    policy.write_bytes(cartpole_dqn_path.read_bytes())
    _assert_one_line_error(cli_main("inspect", "--policy", str(policy)), "args.yml", "--env")
    assert cli_main("inspect", "--policy", str(policy), "--env", "CartPole-v1").returncode == 0


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("!!python/object/apply:collections.OrderedDict\n- [[env, a, b]]\n", "pair"),
        ("!!python/object/apply:collections.OrderedDict {a: 1}\n", "sequence"),
        ("[" * 5000 + "]" * 5000, "nested deeper than 64"),
        ("- " * 3000 + "a\n", "nested too deeply"),
        ("day: 2021-02-30\n", "cannot be read"),
        ("n: !!int\n", "cannot be read"),  # IndexError inside PyYAML, found by tests/fuzz
    ],
    ids=["three-item-pair", "mapping-argument", "deep-flow", "deep-block", "bad-date", "empty-int"],
)
def test_other_broken_zoo_yaml(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "args.yml"
    path.write_text(text)
    with pytest.raises(PolicyLoadError, match=needle):
        read_zoo_yaml(path)


# --- 7. zip bombs: refused from the zip directory, before inflating -----------------------


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory, cartpole_dqn_path: Path) -> Path:
    """The CartPole zip with a `data` member of 1 GiB of zeros (about 1 MB deflated)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    with zipfile.ZipFile(cartpole_dqn_path) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("data", "w", force_zip64=True) as member:
            zeros = bytes(1 << 20)
            for _ in range(1024):
                member.write(zeros)
        z.writestr("policy.pth", src.read("policy.pth"))
    assert path.stat().st_size < 2 << 20
    return path


def test_zip_bomb_is_refused_before_inflating(bomb: Path) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(PolicyLoadError, match="zip bomb"):
            load_policy(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak:,} bytes allocated: the member was inflated"


def test_bomb_in_policy_pth_is_refused(tmp_path: Path, cartpole_dqn_path: Path) -> None:
    path = tmp_path / "pth-bomb.zip"
    with zipfile.ZipFile(cartpole_dqn_path) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("data", src.read("data"))
        z.writestr("policy.pth", bytes(64 << 20))  # 64 MiB deflating 1000:1
    with pytest.raises(PolicyLoadError, match="zip bomb"):
        load_policy(path)


# --- 8. NaN, inf or empty weights: refused at load, naming the tensor ------------------------


def _set(key: str, value: float) -> Callable[[dict], dict]:
    def change(state: dict) -> dict:
        state[key] = state[key].clone()
        state[key][0, 0] = value
        return state
    return change


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_in_an_sb3_zip(tmp_path: Path, cartpole_dqn_path: Path, value: float) -> None:
    path = _sb3_zip(cartpole_dqn_path, tmp_path / "nan.zip", policy=_set("q_net.q_net.2.weight", value))
    with pytest.raises(PolicyLoadError, match=r"tensor q_net\.q_net\.2\.weight holds"):
        load_policy(path)


@pytest.mark.parametrize(
    ("state", "needle"),
    [
        ({"0.weight": torch.full((8, 4), float("nan")), "0.bias": torch.zeros(8),
          "2.weight": torch.zeros(2, 8), "2.bias": torch.zeros(2)}, r"tensor 0\.weight holds 32 NaN"),
        ({"0.weight": torch.zeros(8, 4), "0.bias": torch.tensor([float("-inf")] * 8),
          "2.weight": torch.zeros(2, 8), "2.bias": torch.zeros(2)}, r"tensor 0\.bias holds 0 NaN and 8 infinite"),
        ({"0.weight": torch.zeros(0, 4), "2.weight": torch.zeros(2, 0)}, r"tensor 0\.weight is empty"),
        ({"0.weight": torch.zeros(8, 4, dtype=torch.int64), "2.weight": torch.zeros(2, 8)}, "not dense floating"),
        ({"0.weight": torch.zeros(8, 4), "0.bias": torch.zeros(3), "2.weight": torch.zeros(2, 8)},
         r"0\.bias has shape \(3,\)"),
    ],
)
def test_broken_weights_in_a_state_dict(tmp_path: Path, state: dict, needle: str) -> None:
    path = tmp_path / "state.pt"
    torch.save(state, path)
    with pytest.raises(PolicyLoadError, match=needle):
        load_policy(path)


def test_nan_weights_from_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "nan.pt"
    torch.save({"0.weight": torch.full((8, 4), float("nan")), "2.weight": torch.zeros(2, 8)}, path)
    _assert_one_line_error(cli_main("inspect", "--policy", str(path)), "0.weight", "NaN")


# --- 10. messages ----------------------------------------------------------------------------


def test_pickled_policy_pth_is_refused_without_torchs_advice(tmp_path: Path, cartpole_dqn_path: Path) -> None:
    path = _sb3_zip(cartpole_dqn_path, tmp_path / "pickled.zip",
                    policy=lambda state: {**state, "extra": torch.nn.Linear(2, 2)})
    with pytest.raises(PolicyLoadError) as info:
        load_policy(path)
    message = str(info.value)
    assert "torch.nn.modules.linear.Linear" in message and "never unpickles" in message
    assert "weights_only" not in message and "likely succeed" not in message
    assert "\n" not in message


def test_garbage_torch_file_is_not_called_pickled(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x80\x02" + bytes(range(256)) * 4)
    with pytest.raises(PolicyLoadError) as info:
        load_policy(path)
    message = str(info.value)
    assert "not a torch file this tool can load safely" in message and "truncated" not in message
    assert "weights_only" not in message and "likely succeed" not in message and "\n" not in message


class _Shell:
    """What a malicious checkpoint pickles: a call to the shell on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "legacy torch.save", "raw pickle", "eval"])
def test_a_malicious_torch_file_is_called_unsafe_not_truncated(tmp_path: Path, how: str) -> None:
    """A .pt that calls os.system was reported as 'is it truncated?'."""
    import pickle

    marker = tmp_path / "pwned"
    path = tmp_path / "policy.pt"
    if how == "torch.save":
        torch.save({"fc.weight": torch.zeros(2, 4), "x": _Shell(marker)}, path)
    elif how == "legacy torch.save":
        torch.save(_Shell(marker), path, _use_new_zipfile_serialization=False)
    elif how == "raw pickle":
        path.write_bytes(pickle.dumps(_Shell(marker), protocol=2))
    else:
        path.write_bytes(f"cbuiltins\neval\n(S'open({str(marker)!r}, \"w\")'\ntR.".encode())
    with pytest.raises(PolicyLoadError) as info:
        load_policy(path)
    message = str(info.value)
    assert "not a torch file this tool can load safely" in message and "truncated" not in message, message
    assert ("system" in message or "eval" in message) and "\n" not in message

    _assert_one_line_error(cli_main("inspect", "--policy", str(path)), "can load safely")
    assert not marker.exists()


def test_untrusted_text_stays_on_one_line(tmp_path: Path, cartpole_dqn_path: Path) -> None:
    """Found by tests/fuzz: text from the file went into messages verbatim."""
    space = _sb3_zip(cartpole_dqn_path, tmp_path / "space.zip",
                     data=_with("action_space", {":type:": "Evil\nautoquant: all good"}))
    keys = tmp_path / "keys.pt"
    torch.save({"0.weight\nautoquant: all good": torch.zeros(2, 4)}, keys)
    for path in (space, keys):
        with pytest.raises(PolicyLoadError) as info:
            load_policy(path)
        assert "\n" not in str(info.value)
