"""What a benchmark run measures and how big: the sizes of quick and full runs, and a duration estimate.

Owns: the ``Plan`` (frozen, built once from the command line) and ``estimate_seconds``. Must not touch S3,
the file system or the clock: the CLI builds a plan, and every other module only reads it.

Why full sizes are moderate (256 MiB): Ceph RadosGW frees deleted objects' data only at garbage collection
(hours later by default) and our embedded one keeps data in RAM, so everything a run writes stays resident
until the server stops; ``storage_bytes`` says how much that is. Why quick sizes are small: moto's server answers a ranged GET by reading the whole object, so every ranged
read of a big object there costs as much as a full GET; 32 MiB keeps ``--quick`` under 3 minutes on
2 cores while still being large enough for read-ahead to matter.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

MIB = 1024 * 1024
KIB = 1024

WORKLOADS = (
    "seq_read", "seq_write", "random_read", "small_files", "concurrency", "transform", "stream", "visibility"
)


@dataclass(frozen=True)
class Plan:
    """Sizes and counts of one run. ``rounds`` interleave every variant so machine noise hits all alike."""

    workloads: tuple[str, ...] = WORKLOADS
    rounds: int = 3
    big_size: int = 256 * MIB  # sequential read/write, random reads, transform
    random_ops: int = 300  # ranged reads per size, per variant, per round (cut short by random_budget_s)
    random_budget_s: float = 8.0
    small_files: int = 500
    small_size: int = 4 * KIB
    concurrency: int = 8
    concurrency_size: int = 16 * MIB  # each of the K files
    stream_files: int = 3  # large files per round of ``stream``, read back to back
    chunk: int = 1 * MIB  # the size of each read() and write() through a file system
    ttfb_bytes: int = 64 * KIB
    verify_timeout_s: float = 120.0  # how long a written object may take to appear in the bucket
    visibility_files: int = 20  # files per round of ``visibility``, one every visibility_interval_s
    visibility_interval_s: float = 0.1
    quick: bool = False

    @classmethod
    def quick_plan(cls) -> Plan:
        return cls(
            rounds=3,
            big_size=32 * MIB,
            random_ops=40,
            random_budget_s=3.0,
            small_files=50,
            concurrency=4,
            concurrency_size=8 * MIB,
            visibility_files=10,
            quick=True,
        )

    def with_overrides(
        self,
        *,
        workloads: tuple[str, ...] | None = None,
        rounds: int | None = None,
        big_size: int | None = None,
        small_files: int | None = None,
        small_size: int | None = None,
        concurrency: int | None = None,
    ) -> Plan:
        """This plan with the command line's explicit choices applied (None keeps the preset)."""
        changes: dict[str, object] = {}
        if workloads is not None:
            changes["workloads"] = workloads
        if rounds is not None:
            changes["rounds"] = rounds
        if big_size is not None:
            changes["big_size"] = big_size
            changes["concurrency_size"] = min(self.concurrency_size, max(MIB, big_size // 4))
        if small_files is not None:
            changes["small_files"] = small_files
        if small_size is not None:
            changes["small_size"] = small_size
        if concurrency is not None:
            changes["concurrency"] = concurrency
        return replace(self, **changes)  # type: ignore[arg-type]


def format_size(n: int) -> str:
    for unit, scale in (("GiB", 1024 * MIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def estimate_seconds(
    plan: Plan, variants: int, get_mibs: float, put_mibs: float, request_ms: float, ranged_ms: float
) -> float:
    """A rough duration of the run from a probe of the server (whole-object rates, one small request).

    Deliberately simple: bytes each workload moves per variant and round over the probed rates, plus its
    requests at the probed latency. The file systems are assumed no faster than the SDK; fine as a warning.
    """
    big = plan.big_size / MIB
    conc = plan.concurrency * plan.concurrency_size / MIB
    per_variant_round = {
        "seq_read": 3 * big / get_mibs,
        "seq_write": big / put_mibs + big / get_mibs,  # + reading it back to check the content
        "random_read": 2 * min(plan.random_budget_s, plan.random_ops * ranged_ms / 1000),
        "small_files": 4 * plan.small_files * request_ms / 1000,
        "concurrency": 3 * conc / get_mibs + conc / put_mibs,
        "transform": 2 * big / get_mibs + big / put_mibs + 1.0,  # +1 s: the child starts Python
        "stream": plan.stream_files * big / get_mibs,
        "visibility": 3.0 + plan.visibility_files * plan.visibility_interval_s,  # + a consumer mount
    }
    seeding = {
        "seq_read": 2 * plan.rounds * big / put_mibs,
        "random_read": big / put_mibs,
        "small_files": plan.rounds * plan.small_files * request_ms / 1000,
        "concurrency": plan.rounds * conc / put_mibs,
        "transform": plan.rounds * big / put_mibs,
        "stream": plan.rounds * plan.stream_files * big / put_mibs,
    }
    total = 10.0  # server, mounts, teardown
    for name in plan.workloads:
        total += per_variant_round[name] * variants * plan.rounds + seeding.get(name, 0.0)
    return total


def storage_bytes(plan: Plan, variants: int) -> int:
    """Bytes a run puts on the server in all: seeds plus every written object (deleted ones included)."""
    big, conc = plan.big_size, plan.concurrency * plan.concurrency_size
    seeds = {
        "seq_read": 2 * plan.rounds * big,
        "random_read": big,
        "small_files": plan.rounds * plan.small_files * plan.small_size,
        "concurrency": plan.rounds * (conc + plan.concurrency_size),
        "transform": plan.rounds * big,
        "stream": plan.rounds * plan.stream_files * big,
    }
    writes = {
        "seq_write": big,
        "small_files": plan.small_files * plan.small_size,
        "concurrency": conc,
        "transform": big,
    }
    per_round = sum(writes.get(name, 0) for name in plan.workloads) * variants
    return sum(seeds.get(name, 0) for name in plan.workloads) + plan.rounds * per_round
