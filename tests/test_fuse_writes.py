"""The write path through a real FUSE mount, on moto and on Ceph RadosGW: every change is checked on S3
with boto3 after close, and again through a fresh mount (what another machine, or tomorrow, sees)."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from conftest import S3Server
from test_fuse import mount, put

from s3files.options import MIB

pytestmark = pytest.mark.fuse


def body(client: Any, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def keys(client: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_edits_are_on_s3_after_close_and_after_remount(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    rng = random.Random(7)
    base = rng.randbytes(24 * MIB)
    put(s3_client, s3_bucket, "big.bin", base)
    put(s3_client, s3_bucket, "log.txt", b"line 1\n")
    put(s3_client, s3_bucket, "shrink.bin", base[: 12 * MIB])
    put(s3_client, s3_bucket, "grow.txt", b"abc")
    expected = bytearray(base)
    edits = [(rng.randrange(24 * MIB - 5000), rng.randbytes(rng.randrange(1, 5000))) for _ in range(5)]
    names = {"new file.txt": b"spaces", "naïve-日本.txt": "ünïcödé".encode()}
    root = tmp_path / "m"
    with mount(s3_server, s3_bucket, root) as fs:
        for name, data in names.items():
            (root / name).write_bytes(data)
        with open(root / "log.txt", "ab") as f:
            f.write(b"line 2\n")
        with open(root / "big.bin", "r+b") as f:
            for off, data in edits:
                f.seek(off)
                f.write(data)
                expected[off : off + len(data)] = data
        os.truncate(root / "shrink.bin", 5 * MIB + 3)
        os.truncate(root / "grow.txt", 10)
        os.mkdir(root / "empty")
        os.mkdir(root / "full")
        (root / "full/inner").write_bytes(b"x")
        with pytest.raises(OSError) as not_empty:
            os.rmdir(root / "full")
        assert not_empty.value.errno == errno.ENOTEMPTY
        os.mkdir(root / "gone")
        os.rmdir(root / "gone")
        (root / "doomed").write_bytes(b"bye")
        os.unlink(root / "doomed")
        (root / "perm.txt").write_bytes(b"p")
        os.chmod(root / "perm.txt", 0o600)
        os.utime(root / "perm.txt", (1_500_000_000, 1_500_000_000.25))
        (root / "target.txt").write_bytes(b"old target")
        (root / "source.txt").write_bytes(b"new content")
        os.rename(root / "source.txt", root / "target.txt")  # over an existing file: replaces it
        assert fs.statistics()["local_copies"] == 0

    want = {
        "big.bin": bytes(expected),
        "log.txt": b"line 1\nline 2\n",
        "shrink.bin": base[: 5 * MIB + 3],
        "grow.txt": b"abc" + bytes(7),
        "full/inner": b"x",
        "perm.txt": b"p",
        "target.txt": b"new content",
        **names,
    }
    assert keys(s3_client, s3_bucket) == sorted([*want, "empty/", "full/"])
    for key, data in want.items():
        assert hashlib.sha256(body(s3_client, s3_bucket, key)).digest() == hashlib.sha256(data).digest(), key
    meta = s3_client.head_object(Bucket=s3_bucket, Key="perm.txt")["Metadata"]
    assert int(meta["mode"]) == stat.S_IFREG | 0o600 and float(meta["mtime"]) == 1_500_000_000.25

    with mount(s3_server, s3_bucket, root):  # a fresh mount sees the same
        for key, data in want.items():
            assert (root / key).read_bytes() == data, key
        assert sorted(os.listdir(root / "empty")) == []
        st = os.stat(root / "perm.txt")
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_mtime_ns == 1_500_000_000_250_000_000


def test_160_mib_copy_is_a_multipart_upload(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    src = tmp_path / "local.bin"
    src.write_bytes(random.Random(8).randbytes(160 * MIB))
    root = tmp_path / "m"
    with mount(s3_server, s3_bucket, root) as fs:
        fs.store.requests.reset()
        shutil.copyfile(src, root / "copy.bin")
        counts = fs.store.requests.snapshot()
    assert counts.get("put", 0) == 0 and counts["upload_part"] == 20 and counts["complete_multipart"] == 1
    # + one copy onto itself: the upload began before the last write, whose mtime the object carries
    # (docs/SEMANTICS.md, Writes); its ETag is then the copy's (moto: a plain MD5, RGW: still "-20")
    assert counts["copy"] == 1
    digest = hashlib.sha256(src.read_bytes()).digest()
    assert hashlib.sha256(body(s3_client, s3_bucket, "copy.bin")).digest() == digest
    with mount(s3_server, s3_bucket, root):
        assert hashlib.sha256((root / "copy.bin").read_bytes()).digest() == digest


def test_fsync_makes_data_visible_on_s3_while_still_open(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    root = tmp_path / "m"
    with mount(s3_server, s3_bucket, root):
        with open(root / "journal", "wb") as f:
            f.write(b"first")
            f.flush()
            os.fsync(f.fileno())
            assert body(s3_client, s3_bucket, "journal") == b"first"
            f.write(b"+second")
            f.flush()
            os.fsync(f.fileno())
            assert body(s3_client, s3_bucket, "journal") == b"first+second"
            f.write(b"+third")
        assert body(s3_client, s3_bucket, "journal") == b"first+second+third"
    with mount(s3_server, s3_bucket, root):
        assert (root / "journal").read_bytes() == b"first+second+third"
