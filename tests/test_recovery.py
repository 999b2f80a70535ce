"""Stops, crashes and recovery in the core (FileSystem over the in-memory store; the cache folder on disk).

A "life" is one FileSystem over one cache folder. ``die`` ends a life the way kill -9 does: background work
is cancelled, nothing is flushed, memory is gone, the folder's lock is released; only the cache folder
survives. ``stop`` ends it the way SIGTERM and unmount do (``aclose``). The next life recovers
(``recover``) with ``--on-recovery``'s modes. Through real mounts: tests/test_fuse_crash.py.

The promises checked (docs/SEMANTICS.md, "Stops and crashes"): S3 only ever holds a version a program
closed or fsynced; what a close or fsync acknowledged reaches S3 (also when its upload failed and the
daemon died before the retry); a file never closed is kept, not published; no multipart upload is left.
"""

from __future__ import annotations

import errno
import os
import random
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from conftest import FULL_COUNTS
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from test_core import resolve

import s3files.core.uploader
from s3files.core.copies import LocalCopy
from s3files.core.fs import FileSystem
from s3files.core.inodes import ROOT_INO
from s3files.core.recovery import OnRecovery
from s3files.core.uploader import TOKEN, conflict_name
from s3files.core.writestate import TRANSITIONS, WriteState, advance
from s3files.errors import EndpointUnreachable, S3FilesError
from s3files.options import MIB, MountOptions, Source
from s3files.store import MemoryStore

OUTAGE = ("put", "create_multipart", "upload_part", "upload_part_copy", "complete_multipart")


def options(**kw: Any) -> MountOptions:
    return MountOptions(source=Source("bucket", ""), mountpoint=Path("/unused"), **kw)


class Lives:
    """Successive FileSystems over one store and one cache folder, each on its own trio nursery."""

    def __init__(self, store: MemoryStore, folder: Path, **kw: Any) -> None:
        self.store, self.folder, self.kw = store, folder, kw

    async def life(self, body: Callable[[FileSystem], Awaitable[None]], end: str = "stop",
                   recover: OnRecovery | None = OnRecovery.UPLOAD) -> FileSystem:
        """Run ``body`` in a new life that first recovers (unless ``recover`` is None) and then ends by
        ``end``: "stop" (aclose) or "die" (kill -9: nothing more runs, only the folder survives)."""
        async with trio.open_nursery() as nursery:
            fs = FileSystem(self.store, options(**self.kw), spawn=nursery.start_soon, staging=self.folder)
            if recover is not None:
                await fs.recover(recover)
            await body(fs)
            if end == "stop":
                await fs.aclose()
            nursery.cancel_scope.cancel()
        if end == "die":
            die(fs)
        return fs


def die(fs: FileSystem) -> None:
    """What kill -9 leaves: descriptors closed by the OS, the lock released; files and records stay."""
    for copy in fs.cache.live():
        os.close(copy.fd)
        if copy.acked is not None and copy.acked.side_fd is not None:
            os.close(copy.acked.side_fd)
    fs.folder.close()


def run(afn: Callable[[], Awaitable[None]]) -> None:
    trio.run(afn)


def cache_files(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "files").iterdir()) if (folder / "files").exists() else []


async def write_file(fs: FileSystem, name: str, data: bytes, close: bool = True) -> int:
    opened = await fs.create(ROOT_INO, name, 0o644, 0, 0)
    await fs.write(opened.fh, 0, data)
    if close:
        await fs.flush(opened.fh)
        await fs.release(opened.fh)
    return opened.fh


# -- stops ------------------------------------------------------------------------------------------


def test_a_stop_keeps_a_file_still_open_for_writing_and_the_next_mount_keeps_it_too(tmp_path: Path) -> None:
    store = MemoryStore()
    store.seed("report.csv", b"row\n" * 1000)
    lives = Lives(store, tmp_path)

    async def writing(fs: FileSystem) -> None:
        opened = await fs.open(await resolve(fs, "report.csv"), os.O_WRONLY | os.O_TRUNC)
        await fs.write(opened.fh, 0, b"row\n" * 500)
        await write_file(fs, "new.txt", b"half", close=False)

    async def main() -> None:
        await lives.life(writing, "stop")
        assert store.data("report.csv") == b"row\n" * 1000 and "new.txt" not in store.keys()
        records = {r.key: r for r in lives_folder(tmp_path).records()}
        assert set(records) == {"report.csv", "new.txt"}
        assert not any(r.acknowledged for r in records.values())
        fs = await lives.life(nothing, "stop")  # default --on-recovery upload: never-closed files stay
        assert sorted(k["key"] for k in fs.recovery.kept) == ["new.txt", "report.csv"]
        assert store.data("report.csv") == b"row\n" * 1000 and "new.txt" not in store.keys()
        status = fs.status()
        assert sorted(k["key"] for k in status["kept"]) == ["new.txt", "report.csv"]  # type: ignore[index]
        data = {open(k["data"], "rb").read() for k in status["kept"]}  # type: ignore[index]
        assert data == {b"row\n" * 500, b"half"}
        fs = await lives.life(nothing, "stop", recover=OnRecovery.DISCARD)
        assert len(fs.recovery.discarded) == 2 and cache_files(tmp_path) == []

    run(main)


async def nothing(fs: FileSystem) -> None:
    pass


def lives_folder(path: Path) -> Any:
    from s3files.core.records import CacheFolder

    return CacheFolder(path)


def test_a_stop_publishes_what_was_closed_and_retries_what_failed(tmp_path: Path) -> None:
    store = MemoryStore()
    lives = Lives(store, tmp_path)

    async def body(fs: FileSystem) -> None:
        store.fail("put", EndpointUnreachable("S3 is down"), times=1)
        with pytest.raises(S3FilesError) as failed:
            await write_file(fs, "closed.txt", b"acknowledged")
        assert failed.value.errno == errno.EIO
        assert "closed.txt" not in store.keys()
        listing = await fs.readdir(await fs.opendir(ROOT_INO), 0)
        assert [name for name, _, _ in listing] == ["closed.txt"]  # still shown while waiting

    async def main() -> None:
        await lives.life(body, "stop")  # the stop's own attempt succeeds
        assert store.data("closed.txt") == b"acknowledged"
        assert cache_files(tmp_path) == []

    run(main)


def test_a_failed_upload_is_retried_in_the_background(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3files.core.uploader, "RETRY_FIRST", 0.05)
    store = MemoryStore()

    async def body(fs: FileSystem) -> None:
        store.fail("put", EndpointUnreachable("S3 is down"), times=2)
        with pytest.raises(S3FilesError):
            await write_file(fs, "later.txt", b"eventually")
        for _ in range(100):
            if "later.txt" in store.keys():
                break
            await trio.sleep(0.05)
        assert store.data("later.txt") == b"eventually"
        assert fs.status()["files"] == [] and fs.uploader.retrying == 0
        assert [n for n in cache_files(tmp_path) if n.endswith(".json")] == []  # settled: no record left
        # its folder lists it as a file with the uploaded size (the inode was pinned meanwhile)
        entries = await fs.readdir(await fs.opendir(ROOT_INO), 0)
        assert [(n, a.size) for n, a, _ in entries] == [("later.txt", 10)]

    run(lambda: Lives(store, tmp_path).life(body))  # type: ignore[arg-type,return-value]


