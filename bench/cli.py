"""``s3files bench``: answer "is the mount faster, and by how much, for my workload?" in one command.

Owns: the command line, and the order of a run: target (embedded server or the user's bucket) -> probe and
duration estimate -> seed -> mounts (s3files, then peers) -> interleaved measurements -> results (table,
JSON, markdown, chart). Everything started is stopped by one ExitStack in reverse order, also on errors,
Ctrl-C and SIGTERM: mounts first, then the server (or this run's prefix), then the work directory, which
is removed only when nothing is mounted inside it (removing a mounted folder would delete objects).

Errors the user can fix (unreachable endpoint, missing bucket, a mount that will not start) print one line
``s3files bench: error: ...`` and exit 1 with no traceback; a failed measurement is recorded instead.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from s3files_bench import netshape, report, sdk
from s3files_bench.errors import BenchError
from s3files_bench.handlers import NAMES as HANDLER_NAMES
from s3files_bench.memlimit import memory_limited
from s3files_bench.mounts import PEERS, STARTERS, FsMount, installed_peers, is_mounted, start_s3files
from s3files_bench.plan import MIB, WORKLOADS, Plan, estimate_seconds, format_size, storage_bytes
from s3files_bench.runner import run_workloads
from s3files_bench.servers import Target, open_target
from s3files_bench.visibility import Visibility
from s3files_bench.workloads import ALL, Bench, Variant

from s3files.cli import argument_type
from s3files.options import Consistency, parse_size

WORKLOAD_CLASSES = {**ALL, Visibility.name: Visibility}

MOTO_NOTE = (
    "on moto the figures are about correctness, not speed: moto reads the whole object for every ranged "
    "GET, so the mount's read-ahead, random reads and time to first byte look far slower than on real S3 "
    "(use --server rgw, --network s3-like for speed)"
)


def _list(choices: tuple[str, ...]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n for n in text.replace(",", " ").split() if n)
        unknown = [n for n in names if n not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown)}; choose from {', '.join(choices)}"
            )
        return names

    return parse


SIZE = argument_type(parse_size)  # the mount's own size parser: 64MiB, 64M, 1GiB, 4096


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3files bench",
        description="Benchmark the s3files mount against the raw SDK (boto3), download-process-upload, "
        "and optionally s3fs-fuse and rclone, on the same server and data.",
    )
    where = parser.add_argument_group("where (default: an embedded local server, removed afterwards)")
    where.add_argument(
        "--server",
        choices=("moto", "rgw"),
        default="moto",
        help="embedded server: moto (nothing to install) or rgw (Ceph RadosGW, realistic)",
    )
    where.add_argument("--endpoint-url", help="an S3-compatible endpoint to use instead (standard AWS chain)")
    where.add_argument("--bucket", help="the bucket to use there; only a fresh prefix in it is written")
    where.add_argument("--region", help="region (default: AWS_DEFAULT_REGION or us-east-1)")
    where.add_argument(
        "--pin-server",
        action="store_true",
        help="embedded server on CPU 0, the benchmark and its mounts on the other CPUs (as if the server "
        "were another machine; every variant gets the same client CPUs)",
    )
    where.add_argument(
        "--memory-limit",
        type=SIZE,
        help="run the benchmark and its mounts in a memory cgroup with this limit, as in a container, e.g. "
        "2GiB (the server stays outside); page cache is then reused within the limit",
    )
    network = parser.add_argument_group(
        "network (default: the embedded server as it is, on loopback: no latency, no caps)"
    )
    network.add_argument(
        "--network",
        choices=("loopback", "s3-like"),
        default="loopback",
        help="s3-like: every client (SDK, baseline, mounts, peers) reaches the embedded server through a "
        "forwarder on 127.0.0.1 (python -m s3files_bench.netshape, its own process, stopped at the end) that "
        "delays each request and caps each connection and the link, like S3 over a real network; its CPU "
        "per GiB is reported apart from the clients'",
    )
    network.add_argument(
        "--latency-ms", type=float, help="s3-like: delay before each request reaches the server (default 20)"
    )
    network.add_argument("--conn-mibps", type=float, help="s3-like: MiB/s per TCP connection, each way (default 90)")
    network.add_argument(
        "--link-mibps", type=float, help="s3-like: MiB/s for all connections together, each way (default 1200)"
    )
    what = parser.add_argument_group("what")
    what.add_argument("--quick", action="store_true", help="small sizes, 3 rounds: under 3 minutes on moto")
    what.add_argument(
        "--workloads",
        type=_list((*WORKLOADS, "handlers")),
        default=WORKLOADS,
        help=f"comma-separated subset of: {','.join(WORKLOADS)}; or handlers alone: real function handlers, "
        "an SDK + /tmp version against the same code on paths through the mount and through open_fs "
        "(bench/handlers/)",
    )
    what.add_argument(
        "--handlers",
        type=_list(HANDLER_NAMES),
        default=HANDLER_NAMES,
        help=f"with --workloads handlers: a comma-separated subset of {','.join(HANDLER_NAMES)}",
    )
    what.add_argument("--size", type=SIZE, help="large file size, e.g. 64MiB (quick: 32MiB, full: 256MiB)")
    what.add_argument("--files", type=_positive, help="small-files count (quick: 50, full: 500)")
    what.add_argument(
        "--file-size", type=SIZE, help="size of each of the small files, e.g. 2MiB for medium files (default 4KiB)"
    )
    what.add_argument("--concurrency", type=_positive, help="K readers/writers (quick: 4, full: 8)")
    what.add_argument("--rounds", type=_positive, help="rounds per workload (default 3)")
    what.add_argument(
        "--mount-args", default="", help="more `s3files mount` options for the mount under test, e.g. '--upload-concurrency 16'"
    )
    what.add_argument(
        "--modes",
        type=_list(tuple(c.value for c in Consistency)),
        default=(),
        help="also measure the s3files mount in these consistency modes (columns mount-MODE): "
        "strict,close-to-open,eventual; the column 'mount' keeps the default mode and --mount-args",
    )
    what.add_argument(
        "--peers",
        type=_list(PEERS),
        default=(),
        help="also measure these installed peers: s3fs,rclone (apt-get install -y s3fs rclone)",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, help="write the results as JSON here")
    out.add_argument("--markdown", type=Path, help="write the results as markdown here")
    out.add_argument("--plot", type=Path, help="write a PNG chart here (needs matplotlib)")
    return parser


def plan_from(args: argparse.Namespace) -> Plan:
    base = Plan.quick_plan() if args.quick else Plan()
    return base.with_overrides(
        workloads=args.workloads,
        rounds=args.rounds,
        big_size=args.size,
        small_files=args.files,
        small_size=args.file_size,
        concurrency=args.concurrency,
    )


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def shape_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> netshape.Shape | None:
    """The network shape ``--network`` asks for (None: loopback as it is)."""
    given = {"--latency-ms": args.latency_ms, "--conn-mibps": args.conn_mibps, "--link-mibps": args.link_mibps}
    if args.network != "s3-like":
        named = [flag for flag, value in given.items() if value is not None]
        if named:
            parser.error(f"{', '.join(named)} need --network s3-like")
        return None
    if any(value is not None and value < 0 for value in given.values()):
        parser.error("--latency-ms, --conn-mibps and --link-mibps cannot be negative")
    if args.endpoint_url or args.bucket:
        parser.error("--network s3-like shapes the embedded server's traffic; an --endpoint-url or --bucket is "
                     "reached over its own network")
    defaults = netshape.Shape()
    return netshape.Shape.s3_like(
        defaults.latency_s * 1000 if args.latency_ms is None else args.latency_ms,
        (defaults.conn_bps or 0) / MIB if args.conn_mibps is None else args.conn_mibps,
        (defaults.link_bps or 0) / MIB if args.link_mibps is None else args.link_mibps,
    )


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.shape = shape_from(args, parser)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    err = Console(stderr=True, highlight=False)
    if "handlers" in args.workloads and len(args.workloads) > 1:
        parser.error("handlers runs on its own: --workloads handlers")
    try:
        if args.workloads == ("handlers",):
            from s3files_bench.handlers.command import run_handlers

            command = " ".join(["s3files bench", *map(shlex.quote, argv)])
            return run_handlers(args, command, err, functools.partial(_workdir, prefix="s3files-handlers-"))
        return run(args, plan_from(args), " ".join(["s3files bench", *map(shlex.quote, argv)]), err)
    except BenchError as exc:
        print(f"s3files bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("s3files bench: interrupted; everything started was stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _workdir(err: Console, prefix: str = "s3files-bench-") -> Iterator[Path]:
    """A temp dir for mount points, caches and downloads; removed only if nothing is mounted in it.
    (The handlers run has a prefix of its own, so a check of one run's mounts never sees the other's.)"""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        mounted = [p for p in path.iterdir() if p.is_dir() and is_mounted(p)]
        if mounted:
            err.print(f"warning: {', '.join(map(str, mounted))} still mounted; leaving {path} in place")
        else:
            shutil.rmtree(path, ignore_errors=True)


def _probe(bench: Bench) -> tuple[float, float, float]:
    """(GET MiB/s, PUT MiB/s, ms per small request) of this server, from one 16 MiB object."""
    size = min(16 * MIB, bench.plan.big_size)
    data = os.urandom(size)
    key = bench.target.key("probe.bin")
    start = time.perf_counter()
    bench.admin.put_object(Bucket=bench.target.bucket, Key=key, Body=data)
    put_s = time.perf_counter() - start
    start = time.perf_counter()
    bench.admin.get_object(Bucket=bench.target.bucket, Key=key)["Body"].read()
    get_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(5):
        bench.admin.head_object(Bucket=bench.target.bucket, Key=key)
    head_ms = (time.perf_counter() - start) / 5 * 1000
    bench.admin.delete_object(Bucket=bench.target.bucket, Key=key)
    return size / MIB / get_s, size / MIB / put_s, head_ms


def _meta(
    command: str, target: Target, plan: Plan, peers: tuple[str, ...], notes: list[str]
) -> dict[str, Any]:
    where = (
        target.server if target.server != "endpoint" else f"{target.endpoint_url or 'AWS'} ({target.bucket})"
    )
    return {
        "command": command,
        "server": where,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}",
        "sizes": (
            f"large file {format_size(plan.big_size)}, {plan.small_files} small files of "
            f"{format_size(plan.small_size)}, {plan.concurrency} x {format_size(plan.concurrency_size)} "
            f"concurrent, random reads up to {plan.random_ops} per size (at most {plan.random_budget_s:g} s)"
        ),
        "rounds": plan.rounds,
        "workloads": list(plan.workloads),
        "peers": list(peers),
        "notes": notes,
    }


def run(args: argparse.Namespace, plan: Plan, command: str, err: Console) -> int:
    started = time.monotonic()
    peers, notes = installed_peers(args.peers)
    for note in notes:
        err.print(f"note: {note}")
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(_workdir(err))
        storage = storage_bytes(plan, 4 + len(peers) + len(args.modes))
        where = (args.server, args.endpoint_url, args.bucket, args.region, storage, err.print)
        target = stack.enter_context(open_target(*where, pin=args.pin_server))
        if args.pin_server and target.server != "endpoint":
            notes.append(
                "the embedded server ran on CPU 0 and every client (raw SDK, baseline, mounts) on the other "
                "CPUs (--pin-server), as if the server were another machine"
            )
        forwarder = None
        if args.shape is not None:
            assert target.endpoint_url is not None
            forwarder = stack.enter_context(netshape.shaped(target.endpoint_url, args.shape, workdir / "netshape.log"))
            err.print(
                f"network s3-like: clients reach {target.endpoint_url} through {forwarder.endpoint_url} "
                f"(forwarder pid {forwarder.pid}): {args.shape.describe()}",
                soft_wrap=True,
            )
            target = replace(target, endpoint_url=forwarder.endpoint_url)
            server_cpus = set(range(os.cpu_count() or 1)) - os.sched_getaffinity(0)
            if args.pin_server and server_cpus:  # the network is not the client's: off the client CPUs
                os.sched_setaffinity(forwarder.pid, server_cpus)
                notes.append("the network forwarder ran on the server's CPU, off the clients' (--pin-server)")
        limited = stack.enter_context(memory_limited(args.memory_limit, err.print)) if args.memory_limit else None
        workloads = [WORKLOAD_CLASSES[name]() for name in plan.workloads]
        admin = sdk.make_client(target, pool=32)
        bench = Bench(plan, target, admin, workdir)
        try:
            get_mibs, put_mibs, request_ms = _probe(bench)
        except (BotoCoreError, ClientError) as exc:
            raise BenchError(f"cannot write and read {target.source}: {exc}") from None
        ranged_ms = request_ms
        if target.server == "moto":
            notes.append(MOTO_NOTE)
            ranged_ms += plan.big_size / MIB / get_mibs * 1000  # a ranged GET reads the whole object
        variant_count = 4 + len(peers) + len(args.modes)
        expected = estimate_seconds(plan, variant_count, get_mibs, put_mibs, request_ms, ranged_ms)
        err.print(
            f"{'quick' if plan.quick else 'full'} run on {target.server}: expected duration about "
            f"{expected / 60:.0f} min ({expected:.0f} s; this server: GET {get_mibs:.0f} MiB/s, "
            f"PUT {put_mibs:.0f} MiB/s, {request_ms:.0f} ms per request)"
        )
        for workload in workloads:
            err.print(f"seeding {workload.name}")
            try:
                workload.seed(bench)
            except (BotoCoreError, ClientError, OSError) as exc:
                raise BenchError(f"seeding {workload.name} in {target.source} failed: {exc}") from None

        variants = [
            Variant("raw", "sdk", *_counted(target, plan)),
            Variant("raw-parallel", "parallel", *_counted(target, plan)),
            Variant("baseline", "baseline", *_counted(target, plan), scratch=_mkdir(workdir / "baseline")),
        ]
        mounts: list[FsMount] = []
        err.print(f"mounting s3files on {target.source}")
        mounts.append(start_s3files(target, workdir, shlex.split(args.mount_args)))
        stack.callback(mounts[-1].stop)
        for mode in args.modes:
            err.print(f"mounting s3files --consistency {mode}")
            extra = [*shlex.split(args.mount_args), "--consistency", mode]
            mounts.append(start_s3files(target, workdir, extra, name=f"mount-{mode}"))
            stack.callback(mounts[-1].stop)
        for peer in peers:
            err.print(f"mounting {peer}")
            try:
                mounts.append(STARTERS[peer](target, workdir))
            except BenchError as exc:
                err.print(f"note: {exc}; {peer} left out")
                notes.append(f"{peer}: {exc}")
                continue
            stack.callback(mounts[-1].stop)
        variants += [Variant(fs.name, "fs", admin, fs=fs) for fs in mounts]

        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=err, transient=False) as progress:
            task = progress.add_task("measuring", total=len(workloads) * plan.rounds * len(variants))

            def step(description: str, completed: int) -> None:
                progress.update(task, description=description, completed=completed)
                if not err.is_terminal:  # a log file gets one line per step instead of a live bar
                    err.print(f"[{completed}/{progress.tasks[task].total:.0f}] {description}")

            collected, seconds = run_workloads(bench, workloads, variants, step)
            progress.update(task, description="done", completed=progress.tasks[task].total)

        if limited is not None:
            peak = limited.peak()
            notes.append(
                f"the benchmark and its mounts ran in a memory cgroup limited to {format_size(args.memory_limit)} "
                f"(--memory-limit, as in a container); peak usage {'unknown' if peak is None else format_size(peak)}"
            )
        meta = _meta(command, target, plan, tuple(fs.name for fs in mounts[1 + len(args.modes) :]), notes)
        results = report.summarize(collected, seconds, workloads, meta)
        peaks = [
            e["daemon_peak_rss_mib"]
            for w in results["workloads"].values()
            for f in w["figures"].values()
            for name, e in f["variants"].items()
            if name == "mount" and "daemon_peak_rss_mib" in e
        ]
        meta["daemon_peak_rss_mib"] = max(peaks) if peaks else None
        meta["duration_s"] = round(time.monotonic() - started)
    if forwarder is not None:  # stopped now, so its count of bytes is final
        meta["network"] = f"s3-like: {args.shape.describe()}"
        meta["forwarder"] = forwarder.profile()
    _write(results, args, err)
    return 0


def _counted(target: Target, plan: Plan) -> tuple[Any, sdk.RequestCounter]:
    counter = sdk.RequestCounter()
    return sdk.make_client(target, counter, pool=max(16, plan.concurrency * 10)), counter


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _write(results: dict[str, Any], args: argparse.Namespace, err: Console) -> None:
    import json

    report.print_table(results, Console(width=None if sys.stdout.isatty() else 160))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        err.print(f"wrote {args.json}")
    if args.markdown:
        args.markdown.write_text(report.markdown(results))
        err.print(f"wrote {args.markdown}")
    if args.plot:
        problem = report.plot(results, args.plot)
        err.print(problem or f"wrote {args.plot}")
