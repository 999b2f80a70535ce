"""Publishing local copies: parts streamed while the program writes, conditional writes, conflicts,
recognising our own earlier attempt, and retries.

Owns: a copy's multipart upload (``LocalCopy.sending``), the write-state moves of a publish (writestate.py:
DIRTY/ACKED/REWRITTEN -> UPLOADING -> CLEAN, DIRTY, ACKED or CONFLICTED; REWRITTEN -> DIRTY when the
acknowledged version kept aside is published: ``publish_acked``), conflict copies, and the background
retry of acknowledged copies whose upload failed. Must not decide *when* to publish (fs.py does: close,
fsync, unmount, recovery) nor change a copy's bytes (the cache does).

A publish computes its key once, at its start (``key_of``), and holds the copy's lock until it is done;
a change of the copy's name (treeops.py: rename, unlink) asks for ``held``, which waits for a publish in
flight and keeps new ones out while the name moves, so no upload ever lands at a name the file had.

Conditional writes: If-None-Match for a new key, If-Match with the ETag the copy is based on otherwise.
Every publish carries an id of its own in user metadata (``x-amz-meta-s3files-upload``): when a
conditional write is refused (412) or a completion finds its upload gone, one HEAD tells whether the key
holds our own earlier attempt (its reply was lost and the SDK retried: success) or someone else's version
(a conflict). On a conflict nothing is lost: theirs stays at the key, ours is written beside it as
``NAME.s3files-conflict-<UTC time to the ms>Z-<random>`` with If-None-Match (a new name if even that
exists), and the caller gets ``WriteConflict`` naming the copy that holds our bytes.
"""

from __future__ import annotations

import errno
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import NoReturn

import trio

from s3files.core.cache import LocalCache
from s3files.core.copies import AckedView, CacheFull, LocalCopy, Multipart
from s3files.core.links import MAX_COPY_OBJECT, copy_object
from s3files.core.streaming import TOKEN, PartSender, posix_metadata
from s3files.core.tasks import run_all
from s3files.core.writestate import PUBLISHABLE, WAITING, WriteState
from s3files.errors import (
    BucketGone,
    ObjectNotFound,
    PreconditionFailed,
    S3FilesError,
    StoreError,
    UploadNotFound,
)
from s3files.store.base import CompletedPart, ObjectInfo, ObjectStore, abort_quietly

log = logging.getLogger(__name__)

RETRY_FIRST = 1.0  # seconds before an acknowledged copy's failed upload is tried again; doubles
RETRY_MOST = 300.0
CONFLICT_NAMES = 5  # conflict copy names tried (each random) before giving up


def _log_kept(key: str, exc: S3FilesError, where: object, what: str = "") -> None:
    """The one line a failed upload of an acknowledged version logs: what happened, where the bytes are,
    and what comes next. A bucket deleted under the mount is said as such, with what to do about it."""
    fields = f"errno={errno.errorcode.get(exc.errno, exc.errno)}" + (f" s3={exc.s3_code}" if exc.s3_code else "")
    if isinstance(exc, BucketGone):
        log.warning(
            "op=upload key=%r%s %s: the bucket is gone (%s): kept at %s; create the bucket again and it is"
            " uploaded (retried in the background, or by the next mount with this cache folder;"
            " `s3files status` lists it)",
            key, what, fields, exc, where,
        )  # fmt: skip
    else:
        log.warning(
            "op=upload key=%r%s %s failed (%s); kept at %s, retried in the background", key, what, fields, exc, where
        )


class WriteConflict(S3FilesError):
    """Someone else changed the object since we read it; ours was kept beside it (or on local disk)."""

    errno = errno.EIO


