"""The workloads: what each one seeds, and how each variant (SDK, baseline, a file system) does it.

Owns: the definition of every figure (unit, which direction is better, what exactly is timed) and the code
that performs it for each kind of variant:

- ``sdk`` ("raw"): boto3 calls done well and single-stream (one GetObject / PutObject per file; ranged
  GETs for random reads): the ceiling on this server on loopback, what naive SDK code gets on a network;
- ``parallel`` ("raw-parallel"; read and write workloads): boto3's transfer manager in memory, with as many
  8 MiB requests in flight per file as the mount (``sdk.PARALLEL``): the reference on a network;
- ``baseline``: download-process-upload as scripts do it: boto3 download_file / upload_file through a
  temp dir, then local file access (so its times include the download or the upload);
- ``fs``: plain file calls on a mounted folder: s3files ("mount") and the peers (s3fs, rclone).

Each workload calls ``measure(figure, fn)`` once per figure; the runner times nothing itself but counts
requests, resets/reads peak memory and records errors around ``fn``. Every write is "done" only once the
object is in the bucket (checked with an uncounted client), and written objects are deleted afterwards
(outside the timing) so the server's storage stays bounded. "Cold" always means an object this file system
has never read: every round gets its own copies, seeded before any mount starts (a peer's directory cache
would otherwise hide objects seeded later).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import random
import resource
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from s3files_bench import sdk
from s3files_bench.errors import MeasurementError
from s3files_bench.measure import (
    check_size,
    copy_file,
    drop_cache,
    drop_cached,
    mibs,
    percentile,
    read_file,
    run_child,
)
from s3files_bench.mounts import FsMount
from s3files_bench.plan import KIB, MIB, Plan
from s3files_bench.servers import Target
from s3files_bench.transform import process

Sample = dict[str, Any]  # "value" (the figure), optional extras; "also": {figure: Sample}; "requests"
Measure = Callable[..., None]  # measure(figure, fn, also=()) -> None


@dataclass(frozen=True)
class Figure:
    name: str
    unit: str
    better: str  # "higher" or "lower"
    what: str


@dataclass
class Variant:
    """One way of doing the work. ``client`` is counted for sdk/baseline; file systems count their own."""

    name: str  # "raw", "raw-parallel", "baseline", "mount", "s3fs", "rclone"
    kind: str  # "sdk", "parallel", "baseline", "fs"
    client: Any = None
    counter: sdk.RequestCounter | None = None
    fs: FsMount | None = None
    scratch: Path | None = None  # the baseline's local temp dir

    def requests(self) -> dict[str, int] | None:
        if self.fs is not None:
            return self.fs.request_counts()
        return self.counter.snapshot() if self.counter is not None else None


@dataclass
class Bench:
    """What every workload shares: the plan, the target, an uncounted client, local source files."""

    plan: Plan
    target: Target
    admin: Any  # uncounted boto3 client: seeding, checking that writes landed, cleaning up
    workdir: Path
    _files: dict[str, Path] = field(default_factory=dict)
    _digests: dict[str, str] = field(default_factory=dict)

    def random_file(self, size: int) -> Path:
        """A local file of ``size`` random bytes (made once; the page cache keeps it warm)."""
        return self._local(f"random-{size}.bin", size, lambda n: os.urandom(n))

    def text_file(self, size: int) -> Path:
        """A local text file of ``size`` bytes in 76-character lines (base64 of random bytes)."""
        return self._local(f"text-{size}.txt", size, lambda n: base64.encodebytes(os.urandom(n * 3 // 4)))

    def _local(self, name: str, size: int, make: Callable[[int], bytes]) -> Path:
        path = self._files.get(name)
        if path is None:
            path = self.workdir / name
            with open(path, "wb") as f:
                left = size
                while left > 0:
                    data = make(min(left, 8 * MIB))[:left]
                    f.write(data)
                    left -= len(data)
            self._files[name] = path
        return path

    def seed(self, local: Path, names: list[str]) -> None:
        """Upload ``local`` as the first name and copy it server-side to the others."""
        sdk.upload(self.admin, self.target.bucket, self.target.key(names[0]), local)
        for name in names[1:]:
            sdk.copy(self.admin, self.target.bucket, self.target.key(names[0]), self.target.key(name))

    def delete(self, *names: str) -> None:
        sdk.delete_keys(self.admin, self.target.bucket, [self.target.key(n) for n in names])

    def digest(self, local: Path, process: Callable[[bytes], bytes] | None = None) -> str:
        """sha256 of ``local`` (after ``process``, chunk by chunk), computed once per file and process."""
        key = f"{local}:{process.__name__ if process else ''}"
        if key not in self._digests:
            h = hashlib.sha256()
            with open(local, "rb") as f:
                while data := f.read(8 * MIB):
                    h.update(process(data) if process else data)
            self._digests[key] = h.hexdigest()
        return self._digests[key]

    def verify(self, name: str, digest: str) -> None:
        """Raise EIO unless the object's content has this sha256 (outside any timing, uncounted)."""
        body = self.admin.get_object(Bucket=self.target.bucket, Key=self.target.key(name))["Body"]
        h = hashlib.sha256()
        for data in body.iter_chunks(8 * MIB):
            h.update(data)
        if h.hexdigest() != digest:
            raise OSError(errno.EIO, f"{name}: the object's content differs from what was written")

    def wait_written(self, name: str, size: int) -> None:
        sdk.wait_object(
            self.admin, self.target.bucket, self.target.key(name), size, self.plan.verify_timeout_s
        )

    def get(self, client: Any, name: str, chunk: int, first: int = 0) -> tuple[float, float, int]:
        """GetObject streamed to the end, like ``read_file``: (seconds to ``first`` bytes, seconds, bytes)."""
        start = time.perf_counter()
        body = client.get_object(Bucket=self.target.bucket, Key=self.target.key(name))["Body"]
        total, first_at = 0, 0.0
        if first:
            total += len(body.read(first))
            first_at = time.perf_counter() - start
        for data in body.iter_chunks(chunk):
            total += len(data)
        return first_at, time.perf_counter() - start, total

    def get_parallel(self, client: Any, name: str, first: int = 0) -> tuple[float, float, int]:
        """The transfer manager's parallel ranged GETs (``sdk.PARALLEL``) into a consumer that takes the
        bytes in order, as a reader would: (seconds to ``first`` bytes, seconds, bytes). The manager sends
        a HEAD first for the size, as a user's ``download_fileobj`` does."""
        sink = _Sink(first)
        sink.start = time.perf_counter()
        client.download_fileobj(self.target.bucket, self.target.key(name), sink, Config=sdk.PARALLEL)
        return sink.first_at - sink.start, time.perf_counter() - sink.start, sink.total

    def put_parallel(self, client: Any, name: str, local: Path) -> None:
        """The transfer manager's parallel multipart upload (``sdk.PARALLEL``) of a local file."""
        client.upload_file(str(local), self.target.bucket, self.target.key(name), Config=sdk.PARALLEL)

    def put(self, client: Any, name: str, local: Path) -> None:
        with open(local, "rb") as body:
            client.put_object(Bucket=self.target.bucket, Key=self.target.key(name), Body=body)

    def download(self, client: Any, name: str, local: Path) -> None:
        client.download_file(self.target.bucket, self.target.key(name), str(local), Config=sdk.TRANSFER)

    def upload(self, client: Any, name: str, local: Path) -> None:
        client.upload_file(str(local), self.target.bucket, self.target.key(name), Config=sdk.TRANSFER)


