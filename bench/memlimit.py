"""Run the benchmark's clients as in a container: in a memory cgroup of their own with a limit.

Owns: one child cgroup of this process's memory cgroup (v1 or v2), this process moved into it so that
every client started afterwards (the mounts, peers, transform runs) is in it too, and on exit this
process moved back and the cgroup removed. The embedded server is started before and stays outside.

Why: the mounts' target is containers, which run with a memory limit; under one, the page cache that a
file system fills is reclaimed and reused within the limit. Without one, on a machine with lots of free
memory every new page of page cache is a page the kernel has not used for a while, and on some virtual
machines (free page reporting: the guest hands free memory back to the host) the first touch of such a
page costs about as much again as copying data into it (measured on the 2-core VM of bench/RESULTS.md:
1.5 s per GiB first touch vs 0.6 s touched again). The raw SDK reads into one reused buffer and never
pays that; a file system, or download-process-upload, pays it for every byte. Both runs are worth
reporting, so the limit is an option, applied to every variant alike.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from s3files_bench.errors import BenchError
from s3files_bench.plan import format_size

CGROUP_ROOT = Path("/sys/fs/cgroup")
MIN_LIMIT = 512 << 20  # below this the benchmark's own buffers and a daemon no longer fit


@dataclass(frozen=True)
class _Files:
    """The names of the same controls in cgroup v1 and v2."""

    limit: str
    peak: str


_V1 = _Files(limit="memory.limit_in_bytes", peak="memory.max_usage_in_bytes")
_V2 = _Files(limit="memory.max", peak="memory.peak")


@dataclass
class MemoryLimit:
    """The cgroup the clients run in; ``peak()`` is its highest usage so far (None if unknown)."""

    path: Path
    files: _Files

    def peak(self) -> int | None:
        try:
            return int((self.path / self.files.peak).read_text())
        except (OSError, ValueError):
            return None


def _own_cgroup() -> tuple[Path, _Files]:
    """This process's memory cgroup directory, and which version's files it has."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(",") and (CGROUP_ROOT / "memory").is_dir():
            return CGROUP_ROOT / "memory" / path.lstrip("/"), _V1
    for line in lines:
        if line.startswith("0::") and (CGROUP_ROOT / "cgroup.controllers").is_file():
            return CGROUP_ROOT / line[3:].lstrip("/"), _V2
    raise BenchError("--memory-limit needs a memory cgroup (v1 or v2), which this machine lacks")


@contextlib.contextmanager
def memory_limited(limit: int, say: Callable[[str], None]) -> Iterator[MemoryLimit]:
    """This process, and every process it starts in the block, in a new cgroup limited to ``limit`` bytes."""
    if limit < MIN_LIMIT:
        raise BenchError(f"--memory-limit must be at least {MIN_LIMIT >> 20} MiB")
    try:
        parent, files = _own_cgroup()
    except OSError as exc:
        raise BenchError(f"--memory-limit: cannot read this process's cgroup: {exc}") from None
    child = parent / f"s3files-bench-{uuid.uuid4().hex[:8]}"
    try:
        if files is _V2 and "memory" not in (parent / "cgroup.subtree_control").read_text().split():
            (parent / "cgroup.subtree_control").write_text("+memory")
        child.mkdir()
    except OSError as exc:
        raise BenchError(
            f"--memory-limit: cannot make a memory cgroup under {parent} ({exc.strerror}); run as root on a "
            "machine that delegates the memory controller, or without --memory-limit"
        ) from None
    try:
        (child / files.limit).write_text(str(limit))
        (child / "cgroup.procs").write_text(str(os.getpid()))
    except OSError as exc:
        child.rmdir()
        raise BenchError(f"--memory-limit: cannot use the cgroup {child}: {exc.strerror}") from None
    say(f"the benchmark and its mounts run with a memory limit of {format_size(limit)} (cgroup {child})")
    try:
        yield MemoryLimit(child, files)
    finally:
        _remove(child, parent)


def _remove(child: Path, parent: Path) -> None:
    """Move every process still in ``child`` (this one, and a child that outlived its stop) to the parent,
    then remove the cgroup."""
    with contextlib.suppress(OSError):
        for pid in (child / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (parent / "cgroup.procs").write_text(pid)
    with contextlib.suppress(OSError):
        child.rmdir()
