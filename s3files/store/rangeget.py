"""Ranged GETs whose bodies the kernel writes straight into the part's own buffer: the hot path of reads.

Owns: a small keep-alive connection pool to the endpoint and the HTTP/1.1 exchange of one ranged GET.
Used only by ``S3Store`` (on its asyncio thread), which owns signing, retries and error translation.

Why it exists. Through aiobotocore a GET body arrives as 256 KiB ``bytes`` per socket read, goes through
aiohttp's parser and stream and is joined at the end: two or three copies and Python work per chunk,
1.1-1.4 s of CPU per GiB on the benchmark machine, more than the whole FUSE side of a read. Here an
asyncio ``BufferedProtocol`` hands the socket a view of one preallocated buffer (``recv_into``): one copy,
about 0.6 s per GiB (bench/RESULTS.md, "The read path").

What it does not do. It signs nothing itself: the URL is presigned by aiobotocore (per key, reused for
a minute), and ``Range`` / ``If-Match`` travel as unsigned standard headers, which S3 accepts. It neither
retries nor interprets errors: anything but a clean ``206`` of exactly the bytes asked for returns None
and the caller repeats the request through aiobotocore, which retries, translates errors and knows every
special case (412, 416, a 200 that ignored Range, chunked or encoded bodies). Behind an HTTP proxy it is
off (aiobotocore honours proxies; this does not). After repeated connection failures it steps aside for a
while, so a broken fast path never costs more than one failed attempt per minute or so.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
FAILURES_BEFORE_PAUSE = 3
PAUSE_SECONDS = 60.0

Presign = Callable[[str], Awaitable[str]]


class _Failed(Exception):
    """The fast path cannot answer this request (the caller falls back); never leaves this module."""


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
        raise _Failed(f"bad status line {lines[0]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    return _Head(status, headers, keep_alive)


class _Connection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection; ``exchange`` runs one request on it at a time.

    The response head is read into a small scratch buffer; once it is parsed (and is a 206 of the
    expected length) the socket reads into the body buffer itself until it is full."""

    def __init__(self, on_request: Callable[[], None]) -> None:
        self.on_request = on_request
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.keep_alive = False
        self.last_progress = 0.0
        self._scratch = bytearray(MAX_HEADER_BYTES)
        self._head = bytearray()
        self._body: bytearray | None = None
        self._view: memoryview | None = None
        self._pos = 0
        self._want = 0
        self._expect = ""
        self._into: bytearray | None = None
        self._done: asyncio.Future[bytearray] | None = None

    # -- asyncio callbacks ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview | bytearray:
        if self._view is not None:
            return self._view[self._pos :]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        self.last_progress = time.monotonic()
        if self._done is None or self._done.done():
            self._fail(_Failed("bytes outside a response"))
            return
        if self._view is not None:
            self._pos += nbytes
        else:
            self._head += self._scratch[:nbytes]
            self._start_body()
        if self._view is not None and self._pos == self._want:
            self._view = None
            assert self._body is not None
            self._done.set_result(self._body)
            self._body = None

    def eof_received(self) -> bool:
        self._fail(_Failed("server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(_Failed(f"connection lost: {exc!r}"))

    # -- requests ---------------------------------------------------------------------------------

    def exchange(
        self, request: bytes, want: int, content_range: str, into: bytearray | None = None
    ) -> asyncio.Future[bytearray]:
        """Send ``request``; the future gets the body of a 206 carrying exactly ``content_range`` (in
        ``into`` when given and of the right length)."""
        assert self.transport is not None and (self._done is None or self._done.done())
        self._head.clear()
        self._body = None
        self._pos = 0
        self._want = want
        self._expect = content_range
        self._into = into if into is not None and len(into) == want else None
        self._done = asyncio.get_running_loop().create_future()
        self.last_progress = time.monotonic()
        self.transport.write(request)
        self.on_request()
        return self._done

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
                self._fail(_Failed("response head too large"))
            return
        try:
            head = _parse_head(bytes(self._head[:end]))
        except _Failed as exc:
            self._fail(exc)
            return
        h = head.headers
        if head.status != 206:
            self._fail(_Failed(f"HTTP {head.status}"))
            return
        if (
            h.get("content-length") != str(self._want)
            or h.get("content-range", "").split("/", 1)[0] != self._expect
            or "transfer-encoding" in h
            or h.get("content-encoding", "identity") not in ("", "identity")
        ):
            self._fail(_Failed("a 206 that is not exactly the range asked for"))
            return
        self.keep_alive = head.keep_alive
        rest = self._head[end + 4 :]
        if len(rest) > self._want:
            self._fail(_Failed("more bytes than the range"))
            return
        # A fresh bytearray is zeroed and page-faulted in: about a fifth of the daemon's CPU per byte read.
        self._body = self._into if self._into is not None else bytearray(self._want)
        self._into = None
        self._body[: len(rest)] = rest
        self._pos = len(rest)
        self._view = memoryview(self._body)

    def _fail(self, exc: Exception) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)
        self.close()


class RangeGetter:
    """Direct ranged GETs to one endpoint. Lives on the store's asyncio thread; not thread-safe."""

    def __init__(
        self,
        presign: Presign,
        endpoint_url: str,
        *,
        max_connections: int,
        connect_timeout: float,
        read_timeout: float,
        on_request: Callable[[], None],
        ca_bundle: str | None = None,
    ) -> None:
        self._presign = presign
        self._on_request = on_request
        url = urllib.parse.urlsplit(endpoint_url)
        self._scheme = url.scheme
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._slots = asyncio.Semaphore(max_connections)
        self._ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._ssl = ssl.create_default_context(cafile=ca_bundle)
        self._urls: dict[str, tuple[float, urllib.parse.SplitResult]] = {}
        self._failures = 0
        self._paused_until = 0.0
        self.enabled = url.scheme in ("http", "https") and not _proxied(url)
        self.served = 0  # requests answered here (statistics and tests)

    async def get(
        self, key: str, start: int, last: int, if_match: str | None, into: bytearray | None = None
    ) -> bytearray | None:
        """Bytes ``start..last`` (inclusive) of ``key``, or None: the caller must ask through aiobotocore.

        ``into``: a buffer of exactly that length to receive them (returned), instead of a new one."""
        if not self.enabled or time.monotonic() < self._paused_until:
            return None
        try:
            url = await self._url(key)
            async with self._slots:
                body = await self._get(url, start, last, if_match, into)
        except _Failed as exc:
            log.debug("direct GET of %s %d-%d not used: %s", key, start, last, exc)
            return None
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._failures += 1
            if self._failures >= FAILURES_BEFORE_PAUSE:
                self._failures = 0
                self._paused_until = time.monotonic() + PAUSE_SECONDS
                log.info("direct GETs paused for %.0f s after connection failures (last: %r)", PAUSE_SECONDS, exc)
            return None
        self._failures = 0
        self.served += 1
        return body

    async def aclose(self) -> None:
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()

    async def _url(self, key: str) -> urllib.parse.SplitResult:
        """A presigned GET URL for ``key``, reused for a minute (valid for five)."""
        now = time.monotonic()
        cached = self._urls.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        url = urllib.parse.urlsplit(await self._presign(key))
        if url.scheme != self._scheme or not url.hostname:
            raise _Failed(f"presigned URL has scheme {url.scheme!r}")
        if len(self._urls) >= 4096:
            self._urls = {k: v for k, v in self._urls.items() if v[0] > now}
        self._urls[key] = (now + 60.0, url)
        return url

    async def _get(
        self, url: urllib.parse.SplitResult, start: int, last: int, if_match: str | None, into: bytearray | None
    ) -> bytearray:
        host = url.hostname
        assert host is not None
        port = url.port or (443 if url.scheme == "https" else 80)
        headers = [
            f"GET {url.path}?{url.query} HTTP/1.1",
            f"Host: {url.netloc}",
            f"Range: bytes={start}-{last}",
            "User-Agent: s3files",
        ]
        if if_match is not None:
            headers.append(f"If-Match: {if_match}")
        request = ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1")
        conn = await self._connection(host, port)
        try:
            done = conn.exchange(request, last - start + 1, f"bytes {start}-{last}", into)
            body = await self._wait(conn, done)
        except BaseException:
            conn.close()
            raise
        if conn.keep_alive and not conn.closed:
            self._idle.setdefault((host, port), []).append(conn)
        else:
            conn.close()
        return body

    async def _connection(self, host: str, port: int) -> _Connection:
        pool = self._idle.get((host, port), [])
        while pool:
            conn = pool.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                lambda: _Connection(self._on_request), host, port, ssl=self._ssl, server_hostname=host if self._ssl else None
            ),
            self._connect_timeout,
        )
        return conn

    async def _wait(self, conn: _Connection, done: asyncio.Future[bytearray]) -> bytearray:
        """The response, as long as bytes keep arriving at least every read_timeout seconds."""
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(done), self._read_timeout)
            except TimeoutError:
                if time.monotonic() - conn.last_progress >= self._read_timeout:
                    raise


def _proxied(url: urllib.parse.SplitResult) -> bool:
    proxies = urllib.request.getproxies()
    return bool(proxies.get(url.scheme)) and not urllib.request.proxy_bypass(url.hostname or "")
