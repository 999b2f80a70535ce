"""The HTTP/1.1 connection protocol of the direct path (direct.py): one request at a time on a pooled
keep-alive connection, the body received straight into one buffer.

Owns: ``Connection``, an asyncio ``BufferedProtocol`` that hands the socket a view of one preallocated
buffer (``recv_into``: one copy per byte) and accepts only the one answer a request expects (``Expect``);
``ConnectionPool``, the idle connections to the endpoint, connecting (TLS when the endpoint is https) and
``exchange``: write one request (a body from bytes, or from a file by sendfile), count it, and wait for its
answer as long as bytes keep arriving. Anything but the expected answer, a broken connection or a stall
raise ``ExchangeFailed`` (or the OSError/TimeoutError/ssl.SSLError of the socket) and the connection is
closed.

Must not: sign, address or retry requests, interpret S3's answers beyond status, length and range, or
limit how many requests run at once (direct.py does all that). Runs on the store's asyncio thread only.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

MAX_HEADER_BYTES = 64 * 1024
MAX_SMALL_BODY = 64 * 1024  # the body of an answer to a PUT (normally empty)


class ExchangeFailed(Exception):
    """The direct path cannot answer this request (the caller falls back); never leaves the direct path."""


@dataclass(frozen=True)
class _Head:
    status: int
    headers: dict[str, str]
    keep_alive: bool


def _parse_head(raw: bytes) -> _Head:
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    try:
        status = int(rest.split(" ", 1)[0])
    except ValueError:
        raise ExchangeFailed(f"bad status line {lines[0]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    return _Head(status, headers, keep_alive)


@dataclass(frozen=True)
class Expect:
    """The one answer a request may get: ``status``, a body of exactly ``length`` bytes (None: any
    Content-Length up to ``max_length``) and, for a 206, a Content-Range starting ``content_range`` (or,
    with ``first``, the first Content-Length bytes of the object)."""

    status: int
    length: int | None = None
    content_range: str | None = None
    max_length: int = MAX_SMALL_BODY
    first: bool = False
    head: bool = False  # a HEAD: no body follows whatever Content-Length says, and a 404 is an answer too


@dataclass(frozen=True)
class Response:
    headers: dict[str, str]
    body: bytearray


def host_header(url: urllib.parse.SplitResult) -> str:
    """The Host header (as SigV4 signs it too): the port only when it is not the scheme's default."""
    host = url.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = 443 if url.scheme == "https" else 80
    return host if url.port in (None, default) else f"{host}:{url.port}"


