"""Direct HTTP for the hot requests, ranged GETs and small PUTs, beside aiobotocore.

Owns: a small keep-alive connection pool to the endpoint and the HTTP/1.1 exchanges of those two requests.
Used only by ``S3Store`` (on its asyncio thread), which owns retries and error translation.

Why it exists. Through aiobotocore a GET body arrives as 256 KiB ``bytes`` per socket read, goes through
aiohttp's parser and stream and is joined at the end: two or three copies and Python work per chunk,
1.1-1.4 s of CPU per GiB on the benchmark machine, more than the whole FUSE side of a read. Here an
asyncio ``BufferedProtocol`` hands the socket a view of one preallocated buffer (``recv_into``): one copy,
about 0.6 s per GiB. A small PUT through aiobotocore (or boto3) costs 2-3 ms of CPU in parameter
validation, endpoint rules, signing and response parsing; here it is signed (SigV4, ``sign_v4``) and
sent as is, a fraction of that (bench/RESULTS.md, "The read path" and "Small files"). Opening a small
file reads it with one GET here too (``get_first``: the answer's headers say what a HEAD would).

How requests are addressed and signed. A GET goes to a URL presigned by aiobotocore (per key, reused for a
minute); ``Range`` and ``If-Match`` travel as unsigned standard headers, which S3 accepts. A PUT goes to the
same URL without the query, signed in its headers with the client's credentials (``sign_v4``: SigV4 as
botocore's S3 signer makes it, checked against it in the tests, at a sixth of its cost); the key's path
is made the way botocore makes it, checked once against a presigned URL of an awkward key.

What it does not do: retry or interpret errors. Anything but the one expected answer (a 206 of exactly
the bytes asked for, or of the object's first bytes for ``get_first``; a 200 to a PUT) returns None and
the caller repeats the request through aiobotocore, which retries, translates errors and knows every
special case (412, 416, a 200 that ignored Range, chunked or encoded bodies). Behind an HTTP proxy it is
off (aiobotocore honours proxies; this does not). After repeated connection failures it steps aside for a
while, so a broken direct path never costs more than one failed attempt per minute or so.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import logging
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
MAX_SMALL_BODY = 64 * 1024  # the body of an answer to a PUT (normally empty)
FAILURES_BEFORE_PAUSE = 3
PAUSE_SECONDS = 60.0
PROBE_KEYS = ("s3files-direct-probe", "s3files direct/ü~+%&=?probe")
# Headers are signed as they are sent. A small PUT's payload is not hashed (Content-MD5 protects it), as
# the aiobotocore client is configured (payload_signing_enabled False); a part sent from a file is signed
# with its SHA-256 instead (see put_part).
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
UNSIGNED_HEADERS = frozenset({"connection", "expect", "keep-alive", "te", "transfer-encoding", "user-agent"})

Presign = Callable[[str], Awaitable[str]]
Credentials = Callable[[], Awaitable[Any]]  # botocore frozen credentials


class _Failed(Exception):
    """The direct path cannot answer this request (the caller falls back); never leaves this module."""


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


@dataclass(frozen=True)
class _Expect:
    """The one answer a request may get: ``status``, a body of exactly ``length`` bytes (None: any
    Content-Length up to ``max_length``) and, for a 206, a Content-Range starting ``content_range`` (or,
    with ``first``, the first Content-Length bytes of the object)."""

    status: int
    length: int | None = None
    content_range: str | None = None
    max_length: int = MAX_SMALL_BODY
    first: bool = False


@dataclass(frozen=True)
class _Response:
    headers: dict[str, str]
    body: bytearray


class _Connection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection; ``exchange`` runs one request on it at a time.

    The response head is read into a small scratch buffer; once it is parsed (and is the answer
    expected) the socket reads into the body buffer itself until it is full."""

    def __init__(self) -> None:
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
        self._expect = _Expect(0)
        self._headers: dict[str, str] = {}
        self._into: bytearray | None = None
        self._done: asyncio.Future[_Response] | None = None

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
            self._done.set_result(_Response(self._headers, self._body))
            self._body = None

    def eof_received(self) -> bool:
        self._fail(_Failed("server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(_Failed(f"connection lost: {exc!r}"))

    # -- requests ---------------------------------------------------------------------------------

    def exchange(
        self, request: bytes, expect: _Expect, body: bytes = b"", into: bytearray | None = None
    ) -> asyncio.Future[_Response]:
        """Send ``request`` (and ``body``); the future gets the answer if it is ``expect``ed (the body in
        ``into`` when given and of the right length), else fails with _Failed."""
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
                sent = await asyncio.wait_for(loop.sendfile(self.transport, file, offset, length, fallback=False), timeout)
            except RuntimeError as exc:  # sendfile not available here, or the connection closed under it
                raise _Failed(f"sendfile failed: {exc}") from None
        if sent != length:
            raise _Failed(f"the file ended {length - sent} bytes early")
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
                self._fail(_Failed("response head too large"))
            return
        try:
            head = _parse_head(bytes(self._head[:end]))
        except _Failed as exc:
            self._fail(exc)
            return
        h, expect = head.headers, self._expect
        if head.status != expect.status:
            self._fail(_Failed(f"HTTP {head.status}"))
            return
        length = h.get("content-length", "")
        if (
            not length.isdigit()
            or (expect.length is not None and int(length) != expect.length)
            or (expect.length is None and int(length) > expect.max_length)
            or (expect.content_range is not None and h.get("content-range", "").split("/", 1)[0] != expect.content_range)
            or (expect.first and h.get("content-range", "").split("/", 1)[0] != f"bytes 0-{int(length) - 1}")
            or "transfer-encoding" in h
            or h.get("content-encoding", "identity") not in ("", "identity")
        ):
            self._fail(_Failed(f"not the answer expected ({head.status}, {length or 'no'} bytes)"))
            return
        self.keep_alive = head.keep_alive
        self._headers = h
        self._want = int(length)
        rest = self._head[end + 4 :]
        if len(rest) > self._want:
            self._fail(_Failed("more bytes than the body"))
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


class DirectHttp:
    """Direct ranged GETs and small PUTs to one endpoint. Lives on the store's asyncio thread."""

    def __init__(
        self,
        presign: Presign,
        credentials: Credentials,
        endpoint_url: str,
        region: str,
        *,
        max_connections: int,
        connect_timeout: float,
        read_timeout: float,
        on_request: Callable[[str], None],
        ca_bundle: str | None = None,
    ) -> None:
        self._presign = presign
        self._credentials = credentials
        self._region = region
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
        self._put_base: urllib.parse.SplitResult | None = None  # the URL of key "" for PUTs, once checked
        self._put_checked = False
        self._signing: tuple[tuple[str, str], bytes] = (("", ""), b"")  # (secret, day) -> its signing key
        self._failures = 0
        self._paused_until = 0.0
        self.enabled = url.scheme in ("http", "https") and not _proxied(url)
        self.served = 0  # requests answered here (statistics and tests)

    # -- the requests ------------------------------------------------------------------------------

    async def get(
        self, key: str, start: int, last: int, if_match: str | None, into: bytearray | None = None
    ) -> bytearray | None:
        """Bytes ``start..last`` (inclusive) of ``key``, or None: the caller must ask through aiobotocore.

        ``into``: a buffer of exactly that length to receive them (returned), instead of a new one."""
        if not self._usable():
            return None
        lines = [f"Range: bytes={start}-{last}"] + ([f"If-Match: {if_match}"] if if_match is not None else [])
        expect = _Expect(206, last - start + 1, f"bytes {start}-{last}")

        async def request() -> _Response:
            url = await self._url(key)
            return await self._exchange("GET", url, f"{url.path}?{url.query}", lines, expect, into=into)

        response = await self._attempt("get", key, request)
        return None if response is None else response.body

    async def get_first(self, key: str, nbytes: int) -> tuple[dict[str, str], bytearray] | None:
        """The answer's headers and the first ``nbytes`` bytes of ``key`` (all of a smaller object), or
        None: the caller must ask through aiobotocore (an empty object's 416 among other answers)."""
        if not self._usable():
            return None
        expect = _Expect(206, max_length=nbytes, first=True)

        async def request() -> _Response:
            url = await self._url(key)
            lines = [f"Range: bytes=0-{nbytes - 1}"]
            return await self._exchange("GET", url, f"{url.path}?{url.query}", lines, expect)

        response = await self._attempt("get", key, request)
        return None if response is None else (response.headers, response.body)

    async def put(self, key: str, body: bytes, headers: Mapping[str, str]) -> dict[str, str] | None:
        """PUT ``body`` at ``key`` with ``headers`` (Content-MD5, x-amz-meta-*, conditions): the answer's
        headers on a 200, or None: the caller must ask through aiobotocore."""
        if not self._usable() or not all(value.isascii() for value in headers.values()):
            return None

        async def request() -> _Response:
            base = await self._put_url()
            url = base._replace(path=base.path + _quote_key(key))
            signed = await self._sign("PUT", url, {**headers, "Content-Length": str(len(body))})
            return await self._exchange("PUT", url, url.path, signed, _Expect(200), body=body)

        response = await self._attempt("put", key, request)
        return None if response is None else response.headers

    async def put_part(
        self, key: str, upload_id: str, number: int, source: tuple[int, int, int], sha256: str
    ) -> dict[str, str] | None:
        """UploadPart of ``source`` = (file descriptor, offset, length), sent with sendfile, so the part's
        bytes never pass through this process (plain HTTP only): the answer's headers on a 200, or None:
        the caller must send the part through aiobotocore. ``sha256`` (hex, of the part's bytes) is signed
        as the payload's hash, which every SigV4 server checks against what it got (boto3 does the same
        over plain HTTP): with SHA-NI it costs half of what Content-MD5 does (1.0 vs 0.5 GB/s here)."""
        if not self.sends_files():
            return None
        fd, offset, length = source
        query = canonical_query({"partNumber": str(number), "uploadId": upload_id})
        # As long as a slow link needs at 1 MiB/s, and never less than a read: bounded, yet fair to big parts.
        timeout = max(self._read_timeout, length / (1024 * 1024))

        async def request() -> _Response:
            base = await self._put_url()
            url = base._replace(path=base.path + _quote_key(key))
            signed = await self._sign("PUT", url, {"Content-Length": str(length)}, query, payload=sha256)
            target = f"{url.path}?{query}"
            return await self._exchange(
                "PUT", url, target, signed, _Expect(200), op="upload_part", body_file=(fd, offset, length, timeout)
            )

        response = await self._attempt("upload_part", key, request)
        return None if response is None else response.headers

    async def aclose(self) -> None:
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()

    # -- internals ----------------------------------------------------------------------------------

    def sends_files(self) -> bool:
        """Would ``put_part`` try now (plain HTTP, not paused)? Read from the trio side too: a stale answer
        costs only a fallback or a hash."""
        return self._ssl is None and self._usable()

    def _usable(self) -> bool:
        return self.enabled and time.monotonic() >= self._paused_until

    async def _attempt(self, op: str, key: str, request: Callable[[], Awaitable[_Response]]) -> _Response | None:
        """Run ``request``; None (and a pause after repeated connection failures) if it cannot answer."""
        try:
            async with self._slots:
                response = await request()
        except _Failed as exc:
            log.debug("direct %s of %s not used: %s", op, key, exc)
            return None
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._failures += 1
            if self._failures >= FAILURES_BEFORE_PAUSE:
                self._failures = 0
                self._paused_until = time.monotonic() + PAUSE_SECONDS
                log.info("direct requests paused for %.0f s after connection failures (last: %r)", PAUSE_SECONDS, exc)
            return None
        self._failures = 0
        self.served += 1
        return response

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

    async def _put_url(self) -> urllib.parse.SplitResult:
        """The URL of the bucket's key space (a key's path is appended), derived once from presigned URLs of
        two probe keys; if our way of quoting a key does not give botocore's path, PUTs stay with it."""
        if not self._put_checked:
            self._put_checked = True
            first, second = [await self._url(key) for key in PROBE_KEYS]
            prefix = first.path[: -len(_quote_key(PROBE_KEYS[0]))]
            if first.path == prefix + _quote_key(PROBE_KEYS[0]) and second.path == prefix + _quote_key(PROBE_KEYS[1]):
                self._put_base = first._replace(path=prefix, query="", fragment="")
            else:
                log.info("direct PUTs off: presigned paths %r, %r do not follow the expected quoting", first.path, second.path)
        if self._put_base is None:
            raise _Failed("direct PUTs are off for this endpoint")
        return self._put_base

    async def _sign(
        self,
        method: str,
        url: urllib.parse.SplitResult,
        headers: Mapping[str, str],
        query: str = "",
        payload: str = UNSIGNED_PAYLOAD,
    ) -> list[str]:
        """Header lines of a SigV4-signed request (``sign_v4``, the client's credentials)."""
        credentials = await self._credentials()
        if credentials is None:
            raise _Failed("no credentials")
        now = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        scope = (credentials.secret_key, now[:8])
        if self._signing[0] != scope:
            self._signing = (scope, signing_key(credentials.secret_key, now[:8], self._region))
        key = self._signing[1]
        signed = sign_v4(method, _host(url), url.path, headers, credentials, self._region, now, key, query, payload)
        return [f"{name}: {value}" for name, value in signed.items()]

    async def _exchange(
        self,
        method: str,
        url: urllib.parse.SplitResult,
        target: str,
        header_lines: list[str],
        expect: _Expect,
        body: bytes = b"",
        into: bytearray | None = None,
        op: str = "",
        body_file: tuple[int, int, int, float] | None = None,
    ) -> _Response:
        """One request on a pooled connection. ``header_lines`` carry everything but Host (for a PUT, the
        signed headers, Content-Length among them). ``op``: the request's name in the counters (the
        method's by default); ``body_file``: (fd, offset, length, timeout) of a body sent from a file."""
        host = url.hostname
        assert host is not None
        port = url.port or (443 if url.scheme == "https" else 80)
        lines = [f"{method} {target} HTTP/1.1", f"Host: {_host(url)}", "User-Agent: s3files", *header_lines]
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

    async def _connection(self, host: str, port: int) -> _Connection:
        pool = self._idle.get((host, port), [])
        while pool:
            conn = pool.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(_Connection, host, port, ssl=self._ssl, server_hostname=host if self._ssl else None),
            self._connect_timeout,
        )
        return conn

    async def _wait(self, conn: _Connection, done: asyncio.Future[_Response]) -> _Response:
        """The response, as long as bytes keep arriving at least every read_timeout seconds."""
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(done), self._read_timeout)
            except TimeoutError:
                if time.monotonic() - conn.last_progress >= self._read_timeout:
                    raise


