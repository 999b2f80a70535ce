"""Folder times in folder markers: a folder's mtime and ctime, moved here by entries created, removed or
renamed in it, written to its marker object ``dir/`` a little later, so they outlive the inode and the mount.

Owns: which folders have times not written yet, when each is written, and the write itself. Must not
decide a folder's attributes (inodes.py) nor create a marker: a folder without one (implied by the keys
below it, or the mount's root) keeps these times in memory only, for as long as the mount knows it.

When: the first change after a write schedules one write ``MARKER_DELAY`` later, carrying the folder's
times as they are then; changes meanwhile only move the times in memory. So a folder costs at most one
marker PUT per ``MARKER_DELAY`` however many entries change in it (plus one at the stop, ``aclose``, for
what is still pending), and creating files one by one costs at most one more PUT per second than it
did. Why one second: it is the default ``--metadata-ttl``, the staleness other clients accept anyway, and
it bounds what a crash loses to a second of folder times (never data: the files carry their own).

How: one PUT of the empty marker with every ``x-amz-meta-*`` field the inode carries (mode, owner, times,
extended attributes), as ``chmod`` writes it, with If-Match on the marker's ETag as last seen or written
here. A marker deleted meanwhile (``rmdir`` elsewhere, or a folder removed by another tool) answers 404
or 412 and is never written again by this mount: S3 refuses to create an object on If-Match. A write
goes to the folder's name at the time of the write (a rename here moves the pending write with the inode),
and one that lost its name (rmdir, renamed over) is dropped. Writes run one at a time, and ``quiet``
lets rmdir and folder renames exclude them while they change the tree, so no write lands between a
rename's copy and its delete. A pending folder's inode is kept (``pending``: fs.forget pins it) so a
lookup after the kernel forgot it finds the times not written yet.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import trio

from s3files.core.inodes import ROOT_INO, Inode
from s3files.core.superblock import Superblock
from s3files.core.tasks import Spawn
from s3files.errors import ObjectNotFound, PreconditionFailed, S3FilesError
from s3files.store.base import ObjectStore

log = logging.getLogger(__name__)

MARKER_DELAY = 1.0  # seconds from a folder's first unwritten change to its marker write
MAX_ROUNDS = 100_000  # a bound on one writer task's loop; the next change starts another
STOP_TIMEOUT = 60  # seconds a stop spends writing pending markers before it gives up on them


class FolderMarkers:
    """The pending marker writes of one mount (see the module docstring). ``now``: the clock of the
    delays (the mount's monotonic clock; the writer sleeps on trio's, which runs at the same rate).
    ``enabled`` False (a read-only mount): nothing is ever written."""

    def __init__(
        self, store: ObjectStore, sb: Superblock, spawn: Spawn, now: Callable[[], float], enabled: bool = True
    ) -> None:
        self._store, self._sb, self._spawn, self._now = store, sb, spawn, now
        self._enabled = enabled
        self._pending: dict[int, tuple[Inode, float]] = {}  # ino -> (folder, when its write is due)
        self._lock = trio.Lock()  # held by one write at a time, and by the tree changes in ``quiet``
        self._running = False  # a writer task is waiting for the next due write
        self.writes = 0
        self.skipped = 0  # markers gone or changed elsewhere: not written

    def entries_changed(self, folder: Inode, now_ns: int) -> None:
        """An entry of ``folder`` was created, removed or renamed here at ``now_ns``: its mtime and
        ctime move now (Inode.entries_changed), and reach its marker within ``MARKER_DELAY``."""
        folder.entries_changed(now_ns)
        if not self._enabled or folder.marker_etag is None or folder.ino == ROOT_INO:
            return
        if folder.ino not in self._pending:
            self._pending[folder.ino] = (folder, self._now() + MARKER_DELAY)
        if not self._running:
            self._running = True
            self._spawn(self._write_when_due)

    def pending(self, ino: int) -> bool:
        """Whether folder ``ino`` has times not written yet (its inode must outlive the kernel's forget)."""
        return ino in self._pending

    def written(self, folder: Inode) -> None:
        """``folder``'s marker was just written with all its attributes (chmod, utime, setxattr)."""
        self._pending.pop(folder.ino, None)

    @contextlib.asynccontextmanager
    async def quiet(self) -> AsyncIterator[None]:
        """No marker write is in flight while the block runs (rmdir, folder rename); pending ones wait."""
        async with self._lock:
            yield

    async def _write_when_due(self) -> None:
        """Write each pending folder's marker when it is due; ends when none is pending."""
        try:
            for _ in range(MAX_ROUNDS):
                if not self._pending:
                    return
                wait = min(due for _, due in self._pending.values()) - self._now()
                if wait > 0:
                    await trio.sleep(wait)
                    continue
                now = self._now()
                for ino, (folder, due) in list(self._pending.items()):
                    if due <= now and self._pending.get(ino, (None, 0.0))[0] is folder:
                        del self._pending[ino]
                        await self._write(folder)
        finally:
            self._running = False

    async def flush(self) -> None:
        """Write every pending marker now (fs.publish_held: the held folder times join the held changes
        before those are made in S3)."""
        for _ in range(len(self._pending)):
            if not self._pending:
                break
            _, (folder, _) = self._pending.popitem()
            await self._write(folder)

    async def aclose(self) -> None:
        """At a stop: write every pending marker now (bounded in time); nothing is scheduled after."""
        self._enabled = False
        with trio.move_on_after(STOP_TIMEOUT) as scope:
            for _ in range(len(self._pending)):
                if not self._pending:
                    break
                _, (folder, _) = self._pending.popitem()
                await self._write(folder)
        if scope.cancelled_caught:
            log.warning("op=unmount: %d folder markers not written (their mtimes stay as before)", len(self._pending))
        self._pending.clear()

    async def _write(self, folder: Inode) -> None:
        """Write ``folder``'s marker with its attributes now, if it still has its name and its marker."""
        try:
            await self._put(folder)
        finally:
            if not self.pending(folder.ino):  # (changed again meanwhile: still pinned)
                self._sb.inodes.drop_if_forgotten(folder.ino)

    async def _put(self, folder: Inode) -> None:
        async with self._lock:
            if not self._sb.linked(folder) or folder.marker_etag is None:
                return  # removed or renamed over here: its marker went with it
            key = self._sb.ns.dir_prefix(folder.path)
            try:
                info = await self._store.put(key, b"", folder.stored_metadata(), if_match=folder.marker_etag)
            except (ObjectNotFound, PreconditionFailed) as exc:
                # Deleted (or replaced) by someone else: never re-create it, nor write over theirs.
                log.debug("op=marker key=%r not written: %s", key, exc)
                folder.marker_etag = None
                self.skipped += 1
                return
            except S3FilesError as exc:
                log.warning("op=marker key=%r not written (its times stay in memory): %s", key, exc)
                return
            folder.marker_etag = info.etag
            self._sb.learn(info)
            self._sb.listed_folder(folder)
            self.writes += 1

    def statistics(self) -> dict[str, int]:
        return {"markers_pending": len(self._pending), "marker_writes": self.writes}