def conflict_name(key: str, now: float) -> str:
    """A conflict copy's key: the time to the millisecond and 6 random hex digits, so neither two mounts
    nor two conflicts within one second pick the same name."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    return f"{key}.s3files-conflict-{stamp}-{secrets.token_hex(3)}"


def _without_token(metadata: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in metadata.items() if k != TOKEN}


class Uploader:
    """Publishes the copies of one mount's ``cache``. ``key_of`` maps a copy to its key now (names move)."""

    def __init__(
        self,
        store: ObjectStore,
        cache: LocalCache,
        spawn: Callable[..., object],
        key_of: Callable[[LocalCopy], str],
        on_published: Callable[[LocalCopy], None],
        wall: Callable[[], int] = time.time_ns,
    ) -> None:
        """``on_published``: called when a background retry published a copy (fs.py settles it)."""
        self.store = store
        self.cache = cache
        self.layout = cache.layout
        self.slots = cache.slots
        self._spawn = spawn
        self._key_of = key_of
        self._on_published = on_published
        self._wall = wall
        self.parts = PartSender(store, cache, spawn, key_of)
        self.retrying = 0  # copies waiting for a retry
        self.conflicts: list[str] = []  # conflict copies written by this mount (newest last, bounded)

    def metadata(self, copy: LocalCopy) -> dict[str, str]:
        return posix_metadata(copy.node)

    @asynccontextmanager
    async def held(self, copies: Iterable[LocalCopy]) -> AsyncIterator[None]:
        """No publish of ``copies`` is in flight or starts while the block runs (a rename or unlink moves
        their keys): waits for uploads in flight to land first. Taken in one order (the copies' ids), so
        two blocks holding overlapping sets cannot wait for each other."""
        async with AsyncExitStack() as stack:
            for copy in sorted(set(copies), key=lambda c: c.id):
                await stack.enter_async_context(copy.lock)
            yield

    # -- publishing -------------------------------------------------------------------------------------

    async def publish(
        self, copy: LocalCopy, retry_in: float = RETRY_FIRST, background: bool = False
    ) -> ObjectInfo | None:
        """Publish ``copy``'s current bytes if they differ from S3 (close, fsync, unmount, recovery).

        None when there was nothing to publish. On a failure to reach S3 the copy is ACKED: kept in the
        cache folder with its record, durably, retried in the background after ``retry_in`` seconds, and
        the error is raised. ``background`` (the write-back): only an ACKED copy is published (one written
        again since it was chosen is REWRITTEN: ``publish_acked`` sends its closed version)."""
        async with copy.lock:
            if background and copy.state is not WriteState.ACKED:
                return None
            if copy.state is WriteState.BROKEN or (copy.broken is not None and copy.state in PUBLISHABLE):
                raise CacheFull(f"not uploaded: a write to this file failed earlier ({copy.broken})")
            if copy.state not in PUBLISHABLE or copy.closed:
                return None
            key = self._key_of(copy)
            metadata = self.metadata(copy)
            copy.acknowledged = True
            copy.ack_metadata = metadata
            copy.move(WriteState.UPLOADING)
            superseded = self.cache.io.drop_acked(copy)  # a version kept aside: this acknowledgement replaces it
            generation = copy.generation
            try:
                info = await self._publish(copy, key, metadata, superseded)
            except WriteConflict:
                dropped = self.cache.io.drop_acked(copy)  # kept aside while we tried: written beside now
                copy.move(WriteState.CONFLICTED)
                if copy.kept:
                    self.cache.save(copy, durable=True)  # kept for the user, not to publish
                else:
                    self.cache.unrecord(copy)
                await self._forget(copy, dropped)
                raise
            except BaseException as exc:
                if copy.state is WriteState.UPLOADING and copy.acked is not None:
                    copy.move(WriteState.REWRITTEN)  # written during the upload: what it acknowledged is kept
                elif copy.state is WriteState.UPLOADING:
                    copy.move(WriteState.ACKED if copy.generation == generation else WriteState.DIRTY)
                if copy.state in WAITING and not isinstance(exc, CacheFull):
                    where = self.cache.keep_on_disk(copy)
                    if isinstance(exc, S3FilesError):
                        _log_kept(key, exc, where)
                        self._retry_later(copy, retry_in)
                raise
            if copy.state is WriteState.UPLOADING and copy.acked is not None:
                self.cache.io.rebase(copy, copy.acked, info.etag)  # written during the upload: DIRTY
            elif copy.state is WriteState.UPLOADING:  # (BROKEN: a later write failed; it stays unfit)
                copy.move(WriteState.CLEAN if copy.generation == generation else WriteState.DIRTY)
            if copy.state is WriteState.CLEAN:
                self.cache.unrecord(copy)
            return info

    async def publish_acked(self, copy: LocalCopy, retry_in: float = RETRY_FIRST) -> ObjectInfo | None:
        """Publish the acknowledged version a REWRITTEN copy keeps aside (the background retry, a stop,
        recovery), never its newer bytes. With the usual conditional rules: If-Match the base (the
        version kept aside was based on it), a conflict copy if the key changed meanwhile. Afterwards
        the copy is DIRTY: its newer bytes wait for a close or fsync. On a failure to reach S3 it stays
        REWRITTEN, kept durably and retried in the background, and the error is raised."""
        async with copy.lock:
            view = copy.acked
            if copy.state is not WriteState.REWRITTEN or view is None or copy.closed:
                return None
            key = self._key_of(copy)
            try:
                # Parts that will differ from the new base must be local before the old base goes.
                await self.cache.io.ensure(copy, key, sorted(self.cache.io.changed_since(copy, view)))
                try:
                    info = await self._write_acked(copy, view, key, key, standalone=False)
                except ObjectNotFound:
                    log.warning("op=upload key=%r was deleted outside this mount; writing it again", key)
                    info = await self._write_acked(copy, view, key, key, standalone=True)
            except PreconditionFailed:
                await self._acked_beside(copy, view, key)
            except BaseException as exc:
                if isinstance(exc, S3FilesError) and not isinstance(exc, CacheFull):
                    where = self.cache.keep_on_disk(copy)
                    _log_kept(key, exc, where, " (closed version)")
                    self._retry_later(copy, retry_in)
                raise
            self.cache.io.rebase(copy, view, info.etag)
            return info

    async def _acked_beside(self, copy: LocalCopy, view: AckedView, key: str) -> NoReturn:
        """Someone else's version won the key: the acknowledged version kept aside goes beside it, whole
        (its unchanged parts fetched from its base first; if that is gone too, it stays in the cache
        folder for the user). The newer bytes stay in the copy, DIRTY."""
        await self._drop_acked_upload(view)
        try:
            await self.cache.io.ensure(copy, key, range(self.layout.count(view.size)))
        except (PreconditionFailed, ObjectNotFound):
            where = self.cache.keep_on_disk(copy)
            copy.kept = True
            raise WriteConflict(
                f"{key} was changed by someone else; your closed version could not be merged and stays at {where}"
            ) from None
        for _ in range(CONFLICT_NAMES):
            beside = conflict_name(key, self._wall() / 1e9)
            try:
                await self._write_acked(copy, view, key, beside, standalone=True)
            except PreconditionFailed:
                continue
            break
        else:
            raise WriteConflict(f"{key} was changed by someone else; no free conflict name was found")
        self.conflicts = [*self.conflicts[-99:], beside]
        log.warning("op=upload key=%r changed outside this mount; kept theirs, ours is at key=%r", key, beside)
        self.cache.io.drop_acked(copy)
        copy.move(WriteState.DIRTY)  # the newer bytes: their next publish conflicts too (the base is gone)
        self.cache.save(copy, durable=True)
        self.cache.folder.side_path(view.side).unlink(missing_ok=True)
        raise WriteConflict(f"{key} was changed by someone else; your closed version was saved as {beside}")

    async def _write_acked(self, copy: LocalCopy, view: AckedView, key: str, to: str, standalone: bool) -> ObjectInfo:
        """One conditional write of the acknowledged version ``view`` to ``to`` (If-Match the base, or
        If-None-Match when ``standalone``: every part from the local bytes, none copied from the base).
        Its parts are read through the view (copyio.py ``read_acked``). A multipart upload left by an
        earlier attempt is aborted and a new one recorded, so a crash never orphans one."""
        size, metadata = view.size, {**view.metadata, TOKEN: secrets.token_hex(8)}
        if_match = None if standalone else copy.base_etag
        if_none_match = standalone or copy.base_etag is None
        if size <= self.layout.span(0)[1]:
            data = await self.cache.io.read_acked(copy, view, key, 0, size)
            try:
                return await self.store.put(to, data, metadata, if_match=if_match, if_none_match=if_none_match)
            except PreconditionFailed:
                return await self._ours_or_raise(to, metadata[TOKEN])
        await self._drop_acked_upload(view)
        upload_id = await self.store.create_multipart(to, metadata)
        upload = view.upload = Multipart(to, upload_id, metadata)
        self.cache.save(copy)  # a crash must not orphan it
        count = self.layout.count(size)
        done: list[CompletedPart | None] = [None] * count

        async def one(index: int) -> None:
            start, stop = self.layout.span(index)
            stop = min(stop, size)
            if not standalone and index not in view.changed and stop <= view.base_size and copy.base_etag:
                async with self.slots:
                    done[index] = await self.store.upload_part_copy(
                        to, upload_id, index + 1, key, start, stop, if_match=copy.base_etag
                    )
                return
            data = await self.cache.io.read_acked(copy, view, key, start, stop)
            async with self.slots:
                done[index] = await self.store.upload_part(to, upload_id, index + 1, data)

        await run_all(partial(one, index) for index in range(count))
        parts = [part for part in done if part is not None]
        try:
            info = await self.store.complete_multipart(
                to, upload_id, parts, if_match=if_match, if_none_match=if_none_match
            )
        except PreconditionFailed:
            info = await self._ours_or_raise(to, metadata[TOKEN])
        except UploadNotFound as exc:
            view.upload = None
            info = await self._ours_or_raise(to, metadata[TOKEN], exc)
        if view.upload is upload:
            view.upload = None
        return info

    async def drop_acked_upload(self, copy: LocalCopy) -> None:
        """Abort the multipart upload of the version ``copy`` keeps aside, if any (its key moved)."""
        if copy.acked is not None:
            await self._drop_acked_upload(copy.acked)

    async def _drop_acked_upload(self, view: AckedView) -> None:
        upload, view.upload = view.upload, None
        if upload is not None:
            await abort_quietly(self.store, upload.key, upload.upload_id)

    def _retry_later(self, copy: LocalCopy, delay: float) -> None:
        if copy.sending.retry_pending:
            return  # one retry per copy (a flush and the release after it both fail)
        copy.sending.retry_pending = True
        self.retrying += 1
        self._spawn(self._retry, copy, delay)

    async def _retry(self, copy: LocalCopy, delay: float) -> None:
        """One more attempt at an acknowledged copy's upload after ``delay`` (with jitter, so that many
        files do not all go at once); a failure schedules the next, twice as late (each task is one
        attempt: nothing loops forever)."""
        try:
            await trio.sleep(delay * (0.5 + secrets.randbelow(1000) / 1000))
        finally:
            self.retrying -= 1
            copy.sending.retry_pending = False
        if copy.closed or copy.state not in WAITING:
            return
        publish = self.publish if copy.state is WriteState.ACKED else self.publish_acked
        try:
            await publish(copy, retry_in=min(delay * 2, RETRY_MOST))
        except WriteConflict as exc:
            log.warning("op=upload (retry) %s", exc)
        except S3FilesError:
            return
        self._on_published(copy)

    async def forget_acked(self, copy: LocalCopy, view: AckedView | None) -> None:
        """A kept version a newer acknowledgement replaced (eventual mode's close, files.py): its side
        file and upload go, once the record no longer names it."""
        await self._forget(copy, view)

    async def _forget(self, copy: LocalCopy, view: AckedView | None) -> None:
        """A version kept aside that no record names any more: its side file and its upload go."""
        if view is not None:
            if view.extents:  # (an append-only kept version never made its side file)
                self.cache.folder.side_path(view.side).unlink(missing_ok=True)
            await self._drop_acked_upload(view)

    async def _publish(
        self, copy: LocalCopy, key: str, metadata: Mapping[str, str], superseded: AckedView | None
    ) -> ObjectInfo:
        await self.cache.io.settled(copy)
        if copy.broken is not None:  # a queued write failed to land: the copy is not what was written
            raise CacheFull(f"not uploaded: a write to this file failed ({copy.broken})")
        await self.parts.wait_for_sends(copy)
        self.cache.save(copy)  # UPLOADING, acknowledged, the parts sent: a crash from here is resumed
        await self._forget(copy, superseded)  # (the record above no longer names it)
        snapshot = dict(copy.changed)
        # Written since the acknowledgement (during the waits above): the acknowledged version is the one
        # kept aside, and its length is the one to publish, not the newer bytes' length.
        size = copy.acked.size if copy.acked is not None else copy.size()
        base_size = copy.base_size
        try:
            info = await self._write(copy, key, metadata, size)
        except PreconditionFailed:
            await self._keep_ours_beside(copy, key, metadata, size)
        except ObjectNotFound:
            # If-Match on a key someone deleted meanwhile. Judgement call: the writer's newer content
            # re-creates the file (what a local file system would show the writer).
            log.warning("op=upload key=%r was deleted outside this mount while open; writing it again", key)
            await self._standalone(copy, key)
            snapshot = dict(copy.changed)  # every part, sent now
            try:
                info = await self._write(copy, key, metadata, size)
            except PreconditionFailed:
                await self._keep_ours_beside(copy, key, metadata, size)
        if copy.acked is not None:
            return info  # written during the upload: the caller rebases the copy on what it published
        # Parts now local: fetched, written, or past the old end. Parts copied inside S3 stay holes.
        copy.present = {
            i
            for i in range(self.layout.count(size))
            if i in copy.present or i in snapshot or self.layout.span(i)[0] >= base_size
        }
        copy.base_etag, copy.base_size = info.etag, size
        for index, generation in snapshot.items():
            if copy.changed.get(index) == generation:
                del copy.changed[index]  # changed again meanwhile: stays changed for the next publish
        return info

    async def _keep_ours_beside(self, copy: LocalCopy, key: str, metadata: Mapping[str, str], size: int) -> NoReturn:
        await self._standalone(copy, key)
        for _ in range(CONFLICT_NAMES):
            beside = conflict_name(key, self._wall() / 1e9)
            try:
                await self._write(copy, beside, metadata, size)
            except PreconditionFailed:
                continue  # that name exists (and is not our own attempt): another one
            break
        else:
            raise WriteConflict(f"{key} was changed by someone else; no free conflict name was found")
        self.conflicts = [*self.conflicts[-99:], beside]
        log.warning("op=upload key=%r changed outside this mount; kept theirs, ours is at key=%r", key, beside)
        raise WriteConflict(f"{key} was changed by someone else; your version was saved as {beside}")

    async def _standalone(self, copy: LocalCopy, key: str) -> None:
        """Make the local copy whole (every base part fetched), for writing it where the base version
        cannot be copied from. Raises WriteConflict, keeping the local file, if the base is gone."""
        await self.parts.drop_upload(copy)
        count = self.layout.count(copy.size())
        try:
            await self.cache.io.ensure(copy, key, range(count))
        except (PreconditionFailed, ObjectNotFound):
            where = self.cache.keep_on_disk(copy)
            copy.kept = True
            log.error(
                "op=upload key=%r changed outside this mount and the parts we did not change are gone with "
                "the old version; kept theirs at the key, our changed parts stay at %s",
                key,
                where,
            )
            raise WriteConflict(
                f"{key} was changed by someone else; your changes could not be merged and stay at {where}"
            ) from None
        # Every part is sent now. No new generation: that would say the program wrote meanwhile, and the
        # publish would leave the copy DIRTY (waiting for an upload it already had). The multipart upload
        # whose sent parts a generation protects was dropped above.
        for index in range(count):
            copy.changed.setdefault(index, copy.generation)
        copy.base_etag, copy.base_size = None, 0  # nothing is copied from S3 any more

    async def _write(self, copy: LocalCopy, key: str, metadata: Mapping[str, str], size: int) -> ObjectInfo:
        """One conditional write of the copy to ``key`` (If-Match its base, If-None-Match without one).
        A refusal is checked with one HEAD: if the key holds this very publish (its reply was lost and
        the SDK's retry was refused), that is our success."""
        if_match = copy.base_etag
        if_none_match = copy.base_etag is None
        if size <= self.layout.span(0)[1]:
            await self.parts.drop_upload(copy)  # streamed, then truncated small again
            data = await self.cache.io.read_acked(copy, copy.acked, key, 0, size)  # what was acknowledged
            token = secrets.token_hex(8)
            try:
                return await self.store.put(
                    key, data, {**metadata, TOKEN: token}, if_match=if_match, if_none_match=if_none_match
                )
            except PreconditionFailed:
                return await self._ours_or_raise(key, token)
        upload = await self.parts.upload_for(copy, key)
        token = upload.metadata[TOKEN]
        # A failure to reach S3 leaves the upload and its parts in place (and in the record): the retry,
        # or the recovery after a crash, completes it without sending them again.
        try:
            parts = await self._parts(copy, key, upload, size)
        except UploadNotFound:
            if copy.sending.upload is upload:
                copy.sending.upload = None  # aborted meanwhile (a lifecycle rule?): the retry starts anew
            raise
        try:
            info = await self.store.complete_multipart(
                key, upload.upload_id, parts, if_match=if_match, if_none_match=if_none_match
            )
        except PreconditionFailed:
            info = await self._ours_or_raise(key, token)  # not ours: the conflict path aborts the upload
        except UploadNotFound as exc:
            if copy.sending.upload is upload:
                copy.sending.upload = None  # completed (by a lost first attempt?) or aborted: not reusable
            info = await self._ours_or_raise(key, token, exc)
        if copy.sending.upload is upload:
            copy.sending.upload = None
        if _without_token(metadata) != _without_token(upload.metadata):
            # Written on (a later mtime), or chmod, utime, after the upload was created with the metadata
            # of then: one server-side copy onto itself sets what the file has now (parts if over 5 GiB).
            info = await self._set_metadata(info, {**metadata, TOKEN: token})
        return info

    async def _set_metadata(self, info: ObjectInfo, metadata: Mapping[str, str]) -> ObjectInfo:
        """Rewrite the metadata of ``info``, just published (parts past 5 GiB). The data is in S3 already:
        if this fails, the publish stands with the metadata the upload was created with (a warning)."""
        key, size = info.key, info.size
        try:
            if size <= MAX_COPY_OBJECT:
                copied = await self.store.copy(key, key, metadata=metadata)
                return ObjectInfo(key, size, copied.etag, copied.last_modified, _without_token(metadata))
            etag = await copy_object(self.store, ObjectInfo(key, size, info.etag, 0.0), key, metadata=metadata)
            return ObjectInfo(key, size, etag, 0.0, _without_token(metadata))  # 0.0: LastModified not known
        except S3FilesError as exc:
            log.warning("op=upload key=%r uploaded; its metadata (mtime, mode) is the upload's earlier one: %s", key, exc)
            return info

    async def _ours_or_raise(self, key: str, token: str, error: StoreError | None = None) -> ObjectInfo:
        """After a refused write: the key's version if it is our own publish ``token``, else raise."""
        try:
            info = await self.store.head(key)
        except ObjectNotFound:
            info = None
        if info is not None and (info.metadata or {}).get(TOKEN) == token:
            log.info("op=upload key=%r: a retry was refused because our first attempt had landed", key)
            return info
        raise error if error is not None else PreconditionFailed(f"{key} changed")

    async def _parts(self, copy: LocalCopy, key: str, upload: Multipart, size: int) -> list[CompletedPart]:
        """Every part of the new object: reused if sent while writing, copied inside S3 if unchanged
        from the base version, otherwise uploaded from the local copy."""
        count = self.layout.count(size)
        done: list[CompletedPart | None] = [None] * count

        def untouched(index: int, view: AckedView) -> bool:
            """Part ``index`` was not written since ``view`` was kept aside (bytes read from the data file
            while such a write landed may be the newer ones: never reused then)."""
            return copy.changed.get(index, 0) == view.changed.get(index, 0)

        async def one(index: int) -> None:
            start, stop = self.layout.span(index)
            stop = min(stop, size)
            view = copy.acked  # written since the acknowledgement: its parts are read through what was kept
            changed, base_size = (view.changed, view.base_size) if view is not None else (copy.changed, copy.base_size)
            sent = upload.sent.get(index)
            fits = sent is not None and sent[:2] == (changed.get(index, 0), stop - start)
            if sent is not None and fits and (view is None or untouched(index, view)):
                done[index] = sent[2]
                return
            if index not in changed and stop <= base_size and copy.base_etag is not None:
                async with self.slots:
                    done[index] = await self.store.upload_part_copy(
                        key, upload.upload_id, index + 1, key, start, stop, if_match=copy.base_etag
                    )
                return
            await self.cache.io.ensure(copy, key, [index])
            if view is None:
                await self.parts.send(copy, upload, index)
                view = copy.acked
                if view is None or untouched(index, view):
                    done[index] = upload.sent[index][2]
                    return
                # written while it was read: sent again, through what was kept aside
            data = await self.cache.io.read_acked(copy, view, key, start, stop)
            async with self.slots:
                part = await self.store.upload_part(key, upload.upload_id, index + 1, data)
            upload.sent[index] = (view.changed.get(index, 0), stop - start, part)
            done[index] = part

        await run_all(partial(one, index) for index in range(count))
        return [part for part in done if part is not None]

    async def discard(self, copy: LocalCopy, keep_data: bool = False) -> None:
        """Stop everything in flight for ``copy`` and drop it from the cache (its data file too, unless
        ``keep_data``: kept after a stop, for recovery)."""
        copy.closed = True
        await self.cache.io.settled(copy)  # no queued write may touch the descriptor after it is closed
        await self.parts.wait_for_sends(copy)
        if not keep_data:
            await self.parts.drop_upload(copy)
        self.cache.drop(copy, keep_data=keep_data)

