"""The visibility workload: how long after a producer's close() another machine sees the file, whole.

Owns: the producer/consumer measurement. A producer writes N files into a fresh folder, one every
``visibility_interval_s``, each with its own random bytes, and notes when each close() (or PutObject)
returned. A consumer on "another machine" polls the folder's listing and reads every new name to the end,
checking its bytes: for a file system, a second daemon of the same kind and options with its own cache
folder (``FsMount.twin``); for the raw SDK, ListObjectsV2 and GetObject. The delay of a file is from the
producer's close to the consumer's first whole read of it. A read that comes back shorter or different is
counted in ``partial`` (S3 only ever holds whole versions, so it must stay 0) and polled again.

Why this matters per consistency mode: close-to-open uploads at close, so the delay is the consumer's
listing TTL; eventual adds the write-back delay, and its consumer trusts its listing for the eventual TTL;
strict lists every time. The baseline (download-process-upload) has no second machine of its own: it is
the raw SDK's answer, so it is not measured. Requests are the producer's only.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

from s3files_bench import sdk
from s3files_bench.errors import MeasurementError
from s3files_bench.measure import percentile
from s3files_bench.workloads import Bench, Figure, Measure, Sample, Variant, Workload

POLL_S = 0.02  # the consumer's pause between two looks at the folder


class Visibility(Workload):
    name = "visibility"
    figures = (
        Figure("p50", "ms", "lower", "from the producer's close to a whole read on another mount (median)"),
        Figure("p99", "ms", "lower", "the same, 99th percentile"),
        Figure("partial", "reads", "lower", "reads on the consumer that were not the whole file (must be 0)"),
    )
    kinds = ("sdk", "fs")

    def seed(self, b: Bench) -> None:
        pass  # every round writes its own files

    def run(self, b: Bench, v: Variant, r: int, measure: Measure) -> None:
        n, size = b.plan.visibility_files, b.plan.small_size
        folder = f"visible-{v.name}-r{r}"
        bodies = [os.urandom(size) for _ in range(n)]
        names = [f"f{i:04d}" for i in range(n)]
        twin = None
        if v.kind == "fs":
            assert v.fs is not None
            if v.fs.twin is None:
                raise MeasurementError(f"{v.name}: no second mount to consume with (s3files only)")
            where = b.workdir / f"{folder}-consumer"
            where.mkdir()
            twin = v.fs.twin(where)
        try:
            if twin is not None:
                os.mkdir(v.fs.root / folder)  # type: ignore[union-attr]
                _wait(lambda: os.path.isdir(twin.root / folder), b.plan.verify_timeout_s, "the folder")

            def one_round() -> Sample:
                return self._measure(b, v, twin.root if twin else None, folder, names, bodies)

            measure("p50", one_round, also=("p99", "partial"))
        finally:
            if twin is not None:
                twin.stop()
            sdk.delete_prefix(b.admin, b.target.bucket, b.target.key(folder + "/"))

    def _measure(
        self, b: Bench, v: Variant, consumer_root: Path | None, folder: str, names: list[str], bodies: list[bytes]
    ) -> Sample:
        expected = dict(zip(names, bodies, strict=True))
        closed: dict[str, float] = {}
        seen: dict[str, float] = {}
        partial = [0]
        done = threading.Event()
        deadline = time.monotonic() + b.plan.verify_timeout_s + len(names) * b.plan.visibility_interval_s

        def look() -> list[str]:
            if consumer_root is not None:
                try:
                    return os.listdir(consumer_root / folder)
                except FileNotFoundError:
                    return []
            prefix = b.target.key(folder + "/")
            return [k[len(prefix) :] for k in sdk.list_keys(b.admin, b.target.bucket, prefix)]

        def read(name: str) -> bytes:
            if consumer_root is not None:
                return (consumer_root / folder / name).read_bytes()
            return b.admin.get_object(Bucket=b.target.bucket, Key=b.target.key(f"{folder}/{name}"))["Body"].read()

        def consume() -> None:
            while len(seen) < len(names) and time.monotonic() < deadline and not done.is_set():
                for name in look():
                    if name in seen or name not in closed:
                        continue  # (a name listed before its close returned: S3 has it, the clock has not)
                    try:
                        data = read(name)
                    except FileNotFoundError:
                        continue
                    if data == expected[name]:
                        seen[name] = time.monotonic()
                    else:
                        partial[0] += 1
                time.sleep(POLL_S)

        consumer = threading.Thread(target=consume, name="visibility-consumer", daemon=True)
        consumer.start()
        try:
            for name, body in expected.items():
                if consumer_root is not None:
                    with open(v.fs.root / folder / name, "wb") as f:  # type: ignore[union-attr]
                        f.write(body)
                else:
                    v.client.put_object(Bucket=b.target.bucket, Key=b.target.key(f"{folder}/{name}"), Body=body)
                closed[name] = time.monotonic()
                time.sleep(b.plan.visibility_interval_s)
            consumer.join(max(0.0, deadline - time.monotonic()))
        finally:
            done.set()
            consumer.join(5)
        missing = [name for name in names if name not in seen]
        if missing:
            raise MeasurementError(f"{len(missing)} of {len(names)} files never seen whole on the consumer")
        delays = sorted((seen[name] - closed[name]) * 1000 for name in names)
        return {
            "value": percentile(delays, 50),
            "also": {"p99": {"value": percentile(delays, 99)}, "partial": {"value": partial[0]}},
        }


def _wait(ready: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise OSError(errno.ETIMEDOUT, f"{what} did not appear on the consumer within {timeout:.0f} s")
        time.sleep(POLL_S)
