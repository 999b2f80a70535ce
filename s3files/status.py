"""``s3files status``: what a mount has not sent to S3 yet, what its cache folder keeps, its conflict
copies, and the cache's use, read from the cache folder: the same answer whether the daemon runs, was
stopped, or died.

Owns: the status file (``<cache folder>/status.json``: its content, and ``StatusWriter``, which writes it
atomically and only when it changed; the mount's task in fuse/mount.py calls it about once a second and
removes the file when the mount ends), telling whether a cache folder's daemon runs (the flock on its
``lock``), finding the cache folder of a mount point (the status file that names it), and the human and
JSON output; ``folder_of_mountpoint`` also tells ``s3files sync`` where the daemon's control socket is
(s3files/control.py). Must not import pyfuse3 nor talk to the daemon or to S3: everything here is read from files,
so a dead daemon is reported as well as a live one.

Which source tells what:
- the daemon runs (it holds the lock) and wrote ``status.json``: its ``FileSystem.status()`` as written
  within the last second or so (files waiting or uploading, kept records, conflicts, cache use);
- no daemon holds the lock: the records on disk (core/records.py) are all that is left; every one is a
  kept file, which the next mount with this cache folder recovers (``--on-recovery``). A ``status.json``
  left by a daemon that died only says where it was mounted and which conflicts it wrote.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from s3files.core.heldtree import HeldChanges, journals
from s3files.core.records import CacheFolder
from s3files.errors import S3FilesError
from s3files.mountinfo import mounts

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
FSTYPE = "fuse.s3files"
PRIVATE_PREFIX = "s3files-mount-"  # fuse/mount.py's folders for mounts without a cache dir (library tests)

Status = dict[str, Any]


class StatusError(Exception):
    """An argument ``s3files status`` cannot answer for; ``str()`` is the one line the user reads."""


def canonical(path: Path) -> str:
    """``path`` made absolute, ``..`` removed and its folder's symlinks resolved, as mountinfo names a
    mount point, without touching ``path`` itself: a stat of a mount point would ask its daemon (from the
    daemon's own event loop: a deadlock) or fail on a mount whose daemon died."""
    absolute = Path(os.path.abspath(path))
    if absolute.parent == absolute:
        return str(absolute)
    return str(Path(os.path.realpath(absolute.parent)) / absolute.name)


# -- writing (in the daemon) --------------------------------------------------------------------------


class StatusWriter:
    """Writes one mount's ``status.json`` into its cache folder ``root``: ``FileSystem.status()`` plus
    where it is mounted, by which pid, and when the status last changed."""

    def __init__(self, root: Path, mountpoint: str | None, source: str, pid: int | None = None) -> None:
        self.path = root / STATUS_FILE
        self._about = {"mountpoint": mountpoint, "source": source, "pid": os.getpid() if pid is None else pid}
        self._last: str | None = None
        self._failing: str | None = None
        # (no mount point: open_fs, found by its cache folder only)
        self._registered = register_mount(mountpoint, root) if mountpoint is not None else None

    def update(self, status: Callable[[], Mapping[str, object]], now: float | None = None) -> bool:
        """Write the status if it changed since the last write; True if written. A failure (the disk,
        or a bug in ``status``) is logged, once until it changes, and never raised: a status must not
        stop a mount."""
        try:
            body = {**status(), **self._about}
            text = json.dumps(body, sort_keys=True)
            if text == self._last:
                return False
            self._write({**body, "updated": time.time() if now is None else now})
        except Exception as exc:
            if repr(exc) != self._failing:
                log.warning("cannot write %s: %r", self.path, exc, exc_info=not isinstance(exc, OSError))
            self._failing = repr(exc)
            return False
        self._last, self._failing = text, None
        return True

    def _write(self, body: Status) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".status-", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(body, out, sort_keys=True, indent=1)
            os.replace(tmp, self.path)  # a reader sees the old status or the new one, never half
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def remove(self) -> None:
        """At the end of the mount: no live status any more (the records say what is left)."""
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove %s: %s", self.path, exc.strerror)
        if self._registered is not None:
            with contextlib.suppress(OSError):
                if os.readlink(self._registered) == str(self.path.parent):
                    self._registered.unlink()


# -- the registry of running mounts: mount point -> cache folder ----------------------------------------
#
# Why: `s3files status MOUNTPOINT` and `s3files sync MOUNTPOINT` must find the mount's cache folder (its
# status file and control socket) also when the mount was given a --cache-dir the caller does not
# remember. The daemon leaves a symlink named by the mount point's hash in a folder only its user can
# write; a reader trusts it only if the status file it leads to names that mount point (a link left by a
# daemon that died is a hint, never an answer).


def registry_dir() -> Path:
    """/run/s3files/mounts for root, else $XDG_RUNTIME_DIR/s3files/mounts, else /tmp/s3files-UID/mounts."""
    if os.geteuid() == 0:
        return Path("/run/s3files/mounts")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "s3files" if runtime else Path(tempfile.gettempdir()) / f"s3files-{os.geteuid()}"
    return base / "mounts"


def _registry_entry(mountpoint: str) -> Path:
    return registry_dir() / hashlib.sha256(mountpoint.encode()).hexdigest()[:24]


def _private_dir(path: Path) -> bool:
    """Whether ``path`` and its parent are folders of this user that nobody else may write."""
    for folder in (path, path.parent):
        info = os.lstat(folder)
        if not os.path.isdir(folder) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            return False
    return True


def register_mount(mountpoint: str, root: Path) -> Path | None:
    """Point the registry's entry for ``mountpoint`` at cache folder ``root``; the entry, or None if the
    registry cannot be written (then --cache-dir finds the folder, as before)."""
    entry = _registry_entry(mountpoint)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not _private_dir(entry.parent):
            return None
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        os.symlink(root, tmp)
        os.replace(tmp, entry)
    except OSError as exc:
        log.debug("cannot register the mount at %s in %s: %s", mountpoint, entry.parent, exc)
        return None
    return entry


def registered_folder(mountpoint: str) -> Path | None:
    """The cache folder the registry names for ``mountpoint``, if its status file names that mount point."""
    entry = _registry_entry(mountpoint)
    try:
        if not _private_dir(entry.parent):
            return None
        root = Path(os.readlink(entry))
    except OSError:
        return None
    last = _read_json(root / STATUS_FILE)
    return root if last is not None and last.get("mountpoint") == mountpoint else None


# -- reading --------------------------------------------------------------------------------------------


def is_cache_folder(path: Path, strict: bool = False) -> bool:
    """Whether ``path`` is a mount's cache folder (``files/`` and ``lock``). ``strict``: one that cannot
    be looked into raises StatusError instead of counting as none (it is another user's, say)."""
    try:
        return (path / "files").is_dir() and (path / "lock").is_file()
    except PermissionError:
        if strict:
            raise StatusError(f"cannot read {path}: permission denied (run as the mount's user)") from None
        return False
    except OSError:  # e.g. ENOTCONN: a mount point whose daemon died
        return False


def _pid_in(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip() or "0") or None
    except (OSError, ValueError):
        return None


def daemon_pid(root: Path) -> int | None:
    """The pid of the daemon that holds cache folder ``root`` (its lock is flock-ed while it runs), or
    None when no daemon holds it. 0: held, by a pid this process cannot tell.

    Read from /proc/locks, so that asking never takes the lock (a mount starting at that moment would be
    refused); where that file cannot be read, a shared non-blocking flock is tried and dropped at once."""
    lock = root / "lock"
    try:
        st = os.stat(lock)
    except OSError:
        return None
    claimed = _pid_in(lock)
    try:
        with open("/proc/locks") as table:
            lines = table.readlines()
    except OSError:
        return _probe(lock, claimed)
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 1349 fe:00:2147097 0 EOF" (a waiter has "->" after the number)
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            major, minor, ino = fields[5].split(":")
            holder = int(fields[4])
            if int(ino) != st.st_ino:
                continue
            same_device = (int(major, 16), int(minor, 16)) == (os.major(st.st_dev), os.minor(st.st_dev))
        except ValueError:
            continue
        if same_device or (claimed is not None and holder == claimed):
            return claimed if claimed is not None else max(holder, 0)
    return None


def _probe(lock: Path, claimed: int | None) -> int | None:
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return claimed or 0
    finally:
        os.close(fd)  # drops a lock taken here
    return None


def _read_json(path: Path) -> Status | None:
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _disk_bytes(files: Path, named: set[str]) -> tuple[int, int, int]:
    """Bytes the data files in ``files`` take on disk, and the count and bytes of those no record in
    ``named`` names (clean copies of the last mount, or a copy whose record was never written)."""
    total = unnamed = unnamed_bytes = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(files):
            with contextlib.suppress(OSError):
                used = entry.stat(follow_symlinks=False).st_blocks * 512
                total += used
                if entry.name.endswith(".data") and entry.name[: -len(".data")] not in named:
                    unnamed, unnamed_bytes = unnamed + 1, unnamed_bytes + used
    return total, unnamed, unnamed_bytes


def read_status(root: Path) -> Status:
    """The status of cache folder ``root`` (see the module docstring for which source says what)."""
    pid = daemon_pid(root)
    last = _read_json(root / STATUS_FILE)
    about: Status = {"cache_folder": str(root), "running": pid is not None, "pid": pid}
    if last is not None and pid is not None and (pid == 0 or last.get("pid") == pid):
        return {**last, **about}
    folder = CacheFolder(root)
    records = folder.records()
    used, unnamed, unnamed_bytes = _disk_bytes(folder.files, {r.id for r in records})
    status: Status = {
        **about,
        "mountpoint": last.get("mountpoint") if last else None,
        "source": last.get("source") if last else None,
        "updated": None,
        "files": [],
        "kept": [
            {
                "key": r.key,
                "state": r.state,
                "acknowledged": r.acknowledged,
                "held": r.held,
                "bytes": folder.data_size(r.id),
                "data": str(folder.data_path(r.id)),
            }
            for r in records
        ],
        "held_changes": held_changes(root),
        "conflicts": list(last.get("conflicts", [])) if last else [],
        "retrying_uploads": 0,
        "cache_bytes": used,
        "cache_limit": last.get("cache_limit") if last else None,
        "memory_bytes": 0,
        "recovery": None,
    }
    if pid is not None:
        status["note"] = (
            f"the daemon (pid {pid or '?'}) has not written its status yet; these are its records on disk"
        )
    else:
        status["unrecorded_files"], status["unrecorded_bytes"] = unnamed, unnamed_bytes
        if last is not None:
            status["last_pid"] = last.get("pid")
    return status


def held_changes(root: Path) -> list[dict[str, object]]:
    """The changes of the tree held back that the journals in cache folder ``root`` keep (heldtree.py)."""
    found: list[dict[str, object]] = []
    for journal in journals(root):
        try:
            changes = HeldChanges.load(journal).summary()
        except S3FilesError as exc:
            found.append({"key": "", "change": "unreadable", "why": str(exc), "journal": str(journal)})
            continue
        found.extend({**c, "journal": str(journal)} for c in changes)
    return found


def _children(folder: Path) -> Iterator[Path]:
    with contextlib.suppress(OSError):
        for entry in sorted(folder.iterdir()):
            if is_cache_folder(entry):
                yield entry


def _private_folders() -> Iterator[Path]:
    for base in sorted({Path("/var/tmp"), Path(tempfile.gettempdir())}):
        with contextlib.suppress(OSError):
            for entry in sorted(base.glob(PRIVATE_PREFIX + "*")):
                if is_cache_folder(entry):
                    yield entry


def _mount_at(mountpoint: str) -> bool:
    found = None
    with contextlib.suppress(OSError):
        for entry in mounts():
            if entry.mountpoint == mountpoint:
                found = entry  # the last one is on top
    return found is not None and found.fstype == FSTYPE


def folder_of_mount(mountpoint: str, cache_dir: Path) -> Path | None:
    """The cache folder whose status file names ``mountpoint``: one whose daemon runs, else the one
    written last (a daemon that died there)."""
    best: tuple[bool, float, Path] | None = None
    for root in [*_children(cache_dir), *_private_folders()]:
        last = _read_json(root / STATUS_FILE)
        if last is None or last.get("mountpoint") != mountpoint:
            continue
        rank = (daemon_pid(root) is not None, float(last.get("updated") or 0), root)
        if best is None or rank > best:
            best = rank
    return best[2] if best is not None else None


def folder_of_mountpoint(where: str, cache_dir: Path) -> Path:
    """The cache folder of the s3files mount at ``where`` (canonical); StatusError with the one line to
    print if nothing s3files is mounted there or no cache folder in ``cache_dir`` names it."""
    if not _mount_at(where):
        raise StatusError(f"{where} is not an s3files mount point")
    root = registered_folder(where) or folder_of_mount(where, cache_dir)
    if root is None:
        raise StatusError(
            f"{where} is an s3files mount, but no cache folder in {cache_dir} names it;"
            " give the mount's --cache-dir (or its cache folder)"
        )
    return root


def status_of(target: Path, cache_dir: Path) -> Status:
    """The status ``target`` names: of the mount at a mount point, of a cache folder, or of every cache
    folder in a cache dir (``--cache-dir``: ``{"cache_dir": ..., "cache_folders": [status, ...]}``).
    StatusError if it names none."""
    where = canonical(target)
    if _mount_at(where):  # first: looking into a mount point would ask its daemon (or fail: ENOTCONN)
        status = read_status(folder_of_mountpoint(where, cache_dir))
        if not status["running"]:
            status["note"] = (
                f"the daemon of the mount at {where} is not running (it was stopped or died); the mount"
                f" point is left without it: s3files unmount {where}"
            )
        return status
    path = Path(where)
    if is_cache_folder(path, strict=True):
        return read_status(path)
    inside = list(_children(path))
    if inside:
        return {"cache_dir": where, "cache_folders": [read_status(root) for root in inside]}
    raise StatusError(f"{where} is neither a mount point of s3files nor a cache folder")


# -- output ---------------------------------------------------------------------------------------------


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _when(stamp: object) -> str:
    if not isinstance(stamp, int | float):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _line(state: str, size: int | None, name: str, data: str | None, why: str) -> str:
    return f"  {state:<10} {human_size(size):>10}  {name}  at {data or 'memory (not on disk)'}  ({why})"


def _why_live(entry: Mapping[str, Any], retrying: int) -> str:
    state, handles = entry.get("state"), int(entry.get("open_handles") or 0)
    opened = f", {_plural(handles, 'open handle')}" if handles else ""
    if state == "uploading":
        return f"closed or fsynced, uploading now{opened}"
    if state == "acked" and entry.get("writeback"):
        return f"closed, uploaded by the write-back after --writeback-delay (s3files sync: now){opened}"
    if state == "acked":
        again = "retried in the background" if retrying else "waiting for its upload"
        return f"closed or fsynced, upload failed, {again}{opened}"
    if state == "rewritten":
        again = "retried in the background" if retrying else "waiting for its upload"
        return f"closed or fsynced, upload failed, {again}; written again since (the closed version is uploaded){opened}"
    if entry.get("acknowledged"):
        return f"changed again after its last close or fsync{opened}"
    return f"not closed or fsynced yet{opened}"


def _why_kept(entry: Mapping[str, Any]) -> str:
    if entry.get("held") and (entry.get("acknowledged") or entry.get("state") == "rewritten"):
        return (
            "held back: written by a command that did not succeed (s3files exec --publish on-success);"
            " a mount with --on-recovery upload-held uploads it, --on-recovery discard deletes it"
        )
    if entry.get("state") == "conflicted":
        return "a conflict whose copy could not be written, kept for you"
    if entry.get("state") == "rewritten":
        return "closed or fsynced, then written again: the next mount uploads the closed version, keeps the rest"
    if entry.get("acknowledged"):
        return "closed or fsynced, not uploaded: the next mount uploads it"
    return "never closed: the next mount keeps it, does not upload it"


def render(status: Mapping[str, Any]) -> list[str]:
    """Human-readable lines for one cache folder's status: one line per file."""
    mountpoint, source = status.get("mountpoint"), status.get("source")
    lines = []
    if status.get("running"):
        where = f"{source} at {mountpoint}" if mountpoint else (f"{source} through open_fs" if source else "a mount")
        stamp = f", status of {_when(status['updated'])}" if status.get("updated") else ""
        lines.append(f"{where}: daemon pid {status.get('pid') or '?'} running{stamp}")
    elif mountpoint:
        lines.append(
            f"{source} last mounted at {mountpoint} (pid {status.get('last_pid') or '?'}): no daemon running"
        )
    else:
        lines.append("no daemon running")
    limit = status.get("cache_limit")
    room = (
        f" of {human_size(limit)} allowed"
        if limit
        else (" (no limit but the disk)" if status.get("running") else "")
    )
    memory = f", {human_size(status.get('memory_bytes'))} in memory" if status.get("memory_bytes") else ""
    lines.append(
        f"cache folder {status['cache_folder']}: {human_size(status.get('cache_bytes'))} on disk{room}{memory}"
    )
    if status.get("note"):
        lines.append(f"note: {status['note']}")

    files = list(status.get("files") or [])
    retrying = int(status.get("retrying_uploads") or 0)
    prefix = str(mountpoint).rstrip("/") + "/" if mountpoint else ""
    if files:
        total = sum(int(f.get("bytes") or 0) for f in files)
        again = (
            f"; {retrying} {'retry' if retrying == 1 else 'retries'} pending in the background"
            if retrying
            else ""
        )
        lines.append(f"waiting or uploading: {_plural(len(files), 'file')}, {human_size(total)}{again}")
        for f in files:
            lines.append(
                _line(
                    f["state"],
                    f.get("bytes"),
                    prefix + str(f["path"]),
                    f.get("data"),
                    "held back until the command succeeds (s3files exec --publish on-success)"
                    if status.get("held") and f.get("acknowledged")
                    else _why_live(f, retrying),
                )
            )
    elif status.get("running"):
        lines.append("waiting or uploading: nothing, every closed file is in S3")

    kept = list(status.get("kept") or [])
    if kept:
        total = sum(int(k.get("bytes") or 0) for k in kept)
        what = (
            "records on disk"
            if status.get("running") and status.get("updated") is None
            else "kept in the cache folder"
        )
        lines.append(f"{what}: {_plural(len(kept), 'file')}, {human_size(total)}")
        for k in kept:
            lines.append(
                _line(
                    k["state"],
                    k.get("bytes"),
                    k.get("key") or "(key not recorded)",
                    k.get("data"),
                    _why_kept(k),
                )
            )
    elif not status.get("running"):
        lines.append("kept in the cache folder: nothing")
    changes = list(status.get("held_changes") or [])
    if changes:
        lines.append(
            f"changes of the tree held back: {len(changes)} (made by a command that did not succeed, or whose"
            " command runs: s3files exec --publish on-success; --on-recovery upload-held applies them)"
        )
        for c in changes:
            origin = f" (from {c['from']})" if c.get("from") else ""
            lines.append(f"  {c['change']:<7} {c['key']}{origin}")
    if status.get("unrecorded_files"):
        lines.append(
            f"data files no record names: {_plural(status['unrecorded_files'], 'file')},"
            f" {human_size(status.get('unrecorded_bytes'))} (clean cached copies, or writes whose record"
            " was never written); the next mount deletes them"
        )

    conflicts = list(status.get("conflicts") or [])
    if conflicts:
        lines.append(
            f"conflict copies written by {'this' if status.get('running') else 'the last'} mount: {len(conflicts)}"
        )
        lines.extend(f"  {key}" for key in conflicts)
    if status.get("recovery"):
        lines.append(str(status["recovery"]))
    return lines


def show(target: Path, cache_dir: Path, as_json: bool) -> str:
    """The text ``s3files status`` prints. StatusError if ``target`` names no cache folder; OSError if
    one cannot be read."""
    status = status_of(target, cache_dir)
    if as_json:
        return json.dumps(status, indent=1, sort_keys=True)
    return "\n\n".join("\n".join(render(one)) for one in status.get("cache_folders", [status]))
