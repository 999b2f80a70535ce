"""The ``s3files`` command as a user runs it: daemon start, clean stops, and one-line errors.

Each error case asserts the exit status, that the message names the problem, that no traceback is shown,
and that the command answers within the 15 s promise.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from s3files.localserver import MotoServer, free_port, start_moto_server
from s3files.mountinfo import mount_entry

pytestmark = pytest.mark.fuse


def s3files(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "s3files", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def wait_unmounted(mountpoint: Path, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if mount_entry(mountpoint.absolute()) is None:
            return True
        time.sleep(0.1)
    return False


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("s3files: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_daemon_mounts_reads_and_unmounts(
    moto_server: MotoServer, boto3_client: Any, bucket: str, tmp_path: Path
) -> None:
    boto3_client.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello from s3")
    mp = tmp_path / "m"
    mp.mkdir()
    log = tmp_path / "daemon.log"
    result = s3files(
        "mount", f"s3://{bucket}", str(mp), "--endpoint-url", moto_server.endpoint_url, "--log-file", str(log)
    )
    try:
        assert result.returncode == 0, result.stderr
        assert mount_entry(mp) is not None  # usable as soon as the command returned
        assert (mp / "hello.txt").read_bytes() == b"hello from s3"
        assert (os.statvfs(mp).f_namemax) == 255
        again = s3files("mount", f"s3://{bucket}", str(mp), "--endpoint-url", moto_server.endpoint_url)
        assert_one_line_error(again, "already mounted", str(mp))
    finally:
        done = s3files("unmount", str(mp))
    assert done.returncode == 0, done.stderr
    assert wait_unmounted(mp)
    assert "mounted s3://" in log.read_text()
    not_mounted = s3files("unmount", str(mp))
    assert_one_line_error(not_mounted, "not mounted")


def test_a_cache_folder_serves_one_daemon(moto_server: MotoServer, bucket: str, tmp_path: Path) -> None:
    """Two mounts of one bucket and prefix with one --cache-dir would recover each other's files: the
    second is refused with one line naming the first's pid; another prefix has a folder of its own."""
    first, second, third = (tmp_path / n for n in ("m1", "m2", "m3"))
    for mp in (first, second, third):
        mp.mkdir()
    cache = ["--cache-dir", str(tmp_path / "cache"), "--endpoint-url", moto_server.endpoint_url]
    result = s3files("mount", f"s3://{bucket}/p/", str(first), *cache)
    try:
        assert result.returncode == 0, result.stderr
        again = s3files("mount", f"s3://{bucket}/p/", str(second), *cache)
        assert_one_line_error(again, "is in use by another s3files daemon (pid ", "--cache-dir")
        assert mount_entry(second) is None
        other = s3files("mount", f"s3://{bucket}/q/", str(third), *cache)
        assert other.returncode == 0, other.stderr
        assert s3files("unmount", str(third)).returncode == 0
    finally:
        done = s3files("unmount", str(first))
    assert done.returncode == 0, done.stderr
    assert wait_unmounted(first) and wait_unmounted(third)


def test_non_ascii_mount_point_is_known_as_mounted(
    moto_server: MotoServer, boto3_client: Any, bucket: str, tmp_path: Path
) -> None:
    """mountinfo holds the path's UTF-8 bytes: a second mount there is refused and unmount finds it."""
    boto3_client.put_object(Bucket=bucket, Key="f", Body=b"x")
    mp = tmp_path / "dü"
    mp.mkdir()
    result = s3files("mount", f"s3://{bucket}", str(mp), "--endpoint-url", moto_server.endpoint_url)
    try:
        assert result.returncode == 0, result.stderr
        assert mount_entry(mp) is not None
        assert (mp / "f").read_bytes() == b"x"
        again = s3files("mount", f"s3://{bucket}", str(mp), "--endpoint-url", moto_server.endpoint_url)
        assert_one_line_error(again, "already mounted", str(mp))
    finally:
        done = s3files("unmount", str(mp))
    assert done.returncode == 0, done.stderr
    assert wait_unmounted(mp)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_unmount_cleanly(
    moto_server: MotoServer, boto3_client: Any, bucket: str, tmp_path: Path, signum: int
) -> None:
    boto3_client.put_object(Bucket=bucket, Key="f", Body=b"x")
    mp = tmp_path / "m"
    mp.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "s3files", "mount", f"s3://{bucket}", str(mp), "--foreground",
         "--endpoint-url", moto_server.endpoint_url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while mount_entry(mp) is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert (mp / "f").read_bytes() == b"x"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert wait_unmounted(mp, 5)


def test_missing_bucket_is_named(moto_server: MotoServer, tmp_path: Path) -> None:
    mp = tmp_path / "m"
    mp.mkdir()
    started = time.monotonic()
    result = s3files("mount", "s3://no-such-bucket-here", str(mp), "--endpoint-url", moto_server.endpoint_url)
    assert time.monotonic() - started < 15
    assert_one_line_error(result, "no-such-bucket-here", "does not exist")
    assert mount_entry(mp) is None


def test_an_http_server_that_is_not_s3_is_not_a_missing_bucket(tmp_path: Path) -> None:
    """A wrong --endpoint-url that reaches some web server: its 404 is not S3's NoSuchBucket."""
    import http.server
    import threading

    class NotS3(http.server.BaseHTTPRequestHandler):
        def _page(self) -> None:
            body = b"<html><body>Not Found</body></html>"
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = _page

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotS3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    mp = tmp_path / "m"
    mp.mkdir()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = s3files("mount", "s3://some-bucket", str(mp), "--endpoint-url", url)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert_one_line_error(result, url, "does not look like an S3 endpoint", "--endpoint-url")
    assert "does not exist" not in result.stderr
    assert mount_entry(mp) is None


def test_bad_credentials(tmp_path: Path) -> None:
    mp = tmp_path / "m"
    mp.mkdir()
    with start_moto_server(auth=True) as server:
        started = time.monotonic()
        result = s3files(
            "mount", "s3://any-bucket", str(mp), "--endpoint-url", server.endpoint_url,
            env={"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1", "AWS_SECRET_ACCESS_KEY": "wrong"},
        )
        assert time.monotonic() - started < 15
    assert_one_line_error(result, "credentials")
    assert mount_entry(mp) is None


def test_unreachable_endpoint(tmp_path: Path) -> None:
    mp = tmp_path / "m"
    mp.mkdir()
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = s3files("mount", "s3://b", str(mp), "--endpoint-url", url)
    assert time.monotonic() - started < 15
    assert_one_line_error(result, "cannot reach", url)


def test_bad_mount_points(moto_server: MotoServer, bucket: str, tmp_path: Path) -> None:
    missing = s3files("mount", f"s3://{bucket}", str(tmp_path / "nope"), "--endpoint-url", moto_server.endpoint_url)
    assert_one_line_error(missing, "does not exist", "nope")
    afile = tmp_path / "file"
    afile.write_text("x")
    not_dir = s3files("mount", f"s3://{bucket}", str(afile), "--endpoint-url", moto_server.endpoint_url)
    assert_one_line_error(not_dir, "is not a folder")
    bad_source = s3files("mount", "bucket-without-scheme", str(tmp_path))
    assert_one_line_error(bad_source, "s3://bucket")