def sign_v4(
    method: str,
    host: str,
    path: str,
    headers: Mapping[str, str],
    credentials: Any,
    region: str,
    amz_date: str,
    key: bytes,
    query: str = "",
    payload: str = UNSIGNED_PAYLOAD,
) -> dict[str, str]:
    """``headers`` plus what AWS Signature Version 4 adds for S3 (headers signed; the payload signed by
    ``payload``, its hex SHA-256, or not, UNSIGNED-PAYLOAD):
    X-Amz-Date, X-Amz-Content-SHA256, X-Amz-Security-Token for temporary credentials, Authorization.
    ``path`` is sent as given (already quoted), ``query`` too (``canonical_query``: sorted and quoted as
    SigV4 wants, so the same string is sent and signed). ``credentials``: botocore's frozen credentials
    (access_key, secret_key, token); ``key``: ``signing_key`` of their secret for the day."""
    out = dict(headers)
    out["X-Amz-Date"] = amz_date
    out["X-Amz-Content-SHA256"] = payload
    if credentials.token:
        out["X-Amz-Security-Token"] = credentials.token
    canonical = {name.lower(): " ".join(str(value).split()) for name, value in out.items()}
    canonical["host"] = host
    names = sorted(name for name in canonical if name not in UNSIGNED_HEADERS)
    lines = [f"{name}:{canonical[name]}" for name in names]
    request = "\n".join([method, path, query, *lines, "", ";".join(names), payload])
    day = amz_date[:8]
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(request.encode()).hexdigest()}"
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256)
    out["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, SignedHeaders={';'.join(names)}, "
        f"Signature={signature.hexdigest()}"
    )
    return out


def canonical_query(params: Mapping[str, str]) -> str:
    """A query string as SigV4 signs it (names sorted, everything but A-Z a-z 0-9 - _ . ~ encoded)."""
    quote = urllib.parse.quote
    return "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in sorted(params.items()))


def signing_key(secret: str, day: str, region: str) -> bytes:
    """SigV4's key for one day, region and S3: four HMACs, so it is kept for the day (DirectHttp)."""
    key = f"AWS4{secret}".encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _quote_key(key: str) -> str:
    """A key as botocore puts it in a URL path (RestXML greedy label: UTF-8, percent-encoded, '/' and '~'
    kept); checked against botocore's own presigned URLs before any PUT uses it."""
    return urllib.parse.quote(key.encode("utf-8"), safe="/~")


def _host(url: urllib.parse.SplitResult) -> str:
    """The Host header as SigV4 signs it: the port only when it is not the scheme's default."""
    host = url.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = 443 if url.scheme == "https" else 80
    return host if url.port in (None, default) else f"{host}:{url.port}"


def _proxied(url: urllib.parse.SplitResult) -> bool:
    proxies = urllib.request.getproxies()
    return bool(proxies.get(url.scheme)) and not urllib.request.proxy_bypass(url.hostname or "")
