"""Unit tests of the write path in parts (s3files.core.cache and uploader through FileSystem), on the in-memory store:
contents, and request budgets that show what is fetched, streamed, copied inside S3 or uploaded."""

from __future__ import annotations

import errno
import os
import random
import tracemalloc
from collections.abc import Sequence

import pytest
import trio
from test_core import resolve, run_fs, spy_gets, write_new

from s3files.core.copies import SPILL_BYTES, clean_files_for
from s3files.core.fs import FileSystem
from s3files.core.inodes import ROOT_INO
from s3files.core.parts import MAX_PART, MAX_PARTS, PartLayout
from s3files.errors import EndpointUnreachable, S3FilesError
from s3files.options import MIB
from s3files.store import MemoryStore
from s3files.store.base import CompletedPart, ObjectInfo


def test_part_layout_reaches_5_tib_within_s3_limits() -> None:
    layout = PartLayout(8 * MIB)
    assert layout.span(0) == (0, 8 * MIB)
    assert layout.span(999) == (999 * 8 * MIB, 1000 * 8 * MIB)
    assert layout.span(1000) == (1000 * 8 * MIB, 1000 * 8 * MIB + 16 * MIB)  # the second tier doubles
    for index in (0, 1, 999, 1000, 1001, 4321, 9999):
        start, end = layout.span(index)
        assert layout.index(start) == index and layout.index(end - 1) == index
        assert end == layout.span(index + 1)[0]
    five_tib = 5 * 1024**4
    assert layout.count(five_tib) <= MAX_PARTS
    assert max(end - start for start, end in map(layout.span, range(layout.count(five_tib)))) <= MAX_PART
    assert layout.count(0) == layout.count(1) == 1 and layout.count(8 * MIB + 1) == 2


def test_small_edit_of_a_large_file_fetches_one_part_and_copies_the_rest() -> None:
    store = MemoryStore()
    base = random.Random(1).randbytes(24 * MIB)
    store.seed("big", base)
    gets = spy_gets(store)

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "big")
        store.requests.reset()
        opened = await fs.open(ino, os.O_RDWR)
        await fs.write(opened.fh, 9 * MIB + 3, b"edited")  # unaligned, inside part 2 of 3
        assert await fs.read(opened.fh, 9 * MIB, 16) == base[9 * MIB : 9 * MIB + 3] + b"edited" + base[
            9 * MIB + 9 : 9 * MIB + 16
        ]
        await fs.release(opened.fh)

    run_fs(store, body)
    assert store.data("big") == base[: 9 * MIB + 3] + b"edited" + base[9 * MIB + 9 :]
    assert gets == [(8 * MIB, 16 * MIB)]  # only the part written into
    assert store.requests.snapshot() == {
        "head": 1,
        "get": 1,
        "create_multipart": 1,
        "upload_part": 1,
        "upload_part_copy": 2,
        "complete_multipart": 1,
    }


def test_append_to_a_large_file_downloads_nothing() -> None:
    store = MemoryStore()
    base = random.Random(2).randbytes(20 * MIB + 7)
    store.seed("log", base)
    gets = spy_gets(store)

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "log")
        opened = await fs.open(ino, os.O_WRONLY | os.O_APPEND)
        await fs.write(opened.fh, len(base), b"+appended")
        await fs.release(opened.fh)

    run_fs(store, body)
    assert store.data("log") == base + b"+appended"
    # The last part [16 MiB, 20 MiB+7) gains bytes: its base bytes are fetched, the first two are copied.
    assert gets == [(16 * MIB, 20 * MIB + 7)]
    assert store.requests["upload_part_copy"] == 2 and store.requests["upload_part"] == 1


