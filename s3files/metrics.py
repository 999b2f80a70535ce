"""A mount's metrics: what Prometheus scrapes (``--metrics-port``) and ``s3files stats`` prints.

Owns: the metric names and what each means, the mount's own prometheus_client registry (never the
library's global one: one process may run several mounts, the tests do), the counters and latency
histograms of FUSE operations (fed by fuse/adapter.py), and the view of the core's and the store's own
counters (``FileSystem.statistics``: requests by operation, cache bytes, files waiting for upload...)
taken on the mount's trio thread at each scrape, so a scrape never reads state while the mount changes
it. Must not decide anything: it counts and reads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

Statistics = Callable[[], Mapping[str, Any]]

#: Seconds: a FUSE operation answered from memory takes microseconds, one that asks S3 milliseconds,
#: a close that uploads a large file seconds.
LATENCY_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: fs.statistics() keys shown as gauges: (metric name, help).
GAUGES: dict[str, tuple[str, str]] = {
    "cache_bytes": ("s3files_cache_bytes", "Bytes of local copies in the cache folder"),
    "cache_limit": ("s3files_cache_limit_bytes", "The cache folder's size limit (--cache-size)"),
    "memory_bytes": ("s3files_cache_memory_bytes", "Bytes of local copies held in memory"),
    "local_copies": ("s3files_local_copies", "Files with a local copy (being written, or kept clean)"),
    "clean_files": ("s3files_clean_files", "Local copies equal to their object (kept to serve reads)"),
    "unsent_files": ("s3files_files_waiting_for_upload", "Closed files whose upload has not succeeded yet"),
    "writeback_waiting": ("s3files_writeback_waiting", "Files waiting for their write-back delay (eventual)"),
    "retrying_uploads": ("s3files_upload_queue_depth", "Uploads waiting to be retried"),
    "markers_pending": ("s3files_folder_times_pending", "Folders whose times are not in their marker yet"),
    "inodes": ("s3files_inodes", "Inodes the mount knows"),
    "cached_listings": ("s3files_cached_listings", "Folder listings cached (--metadata-ttl)"),
    "open_files": ("s3files_open_files", "Open file handles"),
    "open_folders": ("s3files_open_folders", "Open folder handles"),
    "held_read_bytes": ("s3files_read_ahead_bytes", "Bytes of parts fetched or being fetched for readers"),
    "spare_read_bytes": ("s3files_spare_read_buffer_bytes", "Bytes of spare part buffers kept for reuse"),
}

#: fs.statistics() keys shown as counters (they only grow while the mount runs).
COUNTERS: dict[str, tuple[str, str]] = {
    "metadata_cache_hits": ("s3files_metadata_cache_hits", "Listed versions whose metadata was known (no HEAD)"),
    "metadata_cache_misses": ("s3files_metadata_cache_misses", "Listed versions whose metadata was not known"),
    "writeback_uploads": ("s3files_writeback_uploads", "Uploads made by write-back (eventual)"),
    "marker_writes": ("s3files_folder_marker_writes", "Folder markers rewritten with new folder times"),
}


class _StatisticsCollector(Collector):
    """Turns ``statistics()`` into metric families at each scrape."""

    def __init__(self, statistics: Statistics) -> None:
        self._statistics = statistics

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self._statistics()
        except Exception as exc:  # the mount is stopping: a scrape answers what it can
            log.debug("op=metrics statistics unavailable: %r", exc)
            return
        requests = CounterMetricFamily(
            "s3files_s3_requests", "S3 requests sent, by operation (each retry counts)", labels=["operation"]
        )
        for operation, count in sorted(dict(stats.get("requests") or {}).items()):
            requests.add_metric([operation], float(count))
        yield requests
        for key, (name, text) in GAUGES.items():
            if isinstance(stats.get(key), int | float):
                yield GaugeMetricFamily(name, text, value=float(stats[key]))
        for key, (name, text) in COUNTERS.items():
            if isinstance(stats.get(key), int | float):
                yield CounterMetricFamily(name, text, value=float(stats[key]))


class Metrics:
    """One mount's metrics: the FUSE operations from the start, the core's counters once ``watch`` names
    them (its server may start before the core exists, so a port in use fails before anything mounts)."""

    def __init__(self, statistics: Statistics | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._operations = Counter(
            "s3files_fuse_operations",
            "FUSE operations answered, by operation and outcome (ok, or the errno's name)",
            ["op", "outcome"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "s3files_fuse_operation_seconds",
            "Time to answer a FUSE operation, by operation",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        if statistics is not None:
            self.watch(statistics)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._by_op: dict[str, list[float]] = {}  # op -> [answered, failed, seconds], for `s3files stats`

    def watch(self, statistics: Statistics) -> None:
        """Show ``statistics()`` (the core's counters) at every scrape; called from the scraping thread,
        it must hop to the mount's own thread itself (``on_trio``)."""
        self.registry.register(_StatisticsCollector(statistics))

    def operation(self, op: str, outcome: str, seconds: float) -> None:
        """A FUSE operation ``op`` was answered (``outcome``: "ok" or an errno's name) in ``seconds``."""
        counts = self._by_op.setdefault(op, [0, 0, 0.0])
        counts[0] += 1
        counts[1] += outcome != "ok"
        counts[2] += seconds
        self._operations.labels(op, outcome).inc()
        self._latency.labels(op).observe(seconds)

    @property
    def answered(self) -> int:
        """FUSE operations answered since the mount began (the log's summary, fuse/mount.py)."""
        return int(sum(c[0] for c in self._by_op.values()))

    @property
    def failed(self) -> int:
        return int(sum(c[1] for c in self._by_op.values()))

    def by_operation(self) -> dict[str, dict[str, float]]:
        """Per FUSE operation: how many were answered, how many failed, and their seconds in all."""
        return {op: {"count": c[0], "failed": c[1], "seconds": round(c[2], 6)} for op, c in sorted(self._by_op.items())}

    def text(self) -> bytes:
        """The Prometheus text format of every metric now."""
        return bytes(generate_latest(self.registry))

    def serve(self, address: str, port: int) -> int:
        """Serve ``text()`` over HTTP at ``address:port`` on a thread of its own until ``stop``; returns
        the port (``port`` 0: one the system chose). OSError (port in use...) is the caller's to say."""
        from prometheus_client import start_http_server

        self._server, self._thread = start_http_server(port, address, registry=self.registry)
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def on_trio(statistics: Statistics, token: Any) -> Statistics:
    """``statistics`` called on the trio thread of ``token`` from any other thread (a scrape), so it never
    reads the core's tables while the mount changes them. After the mount ended it raises (the scrape
    then shows the FUSE metrics alone)."""
    import trio

    return lambda: trio.from_thread.run_sync(statistics, trio_token=token)


def table(stats: Mapping[str, Any]) -> str:
    """``s3files stats``: the counters of ``stats`` (the control channel's answer) as a table for people,
    with the same names as the metrics."""
    lines = []
    requests = dict(stats.get("requests") or {})
    lines.append(f"{'S3 requests':<34}{sum(requests.values()):>12}")
    for operation, count in sorted(requests.items(), key=lambda item: -item[1]):
        lines.append(f"  {operation:<32}{count:>12}")
    fuse = dict(stats.get("fuse") or {})
    if fuse:
        lines.append(f"{'FUSE operations':<34}{'answered':>12}{'failed':>10}{'mean ms':>10}")
        for op, c in sorted(fuse.items(), key=lambda item: -item[1]["count"]):
            mean = 1000 * c["seconds"] / c["count"] if c["count"] else 0.0
            lines.append(f"  {op:<32}{int(c['count']):>12}{int(c['failed']):>10}{mean:>10.2f}")
    for key, (name, _) in {**GAUGES, **COUNTERS}.items():
        if isinstance(stats.get(key), int | float):
            lines.append(f"{name.removeprefix('s3files_'):<34}{stats[key]:>12}")
    return "\n".join(lines)
