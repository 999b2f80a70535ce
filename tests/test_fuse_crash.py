"""Stops, crashes and concurrent writers through real mounts run as daemons by the CLI (issue 16, "Must show").

Every mount here is ``s3files mount ... --foreground`` in a child process (tests/daemons.py), so a test can
signal it, kill -9 it by its pid, and mount again with the same ``--cache-dir``; each test unmounts every
mount and ends every process it started, whatever happens. What is checked: contents (sha256) in S3 and
in the cache folder (``--cache-dir``/<bucket>-<hash>/files/<id>.data + <id>.json), sizes, the errors the
programs see, the daemon's logs, its request counts (``s3files stats``, the control socket), ListMultipartUploads.

Counts are smaller than the issue's where its numbers would cost minutes (module constants below, each
saying what the issue asked for).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FULL_COUNTS, S3Server, rgw_in_full_runs
from daemons import Daemon, Daemons, s3_body, s3_keys, s3_uploads, sha
from faultproxy import FaultProxy

from s3files.options import MIB

pytestmark = pytest.mark.fuse

KIB = 1024

# The counts run with S3FILES_FULL_COUNTS=1; CI runs fewer to stay in its budget.
# Ten writers: 20 runs asked; each costs about 4 s on moto (every close publishes the 25 MiB file: parts
# copied inside S3), so 2 runs in CI (and a remount after each).
FULL = FULL_COUNTS
TEN_WRITERS_RUNS = 20 if FULL else 2
TEN_WRITERS = 10
TEN_WRITERS_FILE = 25 * MIB
TEN_WRITERS_CHUNK = 16 * KIB

# The issue asks for 8 processes x 50 rounds of `rm -f x; echo $i > x` (about 5 s on moto); 25 here.
RM_ECHO_PROCESSES = 8
RM_ECHO_ROUNDS = 50 if FULL else 25

# The issue asks for 40 rounds of two mounts and an SDK writer on one key (40 take about 7 s on moto).
CONFLICT_ROUNDS = 40 if FULL else 20

# S3 operations that change something: failing them (and only them) makes every upload fail while the
# mount can still look things up and read.
WRITES = frozenset(
    {
        "PutObject",
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPartCopy",
        "CompleteMultipartUpload",
        "CopyObject",
    }
)
# A refusal botocore does not retry: the close fails at once (an outage's 503s cost seconds of retries).
FAST_FAILURE = {"fail_status": 400, "fail_code": "InvalidRequest"}

# A program that writes a file and keeps it open: ``holder.py PATH FLAGS SIZE PAUSE_AT SEED`` opens PATH
# (FLAGS: t = O_TRUNC, c = O_CREAT), writes SIZE bytes of ``written(SEED, SIZE)`` in 1 MiB writes, says
# "paused N" after N = PAUSE_AT bytes and waits for a line on stdin, then says "wrote N" and waits for a line
# again before closing; then "closed 0", or "error ERRNO" as soon as any call fails.
HOLDER = textwrap.dedent(
    """\
    import os, random, sys
    path, flags, size, pause_at, seed = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    data = random.Random(seed).randbytes(size)
    def say(line):
        print(line, flush=True)
    try:
        fd = os.open(path, os.O_WRONLY | (os.O_TRUNC if "t" in flags else 0) | (os.O_CREAT if "c" in flags else 0))
        off = 0
        while off < size:
            if off == pause_at:
                say(f"paused {off}")
                sys.stdin.readline()
            stop = min(off + 1024 * 1024, size, pause_at if off < pause_at else size)
            off += os.write(fd, data[off:stop])
        say(f"wrote {off}")
        sys.stdin.readline()
        os.close(fd)
        say("closed 0")
    except OSError as exc:
        say(f"error {exc.errno}")
    """
)


def written(seed: int, size: int) -> bytes:
    """The bytes a holder with ``seed`` writes (the same generator in both processes)."""
    return random.Random(seed).randbytes(size)


class Holder:
    """A running HOLDER process (see above)."""

    def __init__(
        self, daemons: Daemons, path: Path, flags: str, size: int, pause_at: int = -1, seed: int = 1
    ):
        self.data = written(seed, size)
        self.proc = daemons.popen(
            [sys.executable, "-c", HOLDER, str(path), flags, str(size), str(pause_at), str(seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.said: list[str] = []

    def expect(self, prefix: str, timeout: float = 60.0) -> str:
        """Wait for the holder's next line; it must start with ``prefix``."""
        assert self.proc.stdout is not None
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        line = box[0].strip() if box else f"(nothing within {timeout} s)"
        self.said.append(line)
        assert line.startswith(prefix), self.said
        return line

    def go_on(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 60.0) -> str:
        """Let it go on to the end; its last line ("closed 0" or "error ERRNO")."""
        box: list[str] = []
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write("\n\n")
            self.proc.stdin.close()
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.read()))  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        lines = box[0].split() if box else []
        self.proc.wait(timeout)
        return " ".join(lines[-2:])




def cache_is_empty(daemon: Daemon) -> None:
    assert daemon.leftovers() == [], daemon.log()[-3000:]


def no_conflicts(client: Any, bucket: str) -> None:
    conflicts = [key for key in s3_keys(client, bucket) if "s3files-conflict" in key]
    assert conflicts == []


# -- 1. ten writers at their own offsets of one file ------------------------------------------------------


@rgw_in_full_runs
def test_ten_writers_at_their_own_offsets_all_land(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, daemons: Daemons, tmp_path: Path
) -> None:
    """Ten `dd conv=notrunc` processes write 16 KiB each at their own offsets into one 25 MiB file at once;
    after an unmount and a remount every write is there (sha256 of a local model), no dd failed, and
    nothing is left in the cache folder. Issue: 20 runs; TEN_WRITERS_RUNS here."""
    rng = random.Random(16)
    model = bytearray(rng.randbytes(TEN_WRITERS_FILE))
    s3_client.put_object(Bucket=s3_bucket, Key="big.bin", Body=bytes(model))
    daemon = daemons.new(s3_server.endpoint_url, s3_bucket)
    for run in range(TEN_WRITERS_RUNS):
        daemon.start()
        target = daemon.mountpoint / "big.bin"
        # Each run's remount sees what the last one wrote (the first run: the SDK's upload).
        assert sha(target.read_bytes()) == sha(bytes(model)), f"run {run}: not the model before writing"
        slots = rng.sample(range(TEN_WRITERS_FILE // TEN_WRITERS_CHUNK - 1), TEN_WRITERS)
        writers = []
        for i, slot in enumerate(slots):
            off = slot * TEN_WRITERS_CHUNK + rng.randrange(TEN_WRITERS_CHUNK)  # unaligned, never overlapping
            data = rng.randbytes(TEN_WRITERS_CHUNK)
            chunk = tmp_path / f"chunk{i}"
            chunk.write_bytes(data)
            model[off : off + len(data)] = data
            writers.append(
                daemons.popen(
                    [
                        "dd",
                        f"if={chunk}",
                        f"of={target}",
                        "bs=16K",
                        "count=1",
                        f"seek={off}",
                        "oflag=seek_bytes",
                        "conv=notrunc",
                        "status=none",
                    ],
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        failures = [(w.args, w.wait(60), w.communicate()[1]) for w in writers]
        assert [f for f in failures if f[1] != 0 or f[2]] == [], f"run {run}"
        assert daemon.unmount() == 0
        assert "Traceback" not in daemon.log()
        assert "not uploaded" not in daemon.log(), daemon.log()[-3000:]
        cache_is_empty(daemon)
        assert sha(s3_body(s3_client, s3_bucket, "big.bin")) == sha(bytes(model)), (
            f"run {run}: S3 lost a write"
        )
    daemon.start()
    assert sha((daemon.mountpoint / "big.bin").read_bytes()) == sha(bytes(model))
    assert daemon.unmount() == 0
    cache_is_empty(daemon)
    no_conflicts(s3_client, s3_bucket)
    assert s3_uploads(s3_client, s3_bucket) == []


# -- 2. rm -f x; echo $i > x from 8 processes of one mount ---------------------------------------------


@rgw_in_full_runs
def test_rm_and_echo_from_many_processes_never_conflict(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, daemons: Daemons
) -> None:
    """8 processes each run `rm -f x; echo $i > x` RM_ECHO_ROUNDS times at once through one mount: no
    command fails (no EIO: the mount never conflicts with itself), no conflict copy is written, and `x`
    holds one whole line, in S3 and through a remount. Issue: 8 x 50 rounds."""
    daemon = daemons.mount(s3_server.endpoint_url, s3_bucket)
    script = textwrap.dedent(
        """\
        i=$1; failed=0
        for n in $(seq ROUNDS); do
            rm -f x || { echo "rm $n failed" >&2; failed=1; }
            echo $i > x || { echo "echo $n failed" >&2; failed=1; }
        done
        exit $failed
        """
    ).replace("ROUNDS", str(RM_ECHO_ROUNDS))
    shells = [
        daemons.popen(
            ["sh", "-c", script, "sh", str(i)], cwd=daemon.mountpoint, stderr=subprocess.PIPE, text=True
        )
        for i in range(RM_ECHO_PROCESSES)
    ]
    results = [(shell.wait(120), shell.communicate()[1]) for shell in shells]
    assert results == [(0, "")] * RM_ECHO_PROCESSES, daemon.log()[-3000:]
    line = (daemon.mountpoint / "x").read_bytes()
    assert line in {f"{i}\n".encode() for i in range(RM_ECHO_PROCESSES)}
    assert daemon.unmount() == 0
    assert "Traceback" not in daemon.log()
    assert "conflict" not in daemon.log()
    assert s3_keys(s3_client, s3_bucket) == ["x"]
    assert s3_body(s3_client, s3_bucket, "x") == line
    cache_is_empty(daemon)
    daemon.start()
    assert (daemon.mountpoint / "x").read_bytes() == line
    assert daemon.unmount() == 0
    assert s3_uploads(s3_client, s3_bucket) == []


# -- 3. a stop while a program is rewriting a file -------------------------------------------------------


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """The fault proxy (tests/faultproxy.py) in front of ``s3_server`` (moto or RGW), no faults set."""
    with FaultProxy(s3_server.endpoint_url) as started:
        yield started


def record_of(daemon: Daemon, key: str) -> dict[str, Any]:
    found = [r for r in daemon.records() if r["key"] == key]
    assert len(found) == 1, [(r["key"], r["state"]) for r in daemon.records()]
    return found[0]


@rgw_in_full_runs
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["TERM", "INT", "HUP"])
def test_a_stop_never_publishes_a_file_still_being_written(
    signum: int, s3_client: Any, s3_bucket: str, proxy: FaultProxy, daemons: Daemons
) -> None:
    """SIGTERM, SIGINT or SIGHUP while programs are halfway through rewriting two files (O_TRUNC, half
    written, still open; one small enough to be held in memory, one on the cache disk), and after a third
    file's close failed to upload (S3 refused every write): the daemon stops cleanly; both keys keep their
    previous complete version; the cache folder holds each half-written state (bytes, size) with a record
    that is not acknowledged, and the closed file with an acknowledged one; the log names each path.
    A remount with --on-recovery upload publishes the closed file (one PUT) and not the others; a mount
    with --on-recovery discard then leaves the cache folder empty and S3 as it was."""
    report = b"".join(b"%04d,old row,%s\n" % (i, b"x" * 30) for i in range(1000))
    big = written(7, 3 * MIB)
    s3_client.put_object(Bucket=s3_bucket, Key="report.csv", Body=report)
    s3_client.put_object(Bucket=s3_bucket, Key="big.bin", Body=big)
    daemon = daemons.mount(proxy.endpoint_url, s3_bucket)
    half_report = Holder(
        daemons, daemon.mountpoint / "report.csv", "t", len(report), len(report) // 2, seed=2
    )
    half_big = Holder(daemons, daemon.mountpoint / "big.bin", "t", len(big), len(big) // 2, seed=3)
    half_report.expect("paused")
    half_big.expect("paused")
    closed = b"closed while S3 refused every write\n"
    proxy.set_faults(fail_every=1, fail_when=WRITES, **FAST_FAILURE)  # type: ignore[arg-type]
    with pytest.raises(OSError) as failed:
        (daemon.mountpoint / "closed.txt").write_bytes(closed)
    assert failed.value.errno == errno.EIO

    assert daemon.signal(signum) == 0
    log = daemon.log()
    assert "Traceback" not in log
    for holder in (half_report, half_big):
        assert holder.result() == f"error {errno.ENOTCONN}"  # the program is never told its file was saved
    assert sha(s3_body(s3_client, s3_bucket, "report.csv")) == sha(report)
    assert sha(s3_body(s3_client, s3_bucket, "big.bin")) == sha(big)
    assert "closed.txt" not in s3_keys(s3_client, s3_bucket)
    for key, holder in (("report.csv", half_report), ("big.bin", half_big)):
        record = record_of(daemon, key)
        half = holder.data[: len(holder.data) // 2]
        assert (record["acknowledged"], record["state"], record["size"]) == (False, "dirty", len(half))
        assert sha(record["data"]) == sha(half)
        assert re.search(
            rf"path='{re.escape(key)}' not uploaded \(still open for writing, never closed\)", log
        ), log
    record = record_of(daemon, "closed.txt")
    assert (record["acknowledged"], record["state"], record["data"]) == (True, "acked", closed)
    assert re.search(r"path='closed.txt' not uploaded \(acknowledged, upload failed\)", log), log

    proxy.clear_faults()
    daemon.extra = ("--on-recovery", "upload")
    daemon.start()
    assert daemon.requests() == {"head_bucket": 1, "put": 1}  # closed.txt, nothing else
    assert s3_body(s3_client, s3_bucket, "closed.txt") == closed
    assert sha(s3_body(s3_client, s3_bucket, "report.csv")) == sha(report)
    assert sha(s3_body(s3_client, s3_bucket, "big.bin")) == sha(big)
    assert sha((daemon.mountpoint / "report.csv").read_bytes()) == sha(report)
    log = daemon.log()
    assert "recovery: uploaded key='closed.txt'" in log
    for key in ("report.csv", "big.bin"):
        assert (
            f"recovery: kept key='{key}' (still open for writing when the daemon stopped, never closed)"
            in log
        )
    assert daemon.unmount() == 0
    assert sorted(r["key"] for r in daemon.records()) == ["big.bin", "report.csv"]
    assert all(r["acknowledged"] is False for r in daemon.records())

    daemon.extra = ("--on-recovery", "discard")
    daemon.start()
    assert daemon.unmount() == 0
    cache_is_empty(daemon)
    assert sha(s3_body(s3_client, s3_bucket, "report.csv")) == sha(report)
    assert sha(s3_body(s3_client, s3_bucket, "big.bin")) == sha(big)
    assert s3_keys(s3_client, s3_bucket) == ["big.bin", "closed.txt", "report.csv"]
    assert s3_uploads(s3_client, s3_bucket) == []


# -- 4. kill -9 of the daemon ---------------------------------------------------------------------------


# What a program sees once the daemon died: ECONNABORTED for a call in flight, ENOTCONN for later ones.
DEAD_MOUNT = {f"error {errno.ENOTCONN}", f"error {errno.ECONNABORTED}"}


def parts_sent(client: Any, bucket: str, key: str) -> int:
    """Parts of the multipart upload in progress at ``key`` (0 if there is none)."""
    uploads = [u for u in s3_uploads(client, bucket) if u["Key"] == key]
    if not uploads:
        return 0
    return len(client.list_parts(Bucket=bucket, Key=key, UploadId=uploads[0]["UploadId"]).get("Parts", []))


def wait_for(what: str, check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)


def discard_and_check_empty(daemon: Daemon) -> None:
    """Mount once with --on-recovery discard: afterwards the cache folder holds nothing."""
    daemon.extra = ("--on-recovery", "discard")
    daemon.start()
    assert daemon.unmount() == 0
    cache_is_empty(daemon)


@rgw_in_full_runs
@pytest.mark.parametrize("when", ["writing", "parts_sent"])
def test_kill_9_while_a_file_is_open_for_writing_publishes_nothing(
    when: str, s3_server: S3Server, s3_client: Any, s3_bucket: str, daemons: Daemons
) -> None:
    """kill -9 of the daemon (a) "writing": while a program writes a 64 MiB file over an existing key
    (killed once its first part was streamed, the program still writing or holding it open); (c)
    "parts_sent": after a 40 MiB file was written sequentially and all 5 of its parts were streamed,
    still open. After a remount with the same cache folder (--on-recovery upload): the key keeps its
    old version, the multipart upload the dead daemon began is aborted (ListMultipartUploads empty, one
    AbortMultipartUpload, nothing published), and the written bytes are kept with a record that is not
    acknowledged; (c) then mounts with --on-recovery keep, which keeps them too; --on-recovery discard
    empties the cache folder."""
    old = written(11, MIB)
    s3_client.put_object(Bucket=s3_bucket, Key="big.bin", Body=old)
    daemon = daemons.mount(s3_server.endpoint_url, s3_bucket)
    if when == "writing":
        holder = Holder(daemons, daemon.mountpoint / "big.bin", "t", 64 * MIB, seed=12)
        wait_for("a part streamed", lambda: parts_sent(s3_client, s3_bucket, "big.bin") >= 1)
    else:
        holder = Holder(daemons, daemon.mountpoint / "big.bin", "t", 40 * MIB, seed=13)
        holder.expect("wrote")
        wait_for("every part streamed", lambda: parts_sent(s3_client, s3_bucket, "big.bin") == 5)
    daemon.kill9()
    assert holder.result() in DEAD_MOUNT
    assert len(s3_uploads(s3_client, s3_bucket)) == 1  # the dead daemon's, aborted by the next mount

    for mode in ("upload", "keep") if when == "parts_sent" else ("upload",):
        daemon.extra = ("--on-recovery", mode)
        daemon.start()
        requests = daemon.requests()
        assert s3_uploads(s3_client, s3_bucket) == []
        assert sha(s3_body(s3_client, s3_bucket, "big.bin")) == sha(old)
        assert sha((daemon.mountpoint / "big.bin").read_bytes()) == sha(old)
        assert "recovery: kept key='big.bin' (still open for writing when the daemon stopped" in daemon.log()
        assert daemon.unmount() == 0
        published = {op: n for op, n in requests.items() if op in ("put", "complete_multipart", "copy")}
        assert published == {}
        assert requests["abort_multipart"] == (1 if mode == "upload" else 0)
        record = record_of(daemon, "big.bin")
        assert (record["acknowledged"], record["state"], record["upload_id"]) == (False, "dirty", None)
        data = record["data"]
        if when == "parts_sent":
            assert sha(data) == sha(holder.data)  # every part was read from the local copy to be sent
        else:  # a queued write (up to cache.WRITE_BEHIND_BYTES) may die with the daemon: a prefix is kept
            assert len(data) >= 8 * MIB and sha(data) == sha(holder.data[: len(data)])
    discard_and_check_empty(daemon)
    assert sha(s3_body(s3_client, s3_bucket, "big.bin")) == sha(old)
    assert s3_keys(s3_client, s3_bucket) == ["big.bin"]


@rgw_in_full_runs
def test_kill_9_after_a_failed_close_uploads_at_the_next_mount(
    s3_client: Any, s3_bucket: str, proxy: FaultProxy, daemons: Daemons
) -> None:
    """(b) A program writes a new file while S3 is up (its first parts stream), then the endpoint goes
    down (every request 503) and its close fails with EIO; kill -9 of the daemon; the endpoint comes back;
    a remount with the same cache folder publishes the file (sha256) resuming the dead daemon's multipart
    upload: only parts never sent are sent, nothing acknowledged is sent twice (request counts).
    ListMultipartUploads is empty and the cache folder too. The file is 20 MiB: two whole parts streamed
    before the outage, its 4 MiB tail never sent (a file whose every part was sent: the next test)."""
    daemon = daemons.mount(proxy.endpoint_url, s3_bucket)
    holder = Holder(daemons, daemon.mountpoint / "outage.bin", "tc", 20 * MIB, seed=21)
    holder.expect("wrote")
    streamed = 2  # whole parts, sent while writing
    wait_for("whole parts streamed", lambda: parts_sent(s3_client, s3_bucket, "outage.bin") == streamed)
    proxy.set_faults(fail_every=1)  # the endpoint is down: every request is a 503
    holder.go_on()
    assert holder.expect("") == f"error {errno.EIO}"
    assert "outage.bin" not in s3_keys(s3_client, s3_bucket)
    daemon.kill9()
    record = record_of(daemon, "outage.bin")
    assert (record["acknowledged"], record["state"]) == (True, "acked")
    assert sha(record["data"]) == sha(holder.data)

    proxy.clear_faults()
    daemon.start()
    requests = daemon.requests()
    assert "recovery: uploaded key='outage.bin'" in daemon.log()
    assert sha(s3_body(s3_client, s3_bucket, "outage.bin")) == sha(holder.data)
    assert sha((daemon.mountpoint / "outage.bin").read_bytes()) == sha(holder.data)
    assert daemon.unmount() == 0
    never_sent = 3 - streamed
    assert (requests["create_multipart"], requests["upload_part"], requests["complete_multipart"]) == (
        0,
        never_sent,
        1,
    )
    assert s3_uploads(s3_client, s3_bucket) == []
    cache_is_empty(daemon)
    assert s3_keys(s3_client, s3_bucket) == ["outage.bin"]


def test_kill_9_while_close_completes_the_upload_resumes_it(
    s3_client: Any, s3_bucket: str, proxy: FaultProxy, daemons: Daemons
) -> None:
    """kill -9 while a close is completing a 24 MiB file's multipart upload (every part sent; S3 answers
    the CompleteMultipartUpload with 503s): a remount with the same cache folder completes the upload the
    dead daemon began, sending no part again (one CompleteMultipartUpload, no UploadPart)."""
    daemon = daemons.mount(proxy.endpoint_url, s3_bucket)
    holder = Holder(daemons, daemon.mountpoint / "closing.bin", "tc", 24 * MIB, seed=31)
    holder.expect("wrote")
    proxy.set_faults(fail_every=1, fail_when="CompleteMultipartUpload")
    holder.go_on()
    wait_for("the completion refused", lambda: proxy.stats.snapshot()["faults"])
    daemon.kill9()
    assert holder.expect("error") in DEAD_MOUNT  # the close never returned success
    record = record_of(daemon, "closing.bin")
    assert (record["acknowledged"], record["state"], len(record["sent"])) == (True, "uploading", 3)

    proxy.clear_faults()
    daemon.start()
    requests = daemon.requests()
    assert sha(s3_body(s3_client, s3_bucket, "closing.bin")) == sha(holder.data)
    assert daemon.unmount() == 0
    assert (requests["create_multipart"], requests["upload_part"], requests["complete_multipart"]) == (
        0,
        0,
        1,
    )
    assert s3_uploads(s3_client, s3_bucket) == []
    cache_is_empty(daemon)


RENAME_FILES = 60


@rgw_in_full_runs
@pytest.mark.parametrize("phase", ["copying", "deleting"])
def test_kill_9_mid_folder_rename_then_renaming_again_completes_it(
    phase: str, s3_client: Any, s3_bucket: str, proxy: FaultProxy, daemons: Daemons
) -> None:
    """(d) kill -9 in the middle of renaming a folder of RENAME_FILES small files and a subfolder: while
    copying (S3 answers one key's copy with 503s) or while deleting (one key's delete). Then no key is in
    neither place; after a remount, renaming again completes: every file is at its new name with its bytes,
    nothing is left at the old one, and keys already copied are not copied again."""
    rng = random.Random(41)
    files = {f"f{i:02d}": rng.randbytes(rng.randrange(0, 3000)) for i in range(RENAME_FILES)}
    files.update({f"sub/g{i}": rng.randbytes(100) for i in range(5)})
    s3_client.put_object(Bucket=s3_bucket, Key="src/", Body=b"")
    for rel, data in files.items():
        s3_client.put_object(Bucket=s3_bucket, Key=f"src/{rel}", Body=data)
    daemon = daemons.mount(proxy.endpoint_url, s3_bucket)
    stalled = "/dst/f30" if phase == "copying" else "/src/f30"
    operation = "CopyObject" if phase == "copying" else "DeleteObject"
    proxy.set_faults(fail_every=1, fail_when=lambda r: r.operation == operation and r.path.endswith(stalled))
    mover = daemons.popen(
        [
            sys.executable,
            "-c",
            "import os, sys; os.rename(sys.argv[1], sys.argv[2])",
            str(daemon.mountpoint / "src"),
            str(daemon.mountpoint / "dst"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for("the stalled request", lambda: proxy.stats.snapshot()["faults"])
    assert mover.poll() is None, mover.communicate()  # still renaming (the stalled request is retried)
    daemon.kill9()
    assert mover.wait(30) != 0
    every = {f"src/{rel}" for rel in files} | {"src/"}
    left = set(s3_keys(s3_client, s3_bucket))
    for key in every:
        assert key in left or "dst/" + key[4:] in left, f"{key} is in neither place"
    copied = {key for key in left if key.startswith("dst/")}
    if phase == "copying":
        assert every <= left  # copy all, then delete all: nothing was deleted yet
    else:
        assert copied >= {f"dst/{rel}" for rel in files}

    proxy.clear_faults()
    daemon.start()
    os.rename(daemon.mountpoint / "src", daemon.mountpoint / "dst")
    assert sorted(os.listdir(daemon.mountpoint)) == ["dst"]
    for rel, data in files.items():
        assert sha((daemon.mountpoint / "dst" / rel).read_bytes()) == sha(data), rel
    requests = daemon.requests()
    assert daemon.unmount() == 0
    assert s3_keys(s3_client, s3_bucket, "src") == []
    assert s3_keys(s3_client, s3_bucket) == sorted(["dst/", *(f"dst/{rel}" for rel in files)])  # marker too
    for rel, data in files.items():
        assert s3_body(s3_client, s3_bucket, f"dst/{rel}") == data
    missing = len(files) + 1 - len(copied)  # files and the folder's marker
    assert requests["copy"] <= missing, (requests, len(copied))
    assert s3_uploads(s3_client, s3_bucket) == []
    cache_is_empty(daemon)


@rgw_in_full_runs
def test_a_failed_close_is_retried_in_the_background_and_stays_listed(
    s3_client: Any, s3_bucket: str, proxy: FaultProxy, daemons: Daemons
) -> None:
    """A close whose upload failed (S3 refused every write: EIO) leaves the file listed, with its size and
    bytes, while the mount runs; once S3 takes writes again the mount publishes it by itself (no close,
    no remount), and the cache folder is empty after the unmount. (Issue: a failed upload was retried
    only at unmount, and its folder could not be listed meanwhile.)"""
    daemon = daemons.mount(proxy.endpoint_url, s3_bucket)
    os.mkdir(daemon.mountpoint / "out")
    data = written(51, 3 * MIB)
    proxy.set_faults(fail_every=1, fail_when=WRITES, **FAST_FAILURE)  # type: ignore[arg-type]
    with pytest.raises(OSError) as failed:
        (daemon.mountpoint / "out" / "result.bin").write_bytes(data)
    assert failed.value.errno == errno.EIO
    time.sleep(1.2)  # past --metadata-ttl: the folder is listed again
    assert os.listdir(daemon.mountpoint / "out") == ["result.bin"]
    assert os.stat(daemon.mountpoint / "out" / "result.bin").st_size == len(data)
    # Not opened here: the release of any handle publishes too, and this checks the background retry.
    record = record_of(daemon, "out/result.bin")
    # "uploading" while a background retry is under way (it fails too until the faults are cleared)
    assert record["acknowledged"] and record["state"] in ("acked", "uploading"), record
    assert sha(record["data"]) == sha(data)
    assert "out/result.bin" not in s3_keys(s3_client, s3_bucket)
    proxy.clear_faults()
    wait_for("the background retry", lambda: "out/result.bin" in s3_keys(s3_client, s3_bucket), timeout=20)
    assert sha(s3_body(s3_client, s3_bucket, "out/result.bin")) == sha(data)
    assert sha((daemon.mountpoint / "out" / "result.bin").read_bytes()) == sha(data)
    assert daemon.unmount() == 0
    assert "op=upload path='out/result.bin' uploaded after an earlier failure" in daemon.log()
    cache_is_empty(daemon)
    assert s3_uploads(s3_client, s3_bucket) == []


# A program that writes a file again: ``rewriter.py PATH OFFSET LENGTH SIZE`` opens PATH O_RDWR, writes
# LENGTH bytes b"N" at OFFSET, truncates it to SIZE, says "rewritten" and waits for a line before closing.
REWRITER = textwrap.dedent(
    """\
    import os, sys
    path, off, length, size = sys.argv[1], *map(int, sys.argv[2:5])
    fd = os.open(path, os.O_RDWR)
    os.pwrite(fd, b"N" * length, off)
    os.ftruncate(fd, size)
    print("rewritten", flush=True)
    sys.stdin.readline()
    try:
        os.close(fd)
    except OSError:
        pass
    """
)


@rgw_in_full_runs
def test_kill_9_after_a_failed_close_and_a_rewrite_publishes_the_closed_version(
    s3_client: Any, s3_bucket: str, proxy: FaultProxy, daemons: Daemons
) -> None:
    """A close whose upload failed (S3 refused every write: EIO), then a program opens the file again,
    overwrites its middle and truncates it, and holds it open; kill -9 of the daemon; S3 takes writes
    again; a remount with the same cache folder publishes exactly the closed bytes (sha256), never the
    newer ones, which stay in the cache folder in a record that is not acknowledged (reported as never
    closed, at every mount). The closed version kept aside (the bytes the rewrite destroyed) is in the
    record and the side file ``files/<id>.acked`` until then."""
    daemon = daemons.mount(proxy.endpoint_url, s3_bucket)
    path = daemon.mountpoint / "notes.bin"
    closed = written(61, 3 * MIB + 5)
    proxy.set_faults(fail_every=1, fail_when=WRITES, **FAST_FAILURE)  # type: ignore[arg-type]
    with pytest.raises(OSError) as failed:
        path.write_bytes(closed)
    assert failed.value.errno == errno.EIO
    off, length, size = MIB, MIB, 2 * MIB + 7
    newer = (closed[:off] + b"N" * length + closed[off + length :])[:size]
    rewriter = daemons.popen(
        [sys.executable, "-c", REWRITER, str(path), str(off), str(length), str(size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert rewriter.stdout is not None and rewriter.stdout.readline().strip() == "rewritten"
    daemon.kill9()
    record = record_of(daemon, "notes.bin")
    assert (record["state"], record["acknowledged"]) == ("rewritten", False), record
    assert record["acked"]["size"] == len(closed)
    saved = sum(length for _, length, _ in record["acked"]["extents"])
    assert saved == length + (len(closed) - size)  # what the write overwrote and the truncate cut
    assert "notes.bin" not in s3_keys(s3_client, s3_bucket)

    proxy.clear_faults()
    daemon.start()
    assert "recovery: uploaded key='notes.bin'" in daemon.log()
    assert sha(s3_body(s3_client, s3_bucket, "notes.bin")) == sha(closed)
    assert sha(path.read_bytes()) == sha(closed)
    assert daemon.unmount() == 0
    record = record_of(daemon, "notes.bin")
    assert (record["state"], record["acknowledged"], record["acked"]) == ("dirty", False, None)
    assert sha(record["data"]) == sha(newer)
    assert not any(name.endswith(".acked") for name in daemon.leftovers())
    assert s3_uploads(s3_client, s3_bucket) == []
    daemon.start()  # kept and reported again, never published
    assert "recovery: kept key='notes.bin' (still open for writing when the daemon stopped" in daemon.log()
    assert sha(s3_body(s3_client, s3_bucket, "notes.bin")) == sha(closed)
    assert daemon.unmount() == 0
    discard_and_check_empty(daemon)
    assert sha(s3_body(s3_client, s3_bucket, "notes.bin")) == sha(closed)


# -- 5. two mounts and an SDK writer on one key ----------------------------------------------------------

CONFLICT_NAME = re.compile(r"^three\.txt\.s3files-conflict-\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{6}$")
SAVED_AS = re.compile(
    r"op=flush path='/three\.txt' key='three\.txt' errno=EIO: three\.txt was changed by someone else; your version was saved as (\S+)"
)


def test_two_mounts_and_an_sdk_writer_every_losing_version_is_kept(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, daemons: Daemons
) -> None:
    """Two mounts (two daemons, two cache folders) and an SDK writer on one key, CONFLICT_ROUNDS rounds
    (issue: 40). In each round a program on each mount opens the file (O_TRUNC), then all three at once:
    the programs write their own content and close, the SDK puts its own. A close that lost (EIO) has its
    version in a conflict copy of its own, byte for byte: the conflict copies' bytes are exactly the losing
    versions, every name is unique (ms + random), and the log of the losing mount names, for each EIO,
    the copy that holds its bytes. A close that returned 0 left no conflict copy. The key holds the
    version of a writer that did not lose. Round 0 writes 9 MiB versions (multipart uploads)."""
    s3_client.put_object(Bucket=s3_bucket, Key="three.txt", Body=b"before\n")
    mounts = {
        "a": daemons.mount(s3_server.endpoint_url, s3_bucket, name="a", cache="cache-a"),
        "b": daemons.mount(s3_server.endpoint_url, s3_bucket, name="b", cache="cache-b"),
    }
    lost: dict[str, list[bytes]] = {"a": [], "b": []}
    for round_ in range(CONFLICT_ROUNDS):
        repeat = 9 * MIB // 40 if round_ == 0 else 1 + round_ * 7

        def content(writer: str, round_: int = round_, repeat: int = repeat) -> bytes:
            return (f"round {round_:03d} by {writer:5}\n" * repeat).encode()[: repeat * 40]

        files = {name: open(m.mountpoint / "three.txt", "wb") for name, m in mounts.items()}
        start = threading.Barrier(3)
        outcome: dict[str, int] = {}

        def write_and_close(
            name: str, start: threading.Barrier = start, outcome: dict[str, int] = outcome, files: Any = files
        ) -> None:
            start.wait(10)
            try:
                files[name].write(content(name))
                files[name].close()
                outcome[name] = 0
            except OSError as exc:
                outcome[name] = exc.errno or -1

        def sdk_put(start: threading.Barrier = start) -> None:
            start.wait(10)
            s3_client.put_object(Bucket=s3_bucket, Key="three.txt", Body=content("sdk"))

        threads = [threading.Thread(target=write_and_close, args=(name,)) for name in mounts]
        threads.append(threading.Thread(target=sdk_put))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert set(outcome.values()) <= {0, errno.EIO} and len(outcome) == 2, (round_, outcome)
        assert list(outcome.values()).count(0) <= 1, (round_, outcome)  # both opened the same version
        for name, code in outcome.items():
            if code == errno.EIO:
                lost[name].append(content(name))
        at_key = s3_body(s3_client, s3_bucket, "three.txt")
        assert at_key in {content(n) for n in ("a", "b", "sdk") if outcome.get(n, 0) == 0}, round_

    keys = s3_keys(s3_client, s3_bucket)
    conflicts = [key for key in keys if key != "three.txt"]
    assert all(CONFLICT_NAME.match(key) for key in conflicts), conflicts
    held = sorted(s3_body(s3_client, s3_bucket, key) for key in conflicts)
    assert [sha(b) for b in held] == [sha(b) for b in sorted(lost["a"] + lost["b"])]
    assert sum(len(v) for v in lost.values()) >= CONFLICT_ROUNDS  # at least one loser per round
    for name, daemon in mounts.items():
        assert daemon.unmount() == 0
        named = SAVED_AS.findall(daemon.all_logs())
        assert len(named) == len(lost[name]), (name, named)
        assert sorted(sha(s3_body(s3_client, s3_bucket, key)) for key in named) == sorted(
            sha(b) for b in lost[name]
        )
        assert "Traceback" not in daemon.all_logs()
        cache_is_empty(daemon)
    assert s3_uploads(s3_client, s3_bucket) == []
