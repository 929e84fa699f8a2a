"""Attacks on the device server (issues 13 and 22), against the real server on loopback:
the CLI's server in a subprocess (tests/targets/device.py) for what its defaults must
refuse, and an in-process DeviceServer with small limits for timeouts, the connection
pools and the job's memory, so that those tests take seconds."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import numpy_helper

from autoquant.errors import TargetError
from autoquant.targets import MeasureProtocol
from autoquant.targets._remote import RemoteTarget
from autoquant.targets._server import DeviceLimits, DeviceServer
from autoquant.targets._wire import pack, read_secret, sign_request, unpack
from tests.targets.device import Device, start_device

X = np.zeros((1, 4), np.float32)


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    dev = start_device(tmp_path_factory.mktemp("device"))
    yield dev
    dev.stop()


def _secret(device: Device) -> bytes:
    return read_secret(str(device.secret_file))


def _model(*, external: str | None = None, in_subgraph: bool = False) -> bytes:
    """obs (1, 4) @ W (4, 2): self-contained, or with W (or a constant inside an If
    branch) stored as external data at ``external``."""
    weight = numpy_helper.from_array(np.ones((4, 2), np.float32), "W")
    if external is not None and not in_subgraph:
        weight.ClearField("raw_data")
        weight.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", external), ("offset", "0"), ("length", "32")):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
    nodes = [oh.make_node("MatMul", ["obs", "W"], ["out"])]
    if in_subgraph:
        constant = numpy_helper.from_array(np.zeros(2, np.float32), "c")
        if external is not None:
            constant.ClearField("raw_data")
            constant.data_location = onnx.TensorProto.EXTERNAL
            entry = constant.external_data.add()
            entry.key, entry.value = "location", external
        branch = oh.make_graph([oh.make_node("Constant", [], ["k"], value=constant)], "branch", [],
                               [oh.make_tensor_value_info("k", onnx.TensorProto.FLOAT, [2])])
        nodes.append(oh.make_node("If", ["flag"], ["k_out"], then_branch=branch, else_branch=branch))
    inputs = [oh.make_tensor_value_info("obs", onnx.TensorProto.FLOAT, [1, 4])]
    if in_subgraph:
        inputs.append(oh.make_tensor_value_info("flag", onnx.TensorProto.BOOL, []))
    graph = oh.make_graph(nodes, "g", inputs, [oh.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 2])],
                          [weight])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]).SerializeToString()


def _nested_if(depth: int) -> bytes:
    """A model whose If nodes nest ``depth`` deep, as raw protobuf (the onnx package
    itself refuses to build it)."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def field(number: int, payload: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    node = field(4, b"Identity")
    for _ in range(depth):
        attribute = field(1, b"then_branch") + varint(20 << 3) + varint(5) + field(6, field(1, node))
        node = field(4, b"If") + field(5, attribute)
    return varint(1 << 3) + varint(8) + field(7, field(1, node))


def _post(address: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        return response.status, unpack(payload)[0] if payload else {}
    finally:
        conn.close()


def _signed(secret: bytes, path: str, body: bytes, *, ts: str) -> dict[str, str]:
    """Headers signed as the protocol says, with a timestamp of our choosing."""
    nonce = hashlib.sha256(ts.encode() + str(time.time()).encode()).hexdigest()[:32]
    digest = hashlib.sha256(body).hexdigest()
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    for part in ("request", "POST", path, ts, nonce, str(len(body)), digest):
        mac.update(part.encode() + b"\x00")
    return {"X-Autoquant-Timestamp": ts, "X-Autoquant-Nonce": nonce, "X-Autoquant-Content-SHA256": digest,
            "X-Autoquant-Signature": mac.hexdigest()}


def _job(device: Device, header: dict, blobs: dict, path: str = "/v1/measure") -> tuple[int, dict]:
    body = pack(header, blobs)
    return _post(device.address, path, body, sign_request(_secret(device), "POST", path, body))


def _alive(device: Device) -> None:
    target = RemoteTarget("arm", device.address, _secret(device), protocol=MeasureProtocol(warmup=1, calls=5))
    assert target.facts()["onnxruntime"]


# --- 3. external data -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "in_subgraph"),
    [("secret.txt", False), ("../../../etc/hostname", False), ("/etc/hostname", False), ("secret.txt", True)],
    ids=["relative", "parent", "absolute", "in-an-If-branch"],
)
def test_external_data_is_refused(device: Device, tmp_path: Path, location: str, in_subgraph: bool) -> None:
    model = _model(external=location, in_subgraph=in_subgraph)
    for path in ("/v1/infer", "/v1/measure"):
        status, answer = _job(device, {"protocol": MeasureProtocol(warmup=1, calls=5).to_json()},
                              {"model": model, "x": X}, path)
        assert status == 400 and "external data" in answer["error"], answer
    target = RemoteTarget("arm", device.address, _secret(device), retries=0)
    with pytest.raises(TargetError, match="self-contained ONNX"):
        target.infer(model, X)
    np.testing.assert_array_equal(target.infer(_model(), X), np.full((1, 2), 0, np.float32))


