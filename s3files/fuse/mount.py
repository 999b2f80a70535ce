"""Running one mount: checks, pyfuse3 init/main/close, the nursery for background work, clean stops.

Owns: the mount's lifetime (its background tasks: the status file, the control socket of ``s3files
sync`` (s3files/control.py), signals). ``serve()`` runs in a trio run and returns when the file system is unmounted
(by ``stop``, SIGTERM/SIGINT, or ``umount``); ``mounted_in_thread()`` runs ``serve()`` on a thread of this
process for the library API and tests. pyfuse3 allows one mount per process (its own global state); the
library runs further mounts in child processes.

pyfuse3 facts this relies on: ``terminate()`` makes ``main()`` return but does not cancel running
handlers, so handlers get a grace period and are then cancelled; ``max_read`` breaks the INIT handshake,
so large FUSE reads come from raising the mount's ``read_ahead_kb`` instead (1024 KiB gives 1 MiB read
requests instead of 128 KiB ones: 8x fewer requests, much less daemon CPU per byte). It must be raised
*after* the kernel's INIT handshake: the INIT reply sets the mount's read-ahead to the max_readahead libfuse
answers (128 KiB), undoing any earlier value. A file takes its read-ahead from the mount at open, so the
mount reports itself ready only after that.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from s3files import control
from s3files.cachefolder import cache_folder
from s3files.core.fs import FileSystem
from s3files.core.kernel import NoKernelCache
from s3files.core.records import CacheFolder
from s3files.core.recovery import OnRecovery
from s3files.errors import MountError, S3FilesError
from s3files.fuse.adapter import Operations
from s3files.fuse.dirops import answer_init
from s3files.fuse.kernel import FuseKernelCache
from s3files.metrics import Metrics, on_trio
from s3files.mountinfo import check_mountpoint, mount_entry
from s3files.options import MountOptions
from s3files.status import StatusWriter, canonical
from s3files.store.base import ObjectStore

log = logging.getLogger(__name__)

STOP_GRACE = 5.0  # seconds running handlers get after a stop before they are cancelled
CHECK_TIMEOUT = 15.0  # seconds the bucket check may take before the mount gives up
STATUS_INTERVAL = 1.0  # seconds between looks at the status `s3files status` shows (written if changed)
SUMMARY_SECONDS = 60.0  # a log line of the activity per this many seconds, when there was any

OpenStore = Callable[[], contextlib.AbstractAsyncContextManager[ObjectStore]]


def set_read_ahead(mountpoint: Path, kb: int) -> None:
    """Raise the kernel's read-ahead of this mount, which sets the size of FUSE read requests."""
    entry = mount_entry(mountpoint)
    if entry is None:
        log.warning("cannot find %s in mountinfo; FUSE reads stay at the kernel default", mountpoint)
        return
    path = Path("/sys/class/bdi") / entry.device / "read_ahead_kb"
    try:
        path.write_text(str(kb))
        log.debug("set %s to %d", path, kb)
    except OSError as exc:
        log.warning("cannot set %s (%s); FUSE reads stay at the kernel default", path, exc.strerror)


def fuse_options(opts: MountOptions) -> set[str]:
    options = {"default_permissions", f"fsname={opts.source}", "subtype=s3files", "noatime"}
    if opts.read_only:
        options.add("ro")
    if opts.allow_other:
        options.add("allow_other")
    return options


async def serve(
    opts: MountOptions,
    store: ObjectStore,
    *,
    ready: Callable[[FileSystem], None] | None = None,
    stop: trio.Event | None = None,
    handle_signals: bool = False,
) -> None:
    """Check, mount, serve until unmounted or stopped, then unmount. Errors before mounting raise."""
    cleaned = check_mountpoint(opts.mountpoint)
    if cleaned is not None:
        log.warning("%s", cleaned)
    with trio.fail_after(CHECK_TIMEOUT):
        await store.check_bucket()
    stop = stop if stop is not None else trio.Event()
    with cache_folder(opts) as folder, served_metrics(opts) as metrics:
        await _serve(opts, store, folder, metrics, ready, stop, handle_signals)


