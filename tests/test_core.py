"""Unit tests of the core (no FUSE, no network): results and request budgets against the in-memory store."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import random
import stat
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from s3files.core.fs import FileSystem
from s3files.core.inodes import ROOT_INO
from s3files.core.reader import IDLE_SECONDS
from s3files.core.records import CacheFolder
from s3files.errors import S3FilesError
from s3files.options import MIB, MountOptions, ReadOptions, Source
from s3files.store import MemoryStore
from s3files.store.base import ListPage, ObjectInfo, ObjectStore


def run_fs(
    store: MemoryStore,
    body: Callable[[FileSystem], Awaitable[None]],
    prefix: str = "",
    now: Callable[[], float] | None = None,
    staging: CacheFolder | None = None,
    clock: trio.abc.Clock | None = None,
    **kw: object,
) -> None:
    """Run ``body`` on a FileSystem over ``store``; ``staging``: a cache folder the caller opened (one
    that outlives the mount, for what a remount finds), else a temporary one; ``clock``: trio's clock (a
    MockClock makes background sleeps follow it)."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            opts = MountOptions(source=Source("bucket", prefix), mountpoint=Path("/unused"), **kw)  # type: ignore[arg-type]
            with tempfile.TemporaryDirectory() as tmp:
                clock = {"now": now} if now is not None else {}
                folder = staging if staging is not None else Path(tmp)
                fs = FileSystem(store, opts, spawn=nursery.start_soon, staging=folder, **clock)
                await body(fs)
                await fs.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=clock)


