"""The consistency modes' read side in the core (docs/SEMANTICS.md, Consistency modes), with a controllable
clock: what stat, readdir, lookup and open cost in requests within and after each mode's TTL, and what the
kernel is told (a recording KernelCache) when S3 changed under the mount. No FUSE, no network, no sleeping.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import Any

import pytest
from test_core import read_all, resolve, run_fs

from s3files.core.fs import FileSystem
from s3files.core.inodes import ROOT_INO
from s3files.errors import S3FilesError
from s3files.options import Consistency
from s3files.store import MemoryStore

STRICT, CTO, EVENTUAL = Consistency.STRICT, Consistency.CLOSE_TO_OPEN, Consistency.EVENTUAL


class Clock:
    """Monotonic seconds for the TTLs (``now``) and wall seconds for S3's LastModified (``wall``)."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_700_000_000.0 + self.t


class RecordingKernel:
    """A KernelCache that records what the core told it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def attributes_changed(self, ino: int) -> None:
        self.calls.append(("attributes", ino))

    def data_changed(self, ino: int) -> None:
        self.calls.append(("data", ino))

    def entry_gone(self, parent_ino: int, name: str) -> None:
        self.calls.append(("gone", parent_ino, name))


def run(
    body: Callable[[FileSystem, MemoryStore, Clock, RecordingKernel], Any],
    mode: Consistency = CTO,
    seed: dict[str, bytes] | None = None,
    **kw: Any,
) -> RecordingKernel:
    clock = Clock()
    store = MemoryStore(now=clock.wall)
    for key, data in (seed if seed is not None else {"d/f": b"one", "d/g": b"two"}).items():
        store.seed(key, data)
    kernel = RecordingKernel()

    async def main(fs: FileSystem) -> None:
        fs.use_kernel_cache(kernel)
        await body(fs, store, clock, kernel)

    run_fs(store, main, now=clock.now, consistency=mode, **kw)
    return kernel


async def names(fs: FileSystem, ino: int) -> list[str]:
    fh = await fs.opendir(ino)
    try:
        return [name for name, _, _ in await fs.readdir(fh, 0)]
    finally:
        fs.releasedir(fh)


async def errno_of(call: Any) -> int:
    with pytest.raises(S3FilesError) as failed:
        await call
    return failed.value.errno


# -- what each operation costs, per mode ----------------------------------------------------------------

# (seconds after the first look, what a stat of a file costs) per mode: strict asks every time,
# close-to-open after 1 s, eventual after 60 s.
STAT_COSTS = {
    STRICT: [(0.0, {"head": 1}), (0.5, {"head": 1}), (30.0, {"head": 1})],
    CTO: [(0.0, {}), (0.5, {}), (2.0, {"head": 1}), (2.5, {}), (30.0, {"head": 1})],
    EVENTUAL: [(0.0, {}), (0.5, {}), (30.0, {}), (59.0, {}), (61.0, {"head": 1}), (62.0, {})],
}


@pytest.mark.parametrize("mode", list(Consistency))
def test_stat_of_a_file_asks_s3_per_the_modes_ttl(mode: Consistency) -> None:
    async def body(fs: FileSystem, store: MemoryStore, clock: Clock, kernel: RecordingKernel) -> None:
        f = await resolve(fs, "d/f")
        for t, cost in STAT_COSTS[mode]:
            clock.t = t
            store.requests.reset()
            assert (await fs.getattr(f)).size == 3
            assert store.requests.snapshot() == cost, f"stat at {t} s"

    assert run(body, mode).calls == []


READDIR_COSTS = {
    STRICT: [(0.0, {"list": 1}), (0.5, {"list": 1})],
    CTO: [(0.5, {}), (2.0, {"list": 1}), (2.5, {})],
    EVENTUAL: [(0.5, {}), (59.0, {}), (61.0, {"list": 1}), (62.0, {})],
}


@pytest.mark.parametrize("mode", list(Consistency))
def test_readdir_lists_per_the_modes_ttl(mode: Consistency) -> None:
    async def body(fs: FileSystem, store: MemoryStore, clock: Clock, kernel: RecordingKernel) -> None:
        d = await resolve(fs, "d")
        assert await names(fs, d) == ["f", "g"]  # the first listing (and a HEAD of each file once)
        for t, cost in READDIR_COSTS[mode]:
            clock.t = t
            store.requests.reset()
            assert await names(fs, d) == ["f", "g"]
            assert store.requests.snapshot() == cost, f"readdir at {t} s"

    run(body, mode)


@pytest.mark.parametrize(("mode", "cost"), [(STRICT, {"list": 1}), (CTO, {}), (EVENTUAL, {})])
def test_stat_of_a_folder_asks_s3_only_in_strict(mode: Consistency, cost: dict[str, int]) -> None:
    async def body(fs: FileSystem, store: MemoryStore, clock: Clock, kernel: RecordingKernel) -> None:
        d = await resolve(fs, "d")
        for t in (0.0, 0.5, 100.0):
            clock.t = t
            store.requests.reset()
            assert stat.S_ISDIR((await fs.getattr(d)).mode)
            assert store.requests.snapshot() == cost
        assert (await fs.getattr(ROOT_INO)).ino == ROOT_INO  # the root has no object: never asked
        assert store.requests.snapshot() == cost

    run(body, mode)


# (seconds, what an open of a file read once before costs): the kernel may keep its pages, so no GET.
OPEN_COSTS = {
    STRICT: [(0.5, {"head": 1}), (30.0, {"head": 1})],
    CTO: [(0.5, {"head": 1}), (30.0, {"head": 1})],
    EVENTUAL: [(0.5, {}), (59.0, {}), (61.0, {"head": 1}), (62.0, {})],
}


@pytest.mark.parametrize("mode", list(Consistency))
def test_open_revalidates_except_in_eventual_within_the_ttl(mode: Consistency) -> None:
    async def body(fs: FileSystem, store: MemoryStore, clock: Clock, kernel: RecordingKernel) -> None:
        f = await resolve(fs, "d/f")
        assert await read_all(fs, f) == b"one"  # the kernel now caches this version's pages
        for t, cost in OPEN_COSTS[mode]:
            clock.t = t
            store.requests.reset()
            opened = await fs.open(f, os.O_RDONLY)
            assert opened.keep_cache and opened.attr.size == 3
            await fs.release(opened.fh)
            assert store.requests.snapshot() == cost, f"open at {t} s"

    run(body, mode)


def test_eventual_open_for_writing_within_the_ttl_asks_nothing() -> None:
    """Appending (``exec 3>>log; echo $i >&3``) opens the file again and again: no HEAD each time."""

    async def body(fs: FileSystem, store: MemoryStore, clock: Clock, kernel: RecordingKernel) -> None:
        f = await resolve(fs, "d/f")
        clock.t = 10.0
        store.requests.reset()
        opened = await fs.open(f, os.O_WRONLY | os.O_APPEND)
        assert store.requests.snapshot() == {}
        await fs.release(opened.fh)

    run(body, EVENTUAL)


def test_a_cold_open_in_eventual_costs_only_the_reads_first_get() -> None:
    async def body(fs: FileSystem, store: MemoryStore, clock: Clock, kernel: RecordingKernel) -> None:
        f = await resolve(fs, "d/f")
        store.requests.reset()
        assert await read_all(fs, f) == b"one"
        assert store.requests.snapshot() == {"get": 1}  # no HEAD before it

    run(body, EVENTUAL)


# -- outside changes: when each mode sees them, and what the kernel is told -----------------------------


@pytest.mark.parametrize(("mode", "seen_at"), [(STRICT, 0.0), (CTO, 1.5), (EVENTUAL, 60.5)])
def test_an_outside_overwrite_is_seen_by_stat_after_the_ttl_and_the_kernel_told(
    mode: Consistency, seen_at: float
) -> None:
    async def body(fs: FileSystem, store: MemoryStore, clock: Clock, kernel: RecordingKernel) -> None:
        f = await resolve(fs, "d/f")
        store.seed("d/f", b"changed")
        for t in (0.0, 0.9, 1.5, 30.0, 59.0, 60.5):
            clock.t = t
            size = (await fs.getattr(f)).size
            assert size == (7 if t >= seen_at else 3), f"stat at {t} s"
            assert kernel.calls == ([("data", f)] if t >= seen_at else [])

    run(body, mode)


@pytest.mark.parametrize("mode", [STRICT, CTO])
def test_an_outside_overwrite_is_seen_at_the_next_open_and_the_kernel_told(mode: Consistency) -> None:
    """Close-to-open within the TTL too: the open's HEAD finds the new version, and the kernel must drop
    the old size at once (else it would read the new bytes only up to the old size)."""

    async def body(fs: FileSystem, store: MemoryStore, clock: Clock, kernel: RecordingKernel) -> None:
        f = await resolve(fs, "d/f")
        assert await read_all(fs, f) == b"one"
        store.seed("d/f", b"changed")
        clock.t = 0.5
        assert await read_all(fs, f) == b"changed"
        assert kernel.calls == [("data", f)]
        assert (await fs.getattr(f)).size == 7

    run(body, mode)


def test_eventual_open_within_the_ttl_keeps_the_old_version_and_sees_the_new_after_it() -> None:
    async def body(fs: FileSystem, store: MemoryStore, clock: Clock, kernel: RecordingKernel) -> None:
        f = await resolve(fs, "d/f")
        assert await read_all(fs, f) == b"one"
        store.seed("d/f", b"changed")
        clock.t = 30.0
        opened = await fs.open(f, os.O_RDONLY)
        assert opened.keep_cache and opened.attr.size == 3  # the kernel's pages of "one" serve it
        await fs.release(opened.fh)
        assert kernel.calls == []
        clock.t = 60.5
        assert await read_all(fs, f) == b"changed"
        assert kernel.calls == [("data", f)]

    run(body, EVENTUAL)


@pytest.mark.parametrize(("mode", "seen_at"), [(STRICT, 0.0), (CTO, 1.5), (EVENTUAL, 60.5)])
def test_an_outside_delete_is_seen_by_stat_after_the_ttl_and_the_name_forgotten(
    mode: Consistency, seen_at: float
) -> None:
    async def body(fs: FileSystem, store: MemoryStore, clock: Clock, kernel: RecordingKernel) -> None:
        d = await resolve(fs, "d")
        f = await resolve(fs, "d/f")
        await store.delete("d/f")
        for t in (0.0, 1.5, 60.5):
            clock.t = t
            if t < seen_at:
                assert (await fs.getattr(f)).size == 3
                assert kernel.calls == []
            else:
                assert await errno_of(fs.getattr(f)) == errno.ENOENT
                assert kernel.calls == [("gone", d, "f")]
                break

    run(body, mode)


def test_a_delete_found_at_open_also_leaves_the_cached_listing() -> None:
    """Close-to-open: the open's HEAD finds the file gone within the listing's TTL; the listing (which
    answers readdir and lookups for the TTL) no longer shows it, and the kernel forgets the name."""

    async def body(fs: FileSystem, store: MemoryStore, clock: Clock, kernel: RecordingKernel) -> None:
        d = await resolve(fs, "d")
        assert await names(fs, d) == ["f", "g"]
        f = await resolve(fs, "d/f")
        assert await read_all(fs, f) == b"one"
        await store.delete("d/f")
        clock.t = 0.5
        assert await errno_of(fs.open(f, os.O_RDONLY)) == errno.ENOENT
        assert kernel.calls == [("gone", d, "f")]
        store.requests.reset()
        assert await names(fs, d) == ["g"]
        assert await errno_of(fs.lookup(d, "f")) == errno.ENOENT
        assert store.requests.snapshot() == {}  # still the cached listing

    run(body, CTO)


@pytest.mark.parametrize("mode", list(Consistency))
def test_a_listing_tells_the_kernel_of_names_gone_and_versions_changed(mode: Consistency) -> None:
    async def body(fs: FileSystem, store: MemoryStore, clock: Clock, kernel: RecordingKernel) -> None:
        d = await resolve(fs, "d")
        await resolve(fs, "d/f")  # the kernel holds the name
        g = await resolve(fs, "d/g")
        assert await names(fs, d) == ["f", "g"]
        await store.delete("d/f")
        store.seed("d/g", b"changed")
        store.seed("d/h", b"new")
        clock.t = 0.5 if mode is STRICT else mode.default_ttl + 0.5
        assert await names(fs, d) == ["g", "h"]
        assert sorted(kernel.calls) == [("data", g), ("gone", d, "f")]
        assert (await fs.getattr(g)).size == 7

    run(body, mode)


def test_a_name_that_became_a_folder_is_forgotten_by_the_kernel() -> None:
    async def body(fs: FileSystem, store: MemoryStore, clock: Clock, kernel: RecordingKernel) -> None:
        d = await resolve(fs, "d")
        f = await resolve(fs, "d/f")
        await store.delete("d/f")
        store.seed("d/f/inner", b"x")
        clock.t = 2.0
        assert await names(fs, d) == ["f", "g"]
        folder = await fs.lookup(d, "f")
        assert stat.S_ISDIR(folder.mode) and folder.ino != f
        assert kernel.calls == [("gone", d, "f")]

    run(body, CTO)


def test_an_outside_chmod_tells_the_kernel_of_attributes_only() -> None:
    """A metadata-only change (a copy in place keeps the ETag) is another mode, not other data."""

    async def body(fs: FileSystem, store: MemoryStore, clock: Clock, kernel: RecordingKernel) -> None:
        f = await resolve(fs, "d/f")
        clock.t = 0.5
        await store.copy("d/f", "d/f", metadata={"mode": str(stat.S_IFREG | 0o600)})
        clock.t = 2.0
        assert stat.S_IMODE((await fs.getattr(f)).mode) == 0o600
        assert kernel.calls == [("attributes", f)]

    run(body, CTO)


@pytest.mark.parametrize("mode", list(Consistency))
def test_our_own_changes_tell_the_kernel_nothing(mode: Consistency) -> None:
    """What this mount wrote, chmodded, renamed or deleted itself is never taken for an outside change."""

    async def body(fs: FileSystem, store: MemoryStore, clock: Clock, kernel: RecordingKernel) -> None:
        d = await resolve(fs, "d")
        created = await fs.create(d, "new", 0o644, os.getuid(), os.getgid())
        await fs.write(created.fh, 0, b"hello")
        await fs.release(created.fh)
        f = await resolve(fs, "d/f")
        opened = await fs.open(f, os.O_WRONLY | os.O_TRUNC)
        await fs.write(opened.fh, 0, b"rewritten")
        await fs.release(opened.fh)
        await fs.setattr(f, mode=0o600)
        await fs.rename(d, "g", d, "moved", 0)
        await fs.unlink(d, "new")
        for t in (0.5, 2.0, 61.0):
            clock.t = t
            assert await names(fs, d) == ["f", "moved"]
            assert (await fs.getattr(f)).size == 9
            assert await read_all(fs, f) == b"rewritten"
        assert kernel.calls == []

    run(body, mode)


def test_strict_caches_no_negative_answer() -> None:
    async def body(fs: FileSystem, store: MemoryStore, clock: Clock, kernel: RecordingKernel) -> None:
        d = await resolve(fs, "d")
        assert await names(fs, d) == ["f", "g"]
        assert await errno_of(fs.lookup(d, "late")) == errno.ENOENT
        store.seed("d/late", b"here")
        assert (await fs.lookup(d, "late")).size == 4  # the same instant: nothing was remembered
        assert await names(fs, d) == ["f", "g", "late"]

    run(body, STRICT)


@pytest.mark.parametrize(("mode", "ttl"), [(CTO, 1.0), (EVENTUAL, 60.0)])
def test_a_new_key_is_found_by_lookup_within_the_listings_ttl(mode: Consistency, ttl: float) -> None:
    async def body(fs: FileSystem, store: MemoryStore, clock: Clock, kernel: RecordingKernel) -> None:
        d = await resolve(fs, "d")
        assert await names(fs, d) == ["f", "g"]
        store.seed("d/late", b"here")
        clock.t = ttl - 0.1
        assert await errno_of(fs.lookup(d, "late")) == errno.ENOENT  # the listing answers for its TTL
        clock.t = ttl + 0.1
        assert (await fs.lookup(d, "late")).size == 4

    run(body, mode)


def test_strict_stat_of_a_folder_deleted_outside_is_enoent_and_forgotten() -> None:
    async def body(fs: FileSystem, store: MemoryStore, clock: Clock, kernel: RecordingKernel) -> None:
        d = await resolve(fs, "d")
        for key in ("d/f", "d/g"):
            await store.delete(key)
        assert await errno_of(fs.getattr(d)) == errno.ENOENT
        assert kernel.calls == [("gone", ROOT_INO, "d")]

    run(body, STRICT)


def test_an_explicit_metadata_ttl_overrides_the_modes() -> None:
    async def body(fs: FileSystem, store: MemoryStore, clock: Clock, kernel: RecordingKernel) -> None:
        f = await resolve(fs, "d/f")
        clock.t = 4.0
        store.requests.reset()
        await fs.getattr(f)
        assert store.requests.snapshot() == {}
        clock.t = 5.5
        await fs.getattr(f)
        assert store.requests.snapshot() == {"head": 1}

    run(body, EVENTUAL, metadata_ttl=5.0)



@pytest.mark.parametrize(("mode", "ttl"), [(CTO, 1.0), (EVENTUAL, 60.0)])
def test_what_a_cached_listing_answers_is_fresh_only_until_the_listing_expires(mode: Consistency, ttl: float) -> None:
    """A lookup answered from a listing made earlier gets only the listing's remaining freshness, for us
    and for the kernel's timeouts: a change made just after the listing is seen one TTL later, not two."""

    async def body(fs: FileSystem, store: MemoryStore, clock: Clock, kernel: RecordingKernel) -> None:
        d = await resolve(fs, "d")
        assert await names(fs, d) == ["f", "g"]
        store.seed("d/f", b"changed")
        clock.t = ttl * 0.9
        f = (await fs.lookup(d, "f")).ino
        assert (await fs.getattr(f)).size == 3  # within the listing's TTL
        assert fs.valid_for(f) == pytest.approx(ttl * 0.1)
        assert fs.valid_for(d) == pytest.approx(ttl * 0.1)  # probed at 0
        clock.t = ttl + 0.01
        assert fs.valid_for(f) == 0.0
        assert (await fs.getattr(f)).size == 7
        assert fs.valid_for(f) == pytest.approx(ttl)

    run(body, mode)


@pytest.mark.parametrize("mode", list(Consistency))
def test_the_kernel_may_keep_a_local_file_and_the_root_for_the_whole_ttl(mode: Consistency) -> None:
    async def body(fs: FileSystem, store: MemoryStore, clock: Clock, kernel: RecordingKernel) -> None:
        d = await resolve(fs, "d")
        created = await fs.create(d, "new", 0o644, os.getuid(), os.getgid())
        clock.t = 1000.0
        assert fs.valid_for(created.attr.ino) == fs.valid_for(ROOT_INO) == mode.default_ttl
        await fs.release(created.fh)

    run(body, mode)
