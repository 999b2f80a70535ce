"""The ``s3files`` command: argparse front end for mount, unmount, status and sync. No business logic here.

Errors a user can cause or fix (bad mount point, missing bucket, rejected credentials, unreachable
endpoint) are printed as one line ``s3files: error: ...`` with exit status 1, never a traceback.

``mount`` without ``--foreground`` starts the daemon as a child process and returns only when the mount is
usable (exit 0) or has failed (exit 1 with the daemon's one-line reason), within READY_TIMEOUT seconds.
The child tells the parent through a pipe (``--ready-fd``) so the parent never guesses from polling.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import NoReturn, TypeVar

import trio

from s3files import logs
from s3files.errors import MountError, S3FilesError
from s3files.logs import LOG_FORMATS
from s3files.mountinfo import check_mountpoint, clean_stale, mount_entry
from s3files.options import (
    CONSISTENCY_MODES,
    DURABILITY,
    HOLD,
    LISTING_ATTRIBUTES,
    MIB,
    ON_RECOVERY,
    MountOptions,
    ReadOptions,
    Source,
    StoreOptions,
    default_cache_dir,
    default_of,
    parse_mode,
    parse_size,
)

log = logging.getLogger("s3files")

READY_TIMEOUT = 15.0
PUBLISH = ("always", "on-success")

T = TypeVar("T")


def argument_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` (e.g. options.parse_size) as an argparse type: its MountError becomes argparse's error
    line ``argument --x: <the message>`` instead of a traceback or "invalid parse_size value"."""

    def parse_argument(text: str) -> T:
        try:
            return parse(text)
        except MountError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse_argument


