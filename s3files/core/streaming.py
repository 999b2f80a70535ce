"""Streaming parts: a sequential writer's finished parts go to S3 while it goes on writing.

Owns: a copy's multipart upload (``LocalCopy.sending``: the upload, the parts sent with the generation
they were sent at, the sends in flight), creating it (recorded at once, so that a crash cannot orphan
it), sending parts (``slots`` at a time over the mount) and aborting it. Must not complete an upload nor
decide when anything is published (uploader.py does).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

import trio

from s3files.core.cache import LocalCache
from s3files.core.copies import LocalCopy, Multipart
from s3files.core.inodes import Inode
from s3files.core.parts import MAX_PARTS
from s3files.core.writestate import WriteState
from s3files.errors import S3FilesError
from s3files.store.base import ObjectStore, abort_quietly

log = logging.getLogger(__name__)

TOKEN = "s3files-upload"  # user metadata: the id of the publish that wrote this version


def posix_metadata(node: Inode) -> dict[str, str]:
    """POSIX metadata in s3fs-compatible x-amz-meta-* form (``Inode.stored_metadata``).

    Written data carries its mtime to the nanosecond (the time of its last write, or what a ``utime``
    set after it), so a remount shows what ``stat`` showed while the file was open; LastModified has
    whole seconds only. An upload that began while the program was still writing was created with the
    mtime of then: the publish rewrites its metadata once it is complete (uploader.py).
    """
    return node.stored_metadata()


class PartSender:
    """The multipart uploads of one mount's copies. ``key_of`` maps a copy to its key now."""

    def __init__(
        self, store: ObjectStore, cache: LocalCache, spawn: Callable[..., object], key_of: Callable[[LocalCopy], str]
    ) -> None:
        self.store = store
        self.cache = cache
        self.layout = cache.layout
        self.slots = cache.slots
        self._spawn = spawn
        self._key_of = key_of


    def stream(self, copy: LocalCopy, parts: range, off: int, end: int) -> None:
        """Send the parts a write finished (wrote up to their end) while the program goes on writing.

        Only for files past part 0 (smaller ones are one PUT at close). A part changed again later is
        sent again at publish; a random writer that never reaches a part's end sends nothing early.
        """
        size = copy.size()
        first_end = self.layout.span(0)[1]
        if size <= first_end or copy.state is not WriteState.DIRTY:
            return
        if off <= first_end < end:
            parts = range(0, parts[-1] + 1)  # just grew past part 0, which was held back: it goes too
        for index in parts:
            start, stop = self.layout.span(index)
            if stop > size or stop > end:
                continue
            if start < copy.base_size and index not in copy.present:
                continue
            copy.sending.in_flight += 1
            self._spawn(self._send_in_background, copy, index)

    async def _send_in_background(self, copy: LocalCopy, index: int) -> None:
        key = self._key_of(copy)
        try:
            upload = await self.upload_for(copy, key)
            await self.send(copy, upload, index)
        except S3FilesError as exc:
            log.debug("op=upload_part key=%r part=%d will be sent at close: %s", key, index + 1, exc)
        except OSError as exc:
            log.debug("op=upload_part key=%r part=%d could not be read: %s", key, index + 1, exc)
        finally:
            sending = copy.sending
            sending.in_flight -= 1
            event, sending.event = sending.event, trio.Event()
            event.set()

    async def upload_for(self, copy: LocalCopy, key: str) -> Multipart:
        """The copy's multipart upload to ``key``, created (and recorded) on first need."""
        sending = copy.sending
        async with sending.lock:
            if copy.closed or copy.state in (WriteState.ORPHANED, WriteState.BROKEN):
                raise S3FilesError("not to be published")
            if key != self._key_of(copy):
                raise S3FilesError("renamed since the send began")  # (sent at close, to the new name)
            upload = sending.upload
            if upload is not None and upload.key != key:
                # Created for a name the file had (a part was on its way when it was renamed): never to
                # be completed there.
                sending.upload = None
                await abort_quietly(self.store, upload.key, upload.upload_id)
                upload = None
            if upload is None:
                metadata = {**posix_metadata(copy.node), TOKEN: secrets.token_hex(8)}
                upload_id = await self.store.create_multipart(key, metadata)
                upload = sending.upload = Multipart(key, upload_id, metadata)
                self.cache.save(copy)  # a crash must not orphan it
            return upload

    async def send(self, copy: LocalCopy, upload: Multipart, index: int) -> None:
        generation = copy.changed.get(index, 0)
        async with self.slots:
            if copy.closed:
                return
            start, stop = self.layout.span(index)
            stop = min(stop, copy.size())
            previous = upload.sent.get(index)
            if stop <= start or (previous is not None and previous[:2] == (generation, stop - start)):
                return
            await self.cache.io.settled(copy)
            part = await self.store.upload_part_from(upload.key, upload.upload_id, index + 1, copy.fd, start, stop - start)
        upload.sent[index] = (generation, stop - start, part)
        if copy.sending.upload is upload and copy.state is WriteState.UPLOADING:
            # Resumable after a crash. (While the copy is DIRTY a recovery never resumes its upload, it
            # aborts it: the id recorded at creation is enough, and a record write per part is not free.)
            self.cache.save(copy)

    async def wait_for_sends(self, copy: LocalCopy) -> None:
        for _ in range(MAX_PARTS + 1):
            if copy.sending.in_flight == 0:
                return
            await copy.sending.event.wait()

    async def drop_upload(self, copy: LocalCopy) -> None:
        """Abort the copy's multipart upload, if any (it is not going to be completed)."""
        upload, copy.sending.upload = copy.sending.upload, None
        if upload is not None:
            await abort_quietly(self.store, upload.key, upload.upload_id)