def test_sequential_writer_streams_parts_before_close() -> None:
    store = MemoryStore()
    data = random.Random(3).randbytes(26 * MIB)

    async def body(fs: FileSystem) -> None:
        opened = await fs.create(ROOT_INO, "stream", 0o644, 0, 0)
        for off in range(0, 25 * MIB, MIB):
            await fs.write(opened.fh, off, data[off : off + MIB])
        with trio.move_on_after(10):  # the sends run in the background (reads on worker threads)
            while store.requests["upload_part"] < 3:
                await trio.sleep(0.01)
        # Parts 1-3 (24 MiB) went out while the program was still writing; nothing is complete yet.
        assert store.requests["upload_part"] == 3 and "stream" not in store.keys()
        await fs.write(opened.fh, 25 * MIB, data[25 * MIB :])
        await fs.write(opened.fh, 5, b"REWRITE")  # back into part 1: it is sent again at close
        await fs.release(opened.fh)

    run_fs(store, body)
    assert store.data("stream") == data[:5] + b"REWRITE" + data[12:]
    # + a copy onto itself: the upload was created before the last write (whose mtime it must carry)
    counts = {"create_multipart": 1, "upload_part": 5, "complete_multipart": 1, "copy": 1}
    assert store.requests.snapshot() == counts


def test_truncate_shrink_then_grow_shows_zeros_not_old_bytes() -> None:
    store = MemoryStore()
    base = random.Random(4).randbytes(24 * MIB)
    store.seed("t", base)

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "t")
        opened = await fs.open(ino, os.O_RDWR)
        await fs.setattr(ino, size=10 * MIB + 1)
        await fs.setattr(ino, size=12 * MIB)
        assert await fs.read(opened.fh, 10 * MIB - 2, 5) == base[10 * MIB - 2 : 10 * MIB + 1] + b"\0\0"
        await fs.release(opened.fh)

    run_fs(store, body)
    assert store.data("t") == base[: 10 * MIB + 1] + bytes(2 * MIB - 1)
    assert store.requests["upload_part_copy"] == 1  # part 1 unchanged; part 2 = base prefix + zeros


def test_truncate_into_a_part_already_sent_sends_it_again() -> None:
    """Found by test_write_properties: a new file past part 1 (so part 1 streams out), cut to 229 bytes,
    then written past the old end: part 1 must be sent again as 229 bytes + zeros, not reused as sent."""
    store = MemoryStore()
    data = random.Random(5).randbytes(8 * MIB + 565_427)

    async def body(fs: FileSystem) -> None:
        opened = await fs.create(ROOT_INO, "cut", 0o644, 0, 0)
        for off in range(0, len(data), MIB):
            await fs.write(opened.fh, off, data[off : off + MIB])
        with trio.move_on_after(10):
            while store.requests["upload_part"] < 1:  # part 1 went out while the file was open
                await trio.sleep(0.01)
        assert store.requests["upload_part"] == 1
        await fs.setattr(opened.attr.ino, size=229)
        await fs.write(opened.fh, len(data), b"\xccC")
        await fs.release(opened.fh)

    run_fs(store, body)
    assert store.data("cut") == data[:229] + bytes(len(data) - 229) + b"\xccC"


def test_cache_size_limit_is_enospc_and_the_object_keeps_its_version() -> None:
    store = MemoryStore()
    store.seed("keep", b"original")

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "keep")
        opened = await fs.open(ino, os.O_WRONLY | os.O_TRUNC)
        with pytest.raises(S3FilesError) as full:
            for off in range(0, 8 * MIB, MIB):
                await fs.write(opened.fh, off, b"x" * MIB)
        assert full.value.errno == errno.ENOSPC
        assert "--cache-size" in str(full.value)
        with pytest.raises(S3FilesError) as at_close:
            await fs.release(opened.fh)
        assert at_close.value.errno == errno.ENOSPC
        assert fs.statistics()["cache_bytes"] == 0  # the broken copy is gone from the cache
        await write_new(fs, ROOT_INO, "small", b"fits")  # the mount goes on

    run_fs(store, body, cache_size=4 * MIB)
    assert store.data("keep") == b"original"  # never a truncated object at the key
    assert store.data("small") == b"fits"


