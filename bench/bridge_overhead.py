"""What the trio -> asyncio bridge costs: the same ranged GETs through S3Store (trio, one bridge crossing
per request) and through aiobotocore directly on asyncio, interleaved, on the same server.

Why: the file system runs on trio (pyfuse3's best-tested mode) while aiobotocore needs asyncio; the store
runs aiobotocore on its own asyncio thread. This measures that choice against the no-bridge ceiling.

    python -m s3files_bench.bridge_overhead [--server rgw|moto] [--size-mib 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import trio
from aiobotocore.session import get_session

from s3files.store.s3 import open_s3_store

MIB = 1024 * 1024
PART = 8 * MIB
CONCURRENCY = 8


async def _asyncio_read(endpoint: str, bucket: str, key: str, size: int) -> float:
    session = get_session()
    async with session.create_client("s3", endpoint_url=endpoint, region_name="us-east-1") as client:
        limit = asyncio.Semaphore(CONCURRENCY)

        async def part(start: int) -> int:
            async with limit:
                end = min(start + PART, size) - 1
                response = await client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end}")
                async with response["Body"] as body:
                    return len(await body.read())

        started = time.perf_counter()
        got = sum(await asyncio.gather(*(part(s) for s in range(0, size, PART))))
        elapsed = time.perf_counter() - started
    assert got == size
    return size / MIB / elapsed


async def _trio_read(endpoint: str, bucket: str, key: str, size: int) -> float:
    async with open_s3_store(bucket, endpoint_url=endpoint) as store:
        limit = trio.Semaphore(CONCURRENCY)
        got = 0

        async def part(start: int) -> None:
            nonlocal got
            async with limit:
                data = await store.get_range(key, start, min(start + PART, size))
                got += len(data)  # not `got += len(await ...)`: that reads `got` before the await

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for start in range(0, size, PART):
                nursery.start_soon(part, start)
        elapsed = time.perf_counter() - started
    assert got == size
    return size / MIB / elapsed


def measure(endpoint: str, bucket: str, key: str, size: int, rounds: int) -> dict[str, float]:
    direct, bridged = [], []
    for _ in range(rounds):
        direct.append(asyncio.run(_asyncio_read(endpoint, bucket, key, size)))
        bridged.append(trio.run(_trio_read, endpoint, bucket, key, size))
    return {
        "asyncio_direct_mib_s": statistics.median(direct),
        "trio_bridge_mib_s": statistics.median(bridged),
        "ratio": statistics.median(bridged) / statistics.median(direct),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["rgw", "moto"], default="rgw")
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import contextlib
    import os

    import boto3

    from s3files.localserver import running_moto_server
    from s3files.rgwserver import running_rgw_server

    with contextlib.ExitStack() as stack:
        if args.server == "rgw":
            server = stack.enter_context(running_rgw_server())
            os.environ.update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key)
        else:
            server = stack.enter_context(running_moto_server())
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        client = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1")
        client.create_bucket(Bucket="bridge")
        size = args.size_mib * MIB
        client.put_object(Bucket="bridge", Key="obj", Body=os.urandom(size))
        result = measure(server.endpoint_url, "bridge", "obj", size, args.rounds)
    print(
        f"{args.server}: {args.size_mib} MiB in {PART // MIB} MiB parts, {CONCURRENCY} in flight, "
        f"median of {args.rounds}: asyncio direct {result['asyncio_direct_mib_s']:.0f} MiB/s, "
        f"trio via bridge {result['trio_bridge_mib_s']:.0f} MiB/s, ratio {result['ratio']:.2f}"
    )


if __name__ == "__main__":
    main()
