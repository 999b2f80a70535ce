"""EXPERIMENTAL, benchmark only (issue 20's measured spike): the AWS Common Runtime's S3 client (``awscrt``)
as the store's body path, in place of store/direct.py's hand-written HTTP/1.1, pool and SigV4.

Owns: the same requests as direct.py, with the same contract, so the store seam does not change: ranged
GETs into a caller's buffer, the first bytes of an object with its headers, HEADs, small PUTs and UploadPart
from a local file; each returns None for anything but the one expected answer and the caller asks again
through aiobotocore, which retries, translates errors (translate.py) and knows every special case. Nothing
in s3files uses it: bench/crt_ab.py puts it in an open store's place of the direct path (``install``). Not
in the package's dependencies: ``pip install awscrt`` to run the A/B.

The event-loop boundary. The CRT runs its own event-loop threads and calls back on them: ``on_headers``
and ``on_body`` touch only this request's own state (a dict, the caller's buffer, which nobody else uses
until the request has finished), and the request's end reaches the store's asyncio thread through
``asyncio.wrap_future`` (``call_soon_threadsafe`` underneath). If the asyncio task is cancelled (trio
cancelled the crossing), the CRT request is cancelled and awaited before the cancellation goes on: the
buffer it writes into is the reader's, reused as soon as we return.

Credentials. The CRT signs (SigV4 in native code) with a delegate provider that returns the botocore
credentials the session last handed over; they are asked for (``credentials``, which refreshes them when
they expire) on the asyncio thread before every request, so a CRT thread never waits for the loop.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from awscrt.auth import AwsCredentials, AwsCredentialsProvider, AwsSigningConfig
from awscrt.exceptions import AwsCrtError
from awscrt.http import HttpHeaders, HttpRequest
from awscrt.io import ClientTlsContext, TlsContextOptions
from awscrt.s3 import (
    S3Client,
    S3RequestTlsMode,
    S3RequestType,
    S3ResponseError,
    create_default_s3_signing_config,
)

from s3files.store.http1 import ExchangeFailed
from s3files.store.s3 import S3Store

log = logging.getLogger(__name__)

Presign = Callable[[str], Awaitable[str]]
Credentials = Callable[[], Awaitable[Any]]  # botocore frozen credentials
PROBE_KEY = "s3files-crt-probe"


async def install(store: S3Store) -> None:
    """Make ``store``'s direct path this one (the old one closed), on the store's asyncio thread."""

    async def swap() -> None:
        session = store._session
        old = session.direct
        session.direct = CrtHttp(  # type: ignore[assignment]
            session._presign_get,
            session._frozen_credentials,
            session.client.meta.endpoint_url,
            session.client.meta.region_name,
            max_connections=session.settings.max_connections,
            on_request=session.requests.add,
            ca_bundle=os.environ.get("AWS_CA_BUNDLE"),
        )
        if old is not None:
            await old.aclose()
        session._stack.push_async_callback(session.direct.aclose)

    await store._bridge.run(swap)


class _Answer:
    """What the CRT threads hand back for one request: status, headers, and the body's bytes (written by
    ``on_body`` into ``body`` at their offsets). Touched by one CRT thread at a time, read on the asyncio
    thread only after the request has finished."""

    __slots__ = ("base", "body", "got", "headers", "status")

    def __init__(self, body: bytearray | None, base: int) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = body
        self.base = base  # the object offset of body[0] (on_body gives object offsets)
        self.got = 0

    def on_headers(self, status_code: int, headers: list[tuple[str, str]], **kwargs: Any) -> None:
        self.status = status_code
        self.headers = {name.lower(): value for name, value in headers}
        self.headers[":status"] = str(status_code)

    def on_body(self, chunk: Any, offset: int, **kwargs: Any) -> None:
        if self.body is None:
            return
        at = offset - self.base
        n = len(chunk)
        if at < 0 or at + n > len(self.body):
            raise ValueError(f"body bytes {offset}+{n} outside the {len(self.body)} asked for")
        self.body[at : at + n] = chunk
        self.got += n


class CrtHttp:
    """The direct path's requests through awscrt's S3 client. Lives on the store's asyncio thread."""

    def __init__(
        self,
        presign: Presign,
        credentials: Credentials,
        endpoint_url: str,
        region: str,
        *,
        max_connections: int,
        part_size: int = 8 * 1024 * 1024,
        on_request: Callable[[str], None],
        ca_bundle: str | None = None,
    ) -> None:
        self._presign = presign
        self._credentials = credentials
        self._region = region
        self._on_request = on_request
        url = urllib.parse.urlsplit(endpoint_url)
        self._scheme = url.scheme
        self._current: AwsCredentials | None = None
        self._frozen: Any = None
        provider = AwsCredentialsProvider.new_delegate(self._delegate)
        self._signing: AwsSigningConfig = create_default_s3_signing_config(
            region=region, credential_provider=provider
        )
        tls = None
        if url.scheme == "https" and ca_bundle:
            options = TlsContextOptions()
            options.override_default_trust_store_from_path(None, ca_bundle)
            tls = ClientTlsContext(options).new_connection_options()
        self._client = S3Client(
            region=region,
            signing_config=self._signing,
            tls_mode=S3RequestTlsMode.DISABLED if url.scheme == "http" else S3RequestTlsMode.ENABLED,
            tls_connection_options=tls,
            part_size=part_size,
            multipart_upload_threshold=1 << 40,  # never split a PUT: the store owns multipart uploads
            max_active_connections_override=max_connections,
        )
        self._base: urllib.parse.SplitResult | None = None
        self._slots = asyncio.Semaphore(max_connections)
        self.enabled = url.scheme in ("http", "https")
        self.served = 0

    # -- credentials -----------------------------------------------------------------------------------

    def _delegate(self) -> AwsCredentials:
        """Called on a CRT thread while signing: the credentials last taken on the asyncio thread."""
        current = self._current
        if current is None:
            raise RuntimeError("no credentials")
        return current

    async def _refresh(self) -> None:
        frozen = await self._credentials()
        if frozen is None:
            raise _NotHere("no credentials")
        if frozen is not self._frozen:
            self._current = AwsCredentials(frozen.access_key, frozen.secret_key, frozen.token or None)
            self._frozen = frozen

    # -- the requests ----------------------------------------------------------------------------------

    async def get(
        self, key: str, start: int, last: int, if_match: str | None, into: bytearray | None = None
    ) -> bytearray | None:
        """Bytes ``start..last`` (inclusive) of ``key`` into ``into`` (or a new buffer), or None."""
        length = last - start + 1
        body = into if into is not None and len(into) == length else bytearray(length)
        headers = [("Range", f"bytes={start}-{last}")] + ([("If-Match", if_match)] if if_match else [])
        answer = _Answer(body, start)
        if not await self._run("get", key, "GET", headers, answer, S3RequestType.GET_OBJECT):
            return None
        if answer.status not in (200, 206) or answer.got != length:
            return None
        return body

    async def get_first(self, key: str, nbytes: int) -> tuple[dict[str, str], bytearray] | None:
        """Headers and the first ``nbytes`` bytes of ``key`` (all of a smaller object), or None."""
        answer = _Answer(bytearray(nbytes), 0)
        headers = [("Range", f"bytes=0-{nbytes - 1}")]
        if not await self._run("get", key, "GET", headers, answer, S3RequestType.GET_OBJECT):
            return None
        if answer.status != 206 or answer.body is None:
            return None
        total = answer.headers.get("content-range", "").rpartition("/")[2]
        if not total.isdigit():
            return None
        del answer.body[min(nbytes, int(total)) :]
        if len(answer.body) != answer.got:
            return None
        return answer.headers, answer.body

    async def head(self, key: str) -> dict[str, str] | None:
        """The headers of a HEAD of ``key`` (``:status`` 200 or 404), or None."""
        answer = _Answer(None, 0)
        try:
            ok = await self._run("head", key, "HEAD", [], answer, S3RequestType.DEFAULT, "HeadObject", raw=True)
        except S3ResponseError as exc:
            return {":status": "404"} if exc.status_code == 404 else None
        return answer.headers if ok and answer.status == 200 else None

    async def put(self, key: str, body: bytes, headers: Mapping[str, str]) -> dict[str, str] | None:
        """PUT ``body`` at ``key`` with ``headers``: the answer's headers on a 200, or None."""
        if not all(value.isascii() for value in headers.values()):
            return None
        answer = _Answer(None, 0)
        lines = [*headers.items(), ("Content-Length", str(len(body)))]
        ok = await self._run(
            "put", key, "PUT", lines, answer, S3RequestType.DEFAULT, "PutObject", stream=io.BytesIO(body)
        )
        return answer.headers if ok and answer.status == 200 else None

    async def put_part(
        self, key: str, upload_id: str, number: int, source: tuple[int, int, int], sha256: str
    ) -> dict[str, str] | None:
        """UploadPart of ``source`` = (file descriptor, offset, length); the CRT reads the part through a
        Python stream (it has no "file range" body), so its bytes pass through this process once."""
        fd, offset, length = source
        query = urllib.parse.urlencode({"partNumber": str(number), "uploadId": upload_id})
        answer = _Answer(None, 0)
        ok = await self._run(
            "upload_part",
            key,
            "PUT",
            [("Content-Length", str(length))],
            answer,
            S3RequestType.DEFAULT,
            "UploadPart",
            stream=_FileRange(fd, offset, length),
            query=query,
            sha256=sha256,
        )
        return answer.headers if ok and answer.status == 200 else None

    def sends_files(self) -> bool:
        return self.enabled

    async def aclose(self) -> None:
        """Drop the client; its threads wind down in the background (shutdown_event)."""
        client, self._client = self._client, None  # type: ignore[assignment]
        if client is not None:
            event = client.shutdown_event
            del client
            await asyncio.get_running_loop().run_in_executor(None, event.wait, 5.0)

    # -- internals ------------------------------------------------------------------------------------

    async def _path(self, key: str) -> tuple[str, str]:
        """(Host header, path of ``key``), derived once from a presigned URL (path or virtual-host style)."""
        if self._base is None:
            url = urllib.parse.urlsplit(await self._presign(PROBE_KEY))
            if not url.path.endswith("/" + PROBE_KEY):
                raise _NotHere(f"unexpected presigned path {url.path!r}")
            self._base = url._replace(path=url.path[: -len(PROBE_KEY)], query="", fragment="")
        return self._base.netloc, self._base.path + urllib.parse.quote(key.encode(), safe="/~")

    async def _run(
        self,
        op: str,
        key: str,
        method: str,
        headers: list[tuple[str, str]],
        answer: _Answer,
        kind: S3RequestType,
        operation: str | None = None,
        *,
        stream: Any = None,
        query: str = "",
        sha256: str | None = None,
        raw: bool = False,
    ) -> bool:
        """Send one request through the CRT and wait for its end on this loop; False: not answered here
        (the caller asks aiobotocore). ``raw``: S3ResponseError propagates (HEAD's 404)."""
        if not self.enabled or self._client is None:
            return False
        try:
            await self._refresh()
            host, path = await self._path(key)
        except (_NotHere, ExchangeFailed) as exc:
            log.debug("crt %s of %s not used: %s", op, key, exc)
            return False
        request = HttpRequest(
            method, path + (f"?{query}" if query else ""), HttpHeaders([("Host", host), *headers]), stream
        )
        signing = None
        if sha256 is not None:
            signing = self._signing.replace(signed_body_value=sha256)
        async with self._slots:
            self._on_request(op)
            crt_request = self._client.make_request(
                type=kind,
                request=request,
                operation_name=operation,
                signing_config=signing,
                on_headers=answer.on_headers,
                on_body=answer.on_body,
            )
            finished = asyncio.wrap_future(crt_request.finished_future)
            try:
                await asyncio.shield(finished)
            except asyncio.CancelledError:
                crt_request.cancel()
                # The CRT may still be writing into the caller's buffer: wait for its end before leaving.
                await asyncio.wait([finished])
                raise
            except S3ResponseError as exc:
                if raw:
                    raise
                log.debug("crt %s of %s answered %s", op, key, exc.status_code)
                return False
            except AwsCrtError as exc:
                log.debug("crt %s of %s failed: %s", op, key, exc.name)
                return False
        self.served += 1
        return True


class _NotHere(Exception):
    """This request cannot go through the CRT (the caller asks aiobotocore)."""


class _FileRange(io.RawIOBase):
    """``length`` bytes of file descriptor ``fd`` from ``offset``, as the stream the CRT reads a body from."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        super().__init__()
        self._fd = fd
        self._at = offset
        self._end = offset + length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._end - self._at)
        if n <= 0:
            return 0
        got = os.preadv(self._fd, [memoryview(buffer)[:n]], self._at)
        self._at += got
        return got