def add_mount_options(parser: argparse.ArgumentParser) -> None:
    """The options of a mount (S3, file system, cache and uploads): ``s3files mount``'s, which ``s3files
    exec`` takes too and passes on to its mounts."""
    store_default, mount_default = partial(default_of, StoreOptions), partial(default_of, MountOptions)
    size, mode = argument_type(parse_size), argument_type(parse_mode)
    s3 = parser.add_argument_group("S3")
    s3.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO, Ceph RGW, ...); default AWS")
    s3.add_argument("--region", help="region (default: the AWS chain's, e.g. AWS_DEFAULT_REGION)")
    s3.add_argument("--profile", help="AWS profile (default: the standard AWS credential chain)")
    s3.add_argument(
        "--max-connections",
        type=int,
        default=store_default("max_connections"),
        help="concurrent S3 connections (default %(default)s)",
    )
    s3.add_argument(
        "--max-attempts",
        type=int,
        default=store_default("max_attempts"),
        help="attempts of each S3 request, the first included, before it fails with EIO (default %(default)s)",
    )
    s3.add_argument(
        "--request-timeout",
        type=float,
        default=store_default("request_timeout"),
        help="seconds one attempt waits for the endpoint: to connect (at most 5) and for each read of its"
        " answer (default %(default)s)",
    )
    fs = parser.add_argument_group("file system")
    fs.add_argument("--read-only", action="store_true", help="refuse every change with EROFS")
    fs.add_argument(
        "--direct-io",
        action="store_true",
        help="bypass the kernel page cache: faster cold reads in large blocks; no re-read cache",
    )
    fs.add_argument(
        "--no-xattrs",
        dest="xattrs",
        action="store_false",
        help="no extended attributes (ENOTSUP): saves the kernel's getxattr round trip before every write()",
    )
    fs.add_argument(
        "--uid", type=int, default=mount_default("uid"), help="owner of objects without x-amz-meta-uid"
    )
    fs.add_argument(
        "--gid", type=int, default=mount_default("gid"), help="group of objects without x-amz-meta-gid"
    )
    file_mode, dir_mode = mount_default("file_mode"), mount_default("dir_mode")
    fs.add_argument("--file-mode", type=mode, default=file_mode, help=f"octal mode of files (default {file_mode:o})")
    fs.add_argument("--dir-mode", type=mode, default=dir_mode, help=f"octal mode of folders (default {dir_mode:o})")
    fs.add_argument("--allow-other", action="store_true", help="let other users use the mount")
    fs.add_argument(
        "--listing-attributes",
        choices=LISTING_ATTRIBUTES,
        default=mount_default("listing_attributes"),
        help="true: listings show each object's own mode, owner and mtime (a HEAD per file version not"
        " seen before); fast: defaults and LastModified until a file is opened, no HEAD per listed file"
        " (not with --allow-other) (default %(default)s)",
    )
    fs.add_argument(
        "--consistency",
        choices=CONSISTENCY_MODES,
        default=mount_default("consistency").value,
        help="strict: every lookup, stat, listing and open asks S3; close-to-open: attributes and listings"
        " trusted for --metadata-ttl, every open asks S3; eventual: everything trusted for --metadata-ttl,"
        " close returns once the file is safe in the cache and it is uploaded after --writeback-delay"
        " (default %(default)s; docs/SEMANTICS.md, Consistency modes)",
    )
    fs.add_argument(
        "--metadata-ttl",
        type=float,
        default=mount_default("metadata_ttl"),
        help="seconds attributes and listings are trusted (default: the mode's, strict 0, close-to-open 1,"
        " eventual 60)",
    )
    fs.add_argument(
        "--writeback-delay",
        type=float,
        default=mount_default("writeback_delay"),
        metavar="SECONDS",
        help="eventual mode: seconds a closed file waits in the cache before it is uploaded, so a file"
        " rewritten within the delay is uploaded once (default %(default)s)",
    )
    fs.add_argument(
        "--durability",
        choices=DURABILITY,
        default=mount_default("durability"),
        help="what a close acknowledged in the cache survives (eventual mode): machine, a power loss too"
        " (the cache disk is synced at each close); daemon, the daemon dying (kill -9, OOM) but not a power"
        " loss within ~30 s; much faster closes (default %(default)s)",
    )
    cache = parser.add_argument_group("cache and uploads")
    cache.add_argument(
        "--cache-dir",
        type=Path,
        help="folder for the local cache (default $XDG_CACHE_HOME/s3files, /var/cache/s3files for root)",
    )
    cache.add_argument("--cache-size", type=size, help="bytes the cache may hold, e.g. 20G (default: the disk)")
    cache.add_argument(
        "--upload-concurrency",
        type=int,
        default=mount_default("upload_concurrency"),
        help="parts in flight at once (default %(default)s)",
    )
    part_size = mount_default("upload_part_size")
    cache.add_argument(
        "--upload-part-size",
        type=size,
        default=part_size,
        help=f"multipart part size, 5M-10M (default {part_size / MIB:g}M)",
    )
    cache.add_argument(
        "--on-recovery",
        choices=ON_RECOVERY,
        default=mount_default("on_recovery"),
        help="files a stopped or dead daemon left in the cache: upload those a close or fsync acknowledged"
        " (the rest is kept, and what an s3files exec --publish on-success held back), upload-held: those"
        " too, keep all, or discard all (default %(default)s)",
    )


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line (``s3files mount: error: argument --x: ...``), exit 2,
    as the options' own checks answer; ``--help`` shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    # Every default comes from the options dataclasses (options.default_of): written once, there.
    parser = OneLineParser(
        prog="s3files", description="Mount an S3 bucket as a file system; plain-file code runs unchanged."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    mount = sub.add_parser("mount", help="mount s3://bucket[/prefix] at a folder")
    mount.add_argument("source", help="s3://bucket or s3://bucket/prefix/")
    mount.add_argument("mountpoint", type=Path)
    add_mount_options(mount)
    run = mount.add_argument_group("daemon")
    run.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.add_argument("--log-file", type=Path, help="write the daemon's log here")
    run.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text", help="text lines, or one JSON object per line"
    )
    run.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics on this port (off by default; 0: any free port)"
    )
    run.add_argument(
        "--metrics-address", default="127.0.0.1", help="the address the metrics are served on (default %(default)s)"
    )
    run.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    run.add_argument("--hold", choices=HOLD, help=argparse.SUPPRESS)  # s3files exec --publish on-success

    execute = sub.add_parser(
        "exec",
        help="mount, run a command, make sure its writes are in S3, unmount, exit with its status",
        usage="s3files exec --mount s3://bucket/prefix/:/mnt/dir [--mount ...] [options] -- COMMAND [ARGS...]",
        description="Mount each --mount source at its folder (created if missing), run COMMAND, make sure"
        " every file it wrote is in S3 (or, with --publish on-success, held back unless it exits 0),"
        " unmount, and exit with COMMAND's status (128+N if a signal N killed it). A file not in S3 is"
        " named in one line, and makes the status 1 if COMMAND exited 0. SIGINT, SIGTERM and SIGHUP are"
        " passed on to COMMAND. docs/SEMANTICS.md, s3files exec.",
        allow_abbrev=False,  # its mount options are passed on as written (s3files/job.py)
    )
    execute.add_argument(
        "--mount",
        dest="mounts",
        action="append",
        required=True,
        metavar="SOURCE:FOLDER",
        help="s3://bucket[/prefix/] and the folder to mount it at (split at the last ':'); repeatable",
    )
    execute.add_argument(
        "--publish",
        choices=PUBLISH,
        default="always",
        help="always: what COMMAND wrote is uploaded whatever its status; on-success: held back (write-back,"
        " --consistency eventual) and uploaded only if COMMAND exits 0 (default %(default)s)",
    )
    execute.add_argument(
        "--on-failure",
        choices=HOLD,
        default="keep",
        help="--publish on-success, COMMAND failed or was killed: keep what it wrote in the cache folder"
        " (listed, and by s3files status) or discard it (default %(default)s)",
    )
    add_mount_options(execute)
    execute.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    execute.add_argument("--log-file", type=Path, help="write the mount daemons' log here")
    execute.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text", help="text lines, or one JSON object per line"
    )
    execute.add_argument(
        "--metrics-port",
        type=int,
        help="serve each mount's Prometheus metrics, the first --mount's on this port, the next on the port"
        " after, and so on (off by default; 0: any free port each; s3files stats MOUNTPOINT asks one too)",
    )
    execute.add_argument(
        "--metrics-address", default="127.0.0.1", help="the address the metrics are served on (default %(default)s)"
    )

    # Listed for --help; main() hands `s3files bench ...` to the harness before parsing.
    sub.add_parser("bench", help="benchmark the mount against the SDK and download-process-upload")

    unmount = sub.add_parser("unmount", help="unmount a folder mounted by s3files")
    unmount.add_argument("mountpoint", type=Path)
    unmount.add_argument("--lazy", action="store_true", help="detach now even if files are open")

    status = sub.add_parser(
        "status",
        help="files not in S3 yet, files kept after a stop or crash, conflicts, the cache's use",
        description="Show what a mount has not uploaded yet (waiting or uploading), what its cache folder"
        " keeps after a stop or crash, the conflict copies it wrote, and the cache's use against its limit;"
        " read from the cache folder, so it works while the daemon runs and after it stopped or died.",
    )
    status.add_argument("target", type=Path, metavar="MOUNTPOINT_OR_CACHE_DIR")
    status.add_argument(
        "--cache-dir",
        type=Path,
        help="where to look for a mount point's cache folder (default: the mount's default cache dir)",
    )
    status.add_argument("--json", action="store_true", help="print JSON for programs")

    sync = sub.add_parser(
        "sync",
        help="upload now what a mount has not uploaded yet (eventual mode's write-back), and wait",
        description="Ask the running daemon of MOUNTPOINT to upload every file waiting for its upload (or"
        " those at or below PATH) and return when they are in S3: exit 0, or 1 with one line per file that"
        " is not (its upload failed or conflicted, or it is open for writing with changes no close"
        " acknowledged yet).",
    )
    sync.add_argument("mountpoint", type=Path)
    sync.add_argument("path", type=Path, nargs="?", help="a file or folder inside the mount (default: all)")
    sync.add_argument(
        "--cache-dir",
        type=Path,
        help="the mount's --cache-dir, if it used another than the default (its control socket is there)",
    )
    sync.add_argument("--timeout", type=float, help="give up after this many seconds (default: wait)")

    counters = sub.add_parser(
        "stats",
        help="a running mount's counters: S3 requests, FUSE operations, cache, uploads waiting",
        description="Ask the running daemon of MOUNTPOINT for its counters (the figures --metrics-port serves"
        " to Prometheus) and print them as a table, or as JSON.",
    )
    counters.add_argument("mountpoint", type=Path)
    counters.add_argument(
        "--cache-dir",
        type=Path,
        help="the mount's --cache-dir, if it used another than the default (its control socket is there)",
    )
    counters.add_argument("--json", action="store_true", help="print JSON for programs")
    return parser


