"""Readers of one file share its parts (issue 20): K handles open on the same version fetch each part
once, as one reader would; a handle of another version never sees the old version's parts.

Core tests against MemoryStore (request counts); through a real mount on moto:
tests/test_fuse_reads.py::test_four_descriptors_reading_one_file_fetch_it_once."""

from __future__ import annotations

import os

from test_core import resolve, run_fs

from s3files.core.fs import FileSystem
from s3files.store import MemoryStore
from s3files.store.base import ObjectInfo

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
    it and share its reader; each revalidates with a HEAD (close-to-open), sent while they wait."""
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


class SlowFirstPartStore(MemoryStore):
    """The GET of a first part is served when it is sent (its answer is the version of that moment) and
    takes two latencies to come back; every other request one latency, served at its end."""

    async def get_first(self, key: str, nbytes: int) -> tuple[ObjectInfo, bytes]:
        import trio

        self.requests.add("get")
        obj = self._get(key)
        answer = self._info(key, obj), obj.data[:nbytes]
        await trio.sleep(2 * self._latency)
        return answer


def test_handles_opened_at_once_ask_s3_while_the_first_part_is_fetched() -> None:
    """The opens that wait for another open's first part ask S3 for the newest version at the same time
    (close-to-open: a HEAD sent after they began), not after it: K threads opening one file wait for that
    GET, not for the GET and then a HEAD. The HEAD's answer wins over the GET's, which was asked before
    they began, also when the GET comes back last: a version written in between is the one they read,
    while the first handle reads the version it opened."""
    import pytest
    import trio
    import trio.testing

    latency = 0.02
    old, new = _data(4 * MIB, 1), _data(4 * MIB, 2)
    store = SlowFirstPartStore(latency=latency)
    store.seed("f", old)

    async def opened_at_once(fs: FileSystem, ino: int, change: bytes | None) -> tuple[dict[str, int], dict[str, float]]:
        await trio.sleep(2.0)  # past the metadata TTL
        start = trio.current_time()
        took: dict[str, float] = {}
        fhs: dict[str, int] = {}

        async def open_as(name: str) -> None:
            fhs[name] = (await fs.open(ino, os.O_RDONLY)).fh
            took[name] = trio.current_time() - start

        async with trio.open_nursery() as nursery:
            nursery.start_soon(open_as, "first")  # its GET of the first part: the version of now
            await trio.sleep(latency / 4)
            if change is not None:
                store.seed("f", change)  # written elsewhere, closed before the second open begins
            await trio.sleep(latency / 4)
            nursery.start_soon(open_as, "second")  # its HEAD is back before the first's GET
        return fhs, took

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "f")
        store.requests.reset()
        fhs, took = await opened_at_once(fs, ino, None)
        assert store.requests.snapshot() == {"get": 1, "head": 1}
        assert took == {"first": pytest.approx(2 * latency), "second": pytest.approx(2 * latency)}  # not 2.5
        for fh in fhs.values():
            assert await fs.read(fh, 0, 4 * MIB) == old
            await fs.release(fh)
        fhs, took = await opened_at_once(fs, ino, new)
        # the second open's HEAD found a newer version, whose first part it then fetches
        assert took == {"first": pytest.approx(2 * latency), "second": pytest.approx(4 * latency)}
        assert await fs.read(fhs["first"], 0, MIB) == old[:MIB]
        assert await fs.read(fhs["second"], 0, 4 * MIB) == new
        for fh in fhs.values():
            await fs.release(fh)

    run_fs(store, body, direct_io=True, now=trio.current_time, clock=trio.testing.MockClock(autojump_threshold=0))