def spy_gets(store: ObjectStore, seen: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """Record (start, end) of every ranged GET the store serves (the open's GET of the first bytes too),
    in ``seen`` when given."""
    seen = [] if seen is None else seen
    real, real_first = store.get_range, store.get_first

    async def recording(
        key: str, start: int, end: int, if_match: str | None = None, into: bytearray | None = None
    ) -> bytes | bytearray:
        seen.append((start, end))
        return await real(key, start, end, if_match, into)

    async def recording_first(key: str, nbytes: int) -> tuple[ObjectInfo, bytes | bytearray]:
        info, data = await real_first(key, nbytes)
        seen.append((0, len(data)))
        return info, data

    store.get_range = recording  # type: ignore[method-assign]
    store.get_first = recording_first  # type: ignore[method-assign]
    return seen


async def resolve(fs: FileSystem, path: str) -> int:
    ino = ROOT_INO
    for part in path.split("/"):
        ino = (await fs.lookup(ino, part)).ino
    return ino


async def read_all(fs: FileSystem, ino: int, chunk: int = MIB) -> bytes:
    opened = await fs.open(ino, os.O_RDONLY)
    out = []
    off = 0
    for _ in range(100_000):
        data = await fs.read(opened.fh, off, chunk)
        if not data:
            break
        out.append(data)
        off += len(data)
    await fs.release(opened.fh)
    return b"".join(out)


def test_listing_2500_entries_costs_3_lists_and_no_head() -> None:
    store = MemoryStore()
    for i in range(2500):
        store.seed(f"big/f{i:05d}", b"x" * (i % 7))

    async def body(fs: FileSystem) -> None:
        dir_ino = await resolve(fs, "big")
        store.requests.reset()
        fh = await fs.opendir(dir_ino)
        entries = await fs.readdir(fh, 0)
        assert len(entries) == 2500
        assert [e[0] for e in entries[:2]] == ["f00000", "f00001"]
        assert entries[6][1].size == 6
        assert store.requests.snapshot() == {"list": 3}
        # the kernel's lookups of listed names (stat after ls) cost nothing
        for name in ("f00000", "f01234", "f02499"):
            attr = await fs.lookup(dir_ino, name)
            assert attr.size == int(name[1:]) % 7
            assert (await fs.getattr(attr.ino)).size == attr.size
        with pytest.raises(S3FilesError) as missing:
            await fs.lookup(dir_ino, "nope")
        assert missing.value.errno == errno.ENOENT
        assert store.requests.snapshot() == {"list": 3}
        # paging from an offset returns the rest, stable positions
        rest = await fs.readdir(fh, 2498)
        assert [e[0] for e in rest] == ["f02498", "f02499"]
        fs.releasedir(fh)

    run_fs(store, body, metadata_ttl=60.0, listing_attributes="fast")  # the cheap path: no HEAD per file


def test_lookup_without_listing_uses_head_and_one_key_list() -> None:
    store = MemoryStore()
    store.seed("d/file", b"abc", {"mode": str(stat.S_IFREG | 0o600), "uid": "12", "gid": "34", "mtime": "1000.25"})
    store.seed("d/sub/x", b"")

    async def body(fs: FileSystem) -> None:
        d = await fs.lookup(ROOT_INO, "d")
        assert stat.S_ISDIR(d.mode)
        store.requests.reset()
        f = await fs.lookup(d.ino, "file")
        assert store.requests.snapshot() == {"head": 1, "list": 1}
        assert (f.size, stat.S_IMODE(f.mode), f.uid, f.gid, f.mtime_ns) == (3, 0o600, 12, 34, 1_000_250_000_000)
        assert stat.S_ISREG(f.mode)
        sub = await fs.lookup(d.ino, "sub")
        assert stat.S_ISDIR(sub.mode)

    run_fs(store, body, metadata_ttl=0.0)


def test_awkward_keys_hidden_and_folder_shadows_file() -> None:
    store = MemoryStore()
    for key in ["a//b", "./x", "../y", "ok/..", "ok/.", "n" * 256, "m" * 255, "dup", "dup/inner", "ok/fine"]:
        store.seed(key, b"1")
    store.seed("empty/", b"")

    async def body(fs: FileSystem) -> None:
        fh = await fs.opendir(ROOT_INO)
        names = {name: attr for name, attr, _ in await fs.readdir(fh, 0)}
        assert set(names) == {"a", "dup", "empty", "m" * 255, "ok"}
        assert stat.S_ISDIR(names["dup"].mode)  # the folder wins
        assert stat.S_ISDIR(names["empty"].mode)
        ok = await fs.lookup(ROOT_INO, "ok")
        fh2 = await fs.opendir(ok.ino)
        assert [n for n, _, _ in await fs.readdir(fh2, 0)] == ["fine"]
        a = await fs.lookup(ROOT_INO, "a")
        fh3 = await fs.opendir(a.ino)
        assert await fs.readdir(fh3, 0) == []
        empty = await fs.lookup(ROOT_INO, "empty")
        assert await fs.readdir(await fs.opendir(empty.ino), 0) == []

    run_fs(store, body)


def test_prefix_mount_sees_only_its_prefix() -> None:
    store = MemoryStore()
    store.seed("outside", b"no")
    store.seed("team/data/x.csv", b"1,2")
    store.seed("team/top.txt", b"top")

    async def body(fs: FileSystem) -> None:
        names = [n for n, _, _ in await fs.readdir(await fs.opendir(ROOT_INO), 0)]
        assert names == ["data", "top.txt"]
        assert await read_all(fs, await resolve(fs, "data/x.csv")) == b"1,2"

    run_fs(store, body, prefix="team/")


def test_sequential_read_no_overlapping_gets_and_growing_window() -> None:
    store = MemoryStore()
    data = random.Random(1).randbytes(64 * MIB + 12345)
    store.seed("big", data)
    ranges = spy_gets(store)

    async def body(fs: FileSystem) -> None:
        got = await read_all(fs, await resolve(fs, "big"))
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        spans = sorted(ranges)
        for (s1, e1), (s2, e2) in itertools.pairwise(spans):
            assert e1 <= s2, f"overlapping GETs {s1}-{e1} and {s2}-{e2}"
        assert sum(e - s for s, e in spans) == len(data)  # every byte fetched exactly once
        assert spans[0] == (0, MIB)  # small first part: time to first byte
        assert max(e - s for s, e in spans) == 8 * MIB
        assert len(spans) <= 12

    run_fs(store, body)


class SlowStore(MemoryStore):
    """A ranged GET takes a moment, so that concurrent readers overlap as they do against S3."""

    async def get_range(
        self, key: str, start: int, end: int, if_match: str | None = None, into: bytearray | None = None
    ) -> bytes | bytearray:
        await trio.sleep(0.002)
        return await super().get_range(key, start, end, if_match, into)


@pytest.mark.parametrize("streams", [2, 4])
def test_interleaved_streams_of_one_handle_each_get_read_ahead_and_fetch_each_byte_once(streams: int) -> None:
    """Readers of slices of one open file, at once (threads on one descriptor): none fails another (the old
    reader cancelled the parts one was waiting for), each has read-ahead, no byte is fetched twice, and
    what the file holds stays within 64 MiB plus three parts per stream (at most 128 MiB)."""
    store = SlowStore()
    data = random.Random(streams).randbytes(32 * MIB)
    store.seed("big", data)
    ranges = spy_gets(store)
    share = len(data) // streams
    peak = 0

    async def body(fs: FileSystem) -> None:
        opened = await fs.open(await resolve(fs, "big"), os.O_RDONLY)
        got: dict[int, list[bytes]] = {i: [] for i in range(streams)}

        async def stream(i: int) -> None:
            nonlocal peak
            for off in range(i * share, (i + 1) * share, MIB):
                got[i].append(bytes(await fs.read(opened.fh, off, MIB)))
                peak = max(peak, int(fs.statistics()["held_read_bytes"]))  # type: ignore[call-overload]

        async with trio.open_nursery() as nursery:
            for i in range(streams):
                nursery.start_soon(stream, i)
        assert b"".join(b"".join(got[i]) for i in range(streams)) == data
        await fs.release(opened.fh)

    run_fs(store, body)
    spans = sorted(ranges)
    for (s1, e1), (s2, e2) in itertools.pairwise(spans):
        assert e1 <= s2, f"overlapping GETs {s1}-{e1} and {s2}-{e2}"
    assert sum(e - s for s, e in spans) == len(data)
    assert len(spans) <= 5 * streams + 2, spans  # one GET per 1 MiB read would be 32
    assert peak <= 64 * MIB + min(3 * 8 * MIB * streams, 64 * MIB)


async def _read_in_turns(fs: FileSystem, fh: int, turns: list[int], share: int) -> dict[int, bytes]:
    """Slice i of a file (``share`` bytes from i * share) is read in 1 MiB reads by reader i; ``turns``
    says which reader reads next, each read awaited before the next one starts (as the kernel may send
    the reads of threads sharing one descriptor)."""
    at = {i: i * share for i in set(turns)}
    got: dict[int, list[bytes]] = {i: [] for i in at}
    for i in turns:
        got[i].append(bytes(await fs.read(fh, at[i], MIB)))
        at[i] += MIB
    return {i: b"".join(chunks) for i, chunks in got.items()}


def test_readers_starting_inside_anothers_read_ahead_fetch_each_byte_once() -> None:
    """Four threads read slices of one descriptor; the first reads 3 MiB before the others start, so
    their first reads land inside its read-ahead. Each becomes a stream of its own: the first keeps the
    parts it reads. (The reader once moved the first stream to each newcomer's offset and dropped the
    parts behind it, which its own thread then fetched again: 70 MiB fetched for 48 in a CI run.)"""
    store = MemoryStore()
    data = random.Random(20).randbytes(48 * MIB)
    store.seed("big", data)
    ranges = spy_gets(store)
    share = len(data) // 4
    turns = [0, 0, 0, 1, 2, 3] + [0, 1, 2, 3] * 9 + [1, 2, 3] * 2

    async def body(fs: FileSystem) -> None:
        opened = await fs.open(await resolve(fs, "big"), os.O_RDONLY)
        got = await _read_in_turns(fs, opened.fh, turns, share)
        assert [got[i] for i in range(4)] == [data[i * share : (i + 1) * share] for i in range(4)]
        await fs.release(opened.fh)

    run_fs(store, body)
    spans = sorted(ranges)
    for (s1, e1), (s2, e2) in itertools.pairwise(spans):
        assert e1 <= s2, f"overlapping GETs {s1}-{e1} and {s2}-{e2}"
    assert sum(e - s for s, e in spans) == len(data)
    assert len(spans) <= 10, spans  # the first part, then parts of 8 MiB but where a stream begins


def test_a_late_read_behind_a_stream_is_served_by_the_part_it_dropped() -> None:
    """A read the kernel sends late (a memory map's read-around asking again for pages it dropped, a
    thread that fell behind) lands more than a part behind its stream, where the stream no longer holds
    the part: the dropped part is kept a while (within the file's memory budget) and serves it."""
    store = MemoryStore()
    data = random.Random(21).randbytes(48 * MIB)
    store.seed("big", data)
    ranges = spy_gets(store)
    share = len(data) // 2

    async def body(fs: FileSystem) -> None:
        opened = await fs.open(await resolve(fs, "big"), os.O_RDONLY)
        got = await _read_in_turns(fs, opened.fh, [0, 1] * 20, share)
        assert got == {0: data[: 20 * MIB], 1: data[share : share + 20 * MIB]}
        fetched = len(ranges)
        for off in (0, 5 * MIB, share + 3 * MIB, share + 10 * MIB):  # 20 to 10 MiB behind each stream
            assert await fs.read(opened.fh, off, MIB) == data[off : off + MIB]
        assert len(ranges) == fetched, sorted(ranges)[fetched:]
        await fs.release(opened.fh)
        assert fs.statistics()["held_read_bytes"] == 0

    run_fs(store, body)


def test_random_reads_fetch_only_what_is_asked() -> None:
    store = MemoryStore()
    data = random.Random(2).randbytes(32 * MIB)
    store.seed("big", data)
    ranges = spy_gets(store)

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "big")
        opened = await fs.open(ino, os.O_RDONLY)
        ranges.clear()
        rng = random.Random(3)
        offsets = [rng.randrange(0, len(data) - 4096) for _ in range(50)]
        store.requests.reset()
        for off in offsets:
            assert await fs.read(opened.fh, off, 4096) == data[off : off + 4096]
        # One GET of exactly its bytes each, but the 13th read (at 431 KiB): it falls in the first part
        # the open fetched, kept for stragglers after the random reads' streams pushed out the one
        # holding it (the 40th, also in it, comes after 8 more parts were dropped: fetched again).
        assert [off for off in offsets if off < MIB] == [offsets[12], offsets[39]]
        assert store.requests["get"] == 49
        assert sorted(ranges) == sorted((off, off + 4096) for i, off in enumerate(offsets) if i != 12)
        # unaligned partial reads and reads past the end
        assert await fs.read(opened.fh, len(data) - 5, 100) == data[-5:]
        assert await fs.read(opened.fh, len(data) + 10, 100) == b""
        await fs.release(opened.fh)

    run_fs(store, body)


