"""An S3-shaped network on loopback: a TCP forwarder between the benchmark's clients and its embedded server.

Owns: ``--network s3-like``. Real S3 answers every request after tens of milliseconds, carries on the order
of 100 MB/s per TCP connection, and gets its throughput from many requests in flight; a loopback server has
none of that, so there only client CPU is measured. This kernel has no ``netem``, so the shaping is done by
a forwarder on 127.0.0.1 that every client (SDK, baseline, mounts, peers) is pointed at instead of the server:

- latency: HTTP/1.1 keep-alive without pipelining means the first client bytes on a new connection, or the
  first after the server last answered, start a request; the forwarder holds those back by the latency
  before passing them on (one one-way delay per request, so the time to first byte is latency + server time;
  a ``100-continue`` exchange costs a second one, as on a real network);
- a cap per connection and direction: each connection's bytes are paced by a virtual clock (GCRA) of its
  own, with no burst, so M bytes take at least M / cap;
- a cap for the whole link per direction (a full-duplex NIC): one shared virtual clock.

Bytes never enter Python: ``os.splice`` moves them socket -> pipe -> socket in the kernel, in bounded
chunks; Python only decides when. Two threads per connection (one per direction, blocking splices that
release the GIL), at most ``max_connections`` connections (idle keep-alive ones count; more wait in the
listen backlog), small thread stacks. It runs as its own process (``python -m s3files_bench.netshape``), so its CPU is measured apart
from the clients' (``Forwarder.cpu_seconds``, /proc/PID/stat), and everything it holds goes with it: it
exits on SIGTERM or SIGINT, and by itself once its parent is gone. ``shaped`` starts and stops it for the
bench.

Must not: copy bytes in Python, reorder or alter bytes, listen anywhere but 127.0.0.1, outlive the bench.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

MIB = 1024 * 1024
HOST = "127.0.0.1"
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ exists from Python 3.10 on Linux; the number is the kernel's
MAX_CHUNK = 256 * 1024  # bytes moved per splice at most: how coarse the pacing is at high rates
FDS_PER_CONNECTION = 6  # two sockets, two pipes
MIN_CHUNK = 16 * 1024
THREAD_STACK = 256 * 1024
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Shape:
    """What the network does to traffic. Caps in bytes per second; None: no cap."""

    latency_s: float = 0.020
    conn_bps: float | None = 90 * MIB
    link_bps: float | None = 1200 * MIB

    @classmethod
    def s3_like(cls, latency_ms: float = 20, conn_mibps: float = 90, link_mibps: float = 1200) -> Shape:
        return cls(latency_ms / 1000, conn_mibps * MIB or None, link_mibps * MIB or None)

    def describe(self) -> str:
        def cap(bps: float | None) -> str:
            return "no cap" if bps is None else f"{bps / MIB:g} MiB/s"

        return (
            f"{self.latency_s * 1000:g} ms before each request, {cap(self.conn_bps)} per connection, "
            f"{cap(self.link_bps)} for the link (each way)"
        )

    def chunk(self) -> int:
        """Bytes per splice: at most 5 ms of the connection's cap, so a slow cap is paced smoothly."""
        if self.conn_bps is None:
            return MAX_CHUNK
        return max(MIN_CHUNK, min(MAX_CHUNK, int(self.conn_bps * 0.005)))


class Pacer:
    """A virtual clock for one rate (GCRA without burst): ``reserve(n)`` books n bytes after everything
    booked before and says how long to wait until they may go. Thread-safe; shared by the link's threads."""

    def __init__(self, bps: float) -> None:
        self.bps = bps
        self._free_at = 0.0
        self._lock = threading.Lock()

    def reserve(self, n: int) -> float:
        with self._lock:
            now = time.monotonic()
            self._free_at = max(self._free_at, now) + n / self.bps
            return self._free_at - now


class Stats:
    """Bytes forwarded each way and connections served; added to at the end of each splice."""

    def __init__(self) -> None:
        self.up = 0  # client -> server
        self.down = 0  # server -> client
        self.connections = 0
        self.chunks = 0  # splices into a pipe: bytes / chunks is how much each wake-up moved
        self.lock = threading.Lock()

    def add(self, up: bool, n: int) -> None:
        with self.lock:
            self.chunks += 1
            if up:
                self.up += n
            else:
                self.down += n

    def as_dict(self) -> dict[str, int]:
        with self.lock:
            return {
                "bytes_up": self.up,
                "bytes_down": self.down,
                "connections": self.connections,
                "chunks": self.chunks,
            }


