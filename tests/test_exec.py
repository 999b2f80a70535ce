"""``s3files exec``: mounts, runs a command, publishes (or holds back), unmounts, exits with its status.

Run as a user runs it: the ``s3files`` command against moto (the ``daemons`` fixture's root for mount
points and cache dir; its process list ends anything left). Each test runs a few short jobs; what S3
holds after each is read with boto3, what is mounted from /proc/self/mountinfo, what is kept with
``s3files status --json``. The hold itself (nothing uploaded while held, also not after a crash) is
tested in the core: tests/test_writeback_core.py, "held back".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from daemons import S3FILES, Daemons, s3_keys, s3_uploads

from s3files.core.records import folder_name
from s3files.job import run_command
from s3files.localserver import MotoServer
from s3files.mountinfo import mounts

JOB_TIMEOUT = 60


def exec_job(
    daemons: Daemons,
    moto: MotoServer,
    bucket: str,
    script: str,
    *options: str,
    both: bool = False,
    sigterm_when: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``s3files exec --mount s3://BUCKET/out/:ROOT/out [--mount s3://BUCKET/in/:ROOT/in] OPTIONS -- sh -c
    SCRIPT job`` in ROOT (the folders need not exist: exec creates them); ``sigterm_when``: SIGTERM to
    exec once that file exists."""
    root = daemons.root
    mounts = ["--mount", f"s3://{bucket}/out/:{root}/out"]
    if both:
        mounts += ["--mount", f"s3://{bucket}/in/:{root}/in"]
    proc = daemons.popen(
        [
            S3FILES, "exec", *mounts,
            "--endpoint-url", moto.endpoint_url,
            "--cache-dir", str(root / "cache"),
            "--log-file", str(root / "exec.log"),
            *options,
            "--", "sh", "-c", script, "job",
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    if sigterm_when is not None:
        deadline = time.monotonic() + JOB_TIMEOUT
        while not sigterm_when.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=JOB_TIMEOUT)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def mounted_below(root: Path) -> list[str]:
    return [m.mountpoint for m in mounts() if m.mountpoint.startswith(str(root))]


def out_folder(daemons: Daemons, moto: MotoServer, bucket: str) -> Path:
    return daemons.root / "cache" / folder_name(moto.endpoint_url, bucket, "out/")


def kept(folder: Path) -> list[dict[str, Any]]:
    done = subprocess.run([S3FILES, "status", str(folder), "--json"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout)["kept"])


WRITE = 'echo "$0" > out/name.txt && mkdir -p out/sub && echo x > out/sub/x'


def test_run_command_gives_the_status_as_a_shell_does() -> None:
    assert run_command(["sh", "-c", "exit 0"]) == (0, None)
    assert run_command(["sh", "-c", "exit 3"]) == (3, None)
    assert run_command(["sh", "-c", "kill -9 $$"]) == (137, None)
    assert run_command(["/nonexistent/program"]) == (127, None)
    assert run_command(["/dev/null"]) == (126, None)


def test_exec_passes_the_status_through_and_leaves_nothing_mounted(
    daemons: Daemons, moto_server: MotoServer, bucket: str, boto3_client: Any
) -> None:
    boto3_client.put_object(Bucket=bucket, Key="in/data.txt", Body=b"input\n")
    ok = exec_job(daemons, moto_server, bucket, f"cat in/data.txt > out/copy.txt && {WRITE}", both=True)
    assert ok.returncode == 0, ok.stderr
    assert s3_keys(boto3_client, bucket) == ["in/data.txt", "out/copy.txt", "out/name.txt", "out/sub/", "out/sub/x"]
    assert boto3_client.get_object(Bucket=bucket, Key="out/copy.txt")["Body"].read() == b"input\n"
    assert mounted_below(daemons.root) == []
    assert list(daemons.root.joinpath("in").iterdir()) == []  # created by exec, empty once unmounted

    # --publish always (the default): what a failing command wrote is published all the same
    failed = exec_job(daemons, moto_server, bucket, "echo partial > out/partial.txt; exit 3")
    assert failed.returncode == 3, failed.stderr
    assert "out/partial.txt" in s3_keys(boto3_client, bucket)
    assert mounted_below(daemons.root) == []


@pytest.mark.parametrize(
    ("ending", "status"),
    [("exit 3", 3), ("kill -9 $$", 137), ("touch out/ready; exec sleep 30", 128 + signal.SIGTERM)],
    ids=["exit-3", "sigkill", "sigterm-to-exec"],
)
def test_on_success_publishes_nothing_when_the_command_fails_and_keeps_it_listed(
    daemons: Daemons, moto_server: MotoServer, bucket: str, boto3_client: Any, ending: str, status: int
) -> None:
    """Failed, killed, or interrupted (SIGTERM to exec, passed on to the command: a failure)."""
    big = "head -c 6000000 /dev/zero > out/big.bin"  # over a part: its streamed part is aborted
    ready = daemons.root / "out" / "ready" if "ready" in ending else None
    script = f"{WRITE} && {big} && sync out/name.txt; {ending}"
    options = ("--publish", "on-success", "--upload-part-size", "5M")
    job = exec_job(daemons, moto_server, bucket, script, *options, sigterm_when=ready)
    assert job.returncode == status, job.stderr
    # No file it wrote, not even one it fsynced, nor the folder it made (held back too)
    assert s3_keys(boto3_client, bucket) == []
    assert s3_uploads(boto3_client, bucket) == []
    assert mounted_below(daemons.root) == []
    folder = out_folder(daemons, moto_server, bucket)
    assert f"kept in {folder}" in job.stderr and "kept: out/name.txt at " in job.stderr
    listed = kept(folder)
    assert sorted((k["key"], k["held"], k["bytes"]) for k in listed if k["key"] != "out/ready") == [
        ("out/big.bin", True, 6_000_000),
        ("out/name.txt", True, 4),
        ("out/sub/x", True, 2),
    ]
    if ready is not None:
        assert "SIGTERM passed on to the command: a failure, nothing published" in job.stderr
    if status == 3:
        # The next job on that cache folder succeeds: everything it wrote is published (uploaded at its exit,
        # not after --writeback-delay), the files held back before are not, and stay listed
        script = 'echo "$0" > out/second.txt && mkdir out/two && echo y > out/two/y'
        again = exec_job(daemons, moto_server, bucket, script, "--publish", "on-success", "--writeback-delay", "300")
        assert again.returncode == 0, again.stderr
        assert s3_keys(boto3_client, bucket) == ["out/second.txt", "out/two/", "out/two/y"]
        assert boto3_client.get_object(Bucket=bucket, Key="out/second.txt")["Body"].read() == b"job\n"
        shown = subprocess.run([S3FILES, "status", str(folder)], capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0 and shown.stdout.count("held back: written by a command that did not") == 3


def listing(client: Any, bucket: str) -> dict[str, tuple[str, str]]:
    """Every key with its ETag and mode: what S3 holds, to compare before and after a job."""
    found = {}
    for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        mode = client.head_object(Bucket=bucket, Key=obj["Key"]).get("Metadata", {}).get("mode", "")
        found[obj["Key"]] = (obj["ETag"], mode)
    return found


TREE_JOB = (
    "mkdir in/done && mv in/a.txt in/done/a.txt && rm in/b.txt && chmod 600 in/c.txt && rmdir in/empty"
    " && mkdir -p out/o && test ! -e in/a.txt && test ! -e in/b.txt && test ! -e in/empty"
    " && cat in/done/a.txt in/c.txt > out/o/r.txt && ls in > out/o/ls.txt"
    " && test \"$(stat -c %a in/c.txt)\" = 600; "
)


@pytest.mark.parametrize(
    ("ending", "status"), [("exit 3", 3), ("kill -9 $$", 137), ("exit 0", 0)], ids=["exit-3", "sigkill", "exit-0"]
)
def test_on_success_holds_back_changes_of_the_tree_too(
    daemons: Daemons, moto_server: MotoServer, bucket: str, boto3_client: Any, ending: str, status: int
) -> None:
    """mkdir, rename, delete, chmod and rmdir of objects that were in S3 before the job: the job sees them at
    once; S3 gets them only when it succeeds (then in order: copies, files, deletes), else it is unchanged,
    key for key and ETag for ETag."""
    for key, body in (("in/a.txt", b"alpha\n"), ("in/b.txt", b"bravo\n"), ("in/c.txt", b"charlie\n"), ("in/empty/", b"")):
        boto3_client.put_object(Bucket=bucket, Key=key, Body=body, Metadata={"mode": "33188"} if body else {})
    before = listing(boto3_client, bucket)
    job = exec_job(daemons, moto_server, bucket, TREE_JOB + ending, "--publish", "on-success", both=True)
    assert job.returncode == status, job.stderr
    assert mounted_below(daemons.root) == []
    after = listing(boto3_client, bucket)
    if status != 0:
        assert after == before
        assert s3_uploads(boto3_client, bucket) == []
        folder = daemons.root / "cache" / folder_name(moto_server.endpoint_url, bucket, "in/")
        shown = subprocess.run([S3FILES, "status", str(folder), "--json"], capture_output=True, text=True, timeout=30)
        changes = {(c["key"], c["change"]) for c in json.loads(shown.stdout)["held_changes"]}
        assert {("in/done/", "put"), ("in/done/a.txt", "copy"), ("in/a.txt", "delete"), ("in/b.txt", "delete")} <= changes
        assert {("in/c.txt", "copy"), ("in/empty/", "delete")} <= changes
        assert "change(s) of the tree kept" in job.stderr
        return
    assert sorted(after) == ["in/c.txt", "in/done/", "in/done/a.txt", "out/o/", "out/o/ls.txt", "out/o/r.txt"]
    assert after["in/done/a.txt"] == before["in/a.txt"]  # a server-side copy: the same ETag
    assert after["in/c.txt"][1] == str(0o100600)
    read = boto3_client.get_object(Bucket=bucket, Key="out/o/r.txt")["Body"].read()
    assert read == b"alpha\ncharlie\n"
    assert boto3_client.get_object(Bucket=bucket, Key="out/o/ls.txt")["Body"].read() == b"c.txt\ndone\n"


def test_on_success_with_discard_leaves_nothing(
    daemons: Daemons, moto_server: MotoServer, bucket: str, boto3_client: Any
) -> None:
    discarded = exec_job(
        daemons, moto_server, bucket, f"{WRITE}; exit 1", "--publish", "on-success", "--on-failure", "discard"
    )
    assert discarded.returncode == 1
    assert "discarded" in discarded.stderr
    assert s3_keys(boto3_client, bucket) == []  # (mkdir is held back too)
    folder = out_folder(daemons, moto_server, bucket)
    assert kept(folder) == []
    assert list((folder / "files").glob("*")) == []
    assert mounted_below(daemons.root) == []


def test_a_mount_that_cannot_start_runs_nothing_and_leaves_nothing_mounted(
    daemons: Daemons, moto_server: MotoServer, bucket: str, boto3_client: Any
) -> None:
    """One of two mounts fails (its bucket does not exist): status 125 with its one line, the command never
    runs, the other mount is stopped."""
    root = daemons.root
    proc = daemons.popen(
        [
            S3FILES, "exec",
            "--mount", f"s3://{bucket}/out/:{root}/out",
            "--mount", f"s3://no-such-bucket-{bucket}/:{root}/missing",
            "--endpoint-url", moto_server.endpoint_url, "--cache-dir", str(root / "cache"),
            "--", "touch", str(root / "ran"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    _, err = proc.communicate(timeout=JOB_TIMEOUT)
    assert proc.returncode == 125, err
    (line,) = err.splitlines()
    assert line.startswith(f"s3files: exec: cannot mount s3://no-such-bucket-{bucket}/ at {root}/missing: ")
    assert "no-such-bucket" in line.split(": ", 2)[2]
    assert not (root / "ran").exists() and mounted_below(root) == []


def test_the_container_entrypoint_runs_the_job_under_exec(
    daemons: Daemons, moto_server: MotoServer, bucket: str, boto3_client: Any
) -> None:
    """deploy/entrypoint.sh outside Docker with the real s3files (as the image runs it, the mount point a
    temporary folder): the job's file is in S3 when it exits."""
    data = daemons.root / "data"
    data.mkdir()
    env = {
        "PATH": f"{Path(S3FILES).parent}:/usr/bin:/bin",
        **{name: value for name, value in os.environ.items() if name.startswith("AWS_")},
        "S3FILES_SOURCE": f"s3://{bucket}/jobs/",
        "S3FILES_MOUNTPOINT": str(data),
        "S3FILES_ENDPOINT_URL": moto_server.endpoint_url,
        "S3FILES_CACHE_DIR": str(daemons.root / "cache"),
        "S3FILES_PUBLISH": "on-success",
    }
    entrypoint = Path(__file__).resolve().parent.parent / "deploy" / "entrypoint.sh"
    proc = daemons.popen(
        [str(entrypoint), "sh", "-c", 'echo hello > "$0/hello.txt"', str(data)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = proc.communicate(timeout=JOB_TIMEOUT)
    assert proc.returncode == 0, err
    assert s3_keys(boto3_client, bucket) == ["jobs/hello.txt"]  # held back while it ran, published at its exit 0
    assert mounted_below(daemons.root) == []


def two_free_ports() -> int:
    """A port P with P+1 free too (the metrics of two mounts)."""
    import socket

    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise AssertionError("no two free ports in a row")


def test_exec_serves_each_mounts_metrics(daemons: Daemons, moto_server: MotoServer, bucket: str) -> None:
    """--metrics-port P: the first mount's metrics on P, the second's on P+1, while the command runs."""
    port = two_free_ports()
    scrape = (
        f"{sys.executable} -c 'import urllib.request as u\n"
        f"for i in (0, 1): open(f\"m{{i}}.txt\", \"wb\").write(u.urlopen(f\"http://127.0.0.1:{{{port} + i}}/metrics\").read())'"
    )
    job = exec_job(daemons, moto_server, bucket, f"ls in out > /dev/null && {scrape}", "--metrics-port", str(port), both=True)
    assert job.returncode == 0, job.stderr
    for i in (0, 1):
        text = (daemons.root / f"m{i}.txt").read_text()
        assert "s3files_s3_requests_total" in text and "s3files_fuse_operations" in text, text[:500]
    bad = exec_job(daemons, moto_server, bucket, "true", "--metrics-port", "65535", both=True)
    assert bad.returncode == 125 and "--metrics-port must be a port number" in bad.stderr, bad.stderr


def test_a_daemon_killed_during_a_held_job_leaves_s3_as_it_was_until_asked(
    daemons: Daemons, moto_server: MotoServer, bucket: str, boto3_client: Any
) -> None:
    """kill -9 of both daemons while the command runs (their pids are in their cache folders' lock files):
    S3 stays as it was, even though the command then exits 0; the next job with --on-recovery upload-held
    makes every change the first one held back (its files, its mkdir, rename and delete)."""
    for key, body in (("in/a.txt", b"alpha\n"), ("in/b.txt", b"bravo\n")):
        boto3_client.put_object(Bucket=bucket, Key=key, Body=body)
    before = listing(boto3_client, bucket)
    locks = [
        daemons.root / "cache" / folder_name(moto_server.endpoint_url, bucket, prefix) / "lock" for prefix in ("in/", "out/")
    ]
    script = (
        "mkdir in/done && mv in/a.txt in/done/a.txt && rm in/b.txt && mkdir out/o && cat in/done/a.txt > out/o/r.txt"
        f" && kill -9 $(cat {locks[0]}) $(cat {locks[1]}); exit 0"
    )
    job = exec_job(daemons, moto_server, bucket, script, "--publish", "on-success", both=True)
    assert job.returncode == 1 and "its daemon could not be asked" in job.stderr, job.stderr
    assert mounted_below(daemons.root) == []
    assert listing(boto3_client, bucket) == before
    again = exec_job(daemons, moto_server, bucket, "true", "--on-recovery", "upload-held", both=True)
    assert again.returncode == 0, again.stderr
    assert sorted(listing(boto3_client, bucket)) == ["in/done/", "in/done/a.txt", "out/o/", "out/o/r.txt"]
    assert boto3_client.get_object(Bucket=bucket, Key="out/o/r.txt")["Body"].read() == b"alpha\n"
