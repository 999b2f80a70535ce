"""Metrics (s3files/metrics.py, issue 21): the Prometheus text a running mount serves with --metrics-port,
checked against what really went over the wire (the fault proxy counts every request it forwards), and the
metrics room on its own (families, FUSE outcomes, the HTTP server's start and stop)."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from daemons import S3FILES, Daemons

from s3files.metrics import Metrics
from s3files.store.session import OPERATION_NAMES

pytestmark = pytest.mark.fuse


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """``name``'s samples in Prometheus text: {sorted label pairs: value}."""
    found = {}
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if m:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")))
            found[labels] = float(m.group(2))
    return found


def test_metrics_families_and_fuse_outcomes_and_the_server_stops() -> None:
    stats = {"requests": {"get": 3, "put": 2}, "cache_bytes": 4096, "unsent_files": 1, "metadata_cache_hits": 5}
    metrics = Metrics(lambda: stats)
    metrics.operation("lookup", "ok", 0.0002)
    metrics.operation("lookup", "ENOENT", 0.0001)
    metrics.operation("read", "ok", 0.02)
    text = metrics.text().decode()
    assert samples(text, "s3files_s3_requests_total") == {(("operation", "get"),): 3.0, (("operation", "put"),): 2.0}
    assert samples(text, "s3files_cache_bytes") == {(): 4096.0}
    assert samples(text, "s3files_files_waiting_for_upload") == {(): 1.0}
    assert samples(text, "s3files_metadata_cache_hits_total") == {(): 5.0}
    ops = samples(text, "s3files_fuse_operations_total")
    assert ops[(("op", "lookup"), ("outcome", "ENOENT"))] == 1.0 and ops[(("op", "lookup"), ("outcome", "ok"))] == 1.0
    assert samples(text, "s3files_fuse_operation_seconds_count")[(("op", "read"),)] == 1.0
    port = metrics.serve("127.0.0.1", 0)
    assert samples(scrape(port), "s3files_cache_bytes") == {(): 4096.0}
    metrics.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    # a statistics call that fails (the mount is stopping) leaves the FUSE metrics
    broken = Metrics(lambda: 1 / 0)  # type: ignore[arg-type,return-value]
    broken.operation("getattr", "ok", 0.001)
    assert "s3files_fuse_operations_total" in broken.text().decode()


