"""What this machine's kernel charges per GiB for the copies a read through a file system cannot avoid.

Owns: measuring, in this process's CPU time (user + system), the per-byte costs that bound issue 20's
CPU goal from below, with no file system and no server involved:

- ``recv``: receiving 1 GiB over a loopback TCP connection into one reused 1 MiB buffer (a sender
  process; only the receiver's CPU counts). The raw SDK's and the daemon's share of a cold read.
- ``fill``: writing 1 GiB into a new file on the local disk: the kernel copies it into page-cache pages
  it allocates (what a FUSE reply does in page-cache mode, the page allocation included).
- ``copy_out``: reading that file back into one reused buffer: pages filled a moment ago copied to a
  program, each for the first time since (what the reader of a cold file pays in page-cache mode).
- ``copy_again``: reading it once more (pages read before: a warm re-read).
- ``zero``: a fresh 1 GiB ``bytearray`` (first touch of memory the kernel hands out).
- ``memcpy``: 1 GiB copied in user space from resident memory into a reused buffer (the memory's speed).

Run: ``python -m s3files_bench.floors [--rounds N] [--dir PATH]``; it prints the median of each.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

MIB = 1 << 20
GIB = 1 << 30


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(fn: Callable[[], None]) -> float:
    start = _cpu()
    fn()
    return _cpu() - start


def recv() -> float:
    listener = socket.create_server(("127.0.0.1", 0))
    pid = os.fork()
    if pid == 0:  # the sender: its CPU is not ours
        try:
            with socket.create_connection(listener.getsockname(), timeout=60) as out:
                chunk = memoryview(bytes(MIB))
                for _ in range(GIB // MIB):
                    out.sendall(chunk)
        finally:
            os._exit(0)
    listener.settimeout(60)
    conn, _ = listener.accept()
    listener.close()
    buf = memoryview(bytearray(MIB))

    def receive() -> None:
        got = 0
        while got < GIB:
            n = conn.recv_into(buf)
            if not n:
                raise RuntimeError("the sender stopped early")
            got += n

    try:
        return _timed(receive)
    finally:
        conn.close()
        os.waitpid(pid, 0)


def fill_and_copy_out(folder: Path) -> tuple[float, float, float]:
    buf = bytearray(MIB)
    with tempfile.NamedTemporaryFile(dir=folder) as tmp:

        def write_all() -> None:
            with open(tmp.name, "wb", buffering=0) as f:
                for _ in range(GIB // MIB):
                    f.write(buf)

        fill = _timed(write_all)

        def read_all() -> None:
            with open(tmp.name, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass

        copy_out = _timed(read_all)
        again = _timed(read_all)
    return fill, copy_out, again


def zero() -> float:
    def allocate() -> None:
        block = bytearray(GIB)
        del block

    return _timed(allocate)


def memcpy() -> float:
    source = bytearray(GIB)
    for at in range(0, GIB, 4096):  # resident before the clock starts
        source[at] = 1
    view, target = memoryview(source), memoryview(bytearray(MIB))

    def copy() -> None:
        for at in range(0, GIB, MIB):
            target[:] = view[at : at + MIB]

    return _timed(copy)


def measure(folder: Path, rounds: int) -> dict[str, float]:
    """Median CPU seconds per GiB of each cost over ``rounds``."""
    seen: dict[str, list[float]] = {name: [] for name in ("recv", "fill", "copy_out", "copy_again", "zero", "memcpy")}
    for _ in range(rounds):
        seen["recv"].append(recv())
        fill, copy_out, again = fill_and_copy_out(folder)
        seen["fill"].append(fill)
        seen["copy_out"].append(copy_out)
        seen["copy_again"].append(again)
        seen["zero"].append(zero())
        seen["memcpy"].append(memcpy())
    return {name: statistics.median(values) for name, values in seen.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the 1 GiB file goes")
    args = parser.parse_args(argv)
    for name, value in measure(args.dir, max(1, args.rounds)).items():
        print(f"{name:10} {value:.2f} CPU s per GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
