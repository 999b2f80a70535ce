"""A throw-away single-node Ceph RadosGW S3 server on 127.0.0.1, for tests and benchmarks.

Why this exists: moto's S3 emulator answers a ranged GET by reading the whole object, so any figure about
ranged reads or read-ahead measured against it is meaningless. RadosGW (Ceph's S3 gateway) serves ranges
for real and behaves like a production S3 implementation, at the cost of a mon + OSD + radosgw bring-up
(about 4-5 s, Ceph 16.2, memstore OSD: objects live in RAM).

This module owns only the Python side: it runs ``scripts/rgw.sh`` (``install``, ``start``, ``stop``; the
script sits at the repository root beside ``s3files/``) and parses the ``KEY=VALUE`` lines it prints. All
Ceph knowledge lives in the script, which guarantees that every file of the cluster lives under the work
directory and that it only ever signals its own daemons. Nothing here imports boto or pyfuse3, and nothing
in the file system itself depends on this module.

Usage::

    with running_rgw_server() as rgw:
        s3 = boto3.client("s3", endpoint_url=rgw.endpoint_url, aws_access_key_id=rgw.access_key,
                          aws_secret_access_key=rgw.secret_key, region_name=rgw.region,
                          config=Config(s3={"addressing_style": "path"}))
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)

#: Bounds on the script's subcommands. The script bounds its own waits (120 s each); these are backstops.
INSTALL_TIMEOUT_S = 900.0
START_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 300.0
LOG_TAIL_LINES = 25


def find_rgw_script() -> Path:
    """Return ``scripts/rgw.sh`` of the source checkout this package was imported from."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "rgw.sh"
    if not script.is_file():
        raise RuntimeError(
            f"RadosGW helper script not found at {script}: RgwServer needs a source checkout of s3files "
            "(scripts/ beside s3files/), not an installed wheel"
        )
    return script


def _run(script: Path, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["bash", str(script), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"rgw.sh {' '.join(args)} did not finish within {timeout:.0f} s") from exc


def _log_tail(message: str, workdir: Path) -> str:
    """The last lines of the first log named in the script's error line, else of radosgw's own log."""
    named = re.findall(r"\(log: ([^,)]+)", message)
    candidates = [Path(p) for p in named] + [workdir / "log" / "client.rgw.a.log"]
    for path in candidates:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        return f"--- last {LOG_TAIL_LINES} lines of {path} ---\n" + "\n".join(lines[-LOG_TAIL_LINES:])
    return ""


def _failure(what: str, result: subprocess.CompletedProcess[str], workdir: Path) -> RuntimeError:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    line = lines[-1] if lines else f"exit status {result.returncode}, no message"
    tail = _log_tail(line, workdir)
    return RuntimeError(f"{what} failed: {line}" + (f"\n{tail}" if tail else ""))


def _parse_key_values(stdout: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Z_]+", key):
            values[key] = value.strip()
    return values


@dataclass
class RgwServer:
    """A running RadosGW started by ``RgwServer.start()``; ``stop()`` ends it (idempotent)."""

    workdir: Path
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    script: Path = field(default_factory=find_rgw_script, repr=False)
    #: True when start() made a temporary work directory, which stop() then removes.
    owns_workdir: bool = False
    _stopped: bool = field(default=False, init=False, repr=False)

    @classmethod
    def start(cls, workdir: Path | None = None, port: int | None = None) -> RgwServer:
        """Install Ceph if missing, bring up (or reuse) the server in ``workdir`` and return it.

        With ``workdir=None`` a temporary directory is made and removed again by ``stop()``. With
        ``port=None`` the script picks a free port (or keeps the one ``workdir`` already uses). Raises
        RuntimeError with one line saying what failed, followed by the tail of the relevant log.
        """
        script = find_rgw_script()
        owns = workdir is None
        wd = Path(tempfile.mkdtemp(prefix="s3files-rgw-")) if workdir is None else Path(workdir)
        installed = _run(script, ["install"], INSTALL_TIMEOUT_S)
        if installed.returncode != 0:
            raise _failure("installing Ceph (rgw.sh install)", installed, wd)
        args = ["start", str(wd)] + ([str(port)] if port is not None else [])
        log.info("starting RadosGW in %s", wd)
        try:
            started = _run(script, args, START_TIMEOUT_S)
        except RuntimeError:
            _run(script, ["stop", str(wd)], STOP_TIMEOUT_S)  # leave no half-started daemons behind
            raise
        if started.returncode != 0:
            error = _failure(f"starting RadosGW in {wd}", started, wd)
            _run(script, ["stop", str(wd)], STOP_TIMEOUT_S)  # the work directory stays, for its logs
            raise error
        values = _parse_key_values(started.stdout)
        missing = {"ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} - values.keys()
        if missing:
            _run(script, ["stop", str(wd)], STOP_TIMEOUT_S)
            raise RuntimeError(
                f"rgw.sh start {wd} printed no {', '.join(sorted(missing))}; stdout was: {started.stdout!r}"
            )
        server = cls(
            workdir=wd,
            endpoint_url=values["ENDPOINT_URL"],
            access_key=values["AWS_ACCESS_KEY_ID"],
            secret_key=values["AWS_SECRET_ACCESS_KEY"],
            script=script,
            owns_workdir=owns,
        )
        log.info("RadosGW up at %s (work directory %s)", server.endpoint_url, wd)
        return server

    def add_key(self, access_key: str, secret_key: str) -> None:
        """Give the S3 user one more key pair (``access_key``: letters and digits)."""
        result = _run(self.script, ["key", str(self.workdir), "add", access_key, secret_key], START_TIMEOUT_S)
        if result.returncode != 0:
            raise _failure(f"adding key {access_key} to RadosGW in {self.workdir}", result, self.workdir)

    def remove_key(self, access_key: str) -> None:
        """Take the key ``access_key`` away from the S3 user: RadosGW refuses it from then on."""
        result = _run(self.script, ["key", str(self.workdir), "rm", access_key], START_TIMEOUT_S)
        if result.returncode != 0:
            raise _failure(f"removing key {access_key} from RadosGW in {self.workdir}", result, self.workdir)

    def stop(self) -> None:
        """Stop the daemons of this work directory (bounded) and remove it if start() created it."""
        if self._stopped:
            return
        result = _run(self.script, ["stop", str(self.workdir)], STOP_TIMEOUT_S)
        if result.returncode != 0:
            raise _failure(f"stopping RadosGW in {self.workdir}", result, self.workdir)
        self._stopped = True
        if self.owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextmanager
def running_rgw_server(workdir: Path | None = None, port: int | None = None) -> Iterator[RgwServer]:
    """``RgwServer.start(workdir, port)``, stopped again on exit (also on error)."""
    server = RgwServer.start(workdir, port)
    try:
        yield server
    finally:
        server.stop()
