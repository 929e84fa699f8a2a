"""Load a policy file into a PolicyBundle without executing anything from the file.

Supported: stable-baselines3 / sb3-contrib zips (DQN, QR-DQN, PPO, A2C, SAC, TQC,
TD3) and torch state dicts of Conv/Linear stacks (plain ``nn.Sequential`` or SB3 key
names); only with ``trust_pickle=True``, because loading them runs code from the
file, TorchScript archives and pickled ``nn.Module`` objects.

Every file is untrusted input: zips are checked against size and inflation caps
before anything is inflated, JSON against size and depth caps, and every way a file
can be wrong ends in one PolicyLoadError.
"""

from __future__ import annotations

import ast
import io
import math
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoquant._untrusted import check_zip, loads_json, open_zip, read_zip_member, short_repr
from autoquant.errors import EnvMismatchError, PolicyLoadError, first_line
from autoquant.policy._arch import (
    ACTIVATIONS,
    Block,
    blocks_from_plain_state_dict,
    build_chain,
    infer_square_input,
    sb3_layout,
)
from autoquant.policy._bundle import ActionSpec, PolicyBundle
from autoquant.policy._envs import canonical_env_id, env_id_from_metadata, make_env

__all__ = ["load_policy"]


def load_policy(
    path: str | Path,
    *,
    env_id: str | None = None,
    trust_pickle: bool = False,
    activation: str | None = None,
    conv_strides: Sequence[int] | None = None,
) -> PolicyBundle:
    """Load ``path`` and, when the environment is known, check the network fits it.

    ``env_id`` defaults to what the file implies (the zoo's ``args.yml`` next to it,
    or a file name such as ``CartPole-v1.zip``). ``activation`` (default: ReLU, or the
    SB3 algorithm's default) and ``conv_strides`` describe state dicts, which do not
    store them.
    """
    path = Path(path)
    if not path.is_file():
        raise PolicyLoadError(f"policy file not found: {path}")
    if activation is not None and activation not in ACTIVATIONS:
        raise PolicyLoadError(f"unknown activation {activation!r}: use one of {sorted(ACTIVATIONS)}")
    if zipfile.is_zipfile(path):
        names = _zip_names(path)
        if "data" in names and "policy.pth" in names:
            bundle = _load_sb3_zip(path)
        elif any(n.endswith("constants.pkl") for n in names):
            bundle = _load_torchscript(path, trust_pickle=trust_pickle)
        else:
            bundle = _load_torch_file(path, trust_pickle=trust_pickle, activation=activation,
                                      conv_strides=conv_strides)
    elif path.suffix == ".zip":
        raise PolicyLoadError(f"{path} is not a readable zip archive (truncated or corrupt?)")
    else:
        bundle = _load_torch_file(path, trust_pickle=trust_pickle, activation=activation,
                                  conv_strides=conv_strides)
    _check_forward(bundle)
    env_id = canonical_env_id(env_id) if env_id else env_id_from_metadata(path)
    if env_id is not None:
        bundle = _attach_env(bundle, env_id)
    return bundle


def _zip_names(path: Path) -> list[str]:
    """Member names, after the caps on declared sizes and every member's CRC."""
    with open_zip(path, where=str(path), error=PolicyLoadError) as z:
        return check_zip(z, where=str(path), error=PolicyLoadError, test_crc=True)


# --- stable-baselines3 zips -----------------------------------------------------------

_SB3_MODULE = re.compile(r"^(?:stable_baselines3|sb3_contrib)\.(\w+)\.policies$")
_MAX_DATA_BYTES = 16 << 20  # SB3's `data` JSON is tens of kB, serialized spaces included
_MAX_LITERAL_CHARS = 4096  # the reprs read (shapes, n, net_arch, class names) are far shorter
_MAX_INPUT_ELEMENTS = 1 << 24  # 64 MB of float32 per observation; Atari's is 28,224


def _literal(value: Any) -> Any:
    """A repr string from SB3's JSON (e.g. '[64, 64]', 'True') -> value, else as is.
    Long reprs (arrays) are left as strings: nothing read from them is needed."""
    if isinstance(value, str) and len(value) <= _MAX_LITERAL_CHARS:
        try:
            return ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return value
    return value


