"""A folder's mtime and ctime, moved by entries created, removed or renamed in it, reach its marker ``dir/``
(markers.py; docs/SEMANTICS.md, Attributes): at most one PUT per folder per ``MARKER_DELAY``, the last at
the stop, never a marker re-created after an rmdir, written under a renamed folder's old name, or
resurrected after someone else deleted it, and never one for a folder that has none.

Core tests run against MemoryStore with trio's MockClock as the mount's clock (the writer sleeps on it);
the FUSE test runs through a real mount on moto.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio
import trio.testing
from conftest import S3Server
from test_core import run_fs
from test_fuse import mount

from s3files.core.fs import FileSystem
from s3files.core.inodes import ROOT_INO
from s3files.core.markers import MARKER_DELAY
from s3files.core.namespace import posix_metadata
from s3files.core.times import format_time
from s3files.store import MemoryStore
from s3files.store.base import ObjectInfo

FILE = stat.S_IFREG | 0o644


def spy_puts(store: MemoryStore) -> list[str]:
    """Every key the store is asked to PUT, in order (refused ones too)."""
    seen: list[str] = []
    real = store.put

    async def put(
        key: str,
        data: bytes,
        metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        seen.append(key)
        return await real(key, data, metadata, if_match, if_none_match)

    store.put = put  # type: ignore[method-assign]
    return seen


async def make_file(fs: FileSystem, parent: int, name: str) -> int:
    opened = await fs.create(parent, name, FILE, 0, 0)
    await fs.write(opened.fh, 0, b"x")
    await fs.release(opened.fh)
    return opened.attr.ino


def stored_times(store: MemoryStore, key: str) -> tuple[str, str]:
    meta = store._objects[key].metadata  # the stored object, without counting a HEAD
    return meta["mtime"], meta["ctime"]


def test_core_creating_1000_files_in_a_folder_costs_a_bounded_number_of_marker_writes() -> None:
    """1,000 files created over 4 s (of the mock clock) in a folder made by mkdir: the marker is written
    at most once per MARKER_DELAY while they are created and once at the stop, with the folder's last
    mtime and ctime; its mode, owner and extended attribute stay; a new mount shows that mtime."""
    store = MemoryStore()
    clock = trio.testing.MockClock()
    puts = spy_puts(store)
    seconds, count = 4.0, 1000
    shown: dict[str, int] = {}

    async def body(fs: FileSystem) -> None:
        d = (await fs.mkdir(ROOT_INO, "d", 0o750, 7, 8)).ino
        await fs.setxattr(d, b"user.k", b"v")
        before = puts.count("d/")
        for i in range(count):
            await make_file(fs, d, f"f{i:04d}")
            clock.jump(seconds / count)
        await trio.testing.wait_all_tasks_blocked()
        shown["during"] = puts.count("d/") - before
        attr = await fs.getattr(d)
        shown["mtime"], shown["ctime"] = attr.mtime_ns, attr.ctime_ns
        shown["before_stop"] = puts.count("d/")

    run_fs(store, body, now=clock.current_time, clock=clock)
    during = shown["during"]
    assert math.floor(seconds / MARKER_DELAY) - 1 <= during <= math.ceil(seconds / MARKER_DELAY) + 1, puts.count("d/")
    assert puts.count("d/") - shown["before_stop"] <= 1  # the stop writes what is still pending
    assert len([key for key in puts if key != "d/"]) == count  # one PUT per file, nothing else
    assert stored_times(store, "d/") == (format_time(shown["mtime"]), format_time(shown["ctime"]))
    meta = posix_metadata(store._objects["d/"].metadata)
    assert (meta["mode"], meta["uid"], meta["gid"]) == (stat.S_IFDIR | 0o750, 7, 8)
    assert "xattr" in store._objects["d/"].metadata

    async def remounted(fs: FileSystem) -> None:
        d = await fs.lookup(ROOT_INO, "d")
        assert (d.mtime_ns, d.ctime_ns, d.mode & 0o777, d.uid) == (shown["mtime"], shown["ctime"], 0o750, 7)
        assert await fs.getxattr(d.ino, b"user.k") == b"v"

    run_fs(store, remounted)


def test_core_rmdir_and_folder_rename_never_leave_a_marker_under_the_old_name() -> None:
    """A folder with a pending write removed (rmdir) or renamed: nothing is written under its old name;
    a renamed folder's pending write goes to its new name, with its times."""
    store = MemoryStore()
    clock = trio.testing.MockClock()
    puts = spy_puts(store)
    shown: dict[str, int] = {}

    async def body(fs: FileSystem) -> None:
        gone = (await fs.mkdir(ROOT_INO, "gone", 0o755, 0, 0)).ino
        await make_file(fs, gone, "f")
        await fs.unlink(gone, "f")  # a write of gone/ is pending
        await fs.rmdir(ROOT_INO, "gone")
        old = (await fs.mkdir(ROOT_INO, "old", 0o700, 0, 0)).ino
        await make_file(fs, old, "f")  # a write of old/ is pending
        await fs.rename(ROOT_INO, "old", ROOT_INO, "new", 0)
        shown["mtime"] = (await fs.getattr(old)).mtime_ns
        clock.jump(2 * MARKER_DELAY)
        await trio.testing.wait_all_tasks_blocked()
        assert store.keys() == ["new/", "new/f"]

    run_fs(store, body, now=clock.current_time, clock=clock)
    assert store.keys() == ["new/", "new/f"]
    assert puts.count("gone/") == 1 and puts.count("old/") == 1  # mkdir's, and nothing after
    assert puts.count("new/") == 1
    assert stored_times(store, "new/")[0] == format_time(shown["mtime"])
    assert posix_metadata(store._objects["new/"].metadata)["mode"] == stat.S_IFDIR | 0o700