def test_a_file_waiting_for_its_retry_is_listed_after_the_kernel_forgot_it(tmp_path: Path) -> None:
    """Its inode is pinned by its local copy: a listing shows it, a lookup finds it, no EIO."""
    store = MemoryStore()

    async def body(fs: FileSystem) -> None:
        store.fail("put", EndpointUnreachable("S3 is down"), times=1)
        with pytest.raises(S3FilesError):
            await write_file(fs, "waiting.txt", b"12345")
        ino = (await fs.lookup(ROOT_INO, "waiting.txt")).ino
        fs.forget(ino, 2)  # every reference the kernel held (create and this lookup)
        fh = await fs.opendir(ROOT_INO)
        assert [(n, a.ino, a.size) for n, a, _ in await fs.readdir(fh, 0)] == [("waiting.txt", ino, 5)]
        assert (await fs.lookup(ROOT_INO, "waiting.txt")).ino == ino

    run(lambda: Lives(store, tmp_path).life(body))  # type: ignore[arg-type,return-value]
    assert store.data("waiting.txt") == b"12345"  # the stop's attempt


def test_a_renamed_file_waiting_for_its_upload_is_recovered_under_its_new_name(tmp_path: Path) -> None:
    store = MemoryStore()
    lives = Lives(store, tmp_path)

    async def body(fs: FileSystem) -> None:
        store.fail("put", EndpointUnreachable("S3 is down"), times=1)
        fh = await write_file(fs, "old", b"acked", close=False)
        with pytest.raises(S3FilesError):
            await fs.flush(fh)
        await fs.rename(ROOT_INO, "old", ROOT_INO, "new", 0)

    async def main() -> None:
        await lives.life(body, "die")
        await lives.life(nothing, "stop")
        assert store.keys() == ["new"] and store.data("new") == b"acked"

    run(main)


def test_a_resumed_upload_that_s3_aborted_meanwhile_starts_again(tmp_path: Path) -> None:
    store = MemoryStore()
    lives = Lives(store, tmp_path)
    big = random.Random(8).randbytes(17 * MIB)

    async def body(fs: FileSystem) -> None:
        store.fail("complete_multipart", EndpointUnreachable("S3 is down"), times=1)
        with pytest.raises(S3FilesError):
            await write_file(fs, "big", big)

    async def main() -> None:
        await lives.life(body, "die")
        for upload in await store.list_multipart_uploads(""):
            await store.abort_multipart(upload.key, upload.upload_id)  # a lifecycle rule, say
        fs = await lives.life(nothing, "stop")  # recovery fails once, the stop's attempt starts anew
        assert store.data("big") == big and fs.recovery.failed == ["big"]
        assert await store.list_multipart_uploads("") == []

    run(main)


# -- crashes ------------------------------------------------------------------------------------------


def test_kill_after_a_failed_close_uploads_it_at_the_next_mount(tmp_path: Path) -> None:
    store = MemoryStore()
    lives = Lives(store, tmp_path)
    big = random.Random(3).randbytes(20 * MIB + 5)

    async def body(fs: FileSystem) -> None:
        store.fail("put", EndpointUnreachable("S3 is down"), times=1)
        store.fail("complete_multipart", EndpointUnreachable("S3 is down"), times=1)
        with pytest.raises(S3FilesError):
            await write_file(fs, "small", b"acked")
        with pytest.raises(S3FilesError):
            await write_file(fs, "big", big)

    async def main() -> None:
        await lives.life(body, "die")
        assert store.keys() == []
        parts_before = store.requests["upload_part"]
        store.requests.reset()
        fs = await lives.life(nothing, "stop")
        assert store.data("small") == b"acked" and store.data("big") == big
        assert sorted(fs.recovery.uploaded) == ["big", "small"]
        # the multipart upload was resumed: its three parts were sent once, before the crash
        assert parts_before == 3 and store.requests["upload_part"] == 0
        assert store.requests["complete_multipart"] == 1 and store.requests["create_multipart"] == 0
        assert await store.list_multipart_uploads("") == []
        assert cache_files(tmp_path) == []

    run(main)


def test_kill_mid_multipart_never_publishes_and_aborts_the_upload(tmp_path: Path) -> None:
    store = MemoryStore()
    store.seed("big", b"old version")
    lives = Lives(store, tmp_path)
    data = random.Random(4).randbytes(40 * MIB)

    async def body(fs: FileSystem) -> None:
        opened = await fs.open(await resolve(fs, "big"), os.O_WRONLY | os.O_TRUNC)
        for off in range(0, len(data), MIB):
            await fs.write(opened.fh, off, data[off : off + MIB])
        await trio.testing.wait_all_tasks_blocked()
        assert len(await store.list_multipart_uploads("")) == 1  # parts streamed while writing
        # Writes still queued for the local disk (write-behind, up to 4 MiB) die with the process, as
        # unsynced writes do; here they have landed, so the kept file holds every byte written.
        copy = fs.cache.get(opened.attr.ino)
        assert copy is not None
        await fs.cache.io.settled(copy)

    async def main() -> None:
        await lives.life(body, "die")
        fs = await lives.life(nothing, "stop")
        assert store.data("big") == b"old version"
        assert fs.recovery.aborted_uploads == 1 and await store.list_multipart_uploads("") == []
        assert [k["key"] for k in fs.recovery.kept] == ["big"]
        kept = lives_folder(tmp_path).records()
        assert open(lives_folder(tmp_path).data_path(kept[0].id), "rb").read() == data

    run(main)


def test_recovery_of_a_key_changed_meanwhile_writes_a_conflict_copy(tmp_path: Path) -> None:
    store = MemoryStore()
    store.seed("f", b"base")
    lives = Lives(store, tmp_path)

    async def body(fs: FileSystem) -> None:
        opened = await fs.open(await resolve(fs, "f"), os.O_WRONLY | os.O_TRUNC)
        await fs.write(opened.fh, 0, b"ours")
        store.fail("put", EndpointUnreachable("S3 is down"))
        with pytest.raises(S3FilesError):
            await fs.flush(opened.fh)

    async def main() -> None:
        await lives.life(body, "die")
        store.seed("f", b"theirs")  # another writer, while this mount was down
        fs = await lives.life(nothing, "stop")
        assert store.data("f") == b"theirs"
        copies = [k for k in store.keys() if k.startswith("f.s3files-conflict-")]
        assert len(copies) == 1 and store.data(copies[0]) == b"ours"
        assert copies[0] in fs.recovery.conflicts[0]

    run(main)