# --- 5. inputs that escaped the checks ------------------------------------------------------


@pytest.mark.parametrize("ts", ["nan", "NaN", "inf", "-inf", "1e999", "abc", ""])
def test_timestamps_that_are_not_finite_numbers(device: Device, ts: str) -> None:
    body = pack({})
    status, answer = _post(device.address, "/v1/facts", body, _signed(_secret(device), "/v1/facts", body, ts=ts))
    assert status == 401
    assert "timestamp" in answer["error"] or "unsigned" in answer["error"]


def test_a_good_timestamp_signed_by_hand_is_accepted(device: Device) -> None:
    body = pack({})
    headers = _signed(_secret(device), "/v1/facts", body, ts=f"{time.time():.3f}")
    assert _post(device.address, "/v1/facts", body, headers)[0] == 200  # the helper signs as the client does


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        ({"threads": True, "protocol": {"warmup": 1, "calls": 5}}, "threads must be an integer"),
        ({"threads": 1.0, "protocol": {"warmup": 1, "calls": 5}}, "threads must be an integer"),
        ({"protocol": {"warmup": 1, "calls": [1, 2]}}, "calls must be a positive integer"),
        ({"protocol": {"warmup": 1, "calls": {"n": 5}}}, "calls must be a positive integer"),
        ({"protocol": {"warmup": "1", "calls": 5}}, "warmup must be a positive integer"),
        ({"protocol": {"calls": 5, "run": "os.system"}}, "unknown protocol keys"),
        ({"protocol": [5]}, "needs a 'protocol' object"),
        ({"protocol": {"calls": 5}, "layers": "fc1"}, "'layers' must be a list"),
        ({"protocol": {"warmup": 0, "calls": 10**9}}, "warmup + calls must be"),
    ],
)
def test_wrong_types_are_a_400(device: Device, header: dict, needle: str) -> None:
    status, answer = _job(device, header, {"model": _model(), "x": X})
    assert status == 400 and needle in answer["error"], answer


def test_deeply_nested_if_is_refused(device: Device) -> None:
    status, answer = _job(device, {"protocol": {"calls": 5}}, {"model": _nested_if(2000), "x": X})
    assert status == 400 and "nest deeper than" in answer["error"], answer
    _alive(device)


def test_body_that_does_not_match_its_signed_digest(device: Device) -> None:
    body = pack({})
    headers = sign_request(_secret(device), "POST", "/v1/facts", body)
    forged = pack({"x": 1})[: len(body)]  # same length, other bytes
    status, answer = _post(device.address, "/v1/facts", forged, headers)
    assert status == 400 and "digest" in answer["error"]


def test_a_signature_binds_the_body_length(device: Device) -> None:
    body = pack({})
    headers = sign_request(_secret(device), "POST", "/v1/facts", body)
    status, answer = _post(device.address, "/v1/facts", body + b" ", headers)
    assert status == 401 and "bad signature" in answer["error"]


# --- 4. unsigned bodies are never read --------------------------------------------------------


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_unsigned_60mb_bodies_are_not_read(device: Device) -> None:
    host, port = device.address.rsplit(":", 1)
    before = _rss_kb(device.process.pid)
    chunk = bytes(1 << 20)
    for _ in range(4):
        sent = 0
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"POST /v1/measure HTTP/1.1\r\nHost: x\r\nContent-Length: 60000000\r\n\r\n")
            try:
                while sent < 60_000_000:
                    s.sendall(chunk)
                    sent += len(chunk)
            except OSError:  # the server answered 401 and closed: it did not take the body
                pass
        assert sent < 60_000_000, "the server read a whole unsigned body"
    assert _rss_kb(device.process.pid) - before < 30_000
    _alive(device)


