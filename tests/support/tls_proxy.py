"""A TLS-terminating TCP proxy in front of the embedded broker, for TLS tests.

Tansu 0.6.0 cannot serve TLS itself (its ``--cert`` and ``--key`` flags refuse each other:
docs/tansu-behaviour.md), so a test puts this in front of it, as an operator puts a TLS
terminator (stunnel, an NLB with TLS listeners) in front of a broker: clients speak real TLS to
the proxy (Python's ``ssl``, OpenSSL), the proxy speaks plain Kafka to Tansu, and Tansu
advertises the proxy's address (``EmbeddedBroker(advertised=...)``) so every connection a client
makes after bootstrap comes back through TLS.

It runs its own event loop on a daemon thread, so it serves sync and async fixtures of any scope.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from pathlib import Path


class TlsProxy:
    """Listen with TLS on ``127.0.0.1:<port>``, forward each connection to ``target`` in clear.

    ``client_ca``: require a client certificate signed by this CA (mutual TLS).
    """

    def __init__(self, cert_file: Path, key_file: Path, client_ca: Path | None = None) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(cert_file), str(key_file))
        if client_ca is not None:
            self.context.load_verify_locations(cafile=str(client_ca))
            self.context.verify_mode = ssl.CERT_REQUIRED
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port = int(self._sock.getsockname()[1])
        self.target: tuple[str, int] | None = None  # set once the broker behind has started
        self.handshakes = 0  # TLS handshakes completed (a test can see TLS was used)
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="tls-proxy", daemon=True)
        self._started = threading.Event()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TlsProxy:
        self._thread.start()
        self._started.wait(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            self._server = await asyncio.start_server(
                self._handle, sock=self._sock, ssl=self.context
            )
            self._started.set()

        self._loop.run_until_complete(serve())
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        assert self.target is not None, "TlsProxy.target not set"
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ssl.SSLError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
