"""The handlers comparison, end to end: seed the inputs, invoke every handler in every version for each
round, kill every version of every handler halfway once, and collect what was measured.

Owns: the order of a run and what is recorded around each invocation. Versions: ``sdk`` (boto3 and a
/tmp folder of its own), ``mount`` (the files version on a fresh s3files mount per process and round, as
bench/mounts.py starts it, so every invocation is cold; the mount's start is not timed), ``open_fs`` (the
files version through s3files.open_fs in the child, with a fresh cache folder: its start is timed, as a
function's cold start would be). Killed runs: ``sdk``, ``exec`` (the files version under
``s3files exec --publish on-success``), ``open_fs``. Every invocation's outputs are compared with the
files version run on the local inputs before anything is measured (the reference), then deleted, so the
server's storage stays bounded. Must not: leave a mount (each is stopped in a ``finally``), or touch a
key outside the run's prefix.
"""

from __future__ import annotations

import json
import posixpath
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from s3files_bench import sdk
from s3files_bench.handlers.common import KILL_ENV
from s3files_bench.measure import dir_bytes
from s3files_bench.mounts import FsMount, start_s3files
from s3files_bench.servers import Target

VERSIONS = ("sdk", "mount", "open_fs")
KILLED = ("sdk", "exec", "open_fs")
CHILD = [sys.executable, "-m", "s3files_bench.handlers.child"]
TIMEOUT_S = 900.0
MIB = 1024 * 1024


@dataclass
class Context:
    """What every invocation shares."""

    target: Target
    admin: Any  # uncounted boto3 client: seeding, checking outputs, cleaning up
    workdir: Path
    quick: bool
    expected: dict[str, dict[str, bytes]] = field(default_factory=dict)  # handler -> output -> content


def seed(ctx: Context, modules: dict[str, ModuleType], say: Callable[[str], None]) -> None:
    """Make each handler's inputs locally, upload them under in/HANDLER/, and compute the reference
    outputs by running the files version on the local copy."""
    for name, module in modules.items():
        say(f"seeding {name}")
        local = ctx.workdir / "inputs" / name
        module.make_inputs(local, ctx.quick)
        paths = sorted(p for p in local.rglob("*") if p.is_file())
        keys = [_key(ctx, "in", name, p.relative_to(local).as_posix()) for p in paths]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(sdk.upload, [ctx.admin] * len(paths), [ctx.target.bucket] * len(paths), keys, paths))
        reference = ctx.workdir / "expected" / name
        agents = [{"agent": i} for i in range(module.PROCESSES)] if module.PROCESSES > 1 else [{}]
        for extra in agents:
            module.files(str(local / module.INPUT), str(reference), **extra)
        ctx.expected[name] = {p.name: p.read_bytes() for p in reference.iterdir()}


def _key(ctx: Context, *parts: str) -> str:
    return ctx.target.key(posixpath.join(*parts))