@pytest.mark.slow
def test_client_disconnects_log_no_traceback(tmp_path: Path) -> None:
    dev = start_device(tmp_path)
    try:
        host, port = dev.address.rsplit(":", 1)
        secret = read_secret(str(dev.secret_file))
        body = pack({"protocol": {"warmup": 10, "calls": 3000}}, {"model": _model(), "x": X})
        headers = sign_request(secret, "POST", "/v1/measure", body)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (f"POST /v1/measure HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}\r\n").encode()
        for cut in (len(request) + len(body), len(request) + 10, len(request) // 2):
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall((request + body)[:cut])
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # reset: mid-request, or while the job runs and the server will answer
        time.sleep(3)
        _alive(dev)
    finally:
        dev.stop()
        assert dev.process.stderr is not None
        err = dev.process.stderr.read().decode()
    assert "Traceback" not in err and "Error" not in err, err


# --- 4. timeouts and the connection cap (in-process server with small limits) -------------------


@pytest.fixture()
def small_server() -> Iterator[tuple[DeviceServer, bytes]]:
    """Short timeouts: the tests of the timeouts themselves."""
    yield from _serve(DeviceLimits(max_connections=4, read_timeout_s=2.0, request_deadline_s=4.0,
                                   header_deadline_s=3.0))


@pytest.fixture()
def capped_server() -> Iterator[tuple[DeviceServer, bytes]]:
    """Four unsigned slots, two per address, and timeouts far longer than the test: only
    newer connections can push held ones out, however slow the machine."""
    yield from _serve(DeviceLimits(max_connections=4, max_connections_per_address=2, read_timeout_s=120.0,
                                   request_deadline_s=300.0, header_deadline_s=300.0))


@pytest.fixture()
def default_server() -> Iterator[tuple[DeviceServer, bytes]]:
    """The limits a board runs with when ``autoquant device serve`` is given no flags."""
    yield from _serve(DeviceLimits())


def _serve(limits: DeviceLimits) -> Iterator[tuple[DeviceServer, bytes]]:
    secret = b"s" * 32
    server = DeviceServer(secret, host="127.0.0.1", port=0, limits=limits)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, secret
    server.shutdown()
    thread.join(timeout=10)


def _connect(server: DeviceServer) -> socket.socket:
    return socket.create_connection(server.address, timeout=10)


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(4096):
        out += chunk
    return out


def _closed_by_server(s: socket.socket, wait_s: float) -> bool:
    """Whether the server closes ``s`` within ``wait_s`` (reading and dropping what it answers).
    ``wait_s`` is a generous bound on a loaded machine, not the limit under test."""
    s.settimeout(wait_s)
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


@pytest.mark.slow
def test_a_silent_client_is_dropped(small_server: tuple[DeviceServer, bytes]) -> None:
    server, _ = small_server
    with _connect(server) as s:
        s.sendall(b"POST /v1/facts HTTP/1.1\r\nContent-Le")  # then nothing, ever
        assert _closed_by_server(s, 60)  # the 2 s read timeout; without it the server would wait forever


@pytest.mark.slow
def test_a_trickling_client_is_dropped_at_the_deadline(small_server: tuple[DeviceServer, bytes]) -> None:
    """One byte every 0.3 s (under the 2 s read timeout) for 60 s: only the 3 s header
    deadline can end it, so the server must close it before the trickle is through."""
    server, _ = small_server
    trickle = b"POST /v1/facts HTTP/1.1\r\nX-Padding: " + b"a" * 170
    sent = 0
    with _connect(server) as s:
        try:
            for byte in trickle:
                s.sendall(bytes([byte]))
                sent += 1
                time.sleep(0.3)
        except OSError:
            pass
        assert _closed_by_server(s, 60)
    assert sent < len(trickle), "the server let a trickling client run to the end"


def _all_accepted(server: DeviceServer) -> None:
    """Return once the server has accepted every connection opened before this call: it
    accepts in order, so an answered probe means that all before it were taken."""
    with _connect(server) as probe:
        probe.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _read_all(probe)
    assert answer.startswith(b"HTTP/1.1 405"), answer[:40]


def _served_in(server: DeviceServer, secret: bytes) -> float:
    """Seconds a real signed request (a fresh client, no retries) takes to be answered."""
    start = time.monotonic()
    assert RemoteTarget("arm", "%s:%d" % server.address, secret, retries=0).facts()["onnxruntime"]
    return time.monotonic() - start


def _threads_settle(baseline: int, most: int) -> int:
    """Threads above ``baseline`` once the cut connections' threads have ended (10 s at most)."""
    deadline = time.monotonic() + 10
    while threading.active_count() - baseline > most and time.monotonic() < deadline:
        time.sleep(0.05)
    return threading.active_count() - baseline


def _pools_settle(server: DeviceServer, check: Callable[[int, int], bool]) -> tuple[int, int]:
    """The (unsigned, signed) pool sizes once ``check`` holds for them, or after 10 s: a
    connection the client closed leaves its pool when its thread ends, a moment later."""
    deadline = time.monotonic() + 10
    while not check(*server.httpd.pool_sizes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.httpd.pool_sizes()


def test_new_connections_push_out_the_oldest_unsigned_ones(capped_server: tuple[DeviceServer, bytes]) -> None:
    """Past the per-address cap (2) a new unsigned connection closes the oldest of its
    address; threads stay bounded; a signed client is served at once."""
    server, secret = capped_server
    baseline = threading.active_count()
    held = [_connect(server) for _ in range(50)]
    try:
        for s in held:
            s.sendall(b"POST /v1/facts HTTP/1.1\r\n")  # half-sent
        _all_accepted(server)  # the probe, from the same address, pushed out one more
        assert all(_closed_by_server(s, 30) for s in held[:-1])  # the 49 oldest were pushed out ...
        assert not _closed_by_server(held[-1], 0.2)  # ... the newest is held
        assert _threads_settle(baseline, 1 + 1) <= 1 + 1  # a thread per held connection, and the reaper
        assert _pools_settle(server, lambda unsigned, signed: (unsigned, signed) == (1, 0)) == (1, 0)
        assert _served_in(server, secret) < 1.0
    finally:
        for s in held:
            s.close()


def test_idle_and_trickling_connections_leave_a_signed_client_served(
        default_server: tuple[DeviceServer, bytes]) -> None:
    """64 unsigned connections from the client's own address, 32 silent and 32 sending a
    header line every 0.2 s, against the default limits (which they used to hold, every
    request a 503, for 15 to 110 s): real signed requests are answered within 1 s."""
    server, secret = default_server
    baseline = threading.active_count()
    idle = [_connect(server) for _ in range(32)]
    trickling = [_connect(server) for _ in range(32)]
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.2):
            for s in trickling:
                try:
                    s.sendall(b"X-Padding: a\r\n")
                except OSError:
                    pass  # pushed out already

    for s in trickling:
        s.sendall(b"POST /v1/facts HTTP/1.1\r\n")
    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        _all_accepted(server)
        took = [_served_in(server, secret) for _ in range(5)]
        assert max(took) < 1.0, took
        unsigned, signed = _pools_settle(server, lambda unsigned, signed: unsigned <= 8 and signed == 0)
        assert unsigned <= server.limits.max_connections_per_address and signed == 0, (unsigned, signed)
        assert _threads_settle(baseline, 8 + 2) <= 8 + 2  # the held, the reaper and the trickler
    finally:
        stop.set()
        thread.join(timeout=10)
        for s in idle + trickling:
            s.close()


@pytest.mark.slow
def test_reconnecting_connections_leave_signed_clients_served(tmp_path: Path) -> None:
    """20 sockets reconnecting every 0.2 s (each half-sending a request) against the CLI's
    server with its default limits: 20 of 20 real requests are served (they all got 503
    before), each within a second."""
    dev = start_device(tmp_path)
    host, port = dev.address.rsplit(":", 1)
    stop = threading.Event()

    def attack() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection((host, int(port)), timeout=2) as s:
                    s.sendall(b"POST /v1/facts HTTP/1.1\r\n")
                    stop.wait(0.2)
            except OSError:
                stop.wait(0.05)

    attackers = [threading.Thread(target=attack, daemon=True) for _ in range(20)]
    for thread in attackers:
        thread.start()
    try:
        time.sleep(1.0)  # every attacker has a connection open
        secret = _secret(dev)
        took = []
        for _ in range(20):
            start = time.monotonic()
            assert RemoteTarget("arm", dev.address, secret, retries=1).facts()["onnxruntime"]
            took.append(time.monotonic() - start)
        assert max(took) < 1.0, took
    finally:
        stop.set()
        for thread in attackers:
            thread.join(timeout=10)
        dev.stop()


@pytest.mark.slow
def test_a_signed_request_leaves_the_header_budget() -> None:
    """Once its signature is checked, a request's body may take longer than the 1 s header
    deadline (it has the request deadline): slow links stay usable."""
    serving = _serve(DeviceLimits(header_deadline_s=1.0, read_timeout_s=5.0, request_deadline_s=30.0))
    server, secret = next(serving)
    try:
        body = pack({"padding": "x" * 100})
        headers = sign_request(secret, "POST", "/v1/facts", body)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        with _connect(server) as s:
            s.sendall(f"POST /v1/facts HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode())
            for i in range(0, len(body), len(body) // 8 + 1):  # the body over 2.4 s
                time.sleep(0.3)
                s.sendall(body[i:i + len(body) // 8 + 1])
                if i == 0:
                    assert server.httpd.pool_sizes() == (0, 1)  # signed, its body coming in
            assert _read_all(s).startswith(b"HTTP/1.1 200")
    finally:
        next(serving, None)  # shut the server down


# --- job memory and answer size (issue 22) -------------------------------------------------


def _expand(rows: int, cols: int, *, reduce: bool = True) -> bytes:
    """obs (1, 1) expanded to (rows, cols) float32, then summed to (1, 1) or returned whole:
    a few hundred bytes of ONNX that need rows * cols * 4 bytes when run."""
    nodes = [oh.make_node("Expand", ["obs", "shape"], ["big"])]
    nodes.append(oh.make_node("ReduceSum", ["big"], ["out"], keepdims=1) if reduce
                 else oh.make_node("Identity", ["big"], ["out"]))
    out_shape = [1, 1] if reduce else [rows, cols]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("obs", onnx.TensorProto.FLOAT, [1, 1])],
                          [oh.make_tensor_value_info("out", onnx.TensorProto.FLOAT, out_shape)],
                          [numpy_helper.from_array(np.array([rows, cols], np.int64), "shape")])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]).SerializeToString()


ONE = np.ones((1, 1), np.float32)


@pytest.fixture()
def memory_server() -> Iterator[tuple[DeviceServer, bytes]]:
    yield from _serve(DeviceLimits(max_job_bytes=256 << 20, max_answer_bytes=4 << 20))


def test_a_job_over_the_memory_cap_is_refused(memory_server: tuple[DeviceServer, bytes]) -> None:
    """A 512 MiB intermediate under a 256 MiB job cap: a one-line 422 (infer and measure),
    and the server goes on serving."""
    server, secret = memory_server
    assert server.facts["job_memory_cap"] == "RLIMIT_AS"
    target = RemoteTarget("arm", "%s:%d" % server.address, secret, retries=0,
                          protocol=MeasureProtocol(warmup=1, calls=5))
    big = _expand(1 << 15, 1 << 12)
    for run in (lambda: target.infer(big, ONE), lambda: target.measure(big, None, ONE)):
        with pytest.raises(TargetError) as info:
            run()
        text = str(info.value)
        assert "HTTP 422" in text and "more memory than the device's cap of 256 MiB" in text, text
        assert "\n" not in text and len(text) < 400
    np.testing.assert_array_equal(target.infer(_expand(4, 4), ONE), [[16.0]])


def test_an_answer_over_the_cap_is_refused(memory_server: tuple[DeviceServer, bytes]) -> None:
    server, secret = memory_server
    target = RemoteTarget("arm", "%s:%d" % server.address, secret, retries=0)
    with pytest.raises(TargetError, match=r"HTTP 422.*the answer is 8,3\d\d,\d{3} bytes, over the device's cap of "
                                          r"4,194,304: send a smaller batch"):
        target.infer(_expand(1, 1 << 21, reduce=False), ONE)  # an 8 MiB output
    assert target.infer(_expand(1, 1 << 16, reduce=False), ONE).shape == (1, 1 << 16)


def test_a_512mb_answer_does_not_grow_the_server(device: Device) -> None:
    """Against the CLI's server with its defaults: a model whose output is 512 MiB is
    refused (its job over the memory cap, or its answer over the answer cap) in the job's
    process; the server's own memory does not grow (it grew by 1.6 GB)."""
    before = _rss_kb(device.process.pid)
    status, answer = _job(device, {}, {"model": _expand(1, 1 << 27, reduce=False), "x": ONE}, "/v1/infer")
    assert status == 422 and ("more memory" in answer["error"] or "over the device's cap" in answer["error"]), answer
    assert _rss_kb(device.process.pid) - before < 30_000
    _alive(device)
