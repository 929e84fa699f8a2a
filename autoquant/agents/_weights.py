"""The agent weights the package ships: ``pretrained/<algo>.npz`` (plain float32 arrays,
read through the capped reader: no pickles, nothing inflated past its cap) beside
``pretrained/<algo>.json`` (format, version, the observation layout they were trained for,
the corpus, the training budget and the SHA-256 of the arrays). ``load_weights`` refuses
arrays whose hash, layout or shapes differ, or that are not finite; the agent then trains
from scratch and records why.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from autoquant._io import atomic_write
from autoquant._untrusted import ZipLimits, load_npz, loads_json, read_file_in, short_repr
from autoquant.errors import UsageError

__all__ = ["PRETRAINED_DIR", "WEIGHTS_FORMAT", "load_weights", "save_weights"]

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
WEIGHTS_FORMAT = "autoquant.agent_weights"
WEIGHTS_VERSION = 1
_PARTS = ("actor", "actor_target", "critic", "critic_target")
# The shipped DDPG weights are 90 KB; what is far larger is not ours and is refused unread.
MAX_FILE_BYTES = 64 << 20
_LIMITS = ZipLimits(max_members=256, max_member_bytes=64 << 20, max_total_bytes=128 << 20)



def _arrays(model: Any) -> dict[str, np.ndarray]:
    out = {}
    for part in _PARTS:
        module = getattr(model.policy, part, None)
        if module is None:
            continue
        for key, tensor in module.state_dict().items():
            out[f"{part}.{key}"] = tensor.detach().cpu().numpy().astype(np.float32)
    return out


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        h.update(key.encode())
        h.update(np.ascontiguousarray(arrays[key], dtype=np.float32).tobytes())
    return h.hexdigest()


def save_weights(algo: str, model: Any, meta: dict[str, Any], *, obs_version: int, obs_dim: int,
                 folder: Path = PRETRAINED_DIR) -> Path:
    """Write ``model``'s networks as ``folder/<algo>.npz`` and its metadata as ``.json``."""
    arrays = _arrays(model)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{algo}.npz"
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    info = {"format": WEIGHTS_FORMAT, "version": WEIGHTS_VERSION, "algo": algo, "obs_version": obs_version,
            "obs_dim": obs_dim, "sha256": _digest(arrays), **meta}
    atomic_write(folder / f"{algo}.json", (json.dumps(info, indent=1) + "\n").encode())
    return path


def load_weights(algo: str, model: Any, *, obs_version: int, obs_dim: int,
                 folder: Path = PRETRAINED_DIR) -> dict[str, Any] | None:
    """Load the pretrained weights for ``algo`` into ``model``. Returns None when none are
    shipped, ``{"used": False, "why": ...}`` when they do not fit (another layout, hash or
    shape: ``model`` is left as it was), else their metadata with ``"used": True``."""
    import torch

    meta_path, path = folder / f"{algo}.json", folder / f"{algo}.npz"
    if not meta_path.is_file() or not path.is_file():
        return None
    try:  # capped: read and inflated within the limits before anything is hashed or loaded
        meta = loads_json(read_file_in(folder, meta_path.name, what=str(meta_path), error=UsageError,
                                       max_bytes=1 << 20), what=str(meta_path), error=UsageError)
        arrays = load_npz(read_file_in(folder, path.name, what=str(path), error=UsageError, max_bytes=MAX_FILE_BYTES),
                          where=str(path), error=UsageError, limits=_LIMITS)
    except UsageError as exc:
        return {"used": False, "why": f"unreadable: {exc}"}
    if not isinstance(meta, dict) or meta.get("format") != WEIGHTS_FORMAT or meta.get("version") != WEIGHTS_VERSION:
        return {"used": False, "why": "not agent weights of this autoquant version"}
    if any(a.dtype.kind != "f" for a in arrays.values()):
        return {"used": False, "why": "the arrays are not floating point: not agent weights"}
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
    bad = sorted(k for k, v in arrays.items() if not np.isfinite(v).all())
    if bad:
        return {"used": False, "why": f"{len(bad)} arrays hold NaN or infinite values ({short_repr(bad[0])} first): "
                                      "not weights an agent was trained to"}
    if meta.get("obs_version") != obs_version or meta.get("obs_dim") != obs_dim:
        return {"used": False, "why": f"made for observation layout {meta.get('obs_version')}, this is {obs_version}"}
    if _digest(arrays) != meta.get("sha256"):
        return {"used": False, "why": "the arrays do not match their recorded SHA-256"}
    current = _arrays(model)
    if set(current) != set(arrays) or any(current[k].shape != arrays[k].shape for k in current):
        return {"used": False, "why": "the arrays do not fit this agent's networks"}
    for part in _PARTS:
        module = getattr(model.policy, part, None)
        if module is not None:
            state = {k[len(part) + 1:]: torch.as_tensor(v) for k, v in arrays.items() if k.startswith(part + ".")}
            module.load_state_dict(state)
    return {"used": True, **{k: meta[k] for k in ("algo", "obs_version", "corpus", "episodes", "seed", "sha256",
                                                   "trained_s") if k in meta}}