class _Sink:
    """A non-seekable file for ``download_fileobj``: the manager hands it the bytes in order (buffering
    parts that arrive early), as a program reading the object would consume them."""

    def __init__(self, first: int) -> None:
        self.start = self.first_at = 0.0
        self.total = 0
        self._first = max(first, 1)

    def write(self, data: bytes) -> int:
        self.total += len(data)
        if not self.first_at and self.total >= self._first:
            self.first_at = time.perf_counter()
        return len(data)


class Workload:
    """A workload seeds its objects once, then runs one round for one variant at a time."""

    name: ClassVar[str]
    figures: ClassVar[tuple[Figure, ...]]
    kinds: ClassVar[tuple[str, ...]] = ("sdk", "baseline", "fs")  # the variants it measures

    def seed(self, b: Bench) -> None:
        raise NotImplementedError

    def run(self, b: Bench, v: Variant, r: int, measure: Measure) -> None:
        raise NotImplementedError


def _scratch(v: Variant) -> Path:
    assert v.scratch is not None
    return v.scratch


def _root(v: Variant) -> Path:
    assert v.fs is not None
    return v.fs.root


class SeqRead(Workload):
    name = "seq_read"
    kinds = ("sdk", "parallel", "baseline", "fs")
    figures = (
        Figure("cold", "MiB/s", "higher", "sequential read of a large file never read before"),
        Figure("warm", "MiB/s", "higher", "the same file read again"),
        Figure("ttfb", "ms", "lower", "open + first 64 KiB of the cold read (requests: see cold)"),
        Figure(
            "cold_recycled",
            "MiB/s",
            "higher",
            "another file never read, right after the first one's cached pages were dropped",
        ),
    )

    def seed(self, b: Bench) -> None:
        names = [f"seq/r{r}{which}.bin" for r in range(b.plan.rounds) for which in ("", "b")]
        b.seed(b.random_file(b.plan.big_size), names)

    def run(self, b: Bench, v: Variant, r: int, measure: Measure) -> None:
        """cold_recycled: a cold read pays for the memory its bytes land in (the file system's page cache,
        the baseline's local copy). New memory is dear in a VM: the first touch of guest memory never
        touched before, or handed back to the host by free page reporting, waits for the host (measured
        on the development VM, see RESULTS.md; ``--memory-limit`` is the container-like remedy). On a busy
        machine the kernel reuses pages it has just freed; dropping the first file's pages just before
        reading the second one measures that case. The SDK reads into the same buffer every time."""
        name, size, chunk, first = f"seq/r{r}.bin", b.plan.big_size, b.plan.chunk, b.plan.ttfb_bytes
        second = f"seq/r{r}b.bin"

        def one_read(read: Callable[[], tuple[float, float, int]], extra_s: float = 0.0, what: str = name) -> Sample:
            first_s, seconds, got = read()
            check_size(got, size, what)
            return {
                "value": mibs(size, seconds + extra_s),
                "also": {"ttfb": {"value": (first_s + extra_s) * 1000}},
            }

        if v.kind == "fs":
            path = _root(v) / name
            measure("cold", lambda: one_read(lambda: read_file(path, chunk, first)), also=("ttfb",))
            measure("warm", lambda: {"value": one_read(lambda: read_file(path, chunk))["value"]})
            drop_cached(path)
            measure(
                "cold_recycled",
                lambda: {"value": one_read(lambda: read_file(_root(v) / second, chunk), what=second)["value"]},
            )
            drop_cached(_root(v) / second)
        elif v.kind == "parallel":
            measure("cold", lambda: one_read(lambda: b.get_parallel(v.client, name, first)), also=("ttfb",))
            measure("warm", lambda: {"value": one_read(lambda: b.get_parallel(v.client, name))["value"]})
            measure(
                "cold_recycled",
                lambda: {"value": one_read(lambda: b.get_parallel(v.client, second), what=second)["value"]},
            )
        elif v.kind == "sdk":
            measure("cold", lambda: one_read(lambda: b.get(v.client, name, chunk, first)), also=("ttfb",))
            measure("warm", lambda: {"value": one_read(lambda: b.get(v.client, name, chunk))["value"]})
            measure(
                "cold_recycled", lambda: {"value": one_read(lambda: b.get(v.client, second, chunk), what=second)["value"]}
            )
        else:
            local = _scratch(v) / "seq.bin"

            def cold(key: str) -> Sample:
                start = time.perf_counter()
                b.download(v.client, key, local)
                return one_read(lambda: read_file(local, chunk, first), time.perf_counter() - start, key)

            measure("cold", lambda: cold(name), also=("ttfb",))
            measure("warm", lambda: {"value": one_read(lambda: read_file(local, chunk))["value"]})
            local.unlink(missing_ok=True)  # its pages are freed: the next download reuses them
            measure("cold_recycled", lambda: {"value": cold(second)["value"]})
            local.unlink(missing_ok=True)