def test_core_a_marker_deleted_or_replaced_outside_is_not_written_and_implied_folders_get_none() -> None:
    """A marker deleted by someone else while its write is pending is not re-created (If-Match: 404),
    one replaced by another object is not overwritten (412); a folder without a marker (implied by its
    keys) and the mount's root never get one."""
    store = MemoryStore()
    store.seed("implied/x", b"x")
    clock = trio.testing.MockClock()
    puts = spy_puts(store)

    async def body(fs: FileSystem) -> None:
        deleted = (await fs.mkdir(ROOT_INO, "deleted", 0o755, 0, 0)).ino
        replaced = (await fs.mkdir(ROOT_INO, "replaced", 0o755, 0, 0)).ino
        implied = (await fs.lookup(ROOT_INO, "implied")).ino
        for folder in (deleted, replaced, implied):
            await make_file(fs, folder, "f")
        await make_file(fs, ROOT_INO, "top")
        await store.delete("deleted/")
        store.seed("replaced/", b"theirs", {"mode": str(stat.S_IFDIR | 0o700)})
        clock.jump(2 * MARKER_DELAY)
        await trio.testing.wait_all_tasks_blocked()
        assert fs.markers.skipped == 2
        await make_file(fs, deleted, "g")  # not asked again: the mount knows it has no marker now

    run_fs(store, body, now=clock.current_time, clock=clock)
    assert "deleted/" not in store.keys() and "implied/" not in store.keys()
    assert "" not in store.keys() and "/" not in store.keys()
    assert store.data("replaced/") == b"theirs"
    assert puts.count("deleted/") == 2 and puts.count("replaced/") == 2  # mkdir's, and the refused one
    assert puts.count("implied/") == 0


def test_core_a_forgotten_folder_keeps_its_pending_times() -> None:
    """The kernel forgets a folder (drop_caches) whose times are not written yet: its inode is kept until
    they are, so a lookup meanwhile shows them; after the write it goes, and a lookup reads the marker."""
    store = MemoryStore()
    clock = trio.testing.MockClock()

    async def body(fs: FileSystem) -> None:
        d = (await fs.mkdir(ROOT_INO, "d", 0o755, 0, 0)).ino  # the kernel holds one reference
        await make_file(fs, d, "f")
        mtime = (await fs.getattr(d)).mtime_ns
        fs.forget(d, 1)
        assert fs.sb.inodes.get(d) is not None and fs.markers.pending(d)
        assert (await fs.lookup(ROOT_INO, "d")).mtime_ns == mtime
        fs.forget(d, 1)
        clock.jump(2 * MARKER_DELAY)
        await trio.testing.wait_all_tasks_blocked()
        assert not fs.markers.pending(d) and fs.sb.inodes.get(d) is None
        assert stored_times(store, "d/")[0] == format_time(mtime)
        assert (await fs.lookup(ROOT_INO, "d")).mtime_ns == mtime

    run_fs(store, body, now=clock.current_time, clock=clock)


# -- through a mount ------------------------------------------------------------------------------------


def test_a_folders_mtime_from_creates_survives_a_remount_and_drop_caches(
    moto_server: Any, bucket: str, tmp_path: Path
) -> None:
    """mkdir d, chmod, setxattr, create files in it: after a remount (a fresh cache folder) and after
    drop_caches, stat shows the mtime and ctime of the last create, to the nanosecond, and the same mode,
    owner and xattr."""
    server = S3Server("moto", moto_server.endpoint_url)
    root = tmp_path / "m"
    with mount(server, bucket, root):
        os.mkdir(root / "d", 0o750)
        os.chown(root / "d", 1234, 4321)
        os.setxattr(root / "d", "user.k", b"v")
        for i in range(20):
            (root / f"d/f{i}").write_bytes(b"x")
        seen = os.stat(root / "d")
    with mount(server, bucket, root):
        Path("/proc/sys/vm/drop_caches").write_text("2")
        for n in range(2):
            st = os.stat(root / "d")
            assert (st.st_mtime_ns, st.st_ctime_ns) == (seen.st_mtime_ns, seen.st_ctime_ns)
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 1234, 4321)
            assert os.getxattr(root / "d", "user.k") == b"v"
            (root / f"d/late{n}").write_bytes(b"y")  # changed here, then forgotten by the kernel
            seen = os.stat(root / "d")
            assert seen.st_mtime_ns > st.st_mtime_ns
            Path("/proc/sys/vm/drop_caches").write_text("2")
    with mount(server, bucket, root):
        st = os.stat(root / "d")
        assert (st.st_mtime_ns, st.st_ctime_ns) == (seen.st_mtime_ns, seen.st_ctime_ns)