def test_unaligned_sequential_reads_across_parts_return_exactly_their_bytes() -> None:
    """A reader that starts with 64 KiB and goes on in 1 MiB reads straddles a part boundary every part;
    a read bigger than a part straddles several. Each returns exactly its bytes, as bytes of its size."""
    store = MemoryStore()
    data = random.Random(12).randbytes(40 * MIB + 333)
    store.seed("big", data)

    async def body(fs: FileSystem) -> None:
        opened = await fs.open(await resolve(fs, "big"), os.O_RDONLY)
        off, size = 0, 64 * 1024
        while off < len(data):
            got = await fs.read(opened.fh, off, size)
            assert bytes(got) == data[off : off + size], off
            off += len(got)
            size = MIB if off < 20 * MIB else 3 * MIB + 7  # later reads span up to four 1 MiB parts
        await fs.release(opened.fh)

    run_fs(store, body, read=ReadOptions(first_part=256 * 1024, part_size=MIB, max_window=8 * MIB))


def test_reader_memory_is_bounded_by_the_window() -> None:
    store = MemoryStore()
    store.seed("big", bytes(200 * MIB))
    peak = 0

    async def body(fs: FileSystem) -> None:
        nonlocal peak
        opened = await fs.open(await resolve(fs, "big"), os.O_RDONLY)
        for i in range(200):
            await fs.read(opened.fh, i * MIB, MIB)
            peak = max(peak, int(fs.statistics()["held_read_bytes"]))  # type: ignore[call-overload]
        await fs.release(opened.fh)
        assert fs.statistics()["held_read_bytes"] == 0

    run_fs(store, body, read=ReadOptions())
    assert 0 < peak <= 64 * MIB + 2 * 8 * MIB


class RecyclingStore(MemoryStore):
    """Fills the spare buffer a reader offers (``into``), as the S3 store's direct GETs do."""

    def __init__(self) -> None:
        super().__init__()
        self.offered = 0
        self.fresh = 0  # part-size GETs that had to allocate a buffer

    async def get_range(
        self, key: str, start: int, end: int, if_match: str | None = None, into: bytearray | None = None
    ) -> bytes | bytearray:
        data = await super().get_range(key, start, end, if_match)
        if into is None:
            self.fresh += end - start == 8 * MIB
            return bytearray(data)
        self.offered += 1
        into[:] = data
        return into


