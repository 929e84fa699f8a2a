"""The device server (``autoquant device serve``): measures and runs ONNX models on
the machine it runs on, for a workstation that searches.

It needs only the standard library, numpy and onnxruntime. It accepts ONNX bytes,
inputs and measurement settings, never code or pickles; every request and response
is signed with an HMAC of a shared secret, stale or replayed requests are refused;
the signature is checked on a bounded header before the body is read; model size,
batch, call count, run time, open connections and the time to send a request are
capped; only standard, self-contained ONNX models are accepted (standard operator
domains, no external data); one job runs at a time, in a child process, so a model
that crashes onnxruntime cannot take the server down.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import platform
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from autoquant._untrusted import short_repr
from autoquant.errors import TargetError, WireError
from autoquant.targets._base import MeasureProtocol
from autoquant.targets._onnx_domains import STANDARD_DOMAINS, scan_model
from autoquant.targets._wire import (
    MAX_SKEW_S,
    NONCE,
    TIMESTAMP,
    body_matches,
    pack,
    sign_response,
    unpack,
    verify_request_headers,
)

__all__ = ["DeviceLimits", "DeviceServer", "check_timestamp", "device_facts", "serve", "validate_request"]

API = "/v1"


@dataclass(frozen=True)
class DeviceLimits:
    """What one request may cost the device. A client silent for ``read_timeout_s``, or
    whose request is not in after ``request_deadline_s``, is dropped; past
    ``max_connections`` open connections, new ones get a 503."""

    max_body_bytes: int = 64 << 20
    max_batch: int = 4096
    max_calls: int = 20_000
    max_seconds: float = 120.0
    queue_wait_s: float = 30.0
    max_connections: int = 16
    read_timeout_s: float = 15.0
    request_deadline_s: float = 120.0


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


def check_timestamp(text: str, *, now: float) -> str | None:
    """None when ``text`` is a finite Unix time within ``MAX_SKEW_S`` of ``now``, else why not."""
    if len(text) > 32:
        return "bad timestamp"
    try:
        ts = float(text)
    except ValueError:
        return "bad timestamp"
    if not math.isfinite(ts):
        return "bad timestamp (not a finite number)"
    if abs(now - ts) > MAX_SKEW_S:
        return f"stale request ({now - ts:+.0f} s; are the clocks in sync?)"
    return None


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def validate_request(body: bytes, kind: str, limits: DeviceLimits) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and blobs of a job request (``kind`` "measure" or "infer"), checked
    against ``limits``: standard, self-contained ONNX models, a float32 batch, integer
    settings. Anything else raises WireError, answered with HTTP 400."""
    try:
        header, blobs = unpack(body)
    except WireError as exc:
        raise WireError(f"malformed request body: {exc}") from None
    if set(blobs) - {"model", "reference", "x"}:
        raise WireError(f"unknown blobs {sorted(set(blobs) - {'model', 'reference', 'x'})}: a job sends "
                        "'model', 'x' and optionally 'reference'")
    if not isinstance(blobs.get("model"), bytes) or not isinstance(blobs.get("x"), np.ndarray):
        raise WireError("a job needs a 'model' (ONNX bytes) and an input array 'x'")
    models = [blobs["model"]] + ([blobs["reference"]] if "reference" in blobs else [])
    for model in models:
        if not isinstance(model, bytes):
            raise WireError("models must be ONNX bytes")
        try:
            scan = scan_model(model)
        except ValueError as exc:
            raise WireError(f"not an ONNX model ({exc})") from None
        custom = sorted(d for d in scan.domains if d not in STANDARD_DOMAINS)
        if custom:
            raise WireError(f"operator domains {custom[:5]} are not standard ONNX; this device runs only "
                            "standard ONNX operators")
        if scan.external:
            raise WireError(f"tensors {scan.external[:3]} are stored as external data; this device runs only "
                            "self-contained ONNX models (save with onnx.save(model, path, "
                            "save_as_external_data=False))")
    x = blobs["x"]
    if x.dtype != np.float32 or not 2 <= x.ndim <= 8 or not 1 <= len(x) <= limits.max_batch:
        raise WireError(f"'x' must be float32 with 2 to 8 dimensions and a batch of 1..{limits.max_batch}")
    threads = header.get("threads", 1)
    cores = os.cpu_count() or 1
    if not _positive_int(threads) or threads > cores:
        raise WireError(f"threads must be an integer in 1..{cores}, got {short_repr(threads, 20)}")
    if kind == "measure":
        protocol = header.get("protocol")
        if not isinstance(protocol, dict):
            raise WireError("measure needs a 'protocol' object")
        unknown = set(protocol) - {f.name for f in dataclasses.fields(MeasureProtocol)}
        if unknown:
            raise WireError(f"unknown protocol keys {sorted(unknown)[:5]}")
        try:
            settings = MeasureProtocol(**protocol)
        except TargetError as exc:
            raise WireError(str(exc)) from None
        if not 1 <= settings.calls + settings.warmup <= limits.max_calls:
            raise WireError(f"warmup + calls must be 1..{limits.max_calls}")
        layers = header.get("layers", [])
        if not isinstance(layers, list) or len(layers) > 4096 \
                or not all(isinstance(name, str) and len(name) <= 256 for name in layers):
            raise WireError("'layers' must be a list of at most 4096 layer names")
    return header, blobs


_BUSY_BODY = pack({"error": "busy: the device's cap on open connections is reached; try again shortly"})
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/octet-stream\r\n"
         b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\nConnection: close\r\n\r\n" + _BUSY_BODY)