@contextlib.contextmanager
def served_metrics(opts: MountOptions) -> Iterator[Metrics]:
    """The mount's metrics (s3files/metrics.py), served over HTTP with ``--metrics-port`` until the mount
    ends. A port that cannot be served is a MountError before anything is mounted."""
    metrics = Metrics()
    if opts.metrics_port is not None:
        try:
            port = metrics.serve(opts.metrics_address, opts.metrics_port)
        except OSError as exc:
            where = f"{opts.metrics_address}:{opts.metrics_port}"
            raise MountError(f"--metrics-port: cannot serve metrics at {where}: {exc.strerror or exc}") from None
        log.info("metrics at http://%s:%d/metrics", opts.metrics_address, port)
    try:
        yield metrics
    finally:
        metrics.stop()


async def _serve(
    opts: MountOptions,
    store: ObjectStore,
    folder: CacheFolder,
    metrics: Metrics,
    ready: Callable[[FileSystem], None] | None,
    stop: trio.Event,
    handle_signals: bool,
) -> None:
    async with trio.open_nursery() as nursery:
        fs = FileSystem(store, opts, spawn=nursery.start_soon, staging=folder)
        await fs.recover(OnRecovery(opts.on_recovery))
        metrics.watch(on_trio(fs.statistics, trio.lowlevel.current_trio_token()))
        pyfuse3.init(Operations(fs, metrics), str(opts.mountpoint), fuse_options(opts))
        kernel = FuseKernelCache()
        fs.use_kernel_cache(kernel)
        try:
            try:
                answer_init(allow_mmap=opts.direct_io)
            except OSError as exc:
                raise MountError(f"the FUSE handshake with the kernel failed: {exc}") from None
            nursery.start_soon(kernel.run)
            nursery.start_soon(_after_init, opts, fs, ready)
            nursery.start_soon(_write_status, opts, fs, folder)
            handlers = control.Handlers(fs.sync, fs.publish_held, partial(_counters, fs, metrics))
            nursery.start_soon(control.serve, folder.root, handlers)
            nursery.start_soon(summarize, fs.statistics, metrics, SUMMARY_SECONDS)
            if handle_signals:
                nursery.start_soon(_stop_on_signals, stop)
            with trio.CancelScope() as main_scope:
                nursery.start_soon(_terminate_on, stop, main_scope)
                await pyfuse3.main()
        finally:
            fs.use_kernel_cache(NoKernelCache())
            with trio.CancelScope(shield=True):
                await kernel.aclose()
            pyfuse3.close(unmount=True)
            with trio.CancelScope(shield=True):
                await fs.aclose()
            nursery.cancel_scope.cancel()
    log.info("unmounted %s", opts.mountpoint)


async def _after_init(opts: MountOptions, fs: FileSystem, ready: Callable[[FileSystem], None] | None) -> None:
    """Once the kernel's INIT handshake is done, raise the read-ahead and report the mount ready.

    A stat of the mount point waits in the kernel until INIT has been answered (pyfuse3.main() answers it
    on this trio run), so when it returns the INIT reply can no longer reset the read-ahead."""
    try:
        with trio.fail_after(CHECK_TIMEOUT):
            await trio.to_thread.run_sync(os.stat, opts.mountpoint, abandon_on_cancel=True)
    except (OSError, trio.TooSlowError) as exc:
        log.warning("mount point %s did not answer a stat (%r); FUSE reads stay small", opts.mountpoint, exc)
    else:
        set_read_ahead(opts.mountpoint, opts.read.read_ahead_kb)
    log.info("mounted %s at %s", opts.source, opts.mountpoint)
    if ready is not None:
        ready(fs)


