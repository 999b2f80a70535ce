"""The consistency modes through real mounts (docs/SEMANTICS.md, Consistency modes): two daemons on one
bucket (each its own process, tests/daemons.py) and boto3 as an outside writer.

What each mode promises to another mount or an SDK user, checked with short TTLs and bounded waits:
- strict: stat, readdir and open see an outside overwrite, delete or new key at once;
- close-to-open: open sees a new version at once (read whole, also when the kernel had cached a smaller
  size); stat and readdir within the TTL, never later;
- eventual: stat, readdir and open within the TTL, never later (and not necessarily before).
Eventual's write side (close before the upload, ``s3files sync``) is tested with the write-back.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import S3Server, rgw_in_full_runs
from daemons import S3FILES, Daemon, Daemons, s3_body, s3_keys

pytestmark = pytest.mark.fuse

SLACK = 1.5  # seconds a busy machine may add to a TTL before a change must be seen
TTL = 2.0  # --metadata-ttl of the modes that cache (short: the tests wait for it)




def start(daemons: Daemons, server: S3Server, bucket: str, name: str, *flags: str) -> Daemon:
    return daemons.mount(server.endpoint_url, bucket, name=name, cache=f"cache-{name}", extra=flags)


def seen_within(check: Callable[[], bool], limit: float, what: str) -> float:
    """Seconds until ``check()`` holds, asking every 50 ms; fails if that takes longer than ``limit``."""
    started = time.monotonic()
    for _ in range(int(limit / 0.05) + 2):
        if check():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what}: not seen within {limit} s")


def raises_enoent(path: Path) -> bool:
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    return False


# -- a file closed in one mount, opened in another ---------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [("--consistency", "strict"), ("--consistency", "close-to-open", "--metadata-ttl", "30")],
    ids=["strict", "close-to-open"],
)
@rgw_in_full_runs
def test_a_file_closed_in_one_mount_is_read_whole_at_the_next_open_in_the_other(
    flags: tuple[str, ...], s3_server: S3Server, s3_client: Any, s3_bucket: str, daemons: Daemons
) -> None:
    """Close-to-open with a long TTL too: the kernel of mount B has cached the old size for 30 s, and the
    open must still read every byte of the new version (the mount drops the kernel's attributes when its
    open finds another version), whether the file grew or shrank."""
    s3_client.put_object(Bucket=s3_bucket, Key="shared.txt", Body=b"v0")
    a, b = start(daemons, s3_server, s3_bucket, "a", *flags), start(daemons, s3_server, s3_bucket, "b", *flags)
    assert (b.mountpoint / "shared.txt").read_bytes() == b"v0"
    for round_, size in enumerate((300_000, 10, 2_000_000, 0, 5)):
        body = bytes([65 + round_]) * size
        (a.mountpoint / "shared.txt").write_bytes(body)  # closed: in S3 (close-to-open and strict)
        assert (b.mountpoint / "shared.txt").read_bytes() == body, f"round {round_}: size {size}"
        assert os.stat(b.mountpoint / "shared.txt").st_size == size  # the kernel forgot the old size
    if "strict" in flags:  # a new name too, at once (close-to-open: within the TTL, the next test)
        (a.mountpoint / "new.txt").write_bytes(b"fresh")
        assert (b.mountpoint / "new.txt").read_bytes() == b"fresh"
        assert "new.txt" in os.listdir(b.mountpoint)
    assert a.unmount() == 0 and b.unmount() == 0


# -- an outside writer ----------------------------------------------------------------------------------

OLD, NEW = b"old", b"the new version, longer than the old"


def warm(root: Path) -> None:
    """What a program did before the outside changes: the kernel and the mount now cache all of it."""
    assert sorted(os.listdir(root / "d")) == ["gone.txt", "over.txt"]
    assert os.stat(root / "d/over.txt").st_size == len(OLD)
    assert os.stat(root / "d/gone.txt").st_size == len(OLD)
    assert (root / "d/over.txt").read_bytes() == OLD


def change_outside(client: Any, bucket: str) -> float:
    client.put_object(Bucket=bucket, Key="d/over.txt", Body=NEW)
    client.delete_object(Bucket=bucket, Key="d/gone.txt")
    client.put_object(Bucket=bucket, Key="d/new.txt", Body=b"new key")
    return time.monotonic()


def seed(client: Any, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="d/over.txt", Body=OLD)
    client.put_object(Bucket=bucket, Key="d/gone.txt", Body=OLD)


@rgw_in_full_runs
def test_strict_sees_outside_changes_at_once(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, daemons: Daemons
) -> None:
    seed(s3_client, s3_bucket)
    m = start(daemons, s3_server, s3_bucket, "m", "--consistency", "strict")
    root = m.mountpoint
    warm(root)
    change_outside(s3_client, s3_bucket)
    assert os.stat(root / "d/over.txt").st_size == len(NEW)
    assert raises_enoent(root / "d/gone.txt")
    assert sorted(os.listdir(root / "d")) == ["new.txt", "over.txt"]
    assert (root / "d/over.txt").read_bytes() == NEW
    assert (root / "d/new.txt").read_bytes() == b"new key"
    with pytest.raises(FileNotFoundError):
        (root / "d/gone.txt").read_bytes()
    # and the other way: a key that comes back is found at once (no negative answer was kept)
    s3_client.put_object(Bucket=s3_bucket, Key="d/gone.txt", Body=b"back")
    assert (root / "d/gone.txt").read_bytes() == b"back"
    before = m.requests()["head"]
    for _ in range(5):
        os.stat(root / "d/over.txt")
    assert m.requests()["head"] >= before + 5  # every stat asked S3
    assert m.unmount() == 0


@rgw_in_full_runs
def test_close_to_open_sees_a_new_version_at_open_and_the_rest_within_the_ttl(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, daemons: Daemons
) -> None:
    seed(s3_client, s3_bucket)
    m = start(daemons, s3_server, s3_bucket, "m", "--consistency", "close-to-open", "--metadata-ttl", str(TTL))
    root = m.mountpoint
    warm(root)
    changed = change_outside(s3_client, s3_bucket)
    # open: at once, whole (the kernel had the old size cached), and stat follows what the open learnt
    assert (root / "d/over.txt").read_bytes() == NEW
    assert os.stat(root / "d/over.txt").st_size == len(NEW)
    with pytest.raises(FileNotFoundError):
        (root / "d/gone.txt").read_bytes()
    # the open's 404 makes the kernel forget the name (pyfuse3 sends that from its own thread, once the
    # open's request is done: at once, but not before the next line runs)
    seen_within(lambda: raises_enoent(root / "d/gone.txt"), TTL / 4, "stat of the name an open found gone")
    # stat, readdir and lookups of new names: within the TTL of what was cached before the change
    limit = TTL - (time.monotonic() - changed) + SLACK
    seen_within(lambda: sorted(os.listdir(root / "d")) == ["new.txt", "over.txt"], limit, "readdir")
    seen_within(lambda: (root / "d/new.txt").exists(), limit, "the new key")
    assert (root / "d/new.txt").read_bytes() == b"new key"
    assert m.unmount() == 0


@rgw_in_full_runs
def test_eventual_sees_outside_changes_within_the_ttl(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, daemons: Daemons
) -> None:
    seed(s3_client, s3_bucket)
    m = start(daemons, s3_server, s3_bucket, "m", "--consistency", "eventual", "--metadata-ttl", str(TTL))
    root = m.mountpoint
    warm(root)
    warmed = time.monotonic()
    requests = m.requests()
    changed = change_outside(s3_client, s3_bucket)
    if time.monotonic() - warmed < TTL / 2:  # (a busy machine may have taken longer: then nothing to say)
        # within the TTL the cached view is allowed, and costs nothing: no HEAD at open, the kernel's pages
        assert (root / "d/over.txt").read_bytes() == OLD
        assert m.requests() == requests
    limit = TTL - (time.monotonic() - changed) + SLACK
    seen_within(lambda: os.stat(root / "d/over.txt").st_size == len(NEW), limit, "stat of the overwrite")
    assert (root / "d/over.txt").read_bytes() == NEW
    seen_within(lambda: raises_enoent(root / "d/gone.txt"), limit, "stat of the deleted")
    seen_within(lambda: sorted(os.listdir(root / "d")) == ["new.txt", "over.txt"], limit, "readdir")
    assert (root / "d/new.txt").read_bytes() == b"new key"
    assert m.unmount() == 0


# -- eventual: a file closed in one mount reaches the other after sync, or by itself ----------------------

DELAY = 1.0  # --writeback-delay of the eventual mounts


def whole_or_absent(path: Path, body: bytes) -> bool:
    """Whether mount B shows ``path`` whole; fails if it shows any other content (a part, a mix)."""
    try:
        seen = path.read_bytes()
    except FileNotFoundError:
        return False
    assert seen == body, f"{path.name}: read {len(seen)} bytes, not the {len(body)} closed in the other mount"
    return True


@rgw_in_full_runs
def test_eventual_a_file_closed_in_one_mount_reaches_the_other_after_sync_or_the_delay_and_the_ttl(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, daemons: Daemons
) -> None:
    """Mount A's close returns before the upload (the key is absent right after it); ``s3files sync`` on A
    puts it in S3 before it returns, and B reads it whole within its TTL; without sync, B reads it whole
    within writeback-delay + TTL. Every read B makes meanwhile is ENOENT or the whole file."""
    flags = ("--consistency", "eventual", "--metadata-ttl", str(TTL), "--writeback-delay", str(DELAY))
    a, b = start(daemons, s3_server, s3_bucket, "a", *flags), start(daemons, s3_server, s3_bucket, "b", *flags)
    assert os.listdir(b.mountpoint) == []  # B caches an empty listing: the new names are ENOENT there

    synced = bytes(range(256)) * 1200  # 300 KiB
    (a.mountpoint / "synced.bin").write_bytes(synced)
    closed = time.monotonic()
    in_s3 = "synced.bin" in s3_keys(s3_client, s3_bucket)
    if time.monotonic() - closed < DELAY:  # (a busy machine may have passed the delay: nothing to say then)
        assert not in_s3, "eventual: the file was in S3 right after close"
        assert not whole_or_absent(b.mountpoint / "synced.bin", synced), "B read it before its upload"
    done = subprocess.run(
        [S3FILES, "sync", str(a.mountpoint), "--cache-dir", str(a.cache_dir), "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert s3_body(s3_client, s3_bucket, "synced.bin") == synced  # in S3 when sync returns
    seen_within(lambda: whole_or_absent(b.mountpoint / "synced.bin", synced), TTL + SLACK, "B reads the synced file")

    later = b"closed, never synced\n" * 5000
    (a.mountpoint / "later.txt").write_bytes(later)
    closed = time.monotonic()
    whole_or_absent(b.mountpoint / "later.txt", later)  # B looks now (a negative answer it may keep)
    limit = DELAY + TTL + SLACK - (time.monotonic() - closed)
    seen_within(lambda: whole_or_absent(b.mountpoint / "later.txt", later), limit, "B reads the file without sync")
    assert s3_body(s3_client, s3_bucket, "later.txt") == later
    assert a.unmount() == 0 and b.unmount() == 0
