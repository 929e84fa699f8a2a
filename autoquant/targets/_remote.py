"""The client of a device server: a Target that measures on a remote board.

An answer is untrusted until its signature is checked, and that happens on its headers:
the signed length is checked against the client's cap before a byte of the body is
read, and no more than that length is read."""

from __future__ import annotations

import http.client
import time
from typing import Any

import numpy as np

from autoquant._untrusted import loads_json
from autoquant.errors import DeviceUnreachable, TargetError, WireError
from autoquant.targets._base import LatencyResult, MeasureProtocol
from autoquant.targets._wire import (
    DIGEST,
    HEADER,
    NONCE,
    SIGNATURE,
    body_matches,
    pack,
    sign_request,
    unpack,
    verify_response_headers,
)

__all__ = ["MAX_ANSWER_BYTES", "DeviceUnreachable", "RemoteTarget"]

MAX_ANSWER_BYTES = 64 << 20  # the device server's own cap on its answers (DeviceLimits.max_answer_bytes)
_UNSIGNED_READ = 64 << 10  # of an unsigned answer (a refusal before the request was authenticated) read this much
_CHUNK = 1 << 16


class _Retry(Exception):
    """The device is busy or the connection broke: try again."""


class _Answer:
    """A response whose body is read in pieces, each under what is left of a deadline."""

    def __init__(self, response: http.client.HTTPResponse, sock: Any, deadline: float) -> None:
        self.response, self.sock, self.deadline = response, sock, deadline

    def read(self, n: int, *, exact: bool) -> bytes:
        """Up to ``n`` bytes; with ``exact``, fewer only if the deadline passes (a closed
        connection is an IncompleteRead)."""
        parts, got = [], 0
        while got < n:
            left = self.deadline - time.monotonic()
            if left <= 0:
                break
            if self.sock is not None:
                self.sock.settimeout(left)
            try:
                chunk = self.response.read1(min(_CHUNK, n - got))
            except TimeoutError:  # the deadline passed inside the read
                break
            if not chunk:
                if exact:
                    raise http.client.IncompleteRead(b"", n - got)
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)


def _content_length(response: http.client.HTTPResponse) -> int | None:
    """The one Content-Length of an answer that is not chunked, else None."""
    lengths = response.headers.get_all("Content-Length") or []
    if response.getheader("Transfer-Encoding") or len(lengths) != 1:
        return None
    text = lengths[0].strip()
    return int(text) if text.isdigit() and len(text) <= 15 else None


