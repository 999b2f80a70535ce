"""``s3files bench --workloads handlers``: the order of a handlers run and its output.

Target (embedded server or the user's bucket) -> seed the inputs and the reference outputs -> rounds:
every handler in every version (the order of versions rotated per round, so machine noise and server
warm-up hit all alike) -> every handler killed halfway once per version -> tables, JSON, markdown.
Everything started is stopped by one ExitStack (the server, the work folder; each mount by the
invocation that started it), also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from s3files_bench import sdk
from s3files_bench.errors import BenchError
from s3files_bench.handlers import NAMES, handlers, report, run
from s3files_bench.servers import open_target

FULL_SIZES = (
    "thumbnails: 40 JPEGs of 2048x1536 (~3 MB); csv_report: a 218 MB CSV (7.4 M rows); packaging: 200 files of "
    "256 KiB; agents: 4 processes, 100 documents of 16 KiB"
)
QUICK_SIZES = "thumbnails: 3 JPEGs of 320x240; csv_report: 2 MB; packaging: 5 files of 4 KiB; agents: 4 x 4 documents"


def run_handlers(args: argparse.Namespace, command: str, err: Console, workdir_factory: Any) -> int:
    """The whole run (module docstring); writes the tables, and --json/--markdown if asked."""
    started = time.monotonic()
    if args.shape is not None or args.memory_limit or args.peers or args.modes:
        raise BenchError("--workloads handlers takes none of --network, --memory-limit, --peers, --modes")
    rounds = args.rounds or (1 if args.quick else 2)
    modules = handlers(tuple(n for n in NAMES if n in args.handlers))
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {name: {v: [] for v in run.VERSIONS} for name in modules}
    killed: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in modules}
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(workdir_factory(err))
        where = (args.server, args.endpoint_url, args.bucket, args.region, run.storage_bytes(args.quick), err.print)
        target = stack.enter_context(open_target(*where, pin=args.pin_server))
        ctx = run.Context(target, sdk.make_client(target, pool=16), workdir, args.quick)
        try:
            run.seed(ctx, modules, err.print)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise BenchError(f"seeding the handlers' inputs in {target.source} failed: {exc}") from None
        for r in range(rounds):
            for name, module in modules.items():
                shift = r % len(run.VERSIONS)
                for version in run.VERSIONS[shift:] + run.VERSIONS[:shift]:
                    err.print(f"round {r + 1}/{rounds}: {name}, {version}")
                    runs[name][version].append(_guarded(run.invoke, ctx, module, version, r))
        for name, module in modules.items():
            for version in run.KILLED:
                err.print(f"killed halfway: {name}, {version}")
                killed[name][version] = _guarded(run.kill_halfway, ctx, module, version)
        meta = {
            "command": command,
            "server": target.server if target.server != "endpoint" else f"{target.endpoint_url or 'AWS'} ({target.bucket})",
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}",
            "sizes": QUICK_SIZES if args.quick else FULL_SIZES,
            "rounds": rounds,
            "notes": [
                "seconds: the handler's wall time in its process, after imports and after its start (start s: making "
                "the boto3 client, open_fs() until it returns, or the mount's daemon until mounted: a fresh one per "
                "invocation, so every invocation is cold); open_fs's close() is timed; agents: the slowest of the 4",
                "memory: peak RSS (VmHWM) of the handler's process and of the mount's daemon; disk: peak bytes "
                "added to the version's /tmp folder or cache folder while it ran",
            ],
        }
        results = report.summarize(modules, runs, killed, meta)
        results["meta"]["duration_s"] = round(time.monotonic() - started)
    report.print_tables(results, Console(width=200))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        err.print(f"wrote {args.json}")
    if args.markdown:
        args.markdown.write_text(report.markdown(results))
        err.print(f"wrote {args.markdown}")
    return 0


def _guarded(fn: Any, *args: Any) -> dict[str, Any]:
    """A failed invocation is recorded (one line) and the run goes on; a mount that will not start is too."""
    from s3files_bench.errors import describe

    try:
        result: dict[str, Any] = fn(*args)
        return result
    except (OSError, BotoCoreError, ClientError, BenchError) as exc:
        return {"error": describe(exc) if not isinstance(exc, BenchError) else str(exc)}
