"""``s3files exec``: mount, run one command, make sure what it wrote is in S3 (or held back), unmount.

Owns: the life of one job: starting a mount daemon per ``--mount`` (the same ``s3files mount`` the CLI
runs, in its own session, sent SIGTERM if this process dies), running the command with the signals this
process gets passed on to it, what happens after it ends (``--publish always``: ``sync`` every mount;
``on-success`` and exit 0: ``publish-held``; otherwise nothing: the daemons' stop keeps or discards what
the hold kept back, core/writeback.py), stopping the daemons (SIGTERM: a clean unmount), making sure
nothing stays mounted, and the exit status and the lines that explain it. Must not decide what a hold,
a sync or a stop does (the daemon's rooms do) nor talk to S3.

Exit status: the command's, 128+N if signal N killed it (as a shell reports it); 1 if it exited 0 but a
file is not in S3 (one line each); 125 if the job could not start (a mount failed), 126 if the command
cannot be run, 127 if it is not found (as env(1) and timeout(1) do).

Signals: SIGINT, SIGTERM and SIGHUP are passed on to the command, and make the job a failure for
``on-success`` whatever the command then exits with. A SIGINT the terminal sent (Ctrl-C) already reached
the command, which is in the same process group: it is not sent twice (the kernel marks such a signal
SI_KERNEL, a kill(2) SI_USER).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from s3files import control
from s3files.core.records import CacheFolder, folder_name
from s3files.mountinfo import mount_entry
from s3files.options import Source
from s3files.status import held_changes

PASSED_ON = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SI_KERNEL = 0x80  # siginfo si_code of a signal the kernel sent (a terminal's Ctrl-C), linux/siginfo.h
PR_SET_PDEATHSIG = 1
STOP_TIMEOUT = 360.0  # seconds a daemon's stop may take (its uploads are bounded at 300 s, fs.py)
EXIT_CANNOT_START, EXIT_CANNOT_RUN, EXIT_NOT_FOUND = 125, 126, 127

PROG = "s3files: exec"


class JobError(Exception):
    """The job cannot start; ``str()`` is the one line to print."""


@dataclass
class JobMount:
    source: str
    mountpoint: Path
    cache_folder: Path  # the daemon's (records.folder_name): its control socket, its records
    daemon: subprocess.Popen[bytes] | None = None
    ready: bool = False  # it said the mount is usable (else it said why not, and exited)
    daemon_args: list[str] = field(default_factory=list)  # this mount's own (its metrics port)


def parse_mount(spec: str) -> tuple[str, Path]:
    """``s3://bucket/prefix/:/mnt/dir`` split at the LAST ':' (the source has one of its own)."""
    source, sep, folder = spec.rpartition(":")
    if not sep or not source.startswith("s3://") or not folder:
        raise JobError(f"--mount {spec!r}: expected s3://bucket[/prefix/]:/folder")
    try:
        Source.parse(source)
    except Exception as exc:
        raise JobError(f"--mount {spec!r}: {exc}") from None
    return source, Path(folder).absolute()


def cache_folder_of(source: str, endpoint_url: str | None, cache_dir: Path) -> Path:
    parsed = Source.parse(source)
    return cache_dir / folder_name(endpoint_url, parsed.bucket, parsed.prefix)