async def _write_status(opts: MountOptions, fs: FileSystem, folder: CacheFolder) -> None:
    """Keep ``status.json`` in the cache folder current for ``s3files status`` (s3files/status.py) while
    mounted, the unmount's uploads included: ``fs.status()`` about once a second, written only when it
    changed. Removed when the mount ends (cancelled with the nursery); a daemon that dies leaves it, and
    ``s3files status`` tells by the folder's lock that nobody runs there any more."""
    writer = StatusWriter(folder.root, canonical(opts.mountpoint), str(opts.source))
    try:
        while True:
            writer.update(fs.status)
            await trio.sleep(STATUS_INTERVAL)
    finally:
        writer.remove()


def _counters(fs: FileSystem, metrics: Metrics) -> dict[str, Any]:
    """What ``s3files stats`` shows: the core's counters and the FUSE operations answered."""
    return {**fs.statistics(), "fuse": metrics.by_operation()}


async def summarize(statistics: Callable[[], Mapping[str, Any]], metrics: Metrics, every: float) -> None:
    """One INFO line per ``every`` seconds in which anything happened: S3 requests by operation, FUSE
    operations answered and how many failed, so a log shows the mount's activity without DEBUG."""

    def now() -> tuple[Counter[str], int, int]:
        return Counter(statistics().get("requests") or {}), metrics.answered, metrics.failed

    before = now()
    while True:
        await trio.sleep(every)
        after = now()
        requests = after[0] - before[0]
        answered, failed = after[1] - before[1], after[2] - before[2]
        if requests or answered:
            by_op = " ".join(f"{op}={n}" for op, n in sorted(requests.items()))
            log.info(
                "op=summary seconds=%.0f requests=%d fuse_operations=%d errors=%d (%s)",
                every, sum(requests.values()), answered, failed, by_op or "no requests",
            )  # fmt: skip
        before = after


async def _terminate_on(stop: trio.Event, main_scope: trio.CancelScope) -> None:
    await stop.wait()
    log.info("stopping: finishing requests in flight (up to %.0f s)", STOP_GRACE)
    pyfuse3.terminate()
    await trio.sleep(STOP_GRACE)
    main_scope.cancel()


async def _stop_on_signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            stop.set()
            return


async def serve_with(
    opts: MountOptions,
    open_store: OpenStore,
    *,
    ready: Callable[[FileSystem], None] | None = None,
    stop: trio.Event | None = None,
    handle_signals: bool = False,
) -> None:
    """``serve`` with a store opened (and closed) around it."""
    async with open_store() as store:
        await serve(opts, store, ready=ready, stop=stop, handle_signals=handle_signals)


@contextlib.contextmanager
def mounted_in_thread(opts: MountOptions, open_store: OpenStore, timeout: float = 30.0) -> Iterator[FileSystem]:
    """Mount on a thread of this process for the ``with`` block; yields the core FileSystem.

    Raises the mount's own error (e.g. MountError, BucketNotFound) if it fails to start.
    """
    started = threading.Event()
    box: dict[str, object] = {}

    def on_ready(fs: FileSystem) -> None:
        box["fs"] = fs
        box["token"] = trio.lowlevel.current_trio_token()
        started.set()

    async def main() -> None:
        stop = trio.Event()
        box["stop"] = stop
        await serve_with(opts, open_store, ready=on_ready, stop=stop)

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:
            box["error"] = exc
        finally:
            started.set()

    thread = threading.Thread(target=run, name=f"s3files-mount:{opts.mountpoint}", daemon=True)
    thread.start()
    started.wait(timeout)
    if "fs" not in box:
        thread.join(timeout)
        error = box.get("error")
        if isinstance(error, BaseException):
            raise error
        raise MountError(f"mount at {opts.mountpoint} did not start within {timeout:.0f} s")
    try:
        yield box["fs"]  # type: ignore[misc]
    finally:
        token = box["token"]
        stop = box["stop"]
        assert isinstance(token, trio.lowlevel.TrioToken) and isinstance(stop, trio.Event)
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(timeout)
        if thread.is_alive():
            log.error("mount thread for %s did not stop within %.0f s", opts.mountpoint, timeout)
        error = box.get("error")
        if isinstance(error, S3FilesError):
            raise error
