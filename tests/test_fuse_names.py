"""Names through a real FUSE mount: folder rename (and completing an interrupted one) and symlinks, on moto
and on Ceph RadosGW, checked in the bucket with boto3 after unmount and again through a new mount."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import S3Server
from test_fuse import mount, put, put_many

pytestmark = pytest.mark.fuse

LINK_MODE = stat.S_IFLNK | 0o777
RENAME_NOREPLACE = 1
AT_FDCWD = -100


def keys(client: Any, bucket: str) -> dict[str, bytes]:
    """Every object in the bucket with its body."""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            found[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def renameat2(old: Path, new: Path, flags: int) -> int:
    """renameat2(2) (os.rename has no flags): 0 or the errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags)
    return 0 if rc == 0 else ctypes.get_errno()


def folder(prefix: str) -> dict[str, bytes]:
    """40 files: 30 in the folder, 10 in a subfolder."""
    files = {f"{prefix}/f{i:02d}.txt": f"file {i}\n".encode() * (i + 1) for i in range(30)}
    files.update({f"{prefix}/sub/g{i:02d}.txt": f"nested {i}\n".encode() for i in range(10)})
    return files


def tree_of(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` with its content, read through the mount."""
    found = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = Path(dirpath) / name
            found[str(full.relative_to(root))] = full.read_bytes()
    return found


def test_folder_rename_of_40_files(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    before = folder("A")
    put_many(s3_client, s3_bucket, before)
    put(s3_client, s3_bucket, "A/meta.txt", b"m", mode=str(stat.S_IFREG | 0o600), mtime="1600000000")
    expected = {k.replace("A/", "B/", 1): v for k, v in before.items()}
    expected["B/meta.txt"] = b"m"
    root = tmp_path / "m"
    with mount(s3_server, s3_bucket, root) as fs:
        reader = open(root / "A/f00.txt", "rb")
        writer = open(root / "A/sub/new.txt", "wb")
        writer.write(b"written before ")
        writer.flush()  # in the mount's staged copy, not in S3 yet
        os.rename(root / "A", root / "B")
        assert not (root / "A").exists()
        assert sorted(os.listdir(root)) == ["B"]
        assert len(os.listdir(root / "B")) == 32 and len(os.listdir(root / "B/sub")) == 11
        assert reader.read() == before["A/f00.txt"]  # open files follow the new name
        reader.close()
        writer.write(b"and after the rename")
        writer.close()
        for _ in range(100):  # the kernel sends RELEASE after close(2) returns
            if fs.statistics()["local_copies"] == 0:
                break
            time.sleep(0.05)
        assert fs.statistics()["local_copies"] == 0
    expected["B/sub/new.txt"] = b"written before and after the rename"
    assert keys(s3_client, s3_bucket) == expected
    head = s3_client.head_object(Bucket=s3_bucket, Key="B/meta.txt")
    assert head["Metadata"]["mode"] == str(stat.S_IFREG | 0o600)  # the copies keep their metadata
    with mount(s3_server, s3_bucket, root):
        assert tree_of(root) == expected
        st = os.stat(root / "B/meta.txt")
        assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o600, 1600000000)


def test_rename_onto_what_exists(s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path) -> None:
    for key, body in {
        "A/x": b"ax",
        "A/y/z": b"ayz",
        "full/other": b"o",
        "file": b"f",
        "old": b"new content",
    }.items():
        put(s3_client, s3_bucket, key, body)
    root = tmp_path / "m"
    with mount(s3_server, s3_bucket, root):
        os.rename(root / "old", root / "file")  # a file over an existing file replaces it
        assert (root / "file").read_bytes() == b"new content" and not (root / "old").exists()
        failures = {
            "onto a non-empty folder": (lambda: os.rename(root / "A", root / "full"), errno.ENOTEMPTY),
            "a folder onto a file": (lambda: os.rename(root / "A", root / "file"), errno.ENOTDIR),
            "a file onto a folder": (lambda: os.rename(root / "file", root / "full"), errno.EISDIR),
            "a folder into itself": (lambda: os.rename(root / "A", root / "A/y/inner"), errno.EINVAL),
        }
        for what, (attempt, expected) in failures.items():
            with pytest.raises(OSError) as failed:
                attempt()
            assert failed.value.errno == expected, what
        os.mkdir(root / "empty")
        assert renameat2(root / "A", root / "empty", RENAME_NOREPLACE) == errno.EEXIST
        assert renameat2(root / "A", root / "fresh", RENAME_NOREPLACE) == 0
        os.rename(root / "fresh", root / "empty")  # onto an empty folder: replaces it
        assert sorted(os.listdir(root)) == ["empty", "file", "full"]
        assert (root / "empty/y/z").read_bytes() == b"ayz"
    assert keys(s3_client, s3_bucket) == {
        "empty/x": b"ax",
        "empty/y/z": b"ayz",
        "file": b"new content",
        "full/other": b"o",
    }


def test_interrupted_folder_rename_is_completed_by_a_retry(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    files = {f"{i:02d}.bin": os.urandom(100 + i) for i in range(12)}
    files["deep/er.bin"] = b"deeper"
    # What a crash leaves: while copying A to B, every key still at A and some copied to B; while deleting
    # C's keys after copying them to D, every key at D and some left at C.
    seeded = {f"A/{rel}": body for rel, body in files.items()}
    seeded.update({f"B/{rel}": body for i, (rel, body) in enumerate(files.items()) if i % 3 == 0})
    seeded.update({f"D/{rel}": body for rel, body in files.items()})
    seeded.update({f"C/{rel}": body for i, (rel, body) in enumerate(files.items()) if i % 4 == 1})
    put_many(s3_client, s3_bucket, seeded)
    root = tmp_path / "m"
    with mount(s3_server, s3_bucket, root):
        os.rename(root / "A", root / "B")  # running `mv -T A B` again finishes the move
        os.rename(root / "C", root / "D")
        assert sorted(os.listdir(root)) == ["B", "D"]
    expected = {f"{side}/{rel}": body for side in "BD" for rel, body in files.items()}
    assert keys(s3_client, s3_bucket) == expected
    with mount(s3_server, s3_bucket, root):
        assert tree_of(root / "B") == files == tree_of(root / "D")


def test_symlinks(s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path) -> None:
    put(s3_client, s3_bucket, "data/target.txt", b"the target")
    put(s3_client, s3_bucket, "taken", b"t")
    root = tmp_path / "m"
    with mount(s3_server, s3_bucket, root):
        os.symlink("data/target.txt", root / "link")
        os.symlink("/somewhere/else", root / "data/abs")
        os.symlink("gone", root / "data/drop")
        assert os.readlink(root / "link") == "data/target.txt"
        assert stat.S_ISLNK(os.lstat(root / "link").st_mode)
        assert os.lstat(root / "link").st_size == len("data/target.txt")
        assert os.stat(root / "link").st_size == len(b"the target")  # followed
        assert (root / "link").read_bytes() == b"the target"
        with pytest.raises(FileExistsError):
            os.symlink("x", root / "taken")
        os.rename(root / "data/abs", root / "abs")  # a symlink renames like a file
        os.unlink(root / "data/drop")
    objects = keys(s3_client, s3_bucket)
    assert objects == {
        "link": b"data/target.txt",
        "abs": b"/somewhere/else",
        "data/target.txt": b"the target",
        "taken": b"t",
    }
    for key in ("link", "abs"):
        head = s3_client.head_object(Bucket=s3_bucket, Key=key)
        assert head["Metadata"]["mode"] == str(LINK_MODE) and head["Metadata"]["uid"] == str(os.getuid())
        assert head["ETag"].strip('"').endswith("-1")  # one-part multipart upload: a listing can tell
    with mount(s3_server, s3_bucket, root, listing_attributes="fast") as fs:  # by default every file is HEADed
        fs.store.requests.reset()
        assert sorted(os.listdir(root)) == [
            "abs",
            "data",
            "link",
            "taken",
        ]  # listed first: readdir HEADs links
        assert fs.store.requests.snapshot() == {"list": 1, "head": 2}
        assert stat.S_ISLNK(os.lstat(root / "link").st_mode) and stat.S_ISLNK(os.lstat(root / "abs").st_mode)
        assert os.readlink(root / "abs") == "/somewhere/else"
        assert (root / "link").read_bytes() == b"the target"
        assert stat.S_ISREG(os.lstat(root / "taken").st_mode)


def test_s3fs_style_symlink_is_a_symlink_after_a_lookup(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    put(s3_client, s3_bucket, "d/target.txt", b"the target")
    put(s3_client, s3_bucket, "d/s3fs-link", b"target.txt", mode=str(LINK_MODE))  # s3fs: a plain PUT
    put(s3_client, s3_bucket, "e/s3fs-link", b"../d/target.txt", mode=str(LINK_MODE))
    root = tmp_path / "m"
    with mount(s3_server, s3_bucket, root):
        # looked up without a listing: a HEAD shows the mode
        assert stat.S_ISLNK(os.lstat(root / "d/s3fs-link").st_mode)
        assert os.readlink(root / "d/s3fs-link") == "target.txt"
        assert (root / "d/s3fs-link").read_bytes() == b"the target"
    with mount(s3_server, s3_bucket, root, metadata_ttl=0.0, listing_attributes="fast"):
        # listed first (fast: no HEAD per file): the listing says "file"; the lookup that follows gives the
        # name a new inode (by default the listing's HEAD shows the symlink at once)
        assert os.listdir(root / "e") == ["s3fs-link"]
        assert stat.S_ISLNK(os.lstat(root / "e/s3fs-link").st_mode)
        assert (root / "e/s3fs-link").read_bytes() == b"the target"
        assert os.listdir(root / "e") == ["s3fs-link"]
        assert stat.S_ISLNK(os.lstat(root / "e/s3fs-link").st_mode)
    put(s3_client, s3_bucket, "f/s3fs-link", b"../d/target.txt", mode=str(LINK_MODE))
    with mount(s3_server, s3_bucket, root, metadata_ttl=0.5, listing_attributes="fast"):
        # The kernel trusts the listing's "file" for the TTL. Then any HEAD (a lookup, a getattr, the
        # open of a read) shows the mode: the name gets a new inode, the old one is ESTALE, never EIO.
        assert os.listdir(root / "f") == ["s3fs-link"]
        os.lstat(root / "f/s3fs-link")
        time.sleep(0.6)
        assert (root / "f/s3fs-link").read_bytes() == b"the target"
        assert stat.S_ISLNK(os.lstat(root / "f/s3fs-link").st_mode)
        assert os.readlink(root / "f/s3fs-link") == "../d/target.txt"