def test_reader_recycles_part_buffers_only_when_nothing_sees_them() -> None:
    """A sequential reader refills consumed parts' buffers, but never one a reply still holds: a view
    kept from an early part must keep its bytes while 190 MiB more are read through recycled buffers."""
    store = RecyclingStore()
    data = os.urandom(200 * MIB)
    store.seed("big", data)

    async def body(fs: FileSystem) -> None:
        opened = await fs.open(await resolve(fs, "big"), os.O_RDONLY)
        held = None
        for off in range(0, len(data), MIB):
            got = await fs.read(opened.fh, off, MIB)
            assert got == data[off : off + MIB]
            if off == 8 * MIB:
                held = got  # a view into a part of the read-ahead (8 MiB parts from 2 MiB on)
        assert isinstance(held, memoryview) and bytes(held) == data[8 * MIB : 9 * MIB]
        await fs.release(opened.fh)

    run_fs(store, body, read=ReadOptions())
    # Parts scheduled once the first ones were consumed (from about 66 MiB on) reuse their buffers.
    assert store.offered >= 12


def test_spare_part_buffers_serve_the_next_file_and_are_given_back_when_idle() -> None:
    """Buffers a reader leaves behind serve the next file's parts (it allocates none of part size), and a
    mount idle for IDLE_SECONDS holds none."""
    store = RecyclingStore()
    data = os.urandom(40 * MIB)
    store.seed("a", data)
    store.seed("b", data)
    spare: list[int] = []

    async def read_all(fs: FileSystem, name: str) -> None:
        opened = await fs.open(await resolve(fs, name), os.O_RDONLY)
        for off in range(0, len(data), MIB):
            assert await fs.read(opened.fh, off, MIB) == data[off : off + MIB]
        await fs.release(opened.fh)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            opts = MountOptions(source=Source("bucket", ""), mountpoint=Path("/unused"))
            with tempfile.TemporaryDirectory() as staging:
                fs = FileSystem(store, opts, spawn=nursery.start_soon, staging=Path(staging))
                await read_all(fs, "a")
                fresh_for_a, offered_for_a = store.fresh, store.offered
                spare.append(int(fs.statistics()["spare_read_bytes"]))  # type: ignore[call-overload]
                await read_all(fs, "b")
                assert store.fresh == fresh_for_a and store.offered >= offered_for_a + 4
                await trio.sleep(IDLE_SECONDS / 2)
                spare.append(int(fs.statistics()["spare_read_bytes"]))  # type: ignore[call-overload]
                await trio.sleep(IDLE_SECONDS)
                spare.append(int(fs.statistics()["spare_read_bytes"]))  # type: ignore[call-overload]
                await fs.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert store.fresh >= 4  # file a started with new buffers
    assert spare[0] >= 4 * 8 * MIB and spare[1] >= 4 * 8 * MIB and spare[2] == 0


def test_read_sees_changed_object_at_next_open_and_keep_cache_tracks_etag() -> None:
    store = MemoryStore()
    store.seed("f", b"one")

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "f")
        first = await fs.open(ino, os.O_RDONLY)
        assert not first.keep_cache
        assert await fs.read(first.fh, 0, 10) == b"one"
        await fs.release(first.fh)
        second = await fs.open(ino, os.O_RDONLY)
        assert second.keep_cache  # same ETag: the kernel's pages are still right
        await fs.release(second.fh)
        store.seed("f", b"two!" * MIB)
        third = await fs.open(ino, os.O_RDONLY)
        assert not third.keep_cache and third.attr.size == 4 * MIB
        assert await fs.read(third.fh, 0, 8) == b"two!two!"
        # an outside change while open: the pinned ETag refuses to mix versions
        store.seed("f", b"three" * MIB)
        with pytest.raises(S3FilesError) as stale:
            await fs.read(third.fh, 3 * MIB, 10)
        assert stale.value.errno == errno.ESTALE
        await fs.release(third.fh)

    run_fs(store, body)


@pytest.mark.parametrize("direct_io", [False, True])
def test_an_older_handle_after_a_newer_open_is_stale_only_with_the_page_cache(direct_io: bool) -> None:
    """The kernel's page cache is per file: once a newer version was opened, an older handle's bytes could
    reach the newer readers, so they are refused. With --direct-io nothing is cached: the older handle
    reads the bytes it holds of its own version, and only new bytes (If-Match) are ESTALE."""
    store = MemoryStore()
    old = b"old!" * MIB
    store.seed("f", old)

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "f")
        first = await fs.open(ino, os.O_RDONLY)
        assert first.direct_io is direct_io and not first.keep_cache
        store.seed("f", b"new!" * MIB)
        second = await fs.open(ino, os.O_RDONLY)
        assert await fs.read(second.fh, 0, 4) == b"new!"
        if direct_io:
            assert await fs.read(first.fh, 0, 8) == old[:8]  # held since the open's GET
        for off in (3 * MIB,) if direct_io else (0, 3 * MIB):
            with pytest.raises(S3FilesError) as stale:
                await fs.read(first.fh, off, 8)
            assert stale.value.errno == errno.ESTALE
        await fs.release(first.fh)
        await fs.release(second.fh)

    run_fs(store, body, direct_io=direct_io)


@pytest.mark.parametrize("direct_io", [False, True])
def test_reopening_an_unchanged_file_asks_with_a_head_only_when_the_kernel_caches_it(direct_io: bool) -> None:
    """A re-open of the same version is a HEAD when the kernel's page cache holds the bytes; with
    --direct-io nothing holds them, so it is one GET that brings the first part along."""
    store = MemoryStore()
    data = random.Random(5).randbytes(3 * MIB)
    store.seed("f", data)

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "f")
        opened = await fs.open(ino, os.O_RDONLY)
        assert bytes(await fs.read(opened.fh, 0, 10)) == data[:10]
        await fs.release(opened.fh)
        store.requests.reset()
        again = await fs.open(ino, os.O_RDONLY)  # the open alone: the kernel would read its cached pages
        assert again.keep_cache is not direct_io
        assert store.requests.snapshot() == ({"get": 1} if direct_io else {"head": 1})
        await fs.release(again.fh)

    run_fs(store, body, direct_io=direct_io, metadata_ttl=0.0)


