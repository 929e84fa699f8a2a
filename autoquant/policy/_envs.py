"""Environment construction: id aliases, Atari wrappers, and the zoo's YAML metadata."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from autoquant._untrusted import MAX_JSON_DEPTH, json_depth_exceeds
from autoquant.errors import EnvMismatchError, PolicyLoadError, first_line

__all__ = ["NOOP_STARTS", "Protocol", "canonical_env_id", "env_id_from_metadata", "is_atari", "make_env",
           "read_zoo_yaml", "resolve_protocol"]

# Ids that moved in gymnasium; the policies keep working under the new id.
_ALIASES = {
    "LunarLander-v2": "LunarLander-v3",
    "LunarLanderContinuous-v2": "LunarLanderContinuous-v3",
    "Pendulum-v0": "Pendulum-v1",
}

_ATARI_FRAME_STACK = 4
NOOP_STARTS = 30  # SB3's AtariWrapper starts an episode with 1..30 no-ops (noop_max)


@dataclass(frozen=True)
class Protocol:
    """How an environment's episodes are played, recorded beside every reward figure.

    ``sticky_actions`` is ALE's ``repeat_action_probability`` (0 for environments that are not
    ALE). ``starts`` is the number of distinct start conditions when there are finitely many:
    an ALE game without sticky actions is deterministic, so a greedy policy replays the same
    game for a given no-op count, and the protocol has exactly ``NOOP_STARTS`` starts (seed
    ``s`` starts with ``1 + s % starts`` no-ops, so any ``starts`` consecutive seeds enumerate
    them all once). ``None``: every seed starts a game of its own (sticky actions, or an
    environment whose reset draws a continuous start state).
    """

    sticky_actions: float = 0.0
    starts: int | None = None

    def __post_init__(self) -> None:
        p = self.sticky_actions
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0.0 <= p < 1.0:
            raise EnvMismatchError(f"sticky-actions must be a probability in [0, 1), got {p!r}")
        object.__setattr__(self, "sticky_actions", float(p))
        if self.starts is not None and (isinstance(self.starts, bool) or not isinstance(self.starts, int)
                                        or self.starts < 1):
            raise EnvMismatchError(f"a protocol's number of starts must be a positive integer, got {self.starts!r}")

    @property
    def name(self) -> str:
        if self.starts is not None:
            return f"deterministic, {self.starts} no-op starts"
        if self.sticky_actions > 0:
            return f"sticky actions p={self.sticky_actions:g}"
        return "seeded starts"

    def start_of(self, seed: int) -> int | None:
        """The start condition (no-op count) seed ``seed`` plays, where starts are finite."""
        return None if self.starts is None else 1 + int(seed) % self.starts

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "sticky_actions": self.sticky_actions, "starts": self.starts}

    @classmethod
    def from_json(cls, data: object) -> Protocol:
        if not isinstance(data, dict) or "sticky_actions" not in data:
            raise EnvMismatchError(f"not a recorded episode protocol: {data!r:.80}")
        return cls(sticky_actions=data["sticky_actions"], starts=data.get("starts"))


def resolve_protocol(env_id: str, sticky_actions: float | None = None) -> Protocol:
    """The protocol ``env_id`` is played under: its own (ALE v4 ids deterministic, v5 ids
    sticky at 0.25), or sticky actions with probability ``sticky_actions`` on an ALE game."""
    env_id = canonical_env_id(env_id)
    if not is_atari(env_id):
        if sticky_actions:
            raise EnvMismatchError(f"--sticky-actions applies to Atari (ALE) environments; {env_id} is not one: "
                                   "leave the option out")
        return Protocol()
    if sticky_actions is None:
        if not _registry_has(env_id):
            raise EnvMismatchError(f"unknown environment id {env_id!r}: pass a gymnasium id such as "
                                   "PongNoFrameskip-v4 with --env")
        sticky_actions = float(gym.spec(env_id).kwargs.get("repeat_action_probability", 0.0))
    protocol = Protocol(sticky_actions=sticky_actions)
    return protocol if protocol.sticky_actions > 0 else Protocol(starts=NOOP_STARTS)


def canonical_env_id(env_id: str) -> str:
    """The gymnasium id to build for ``env_id`` (old ids mapped to their successors)."""
    return _ALIASES.get(env_id, env_id)


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/") or "NoFrameskip" in env_id


def _registry_has(env_id: str) -> bool:
    if is_atari(env_id):
        _register_atari()
    return env_id in gym.registry


def _register_atari() -> None:
    try:
        import ale_py
    except ImportError as exc:  # pragma: no cover - ale-py is a declared dependency
        raise EnvMismatchError(
            "Atari environments need ale-py: pip install 'gymnasium[atari]'"
        ) from exc
    gym.register_envs(ale_py)


def make_env(env_id: str, *, protocol: Protocol | None = None, render_mode: str | None = None) -> Any:
    """Build ``env_id`` as the policies of this project were trained on it, played under
    ``protocol`` (default: the id's own, ``resolve_protocol``).

    Atari ids get SB3's ``AtariWrapper`` (noop reset, frame skip 4, fire reset,
    84x84 grayscale; no life-loss termination and no reward clipping, since we
    evaluate) and a 4-frame stack, oldest first, channels first, zero padded at
    reset exactly as SB3's ``VecFrameStack``. ALE's sticky actions act on every emulator
    frame and draw from the env's own generator, seeded by ``reset(seed=...)``: two
    policies reset with one seed meet the same stream. Under a protocol with finite starts
    a seeded reset plays that seed's no-op count (``Protocol.start_of``).
    """
    env_id = canonical_env_id(env_id)
    if not _registry_has(env_id):
        raise EnvMismatchError(
            f"unknown environment id {env_id!r}: pass a gymnasium id such as CartPole-v1 "
            "or PongNoFrameskip-v4 with --env"
        )
    if protocol is None:
        protocol = resolve_protocol(env_id)
    if is_atari(env_id):
        from stable_baselines3.common.atari_wrappers import AtariWrapper, NoopResetEnv

        env = gym.make(env_id, render_mode=render_mode, repeat_action_probability=protocol.sticky_actions)
        env = AtariWrapper(env, noop_max=NOOP_STARTS, terminal_on_life_loss=False, clip_reward=False)
        env = gym.wrappers.FrameStackObservation(env, _ATARI_FRAME_STACK, padding_type="zero")
        env = _ChannelsFirstStack(env)
        if protocol.starts is not None:
            inner = env
            while not isinstance(inner, NoopResetEnv):
                inner = inner.env
            env = _StartFromSeed(env, protocol, inner)
        return env
    if protocol.sticky_actions:
        raise EnvMismatchError(f"--sticky-actions applies to Atari (ALE) environments; {env_id} is not one")
    try:
        return gym.make(env_id, render_mode=render_mode)
    except gym.error.DependencyNotInstalled as exc:
        raise EnvMismatchError(f"environment {env_id!r} needs an extra package: {exc}") from exc


class _ChannelsFirstStack(gym.ObservationWrapper):
    """(stack, H, W, 1) frames -> (stack, H, W), as SB3's VecTransposeImage gives."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        shape = space.shape[:-1] if space.shape[-1] == 1 else space.shape
        self.observation_space = gym.spaces.Box(low=0, high=255, shape=shape, dtype=np.uint8)

    def observation(self, observation: Any) -> Any:
        return np.asarray(observation).reshape(self.observation_space.shape)