_UNSIGNED_DRAIN = 64 << 10  # read (and drop) this much of a refused unsigned body, so the client sees the 401
_DRAIN_LIMIT = 256 << 20  # an oversized signed body up to this size is read and answered; beyond, dropped


class _HTTPServer(ThreadingHTTPServer):
    """At most ``max_connections`` open at once, each in its own thread; past the cap a
    connection gets a 503 at once, and no thread. Client disconnects are not errors."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a burst of connections is answered, not dropped

    def __init__(self, address: tuple[str, int], handler: Any, *, max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self._count_lock = threading.Lock()
        self.open_connections = 0  # connections holding a slot now
        super().__init__(address, handler)

    def _opened(self, delta: int) -> None:
        with self._count_lock:
            self.open_connections += delta

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        self._opened(+1)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._opened(-1)
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._opened(-1)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # the client went away or was too slow: nothing to report
        super().handle_error(request, client_address)


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
            timeout = server.limits.read_timeout_s  # every read and write on the socket

            def log_message(self, fmt: str, *args: Any) -> None:  # quiet by default
                pass

            def handle_one_request(self) -> None:
                # The request line, headers and body must all arrive before the deadline.
                self.deadline = threading.Timer(server.limits.request_deadline_s, self._cut)
                self.deadline.daemon = True
                self.deadline.start()
                try:
                    super().handle_one_request()
                finally:
                    self.deadline.cancel()

            def _cut(self) -> None:
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                server._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                self.close_connection = True
                server._reply(self, 405, {"error": "use POST with a signed request"}, nonce="")

        self.httpd = _HTTPServer((host, port), Handler, max_connections=self.limits.max_connections)

    @property
    def open_connections(self) -> int:
        """Connections holding one of the ``max_connections`` slots now."""
        return int(self.httpd.open_connections)

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
        if handler.close_connection:
            handler.send_header("Connection", "close")
        if nonce:
            handler.send_header("X-Autoquant-Signature", sign_response(self.secret, nonce, status, body))
        handler.end_headers()
        handler.wfile.write(body)

    def _refuse(self, handler: BaseHTTPRequestHandler, status: int, error: str, *, nonce: str,
                unread: int = 0, drain: int = 0) -> None:
        """Answer ``status`` and close; first read up to ``drain`` of the ``unread`` body
        bytes, so that a client still sending can read the answer."""
        handler.close_connection = True
        remaining = min(unread, drain)
        while remaining > 0:
            chunk = handler.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                return
            remaining -= len(chunk)
        self._reply(handler, status, {"error": error}, nonce=nonce)

    def _fresh(self, ts_text: str, nonce: str) -> str | None:
        now = time.time()
        why = check_timestamp(ts_text, now=now)
        if why is not None:
            return why
        with self._nonce_lock:
            for old in [n for n, expiry in self._nonces.items() if expiry < now]:
                del self._nonces[old]
            if nonce in self._nonces:
                return "replayed request"
            self._nonces[nonce] = now + 2 * MAX_SKEW_S
        return None

    def _handle(self, handler: Any) -> None:
        headers = handler.headers
        if headers.get("Transfer-Encoding"):
            self._refuse(handler, 411, "send a Content-Length, not a chunked body", nonce="")
            return
        lengths = headers.get_all("Content-Length") or []
        if len(lengths) != 1 or not re.fullmatch(r"[0-9]{1,15}", lengths[0].strip()):
            self._refuse(handler, 400, "a request needs one Content-Length of digits", nonce="")
            return
        length = int(lengths[0])
        # Authenticate the header before reading the body.
        nonce = headers.get(NONCE, "")
        why = verify_request_headers(self.secret, "POST", handler.path, headers, length)
        if why is None:
            why = self._fresh(headers.get(TIMESTAMP, ""), nonce)
        if why is not None:  # not signed: the client may lack the secret
            self._refuse(handler, 401, why, nonce="", unread=length, drain=_UNSIGNED_DRAIN)
            return
        if length > self.limits.max_body_bytes:
            self._refuse(handler, 413, f"request of {length} bytes exceeds the cap of "
                                       f"{self.limits.max_body_bytes} bytes", nonce=nonce,
                         unread=length, drain=_DRAIN_LIMIT)
            return
        body = handler.rfile.read(length)
        handler.deadline.cancel()  # the request is in; the job has its own time cap
        if len(body) != length:
            handler.close_connection = True  # the client went away
            return
        if not body_matches(headers, body):
            self._refuse(handler, 400, "the body does not match its signed digest", nonce=nonce)
            return
        if handler.path == f"{API}/facts":
            self._reply(handler, 200, {"facts": self.facts}, nonce=nonce)
            return
        if handler.path not in (f"{API}/measure", f"{API}/infer"):
            self._reply(handler, 404, {"error": f"no endpoint {handler.path[:100]}"}, nonce=nonce)
            return
        endpoint = handler.path.rpartition("/")[2]
        try:
            header, blobs = validate_request(body, endpoint, self.limits)
        except WireError as exc:
            self._reply(handler, 400, {"error": str(exc)}, nonce=nonce)
            return
        try:
            status, result, out = self._run(endpoint, header, blobs)
        except _Busy:
            self._reply(handler, 503, {"error": "busy: another measurement is running"}, nonce=nonce)
            return
        self._reply(handler, status, {**result, "facts": self.facts}, nonce=nonce, blobs=out)

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


