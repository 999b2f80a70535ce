"""Reading one open object: ranged GETs, with a growing read-ahead window for each sequential stream.

Owns: which byte ranges are fetched when, the parts in flight and in memory for one open file, and
cancelling them when the file is closed. Must not decide consistency (the caller pins the ETag).

How it works. The object is split into *parts* fetched by concurrent ranged GETs (``If-Match`` the ETag
the file was opened at, so a reader never mixes two versions). One open file may be read by several
sequential *streams* at once: threads sharing a descriptor, ``pread`` at several offsets, page faults of
a memory map. Each stream keeps its own position and window: a stream that keeps reading where it stopped
is sequential, and the window ahead of it grows first_part -> x16 -> ... -> max_window (1 -> 16 -> 64 MiB
by default) and is kept full with parts of up to part_size. The first part is small because time to first
byte is set by it; the next step is two parts at once, because on a network one connection carries ~100
MB/s and a single 8 MiB part would keep the reader waiting ~90 ms before the full window starts (a 16 MiB
file then arrives in one round trip after its first part, not two). A read that continues no stream is
random: it fetches exactly the bytes asked for, and starts a new stream there (up to ``MAX_STREAMS``; the
least recently used stream that no read waits on makes room). A stream's read-ahead stops where another
stream began or holds parts, so parts never overlap and no byte is fetched twice while it is held. A read
far ahead of where a stream reads next but inside its read-ahead is another reader (threads reading
slices: each one's first read lands in the read-ahead of the one before): it is split off as a stream of
its own with the parts from there on, so the first stream keeps the parts its reader is still reading.

Stragglers: the kernel sends reads slightly out of order, and a memory map's read-around may ask again
for pages it dropped, so a read may land where its stream no longer holds the part. Parts a stream drops
(and a random read's bytes) stay findable in ``_recent`` for such reads, up to ``RECENT_PARTS`` and only
within the memory the streams leave unused; a new part takes a recent part's buffer before allocating.

Readers never fail one another: a part a read waits on is never cancelled and its bytes never recycled
while it waits; dropping a stream (evicted, overtaken, a failed part) only forgets such parts, and their
fetch completes for the reads that wait. Only ``close`` cancels everything (the kernel sends no read on
a released file).

Memory: one stream holds at most its window ahead plus ``part_size`` behind its reader (the kernel may
deliver concurrent reads slightly out of order, so a part is dropped only once the reader is a part
beyond it). Streams share ``max_window``: with n streams reading ahead each window is at most
``max_window / n`` (but a part), and no stream starts another part of read-ahead while the file holds
``max_window`` plus three parts per stream holding any (what one stream can hold: the window, the part it
reads and one behind), at most ``2 * max_window``; a read's own bytes are always fetched. A consumed
part's buffer receives a later part (``into``) when nothing references it any more, because a fresh one
costs zeroing and page faults, about a fifth of the daemon's CPU per byte read. Spare buffers live in the
mount's ``PartBuffers``, shared by every reader, so the next file reuses them too (at most ``max_window +
part_size`` of them, dropped after ``IDLE_SECONDS`` unused).

Invariant: each stream's ``parts`` is sorted, contiguous and non-overlapping (two streams share a part only
where one was split off the other); between awaits only this
object mutates them (trio is single-threaded), so scheduling is done without awaiting.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from s3files.core.tasks import Spawn
from s3files.errors import S3FilesError, StoreError
from s3files.options import ReadOptions
from s3files.store.base import ObjectStore

log = logging.getLogger(__name__)


IDLE_SECONDS = 30.0  # spare part buffers unused this long are given back to the system
MAX_STREAMS = 8  # sequential streams remembered per open file (a position and a window each)
RECENT_PARTS = 8  # parts no stream holds any more, kept for stragglers while memory allows
WINDOW_GROWTH = 16  # a sequential stream's window grows by this factor (see the module docstring)


class PartBuffers:
    """Spare buffers of one part size, shared by a mount's readers.

    Why: a new 8 MiB buffer is zeroed and faults in 2,048 pages (in a VM, often the host's pages too);
    reused, it costs nothing. Readers of one file at a time (a data loader, a copy loop) would otherwise
    pay that for the first ``max_window`` of every file. Bounded by ``limit`` bytes, and emptied once
    nobody has taken or given a buffer for ``IDLE_SECONDS``, so an idle mount holds none.
    """

    def __init__(self, size: int, limit: int, spawn: Spawn) -> None:
        self.size = size
        self._most = max(limit // size, 1)
        self._free: list[bytearray] = []
        self._spawn = spawn
        self._last_use = 0.0
        self._trim_pending = False

    @property
    def held_bytes(self) -> int:
        return len(self._free) * self.size

    def take(self) -> bytearray | None:
        self._last_use = trio.current_time()
        return self._free.pop() if self._free else None

    def give(self, buffer: bytearray) -> None:
        self._last_use = trio.current_time()
        if len(buffer) != self.size or len(self._free) >= self._most:
            return
        self._free.append(buffer)
        if not self._trim_pending:
            self._trim_pending = True
            self._spawn(self._trim_when_idle)

    async def _trim_when_idle(self) -> None:
        """One check per call (a busy pool schedules the next one): no loop outlives its purpose."""
        await trio.sleep(IDLE_SECONDS)
        self._trim_pending = False
        if trio.current_time() - self._last_use >= IDLE_SECONDS:
            self._free.clear()
        elif self._free:
            self._trim_pending = True
            self._spawn(self._trim_when_idle)


@dataclass(eq=False)
class _Part:
    start: int
    end: int
    done: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    data: bytes | bytearray | None = None
    error: BaseException | None = None
    readers: int = 0  # reads waiting for or using this part: never cancelled or recycled meanwhile

    async def wait(self) -> bytes | bytearray:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.data is not None
        return self.data


@dataclass(eq=False)
class _Stream:
    """One sequential reader of an open file: where it reads next, its window, the parts it holds."""

    origin: int  # where it started: other streams' read-ahead stops here
    next: int  # where it reads next if it stays sequential
    window: int
    parts: list[_Part] = field(default_factory=list)
    streak: int = 0  # bytes read sequentially since the window last grew

    def covers(self, off: int) -> bool:
        return bool(self.parts) and self.parts[0].start <= off < self.parts[-1].end

    def waited(self) -> bool:
        return any(p.readers for p in self.parts)

    @property
    def held_bytes(self) -> int:
        return sum(p.end - p.start for p in self.parts)


class Reader:
    """Reads of one open object version. ``spawn`` runs background fetches on the mount's nursery."""

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        size: int,
        etag: str | None,
        opts: ReadOptions,
        spawn: Spawn,
        first: bytes | bytearray | None = None,
        buffers: PartBuffers | None = None,
    ) -> None:
        """``first``: the object's first bytes of version ``etag``, fetched already (at open);
        ``buffers``: the mount's spare part buffers (a reader of its own when None)."""
        self._store = store
        self._key = key
        self._size = size
        self._etag = etag
        self._opts = opts
        self._spawn = spawn
        self._streams: list[_Stream] = [_Stream(0, 0, opts.first_part)]  # least recently used first
        self._recent: list[_Part] = []  # dropped by their stream, least recently used first
        # How far ahead of where a stream reads next a read still continues it: the kernel's read-ahead
        # sends a reader's next read or two before the one it waits on (a page fault's read-around too).
        self._near = max(opts.first_part, 2 * opts.read_ahead_kb * 1024)
        self._closed = False
        self._buffers = buffers or PartBuffers(opts.part_size, 2 * opts.part_size, spawn)
        if first:
            part = _Part(0, min(len(first), size), data=first)
            part.done.set()
            self._streams[0].parts.append(part)

    # -- public ------------------------------------------------------------------------------------

    async def read(self, off: int, size: int) -> bytes | memoryview:
        if self._closed:
            raise StoreError("read on a closed file")
        end = min(off + size, self._size)
        if off >= end:
            return b""
        stream = self._stream_at(off)
        recent = self._recent_at(off, end) if stream is None else None
        if stream is not None:
            if off > stream.next + self._near:
                stream = self._split(stream, off)  # another reader, inside this one's read-ahead
            self._advance(stream, off, end)
            stream.next = max(stream.next, end)
            wanted = [p for p in stream.parts if p.start < end and p.end > off]
        elif recent is not None:
            wanted = recent  # a straggler: its bytes were dropped a moment ago and are still here
        else:
            self._start_stream(off, end)
            wanted = [self._start_part(off, end)]  # no stream holds a random read's bytes; a straggler may
        for p in wanted:
            p.readers += 1
        if stream is None and recent is None:
            self._keep_recent(wanted)
        try:
            chunks = [await p.wait() for p in wanted]
        except S3FilesError:
            if stream is not None:
                self._forget_failed(stream)  # so the next read asks S3 again instead of repeating the error
            raise
        finally:
            for p in wanted:
                p.readers -= 1
        if len(chunks) == 1:
            # The common case (a read inside one part): a view, not a copy. pyfuse3 replies from any
            # buffer, and the part stays alive as long as the view does.
            base = wanted[0].start
            return memoryview(chunks[0])[off - base : end - base]
        # A read across parts (an unaligned reader): join only the bytes asked for. Joining whole parts
        # first would copy up to two parts (16 MiB) for a 1 MiB read. Each part goes on from where the
        # one before ended (recent parts may overlap: a random read's and a stream's).
        views, pos = [], off
        for p, data in zip(wanted, chunks, strict=True):
            views.append(memoryview(data)[pos - p.start : min(end, p.end) - p.start])
            pos = min(end, p.end)
        return b"".join(views)

    def moved(self, key: str) -> None:
        """The object was renamed (server-side copied to ``key``): fetch from there from now on. The
        pinned ETag stays: if the copy has another ETag, reads of new bytes fail with ESTALE rather than
        trust that the copy holds the version this file was opened at."""
        self._key = key

    def close(self) -> None:
        """Cancel every fetch in flight and drop what is held."""
        self._closed = True
        parts = self._held_parts() + self._recent
        self._streams.clear()
        self._recent.clear()
        for part in parts:
            part.scope.cancel()  # also those a read waits on: no read comes after a release
            self._release(part)

    @property
    def held_bytes(self) -> int:
        """Bytes of parts fetched or being fetched: the streams' (a part two streams share counts once)
        and the recently dropped ones kept for stragglers."""
        return sum(p.end - p.start for p in self._held_parts() + self._recent)

    # -- internals ---------------------------------------------------------------------------------

    def _held_parts(self) -> list[_Part]:
        """Every part the streams hold, once each (a split leaves one part in two streams)."""
        return list({id(p): p for s in self._streams for p in s.parts}.values())

    def _stream_at(self, off: int) -> _Stream | None:
        """The stream this read continues: one holding ``off`` (its bytes are there or on their way),
        preferring one that reads next near ``off``, else one that reads next at ``off``. Most recently
        used first; the one found becomes the most recently used."""
        covering = [s for s in reversed(self._streams) if s.covers(off)]
        found = next((s for s in covering if s.next - self._near <= off <= s.next + self._near), None)
        if found is None and covering:
            found = covering[0]
        if found is None:
            found = next((s for s in reversed(self._streams) if s.next == off), None)
        if found is not None and found is not self._streams[-1]:
            self._streams.remove(found)
            self._streams.append(found)
        return found

    def _split(self, stream: _Stream, off: int) -> _Stream:
        """A read far ahead of where ``stream`` reads next, inside the parts it fetched ahead: another
        reader (threads reading slices of one file, the first read of each landing in the read-ahead of
        the one before). It gets a stream of its own with the parts from the one holding ``off`` on, and
        ``stream`` keeps the parts up to that one (both hold it). Moving ``stream`` there instead would
        drop the parts its own reader is still reading, which it would then fetch again."""
        at = next(i for i, p in enumerate(stream.parts) if p.start <= off < p.end)
        new = _Stream(off, off, stream.window, stream.parts[at:])
        stream.parts = stream.parts[: at + 1]
        self._streams.append(new)
        if len(self._streams) > MAX_STREAMS:
            idle = next((s for s in self._streams if s is not new and not s.waited()), None)
            if idle is not None:
                self._streams.remove(idle)
                self._drop(list(reversed(idle.parts)))
        return new

    def _recent_at(self, off: int, end: int) -> list[_Part] | None:
        """Recently dropped parts that hold all of ``off..end`` (none failed), or None."""
        found: list[_Part] = []
        cursor = off
        while cursor < end:
            part = next((p for p in self._recent if p.start <= cursor < p.end and p.error is None), None)
            if part is None or (part.data is None and part.done.is_set()):
                return None
            found.append(part)
            cursor = part.end
        for part in found:  # most recently used now
            self._recent.remove(part)
            self._recent.append(part)
        return found

    def _start_stream(self, off: int, end: int) -> None:
        """Remember a random read as a stream that may continue at ``end``. Room is made by dropping the
        least recently used stream that no read waits on; if every stream is waited on, nothing is
        remembered (the read is served all the same)."""
        if len(self._streams) >= MAX_STREAMS:
            idle = next((s for s in self._streams if not s.waited()), None)
            if idle is None:
                return
            self._streams.remove(idle)
            self._drop(list(reversed(idle.parts)))  # its nearest part is the last to leave the recent ones
        self._streams.append(_Stream(off, end, self._opts.first_part))

    def _advance(self, stream: _Stream, off: int, end: int) -> None:
        """Drop ``stream``'s parts well behind ``off``, grow its window, and schedule parts to fill it."""
        if not stream.covers(off):
            dropped, stream.parts = stream.parts, []
            self._drop(list(reversed(dropped)))  # behind the reader (it continues where they end) or forgotten
        keep_from = off - self._opts.part_size
        while stream.parts and stream.parts[0].end <= keep_from:
            self._drop([stream.parts.pop(0)])  # consumed; its bytes are in the kernel's page cache now
        # Streams share the window; a stream that read all it holds (its reader stopped) is not reading ahead.
        ahead = sum(1 for s in self._streams if s is stream or (s.parts and s.parts[-1].end > s.next))
        holding = sum(1 for s in self._streams if s is stream or s.parts)
        window = min(stream.window, max(self._opts.max_window // ahead, self._opts.part_size))
        budget = self._opts.max_window + min(3 * self._opts.part_size * holding, self._opts.max_window)
        cursor = stream.parts[-1].end if stream.parts else off
        stop = max(min(self._size, self._boundary(stream, cursor)), end)
        target = min(max(end, off + window), stop)
        held = sum(p.end - p.start for p in self._held_parts())  # the recent parts give way
        while cursor < target and (cursor < end or held + min(self._opts.part_size, window) <= budget):
            step = min(self._opts.part_size, window)
            part = self._start_part(cursor, min(cursor + step, stop))
            stream.parts.append(part)
            held += part.end - part.start
            cursor = part.end
        # Grow only after scheduling, so a new streak starts with one small part (time to first byte).
        stream.streak += end - off
        if stream.streak >= stream.window and stream.window < self._opts.max_window:
            stream.window = min(stream.window * WINDOW_GROWTH, self._opts.max_window)
            stream.streak = 0
        self._trim_recent()

    def _boundary(self, stream: _Stream, cursor: int) -> int:
        """Where ``stream``'s read-ahead from ``cursor`` must stop, so that no two streams fetch the same
        bytes. Another stream's stretch runs from where it began to where it reads next or its parts end.
        Coming up from below, ``stream`` stops where that stretch begins, and inside it reads ahead no
        further than its own reads (those bytes were the other's to fetch: threads reading a file in
        slices). A stream that began inside another's stretch (a reader that went back) reads ahead up
        to the other's parts, which then serve it."""
        stop = self._size
        for other in self._streams:
            if other is stream:
                continue
            end = max(other.next, other.parts[-1].end if other.parts else 0)
            if cursor < other.origin:
                stop = min(stop, other.origin)
            elif cursor < end or (cursor == end and stream.origin < other.origin):
                # (at ``end`` exactly: the other reads next there, e.g. it was split off this one)
                if stream.origin < other.origin:
                    return cursor
                if other.parts:
                    if cursor >= other.parts[0].start:
                        return cursor
                    stop = min(stop, other.parts[0].start)
        return stop

    def _forget_failed(self, stream: _Stream) -> None:
        """Drop ``stream``'s parts from its first failed one on (they stay contiguous)."""
        failed = next((i for i, p in enumerate(stream.parts) if p.error is not None), None)
        if failed is not None:
            dropped, stream.parts = stream.parts[failed:], stream.parts[:failed]
            self._drop(dropped)

    def _drop(self, parts: list[_Part]) -> None:
        """A stream no longer holds ``parts``: keep them a while for stragglers (a read the kernel sends
        late, a reader just behind a stream that moved on), most recently dropped last. A part another
        stream still holds stays with it."""
        held = {id(p) for s in self._streams for p in s.parts}
        self._keep_recent([p for p in parts if id(p) not in held])

    def _keep_recent(self, parts: list[_Part]) -> None:
        for part in parts:
            if part in self._recent:
                self._recent.remove(part)
            if part.error is None:
                self._recent.append(part)
            else:
                self._release(part)
        self._trim_recent()

    def _trim_recent(self) -> None:
        """Release the least recently used of the recent parts beyond ``RECENT_PARTS``, or beyond the
        memory the streams leave free: what the file may hold (``_advance``'s budget) less a part, which
        for one sequential reader with a full window is nothing, so it holds what it held before."""
        holding = sum(1 for s in self._streams if s.parts)
        budget = self._opts.max_window + min(3 * self._opts.part_size * max(holding, 1), self._opts.max_window)
        free = budget - self._opts.part_size - sum(p.end - p.start for p in self._held_parts())
        kept = sum(p.end - p.start for p in self._recent)
        while self._recent and (len(self._recent) > RECENT_PARTS or kept > free):
            part = self._recent.pop(0)
            kept -= part.end - part.start
            self._release(part)

    def _release(self, part: _Part) -> None:
        """Forget ``part``: cancel its fetch unless a read waits on it, and give its buffer to the
        spares if nothing else can still see it; a part a read waits on or uses is left to that read."""
        if part.readers:
            return
        part.scope.cancel()
        data, part.data = part.data, None
        if isinstance(data, bytearray) and sys.getrefcount(data) == 2:  # ``data`` and the argument
            self._buffers.give(data)

    def _buffer(self) -> bytearray | None:
        """A spare part buffer: from the mount's spares, else the least recently used recent part's
        (a new buffer costs zeroing and page faults; a straggler for that part is unlikely by now)."""
        buffer = self._buffers.take()
        while buffer is None:
            part = next((p for p in self._recent if self._recyclable(p)), None)
            if part is None:
                return None
            self._recent.remove(part)
            self._release(part)
            buffer = self._buffers.take()
        return buffer

    def _recyclable(self, part: _Part) -> bool:
        """Whether ``part``'s buffer would go to the spares if released: no read uses it and no view of
        it is out (a reply pyfuse3 has not sent yet)."""
        data = part.data
        return (
            not part.readers
            and isinstance(data, bytearray)
            and len(data) == self._buffers.size
            and sys.getrefcount(data) == 3  # ``part.data``, ``data`` and the argument
        )

    def _start_part(self, start: int, end: int) -> _Part:
        part = _Part(start, end)
        into = self._buffer() if end - start == self._buffers.size else None

        async def fetch() -> None:
            with part.scope:
                try:
                    part.data = await self._store.get_range(
                        self._key, start, end, if_match=self._etag, into=into
                    )
                    if len(part.data) != end - start:
                        raise StoreError(
                            f"short read of {self._key}: {len(part.data)} bytes for range {start}-{end}"
                        )
                except S3FilesError as exc:
                    part.error = exc
                except Exception as exc:
                    log.warning("op=get key=%s range=%d-%d failed: %r", self._key, start, end, exc)
                    part.error = StoreError(f"reading {self._key} failed: {exc!r}")
            if part.data is None and part.error is None:
                part.error = StoreError(f"read of {self._key} was cancelled")
            part.done.set()

        self._spawn(fetch)
        return part


class SharedReaders:
    """The mount's readers, one per version being read: handles open on the same version (inode and
    ETag) share one ``Reader``, so K programs reading one file fetch each part once, as one program
    would, and its streams keep each handle's position. The reader ends when its last handle closes. A
    file of no known version (``etag`` None: created here) is never shared; a new version gets a reader of
    its own, so no handle ever reads another version's parts."""

    def __init__(self) -> None:
        self._open: dict[tuple[int, str], tuple[Reader, list[int]]] = {}

    def reading(self, ino: int, etag: str | None) -> bool:
        """Whether a handle already reads version ``etag`` of inode ``ino`` (its first part is there or on
        its way: an open need not fetch it again)."""
        return etag is not None and (ino, etag) in self._open

    def open(self, ino: int, etag: str | None, make: Callable[[], Reader]) -> SharedReader:
        if etag is None:
            return SharedReader(make(), lambda: True)
        version = (ino, etag)
        if version not in self._open:
            self._open[version] = (make(), [0])
        reader, users = self._open[version]
        users[0] += 1

        def release() -> bool:
            users[0] -= 1
            if users[0] > 0:
                return False
            if self._open.get(version, (None,))[0] is reader:
                del self._open[version]
            return True

        return SharedReader(reader, release)


class SharedReader:
    """One handle's use of a ``Reader`` it may share (``SharedReaders``): closing it closes the reader
    only when no other handle uses it (a reader's close cancels every fetch, also those others wait on)."""

    def __init__(self, reader: Reader, release: Callable[[], bool]) -> None:
        self.reader = reader
        self._release = release
        self._closed = False

    async def read(self, off: int, size: int) -> bytes | memoryview:
        if self._closed:
            raise StoreError("read on a closed file")
        return await self.reader.read(off, size)

    def moved(self, key: str) -> None:
        self.reader.moved(key)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._release():
                self.reader.close()
