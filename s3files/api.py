"""The library API: ``with s3files.mount("s3://bucket/prefix", "/mnt/data") as root: ...``.

Owns: starting a mount daemon as a child process for the block and unmounting it afterwards, and
``sync`` (upload now what a mount's write-back holds: control.py), also as ``root.sync()`` and
``root.status()`` on the folder the block gets (``MountedFolder``). ``open_fs`` (the same file system
without FUSE, in this process) lives in openfs/. Runs the
same ``s3files mount`` command users run (pyfuse3 allows one mount per process, and a child process keeps
the caller's process free of FUSE state and signal handlers), so the library and the CLI cannot drift.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from s3files.errors import MountError
from s3files.mountinfo import mount_entry
from s3files.options import Consistency, default_cache_dir

UNMOUNT_TIMEOUT = 30.0


class MountedFolder(type(Path())):  # type: ignore[misc]
    """The mount point ``mount`` yields: a Path (``root / "data.csv"``) that also asks its daemon.
    Paths made from it (``root / "x"``) are plain paths of this type without the mount's cache dir;
    ask the folder ``mount`` yielded."""

    _cache_dir: Path | None = None

    def sync(self, path: str | Path | None = None, *, timeout: float | None = None) -> dict[str, str]:
        """``s3files.sync(mountpoint, path)``: upload now what waits (eventual mode's write-back), or
        what is at or below ``path`` (relative to the mount, or a path inside it); ``{}`` once all is in
        S3, else the path and why of each file that is not."""
        inside = None if path is None else Path(self) / path  # an absolute path stays as it is
        return sync(self, inside, cache_dir=self._cache_dir, timeout=timeout)

    def status(self) -> dict[str, Any]:
        """What ``s3files status --json MOUNTPOINT`` prints, as data: files not in S3 yet (open for
        writing, uploading, waiting for the write-back or a retry), files kept after a stop, conflict
        copies, the cache's use, and whether the daemon runs."""
        from s3files.status import StatusError, status_of

        try:
            return dict(status_of(Path(self), self._cache_dir or default_cache_dir()))
        except StatusError as exc:
            raise MountError(str(exc)) from None


@contextlib.contextmanager
def mount(
    source: str,
    mountpoint: str | Path,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    read_only: bool = False,
    direct_io: bool = False,
    consistency: str | Consistency | None = None,
    metadata_ttl: float | None = None,
    writeback_delay: float | None = None,
    durability: str | None = None,
    cache_dir: str | Path | None = None,
    log_file: str | Path | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[MountedFolder]:
    """Mount ``source`` at ``mountpoint`` (created if missing) for the ``with`` block; yields the folder,
    a Path with ``sync()`` and ``status()`` (MountedFolder).

    ``consistency`` is a mode's name (``"strict"``, ``"close-to-open"``, ``"eventual"``) or a Consistency;
    ``metadata_ttl`` overrides the mode's TTL; ``writeback_delay`` and ``durability`` (``"machine"`` or
    ``"daemon"``: what an acknowledged close survives) matter in eventual mode only. None: the command's
    defaults. Raises MountError with the daemon's one-line reason if the mount cannot start.
    """
    if consistency is not None and not isinstance(consistency, Consistency):
        try:
            consistency = Consistency(consistency)
        except ValueError:
            modes = ", ".join(mode.value for mode in Consistency)
            raise MountError(f"consistency must be one of {modes}, got {consistency!r}") from None
    root = Path(mountpoint).absolute()
    root.mkdir(parents=True, exist_ok=True)
    args = ["mount", source, str(root)]
    for flag, value in (
        ("--endpoint-url", endpoint_url),
        ("--region", region),
        ("--profile", profile),
        ("--consistency", consistency.value if consistency is not None else None),
        ("--metadata-ttl", metadata_ttl),
        ("--writeback-delay", writeback_delay),
        ("--durability", durability),
        ("--cache-dir", cache_dir),
        ("--log-file", log_file),
    ):
        if value is not None:
            args += [flag, str(value)]
    if read_only:
        args.append("--read-only")
    if direct_io:
        args.append("--direct-io")
    started = _s3files(*args, *extra_args)
    if started.returncode != 0:
        raise MountError(_reason(started))
    folder = MountedFolder(root)
    folder._cache_dir = Path(cache_dir).absolute() if cache_dir is not None else None
    try:
        yield folder
    finally:
        stopped = _s3files("unmount", str(root))
        if stopped.returncode != 0:
            raise MountError(_reason(stopped))
        _wait_unmounted(root)


def sync(
    mountpoint: str | Path,
    path: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    timeout: float | None = None,
) -> dict[str, str]:
    """Upload now what the mount at ``mountpoint`` has not uploaded yet (eventual mode's write-back), or
    what is at or below ``path``, and return once it is in S3: ``{}``, or the path in the mount and why
    of each file that is not (its upload failed or conflicted, or it is open with changes no close
    acknowledged). ``cache_dir``: the mount's, if not the default. MountError if the daemon cannot be
    asked (``s3files sync`` does the same from a shell)."""
    from s3files.control import ControlError, sync_mount

    try:
        _, failed = sync_mount(
            Path(mountpoint),
            Path(path) if path is not None else None,
            Path(cache_dir).absolute() if cache_dir is not None else default_cache_dir(),
            timeout,
        )
    except ControlError as exc:
        raise MountError(str(exc)) from None
    return failed


def _s3files(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "s3files", *args], capture_output=True, text=True, timeout=60, check=False
    )


def _reason(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return lines[-1].removeprefix("s3files: error: ") if lines else f"s3files exited {result.returncode}"


def _wait_unmounted(root: Path) -> None:
    deadline = time.monotonic() + UNMOUNT_TIMEOUT
    while mount_entry(root) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
