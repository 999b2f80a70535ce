"""Production edges through real mounts: the bucket deleted under a mount, the endpoint down for a while
(through tests/faultproxy.py), and a stale mount left by a daemon killed with kill -9."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from typing import Any

import pytest
from conftest import FULL_COUNTS
from daemons import S3FILES, Daemon, Daemons, s3_body

from s3files.localserver import MotoServer
from s3files.mountinfo import mount_entry
from s3files.store.retry import RetryPolicy

pytestmark = pytest.mark.fuse


def s3files_status(daemon: Daemon) -> str:
    done = subprocess.run([S3FILES, "status", str(daemon.mountpoint)], capture_output=True, text=True, timeout=30)
    return done.stdout + done.stderr


def test_new_file_in_a_deleted_bucket_is_kept_and_uploaded_later(
    moto_server: MotoServer, boto3_client: Any, bucket: str, daemons: Daemons
) -> None:
    """S3's NoSuchBucket on a new file's PUT is not "deleted outside": close fails EIO, one line says the
    bucket is gone and what to do, the bytes stay in the cache folder (``s3files status`` lists them), and
    a later mount uploads them once the bucket exists again."""
    daemon = daemons.mount(moto_server.endpoint_url, bucket, extra=("--metadata-ttl", "30"))
    assert os.listdir(daemon.mountpoint) == []  # the folder is known: creating a name asks nothing
    boto3_client.delete_bucket(Bucket=bucket)
    fd = os.open(daemon.mountpoint / "new.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"precious bytes")
    with pytest.raises(OSError) as failed:
        os.close(fd)
    assert failed.value.errno == errno.EIO
    log = daemon.log()
    assert "deleted outside" not in log
    gone = [line for line in log.splitlines() if "the bucket is gone" in line]
    assert gone and "key='new.txt'" in gone[0] and "create the bucket again" in gone[0], log
    deadline = time.monotonic() + 10  # the daemon writes its status about once a second
    while "new.txt" not in (status := s3files_status(daemon)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "new.txt" in status and "14 B" in status, status
    assert daemon.unmount() == 0
    moto_server.create_bucket(bucket)
    daemon.start()  # recovery uploads what close acknowledged
    assert s3_body(boto3_client, bucket, "new.txt") == b"precious bytes"
    assert (daemon.mountpoint / "new.txt").read_bytes() == b"precious bytes"
    assert daemon.unmount() == 0


# -- the endpoint down for a while ---------------------------------------------------------------------

OUTAGE = 20.0 if FULL_COUNTS else 5.0  # seconds the endpoint is down (the 20 s in full runs)
POLICY = RetryPolicy(max_attempts=2, request_timeout=1.0)
# A file-system call makes at most this many S3 calls one after the other (a lookup's HEAD and LIST, an
# open's GET, a close's PUT and its retry of the direct attempt): each within POLICY.budget().
CALLS_PER_OPERATION = 3


def timed(operation: Any) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        operation()
    except OSError as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


@pytest.mark.parametrize("how", ["refuse", "drop"])
def test_the_endpoint_down_for_a_while(
    moto_server: MotoServer, boto3_client: Any, bucket: str, daemons: Daemons, fault_proxy: Any, how: str
) -> None:
    """While the endpoint refuses or drops every connection, a program that lists, reads and writes gets
    EIO within the retry budget (nothing hangs); afterwards ls, reads and writes work on the same mount
    (no failure remembered, folder listings included), and every byte acknowledged before is on S3."""
    boto3_client.put_object(Bucket=bucket, Key="dir/seed.txt", Body=b"seed")
    daemon = daemons.mount(
        fault_proxy.endpoint_url, bucket,
        extra=("--max-attempts", str(POLICY.max_attempts), "--request-timeout", str(POLICY.request_timeout)),
    )  # fmt: skip
    root = daemon.mountpoint
    before = {f"dir/before-{i}.bin": os.urandom(100_000 * (i + 1)) for i in range(3)}
    for name, data in before.items():
        (root / name).write_bytes(data)
    assert sorted(os.listdir(root / "dir")) == sorted([*(n[4:] for n in before), "seed.txt"])

    fault_proxy.set_down(how)
    bound = CALLS_PER_OPERATION * POLICY.budget()
    outcomes: list[tuple[str, float, BaseException | None]] = []
    ends = time.monotonic() + OUTAGE
    n = 0
    while (time.monotonic() < ends or n < 2) and n < 200:
        n += 1
        for what, operation in (
            ("ls", lambda: os.listdir(root / "dir")),
            ("read", lambda: (root / "dir/seed.txt").read_bytes()),
            ("write", lambda n=n: (root / f"dir/during-{n}.txt").write_bytes(b"during")),
        ):
            elapsed, error = timed(operation)
            outcomes.append((what, elapsed, error))
    fault_proxy.set_down(None)
    slow = [(what, elapsed) for what, elapsed, _ in outcomes if elapsed > bound]
    assert not slow, f"calls past the budget of {bound} s: {slow}"
    failures = [error for _, _, error in outcomes if error is not None]
    assert failures and all(error.errno == errno.EIO for error in failures), failures
    assert {what for what, _, error in outcomes if error is not None} >= {"ls", "write"}

    # Back: the same mount lists, reads and writes at once.
    listed = set(os.listdir(root / "dir"))
    assert listed >= {*(n[4:] for n in before), "seed.txt"}
    assert (root / "dir/seed.txt").read_bytes() == b"seed"
    (root / "dir/after.txt").write_bytes(b"after")
    assert "after.txt" in os.listdir(root / "dir")
    assert s3_body(boto3_client, bucket, "dir/after.txt") == b"after"
    for name, data in before.items():
        assert s3_body(boto3_client, bucket, name) == data
        assert (root / name).read_bytes() == data
    assert daemon.unmount() == 0


# -- a stale mount: the daemon killed with kill -9 ------------------------------------------------------


def kill9_leaving_the_mount(daemon: Daemon) -> None:
    """SIGKILL the daemon and leave its dead mount behind (Daemon.kill9 would detach it)."""
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait(10)
    with pytest.raises(OSError) as dead:
        os.statvfs(daemon.mountpoint)
    assert dead.value.errno == errno.ENOTCONN
    assert mount_entry(daemon.mountpoint) is not None


def test_a_stale_mount_is_cleaned_up_by_mount_and_unmount(
    moto_server: MotoServer, bucket: str, daemons: Daemons
) -> None:
    """A mount left by a daemon killed with kill -9 ("Transport endpoint is not connected"): `s3files
    mount` there unmounts it with one line saying so and mounts again (foreground daemon and background
    command alike); `s3files unmount` cleans it up too."""
    daemon = daemons.mount(moto_server.endpoint_url, bucket)
    (daemon.mountpoint / "a.txt").write_bytes(b"kept")
    stale_line = f"{daemon.mountpoint} was left mounted by a daemon that died (Transport endpoint is not connected); unmounted it"

    kill9_leaving_the_mount(daemon)
    daemon.start()  # the foreground daemon: the line in its log
    assert next(line for line in daemon.log().splitlines() if "left mounted" in line).endswith(stale_line)
    assert (daemon.mountpoint / "a.txt").read_bytes() == b"kept"

    kill9_leaving_the_mount(daemon)
    done = subprocess.run([S3FILES, "unmount", str(daemon.mountpoint)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr.splitlines()) == (0, [f"s3files: {stale_line}"])
    assert mount_entry(daemon.mountpoint) is None

    daemon.start()
    kill9_leaving_the_mount(daemon)
    done = subprocess.run(  # the command users run: the daemon goes to the background
        [S3FILES, "mount", f"s3://{bucket}/", str(daemon.mountpoint), "--endpoint-url", moto_server.endpoint_url,
         "--cache-dir", str(daemon.cache_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (done.returncode, done.stderr.splitlines()) == (0, [f"s3files: {stale_line}"])
    assert (daemon.mountpoint / "a.txt").read_bytes() == b"kept"
    done = subprocess.run([S3FILES, "unmount", str(daemon.mountpoint)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    deadline = time.monotonic() + 10
    while mount_entry(daemon.mountpoint) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mount_entry(daemon.mountpoint) is None
