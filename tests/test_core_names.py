"""Unit tests of names in the core: folder rename (and its crash recovery) and symlinks, with request counts,
against the in-memory store."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import replace

import pytest
from test_core import read_all, resolve, run_fs, write_new

from s3files.core.fs import RENAME_NOREPLACE, FileSystem
from s3files.core.inodes import ROOT_INO
from s3files.core.links import copy_object
from s3files.core.xattrs import decode, encode
from s3files.errors import S3FilesError, StoreError
from s3files.store import MemoryStore
from s3files.store.base import ObjectInfo

LINK = str(stat.S_IFLNK | 0o777)


def tree(prefix: str, files: int = 30, nested: int = 10) -> dict[str, bytes]:
    """A folder of ``files`` files and a subfolder of ``nested`` more, with its marker."""
    objects = {f"{prefix}/": b""}
    objects.update({f"{prefix}/f{i:02d}": f"file {i}".encode() * (i + 1) for i in range(files)})
    objects.update({f"{prefix}/sub/g{i:02d}": f"nested {i}".encode() for i in range(nested)})
    return objects


def seed(store: MemoryStore, objects: Mapping[str, bytes]) -> None:
    for key, data in objects.items():
        store.seed(key, data, {"mode": str(stat.S_IFREG | 0o600), "uid": "7"} if data else None)


async def errno_of(call: object) -> int:
    with pytest.raises(S3FilesError) as failed:
        await call  # type: ignore[misc]
    return failed.value.errno


# -- folder rename ----------------------------------------------------------------------------------


def test_folder_rename_copies_all_then_deletes_all_and_inodes_follow() -> None:
    store = MemoryStore()
    before = tree("A")
    seed(store, before)
    store.seed("other/keep", b"k")

    async def body(fs: FileSystem) -> None:
        a = await fs.lookup(ROOT_INO, "A")
        f00, g03 = await resolve(fs, "A/f00"), await resolve(fs, "A/sub/g03")
        reading = await fs.open(f00, os.O_RDONLY)
        await fs.readdir(await fs.opendir(ROOT_INO), 0)  # a fresh listing: "B" is known absent for free
        store.requests.reset()
        await fs.rename(ROOT_INO, "A", ROOT_INO, "B", 0)
        assert store.requests.snapshot() == {"list": 1, "copy": 41, "delete": 41}
        assert store.keys() == sorted([k.replace("A/", "B/", 1) for k in before] + ["other/keep"])
        assert all(store.data(k.replace("A/", "B/", 1)) == v for k, v in before.items())
        meta = (await store.head("B/f05")).metadata
        assert meta is not None and meta["mode"] == str(stat.S_IFREG | 0o600) and meta["uid"] == "7"
        # the kernel's inodes and open files follow the new names
        assert (await fs.lookup(ROOT_INO, "B")).ino == a.ino
        assert await resolve(fs, "B/sub/g03") == g03
        assert await fs.read(reading.fh, 0, 100) == before["A/f00"]
        await fs.release(reading.fh)
        with pytest.raises(S3FilesError):
            await fs.lookup(ROOT_INO, "A")
        names = [n for n, _, _ in await fs.readdir(await fs.opendir(ROOT_INO), 0)]
        assert names == ["B", "other"]
        sub = [n for n, _, _ in await fs.readdir(await fs.opendir(await resolve(fs, "B/sub")), 0)]
        assert sub == [f"g{i:02d}" for i in range(10)]

    run_fs(store, body, metadata_ttl=60.0)


def test_folder_rename_moves_files_being_written_without_publishing_them() -> None:
    """Only close and fsync publish: a file being written moves with its folder and is published
    under its new name when it is closed (never half-written at the old or the new name)."""
    store = MemoryStore()
    store.seed("A/old", b"old")

    async def body(fs: FileSystem) -> None:
        a = await fs.lookup(ROOT_INO, "A")
        opened = await fs.create(a.ino, "draft", 0o644, 0, 0)
        await fs.write(opened.fh, 0, b"written before the rename")
        await fs.rename(ROOT_INO, "A", ROOT_INO, "B", 0)
        assert store.keys() == ["B/old"]
        await fs.write(opened.fh, 0, b"WRITTEN")  # the open file keeps working at its new name
        await fs.release(opened.fh)
        assert store.data("B/draft") == b"WRITTEN before the rename"
        assert store.keys() == ["B/draft", "B/old"]

    run_fs(store, body)


def test_folder_rename_onto_things_that_exist() -> None:
    store = MemoryStore()
    seed(store, {"A/x": b"1", "A/y/z": b"2", "empty/": b"", "full/other": b"3", "file": b"f", "C/c": b"c"})

    async def body(fs: FileSystem) -> None:
        a = await fs.lookup(ROOT_INO, "A")
        y = await fs.lookup(a.ino, "y")
        assert await errno_of(fs.rename(ROOT_INO, "A", ROOT_INO, "full", 0)) == errno.ENOTEMPTY
        assert await errno_of(fs.rename(ROOT_INO, "A", ROOT_INO, "file", 0)) == errno.ENOTDIR
        assert await errno_of(fs.rename(ROOT_INO, "file", ROOT_INO, "full", 0)) == errno.EISDIR
        assert await errno_of(fs.rename(ROOT_INO, "A", y.ino, "deeper", 0)) == errno.EINVAL
        assert await errno_of(fs.rename(ROOT_INO, "A", ROOT_INO, "empty", RENAME_NOREPLACE)) == errno.EEXIST
        assert await errno_of(fs.rename(ROOT_INO, "A", ROOT_INO, "nope", 2)) == errno.ENOTSUP
        assert await errno_of(fs.rename(ROOT_INO, "missing", ROOT_INO, "nope", 0)) == errno.ENOENT
        await fs.rename(ROOT_INO, "A", ROOT_INO, "A", 0)  # onto itself: nothing happens
        await fs.rename(ROOT_INO, "C", ROOT_INO, "D", RENAME_NOREPLACE)  # NOREPLACE onto nothing is fine
        assert store.keys() == ["A/x", "A/y/z", "D/c", "empty/", "file", "full/other"]
        # onto an empty folder: it is replaced (its marker goes, the moved keys make the folder)
        await fs.rename(ROOT_INO, "A", ROOT_INO, "empty", 0)
        assert store.keys() == ["D/c", "empty/x", "empty/y/z", "file", "full/other"]
        assert store.data("empty/y/z") == b"2"

    run_fs(store, body)


def test_interrupted_folder_rename_is_completed_by_renaming_again() -> None:
    store = MemoryStore()
    before = tree("A", files=20, nested=5)
    seed(store, before)

    def moved(key: str) -> str:
        return key.replace("A/", "B/", 1)

    async def body(fs: FileSystem) -> None:
        # a crash while copying: the 7th copy fails, some copies are made, every source is still there
        real_copy, calls = store.copy, 0

        async def copy_then_fail(src: str, dst: str, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
            nonlocal calls
            calls += 1
            if calls == 7:
                raise StoreError("connection reset")
            return await real_copy(src, dst, metadata)

        store.copy = copy_then_fail  # type: ignore[method-assign]
        assert await errno_of(fs.rename(ROOT_INO, "A", ROOT_INO, "B", 0)) == errno.EIO
        store.copy = real_copy  # type: ignore[method-assign]
        assert all(k in store.keys() for k in before)
        assert 0 < sum(k.startswith("B/") for k in store.keys()) < len(before)
        await fs.rename(ROOT_INO, "A", ROOT_INO, "B", 0)  # `mv -T A B` again: finished
        assert store.keys() == sorted(moved(k) for k in before)
        # back, onto the state a crash while moving back could leave: 4 copies made
        left = [k for k in before if k.endswith("3") or k == "A/"]
        for key in left:
            store.seed(key, before[key])
        store.requests.reset()
        await fs.rename(ROOT_INO, "B", ROOT_INO, "A", 0)
        assert store.keys() == sorted(before)
        counts = store.requests.snapshot()
        assert counts["copy"] == len(before) - len(left) and counts["delete"] == len(before)
        # a crash while deleting: every copy made, some sources deleted
        for key, data in before.items():
            store.seed(moved(key), data)
            if not key.endswith("3"):
                await store.delete(key)
        store.requests.reset()
        await fs.rename(ROOT_INO, "A", ROOT_INO, "B", 0)
        assert store.keys() == sorted(moved(k) for k in before)
        # two lookups (HEAD and 1-key LIST each) and a HEAD of the source's marker B/ (its attributes: a
        # version this mount never saw), both trees listed; nothing copied again, 3 sources deleted
        assert store.requests.snapshot() == {"head": 3, "list": 4, "delete": 3}
        assert "B/" in store.keys()  # the marker copied before the crash stays
        assert all(store.data(moved(k)) == v for k, v in before.items())

    run_fs(store, body, metadata_ttl=0.0)


def test_a_folder_that_is_not_an_interrupted_copy_is_not_merged() -> None:
    store = MemoryStore()
    seed(store, {"A/x": b"1", "A/y": b"22"})
    cases = [
        {"B/x": b"1", "B/y": b"2"},  # a key of another size
        {"B/x": b"1", "B/y": b"33"},  # same sizes, other content (ETag)
        {"B/x": b"1", "B/z": b"3"},  # neither key set contains the other
        {"B/z": b"3"},  # nothing in common
    ]

    async def body(fs: FileSystem) -> None:
        for case in cases:
            seed(store, case)
            assert await errno_of(fs.rename(ROOT_INO, "A", ROOT_INO, "B", 0)) == errno.ENOTEMPTY
            for key in case:
                await store.delete(key)
        assert store.keys() == ["A/x", "A/y"]
        # two folders that share only empty names: nothing tells them from a copy, so no merge
        seed(store, {"C/e": b"", "C/sub/": b"", "D/e": b"", "D/sub/": b""})
        assert await errno_of(fs.rename(ROOT_INO, "C", ROOT_INO, "D", 0)) == errno.ENOTEMPTY

    run_fs(store, body, metadata_ttl=0.0)


# -- symlinks ---------------------------------------------------------------------------------------


def test_symlink_is_a_one_part_upload_in_3_requests_and_reads_back() -> None:
    store = MemoryStore()
    store.seed("taken", b"x")

    async def create(fs: FileSystem) -> None:
        store.requests.reset()
        attr = await fs.symlink(ROOT_INO, "link", b"../some/target", 1000, 1001)
        assert store.requests.snapshot() == {"create_multipart": 1, "upload_part": 1, "complete_multipart": 1}
        assert stat.S_ISLNK(attr.mode) and attr.size == len(b"../some/target")
        assert await fs.readlink(attr.ino) == b"../some/target"  # known: no request
        assert store.requests.total() == 3
        assert await errno_of(fs.symlink(ROOT_INO, "taken", b"t", 0, 0)) == errno.EEXIST
        assert await errno_of(fs.readlink(await resolve(fs, "taken"))) == errno.EINVAL

    run_fs(store, create)
    info = await_head(store, "link")
    assert info.etag.endswith("-1") and store.data("link") == b"../some/target"
    assert info.metadata is not None and info.metadata["mode"] == LINK
    assert (info.metadata["uid"], info.metadata["gid"]) == ("1000", "1001")
    assert store.data("taken") == b"x"

    async def remount(fs: FileSystem) -> None:
        store.requests.reset()
        attr = await fs.lookup(ROOT_INO, "link")
        assert stat.S_ISLNK(attr.mode) and (attr.uid, attr.gid) == (1000, 1001)
        assert await fs.readlink(attr.ino) == b"../some/target"
        assert await fs.readlink(attr.ino) == b"../some/target"
        assert store.requests.snapshot() == {"head": 1, "list": 1, "get": 1}

    run_fs(store, remount)


def await_head(store: MemoryStore, key: str) -> ObjectInfo:
    import trio

    return trio.run(store.head, key)


def test_listing_heads_only_symlink_candidates() -> None:
    store = MemoryStore()
    for i in range(2500):
        store.seed(f"big/f{i:05d}", b"x" * (i % 5000))

    async def make_links(fs: FileSystem) -> None:
        big = await fs.lookup(ROOT_INO, "big")
        await fs.symlink(big.ino, "link-a", b"f00001", 0, 0)
        await fs.symlink(big.ino, "link-b", b"/elsewhere", 0, 0)

    run_fs(store, make_links)

    async def body(fs: FileSystem) -> None:
        big = await fs.lookup(ROOT_INO, "big")
        store.requests.reset()
        entries = {n: a for n, a, _ in await fs.readdir(await fs.opendir(big.ino), 0)}
        assert store.requests.snapshot() == {"list": 3, "head": 2}
        assert len(entries) == 2502
        assert stat.S_ISLNK(entries["link-a"].mode) and stat.S_ISLNK(entries["link-b"].mode)
        assert sum(stat.S_ISLNK(a.mode) for a in entries.values()) == 2
        # listed again: the versions a HEAD described are not asked again
        store.requests.reset()
        await fs.readdir(await fs.opendir(big.ino), 0)
        assert store.requests.snapshot() == {"list": 3}
        assert await fs.readlink(entries["link-b"].ino) == b"/elsewhere"

    run_fs(store, body, metadata_ttl=0.0, listing_attributes="fast")  # true attributes HEAD every file


def test_symlink_written_with_plain_put_gets_a_new_inode_once_a_head_shows_it() -> None:
    store = MemoryStore()
    store.seed("d/s3fs-link", b"target.txt", {"mode": LINK, "mtime": "1000"})  # as s3fs writes one
    store.seed("d/target.txt", b"data")

    async def body(fs: FileSystem) -> None:
        d = await fs.lookup(ROOT_INO, "d")
        listed = {n: a for n, a, _ in await fs.readdir(await fs.opendir(d.ino), 0)}
        old = listed["s3fs-link"]
        assert stat.S_ISREG(old.mode)  # a listing cannot tell, and a plain small file costs no HEAD
        assert await errno_of(fs.getattr(old.ino)) == errno.ESTALE  # never another type for this inode
        new = await fs.lookup(d.ino, "s3fs-link")  # the kernel looks the name up again
        assert new.ino != old.ino and stat.S_ISLNK(new.mode) and new.mtime_ns == 1000 * 10**9
        assert await fs.readlink(new.ino) == b"target.txt"
        relisted = {n: a for n, a, _ in await fs.readdir(await fs.opendir(d.ino), 0)}
        assert relisted["s3fs-link"].ino == new.ino and stat.S_ISLNK(relisted["s3fs-link"].mode)
        # and back: replaced by a regular file outside
        store.seed("d/s3fs-link", b"now a file")
        assert await errno_of(fs.getattr(new.ino)) == errno.ESTALE
        again = await fs.lookup(d.ino, "s3fs-link")
        assert again.ino not in (old.ino, new.ino) and stat.S_ISREG(again.mode)

    run_fs(store, body, metadata_ttl=0.0, listing_attributes="fast")  # true attributes: a symlink at once


def test_a_symlink_shown_by_an_open_stays_a_symlink_after_the_kernel_forgets_the_new_inode() -> None:
    """The kernel's retry after ESTALE: its revalidating lookup gets the new inode, discards that answer
    (another node id than its dentry's) with a FORGET, and looks the name up again. By then the listing
    is past its TTL and listed again (fast: no HEAD): the version a GET showed to be a symlink must stay
    one (a CI run saw a file's inode again, and a second ESTALE reached the program)."""
    store = MemoryStore()
    store.seed("d/s3fs-link", b"target.txt", {"mode": LINK, "mtime": "1000"})
    store.seed("d/target.txt", b"data")
    t = [0.0]

    async def body(fs: FileSystem) -> None:
        d = await fs.lookup(ROOT_INO, "d")
        old = {n: a for n, a, _ in await fs.readdir(await fs.opendir(d.ino), 0)}["s3fs-link"]
        assert stat.S_ISREG(old.mode)
        t[0] += 2.0  # past the TTL: the open asks S3, and the cached listing is gone
        assert await errno_of(fs.open(old.ino, os.O_RDONLY)) == errno.ESTALE
        new = await fs.lookup(d.ino, "s3fs-link")  # revalidation: another node id...
        assert stat.S_ISLNK(new.mode) and new.ino != old.ino
        fs.forget(new.ino, 1)  # ...so the kernel forgets it and looks the name up again
        store.requests.reset()
        again = await fs.lookup(d.ino, "s3fs-link")
        assert stat.S_ISLNK(again.mode) and again.mtime_ns == 1000 * 10**9
        assert "head" not in store.requests.snapshot()  # known: no request asks it again
        assert await fs.readlink(again.ino) == b"target.txt"

    run_fs(store, body, now=lambda: t[0], metadata_ttl=1.0, listing_attributes="fast")


def test_symlink_rename_and_unlink() -> None:
    store = MemoryStore()
    store.seed("d/", b"")

    async def body(fs: FileSystem) -> None:
        d = await fs.lookup(ROOT_INO, "d")
        link = await fs.symlink(ROOT_INO, "l", b"somewhere", 0, 0)
        await fs.rename(ROOT_INO, "l", d.ino, "m", 0)
        assert store.keys() == ["d/", "d/m"] and (await store.head("d/m")).etag.endswith("-1")
        attr = await fs.lookup(d.ino, "m")
        assert attr.ino == link.ino and stat.S_ISLNK(attr.mode)
        await fs.rename(ROOT_INO, "d", ROOT_INO, "e", 0)
        assert await fs.readlink(link.ino) == b"somewhere"
        e = await fs.lookup(ROOT_INO, "e")
        await fs.unlink(e.ino, "m")
        assert store.keys() == ["e/"]

    run_fs(store, body)


class CopyLosesMultipartEtag(MemoryStore):
    """Like AWS: CopyObject of a multipart object makes a single-part copy with a plain MD5 ETag."""

    async def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        info = await super().copy(src, dst, metadata)
        etag = hashlib.md5(self.data(dst)).hexdigest()
        self._objects[dst].etag = etag
        return replace(info, etag=etag)


def test_renamed_symlink_stays_listable_where_copies_lose_the_multipart_etag() -> None:
    store = CopyLosesMultipartEtag()

    async def body(fs: FileSystem) -> None:
        await fs.symlink(ROOT_INO, "l", b"t", 0, 0)
        await write_new(fs, ROOT_INO, "f", b"plain")
        await fs.readdir(await fs.opendir(ROOT_INO), 0)  # a fresh listing: the renames' lookups are free
        store.requests.reset()
        await fs.rename(ROOT_INO, "l", ROOT_INO, "m", 0)
        written_again = {"create_multipart": 1, "upload_part": 1, "complete_multipart": 1}
        assert store.requests.snapshot() == {"copy": 1, "head": 1, "get": 1, **written_again, "delete": 1}
        assert (await store.head("m")).etag.endswith("-1")
        await fs.readdir(await fs.opendir(ROOT_INO), 0)
        store.requests.reset()
        await fs.rename(ROOT_INO, "f", ROOT_INO, "g", 0)
        assert store.requests.snapshot() == {"copy": 1, "delete": 1}  # a plain file: no HEAD
        assert await read_all(fs, await resolve(fs, "g")) == b"plain"
        # metadata rewritten in place (what chown -h needs) keeps the form too
        etag = await copy_object(store, await store.head("m"), "m", metadata={"mode": LINK, "uid": "5"})
        assert etag.endswith("-1") and (await store.head("m")).metadata == {"mode": LINK, "uid": "5"}
        assert store.data("m") == b"t"

    run_fs(store, body, metadata_ttl=60.0)


def test_folder_rename_of_1500_keys_pages_its_listing() -> None:
    store = MemoryStore()
    for i in range(1500):
        store.seed(f"A/{i // 100}/k{i:04d}", b"x")

    async def body(fs: FileSystem) -> None:
        await fs.readdir(await fs.opendir(ROOT_INO), 0)
        store.requests.reset()
        await fs.rename(ROOT_INO, "A", ROOT_INO, "B", 0)
        assert store.requests.snapshot() == {"list": 2, "copy": 1500, "delete": 1500}
        assert len(store.keys()) == 1500 and all(k.startswith("B/") for k in store.keys())

    run_fs(store, body, metadata_ttl=60.0)


def test_chown_of_a_symlink_keeps_it_a_symlink_where_copies_lose_the_multipart_etag() -> None:
    store = CopyLosesMultipartEtag()

    async def body(fs: FileSystem) -> None:
        link = await fs.symlink(ROOT_INO, "l", b"target", 0, 0)
        await fs.setattr(link.ino, uid=5)  # chown -h: a metadata rewrite in place
        head = await store.head("l")
        assert head.etag.endswith("-1") and head.metadata is not None and head.metadata["uid"] == "5"
        assert int(head.metadata["mode"]) & 0o170000 == 0o120000 and store.data("l") == b"target"

    run_fs(store, body)


# -- special files and extended attributes ---------------------------------------------------------


def test_mknod_is_one_put_and_xattrs_cost_no_request_when_known() -> None:
    """mknod: one PUT. getxattr of another namespace (the kernel asks security.capability before every
    write) and of a version whose metadata is known and fresh: no request; a set: one copy in place."""
    store = MemoryStore()

    async def body(fs: FileSystem) -> None:
        store.requests.reset()
        fifo = await fs.mknod(ROOT_INO, "p", stat.S_IFIFO | 0o640, 0, 1, 2)
        dev = await fs.mknod(ROOT_INO, "d", stat.S_IFBLK | 0o600, os.makedev(8, 1), 1, 2)
        assert store.requests.snapshot() == {"put": 2}
        assert (fifo.mode, dev.mode, dev.rdev) == (stat.S_IFIFO | 0o640, stat.S_IFBLK | 0o600, os.makedev(8, 1))
        assert await errno_of(fs.mknod(ROOT_INO, "p", stat.S_IFIFO | 0o640, 0, 1, 2)) == errno.EEXIST
        assert await errno_of(fs.mknod(ROOT_INO, "x", stat.S_IFDIR | 0o755, 0, 1, 2)) == errno.EINVAL
        f = await write_new(fs, ROOT_INO, "f", b"data")
        store.requests.reset()
        assert await errno_of(fs.getxattr(f, b"security.capability")) == errno.ENODATA
        assert await errno_of(fs.setxattr(fifo.ino, b"user.a", b"1")) == errno.EPERM
        assert await errno_of(fs.setxattr(f, b"system.posix_acl_access", b"1")) == errno.ENOTSUP
        assert await errno_of(fs.setxattr(f, b'user."q"', b"1")) == errno.EINVAL
        assert store.requests.snapshot() == {}
        await fs.setxattr(f, b"user.a", b"1")
        assert store.requests.snapshot() == {"copy": 1}
        assert await fs.getxattr(f, b"user.a") == b"1" and await fs.listxattr(f) == [b"user.a"]
        assert store.requests.snapshot() == {"copy": 1}
        info = await store.head("d")
        assert info.metadata is not None and info.metadata["rdev"] == str(os.makedev(8, 1))

    run_fs(store, body)


def test_xattr_encoding_is_s3fs_fuses_and_garbage_is_skipped() -> None:
    raw = encode({b"user.b": b"\x00\xff", b"user.a": b"bar", b"user.k:v": b""})
    assert raw == "%7B%22user.a%22%3A%22YmFy%22%2C%22user.b%22%3A%22AP8%3D%22%2C%22user.k%3Av%22%3A%22%22%7D"
    assert decode(raw) == {b"user.a": b"bar", b"user.b": b"\x00\xff", b"user.k:v": b""}
    assert encode({}) is None and decode("%7B%7D") == {} and decode(None) == {}
    for garbage in ("", "{", "}{", "%ZZ", '{"a":"!!"}', '{"a"}', '{"a":"YQ==",broken,"b":"Yg=="}', '{""":"YQ=="}'):
        decode(garbage)  # never raises
    assert decode('{"a":"YQ==",broken,"b":"Yg=="}') == {b"a": b"a", b"b": b"b"}


# -- what a name shows after our own rename or unlink (pjdfstest rename/09, rename/10) ------------------


def test_a_name_renamed_over_or_unlinked_never_shows_the_metadata_of_the_object_it_had() -> None:
    """Empty objects share their ETag, and S3 stamps whole seconds: a file renamed over a FIFO in the
    same second as the FIFO was made is, to a listing, the same version as the FIFO. The metadata cache
    must learn the rename (the copy carries the source's metadata) and the unlink (the name's next object
    is another version), or the listing shows the replaced object's kind, owner and a new inode number."""
    clock = [1_700_000_000.0]
    store = MemoryStore(now=lambda: clock[0])

    async def body(fs: FileSystem) -> None:
        opened = await fs.create(ROOT_INO, "a", 0o600, 7, 7)
        await fs.release(opened.fh)
        clock[0] += 1  # the FIFO, the rename and the listings: one second later
        await fs.mknod(ROOT_INO, "b", stat.S_IFIFO | 0o644, 0, 5, 5)
        await fs.rename(ROOT_INO, "a", ROOT_INO, "b", 0)
        clock[0] += 2  # every cached listing is old now (metadata TTL 1 s)
        listed = {name: attr for name, attr, _ in await fs.readdir(await fs.opendir(ROOT_INO), 0)}
        looked_up = await fs.lookup(ROOT_INO, "b")
        for attr in (listed["b"], looked_up):
            assert (attr.ino, attr.mode, attr.uid) == (opened.attr.ino, stat.S_IFREG | 0o600, 7)
        # unlinked, then written again by someone else in the same second with the same (empty) body
        await fs.mknod(ROOT_INO, "c", stat.S_IFIFO | 0o644, 0, 5, 5)
        await fs.unlink(ROOT_INO, "c")
        store.seed("c", b"")
        clock[0] += 2
        listed = {name: attr for name, attr, _ in await fs.readdir(await fs.opendir(ROOT_INO), 0)}
        assert (stat.S_IFMT(listed["c"].mode), listed["c"].uid) == (stat.S_IFREG, 0)

    run_fs(store, body, now=lambda: clock[0])
