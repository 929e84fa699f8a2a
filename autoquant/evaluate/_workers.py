"""Game environments stepped in worker processes, while the network acts in this one.

An Atari step is about 0.45 ms of emulation and wrapper code in Python, two thirds of
what an episode of the Pong DQN costs in one process. ``EnvWorkers`` spreads the env
slots of ``play_episodes`` over worker processes (slot k in worker k mod n), steps them
all at once and gathers their observations; the network still sees one batch per step,
and an episode still depends only on its seed and the policy, so the episodes are the
same as in one process (a test checks them equal).

Workers are started once per (env id, protocol, envs, workers) and kept for the rest of
the process (``pool``): starting one imports gymnasium and the ALE, about two seconds.
They are daemons, closed at exit; a worker that dies or raises ends the call with one
line naming what happened.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
from collections.abc import Sequence
from typing import Any

from autoquant.errors import EnvMismatchError
from autoquant.policy import Protocol

__all__ = ["EnvWorkers", "MAX_WORKERS", "close_pools", "default_workers", "pool"]

MAX_WORKERS = 64
_POOLS: dict[tuple[Any, ...], EnvWorkers] = {}
_KEEP = 2  # pools kept alive at once (a search uses one; confirmation and claims another)


def default_workers() -> int:
    """``AUTOQUANT_ENV_WORKERS`` (0 to 64; 0, the default: step every env in this process)."""
    text = os.environ.get("AUTOQUANT_ENV_WORKERS", "")
    if text == "":
        return 0
    if not text.strip().isdigit() or int(text) > MAX_WORKERS:
        raise EnvMismatchError(f"AUTOQUANT_ENV_WORKERS must be a whole number from 0 to {MAX_WORKERS}, "
                               f"got {text[:40]!r}")
    return int(text)


def _serve(conn: Any, env_id: str, protocol: Protocol, n: int) -> None:
    """A worker: ``n`` envs, reset and stepped on request until told to close."""
    envs: list[Any] = []
    try:
        from autoquant.policy import make_env

        envs = [make_env(env_id, protocol=protocol) for _ in range(n)]
        conn.send(("ready", None))
        while True:
            op, items = conn.recv()
            if op == "close":
                break
            try:
                if op == "reset":
                    out: list[Any] = [envs[k].reset(seed=s)[0] for k, s in items]
                else:
                    out = []
                    for k, a in items:
                        o, r, terminated, truncated, _ = envs[k].step(a)
                        out.append((o, float(r), bool(terminated), bool(truncated)))
                conn.send(("ok", out))
            except Exception as exc:  # noqa: BLE001 - reported to the caller, which raises it
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    except (EOFError, KeyboardInterrupt):  # the caller went away, or Ctrl-C reached the group
        pass
    except Exception as exc:  # noqa: BLE001 - the envs could not be made
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        for env in envs:
            env.close()


class EnvWorkers:
    """``n_envs`` env slots of ``env_id`` under ``protocol`` in ``n_workers`` processes."""

    def __init__(self, env_id: str, protocol: Protocol, n_envs: int, n_workers: int) -> None:
        if not 1 <= n_workers <= MAX_WORKERS:
            raise EnvMismatchError(f"env workers must be from 1 to {MAX_WORKERS}, got {n_workers}")
        self.env_id, self.n_envs = env_id, n_envs
        n_workers = min(n_workers, n_envs)
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding runtime threads
        self._conns: list[Any] = []
        self._procs: list[Any] = []
        for w in range(n_workers):
            mine = len(range(w, n_envs, n_workers))
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child, env_id, protocol, mine), daemon=True,
                               name=f"autoquant-env-{w}")
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        for w in range(n_workers):
            self._answer(w)  # ready, or the env's own error

    def _answer(self, w: int) -> Any:
        try:
            status, value = self._conns[w].recv()
        except (EOFError, OSError):
            self.close()
            raise EnvMismatchError(f"an env worker of {self.env_id} died (exit code "
                                   f"{self._procs[w].exitcode}); run with AUTOQUANT_ENV_WORKERS=0 to step "
                                   "the envs in this process and see its error") from None
        if status == "error":
            self.close()
            raise EnvMismatchError(f"an env worker of {self.env_id} failed: {value}")
        return value

    def _call(self, op: str, items: Sequence[tuple[int, Any]]) -> dict[int, Any]:
        n = len(self._conns)
        parts: list[list[tuple[int, Any]]] = [[] for _ in range(n)]
        slots: list[list[int]] = [[] for _ in range(n)]
        for k, value in items:
            parts[k % n].append((k // n, value))
            slots[k % n].append(k)
        busy = [w for w in range(n) if parts[w]]
        for w in busy:  # every worker starts before any is waited for
            self._conns[w].send((op, parts[w]))
        out: dict[int, Any] = {}
        for w in busy:
            out.update(zip(slots[w], self._answer(w)))
        return out

    def reset(self, items: Sequence[tuple[int, int]]) -> dict[int, Any]:
        """Reset slot k with seed s for each (k, s); their first observations by slot."""
        return self._call("reset", items)

    def step(self, items: Sequence[tuple[int, Any]]) -> dict[int, tuple[Any, float, bool, bool]]:
        """Step slot k with action a for each (k, a); (obs, reward, terminated, truncated) by slot."""
        return self._call("step", items)

    @property
    def alive(self) -> bool:
        return bool(self._procs) and all(p.is_alive() for p in self._procs)

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except (OSError, ValueError):
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []


def pool(env_id: str, protocol: Protocol, n_envs: int, n_workers: int) -> EnvWorkers:
    """Workers for these envs, started on first use and kept (the ``_KEEP`` most recent)."""
    key = (env_id, protocol, n_envs, n_workers)
    found = _POOLS.pop(key, None)
    if found is None or not found.alive:
        found = EnvWorkers(env_id, protocol, n_envs, n_workers)
    _POOLS[key] = found  # the most recent last
    while len(_POOLS) > _KEEP:
        _POOLS.pop(next(iter(_POOLS))).close()
    return found


def close_pools() -> None:
    """Close every kept pool (at exit; tests call it to leave no process behind)."""
    while _POOLS:
        _POOLS.popitem()[1].close()


atexit.register(close_pools)
