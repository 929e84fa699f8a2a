"""StateSet: observations recorded from rollouts of the fp32 policy, for calibration,
fine-tuning and fidelity."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from typing import Any

import numpy as np

from autoquant.errors import AutoquantError
from autoquant.policy import PolicyBundle
from autoquant.policy import make_env
from autoquant.runtimes import OrtRunner

__all__ = ["StateSet", "dagger_visitor", "record_states"]

STATES_FORMAT = "autoquant.states"


@dataclass(frozen=True)
class StateSet:
    """Prepared (float32, network-ready) observations and where they came from."""

    states: np.ndarray
    env_id: str
    seed: int
    epsilon: float

    def __len__(self) -> int:
        return len(self.states)

    def save(self, path: str | Path) -> None:
        meta = {"format": STATES_FORMAT, "version": 1, "env_id": self.env_id, "seed": self.seed,
                "epsilon": self.epsilon}
        with open(path, "wb") as f:
            np.savez_compressed(f, states=self.states, meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: str | Path) -> StateSet:
        """A state set a run folder holds, read as untrusted: a regular file (no symlink),
        its arrays through the capped reader, no pickles; anything else is one line."""
        from autoquant._untrusted import ZipLimits, load_npz, loads_json, read_file_in
        from autoquant.errors import UsageError

        path = Path(path)
        where = str(path)
        # Recorded frames compress far more than weights (Pong's: 160x), so the cap is on the
        # bytes they inflate to, not on the ratio: 2 GiB holds 18k Pong states.
        limits = ZipLimits(max_members=2, max_member_bytes=2 << 30, max_total_bytes=2 << 30, max_ratio=float("inf"))
        arrays = load_npz(read_file_in(path.parent, path.name, what=where, error=UsageError, max_bytes=1 << 30),
                          where=where, error=UsageError, limits=limits)
        states, meta_array = arrays.get("states"), arrays.get("meta")
        if states is None or meta_array is None or meta_array.shape != () or states.dtype != np.float32:
            raise UsageError(f"{where}: not an autoquant state set (float32 'states' and a 'meta' string expected); "
                             "start a new run")
        meta = loads_json(str(meta_array), what=f"{where}: its meta", error=UsageError, max_bytes=1 << 16)
        if not isinstance(meta, dict) or meta.get("format") != STATES_FORMAT:
            raise UsageError(f"{where}: not an autoquant state set; start a new run")
        try:
            return cls(states=states, env_id=str(meta["env_id"]), seed=int(meta["seed"]),
                       epsilon=float(meta["epsilon"]))
        except (KeyError, TypeError, ValueError):
            raise UsageError(f"{where}: its meta lacks env_id, seed or epsilon; start a new run") from None


def record_states(
    bundle: PolicyBundle,
    *,
    n: int = 1024,
    seed: int = 0,
    epsilon: float = 0.05,
    n_envs: int = 4,
    stride: int | None = None,
    act: Callable[[np.ndarray], np.ndarray] | None = None,
    envs: Sequence[Any] | None = None,
) -> StateSet:
    """Play the fp32 policy (``epsilon`` of actions random, to widen coverage) and keep
    every ``stride``-th observation (default 1; 4 for image observations) until ``n``.

    ``act`` plays another policy instead; ``envs`` are environments of ``bundle.env_id``
    to play in (one per lockstep slot, reset here with the seeds, left open for the next
    call: making an Atari env costs about 0.1 s) instead of ``n_envs`` new ones.
    """
    if bundle.env_id is None:
        raise AutoquantError("recording states needs an environment: pass --env")
    act = act or bundle.predict
    stride = stride or (4 if len(bundle.input_shape) == 3 else 1)
    rng = np.random.default_rng(seed)
    owned = envs is None
    envs = [make_env(bundle.env_id) for _ in range(n_envs)] if envs is None else list(envs)
    for k, env in enumerate(envs):
        env.action_space.seed(seed + k)
    obs = [env.reset(seed=seed + k)[0] for k, env in enumerate(envs)]
    next_seed = seed + n_envs
    kept: list[np.ndarray] = []
    step = 0
    try:
        while len(kept) < n:
            batch = np.stack(obs)
            if step % stride == 0:
                kept.extend(bundle.prepare(batch)[: n - len(kept)])
            actions = act(batch)
            for k, env in enumerate(envs):
                a = env.action_space.sample() if rng.random() < epsilon else actions[k]
                o, _, terminated, truncated, _ = env.step(a)
                if terminated or truncated:
                    o, _ = env.reset(seed=next_seed)
                    next_seed += 1
                obs[k] = o
            step += 1
    finally:
        if owned:
            for env in envs:
                env.close()
    return StateSet(states=np.stack(kept).astype(np.float32), env_id=bundle.env_id, seed=seed, epsilon=epsilon)


PROXY_SEED_OFFSET = 15_485  # the proxy's rollouts start from seeds of their own


def proxy_state_count(bundle: PolicyBundle) -> int:
    """States a plan's proxy rollout records by default: 128 frames (every 4th of 512 steps)
    for image observations, 512 steps otherwise."""
    return 128 if len(bundle.input_shape) == 3 else 512


def visited_states(bundle: PolicyBundle, act: Callable[[np.ndarray], np.ndarray], *, seed: int,
                   n: int | None = None, env: Any = None) -> np.ndarray:
    """Prepared states a policy visits itself, acting greedily in one environment from
    ``seed + PROXY_SEED_OFFSET`` (the same start for every plan of a run): where its own
    mistakes compound, unlike the states fp32 visited. ``env``: reuse an environment."""
    return record_states(bundle, n=n or proxy_state_count(bundle), seed=seed + PROXY_SEED_OFFSET, epsilon=0.0,
                         act=act, n_envs=1, envs=None if env is None else [env]).states


DAGGER_SEED_OFFSET = 31_337  # DAgger's rollouts start from seeds of their own (not the proxy's, not the episodes')


def dagger_visitor(bundle: PolicyBundle, *, seed: int, n: int | None = None,
                   env: Any = None) -> Callable[[bytes], np.ndarray]:
    """``visit(onnx)`` for ``compress``'s DAgger rounds: the states a compressed graph visits
    itself, acting greedily, from a new seed each round (``seed + DAGGER_SEED_OFFSET``, then
    on by 101): neither the proxy's rollouts nor any episode's."""
    rounds = itertools.count()

    def visit(onnx: bytes) -> np.ndarray:
        runner = OrtRunner(onnx)
        act = lambda obs: bundle.action.actions(runner(bundle.prepare(obs)))  # noqa: E731
        return record_states(bundle, n=n or proxy_state_count(bundle), epsilon=0.0, act=act, n_envs=1,
                             seed=seed + DAGGER_SEED_OFFSET + 101 * next(rounds),
                             envs=None if env is None else [env]).states

    return visit