def test_store_errors_become_errnos_not_crashes() -> None:
    from s3files.errors import StoreError

    store = MemoryStore()
    store.seed("f", b"data" * 600_000)  # over two first parts: the open's GET brings only the first

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "f")
        opened = await fs.open(ino, os.O_RDONLY)
        store.fail("get", StoreError("503 SlowDown after retries"))
        with pytest.raises(S3FilesError) as failed:
            await fs.read(opened.fh, 1_100_000, 100)  # past the first part, which came with the open
        assert failed.value.errno == errno.EIO
        assert await fs.read(opened.fh, 2_400_000, 100) == b""
        assert await fs.read(opened.fh, 0, 4) == b"data"  # the file still works after the error
        await fs.release(opened.fh)

    run_fs(store, body)


def test_writes_are_refused_with_erofs() -> None:
    store = MemoryStore()
    store.seed("f", b"x")

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "f")
        with pytest.raises(S3FilesError) as refused:
            await fs.open(ino, os.O_WRONLY)
        assert refused.value.errno == errno.EROFS
        assert "read-only" in str(refused.value)

    run_fs(store, body, read_only=True)


# -- the write path ---------------------------------------------------------------------------------


async def write_new(fs: FileSystem, parent: int, name: str, data: bytes, chunk: int = 128 * 1024) -> int:
    opened = await fs.create(parent, name, 0o640, 1000, 1000)
    for off in range(0, len(data), chunk):
        assert await fs.write(opened.fh, off, data[off : off + chunk]) == len(data[off : off + chunk])
    await fs.flush(opened.fh)
    await fs.release(opened.fh)
    return opened.attr.ino


def test_create_write_close_uploads_with_metadata_and_if_none_match() -> None:
    store = MemoryStore()

    async def body(fs: FileSystem) -> None:
        store.requests.reset()
        ino = await write_new(fs, ROOT_INO, "new.txt", b"hello")
        assert store.data("new.txt") == b"hello"
        assert store.requests.snapshot() == {"put": 1}
        meta = (await store.head("new.txt")).metadata
        assert meta is not None and int(meta["mode"]) == stat.S_IFREG | 0o640
        assert (meta["uid"], meta["gid"]) == ("1000", "1000")
        attr = await fs.getattr(ino)
        assert (attr.size, stat.S_IMODE(attr.mode)) == (5, 0o640)
        # visible in a listing of its folder and by lookup, right after close
        names = [n for n, _, _ in await fs.readdir(await fs.opendir(ROOT_INO), 0)]
        assert names == ["new.txt"]

    run_fs(store, body, metadata_ttl=60.0)


def test_new_file_is_visible_here_before_close() -> None:
    store = MemoryStore()
    store.seed("other", b"x")

    async def body(fs: FileSystem) -> None:
        await fs.readdir(await fs.opendir(ROOT_INO), 0)  # a fresh listing without the new name
        opened = await fs.create(ROOT_INO, "draft", 0o644, 0, 0)
        await fs.write(opened.fh, 0, b"abc")
        assert (await fs.lookup(ROOT_INO, "draft")).size == 3
        names = [n for n, _, _ in await fs.readdir(await fs.opendir(ROOT_INO), 0)]
        assert names == ["draft", "other"]
        assert "draft" not in store.keys()
        await fs.release(opened.fh)
        assert store.data("draft") == b"abc"

    run_fs(store, body, metadata_ttl=60.0)


def test_overwrite_random_write_append_truncate() -> None:
    store = MemoryStore()
    store.seed("f", b"0123456789")

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "f")
        opened = await fs.open(ino, os.O_RDWR)
        await fs.write(opened.fh, 3, b"abc")
        assert await fs.read(opened.fh, 0, 100) == b"012abc6789"  # reads see this handle's writes
        await fs.write(opened.fh, 12, b"Z")  # past the end: a hole of zeros
        await fs.release(opened.fh)
        assert store.data("f") == b"012abc6789\0\0Z"
        await fs.setattr(ino, size=4)  # truncate(2) on a path is persisted at once
        assert store.data("f") == b"012a"
        trunc = await fs.open(ino, os.O_WRONLY | os.O_TRUNC)
        await fs.write(trunc.fh, 0, b"new")
        await fs.release(trunc.fh)
        assert store.data("f") == b"new"

    run_fs(store, body)


def test_large_file_uses_parallel_multipart_upload() -> None:
    store = MemoryStore()
    data = random.Random(5).randbytes(20 * MIB + 3)

    async def body(fs: FileSystem) -> None:
        store.requests.reset()
        await write_new(fs, ROOT_INO, "big", data, chunk=MIB)
        assert store.data("big") == data
        counts = store.requests.snapshot()
        # + one copy onto itself: the upload was created (the first part streamed) before the last write,
        # whose mtime the object must carry (docs/SEMANTICS.md, Writes)
        assert counts == {"create_multipart": 1, "upload_part": 3, "complete_multipart": 1, "copy": 1}

    run_fs(store, body)


def test_outside_change_while_writing_keeps_both_versions() -> None:
    store = MemoryStore()
    store.seed("doc", b"original")

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "doc")
        opened = await fs.open(ino, os.O_WRONLY)
        await fs.write(opened.fh, 0, b"OURS")
        store.seed("doc", b"theirs")  # another machine writes meanwhile
        with pytest.raises(S3FilesError) as conflict:
            await fs.flush(opened.fh)
        assert conflict.value.errno == errno.EIO
        assert "s3files-conflict-" in str(conflict.value)
        await fs.release(opened.fh)
        assert store.data("doc") == b"theirs"
        beside = [k for k in store.keys() if k.startswith("doc.s3files-conflict-")]
        assert len(beside) == 1 and store.data(beside[0]) == b"OURSinal"

    run_fs(store, body)


