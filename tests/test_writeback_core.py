"""Eventual mode's write side in the core: close acknowledges durably without uploading, the write-back
uploads after ``writeback_delay`` (re-armed by every close, bounded by MAX_HOLD delays), fsync and
``sync`` upload at once, stops and crashes lose nothing acknowledged, and metadata changes and renames
of a waiting file fold into its one upload. Time is trio's MockClock (the write-back sleeps on trio's
clock): the tests jump it instead of sleeping through delays. Request counts from the MemoryStore."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

from s3files.core.fs import FileSystem
from s3files.core.inodes import ROOT_INO
from s3files.core.records import parse_record
from s3files.core.recovery import OnRecovery
from s3files.core.writeback import MAX_HOLD
from s3files.core.writestate import WriteState
from s3files.errors import EndpointUnreachable, NotFound
from s3files.options import Consistency, MountOptions, Source
from s3files.store import MemoryStore

DELAY = 5.0


def options(**kw: Any) -> MountOptions:
    kw.setdefault("consistency", Consistency.EVENTUAL)
    kw.setdefault("writeback_delay", DELAY)
    return MountOptions(source=Source("bucket", ""), mountpoint=Path("/unused"), **kw)


def run_eventual(
    store: MemoryStore,
    body: Callable[[FileSystem, trio.testing.MockClock], Awaitable[None]],
    folder: Path | None = None,
    stop: bool = True,
    **kw: Any,
) -> None:
    """Run ``body`` on an eventual-mode FileSystem under a MockClock (``clock.jump`` moves time);
    ``folder``: a cache folder that outlives the mount; ``stop``: end with ``aclose`` (else as kill -9
    leaves it: nothing more runs, the folder's files stay)."""
    clock = trio.testing.MockClock()

    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            async with trio.open_nursery() as nursery:
                fs = FileSystem(store, options(**kw), spawn=nursery.start_soon, staging=folder or Path(tmp))
                await fs.recover(OnRecovery(fs.opts.on_recovery))
                await body(fs, clock)
                if stop:
                    await fs.aclose()
                else:
                    for copy in fs.cache.live():
                        os.close(copy.fd)
                    fs.folder.close()
                nursery.cancel_scope.cancel()

    trio.run(main, clock=clock)


async def settle(clock: trio.testing.MockClock, seconds: float) -> None:
    """Move time on by ``seconds`` and let every task run that is due by then."""
    await trio.testing.wait_all_tasks_blocked()
    clock.jump(seconds)
    await trio.testing.wait_all_tasks_blocked()


async def write_file(fs: FileSystem, name: str, data: bytes, flags: int = os.O_WRONLY | os.O_TRUNC) -> None:
    """``open(name, "w").write(data)`` then close: create, or open an existing file with ``flags``."""
    try:
        ino = (await fs.lookup(ROOT_INO, name)).ino
    except Exception:
        opened = await fs.create(ROOT_INO, name, 0o644, 0, 0)
    else:
        opened = await fs.open(ino, flags)
    off = (await fs.getattr(opened.attr.ino)).size if flags & os.O_APPEND else 0
    await fs.write(opened.fh, off, data)
    await fs.flush(opened.fh)
    await fs.release(opened.fh)


def puts(store: MemoryStore) -> int:
    counts = store.requests.snapshot()
    return counts.get("put", 0) + counts.get("complete_multipart", 0)


def test_close_returns_with_no_request_and_the_file_is_uploaded_after_the_delay() -> None:
    store = MemoryStore()

    async def body(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        opened = await fs.create(ROOT_INO, "a.txt", 0o644, 0, 0)
        store.requests.reset()
        await fs.write(opened.fh, 0, b"hello")
        await fs.flush(opened.fh)
        await fs.release(opened.fh)
        assert store.requests.snapshot() == {}  # no PUT, no HEAD: close asked nothing of S3
        copy = fs.cache.get((await fs.lookup(ROOT_INO, "a.txt")).ino)
        assert copy is not None and copy.state is WriteState.ACKED and copy.path is not None
        record = parse_record((fs.folder.files / f"{copy.id}.json").read_bytes())
        assert (record["state"], record["acknowledged"], record["key"]) == ("acked", True, "a.txt")
        assert Path(copy.path).read_bytes() == b"hello"  # durable in the cache folder, not in memory
        assert fs.status()["files"][0]["writeback"] is True  # type: ignore[index]
        await settle(clock, DELAY - 0.5)
        assert store.keys() == []
        await settle(clock, 1.0)
        assert store.keys() == ["a.txt"] and store.data("a.txt") == b"hello"
        assert puts(store) == 1
        assert fs.cache.get(copy.node.ino) is None  # settled: a clean cached copy, nothing waits
        assert fs.status()["files"] == []

    run_eventual(store, body)


def test_ten_rewrites_within_the_delay_are_uploaded_once() -> None:
    store = MemoryStore()

    async def body(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        for i in range(10):
            await write_file(fs, "log", f"version {i}\n".encode())
            await settle(clock, DELAY / 2)  # each close re-arms: never DELAY since the last one
        assert store.keys() == []
        await settle(clock, DELAY)
        assert store.data("log") == b"version 9\n"
        assert puts(store) == 1

    run_eventual(store, body)


def test_appends_through_a_descriptor_kept_open_are_uploaded_once() -> None:
    """``exec 3>>log; echo $i >&3``: each echo closes a duplicate (a FUSE flush), the file stays open."""
    store = MemoryStore()

    async def body(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        opened = await fs.create(ROOT_INO, "log", 0o644, 0, 0)
        for i in range(100):
            await fs.write(opened.fh, i * 4, f"{i:03d}\n".encode())
            await fs.flush(opened.fh)
        assert store.requests.snapshot().get("put", 0) == 0
        await settle(clock, DELAY)
        assert store.data("log") == b"".join(f"{i:03d}\n".encode() for i in range(100))
        assert puts(store) == 1
        await fs.release(opened.fh)
        await settle(clock, DELAY)
        assert puts(store) == 1  # the last close changed nothing: no second upload

    run_eventual(store, body)


def test_a_file_closed_again_and_again_is_uploaded_within_max_hold_delays() -> None:
    store = MemoryStore()

    async def body(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        step = DELAY / 2
        for i in range(2 * MAX_HOLD + 1):  # closed every half delay for MAX_HOLD delays
            await write_file(fs, "busy", f"{i}".encode())
            if i == 2 * MAX_HOLD - 1:
                assert store.keys() == []  # just under MAX_HOLD delays since the first close
            await settle(clock, step)
        assert puts(store) == 1  # the longest hold passed once
        assert store.data("busy") == str(2 * MAX_HOLD - 1).encode()

    run_eventual(store, body)


def test_fsync_uploads_that_file_only() -> None:
    store = MemoryStore()

    async def body(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        await write_file(fs, "other", b"waits")
        opened = await fs.create(ROOT_INO, "now", 0o644, 0, 0)
        await fs.write(opened.fh, 0, b"synced")
        await fs.fsync(opened.fh)
        assert store.keys() == ["now"] and store.data("now") == b"synced"
        await fs.release(opened.fh)
        assert puts(store) == 1
        # fsync through a descriptor opened for reading uploads a file waiting for the write-back
        reader = await fs.open((await fs.lookup(ROOT_INO, "other")).ino, os.O_RDONLY)
        await fs.fsync(reader.fh)
        await fs.release(reader.fh)
        assert store.data("other") == b"waits"
        await settle(clock, 2 * DELAY)
        assert puts(store) == 2  # nothing left for the write-back

    run_eventual(store, body)


def test_sync_uploads_everything_or_a_folder_and_reports_each_failure() -> None:
    store = MemoryStore()
    store.seed("d/", b"")
    store.seed("e/", b"")

    async def body(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        d = (await fs.lookup(ROOT_INO, "d")).ino
        for name in ("x", "y"):
            opened = await fs.create(d, name, 0o644, 0, 0)
            await fs.write(opened.fh, 0, name.encode())
            await fs.release(opened.fh)
        await write_file(fs, "top", b"top")
        assert await fs.sync("d") == {}
        assert store.keys() == ["d/", "d/x", "d/y", "e/"]  # only the folder asked for
        # one file fails (S3 down for one PUT), one is open with changes no close acknowledged
        await write_file(fs, "f1", b"1")
        opened = await fs.create(ROOT_INO, "open", 0o644, 0, 0)
        await fs.write(opened.fh, 0, b"half")
        store.fail("put", EndpointUnreachable("S3 is down"), times=1)
        failed = await fs.sync()
        assert set(failed) == {"open", "top"} or set(failed) == {"open", "f1"}
        assert "open for writing" in failed["open"]
        assert "S3 is down" in next(why for path, why in failed.items() if path != "open")
        assert len([k for k in store.keys() if k in ("top", "f1")]) == 1
        assert await fs.sync() == {"open": failed["open"]}  # the failed one went this time
        assert {"top", "f1"} <= set(store.keys()) and "open" not in store.keys()
        await fs.release(opened.fh)
        assert await fs.sync() == {}
        assert store.data("open") == b"half"

    run_eventual(store, body)


def test_a_stop_uploads_every_waiting_file_first() -> None:
    store = MemoryStore()

    async def body(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        for i in range(20):
            await write_file(fs, f"f{i:02d}", bytes([i]) * 10)
        assert store.keys() == []

    run_eventual(store, body)  # aclose at the end
    assert store.keys() == [f"f{i:02d}" for i in range(20)]
    assert all(store.data(f"f{i:02d}") == bytes([i]) * 10 for i in range(20))


def test_a_crash_before_the_upload_is_recovered_at_the_next_mount(tmp_path: Path) -> None:
    store = MemoryStore()

    async def first(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        await write_file(fs, "precious", b"acknowledged at close")
        await write_file(fs, "also", b"x" * (3 * 1024 * 1024))  # past the memory stage: on disk at once

    run_eventual(store, first, folder=tmp_path, stop=False)  # kill -9 before the delay
    assert store.keys() == []

    async def second(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        assert sorted(fs.recovery.uploaded) == ["also", "precious"]

    run_eventual(store, second, folder=tmp_path)
    assert store.data("precious") == b"acknowledged at close"
    assert store.data("also") == b"x" * (3 * 1024 * 1024)


def test_a_waiting_file_written_again_then_a_crash_recovers_its_closed_version(tmp_path: Path) -> None:
    """Closed (waiting for the write-back), then opened with O_TRUNC and half rewritten when the daemon
    dies: the next mount uploads the closed version, not the half-written one."""
    store = MemoryStore()

    async def first(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        await write_file(fs, "doc", b"the closed version")
        opened = await fs.open((await fs.lookup(ROOT_INO, "doc")).ino, os.O_WRONLY | os.O_TRUNC)
        await fs.write(opened.fh, 0, b"half")
        copy = fs.cache.get(opened.attr.ino)
        assert copy is not None and copy.state is WriteState.REWRITTEN

    run_eventual(store, first, folder=tmp_path, stop=False)
    assert store.keys() == []

    async def second(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        assert fs.recovery.uploaded == ["doc"]

    run_eventual(store, second, folder=tmp_path, on_recovery="upload")
    assert store.data("doc") == b"the closed version"


def test_appends_after_a_close_then_a_crash_recover_the_closed_version_and_keep_the_rest(tmp_path: Path) -> None:
    """An append leaves the record of the last close as it is (no record written per append): a crash
    then finds a data file longer than its acknowledged record, uploads the closed bytes and keeps the
    appended ones, reported as never closed, as for any file written again after its close."""
    store = MemoryStore()

    async def first(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        opened = await fs.create(ROOT_INO, "log", 0o644, 0, 0)
        await fs.write(opened.fh, 0, b"line 0\n")
        await fs.flush(opened.fh)
        copy = fs.cache.get(opened.attr.ino)
        assert copy is not None
        before = (fs.folder.files / f"{copy.id}.json").read_bytes()
        await fs.write(opened.fh, 7, b"line 1, never closed\n")
        assert copy.state is WriteState.REWRITTEN
        assert (fs.folder.files / f"{copy.id}.json").read_bytes() == before  # the record is untouched

    run_eventual(store, first, folder=tmp_path, stop=False)
    assert store.keys() == []

    async def second(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        assert fs.recovery.uploaded == ["log"]
        assert [(k["key"], k["bytes"], k["acknowledged"]) for k in fs.recovery.kept] == [("log", 28, False)]

    run_eventual(store, second, folder=tmp_path, on_recovery="upload")
    assert store.data("log") == b"line 0\n"


def test_a_waiting_file_written_again_is_uploaded_as_its_next_close() -> None:
    store = MemoryStore()

    async def body(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        await write_file(fs, "doc", b"one")
        opened = await fs.open((await fs.lookup(ROOT_INO, "doc")).ino, os.O_WRONLY | os.O_TRUNC)
        await fs.write(opened.fh, 0, b"two")
        await fs.release(opened.fh)  # the last close acknowledges the newer bytes: ACKED again
        copy = fs.cache.get(opened.attr.ino)
        assert copy is not None and copy.state is WriteState.ACKED and copy.acked is None
        assert not list(fs.folder.files.glob("*.acked"))  # nothing kept aside any more
        await settle(clock, DELAY)
        assert store.data("doc") == b"two" and puts(store) == 1

    run_eventual(store, body)


def test_chmod_utime_and_rename_of_a_waiting_file_fold_into_one_put() -> None:
    """rsync: write a temporary name, close, chmod, utime, rename: one PUT at the new name, with the
    mode and mtime; no COPY, no DELETE, nothing at the temporary name."""
    store = MemoryStore()

    async def body(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        await fs.readdir(await fs.opendir(ROOT_INO), 0)  # rsync lists the target first
        store.requests.reset()
        await write_file(fs, ".file.XXXX", b"payload")
        ino = (await fs.lookup(ROOT_INO, ".file.XXXX")).ino
        await fs.setattr(ino, mode=0o600)
        await fs.setattr(ino, mtime_ns=1_000_000_000_123, atime_ns=1_000_000_000_000)
        await fs.rename(ROOT_INO, ".file.XXXX", ROOT_INO, "file", 0)
        assert puts(store) == 0
        await settle(clock, DELAY)
        counts = store.requests.snapshot()
        assert counts.get("put") == 1 and not {"copy", "delete"} & set(counts), counts
        assert store.keys() == ["file"] and store.data("file") == b"payload"
        head = await store.head("file")
        assert head.metadata is not None
        assert int(head.metadata["mode"]) == stat.S_IFREG | 0o600
        assert head.metadata["mtime"].startswith("1000.000000123")

    run_eventual(store, body)


def test_rename_of_a_waiting_file_over_an_existing_one_replaces_it_at_upload() -> None:
    """No DELETE at rename: the other mounts see the old version until the new one replaces it (a
    conditional write on the version it replaced)."""
    store = MemoryStore()
    store.seed("file", b"old version")

    async def body(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        await fs.lookup(ROOT_INO, "file")
        await write_file(fs, ".file.tmp", b"new version")
        store.requests.reset()
        await fs.rename(ROOT_INO, ".file.tmp", ROOT_INO, "file", 0)
        assert store.requests.snapshot().get("delete", 0) == 0
        assert store.data("file") == b"old version"
        await settle(clock, DELAY)
        assert store.keys() == ["file"] and store.data("file") == b"new version"
        assert puts(store) == 1

    run_eventual(store, body)


def test_unlink_of_a_waiting_file_costs_nothing_and_uploads_nothing() -> None:
    store = MemoryStore()

    async def body(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        await write_file(fs, "scratch", b"temporary")
        store.requests.reset()
        await fs.unlink(ROOT_INO, "scratch")
        await settle(clock, 2 * DELAY)
        assert store.requests.snapshot() == {} and store.keys() == []

    run_eventual(store, body)


def test_a_waiting_file_is_read_and_listed_from_its_local_bytes() -> None:
    store = MemoryStore()

    async def body(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        await write_file(fs, "w", b"local bytes")
        store.requests.reset()
        handle = await fs.opendir(ROOT_INO)
        assert [name for name, _, _ in await fs.readdir(handle, 0)] == ["w"]
        fs.releasedir(handle)
        opened = await fs.open((await fs.lookup(ROOT_INO, "w")).ino, os.O_RDONLY)
        assert await fs.read(opened.fh, 0, 100) == b"local bytes"
        await fs.release(opened.fh)
        assert store.keys() == [] and puts(store) == 0

    run_eventual(store, body)


def test_a_change_while_the_upload_is_prepared_is_never_published_half() -> None:
    """A file rewritten (open O_TRUNC, write) while its write-back upload waits for S3: that upload sends
    the closed version whole (read through the version kept aside), the rewrite's close is uploaded next.
    S3 never holds bytes no close acknowledged. (The upload is held just before it reads the file.)"""
    store = MemoryStore()

    async def body(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        await write_file(fs, "f", b"first version")
        ino = (await fs.lookup(ROOT_INO, "f")).ino
        held, go = trio.Event(), trio.Event()
        real_settled = fs.cache.io.settled
        seen: list[bytes] = []
        real_put = store.put

        async def settled(copy: Any) -> None:  # the upload's wait for queued writes, before its read
            if not held.is_set():  # the first call only
                held.set()
                await go.wait()
            await real_settled(copy)

        async def put(key: str, data: bytes, *args: Any, **kw: Any) -> Any:
            seen.append(bytes(data))
            return await real_put(key, data, *args, **kw)

        async def rewrite() -> None:
            opened = await fs.open(ino, os.O_WRONLY | os.O_TRUNC)  # O_TRUNC: empty for a moment
            await fs.write(opened.fh, 0, b"sec")
            rewriting.append("written")
            await fs.write(opened.fh, 3, b"ond")
            await fs.flush(opened.fh)
            await fs.release(opened.fh)
            rewriting.append("closed")

        fs.cache.io.settled = settled  # type: ignore[method-assign]
        store.put = put  # type: ignore[method-assign]
        rewriting: list[str] = []
        await settle(clock, DELAY)
        assert held.is_set()  # the write-back's upload has begun
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rewrite)
            await trio.testing.wait_all_tasks_blocked()
            assert rewriting[:1] == ["written"]  # truncated and half written while the upload waits
            go.set()
        assert rewriting == ["written", "closed"]
        assert seen == [b"first version"]
        await settle(clock, DELAY)
        assert seen == [b"first version", b"second"] and store.data("f") == b"second"

    run_eventual(store, body)


def test_close_to_open_still_uploads_at_close() -> None:
    store = MemoryStore()

    async def body(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        await write_file(fs, "c", b"at close")
        assert store.data("c") == b"at close"

    run_eventual(store, body, consistency=Consistency.CLOSE_TO_OPEN)


class SyncSpy:
    """Counts the syncs of the cache folder's files by kind (data file, record, folder) and the records
    written, durable or not: the cost of eventual mode's close and of a change of a waiting file."""

    def __init__(self, monkeypatch: Any, fs: FileSystem) -> None:
        self.counts: dict[str, int] = {}
        real_fdatasync, real_fsync, real_save = os.fdatasync, os.fsync, fs.folder.save

        def kind(fd: int) -> str:
            target = os.readlink(f"/proc/self/fd/{fd}")
            return {".data": "data sync", ".tmp": "record sync", ".json": "record sync"}.get(Path(target).suffix, "folder sync")

        def fdatasync(fd: int) -> None:
            self.bump(kind(fd))
            real_fdatasync(fd)

        def fsync(fd: int) -> None:
            self.bump(kind(fd) + " (fsync)" if kind(fd) != "folder sync" else "folder sync")
            real_fsync(fd)

        def save(record: Any, durable: bool = False, data: bool = True) -> None:
            self.bump("durable record" if durable else "record")
            real_save(record, durable=durable, data=data)

        monkeypatch.setattr(os, "fdatasync", fdatasync)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(fs.folder, "save", save)

    def bump(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def take(self) -> dict[str, int]:
        counts, self.counts = self.counts, {}
        return counts


def test_the_cost_of_a_close_and_of_changes_to_a_waiting_file_in_syncs_and_records(monkeypatch: Any) -> None:
    """One durable record per operation; the data file synced only when bytes landed in it since its
    last sync (fdatasync, not fsync); the folder synced only when a file was created in it (the first
    close: the data file and the record file; later records are rewritten in place, records.py); a flush
    with nothing written since the last one costs nothing; chmod and utime of a waiting file rsync makes
    are one record each, with no version kept aside."""
    store = MemoryStore()
    first_close = {"durable record": 1, "record sync": 1, "data sync": 1, "folder sync": 1}
    durable_close = {"durable record": 1, "record sync": 1, "data sync": 1}
    record_only = {"durable record": 1, "record sync": 1}

    async def body(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        spy = SyncSpy(monkeypatch, fs)
        opened = await fs.create(ROOT_INO, "log", 0o644, 0, 0)
        await fs.write(opened.fh, 0, b"0\n")
        await fs.flush(opened.fh)
        assert spy.take() == first_close  # spilled to the cache folder: its first record is the durable one
        # exec 3>>log; echo $i >&3: a write, then the flush of a duplicate descriptor
        await fs.write(opened.fh, 2, b"1\n")
        assert spy.take() == {}  # an append leaves the acknowledgement's record true as it is
        await fs.flush(opened.fh)
        assert spy.take() == durable_close
        await fs.flush(opened.fh)  # nothing written since: nothing to acknowledge
        await fs.release(opened.fh)
        assert spy.take() == {}
        # rsync: a temporary name written and closed, then chmod, utime, rename
        await write_file(fs, ".f.XXXX", b"payload")
        spy.take()
        ino = (await fs.lookup(ROOT_INO, ".f.XXXX")).ino
        await fs.setattr(ino, mode=0o600)
        assert spy.take() == record_only
        await fs.setattr(ino, mtime_ns=1_000_000_000_123, atime_ns=1_000_000_000_000)
        assert spy.take() == record_only
        copy = fs.cache.get(ino)
        assert copy is not None and copy.state is WriteState.ACKED and copy.acked is None
        await fs.rename(ROOT_INO, ".f.XXXX", ROOT_INO, "f", 0)
        assert spy.take() == record_only
        assert puts(store) == 0
        await settle(clock, DELAY)
        assert store.data("f") == b"payload" and store.data("log") == b"0\n1\n"
        head = await store.head("f")
        assert head.metadata is not None and int(head.metadata["mode"]) == stat.S_IFREG | 0o600
        assert head.metadata["mtime"].startswith("1000.000000123")

    run_eventual(store, body)


def test_durability_daemon_syncs_nothing_and_a_crash_of_the_daemon_still_recovers_every_close(
    monkeypatch: Any, tmp_path: Path
) -> None:
    """``--durability daemon``: the same records, written in the same order, with no sync of the cache
    disk (a first close, an append's close, a chmod, a version kept aside: no fdatasync or fsync); the
    daemon dying right after (the files stay, as the kernel keeps them) and a new mount upload every
    closed version, the bytes written after the last close kept as never closed."""
    store = MemoryStore()

    async def first(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        spy = SyncSpy(monkeypatch, fs)
        await write_file(fs, "a", b"first file")
        opened = await fs.create(ROOT_INO, "log", 0o644, 0, 0)
        await fs.write(opened.fh, 0, b"0\n")
        await fs.flush(opened.fh)
        await fs.write(opened.fh, 2, b"1\n")
        await fs.flush(opened.fh)
        await fs.setattr(opened.attr.ino, mode=0o600)
        await fs.write(opened.fh, 0, b"X")  # over closed bytes: the closed version is kept aside
        assert fs.folder.sync is False
        assert spy.take() == {"durable record": 4, "record": 1}
        assert store.keys() == []

    run_eventual(store, first, folder=tmp_path, stop=False, durability="daemon")

    async def second(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        assert sorted(fs.recovery.uploaded) == ["a", "log"]

    run_eventual(store, second, folder=tmp_path, on_recovery="upload")
    assert store.data("a") == b"first file" and store.data("log") == b"0\n1\n"


def test_rsync_into_a_folder_made_here_asks_nothing_until_the_uploads() -> None:
    """rsync -a into a folder it just made: per file a lookup of a temporary name, create, write, close,
    chmod, utime, rename over no file. The folder's listing (empty at mkdir) stays true across the
    renames, so no lookup asks S3; then one PUT per file."""
    store = MemoryStore()

    async def body(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        folder = (await fs.mkdir(ROOT_INO, "d", 0o755, 0, 0)).ino
        store.requests.reset()
        for i in range(3):
            temp = f".f{i}.XXXX"
            try:
                await fs.lookup(folder, temp)
            except NotFound:
                pass
            else:
                raise AssertionError(f"{temp} found")
            opened = await fs.create(folder, temp, 0o600, 0, 0)
            await fs.write(opened.fh, 0, f"file {i}".encode())
            await fs.flush(opened.fh)
            await fs.release(opened.fh)
            await fs.setattr(opened.attr.ino, mode=0o644)
            await fs.setattr(opened.attr.ino, mtime_ns=1_000_000_000_000, atime_ns=1_000_000_000_000)
            try:
                await fs.lookup(folder, f"f{i}")
            except NotFound:
                pass
            await fs.rename(folder, temp, folder, f"f{i}", 0)
        assert store.requests.snapshot() == {}
        await settle(clock, DELAY)
        assert store.requests.snapshot().get("put") == 3 and set(store.requests.snapshot()) <= {"put"}
        assert [store.data(f"d/f{i}") for i in range(3)] == [f"file {i}".encode() for i in range(3)]

    run_eventual(store, body)


# -- held back (s3files exec --publish on-success): writeback.py Hold -----------------------------------


def test_held_writes_are_published_by_nothing_not_even_after_a_crash(tmp_path: Path) -> None:
    """While held: no upload when due, none by sync or fsync, and the records say held, so the mount
    after a crash keeps them (default --on-recovery upload) until it is asked (upload-held)."""
    store = MemoryStore()

    async def held(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        await write_file(fs, "a", b"alpha")
        opened = await fs.create(ROOT_INO, "b", 0o644, 0, 0)
        await fs.write(opened.fh, 0, b"beta")
        await fs.fsync(opened.fh)  # durable in the cache folder, not uploaded
        await fs.release(opened.fh)
        await settle(clock, DELAY * (MAX_HOLD + 2))
        assert set(await fs.sync()) == {"a", "b"}  # each reported: held back
        assert store.keys() == [] and puts(store) == 0
        records = [parse_record(p.read_bytes()) for p in fs.folder.files.glob("*.json")]
        assert sorted((r["key"], r["held"], r["acknowledged"]) for r in records) == [("a", True, True), ("b", True, True)]

    run_eventual(store, held, folder=tmp_path, stop=False, hold="keep")

    async def after_crash(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        assert fs.recovery.uploaded == []
        assert sorted((k["key"], k["held"]) for k in fs.recovery.kept) == [("a", True), ("b", True)]
        assert "held back" in str(fs.recovery.kept[0]["why"])

    run_eventual(store, after_crash, folder=tmp_path)
    assert store.keys() == []

    async def asked(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        assert sorted(fs.recovery.uploaded) == ["a", "b"]

    run_eventual(store, asked, folder=tmp_path, on_recovery="upload-held")
    assert store.data("a") == b"alpha" and store.data("b") == b"beta"


def test_a_stop_while_held_keeps_or_discards_and_a_release_publishes(tmp_path: Path) -> None:
    store = MemoryStore()

    async def write_two(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        await write_file(fs, "a", b"alpha")
        await write_file(fs, "b", b"beta")

    run_eventual(store, write_two, folder=tmp_path / "keep", hold="keep")  # stopped while held
    assert store.keys() == [] and puts(store) == 0
    kept = [parse_record(p.read_bytes()) for p in (tmp_path / "keep" / "files").glob("*.json")]
    assert sorted((r["key"], r["held"]) for r in kept) == [("a", True), ("b", True)]

    run_eventual(store, write_two, folder=tmp_path / "discard", hold="discard")
    assert store.keys() == [] and list((tmp_path / "discard" / "files").iterdir()) == []

    async def released(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        await write_two(fs, clock)
        assert await fs.publish_held() == {}  # uploaded now, not after the delay
        assert store.keys() == ["a", "b"]

    run_eventual(store, released, folder=tmp_path / "release", hold="keep")
    assert store.data("a") == b"alpha" and list((tmp_path / "release" / "files").glob("*.json")) == []
