"""The one HTTP listener (bridge/web/listener.py on bridge/web/server.py) on its own, through raw
sockets: framing attacks, slow and oversized heads and bodies, 100-continue, pipelining, HEAD,
keep-alive, the client's departure, TLS and WebSocket.

The listener runs in a thread with its own event loop (shared by the module); the tests are
plain blocking clients. Its mounted handler reads bodies with the HTTP front-end's own
``Request.body`` (limit and body timeout), so refusals are the ones the bridge gives."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from bridge.model.config import ListenerSettings
from bridge.web.direct import DirectRequest, Responder
from bridge.web.dispatch import WEBSOCKET
from bridge.web.listener import WebListener
from bridge.web.problem import PROBLEM_TYPE, Problem
from bridge.web.server import DirectExchange, LeanServer
from bridge.web.sockets import listening_socket
from protocols.http.asgi import ClientGone, Request, Response, send_response
from tests.support.tls_certs import self_signed

LIMIT = 100


class App:
    """Handlers mounted on the listener; counts what reached them."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.departed = threading.Event()
        self.h2_port = 0
        self.direct_bodies: list[bytes] = []
        self.late_answers = 0  # answers a direct handler gave after its client left

    def direct(self, request: DirectRequest, responder: Responder) -> bool:
        """/direct answers now, /later 0.2 s later (as a Kafka acknowledgement would);
        ``?decline`` leaves the request to ASGI (which echoes it)."""
        if b"decline" in request.head.query_string:
            return False
        if request.head.path == "/explode":
            raise RuntimeError("a handler's bug")
        self.direct_bodies.append(request.body)
        answer = (200, [("x-direct", "yes")], b"direct:" + request.body)
        if request.head.path == "/direct":
            responder.respond(*answer)
        else:
            exchange = responder
            assert isinstance(exchange, DirectExchange)

            def later() -> None:
                self.late_answers += exchange.disconnected
                responder.respond(201, *answer[1:])

            asyncio.get_running_loop().call_later(0.2, later)
        return True

    def claims(self, scope: dict[str, Any]) -> bool:
        return scope["path"] in ("/echo", "/hello", "/stream", "/wait", "/ws")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.accept", "subprotocol": "mqtt"})
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                await send({"type": "websocket.send", "bytes": b"echo:" + message["bytes"]})
        path = scope["path"]
        if path == "/hello":
            await send_response(send, Response(200, [("content-type", "text/plain")], b"hello"), [])
        elif path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for part in (b"a", b"bb", b"ccc"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/wait":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"waiting\n", "more_body": True})
            while (await receive())["type"] != "http.disconnect":
                pass
            self.departed.set()
        else:
            request = Request.from_scope(scope, receive)
            try:
                body = await request.body(LIMIT, timeout_s=0.5)
            except Problem as problem:
                await send_response(send, Response.problem(problem, request.path), [])
                return
            except ClientGone:
                return
            self.bodies.append(body)
            await send_response(send, Response(200, [], body), [])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[App, int, int, Path]]:
    app = App()
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    quick = {"head_timeout_s": 0.5, "keep_alive_s": 1.0}
    plain = WebListener(ListenerSettings("127.0.0.1", 0, options=quick))
    tls = WebListener(
        ListenerSettings("127.0.0.1", 0, options={**quick, "tls_cert": cert, "tls_key": key})
    )
    # http2 = true: the same listener and handlers, served by Hypercorn (h2c, prior knowledge).
    h2 = WebListener(ListenerSettings("127.0.0.1", 0, options={"http2": True}))
    for listener in (plain, tls, h2):
        for path in ("/echo", "/hello", "/stream", "/wait"):
            listener.route("test app", path, ("GET", "HEAD", "POST", "PUT"), app)
        listener.route("test app", "/ws", (WEBSOCKET,), app)
        for path in ("/direct", "/later", "/explode"):
            listener.route("test app", path, ("POST",), app, direct=app.direct)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(plain.start())
        loop.run_until_complete(tls.start())
        loop.run_until_complete(h2.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(plain.stop())
        loop.run_until_complete(tls.stop())
        loop.run_until_complete(h2.stop())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    app.h2_port = h2.port
    yield app, plain.port, tls.port, cert
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_response(sock: socket.socket, buffer: bytearray) -> tuple[bytes, dict[str, str], bytes]:
    """One response with a Content-Length body (status line, headers, body) from ``buffer``+sock."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-head: {bytes(buffer)!r}"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {
        k.decode().lower(): v.decode().strip()
        for k, v in (line.split(b":", 1) for line in lines[1:])
    }
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    buffer[:] = rest[length:]
    return lines[0], headers, rest[:length]


def _problem(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert PROBLEM_TYPE.encode() in head, raw
    assert b"connection: close" in head.lower()
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
        b"Transfer-Encoding: chunked, identity\r\n",
    ],
    ids=["cl-and-te", "duplicate-cl", "te-not-chunked"],
)
def test_ambiguous_framing_is_400_and_reaches_nobody(served: Any, framing: bytes) -> None:
    app, port, _, _ = served
    before = len(app.bodies)
    with _connect(port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n0\r\n\r\nhello")
        status, problem = _problem(_read_all(sock))
    assert status == 400
    assert problem["status"] == 400 and problem["detail"]
    assert len(app.bodies) == before


def test_slow_head_is_408_and_closed(served: Any) -> None:
    _, port, _, _ = served
    with _connect(port) as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n")  # never finished
        status, problem = _problem(_read_all(sock))
    assert status == 408
    assert "head" in problem["detail"]


@pytest.mark.parametrize("finished", [True, False], ids=["whole", "never-finished"])
def test_oversized_head_is_431(served: Any, finished: bool) -> None:
    """Also while the head is still arriving: the limit is on bytes held, not on a whole head."""
    _, port, _, _ = served
    end = b"\r\n\r\n" if finished else b""
    with _connect(port) as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + end)
        status, _ = _problem(_read_all(sock))
    assert status == 431


def test_declared_body_over_limit_is_413_without_inviting_it(served: Any) -> None:
    _, port, _, _ = served
    with _connect(port) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        raw = _read_all(sock)
    assert b"100 Continue" not in raw
    status, problem = _problem(raw)
    assert status == 413 and "max_body_bytes" in problem["detail"]


def test_chunked_body_crossing_limit_is_413(served: Any) -> None:
    app, port, _, _ = served
    before = len(app.bodies)
    with _connect(port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            sock.sendall(b"40\r\n" + b"x" * 64 + b"\r\n")
        status, problem = _problem(_read_all(sock))
    assert status == 413 and "max_body_bytes" in problem["detail"]
    assert len(app.bodies) == before


def test_stalled_body_is_408_and_closed(served: Any) -> None:
    _, port, _, _ = served
    with _connect(port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        status, problem = _problem(_read_all(sock))
    assert status == 408 and "3 bytes" in problem["detail"]


def test_continue_is_sent_when_the_app_reads_the_body(served: Any) -> None:
    _, port, _, _ = served
    with _connect(port) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = sock.recv(100)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        status, _, body = _read_response(sock, bytearray())
    assert status.startswith(b"HTTP/1.1 200") and body == b"hello"


def test_pipelined_requests_are_answered_in_order_and_head_has_no_body(served: Any) -> None:
    _, port, _, _ = served
    with _connect(port) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none"
            b"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n"
            b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        buffer = bytearray()
        _, _, first = _read_response(sock, buffer)
        # HEAD: Content-Length 5 but no body bytes; parse it by hand.
        while buffer.count(b"\r\n\r\n") < 1:
            buffer += sock.recv(65536)
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"content-length: 5" in head.lower()
        buffer[:] = rest
        _, _, second = _read_response(sock, buffer)
        _, _, third = _read_response(sock, buffer)
    assert (first, second, third) == (b"one", b"two", b"hello")


def _post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return b"POST %b HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%b\r\n%b" % (
        path,
        len(body),
        extra,
        body,
    )


def test_a_whole_request_goes_to_the_direct_handler_and_keeps_the_connection(
    served: Any,
) -> None:
    app, port, _, _ = served
    before = len(app.bodies)
    with _connect(port) as sock:
        buffer = bytearray()
        for body in (b"one", b"two"):
            sock.sendall(_post(b"/direct", body))
            status, headers, answer = _read_response(sock, buffer)
            assert status == b"HTTP/1.1 200 OK"
            assert headers["x-direct"] == "yes" and "connection" not in headers
            assert answer == b"direct:" + body
    assert len(app.bodies) == before  # ASGI saw none of them


def test_direct_and_asgi_answers_keep_pipelined_order(served: Any) -> None:
    """A direct answer that comes later (/later, 0.2 s) still goes before the next request's."""
    _, port, _, _ = served
    with _connect(port) as sock:
        sock.sendall(
            _post(b"/later", b"first")
            + b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
            + _post(b"/direct", b"third")
            + _post(b"/echo", b"fourth")
        )
        buffer = bytearray()
        answers = [_read_response(sock, buffer) for _ in range(4)]
    assert [status.split()[1] for status, _, _ in answers] == [b"201", b"200", b"200", b"200"]
    assert [body for _, _, body in answers] == [
        b"direct:first",
        b"hello",
        b"direct:third",
        b"fourth",
    ]


def test_a_declined_request_and_a_body_still_coming_go_to_asgi(served: Any) -> None:
    app, port, _, _ = served
    direct_before = len(app.direct_bodies)
    with _connect(port) as sock:
        buffer = bytearray()
        sock.sendall(_post(b"/direct?decline", b"asgi"))
        _, headers, body = _read_response(sock, buffer)
        assert body == b"asgi" and "x-direct" not in headers
        sock.sendall(b"POST /direct HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsl")
        threading.Event().wait(0.2)  # the head and part of the body are read: ASGI takes it
        sock.sendall(b"owly")
        _, headers, body = _read_response(sock, buffer)
        assert body == b"slowly" and "x-direct" not in headers
    assert len(app.direct_bodies) == direct_before


def test_a_direct_answer_honours_connection_close(served: Any) -> None:
    _, port, _, _ = served
    with _connect(port) as sock:
        sock.sendall(_post(b"/direct", b"bye", b"Connection: close\r\n"))
        raw = _read_all(sock)  # the server closes after the answer
    assert raw.startswith(b"HTTP/1.1 200") and b"connection: close" in raw.lower()
    assert raw.endswith(b"direct:bye")
    with _connect(port) as sock:  # HTTP/1.0: no keep-alive unless asked
        sock.sendall(b"POST /direct HTTP/1.0\r\nContent-Length: 2\r\n\r\nv0")
        raw = _read_all(sock)
    assert b"connection: close" in raw.lower() and raw.endswith(b"direct:v0")


def test_a_direct_handler_that_raises_answers_500_and_the_connection_goes_on(
    served: Any,
) -> None:
    _, port, _, _ = served
    with _connect(port) as sock:
        sock.sendall(_post(b"/explode", b"boom") + _post(b"/direct", b"after"))
        buffer = bytearray()
        status, headers, body = _read_response(sock, buffer)
        assert status.startswith(b"HTTP/1.1 500") and headers["content-type"] == PROBLEM_TYPE
        assert json.loads(body)["status"] == 500
        _, _, body = _read_response(sock, buffer)
    assert body == b"direct:after"


def test_a_client_that_leaves_before_its_direct_answer_harms_nobody(served: Any) -> None:
    app, port, _, _ = served
    before = app.late_answers
    with _connect(port) as sock:
        sock.sendall(_post(b"/later", b"gone"))
    deadline = threading.Event()
    for _ in range(50):
        if app.late_answers > before:
            break
        deadline.wait(0.05)
    assert app.late_answers == before + 1  # answered into a closed connection: dropped
    with _connect(port) as sock:
        sock.sendall(_post(b"/direct", b"next"))
        _, _, body = _read_response(sock, bytearray())
    assert body == b"direct:next"


def test_direct_answers_keep_a_busy_connection_and_an_idle_one_closes(served: Any) -> None:
    """The idle timer is pushed back by each direct answer (not made again per request)."""
    _, port, _, _ = served
    with _connect(port) as sock:
        buffer = bytearray()
        for _ in range(8):  # 8 x 0.2 s: longer than keep_alive_s (1 s), never idle that long
            sock.sendall(_post(b"/direct", b"x"))
            _, _, body = _read_response(sock, buffer)
            assert body == b"direct:x"
            threading.Event().wait(0.2)
        answered = time.monotonic()
        assert sock.recv(100) == b""  # then idle: closed by the server
        assert 0.5 < time.monotonic() - answered < 3


def test_keep_alive_then_idle_close(served: Any) -> None:
    _, port, _, _ = served
    with _connect(port) as sock:
        buffer = bytearray()
        for _ in range(2):
            sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = _read_response(sock, buffer)
            assert status.startswith(b"HTTP/1.1 200") and body == b"hello"
        assert sock.recv(100) == b""  # closed by the idle timeout (1 s here), not by the client


def test_chunked_response(served: Any) -> None:
    _, port, _, _ = served
    with httpx.Client() as client:
        response = client.get(f"http://127.0.0.1:{port}/stream")
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.content == b"abbccc"


def test_client_departure_is_noticed(served: Any) -> None:
    app, port, _, _ = served
    app.departed.clear()
    with _connect(port) as sock:
        sock.sendall(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"waiting" in sock.recv(1000) or b"waiting" in sock.recv(1000)
    assert app.departed.wait(5)


def test_unknown_path_is_404_problem(served: Any) -> None:
    _, port, _, _ = served
    response = httpx.get(f"http://127.0.0.1:{port}/nowhere")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_TYPE


def test_tls_with_a_self_signed_certificate(served: Any) -> None:
    _, _, tls_port, cert = served
    context = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(verify=context) as client:
        hello = client.get(f"https://127.0.0.1:{tls_port}/hello")
        echo = client.post(f"https://127.0.0.1:{tls_port}/echo", content=b"over tls")
    assert (hello.status_code, hello.content) == (200, b"hello")
    assert echo.content == b"over tls"


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_websocket_upgrade(served: Any, secure: bool) -> None:
    _, port, tls_port, cert = served
    if secure:
        url = f"wss://127.0.0.1:{tls_port}/ws"
        context: ssl.SSLContext | None = ssl.create_default_context(cafile=str(cert))
    else:
        url, context = f"ws://127.0.0.1:{port}/ws", None
    with ws_connect(url, subprotocols=["mqtt"], ssl=context) as websocket:  # type: ignore[list-item]
        assert websocket.subprotocol == "mqtt"
        websocket.send(b"ping")
        assert websocket.recv(timeout=5) == b"echo:ping"


async def test_drain_closes_idle_connections_and_lets_open_answers_finish() -> None:
    """SIGTERM's drain: no new connections, idle keep-alive ones closed at once, a response in
    progress finishes (with ``connection: close``) before the server is done."""
    release = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            await release.wait()
        await send_response(send, Response(200, [], b"done"), [])

    server = LeanServer(app)
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    await server.start([sock], 16)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    idle_writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await idle_reader.readuntil(b"done")
    busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
    busy_writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await until_true(
        lambda: (
            len(server.state.connections) == 2
            and any(c.exchange is not None for c in server.state.connections)
        )
    )
    drain = asyncio.create_task(server.drain(10))
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # idle: closed at once
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)  # no longer accepting
    assert not drain.done()
    release.set()
    answer = await asyncio.wait_for(busy_reader.read(), 5)  # the answer, then the close
    assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer
    assert answer.endswith(b"done")
    await asyncio.wait_for(drain, 5)
    for writer in (idle_writer, busy_writer):
        writer.close()


async def until_true(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


def test_http2_option_serves_the_same_handlers_through_hypercorn(served: Any) -> None:
    app, _, _, _ = served
    with httpx.Client(http1=False, http2=True) as client:
        echo = client.post(f"http://127.0.0.1:{app.h2_port}/echo", content=b"over h2c")
        too_big = client.post(f"http://127.0.0.1:{app.h2_port}/echo", content=b"x" * (LIMIT + 1))
    assert echo.http_version == "HTTP/2" and echo.content == b"over h2c"
    assert too_big.status_code == 413 and "max_body_bytes" in too_big.json()["detail"]