def options_from(args: argparse.Namespace) -> MountOptions:
    return MountOptions(
        source=Source.parse(args.source),
        mountpoint=args.mountpoint.absolute(),
        store=StoreOptions(
            endpoint_url=args.endpoint_url,
            region=args.region,
            profile=args.profile,
            max_connections=args.max_connections,
            max_attempts=args.max_attempts,
            request_timeout=args.request_timeout,
        ),
        read=ReadOptions(),
        read_only=args.read_only,
        direct_io=args.direct_io,
        xattrs=args.xattrs,
        uid=args.uid,
        gid=args.gid,
        file_mode=args.file_mode,
        dir_mode=args.dir_mode,
        allow_other=args.allow_other,
        listing_attributes=args.listing_attributes,
        consistency=args.consistency,
        metadata_ttl=args.metadata_ttl,
        writeback_delay=args.writeback_delay,
        durability=args.durability,
        cache_dir=args.cache_dir.absolute() if args.cache_dir else default_cache_dir(),
        cache_size=args.cache_size,
        upload_concurrency=args.upload_concurrency,
        upload_part_size=args.upload_part_size,
        metrics_port=args.metrics_port,
        metrics_address=args.metrics_address,
        on_recovery=args.on_recovery,
        hold=getattr(args, "hold", None),
    )


