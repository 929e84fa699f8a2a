"""The device protocol, shared by server and client: HMAC-signed requests and
responses, and a pickle-free binary body (JSON header + raw bytes).

Standard library and numpy only: the device side installs no torch.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import struct
import time
from typing import Any

import numpy as np

__all__ = [
    "MAX_SKEW_S",
    "pack",
    "read_secret",
    "sign_request",
    "sign_response",
    "unpack",
    "verify_request_signature",
]

MAX_SKEW_S = 60.0  # a request older (or newer) than this is refused as stale
HEADER = struct.Struct("!I")  # length of the JSON header


def read_secret(path: str) -> bytes:
    """The shared secret: the file's bytes, stripped; at least 16 bytes."""
    from autoquant.errors import TargetError

    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as exc:
        raise TargetError(f"cannot read the secret file {path}: {exc.strerror}") from exc
    if len(secret) < 16:
        raise TargetError(f"the secret in {path} is {len(secret)} bytes; use at least 16 "
                          "(e.g. python3 -c 'import secrets; print(secrets.token_hex(32))' > FILE)")
    return secret


def _mac(secret: bytes, *parts: str | bytes) -> str:
    h = hmac.new(secret, digestmod=hashlib.sha256)
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\x00")
    return h.hexdigest()


def sign_request(secret: bytes, method: str, path: str, body: bytes) -> dict[str, str]:
    ts = f"{time.time():.3f}"
    nonce = secrets.token_hex(16)
    digest = hashlib.sha256(body).hexdigest()
    return {"X-Autoquant-Timestamp": ts, "X-Autoquant-Nonce": nonce,
            "X-Autoquant-Signature": _mac(secret, "request", method, path, ts, nonce, digest)}


def verify_request_signature(secret: bytes, method: str, path: str, headers: Any, body: bytes) -> str | None:
    """None when the signature is right, else why not (timestamp checked by the caller)."""
    ts, nonce, sig = (headers.get(k) for k in ("X-Autoquant-Timestamp", "X-Autoquant-Nonce",
                                                "X-Autoquant-Signature"))
    if not ts or not nonce or not sig:
        return "unsigned request"
    want = _mac(secret, "request", method, path, ts, nonce, hashlib.sha256(body).hexdigest())
    return None if hmac.compare_digest(want, sig) else "bad signature (wrong secret?)"


def sign_response(secret: bytes, nonce: str, status: int, body: bytes) -> str:
    return _mac(secret, "response", nonce, str(status), hashlib.sha256(body).hexdigest())


def pack(header: dict[str, Any], blobs: dict[str, bytes | np.ndarray] | None = None) -> bytes:
    """JSON header + named blobs (bytes, or arrays as raw little-endian data)."""
    parts: list[bytes] = []
    index = []
    for name, blob in (blobs or {}).items():
        if isinstance(blob, np.ndarray):
            arr = np.ascontiguousarray(blob)
            data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            index.append({"name": name, "size": len(data), "dtype": arr.dtype.str.lstrip("<>|="),
                          "shape": list(arr.shape)})
        else:
            data = bytes(blob)
            index.append({"name": name, "size": len(data)})
        parts.append(data)
    head = json.dumps({**header, "blobs": index}).encode()
    return HEADER.pack(len(head)) + head + b"".join(parts)


_DTYPES = {"f4": np.float32, "f8": np.float64, "i8": np.int64, "i4": np.int32, "u1": np.uint8, "i1": np.int8}


def unpack(body: bytes) -> tuple[dict[str, Any], dict[str, bytes | np.ndarray]]:
    """Inverse of ``pack``; raises ValueError on anything malformed."""
    if len(body) < HEADER.size:
        raise ValueError("body shorter than its header")
    (n,) = HEADER.unpack_from(body)
    if n > len(body) - HEADER.size or n > 1 << 20:
        raise ValueError("header length out of range")
    try:
        header = json.loads(body[HEADER.size:HEADER.size + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict) or not isinstance(header.get("blobs", []), list):
        raise ValueError("header must be a JSON object")
    offset = HEADER.size + n
    blobs: dict[str, bytes | np.ndarray] = {}
    for entry in header.get("blobs", []):
        size = int(entry["size"])
        if size < 0 or offset + size > len(body):
            raise ValueError("blob exceeds the body")
        data = body[offset:offset + size]
        offset += size
        if "dtype" in entry:
            dtype = _DTYPES.get(str(entry["dtype"]))
            if dtype is None:
                raise ValueError(f"dtype {entry['dtype']!r} not accepted")
            shape = tuple(int(v) for v in entry["shape"])
            arr = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"))
            if arr.size != int(np.prod(shape)):
                raise ValueError("array size does not match its shape")
            blobs[str(entry["name"])] = arr.reshape(shape).astype(dtype)
        else:
            blobs[str(entry["name"])] = data
    if offset != len(body):
        raise ValueError("trailing bytes after the blobs")
    return header, blobs
