"""An in-memory ObjectStore with S3's semantics, for fast deterministic tests of the core.

Owns: a dict of objects and per-operation request counters. Behaves like S3 where the core depends on it
(ListObjectsV2 ordering, delimiter/CommonPrefixes, pagination tokens, clipping ranges, conditional writes,
multipart). ``fail`` lets a test inject an error for the next call of an operation.
Never the only test of a feature: the same contract tests run against the aiobotocore store and moto.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import trio

from s3files.errors import ObjectNotFound, PreconditionFailed, StoreError, UploadNotFound
from s3files.store.base import CompletedPart, Copied, ListPage, MultipartUpload, ObjectInfo, RequestCounts

MAX_LIST_KEYS = 1000  # S3's cap on one ListObjectsV2 page
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every multipart part but the last


@dataclass
class _Object:
    data: bytes
    etag: str
    last_modified: float
    metadata: dict[str, str]


@dataclass
class _Upload:
    key: str
    metadata: dict[str, str]
    initiated: float
    parts: dict[int, bytes] = field(default_factory=dict)


class MemoryStore:
    """An ObjectStore held in a dict. ``now`` is injectable so LastModified is deterministic in tests."""

    def __init__(self, now: Callable[[], float] = time.time, latency: float = 0.0) -> None:
        self.requests = RequestCounts()
        self._objects: dict[str, _Object] = {}
        self._uploads: dict[str, _Upload] = {}
        self._ids = itertools.count(1)
        self._now = now
        self._latency = latency
        self._faults: dict[str, list[Exception]] = {}

    # -- test helpers --------------------------------------------------------------------------

    def fail(self, op: str, exc: Exception, times: int = 1) -> None:
        """Make the next ``times`` calls of ``op`` raise ``exc``."""
        self._faults.setdefault(op, []).extend([exc] * times)

    def seed(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None:
        """Put an object without counting a request (test set-up)."""
        self._objects[key] = self._make(data, metadata)

    def keys(self) -> list[str]:
        return sorted(self._objects)

    def data(self, key: str) -> bytes:
        return self._objects[key].data

    # -- ObjectStore -------------------------------------------------------------------------------

    async def _request(self, op: str) -> None:
        self.requests.add(op)
        if self._latency:
            await trio.sleep(self._latency)
        else:
            await trio.lowlevel.checkpoint()
        faults = self._faults.get(op)
        if faults:
            raise faults.pop(0)

    def _make(self, data: bytes, metadata: Mapping[str, str] | None, etag: str | None = None) -> _Object:
        return _Object(
            data=bytes(data),
            etag=etag or hashlib.md5(data).hexdigest(),
            last_modified=self._now(),
            # S3 keeps user-metadata names in lowercase (they travel as HTTP headers).
            metadata={name.lower(): value for name, value in (metadata or {}).items()},
        )

    def _info(self, key: str, obj: _Object, with_metadata: bool = True) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=len(obj.data),
            etag=obj.etag,
            last_modified=obj.last_modified,
            metadata=dict(obj.metadata) if with_metadata else None,
        )

    def _get(self, key: str) -> _Object:
        try:
            return self._objects[key]
        except KeyError:
            raise ObjectNotFound(f"no such key: {key}") from None

    def _check(self, key: str, if_match: str | None, if_none_match: bool) -> None:
        current = self._objects.get(key)
        if if_none_match and current is not None:
            raise PreconditionFailed(f"{key} already exists")
        if if_match is not None:
            if current is None:
                raise ObjectNotFound(f"no such key: {key}")
            if current.etag != if_match:
                raise PreconditionFailed(f"{key} changed (etag {current.etag}, expected {if_match})")

    async def check_bucket(self) -> None:
        await self._request("head_bucket")

    async def head(self, key: str) -> ObjectInfo:
        await self._request("head")
        return self._info(key, self._get(key))

    async def get_first(self, key: str, nbytes: int) -> tuple[ObjectInfo, bytes]:
        await self._request("get")
        obj = self._get(key)
        return self._info(key, obj), obj.data[:nbytes]

    async def get_range(
        self, key: str, start: int, end: int, if_match: str | None = None, into: bytearray | None = None
    ) -> bytes:
        await self._request("get")
        obj = self._get(key)
        if if_match is not None and obj.etag != if_match:
            raise PreconditionFailed(f"{key} changed")
        if start < 0 or end < start:
            raise StoreError(f"bad range {start}-{end}")
        if start >= len(obj.data) and len(obj.data) > 0:
            raise StoreError(f"range {start}- not satisfiable for {key} of {len(obj.data)} bytes")
        return obj.data[start:end]

    async def put(
        self,
        key: str,
        data: bytes,
        metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        await self._request("put")
        self._check(key, if_match, if_none_match)
        obj = self._objects[key] = self._make(data, metadata)
        return self._info(key, obj)

    async def list_page(
        self,
        prefix: str,
        delimiter: str | None = "/",
        token: str | None = None,
        max_keys: int = 1000,
        start_after: str | None = None,
    ) -> ListPage:
        await self._request("list")
        max_keys = min(max_keys, MAX_LIST_KEYS)  # S3 never returns more than 1000 entries a page
        after = token or start_after or ""
        # The token is the last entry returned; when that entry is a common prefix, every key under it
        # was already reported through it.
        skip_under = token if token and delimiter and token.endswith(delimiter) else None
        entries: dict[str, ObjectInfo | None] = {}  # name -> info (None for a common prefix), in key order
        for key in sorted(self._objects):
            if not key.startswith(prefix) or key <= after:
                continue
            if skip_under is not None and key.startswith(skip_under):
                continue
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                entries.setdefault(key[: cut + len(delimiter or "")], None)
            else:
                entries[key] = self._info(key, self._objects[key], with_metadata=False)
        names = list(entries)
        page, more = names[:max_keys], len(names) > max_keys
        objects = [info for name in page if (info := entries[name]) is not None]
        prefixes = [name for name in page if entries[name] is None]
        return ListPage(objects, prefixes, next_token=page[-1] if more else None)

    async def delete(self, key: str) -> None:
        await self._request("delete")
        self._objects.pop(key, None)

    async def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None) -> Copied:
        await self._request("copy")
        source = self._get(src)
        obj = self._objects[dst] = self._make(
            source.data, metadata if metadata is not None else source.metadata, etag=source.etag
        )
        info = self._info(dst, obj)
        return Copied(dst, info.etag, info.last_modified)

    async def create_multipart(self, key: str, metadata: Mapping[str, str] | None = None) -> str:
        await self._request("create_multipart")
        upload_id = f"upload-{next(self._ids)}"
        self._uploads[upload_id] = _Upload(key=key, metadata=dict(metadata or {}), initiated=self._now())
        return upload_id

    def _upload(self, key: str, upload_id: str) -> _Upload:
        upload = self._uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise UploadNotFound(f"no such upload {upload_id} for {key} (aborted or completed)")
        return upload

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> CompletedPart:
        await self._request("upload_part")
        self._upload(key, upload_id).parts[number] = bytes(data)
        return CompletedPart(number=number, etag=hashlib.md5(data).hexdigest())

    async def upload_part_from(
        self, key: str, upload_id: str, number: int, fd: int, offset: int, length: int
    ) -> CompletedPart:
        data = os.pread(fd, length, offset)  # before any await: the caller's file is open now
        if len(data) != length:
            raise StoreError(f"the local copy ended {length - len(data)} bytes before the end of the part")
        return await self.upload_part(key, upload_id, number, data)

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
        await self._request("upload_part_copy")
        upload = self._upload(key, upload_id)
        self._check(src, if_match, False)
        source = self._get(src)
        if not 0 <= start < end <= len(source.data):
            raise StoreError(f"InvalidRange: bytes {start}-{end - 1} of {src} ({len(source.data)} bytes)")
        data = upload.parts[number] = source.data[start:end]
        return CompletedPart(number=number, etag=hashlib.md5(data).hexdigest())

    async def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[CompletedPart],
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        await self._request("complete_multipart")
        upload = self._upload(key, upload_id)
        self._check(key, if_match, if_none_match)
        try:
            chunks = [upload.parts[p.number] for p in sorted(parts, key=lambda p: p.number)]
        except KeyError as exc:
            raise StoreError(f"part {exc} was never uploaded") from None
        if any(len(chunk) < MIN_PART_SIZE for chunk in chunks[:-1]):
            raise StoreError(f"EntityTooSmall: every part but the last must be >= {MIN_PART_SIZE} bytes")
        data = b"".join(chunks)
        digest = hashlib.md5(b"".join(hashlib.md5(upload.parts[p.number]).digest() for p in parts))
        etag = f"{digest.hexdigest()}-{len(parts)}"
        obj = self._objects[key] = self._make(data, upload.metadata, etag=etag)
        del self._uploads[upload_id]
        return self._info(key, obj)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self._request("abort_multipart")
        self._uploads.pop(upload_id, None)

    async def list_multipart_uploads(self, prefix: str) -> list[MultipartUpload]:
        await self._request("list_multipart_uploads")
        found = [
            (upload.key, upload.initiated, int(upload_id.rpartition("-")[2]), upload_id)
            for upload_id, upload in self._uploads.items()
            if upload.key.startswith(prefix)
        ]
        return [MultipartUpload(key, upload_id, initiated) for key, initiated, _, upload_id in sorted(found)]

    async def aclose(self) -> None:
        return None