class _Connection:
    """One client connection and its upstream one; the last of its two threads to finish closes both."""

    def __init__(self, client: socket.socket, server: socket.socket, shape: Shape) -> None:
        self.client, self.server = client, server
        self.answered = True  # a new connection's first bytes start a request
        self.up_pacer = Pacer(shape.conn_bps) if shape.conn_bps else None
        self.down_pacer = Pacer(shape.conn_bps) if shape.conn_bps else None
        self._running = 2
        self._lock = threading.Lock()

    def abort(self) -> None:
        """Wake both threads (an error in one direction ends the connection)."""
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def finished(self) -> bool:
        with self._lock:
            self._running -= 1
            return self._running == 0

    def close(self) -> None:
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.close()


class Forwarder:
    """Accepts on ``listener`` and forwards each connection to ``upstream`` shaped by ``shape``."""

    def __init__(
        self,
        listener: socket.socket,
        upstream: tuple[str, int],
        shape: Shape,
        max_connections: int = 1024,
    ) -> None:
        self.listener = listener
        self.upstream = upstream
        self.shape = shape
        self.stats = Stats()
        self.stopping = threading.Event()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._link = {
            True: Pacer(shape.link_bps) if shape.link_bps else None,
            False: Pacer(shape.link_bps) if shape.link_bps else None,
        }

    def serve(self, parent_pid: int | None = None) -> None:
        """Accept until ``stopping`` is set (or the parent process is gone); checks twice a second."""
        self.listener.settimeout(0.5)
        while not self.stopping.is_set():
            if parent_pid is not None and os.getppid() != parent_pid:
                return
            if not self._slots.acquire(timeout=0.5):
                continue
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                self._slots.release()
                continue
            except OSError:
                self._slots.release()
                if self.stopping.is_set():
                    return
                raise
            self._start(client)

    def _start(self, client: socket.socket) -> None:
        try:
            client.settimeout(None)
            server = socket.create_connection(self.upstream, timeout=10)
            server.settimeout(None)
        except OSError:
            client.close()
            self._slots.release()
            return
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(client, server, self.shape)
        with self.stats.lock:
            self.stats.connections += 1
        for up in (True, False):
            threading.Thread(target=self._pump, args=(conn, up), daemon=True).start()

    def _pump(self, conn: _Connection, up: bool) -> None:
        """Move one direction until EOF or an error: splice in a chunk, wait (latency, caps), splice it out."""
        src, dst = (conn.client, conn.server) if up else (conn.server, conn.client)
        pacers = [p for p in ((conn.up_pacer if up else conn.down_pacer), self._link[up]) if p is not None]
        chunk = self.shape.chunk()
        try:
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
        except OSError:  # out of descriptors: this connection fails, the others go on
            conn.abort()
            self._finish(conn)
            return
        try:
            with contextlib.suppress(OSError):  # a smaller pipe only means smaller chunks
                fcntl.fcntl(write_end, F_SETPIPE_SZ, chunk)
            while True:
                n = os.splice(src.fileno(), write_end, chunk)
                if n == 0:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    break
                arrived = time.monotonic()
                wait = max((p.reserve(n) for p in pacers), default=0.0)
                if up:
                    if conn.answered:  # the first bytes of a request
                        conn.answered = False
                        wait = max(wait, self.shape.latency_s - (time.monotonic() - arrived))
                else:
                    conn.answered = True  # set before the client can see the answer and send again
                if wait > 0:
                    time.sleep(wait)
                left = n
                while left:
                    left -= os.splice(read_end, dst.fileno(), left)
                self.stats.add(up, n)
        except OSError:
            conn.abort()
        finally:
            os.close(read_end)
            os.close(write_end)
            self._finish(conn)

    def _finish(self, conn: _Connection) -> None:
        """One direction is done; after the second, the connection's sockets and slot are freed."""
        if conn.finished():
            conn.close()
            self._slots.release()


# -- the process, and starting it from the bench ---------------------------------------------------------


def _parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT or http://HOST:PORT[/] as (host, port)."""
    host, _, port = text.removeprefix("http://").rstrip("/").rpartition(":")
    return host.strip("[]") or HOST, int(port)


