"""The aiobotocore implementation of ObjectStore: S3 over HTTP, called from trio (``S3Store``).

Owns: the trio half of the S3 store. Each public method checks its arguments, does on worker threads the
work that must not run on an event loop (hashing a body, hashing or reading a part from a local file),
and then crosses the bridge to the store's asyncio thread once; the asyncio half does the request (and,
in the few cases noted there, a follow-up HEAD) and translates errors there, so the trio side only ever
sees StoreError subclasses. Also ``open_s3_store``, which gives a store its asyncio thread and session.

The asyncio half, one owner per concern (each module's docstring says what it must not touch):
- session.py: settings, credentials, the aiobotocore clients, the direct path, request counters,
  ``check_bucket``, ``create_bucket``;
- translate.py: THE translation of S3/botocore errors into ``s3files.errors`` (nothing botocore-specific
  about errors lives anywhere else);
- objects.py: HEAD, GET, PUT, LIST, DELETE, COPY, and conditions checked by a HEAD;
- multipart.py: create (with the lost-reply cleanup), parts, part copies, complete, abort, list uploads;
- wire.py: ETags, metadata names, timestamps, body checksums;
- direct.py (with http1.py and sigv4.py): ranged GETs and small PUTs without aiobotocore.

Must not: build requests or read S3's answers (the modules above), or block the trio thread.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from s3files.errors import StoreError
from s3files.store.base import CompletedPart, Copied, ListPage, MultipartUpload, ObjectInfo
from s3files.store.bridge import AsyncioThread, open_asyncio_thread
from s3files.store.direct import DirectHttp
from s3files.store.multipart import LOST_UPLOAD_MARGIN, MultipartRequests, lost_uploads
from s3files.store.objects import ObjectRequests
from s3files.store.retry import RetryPolicy
from s3files.store.session import S3Session, S3Settings, create_bucket
from s3files.store.wire import content_md5, file_sha256, parse_timestamp, user_metadata

# What callers import from here besides S3Store and open_s3_store. ``file_sha256`` is looked up here at
# each call (a test replaces it to make a part's hash wrong).
__all__ = [
    "LOST_UPLOAD_MARGIN",
    "S3Settings",
    "S3Store",
    "create_bucket",
    "file_sha256",
    "lost_uploads",
    "open_s3_store",
    "parse_timestamp",
]


class S3Store:
    """ObjectStore over aiobotocore. Create it with ``open_s3_store``; every method is a trio coroutine."""

    def __init__(self, bridge: AsyncioThread, settings: S3Settings) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self._bridge = bridge
        self._session = S3Session(settings)
        self.requests = self._session.requests
        self._objects = ObjectRequests(self._session)
        self._multipart = MultipartRequests(self._session, self._objects)
        self._closed = False

    # The session's aiobotocore client and direct path, for tests that stand in for a server's quirks.
    @property
    def _client(self) -> Any:
        return self._session.client

    @property
    def _direct(self) -> DirectHttp | None:
        return self._session.direct

    @_direct.setter
    def _direct(self, direct: DirectHttp | None) -> None:
        self._session.direct = direct

    # -- life cycle ------------------------------------------------------------------------------------

    async def _open(self) -> None:
        await self._bridge.run(self._session.open)

    async def aclose(self) -> None:
        """Close the clients (their connection pools) on the asyncio thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            await self._bridge.run(self._session.close)

    def statistics(self) -> dict[str, Any]:
        direct = self._session.direct
        return {
            "requests": self.requests.snapshot(),
            "bridge": self._bridge.statistics(),
            "direct_requests": direct.served if direct is not None else 0,
        }

    # -- ObjectStore (one crossing each) ---------------------------------------------------------------

    async def check_bucket(self) -> None:
        """HeadBucket; its 403 has no body, so a 1-key listing names the real reason."""
        await self._bridge.run(self._session.check_bucket)

    async def head(self, key: str) -> ObjectInfo:
        return await self._bridge.run(self._objects.head, key)

    async def get_first(self, key: str, nbytes: int) -> tuple[ObjectInfo, bytes | bytearray]:
        if nbytes < 1:
            raise StoreError(f"get_first of {key} needs at least one byte, not {nbytes}")
        return await self._bridge.run(self._objects.get_first, key, nbytes)

    async def get_range(
        self, key: str, start: int, end: int, if_match: str | None = None, into: bytearray | None = None
    ) -> bytes | bytearray:
        if start < 0 or end < start:
            raise StoreError(f"bad range {start}-{end} for {key}")
        return await self._bridge.run(self._objects.get_range, key, start, end, if_match, into)

    async def put(
        self,
        key: str,
        data: bytes,
        metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        data = bytes(data)
        md5 = await content_md5(data)
        return await self._bridge.run(
            self._objects.put, key, data, md5, user_metadata(metadata), if_match, if_none_match
        )

    async def list_page(
        self,
        prefix: str,
        delimiter: str | None = "/",
        token: str | None = None,
        max_keys: int = 1000,
        start_after: str | None = None,
    ) -> ListPage:
        return await self._bridge.run(
            self._objects.list_page, prefix, delimiter, token, max_keys, start_after
        )

    async def delete(self, key: str) -> None:
        await self._bridge.run(self._objects.delete, key)

    async def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None) -> Copied:
        return await self._bridge.run(
            self._objects.copy, src, dst, None if metadata is None else user_metadata(metadata)
        )

    async def create_multipart(self, key: str, metadata: Mapping[str, str] | None = None) -> str:
        """CreateMultipartUpload; uploads made by earlier attempts whose reply was lost are aborted
        (multipart.py)."""
        return await self._bridge.run(self._multipart.create, key, user_metadata(metadata))

    async def list_multipart_uploads(self, prefix: str) -> list[MultipartUpload]:
        uploads, _ = await self._bridge.run(self._multipart.uploads, prefix)
        return uploads

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> CompletedPart:
        data = bytes(data)
        md5 = await content_md5(data)
        return await self._bridge.run(self._multipart.upload_part, key, upload_id, number, data, md5)

    async def upload_part_from(
        self, key: str, upload_id: str, number: int, fd: int, offset: int, length: int
    ) -> CompletedPart:
        """Part ``number`` from a local file. On the direct path (plain HTTP) the bytes go from the page
        cache to the socket by sendfile, hashed (SHA-256, signed) 1 MiB at a time beforehand: no part-sized
        copy in this process, which for a large sequential write was a third of the daemon's CPU (read
        back, aiohttp's buffering, the send). Otherwise the part is read and sent as ``upload_part``.
        If the file changes between hashing and sending, the server refuses the part (the payload's hash
        does not match) and it is sent again through aiobotocore."""
        own = os.dup(fd)  # the caller may close ``fd`` meanwhile: a duplicate never names another file
        try:
            direct = self._session.direct
            if direct is not None and direct.sends_files():
                sha256 = await trio.to_thread.run_sync(file_sha256, own, offset, length)
                part = await self._bridge.run(
                    self._multipart.upload_part_direct, key, upload_id, number, own, offset, length, sha256
                )
                if part is not None:
                    return part
            data = await trio.to_thread.run_sync(os.pread, own, length, offset)
            if len(data) != length:
                raise StoreError(
                    f"the local copy ended {length - len(data)} bytes before the end of the part"
                )
            return await self.upload_part(key, upload_id, number, data)  # hashed again: it may have changed
        finally:
            os.close(own)

    async def upload_part_copy(
        self,
        key: str,
        upload_id: str,
        number: int,
        src: str,
        start: int,
        end: int,
        if_match: str | None = None,
    ) -> CompletedPart:
        return await self._bridge.run(
            self._multipart.upload_part_copy, key, upload_id, number, src, start, end, if_match
        )

    async def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[CompletedPart],
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        return await self._bridge.run(
            self._multipart.complete, key, upload_id, list(parts), if_match, if_none_match
        )

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self._bridge.run(self._multipart.abort, key, upload_id)


@asynccontextmanager
async def open_s3_store(
    bucket: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    max_connections: int = 32,
    max_attempts: int = RetryPolicy.max_attempts,
    request_timeout: float = RetryPolicy.request_timeout,
) -> AsyncIterator[S3Store]:
    """An S3Store for the block: its own asyncio thread and aiobotocore clients, closed on exit.

    Credentials come from the standard AWS chain (env, ``profile``, config files, instance roles).
    Does not contact S3; call ``check_bucket()`` to fail fast on a bad bucket/endpoint/credentials.
    """
    settings = S3Settings(
        bucket=bucket,
        endpoint_url=endpoint_url,
        region=region,
        profile=profile,
        max_connections=max_connections,
        retry=RetryPolicy(max_attempts=max_attempts, request_timeout=request_timeout),
    )
    async with open_asyncio_thread(name=f"s3files-asyncio-{bucket}") as bridge:
        store = S3Store(bridge, settings)
        await store._open()
        try:
            yield store
        finally:
            await store.aclose()
