"""Special files and extended attributes through a real FUSE mount (moto; the first two tests on RGW too),
checked in the bucket with boto3 (s3fs-fuse's encoding) and again through a new mount.

Special files (FIFOs, devices, UNIX sockets) are empty objects whose ``x-amz-meta-mode`` carries the type
bits and ``x-amz-meta-rdev`` a device's number; their I/O is the kernel's. Extended attributes in the
``user.`` namespace live in ``x-amz-meta-xattr`` as s3fs-fuse writes it: the URL-encoded JSON object
``{"name":"<base64 of the value>",...}``.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import logging
import os
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
from conftest import S3Server
from test_fuse import mount, put

pytestmark = pytest.mark.fuse

DEVICE = os.makedev(4, 1)  # /dev/tty1: a character device
BLOCK = os.makedev(259, 70000 % 1048576)  # a large minor: the number is kept whole, not only 16 bits


def types_in_ls(folder: Path) -> dict[str, str]:
    """name -> the type letter ``ls -l`` shows (p FIFO, c/b device, s socket, - file, d folder)."""
    out = subprocess.run(["ls", "-l", str(folder)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1]: line[0] for line in out.splitlines()[1:]}


def test_special_files_are_created_stated_renamed_chmodded_and_listed_after_a_remount(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    m = tmp_path / "m"
    with mount(s3_server, s3_bucket, m):
        os.mkdir(m / "d")
        os.mkfifo(m / "d/fifo", 0o640)
        os.mknod(m / "d/chr", stat.S_IFCHR | 0o600, DEVICE)
        os.mknod(m / "d/blk", stat.S_IFBLK | 0o640, BLOCK)
        os.mknod(m / "d/reg", stat.S_IFREG | 0o604)  # mknod of a regular file: an empty file
        os.mknod(m / "d/gone", stat.S_IFIFO | 0o600)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(m / "d/sock"))
        st = os.stat(m / "d/chr")
        assert (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_rdev) == (stat.S_IFCHR, 0o600, DEVICE)
        assert stat.S_ISBLK(os.stat(m / "d/blk").st_mode) and os.stat(m / "d/blk").st_rdev == BLOCK
        st = os.stat(m / "d/reg")
        assert (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size) == (stat.S_IFREG, 0o604, 0)
        assert (m / "d/reg").read_bytes() == b""
        with pytest.raises(FileExistsError):
            os.mkfifo(m / "d/fifo")
        os.chmod(m / "d/fifo", 0o604)
        os.rename(m / "d/chr", m / "d/tty")
        os.unlink(m / "d/gone")
        assert stat.S_IMODE(os.stat(m / "d/fifo").st_mode) == 0o604
        assert os.stat(m / "d/tty").st_rdev == DEVICE and not (m / "d/chr").exists()
        assert stat.S_ISSOCK(os.stat(m / "d/sock").st_mode)
    # in the bucket as s3fs-fuse writes them: empty objects, type bits in the decimal mode
    expected = {
        "d/fifo": (stat.S_IFIFO | 0o604, None),
        "d/tty": (stat.S_IFCHR | 0o600, DEVICE),
        "d/blk": (stat.S_IFBLK | 0o640, BLOCK),
        "d/reg": (stat.S_IFREG | 0o604, None),
    }
    for key, (mode, rdev) in expected.items():
        head = s3_client.head_object(Bucket=s3_bucket, Key=key)
        assert head["ContentLength"] == 0
        assert int(head["Metadata"]["mode"]) == mode, key
        assert head["Metadata"].get("rdev") == (None if rdev is None else str(rdev)), key
    assert stat.S_ISSOCK(int(s3_client.head_object(Bucket=s3_bucket, Key="d/sock")["Metadata"]["mode"]))
    for key in ("d/chr", "d/gone"):
        assert "Contents" not in s3_client.list_objects_v2(Bucket=s3_bucket, Prefix=key)
    with mount(s3_server, s3_bucket, m):
        # the listing shows each type (ls -l answers from readdirplus, no lookup first)
        assert types_in_ls(m / "d") == {"blk": "b", "fifo": "p", "reg": "-", "sock": "s", "tty": "c"}
        assert os.stat(m / "d/tty").st_rdev == DEVICE and os.stat(m / "d/blk").st_rdev == BLOCK
        assert stat.S_IMODE(os.stat(m / "d/fifo").st_mode) == 0o604


def test_a_file_renamed_over_a_fifo_in_the_same_second_stays_itself(
    bucket: str, moto_server: S3Server, tmp_path: Path
) -> None:
    """pjdfstest rename/09 and rename/10: a file renamed over a FIFO made in the same second (both
    empty: one ETag, one LastModified second) is listed, looked up and stat'ed as itself (its inode
    number, kind and owner), not as the FIFO it replaced, also once every cache's TTL has run out."""
    m = tmp_path / "m"
    with mount(moto_server, bucket, m):
        os.mkdir(m / "d")
        for round_ in range(2):  # the second round renames over a name that had this file before
            (m / "d/a").write_bytes(b"")
            os.chown(m / "d/a", 7, 7)
            ino = os.lstat(m / "d/a").st_ino
            time.sleep(1.05 - time.time() % 1)  # the FIFO, the chown and the rename: within one second
            os.mkfifo(m / "d/b")
            os.chown(m / "d/b", 5, 5)
            os.rename(m / "d/a", m / "d/b")
            time.sleep(1.5)  # the kernel's entry and attribute timeouts and the listing's TTL run out
            assert types_in_ls(m / "d") == {"b": "-"}, round_
            st = os.lstat(m / "d/b")
            assert (st.st_ino, stat.S_IFMT(st.st_mode), st.st_uid) == (ino, stat.S_IFREG, 7), round_
            os.unlink(m / "d/b")


