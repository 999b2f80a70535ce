"""A local copy of one file and what the cache keeps about it: the data classes the rooms share.

Owns: ``LocalCopy`` (bytes in memory or in the cache folder, which parts are local or changed, the write
state, the handles using it), the acknowledged version kept aside when an unpublished acknowledged copy
is written again (``AckedView``), the uploader's per-copy state (``Sending``, ``Multipart``), the cache's
sizes and limits, and turning a copy into its record (records.py). Behaviour lives in cache.py (the
table, budgets, clean copies), copyio.py (reading and writing a copy) and uploader.py (publishing).
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field

import trio

from s3files.core.inodes import Inode
from s3files.core.records import Record
from s3files.core.writestate import UNSENT, WriteState, advance
from s3files.errors import S3FilesError
from s3files.store.base import CompletedPart

SMALL_IO = 256 * 1024  # local reads and writes up to this size are done inline, without a worker thread
WRITE_BEHIND_BYTES = 4 * 1024 * 1024  # per file: writes acknowledged before they reach the local disk
DEFAULT_CLEAN_BYTES = 1024**3  # uploaded copies kept as a read cache when no --cache-size is given
MAX_CLEAN_FILES = 16384  # each clean copy holds a file descriptor: see clean_files_for()
SPILL_BYTES = 1024 * 1024  # a new file is staged in memory until it grows past this
MEMORY_BYTES = 64 * 1024 * 1024  # bytes all copies held in memory may use together (open and clean)


def clean_files_for(descriptor_limit: int) -> int:
    """How many clean copies to keep open: a quarter of the process's descriptors (the rest stay for
    files being written, sockets and the kernel's requests), within [64, MAX_CLEAN_FILES]."""
    return max(64, min(MAX_CLEAN_FILES, descriptor_limit // 4))


class CacheFull(S3FilesError):
    """The local cache's disk (or ``--cache-size``) is full: the write is refused, nothing is uploaded."""

    errno = errno.ENOSPC


@dataclass(eq=False)
class Multipart:
    """A multipart upload in progress at ``key``; the uploader owns it. ``sent``: index -> (generation,
    length, part)."""

    key: str
    upload_id: str
    metadata: dict[str, str]
    sent: dict[int, tuple[int, int, CompletedPart]] = field(default_factory=dict)


@dataclass(eq=False)
class Sending:
    """The uploader's state of one copy (only the uploader changes it)."""

    upload: Multipart | None = None
    in_flight: int = 0  # parts being sent in the background
    event: trio.Event = field(default_factory=trio.Event)
    lock: trio.Lock = field(default_factory=trio.Lock)  # one CreateMultipartUpload at a time
    retry_pending: bool = False  # a background retry is scheduled


@dataclass(eq=False)
class AckedView:
    """The acknowledged version of a REWRITTEN copy (writestate.py): what a close or fsync acknowledged,
    still unpublished, after the program changed the file again.

    Cheap for the common case, a program that appends and closes again and again: nothing is copied
    when a write lands at or past ``size``. Only bytes below ``size`` that a later write overwrites or a
    truncate cuts are first saved to a side file (``files/<id>-<random>.acked``, records.py), each at most once,
    as ``extents``. So the acknowledged bytes are: the data file overlaid with the saved extents, cut at
    ``size`` (copyio.py ``read_acked``). The parts not in ``changed`` and below ``base_size`` still equal
    the base version (``LocalCopy.base_etag``, which cannot move while the view exists: only a publish
    moves it) and are copied inside S3 as for any publish. ``low``: the smallest length the copy had
    since (bytes past it were cut, so they differ from the base even where not changed)."""

    size: int
    side: str  # the side file's name in the cache folder's files/ (records.py side_name)
    metadata: dict[str, str]  # the POSIX metadata the acknowledgement published with
    base_size: int
    changed: dict[int, int]  # part index -> generation, as at the acknowledgement
    low: int
    extents: list[tuple[int, int, int]] = field(default_factory=list)  # (offset, length, side offset)
    side_fd: int | None = None  # the side file, opened at the first saved extent
    side_size: int = 0
    upload: Multipart | None = None  # the multipart upload of this version under way (or left by a failure)

    def saved(self, off: int, end: int) -> list[tuple[int, int]]:
        """The ranges within ``[off, end)`` (cut at ``size``) not saved yet."""
        end = min(end, self.size)
        todo, pos = [], off
        for start, length, _ in self.extents:
            if start + length <= pos:
                continue
            if start >= end:
                break
            if start > pos:
                todo.append((pos, start))
            pos = max(pos, start + length)
        if pos < end:
            todo.append((pos, end))
        return todo


@dataclass(eq=False)
class LocalCopy:
    """The local copy of one file. ``base_etag`` None means: the key did not exist."""

    id: str
    path: os.PathLike[str] | None  # None: held in memory (an anonymous memfd), see SPILL_BYTES
    fd: int
    base_etag: str | None
    base_size: int
    node: Inode  # held: a copy must find its key even after the kernel forgot the inode
    state: WriteState = WriteState.CLEAN
    acknowledged: bool = False  # a close/fsync acknowledged the current bytes (kept in the record)
    handles: int = 0  # open handles reading or writing this copy: it lives until the last closes
    broken: str | None = None  # why a BROKEN copy is unfit (a write into it failed)
    closed: bool = False  # dropped: queued writes and background sends must not touch it
    kept: bool = False  # holds changes that could not be published anywhere: file and record stay
    recorded_ack: bool = False  # its record on disk says "acknowledged"
    ack_metadata: dict[str, str] | None = None  # the metadata the last acknowledgement published with
    acked: AckedView | None = None  # REWRITTEN: the acknowledged version kept aside
    changed: dict[int, int] = field(default_factory=dict)  # part index -> generation of its last change
    present: set[int] = field(default_factory=set)  # parts below base_size whose bytes are local
    fetching: dict[int, trio.Event] = field(default_factory=dict)
    sending: Sending = field(default_factory=Sending)
    lock: trio.Lock = field(default_factory=trio.Lock)  # one publish (or unlink, rename) at a time
    ack_lock: trio.Lock = field(default_factory=trio.Lock)  # reads of acknowledged bytes vs saving them aside
    generation: int = 0
    allocated: int = 0  # bytes of the cache disk (or memory) this copy holds
    length: int = 0  # the file's size: the local file catches up once pending writes are done
    last_write: trio.Event | None = None  # set when every write queued so far is on the local disk
    pending: int = 0  # bytes queued for the local disk, not written yet
    unsynced: bool = True  # its data file changed since it was last synced (cache.py ``save``)

    def size(self) -> int:
        return self.length

    @property
    def unsent(self) -> bool:
        """The copy holds bytes S3 does not have and may still publish them."""
        return self.state in UNSENT

    def move(self, new: WriteState) -> None:
        """Change the write state (writestate.py says which moves exist)."""
        self.state = advance(self.state, new)


def record_of(copy: LocalCopy, key: str, metadata: dict[str, str]) -> Record:
    """The record of ``copy`` (records.py), published to ``key`` with ``metadata``."""
    upload = copy.sending.upload
    sent = {}
    if upload is not None:
        sent = {
            str(i): [length, part.number, part.etag]
            for i, (gen, length, part) in upload.sent.items()
            if copy.changed.get(i, 0) == gen  # still the bytes that were sent
        }
    view = copy.acked
    acked = None
    if view is not None:
        acked = {
            "size": view.size,
            "side": view.side,
            "metadata": view.metadata,
            "base_size": view.base_size,
            "changed": sorted(view.changed),
            "low": view.low,
            "extents": [list(extent) for extent in view.extents],
            "upload_id": view.upload.upload_id if view.upload else None,
            "upload_key": view.upload.key if view.upload else None,
        }
    return Record(
        id=copy.id,
        key=key,
        base_etag=copy.base_etag,
        base_size=copy.base_size,
        size=copy.size(),
        state=copy.state.value,
        acknowledged=copy.acknowledged,
        metadata=metadata,
        changed=sorted(copy.changed),
        present=sorted(copy.present),
        upload_id=upload.upload_id if upload else None,
        upload_key=upload.key if upload else None,
        upload_metadata=upload.metadata if upload else None,
        sent=sent,
        acked=acked,
        updated=time.time(),
    )
