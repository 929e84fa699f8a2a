"""The device server (``autoquant device serve``): measures and runs ONNX models on
the machine it runs on, for a workstation that searches.

It needs only the standard library, numpy and onnxruntime. It accepts ONNX bytes,
inputs and measurement settings, never code or pickles; every request and response
is signed with an HMAC of a shared secret, stale or replayed requests are refused;
the signature is checked on a bounded header before the body is read; model size,
batch, call count, run time, job memory, answer size, open connections and the time
to send a request are capped; only standard, self-contained ONNX models are accepted
(standard operator domains, no external data); one job runs at a time, in a child
process under a memory limit, so a model that crashes onnxruntime or asks for too much
memory cannot take the server down.

Connections whose signature has not been checked yet have a short budget: their
request line and headers must arrive within ``header_deadline_s``, at most
``max_connections_per_address`` of them per client address and ``max_connections`` in
all are kept, and a new one past either cap pushes out the oldest (an idle socket
cannot hold a slot that a real client needs). A connection that presented a valid
signature leaves that pool for a pool of its own.
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
from collections import OrderedDict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from autoquant._untrusted import short_repr
from autoquant.errors import TargetError, WireError, describe_exception
from autoquant.targets._base import MeasureProtocol
from autoquant.targets._onnx_domains import STANDARD_DOMAINS, scan_model
from autoquant.targets._wire import (
    MAX_SKEW_S,
    NONCE,
    TIMESTAMP,
    body_matches,
    pack,
    response_headers,
    unpack,
    verify_request_headers,
)

__all__ = ["DeviceLimits", "DeviceServer", "check_timestamp", "device_facts", "serve", "validate_request"]

API = "/v1"


@dataclass(frozen=True)
class DeviceLimits:
    """What one request may cost the device.

    A connection whose request line and headers are not in ``header_deadline_s`` after
    it opened (or after its previous answer) is dropped; of connections whose signature
    is not checked yet at most ``max_connections_per_address`` per address and
    ``max_connections`` in all are kept, a new one past a cap closing the oldest; signed
    requests have ``max_connections`` slots of their own, past which they get a 503. A
    client silent for ``read_timeout_s``, or whose whole request is not in after
    ``request_deadline_s``, is dropped. A job's memory (address space beyond what
    onnxruntime itself maps) is capped at ``max_job_bytes``, its answer at
    ``max_answer_bytes``."""

    max_body_bytes: int = 64 << 20
    max_batch: int = 4096
    max_calls: int = 20_000
    max_seconds: float = 120.0
    queue_wait_s: float = 30.0
    max_connections: int = 16
    read_timeout_s: float = 15.0
    request_deadline_s: float = 120.0
    header_deadline_s: float = 5.0
    max_connections_per_address: int = 8
    max_job_bytes: int = 1024 << 20
    max_answer_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise TargetError(f"DeviceLimits.{field.name} must be a positive finite number, got "
                                  f"{short_repr(value, 30)}")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


# What a device runs: onnxruntime always; LiteRT where the device extra installed it. A job
# names its runtime and sends that runtime's model (ONNX, or .tflite the client compiled).
DEVICE_RUNTIMES = ("onnxruntime", "litert")
TFLITE_IDENTIFIER = b"TFL3"


def device_facts() -> dict[str, Any]:
    """CPU model and features, cores, frequency governor, onnxruntime version."""
    from autoquant.runtimes import get_runtime

    cpu, features = platform.processor() or platform.machine(), ""
    info = _read("/proc/cpuinfo") or ""
    for line in info.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and cpu in ("", platform.machine(), platform.processor()):
            cpu = value.strip()
        elif key in ("flags", "Features") and not features:
            features = value.strip()
    runtimes = {}
    for name in DEVICE_RUNTIMES:
        runtime = get_runtime(name, require=False)
        if runtime.missing() is None:
            runtimes[name] = runtime.version()
    return {
        "cpu": cpu, "features": features, "machine": platform.machine(), "cores": os.cpu_count(),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "onnxruntime": runtimes.get("onnxruntime"), "runtimes": runtimes, "python": platform.python_version(),
        "system": platform.system(),
    }


# --- jobs, in a child process ------------------------------------------------------


def _mapped_bytes() -> int | None:
    """This process's address space now (VmSize), or None where /proc does not say."""
    text = _read("/proc/self/status") or ""
    for line in text.splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return None