def _json_field(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    """An SB3 data entry: plain JSON, or a pickled entry of which we read only the reprs."""
    value = data.get(key)
    if not isinstance(value, dict):
        return {}
    if ":serialized:" in value:
        return {k: _literal(v) for k, v in value.items() if k != ":serialized:"}
    return dict(value)


def _space_shape(space: Mapping[str, Any], what: str) -> tuple[int, ...]:
    shape = space.get("shape", space.get("_shape"))
    if not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= 8 \
            or not all(_is_int(v) and v >= 1 for v in shape):
        raise PolicyLoadError(f"the zip's {what} has no readable shape (got {short_repr(shape)}): expected a "
                              "list of 1 to 8 positive integers")
    if math.prod(shape) > _MAX_INPUT_ELEMENTS:
        raise PolicyLoadError(f"the zip's {what} has shape {tuple(shape)}, over the cap of "
                              f"{_MAX_INPUT_ELEMENTS:,} elements")
    return tuple(shape)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# What torch's weights-only unpickler says of a global whose module it blocks outright.
_BLOCKED_GLOBAL = re.compile(r"unsupported GLOBAL ([\w.]+) whose module [\w.]+ is blocked")
# Globals no weights file calls: the operating system, processes, imports, and code from text.
_SYSTEM_MODULES = ("os.", "posix.", "nt.", "subprocess.", "sys.", "shutil.", "socket.", "runpy.", "importlib.",
                   "ctypes.", "pty.", "builtins.", "webbrowser.", "code.", "pickle.", "marshal.")
_CODE_BUILTINS = {"eval", "exec", "compile", "__import__", "getattr", "setattr", "delattr", "open", "breakpoint",
                  "input", "globals", "locals", "vars", "apply"}


def _code_call(exc: BaseException) -> str | None:
    """The function a refused pickle would have called, where it is code rather than a
    class of weights (``posix.system``, ``eval``): the sign of a malicious file."""
    text = str(exc)
    found = _BLOCKED_GLOBAL.search(text)
    if found:
        return found.group(1)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found and (found.group(1) in _CODE_BUILTINS or found.group(1).startswith(_SYSTEM_MODULES)):
        return found.group(1)
    return None


def _torch_reason(exc: BaseException) -> str:
    """Why torch refused a file, in one line, without torch's advice to unpickle it anyway."""
    text = str(exc)
    call = _code_call(exc)
    if call is not None:
        return f"unpickling it would call {call}: code, not weights"
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds pickled Python objects ({found.group(1)})"
    _, marker, detail = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (detail if marker else text).splitlines() if line.strip()]
    for line in lines:
        kept = [s for s in re.split(r"(?<=\.)\s+", line) if "weights_only" not in s and "Weights only" not in s]
        if kept:
            return " ".join(kept)[:200]
    return type(exc).__name__