def test_the_cache_folder_has_one_daemon(tmp_path: Path) -> None:
    from s3files.core.records import CacheFolder
    from s3files.errors import MountError

    first = CacheFolder(tmp_path)
    first.open()
    with pytest.raises(MountError, match="in use by another s3files daemon"):
        CacheFolder(tmp_path).open()
    first.close()
    second = CacheFolder(tmp_path)
    second.open()
    second.close()


# -- conflicts and lost replies ------------------------------------------------------------------------


def test_conflict_names_do_not_collide_within_a_millisecond() -> None:
    names = {conflict_name("k", 1765000000.1234) for _ in range(200)}
    assert len(names) == 200 and all(n.startswith("k.s3files-conflict-20251206T") for n in names)
    assert all(".123Z-" in n for n in names)


def test_forty_conflicting_closes_keep_forty_copies(tmp_path: Path) -> None:
    store = MemoryStore()
    store.seed("three.txt", b"base")

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "three.txt")
        messages = []
        for n in range(40):
            opened = await fs.open(ino, os.O_WRONLY | os.O_TRUNC)
            await fs.write(opened.fh, 0, f"loser {n}".encode())
            store.seed("three.txt", f"winner {n}".encode())  # someone else wins, every time
            with pytest.raises(S3FilesError) as lost:
                await fs.flush(opened.fh)
            await fs.release(opened.fh)
            messages.append(str(lost.value))
        copies = {k: store.data(k) for k in store.keys() if "s3files-conflict" in k}
        assert sorted(copies.values()) == sorted(f"loser {n}".encode() for n in range(40))
        for n, message in enumerate(messages):  # each message names the copy holding its bytes
            named = message.rsplit(" ", 1)[1]
            assert copies[named] == f"loser {n}".encode()

    run(lambda: Lives(store, tmp_path).life(body))  # type: ignore[arg-type,return-value]


def _replayed(store: MemoryStore, op: str) -> None:
    """The SDK's retry after a lost reply: the first attempt is applied, the reply lost, the retry sent."""
    real = getattr(store, op)
    calls = {"n": 0}

    async def twice(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        first = await real(*args, **kw)
        if calls["n"] % 2:
            return await real(*args, **kw)  # the retry: refused, as the first attempt changed the key
        return first

    setattr(store, op, twice)


@pytest.mark.parametrize("size", [5, 12 * MIB])
def test_a_retry_refused_because_our_first_attempt_landed_is_success(tmp_path: Path, size: int) -> None:
    store = MemoryStore()
    _replayed(store, "put" if size < MIB else "complete_multipart")
    data = random.Random(size).randbytes(size)

    async def body(fs: FileSystem) -> None:
        await write_file(fs, "new", data)  # If-None-Match: the retry is refused with 412
        opened = await fs.open(await resolve(fs, "new"), os.O_WRONLY | os.O_TRUNC)
        await fs.write(opened.fh, 0, data[::-1])  # If-Match: refused too
        await fs.flush(opened.fh)
        await fs.release(opened.fh)

    run(lambda: Lives(store, tmp_path).life(body))  # type: ignore[arg-type,return-value]
    assert store.keys() == ["new"] and store.data("new") == data[::-1]  # no conflict copy
    assert (store._objects["new"].metadata or {}).get(TOKEN)


# -- concurrency within one mount ------------------------------------------------------------------------


def test_concurrent_opens_share_one_local_copy_and_every_write_lands(tmp_path: Path) -> None:
    store = MemoryStore(latency=0.01)  # opens overlap while their HEADs are in flight
    base = random.Random(5).randbytes(25 * MIB)
    store.seed("shared", base)
    expected = bytearray(base)
    for n in range(10):
        expected[n * MIB : n * MIB + 16384] = bytes([n]) * 16384

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "shared")

        async def writer(n: int) -> None:
            opened = await fs.open(ino, os.O_WRONLY)
            await fs.write(opened.fh, n * MIB, bytes([n]) * 16384)
            await fs.flush(opened.fh)
            await fs.release(opened.fh)

        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(writer, n)

    run(lambda: Lives(store, tmp_path).life(body))  # type: ignore[arg-type,return-value]
    assert store.data("shared") == bytes(expected)
    assert [k for k in store.keys() if "conflict" in k] == []
    assert cache_files(tmp_path) == []