def test_fifo_and_socket_on_the_mount_carry_data(bucket: str, moto_server: S3Server, tmp_path: Path) -> None:
    """The kernel does the I/O of a FIFO and a socket whose names live on the mount (here one with
    --no-xattrs, whose extended attributes are ENOTSUP)."""
    m = tmp_path / "m"
    with mount(moto_server, bucket, m, xattrs=False):
        (m / "f").write_bytes(b"")
        for call in (lambda: os.setxattr(m / "f", "user.a", b"1"), lambda: os.getxattr(m / "f", "user.a")):
            with pytest.raises(OSError) as off:
                call()
            assert off.value.errno == errno.ENOTSUP
        os.mkfifo(m / "fifo")
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append((m / "fifo").read_bytes()))
        reader.start()
        with open(m / "fifo", "wb") as writer:  # blocks until the reader opened it
            writer.write(b"through the pipe\n" * 1000)
        reader.join(timeout=10)
        assert got == [b"through the pipe\n" * 1000]
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(m / "sock"))
            server.listen(1)
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(m / "sock"))
                peer, _ = server.accept()
                with peer:
                    client.sendall(b"hello")
                    assert peer.recv(5) == b"hello"


XATTR_CREATE, XATTR_REPLACE = os.XATTR_CREATE, os.XATTR_REPLACE