def _tensors(state: Mapping[Any, Any], path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, keyed by name; names go into messages, so they must
    be short printable text."""
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        if not isinstance(key, str) or not key.isprintable() or len(key) > 256:
            raise PolicyLoadError(f"{path}: state dict key {short_repr(key)} is not a layer name (short "
                                  "printable text); the file is corrupt")
        out[key] = value
    return out


def _pickled_objects(exc: BaseException) -> bool:
    return "Unsupported global" in str(exc)


def _load_sb3_zip(path: Path) -> PolicyBundle:
    with open_zip(path, where=str(path), error=PolicyLoadError) as z:
        raw = read_zip_member(z, "data", max_bytes=_MAX_DATA_BYTES, where=str(path), error=PolicyLoadError)
        data = loads_json(raw, what=f"{path}: the 'data' entry", error=PolicyLoadError,
                          max_bytes=_MAX_DATA_BYTES)
        if not isinstance(data, dict):
            raise PolicyLoadError(f"{path}: the 'data' entry is a JSON {type(data).__name__}, not the object "
                                  "stable-baselines3 writes; the file is not an SB3 model")
        pth = read_zip_member(z, "policy.pth", max_bytes=2 << 30, where=str(path), error=PolicyLoadError)
    try:
        state = torch.load(io.BytesIO(pth), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch's reader on untrusted bytes fails in many ways
        raise PolicyLoadError(
            f"{path}: policy.pth is not a plain state dict ({_torch_reason(exc)}); autoquant never "
            "unpickles objects from an SB3 zip: save the model again with stable-baselines3's model.save()"
        ) from None
    if not isinstance(state, Mapping):
        raise PolicyLoadError(f"{path}: policy.pth holds a {type(state).__name__}, not a state dict")
    state = _tensors(state, path)
    policy_class = _json_field(data, "policy_class")
    match = _SB3_MODULE.match(str(policy_class.get("__module__", "")))
    algo = match.group(1) if match else None
    if algo == "common":
        algo = "ppo" if "n_epochs" in data else "a2c"
    policy_kwargs = _json_field(data, "policy_kwargs")
    obs_space = _json_field(data, "observation_space")
    act_space = _json_field(data, "action_space")
    use_sde = data.get("use_sde", False)
    layout = sb3_layout(state, algo_hint=algo, policy_kwargs=policy_kwargs, use_sde=use_sde is True)
    net, sources = build_chain(layout.blocks)
    input_shape = _space_shape(obs_space, "observation space")
    space_type = str(act_space.get(":type:", ""))
    head_out = int(layout.blocks[-1].weight.shape[0])
    if "Discrete" in space_type and "Multi" not in space_type:
        n = act_space.get("n")
        if not _is_int(n) or n < 1:
            raise PolicyLoadError(f"{path}: the action space's n is {short_repr(n)}, not a positive integer; "
                                  "the file is corrupt")
        if layout.kind == "quantile":
            if head_out % n:
                raise PolicyLoadError(f"{path}: the quantile head gives {head_out} outputs, not a multiple "
                                      f"of the {n} actions")
            action = ActionSpec("quantile", n_actions=n, n_quantiles=head_out // n)
        else:
            if head_out != n:
                raise PolicyLoadError(f"{path}: the action head gives {head_out} outputs for {n} actions; "
                                      "the file is corrupt")
            action = ActionSpec("argmax", n_actions=n)
    elif "Box" in space_type:
        shape = _space_shape(act_space, "action space")
        if math.prod(shape) != head_out:
            raise PolicyLoadError(f"{path}: the action head gives {head_out} outputs for actions of shape "
                                  f"{shape}; the file is corrupt")
        kind = "clip" if layout.kind == "argmax" else layout.kind
        action = ActionSpec(kind, action_shape=shape, clip_mean=layout.clip_mean)
    else:
        raise PolicyLoadError(
            f"{path}: action space {short_repr(space_type) if space_type else '?'} is not supported "
            "(Discrete or Box only)"
        )
    is_image = str(obs_space.get("dtype")) == "uint8" and len(input_shape) == 3
    normalize = policy_kwargs.get("normalize_images", True) is not False
    return PolicyBundle(
        net=net, input_shape=input_shape, action=action, algo=layout.algo, source=path,
        obs_scale=1.0 / 255.0 if (is_image and normalize) else 1.0, layer_sources=sources,
    )


# --- torch files -----------------------------------------------------------------------


def _load_torch_file(path: Path, *, trust_pickle: bool, activation: str | None,
                     conv_strides: Sequence[int] | None) -> PolicyBundle:
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        call = _code_call(exc)
        if not trust_pickle and call is not None:
            raise PolicyLoadError(
                f"{path} is not a torch file this tool can load safely: unpickling it would call {call} (code, not "
                "weights), so nothing of it was loaded; do not pass --trust-pickle unless you made the file yourself"
            ) from None
        if not trust_pickle and not _pickled_objects(exc):
            raise PolicyLoadError(
                f"{path} is not a torch file this tool can load safely ({_torch_reason(exc)}): only tensors, "
                "state dicts and plain containers are read without --trust-pickle"
            ) from None
        if not trust_pickle:
            raise PolicyLoadError(
                f"{path} holds pickled Python objects (such as a whole nn.Module), and loading "
                "them runs code from the file: re-save it with torch.save(model.state_dict()) "
                "or pass --trust-pickle if you trust where it came from"
            ) from exc
        try:
            obj = torch.load(path, weights_only=False, map_location="cpu")
        except Exception as exc2:  # noqa: BLE001 - any failure of an opted-in unpickle
            raise PolicyLoadError(f"{path}: cannot unpickle ({first_line(exc2)})") from exc2
    except Exception as exc:  # noqa: BLE001 - torch's reader on untrusted bytes fails in many ways
        raise PolicyLoadError(
            f"{path} is not a torch file this tool can read ({_torch_reason(exc)}); is it truncated?"
        ) from None
    if isinstance(obj, nn.Module):
        return _from_module(obj, path, algo="torch")
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        if not isinstance(obj, Mapping):
            raise PolicyLoadError(f"{path}: its state dict is a {type(obj).__name__}, not a mapping")
        state = _tensors(obj, path)
        if any(k.startswith(("q_net.", "quantile_net.", "action_net.", "actor.", "mlp_extractor."))
               for k in state):
            kwargs = {"activation_fn": ACTIVATIONS[activation].__name__} if activation else {}
            layout = sb3_layout(state, algo_hint=None, policy_kwargs=kwargs)
            blocks, kind, algo = layout.blocks, layout.kind, layout.algo
        else:
            blocks = blocks_from_plain_state_dict(state, activation=activation or "relu",
                                                  conv_strides=conv_strides)
            kind, algo = "argmax", "torch"
        return _bundle_from_blocks(blocks, path, algo=algo, kind=kind)
    raise PolicyLoadError(
        f"{path} holds a {type(obj).__name__}, not a state dict or module: save "
        "torch.save(net.state_dict(), path)"
    )


def _load_torchscript(path: Path, *, trust_pickle: bool) -> PolicyBundle:
    if not trust_pickle:
        raise PolicyLoadError(
            f"{path} is a TorchScript archive, and TorchScript is code that runs when it is loaded: pass "
            "--trust-pickle if you trust where it came from, or save torch.save(model.state_dict(), path)"
        )
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure of an opted-in load
        raise PolicyLoadError(f"{path}: not a loadable TorchScript archive ({first_line(exc)})") from exc
    return _from_module(module, path, algo="torchscript")


_IGNORED = ("Dropout", "Identity", "Sequential", "ModuleList", "RecursiveScriptModule")


def _from_module(module: nn.Module, path: Path, *, algo: str) -> PolicyBundle:
    """Blocks from the leaves of a module that is a plain Conv/Linear/activation chain."""
    act_names = {cls.__name__: name for name, cls in ACTIVATIONS.items()}
    blocks: list[Block] = []
    for name, leaf in module.named_modules():
        if any(True for _ in leaf.children()):
            continue
        kind = getattr(leaf, "original_name", type(leaf).__name__)
        if kind in ("Conv2d", "Linear"):
            stride = tuple(getattr(leaf, "stride", (1, 1)))
            padding = getattr(leaf, "padding", (0, 0))
            if isinstance(padding, str) or tuple(getattr(leaf, "dilation", (1, 1))) != (1, 1) \
                    or int(getattr(leaf, "groups", 1)) != 1:
                raise PolicyLoadError(f"{path}: layer {name} uses padding/dilation/groups autoquant does not rebuild")
            bias = leaf.bias if isinstance(getattr(leaf, "bias", None), torch.Tensor) else None
            blocks.append(Block(name, leaf.weight, bias, None, stride=stride,  # type: ignore[arg-type]
                                padding=tuple(padding)))  # type: ignore[arg-type]
        elif kind in act_names:
            if not blocks or blocks[-1].activation is not None:
                raise PolicyLoadError(f"{path}: activation {name} does not follow a Conv2d/Linear layer")
            last = blocks[-1]
            blocks[-1] = Block(last.source, last.weight, last.bias, act_names[kind],
                               stride=last.stride, padding=last.padding)
        elif kind not in ("Flatten", *_IGNORED):
            raise PolicyLoadError(f"{path}: layer {name} ({kind}) is not supported in a policy chain")
    bundle = _bundle_from_blocks(blocks, path, algo=algo, kind="argmax")
    # The rebuilt chain must compute what the module computes.
    x = torch.randn((2, *bundle.input_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = module(x)
        got = bundle.net(x)
    if not isinstance(want, torch.Tensor) or want.shape != got.shape or not torch.allclose(want, got, atol=1e-5):
        raise PolicyLoadError(
            f"{path}: the module is not a plain Conv/Linear chain (its forward differs from the "
            "layers in order); export the policy network alone"
        )
    return bundle


def _bundle_from_blocks(blocks: list[Block], path: Path, *, algo: str, kind: str) -> PolicyBundle:
    net, sources = build_chain(blocks)
    input_shape = infer_square_input(blocks)
    out = int(blocks[-1].weight.shape[0])
    action = ActionSpec("argmax", n_actions=out) if kind == "argmax" else ActionSpec(kind)
    return PolicyBundle(net=net, input_shape=input_shape, action=action, algo=algo,
                        source=path, layer_sources=sources)


# --- checks against the network and the environment -------------------------------------


def _check_forward(bundle: PolicyBundle) -> None:
    try:
        with torch.no_grad():
            bundle.net(bundle.example_input())
    except RuntimeError as exc:
        raise PolicyLoadError(
            f"{bundle.source}: the layers do not chain for input {bundle.input_shape} ({first_line(exc)})"
        ) from exc


def _attach_env(bundle: PolicyBundle, env_id: str) -> PolicyBundle:
    import gymnasium as gym

    env = make_env(env_id)
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(obs_space, gym.spaces.Box):
        raise EnvMismatchError(f"{env_id}: observation space {obs_space} is not a Box; not supported")
    obs_shape = tuple(int(v) for v in obs_space.shape)
    if bundle.algo in ("torch", "torchscript") and obs_shape != bundle.input_shape:
        # Only the size of a CNN's input is inferred; any shape that chains is fine.
        bundle.input_shape = _refit_input(bundle, obs_shape, env_id)
    if obs_shape != bundle.input_shape:
        raise EnvMismatchError(
            f"{env_id} gives observations of shape {obs_shape}, the network expects "
            f"{bundle.input_shape}: pass the --env the policy was trained on"
        )
    head_out = int(_head(bundle).out_features)
    action = bundle.action
    if isinstance(act_space, gym.spaces.Discrete):
        n = int(act_space.n)
        if action.kind == "quantile":
            ok = action.n_actions == n and head_out % n == 0
        else:
            ok = action.discrete and head_out == n
            action = ActionSpec("argmax", n_actions=n)
        if not ok:
            raise EnvMismatchError(
                f"{env_id} has {n} discrete actions, the network's head gives {head_out} outputs: "
                "pass the --env the policy was trained on"
            )
    elif isinstance(act_space, gym.spaces.Box):
        shape = tuple(int(v) for v in act_space.shape)
        if int(np.prod(shape)) != head_out:
            raise EnvMismatchError(
                f"{env_id} has actions of shape {shape}, the network's head gives {head_out} outputs: "
                "pass the --env the policy was trained on"
            )
        kind = action.kind if not action.discrete else "clip"
        action = ActionSpec(kind, action_shape=shape, clip_mean=action.clip_mean).with_bounds(
            act_space.low, act_space.high)
    else:
        raise EnvMismatchError(f"{env_id}: action space {act_space} is not supported (Discrete or Box)")
    bundle.action = action
    bundle.env_id = env_id
    bundle.observation_space = obs_space
    bundle.action_space = act_space
    if bundle.algo in ("torch", "torchscript") and obs_space.dtype == np.uint8 and len(obs_shape) == 3:
        bundle.obs_scale = 1.0 / 255.0
    return bundle


def _head(bundle: PolicyBundle) -> nn.Linear:
    return [m for m in bundle.net if isinstance(m, nn.Linear)][-1]


def _refit_input(bundle: PolicyBundle, obs_shape: tuple[int, ...], env_id: str) -> tuple[int, ...]:
    try:
        with torch.no_grad():
            bundle.net(torch.zeros((1, *obs_shape)))
    except RuntimeError:
        return bundle.input_shape  # the mismatch error names both shapes
    return obs_shape
