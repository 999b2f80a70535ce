"""The library API through a real mount daemon against moto's server."""

from __future__ import annotations

import ctypes
import mmap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import s3files
from s3files.localserver import MotoServer
from s3files.mountinfo import mount_entry

pytestmark = pytest.mark.fuse


def test_library_mount_reads_writes_and_unmounts(
    moto_server: MotoServer, boto3_client: Any, bucket: str, tmp_path: Path
) -> None:
    boto3_client.put_object(Bucket=bucket, Key="in/data.csv", Body=b"a,b\n1,2\n")
    with s3files.mount(f"s3://{bucket}/in", tmp_path / "m", endpoint_url=moto_server.endpoint_url) as root:
        assert (root / "data.csv").read_text() == "a,b\n1,2\n"
        (root / "out.csv").write_text("done\n")
        assert mount_entry(root) is not None
    assert mount_entry(tmp_path / "m") is None
    assert boto3_client.get_object(Bucket=bucket, Key="in/out.csv")["Body"].read() == b"done\n"


def test_library_mount_error_is_one_line(moto_server: MotoServer, tmp_path: Path) -> None:
    endpoint = moto_server.endpoint_url
    with pytest.raises(s3files.MountError) as failed, s3files.mount("s3://missing-bucket-x", tmp_path / "m", endpoint_url=endpoint):
        pass
    assert "missing-bucket-x" in str(failed.value) and "\n" not in str(failed.value)


def _mapped_shared(path: Path) -> tuple[bool, bytes]:
    """Map ``path`` shared and read-only: whether its first page was in the page cache before the map
    touched it (mincore), and its first 3 bytes."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    with open(path, "rb") as f:
        address = libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            resident = ctypes.create_string_buffer(1)
            assert libc.mincore(address, mmap.PAGESIZE, resident) == 0
            return bool(resident.raw[0] & 1), ctypes.string_at(address, 3)
        finally:
            libc.munmap(address, mmap.PAGESIZE)


def test_library_mount_with_direct_io_reaches_the_daemon_flag(
    moto_server: MotoServer, boto3_client: Any, bucket: str, tmp_path: Path
) -> None:
    """``direct_io=True`` becomes ``--direct-io`` and the daemon opens files with FUSE direct I/O: a
    file just read left nothing in the page cache (the default keeps it), and a shared mmap works as in
    the default (fuse/dirops.py asks the kernel to allow it; it was refused with ENODEV before)."""
    boto3_client.put_object(Bucket=bucket, Key="data.bin", Body=b"x" * 10_000)
    for direct_io in (True, False):
        with s3files.mount(f"s3://{bucket}", tmp_path / "m", endpoint_url=moto_server.endpoint_url, direct_io=direct_io) as root:
            assert (root / "data.bin").read_bytes() == b"x" * 10_000
            assert _mapped_shared(root / "data.bin") == (not direct_io, b"xxx")


def test_library_sync_uploads_what_the_write_back_holds(
    moto_server: MotoServer, boto3_client: Any, bucket: str, tmp_path: Path
) -> None:
    """Eventual mode: a closed file is not in S3 until ``s3files.sync`` (or the delay); sync returns {}
    once it is; a mount point that is not a mount is a MountError."""
    cache = tmp_path / "cache"
    with s3files.mount(
        f"s3://{bucket}", tmp_path / "m", endpoint_url=moto_server.endpoint_url, consistency="eventual",
        writeback_delay=600, cache_dir=cache,
    ) as root:  # fmt: skip
        (root / "later.txt").write_text("closed\n")
        assert "Contents" not in boto3_client.list_objects_v2(Bucket=bucket)
        assert s3files.sync(root, cache_dir=cache) == {}
        assert boto3_client.get_object(Bucket=bucket, Key="later.txt")["Body"].read() == b"closed\n"
    with pytest.raises(s3files.MountError) as refused:
        s3files.sync(tmp_path, cache_dir=cache)
    assert "not an s3files mount point" in str(refused.value)


def _status_when(root: s3files.MountedFolder, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """``root.status()`` once ``done`` says so (the daemon writes its status about once a second)."""
    deadline = time.monotonic() + 10
    while True:
        status = root.status()
        if done(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def test_mounted_folder_status_and_sync(
    moto_server: MotoServer, boto3_client: Any, bucket: str, tmp_path: Path
) -> None:
    """The folder ``mount`` yields answers ``status()`` (``s3files status --json``'s data: what waits for
    the write-back) and ``sync(path)`` (uploads what is at or below ``path``, or everything)."""
    cache = tmp_path / "cache"
    with s3files.mount(
        f"s3://{bucket}", tmp_path / "m", endpoint_url=moto_server.endpoint_url, consistency="eventual",
        writeback_delay=600, cache_dir=cache,
    ) as m:  # fmt: skip
        (m / "a.txt").write_text("A")
        (m / "b.txt").write_text("B")
        waiting = _status_when(m, lambda s: len(s["files"]) == 2)
        assert waiting["running"] and waiting["mountpoint"] == str(tmp_path / "m")
        assert sorted((f["path"], f["bytes"], f["acknowledged"]) for f in waiting["files"]) == [
            ("a.txt", 1, True),
            ("b.txt", 1, True),
        ]
        assert m.sync("a.txt") == {}
        keys = [o["Key"] for o in boto3_client.list_objects_v2(Bucket=bucket)["Contents"]]
        assert keys == ["a.txt"]
        assert m.sync() == {}
        assert boto3_client.get_object(Bucket=bucket, Key="b.txt")["Body"].read() == b"B"
        assert _status_when(m, lambda s: not s["files"])["files"] == []
    with pytest.raises(s3files.MountError):
        m.status()
