"""Soak (issue 21): 16 writers and 16 readers on one mount and a reader on a second mount, through the fault
proxy, first without faults and then with every 10th request answered 503 SlowDown; every byte is checked
as it is read and on S3 at the end, and the first daemon's RSS and open descriptors are sampled throughout.

CI runs it briefly (S3FILES_SOAK_SECONDS, default 12; 120 with S3FILES_FULL_COUNTS=1). The figures of a
long run go to bench/RESULTS.md: ``S3FILES_SOAK_SECONDS=120 S3FILES_SOAK_JSON=soak.json pytest -s
tests/test_soak.py`` prints them (and writes them as JSON).

What must hold: no read sees bytes that were never a closed version (on the writing mount, a reader holds
the file's slot, so it sees exactly the last closed version; on the other mount a read that meets a newer
version fails with ESTALE, as SEMANTICS says, and is counted); S3 holds the last closed version of every
file; and memory and descriptors stay flat: bounded by what the workload keeps (a cached file's
descriptor per file, 128 files), not growing with the number of requests.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import FULL_COUNTS
from daemons import Daemons

pytestmark = pytest.mark.fuse

SECONDS = float(os.environ.get("S3FILES_SOAK_SECONDS", "120" if FULL_COUNTS else "12"))
WRITERS = READERS = 16
SLOTS = 8  # files per writer, rewritten in turn
SIZES = (4 * 1024, 64 * 1024, 1024 * 1024, 3 * 1024 * 1024)
MIB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rss_and_fds(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


class Soak:
    """The shared state of one run: per file its slot lock, every version ever begun, the last closed."""

    def __init__(self, a: Path, b: Path) -> None:
        self.a, self.b = a, b
        self.locks = {(w, s): threading.Lock() for w in range(WRITERS) for s in range(SLOTS)}
        self.begun: dict[str, set[str]] = {}
        self.closed: dict[str, str] = {}
        self.moved = {"written": 0, "read": 0}
        self.errors: list[str] = []
        self.stale = 0  # the other mount's reads that met a newer version (ESTALE, documented)
        self.guard = threading.Lock()
        self.stop = threading.Event()

    def count(self, what: str, n: int) -> None:
        with self.guard:
            self.moved[what] += n

    def fail(self, message: str) -> None:
        with self.guard:
            self.errors.append(message)
        self.stop.set()

    def writer(self, w: int) -> None:
        rng = random.Random(w)
        for n in range(1_000_000):
            if self.stop.is_set():
                return
            slot = n % SLOTS
            name = f"w{w:02d}/f{slot}"
            data = rng.randbytes(rng.choice(SIZES))
            with self.guard:
                self.begun.setdefault(name, set()).add(sha(data))
            with self.locks[(w, slot)]:
                try:
                    (self.a / name).write_bytes(data)
                except OSError as exc:
                    return self.fail(f"write {name}: {exc!r}")
                with self.guard:
                    self.closed[name] = sha(data)
            self.count("written", len(data))

    def reader(self, r: int) -> None:
        rng = random.Random(1000 + r)
        for _ in range(1_000_000):
            if self.stop.is_set():
                return
            w, slot = rng.randrange(WRITERS), rng.randrange(SLOTS)
            name = f"w{w:02d}/f{slot}"
            with self.locks[(w, slot)]:
                expected = self.closed.get(name)
                if expected is None:
                    continue
                try:
                    data = (self.a / name).read_bytes()
                except OSError as exc:
                    return self.fail(f"read {name}: {exc!r}")
            if sha(data) != expected:
                return self.fail(f"read {name}: {len(data)} bytes that are not its last closed version")
            self.count("read", len(data))

    def other_mount(self) -> None:
        """The second mount lists and reads: it may see any closed version, never a mix or a part."""
        rng = random.Random(99)
        for _ in range(1_000_000):
            if self.stop.is_set():
                return
            name = f"w{rng.randrange(WRITERS):02d}/f{rng.randrange(SLOTS)}"
            try:
                data = (self.b / name).read_bytes()
            except FileNotFoundError:
                continue  # not there yet (or not listed yet within the TTL)
            except OSError as exc:
                if exc.errno == errno.ESTALE:  # a newer version was uploaded while it was read: SEMANTICS,
                    with self.guard:  # "read of an open file": never a mix of versions, ESTALE instead
                        self.stale += 1
                    continue
                return self.fail(f"other mount: read {name}: {exc!r}")
            with self.guard:
                versions = set(self.begun.get(name, ()))
            if sha(data) not in versions:
                return self.fail(f"other mount: {name}: {len(data)} bytes that were never a closed version")
            self.count("read", len(data))


def test_soak_writers_and_readers_through_faults_stay_correct_and_flat(
    daemons: Daemons, fault_proxy: Any, bucket: str, boto3_client: Any
) -> None:
    a = daemons.mount(fault_proxy.endpoint_url, bucket, name="a", cache="cache-a")
    b = daemons.mount(fault_proxy.endpoint_url, bucket, name="b", cache="cache-b")
    for w in range(WRITERS):
        (a.mountpoint / f"w{w:02d}").mkdir()
    soak = Soak(a.mountpoint, b.mountpoint)
    samples: list[tuple[float, int, int]] = []
    started = time.monotonic()
    threads = [threading.Thread(target=soak.writer, args=(w,)) for w in range(WRITERS)]
    threads += [threading.Thread(target=soak.reader, args=(r,)) for r in range(READERS)]
    threads.append(threading.Thread(target=soak.other_mount))
    for thread in threads:
        thread.start()
    phases: dict[str, float] = {}
    try:
        for phase, faults in (("clean", 0), ("faults", 10)):
            fault_proxy.set_faults(fail_every=faults)
            before, t0 = dict(soak.moved), time.monotonic()
            end = t0 + SECONDS / 2
            while time.monotonic() < end and not soak.stop.is_set():
                samples.append((time.monotonic() - started, *rss_and_fds(a.pid)))
                time.sleep(0.5)
            moved = sum(soak.moved.values()) - sum(before.values())
            phases[phase] = moved / MIB / (time.monotonic() - t0)
    finally:
        soak.stop.set()
        for thread in threads:
            thread.join(60)
    fault_proxy.set_faults()
    assert not any(t.is_alive() for t in threads), "a worker did not stop within 60 s"
    assert not soak.errors, soak.errors[:5]
    assert soak.moved["written"] > 0 and soak.moved["read"] > 0
    # every byte on S3: the last closed version of each file
    for name, digest in sorted(soak.closed.items()):
        body = boto3_client.get_object(Bucket=bucket, Key=name)["Body"].read()
        assert sha(body) == digest, name
    # flat: after the first quarter (mounts warming up, files being cached), memory and descriptors are
    # bounded by what the workload keeps, not by how long it ran
    settled = samples[len(samples) // 4 :]
    rss = [s[1] for s in settled]
    fds = [s[2] for s in settled]
    figures = {
        "seconds": SECONDS,
        "verified_files": len(soak.closed),
        "written_mib": round(soak.moved["written"] / MIB, 1),
        "read_mib": round(soak.moved["read"] / MIB, 1),
        "mib_per_s_clean": round(phases.get("clean", 0.0), 1),
        "mib_per_s_10pct_faults": round(phases.get("faults", 0.0), 1),
        "faults_injected": fault_proxy.stats.snapshot()["faults"],
        "other_mount_estale": soak.stale,
        "rss_mib": [round(s[1] / MIB) for s in samples[:: max(1, len(samples) // 12)]],
        "fds": [s[2] for s in samples[:: max(1, len(samples) // 12)]],
    }
    print("soak:", json.dumps(figures))
    if os.environ.get("S3FILES_SOAK_JSON"):
        # the file also holds the series every ~10 s (seconds, RSS MiB, descriptors), for a long run's table
        every = [[round(t), round(r / MIB), f] for t, r, f in samples[:: max(1, round(10 / 0.5))]]
        Path(os.environ["S3FILES_SOAK_JSON"]).write_text(json.dumps({**figures, "every_10s": every}, indent=1))
    assert max(rss) - statistics.median(rss[: max(1, len(rss) // 4)]) < 256 * MIB, figures
    assert max(fds) <= min(fds) + WRITERS * SLOTS + 64, figures
