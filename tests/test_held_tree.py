"""Tree changes held back (core/heldtree.py): a held mount's mkdir, unlink, rmdir, rename, chmod and symlink
are seen by the job at once and reach S3 only through ``publish_held`` (creations, files, deletes), never
after a stop, a crash or a discard unless ``--on-recovery upload-held`` asks. Against the in-memory store."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import trio
import trio.testing

from s3files.core.fs import FileSystem
from s3files.core.heldtree import journals
from s3files.core.inodes import ROOT_INO
from s3files.errors import NotFound
from s3files.store import MemoryStore
from tests.test_writeback_core import run_eventual, write_file

INPUTS = {"in/a.txt": b"alpha", "in/b.txt": b"bravo", "keep.txt": b"kilo", "old/x": b"x-ray", "swap/1": b"one", "swap/2": b"two",
          "tree/x": b"ex", "tree/y/z": b"zed"}


def seeded() -> MemoryStore:
    store = MemoryStore()
    for key, data in INPUTS.items():
        store.seed(key, data, {"mode": str(stat.S_IFREG | 0o644)})
    return store


def snapshot(store: MemoryStore) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    return {k: (o.etag, o.data, dict(o.metadata)) for k, o in store._objects.items()}


async def ino_of(fs: FileSystem, path: str) -> int:
    ino = ROOT_INO
    for name in path.split("/"):
        ino = (await fs.lookup(ino, name)).ino
    return ino


async def read_all(fs: FileSystem, path: str) -> bytes:
    opened = await fs.open(await ino_of(fs, path), os.O_RDONLY)
    try:
        return bytes(await fs.read(opened.fh, 0, 1 << 20))
    finally:
        await fs.release(opened.fh)


async def names(fs: FileSystem, path: str) -> list[str]:
    fh = await fs.opendir(await ino_of(fs, path) if path else ROOT_INO)
    try:
        return [name for name, _, _ in await fs.readdir(fh, 0)]
    finally:
        fs.releasedir(fh)


async def write(fs: FileSystem, parent: int, name: str, data: bytes) -> None:
    opened = await fs.create(parent, name, 0o644, 0, 0)
    await fs.write(opened.fh, 0, data)
    await fs.flush(opened.fh)
    await fs.release(opened.fh)


async def job(fs: FileSystem, clock: trio.testing.MockClock) -> None:
    """What a job does: every kind of change of the tree, and a file written; all seen at once."""
    out = (await fs.mkdir(ROOT_INO, "out", 0o750, 0, 0)).ino
    done = (await fs.mkdir(ROOT_INO, "done", 0o755, 0, 0)).ino
    await write(fs, out, "r.txt", b"result")
    await fs.rename(await ino_of(fs, "in"), "a.txt", done, "a.txt", 0)
    await fs.unlink(await ino_of(fs, "in"), "b.txt")
    await fs.unlink(await ino_of(fs, "old"), "x")
    await fs.setattr(await ino_of(fs, "keep.txt"), mode=0o600)
    await fs.setattr(out, mode=0o700)
    await fs.symlink(ROOT_INO, "link", b"out/r.txt", 0, 0)
    swap = await ino_of(fs, "swap")  # a cycle: 1 -> t, 2 -> 1, t -> 2
    await fs.rename(swap, "1", swap, "t", 0)
    await fs.rename(swap, "2", swap, "1", 0)
    await fs.rename(swap, "t", swap, "2", 0)
    await fs.rename(ROOT_INO, "tree", ROOT_INO, "moved", 0)  # a folder of objects: each copied, then deleted
    await write(fs, await ino_of(fs, "moved/y"), "new", b"new in a moved folder")
    # the job sees its changes
    assert await read_all(fs, "moved/y/z") == b"zed" and await names(fs, "moved") == ["x", "y"]
    assert await names(fs, "moved/y") == ["new", "z"]
    assert await read_all(fs, "done/a.txt") == b"alpha"
    assert await read_all(fs, "swap/1") == b"two" and await read_all(fs, "swap/2") == b"one"
    assert sorted(await names(fs, "")) == ["done", "keep.txt", "link", "moved", "out", "swap"]  # in/ and old/ are empty
    assert await names(fs, "out") == ["r.txt"]
    assert stat.S_IMODE((await fs.getattr(await ino_of(fs, "keep.txt"))).mode) == 0o600
    assert stat.S_IMODE((await fs.getattr(out)).mode) == 0o700
    assert await fs.readlink(await ino_of(fs, "link")) == b"out/r.txt"
    for gone in ("in/b.txt", "old/x", "in/a.txt", "tree"):
        try:
            await ino_of(fs, gone)
        except NotFound:
            pass
        else:
            raise AssertionError(f"{gone} still there")


def check_applied(store: MemoryStore, before: dict[str, tuple[str, bytes, dict[str, str]]]) -> None:
    assert store.keys() == [
        "done/", "done/a.txt", "keep.txt", "link", "moved/x", "moved/y/new", "moved/y/z", "out/", "out/r.txt",
        "swap/1", "swap/2",
    ]  # fmt: skip
    assert store.data("moved/y/z") == b"zed" and store.data("moved/y/new") == b"new in a moved folder"
    assert store.data("done/a.txt") == b"alpha" and store.data("out/r.txt") == b"result"
    assert store.data("swap/1") == b"two" and store.data("swap/2") == b"one"
    assert store._objects["keep.txt"].metadata["mode"] == str(stat.S_IFREG | 0o600)
    assert int(store._objects["out/"].metadata["mode"]) & 0o777 == 0o700
    assert store._objects["link"].etag.endswith("-1") and store.data("link") == b"out/r.txt"  # listable as a link


def test_held_tree_changes_reach_s3_only_when_published(tmp_path: Path) -> None:
    store = seeded()
    before = snapshot(store)

    async def body(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        await job(fs, clock)
        assert snapshot(store) == before  # nothing sent while held
        assert "changes of the tree held back" in (await fs.sync())["."]  # not by sync either
        assert snapshot(store) == before
        assert {c["key"] for c in fs.status()["held_changes"]} >= {"out/", "done/a.txt", "in/a.txt", "in/b.txt"}
        done = await ino_of(fs, "done")
        assert fs.markers.pending(done)  # its times, moved by the rename into it, are due a moment later
        assert await fs.publish_held() == {}
        assert not fs.markers.pending(done)  # made with the held changes, not after them
        check_applied(store, before)
        assert fs.held_tree.changes == {} and journals(tmp_path) == []

    run_eventual(store, body, folder=tmp_path, hold="keep")


def test_held_tree_changes_are_kept_after_a_stop_or_crash_and_applied_when_asked(tmp_path: Path) -> None:
    for stop in (True, False):  # a failed command's stop, a kill -9
        folder = tmp_path / str(stop)
        store = seeded()
        before = snapshot(store)
        run_eventual(store, job, folder=folder, hold="keep", stop=stop)
        assert snapshot(store) == before and len(journals(folder)) == 1

        async def after(fs: FileSystem, clock: trio.testing.MockClock) -> None:
            kept = {c["key"] for c in fs.recovery.held_changes}
            assert {"out/", "in/b.txt", "done/a.txt"} <= kept
            assert "held back" in str(fs.recovery.held_changes[0]["why"])

        run_eventual(store, after, folder=folder)  # the default recovery: S3 stays as it was
        assert snapshot(store) == before and len(journals(folder)) == 1

        async def applied(fs: FileSystem, clock: trio.testing.MockClock) -> None:
            assert sorted(fs.recovery.uploaded) == ["moved/y/new", "out/r.txt"]

        run_eventual(store, applied, folder=folder, on_recovery="upload-held")
        check_applied(store, before)
        assert journals(folder) == []


def test_held_tree_changes_discarded_leave_s3_and_the_cache_folder_as_they_were(tmp_path: Path) -> None:
    store = seeded()
    before = snapshot(store)
    run_eventual(store, job, folder=tmp_path, hold="discard")
    assert snapshot(store) == before and journals(tmp_path) == []
    assert list((tmp_path / "files").glob("*.json")) == []


def test_a_failed_upload_keeps_the_held_deletes(tmp_path: Path) -> None:
    """Deletes go last, and only once every file is in S3: a job that moves its input aside never loses it
    to a failed upload."""
    store = seeded()

    async def body(fs: FileSystem, clock: trio.testing.MockClock) -> None:
        await fs.rename(await ino_of(fs, "in"), "a.txt", ROOT_INO, "a.txt", 0)
        await write_file(fs, "r.txt", b"result")
        from s3files.errors import AccessDenied

        store.fail("put", AccessDenied("denied"), times=10)
        failed = await fs.publish_held()
        assert "r.txt" in failed and "." in failed
        assert store.data("in/a.txt") == b"alpha" and store.data("a.txt") == b"alpha"  # copied, not deleted
        assert [c["key"] for c in fs.held_tree.summary()] == ["in/a.txt"]

    run_eventual(store, body, folder=tmp_path, hold="keep")
    assert len(journals(tmp_path)) == 1


def test_the_journal_is_appended_rewritten_when_long_and_read_after_a_torn_line(tmp_path: Path) -> None:
    from s3files.core.heldtree import Change, HeldChanges
    from s3files.store.base import ObjectInfo

    journal = tmp_path / "held" / "1.json"
    held = HeldChanges(journal)
    for i in range(200):  # one key changed again and again: the file is rewritten, never past 2n+64 lines
        held.record("k", Change("put", ObjectInfo("k", 1, f"e{i}", 0.0, {}), b"x"))
        held.record(f"d{i % 3}", Change("delete"))
    held.drop("d0")
    assert len(journal.read_bytes().splitlines()) <= 2 * 3 + 64
    with open(journal, "ab") as f:
        f.write(b'{"key": "torn", "change": {"ki')  # a crash in the middle of an append
    loaded = HeldChanges.load(journal)
    assert list(loaded.changes) == list(held.changes) == ["d2", "k", "d1"] and loaded.changes["k"].info.etag == "e199"  # type: ignore[union-attr]
    held.drop("d1")
    held.drop("d2")
    held.drop("k")
    assert not journal.exists()


def test_listings_through_the_view_page_as_the_job_sees_them(tmp_path: Path) -> None:
    """HeldView's LIST pages: S3's keys without those deleted here (a folder left with none is not listed,
    also past a page of deleted keys), with those written here, each on exactly one page, in order."""
    from s3files.core.heldtree import HeldChanges
    from s3files.core.heldview import HeldView

    store = MemoryStore()
    for i in range(50):
        store.seed(f"p/k{i:03d}", b"x")
    for name in ("a", "b", "c"):
        store.seed(f"p/sub/{name}", b"x")
    store.seed("p/kept/x", b"x")
    view = HeldView(store, HeldChanges(tmp_path / "held" / "1.json"), lambda: True)

    async def main() -> list[str]:
        for i in range(1, 21):
            await view.delete(f"p/k{i:03d}")
        for name in ("a", "b", "c"):
            await view.delete(f"p/sub/{name}")
        await view.put("p/k010x", b"new")
        await view.put("p/new/", b"")
        await view.copy("p/k030", "p/zz")
        seen: list[str] = []
        token = None
        for _ in range(100):
            page = await view.list_page("p/", "/", token, max_keys=7)
            seen += [o.key for o in page.objects] + list(page.prefixes)
            token = page.next_token
            if token is None:
                return seen
        raise AssertionError("no end")

    seen = trio.run(main)
    expected = (
        ["p/k000", "p/k010x"] + [f"p/k{i:03d}" for i in range(21, 50)] + ["p/kept/", "p/new/", "p/zz"]
    )
    assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen))
