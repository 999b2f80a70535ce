"""A/B of the store's body path: today's direct path (store/direct.py: hand-written HTTP/1.1, pool, SigV4)
against the AWS Common Runtime's S3 client (store/crt.py, experimental), issue 20's measured spike.

What it measures: the store side alone, no FUSE, so the comparison is of the body path and nothing else:
one process, one S3Store per variant (for "crt", crt_body.py's path put in place of the direct one), the same
calls the mount makes (the reader's ranged ``get_range`` of ``--part-size`` parts into reused buffers, the
uploader's ``upload_part_from`` a local file, ``put`` and ``get_first`` of small files), with the same
number of requests in flight (``--inflight``). For each: MiB/s (or files/s) and this process's CPU seconds
(user + system, ``getrusage``) per GiB moved, less the CPU of the checks below, measured on their thread.

Correct for what it measures: every byte read is checked (CRC-32 of each part against the one written),
every multipart upload's ETag is checked against the MD5s of the parts sent, and every request must have
gone the variant's way (the store's count of direct-path answers), else the run stops.

Fair: the variants alternate within a round (A B, then B A), for ``--rounds`` rounds, against one server
(RGW or moto, pinned with ``--pin-server`` or sharing the CPUs, or through ``--network s3-like``). Run it
under the benchmark lock: ``flock /work/wt/bench.lock python -m s3files_bench.crt_ab --server rgw``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from s3files_bench import netshape
from s3files_bench.errors import BenchError
from s3files_bench.servers import Target, _pids_mentioning, _pinned, open_target

from s3files.store.s3 import S3Store, open_s3_store

try:
    from s3files_bench import crt_body
except ImportError:  # awscrt is not a dependency of s3files: main() says how to get it
    crt_body = None  # type: ignore[assignment]

MIB = 1024 * 1024
VARIANTS = ("direct", "crt")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Meter:
    """CPU spent on checks (on the trio thread), to take out of the process's CPU."""

    check_cpu: float = 0.0

    def crc(self, data: Any) -> int:
        started = time.thread_time()
        value = zlib.crc32(data)
        self.check_cpu += time.thread_time() - started
        return value


@dataclass
class Figures:
    """One workload of one variant: per round, (seconds, CPU seconds, bytes, count)."""

    rounds: list[tuple[float, float, int, int]] = field(default_factory=list)

    def add(self, seconds: float, cpu: float, nbytes: int, count: int) -> None:
        self.rounds.append((seconds, cpu, nbytes, count))

    def mibps(self) -> float:
        return statistics.median(n / MIB / s for s, _, n, _ in self.rounds)

    def per_second(self) -> float:
        return statistics.median(c / s for s, _, _, c in self.rounds)

    def cpu_per_gib(self) -> float:
        return statistics.median(cpu / (n / 2**30) for _, cpu, n, _ in self.rounds)

    def cpu_ms_per_file(self) -> float:
        return statistics.median(cpu * 1000 / c for _, cpu, _, c in self.rounds)


