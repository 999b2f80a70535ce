"""Direct HTTP for the hot requests, ranged GETs, small PUTs and HEADs, beside aiobotocore.

Owns: what those requests are (their URLs, headers and the one answer each expects), addressing (presigned
GET URLs, the path of a key for PUTs), signing PUTs (sigv4.py) with the client's credentials, how many run
at once, and stepping aside after repeated connection failures. The HTTP/1.1 connections themselves (the
pool, the protocol that reads a body into one buffer, timeouts) are http1.py's. Used only by the S3 store
(objects.py, multipart.py, on its asyncio thread), which owns retries and error translation.

Why it exists. Through aiobotocore a GET body arrives as 256 KiB ``bytes`` per socket read, goes through
aiohttp's parser and stream and is joined at the end: two or three copies and Python work per chunk,
1.1-1.4 s of CPU per GiB on the benchmark machine, more than the whole FUSE side of a read. Here an
asyncio ``BufferedProtocol`` (http1.py) hands the socket a view of one preallocated buffer: one copy,
about 0.6 s per GiB. A small PUT through aiobotocore (or boto3) costs 2-3 ms of CPU in parameter
validation, endpoint rules, signing and response parsing; here it is signed (SigV4, ``sign_v4``) and
sent as is, a fraction of that (bench/RESULTS.md, "The read path" and "Small files"). Opening a small
file reads it with one GET here too (``get_first``: the answer's headers say what a HEAD would). A
listing with true attributes HEADs every file version it does not know: a HEAD here too (``head``).

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
import logging
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from s3files.store.http1 import ConnectionPool, ExchangeFailed, Expect, Response, host_header
from s3files.store.sigv4 import UNSIGNED_PAYLOAD, canonical_query, sign_v4, signing_key

__all__ = ["UNSIGNED_PAYLOAD", "DirectHttp", "canonical_query", "sign_v4", "signing_key"]

log = logging.getLogger(__name__)

FAILURES_BEFORE_PAUSE = 3
PAUSE_SECONDS = 60.0
PROBE_KEYS = ("s3files-direct-probe", "s3files direct/ü~+%&=?probe")

Presign = Callable[[str], Awaitable[str]]
# botocore frozen credentials of the moment, asked for at every signed request (session.py: refreshed
# before temporary credentials expire), or None when none can be got (the request falls back).
Credentials = Callable[[], Awaitable[Any]]


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
        on_served: Callable[[], None] = lambda: None,
    ) -> None:
        self._presign = presign
        self._credentials = credentials
        self._region = region
        url = urllib.parse.urlsplit(endpoint_url)
        self._scheme = url.scheme
        self._pool = ConnectionPool(
            url.scheme,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            on_request=on_request,
            ca_bundle=ca_bundle,
        )
        self._slots = asyncio.Semaphore(max_connections)
        self._on_served = on_served  # each request answered here (its credentials worked)
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
        expect = Expect(206, last - start + 1, f"bytes {start}-{last}")

        async def request() -> Response:
            url = await self._url(key)
            return await self._pool.exchange("GET", url, f"{url.path}?{url.query}", lines, expect, into=into)

        response = await self._attempt("get", key, request)
        if response is None:
            self._urls.pop(key, None)  # (signed with credentials S3 may refuse now: presign anew next time)
            return None
        return response.body

    async def get_first(self, key: str, nbytes: int) -> tuple[dict[str, str], bytearray] | None:
        """The answer's headers and the first ``nbytes`` bytes of ``key`` (all of a smaller object), or
        None: the caller must ask through aiobotocore (an empty object's 416 among other answers)."""
        if not self._usable():
            return None
        expect = Expect(206, max_length=nbytes, first=True)

        async def request() -> Response:
            url = await self._url(key)
            lines = [f"Range: bytes=0-{nbytes - 1}"]
            return await self._pool.exchange("GET", url, f"{url.path}?{url.query}", lines, expect)

        response = await self._attempt("get", key, request)
        if response is None:
            self._urls.pop(key, None)
            return None
        return response.headers, response.body

    async def head(self, key: str) -> dict[str, str] | None:
        """The headers of the answer to a HEAD of ``key`` (``:status`` says 200 or 404), or None: the caller
        must ask through aiobotocore. Signed in its headers as a PUT is (a listing's HEADs, one per file
        version not known, cost a few ms of CPU each through aiobotocore)."""
        if not self._usable():
            return None

        async def request() -> Response:
            base = await self._put_url()
            url = base._replace(path=base.path + _quote_key(key))
            signed = await self._sign("HEAD", url, {})
            return await self._pool.exchange("HEAD", url, url.path, signed, Expect(200, head=True))

        response = await self._attempt("head", key, request)
        return None if response is None else response.headers

    async def put(self, key: str, body: bytes, headers: Mapping[str, str]) -> dict[str, str] | None:
        """PUT ``body`` at ``key`` with ``headers`` (Content-MD5, x-amz-meta-*, conditions): the answer's
        headers on a 200, or None: the caller must ask through aiobotocore."""
        if not self._usable() or not all(value.isascii() for value in headers.values()):
            return None

        async def request() -> Response:
            base = await self._put_url()
            url = base._replace(path=base.path + _quote_key(key))
            signed = await self._sign("PUT", url, {**headers, "Content-Length": str(len(body))})
            return await self._pool.exchange("PUT", url, url.path, signed, Expect(200), body=body)

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
        timeout = max(self._pool.read_timeout, length / (1024 * 1024))

        async def request() -> Response:
            base = await self._put_url()
            url = base._replace(path=base.path + _quote_key(key))
            signed = await self._sign("PUT", url, {"Content-Length": str(length)}, query, payload=sha256)
            target = f"{url.path}?{query}"
            return await self._pool.exchange(
                "PUT",
                url,
                target,
                signed,
                Expect(200),
                op="upload_part",
                body_file=(fd, offset, length, timeout),
            )

        response = await self._attempt("upload_part", key, request)
        return None if response is None else response.headers

    async def aclose(self) -> None:
        await self._pool.aclose()

    # -- internals ----------------------------------------------------------------------------------

    def sends_files(self) -> bool:
        """Would ``put_part`` try now (plain HTTP, not paused)? Read from the trio side too: a stale answer
        costs only a fallback or a hash."""
        return self._pool.ssl is None and self._usable()

    def _usable(self) -> bool:
        return self.enabled and time.monotonic() >= self._paused_until

    async def _attempt(
        self, op: str, key: str, request: Callable[[], Awaitable[Response]]
    ) -> Response | None:
        """Run ``request``; None (and a pause after repeated connection failures) if it cannot answer."""
        try:
            async with self._slots:
                response = await request()
        except ExchangeFailed as exc:
            log.debug("direct %s of %s not used: %s", op, key, exc)
            return None
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._failures += 1
            if self._failures >= FAILURES_BEFORE_PAUSE:
                self._failures = 0
                self._paused_until = time.monotonic() + PAUSE_SECONDS
                log.info(
                    "direct requests paused for %.0f s after connection failures (last: %r)",
                    PAUSE_SECONDS,
                    exc,
                )
            return None
        self._failures = 0
        self.served += 1
        self._on_served()
        return response

    async def _url(self, key: str) -> urllib.parse.SplitResult:
        """A presigned GET URL for ``key``, reused for a minute (valid for five) unless a GET with it failed.
        Presigned with the credentials of the moment: temporary ones are refreshed 10-15 minutes before
        they expire, so a URL never outlives the credentials it was signed with."""
        now = time.monotonic()
        cached = self._urls.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        url = urllib.parse.urlsplit(await self._presign(key))
        if url.scheme != self._scheme or not url.hostname:
            raise ExchangeFailed(f"presigned URL has scheme {url.scheme!r}")
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
            if first.path == prefix + _quote_key(PROBE_KEYS[0]) and second.path == prefix + _quote_key(
                PROBE_KEYS[1]
            ):
                self._put_base = first._replace(path=prefix, query="", fragment="")
            else:
                log.info(
                    "direct PUTs off: presigned paths %r, %r do not follow the expected quoting",
                    first.path,
                    second.path,
                )
        if self._put_base is None:
            raise ExchangeFailed("direct PUTs are off for this endpoint")
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
            raise ExchangeFailed("no credentials")
        now = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        scope = (credentials.secret_key, now[:8])
        if self._signing[0] != scope:
            self._signing = (scope, signing_key(credentials.secret_key, now[:8], self._region))
        key = self._signing[1]
        signed = sign_v4(
            method, host_header(url), url.path, headers, credentials, self._region, now, key, query, payload
        )
        return [f"{name}: {value}" for name, value in signed.items()]


def _quote_key(key: str) -> str:
    """A key as botocore puts it in a URL path (RestXML greedy label: UTF-8, percent-encoded, '/' and '~'
    kept); checked against botocore's own presigned URLs before any PUT uses it."""
    return urllib.parse.quote(key.encode("utf-8"), safe="/~")


def _proxied(url: urllib.parse.SplitResult) -> bool:
    proxies = urllib.request.getproxies()
    return bool(proxies.get(url.scheme)) and not urllib.request.proxy_bypass(url.hostname or "")
