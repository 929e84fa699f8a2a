"""A hostile or broken device against the client (issue 22): a fake device on loopback, a
plain socket thread in the test, answers the real RemoteTarget. The client checks an
answer's signed length against its cap before it reads the body, reads no more than
that, and gives up on a trickle at its deadline; each refusal is one line."""

from __future__ import annotations

import hashlib
import hmac
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from autoquant.errors import TargetError
from autoquant.targets._remote import RemoteTarget
from autoquant.targets._wire import pack

SECRET = b"k" * 32
GIB = 1 << 30
SEND_AT_MOST = 256 << 20  # what the fake device sends before it gives up (the answer it announces is larger)


def _response_signature(nonce: str, status: int, length: int, digest: str) -> str:
    """As the protocol signs an answer: the request's nonce, the status, the body's length
    and SHA-256 (by hand, independent of autoquant's own code)."""
    mac = hmac.new(SECRET, digestmod=hashlib.sha256)
    for part in ("response", nonce, str(status), str(length), digest):
        mac.update(part.encode() + b"\x00")
    return mac.hexdigest()


class FakeDevice:
    """Accepts connections on 127.0.0.1, reads each request, and lets ``respond`` answer on
    the raw socket. ``sent`` counts the body bytes the client let it send. Stops by itself:
    every send has a timeout and ``respond`` has a time budget."""

    def __init__(self, respond: Callable[[FakeDevice, socket.socket, str], None]) -> None:
        self.respond = respond
        self.sent = 0
        self.stopping = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    nonce = self._read_request(conn)
                    self.respond(self, conn, nonce)
                except OSError:
                    pass  # the client hung up: what a refusing client does

    @staticmethod
    def _read_request(conn: socket.socket) -> str:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("client left")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
        headers = {k.lower(): v for k, v in headers.items()}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            body += conn.recv(65536)
        return headers.get("x-autoquant-nonce", "")

    def stream(self, conn: socket.socket, *, total: int, chunk: int = 65536, pause_s: float = 0.0,
               budget_s: float = 5.0) -> None:
        """Send zeros until ``total`` bytes, the time budget, or the client hangs up."""
        end = time.monotonic() + budget_s
        block = bytes(chunk)
        while self.sent < total and time.monotonic() < end and not self.stopping.is_set():
            conn.sendall(block)
            self.sent += len(block)
            if pause_s:
                time.sleep(pause_s)

    def stop(self) -> None:
        self.stopping.set()
        self.listener.close()
        self.thread.join(timeout=10)


@pytest.fixture()
def fake() -> Iterator[Callable[..., FakeDevice]]:
    started: list[FakeDevice] = []

    def start(respond: Callable[[FakeDevice, socket.socket, str], None]) -> FakeDevice:
        started.append(FakeDevice(respond))
        return started[-1]

    yield start
    for device in started:
        device.stop()


