"""Several readers of one open file: threads reading slices of it through one descriptor, against one
sequential reader of the same file, on a RadosGW (or moto) server started here.

Each measurement mounts afresh (nothing in the page cache or the reader) and reads the file in a child
process (so the daemon and the readers do not share a GIL): ``threads`` threads each ``pread`` their slice
of a SIZE_MIB file in 1 MiB reads through one descriptor, or one thread ``read``s it all. A reader stops at
``DEADLINE_S`` and the figure is over what it read by then. Variants are interleaved over ROUNDS rounds.
Prints MB/s (10^6 bytes) per round and the GETs and bytes the mount fetched.

Run: ``python bench/shared_reads.py [SIZE_MIB] [ROUNDS] [rgw|moto] [THREADS,...]`` (default 1,2,4; 1 is
the one sequential reader); before/after a change, the same command with ``PYTHONPATH`` at the other
checkout (run it from outside the checkout, or the current folder's ``s3files`` is imported first).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3

import s3files
from s3files.fuse.mount import mounted_in_thread
from s3files.localserver import start_moto_server
from s3files.options import MIB, MountOptions, Source, StoreOptions
from s3files.store.base import ObjectStore
from s3files.store.s3 import open_s3_store

BUCKET = "shared-reads"
KEY = "data.bin"
DEADLINE_S = 60.0

READER = """
import os, sys, threading, time
path, threads, deadline = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
share = size // threads
done = [0] * threads
start = time.perf_counter()
def work(i):
    for off in range(i * share, (i + 1) * share, 1 << 20):
        if time.perf_counter() - start > deadline:
            return
        done[i] += len(os.pread(fd, 1 << 20, off))
if threads == 1:
    while time.perf_counter() - start < deadline and (chunk := os.read(fd, 1 << 20)):
        done[0] += len(chunk)
else:
    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool: t.start()
    for t in pool: t.join()
print(sum(done), time.perf_counter() - start)
"""


def _measure(endpoint: str, root: Path, threads: int) -> tuple[float, int, int]:
    """MB/s of one reading, and the GETs and bytes the mount fetched for it."""
    gets: list[int] = []

    @contextlib.asynccontextmanager
    async def open_store() -> AsyncIterator[ObjectStore]:
        async with open_s3_store(BUCKET, endpoint_url=endpoint) as store:
            real_range, real_first = store.get_range, store.get_first

            async def get_range(key: str, start: int, end: int, *args: Any, **kw: Any) -> Any:
                gets.append(end - start)
                return await real_range(key, start, end, *args, **kw)

            async def get_first(key: str, nbytes: int) -> Any:
                info, data = await real_first(key, nbytes)
                gets.append(len(data))
                return info, data

            store.get_range, store.get_first = get_range, get_first  # type: ignore[method-assign]
            yield store

    opts = MountOptions(source=Source(BUCKET, ""), mountpoint=root, store=StoreOptions(endpoint_url=endpoint))
    with mounted_in_thread(opts, open_store):
        out = subprocess.run(
            [sys.executable, "-c", READER, str(root / KEY), str(threads), str(DEADLINE_S)],
            capture_output=True, text=True, timeout=DEADLINE_S + 60, check=True,
        ).stdout.split()
    nbytes, seconds = int(out[0]), float(out[1])
    return nbytes / seconds / 1e6, len(gets), sum(gets)


def main(argv: list[str]) -> None:
    size_mib, rounds = (int(a) for a in (argv[:2] + ["256", "3"][len(argv[:2]) :]))
    kind = argv[2] if len(argv) > 2 else "rgw"
    print(f"s3files from {Path(s3files.__file__).parent}, {kind}, {size_mib} MiB, {rounds} rounds")
    if kind == "rgw":
        from s3files.rgwserver import RgwServer

        server: Any = RgwServer.start()
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = server.access_key, server.secret_key
    else:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            os.environ.setdefault(key, "bench")
        server = start_moto_server()
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    try:
        client = boto3.client("s3", endpoint_url=server.endpoint_url)
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key=KEY, Body=os.urandom(size_mib * MIB))
        counts = [int(n) for n in (argv[3] if len(argv) > 3 else "1,2,4").split(",")]
        variants = {("one reader" if n == 1 else f"{n} threads, one fd"): n for n in counts}
        results: dict[str, list[tuple[float, int, int]]] = {name: [] for name in variants}
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "m"
            root.mkdir()
            names = list(variants)
            for index in range(rounds):
                for name in names[index % len(names) :] + names[: index % len(names)]:
                    results[name].append(_measure(server.endpoint_url, root, variants[name]))
        for name, figures in results.items():
            speeds = sorted(f[0] for f in figures)
            rows = ", ".join(f"{s:.1f} MB/s ({g} GETs, {b / MIB:.0f} MiB)" for s, g, b in figures)
            print(f"{name}: median {speeds[len(speeds) // 2]:.1f} MB/s; rounds: {rows}")
    finally:
        client.delete_object(Bucket=BUCKET, Key=KEY)
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