class RemoteTarget:
    """onnxruntime on a device running ``autoquant device serve``. An answer longer than
    ``max_answer_bytes`` is refused before it is read."""

    def __init__(self, name: str, address: str, secret: bytes, *, threads: int = 1,
                 protocol: MeasureProtocol | None = None, retries: int = 4, timeout_s: float = 300.0,
                 max_answer_bytes: int = MAX_ANSWER_BYTES, runtime: str = "onnxruntime",
                 reference_runtime: str | None = None) -> None:
        from autoquant.runtimes import get_runtime

        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise TargetError(f"device address {address!r} must be HOST:PORT, e.g. pi.local:7878")
        self.name = name
        self.address = address
        self.secret = secret
        self.threads = threads
        self.protocol = protocol or MeasureProtocol()
        self.retries = retries
        self.timeout_s = timeout_s
        self.max_answer_bytes = max_answer_bytes
        # Models are compiled here for the runtime the device runs them on (no compiler there).
        self.runtime = get_runtime(runtime)
        self.reference_runtime = get_runtime(reference_runtime or runtime)
        self._facts: dict[str, Any] | None = None

    # --- transport ----------------------------------------------------------------

    def _call(self, endpoint: str, header: dict[str, Any] | None = None,
              blobs: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        path = f"/v1/{endpoint}"
        body = pack(header or {}, blobs)
        delay = 0.5
        for attempt in range(self.retries + 1):
            sent = sign_request(self.secret, "POST", path, body)  # a fresh nonce per attempt
            try:
                return self._exchange(path, body, sent)
            except _Retry as exc:
                if attempt < self.retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                cause = exc.__cause__
                if cause is None:  # busy to the last try
                    raise TargetError(f"device {self.address} is busy ({exc}): wait for its other clients, or "
                                      "restart 'autoquant device serve' there") from None
                reason = getattr(cause, "reason", None) or cause
                raise DeviceUnreachable(
                    f"device {self.address} unreachable after {self.retries + 1} tries ({reason}): is "
                    "'autoquant device serve' running there and the port open?") from cause
        raise AssertionError("unreachable")  # pragma: no cover

    def _exchange(self, path: str, body: bytes, sent: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
        deadline = time.monotonic() + self.timeout_s
        conn = http.client.HTTPConnection(self.address, timeout=self.timeout_s)
        try:
            conn.request("POST", path, body=body, headers={**sent, "Content-Type": "application/octet-stream",
                                                           "Connection": "close"})
            sock = conn.sock
            response = conn.getresponse()
            return self._answer(_Answer(response, sock, deadline), sent)
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, cut short
            raise _Retry(str(exc)) from exc
        finally:
            conn.close()

    def _answer(self, answer: _Answer, sent: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
        status, headers = answer.response.status, answer.response.headers
        length = _content_length(answer.response)
        if not headers.get(SIGNATURE):
            # Refused before the request was authenticated (or not a device): a short message at most.
            self._unsigned(status, answer.read(min(length if length is not None else _UNSIGNED_READ,
                                                   _UNSIGNED_READ), exact=False))
        if length is None:
            raise TargetError(f"device {self.address} sent an answer without one Content-Length (or chunked): "
                              "an autoquant device sends its length; is this address an autoquant device?")
        why = verify_response_headers(self.secret, sent[NONCE], status, headers, length)
        if why is not None:
            raise TargetError(f"device {self.address} answered with {why}: it does not hold the same secret, "
                              "runs another autoquant version, or is not an autoquant device")
        if length > self.max_answer_bytes:
            raise TargetError(f"device {self.address} announced an answer of {length:,} bytes, over the cap of "
                              f"{self.max_answer_bytes:,} (RemoteTarget max_answer_bytes): ask for a smaller "
                              "batch, or raise the cap if the device is yours")
        payload = answer.read(length, exact=True)
        if len(payload) < length:
            raise TargetError(f"device {self.address} sent {len(payload):,} of {length:,} bytes of its answer "
                              f"in {self.timeout_s:.0f} s (RemoteTarget timeout_s): the link is too slow")
        if not body_matches(headers, payload):
            raise TargetError(f"device {self.address} sent an answer that does not match its signed "
                              f"{DIGEST}: the connection altered it; try again")
        try:
            header, blobs = unpack(payload)
        except ValueError as exc:
            raise TargetError(f"device {self.address} sent a malformed answer ({exc})") from exc
        if status == 200:
            return header, blobs
        message = _one_line(header.get("error", ""))
        if status == 503:  # signed busy: another job holds the device
            raise _Retry(message)
        raise TargetError(f"device {self.address} refused the job (HTTP {status}): {message}")

    def _unsigned(self, status: int, payload: bytes) -> None:
        """An answer without a signature: a refusal of the device before it checked ours, or an error."""
        message = _one_line(_error_of(payload)) or "no message"
        if status == 401:
            raise TargetError(f"device {self.address} refused the request: {message}; check that "
                              "--secret-file holds the device's secret")
        if status == 503:
            raise _Retry(message)
        raise TargetError(f"device {self.address} answered HTTP {status} without a signature ({message}): it does "
                          "not hold the same secret, runs another autoquant version, or is not an autoquant device")

    # --- Target ----------------------------------------------------------------------

    def facts(self) -> dict[str, Any]:
        if self._facts is None:
            header, _ = self._call("facts")
            facts = {**header["facts"], "device": self.address, "threads": self.threads}
            runtimes = facts.get("runtimes") if isinstance(facts.get("runtimes"), dict) else {}
            for rt in {self.runtime.name, self.reference_runtime.name} - {"onnxruntime"}:
                if rt not in runtimes:
                    raise TargetError(f"device {self.address} has no {rt} runtime: install autoquant[device] there "
                                      "(it brings LiteRT) and restart 'autoquant device serve'")
            if self.runtime.name != "onnxruntime":
                facts.update(runtime=self.runtime.name, **{self.runtime.name: runtimes.get(self.runtime.name)})
            if self.reference_runtime is not self.runtime:
                facts["reference_runtime"] = self.reference_runtime.name
            self._facts = facts
        return self._facts

    def _runtimes(self) -> dict[str, str]:
        out = {}
        if self.runtime.name != "onnxruntime":
            out["runtime"] = self.runtime.name
        if self.reference_runtime is not self.runtime or out:
            out["reference_runtime"] = self.reference_runtime.name
        return out

    def measure(self, candidate: bytes, reference: bytes | None, x: np.ndarray,
                layers: list[str] | None = None) -> LatencyResult:
        self.facts()  # the device runs this target's runtimes: refused here in one line, not per job
        candidate = self.runtime.compile(candidate)
        reference = self.reference_runtime.compile(reference) if reference is not None else None
        blobs: dict[str, Any] = {"model": candidate, "x": np.ascontiguousarray(x[:1], dtype=np.float32)}
        if reference is not None:
            blobs["reference"] = reference
        self._check_size(sum(len(m) for m in (candidate, reference) if m is not None))
        header, _ = self._call("measure", {"protocol": self.protocol.to_json(), "threads": self.threads,
                                           "layers": layers or [], **self._runtimes()}, blobs)
        facts = {**header.get("facts", {}), **{k: v for k, v in self.facts().items()
                                               if k in ("runtime", "reference_runtime", self.runtime.name)},
                 "device": self.address, "threads": self.threads,
                 "protocol": self.protocol.to_json(), "where": f"remote device {self.address}"}
        if "kernels" in header:
            facts["kernels"] = header["kernels"]
        return LatencyResult(target=self.name, unit="ms", candidate=header["candidate"],
                             reference=header.get("reference"), statistic=self.protocol.statistic,
                             calls=int(header["calls"]), facts=facts)

    def _check_size(self, size: int) -> None:
        cap = self.facts().get("limits", {}).get("max_body_bytes")
        if cap is not None and size > cap:
            raise TargetError(f"models of {size:,} bytes exceed the cap of {cap:,} bytes of device "
                              f"{self.address}: raise it there with --max-model-mb")

    def infer(self, model: bytes, x: np.ndarray) -> np.ndarray:
        """Outputs computed on the device (its numerics, its runtime), for fidelity."""
        self.facts()
        model = self.runtime.compile(model)
        self._check_size(len(model) + x.nbytes)
        _, blobs = self._call("infer", {"threads": self.threads, **self._runtimes()},
                              {"model": model, "x": np.ascontiguousarray(x, dtype=np.float32)})
        out = blobs["out"]
        assert isinstance(out, np.ndarray)
        return out  # the device's session answers in the graph's layout (LiteRT's NHWC moved back)


def _error_of(payload: bytes) -> Any:
    """The "error" of an unsigned answer's header (of which only a prefix may have been
    read), else its first bytes as text."""
    if len(payload) >= HEADER.size:
        (n,) = HEADER.unpack_from(payload)
        if n <= len(payload) - HEADER.size:
            try:
                header = loads_json(payload[HEADER.size:HEADER.size + n], what="the answer", error=WireError)
            except WireError:
                header = None
            if isinstance(header, dict) and "error" in header:
                return header["error"]
    return payload[:200].decode("utf-8", "replace")


def _one_line(text: Any) -> str:
    """An untrusted message, as one short line of printable characters."""
    line = " ".join("".join(ch if ch.isprintable() else " " for ch in str(text)[:2000]).split())
    return line if len(line) <= 300 else line[:300] + "..."
