"""Eventual mode's write-back through real daemons (tests/daemons.py) on an S3 server: close returns before
the upload, ``s3files sync`` uploads and reports, the delay uploads once however often a file is
rewritten, SIGTERM uploads first, kill -9 before the upload and a remount uploads it, a conflict found
after close keeps both versions and is reported. Checked: what S3 holds (boto3), the daemon's request
counts (``s3files stats``), ``s3files sync``'s exit status and lines, ``s3files status``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import rgw_in_full_runs
from daemons import S3FILES, Daemon, Daemons, s3_body, s3_keys

from s3files.status import canonical, registered_folder

pytestmark = pytest.mark.fuse

LONG = ("--consistency", "eventual", "--writeback-delay", "600")  # nothing uploads by itself in a test




def sync(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [S3FILES, "sync", str(daemon.mountpoint), *args, "--timeout", "60"],  # the registry finds the cache
        capture_output=True,
        text=True,
        timeout=90,
    )


def status(daemon: Daemon) -> str:
    done = subprocess.run(
        [S3FILES, "status", str(daemon.mountpoint)],  # no --cache-dir: the registry of mounts finds it
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def wait_for(what: str, check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


@rgw_in_full_runs
def test_close_returns_before_the_upload_and_sync_uploads_it(s3_client: Any, s3_bucket: str, daemons: Daemons) -> None:
    daemon = daemons.mount(s3_client.meta.endpoint_url, s3_bucket, extra=LONG)
    (daemon.mountpoint / "sub").mkdir()
    (daemon.mountpoint / "sub" / "a.txt").write_bytes(b"in a folder")
    (daemon.mountpoint / "top.txt").write_bytes(b"at the top")
    assert s3_keys(s3_client, s3_bucket) == ["sub/"]  # closed, not uploaded
    assert (daemon.mountpoint / "top.txt").read_bytes() == b"at the top"  # this mount reads it
    assert sorted(os.listdir(daemon.mountpoint)) == ["sub", "top.txt"]  # and lists it
    wait_for("status to list the waiting files", lambda: "top.txt" in status(daemon))  # written every second
    assert "uploaded by the write-back" in status(daemon)

    done = sync(daemon, str(daemon.mountpoint / "sub"))
    assert (done.returncode, done.stderr) == (0, "")
    assert s3_keys(s3_client, s3_bucket) == ["sub/", "sub/a.txt"]  # only PATH
    done = sync(daemon)
    assert (done.returncode, done.stderr) == (0, "")
    assert s3_body(s3_client, s3_bucket, "top.txt") == b"at the top"
    assert s3_body(s3_client, s3_bucket, "sub/a.txt") == b"in a folder"
    wait_for("status to say nothing waits", lambda: "nothing, every closed file is in S3" in status(daemon))
    where = canonical(daemon.mountpoint)
    assert registered_folder(where) == daemon.folder  # the daemons' --cache-dir is not the default
    assert daemon.unmount() == 0
    assert registered_folder(where) is None  # the mount's entry goes with it


HOLDER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"not closed yet")
print("wrote", flush=True)
sys.stdin.readline()
os.fsync(fd)  # fsync uploads that file before it returns
print("fsynced", flush=True)
sys.stdin.readline()
os.close(fd)
"""


