"""One behaviour suite over both fronts of the core: a real FUSE mount (on a thread of this process) and
``open_fs`` (no FUSE), wherever the contract is the same (docs/SEMANTICS.md, "open_fs"): reads, writes,
appends, seek and truncate, renames, listings, errors with their errnos, and a conflict with an SDK writer.

One mount and one open_fs per module (module-scoped, on moto), each test in a folder of its own. Both
run close-to-open with a metadata TTL of 0, so what a test puts through the SDK before it looks is seen at
once by either front (with the default TTL an earlier test's listing of the root would hide a new
folder for up to a second, on both fronts alike).
"""

from __future__ import annotations

import csv
import errno
import io
import itertools
import json
import os
import shutil
import stat
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import S3Server
from test_fuse import mount

from s3files.localserver import MotoServer
from s3files.openfs import OpenFS, open_fs


class Front:
    """The small interface the suite drives: paths are relative to the front's root (the bucket)."""

    name: str

    def open(self, path: str, mode: str = "r", **kw: Any) -> Any:
        raise NotImplementedError

    def listdir(self, path: str) -> list[str]:
        raise NotImplementedError

    def stat(self, path: str) -> os.stat_result:
        raise NotImplementedError

    def isdir(self, path: str) -> bool:
        raise NotImplementedError

    def mkdir(self, path: str) -> None:
        raise NotImplementedError

    def rmdir(self, path: str) -> None:
        raise NotImplementedError

    def remove(self, path: str) -> None:
        raise NotImplementedError

    def rename(self, src: str, dst: str) -> None:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    # chmod, chown, utime and extended attributes: os.*'s signatures, through the front
    def chmod(self, path: str, mode: int) -> None:
        raise NotImplementedError

    def chown(self, path: str, uid: int, gid: int) -> None:
        raise NotImplementedError

    def utime(self, path: str, ns: tuple[int, int] | None = None) -> None:
        raise NotImplementedError

    def getxattr(self, path: str, name: str) -> bytes:
        raise NotImplementedError

    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        raise NotImplementedError

    def listxattr(self, path: str) -> list[str]:
        raise NotImplementedError

    def removexattr(self, path: str, name: str) -> None:
        raise NotImplementedError


class MountFront(Front):
    name = "mount"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _p(self, path: str) -> Path:
        return self.root / path

    def open(self, path: str, mode: str = "r", **kw: Any) -> Any:
        return open(self._p(path), mode, **kw)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(self._p(path)))

    def stat(self, path: str) -> os.stat_result:
        return os.stat(self._p(path))

    def isdir(self, path: str) -> bool:
        return os.path.isdir(self._p(path))

    def mkdir(self, path: str) -> None:
        os.mkdir(self._p(path))

    def rmdir(self, path: str) -> None:
        os.rmdir(self._p(path))

    def remove(self, path: str) -> None:
        os.remove(self._p(path))

    def rename(self, src: str, dst: str) -> None:
        os.rename(self._p(src), self._p(dst))

    def exists(self, path: str) -> bool:
        return os.path.exists(self._p(path))

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._p(path), mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(self._p(path), uid, gid)

    def utime(self, path: str, ns: tuple[int, int] | None = None) -> None:
        if ns is None:
            os.utime(self._p(path))
        else:
            os.utime(self._p(path), ns=ns)

    def getxattr(self, path: str, name: str) -> bytes:
        return os.getxattr(self._p(path), name)

    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        os.setxattr(self._p(path), name, value, flags)

    def listxattr(self, path: str) -> list[str]:
        return sorted(os.listxattr(self._p(path)))

    def removexattr(self, path: str, name: str) -> None:
        os.removexattr(self._p(path), name)


