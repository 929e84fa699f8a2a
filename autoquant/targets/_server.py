"""The device server (``autoquant device serve``): measures and runs ONNX models on
the machine it runs on, for a workstation that searches.

It needs only the standard library, numpy and onnxruntime. It accepts ONNX bytes,
inputs and measurement settings, never code or pickles; every request and response
is signed with an HMAC of a shared secret, stale or replayed requests are refused;
model size, batch, call count and run time are capped; only standard ONNX operator
domains are accepted; one job runs at a time, in a child process, so a model that
crashes onnxruntime cannot take the server down.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import platform
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from autoquant.targets._onnx_domains import STANDARD_DOMAINS, model_domains
from autoquant.targets._wire import MAX_SKEW_S, pack, sign_response, unpack, verify_request_signature

__all__ = ["DeviceLimits", "DeviceServer", "device_facts"]

API = "/v1"
_DRAIN_LIMIT = 256 << 20  # an oversized body up to this size is read and answered; beyond, dropped


@dataclass(frozen=True)
class DeviceLimits:
    max_body_bytes: int = 64 << 20
    max_batch: int = 4096
    max_calls: int = 20_000
    max_seconds: float = 120.0
    queue_wait_s: float = 30.0


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def device_facts() -> dict[str, Any]:
    """CPU model and features, cores, frequency governor, onnxruntime version."""
    import onnxruntime as ort

    cpu, features = platform.processor() or platform.machine(), ""
    info = _read("/proc/cpuinfo") or ""
    for line in info.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and cpu in ("", platform.machine(), platform.processor()):
            cpu = value.strip()
        elif key in ("flags", "Features") and not features:
            features = value.strip()
    return {
        "cpu": cpu, "features": features, "machine": platform.machine(), "cores": os.cpu_count(),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "onnxruntime": ort.__version__, "python": platform.python_version(), "system": platform.system(),
    }


# --- jobs, in a child process ------------------------------------------------------


def _job(kind: str, header: dict[str, Any], blobs: dict[str, Any], conn: Any) -> None:
    """Runs in a child: only onnxruntime on the given model(s)."""
    try:
        from autoquant.targets._base import MeasureProtocol
        from autoquant.targets._host import time_interleaved
        from autoquant.targets._ort import kernel_report, make_session

        threads = int(header.get("threads", 1))
        x = blobs["x"]
        if kind == "infer":
            session = make_session(blobs["model"], threads=threads)
            name = session.get_inputs()[0].name
            outs = [session.run(None, {name: x[i:i + 256]})[0] for i in range(0, len(x), 256)]
            conn.send(("ok", {}, {"out": np.concatenate(outs).astype(np.float32)}))
            return
        protocol = MeasureProtocol(**header["protocol"])
        sessions = [make_session(blobs["model"], threads=threads)]
        if "reference" in blobs:
            sessions.append(make_session(blobs["reference"], threads=threads))
        times = time_interleaved(sessions, x, protocol)

        def stats(t: np.ndarray) -> dict[str, float]:
            ms = t * 1e3
            return {"p10": float(np.percentile(ms, 10)), "median": float(np.median(ms)), "min": float(ms.min())}

        result: dict[str, Any] = {"candidate": stats(times[0]),
                                  "reference": stats(times[1]) if len(times) > 1 else None,
                                  "calls": protocol.calls}
        layers = header.get("layers")
        if layers:
            result["kernels"] = kernel_report(blobs["model"], x, list(layers), threads=threads).to_json()
        conn.send(("ok", result, {}))
    except Exception as exc:  # noqa: BLE001 - reported to the client as the job's error
        conn.send(("error", {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}, {}))


class _Busy(Exception):
    pass


class DeviceServer:
    """HTTP server on ``host:port``; ``serve_forever`` until ``shutdown``."""

    def __init__(self, secret: bytes, *, host: str = "127.0.0.1", port: int = 7878,
                 limits: DeviceLimits | None = None) -> None:
        self.secret = secret
        self.limits = limits or DeviceLimits()
        self.facts = {**device_facts(), "limits": dataclasses.asdict(self.limits)}
        self._lock = threading.Lock()
        self._nonces: dict[str, float] = {}
        self._nonce_lock = threading.Lock()
        self._ctx = multiprocessing.get_context("spawn")
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:  # quiet by default
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                server._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                server._reply(self, 405, {"error": "use POST with a signed request"}, nonce="")

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- request handling --------------------------------------------------------

    def _reply(self, handler: BaseHTTPRequestHandler, status: int, header: dict[str, Any], *,
               nonce: str, blobs: dict[str, Any] | None = None) -> None:
        body = pack(header, blobs)
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(body)))
        if nonce:
            handler.send_header("X-Autoquant-Signature", sign_response(self.secret, nonce, status, body))
        handler.end_headers()
        handler.wfile.write(body)

    def _fresh(self, ts_text: str, nonce: str) -> str | None:
        try:
            ts = float(ts_text)
        except ValueError:
            return "bad timestamp"
        now = time.time()
        if abs(now - ts) > MAX_SKEW_S:
            return f"stale request ({now - ts:+.0f} s; are the clocks in sync?)"
        with self._nonce_lock:
            for old in [n for n, expiry in self._nonces.items() if expiry < now]:
                del self._nonces[old]
            if nonce in self._nonces:
                return "replayed request"
            self._nonces[nonce] = now + 2 * MAX_SKEW_S
        return None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        nonce = handler.headers.get("X-Autoquant-Nonce", "")
        try:
            length = int(handler.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > self.limits.max_body_bytes:
            handler.close_connection = True
            remaining = length if 0 < length <= _DRAIN_LIMIT else 0
            while remaining > 0:  # read what the client sends, so that it can read the answer
                chunk = handler.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                remaining -= len(chunk)
            self._reply(handler, 413, {"error": f"request of {length} bytes exceeds the cap of "
                                                f"{self.limits.max_body_bytes} bytes"}, nonce="")
            return
        body = handler.rfile.read(length)
        why = verify_request_signature(self.secret, "POST", handler.path, handler.headers, body)
        if why is None:
            why = self._fresh(handler.headers.get("X-Autoquant-Timestamp", ""), nonce)
        if why is not None:
            self._reply(handler, 401, {"error": why}, nonce="")  # not signed: the client may lack the secret
            return
        try:
            if handler.path == f"{API}/facts":
                self._reply(handler, 200, {"facts": self.facts}, nonce=nonce)
                return
            if handler.path not in (f"{API}/measure", f"{API}/infer"):
                self._reply(handler, 404, {"error": f"no endpoint {handler.path}"}, nonce=nonce)
                return
            header, blobs = self._validate(body, handler.path.rsplit("/", 1)[1])
        except ValueError as exc:
            self._reply(handler, 400, {"error": str(exc)}, nonce=nonce)
            return
        try:
            status, result, out = self._run(handler.path.rsplit("/", 1)[1], header, blobs)
        except _Busy:
            self._reply(handler, 503, {"error": "busy: another measurement is running"}, nonce=nonce)
            return
        self._reply(handler, status, {**result, "facts": self.facts}, nonce=nonce, blobs=out)

    def _validate(self, body: bytes, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            header, blobs = unpack(body)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"malformed request body: {exc}") from None
        if not isinstance(blobs.get("model"), bytes) or not isinstance(blobs.get("x"), np.ndarray):
            raise ValueError("a job needs a 'model' (ONNX bytes) and an input array 'x'")
        models = [blobs["model"]] + ([blobs["reference"]] if "reference" in blobs else [])
        for model in models:
            if not isinstance(model, bytes):
                raise ValueError("models must be ONNX bytes")
            try:
                domains = model_domains(model)
            except ValueError as exc:
                raise ValueError(f"not an ONNX model ({exc})") from None
            custom = sorted(d for d in domains if d not in STANDARD_DOMAINS)
            if custom:
                raise ValueError(f"operator domains {custom} are not standard ONNX; this device runs only "
                                 "standard ONNX operators")
        x = blobs["x"]
        if x.dtype != np.float32 or x.ndim < 2 or not 1 <= len(x) <= self.limits.max_batch:
            raise ValueError(f"'x' must be float32 with a batch of 1..{self.limits.max_batch}")
        threads = header.get("threads", 1)
        if not isinstance(threads, int) or not 1 <= threads <= (os.cpu_count() or 1):
            raise ValueError(f"threads must be 1..{os.cpu_count()}")
        if kind == "measure":
            protocol = header.get("protocol")
            if not isinstance(protocol, dict):
                raise ValueError("measure needs a 'protocol'")
            calls = int(protocol.get("calls", 0)) + int(protocol.get("warmup", 0))
            if not 1 <= calls <= self.limits.max_calls:
                raise ValueError(f"warmup + calls must be 1..{self.limits.max_calls}")
        return header, blobs

    def _run(self, kind: str, header: dict[str, Any], blobs: dict[str, Any]) -> tuple[int, dict[str, Any], Any]:
        if not self._lock.acquire(timeout=self.limits.queue_wait_s):
            raise _Busy
        try:
            parent, child = self._ctx.Pipe(duplex=False)
            process = self._ctx.Process(target=_job, args=(kind, header, blobs, child), daemon=True)
            process.start()
            child.close()
            if not parent.poll(self.limits.max_seconds):
                process.kill()
                process.join()
                return 504, {"error": f"the job ran past the cap of {self.limits.max_seconds:.0f} s and was "
                                      "stopped"}, None
            try:
                status, result, out = parent.recv()
            except EOFError:
                process.join()
                return 422, {"error": f"the model crashed onnxruntime (exit {process.exitcode}); "
                                      "the server is still up"}, None
            process.join(timeout=5)
            return (200 if status == "ok" else 422), result, out
        finally:
            self._lock.release()


def serve(secret_file: str, *, host: str, port: int, limits: DeviceLimits | None = None,
          ready: Any = None) -> None:
    """Run a device server until interrupted (``autoquant device serve``)."""
    from autoquant.targets._wire import read_secret

    from autoquant.errors import TargetError

    try:
        server = DeviceServer(read_secret(secret_file), host=host, port=port, limits=limits)
    except OSError as exc:
        raise TargetError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    if ready is not None:
        ready(server)
    try:
        server.serve_forever()
    finally:
        server.httpd.server_close()