def _run_children(
    commands: list[list[str]], env: dict[str, str], disk_dirs: list[Path], timeout: float
) -> tuple[list[dict[str, Any]], list[int], int]:
    """Run the commands at once: (each one's last JSON line or error, exit statuses, peak bytes added
    under ``disk_dirs`` while they ran, sampled every 50 ms)."""
    children = [
        subprocess.Popen(c, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for c in commands
    ]
    outputs: list[dict[str, bytes]] = [{} for _ in children]

    def drain(i: int, name: str, stream: Any) -> None:
        outputs[i][name] = stream.read()

    readers = [
        threading.Thread(target=drain, args=(i, name, stream), daemon=True)
        for i, child in enumerate(children)
        for name, stream in (("out", child.stdout), ("err", child.stderr))
    ]
    for reader in readers:
        reader.start()
    before = sum(dir_bytes(d) for d in disk_dirs)
    peak = 0
    deadline = time.monotonic() + timeout
    try:
        while any(child.poll() is None for child in children):
            peak = max(peak, sum(dir_bytes(d) for d in disk_dirs) - before)
            if time.monotonic() > deadline:
                raise TimeoutError(f"a handler did not finish within {timeout:.0f} s")
            time.sleep(0.05)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    for reader in readers:
        reader.join(10)
    answers = []
    for child, output in zip(children, outputs, strict=True):
        lines = output.get("out", b"").decode(errors="replace").strip().splitlines()
        try:
            answers.append(json.loads(lines[-1]))
        except (ValueError, IndexError):
            err = output.get("err", b"").decode(errors="replace").strip().splitlines()
            answers.append({"error": err[-1] if err else f"exit status {child.returncode}, no answer"})
    return answers, [child.returncode for child in children], peak


def _commands(
    ctx: Context,
    module: ModuleType,
    version: str,
    dst: str,
    label: str,
    mounts: list[FsMount],
    dirs: list[Path],
    starts: list[float],
) -> list[list[str]]:
    """One command per process of the handler; starts the mounts (``mount``; the seconds each took to
    start go to ``starts``) and makes the local folders (``dirs``: where the version keeps data on local
    disk) as it goes."""
    target = ctx.target
    src = posixpath.join("in", module.NAME, module.INPUT)
    commands = []
    for i in range(module.PROCESSES):
        config: dict[str, Any] = {
            "handler": module.NAME, "bucket": target.bucket, "endpoint": target.endpoint_url,
            "region": target.region, "source": target.source, "src": src, "dst": dst,
        }
        if module.PROCESSES > 1:
            config["agent"] = i
        local = ctx.workdir / f"{label}-{i}"
        if version == "sdk":
            local.mkdir()
            dirs.append(local)
            config.update(mode="sdk", src=target.key(src), dst=target.key(dst), tmp=str(local))
            commands.append([*CHILD, json.dumps(config)])
        elif version == "open_fs":
            local.mkdir()
            dirs.append(local)
            config.update(mode="open_fs", cache_dir=str(local))
            commands.append([*CHILD, json.dumps(config)])
        elif version == "mount":
            started = time.perf_counter()
            fs = start_s3files(target, ctx.workdir, name=f"{label}-{i}-mnt")
            starts.append(time.perf_counter() - started)
            mounts.append(fs)
            assert fs.disk_dir is not None
            dirs.append(fs.disk_dir)
            config.update(mode="files", root=str(fs.root))
            commands.append([*CHILD, json.dumps(config)])
        else:  # exec: the files version on a mount that `s3files exec --publish on-success` makes for it
            mountpoint, cache = ctx.workdir / f"{label}-{i}-mnt", ctx.workdir / f"{label}-{i}-cache"
            cache.mkdir()
            dirs.append(cache)
            config.update(mode="files", root=str(mountpoint))
            command = [sys.executable, "-m", "s3files", "exec", "--mount", f"{target.source}:{mountpoint}"]
            command += ["--publish", "on-success", "--cache-dir", str(cache), "--region", target.region]
            command += ["--log-level", "WARNING", "--log-file", str(ctx.workdir / "exec.log")]
            if target.endpoint_url:
                command += ["--endpoint-url", target.endpoint_url]
            commands.append([*command, "--", *CHILD, json.dumps(config)])
    return commands


def _outputs(ctx: Context, dst: str) -> dict[str, bytes]:
    """The objects under the output folder, by name (folder markers left out)."""
    prefix = _key(ctx, dst) + "/"
    keys = [k for k in sdk.list_keys(ctx.admin, ctx.target.bucket, prefix) if not k.endswith("/")]
    return {k[len(prefix) :]: ctx.admin.get_object(Bucket=ctx.target.bucket, Key=k)["Body"].read() for k in keys}


def _check(ctx: Context, module: ModuleType, got: dict[str, bytes]) -> dict[str, Any]:
    """Compare the outputs with the reference: ``same_output`` (every expected file, byte for byte; the
    shared log line by line, in any order, since the agents race), and for the log the lines it kept and
    the conflict copies beside it."""
    expected = ctx.expected[module.NAME]
    same = all(got.get(name) == data for name, data in expected.items() if name != "log.txt")
    found: dict[str, Any] = {}
    if "log.txt" in expected:
        want = sorted(expected["log.txt"].decode().splitlines())
        lines = sorted(got.get("log.txt", b"").decode().splitlines())
        found["log_lines"] = f"{len(lines)}/{len(want)}"
        found["conflict_copies"] = sum(1 for name in got if ".s3files-conflict-" in name)
        same = same and set(lines) <= set(want) and len(lines) == len(set(lines))
    else:
        same = same and set(got) == set(expected)
    found["same_output"] = same
    return found


def _clean(ctx: Context, dst: str, dirs: list[Path]) -> None:
    prefix = _key(ctx, dst) + "/"
    bucket = ctx.target.bucket
    for upload in ctx.admin.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []):
        ctx.admin.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    sdk.delete_prefix(ctx.admin, bucket, prefix)
    for folder in dirs:
        shutil.rmtree(folder, ignore_errors=True)


