"""The file systems under test, each a child process mounted on a folder of the run's work directory.

Owns: starting s3files (``python -m s3files mount ... --foreground``), and the peers s3fs-fuse and rclone,
on the same bucket and prefix; reading their statistics (s3files' request counts from its control socket, as
``s3files stats --json`` gets them; peak RSS of any of them from /proc/PID/status VmHWM, reset through /proc/PID/clear_refs); and
stopping them (SIGTERM, then a lazy unmount and SIGKILL as a last resort).

Why child processes: the daemon's memory must be measurable on its own, pyfuse3 allows one mount per
process, and a mount that dies must not take the harness with it. Must not: signal any process it did not
start, or leave a mount behind (``is_mounted`` is checked before anyone removes the work directory, since
removing a mounted folder would delete objects in the bucket).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from s3files_bench.errors import BenchError
from s3files_bench.servers import Target

from s3files.control import ControlError, stats_of
from s3files.mountinfo import mount_entry

MOUNT_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0  # s3files gives running handlers 5 s after SIGTERM
STATS_TIMEOUT_S = 5.0

PEERS = ("s3fs", "rclone")


@dataclass
class FsMount:
    """One mounted file system. ``name`` is its column in the results ("mount" is s3files)."""

    name: str
    root: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    cache_dir: Path | None = None  # s3files only: its --cache-dir, where its control socket is found
    disk_dir: Path | None = None  # where it keeps data on local disk, if we know (for "disk used")
    twin: Callable[[Path], FsMount] | None = None  # starts another mount like it in a folder (s3files)

    def running(self) -> bool:
        return self.process.poll() is None

    def request_counts(self) -> dict[str, int] | None:
        """S3 requests sent so far, by operation (s3files only; None for peers or on no answer), asked
        through the mount's control socket (``s3files stats``): the daemon answers with the counts of
        the moment, after every request it had sent."""
        if self.cache_dir is None or not self.running():
            return None
        try:
            stats = stats_of(self.root, self.cache_dir, STATS_TIMEOUT_S)
        except ControlError:
            return None
        return {str(op): int(n) for op, n in (stats.get("requests") or {}).items()}

    def reset_peak_rss(self) -> None:
        """Start a new peak-RSS period (Linux >= 4.0: writing 5 to clear_refs resets VmHWM)."""
        try:
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        except OSError:
            pass  # then the peak covers the whole life of the process, which is still an upper bound

    def peak_rss(self) -> int | None:
        """Peak resident memory in bytes since start or the last reset."""
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the file system's process has used so far (/proc/PID/stat fields 14
        and 15; 0.0 once it is gone)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def last_log_line(self) -> str:
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def stop(self) -> None:
        """SIGTERM and wait (bounded); then, only if needed, a lazy unmount and SIGKILL. Idempotent."""
        if self.running():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        if is_mounted(self.root):
            tool = shutil.which("fusermount3") or shutil.which("fusermount")
            command = [tool, "-u", "-z", str(self.root)] if tool else ["umount", "-l", str(self.root)]
            subprocess.run(command, capture_output=True, timeout=30, check=False)
        if self.running():
            self.process.kill()
            self.process.wait(5)


def is_mounted(path: Path) -> bool:
    return mount_entry(path.absolute()) is not None


def _wait_mounted(fs: FsMount, what: str) -> FsMount:
    """``fs`` once mounted; stopped if it fails, and also on Ctrl-C or SIGTERM while waiting (the caller
    has not registered it for stopping yet, and the child, in its own session, would mount regardless)."""
    deadline = time.monotonic() + MOUNT_TIMEOUT_S
    try:
        while not is_mounted(fs.root):
            if not fs.running():
                reason = fs.last_log_line().removeprefix("s3files: error: ")
                reason = reason or f"exit status {fs.process.returncode}; see {fs.log_path}"
                raise BenchError(f"{what} failed to mount: {reason}")
            if time.monotonic() > deadline:
                raise BenchError(f"{what} did not mount within {MOUNT_TIMEOUT_S:.0f} s; see {fs.log_path}")
            time.sleep(0.05)
    except BaseException:
        fs.stop()
        raise
    return fs


def _spawn(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )


def start_s3files(target: Target, workdir: Path, extra_args: Sequence[str] = (), name: str = "mount") -> FsMount:
    """Mount s3files on ``workdir/NAME`` in the foreground as a child; its errors go to NAME.err.

    ``extra_args`` are more `s3files mount` options (`--mount-args`, `--consistency` of a mode variant),
    e.g. ``--upload-concurrency 16``. ``name`` is the variant's column ("mount", "mount-eventual", ...).
    The mount can start a twin of itself (``FsMount.twin``): another daemon with the same options and its
    own cache folder, as a second machine would run (the visibility workload's consumer).
    """
    root, cache = workdir / name, workdir / f"{name}-cache"
    root.mkdir()
    cache.mkdir()
    command = [sys.executable, "-m", "s3files", "mount", target.source, str(root), "--foreground"]
    command += [
        "--log-file",
        str(workdir / "mount.log"),
        "--cache-dir",
        str(cache),
    ]
    command += ["--region", target.region, "--log-level", "WARNING"]
    if target.endpoint_url:
        command += ["--endpoint-url", target.endpoint_url]
    command += list(extra_args)
    err = workdir / f"{name}.err"
    fs = FsMount(name, root, _spawn(command, dict(target.env), err), err, cache, cache)
    fs.twin = lambda where: start_s3files(target, where, extra_args, name)
    return _wait_mounted(fs, "s3files")


def _keys(target: Target) -> tuple[str, str, str | None]:
    """The access key, secret and session token the peers need (they cannot use every credential source)."""
    if target.access_key and target.secret_key:
        return target.access_key, target.secret_key, None
    import boto3

    credentials = boto3.session.Session().get_credentials()
    if credentials is None:
        raise BenchError("--peers need AWS credentials from the environment, a profile or a role")
    frozen = credentials.get_frozen_credentials()
    return frozen.access_key, frozen.secret_key, frozen.token


def start_s3fs(target: Target, workdir: Path) -> FsMount:
    """s3fs-fuse with its defaults, path-style requests, keys in a 0600 passwd file in the work directory."""
    root = workdir / "s3fs"
    root.mkdir()
    access_key, secret_key, token = _keys(target)
    passwd = workdir / "s3fs.passwd"
    passwd.touch(mode=0o600)
    passwd.write_text(f"{access_key}:{secret_key}\n")
    options = [f"passwd_file={passwd}", f"endpoint={target.region}"]
    if target.endpoint_url:
        options += [f"url={target.endpoint_url}", "use_path_request_style"]
    env = dict(target.env)
    if token:
        env["AWSSESSIONTOKEN"] = token
    source = f"{target.bucket}:/{target.prefix.rstrip('/')}"
    log = workdir / "s3fs.log"
    fs = FsMount(
        "s3fs", root, _spawn(["s3fs", source, str(root), "-f", "-o", ",".join(options)], env, log), log
    )
    return _wait_mounted(fs, "s3fs")


def start_rclone(target: Target, workdir: Path) -> FsMount:
    """rclone mount with ``--vfs-cache-mode writes`` (needed for ordinary writes), configured by env vars.

    ``--vfs-write-back 0s`` starts each upload at close instead of 5 s later; the harness still waits
    until the object is in the bucket, so a write counts as done only when it is.
    """
    root, cache = workdir / "rclone", workdir / "rclone-cache"
    root.mkdir()
    cache.mkdir()
    access_key, secret_key, token = _keys(target)
    # rclone 1.60 fails to start when AWS_CA_BUNDLE is set ("LoadCustomCABundleError"); it uses the
    # system's CAs anyway.
    env = {k: v for k, v in target.env.items() if k != "AWS_CA_BUNDLE"}
    provider = {"rgw": "Ceph", "endpoint": "Other" if target.endpoint_url else "AWS"}.get(
        target.server, "Other"
    )
    env.update(
        RCLONE_CONFIG_BENCH_TYPE="s3",
        RCLONE_CONFIG_BENCH_PROVIDER=provider,
        RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=access_key,
        RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=secret_key,
        RCLONE_CONFIG_BENCH_REGION=target.region,
    )
    if token:
        env["RCLONE_CONFIG_BENCH_SESSION_TOKEN"] = token
    if target.endpoint_url:
        env["RCLONE_CONFIG_BENCH_ENDPOINT"] = target.endpoint_url
        env["RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE"] = "true"
    log = workdir / "rclone.log"
    command = ["rclone", "mount", f"bench:{target.bucket}/{target.prefix.rstrip('/')}", str(root)]
    command += ["--vfs-cache-mode", "writes", "--vfs-write-back", "0s", "--cache-dir", str(cache)]
    fs = FsMount("rclone", root, _spawn(command, env, log), log, disk_dir=cache)
    return _wait_mounted(fs, "rclone")


def installed_peers(wanted: tuple[str, ...]) -> tuple[tuple[str, ...], list[str]]:
    """The wanted peers whose programs are installed, and a note for each one that is not."""
    found, notes = [], []
    for name in wanted:
        if shutil.which(name):
            found.append(name)
        else:
            notes.append(f"{name} is not installed (apt-get install -y {name}); left out")
    return tuple(found), notes


STARTERS = {"s3fs": start_s3fs, "rclone": start_rclone}
