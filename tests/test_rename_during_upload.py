"""A rename while the file's upload is in flight, in every mode: S3 ends with the bytes at the new name
only, never at the old one (nor at both), and nothing is left waiting (no copy to upload, no multipart
upload). The store's request that publishes (a PUT, a completion, a part) is held on a trio Event, the
rename starts while it waits, then the request goes on. MemoryStore; eventual mode under a MockClock."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from test_core import run_fs
from test_writeback_core import DELAY, run_eventual, settle, write_file

from s3files.core.fs import FileSystem
from s3files.core.inodes import ROOT_INO
from s3files.options import MIB, Consistency
from s3files.store import MemoryStore

AT_CLOSE = [Consistency.STRICT, Consistency.CLOSE_TO_OPEN]  # close uploads before it returns


class Held:
    """Holds the first ``op`` request for ``key`` of ``store`` until ``go`` is set (``reached`` is set
    when it arrives); the request itself is made after, with the arguments it was called with."""

    def __init__(self, store: MemoryStore, op: str, key: str) -> None:
        self.reached, self.go = trio.Event(), trio.Event()
        real = getattr(store, op)

        async def held(target: str, *args: Any, **kw: Any) -> Any:
            if target == key and not self.reached.is_set():
                self.reached.set()
                await self.go.wait()
            return await real(target, *args, **kw)

        setattr(store, op, held)


async def race(held: Held, upload: Callable[[], Awaitable[object]], rename: Callable[[], Awaitable[object]]) -> None:
    """Start ``upload``; once its request is held, start ``rename``; let the request go once every task
    waits; return when both are done."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(upload)
        await held.reached.wait()
        nursery.start_soon(rename)
        await trio.testing.wait_all_tasks_blocked()
        held.go.set()


def objects(store: MemoryStore) -> dict[str, bytes]:
    return {key: store.data(key) for key in store.keys()}


async def nothing_waits(fs: FileSystem, store: MemoryStore) -> None:
    assert fs.status()["files"] == []  # no copy waits for an upload or a retry
    assert await store.list_multipart_uploads("") == []


async def read_back(fs: FileSystem, path: str) -> bytes:
    ino = ROOT_INO
    for name in path.split("/"):
        ino = (await fs.lookup(ino, name)).ino
    opened = await fs.open(ino, os.O_RDONLY)
    data = bytes(await fs.read(opened.fh, 0, 64 * MIB))
    await fs.release(opened.fh)
    return data


async def close(fs: FileSystem, fh: int) -> None:
    await fs.flush(fh)
    await fs.release(fh)


async def rename(fs: FileSystem, old: str, new: str) -> None:
    await fs.rename(ROOT_INO, old, ROOT_INO, new, 0)


@pytest.mark.parametrize("mode", AT_CLOSE, ids=lambda m: m.value)
@pytest.mark.parametrize("existing", [False, True], ids=["new", "overwrite"])
def test_rename_while_the_close_uploads(mode: Consistency, existing: bool) -> None:
    """close() of ``a`` is uploading (its PUT held); another thread renames ``a`` to ``b``."""
    store = MemoryStore()
    if existing:
        store.seed("a", b"old bytes")

    async def body(fs: FileSystem) -> None:
        if existing:
            opened = await fs.open((await fs.lookup(ROOT_INO, "a")).ino, os.O_WRONLY | os.O_TRUNC)
        else:
            opened = await fs.create(ROOT_INO, "a", 0o644, 0, 0)
        await fs.write(opened.fh, 0, b"new bytes")
        held = Held(store, "put", "a")
        await race(held, lambda: close(fs, opened.fh), lambda: rename(fs, "a", "b"))
        assert objects(store) == {"b": b"new bytes"}
        assert await read_back(fs, "b") == b"new bytes"
        await nothing_waits(fs, store)

    run_fs(store, body, consistency=mode)


@pytest.mark.parametrize("mode", AT_CLOSE, ids=lambda m: m.value)
def test_rename_while_a_multipart_upload_completes(mode: Consistency) -> None:
    """A file of two parts: its completion is held while the rename runs."""
    store = MemoryStore()
    data = os.urandom(5 * MIB) + b"tail"

    async def body(fs: FileSystem) -> None:
        opened = await fs.create(ROOT_INO, "a", 0o644, 0, 0)
        await fs.write(opened.fh, 0, data)
        held = Held(store, "complete_multipart", "a")
        await race(held, lambda: close(fs, opened.fh), lambda: rename(fs, "a", "b"))
        assert objects(store) == {"b": data}
        await nothing_waits(fs, store)

    run_fs(store, body, consistency=mode, upload_part_size=5 * MIB)


def test_rename_while_a_streamed_part_starts_its_upload() -> None:
    """A part sent while the program writes (its multipart upload being created) when the file is
    renamed: the upload created for the old name is not left behind; close publishes at the new name."""
    store = MemoryStore()
    data = os.urandom(5 * MIB) + b"tail"

    async def body(fs: FileSystem) -> None:
        opened = await fs.create(ROOT_INO, "a", 0o644, 0, 0)
        held = Held(store, "create_multipart", "a")
        await race(held, lambda: fs.write(opened.fh, 0, data), lambda: rename(fs, "a", "b"))
        await trio.testing.wait_all_tasks_blocked()  # the streamed part's send ends
        await close(fs, opened.fh)
        assert objects(store) == {"b": data}
        await nothing_waits(fs, store)

    run_fs(store, body, upload_part_size=5 * MIB)


@pytest.mark.parametrize("mode", AT_CLOSE, ids=lambda m: m.value)
def test_rename_of_the_folder_while_a_file_in_it_uploads(mode: Consistency) -> None:
    store = MemoryStore()

    async def body(fs: FileSystem) -> None:
        folder = await fs.mkdir(ROOT_INO, "d", 0o755, 0, 0)
        opened = await fs.create(folder.ino, "f", 0o644, 0, 0)
        await fs.write(opened.fh, 0, b"in a folder")
        held = Held(store, "put", "d/f")
        await race(held, lambda: close(fs, opened.fh), lambda: rename(fs, "d", "e"))
        assert sorted(objects(store)) == ["e/", "e/f"] and store.data("e/f") == b"in a folder"
        assert await read_back(fs, "e/f") == b"in a folder"
        await nothing_waits(fs, store)

    run_fs(store, body, consistency=mode)


@pytest.mark.parametrize("existing", [False, True], ids=["new", "overwrite"])
def test_rename_while_the_write_back_uploads(existing: bool) -> None:
    """Eventual mode: the write-back's PUT (``--writeback-delay`` after the close) is held; the file is
    renamed meanwhile."""
    store = MemoryStore()
    if existing:
        store.seed("a", b"old bytes")

    async def body(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        await write_file(fs, "a", b"new bytes")
        held = Held(store, "put", "a")
        await race(held, lambda: settle(clock, DELAY), lambda: rename(fs, "a", "b"))
        await settle(clock, DELAY)
        assert objects(store) == {"b": b"new bytes"}
        assert await read_back(fs, "b") == b"new bytes"
        assert fs.files.writeback.pending() == 0
        await nothing_waits(fs, store)

    run_eventual(store, body)