def test_conflict_after_a_partial_edit_keeps_our_changes_on_disk() -> None:
    store = MemoryStore()
    base = random.Random(5).randbytes(17 * MIB)
    store.seed("shared", base)

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "shared")
        opened = await fs.open(ino, os.O_RDWR)
        await fs.write(opened.fh, 1, b"ours")
        store.seed("shared", b"theirs")  # replaced elsewhere: our unchanged parts are gone with it
        with pytest.raises(S3FilesError) as conflict:
            await fs.flush(opened.fh)
        assert conflict.value.errno == errno.EIO
        assert "stay at" in str(conflict.value)
        await fs.release(opened.fh)

    run_fs(store, body)
    assert store.data("shared") == b"theirs"
    assert not [k for k in store.keys() if "conflict" in k]
    assert store.requests["abort_multipart"] == 1 and not store._uploads  # nothing left half-uploaded


def test_creating_small_files_costs_one_put_each() -> None:
    store = MemoryStore()

    async def body(fs: FileSystem) -> None:
        folder = await fs.mkdir(ROOT_INO, "many", 0o755, 0, 0)
        store.requests.reset()
        for n in range(50):
            name = f"f{n}"
            with pytest.raises(S3FilesError):
                await fs.lookup(folder.ino, name)  # what the kernel asks before create: a fresh listing says no
            await write_new(fs, folder.ino, name, b"x" * n)
        assert store.requests.snapshot() == {"put": 50}
        assert (await fs.lookup(folder.ino, "f7")).size == 7  # our own listing stays true: no request
        assert store.requests.snapshot() == {"put": 50}

    run_fs(store, body, metadata_ttl=60.0)


def test_lookups_in_a_small_folder_relist_it_instead_of_probing_each_name() -> None:
    store = MemoryStore()
    store.seed("d/a", b"a")
    now = [0.0]

    async def body(fs: FileSystem) -> None:
        d = await resolve(fs, "d")
        await fs.readdir(await fs.opendir(d), 0)  # one page: remembered as a small folder
        now[0] += 10  # the listing expired
        store.requests.reset()
        for name in ("new1", "new2", "new3"):
            with pytest.raises(S3FilesError):
                await fs.lookup(d, name)
        # one LIST, with the HEADs that would describe new1 (as a file, as a folder) asked at once (404)
        assert store.requests.snapshot() == {"list": 1, "head": 2}

    run_fs(store, body, now=lambda: now[0])


@pytest.mark.parametrize("attributes", ["fast", "true"])
def test_a_stat_loop_in_a_folder_never_listed_lists_it_after_two_names(attributes: str) -> None:
    """After two probes the folder is listed for lookups; with true attributes each name then costs one
    HEAD (its own metadata), never a LIST, and only names asked for are described."""
    store = MemoryStore()
    for n in range(300):
        store.seed(f"small/f{n:03d}", b"x" * n)
    for n in range(2001):  # more than two pages: stays probed name by name
        store.seed(f"big/f{n:04d}", b"y")

    async def body(fs: FileSystem) -> None:
        small, big = await resolve(fs, "small"), await resolve(fs, "big")
        store.requests.reset()
        sizes = [(await fs.lookup(small, f"f{n:03d}")).size for n in range(300)]
        assert sizes == list(range(300))
        with pytest.raises(S3FilesError):
            await fs.lookup(small, "missing")
        # 2 probes (HEAD + LIST), then 1 LIST; true attributes: a HEAD for each other name, and with the
        # LIST the HEAD of the third name's folder marker (asked at once in case it is a folder: 404)
        assert store.requests.snapshot() == {"head": 2 if attributes == "fast" else 301, "list": 3}
        store.requests.reset()
        for n in range(10):
            assert (await fs.lookup(big, f"f{n:04d}")).size == 1
        # 2 probes, two pages tried (not the whole folder), then probes again: never the 3rd page (the
        # third name's probe takes the file HEAD asked with the pages; true attributes: + its marker's)
        assert store.requests.snapshot() == {"head": 10 if attributes == "fast" else 11, "list": 12}

    run_fs(store, body, metadata_ttl=60.0, listing_attributes=attributes)