def check_log_file(log_file: Path | None) -> None:
    """MountError (one line) unless the daemon can append to ``log_file``: checked before it starts."""
    if log_file is None:
        return
    try:
        with open(log_file, "a"):
            pass
    except OSError as exc:
        raise MountError(f"--log-file {log_file}: cannot write there: {exc.strerror}") from None


def check_paths(opts: MountOptions) -> None:
    """MountError (one line) for a ``--cache-dir`` that is not a folder: checked before the daemon
    starts (nothing is created here)."""
    if opts.cache_dir is not None and opts.cache_dir.exists() and not opts.cache_dir.is_dir():
        raise MountError(f"--cache-dir {opts.cache_dir}: not a folder")


def _fail(message: str) -> int:
    print(f"s3files: error: {message}", file=sys.stderr)
    return 1


def _raise_descriptor_limit() -> None:
    """The daemon's soft descriptor limit up to its hard limit (at most 65536): the cache keeps a
    descriptor per cached file (see core/cache.clean_files_for), and 1024 is a common default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.debug("cannot raise the descriptor limit: %s", exc)


def _run_foreground(opts: MountOptions, ready_fd: int | None) -> int:
    from s3files.fuse.mount import serve_with
    from s3files.store.s3 import open_s3_store

    def tell(line: str) -> None:
        if ready_fd is not None:
            try:
                os.write(ready_fd, line.encode() + b"\n")
                os.close(ready_fd)
            except OSError:
                pass

    def open_store():  # type: ignore[no-untyped-def]
        return open_s3_store(
            opts.source.bucket,
            endpoint_url=opts.store.endpoint_url,
            region=opts.store.region,
            profile=opts.store.profile,
            max_connections=opts.store.max_connections,
            max_attempts=opts.store.max_attempts,
            request_timeout=opts.store.request_timeout,
        )

    _raise_descriptor_limit()
    try:
        trio.run(
            lambda: serve_with(opts, open_store, ready=lambda fs: tell("ready"), handle_signals=True)
        )
    except S3FilesError as exc:
        tell(f"error: {exc}")
        return _fail(str(exc))
    except trio.TooSlowError:
        message = f"S3 did not answer within the mount's check time; is {opts.store.endpoint_url or 'AWS'} up?"
        tell(f"error: {message}")
        return _fail(message)
    except KeyboardInterrupt:
        return 130
    return 0


def _run_background(argv: Sequence[str], opts: MountOptions, log_file: Path | None) -> int:
    """Start the daemon and wait for its word: ready, or one line saying why not."""
    error = spawn_daemon(argv, log_file).wait_ready(opts.mountpoint, log_file)
    return 0 if error is None else _fail(error)


class Starting:
    """A mount daemon started in its own session, and the pipe on which it says "ready" or why not."""

    def __init__(self, child: subprocess.Popen[bytes], read_end: int) -> None:
        self.child = child
        self._read_end = read_end

    def wait_ready(self, mountpoint: Path, log_file: Path | None) -> str | None:
        """None once the mount is usable, or the one line saying why not (the daemon has then exited or
        been killed), within READY_TIMEOUT seconds of now."""
        child, read_end = self.child, self._read_end
        deadline = time.monotonic() + READY_TIMEOUT
        buffer = b""
        try:
            while b"\n" not in buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    child.kill()
                    child.wait(5)
                    return f"mount at {mountpoint} did not become ready within {READY_TIMEOUT:.0f} s" + (
                        f"; see {log_file}" if log_file else "; run with --foreground to see why"
                    )
                readable, _, _ = select.select([read_end], [], [], left)
                if readable:
                    chunk = os.read(read_end, 4096)
                    if not chunk:
                        break  # the daemon closed the pipe without a word: it died
                    buffer += chunk
        finally:
            os.close(read_end)
        line = buffer.decode(errors="replace").strip()
        if line == "ready":
            return None
        if line.startswith("error: "):
            child.wait(10)
            return line[len("error: ") :]
        code = child.wait(10)
        return f"the mount daemon exited (status {code}) before the mount was ready" + (
            f"; see {log_file}" if log_file else "; run with --foreground to see why"
        )


def spawn_daemon(
    argv: Sequence[str], log_file: Path | None, preexec_fn: Callable[[], object] | None = None
) -> Starting:
    """Start ``s3files <argv> --foreground`` as a daemon in its own session (its output to ``log_file``,
    else nowhere); ``preexec_fn`` runs in the child before it starts (s3files exec: a signal when its
    parent dies). Several can start at once; ``wait_ready`` on each."""
    read_end, write_end = os.pipe()
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "s3files", *argv, "--foreground", "--ready-fd", str(write_end)],
            pass_fds=(write_end,),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )
    finally:
        if not isinstance(out, int):
            out.close()
        os.close(write_end)
    return Starting(child, read_end)


def unmount(mountpoint: Path, lazy: bool) -> int:
    mountpoint = mountpoint.absolute()
    entry = mount_entry(mountpoint)
    if entry is None:
        return _fail(f"{mountpoint} is not mounted")
    try:
        cleaned = clean_stale(mountpoint)
    except MountError as exc:
        return _fail(str(exc))
    if cleaned is not None:
        print(f"s3files: {cleaned}", file=sys.stderr)
        return 0
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    command = [tool, "-u"] if tool else ["umount"]
    if lazy:
        command.append("-z" if tool else "-l")
    result = subprocess.run([*command, str(mountpoint)], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "unknown reason"
        hint = "; close the files open there, or use --lazy" if "busy" in reason.lower() else ""
        return _fail(f"cannot unmount {mountpoint}: {reason}{hint}")
    return 0


def status(target: Path, cache_dir: Path | None, as_json: bool) -> int:
    from s3files.status import StatusError, show

    try:
        print(show(target, cache_dir.absolute() if cache_dir else default_cache_dir(), as_json))
    except StatusError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot read {exc.filename or target}: {exc.strerror}")
    return 0


def stats(mountpoint: Path, cache_dir: Path | None, as_json: bool) -> int:
    """``s3files stats``: a running mount's counters, as a table or JSON."""
    from s3files.control import ControlError, stats_of
    from s3files.metrics import table

    try:
        counters = stats_of(mountpoint, cache_dir.absolute() if cache_dir else default_cache_dir())
    except ControlError as exc:
        return _fail(str(exc))
    print(json.dumps(counters, indent=1, sort_keys=True) if as_json else table(counters))
    return 0