def raw_xattr(call: str, path: Path, name: bytes | None, size: int) -> tuple[int, int]:
    """libc getxattr/listxattr with a buffer of ``size`` bytes (os.getxattr retries ERANGE itself):
    (return value, errno)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(max(size, 1))
    args = (os.fsencode(path), name) if name is not None else (os.fsencode(path),)
    rc = getattr(libc, call)(*args, buffer if size else None, ctypes.c_size_t(size))
    return rc, ctypes.get_errno() if rc < 0 else 0


def test_xattrs_set_get_list_remove_survive_a_remount_and_follow_cp_a(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    m = tmp_path / "m"
    with mount(s3_server, s3_bucket, m):
        f, d = m / "f", m / "d"
        f.write_bytes(b"data")
        os.mkdir(d)
        os.setxattr(f, "user.color", b"blue")
        os.setxattr(f, "user.bin", bytes(range(256)))
        os.setxattr(f, "user.empty", b"")
        os.setxattr(d, "user.dir", b"folder")
        before = os.stat(f).st_ctime_ns
        os.setxattr(f, "user.ctime", b"moves")
        assert os.stat(f).st_ctime_ns > before
        os.removexattr(f, "user.ctime")
        assert os.getxattr(f, "user.color") == b"blue" and os.getxattr(f, "user.bin") == bytes(range(256))
        assert sorted(os.listxattr(f)) == ["user.bin", "user.color", "user.empty"]
        # a size query (size 0) answers the size; a buffer too small is ERANGE (getxattr and listxattr)
        assert raw_xattr("getxattr", f, b"user.bin", 0) == (256, 0)
        assert raw_xattr("getxattr", f, b"user.bin", 255) == (-1, errno.ERANGE)
        assert raw_xattr("listxattr", f, None, 0) == (len(b"user.bin\0user.color\0user.empty\0"), 0)
        assert raw_xattr("listxattr", f, None, 5) == (-1, errno.ERANGE)
        assert os.listxattr(d) == ["user.dir"]
        # flags: XATTR_CREATE on an existing name, XATTR_REPLACE on a missing one
        with pytest.raises(FileExistsError):
            os.setxattr(f, "user.color", b"red", XATTR_CREATE)
        with pytest.raises(OSError) as missing:
            os.setxattr(f, "user.nope", b"x", XATTR_REPLACE)
        assert missing.value.errno == errno.ENODATA
        os.setxattr(f, "user.color", b"green", XATTR_REPLACE)
        os.removexattr(f, "user.empty")
        with pytest.raises(OSError) as gone:
            os.removexattr(f, "user.empty")
        assert gone.value.errno == errno.ENODATA
        # other namespaces: absent to read, not storable
        for name in ("security.selinux", "system.posix_acl_access", "trusted.x"):
            with pytest.raises(OSError) as absent:
                os.getxattr(f, name)
            assert absent.value.errno == errno.ENODATA, name
        with pytest.raises(OSError) as refused:
            os.setxattr(f, "trusted.x", b"1")
        assert refused.value.errno == errno.ENOTSUP
        # S3 keeps 2 KB of user metadata
        with pytest.raises(OSError) as big:
            os.setxattr(f, "user.big", b"x" * 1600)
        assert big.value.errno == errno.ENOSPC and "user.big" not in os.listxattr(f)
        # a file being written carries them in its publish; chmod keeps them
        with open(m / "w", "wb") as w:
            w.write(b"x")
            os.setxattr(m / "w", "user.during", b"write")
            w.write(b"y")
        os.chmod(f, 0o600)
        # cp -a on the mount copies them (and prints nothing about other namespaces)
        os.mkdir(m / "copies")
        caplog.clear()
        cp = subprocess.run(["cp", "-a", str(f), str(d), str(m / "copies")], capture_output=True, text=True)
        assert (cp.returncode, cp.stderr) == (0, "")
        # nor in the log (cp -a tries system.posix_acl_access on each: ENOTSUP is normal work there)
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    head = s3_client.head_object(Bucket=s3_bucket, Key="f")["Metadata"]
    assert int(head["mode"]) == stat.S_IFREG | 0o600
    expected = '{"user.bin":"' + base64.b64encode(bytes(range(256))).decode() + '","user.color":"Z3JlZW4="}'
    assert head["xattr"] == quote(expected, safe="/")  # s3fs-fuse's encoding, byte for byte
    with mount(s3_server, s3_bucket, m):
        assert types_in_ls(m)["f"] == "-" and types_in_ls(m / "copies")["d"] == "d"  # listed first
        assert os.getxattr(m / "f", "user.color") == b"green"
        assert sorted(os.listxattr(m / "f")) == ["user.bin", "user.color"]
        assert os.getxattr(m / "d", "user.dir") == b"folder"
        assert os.getxattr(m / "w", "user.during") == b"write" and (m / "w").read_bytes() == b"xy"
        assert os.getxattr(m / "copies/f", "user.bin") == bytes(range(256))
        assert os.getxattr(m / "copies/d", "user.dir") == b"folder"
        assert stat.S_IMODE(os.stat(m / "copies/f").st_mode) == 0o600


def test_objects_written_by_s3fs_are_read_back(
    bucket: str, moto_server: S3Server, boto3_client: Any, tmp_path: Path
) -> None:
    """Objects as s3fs-fuse writes them: special files (a plain PUT, mode with type bits, no rdev) keep their
    type; its x-amz-meta-xattr is read, and an ACL of another namespace in it is kept, not shown."""
    put(boto3_client, bucket, "p", b"", mode=str(stat.S_IFIFO | 0o644), uid="0", gid="0", mtime="1700000000")
    put(boto3_client, bucket, "c", b"", mode=str(stat.S_IFCHR | 0o600))
    put(boto3_client, bucket, "odd", b"x", mode=str(stat.S_IFDIR | 0o700))  # a folder's bits on a file object
    raw = '{"system.posix_acl_access":"AgAAAAEABgD/////","user.a":"YmFy","user.k:v":"YmF6"}'
    put(boto3_client, bucket, "s", b"s3fs", mode=str(stat.S_IFREG | 0o644), xattr=quote(raw, safe="/"))
    m = tmp_path / "m"
    with mount(moto_server, bucket, m):
        assert os.stat(m / "odd").st_mode == stat.S_IFREG | 0o700
        st = os.stat(m / "p")
        assert (st.st_mode, st.st_mtime, st.st_size) == (stat.S_IFIFO | 0o644, 1700000000, 0)
        assert os.stat(m / "c").st_mode == stat.S_IFCHR | 0o600 and os.stat(m / "c").st_rdev == 0
        assert sorted(os.listxattr(m / "s")) == ["user.a", "user.k:v"]
        assert os.getxattr(m / "s", "user.a") == b"bar" and os.getxattr(m / "s", "user.k:v") == b"baz"
        os.removexattr(m / "s", "user.a")
    kept = unquote(boto3_client.head_object(Bucket=bucket, Key="s")["Metadata"]["xattr"])
    assert kept == '{"system.posix_acl_access":"AgAAAAEABgD/////","user.k:v":"YmF6"}'
