"""Files being written: their local staged copies, and uploading them as conditional writes.

Owns: the staged copy of a file open for writing (the whole content, in a file under the cache folder),
and turning it into one object with PUT (small) or a parallel multipart upload (large), conditional on
the version we started from: If-None-Match for a new key, If-Match with the ETag we read for an overwrite.
On a conflict nothing is lost: the outside version stays at the key, ours is uploaded beside it as
``NAME.s3files-conflict-<UTC timestamp>``, and the caller gets ``WriteConflict`` (EIO at close/fsync).
Must not decide when to upload (fs.py does: at flush/fsync/close, which is close-to-open).

Why a whole-file staged copy: S3 has no partial writes, so any change produces a new whole object; keeping
the file locally lets random writes, appends and truncates run at disk speed and upload once.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import trio

from s3files.core.inodes import Inode
from s3files.errors import ObjectNotFound, PreconditionFailed, S3FilesError
from s3files.store.base import CompletedPart, ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

MIN_PART = 5 * 1024 * 1024  # S3's minimum part size (all parts but the last)
MAX_PARTS = 10_000


class WriteConflict(S3FilesError):
    """Someone else changed the object since we read it; ours was kept beside it."""

    errno = errno.EIO


class CacheFull(S3FilesError):
    """The local staging folder's disk is full: the write is refused, nothing already written is lost."""

    errno = errno.ENOSPC


@dataclass(eq=False)
class StagedFile:
    """The local copy of one file being changed. ``base_etag`` None means: the key did not exist."""

    path: Path
    fd: int
    base_etag: str | None
    node: Inode  # the file's inode, held: a dirty copy must find its key even after the kernel forgot it
    dirty: bool = False
    handles: int = 0
    unlinked: bool = False
    lock: trio.Lock = field(default_factory=trio.Lock)

    @classmethod
    def create(cls, folder: Path, node: Inode, base_etag: str | None) -> StagedFile:
        fd, name = _mkstemp(folder)
        return cls(Path(name), fd, base_etag, node)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def read(self, off: int, size: int) -> bytes:
        return os.pread(self.fd, size, off)

    def write(self, off: int, data: bytes) -> int:
        try:
            written = os.pwrite(self.fd, data, off)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CacheFull(f"the staging folder {self.path.parent} is full; free space there") from None
            raise
        self.dirty = True
        return written

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)
        self.dirty = True

    def discard(self) -> None:
        """Close and delete the local copy (only once it is uploaded, or the file was removed)."""
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.path.unlink(missing_ok=True)


def _mkstemp(folder: Path) -> tuple[int, str]:
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=folder, prefix="staged-")


class Uploader:
    """Uploads staged files: PUT up to ``part_size``, else multipart with ``concurrency`` parts in flight."""

    def __init__(self, store: ObjectStore, part_size: int = 8 * 1024 * 1024, concurrency: int = 8) -> None:
        self.store = store
        self.part_size = max(part_size, MIN_PART)
        self.concurrency = concurrency

    async def upload(self, key: str, staged: StagedFile, metadata: Mapping[str, str]) -> ObjectInfo:
        """Write ``staged`` to ``key`` conditionally; on a conflict keep both versions and raise."""
        try:
            try:
                return await self._upload(key, staged, metadata, conditional=True)
            except ObjectNotFound:
                # If-Match on a key someone deleted meanwhile. Judgement call: the writer's newer content
                # re-creates the file (what a local file system would show the writer).
                log.warning("op=upload key=%s was deleted outside this mount while open; writing it again", key)
                staged.base_etag = None
                return await self._upload(key, staged, metadata, conditional=True)
        except PreconditionFailed:
            pass
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        beside = f"{key}.s3files-conflict-{stamp}"
        await self._upload(beside, staged, metadata, conditional=False)
        log.warning("op=upload key=%s changed outside this mount; kept theirs, ours is at key=%s", key, beside)
        raise WriteConflict(f"{key} was changed by someone else; your version was saved as {beside}")

    async def _upload(
        self, key: str, staged: StagedFile, metadata: Mapping[str, str], conditional: bool
    ) -> ObjectInfo:
        if_match = staged.base_etag if conditional else None
        if_none_match = conditional and staged.base_etag is None
        size = staged.size()
        if size <= self.part_size:
            data = await trio.to_thread.run_sync(staged.read, 0, size)
            return await self.store.put(key, data, metadata, if_match=if_match, if_none_match=if_none_match)
        part_size = max(self.part_size, -(-size // MAX_PARTS))
        upload_id = await self.store.create_multipart(key, metadata)
        try:
            parts = await self._parts(key, upload_id, staged, size, part_size)
            return await self.store.complete_multipart(
                key, upload_id, parts, if_match=if_match, if_none_match=if_none_match
            )
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                try:
                    await self.store.abort_multipart(key, upload_id)
                except S3FilesError as exc:
                    log.warning("op=abort_multipart key=%s failed: %s", key, exc)
            raise

    async def _parts(
        self, key: str, upload_id: str, staged: StagedFile, size: int, part_size: int
    ) -> list[CompletedPart]:
        count = -(-size // part_size)
        done: list[CompletedPart | None] = [None] * count
        limit = trio.Semaphore(self.concurrency)

        async def one(index: int) -> None:
            async with limit:
                data = await trio.to_thread.run_sync(staged.read, index * part_size, part_size)
                done[index] = await self.store.upload_part(key, upload_id, index + 1, data)

        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(one, index)
        return [part for part in done if part is not None]
