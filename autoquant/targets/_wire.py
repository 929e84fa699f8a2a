"""The device protocol, shared by server and client: HMAC-signed requests and
responses, and a pickle-free binary body (JSON header + raw bytes).

A request's signature covers its headers and the length and SHA-256 of its body, so
the server authenticates a bounded header before it reads the body; a response's
signature covers the request's nonce, the status and the length and SHA-256 of its
body, so the client checks the length it is about to read against its cap first.

Standard library and numpy only: the device side installs no torch.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import struct
import time
from typing import Any

import numpy as np

from autoquant._untrusted import loads_json
from autoquant.errors import WireError

__all__ = [
    "DIGEST",
    "MAX_SKEW_S",
    "NONCE",
    "SIGNATURE",
    "TIMESTAMP",
    "body_matches",
    "pack",
    "read_secret",
    "response_headers",
    "sign_request",
    "sign_response",
    "unpack",
    "verify_request_headers",
    "verify_response_headers",
]

MAX_SKEW_S = 60.0  # a request older (or newer) than this is refused as stale
HEADER = struct.Struct("!I")  # length of the JSON header
TIMESTAMP, NONCE, DIGEST, SIGNATURE = ("X-Autoquant-Timestamp", "X-Autoquant-Nonce", "X-Autoquant-Content-SHA256",
                                       "X-Autoquant-Signature")
_MAX_SIGNED_HEADER = 128  # characters of any of the four headers above


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


def _same(a: str, b: str) -> bool:
    # compare_digest refuses non-ASCII str; header values are whatever the peer sent
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


def sign_request(secret: bytes, method: str, path: str, body: bytes) -> dict[str, str]:
    """Headers that authenticate a request: the signature covers the method, path,
    timestamp, nonce, body length and body digest, so the server can check it before
    it reads the body."""
    ts = f"{time.time():.3f}"
    nonce = secrets.token_hex(16)
    digest = hashlib.sha256(body).hexdigest()
    return {TIMESTAMP: ts, NONCE: nonce, DIGEST: digest,
            SIGNATURE: _mac(secret, "request", method, path, ts, nonce, str(len(body)), digest)}


def verify_request_headers(secret: bytes, method: str, path: str, headers: Any, length: int) -> str | None:
    """None when the headers are signed with ``secret`` for a body of ``length`` bytes,
    else why not. Nothing of the body is needed (``body_matches`` checks it once read);
    the timestamp's freshness is checked by the caller."""
    values = [headers.get(k) for k in (TIMESTAMP, NONCE, DIGEST, SIGNATURE)]
    ts, nonce, digest, sig = values
    if not ts or not nonce or not sig:
        return "unsigned request"
    if not digest:
        return f"request without {DIGEST}: the client runs an older autoquant; install the same version on both sides"
    if any(len(v) > _MAX_SIGNED_HEADER for v in values):
        return "malformed signature headers"
    want = _mac(secret, "request", method, path, ts, nonce, str(length), digest)
    return None if _same(want, sig) else "bad signature (wrong secret?)"


def body_matches(headers: Any, body: bytes) -> bool:
    """Whether ``body`` is the one whose digest the (verified) headers carry."""
    return _same(hashlib.sha256(body).hexdigest(), headers.get(DIGEST) or "")


def sign_response(secret: bytes, nonce: str, status: int, length: int, digest: str) -> str:
    """The signature of an answer to the request ``nonce``: its status and the length and
    SHA-256 of its body."""
    return _mac(secret, "response", nonce, str(status), str(length), digest)


def response_headers(secret: bytes, nonce: str, status: int, body: bytes) -> dict[str, str]:
    """The headers that authenticate an answer of ``body`` to the request ``nonce``."""
    digest = hashlib.sha256(body).hexdigest()
    return {DIGEST: digest, SIGNATURE: sign_response(secret, nonce, status, len(body), digest)}


def verify_response_headers(secret: bytes, nonce: str, status: int, headers: Any, length: int) -> str | None:
    """None when an answer's headers are signed with ``secret`` for the request ``nonce``,
    this status and a body of ``length`` bytes, else why not. Nothing of the body is
    needed (``body_matches`` checks it once read)."""
    digest, sig = headers.get(DIGEST), headers.get(SIGNATURE)
    if not digest or not sig or len(digest) > _MAX_SIGNED_HEADER or len(sig) > _MAX_SIGNED_HEADER:
        return "no valid signature"
    return None if _same(sign_response(secret, nonce, status, length, digest), sig) else "a bad signature"


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
MAX_HEADER_BYTES = 1 << 20
MAX_BLOBS = 16
MAX_NDIM = 8


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def unpack(body: bytes) -> tuple[dict[str, Any], dict[str, bytes | np.ndarray]]:
    """Inverse of ``pack``; raises WireError (a ValueError) on anything malformed."""
    if len(body) < HEADER.size:
        raise WireError("body shorter than its header")
    (n,) = HEADER.unpack_from(body)
    if n > len(body) - HEADER.size or n > MAX_HEADER_BYTES:
        raise WireError("header length out of range")
    header = loads_json(body[HEADER.size:HEADER.size + n], what="the message header", error=WireError,
                        max_bytes=MAX_HEADER_BYTES, max_depth=32)
    if not isinstance(header, dict):
        raise WireError("header must be a JSON object")
    index = header.get("blobs", [])
    if not isinstance(index, list) or len(index) > MAX_BLOBS:
        raise WireError(f"'blobs' must be a list of at most {MAX_BLOBS} entries")
    offset = HEADER.size + n
    blobs: dict[str, bytes | np.ndarray] = {}
    for entry in index:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not _int(entry.get("size")):
            raise WireError("a blob entry must be an object with a string 'name' and an integer 'size'")
        name, size = entry["name"], entry["size"]
        if name in blobs or len(name) > 64:
            raise WireError(f"blob name {name[:64]!r} repeated or too long")
        if size < 0 or offset + size > len(body):
            raise WireError("blob exceeds the body")
        data = body[offset:offset + size]
        offset += size
        if "dtype" in entry:
            dtype = _DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
            if dtype is None:
                raise WireError(f"dtype {str(entry['dtype'])[:20]!r} not accepted (one of {sorted(_DTYPES)})")
            shape = entry.get("shape")
            if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_int(v) and v >= 0 for v in shape):
                raise WireError(f"the shape of blob {name!r} must be a list of at most {MAX_NDIM} "
                                "non-negative integers")
            if math.prod(shape) * np.dtype(dtype).itemsize != size:
                raise WireError(f"blob {name!r}: {size} bytes do not fill shape {shape}")
            arr = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"))
            blobs[name] = arr.reshape(shape).astype(dtype)
        else:
            blobs[name] = data
    if offset != len(body):
        raise WireError("trailing bytes after the blobs")
    return header, blobs
