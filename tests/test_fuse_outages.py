"""Production edges through real mounts: the bucket deleted under a mount, the endpoint down for a while
(through tests/faultproxy.py), and a stale mount left by a daemon killed with kill -9."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from typing import Any

import pytest
from daemons import S3FILES, Daemon, Daemons, s3_body

from s3files.localserver import MotoServer

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