@rgw_in_full_runs
def test_sync_names_a_file_open_with_changes_no_close_acknowledged(
    s3_client: Any, s3_bucket: str, daemons: Daemons
) -> None:
    """The file is held open by another process: any process this test forks closes its copies of the
    test's descriptors at exec, which is a close (a FUSE flush) of the file."""
    daemon = daemons.mount(s3_client.meta.endpoint_url, s3_bucket, extra=LONG)
    holder = daemons.popen(
        [sys.executable, "-c", HOLDER, str(daemon.mountpoint / "open.txt")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline() == "wrote\n"
    done = sync(daemon)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"s3files: not in S3: {daemon.mountpoint}/open.txt: not uploaded: open for writing, changed since"
        " its last close or fsync"
    ]
    assert "open.txt" not in s3_keys(s3_client, s3_bucket)
    holder.stdin.write("\n")
    holder.stdin.flush()
    assert holder.stdout.readline() == "fsynced\n"
    assert s3_body(s3_client, s3_bucket, "open.txt") == b"not closed yet"
    holder.stdin.write("\n")
    holder.stdin.flush()
    assert holder.wait(30) == 0
    assert sync(daemon).returncode == 0
    outside = subprocess.run(
        [S3FILES, "sync", str(daemon.mountpoint), "/etc", "--cache-dir", str(daemon.cache_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert outside.returncode == 1 and "is not inside the mount" in outside.stderr
    assert daemon.unmount() == 0


@rgw_in_full_runs
def test_ten_rewrites_within_the_delay_are_one_put(s3_client: Any, s3_bucket: str, daemons: Daemons) -> None:
    delay = 3.0
    daemon = daemons.mount(
        s3_client.meta.endpoint_url, s3_bucket, extra=("--consistency", "eventual", "--writeback-delay", str(delay))
    )
    path = daemon.mountpoint / "often.txt"
    before = daemon.requests()["put"]
    start = time.monotonic()
    for i in range(10):
        path.write_text(f"version {i}\n")  # open(O_TRUNC), write, close
    with open(path, "a") as log:
        for i in range(50):
            print(i, file=log, flush=True)
    rewriting = time.monotonic() - start
    assert "often.txt" not in s3_keys(s3_client, s3_bucket)
    wait_for("the write-back's upload", lambda: "often.txt" in s3_keys(s3_client, s3_bucket), timeout=delay + 30)
    assert time.monotonic() - start >= delay  # not before the delay after the last close
    expected = "version 9\n" + "".join(f"{i}\n" for i in range(50))
    assert s3_body(s3_client, s3_bucket, "often.txt") == expected.encode()
    assert daemon.requests()["put"] - before == 1, f"rewriting took {rewriting:.1f} s"
    assert daemon.unmount() == 0


@rgw_in_full_runs
def test_sigterm_uploads_every_waiting_file_first(s3_client: Any, s3_bucket: str, daemons: Daemons) -> None:
    daemon = daemons.mount(s3_client.meta.endpoint_url, s3_bucket, extra=LONG)
    for i in range(20):
        (daemon.mountpoint / f"f{i:02d}").write_bytes(bytes([i]) * 1000)
    assert s3_keys(s3_client, s3_bucket) == []
    assert daemon.signal(signal.SIGTERM) == 0
    assert s3_keys(s3_client, s3_bucket) == [f"f{i:02d}" for i in range(20)]
    assert all(s3_body(s3_client, s3_bucket, f"f{i:02d}") == bytes([i]) * 1000 for i in range(20))
    assert daemon.records() == []


@rgw_in_full_runs
@pytest.mark.parametrize("durability", ["machine", "daemon"])
def test_kill_9_before_the_upload_and_a_remount_uploads_it(
    s3_client: Any, s3_bucket: str, daemons: Daemons, durability: str
) -> None:
    """Also with ``--durability daemon`` (no sync of the cache disk): the kernel keeps what the dead
    daemon wrote, so a dead daemon loses no close either way."""
    daemon = daemons.mount(s3_client.meta.endpoint_url, s3_bucket, extra=(*LONG, "--durability", durability))
    small, large = b"closed, then the daemon died", os.urandom(3 * 1024 * 1024)
    (daemon.mountpoint / "small").write_bytes(small)
    (daemon.mountpoint / "large").write_bytes(large)
    daemon.kill9()
    assert s3_keys(s3_client, s3_bucket) == []
    records = {r["key"]: r for r in daemon.records()}
    assert {k: (r["state"], r["acknowledged"], r["data"]) for k, r in records.items()} == {
        "small": ("acked", True, small),
        "large": ("acked", True, large),
    }
    daemon.start()
    assert "recovery: 2 uploaded" in daemon.log()
    assert s3_body(s3_client, s3_bucket, "small") == small
    assert s3_body(s3_client, s3_bucket, "large") == large
    assert daemon.unmount() == 0


@rgw_in_full_runs
def test_a_conflict_after_close_keeps_both_and_is_reported(s3_client: Any, s3_bucket: str, daemons: Daemons) -> None:
    daemon = daemons.mount(s3_client.meta.endpoint_url, s3_bucket, extra=LONG)
    (daemon.mountpoint / "shared.txt").write_bytes(b"ours")  # close returned: no EIO can come any more
    s3_client.put_object(Bucket=s3_bucket, Key="shared.txt", Body=b"theirs")
    done = sync(daemon)
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith(f"s3files: not in S3: {daemon.mountpoint}/shared.txt: ") and "saved as" in line
    copies = [k for k in s3_keys(s3_client, s3_bucket) if k.startswith("shared.txt.s3files-conflict-")]
    assert len(copies) == 1
    assert s3_body(s3_client, s3_bucket, "shared.txt") == b"theirs"
    assert s3_body(s3_client, s3_bucket, copies[0]) == b"ours"
    wait_for("status to list the conflict copy", lambda: copies[0] in status(daemon))
    assert "changed outside this mount" in daemon.log()
    assert daemon.unmount() == 0


@rgw_in_full_runs
def test_rsync_and_a_shell_appender_cost_one_put_per_file(
    s3_client: Any, s3_bucket: str, daemons: Daemons, tmp_path: Path
) -> None:
    """``rsync -a`` (a temporary name, close, chmod, utime, rename per file) and ``exec 3>>log; echo $i
    >&3`` (a close of a duplicate descriptor per line) through a write-back mount: one PUT per file, no
    CopyObject, no DELETE; the mode and mtime rsync set arrive with the upload."""
    source = tmp_path / "src"
    source.mkdir()
    for i in range(20):
        (source / f"f{i:02d}.txt").write_text(f"file {i}\n" * (i + 1))
        os.chmod(source / f"f{i:02d}.txt", 0o640)
        os.utime(source / f"f{i:02d}.txt", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000 + i))
    daemon = daemons.mount(s3_client.meta.endpoint_url, s3_bucket, extra=LONG)
    before = daemon.requests()
    done = subprocess.run(
        ["rsync", "-a", f"{source}/", f"{daemon.mountpoint}/dst/"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    shell = subprocess.run(
        ["bash", "-c", f"exec 3>>{daemon.mountpoint}/log; for i in $(seq 1 200); do echo $i >&3; done"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shell.returncode == 0, shell.stderr
    assert sync(daemon).returncode == 0
    sent = daemon.requests() - before
    # One PUT per file and the log; the rest are dst/'s marker (mkdir, then its times: markers.py writes
    # them at most once per second, and rsync sets the folder's mtime at the end).
    assert 20 + 1 + 1 <= sent["put"] <= 20 + 1 + 4, sent
    assert sent["copy"] == 0 and sent["delete"] == 0, sent
    keys = s3_keys(s3_client, s3_bucket)
    assert keys == ["dst/", *(f"dst/f{i:02d}.txt" for i in range(20)), "log"]
    assert s3_body(s3_client, s3_bucket, "log") == "".join(f"{i}\n" for i in range(1, 201)).encode()
    for i in range(20):
        head = s3_client.head_object(Bucket=s3_bucket, Key=f"dst/f{i:02d}.txt")
        assert int(head["Metadata"]["mode"]) & 0o7777 == 0o640
        assert head["Metadata"]["mtime"] == (f"1600000000.{i:09d}" if i else "1600000000")  # to the ns
        assert s3_body(s3_client, s3_bucket, f"dst/f{i:02d}.txt") == (f"file {i}\n" * (i + 1)).encode()
    assert daemon.unmount() == 0