def test_new_file_racing_an_outside_create_is_not_overwritten() -> None:
    store = MemoryStore()

    async def body(fs: FileSystem) -> None:
        opened = await fs.create(ROOT_INO, "race", 0o644, 0, 0)
        await fs.write(opened.fh, 0, b"mine")
        store.seed("race", b"first")
        with pytest.raises(S3FilesError):
            await fs.release(opened.fh)
        assert store.data("race") == b"first"
        assert any(store.data(k) == b"mine" for k in store.keys() if k.startswith("race.s3files-conflict-"))

    run_fs(store, body)


def test_failed_upload_reports_eio_and_keeps_data_for_retry() -> None:
    from s3files.errors import StoreError

    store = MemoryStore()

    async def body(fs: FileSystem) -> None:
        opened = await fs.create(ROOT_INO, "keep", 0o644, 0, 0)
        await fs.write(opened.fh, 0, b"precious")
        store.fail("put", StoreError("503 after retries"))
        with pytest.raises(S3FilesError) as failed:
            await fs.flush(opened.fh)
        assert failed.value.errno == errno.EIO
        assert "keep" not in store.keys()
        await fs.flush(opened.fh)  # the next close/fsync retries with the same bytes
        assert store.data("keep") == b"precious"
        await fs.release(opened.fh)

    run_fs(store, body)


def test_unmount_never_publishes_a_file_still_open_for_writing() -> None:
    """A stop while a program writes must not publish half a file: S3 keeps nothing (a new file) or the
    previous complete version (a rewrite); tests/test_recovery.py shows the bytes kept for the next mount."""
    store = MemoryStore()
    store.seed("report.csv", b"row\n" * 1000)

    async def body(fs: FileSystem) -> None:
        opened = await fs.create(ROOT_INO, "left-open", 0o644, 0, 0)
        await fs.write(opened.fh, 0, b"data")
        rewrite = await fs.open(await resolve(fs, "report.csv"), os.O_WRONLY | os.O_TRUNC)
        await fs.write(rewrite.fh, 0, b"row\n" * 500)
        # run_fs calls fs.aclose() after the body, as the mount does at unmount

    run_fs(store, body)
    assert "left-open" not in store.keys()
    assert store.data("report.csv") == b"row\n" * 1000


def test_unlink_mkdir_rmdir_rename() -> None:
    store = MemoryStore()
    store.seed("a.txt", b"A", {"mode": str(stat.S_IFREG | 0o600)})
    store.seed("full/x", b"x")

    async def body(fs: FileSystem) -> None:
        d = await fs.mkdir(ROOT_INO, "d", 0o750, 0, 0)
        assert stat.S_ISDIR(d.mode) and "d/" in store.keys()
        with pytest.raises(S3FilesError) as exists:
            await fs.mkdir(ROOT_INO, "d", 0o750, 0, 0)
        assert exists.value.errno == errno.EEXIST
        await fs.rename(ROOT_INO, "a.txt", d.ino, "b.txt", 0)
        assert "a.txt" not in store.keys() and store.data("d/b.txt") == b"A"
        meta = (await store.head("d/b.txt")).metadata
        assert meta is not None and meta["mode"] == str(stat.S_IFREG | 0o600)  # metadata travels
        with pytest.raises(S3FilesError) as not_empty:
            await fs.rmdir(ROOT_INO, "d")
        assert not_empty.value.errno == errno.ENOTEMPTY
        full = await fs.lookup(ROOT_INO, "full")
        with pytest.raises(S3FilesError) as into_itself:
            await fs.rename(ROOT_INO, "full", full.ino, "inner", 0)
        assert into_itself.value.errno == errno.EINVAL
        with pytest.raises(S3FilesError) as isdir:
            await fs.unlink(ROOT_INO, "full")
        assert isdir.value.errno == errno.EISDIR
        await fs.unlink(d.ino, "b.txt")
        await fs.rmdir(ROOT_INO, "d")
        assert store.keys() == ["full/x"]
        with pytest.raises(S3FilesError) as gone:
            await fs.lookup(ROOT_INO, "d")
        assert gone.value.errno == errno.ENOENT
        assert full.ino > 0

    run_fs(store, body, metadata_ttl=60.0)


def test_a_cold_open_in_folders_listed_for_lookups_is_three_round_trips() -> None:
    """``open("d/fN")`` then a first read, in folders whose names were looked up before (so each lookup
    lists the folder): each lookup's LIST goes with the HEADs that describe the name (as a file, as a
    folder), at once, then the open's GET: three round trips of the network's latency (five when each
    HEAD waited for its LIST). The bench's time to first byte on an S3-like network is that."""
    latency = 0.02
    store = MemoryStore(latency=latency)
    data = random.Random(14).randbytes(4 * MIB)
    for n in range(4):
        store.seed(f"d/f{n}", data)
    store.seed("a", b"1")
    store.seed("b", b"2")
    took: list[float] = []

    async def body(fs: FileSystem) -> None:
        for name in ("a", "b"):  # the root's first two names are probed; later ones list it
            await fs.lookup(ROOT_INO, name)
        for n in range(4):
            await trio.sleep(2.0)  # past the metadata TTL (1 s): as between the bench's rounds
            store.requests.reset()
            start = trio.current_time()
            d = await fs.lookup(ROOT_INO, "d")
            f = await fs.lookup(d.ino, f"f{n}")
            opened = await fs.open(f.ino, os.O_RDONLY)
            assert await fs.read(opened.fh, 0, 64 * 1024) == data[: 64 * 1024]
            took.append(trio.current_time() - start)
            await fs.release(opened.fh)
            if n == 3:  # d's first two names were probed (HEAD + LIST, at once); now it is listed too
                assert store.requests.snapshot() == {"list": 2, "head": 4, "get": 1}

    run_fs(store, body, now=trio.current_time, clock=trio.testing.MockClock(autojump_threshold=0))
    assert took[3] == pytest.approx(3 * latency)
    assert took[0] == pytest.approx(3 * latency)  # probes: HEAD and LIST at once, then the GET


