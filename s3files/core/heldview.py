"""The store a held mount's name operations talk to (``HeldView``): S3 as the job left it, changed only in
the held changes (heldtree.py) until the command succeeded.

Owns: answering the ObjectStore calls of the superblock, files, tree operations, folder markers and the
cache's reads. While the write-back holds uploads back (writeback.py ``WriteBack.held``), every change of a
visible object asked of it (PUT, CopyObject, DeleteObject, CompleteMultipartUpload of a small object: a
symlink) is recorded in the held changes instead of sent, and every read (HEAD, GET, LIST) answers as if it
had been sent: a renamed object is read from the key it was copied from (at its ETag there), a deleted one
is absent (and a folder left with nothing is not listed), a folder made here is listed. So the rooms above
stay as they are: they believe S3 did what they asked, and nothing reaches S3 until the command succeeded.
The uploader talks to S3 itself (it runs only once the hold ended, after the creations are made);
multipart parts streamed while the command writes are invisible in S3 and go through unchanged.

Must not decide the order changes reach S3 in (heldtree.py) nor when the hold ends (writeback.py, fs.py).

Request budget: reads of keys not changed here are S3's own; a copy of an object not changed here costs
one HEAD (its version is pinned); a LIST page whose folders lost keys here costs one LIST of at most
(deleted keys + 1) per such folder, and pages emptied by deletes are refilled from the next ones.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

from s3files.core.heldtree import MAX_HELD_BODY, Change, HeldChanges, etag_of
from s3files.errors import ObjectNotFound, PreconditionFailed, StoreError
from s3files.store.base import CompletedPart, Copied, ListPage, MultipartUpload, ObjectInfo, ObjectStore

MAX_REFILL = 1000  # pages one merged LIST page may read when held deletes empty the real ones
MAX_TOKENS = 1024  # continuation tokens whose lower bound is remembered


@dataclasses.dataclass
class _Upload:
    metadata: dict[str, str]
    bodies: dict[int, bytes | None]  # part number -> its bytes (None: too large, or copied in S3)


class HeldView:
    """An ObjectStore over ``inner`` that holds back changes while ``held()`` (see the module docstring).
    Reads answer from the held changes whether or not the hold still is on, until they are applied."""

    def __init__(self, inner: ObjectStore, changes: HeldChanges, held: Callable[[], bool], wall: Callable[[], float] = time.time) -> None:
        self.inner = inner
        self.held_changes = changes
        self._held = held
        self._wall = wall
        self._lower: dict[str, str] = {}  # continuation token -> the last entry of the page before it
        self._uploads: dict[str, _Upload] = {}  # multipart uploads started while held

    @property
    def requests(self):  # type: ignore[no-untyped-def]
        return self.inner.requests

    @property
    def _changes(self) -> dict[str, Change]:
        return self.held_changes.changes

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)  # anything else a store offers (statistics, direct reads)

    async def check_bucket(self) -> None:
        await self.inner.check_bucket()

    # -- reads ---------------------------------------------------------------------------------------

    def _seen(self, key: str) -> Change | None:
        change = self._changes.get(key)
        if change is not None and change.kind == "delete":
            raise ObjectNotFound(f"{key} was deleted (held back)")
        return change

    async def _current(self, key: str) -> ObjectInfo | None:
        """The object at ``key`` as the job sees it, or None."""
        try:
            return await self.head(key)
        except ObjectNotFound:
            return None

    async def head(self, key: str) -> ObjectInfo:
        change = self._seen(key)
        if change is None:
            return await self.inner.head(key)
        assert change.info is not None
        return change.info

    async def get_first(self, key: str, nbytes: int) -> tuple[ObjectInfo, bytes | bytearray]:
        change = self._seen(key)
        if change is None:
            return await self.inner.get_first(key, nbytes)
        assert change.info is not None
        return change.info, await self.get_range(key, 0, min(nbytes, change.info.size))

    async def get_range(
        self, key: str, start: int, end: int, if_match: str | None = None, into: bytearray | None = None
    ) -> bytes | bytearray:
        change = self._seen(key)
        if change is None:
            return await self.inner.get_range(key, start, end, if_match=if_match, into=into)
        assert change.info is not None
        if if_match is not None and if_match != change.info.etag:
            raise PreconditionFailed(f"{key} is no longer version {if_match}")
        if change.kind == "put":
            assert change.body is not None
            return change.body[start:end]
        assert change.origin is not None
        end = min(end, change.info.size)
        if end <= start:
            return b""
        sized = into if into is not None and len(into) == end - start else None
        try:
            return await self.inner.get_range(change.origin, start, end, if_match=change.origin_etag, into=sized)
        except PreconditionFailed:
            raise ObjectNotFound(f"{key}: {change.origin}, which it was renamed from, changed outside") from None

    async def list_page(
        self,
        prefix: str,
        delimiter: str | None = "/",
        token: str | None = None,
        max_keys: int = 1000,
        start_after: str | None = None,
    ) -> ListPage:
        """One page as the job sees it: S3's, without the keys deleted here, with the keys written here
        that fall within it (by key order, so each is on exactly one page)."""
        if not self._changes:
            return await self.inner.list_page(prefix, delimiter, token, max_keys, start_after)
        lower = (self._lower.get(token, "") if token is not None else "") or (start_after or "")
        objects: dict[str, ObjectInfo] = {}
        prefixes: set[str] = set()
        last = ""
        for _ in range(MAX_REFILL):
            page = await self.inner.list_page(prefix, delimiter, token, max_keys, start_after)
            start_after = None
            for obj in page.objects:
                last = max(last, obj.key)
                if obj.key not in self._changes:
                    objects[obj.key] = obj
            for common in page.prefixes:
                last = max(last, common)
                if await self._shows(common):
                    prefixes.add(common)
            token = page.next_token
            if token is None or len(objects) + len(prefixes) >= max_keys:
                break
        upper = last if token is not None else None
        for key, change in self._changes.items():
            if change.kind == "delete" or not key.startswith(prefix):
                continue
            rest = key[len(prefix) :]
            cut = rest.find(delimiter) if delimiter else -1
            entry = key if cut < 0 else prefix + rest[: cut + len(delimiter or "")]
            if entry <= lower or (upper is not None and entry > upper):
                continue
            if cut < 0:
                assert change.info is not None
                objects[key] = change.info
            else:
                prefixes.add(entry)
        if token is not None:
            if len(self._lower) >= MAX_TOKENS:
                self._lower.pop(next(iter(self._lower)))
            self._lower[token] = last
        return ListPage(sorted(objects.values(), key=lambda o: o.key), sorted(prefixes), token)

    async def _shows(self, common: str) -> bool:
        """Whether folder ``common`` (a prefix S3 listed) still has a key as the job sees it."""
        deleted = [k for k, c in self._changes.items() if k.startswith(common) and c.kind == "delete"]
        if not deleted or any(k.startswith(common) and c.kind != "delete" for k, c in self._changes.items()):
            return True
        token = None
        for _ in range(MAX_REFILL):  # (S3 gives at most 1,000 keys a page)
            page = await self.inner.list_page(common, None, token, max_keys=min(len(deleted) + 1, 1000))
            if any(obj.key not in self._changes for obj in page.objects):
                return True
            token = page.next_token
            if token is None:
                return False
        return True

    async def list_multipart_uploads(self, prefix: str) -> list[MultipartUpload]:
        return await self.inner.list_multipart_uploads(prefix)

    # -- changes ---------------------------------------------------------------------------------------

    async def _check(self, key: str, if_match: str | None, if_none_match: bool) -> None:
        if not if_match and not if_none_match:
            return
        current = await self._current(key)
        if if_none_match and current is not None:
            raise PreconditionFailed(f"{key} exists")
        if if_match is not None:
            if current is None:
                raise ObjectNotFound(f"{key} does not exist")
            if current.etag != if_match:
                raise PreconditionFailed(f"{key} is no longer version {if_match}")

    def _hold(self, key: str, body: bytes, metadata: Mapping[str, str] | None, parts: int) -> ObjectInfo:
        if len(body) > MAX_HELD_BODY:
            raise StoreError(f"{key}: {len(body)} bytes cannot be held back as a change of the tree")
        info = ObjectInfo(key, len(body), etag_of(body, parts), self._wall(), dict(metadata or {}))
        self.held_changes.record(key, Change("put", info, bytes(body), parts))
        return info

    async def put(
        self,
        key: str,
        data: bytes,
        metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        if not self._held():
            return await self.inner.put(key, data, metadata, if_match=if_match, if_none_match=if_none_match)
        await self._check(key, if_match, if_none_match)
        return self._hold(key, data, metadata, 0)

    async def delete(self, key: str) -> None:
        if not self._held():
            await self.inner.delete(key)
            self.held_changes.drop(key)
            return
        self.held_changes.record(key, Change("delete"))

    async def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None) -> Copied:
        if not self._held():
            return await self.inner.copy(src, dst, metadata)
        now = self._wall()
        source = self._seen(src)
        if source is not None and source.kind == "put":
            assert source.body is not None and source.info is not None
            info = self._hold(dst, source.body, metadata if metadata is not None else source.info.metadata, 0)
            return Copied(dst, info.etag, now)
        if source is not None:
            assert source.info is not None and source.origin is not None
            origin, origin_etag, was = source.origin, source.origin_etag, source.info
        else:
            was = await self.inner.head(src)
            origin, origin_etag = src, was.etag
        kept = metadata is None
        info = ObjectInfo(dst, was.size, was.etag, now, dict(was.metadata or {}) if kept else dict(metadata or {}))
        replace = not kept or (source is not None and source.replace_metadata)
        self.held_changes.record(dst, Change("copy", info, origin=origin, origin_etag=origin_etag, replace_metadata=replace))
        return Copied(dst, info.etag, now)

    async def create_multipart(self, key: str, metadata: Mapping[str, str] | None = None) -> str:
        upload_id = await self.inner.create_multipart(key, metadata)
        if self._held():  # parts are invisible in S3; only the completion is held back
            self._uploads[upload_id] = _Upload(dict(metadata or {}), {})
        return upload_id

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> CompletedPart:
        part = await self.inner.upload_part(key, upload_id, number, data)
        upload = self._uploads.get(upload_id)
        if upload is not None:
            upload.bodies[number] = bytes(data) if len(data) <= MAX_HELD_BODY else None
        return part

    async def upload_part_from(
        self, key: str, upload_id: str, number: int, fd: int, offset: int, length: int
    ) -> CompletedPart:
        upload = self._uploads.get(upload_id)
        if upload is not None:
            upload.bodies[number] = None
        return await self.inner.upload_part_from(key, upload_id, number, fd, offset, length)

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
        upload = self._uploads.get(upload_id)
        if upload is not None:
            upload.bodies[number] = None
        change = self._seen(src)
        if change is None:
            return await self.inner.upload_part_copy(key, upload_id, number, src, start, end, if_match)
        assert change.info is not None
        if if_match is not None and if_match != change.info.etag:
            raise PreconditionFailed(f"{src} is no longer version {if_match}")
        if change.kind == "put":
            assert change.body is not None
            return await self.inner.upload_part(key, upload_id, number, change.body[start:end])
        assert change.origin is not None
        return await self.inner.upload_part_copy(key, upload_id, number, change.origin, start, end, change.origin_etag)

    async def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[CompletedPart],
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        upload = self._uploads.pop(upload_id, None)
        if not self._held():
            return await self.inner.complete_multipart(key, upload_id, parts, if_match=if_match, if_none_match=if_none_match)
        if upload is None or len(parts) != 1 or upload.bodies.get(parts[0].number) is None:
            await self.inner.abort_multipart(key, upload_id)
            raise StoreError(f"{key}: an object made of parts cannot be held back as a change of the tree")
        await self._check(key, if_match, if_none_match)
        body = upload.bodies[parts[0].number]
        assert body is not None
        await self.inner.abort_multipart(key, upload_id)  # its one part is kept here instead
        return self._hold(key, body, upload.metadata, 1)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        self._uploads.pop(upload_id, None)
        await self.inner.abort_multipart(key, upload_id)

    async def aclose(self) -> None:
        await self.inner.aclose()


__all__ = ["HeldView"]
