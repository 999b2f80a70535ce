"""Measuring primitives: timed file reads and writes, percentiles, disk use while a child process runs.

Owns: the few loops whose timing every figure depends on, written once so every variant is measured the
same way (1 MiB ``readinto`` into one buffer, no Python-side copies; ``os.pread`` for random reads). Must
not know about S3 or about which variant it measures.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


def read_file(path: Path, chunk: int, first: int = 0) -> tuple[float, float, int]:
    """Read ``path`` to the end: (seconds to the first ``first`` bytes, seconds in all, bytes read)."""
    buffer = memoryview(bytearray(max(chunk, first)))
    start = time.perf_counter()
    first_at = 0.0
    total = 0
    with open(path, "rb", buffering=0) as f:
        if first:
            total += f.readinto(buffer[:first]) or 0
            first_at = time.perf_counter() - start
        while got := f.readinto(buffer[:chunk]):
            total += got
    return first_at, time.perf_counter() - start, total


def drop_cached(path: Path) -> None:
    """Drop ``path``'s clean pages from the kernel's page cache (they go back to the free lists)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        drop_cache(fd)
    finally:
        os.close(fd)


def copy_file(source: Path, dest: Path, chunk: int) -> int:
    """Copy ``source`` to a new ``dest`` in ``chunk``-sized writes; returns once ``close`` has returned."""
    buffer = memoryview(bytearray(chunk))
    total = 0
    with open(source, "rb", buffering=0) as src, open(dest, "wb", buffering=0) as dst:
        while got := src.readinto(buffer):
            done = 0
            while done < got:
                done += dst.write(buffer[done:got])
            total += got
    return total


def drop_cache(fd: int) -> None:
    """Ask the kernel to drop its cached pages of the open file ``fd`` (posix_fadvise DONTNEED)."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def check_size(got: int, expected: int, what: str) -> None:
    if got != expected:
        raise OSError(errno.EIO, f"{what}: got {got} bytes, expected {expected}")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def mibs(nbytes: int, seconds: float) -> float:
    return nbytes / MIB / max(seconds, 1e-9)


def dir_bytes(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (files only; vanishing files are skipped)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def run_child(
    command: list[str], env: Mapping[str, str], disk_dirs: Sequence[Path], timeout: float
) -> tuple[dict[str, Any], int]:
    """Run a measuring child: (the JSON object it printed last, peak bytes it added under ``disk_dirs``).

    The child prints one JSON object on stdout (``{"error": ...}`` if its work failed). Disk use is sampled
    every 50 ms while it runs. (The child reports its own peak RSS: the kernel's ru_maxrss of a child
    starts from the parent's high-water mark at fork/exec, so it would charge the harness to the child.)
    """
    child = subprocess.Popen(
        command, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    output: dict[str, bytes] = {}

    def drain(name: str, stream: Any) -> None:
        output[name] = stream.read()

    readers = [
        threading.Thread(target=drain, args=("out", child.stdout), daemon=True),
        threading.Thread(target=drain, args=("err", child.stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + timeout
    before = sum(dir_bytes(d) for d in disk_dirs)
    peak_disk = 0
    while child.poll() is None:
        peak_disk = max(peak_disk, sum(dir_bytes(d) for d in disk_dirs) - before)
        if time.monotonic() > deadline:
            child.kill()
            child.wait()
            raise TimeoutError(f"the measuring child did not finish within {timeout:.0f} s")
        time.sleep(0.05)
    for reader in readers:
        reader.join(10)
    try:
        answer = json.loads(output.get("out", b"").decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        err = output.get("err", b"").decode(errors="replace").strip().splitlines()
        answer = {"error": err[-1] if err else f"exit status {child.returncode}, no answer"}
    return answer, peak_disk