def test_lookups_in_a_folder_in_use_never_wait_for_its_listing_to_be_made_again() -> None:
    """A loop that opens or stats the files of a folder (a data loader, ``find``) walks ``d/fN`` every few
    ms. Once each name was described, a lookup costs nothing while the listings it uses are fresh; when
    they expire (the TTL, 1 s), the lookup that comes next would wait for a LIST and the folder's marker
    HEAD, a round trip each on a network. A listing in use is made again in the background in the last
    part of its TTL, with the markers of the folders looked up in it: no lookup waits, nothing answered is
    older than the TTL, and a folder is listed at most once per 3/4 of the TTL while in use. The kernel
    keeps ``d`` for the timeout it is given, which ends in that last part (else its next lookup would come
    only once the root's listing expired, and wait for it)."""
    latency = 0.02
    store = MemoryStore(latency=latency)
    for n in range(10):
        store.seed(f"d/f{n}", b"x" * n)
    store.seed("d/", b"", {"mode": str(stat.S_IFDIR | 0o750)})  # d's marker: its true attributes need a HEAD
    store.seed("a", b"1")
    store.seed("b", b"2")
    waits: list[float] = []

    async def body(fs: FileSystem) -> None:
        for name in ("a", "b"):  # the root's first two names are probed; later ones list it
            await fs.lookup(ROOT_INO, name)
        for n in range(3):  # d's too
            d = await fs.lookup(ROOT_INO, "d")
            await fs.lookup(d.ino, f"f{n}")
        for n in range(10):  # every name described once
            await fs.lookup(d.ino, f"f{n}")
        store.requests.reset()
        start = trio.current_time()
        d_valid_until = 0.0  # as the kernel does: d is looked up again once the timeout it was given ends
        for i in range(400):  # 4 s of lookups, 10 ms apart
            await trio.sleep(0.01)
            began = trio.current_time()
            if began >= d_valid_until:
                d = await fs.lookup(ROOT_INO, "d")
                assert stat.S_IMODE(d.mode) == 0o750
                d_valid_until = trio.current_time() + fs.valid_for(d.ino)
            f = await fs.lookup(d.ino, f"f{i % 10}")
            assert f.size == i % 10
            waits.append(trio.current_time() - began)
        elapsed = trio.current_time() - start
        counts = store.requests.snapshot()
        # two folders (the root, d) listed at most once per 3/4 TTL each, and d's marker with d's listing
        assert counts.get("list", 0) <= 2 * (elapsed / 0.75 + 1)
        assert counts.get("head", 0) <= elapsed / 0.75 + 1
        assert counts.get("list", 0) >= 2 * (elapsed - 1)  # made again, not kept past the TTL

    run_fs(store, body, now=trio.current_time, clock=trio.testing.MockClock(autojump_threshold=0))
    assert max(waits) == 0.0


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_a_stat_loop_through_a_folder_in_order_has_its_names_described_ahead(order: str) -> None:
    """``stat`` of each file of a listed folder in the listing's order (``find``, ``du``, a data loader)
    needs each file's HEAD (its true attributes), one round trip each. In that order the next names are
    described ahead, 2, 4, 8 then 16 at once, so the loop waits for few round trips and still sends one
    HEAD per file (the last window ends with the folder). In any other order nothing is asked ahead: one
    HEAD per name looked up, no more."""
    latency = 0.02
    store = MemoryStore(latency=latency)
    names = [f"f{n:03d}" for n in range(100)]
    for n, name in enumerate(names):
        store.seed(f"d/{name}", b"x" * n, {"mode": str(stat.S_IFREG | 0o640)})
    if order == "shuffled":
        random.Random(3).shuffle(names)

    async def body(fs: FileSystem) -> None:
        d = await fs.lookup(ROOT_INO, "d")
        await fs.readdir(await fs.opendir(d.ino), 0)  # listed (and described)...
        for n in range(100):  # ... then every file replaced elsewhere: no version is known
            store.seed(f"d/f{n:03d}", b"y" * n, {"mode": str(stat.S_IFREG | 0o604)})
        await trio.sleep(6)  # past the TTL: the listing is made again, bare, for the lookups
        store.requests.reset()
        for name in names[:3]:
            await fs.lookup(d.ino, name)
        start = trio.current_time()
        for name in names[3:]:
            attr = await fs.lookup(d.ino, name)
            assert (attr.size, stat.S_IMODE(attr.mode)) == (int(name[1:]), 0o604)
        took = trio.current_time() - start
        counts = store.requests.snapshot()
        assert counts == {"list": 1, "head": 101}  # one per file, and f000's as a folder (404) with the LIST
        if order == "sorted":
            assert took < 97 * latency / 5
        else:
            assert took >= 90 * latency  # (a few neighbours follow each other by chance)

    run_fs(store, body, now=trio.current_time, clock=trio.testing.MockClock(autojump_threshold=0), metadata_ttl=5)


class SlowListStore(MemoryStore):
    """A LIST takes three times the latency (a big folder), so other requests finish meanwhile."""

    async def list_page(self, *args: Any, **kwargs: Any) -> ListPage:
        await trio.sleep(2 * self._latency)
        return await super().list_page(*args, **kwargs)


