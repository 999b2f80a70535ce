"""A local S3 (moto's server) in a subprocess on 127.0.0.1, for tests, benchmarks and demos.

Owns: one child process per ``MotoServer`` and its log file. Must not: bind anything but 127.0.0.1, leave
the child running (``stop()`` terminates it by pid, then kills it), or wait unboundedly.

Why a subprocess and not moto's in-process mock: the aiobotocore store must be tested over real HTTP
(connection pool, retries, error bodies), and FUSE tests mount from other processes. botocore is not
imported here (the store package owns it); bucket creation is delegated lazily to ``s3files.store.s3``.
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Self

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


class MotoServerError(RuntimeError):
    """The moto server could not be started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller retries if it is taken since)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class MotoServer:
    """A running ``python -m moto.server`` child. ``endpoint_url`` is what clients use."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_file: IO[bytes], auth: bool) -> None:
        self.process = process
        self.port = port
        self.auth = auth
        self._log_file = log_file

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, limit: int = 4000) -> str:
        """The end of the server's output (for error messages)."""
        try:
            self._log_file.flush()
            self._log_file.seek(0, os.SEEK_END)
            size = self._log_file.tell()
            self._log_file.seek(max(0, size - limit))
            return self._log_file.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""

    def create_bucket(self, name: str, region: str = "us-east-1") -> None:
        """Create bucket ``name`` on this server (with whatever credentials the environment has)."""
        from s3files.store.s3 import create_bucket

        create_bucket(name, endpoint_url=self.endpoint_url, region=region)

    def reset(self, timeout: float = 10.0) -> None:
        """Drop every bucket and object (moto's reset API)."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request("POST", "/moto-api/reset")
            conn.getresponse().read()
        finally:
            conn.close()

    def require_auth(self, timeout: float = 10.0) -> None:
        """From now on check every request's signature and access key (moto's reset-auth API), as
        ``auth=True`` does from the start: a test first sets up IAM users, keys and buckets unchecked."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request("POST", "/moto-api/reset-auth", body=b"0", headers={"Content-Type": "text/plain"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise MotoServerError(f"moto's reset-auth answered HTTP {response.status}")
        finally:
            conn.close()
        self.auth = True

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate our child (by pid), kill it if it does not exit within ``timeout``; idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("moto server pid %d ignored SIGTERM; killing it", self.process.pid)
                self.process.kill()
                self.process.wait(timeout)
        if not self._log_file.closed:
            self._log_file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _answers_http(port: int, timeout: float) -> bool:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", "/moto-api/")
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _spawn(port: int, auth: bool, startup_timeout: float) -> MotoServer:
    env = os.environ.copy()
    if auth:
        # moto authenticates every request after this many unauthenticated ones: 0 means "all", so
        # unknown access keys get InvalidAccessKeyId, as on AWS.
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    else:
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
    # The server logs each request to stderr; a temp file (not a pipe nobody reads) so it can never block.
    log_file = tempfile.TemporaryFile(prefix="moto-server-")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
    )
    server = MotoServer(process, port, log_file, auth)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if not server.running():
            tail = server.log_tail()
            server.stop()
            raise MotoServerError(f"moto server on port {port} exited with {process.returncode}: {tail}")
        if _answers_http(port, timeout=1.0):
            log.debug("moto server pid %d answering on %s", process.pid, server.endpoint_url)
            return server
        time.sleep(0.05)
    tail = server.log_tail()
    server.stop()
    raise MotoServerError(f"moto server on port {port} did not answer within {startup_timeout} s: {tail}")


def start_moto_server(
    port: int | None = None, *, auth: bool = False, startup_timeout: float = 20.0
) -> MotoServer:
    """Start moto's S3 server on 127.0.0.1 (a free port unless ``port`` is given) and wait until it answers.

    ``auth=True`` makes moto check signatures and access keys, so bad credentials fail as on AWS.
    The caller must ``stop()`` it (or use ``running_moto_server``).
    """
    attempts = 1 if port is not None else 3  # a free port can be taken between probe and bind: retry
    last: MotoServerError | None = None
    for _ in range(attempts):
        try:
            return _spawn(port if port is not None else free_port(), auth, startup_timeout)
        except MotoServerError as exc:
            last = exc
    assert last is not None
    raise last


@contextmanager
def running_moto_server(port: int | None = None, *, auth: bool = False) -> Iterator[MotoServer]:
    """``with running_moto_server() as server:`` - started for the block, stopped after it."""
    server = start_moto_server(port, auth=auth)
    try:
        yield server
    finally:
        server.stop()