def _allow_files(count: int) -> None:
    """Raise this process's soft limit on open files towards ``count`` (as far as the hard limit allows):
    idle keep-alive connections of every client's pool hold their slots, and each costs six descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count if hard == resource.RLIM_INFINITY else min(count, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m s3files_bench.netshape",
        description="Forward 127.0.0.1:PORT to an S3 server, shaped like S3 over a real network: a delay "
        "before each request, a cap per connection and one for all together. Prints 'listening HOST:PORT', "
        "and on SIGTERM or SIGINT one JSON line of what it forwarded.",
    )
    parser.add_argument("upstream", type=_parse_address, help="the server, HOST:PORT (or an http:// URL)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on at 127.0.0.1 (default: a free one)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="delay before each request (default 20)")
    parser.add_argument("--conn-mibps", type=float, default=90.0, help="MiB/s per connection, 0: none (default 90)")
    parser.add_argument("--link-mibps", type=float, default=1200.0, help="MiB/s for all, 0: none (default 1200)")
    parser.add_argument(
        "--max-connections", type=int, default=1024, help="open at once; more wait to be accepted (default 1024)"
    )
    parser.add_argument("--parent-pid", type=int, help="exit once this process is no longer the parent")
    args = parser.parse_args(argv)
    shape = Shape.s3_like(args.latency_ms, args.conn_mibps, args.link_mibps)

    threading.stack_size(THREAD_STACK)
    _allow_files(args.max_connections * FDS_PER_CONNECTION + 64)
    listener = socket.create_server((HOST, args.port), backlog=128)
    forwarder = Forwarder(listener, args.upstream, shape, args.max_connections)

    def stop(signum: int, frame: FrameType | None) -> None:
        forwarder.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ready = os.times()  # the interpreter's start is no cost of forwarding
    print(f"listening {HOST}:{listener.getsockname()[1]}", flush=True)
    forwarder.serve(args.parent_pid)
    listener.close()
    usage = os.times()
    user, system = usage.user - ready.user, usage.system - ready.system
    cpu = {"cpu_s": user + system, "user_s": user, "system_s": system}
    print(json.dumps({**forwarder.stats.as_dict(), **cpu}), flush=True)
    os._exit(0)  # the pump threads end with the process, their sockets and pipes with them


class Running:
    """A forwarder process the bench started: its address, and its CPU and bytes so far."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, shape: Shape) -> None:
        self.process = process
        self.port = port
        self.shape = shape
        self.final: dict[str, float] = {}  # the process's last line, once stopped
        self.cpu_at_ready = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the forwarder spent forwarding so far (/proc/PID/stat, less what its
        start took); its own final count once it is gone."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float(self.final.get("cpu_s", 0.0))
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") - self.cpu_at_ready

    def stop(self) -> None:
        """SIGTERM, read its final line, wait (bounded); SIGKILL if it will not go. Idempotent."""
        if self.process.poll() is None:
            cpu = self.cpu_seconds()
            self.process.send_signal(signal.SIGTERM)
            try:
                out, _ = self.process.communicate(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                out, _ = self.process.communicate(timeout=STOP_TIMEOUT_S)
            with contextlib.suppress(ValueError, IndexError):
                self.final = json.loads(out.decode().strip().splitlines()[-1])
            self.final.setdefault("cpu_s", cpu)  # /proc's count if its own last line is missing
        elif self.process.stdout is not None:
            self.process.stdout.close()

    def profile(self) -> dict[str, float]:
        """What the forwarder cost: CPU seconds (and the kernel's part of them), GiB forwarded (both ways),
        CPU seconds per GiB, and the mean bytes per splice (small ones cost more CPU per byte)."""
        moved = self.final.get("bytes_up", 0) + self.final.get("bytes_down", 0)
        cpu = float(self.final.get("cpu_s", self.cpu_seconds()))
        chunks = self.final.get("chunks", 0)
        return {
            "cpu_s": round(cpu, 2),
            "system_s": round(float(self.final.get("system_s", 0.0)), 2),
            "gib": round(moved / 2**30, 3),
            "cpu_s_per_gib": round(cpu / (moved / 2**30), 3) if moved else 0.0,
            "connections": int(self.final.get("connections", 0)),
            "kib_per_splice": round(moved / chunks / 1024, 1) if chunks else 0.0,
        }


@contextlib.contextmanager
def shaped(endpoint_url: str, shape: Shape, log_path: Path | None = None) -> Iterator[Running]:
    """A forwarder process in front of ``endpoint_url`` (http://127.0.0.1:PORT) for the block; stopped
    after it, also on errors and Ctrl-C. It is in its own session, so a terminal's Ctrl-C reaches the
    bench, which then stops the mounts (still through the forwarder) before the forwarder itself."""
    command = [
        sys.executable,
        "-m",
        "s3files_bench.netshape",
        endpoint_url,
        "--latency-ms",
        f"{shape.latency_s * 1000:g}",
        "--conn-mibps",
        f"{(shape.conn_bps or 0) / MIB:g}",
        "--link-mibps",
        f"{(shape.link_bps or 0) / MIB:g}",
        "--parent-pid",
        str(os.getpid()),
    ]
    with open(log_path or os.devnull, "ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, start_new_session=True
        )
    running = Running(process, 0, shape)
    try:
        running.port = _ready_port(process)
        running.cpu_at_ready = running.cpu_seconds()
        yield running
    finally:
        running.stop()


def _ready_port(process: subprocess.Popen[bytes]) -> int:
    """The port from the forwarder's first line, waited for at most READY_TIMEOUT_S."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], READY_TIMEOUT_S)
    line = process.stdout.readline().decode() if ready else ""
    if not line.startswith("listening "):
        raise RuntimeError(f"the network forwarder did not start (exit status {process.poll()})")
    return _parse_address(line.split()[1])[1]


if __name__ == "__main__":
    sys.exit(main())