class SinkStore(MemoryStore):
    """Keeps only the sizes of uploaded parts: a large write's memory is then the writer's alone."""

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> CompletedPart:
        await self._request("upload_part")
        self._upload(key, upload_id).parts[number] = b"%d" % len(data)
        return CompletedPart(number=number, etag=f"etag-{number}")

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[CompletedPart], **_: object
    ) -> ObjectInfo:
        await self._request("complete_multipart")
        upload = self._uploads.pop(upload_id)
        size = sum(int(upload.parts[p.number]) for p in parts)
        return ObjectInfo(key, size, f"sink-{len(parts)}", 0.0, upload.metadata)


def test_memory_while_writing_a_large_file_is_bounded_by_the_parts_in_flight() -> None:
    store = SinkStore()
    chunk = random.Random(9).randbytes(MIB)
    size = 320 * MIB

    async def body(fs: FileSystem) -> None:
        opened = await fs.create(ROOT_INO, "huge", 0o644, 0, 0)
        tracemalloc.start()
        try:
            for off in range(0, size, MIB):
                await fs.write(opened.fh, off, chunk)
            await fs.release(opened.fh)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # 4 parts of 8 MiB in flight at most (+ bookkeeping), whatever the file's size
        assert peak < 4 * 8 * MIB + 8 * MIB, peak
        assert store.requests["upload_part"] == 40 and store.requests["complete_multipart"] == 1

    run_fs(store, body, upload_concurrency=4)


def test_what_was_just_written_is_read_back_from_the_clean_copy() -> None:
    store = MemoryStore()
    data = random.Random(10).randbytes(9 * MIB)

    async def body(fs: FileSystem) -> None:
        ino = await write_new(fs, ROOT_INO, "out", data, chunk=MIB)
        assert fs.statistics()["clean_files"] == 1
        store.requests.reset()
        opened = await fs.open(ino, os.O_RDONLY)
        assert await fs.read(opened.fh, 5, 10) == data[5:15]
        await fs.release(opened.fh)
        assert store.requests.snapshot() == {"head": 1}  # the open's revalidation; the bytes are local
        # Editing it again fetches nothing either; an outside change makes the copy useless.
        again = await fs.open(ino, os.O_WRONLY)
        await fs.write(again.fh, 3, b"!")
        await fs.release(again.fh)
        assert store.requests["get"] == 0 and store.data("out") == data[:3] + b"!" + data[4:]
        store.seed("out", b"outside")
        opened = await fs.open(ino, os.O_RDONLY)
        assert await fs.read(opened.fh, 0, 100) == b"outside"
        await fs.release(opened.fh)

    run_fs(store, body)


def test_clean_copies_are_evicted_for_dirty_data_never_the_reverse() -> None:
    store = MemoryStore()

    async def body(fs: FileSystem) -> None:
        for n in range(3):
            await write_new(fs, ROOT_INO, f"c{n}", bytes([n]) * (MIB + n), chunk=MIB)
        assert fs.statistics()["clean_files"] == 3
        opened = await fs.create(ROOT_INO, "big", 0o644, 0, 0)
        for off in range(0, 3 * MIB, MIB):
            await fs.write(opened.fh, off, b"b" * MIB)  # needs the room the clean copies hold
        assert fs.statistics()["clean_files"] < 3
        await fs.release(opened.fh)
        assert store.data("big") == b"b" * 3 * MIB
        assert int(fs.statistics()["cache_bytes"]) <= 4 * MIB  # type: ignore[call-overload]

    run_fs(store, body, cache_size=4 * MIB)