def test_a_mounts_metrics_count_exactly_the_requests_sent(daemons: Daemons, fault_proxy: Any, bucket: str) -> None:
    port = free_port()
    daemon = daemons.mount(fault_proxy.endpoint_url, bucket, extra=("--metrics-port", str(port)))
    root = daemon.mountpoint
    for i in range(3):
        (root / f"f{i}").write_bytes(b"x" * (1000 * (i + 1)))  # close uploads (close-to-open)
    os.mkdir(root / "d")
    os.rename(root / "f0", root / "d" / "f0")
    assert (root / "d" / "f0").read_bytes() == b"x" * 1000
    os.unlink(root / "f1")
    with pytest.raises(FileNotFoundError):
        os.stat(root / "missing")
    assert sorted(os.listdir(root)) == ["d", "f2"]
    # quiet: a folder's times reach its marker within a second; then the proxy and the metrics agree
    deadline = time.monotonic() + 15
    quiet_after = time.monotonic() + 1.5
    while True:
        sent = Counter({OPERATION_NAMES.get(op, op): n for op, n in fault_proxy.stats.snapshot()["operations"].items()})
        text = scrape(port)
        counted = Counter({dict(k)["operation"]: int(v) for k, v in samples(text, "s3files_s3_requests_total").items()})
        if sent == counted and time.monotonic() > quiet_after:
            break
        if sent != counted:
            quiet_after = time.monotonic() + 1.5  # a folder's times reach its marker within a second
        assert time.monotonic() < deadline, (sent, counted)
        time.sleep(0.5)
    assert counted["put"] >= 3 and counted["copy"] >= 1 and counted["delete"] >= 2
    # `s3files stats` says the same, as JSON and as a table
    done = subprocess.run(
        [S3FILES, "stats", str(root), "--json", "--cache-dir", str(daemon.cache_dir)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    sent = Counter({OPERATION_NAMES.get(op, op): n for op, n in fault_proxy.stats.snapshot()["operations"].items()})
    assert Counter(shown["requests"]) == sent  # (quiet since the metrics agreed: nothing more was sent)
    assert shown["fuse"]["create"]["count"] == 3 and shown["fuse"]["lookup"]["failed"] >= 1
    table = subprocess.run(
        [S3FILES, "stats", str(root), "--cache-dir", str(daemon.cache_dir)], capture_output=True, text=True, timeout=30
    )
    assert table.returncode == 0 and re.search(r"S3 requests\s+\d+\n  \w+\s+\d+\n", table.stdout), table.stdout
    assert re.search(r"\n  create\s+3\s+0\s", table.stdout), table.stdout
    ops = samples(text, "s3files_fuse_operations_total")
    assert ops[(("op", "create"), ("outcome", "ok"))] == 3.0
    assert ops[(("op", "rename"), ("outcome", "ok"))] == 1.0
    assert ops.get((("op", "lookup"), ("outcome", errno.errorcode[errno.ENOENT])), 0) >= 1
    assert samples(text, "s3files_files_waiting_for_upload") == {(): 0.0}


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_failed_operation_logs_one_line_with_path_key_errno_and_s3_code(
    daemons: Daemons, fault_proxy: Any, bucket: str, log_format: str
) -> None:
    """S3 refuses every PUT with 403 AccessDenied: the close answers EACCES and the log has one line for
    that flush naming the op, the path, the key (escaped: this one holds a newline), the errno and S3's
    error code; in JSON the same as fields."""
    daemon = daemons.mount(fault_proxy.endpoint_url, bucket, extra=("--log-format", log_format, "--metadata-ttl", "30"))
    os.mkdir(daemon.mountpoint / "sub dir")
    name = "new\nline.txt"
    fault_proxy.set_faults(fail_every=1, fail_when="PutObject", fail_status=403, fail_code="AccessDenied")
    with pytest.raises(PermissionError):
        (daemon.mountpoint / "sub dir" / name).write_bytes(b"refused")
    fault_proxy.set_faults()
    log = daemon.log()
    if log_format == "text":
        lines = [line for line in log.splitlines() if " op=flush " in line]
        assert len(lines) == 1, log[-3000:]
        assert "op=flush path='/sub dir/new\\nline.txt' key='sub dir/new\\nline.txt' errno=EACCES s3=AccessDenied: " in lines[0]
    else:
        entries = [json.loads(line) for line in log.splitlines()]
        flushes = [e for e in entries if e.get("op") == "flush"]
        assert len(flushes) == 1, log[-3000:]
        assert flushes[0]["path"] == "/sub dir/new\nline.txt" and flushes[0]["key"] == "sub dir/new\nline.txt"
        assert flushes[0]["errno"] == "EACCES" and flushes[0]["s3"] == "AccessDenied"
        assert flushes[0]["level"] == "WARNING"


def test_stats_of_a_folder_that_is_not_a_mount_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run([S3FILES, "stats", str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and done.stderr.startswith("s3files: error: ") and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and str(tmp_path) in done.stderr


def test_bad_metrics_ports_are_one_line_and_mount_nothing(tmp_path: Path, moto_server: Any, bucket: str) -> None:
    mountpoint = tmp_path / "m"
    mountpoint.mkdir()
    env = {**os.environ, "AWS_ENDPOINT_URL": moto_server.endpoint_url}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = str(busy.getsockname()[1])
        for port, words in (("70000", "--metrics-port must be a port number"), (taken, "cannot serve metrics at")):
            done = subprocess.run(
                [S3FILES, "mount", f"s3://{bucket}/", str(mountpoint), "--endpoint-url", moto_server.endpoint_url,
                 "--cache-dir", str(tmp_path / "cache"), "--metrics-port", port],
                capture_output=True, text=True, timeout=60, env=env,
            )  # fmt: skip
            assert done.returncode != 0 and words in done.stderr, done.stderr
            assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
            assert not os.path.ismount(mountpoint)


# -- the log a person (or a log shipper) follows ----------------------------------------------------------


def test_json_log_lines_carry_the_message_fields_and_cannot_be_broken() -> None:
    import logging

    from s3files.logs import JsonFormatter

    record = logging.LogRecord(
        "s3files.fuse.adapter", logging.WARNING, __file__, 1, "op=%s errno=%s path=%r: %s", None, None
    )
    record.args = ("open", "EIO", "a/evil\nINFO forged line", "S3 said 500")
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING" and entry["logger"] == "s3files.fuse.adapter"
    assert (entry["op"], entry["errno"], entry["path"]) == ("open", "EIO", "a/evil\nINFO forged line")
    assert entry["message"].endswith("S3 said 500") and entry["time"].endswith("Z")


def test_a_summary_line_per_interval_with_activity_only(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import trio
    import trio.testing

    from s3files.fuse.mount import summarize

    requests: Counter[str] = Counter()
    metrics = Metrics()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(summarize, lambda: {"requests": dict(requests)}, metrics, 60.0)
            await trio.sleep(61)  # nothing happened: no line
            requests.update(get=3, put=1)
            metrics.operation("read", "ok", 0.01)
            metrics.operation("open", "EACCES", 0.001)
            await trio.sleep(60)
            await trio.sleep(60)  # nothing again
            nursery.cancel_scope.cancel()

    with caplog.at_level(logging.INFO, logger="s3files.fuse.mount"):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    lines = [r.getMessage() for r in caplog.records if "op=summary" in r.getMessage()]
    assert lines == ["op=summary seconds=60 requests=4 fuse_operations=2 errors=1 (get=3 put=1)"]


def test_a_debug_log_holds_no_secret_and_no_signature(
    daemons: Daemons, moto_server: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3files-test-secret-" + os.urandom(8).hex()  # moto accepts any keys
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    daemon = daemons.mount(moto_server.endpoint_url, bucket, extra=("--log-level", "DEBUG"))
    root = daemon.mountpoint
    (root / "small").write_bytes(b"s" * 100)  # a PUT signed here (store/direct.py)
    (root / "big").write_bytes(os.urandom(20 * 1024 * 1024))  # a multipart upload (botocore)
    assert (root / "big").stat().st_size == 20 * 1024 * 1024
    assert (root / "small").read_bytes() == b"s" * 100  # a presigned GET
    os.rename(root / "small", root / "renamed")
    assert daemon.requests()["put"] >= 1
    log = daemon.all_logs()
    assert "DEBUG" in log  # the level took
    for forbidden in (secret, "Signature=", "X-Amz-Signature", "Authorization", "authorization"):
        assert forbidden not in log, forbidden