def _head(status: int, length: int | None, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X", "Content-Type: application/octet-stream", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _signed_head(nonce: str, status: int, length: int, digest: str = "0" * 64) -> bytes:
    return _head(status, length, {"X-Autoquant-Content-SHA256": digest,
                                  "X-Autoquant-Signature": _response_signature(nonce, status, length, digest)})


def _refusal(device: FakeDevice, needle: str, **client: float) -> tuple[str, float, int]:
    """The one-line TargetError the client raises, the seconds it took and the peak of
    memory it allocated meanwhile."""
    target = RemoteTarget("arm", device.address, SECRET, retries=0, **client)  # type: ignore[arg-type]
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(TargetError) as info:
            target.facts()
        elapsed = time.monotonic() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    text = str(info.value)
    assert needle in text, text
    assert "\n" not in text and len(text) < 400, text
    return text, elapsed, peak


def test_a_signed_answer_over_the_cap_is_refused_before_it_is_read(fake: Callable[..., FakeDevice]) -> None:
    """A device that holds the secret (compromised, or buggy) announces 1 GiB, signed, and
    sends as fast as loopback goes: the client refuses from the headers."""
    def respond(device: FakeDevice, conn: socket.socket, nonce: str) -> None:
        conn.sendall(_signed_head(nonce, 200, GIB))
        device.stream(conn, total=SEND_AT_MOST)

    device = fake(respond)
    text, elapsed, peak = _refusal(device, "over the cap")
    assert "1,073,741,824 bytes" in text and "67,108,864" in text
    assert elapsed < 2.0, elapsed
    assert peak < 4 << 20, f"the client allocated {peak:,} bytes"
    device.stop()
    assert device.sent < 32 << 20, f"the client let the device send {device.sent:,} bytes"  # kernel buffers at most


@pytest.mark.parametrize("status", [200, 401, 503])
def test_an_unsigned_huge_answer_is_not_read(fake: Callable[..., FakeDevice], status: int) -> None:
    """No signature: at most 64 KiB of the body is read, for the message of a refusal."""
    def respond(device: FakeDevice, conn: socket.socket, nonce: str) -> None:
        conn.sendall(_head(status, GIB) + pack({"error": "go away\nTraceback (most recent call last)"}))
        device.stream(conn, total=SEND_AT_MOST)

    device = fake(respond)
    needle = {200: "without a signature", 401: "refused the request", 503: "busy"}[status]
    text, elapsed, peak = _refusal(device, needle)
    assert "go away Traceback" in text  # the device's message, kept to one line
    assert elapsed < 2.0 and peak < 4 << 20, (elapsed, peak)


@pytest.mark.slow
def test_a_trickling_answer_ends_at_the_clients_deadline(fake: Callable[..., FakeDevice]) -> None:
    """A signed 1 MiB answer (under the cap) sent 64 bytes every 20 ms: the client gives up
    at its 1 s timeout instead of waiting for the whole trickle (about 5 minutes)."""
    def respond(device: FakeDevice, conn: socket.socket, nonce: str) -> None:
        conn.sendall(_signed_head(nonce, 200, 1 << 20))
        device.stream(conn, total=1 << 20, chunk=64, pause_s=0.02, budget_s=8.0)

    device = fake(respond)
    text, elapsed, _ = _refusal(device, "too slow", timeout_s=1.0)
    assert elapsed < 3.0, elapsed
    assert device.sent < 64 << 10


@pytest.mark.parametrize("case", ["chunked", "two-lengths", "wrong-digest", "wrong-length"])
def test_answers_that_break_the_framing_are_refused(fake: Callable[..., FakeDevice], case: str) -> None:
    body = pack({"facts": {"onnxruntime": "1"}})
    digest = hashlib.sha256(body).hexdigest()

    def respond(device: FakeDevice, conn: socket.socket, nonce: str) -> None:
        signature = _response_signature(nonce, 200, len(body), digest)
        signed = {"X-Autoquant-Content-SHA256": digest, "X-Autoquant-Signature": signature}
        if case == "chunked":
            conn.sendall(_head(200, None, {**signed, "Transfer-Encoding": "chunked"})
                         + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        elif case == "two-lengths":
            conn.sendall(_head(200, len(body), {**signed, "Content-Length": str(len(body))}) + body)
        elif case == "wrong-digest":
            other = body[:-1] + b"!"
            conn.sendall(_head(200, len(other), signed) + other)
        else:  # a signature for another length
            conn.sendall(_head(200, len(body) + 1, signed) + body + b" ")

    needle = {"chunked": "Content-Length", "two-lengths": "Content-Length", "wrong-digest": "does not match",
              "wrong-length": "bad signature"}[case]
    _refusal(fake(respond), needle)


def test_a_well_signed_answer_is_accepted(fake: Callable[..., FakeDevice]) -> None:
    """The fake speaks the protocol as documented: the same client accepts it."""
    body = pack({"facts": {"onnxruntime": "1.0", "cpu": "fake"}})

    def respond(device: FakeDevice, conn: socket.socket, nonce: str) -> None:
        conn.sendall(_signed_head(nonce, 200, len(body), hashlib.sha256(body).hexdigest()) + body)

    target = RemoteTarget("arm", fake(respond).address, SECRET, retries=0)
    assert target.facts()["cpu"] == "fake"