class Stream(Workload):
    """A data loader's epoch: several large objects never read, each read once to the end, back to back.

    Why beside seq_read: seq_read times one file after the mount sat idle while the other variants ran;
    a loader streams file after file, with the read-ahead's buffers and connections in use. ``cpu`` is what
    the client spent per GiB: this process (the reader; the SDK or the baseline's transfer threads) plus,
    for a file system, its daemon. With the server on the same machine, client CPU is what the mount
    competes for.
    """

    name = "stream"
    figures = (
        Figure("files", "MiB/s", "higher", "read several large files never read, back to back"),
        Figure("cpu", "s/GiB", "lower", "client CPU per GiB read: reader + daemon (files)"),
    )

    def seed(self, b: Bench) -> None:
        names = [f"stream/r{r}f{i}.bin" for r in range(b.plan.rounds) for i in range(b.plan.stream_files)]
        b.seed(b.random_file(b.plan.big_size), names)

    def run(self, b: Bench, v: Variant, r: int, measure: Measure) -> None:
        size, chunk = b.plan.big_size, b.plan.chunk
        names = [f"stream/r{r}f{i}.bin" for i in range(b.plan.stream_files)]

        def client_cpu() -> float:
            """CPU seconds so far of this process (all threads: the reader, the SDK's or the baseline's
            transfer threads) and of the file system's daemon, if any. ``getrusage``, not ``os.times``:
            the latter counts in clock ticks (10 ms), and the SDK reads a quick run's files in about that."""
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return usage.ru_utime + usage.ru_stime + (v.fs.cpu_seconds() if v.fs is not None else 0.0)

        def read(name: str) -> int:
            if v.kind == "fs":
                return read_file(_root(v) / name, chunk)[2]
            if v.kind == "sdk":
                return b.get(v.client, name, chunk)[2]
            local = _scratch(v) / "stream.bin"
            b.download(v.client, name, local)
            try:
                return read_file(local, chunk)[2]
            finally:
                local.unlink()

        def epoch() -> Sample:
            cpu, start = client_cpu(), time.perf_counter()
            for name in names:
                check_size(read(name), size, name)
            seconds = time.perf_counter() - start
            cpu = client_cpu() - cpu
            gib = len(names) * size / (1024 * MIB)
            return {"value": mibs(len(names) * size, seconds), "also": {"cpu": {"value": cpu / gib}}}

        try:
            measure("files", epoch, also=("cpu",))
        finally:
            if v.kind == "fs":
                for name in names:
                    drop_cached(_root(v) / name)  # as a loader's memory would be reused, not grown