class OpenFSFront(Front):
    name = "open_fs"

    def __init__(self, fs: OpenFS) -> None:
        self.fs = fs

    def open(self, path: str, mode: str = "r", **kw: Any) -> Any:
        return self.fs.open(path, mode, **kw)

    def listdir(self, path: str) -> list[str]:
        return sorted(self.fs.listdir(path))

    def stat(self, path: str) -> os.stat_result:
        return self.fs.stat(path)

    def isdir(self, path: str) -> bool:
        return self.fs.isdir(path)

    def mkdir(self, path: str) -> None:
        self.fs.mkdir(path)

    def rmdir(self, path: str) -> None:
        self.fs.rmdir(path)

    def remove(self, path: str) -> None:
        self.fs.remove(path)

    def rename(self, src: str, dst: str) -> None:
        self.fs.rename(src, dst)

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def chmod(self, path: str, mode: int) -> None:
        self.fs.chmod(path, mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        self.fs.chown(path, uid, gid)

    def utime(self, path: str, ns: tuple[int, int] | None = None) -> None:
        self.fs.utime(path, ns=ns)

    def getxattr(self, path: str, name: str) -> bytes:
        return self.fs.getxattr(path, name)

    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        self.fs.setxattr(path, name, value, flags)

    def listxattr(self, path: str) -> list[str]:
        return sorted(self.fs.listxattr(path))

    def removexattr(self, path: str, name: str) -> None:
        self.fs.removexattr(path, name)


@pytest.fixture(scope="module")
def front_bucket(moto_server: MotoServer) -> str:
    name = f"fronts-{uuid.uuid4().hex[:10]}"
    moto_server.create_bucket(name)
    return name


@pytest.fixture(scope="module", params=["mount", "open_fs"])
def front(
    request: pytest.FixtureRequest, moto_server: MotoServer, front_bucket: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Front]:
    """The same bucket through a real FUSE mount, then through open_fs (one of each per module)."""
    base = tmp_path_factory.mktemp(f"front-{request.param}")
    if request.param == "mount":
        pytest.importorskip("pyfuse3")
        if not os.path.exists("/dev/fuse"):
            pytest.skip("no /dev/fuse")
        with mount(S3Server("moto", moto_server.endpoint_url), front_bucket, base / "m", metadata_ttl=0.0):
            yield MountFront(base / "m")
    else:
        with open_fs(
            f"s3://{front_bucket}/", endpoint_url=moto_server.endpoint_url, cache_dir=base / "cache", metadata_ttl=0.0
        ) as fs:
            yield OpenFSFront(fs)


_folders = itertools.count(1)


@pytest.fixture
def folder(front: Front, boto3_client: Any, front_bucket: str) -> str:
    """A folder of this test's own in the shared bucket (made through the SDK: its marker)."""
    name = f"t{next(_folders)}-{front.name}"
    boto3_client.put_object(Bucket=front_bucket, Key=f"{name}/", Body=b"")
    return name


@pytest.fixture
def s3(boto3_client: Any, front_bucket: str) -> Callable[..., Any]:
    """``s3("get", key)`` -> bytes, ``s3("put", key, body)``, ``s3("keys", prefix)`` -> sorted keys."""

    def call(op: str, key: str, body: bytes = b"") -> Any:
        if op == "get":
            return boto3_client.get_object(Bucket=front_bucket, Key=key)["Body"].read()
        if op == "put":
            return boto3_client.put_object(Bucket=front_bucket, Key=key, Body=body)
        listed = boto3_client.list_objects_v2(Bucket=front_bucket, Prefix=key)
        return sorted(item["Key"] for item in listed.get("Contents", []))

    return call


def expect_errno(code: int, action: Callable[[], object]) -> OSError:
    with pytest.raises(OSError) as raised:
        action()
    assert raised.value.errno == code, f"{errno.errorcode[raised.value.errno]} instead of {errno.errorcode[code]}"
    return raised.value


def test_reads_whole_partial_and_at_offsets(front: Front, folder: str, s3: Callable[..., Any]) -> None:
    body = bytes(range(256)) * 12_000  # 3 MB: past the first part (1 MiB), so read-ahead runs
    s3("put", f"{folder}/data.bin", body)
    assert front.stat(f"{folder}/data.bin").st_size == len(body)
    with front.open(f"{folder}/data.bin", "rb") as f:
        assert f.read(10) == body[:10]
        f.seek(2_000_001)
        assert f.read(7) == body[2_000_001:2_000_008]
        assert f.tell() == 2_000_008
        f.seek(-3, os.SEEK_END)
        assert f.read() == body[-3:]
        assert f.read() == b""
    with front.open(f"{folder}/data.bin", "rb") as f:
        assert f.read() == body
    out = io.BytesIO()
    with front.open(f"{folder}/data.bin", "rb") as f:
        shutil.copyfileobj(f, out)
    assert out.getvalue() == body


def test_writes_reach_s3_at_close_in_binary_and_text(front: Front, folder: str, s3: Callable[..., Any]) -> None:
    with front.open(f"{folder}/new.bin", "wb") as f:
        f.write(b"abc" * 1000)
    assert s3("get", f"{folder}/new.bin") == b"abc" * 1000  # close-to-open: close returned after the upload
    with front.open(f"{folder}/notes.txt", "w", encoding="utf-8") as f:
        f.write("zoë\nline two\n")
    assert s3("get", f"{folder}/notes.txt") == "zoë\nline two\n".encode()
    with front.open(f"{folder}/notes.txt", encoding="utf-8") as f:
        assert f.readlines() == ["zoë\n", "line two\n"]
    assert front.stat(f"{folder}/new.bin").st_size == 3000
    assert stat.S_ISREG(front.stat(f"{folder}/new.bin").st_mode)
    with front.open(f"{folder}/new.bin", "wb") as f:  # "w" truncates an existing file
        f.write(b"short")
    assert s3("get", f"{folder}/new.bin") == b"short"


def test_appends_write_at_the_end(front: Front, folder: str, s3: Callable[..., Any]) -> None:
    s3("put", f"{folder}/log.txt", b"first\n")
    with front.open(f"{folder}/log.txt", "a") as f:
        assert f.tell() == 6
        f.write("second\n")
    with front.open(f"{folder}/log.txt", "ab") as f:
        f.write(b"third\n")
    assert s3("get", f"{folder}/log.txt") == b"first\nsecond\nthird\n"
    with front.open(f"{folder}/fresh.log", "a") as f:  # "a" creates
        f.write("only\n")
    assert s3("get", f"{folder}/fresh.log") == b"only\n"


def test_seek_overwrite_and_truncate(front: Front, folder: str, s3: Callable[..., Any]) -> None:
    s3("put", f"{folder}/r.bin", b"0123456789")
    with front.open(f"{folder}/r.bin", "r+b") as f:
        f.seek(3)
        f.write(b"XY")
        f.seek(0)
        assert f.read(6) == b"012XY5"
        f.truncate(8)
        f.seek(0, os.SEEK_END)
        assert f.tell() == 8
        f.seek(12)
        f.write(b"!")  # past the end: a hole of zeros
    assert s3("get", f"{folder}/r.bin") == b"012XY567\0\0\0\0!"
    with front.open(f"{folder}/r.bin", "r+b") as f:
        f.truncate(2)
    assert s3("get", f"{folder}/r.bin") == b"01"
    assert front.stat(f"{folder}/r.bin").st_size == 2


def test_renames_of_files_and_folders(front: Front, folder: str, s3: Callable[..., Any]) -> None:
    s3("put", f"{folder}/a.txt", b"A")
    s3("put", f"{folder}/sub/x.txt", b"X")
    s3("put", f"{folder}/sub/deeper/y.txt", b"Y")
    front.rename(f"{folder}/a.txt", f"{folder}/b.txt")
    assert not front.exists(f"{folder}/a.txt")
    with front.open(f"{folder}/b.txt") as f:
        assert f.read() == "A"
    front.rename(f"{folder}/sub", f"{folder}/moved")
    assert front.listdir(f"{folder}/moved") == ["deeper", "x.txt"]
    assert s3("keys", f"{folder}/") == [
        f"{folder}/",
        f"{folder}/b.txt",
        f"{folder}/moved/deeper/y.txt",
        f"{folder}/moved/x.txt",
    ]
    s3("put", f"{folder}/c.txt", b"C")
    front.rename(f"{folder}/b.txt", f"{folder}/c.txt")  # replaces, as rename(2)
    assert s3("get", f"{folder}/c.txt") == b"A"
    expect_errno(errno.ENOENT, lambda: front.rename(f"{folder}/gone", f"{folder}/where"))


def test_listings_mkdir_rmdir_remove(front: Front, folder: str, s3: Callable[..., Any]) -> None:
    for key in ("b.txt", "a.txt", "z/inner.txt"):
        s3("put", f"{folder}/{key}", b"1")
    front.mkdir(f"{folder}/empty")
    with front.open(f"{folder}/local.txt", "w") as f:
        f.write("x")
    assert front.listdir(folder) == ["a.txt", "b.txt", "empty", "local.txt", "z"]
    assert front.isdir(f"{folder}/empty") and front.isdir(f"{folder}/z")
    assert not front.isdir(f"{folder}/a.txt")
    assert f"{folder}/empty/" in s3("keys", f"{folder}/empty")
    front.rmdir(f"{folder}/empty")
    front.remove(f"{folder}/a.txt")
    assert front.listdir(folder) == ["b.txt", "local.txt", "z"]
    assert s3("keys", f"{folder}/") == [f"{folder}/", f"{folder}/b.txt", f"{folder}/local.txt", f"{folder}/z/inner.txt"]


def test_errors_carry_the_same_errnos(front: Front, folder: str, s3: Callable[..., Any]) -> None:
    s3("put", f"{folder}/file.txt", b"f")
    s3("put", f"{folder}/full/x.txt", b"x")
    e = expect_errno(errno.ENOENT, lambda: front.open(f"{folder}/missing.txt"))
    assert isinstance(e, FileNotFoundError)
    expect_errno(errno.ENOENT, lambda: front.stat(f"{folder}/missing.txt"))
    expect_errno(errno.ENOENT, lambda: front.open(f"{folder}/nofolder/new.txt", "w"))
    expect_errno(errno.EISDIR, lambda: front.open(f"{folder}/full", "rb"))
    expect_errno(errno.EISDIR, lambda: front.open(f"{folder}/full", "w"))
    expect_errno(errno.EISDIR, lambda: front.remove(f"{folder}/full"))
    expect_errno(errno.ENOTDIR, lambda: front.stat(f"{folder}/file.txt/x"))
    expect_errno(errno.ENOTDIR, lambda: front.listdir(f"{folder}/file.txt"))
    expect_errno(errno.ENOTDIR, lambda: front.rmdir(f"{folder}/file.txt"))
    expect_errno(errno.ENOTEMPTY, lambda: front.rmdir(f"{folder}/full"))
    expect_errno(errno.EEXIST, lambda: front.mkdir(f"{folder}/full"))
    expect_errno(errno.EEXIST, lambda: front.mkdir(f"{folder}/file.txt"))
    expect_errno(errno.EEXIST, lambda: front.open(f"{folder}/file.txt", "x"))
    expect_errno(errno.ENOTDIR, lambda: front.rename(f"{folder}/full", f"{folder}/file.txt"))
    expect_errno(errno.EISDIR, lambda: front.rename(f"{folder}/file.txt", f"{folder}/full"))
    assert s3("keys", f"{folder}/") == [f"{folder}/", f"{folder}/file.txt", f"{folder}/full/x.txt"]


def test_a_conflicting_sdk_write_keeps_both_versions(front: Front, folder: str, s3: Callable[..., Any]) -> None:
    s3("put", f"{folder}/shared.txt", b"v1")
    f = front.open(f"{folder}/shared.txt", "r+b")
    f.write(b"ours")
    f.flush()
    s3("put", f"{folder}/shared.txt", b"theirs")  # another writer, meanwhile
    expect_errno(errno.EIO, f.close)
    assert s3("get", f"{folder}/shared.txt") == b"theirs"
    beside = [key for key in s3("keys", f"{folder}/shared.txt.s3files-conflict-")]
    assert len(beside) == 1
    assert s3("get", beside[0]) == b"ours"


def test_csv_json_and_zipfile_through_the_front(front: Front, folder: str, s3: Callable[..., Any]) -> None:
    with front.open(f"{folder}/rows.csv", "w", newline="") as f:
        csv.writer(f).writerows([["name", "n"], ["a", "1"], ["b", "2"]])
    with front.open(f"{folder}/rows.csv", newline="") as f:
        assert list(csv.DictReader(f)) == [{"name": "a", "n": "1"}, {"name": "b", "n": "2"}]
    with front.open(f"{folder}/doc.json", "w") as f:
        json.dump({"k": [1, 2]}, f)
    with front.open(f"{folder}/doc.json") as f:
        assert json.load(f) == {"k": [1, 2]}
    with front.open(f"{folder}/pack.zip", "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.txt", "alpha" * 1000)
        z.writestr("b/b.txt", b"beta")
    with zipfile.ZipFile(io.BytesIO(s3("get", f"{folder}/pack.zip"))) as z:  # a valid archive in S3
        assert z.read("a.txt") == b"alpha" * 1000
    with front.open(f"{folder}/pack.zip", "rb") as f, zipfile.ZipFile(f) as z:  # read with seeks
        assert z.namelist() == ["a.txt", "b/b.txt"]
        assert z.read("b/b.txt") == b"beta"


@pytest.fixture
def fresh(moto_server: MotoServer, front_bucket: str, tmp_path: Path) -> Iterator[Callable[[], OpenFS]]:
    """``fresh()``: a new open_fs on the bucket with a cache folder of its own (what S3 holds, as a remount
    sees it), closed after the test."""
    opened: list[OpenFS] = []

    def make() -> OpenFS:
        fs = open_fs(
            f"s3://{front_bucket}/", endpoint_url=moto_server.endpoint_url, cache_dir=tmp_path / f"fresh{len(opened)}"
        )
        opened.append(fs)
        return fs

    yield make
    for fs in opened:
        fs.close()


def test_chmod_chown_utime_and_xattrs_are_stored(
    front: Front, folder: str, s3: Callable[..., Any], fresh: Callable[[], OpenFS], boto3_client: Any, front_bucket: str
) -> None:
    """Mode, owner, times (to the nanosecond) and user.* attributes of a file and a folder: seen at once and
    by a fresh open_fs (stored in S3: x-amz-meta-mode, -uid, -gid, -mtime, -xattr as s3fs-fuse stores them)."""
    path, sub = f"{folder}/m.txt", f"{folder}/d"
    with front.open(path, "w") as f:
        f.write("x")
    front.mkdir(sub)
    s3("put", f"{folder}/old.txt", b"from the SDK")  # an object closed long ago: rewritten in place
    times = (1_600_000_000_123_456_789, 1_500_000_000_987_654_321)
    for name, mode in ((path, 0o640), (sub, 0o710), (f"{folder}/old.txt", 0o604)):
        front.chmod(name, mode)
        front.chown(name, 1234, 4321)  # (the suite runs as root, which may give files away)
        front.utime(name, ns=times)
        front.setxattr(name, "user.color", b"blue\x00\xff")
        front.setxattr(name, "user.gone", b"x")
        front.removexattr(name, "user.gone")
    expect_errno(errno.EEXIST, lambda: front.setxattr(path, "user.color", b"red", os.XATTR_CREATE))
    expect_errno(errno.ENODATA, lambda: front.setxattr(path, "user.none", b"red", os.XATTR_REPLACE))
    expect_errno(errno.ENODATA, lambda: front.getxattr(path, "user.gone"))
    expect_errno(errno.ENODATA, lambda: front.removexattr(path, "user.gone"))
    expect_errno(errno.ENOENT, lambda: front.chmod(f"{folder}/missing", 0o600))
    expect_errno(errno.ENOENT, lambda: front.utime(f"{folder}/missing"))
    other = fresh()
    for name, mode in ((path, 0o640), (sub, 0o710), (f"{folder}/old.txt", 0o604)):
        for st in (front.stat(name), other.stat(name)):
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, 1234, 4321), name
            assert (st.st_atime_ns, st.st_mtime_ns) == times, name
        assert front.getxattr(name, "user.color") == other.getxattr(name, "user.color") == b"blue\x00\xff"
        assert front.listxattr(name) == sorted(other.listxattr(name)) == ["user.color"]
    head = boto3_client.head_object(Bucket=front_bucket, Key=f"{folder}/old.txt")["Metadata"]
    assert (head["mode"], head["uid"], head["gid"]) == (str(stat.S_IFREG | 0o604), "1234", "4321")
    assert s3("get", f"{folder}/old.txt") == b"from the SDK"
    before = front.stat(path).st_mtime_ns
    front.utime(path)  # now
    assert front.stat(path).st_mtime_ns > before and fresh().stat(path).st_mtime_ns == front.stat(path).st_mtime_ns