def test_create_of_a_name_just_created_here_opens_it(tmp_path: Path) -> None:
    store = MemoryStore()

    async def body(fs: FileSystem) -> None:
        first = await fs.create(ROOT_INO, "x", 0o644, 0, 0, os.O_WRONLY | os.O_CREAT)
        second = await fs.create(ROOT_INO, "x", 0o644, 0, 0, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        assert first.attr.ino == second.attr.ino
        with pytest.raises(S3FilesError) as exclusive:
            await fs.create(ROOT_INO, "x", 0o644, 0, 0, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        assert exclusive.value.errno == errno.EEXIST
        await fs.write(second.fh, 0, b"2\n")
        for opened in (first, second):
            await fs.flush(opened.fh)
            await fs.release(opened.fh)

    run(lambda: Lives(store, tmp_path).life(body))  # type: ignore[arg-type,return-value]
    assert store.keys() == ["x"] and store.data("x") == b"2\n"


def test_an_unlinked_file_still_open_keeps_its_attributes(tmp_path: Path) -> None:
    """fstat of an open file after its unlink answers from its local copy, not ENOENT from S3."""
    store = MemoryStore()

    async def body(fs: FileSystem) -> None:
        opened = await fs.create(ROOT_INO, "gone", 0o600, 0, 0)
        await fs.write(opened.fh, 0, b"still mine")
        await fs.unlink(ROOT_INO, "gone")
        assert (await fs.getattr(opened.attr.ino)).size == 10
        await fs.release(opened.fh)

    run(lambda: Lives(store, tmp_path, metadata_ttl=0.0).life(body))  # type: ignore[arg-type,return-value]
    assert store.keys() == []


def test_a_queued_write_that_fails_during_close_is_never_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write queued for the local disk (write-behind) that fails while close is already publishing:
    close fails with ENOSPC and the key keeps its last complete version (found flaky through FUSE)."""
    import s3files.core.copyio

    class FullDisk:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def pwrite(fd: int, data: bytes, off: int) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(s3files.core.copyio, "os", FullDisk())
    store = MemoryStore()
    store.seed("keep.bin", b"original")

    async def body(fs: FileSystem) -> None:
        opened = await fs.open(await resolve(fs, "keep.bin"), os.O_WRONLY | os.O_TRUNC)
        await fs.write(opened.fh, 0, b"x" * (2 * MIB))  # moved to disk, then queued: fails to land
        with pytest.raises(S3FilesError) as full:
            await fs.flush(opened.fh)
        assert full.value.errno == errno.ENOSPC
        with pytest.raises(S3FilesError):  # the last close says so again (the kernel ignores it)
            await fs.release(opened.fh)

    run(lambda: Lives(store, tmp_path).life(body))  # type: ignore[arg-type,return-value]
    assert store.data("keep.bin") == b"original"


def test_a_file_unlinked_while_being_opened_never_publishes(tmp_path: Path) -> None:
    store = MemoryStore()
    store.seed("x", b"old")

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "x")
        await fs.unlink(ROOT_INO, "x")
        await write_file(fs, "x", b"new one")  # another process: rm -f x; echo > x
        with pytest.raises(S3FilesError) as gone:
            await fs.open(ino, os.O_WRONLY | os.O_TRUNC)  # the first inode lost its name
        assert gone.value.errno == errno.ENOENT

    run(lambda: Lives(store, tmp_path).life(body))  # type: ignore[arg-type,return-value]
    assert store.keys() == ["x"] and store.data("x") == b"new one"


# -- an acknowledged version written again before its upload (REWRITTEN) ---------------------------------


def side_files(folder: Path) -> list[Path]:
    return sorted((folder / "files").glob("*.acked"))


def test_a_closed_version_written_again_and_cut_is_what_recovery_publishes(tmp_path: Path) -> None:
    """Outage -> close (acknowledged, upload failed) -> the program overwrites the middle, truncates and
    chmods -> kill -9 -> the next mount publishes exactly the closed bytes and metadata, and keeps the
    newer bytes (reported as never closed), never publishing them."""
    store = MemoryStore()
    base = random.Random(5).randbytes(12 * MIB + 7)
    store.seed("f", base)
    lives = Lives(store, tmp_path, upload_part_size=5 * MIB)
    acked = bytearray(base)
    acked[6 * MIB : 6 * MIB + 4] = b"ACK1"
    acked += b"tail"
    newer = bytearray(acked)
    newer[4 * MIB : 7 * MIB] = b"n" * (3 * MIB)  # across parts 0 and 1, over the acknowledged change
    newer = newer[: 9 * MIB]
    seen: dict[str, Any] = {}

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "f")
        opened = await fs.open(ino, os.O_RDWR)
        await fs.write(opened.fh, 6 * MIB, b"ACK1")
        await fs.write(opened.fh, len(base), b"tail")
        store.fail("complete_multipart", EndpointUnreachable("S3 is down"), times=1)
        with pytest.raises(S3FilesError):
            await fs.flush(opened.fh)
        seen["metadata"] = fs.sb.node(ino).stored_metadata()
        await fs.write(opened.fh, 4 * MIB, b"n" * (3 * MIB))
        await fs.setattr(ino, size=9 * MIB)
        await fs.setattr(ino, mode=0o600)
        copy = fs.cache.get(ino)
        assert copy is not None and copy.state is WriteState.REWRITTEN
        # only the acknowledged bytes the write and the truncate destroyed were saved aside
        assert sum(length for _, length, _ in copy.acked.extents) == (3 * MIB) + (len(acked) - 9 * MIB)
        assert [p.stat().st_size for p in side_files(tmp_path)] == [copy.acked.side_size]
        assert store.data("f") == base

    async def main() -> None:
        await lives.life(body, "die")
        assert store.data("f") == base
        store.requests.reset()
        fs = await lives.life(nothing, "stop")
        assert store.data("f") == bytes(acked)
        info = await store.head("f")
        assert {k: v for k, v in info.metadata.items() if k != TOKEN} == seen["metadata"]
        assert fs.recovery.uploaded == ["f"]
        # the unchanged base parts were copied inside S3, not sent again
        assert store.requests["upload_part_copy"] == 1 and store.requests["upload_part"] == 2
        [kept] = fs.recovery.kept
        assert kept["key"] == "f" and kept["acknowledged"] is False and "never closed" in str(kept["why"])
        assert Path(str(kept["data"])).read_bytes() == bytes(newer)
        assert side_files(tmp_path) == []
        assert await store.list_multipart_uploads("") == []
        fs = await lives.life(nothing, "stop")  # kept, reported again, never published
        assert store.data("f") == bytes(acked) and [k["key"] for k in fs.recovery.kept] == ["f"]

    run(main)


def test_appending_after_a_failed_close_saves_no_bytes_aside(tmp_path: Path) -> None:
    """The eventual-mode pattern (``exec 3>>log; echo $i >&3``) while uploads fail: each append lands past
    the acknowledged length, so nothing is copied aside; the stop publishes the last closed state."""
    store = MemoryStore()
    lives = Lives(store, tmp_path)

    async def body(fs: FileSystem) -> None:
        fh = await write_file(fs, "log", b"", close=False)
        ino = await resolve(fs, "log")
        text = b""
        for i in range(20):
            line = f"line {i}\n".encode()
            await fs.write(fh, len(text), line)
            text += line
            copy = fs.cache.get(ino)
            assert copy is not None
            if i:
                assert copy.state is WriteState.REWRITTEN and copy.acked is not None
                assert copy.acked.extents == [] and copy.acked.size == len(text) - len(line)
            assert side_files(tmp_path) == []
            if i < 19:
                store.fail("put", EndpointUnreachable("S3 is down"), times=1)
                with pytest.raises(S3FilesError):
                    await fs.flush(fh)
        assert store.keys() == []

    async def main() -> None:
        await lives.life(body, "stop")
        closed = b"".join(f"line {i}\n".encode() for i in range(19))
        assert store.data("log") == closed
        fs = await lives.life(nothing, "stop")
        [kept] = fs.recovery.kept
        assert Path(str(kept["data"])).read_bytes() == closed + b"line 19\n"
        assert store.data("log") == closed

    run(main)


def test_the_retry_publishes_the_closed_version_and_a_later_close_the_newer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3files.core.uploader, "RETRY_FIRST", 0.05)
    store = MemoryStore()

    async def body(fs: FileSystem) -> None:
        store.fail("put", EndpointUnreachable("S3 is down"), times=1)
        fh = await write_file(fs, "x", b"closed", close=False)
        with pytest.raises(S3FilesError):
            await fs.flush(fh)
        await fs.write(fh, 0, b"NEW")
        await fs.setattr(await resolve(fs, "x"), size=4)
        for _ in range(100):
            if "x" in store.keys():
                break
            await trio.sleep(0.05)
        assert store.data("x") == b"closed"
        copy = fs.cache.get(await resolve(fs, "x"))
        assert copy is not None and copy.state is WriteState.DIRTY and copy.acked is None
        assert side_files(tmp_path) == []
        opened = await fs.open(await resolve(fs, "x"), os.O_RDONLY)
        assert await fs.read(opened.fh, 0, 100) == b"NEWs"  # the program's view: its newer bytes
        await fs.release(opened.fh)
        await fs.flush(fh)
        await fs.release(fh)
        assert store.data("x") == b"NEWs"

    run(lambda: Lives(store, tmp_path).life(body))  # type: ignore[arg-type,return-value]
    assert cache_files(tmp_path) == []


@pytest.mark.parametrize("size", [100, 2 * MIB, 11 * MIB], ids=["memory", "put", "multipart"])
def test_a_write_during_a_failing_upload_keeps_what_the_close_acknowledged(tmp_path: Path, size: int) -> None:
    """A write (another thread of the program, or eventual mode's background upload) while a close's own
    upload is under way: the upload publishes the closed bytes, not the newer ones; if it fails, the
    closed state is kept aside (REWRITTEN), and after kill -9 the next mount publishes exactly it."""
    store = MemoryStore()
    lives = Lives(store, tmp_path, upload_part_size=5 * MIB)
    closed = random.Random(7).randbytes(size)
    failing = "put" if size <= 5 * MIB else "complete_multipart"

    async def body(fs: FileSystem) -> None:
        fh = await write_file(fs, "t", closed, close=False)
        real = getattr(store, failing)

        async def write_and_fail(*args: Any, **kw: Any) -> Any:
            await fs.write(fh, 3, b"NEWER")
            await fs.setattr(await resolve(fs, "t"), size=size - 10)
            raise EndpointUnreachable("S3 is down")

        setattr(store, failing, write_and_fail)
        with pytest.raises(S3FilesError):
            await fs.flush(fh)
        setattr(store, failing, real)
        copy = fs.cache.get(await resolve(fs, "t"))
        assert copy is not None and copy.state is WriteState.REWRITTEN and copy.acked is not None
        assert copy.acked.size == size and len(side_files(tmp_path)) == 1

    async def main() -> None:
        await lives.life(body, "die")
        assert store.keys() == []
        fs = await lives.life(nothing, "stop")
        assert store.data("t") == closed and fs.recovery.uploaded == ["t"]
        [kept] = fs.recovery.kept
        assert Path(str(kept["data"])).read_bytes() == (closed[:3] + b"NEWER" + closed[8:])[: size - 10]
        assert await store.list_multipart_uploads("") == []

    run(main)


def test_a_write_during_a_successful_upload_is_not_published_with_it(tmp_path: Path) -> None:
    """The close's upload reads through what was kept aside: a write that lands while it is under way
    is not in the published object; the next close publishes it."""
    store = MemoryStore()
    closed = random.Random(8).randbytes(11 * MIB)

    async def body(fs: FileSystem) -> None:
        fh = await write_file(fs, "u", closed, close=False)
        real = store.upload_part

        async def write_first(*args: Any, **kw: Any) -> Any:
            if fs.cache.get(await resolve(fs, "u")).acked is None:  # type: ignore[union-attr]
                await fs.write(fh, 6 * MIB, b"LATER")  # into a part not sent yet
            return await real(*args, **kw)

        store.upload_part = write_first  # type: ignore[method-assign]
        await fs.flush(fh)
        store.upload_part = real  # type: ignore[method-assign]
        assert store.data("u") == closed
        copy = fs.cache.get(await resolve(fs, "u"))
        assert copy is not None and copy.state is WriteState.DIRTY and copy.acked is None
        assert side_files(tmp_path) == []
        await fs.flush(fh)
        await fs.release(fh)
        assert store.data("u") == closed[: 6 * MIB] + b"LATER" + closed[6 * MIB + 5 :]

    run(lambda: Lives(store, tmp_path, upload_part_size=5 * MIB).life(body))  # type: ignore[arg-type,return-value]
    assert cache_files(tmp_path) == []


def test_a_write_into_a_part_being_read_for_the_upload_is_sent_again_as_closed(tmp_path: Path) -> None:
    """A write lands in a part while the close's upload reads that part from the data file: the part
    is sent again, read through the closed version kept aside, so the object is what the close
    acknowledged."""
    store = MemoryStore()
    closed = random.Random(9).randbytes(11 * MIB)
    raced: list[int] = []

    async def body(fs: FileSystem) -> None:
        fh = await write_file(fs, "v", closed, close=False)
        real = store.upload_part_from

        async def write_then_read(key: str, upload_id: str, number: int, fd: int, off: int, length: int) -> Any:
            if number == 3 and not raced:  # the tail part, read at close (parts 1 and 2 were streamed)
                raced.append(number)
                await fs.write(fh, 10 * MIB + 1, b"RACE")
            return await real(key, upload_id, number, fd, off, length)

        store.upload_part_from = write_then_read  # type: ignore[method-assign]
        await fs.flush(fh)
        store.upload_part_from = real  # type: ignore[method-assign]
        assert raced == [3] and store.data("v") == closed
        await fs.flush(fh)
        await fs.release(fh)
        assert store.data("v") == closed[: 10 * MIB + 1] + b"RACE" + closed[10 * MIB + 5 :]

    run(lambda: Lives(store, tmp_path, upload_part_size=5 * MIB).life(body))  # type: ignore[arg-type,return-value]
    assert cache_files(tmp_path) == []


def test_a_newer_close_replaces_the_version_kept_aside(tmp_path: Path) -> None:
    store = MemoryStore()
    store.seed("y", b"0123456789")
    lives = Lives(store, tmp_path)

    async def body(fs: FileSystem) -> None:
        opened = await fs.open(await resolve(fs, "y"), os.O_RDWR)
        await fs.write(opened.fh, 0, b"a")
        store.fail("put", EndpointUnreachable("S3 is down"), times=2)
        with pytest.raises(S3FilesError):
            await fs.flush(opened.fh)  # "a123456789" acknowledged
        used = fs.cache.used
        await fs.write(opened.fh, 1, b"b")
        assert len(side_files(tmp_path)) == 1
        assert fs.cache.used == used + 1  # the byte kept aside counts against --cache-size
        with pytest.raises(S3FilesError):
            await fs.flush(opened.fh)  # "ab23456789" acknowledged: the kept version goes
        assert side_files(tmp_path) == [] and fs.cache.used == used
        await fs.write(opened.fh, 2, b"c")  # never closed

    async def main() -> None:
        await lives.life(body, "die")
        fs = await lives.life(nothing, "stop")
        assert store.data("y") == b"ab23456789" and fs.recovery.uploaded == ["y"]

    run(main)


def test_a_local_write_that_fails_after_a_failed_close_loses_nothing_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache folder refuses a write (ENOSPC) into a file whose closed version waits for its upload:
    the program gets the error, later closes are refused, and the closed version is still what a crash
    and the next mount publish (the newer bytes are unfit: never published)."""
    store = MemoryStore()
    store.seed("q", b"0123456789")
    lives = Lives(store, tmp_path)

    async def body(fs: FileSystem) -> None:
        opened = await fs.open(await resolve(fs, "q"), os.O_RDWR)
        await fs.write(opened.fh, 0, b"closed")
        store.fail("put", EndpointUnreachable("S3 is down"), times=1)
        with pytest.raises(S3FilesError):
            await fs.flush(opened.fh)
        real = fs.cache.pwrite

        def full(fd: int, data: bytes, off: int) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(fs.cache, "pwrite", full)
        with pytest.raises(S3FilesError) as refused:
            await fs.write(opened.fh, 2, b"XY")
        assert refused.value.errno == errno.ENOSPC
        monkeypatch.setattr(fs.cache, "pwrite", real)
        with pytest.raises(S3FilesError) as again:
            await fs.flush(opened.fh)
        assert again.value.errno == errno.ENOSPC and store.data("q") == b"0123456789"

    async def main() -> None:
        await lives.life(body, "die")
        fs = await lives.life(nothing, "stop")
        assert store.data("q") == b"closed6789" and fs.recovery.uploaded == ["q"]

    run(main)


def test_a_kept_version_whose_side_file_is_gone_is_kept_not_published(tmp_path: Path) -> None:
    """Recovery never publishes a version it cannot rebuild: with its side file deleted (by hand, say),
    the record is kept and reported, and S3 keeps what it had."""
    store = MemoryStore()
    store.seed("z", b"old bytes")
    lives = Lives(store, tmp_path)

    async def body(fs: FileSystem) -> None:
        opened = await fs.open(await resolve(fs, "z"), os.O_RDWR)
        await fs.write(opened.fh, 0, b"NEW")
        store.fail("put", EndpointUnreachable("S3 is down"), times=1)
        with pytest.raises(S3FilesError):
            await fs.flush(opened.fh)
        await fs.write(opened.fh, 0, b"x")

    async def main() -> None:
        await lives.life(body, "die")
        [side] = side_files(tmp_path)
        side.unlink()
        fs = await lives.life(nothing, "stop")
        assert store.data("z") == b"old bytes" and fs.recovery.uploaded == []
        assert [k["key"] for k in fs.recovery.kept] == ["z"]

    run(main)


# -- write states ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("old", list(WriteState))
@pytest.mark.parametrize("new", list(WriteState))
def test_write_state_transition_table(old: WriteState, new: WriteState) -> None:
    if new is old or new in TRANSITIONS[old]:
        assert advance(old, new) is new
    else:
        with pytest.raises(AssertionError, match=f"from {old.name} to {new.name}"):
            advance(old, new)


def test_every_write_state_transition_happens_in_the_scenarios(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The table is not wishful: each allowed move is made by some scenario through the FileSystem."""
    seen: set[tuple[WriteState, WriteState]] = set()
    real_move = LocalCopy.move

    def move(self: LocalCopy, new: WriteState) -> None:
        if new is not self.state:
            seen.add((self.state, new))
        real_move(self, new)

    monkeypatch.setattr(LocalCopy, "move", move)
    monkeypatch.setattr(s3files.core.uploader, "RETRY_FIRST", 1000.0)
    store = MemoryStore()
    store.seed("base", b"base")
    store.seed("gone", b"gone")

    async def body(fs: FileSystem) -> None:
        # CLEAN -> DIRTY -> UPLOADING -> CLEAN, then CLEAN -> ORPHANED
        opened = await fs.open(await resolve(fs, "base"), os.O_RDWR)
        await fs.write(opened.fh, 0, b"B")
        await fs.flush(opened.fh)
        await fs.unlink(ROOT_INO, "base")
        await fs.release(opened.fh)
        # DIRTY -> ORPHANED
        fh = await write_file(fs, "d", b"x", close=False)
        await fs.unlink(ROOT_INO, "d")
        await fs.release(fh)
        # UPLOADING -> ACKED -> REWRITTEN -> UPLOADING -> DIRTY (written during the upload)
        store.fail("put", EndpointUnreachable("down"), times=1)
        fh = await write_file(fs, "a", b"1", close=False)
        with pytest.raises(S3FilesError):
            await fs.flush(fh)
        await fs.write(fh, 1, b"2")  # ACKED -> REWRITTEN
        real_put = store.put

        async def put_and_write(*args: Any, **kw: Any) -> Any:
            await fs.write(fh, 2, b"3")  # a write while the upload is in flight
            return await real_put(*args, **kw)

        store.put = put_and_write  # type: ignore[method-assign]
        await fs.flush(fh)  # UPLOADING -> DIRTY
        store.put = real_put  # type: ignore[method-assign]
        await fs.flush(fh)
        await fs.release(fh)
        # UPLOADING -> CONFLICTED -> DIRTY ; CONFLICTED -> ORPHANED
        opened = await fs.open(await resolve(fs, "gone"), os.O_RDWR)
        await fs.write(opened.fh, 0, b"G")
        store.seed("gone", b"theirs")
        with pytest.raises(S3FilesError):
            await fs.flush(opened.fh)
        await fs.write(opened.fh, 0, b"H")
        with pytest.raises(S3FilesError):
            await fs.flush(opened.fh)  # conflicts again (a second copy)
        await fs.unlink(ROOT_INO, "gone")
        await fs.release(opened.fh)
        # ACKED -> UPLOADING (a retry) ; ACKED -> ORPHANED
        store.fail("put", EndpointUnreachable("down"), times=2)
        fh = await write_file(fs, "r", b"r", close=False)
        with pytest.raises(S3FilesError):
            await fs.flush(fh)
        with pytest.raises(S3FilesError):
            await fs.flush(fh)  # ACKED -> UPLOADING -> ACKED
        await fs.write(fh, 0, b"R")  # ACKED -> REWRITTEN
        await fs.unlink(ROOT_INO, "r")  # REWRITTEN -> ORPHANED
        await fs.release(fh)
        # UPLOADING -> REWRITTEN (written during an upload that fails; on disk: over SPILL_BYTES)
        fh = await write_file(fs, "w", b"w" * (2 * MIB), close=False)
        real_put = store.put

        async def write_and_fail(*args: Any, **kw: Any) -> Any:
            await fs.write(fh, 0, b"W")
            raise EndpointUnreachable("down")

        store.put = write_and_fail  # type: ignore[method-assign]
        with pytest.raises(S3FilesError):
            await fs.flush(fh)
        store.put = real_put  # type: ignore[method-assign]
        copy = fs.cache.get((await fs.lookup(ROOT_INO, "w")).ino)
        assert copy is not None and copy.state is WriteState.REWRITTEN
        await fs.flush(fh)
        await fs.release(fh)
        # ACKED -> ORPHANED ; REWRITTEN -> DIRTY (the kept version published) ; REWRITTEN -> BROKEN
        store.fail("put", EndpointUnreachable("down"), times=1)
        fh = await write_file(fs, "o", b"o", close=False)
        with pytest.raises(S3FilesError):
            await fs.flush(fh)
        await fs.unlink(ROOT_INO, "o")
        await fs.release(fh)
        for name in ("k", "b"):
            store.fail("put", EndpointUnreachable("down"), times=1)
            fh = await write_file(fs, name, b"kept", close=False)
            with pytest.raises(S3FilesError):
                await fs.flush(fh)
            await fs.write(fh, 0, b"newer")
            copy = fs.cache.get((await fs.lookup(ROOT_INO, name)).ino)
            assert copy is not None and copy.state is WriteState.REWRITTEN
            if name == "k":
                await fs.files.publish_waiting(copy)  # what a stop or the retry does
                assert copy.state is WriteState.DIRTY and store.data("k") == b"kept"
                await fs.flush(fh)
                assert store.data("k") == b"newer"
            else:
                fs.cache.break_copy(copy, "test")  # a later local write failed: the kept version is whole
                assert copy.state is WriteState.REWRITTEN
                await fs.files.publish_waiting(copy)  # REWRITTEN -> BROKEN
                assert copy.state is WriteState.BROKEN and store.data("b") == b"kept"
            await fs.release(fh)
        # DIRTY -> ACKED (the upload was cancelled) ; DIRTY -> BROKEN -> ORPHANED ; ACKED/UPLOADING -> BROKEN
        fh = await write_file(fs, "c", b"c", close=False)
        with trio.move_on_after(0.05) as scope:
            store._latency = 1.0
            await fs.flush(fh)
        store._latency = 0.0
        assert scope.cancelled_caught
        copy = fs.cache.get((await fs.lookup(ROOT_INO, "c")).ino)
        assert copy is not None and copy.state is WriteState.ACKED
        fs.cache.break_copy(copy, "test: a local write failed")  # ACKED -> BROKEN
        await fs.unlink(ROOT_INO, "c")  # BROKEN -> ORPHANED
        await fs.release(fh)
        fh = await write_file(fs, "e", b"e", close=False)
        copy = fs.cache.get((await fs.lookup(ROOT_INO, "e")).ino)
        assert copy is not None
        fs.cache.break_copy(copy, "test")  # DIRTY -> BROKEN
        fh2 = await write_file(fs, "u", b"u", close=False)
        copy = fs.cache.get((await fs.lookup(ROOT_INO, "u")).ino)
        assert copy is not None
        real_put = store.put

        async def put_and_break(*args: Any, **kw: Any) -> Any:
            fs.cache.break_copy(copy, "test")  # UPLOADING -> BROKEN
            return await real_put(*args, **kw)

        store.put = put_and_break  # type: ignore[method-assign]
        await fs.flush(fh2)  # what the flush acknowledged was read before the break: published
        store.put = real_put  # type: ignore[method-assign]
        with pytest.raises(S3FilesError) as broken:
            await fs.flush(fh2)  # but nothing after it is, ever
        assert broken.value.errno == errno.ENOSPC
        # DIRTY -> ACKED: eventual mode's close (acknowledged in the cache folder, uploaded later)
        fh = await write_file(fs, "wb", b"w", close=False)
        copy = fs.cache.get((await fs.lookup(ROOT_INO, "wb")).ino)
        assert copy is not None
        await fs.files.acknowledge(copy)
        # REWRITTEN -> ACKED: written again, then eventual mode's close acknowledges the newer bytes
        await fs.write(fh, 0, b"W")  # ACKED -> REWRITTEN (the closed version is kept aside)
        assert copy.state is WriteState.REWRITTEN
        await fs.files.acknowledge(copy)
        assert copy.state is WriteState.ACKED and copy.acked is None
        await fs.release(fh)

    run(lambda: Lives(store, tmp_path).life(body))  # type: ignore[arg-type,return-value]
    allowed = {(old, new) for old, news in TRANSITIONS.items() for new in news}
    assert seen <= allowed
    assert allowed - seen == set(), f"never made: {sorted((a.name, b.name) for a, b in allowed - seen)}"


# -- the write machine with deaths and stops -------------------------------------------------------------

NAMES = ("a", "b")
SMALL = st.binary(max_size=40)
DATA = st.one_of(SMALL, SMALL, SMALL, st.integers(0, 3).map(lambda seed: random.Random(seed).randbytes(6 * MIB)))


class _Life:
    """One FileSystem on its own nursery inside the portal's trio run (so that it can die alone)."""

    def __init__(self, machine: CrashMachine) -> None:
        self.scope = trio.CancelScope()
        self.fs: FileSystem | None = None

        async def hold(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    self.fs = FileSystem(
                        machine.store, machine.opts, spawn=nursery.start_soon, staging=machine.folder
                    )
                    task_status.started()
                    await trio.sleep_forever()

        async def start() -> None:
            assert machine.portal.nursery is not None
            await machine.portal.nursery.start(hold)

        machine.portal.run(start)



class WHandle:
    def __init__(self, name: str, fh: int, life: int) -> None:
        self.name, self.fh, self.pos, self.orphan, self.life = name, fh, 0, False, life

    def __repr__(self) -> str:
        return f"<{self.name} fh={self.fh}{' orphan' if self.orphan else ''}>"


class CrashMachine(RuleBasedStateMachine):
    """Writes, fsyncs, closes and unlinks through the core, outages of S3's upload calls, and lives that
    end by dying (kill -9) or stopping (SIGTERM). After each end, the next life recovers with S3 reachable
    again, and the bucket must hold for every name exactly what the last close or fsync acknowledged (or
    nothing after an unlink), and no multipart upload. During a life, S3 only ever holds acknowledged
    bytes. An acknowledged state whose upload failed stays expected after later writes, truncations
    and open(O_TRUNC) (the core keeps it aside: REWRITTEN), until a newer close or fsync acknowledges
    a newer state."""

    handles = Bundle("handles")
    MODE: dict[str, Any] = {}  # options of the consistency mode the machine runs in (see the subclass)

    def __init__(self) -> None:
        super().__init__()
        from test_properties import TrioPortal

        self.tmp = tempfile.TemporaryDirectory(prefix="s3files-crash-")
        self.folder = Path(self.tmp.name)
        self.store = MemoryStore()
        self.opts = options(upload_part_size=5 * MIB, **self.MODE)
        self.write_back = self.opts.consistency.value == "eventual"  # close acknowledges, does not upload
        self.portal = TrioPortal(timeout=60.0)
        self.published: dict[str, bytes | None] = dict.fromkeys(NAMES)
        self.pending: dict[str, bytes | None] = dict.fromkeys(NAMES)
        self.content: dict[str, bytes | None] = dict.fromkeys(NAMES)
        self.acked: dict[str, set[bytes]] = {n: set() for n in NAMES}
        self.open: list[WHandle] = []
        self.lives = 0  # handles of an earlier life died with it
        self.life = _Life(self)

    @property
    def fs(self) -> FileSystem:
        assert self.life.fs is not None
        return self.life.fs

    def call(self, afn: Callable[[], Awaitable[Any]]) -> Any:
        return self.portal.run(afn)

    def cancel(self, life: _Life) -> None:
        async def go() -> None:
            life.scope.cancel()

        self.call(go)

    def teardown(self) -> None:
        try:
            self.call(self.fs.aclose)
            self.cancel(self.life)
        finally:
            self.portal.close()
            self.tmp.cleanup()

    @rule(target=handles, name=st.sampled_from(NAMES), mode=st.sampled_from(["w", "a", "r+"]))
    def open_file(self, name: str, mode: str) -> Any:
        flags = {"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT, "r+": os.O_RDWR}[mode]

        async def go() -> int | None:
            try:
                ino = (await self.fs.lookup(ROOT_INO, name)).ino
            except S3FilesError as exc:
                if exc.errno != errno.ENOENT or not flags & os.O_CREAT:
                    raise
                return (await self.fs.create(ROOT_INO, name, 0o644, 0, 0, flags)).fh
            return (await self.fs.open(ino, flags)).fh

        try:
            fh = self.call(go)
        except S3FilesError as exc:
            assert exc.errno == errno.ENOENT and self.content[name] is None
            return multiple()
        handle = WHandle(name, fh, self.lives)
        if self.content[name] is None or mode == "w":
            self.content[name] = b""  # an acknowledged state waiting for its upload stays expected
        if mode == "a":
            handle.pos = len(self.content[name] or b"")
        self.open.append(handle)
        return handle

    @rule(handle=handles, data=DATA)
    def write(self, handle: WHandle, data: bytes) -> None:
        if handle.life != self.lives or not data:  # the kernel never sends a write of nothing
            return
        self.call(lambda: self.fs.write(handle.fh, handle.pos, data))
        if not handle.orphan:
            old = self.content[handle.name] or b""
            old = old.ljust(handle.pos, b"\0")
            self.content[handle.name] = old[: handle.pos] + data + old[handle.pos + len(data) :]
        handle.pos += len(data)

    @rule(handle=handles, where=st.integers(0, 7 * MIB))
    def seek(self, handle: WHandle, where: int) -> None:
        """Move the handle's offset into what the file holds: the next write overwrites."""
        handle.pos = where % (len(self.content[handle.name] or b"") + 1)

    @rule(handle=handles, size=st.sampled_from([0, 3, 17, 5 * MIB + 1]))
    def truncate(self, handle: WHandle, size: int) -> None:
        """ftruncate through an open handle (the copy stays open: nothing is published)."""
        if handle.life != self.lives or handle.orphan:
            return
        self.call(lambda: self.fs.setattr(self.fs.handles.file(handle.fh).ino, size=size))
        self.content[handle.name] = (self.content[handle.name] or b"")[:size].ljust(size, b"\0")

    def _acknowledge(self, handle: WHandle, afn: Callable[[], Awaitable[Any]], uploads: bool = True) -> None:
        """``uploads``: the call uploads what it acknowledges (fsync; close except in eventual mode, where
        it only acknowledges: the bytes are pending until the write-back, a stop or recovery)."""
        try:
            self.call(afn)
            failed = False
        except S3FilesError as exc:
            assert exc.errno == errno.EIO, exc
            failed = True
        if handle.orphan or self.content[handle.name] is None:
            return
        data = self.content[handle.name]
        assert data is not None
        self.acked[handle.name].add(data)
        if failed or not uploads:
            self.pending[handle.name] = data
        else:
            self.published[handle.name], self.pending[handle.name] = data, None

    @rule(handle=handles, down=st.booleans())
    def fsync(self, handle: WHandle, down: bool) -> None:
        if handle.life != self.lives:
            return
        if down:
            self.outage(1)  # (a rule of its own too; here it meets an acknowledgement more often)
        self._acknowledge(handle, lambda: self.fs.fsync(handle.fh))

    @rule(handle=handles, where=st.integers(0, 7 * MIB), data=SMALL)
    def overwrite_after_failed_fsync(self, handle: WHandle, where: int, data: bytes) -> None:
        """The sequence the rules above rarely meet by chance: an fsync whose upload fails, then a write
        over what it acknowledged (that state must still be what a stop or recovery publishes)."""
        self.fsync(handle, True)
        self.seek(handle, where)
        self.write(handle, data)

    @rule(handle=consumes(handles), down=st.booleans())
    def close(self, handle: WHandle, down: bool) -> None:
        if handle.life != self.lives:
            return
        self.open.remove(handle)
        if down:
            self.outage(1)

        async def go() -> None:
            try:
                await self.fs.flush(handle.fh)
            finally:
                await self.fs.release(handle.fh)

        self._acknowledge(handle, go, uploads=not self.write_back)

    @rule(name=st.sampled_from(NAMES))
    def unlink(self, name: str) -> None:
        try:
            self.call(lambda: self.fs.unlink(ROOT_INO, name))
        except S3FilesError as exc:
            assert exc.errno == errno.ENOENT and self.content[name] is None
            return
        self.content[name] = self.published[name] = self.pending[name] = None
        for handle in self.open:
            if handle.name == name:
                handle.orphan = True

    @rule(src=st.sampled_from(NAMES), dst=st.sampled_from(NAMES))
    def rename(self, src: str, dst: str) -> None:
        try:
            self.call(lambda: self.fs.rename(ROOT_INO, src, ROOT_INO, dst, 0))
        except S3FilesError as exc:
            assert exc.errno == errno.ENOENT and self.content[src] is None
            return
        if src == dst:
            return
        for handle in self.open:
            if handle.name == dst:
                handle.orphan = True
            elif handle.name == src:
                handle.name = dst
        self.acked[dst] |= self.acked[src]  # the version copied to the new name was acknowledged there
        for model in (self.content, self.published, self.pending):
            model[dst], model[src] = model[src], None

    @rule(times=st.integers(1, 3))
    def outage(self, times: int) -> None:
        for op in OUTAGE:
            self.store.fail(op, EndpointUnreachable("S3 is down (test)"), times=times)

    @rule(how=st.sampled_from(["die", "stop"]))
    def end_life(self, how: str) -> None:
        old = self.life
        if how == "stop":
            self.call(self.fs.aclose)
        self.cancel(old)
        if how == "die":
            die(old.fs)  # type: ignore[arg-type]
        self.store._faults.clear()  # S3 is back for the next mount
        self.open.clear()
        self.lives += 1
        self.life = _Life(self)
        self.call(lambda: self.fs.recover(OnRecovery.UPLOAD))
        for name in NAMES:
            expected = self.pending[name] if self.pending[name] is not None else self.published[name]
            got = self.store._objects.get(name)
            assert (got.data if got else None) == expected, f"{name} after {how} and recovery"
            self.content[name], self.published[name], self.pending[name] = expected, expected, None
        assert self.call(lambda: self.store.list_multipart_uploads("")) == []

    @invariant()
    def s3_holds_only_acknowledged_bytes(self) -> None:
        for name in NAMES:
            got = self.store._objects.get(name)
            assert got is None or got.data in self.acked[name], f"{name} holds bytes nobody acknowledged"
        extra = [k for k in self.store.keys() if k not in NAMES]
        assert extra == [], f"unexpected keys {extra}"


def test_acknowledged_writes_survive_deaths_and_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3files.core.uploader, "RETRY_FIRST", 10_000.0)  # only stops and recovery retry
    run_state_machine_as_test(
        CrashMachine,
        settings=settings(
            max_examples=200 if FULL_COUNTS else 100,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )


class EventualCrashMachine(CrashMachine):
    """The same machine in eventual mode (write-back): close acknowledges without uploading (the delay
    is longer than any run, so only fsync, a stop and recovery upload), and the same promises hold: S3
    only ever holds acknowledged bytes, and after a death or a stop the bucket holds the last one."""

    MODE = {"consistency": "eventual", "writeback_delay": 10_000.0}


def test_acknowledged_writes_survive_deaths_and_stops_in_eventual_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3files.core.uploader, "RETRY_FIRST", 10_000.0)
    run_state_machine_as_test(
        EventualCrashMachine,
        settings=settings(
            max_examples=100 if FULL_COUNTS else 40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )
