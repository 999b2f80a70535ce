"""s3files daemons as a user runs them, for tests that stop, signal or kill -9 the mount.

Owns: ``Daemon`` (one ``s3files mount ... --foreground`` child process, started with the CLI, with its own
log file; its statistics asked through its control socket as ``s3files stats`` asks), ``Daemons`` (every daemon and helper process a test started, ended by pid
and unmounted in ``close``), and small helpers to read what a daemon left in its cache folder
(``--cache-dir``/<bucket>-<hash>/files/<id>.data + <id>.json, see s3files/core/records.py) and in S3.

Must not: end any process it did not start, or leave a mount behind (``close`` unmounts, lazily if it
must, whatever state the daemon is in: running, stopped, or killed with its FUSE connection dead).
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3files.control import ControlError, stats_of
from s3files.core.records import folder_name, parse_record
from s3files.mountinfo import mount_entry

S3FILES = str(Path(sys.executable).with_name("s3files"))
START_TIMEOUT = 20.0


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DaemonError(AssertionError):
    """A daemon did not start, answer or stop as the test expected (the message holds its log's end)."""


@dataclass
class Daemon:
    """One ``s3files mount s3://BUCKET/ MOUNTPOINT --foreground`` child (see the module docstring)."""

    endpoint_url: str
    bucket: str
    mountpoint: Path
    cache_dir: Path
    log_file: Path
    extra: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None  # the daemon's environment (default: the test's)
    proc: subprocess.Popen[bytes] | None = None
    _log_offset: int = 0

    @property
    def folder(self) -> Path:
        """The daemon's cache folder for this bucket (records.folder_name, as the daemon computes it)."""
        return self.cache_dir / folder_name(self.endpoint_url, self.bucket, "")

    @property
    def files(self) -> Path:
        return self.folder / "files"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        return [
            S3FILES, "mount", f"s3://{self.bucket}/", str(self.mountpoint),
            "--endpoint-url", self.endpoint_url,
            "--cache-dir", str(self.cache_dir),
            "--log-file", str(self.log_file),
            "--foreground",
            *self.extra,
        ]  # fmt: skip

    def start(self, timeout: float = START_TIMEOUT) -> Daemon:
        """Start the daemon and return once it says "mounted" in its log (after recovery and INIT)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        if mount_entry(self.mountpoint) is None:  # (a stale mount left there fails every stat)
            self.mountpoint.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=None if self.env is None else dict(self.env),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "mounted s3://" in self.log() and mount_entry(self.mountpoint) is not None:
                return self
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise DaemonError(f"daemon exited with {self.proc.returncode}: {err}\n{self.log()[-3000:]}")
            time.sleep(0.05)
        raise DaemonError(f"daemon did not mount within {timeout} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        """This run's log (since the last ``start``)."""
        try:
            with open(self.log_file, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def all_logs(self) -> str:
        """Every run's log written to this daemon's log file."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """The daemon's statistics, as ``s3files stats --json`` gets them (its control socket)."""
        try:
            return stats_of(self.mountpoint, self.cache_dir, timeout)
        except ControlError as exc:
            raise DaemonError(f"no statistics: {exc}\n{self.log()[-3000:]}") from None

    def requests(self) -> Counter[str]:
        """S3 requests this daemon sent so far, by operation."""
        return Counter(self.stats()["requests"])

    def signal(self, signum: int, timeout: float = 60.0) -> int:
        """Send ``signum`` and wait for the daemon to exit; its exit status."""
        assert self.proc is not None
        self.proc.send_signal(signum)
        return self.wait(timeout)

    def unmount(self, timeout: float = 60.0) -> int:
        """``s3files unmount`` (as a user would), then wait for the daemon to exit; its exit status."""
        done = subprocess.run(
            [S3FILES, "unmount", str(self.mountpoint)], capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            raise DaemonError(f"s3files unmount failed: {done.stderr}")
        return self.wait(timeout)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise DaemonError(f"daemon did not exit within {timeout} s:\n{self.log()[-3000:]}") from None
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code

    def kill9(self) -> None:
        """SIGKILL the daemon (its FUSE connection dies with it) and detach the dead mount."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.detach()

    def detach(self) -> None:
        """Unmount the mount point if something is still mounted there (lazily if it is busy)."""
        if mount_entry(self.mountpoint) is None:
            return
        for args in (["-u"], ["-uz"]):
            subprocess.run(["fusermount3", *args, str(self.mountpoint)], capture_output=True, timeout=30)
            if mount_entry(self.mountpoint) is None:
                return
        subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True, timeout=30)

    def close(self) -> None:
        """End the daemon if it still runs (SIGKILL by pid) and leave nothing mounted."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.detach()

    # -- the cache folder ------------------------------------------------------------------------------

    def records(self) -> list[dict[str, Any]]:
        """Every record (``files/<id>.json``) in the cache folder, each with its data file's bytes under
        ``"data"`` (None when it has none)."""
        found = []
        if not self.files.is_dir():
            return found
        for path in sorted(self.files.glob("*.json")):
            record = parse_record(path.read_bytes())
            data = path.with_suffix(".data")
            record["data"] = data.read_bytes() if data.exists() else None
            found.append(record)
        return found

    def leftovers(self) -> list[str]:
        """Names of the files in the cache folder's ``files/`` (none after a clean unmount)."""
        return sorted(p.name for p in self.files.iterdir()) if self.files.is_dir() else []


@dataclass
class Daemons:
    """Every daemon and helper process one test started; ``close`` ends them all by pid and unmounts."""

    root: Path
    daemons: list[Daemon] = field(default_factory=list)
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def new(
        self,
        endpoint_url: str,
        bucket: str,
        name: str = "m",
        cache: str = "cache",
        extra: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
    ) -> Daemon:
        """A daemon (not started) mounting ``bucket`` at ``root/name`` with cache dir ``root/cache``; its
        log file is named after the mount point, shared by its restarts."""
        daemon = Daemon(
            endpoint_url,
            bucket,
            self.root / name,
            self.root / cache,
            self.root / f"{name}.log",
            extra,
            env,
        )
        self.daemons.append(daemon)
        return daemon

    def mount(self, endpoint_url: str, bucket: str, **kwargs: Any) -> Daemon:
        return self.new(endpoint_url, bucket, **kwargs).start()

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(args, **kwargs)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        for daemon in self.daemons:
            daemon.close()


# -- S3 as the tests see it (a boto3 client) -----------------------------------------------------------


def s3_keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return sorted(keys)


def s3_body(client: Any, bucket: str, key: str) -> bytes:
    return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def s3_uploads(client: Any, bucket: str) -> list[dict[str, Any]]:
    """Multipart uploads in progress (ListMultipartUploads)."""
    return list(client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))