def test_rename_of_an_object_over_the_copy_limit_copies_it_in_pinned_parts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from s3files.core import links

    monkeypatch.setattr(links, "MAX_COPY_OBJECT", 10 * MIB)  # stands in for CopyObject's 5 GiB
    monkeypatch.setattr(links, "COPY_PART", 5 * MIB)
    store = MemoryStore()
    data = random.Random(11).randbytes(12 * MIB + 5)
    store.seed("huge", data, {"mode": "33152"})

    async def body(fs: FileSystem) -> None:
        await resolve(fs, "huge")
        store.requests.reset()
        await fs.rename(ROOT_INO, "huge", ROOT_INO, "moved", 0)

    run_fs(store, body)
    assert store.keys() == ["moved"] and store.data("moved") == data
    assert store._objects["moved"].metadata == {"mode": "33152"}  # metadata travels
    counts = store.requests.snapshot()
    assert counts["upload_part_copy"] == 3 and counts.get("copy", 0) == 0 and counts["delete"] == 1


def test_rename_over_a_file_open_for_writing_orphans_it() -> None:
    # Found by tests/test_write_properties.py: the replaced file's close used to upload it again under its
    # old name as a conflict, and return EIO.
    store = MemoryStore()

    async def body(fs: FileSystem) -> None:
        victim = await fs.create(ROOT_INO, "target", 0o644, 0, 0)
        await fs.write(victim.fh, 0, b"old")
        await fs.flush(victim.fh)
        await write_new(fs, ROOT_INO, "source", b"new")
        await fs.rename(ROOT_INO, "source", ROOT_INO, "target", 0)
        await fs.write(victim.fh, 3, b"-more")  # still works: an unlinked open file
        assert await fs.read(victim.fh, 0, 100) == b"old-more"
        await fs.release(victim.fh)  # no upload, no error
        assert store.keys() == ["target"] and store.data("target") == b"new"

    run_fs(store, body)


def test_readers_of_a_file_being_written_see_the_writes_and_are_not_stale_after() -> None:
    # Found by tests/test_write_properties.py: a read-only open of a file open for writing was counted as a
    # writer that never closed, and readers opened earlier read ESTALE once a writer had come and gone.
    store = MemoryStore()
    store.seed("f", b"0123456789")

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "f")
        early = await fs.open(ino, os.O_RDONLY)
        writer = await fs.open(ino, os.O_RDWR)
        late = await fs.open(ino, os.O_RDONLY)
        await fs.write(writer.fh, 0, b"AB")
        assert await fs.read(early.fh, 0, 4) == b"AB23" and await fs.read(late.fh, 0, 4) == b"AB23"
        await fs.flush(writer.fh)  # close(2): flush, then release
        await fs.release(writer.fh)
        assert store.data("f") == b"AB23456789"
        await fs.release(late.fh)
        assert fs.statistics()["local_copies"] == 0  # the reader did not keep it open as a writer
        assert await fs.read(early.fh, 0, 4) == b"AB23"
        idle = await fs.open(ino, os.O_RDWR)  # opened for writing, nothing written
        await fs.flush(idle.fh)
        await fs.release(idle.fh)
        assert await fs.read(early.fh, 2, 2) == b"23"
        await fs.release(early.fh)

    run_fs(store, body)


def test_clean_copies_kept_scale_with_the_descriptor_limit() -> None:
    """A quarter of the descriptors, within [64, 16384]: 1,000 small files written under a 20,000
    limit all stay cached (no eviction, so no unlink, on the close path)."""
    assert clean_files_for(20_000) == 5_000
    assert clean_files_for(1024) == 256
    assert clean_files_for(100) == 64
    assert clean_files_for(10**7) == 16_384


def _staged_files(fs: FileSystem) -> dict[str, bytes]:
    folder = fs.folder.files  # data files only: records (.json) describe them
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.data"))}


