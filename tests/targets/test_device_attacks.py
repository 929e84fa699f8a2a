"""Attacks on the device server (issue 13), against the real server on loopback: the
CLI's server in a subprocess (tests/targets/device.py) for what its defaults must
refuse, and an in-process DeviceServer with small limits for timeouts and the
connection cap, so that those tests take seconds."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import socket
import struct
import threading
import time
from collections.abc import Iterator
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
    yield from _serve(DeviceLimits(max_connections=4, read_timeout_s=2.0, request_deadline_s=4.0))


@pytest.fixture()
def capped_server() -> Iterator[tuple[DeviceServer, bytes]]:
    """Four slots and timeouts far longer than the test: held slots stay held however slow the machine."""
    yield from _serve(DeviceLimits(max_connections=4, read_timeout_s=120.0, request_deadline_s=300.0))


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


def test_a_silent_client_is_dropped(small_server: tuple[DeviceServer, bytes]) -> None:
    server, _ = small_server
    with _connect(server) as s:
        s.sendall(b"POST /v1/facts HTTP/1.1\r\nContent-Le")  # then nothing, ever
        assert _closed_by_server(s, 60)  # the 2 s read timeout; without it the server would wait forever


def test_a_trickling_client_is_dropped_at_the_deadline(small_server: tuple[DeviceServer, bytes]) -> None:
    """One byte every 0.3 s (under the 2 s read timeout) for 60 s: only the 4 s request
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


def test_connections_past_the_cap_get_503_and_no_thread(capped_server: tuple[DeviceServer, bytes]) -> None:
    server, secret = capped_server
    baseline = threading.active_count()
    held = [_connect(server) for _ in range(4)]
    for s in held:
        s.sendall(b"POST /v1/facts HTTP/1.1\r\n")  # half-sent, holding a slot
    deadline = time.monotonic() + 60
    while server.open_connections < 4:  # the server has taken all four: every slot is held
        assert time.monotonic() < deadline, f"the server took {server.open_connections} of 4 connections in 60 s"
        time.sleep(0.05)
    extra = [_connect(server) for _ in range(50)]
    answers = [_read_all(s) for s in extra]
    assert all(a.startswith(b"HTTP/1.1 503") and b"busy" in a for a in answers), [a[:20] for a in answers if b"busy" not in a]
    assert threading.active_count() - baseline <= 2 * 4  # a thread and a deadline timer per held slot
    # A client meeting the cap retries (its request may be cut before it reads the 503)
    # and is served once the slots free up.
    # Retries back off over about two minutes: the release after 1 s falls well inside them.
    target = RemoteTarget("arm", "%s:%d" % server.address, secret, retries=8)
    release = threading.Timer(1.0, lambda: [s.close() for s in held])
    release.start()
    try:
        assert target.facts()["onnxruntime"]
    finally:
        release.join()
        for s in extra:
            s.close()