def _die_with_parent() -> None:
    """In a child before it runs: SIGTERM when this process dies, so that a job killed with SIGKILL
    leaves no daemon serving (it stops cleanly: held writes are kept, never published) and no command
    writing into mounts that are going away."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _say(line: str) -> None:
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)


def run(
    mounts: Sequence[JobMount],
    daemon_args: Sequence[str],
    command: Sequence[str],
    publish: str,
    on_failure: str,
    log_file: Path | None,
) -> int:
    """The whole job (see the module docstring); its exit status."""
    from s3files.cli import spawn_daemon

    started: list[JobMount] = []
    try:
        starting = []
        for job in mounts:  # all at once: each daemon's start is mostly its interpreter's
            job.mountpoint.mkdir(parents=True, exist_ok=True)
            argv = ["mount", job.source, str(job.mountpoint), *daemon_args, *job.daemon_args]
            starting.append(spawn_daemon(argv, log_file, preexec_fn=_die_with_parent))
            job.daemon = starting[-1].child
            started.append(job)
        errors = 0
        for job, start in zip(mounts, starting, strict=True):
            error = start.wait_ready(job.mountpoint, log_file)
            if error is not None:
                _say(f"cannot mount {job.source} at {job.mountpoint}: {error}")
                errors += 1
            job.ready = error is None
        if errors:
            return _finish(started, EXIT_CANNOT_START, failed={}, held=False, on_failure=on_failure)
        status, interrupted = run_command(command)
        for sig in PASSED_ON:  # the daemons' stop must finish whatever comes now
            signal.signal(sig, signal.SIG_IGN)
        failed: dict[str, str] = {}
        succeeded = status == 0 and interrupted is None
        if publish == "always" or succeeded:
            failed = _publish(started, held=publish == "on-success")
        elif interrupted is not None:
            _say(f"{signal.Signals(interrupted).name} passed on to the command: a failure, nothing published")
        return _finish(started, status, failed, held=publish == "on-success" and not succeeded, on_failure=on_failure)
    except BaseException:
        _stop(started)
        raise


def run_command(command: Sequence[str]) -> tuple[int, int | None]:
    """Run ``command`` with SIGINT, SIGTERM and SIGHUP passed on; its status as a shell gives it, and the
    first signal passed on (None: none)."""
    watched = {*PASSED_ON, signal.SIGCHLD}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, watched)

    def in_child() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        _die_with_parent()

    try:
        try:
            child = subprocess.Popen(list(command), preexec_fn=in_child)
        except FileNotFoundError:
            _say(f"{command[0]}: command not found")
            return EXIT_NOT_FOUND, None
        except OSError as exc:
            _say(f"{command[0]}: cannot run: {exc.strerror}")
            return EXIT_CANNOT_RUN, None
        interrupted: int | None = None
        while (code := child.poll()) is None:
            info = signal.sigtimedwait(watched, 1.0)  # bounded: the poll above is the truth
            if info is None or info.si_signo == signal.SIGCHLD:
                continue
            interrupted = interrupted or info.si_signo
            if info.si_code != SI_KERNEL:  # a terminal's signal reached the command already
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(info.si_signo)
        return (code if code >= 0 else 128 - code), interrupted
    finally:
        while signal.sigtimedwait(PASSED_ON, 0) is not None:
            pass  # passed on already, or came after the command ended: not for this process
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _publish(mounts: Sequence[JobMount], held: bool) -> dict[str, str]:
    """Upload what each mount still waits with (``sync``), or what it held back (``publish-held``);
    per file not in S3 after, its path and why."""
    failed: dict[str, str] = {}
    for job in mounts:
        try:
            if held:
                answer = control.publish_held(job.cache_folder)
            else:
                answer = control.request(job.cache_folder, {"op": "sync", "path": None}).get("failed") or {}
        except control.ControlError as exc:
            failed[str(job.mountpoint)] = f"its daemon could not be asked to upload: {exc}"
            continue
        for name, why in answer.items():
            failed[f"{job.mountpoint}/{name}"] = str(why)
    return failed


def _stop(mounts: Sequence[JobMount]) -> list[str]:
    """Stop every daemon (SIGTERM: a clean unmount; its stop uploads, keeps or discards) and make sure
    nothing stays mounted; a line per daemon that did not stop cleanly."""
    problems = []
    for job in mounts:
        if job.daemon is not None and job.daemon.poll() is None:
            job.daemon.send_signal(signal.SIGTERM)
    for job in mounts:
        if job.daemon is None:
            continue
        try:
            code = job.daemon.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            job.daemon.kill()
            code = job.daemon.wait(10)
            problems.append(f"the daemon of {job.mountpoint} did not stop within {STOP_TIMEOUT:.0f} s; killed")
        else:
            if code != 0 and job.ready:
                problems.append(f"the daemon of {job.mountpoint} exited with status {code} (see its log)")
        if mount_entry(job.mountpoint) is not None:
            _detach(job.mountpoint)
    return problems


def _detach(mountpoint: Path) -> None:
    """Unmount what a daemon that died left (lazily if it is busy)."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    for args in ([tool, "-u"], [tool, "-uz"]) if tool else (["umount"], ["umount", "-l"]):
        subprocess.run([*args, str(mountpoint)], capture_output=True, timeout=30)  # type: ignore[list-item]
        if mount_entry(mountpoint) is None:
            return


def _finish(
    mounts: Sequence[JobMount], status: int, failed: dict[str, str], held: bool, on_failure: str
) -> int:
    """Stop the mounts, say what is not in S3 and where held files are, and return the exit status."""
    problems = _stop(mounts)
    for name, why in sorted(failed.items()):
        _say(f"not in S3: {name}: {why}")
    for line in problems:
        _say(line)
    if held:
        _report_held(mounts, status, on_failure)
    if status == 0 and (failed or problems):
        return 1
    return status


def _report_held(mounts: Sequence[JobMount], status: int, on_failure: str) -> None:
    """The command failed under ``--publish on-success``: nothing it wrote was published; say where it
    is (kept) or that it is gone (discarded)."""
    what = "the job did not start" if status == EXIT_CANNOT_START else f"the command failed (status {status})"
    if on_failure == "discard":
        _say(f"{what}: nothing it wrote was published; what it wrote was discarded (--on-failure discard)")
        return
    for job in mounts:
        try:
            held = [r for r in CacheFolder(job.cache_folder).records() if r.held]
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                _say(f"cannot read {job.cache_folder}: {exc.strerror}")
            continue
        if held:
            _say(
                f"{what}: nothing it wrote to {job.mountpoint} was published; {len(held)} file(s) kept in"
                f" {job.cache_folder} (s3files status {job.cache_folder}):"
            )
            folder = CacheFolder(job.cache_folder)
            for record in sorted(held, key=lambda r: r.key):
                _say(f"  kept: {record.key} at {folder.data_path(record.id)}")
        changes = held_changes(job.cache_folder)
        if changes:
            _say(
                f"{what}: {len(changes)} change(s) of the tree kept in {job.cache_folder}, not made in S3"
                f" (s3files status {job.cache_folder}):"
            )
            for change in changes:
                origin = f" (from {change['from']})" if change.get("from") else ""
                _say(f"  kept: {change['change']} {change['key']}{origin}")