class Connection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection; ``exchange`` runs one request on it at a time.

    The response head is read into a small scratch buffer; once it is parsed (and is the answer
    expected) the socket reads into the body buffer itself until it is full."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.keep_alive = False
        self.last_progress = 0.0
        self._scratch = bytearray(MAX_HEADER_BYTES)
        # Handed out as a memoryview, never as the bytearray: asyncio's TLS transport (3.11) fills a buffer
        # in several reads, each into ``buf[offset:]``, which of a bytearray is a copy: every byte after the
        # first TLS record of a response would be lost (and counted as received).
        self._scratch_view = memoryview(self._scratch)
        self._head = bytearray()
        self._body: bytearray | None = None
        self._view: memoryview | None = None
        self._pos = 0
        self._want = 0
        self._expect = Expect(0)
        self._headers: dict[str, str] = {}
        self._into: bytearray | None = None
        self._done: asyncio.Future[Response] | None = None

    # -- asyncio callbacks ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview | bytearray:
        if self._view is not None:
            return self._view[self._pos :]
        return self._scratch_view

    def buffer_updated(self, nbytes: int) -> None:
        self.last_progress = time.monotonic()
        if self._done is None or self._done.done():
            self._fail(ExchangeFailed("bytes outside a response"))
            return
        if self._view is not None:
            self._pos += nbytes
        else:
            self._head += self._scratch[:nbytes]
            self._start_body()
        if self._view is not None and self._pos == self._want:
            self._view = None
            assert self._body is not None
            self._done.set_result(Response(self._headers, self._body))
            self._body = None

    def eof_received(self) -> bool:
        self._fail(ExchangeFailed("server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ExchangeFailed(f"connection lost: {exc!r}"))

    # -- requests ---------------------------------------------------------------------------------

    def exchange(
        self, request: bytes, expect: Expect, body: bytes = b"", into: bytearray | None = None
    ) -> asyncio.Future[Response]:
        """Send ``request`` (and ``body``); the future gets the answer if it is ``expect``ed (the body in
        ``into`` when given and of the right length), else fails with ExchangeFailed."""
        assert self.transport is not None and (self._done is None or self._done.done())
        self._head.clear()
        self._body = None
        self._pos = 0
        self._expect = expect
        self._into = into
        self._done = asyncio.get_running_loop().create_future()
        self.last_progress = time.monotonic()
        self.transport.write(request)
        if body:
            self.transport.write(body)
        return self._done

    async def send_file(self, fd: int, offset: int, length: int, timeout: float) -> None:
        """Send ``length`` bytes of file ``fd`` from ``offset`` as the body of the request just written,
        straight from the page cache (sendfile: no copy through this process)."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        with open(fd, "rb", buffering=0, closefd=False) as file:
            try:
                sent = await asyncio.wait_for(
                    loop.sendfile(self.transport, file, offset, length, fallback=False), timeout
                )
            except RuntimeError as exc:  # sendfile not available here, or the connection closed under it
                raise ExchangeFailed(f"sendfile failed: {exc}") from None
        if sent != length:
            raise ExchangeFailed(f"the file ended {length - sent} bytes early")
        self.last_progress = time.monotonic()

    def answered(self) -> None:
        """Forget the future just answered. It holds the response body, which the reader recycles as a
        part buffer only once nothing else refers to it; an idle connection must not."""
        assert self._done is not None and self._done.done()
        self._done = None

    def close(self) -> None:
        """Abort the connection; a response still expected is cancelled (its caller has gone)."""
        self.closed = True
        self._view = None
        if self._done is not None and not self._done.done():
            self._done.cancel()
        if self.transport is not None:
            self.transport.abort()

    def _start_body(self) -> None:
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) >= MAX_HEADER_BYTES:
                self._fail(ExchangeFailed("response head too large"))
            return
        try:
            head = _parse_head(bytes(self._head[:end]))
        except ExchangeFailed as exc:
            self._fail(exc)
            return
        h, expect = head.headers, self._expect
        if expect.head:
            if head.status not in (expect.status, 404) or "transfer-encoding" in h or end + 4 != len(self._head):
                self._fail(ExchangeFailed(f"not the answer expected to a HEAD ({head.status})"))
                return
            self.keep_alive = head.keep_alive
            self._headers = {**h, ":status": str(head.status)}
            self._want = self._pos = 0
            self._body = bytearray()
            self._view = memoryview(self._body)  # complete: buffer_updated answers at once
            return
        if head.status != expect.status:
            self._fail(ExchangeFailed(f"HTTP {head.status}"))
            return
        length = h.get("content-length", "")
        if (
            not length.isdigit()
            or (expect.length is not None and int(length) != expect.length)
            or (expect.length is None and int(length) > expect.max_length)
            or (
                expect.content_range is not None
                and h.get("content-range", "").split("/", 1)[0] != expect.content_range
            )
            or (expect.first and h.get("content-range", "").split("/", 1)[0] != f"bytes 0-{int(length) - 1}")
            or "transfer-encoding" in h
            or h.get("content-encoding", "identity") not in ("", "identity")
        ):
            self._fail(ExchangeFailed(f"not the answer expected ({head.status}, {length or 'no'} bytes)"))
            return
        self.keep_alive = head.keep_alive
        self._headers = h
        self._want = int(length)
        rest = self._head[end + 4 :]
        if len(rest) > self._want:
            self._fail(ExchangeFailed("more bytes than the body"))
            return
        # A fresh bytearray is zeroed and page-faulted in: about a fifth of the daemon's CPU per byte read.
        into, self._into = self._into, None
        self._body = into if into is not None and len(into) == self._want else bytearray(self._want)
        self._body[: len(rest)] = rest
        self._pos = len(rest)
        self._view = memoryview(self._body)

    def _fail(self, exc: Exception) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)
        self.close()


class ConnectionPool:
    """Keep-alive connections to the endpoint of ``scheme`` (``http`` or ``https``, verified against
    ``ca_bundle`` or the system's CAs), and one request at a time on each."""

    def __init__(
        self,
        scheme: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        on_request: Callable[[str], None],
        ca_bundle: str | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._on_request = on_request
        self._idle: dict[tuple[str, int], list[Connection]] = {}
        self.ssl: ssl.SSLContext | None = None
        if scheme == "https":
            self.ssl = ssl.create_default_context(cafile=ca_bundle)

    async def exchange(
        self,
        method: str,
        url: urllib.parse.SplitResult,
        target: str,
        header_lines: list[str],
        expect: Expect,
        body: bytes = b"",
        into: bytearray | None = None,
        op: str = "",
        body_file: tuple[int, int, int, float] | None = None,
    ) -> Response:
        """One request on a pooled connection. ``header_lines`` carry everything but Host (for a PUT, the
        signed headers, Content-Length among them). ``op``: the request's name in the counters (the
        method's by default); ``body_file``: (fd, offset, length, timeout) of a body sent from a file."""
        host = url.hostname
        assert host is not None
        port = url.port or (443 if url.scheme == "https" else 80)
        lines = [
            f"{method} {target} HTTP/1.1",
            f"Host: {host_header(url)}",
            "User-Agent: s3files",
            *header_lines,
        ]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        conn = await self._connection(host, port)
        try:
            done = conn.exchange(request, expect, body, into)
            self._on_request(op or method.lower())
            if body_file is not None:
                try:
                    await conn.send_file(*body_file)
                except BaseException:
                    if done.done() and not done.cancelled():
                        done.exception()  # the server answered (refused) before the body was sent: seen
                    raise
            response = await self._wait(conn, done)
            conn.answered()
        except BaseException:
            conn.close()
            raise
        if conn.keep_alive and not conn.closed:
            self._idle.setdefault((host, port), []).append(conn)
        else:
            conn.close()
        return response

    async def aclose(self) -> None:
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()

    async def _connection(self, host: str, port: int) -> Connection:
        pool = self._idle.get((host, port), [])
        while pool:
            conn = pool.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                Connection, host, port, ssl=self.ssl, server_hostname=host if self.ssl else None
            ),
            self.connect_timeout,
        )
        return conn

    async def _wait(self, conn: Connection, done: asyncio.Future[Response]) -> Response:
        """The response, as long as bytes keep arriving at least every read_timeout seconds."""
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(done), self.read_timeout)
            except TimeoutError:
                if time.monotonic() - conn.last_progress >= self.read_timeout:
                    raise