def sync(mountpoint: Path, path: Path | None, cache_dir: Path | None, timeout: float | None) -> int:
    """``s3files sync``: one line per file not in S3 after (stderr), exit 1 if any."""
    from s3files.control import ControlError, sync_mount

    try:
        where, failed = sync_mount(mountpoint, path, cache_dir.absolute() if cache_dir else default_cache_dir(), timeout)
    except ControlError as exc:
        return _fail(str(exc))
    for name, why in sorted(failed.items()):
        print(f"s3files: not in S3: {where}/{name}: {why}", file=sys.stderr)
    return 1 if failed else 0


EXEC_ONLY = ("--mount", "--publish", "--on-failure", "--metrics-port")  # (--metrics-port: per mount)


def execute(parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """``s3files exec [options] -- COMMAND ...``: checks here, the job in s3files/job.py. The mount options
    are passed on to each mount daemon as written (the exec parser takes no abbreviations)."""
    from s3files.job import JobError, JobMount, cache_folder_of, parse_mount, run

    if "--" not in argv:
        parser.parse_args(argv)  # --help, or argparse's own error for what is missing
        return _fail("exec: give the command after --, e.g. s3files exec --mount s3://b/:/mnt/b -- ls /mnt/b")
    split = argv.index("--")
    args, command = parser.parse_args(argv[:split]), argv[split + 1 :]
    if not command:
        return _fail("exec: no command after --")
    passed: list[str] = []
    options = iter(argv[1:split])
    for token in options:
        if token in EXEC_ONLY:
            next(options, None)
        elif not token.startswith(tuple(f"{flag}=" for flag in EXEC_ONLY)):
            passed.append(token)
    if args.publish == "on-success":
        if args.consistency != "eventual" and any(t.startswith("--consistency") for t in passed):
            return _fail("exec: --publish on-success holds writes back in the write-back: it needs --consistency eventual")
        passed += ["--consistency", "eventual", "--hold", args.on_failure]
    cache_dir = args.cache_dir.absolute() if args.cache_dir else default_cache_dir()
    try:
        mounts = []
        for spec in args.mounts:
            source, folder = parse_mount(spec)
            mounts.append(JobMount(source, folder, cache_folder_of(source, args.endpoint_url, cache_dir)))
            if args.metrics_port is not None:  # one port per mount: the first's, the next, ... (0: any)
                port = args.metrics_port + len(mounts) - 1 if args.metrics_port else 0
                mounts[-1].daemon_args = ["--metrics-port", str(port)]
        if len({m.mountpoint for m in mounts}) < len(mounts):
            raise JobError("two --mount options name the same folder")
        if len({m.cache_folder for m in mounts}) < len(mounts):
            raise JobError("two --mount options name the same source (one mount each)")
        for mount in mounts:  # every option is checked before anything is mounted
            # (the daemon's own options, which exec does not take, at their defaults)
            given = {**vars(args)}
            given["metrics_port"] = int(mount.daemon_args[1]) if mount.daemon_args else None
            given |= {"source": mount.source, "mountpoint": mount.mountpoint}
            options_from(argparse.Namespace(**given))
        check_log_file(args.log_file)
    except (JobError, MountError) as exc:
        print(f"s3files: error: exec: {exc}", file=sys.stderr)
        return 125
    return run(mounts, passed, command, args.publish, args.on_failure, args.log_file)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # The harness owns its own options (argparse's REMAINDER would not pass them through).
        from s3files_bench.cli import main as bench_main

        return bench_main(argv[1:])
    parser = build_parser()
    if argv[:1] == ["exec"]:
        return execute(parser, argv)
    args = parser.parse_args(argv)
    if args.command == "unmount":
        return unmount(args.mountpoint, args.lazy)
    if args.command == "status":
        return status(args.target, args.cache_dir, args.json)
    if args.command == "stats":
        return stats(args.mountpoint, args.cache_dir, args.json)
    if args.command == "sync":
        return sync(args.mountpoint, args.path, args.cache_dir, args.timeout)
    try:
        opts = options_from(args)
        check_log_file(args.log_file)
        check_paths(opts)
    except MountError as exc:
        return _fail(str(exc))
    if args.foreground:
        logs.setup(args.log_level, args.log_file, args.log_format)
        return _run_foreground(opts, args.ready_fd)
    # The parent checks what it can at once, so the common mistakes answer without starting a daemon.
    try:
        cleaned = check_mountpoint(opts.mountpoint)
    except MountError as exc:
        return _fail(str(exc))
    if cleaned is not None:
        print(f"s3files: {cleaned}", file=sys.stderr)
    return _run_background(argv, opts, args.log_file)


if __name__ == "__main__":
    sys.exit(main())