class Data:
    """The big object's parts (each distinct: its number in its first bytes) and their checksums."""

    def __init__(self, size: int, part: int, folder: str) -> None:
        block = os.urandom(part)
        self.part = part
        self.count = -(-size // part)
        self.size = size
        self.crcs: list[int] = []
        md5s = b""
        self.file = tempfile.NamedTemporaryFile(dir=folder, prefix="crt-ab-", delete=False)
        for i in range(self.count):
            n = min(part, size - i * part)
            chunk = struct.pack("<Q", i) + block[8:n]
            self.crcs.append(zlib.crc32(chunk))
            md5s += hashlib.md5(chunk).digest()
            self.file.write(chunk)
        self.file.flush()
        self.multipart_etag = f"{hashlib.md5(md5s).hexdigest()}-{self.count}"

    def close(self) -> None:
        self.file.close()
        os.unlink(self.file.name)


@contextlib.contextmanager
def _rgw_tls(storage: int, pin: bool) -> Iterator[Target]:
    """An embedded RGW serving HTTPS too (a self-signed certificate for 127.0.0.1, trusted through
    AWS_CA_BUNDLE by botocore, the direct path and the CRT alike): real S3 is HTTPS, where the direct path
    decrypts with Python's ssl and sends parts through aiobotocore (no sendfile), and the CRT uses its own
    TLS. rgw.sh knows only HTTP, so the server is started, stopped, given an ssl endpoint and started again."""
    from s3files.rgwserver import RgwServer
    from s3files.store.session import create_bucket

    folder = Path(tempfile.mkdtemp(prefix="s3files-rgw-tls-"))
    cert, key = folder / "tls.crt", folder / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.setdefault("RGW_MEMSTORE_BYTES", str(max(8 * 2**30, storage + 2 * 2**30)))
    rgw = RgwServer.start(folder)
    try:
        rgw.stop()
        conf = folder / "ceph.conf"
        conf.write_text(
            conf.read_text().replace(
                "rgw_frontends = beast ",
                f"rgw_frontends = beast ssl_endpoint=127.0.0.1:{port} ssl_certificate={cert} "
                f"ssl_private_key={key} ",
            )
        )
        rgw = RgwServer.start(folder)
        endpoint = f"https://127.0.0.1:{port}"
        os.environ.update(AWS_CA_BUNDLE=str(cert), AWS_ACCESS_KEY_ID=rgw.access_key, AWS_SECRET_ACCESS_KEY=rgw.secret_key)
        pinned = _pinned(_pids_mentioning(str(folder)), _say) if pin else contextlib.nullcontext()
        with pinned:
            bucket = f"s3files-bench-{os.urandom(4).hex()}"
            create_bucket(bucket, endpoint_url=endpoint, region="us-east-1")
            env = {"AWS_ACCESS_KEY_ID": rgw.access_key, "AWS_SECRET_ACCESS_KEY": rgw.secret_key}
            yield Target("rgw", endpoint, bucket, "ab/", "us-east-1", rgw.access_key, rgw.secret_key, env)
    finally:
        rgw.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _say(text: str) -> None:
    print(text, file=sys.stderr)


async def _bounded(count: int, inflight: int, job: Callable[[int], Awaitable[None]]) -> None:
    """``job(i)`` for i in range(count), at most ``inflight`` at once."""
    limit = trio.Semaphore(inflight)

    async def one(i: int) -> None:
        try:
            await job(i)
        finally:
            limit.release()

    async with trio.open_nursery() as nursery:
        for i in range(count):
            await limit.acquire()
            nursery.start_soon(one, i)


async def _measured(
    store: S3Store,
    meter: Meter,
    figures: Figures,
    nbytes: int,
    count: int,
    run: Callable[[], Awaitable[None]],
    expected: int | None = None,
) -> None:
    """Run ``run``, check that ``expected`` (default: ``count``) requests went the variant's way, and add
    its time and CPU to ``figures``."""
    expected = count if expected is None else expected
    served = store.statistics()["direct_requests"]
    check = meter.check_cpu
    cpu, started = _cpu(), time.monotonic()
    await run()
    seconds, used = time.monotonic() - started, _cpu() - cpu - (meter.check_cpu - check)
    went = store.statistics()["direct_requests"] - served
    if went < expected:
        raise SystemExit(f"only {went} of {expected} requests went the variant's way: not a fair A/B")
    figures.add(seconds, used, nbytes, count)


async def seq_read(store: S3Store, key: str, data: Data, inflight: int, meter: Meter, figures: Figures) -> None:
    """Cold sequential read of the big object: ``part``-sized ranged GETs, ``inflight`` at once, into
    buffers reused as the reader reuses its own."""
    buffers = [bytearray(data.part) for _ in range(inflight)]

    async def job(i: int) -> None:
        start = i * data.part
        end = min(start + data.part, data.size)
        into = buffers.pop() if end - start == data.part else None
        got = await store.get_range(key, start, end, into=into)
        if len(got) != end - start or meter.crc(got) != data.crcs[i]:
            raise SystemExit(f"part {i} of {key}: wrong bytes")
        if into is not None:
            buffers.append(into)

    await _measured(store, meter, figures, data.size, data.count, lambda: _bounded(data.count, inflight, job))


async def write(store: S3Store, key: str, data: Data, inflight: int, meter: Meter, figures: Figures) -> None:
    """Multipart upload of the big object from its local file, ``inflight`` parts at once."""
    parts: list[Any] = [None] * data.count
    fd = data.file.fileno()

    async def run() -> None:
        upload = await store.create_multipart(key)

        async def job(i: int) -> None:
            n = min(data.part, data.size - i * data.part)
            parts[i] = await store.upload_part_from(key, upload, i + 1, fd, i * data.part, n)

        await _bounded(data.count, inflight, job)
        done = await store.complete_multipart(key, upload, parts)
        if done.etag != data.multipart_etag:
            raise SystemExit(f"{key}: ETag {done.etag}, expected {data.multipart_etag}")

    # create and complete go through aiobotocore on both paths: only the parts count as the variant's. Over
    # HTTPS the direct path sends parts through aiobotocore too (it has no sendfile there): as in a mount.
    direct = store._direct
    expected = data.count if direct is not None and direct.sends_files() else 0
    await _measured(store, meter, figures, data.size, data.count, run, expected)


async def small_put(
    store: S3Store, prefix: str, bodies: list[bytes], inflight: int, meter: Meter, figures: Figures
) -> None:
    async def job(i: int) -> None:
        await store.put(f"{prefix}{i:05d}", bodies[i])

    total = sum(map(len, bodies))
    await _measured(store, meter, figures, total, len(bodies), lambda: _bounded(len(bodies), inflight, job))


async def small_get(
    store: S3Store, prefix: str, crcs: list[int], size: int, inflight: int, meter: Meter, figures: Figures
) -> None:
    """Open-and-read of each small file: one ``get_first`` of the reader's first part (1 MiB)."""

    async def job(i: int) -> None:
        info, body = await store.get_first(f"{prefix}{i:05d}", MIB)
        if info.size != size or meter.crc(body) != crcs[i]:
            raise SystemExit(f"small file {i}: wrong bytes")

    await _measured(store, meter, figures, size * len(crcs), len(crcs), lambda: _bounded(len(crcs), inflight, job))


async def run_ab(target: Target, args: argparse.Namespace, data: Data) -> dict[str, dict[str, Figures]]:
    meter = Meter()
    small = [os.urandom(args.small_size) for _ in range(args.small_count)]
    small_crcs = [zlib.crc32(body) for body in small]
    results = {v: {w: Figures() for w in ("seq_read", "write", "small_put", "small_get")} for v in VARIANTS}
    async with contextlib.AsyncExitStack() as stack:
        stores: dict[str, S3Store] = {}
        for variant in VARIANTS:
            stores[variant] = await stack.enter_async_context(
                open_s3_store(target.bucket, endpoint_url=target.endpoint_url, region=target.region)
            )
        await crt_body.install(stores["crt"])
        big = target.key("big")
        await stores["direct"].put(target.key("warm"), b"x")  # both paths connect before any figure
        await stores["crt"].get_first(target.key("warm"), 1)
        await write(stores["direct"], big, data, args.inflight, meter, Figures())  # the object to read
        for round_number in range(args.rounds):
            order = VARIANTS if round_number % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                store, figures = stores[variant], results[variant]
                await seq_read(store, big, data, args.inflight, meter, figures["seq_read"])
                await write(store, target.key(f"w-{variant}"), data, args.inflight, meter, figures["write"])
                prefix = target.key(f"s{round_number}-{variant}/")
                await small_put(store, prefix, small, args.inflight, meter, figures["small_put"])
                await small_get(
                    store, prefix, small_crcs, args.small_size, args.inflight, meter, figures["small_get"]
                )
                print(f"round {round_number + 1} {variant}: done", file=sys.stderr, flush=True)
    return results


def report(results: dict[str, dict[str, Figures]], args: argparse.Namespace, where: str) -> str:
    a, b = results["direct"], results["crt"]
    lines = [
        f"{where}; {args.rounds} rounds alternating, medians; {args.inflight} requests in flight, "
        f"{args.part_size // MIB} MiB parts; CPU = this process (user+sys) less the checks",
        "",
        "| workload | direct | crt | crt/direct | direct CPU | crt CPU | crt/direct CPU |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, label in (("seq_read", "cold sequential read"), ("write", "multipart write")):
        x, y = a[name], b[name]
        lines.append(
            f"| {label} {args.size // MIB} MiB | {x.mibps():.0f} MiB/s | {y.mibps():.0f} MiB/s | "
            f"{y.mibps() / x.mibps():.2f}x | {x.cpu_per_gib():.2f} s/GiB | {y.cpu_per_gib():.2f} s/GiB | "
            f"{y.cpu_per_gib() / x.cpu_per_gib():.2f}x |"
        )
    for name, label in (("small_put", "small PUT"), ("small_get", "small GET")):
        x, y = a[name], b[name]
        lines.append(
            f"| {label} {args.small_count} x {args.small_size // 1024} KiB | {x.per_second():.0f}/s | "
            f"{y.per_second():.0f}/s | {y.per_second() / x.per_second():.2f}x | {x.cpu_ms_per_file():.2f} ms/file | "
            f"{y.cpu_ms_per_file():.2f} ms/file | {y.cpu_ms_per_file() / x.cpu_ms_per_file():.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m s3files_bench.crt_ab", description=__doc__.split("\n")[0])
    parser.add_argument("--server", choices=("rgw", "moto"), default="rgw")
    parser.add_argument("--pin-server", action="store_true", help="server on CPU 0, this process on the rest")
    parser.add_argument("--network", choices=("loopback", "s3-like"), default="loopback")
    parser.add_argument("--size", type=int, default=1024, help="MiB of the big object (default 1024)")
    parser.add_argument("--part-size", type=int, default=8, help="MiB per part (default 8, the mount's)")
    parser.add_argument("--inflight", type=int, default=8, help="requests at once (default 8: 64 MiB window)")
    parser.add_argument("--small-count", type=int, default=1000)
    parser.add_argument("--small-size", type=int, default=16 * 1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tls", action="store_true", help="HTTPS to the server (rgw only)")
    parser.add_argument("--json", help="also write every round's figures here")
    args = parser.parse_args(argv)
    if args.tls and (args.server != "rgw" or args.network != "loopback"):
        parser.error("--tls needs --server rgw on loopback")
    if crt_body is None:
        print("error: the A/B needs the AWS Common Runtime: pip install 'awscrt>=0.38'", file=sys.stderr)
        return 2
    args.size *= MIB
    args.part_size *= MIB
    try:
        results, where = _run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report(results, args, where))
    if args.json:
        with open(args.json, "w") as out:
            rounds = {v: {w: f.rounds for w, f in workloads.items()} for v, workloads in results.items()}
            json.dump({"where": where, "args": vars(args), "rounds": rounds}, out, indent=1)
    return 0


def _run(args: argparse.Namespace) -> tuple[dict[str, dict[str, Figures]], str]:
    """The server (and network) of ``args`` for the A/B's life, and its results."""
    storage = (2 * args.rounds + 1) * args.size + 2 * args.rounds * args.small_count * args.small_size
    with contextlib.ExitStack() as stack:
        if args.tls:
            target = stack.enter_context(_rgw_tls(storage, args.pin_server))
        else:
            target = stack.enter_context(open_target(args.server, None, None, None, storage, _say, pin=args.pin_server))
        where = f"{target.server}{' over HTTPS' if args.tls else ''}{', pinned' if args.pin_server else ', shared CPUs'}"
        if args.network == "s3-like":
            assert target.endpoint_url is not None
            shape = netshape.Shape.s3_like()
            forwarder = stack.enter_context(netshape.shaped(target.endpoint_url, shape))
            target = Target(**{**target.__dict__, "endpoint_url": forwarder.endpoint_url})
            where += f", s3-like ({shape.describe()})"
            server_cpus = set(range(os.cpu_count() or 1)) - os.sched_getaffinity(0)
            if args.pin_server and server_cpus:
                os.sched_setaffinity(forwarder.pid, server_cpus)
        os.environ.update({k: v for k, v in target.env.items() if k.startswith("AWS_")})
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        data = Data(args.size, args.part_size, folder)
        try:
            results = trio.run(run_ab, target, args, data)
        finally:
            data.close()
    return results, where


if __name__ == "__main__":
    sys.exit(main())
