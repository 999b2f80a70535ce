"""Runs the workloads: rounds interleaved across variants, every measurement wrapped the same way.

Owns: the order of measurements (for each workload, for each round, every variant in an order rotated per
round, so machine noise and server warm-up hit all alike), and what is recorded around each measurement:
its sample or its error, the S3 requests it caused (the variant's counter or the daemon's statistics,
before and after), and for a file system the daemon's peak RSS during it. A failed measurement (any
OSError such as EROFS while the mount refuses writes, an SDK error, a child's error) is recorded and the
run carries on; nothing here special-cases a variant.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from s3files_bench.errors import MeasurementError, describe
from s3files_bench.sdk import diff_counts
from s3files_bench.workloads import Bench, Sample, Variant, Workload

MEASUREMENT_ERRORS = (OSError, BotoCoreError, ClientError, MeasurementError)


@dataclass
class Record:
    """Everything measured for one figure of one variant, over the rounds."""

    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[dict[str, int]] = field(default_factory=list)
    peak_rss: int | None = None


#: collected[workload][figure][variant]
Collected = dict[str, dict[str, dict[str, Record]]]


def _order(variants: list[Variant], r: int) -> list[Variant]:
    shift = r % len(variants)
    return variants[shift:] + variants[:shift]


def run_workloads(
    bench: Bench,
    workloads: list[Workload],
    variants: list[Variant],
    on_step: Callable[[str, int], None],
) -> tuple[Collected, dict[str, float]]:
    """Measure every workload for every variant, ``bench.plan.rounds`` times.

    ``on_step(description, units_done)`` is called before each (workload, round, variant) unit.
    Returns what was measured and the seconds each workload took.
    """
    seconds: dict[str, float] = {}
    collected: Collected = {}
    done = 0
    for workload in workloads:
        started = time.monotonic()
        measured = [v for v in variants if v.kind in workload.kinds]
        records = {f.name: {v.name: Record() for v in measured} for f in workload.figures}
        collected[workload.name] = records
        for r in range(bench.plan.rounds):
            for variant in _order(variants, r):
                if variant.kind not in workload.kinds:
                    done += 1
                    continue
                on_step(f"{workload.name}: round {r + 1}/{bench.plan.rounds}, {variant.name}", done)
                workload.run(bench, variant, r, _measurer(records, variant))
                done += 1
        seconds[workload.name] = time.monotonic() - started
    return collected, seconds


def _measurer(records: dict[str, dict[str, Record]], variant: Variant) -> Callable[..., None]:
    def measure(figure: str, fn: Callable[[], Sample], also: tuple[str, ...] = ()) -> None:
        record = records[figure][variant.name]
        if variant.fs is not None:
            variant.fs.reset_peak_rss()
        before = variant.requests()
        try:
            sample = fn()
        except MEASUREMENT_ERRORS as exc:
            message = describe(exc)
            for name in (figure, *also):
                records[name][variant.name].errors.append(message)
            sample = None
        after = variant.requests()
        if variant.fs is not None:
            peak = variant.fs.peak_rss()
            if peak is not None:
                record.peak_rss = max(record.peak_rss or 0, peak)
        requests: Any = sample.pop("requests", None) if sample is not None else None
        if requests is None and before is not None and after is not None:
            requests = diff_counts(after, before)
        if requests is not None:
            record.requests.append(requests)
        if sample is not None:
            for name, derived in sample.pop("also", {}).items():
                records[name][variant.name].samples.append(derived)
            record.samples.append(sample)

    return measure