def test_lookups_of_one_name_at_the_same_time_ask_s3_once() -> None:
    """Eight threads opening one file each make the kernel look its name up (a path walk revalidates it):
    lookups of one name in flight together share the first one's answer, so S3 is asked what one lookup
    asks, and all answer when it does. An unlink's own lookup joins one in flight too, and a lookup after
    the unlink finds nothing. (A shared answer is also refused when this mount changed a name while it
    was in flight, so S3's answer never undoes a change made here; that race is not built here.)"""
    latency = 0.02
    store = SlowListStore(latency=latency)
    store.seed("d/one.bin", b"x" * 100)
    store.seed("d/two.bin", b"y" * 7)

    async def body(fs: FileSystem) -> None:
        d = await fs.lookup(ROOT_INO, "d")
        store.requests.reset()
        sizes: list[int] = []
        start = trio.current_time()

        async def look() -> None:
            sizes.append((await fs.lookup(d.ino, "one.bin")).size)

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(look)
        assert sizes == [100] * 8
        assert trio.current_time() - start == pytest.approx(3 * latency)  # the probe's LIST
        assert store.requests.snapshot() == {"head": 1, "list": 1}  # one lookup's, not eight times that

        found: list[object] = []

        async def look_two() -> None:
            try:
                found.append((await fs.lookup(d.ino, "two.bin")).size)
            except S3FilesError as exc:
                found.append(type(exc).__name__)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(look_two)  # in flight for 3 latencies: it will say 7 bytes
            await trio.sleep(latency / 4)
            await fs.unlink(d.ino, "two.bin")  # (its own lookup of the name joins the first one)
            nursery.start_soon(look_two)
        assert found == [7, "NotFound"]

    run_fs(store, body, now=trio.current_time, clock=trio.testing.MockClock(autojump_threshold=0))


def test_lookups_of_names_of_one_folder_at_the_same_time_list_it_once() -> None:
    """Threads opening the files of one folder look their names up at the same time (the kernel sends them
    at once: fuse/dirops.py). After the folder's first names were probed, the lookup that lists it has the
    others wait for that listing instead of each probing (a HEAD and a LIST) or listing it again: one
    LIST, and each name's HEAD for its true attributes."""
    latency = 0.02
    store = MemoryStore(latency=latency)
    for n in range(10):
        store.seed(f"d/f{n}", b"x" * n)

    async def body(fs: FileSystem) -> None:
        d = await fs.lookup(ROOT_INO, "d")
        for n in range(2):  # the folder's first two names are probed
            await fs.lookup(d.ino, f"f{n}")
        store.requests.reset()
        sizes: dict[int, int] = {}
        start = trio.current_time()

        async def look(n: int) -> None:
            sizes[n] = (await fs.lookup(d.ino, f"f{n}")).size

        async with trio.open_nursery() as nursery:
            for n in range(2, 10):
                nursery.start_soon(look, n)
        assert sizes == {n: n for n in range(2, 10)}
        assert store.requests.snapshot() == {"list": 1, "head": 9}  # 8 names, and the first one's marker
        assert trio.current_time() - start == pytest.approx(2 * latency)  # the listing, then the HEADs

    run_fs(store, body, now=trio.current_time, clock=trio.testing.MockClock(autojump_threshold=0))


def test_strict_lookups_of_one_name_at_the_same_time_each_ask_s3() -> None:
    """With a metadata TTL of 0 (strict mode) every lookup asks S3 after it began: none is shared."""
    store = MemoryStore(latency=0.02)
    store.seed("d/one.bin", b"x" * 100)

    async def body(fs: FileSystem) -> None:
        d = await fs.lookup(ROOT_INO, "d")
        store.requests.reset()
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(fs.lookup, d.ino, "one.bin")
        assert store.requests.snapshot().get("head", 0) >= 4

    run_fs(store, body, now=trio.current_time, clock=trio.testing.MockClock(autojump_threshold=0), consistency="strict")


def test_opening_a_file_for_reading_is_one_get_with_its_first_part() -> None:
    """A cold open for reading asks S3 with a GET of the reader's first part, not a HEAD: a file of up to
    two first parts is read with that one request, a larger one continues from where it ended."""
    store = MemoryStore()
    first_part = ReadOptions().first_part
    small = random.Random(12).randbytes(2 * first_part)
    large = random.Random(13).randbytes(2 * first_part + 1)
    store.seed("small", small, {"mode": str(stat.S_IFREG | 0o600)})
    store.seed("large", large)

    async def body(fs: FileSystem) -> None:
        ino, big = await resolve(fs, "small"), await resolve(fs, "large")
        store.requests.reset()
        opened = await fs.open(ino, os.O_RDONLY)
        assert stat.S_IMODE(opened.attr.mode) == 0o600  # the GET's metadata, as a HEAD would give it
        assert b"".join([bytes(await fs.read(opened.fh, off, MIB)) for off in range(0, len(small), MIB)]) == small
        await fs.release(opened.fh)
        assert store.requests.snapshot() == {"get": 1}
        store.seed("small", b"replaced")  # elsewhere, while no page cache claims it: the next open sees it
        fs.sb.node(ino).page_cache_etag = None
        store.requests.reset()
        opened = await fs.open(ino, os.O_RDONLY)
        assert (opened.attr.size, bytes(await fs.read(opened.fh, 0, MIB))) == (8, b"replaced")
        await fs.release(opened.fh)
        assert store.requests.snapshot() == {"get": 1}
        store.requests.reset()
        opened = await fs.open(big, os.O_RDONLY)  # larger: its first part comes with the open
        assert store.requests.snapshot() == {"get": 1}
        got = b"".join([bytes(await fs.read(opened.fh, off, MIB)) for off in range(0, len(large), MIB)])
        await fs.release(opened.fh)
        assert got == large
        assert store.requests.snapshot() == {"get": 2}  # the rest in one part: the first is not fetched again
        store.requests.reset()
        opened = await fs.open(big, os.O_RDONLY)  # in the page cache now: a HEAD says it is still current
        assert opened.keep_cache and store.requests.snapshot() == {"head": 1}
        await fs.release(opened.fh)
        store.seed("small", b"")  # gone empty: described by the GET all the same
        fs.sb.node(ino).page_cache_etag = None
        opened = await fs.open(ino, os.O_RDONLY)
        assert (opened.attr.size, await fs.read(opened.fh, 0, 10)) == (0, b"")
        await fs.release(opened.fh)

    run_fs(store, body)