class _StartFromSeed(gym.Wrapper):
    """A seeded reset plays that seed's no-op start (``Protocol.start_of``); an unseeded one
    draws it from the env's generator, as SB3's ``NoopResetEnv`` does."""

    def __init__(self, env: gym.Env, protocol: Protocol, noop: Any) -> None:
        super().__init__(env)
        self._protocol = protocol
        self._noop = noop

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        self._noop.override_num_noops = self._protocol.start_of(seed) if seed is not None else None
        return self.env.reset(seed=seed, options=options)


# --- The zoo's config.yml / args.yml -------------------------------------------------
#
# They are written with python-object tags (an OrderedDict built by a call). A safe
# loader refuses them; we accept exactly that one tag and build a plain dict from its
# argument, so nothing is executed.

_ODICT_TAG = "tag:yaml.org,2002:python/object/apply:collections.OrderedDict"
_MAX_YAML_BYTES = 256 << 10  # the zoo's files are about 1 kB
_SCALAR_KEYS = (str, int, float, bool, type(None))


def read_zoo_yaml(path: Path) -> dict[str, Any]:
    """Parse a zoo ``config.yml``/``args.yml`` without executing anything."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    def _odict(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        args = loader.construct_sequence(node, deep=True)  # ConstructorError unless a sequence
        if len(args) != 1 or not isinstance(args[0], list):
            raise yaml.constructor.ConstructorError(
                None, None, f"an OrderedDict tag takes one list of pairs, got {len(args)} arguments",
                node.start_mark)
        out = {}
        for pair in args[0]:
            if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], _SCALAR_KEYS):
                raise yaml.constructor.ConstructorError(
                    None, None, "an OrderedDict item must be a [key, value] pair with a scalar key",
                    node.start_mark)
            out[str(pair[0])] = pair[1]
        return out

    _Loader.add_constructor(_ODICT_TAG, _odict)
    try:
        size = path.stat().st_size
        if size > _MAX_YAML_BYTES:
            raise PolicyLoadError(f"{path} is {size:,} bytes, over the cap of {_MAX_YAML_BYTES:,} for a zoo "
                                  "YAML file")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyLoadError(f"{path}: cannot read it as UTF-8 text ({first_line(exc)})") from None
    if json_depth_exceeds(text, MAX_JSON_DEPTH):  # PyYAML slows to seconds, then recurses out, on deep nesting
        raise PolicyLoadError(f"{path}: nested deeper than {MAX_JSON_DEPTH} levels; not a zoo YAML file")
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise PolicyLoadError(f"{path}: not a zoo YAML file this tool can read safely ({first_line(exc)})") from None
    except RecursionError:
        raise PolicyLoadError(f"{path}: nested too deeply for a zoo YAML file") from None
    except Exception as exc:  # noqa: BLE001 - SafeLoader's constructors raise built-in errors on bad
        # scalars: IndexError for a bare `!!int`, ValueError for 2021-02-30, TypeError, OverflowError
        raise PolicyLoadError(f"{path}: a value cannot be read ({type(exc).__name__}: {first_line(exc)})") from None
    if not isinstance(data, dict):
        raise PolicyLoadError(f"{path}: expected a mapping, found {type(data).__name__}")
    return data


_ENV_ID = re.compile(r"^[A-Za-z][\w/\-]*-v\d+$")


def env_id_from_metadata(policy_path: Path) -> str | None:
    """The env id a policy file implies: the zoo's ``args.yml`` next to it, else a
    file name that is a registered id (``CartPole-v1.zip``). An ``args.yml`` that
    cannot be read is an error (``--env`` skips it), not a silent fallback."""
    args = policy_path.parent / "args.yml"
    if args.is_file():
        try:
            env = read_zoo_yaml(args).get("env")
        except PolicyLoadError as exc:
            raise PolicyLoadError(f"{exc}; pass --env to load the policy without it") from None
        if isinstance(env, str) and _ENV_ID.match(env):
            return canonical_env_id(env)
    stem = policy_path.stem
    if _ENV_ID.match(stem) and _registry_has(canonical_env_id(stem)):
        return canonical_env_id(stem)
    return None