def test_a_small_new_file_is_staged_in_memory_and_moves_to_disk_when_it_grows() -> None:
    store = MemoryStore()
    head = random.Random(11).randbytes(SPILL_BYTES - 5)

    async def body(fs: FileSystem) -> None:
        opened = await fs.create(ROOT_INO, "grows", 0o644, 0, 0)
        await fs.write(opened.fh, 0, head)
        assert _staged_files(fs) == {}  # no inode created on the cache disk for a small file
        assert fs.statistics()["memory_bytes"] >= len(head) and fs.statistics()["cache_bytes"] == 0
        await fs.write(opened.fh, len(head), b"0123456789")  # past SPILL_BYTES: moved to the cache folder
        assert list(_staged_files(fs).values()) == [head + b"0123456789"]
        assert fs.statistics()["memory_bytes"] == 0 and fs.statistics()["cache_bytes"] >= len(head)
        assert await fs.read(opened.fh, len(head) - 3, 8) == head[-3:] + b"01234"
        await fs.release(opened.fh)
        small = await write_new(fs, ROOT_INO, "small", b"tiny")
        again = await fs.open(small, os.O_RDONLY)
        store.requests.reset()
        assert await fs.read(again.fh, 0, 10) == b"tiny"  # its clean copy, in memory, serves reads
        await fs.release(again.fh)
        assert store.requests["get"] == 0

    run_fs(store, body)
    assert store.data("grows") == head + b"0123456789" and store.data("small") == b"tiny"


def test_copies_in_memory_stay_within_their_budget() -> None:
    store = MemoryStore()

    async def body(fs: FileSystem) -> None:
        fs.cache.memory_budget = 2 * SPILL_BYTES
        handles = []
        for n in range(3):  # two fit in memory, the third is moved to the cache folder
            opened = await fs.create(ROOT_INO, f"open{n}", 0o644, 0, 0)
            await fs.write(opened.fh, 0, bytes([n]) * 4096)
            await fs.write(opened.fh, 4096, bytes([n]) * (SPILL_BYTES - 8192))
            handles.append(opened)
        assert await fs.read(handles[2].fh, 0, 1) == b"\x02"  # waits for its queued write to land
        assert list(_staged_files(fs).values()) == [bytes([2]) * (SPILL_BYTES - 4096)]
        assert int(fs.statistics()["memory_bytes"]) <= 2 * SPILL_BYTES  # type: ignore[call-overload]
        for opened in handles:
            await fs.release(opened.fh)
        for n in range(600):  # clean copies in memory are evicted, oldest first, for new ones
            await write_new(fs, ROOT_INO, f"c{n}", bytes([n % 256]) * 8192)
            assert int(fs.statistics()["memory_bytes"]) <= 2 * SPILL_BYTES  # type: ignore[call-overload]
        assert fs.statistics()["clean_files"] < 600

    run_fs(store, body)
    assert [store.data(f"open{n}") for n in range(3)] == [bytes([n]) * (SPILL_BYTES - 4096) for n in range(3)]
    assert store.data("c599") == bytes([599 % 256]) * 8192


def test_a_small_file_whose_upload_fails_is_kept_on_disk() -> None:
    store = MemoryStore()

    async def body(fs: FileSystem) -> None:
        opened = await fs.create(ROOT_INO, "precious", 0o644, 0, 0)
        await fs.write(opened.fh, 0, b"do not lose me")
        store.fail("put", EndpointUnreachable("S3 is down"), times=1)
        with pytest.raises(S3FilesError):
            await fs.flush(opened.fh)
        await fs.release(opened.fh)  # leaves it to the background retry, already scheduled
        assert list(_staged_files(fs).values()) == [b"do not lose me"]
        assert fs.statistics()["memory_bytes"] == 0

    run_fs(store, body)
    assert store.data("precious") == b"do not lose me"  # uploaded at unmount, once S3 answered again


def test_an_unmount_out_of_time_keeps_a_small_file_on_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    import s3files.core.fs

    monkeypatch.setattr(s3files.core.fs, "UNMOUNT_UPLOAD_TIMEOUT", 0)
    store = MemoryStore()

    async def body(fs: FileSystem) -> None:
        opened = await fs.create(ROOT_INO, "late", 0o644, 0, 0)
        await fs.write(opened.fh, 0, b"not sent in time")
        await fs.aclose()  # no time to upload: what is unsent must not stay in memory only
        assert list(_staged_files(fs).values()) == [b"not sent in time"]
        assert store.keys() == []

    run_fs(store, body)