def memory_cap_mechanism() -> str | None:
    """How a job's memory is capped on this system ("RLIMIT_AS"), or None where it cannot be."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    if not hasattr(resource, "RLIMIT_AS") or not sys.platform.startswith("linux") or _mapped_bytes() is None:
        return None  # macOS accepts RLIMIT_AS and does not enforce it
    return "RLIMIT_AS"


def _cap_memory(max_bytes: int) -> None:
    """Cap this process's address space at what it maps now plus ``max_bytes``."""
    import resource

    now = _mapped_bytes()
    if now is None:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = now + max_bytes if hard == resource.RLIM_INFINITY else min(now + max_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _job(kind: str, header: dict[str, Any], blobs: dict[str, Any], conn: Any, caps: dict[str, Any],
         facts: dict[str, Any]) -> None:
    """Runs in a child: only onnxruntime on the given model(s), under ``caps["max_job_bytes"]``
    of memory beyond onnxruntime's own. Sends two messages of bytes, never a pickle: b"ok"
    or b"error", then the whole answer body (at most ``caps["max_answer_bytes"]``)."""
    max_job, max_answer = int(caps["max_job_bytes"]), int(caps["max_answer_bytes"])
    over_memory = (f"the job needed more memory than the device's cap of {max_job >> 20} MiB (--max-job-mb "
                   "there): send a smaller batch or model")
    out: dict[str, Any] = {}
    try:
        from autoquant.runtimes import get_runtime, kernel_report
        from autoquant.targets._base import MeasureProtocol
        from autoquant.targets._host import time_interleaved

        # the runtimes' libraries mapped before the cap, which counts only the job
        runtime = get_runtime(str(header.get("runtime", "onnxruntime")))
        reference_runtime = get_runtime(str(header.get("reference_runtime", runtime.name)))

        if caps.get("mechanism"):
            _cap_memory(max_job)
        threads = int(header.get("threads", 1))
        x = blobs["x"]
        if kind == "infer":
            session = runtime.session(blobs["model"], threads=threads)
            outs = [session.run(x[i:i + 256]) for i in range(0, len(x), 256)]
            result: dict[str, Any] = {}
            out = {"out": np.concatenate(outs).astype(np.float32)}
        else:
            protocol = MeasureProtocol(**header["protocol"])
            sessions = [runtime.session(blobs["model"], threads=threads)]
            if "reference" in blobs:
                sessions.append(reference_runtime.session(blobs["reference"], threads=threads))
            times = time_interleaved([s.bind(x) for s in sessions], protocol)

            def stats(t: np.ndarray) -> dict[str, float]:
                ms = t * 1e3
                return {"p10": float(np.percentile(ms, 10)), "median": float(np.median(ms)), "min": float(ms.min())}

            result = {"candidate": stats(times[0]), "reference": stats(times[1]) if len(times) > 1 else None,
                      "calls": protocol.calls}
            layers = header.get("layers")
            if layers and runtime.name == "onnxruntime":
                result["kernels"] = kernel_report(blobs["model"], x, list(layers), threads=threads).to_json()
        tag = b"ok"
    except MemoryError:
        tag, result, out = b"error", {"error": over_memory}, {}
    except Exception as exc:  # noqa: BLE001 - reported to the client as the job's error
        text = describe_exception(exc)
        failed = re.search(r"(failed to allocate[^\n]{0,80}|bad_alloc)", text, re.IGNORECASE)
        if failed:
            text = f"{over_memory} (onnxruntime: {failed.group(1)})"
        tag, result, out = b"error", {"error": text}, {}
    try:
        body = pack({**result, "facts": facts}, out)
        if len(body) > max_answer:
            raise _AnswerTooBig(len(body))
    except MemoryError:
        tag, body = b"error", pack({"error": over_memory, "facts": facts})
    except _AnswerTooBig as exc:
        tag, body = b"error", pack({"error": f"the answer is {exc.size:,} bytes, over the device's cap of "
                                             f"{max_answer:,}: send a smaller batch", "facts": facts})
    conn.send_bytes(tag)
    conn.send_bytes(body)


class _AnswerTooBig(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


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
    runtime = header.get("runtime", "onnxruntime")
    reference_runtime = header.get("reference_runtime", runtime)
    for name in (runtime, reference_runtime):
        if name not in DEVICE_RUNTIMES:
            raise WireError(f"runtime {short_repr(name, 40)} is not one a device runs: {list(DEVICE_RUNTIMES)}")
        if name != "onnxruntime":
            from autoquant.runtimes import get_runtime

            why = get_runtime(name, require=False).missing()
            if why is not None:
                raise WireError(f"this device has no {name} runtime: {why} there (the device extra installs it)")
    models = [(blobs["model"], runtime)]
    if "reference" in blobs:
        models.append((blobs["reference"], reference_runtime))
    for model, name in models:
        if not isinstance(model, bytes):
            raise WireError("models must be bytes")
        if name == "litert":
            if len(model) < 8 or model[4:8] != TFLITE_IDENTIFIER:
                raise WireError("not a LiteRT model (no TFL3 identifier): the client sends the .tflite it compiled")
            continue
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


_UNSIGNED_DRAIN = 64 << 10  # read (and drop) this much of a refused unsigned body, so the client sees the 401
_DRAIN_LIMIT = 256 << 20  # an oversized signed body up to this size is read and answered; beyond, dropped


@dataclass(eq=False)
class _Conn:
    host: str
    started: float  # when its current request began (monotonic)
    deadline: float | None  # when it is cut, unless its request is in by then


def _cut(sock: socket.socket) -> None:
    """End a connection from outside its thread: the thread's next read sees the end."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _HTTPServer(ThreadingHTTPServer):
    """A thread per connection, in two pools. A connection whose signature is not checked
    yet is *unsigned*: at most ``max_connections_per_address`` of them per address and
    ``max_connections`` in all, a new one past a cap cutting the oldest, each cut at
    ``header_deadline_s`` unless its headers are in and signed. A connection with a
    valid signature moves to the *signed* pool (``max_connections`` slots; past them, the
    handler answers 503) until its answer is sent; its whole request must be in within
    ``request_deadline_s``. A reaper thread enforces the deadlines. Client disconnects
    are not errors."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a burst of connections is answered, not dropped

    def __init__(self, address: tuple[str, int], handler: Any, *, limits: DeviceLimits) -> None:
        self.limits = limits
        self._pool_lock = threading.Lock()
        self._unsigned: OrderedDict[socket.socket, _Conn] = OrderedDict()  # oldest first
        self._signed: dict[socket.socket, _Conn] = {}
        self.pushed_out = 0  # unsigned connections cut to make room for newer ones
        self._stop = threading.Event()
        super().__init__(address, handler)
        self._reaper = threading.Thread(target=self._reap, name="autoquant-device-reaper", daemon=True)
        self._reaper.start()

    @property
    def open_connections(self) -> int:
        with self._pool_lock:
            return len(self._unsigned) + len(self._signed)

    def pool_sizes(self) -> tuple[int, int]:
        """(unsigned, signed) connections open now."""
        with self._pool_lock:
            return len(self._unsigned), len(self._signed)

    # --- the pools -------------------------------------------------------------------

    def await_request(self, sock: socket.socket, host: str) -> None:
        """``sock`` waits for a request: unsigned, with the header deadline; the oldest
        unsigned connection of its address, or of all, makes room if a cap is reached."""
        now = time.monotonic()
        cut = []
        with self._pool_lock:
            self._signed.pop(sock, None)
            self._unsigned.pop(sock, None)
            same = [s for s, c in self._unsigned.items() if c.host == host]
            if len(same) >= self.limits.max_connections_per_address:
                cut.append(same[0])
            elif len(self._unsigned) >= self.limits.max_connections:
                cut.append(next(iter(self._unsigned)))
            for old in cut:
                del self._unsigned[old]
            self.pushed_out += len(cut)
            self._unsigned[sock] = _Conn(host, now, now + self.limits.header_deadline_s)
        for old in cut:
            _cut(old)

    def signed(self, sock: socket.socket) -> bool:
        """Move ``sock``, whose request carries a valid signature, to the signed pool;
        False when that pool is full (or ``sock`` was cut meanwhile)."""
        with self._pool_lock:
            conn = self._unsigned.get(sock)
            if conn is None or len(self._signed) >= self.limits.max_connections:
                return False
            del self._unsigned[sock]
            conn.deadline = conn.started + self.limits.request_deadline_s
            self._signed[sock] = conn
            return True

    def request_in(self, sock: socket.socket) -> None:
        """The request of ``sock`` is in: no deadline while its job runs (the job has its own)."""
        with self._pool_lock:
            conn = self._signed.get(sock) or self._unsigned.get(sock)
            if conn is not None:
                conn.deadline = None

    def forget(self, sock: socket.socket) -> None:
        with self._pool_lock:
            self._unsigned.pop(sock, None)
            self._signed.pop(sock, None)

    def _reap(self) -> None:
        while not self._stop.wait(0.1):
            now = time.monotonic()
            with self._pool_lock:
                late = [s for pool in (self._unsigned, self._signed) for s, c in pool.items()
                        if c.deadline is not None and c.deadline < now]
                for sock in late:
                    self._unsigned.pop(sock, None)
                    self._signed.pop(sock, None)
            for sock in late:
                _cut(sock)

    # --- socketserver hooks ------------------------------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        self.await_request(request, str(client_address[0]))
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.forget(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.forget(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # the client went away, was too slow, or was cut: nothing to report
        super().handle_error(request, client_address)

    def server_close(self) -> None:
        self._stop.set()
        super().server_close()


class DeviceServer:
    """HTTP server on ``host:port``; ``serve_forever`` until ``shutdown``."""

    def __init__(self, secret: bytes, *, host: str = "127.0.0.1", port: int = 7878,
                 limits: DeviceLimits | None = None) -> None:
        self.secret = secret
        self.limits = limits or DeviceLimits()
        self.facts = {**device_facts(), "limits": dataclasses.asdict(self.limits),
                      "job_memory_cap": memory_cap_mechanism()}
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
                super().handle_one_request()
                if not self.close_connection:  # the next request on this connection starts unsigned
                    server.httpd.await_request(self.connection, str(self.client_address[0]))

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                server._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                self.close_connection = True
                server._reply(self, 405, {"error": "use POST with a signed request"}, nonce="")

        self.httpd = _HTTPServer((host, port), Handler, limits=self.limits)

    @property
    def open_connections(self) -> int:
        """Connections open now, signed or not."""
        return self.httpd.open_connections

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
        self._send(handler, status, pack(header, blobs), nonce=nonce)

    def _send(self, handler: BaseHTTPRequestHandler, status: int, body: bytes, *, nonce: str) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(body)))
        if handler.close_connection:
            handler.send_header("Connection", "close")
        if nonce:
            for key, value in response_headers(self.secret, nonce, status, body).items():
                handler.send_header(key, value)
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
        if not self.httpd.signed(handler.connection):
            self._refuse(handler, 503, f"busy: the device's {self.limits.max_connections} slots for signed "
                                       "requests are taken; try again shortly", nonce=nonce)
            return
        if length > self.limits.max_body_bytes:
            self._refuse(handler, 413, f"request of {length} bytes exceeds the cap of "
                                       f"{self.limits.max_body_bytes} bytes", nonce=nonce,
                         unread=length, drain=_DRAIN_LIMIT)
            return
        body = handler.rfile.read(length)
        self.httpd.request_in(handler.connection)  # the request is in; the job has its own time cap
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
        del body
        try:
            status, answer = self._run(endpoint, header, blobs)
        except _Busy:
            self._reply(handler, 503, {"error": "busy: another measurement is running"}, nonce=nonce)
            return
        self._send(handler, status, answer, nonce=nonce)

    def _run(self, kind: str, header: dict[str, Any], blobs: dict[str, Any]) -> tuple[int, bytes]:
        """The job's status and answer body: 200, or 422 (the job failed, died or its answer
        is over the cap), or 504 (past the time cap)."""
        if not self._lock.acquire(timeout=self.limits.queue_wait_s):
            raise _Busy
        try:
            caps = {"max_job_bytes": self.limits.max_job_bytes, "max_answer_bytes": self.limits.max_answer_bytes,
                    "mechanism": self.facts["job_memory_cap"]}
            parent, child = self._ctx.Pipe(duplex=False)
            process = self._ctx.Process(target=_job, args=(kind, header, blobs, child, caps, self.facts),
                                        daemon=True)
            process.start()
            child.close()
            if not parent.poll(self.limits.max_seconds):
                process.kill()
                process.join()
                return 504, self._error(f"the job ran past the cap of {self.limits.max_seconds:.0f} s and was "
                                        "stopped")
            try:
                tag = parent.recv_bytes(16)
                answer = parent.recv_bytes(self.limits.max_answer_bytes + (1 << 20))
            except (EOFError, OSError):
                process.kill()
                process.join()
                return 422, self._error(
                    f"the job died (exit {process.exitcode}): the model crashed onnxruntime or needed more than the "
                    f"device's memory cap of {self.limits.max_job_bytes >> 20} MiB (--max-job-mb there); the "
                    "server is still up")
            finally:
                parent.close()
            process.join(timeout=5)
            return (200 if tag == b"ok" else 422), answer
        finally:
            self._lock.release()

    def _error(self, message: str) -> bytes:
        return pack({"error": message, "facts": self.facts})


def serve(secret_file: str, *, host: str, port: int, limits: DeviceLimits | None = None,
          ready: Any = None) -> None:
    """Run a device server until interrupted (``autoquant device serve``)."""
    from autoquant._limits import MAX_PORT, check_integer
    from autoquant.targets._wire import read_secret

    check_integer(port, "device serve: --port", 0, MAX_PORT, error=TargetError)
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