class SeqWrite(Workload):
    name = "seq_write"
    kinds = ("sdk", "parallel", "baseline", "fs")
    figures = (
        Figure(
            "write", "MiB/s", "higher", "write a large new file until close returns and the object exists"
        ),
    )

    def seed(self, b: Bench) -> None:
        b.random_file(b.plan.big_size)

    def run(self, b: Bench, v: Variant, r: int, measure: Measure) -> None:
        source, size, name = b.random_file(b.plan.big_size), b.plan.big_size, f"out-{v.name}-seqw-r{r}.bin"

        def write() -> Sample:
            start = time.perf_counter()
            if v.kind == "fs":
                copy_file(source, _root(v) / name, b.plan.chunk)
                b.wait_written(name, size)
            elif v.kind == "sdk":
                b.put(v.client, name, source)  # one PutObject of the same bytes
            elif v.kind == "parallel":
                b.put_parallel(v.client, name, source)  # the transfer manager's parallel multipart upload
            else:
                local = _scratch(v) / "out.bin"
                copy_file(source, local, b.plan.chunk)
                b.upload(v.client, name, local)
                local.unlink()
            sample = {"value": mibs(size, time.perf_counter() - start)}
            b.verify(name, b.digest(source))
            return sample

        try:
            measure("write", write)
        finally:
            b.delete(name)


