"""Readers of one file share its parts (issue 20): K handles open on the same version fetch each part
once, as one reader would; a handle of another version never sees the old version's parts.

Core tests against MemoryStore (request counts); through a real mount on moto:
tests/test_fuse_reads.py::test_four_descriptors_reading_one_file_fetch_it_once."""

from __future__ import annotations

import os

from test_core import resolve, run_fs

from s3files.core.fs import FileSystem
from s3files.store import MemoryStore

MIB = 1024 * 1024


def _data(size: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(size))


async def _lockstep(fs: FileSystem, ino: int, k: int, size: int, chunk: int = 128 * 1024) -> list[bytes]:
    """K handles read the whole file in turns, chunk by chunk (threads reading one file at once)."""
    fhs = [(await fs.open(ino, os.O_RDONLY)).fh for _ in range(k)]
    out: list[list[bytes]] = [[] for _ in range(k)]
    for off in range(0, size, chunk):
        for i, fh in enumerate(fhs):
            out[i].append(await fs.read(fh, off, chunk))
    for fh in fhs:
        await fs.release(fh)
    return [b"".join(parts) for parts in out]


def test_k_handles_reading_one_version_cost_one_readers_gets() -> None:
    data = _data(24 * MIB)
    counts: dict[int, int] = {}
    for k in (1, 4):
        store = MemoryStore()
        store.seed("big", data)

        async def body(fs: FileSystem, k: int = k, store: MemoryStore = store) -> None:
            ino = await resolve(fs, "big")
            store.requests.reset()
            assert await _lockstep(fs, ino, k, len(data)) == [data] * k
            counts[k] = store.requests.snapshot().get("get", 0)

        run_fs(store, body, direct_io=True)  # every read reaches the core, as with K kernel files
    assert counts[1] > 0
    assert counts[4] == counts[1]


def test_a_handle_of_a_new_version_never_reads_the_old_versions_parts() -> None:
    old, new = _data(4 * MIB, 1), _data(4 * MIB, 2)
    store = MemoryStore()
    store.seed("f", old)

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "f")
        first = (await fs.open(ino, os.O_RDONLY)).fh
        assert await fs.read(first, 0, MIB) == old[:MIB]
        store.seed("f", new)  # replaced outside; the next open sees the new version
        second = (await fs.open(ino, os.O_RDONLY)).fh
        assert await fs.read(second, 0, MIB) == new[:MIB]
        assert await fs.read(second, MIB, 3 * MIB) == new[MIB:]
        await fs.release(first)
        await fs.release(second)

    run_fs(store, body, direct_io=True, metadata_ttl=0.0)


def test_handles_opened_at_once_fetch_the_first_part_once() -> None:
    """K programs open one file at the same moment: one open fetches its first part, the others wait for
    it and share its reader, then each revalidates with a HEAD (close-to-open)."""
    import trio

    data = _data(12 * MIB)
    store = MemoryStore()
    store.seed("big", data)

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "big")
        store.requests.reset()
        fhs: list[int] = []

        async def open_one() -> None:
            fhs.append((await fs.open(ino, os.O_RDONLY)).fh)

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(open_one)
        opened = store.requests.snapshot()
        assert opened == {"get": 1, "head": 3}, opened
        for off in range(0, len(data), MIB):
            for fh in fhs:
                assert await fs.read(fh, off, MIB) == data[off : off + MIB]
        for fh in fhs:
            await fs.release(fh)
        one_reader = store.requests.snapshot()["get"]
        # one reader alone, for comparison
        store.requests.reset()
        assert await _lockstep(fs, ino, 1, len(data), MIB) == [data]
        assert one_reader == store.requests.snapshot()["get"]

    run_fs(store, body, direct_io=True)
