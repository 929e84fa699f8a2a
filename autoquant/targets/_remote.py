"""The client of a device server: a Target that measures on a remote board."""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from autoquant.errors import DeviceUnreachable, TargetError
from autoquant.targets._base import LatencyResult, MeasureProtocol
from autoquant.targets._wire import pack, sign_request, sign_response, unpack

__all__ = ["DeviceUnreachable", "RemoteTarget"]


class RemoteTarget:
    """onnxruntime on a device running ``autoquant device serve``."""

    def __init__(self, name: str, address: str, secret: bytes, *, threads: int = 1,
                 protocol: MeasureProtocol | None = None, retries: int = 4, timeout_s: float = 300.0) -> None:
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
        self._facts: dict[str, Any] | None = None

    # --- transport ----------------------------------------------------------------

    def _call(self, endpoint: str, header: dict[str, Any] | None = None,
              blobs: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        path = f"/v1/{endpoint}"
        body = pack(header or {}, blobs)
        delay = 0.5
        for attempt in range(self.retries + 1):
            headers = sign_request(self.secret, "POST", path, body)  # a fresh nonce per attempt
            request = urllib.request.Request(f"http://{self.address}{path}", data=body, method="POST",
                                             headers={**headers, "Content-Type": "application/octet-stream"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return self._accept(response.status, response.headers, response.read(), headers)
            except urllib.error.HTTPError as exc:
                payload = exc.read()
                if exc.code == 503 and attempt < self.retries:  # busy: wait for the running job
                    time.sleep(delay)
                    delay *= 2
                    continue
                self._refuse(exc.code, exc.headers, payload, headers)
            except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as exc:
                if attempt < self.retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                reason = getattr(exc, "reason", exc)
                raise DeviceUnreachable(
                    f"device {self.address} unreachable after {self.retries + 1} tries ({reason}): is "
                    "'autoquant device serve' running there and the port open?") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _verify(self, status: int, headers: Any, payload: bytes, sent: dict[str, str]) -> None:
        signature = headers.get("X-Autoquant-Signature", "")
        want = sign_response(self.secret, sent["X-Autoquant-Nonce"], status, payload)
        if signature != want:
            raise TargetError(f"device {self.address} answered without a valid signature: it does not hold "
                              "the same secret, or is not an autoquant device")

    def _accept(self, status: int, headers: Any, payload: bytes, sent: dict[str, str]
                ) -> tuple[dict[str, Any], dict[str, Any]]:
        self._verify(status, headers, payload, sent)
        try:
            return unpack(payload)
        except ValueError as exc:
            raise TargetError(f"device {self.address} sent a malformed answer ({exc})") from exc

    def _refuse(self, status: int, headers: Any, payload: bytes, sent: dict[str, str]) -> None:
        try:
            message = unpack(payload)[0].get("error", "")
        except ValueError:
            message = payload[:200].decode("utf-8", "replace")
        if status == 401:
            raise TargetError(f"device {self.address} refused the request: {message}; check that "
                              "--secret-file holds the device's secret")
        if status == 503 and not headers.get("X-Autoquant-Signature"):
            raise TargetError(f"device {self.address} is busy ({message}): wait for its other clients, or "
                              "restart 'autoquant device serve' there")
        self._verify(status, headers, payload, sent)
        raise TargetError(f"device {self.address} refused the job (HTTP {status}): {message}")

    # --- Target ----------------------------------------------------------------------

    def facts(self) -> dict[str, Any]:
        if self._facts is None:
            header, _ = self._call("facts")
            self._facts = {**header["facts"], "device": self.address, "threads": self.threads}
        return self._facts

    def measure(self, candidate: bytes, reference: bytes | None, x: np.ndarray,
                layers: list[str] | None = None) -> LatencyResult:
        blobs: dict[str, Any] = {"model": candidate, "x": np.ascontiguousarray(x[:1], dtype=np.float32)}
        if reference is not None:
            blobs["reference"] = reference
        self._check_size(sum(len(m) for m in (candidate, reference) if m is not None))
        header, _ = self._call("measure", {"protocol": self.protocol.to_json(), "threads": self.threads,
                                           "layers": layers or []}, blobs)
        facts = {**header.get("facts", {}), "device": self.address, "threads": self.threads,
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
        """Outputs computed on the device (its numerics), for fidelity."""
        self._check_size(len(model) + x.nbytes)
        _, blobs = self._call("infer", {"threads": self.threads},
                              {"model": model, "x": np.ascontiguousarray(x, dtype=np.float32)})
        out = blobs["out"]
        assert isinstance(out, np.ndarray)
        return out