class RandomRead(Workload):
    name = "random_read"
    sizes = ((4 * KIB, "4k"), (64 * KIB, "64k"))
    figures = (
        Figure("4k", "IOPS", "higher", "4 KiB reads at random aligned offsets of a large file"),
        Figure("64k", "IOPS", "higher", "64 KiB reads at random aligned offsets of a large file"),
    )
    OBJECT = "random.bin"

    def seed(self, b: Bench) -> None:
        b.seed(b.random_file(b.plan.big_size), [self.OBJECT])

    def run(self, b: Bench, v: Variant, r: int, measure: Measure) -> None:
        for size, label in self.sizes:
            rng = random.Random(f"{r}/{size}")  # the same offsets for every variant in a round
            offsets = [rng.randrange(b.plan.big_size // size) * size for _ in range(b.plan.random_ops)]
            measure(label, lambda size=size, offsets=offsets: self._reads(b, v, size, offsets))

    def _reads(self, b: Bench, v: Variant, size: int, offsets: list[int]) -> Sample:
        latencies: list[float] = []
        budget = b.plan.random_budget_s
        setup_s = 0.0
        if v.kind == "sdk":
            key = b.target.key(self.OBJECT)

            def read_at(offset: int) -> int:
                byte_range = f"bytes={offset}-{offset + size - 1}"
                return len(
                    v.client.get_object(Bucket=b.target.bucket, Key=key, Range=byte_range)["Body"].read()
                )

            fd = -1
        else:
            if v.kind == "fs":
                path = _root(v) / self.OBJECT
            else:
                path = _scratch(v) / self.OBJECT
                start = time.perf_counter()
                b.download(v.client, self.OBJECT, path)
                setup_s, budget = time.perf_counter() - start, float("inf")
            fd = os.open(path, os.O_RDONLY)
            if v.kind == "fs":
                drop_cache(fd)  # the same object every round: forget what the last round read

            def read_at(offset: int) -> int:
                return len(os.pread(fd, size, offset))

        try:
            started = time.perf_counter()
            for offset in offsets:
                before = time.perf_counter()
                check_size(read_at(offset), size, f"read at {offset}")
                latencies.append(time.perf_counter() - before)
                if before - started > budget:
                    break
        finally:
            if fd >= 0:
                os.close(fd)
            if v.kind == "baseline":
                path.unlink(missing_ok=True)
        total = setup_s + sum(latencies)
        return {
            "value": len(latencies) / total,
            "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000,
            "ops": len(latencies),
            **({"download_s": setup_s} if setup_s else {}),
        }


class SmallFiles(Workload):
    name = "small_files"
    figures = (
        Figure(
            "create", "files/s", "higher", "create + write + close N small files, until all are in the bucket"
        ),
        Figure(
            "create_closed",
            "files/s",
            "higher",
            "the same, until the last close returned (a write-back mount uploads after that)",
        ),
        Figure("stat", "files/s", "higher", "stat each of N files (baseline: one listing gives every size)"),
        Figure("list", "ms", "lower", "list a folder of N files"),
        Figure("read", "files/s", "higher", "read each of N files"),
    )

    def seed(self, b: Bench) -> None:
        data = os.urandom(b.plan.small_size)
        names = [self._name(r, i) for r in range(b.plan.rounds) for i in range(b.plan.small_files)]
        with ThreadPoolExecutor(16) as pool:
            for future in [
                pool.submit(b.admin.put_object, Bucket=b.target.bucket, Key=b.target.key(n), Body=data)
                for n in names
            ]:
                future.result()

    @staticmethod
    def _name(r: int, i: int) -> str:
        return f"small/r{r}/f{i:05d}.txt"

    def run(self, b: Bench, v: Variant, r: int, measure: Measure) -> None:
        n, size = b.plan.small_files, b.plan.small_size
        names = [self._name(r, i) for i in range(n)]
        folder, out = f"small/r{r}", f"out-{v.name}-small-r{r}"
        data = os.urandom(size)
        bucket = b.target.bucket

        closed = [0.0]  # when create's last close (or upload) returned (perf_counter)

        def timed(work: Callable[[], None], per_file: bool = True) -> Sample:
            start = time.perf_counter()
            work()
            seconds = time.perf_counter() - start
            return {"value": n / seconds if per_file else seconds * 1000}

        def timed_create() -> Sample:
            start = time.perf_counter()
            create()
            seconds, until_closed = time.perf_counter() - start, closed[0] - start
            return {"value": n / seconds, "also": {"create_closed": {"value": n / max(until_closed, 1e-9)}}}

        def listing(client: Any) -> None:
            got = len(sdk.list_keys(client, bucket, b.target.key(folder + "/")))
            check_size(got, n, f"listing of {folder}")

        if v.kind == "fs":
            root = _root(v)

            def create() -> None:
                os.mkdir(root / out)
                for i in range(n):
                    with open(root / out / f"f{i:05d}.txt", "wb") as f:
                        f.write(data)
                closed[0] = time.perf_counter()
                sdk.wait_keys(b.admin, bucket, b.target.key(out + "/f"), n, b.plan.verify_timeout_s)

            def stat_all() -> None:
                for name in names:
                    check_size(os.stat(root / name).st_size, size, name)

            def list_folder() -> None:
                check_size(len(os.listdir(root / folder)), n, folder)

            def read_all() -> None:
                for name in names:
                    check_size(read_file(root / name, b.plan.chunk)[2], size, name)

        elif v.kind == "sdk":

            def create() -> None:
                for i in range(n):
                    v.client.put_object(Bucket=bucket, Key=b.target.key(f"{out}/f{i:05d}.txt"), Body=data)
                closed[0] = time.perf_counter()

            def stat_all() -> None:
                for name in names:
                    head = v.client.head_object(Bucket=bucket, Key=b.target.key(name))
                    check_size(head["ContentLength"], size, name)

            def list_folder() -> None:
                listing(v.client)

            def read_all() -> None:
                for name in names:
                    got = len(v.client.get_object(Bucket=bucket, Key=b.target.key(name))["Body"].read())
                    check_size(got, size, name)

        else:
            local = _scratch(v) / "small"

            def create() -> None:
                local.mkdir(exist_ok=True)
                for i in range(n):
                    (local / f"f{i:05d}.txt").write_bytes(data)
                for i in range(n):
                    b.upload(v.client, f"{out}/f{i:05d}.txt", local / f"f{i:05d}.txt")
                closed[0] = time.perf_counter()

            def stat_all() -> None:
                listing(v.client)

            def list_folder() -> None:
                listing(v.client)

            def read_all() -> None:
                local.mkdir(exist_ok=True)
                for name in names:
                    path = local / name.rsplit("/", 1)[-1]
                    b.download(v.client, name, path)
                    check_size(read_file(path, b.plan.chunk)[2], size, name)

        try:
            measure("create", timed_create, also=("create_closed",))
        finally:
            sdk.delete_prefix(b.admin, bucket, b.target.key(out + "/"))
            if v.kind == "baseline":
                _clear(_scratch(v) / "small")
        measure("stat", lambda: timed(stat_all))
        measure("list", lambda: timed(list_folder, per_file=False))
        measure("read", lambda: timed(read_all))
        if v.kind == "baseline":
            _clear(_scratch(v) / "small")


def _clear(folder: Path) -> None:
    if folder.is_dir():
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


class Concurrency(Workload):
    name = "concurrency"
    kinds = ("sdk", "parallel", "baseline", "fs")
    figures = (
        Figure("readers_many", "MiB/s", "higher", "K readers, each on its own file (aggregate)"),
        Figure(
            "writers",
            "MiB/s",
            "higher",
            "K writers, each writing a new file (aggregate, until in the bucket)",
        ),
        Figure("readers_one", "MiB/s", "higher", "K readers on one file (aggregate)"),
    )

    def seed(self, b: Bench) -> None:
        names = [f"conc/r{r}/{f}" for r in range(b.plan.rounds) for f in self._files(b)]
        b.seed(b.random_file(b.plan.concurrency_size), names)

    @staticmethod
    def _files(b: Bench) -> list[str]:
        return [f"f{i}.bin" for i in range(b.plan.concurrency)] + ["one.bin"]

    def run(self, b: Bench, v: Variant, r: int, measure: Measure) -> None:
        k, size, chunk = b.plan.concurrency, b.plan.concurrency_size, b.plan.chunk
        many = [f"conc/r{r}/f{i}.bin" for i in range(k)]
        one = f"conc/r{r}/one.bin"
        outs = [f"out-{v.name}-conc-r{r}-w{i}.bin" for i in range(k)]
        source = b.random_file(size)

        def in_parallel(jobs: list[Callable[[], None]], setup: Callable[[], None] | None = None) -> Sample:
            start = time.perf_counter()
            if setup is not None:
                setup()
            with ThreadPoolExecutor(len(jobs)) as pool:
                for future in [pool.submit(job) for job in jobs]:
                    future.result()
            return {"value": mibs(len(jobs) * size, time.perf_counter() - start)}

        def reader(name: str) -> Callable[[], None]:
            def read() -> None:
                if v.kind == "fs":
                    got = read_file(_root(v) / name, chunk)[2]
                elif v.kind == "sdk":
                    got = b.get(v.client, name, chunk)[2]
                elif v.kind == "parallel":
                    got = b.get_parallel(v.client, name)[2]
                else:
                    local = _scratch(v) / name.replace("/", "-")
                    b.download(v.client, name, local)
                    got = read_file(local, chunk)[2]
                check_size(got, size, name)

            return read

        def writer(i: int) -> Callable[[], None]:
            def write() -> None:
                if v.kind == "fs":
                    copy_file(source, _root(v) / outs[i], chunk)
                    b.wait_written(outs[i], size)
                elif v.kind == "sdk":
                    b.put(v.client, outs[i], source)
                elif v.kind == "parallel":
                    b.put_parallel(v.client, outs[i], source)
                else:
                    local = _scratch(v) / outs[i]
                    copy_file(source, local, chunk)
                    b.upload(v.client, outs[i], local)

            return write

        measure("readers_many", lambda: in_parallel([reader(n) for n in many]))

        def write_all() -> Sample:
            sample = in_parallel([writer(i) for i in range(k)])
            for name in outs:
                b.verify(name, b.digest(source))
            return sample

        try:
            measure("writers", write_all)
        finally:
            b.delete(*outs)
        if v.kind == "baseline":
            # A download-process-upload script downloads a shared input once, then its workers read it.
            local = _scratch(v) / "one.bin"
            readers = [lambda: check_size(read_file(local, chunk)[2], size, one) for _ in range(k)]
            measure(
                "readers_one", lambda: in_parallel(readers, setup=lambda: b.download(v.client, one, local))
            )
        else:
            measure("readers_one", lambda: in_parallel([reader(one) for _ in range(k)]))
        if v.kind == "baseline":
            for path in _scratch(v).iterdir():
                path.unlink()


class Transform(Workload):
    name = "transform"
    figures = (
        Figure(
            "end_to_end",
            "s",
            "lower",
            "uppercase a large text object into a new object, end to end (a child process)",
        ),
    )

    def seed(self, b: Bench) -> None:
        b.seed(b.text_file(b.plan.big_size), [f"xform/r{r}.txt" for r in range(b.plan.rounds)])

    def run(self, b: Bench, v: Variant, r: int, measure: Measure) -> None:
        source, dest = f"xform/r{r}.txt", f"out-{v.name}-xform-r{r}.txt"
        size = b.plan.big_size
        timeout = max(120.0, size / MIB)  # at >= 1 MiB/s, or something is wrong
        worker = [sys.executable, "-m", "s3files_bench.transform"]
        endpoint = b.target.endpoint_url or "-"

        def transform() -> Sample:
            disk: list[Path] = []
            if v.kind == "fs":
                root = _root(v)
                command = [*worker, "files", str(root / source), str(root / dest)]
                if v.fs is not None and v.fs.disk_dir is not None:
                    disk.append(v.fs.disk_dir)
            else:
                mode = "sdk" if v.kind == "sdk" else "baseline"
                command = [*worker, mode, endpoint, b.target.bucket, b.target.key(source), b.target.key(dest)]
                command.append(b.target.region)
                if v.kind == "baseline":
                    command.append(str(_scratch(v)))
                    disk.append(_scratch(v))
            answer, disk_peak = run_child(command, b.target.env, disk, timeout)
            if "error" in answer:
                raise MeasurementError(str(answer["error"]))
            seconds = float(answer["seconds"])
            if v.kind == "fs":
                start = time.perf_counter()
                b.wait_written(dest, size)
                seconds += time.perf_counter() - start
            sample: Sample = {
                "value": seconds,
                "client_peak_rss_mib": int(answer.get("peak_rss_bytes", 0)) / MIB,
                "disk_peak_mib": disk_peak / MIB if disk or v.kind == "sdk" else None,
            }
            if "requests" in answer:
                sample["requests"] = answer["requests"]
            b.verify(dest, b.digest(b.text_file(size), process))
            return sample

        try:
            measure("end_to_end", transform)
        finally:
            b.delete(dest)


ALL: dict[str, type[Workload]] = {
    w.name: w for w in (SeqRead, SeqWrite, RandomRead, SmallFiles, Concurrency, Transform, Stream)
}