def invoke(ctx: Context, module: ModuleType, version: str, r: int) -> dict[str, Any]:
    """One measured invocation (all processes of the handler): its sample, or ``{"error": ...}``."""
    label = f"{module.NAME}-{version}-r{r}"
    dst = posixpath.join("out", module.NAME, f"{version}-r{r}")
    mounts: list[FsMount] = []
    dirs: list[Path] = []
    starts: list[float] = []
    try:
        commands = _commands(ctx, module, version, dst, label, mounts, dirs, starts)
        before = [fs.request_counts() or {} for fs in mounts]
        for fs in mounts:
            fs.reset_peak_rss()
        answers, _, disk_peak = _run_children(commands, dict(ctx.target.env), dirs, TIMEOUT_S)
        errors = [a["error"] for a in answers if "error" in a]
        if errors:
            return {"error": errors[0]}
        requests: dict[str, int] = {}
        for answer in answers:
            for op, n in answer.get("requests", {}).items():
                requests[op] = requests.get(op, 0) + n
        for fs, counts in zip(mounts, before, strict=True):
            for op, n in sdk.diff_counts(fs.request_counts() or {}, counts).items():
                requests[op] = requests.get(op, 0) + n
        daemon_peaks = [fs.peak_rss() or 0 for fs in mounts]
        sample: dict[str, Any] = {
            "seconds": max(float(a["seconds"]) for a in answers),
            "handler_peak_mib": max(int(a["peak_rss_bytes"]) for a in answers) / MIB,
            "daemon_peak_mib": max(daemon_peaks) / MIB if mounts else None,
            "disk_peak_mib": disk_peak / MIB,
            "requests": dict(sorted(requests.items())),
        }
        sample["start_s"] = max([*starts, *(float(a["start_s"]) for a in answers if "start_s" in a)])
        sample.update(_check(ctx, module, _outputs(ctx, dst)))
        return sample
    finally:
        for fs in mounts:
            fs.stop()
        _clean(ctx, dst, dirs)


def kill_halfway(ctx: Context, module: ModuleType, version: str) -> dict[str, Any]:
    """Each process of the handler SIGKILLs itself at half its work (common.progress): what is left in
    S3 under its output folder (objects, bytes, multipart uploads never completed) and on local disk (its
    /tmp folder, or the cache folder)."""
    label = f"{module.NAME}-{version}-killed"
    dst = posixpath.join("out", module.NAME, f"{version}-killed")
    mounts: list[FsMount] = []
    dirs: list[Path] = []
    try:
        commands = _commands(ctx, module, version, dst, label, mounts, dirs, [])
        env = {**ctx.target.env, KILL_ENV: "1"}
        _, statuses, _ = _run_children(commands, env, dirs, TIMEOUT_S)  # each process's exit status
        for fs in mounts:
            fs.stop()
        left = _outputs(ctx, dst)
        prefix = _key(ctx, dst) + "/"
        uploads = ctx.admin.list_multipart_uploads(Bucket=ctx.target.bucket, Prefix=prefix).get("Uploads", [])
        return {
            "exit": sorted(set(statuses)),
            "s3_objects": len(left),
            "s3_bytes": sum(len(data) for data in left.values()),
            "multipart_uploads": len(uploads),
            "local_bytes": sum(dir_bytes(d) for d in dirs),
        }
    finally:
        for fs in mounts:
            fs.stop()
        _clean(ctx, dst, dirs)


def storage_bytes(quick: bool) -> int:
    """What a run puts on the server: inputs, plus outputs of every invocation (deleted, but RadosGW
    frees them only at garbage collection)."""
    return 64 * MIB if quick else 2048 * MIB
