"""Small ``write()`` calls through a mount, with extended attributes on (the default) and off (--no-xattrs).

Once a FUSE file system answers getxattr, the kernel asks it for ``security.capability`` before every
``write()`` call (to clear file capabilities), one more round trip to the daemon per call. This times
N writes of SIZE bytes to a new file (the writes only, not the upload at close), on a moto server started
here, each variant ROUNDS times, interleaved. Run: ``python -m bench.write_calls [SIZE] [N] [ROUNDS]``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import boto3

from s3files.fuse.mount import mounted_in_thread
from s3files.localserver import start_moto_server
from s3files.options import MountOptions, Source, StoreOptions
from s3files.store.base import ObjectStore
from s3files.store.s3 import open_s3_store

BUCKET = "write-calls"


def _time_writes(opts: MountOptions, endpoint: str, size: int, count: int, name: str) -> float:
    @contextlib.asynccontextmanager
    async def open_store() -> AsyncIterator[ObjectStore]:
        async with open_s3_store(BUCKET, endpoint_url=endpoint) as store:
            yield store

    buffer = bytes(size)
    with mounted_in_thread(opts, open_store):
        fd = os.open(opts.mountpoint / name, os.O_WRONLY | os.O_CREAT)
        try:
            start = time.perf_counter()
            for _ in range(count):
                os.write(fd, buffer)
            return time.perf_counter() - start
        finally:
            os.close(fd)


def main(argv: list[str]) -> None:
    size, count, rounds = (int(a) for a in (argv + ["8192", "20000", "3"][len(argv) :]))
    for key, default in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench")):
        os.environ.setdefault(key, default)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = start_moto_server()
    try:
        boto3.client("s3", endpoint_url=server.endpoint_url).create_bucket(Bucket=BUCKET)
        with tempfile.TemporaryDirectory() as tmp:
            results: dict[bool, list[float]] = {True: [], False: []}
            for index in range(rounds):
                for xattrs in (True, False) if index % 2 == 0 else (False, True):
                    opts = MountOptions(
                        source=Source(BUCKET, ""),
                        mountpoint=Path(tmp) / "m",
                        store=StoreOptions(endpoint_url=server.endpoint_url),
                        xattrs=xattrs,
                    )
                    opts.mountpoint.mkdir(exist_ok=True)
                    seconds = _time_writes(opts, server.endpoint_url, size, count, f"f{index}-{xattrs}")
                    results[xattrs].append(seconds)
            for xattrs, times in results.items():
                label = "xattrs on (default)" if xattrs else "--no-xattrs"
                median = sorted(times)[len(times) // 2]
                print(f"{count} writes of {size} B, {label}: median {median:.2f} s ({', '.join(f'{t:.2f}' for t in times)})")
    finally:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
