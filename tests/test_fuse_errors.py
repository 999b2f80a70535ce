"""Limits and errors through a real mount: EFBIG past the largest size, ENAMETOOLONG for every name over
255 bytes, SUID/SGID cleared by another user's write (also with --direct-io), and link counts (an open file
that lost its name has none; a folder has 2 + its subfolders).

One mount (moto, --allow-other --direct-io) serves the whole module, so each test works in a folder of its
own; the default mount (the kernel's page cache) is mounted once more only to check it clears SUID too. With
S3FILES_FULL_COUNTS=1 the module runs on Ceph RGW as well. The second user is uid/gid 65534 (``setpriv``,
as in test_permissions), which needs --allow-other and a mount point in a 0755 folder.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import S3Server
from daemons import Daemons
from test_fuse import mount
from test_permissions import as_other

pytestmark = pytest.mark.fuse

OTHER = 65534
TIB = 1024**4
TOO_LARGE = 999_999_999_999_999  # the size, ~909 TB
TTL = 1.1  # the default --metadata-ttl (the kernel's attribute timeout), and a little more
SERVERS = ["moto", "rgw"] if os.environ.get("S3FILES_FULL_COUNTS") == "1" else ["moto"]


@dataclass
class Mounted:
    root: Path
    bucket: str
    client: Any
    server: S3Server

    def head_mode(self, key: str) -> int:
        return int(self.client.head_object(Bucket=self.bucket, Key=key)["Metadata"]["mode"])


def _bucket_on(kind: str, request: pytest.FixtureRequest) -> tuple[S3Server, str, Any]:
    import uuid

    import boto3

    raw = request.getfixturevalue("moto_server" if kind == "moto" else "rgw_server")
    server = S3Server(kind, raw.endpoint_url)
    name = f"errors-{uuid.uuid4().hex[:12]}"
    server.create_bucket(name)
    client = boto3.session.Session().client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1")
    return server, name, client


@pytest.fixture(scope="module")
def shared_dir() -> Iterator[Path]:
    """A 0755 folder under /tmp for the mount points (pytest's tmp folders are 0700: uid 65534 could not
    reach a mount inside)."""
    base = Path(tempfile.mkdtemp(prefix="s3files-errors-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    mounted = [child for child in base.rglob("*") if child.is_dir() and os.path.ismount(child)]
    assert not mounted, f"{mounted} still mounted"
    shutil.rmtree(base)


@pytest.fixture(scope="module", params=SERVERS)
def mnt(request: pytest.FixtureRequest, shared_dir: Path) -> Iterator[Mounted]:
    server, bucket, client = _bucket_on(str(request.param), request)
    root = shared_dir / f"direct-{request.param}"
    with mount(server, bucket, root, allow_other=True, direct_io=True):
        yield Mounted(root, bucket, client, server)


def errno_of(call: Any, *args: Any) -> int:
    """The errno ``call(*args)`` fails with (0: it did not fail)."""
    try:
        call(*args)
    except OSError as exc:
        return exc.errno or -1
    return 0


# -- EFBIG ---------------------------------------------------------------------------------------------


def test_truncate_past_the_largest_size_is_efbig_and_the_file_stays(
    mnt: Mounted, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    d = mnt.root / "efbig"
    d.mkdir()
    old = d / "old"
    old.write_bytes(b"hello")
    for size in (TOO_LARGE, 5 * TIB + 1):
        assert errno_of(os.truncate, old, size) == errno.EFBIG
    assert old.read_bytes() == b"hello" and old.stat().st_size == 5
    # A new file, through its descriptor: the truncate is refused, writes and the close work.
    new = d / "new"
    fd = os.open(new, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        assert errno_of(os.ftruncate, fd, TOO_LARGE) == errno.EFBIG
        assert os.fstat(fd).st_size == 0
        assert errno_of(os.pwrite, fd, b"x", 5 * TIB) == errno.EFBIG  # a write starting past 5 TiB
        assert errno_of(os.pwrite, fd, b"x", TOO_LARGE) == errno.EFBIG
        assert os.write(fd, b"new data") == 8
        os.ftruncate(fd, 3)  # a size within the limit still works
    finally:
        os.close(fd)  # raises if the close failed (it was ENOSPC)
    assert new.read_bytes() == b"new"
    assert mnt.client.get_object(Bucket=mnt.bucket, Key="efbig/new")["Body"].read() == b"new"
    assert mnt.client.get_object(Bucket=mnt.bucket, Key="efbig/old")["Body"].read() == b"hello"
    # A new file truncated by path before its first close (open for writing elsewhere).
    fd = os.open(d / "third", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        assert errno_of(os.truncate, d / "third", TOO_LARGE) == errno.EFBIG
        os.write(fd, b"3")
    finally:
        os.close(fd)
    assert (d / "third").read_bytes() == b"3"
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert not tracebacks, tracebacks[0].getMessage()


# -- ENAMETOOLONG --------------------------------------------------------------------------------------


def test_every_operation_on_a_name_over_255_bytes_is_enametoolong(mnt: Mounted) -> None:
    d = mnt.root / "names"
    d.mkdir()
    (d / "here").write_bytes(b"x")
    long, fits = d / ("n" * 256), d / ("n" * 255)
    long_utf8 = d / ("é" * 128)  # 256 bytes in 128 characters
    calls = {
        "stat": (os.stat, long),
        "lstat": (os.lstat, long),
        "open": (os.open, long, os.O_RDONLY),
        "chmod": (os.chmod, long, 0o600),
        "truncate": (os.truncate, long, 0),
        "unlink": (os.unlink, long),
        "rmdir": (os.rmdir, long),
        "rename from": (os.rename, long, d / "other"),
        "rename to": (os.rename, d / "here", long),
        "utf-8 stat": (os.stat, long_utf8),
        "utf-8 unlink": (os.unlink, long_utf8),
        "non-utf-8 stat": (os.stat, os.fsencode(d) + b"/" + b"\xff" * 256),
        "create": (os.open, long, os.O_CREAT | os.O_WRONLY, 0o644),
        "mkdir": (os.mkdir, long),
        "symlink": (os.symlink, "here", long),
    }
    found = {what: errno_of(*call) for what, call in calls.items()}
    assert found == {what: errno.ENAMETOOLONG for what in calls}
    # 255 bytes is a name like any other
    assert (errno_of(os.stat, fits), errno_of(os.unlink, fits)) == (errno.ENOENT, errno.ENOENT)
    fits.write_bytes(b"ok")
    assert fits.read_bytes() == b"ok" and (d / "here").read_bytes() == b"x"


# -- SUID/SGID -----------------------------------------------------------------------------------------


def _suid_cases(folder: Path) -> dict[str, int]:
    """Files with set-id bits, each written once by uid 65534 and once by root: name -> mode after."""
    found = {}
    for name, mode in (("suid", 0o4777), ("sgid", 0o2777), ("sgid-no-x", 0o2767), ("both", 0o6777)):
        path = folder / name
        path.write_bytes(b"data\n")
        path.chmod(mode)
        out = as_other("sh", "-c", f"echo other >> '{path}'")
        assert out.returncode == 0, out.stderr
        found[name] = stat.S_IMODE(path.stat().st_mode)
    root_file = folder / "by-root"
    root_file.write_bytes(b"data\n")
    root_file.chmod(0o4777)
    with open(root_file, "a") as f:  # root has CAP_FSETID: the bit stays, as on a local file system
        f.write("root\n")
    found["by-root"] = stat.S_IMODE(root_file.stat().st_mode)
    assert (folder / "suid").read_bytes() == b"data\nother\n"
    return found


# What Linux does on a local file system: SUID goes, SGID goes only with group execute, root keeps both.
CLEARED = {"suid": 0o777, "sgid": 0o777, "sgid-no-x": 0o2767, "both": 0o777, "by-root": 0o4777}


def test_a_write_by_another_user_clears_suid_and_sgid_with_direct_io(mnt: Mounted) -> None:
    d = mnt.root / "setid"
    d.mkdir()
    assert _suid_cases(d) == CLEARED
    assert stat.S_IMODE(mnt.head_mode("setid/suid")) == 0o777  # published with the data
    assert stat.S_IMODE(mnt.head_mode("setid/by-root")) == 0o4777


def test_a_write_by_another_user_clears_suid_and_sgid_without_direct_io(
    mnt: Mounted, shared_dir: Path
) -> None:
    """The default mount (the kernel clears the bits itself), as a daemon: one mount per process."""
    home = shared_dir / f"daemon-{mnt.server.kind}"
    home.mkdir(mode=0o755)
    started = Daemons(home)
    try:
        daemon = started.mount(mnt.server.endpoint_url, mnt.bucket, extra=("--allow-other",))
        folder = daemon.mountpoint / "cached"
        folder.mkdir()
        assert _suid_cases(folder) == CLEARED
    finally:
        started.close()
    assert stat.S_IMODE(mnt.head_mode("cached/suid")) == 0o777


# -- link counts ---------------------------------------------------------------------------------------


def test_an_open_file_that_lost_its_name_has_no_links(mnt: Mounted) -> None:
    d = mnt.root / "nlink"
    d.mkdir()
    for name in ("closed", "victim", "winner"):
        (d / name).write_bytes(name.encode())
    written = os.open(d / "new", os.O_CREAT | os.O_WRONLY, 0o644)  # never closed before its unlink
    reader = os.open(d / "closed", os.O_RDONLY)
    victim = os.open(d / "victim", os.O_RDWR)
    try:
        os.write(written, b"never published")
        assert [os.fstat(fd).st_nlink for fd in (written, reader, victim)] == [1, 1, 1]
        os.unlink(d / "new")
        os.unlink(d / "closed")
        os.rename(d / "winner", d / "victim")  # renamed over while open
        assert [os.fstat(fd).st_nlink for fd in (written, reader, victim)] == [0, 0, 0]
        assert os.pread(victim, 100, 0) == b"victim"  # (a read-only handle has no copy: SEMANTICS, Writes)
        assert (d / "victim").stat().st_nlink == 1 and (d / "victim").read_bytes() == b"winner"
    finally:
        for fd in (written, reader, victim):
            os.close(fd)
    assert sorted(os.listdir(d)) == ["victim"]


def test_entries_made_in_a_set_group_id_folder_take_its_group_and_folders_the_bit(mnt: Mounted) -> None:
    """As on a local file system: a file, a FIFO, a symlink and a folder made in a set-group-ID folder
    belong to the folder's group, the folder is set-group-ID too; elsewhere the creator's group."""
    shared = mnt.root / "shared"
    shared.mkdir()
    os.chown(shared, 0, 4321)
    os.chmod(shared, 0o2775)
    (shared / "file").write_bytes(b"x")
    os.mkfifo(shared / "fifo", 0o640)
    os.symlink("file", shared / "link")
    (shared / "sub").mkdir(mode=0o755)
    (mnt.root / "plain").mkdir()
    found = {name: os.lstat(shared / name) for name in ("file", "fifo", "link", "sub")}
    assert {name: st_.st_gid for name, st_ in found.items()} == dict.fromkeys(found, 4321)
    assert stat.S_IMODE(found["sub"].st_mode) == 0o2755
    assert not found["file"].st_mode & stat.S_ISGID
    assert (mnt.root / "plain").stat().st_gid == os.getgid()
    assert not (mnt.root / "plain").stat().st_mode & stat.S_ISGID
    (shared / "sub" / "deeper").mkdir()  # inherited again, one level down
    assert (shared / "sub" / "deeper").stat().st_gid == 4321


def test_a_folder_links_its_subfolders(mnt: Mounted) -> None:
    d = mnt.root / "tree"
    d.mkdir()
    assert d.stat().st_nlink == 2
    for name in ("a", "b", "c"):
        (d / name).mkdir()
    (d / "file").write_bytes(b"a file is no link")
    assert d.stat().st_nlink == 5
    (d / "c").rmdir()
    assert d.stat().st_nlink == 4
    os.rename(d / "b", mnt.root / "tree-b")  # out of the folder
    assert d.stat().st_nlink == 3
    os.rename(mnt.root / "tree-b", d / "a" / "b")  # into a subfolder
    assert (d.stat().st_nlink, (d / "a").stat().st_nlink) == (3, 3)
    (d / "x").mkdir()
    assert d.stat().st_nlink == 4
    os.rename(d / "x", d / "a" / "b")  # over an empty folder: d loses one, a keeps its count
    assert (d.stat().st_nlink, (d / "a").stat().st_nlink) == (3, 3)
    # Folders made by another tool are counted once the folder is listed.
    for key in ("outside/p/1", "outside/q/r/2", "outside/s/", "outside/f"):
        mnt.client.put_object(Bucket=mnt.bucket, Key=key, Body=b"")
    outside = mnt.root / "outside"
    assert sorted(os.listdir(outside)) == ["f", "p", "q", "s"]
    time.sleep(TTL)  # the kernel keeps what the lookup before the listing said (2) for --metadata-ttl
    assert outside.stat().st_nlink == 5
    found = subprocess.run(["find", str(outside), "-type", "d"], capture_output=True, text=True, timeout=60)
    assert sorted(Path(p).relative_to(outside).as_posix() for p in found.stdout.split()) == [
        ".",
        "p",
        "q",
        "q/r",
        "s",
    ]
