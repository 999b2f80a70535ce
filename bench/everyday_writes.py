"""Everyday writers per consistency mode: a shell appending to a log, and `rsync -a` of small files.

Two programs whose speed on a mount depends on what close() promises (issue 18):
- append: ``exec 3>>log; echo $i >&3`` in a loop for ``--seconds``. Every ``echo`` with a redirection
  duplicates descriptor 3 and closes the duplicate, which the kernel turns into a FUSE flush: close-to-open
  uploads the whole file at each one; eventual only makes it durable in the local cache and uploads once
  per write-back delay.
- rsync: ``rsync -a`` of ``--files`` small files into a fresh folder (rsync writes a temporary name, sets
  mode and times, renames).
Each runs on a local folder (the reference), an s3files mount in close-to-open, one in eventual mode and one
in eventual mode with ``--durability daemon`` (closes not synced to the cache disk);
the mount's S3 requests come from the daemon's own counts. For eventual, ``s3files sync`` then waits until
everything is in S3, timed apart. The content in the bucket is checked at the end of each run. Also the
round trips under every close and write (``_round_trips``): a close with nothing to do, and a 2-byte append.
Run (as root, /dev/fuse): ``python -m s3files_bench.everyday_writes [--server rgw|moto] [--seconds 10]
[--files 600] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from s3files_bench import sdk
from s3files_bench.mounts import FsMount, start_s3files
from s3files_bench.servers import Target, open_target

S3FILES = [sys.executable, "-m", "s3files"]
APPEND = 'exec 3>>"$1"; end=$((SECONDS + $2)); i=0; while [ $SECONDS -lt $end ]; do echo $i >&3; i=$((i+1)); done; echo $i'
MODES = ("local", "close-to-open", "eventual", "eventual-daemon")
FLAGS = {  # each mount column's options; eventual-daemon: closes durable against the daemon dying only
    "close-to-open": ["--consistency", "close-to-open"],
    "eventual": ["--consistency", "eventual"],
    "eventual-daemon": ["--consistency", "eventual", "--durability", "daemon"],
}


def _sync(fs: FsMount) -> float:
    """Seconds `s3files sync MOUNTPOINT` took (everything this mount acknowledged is in S3 after it)."""
    start = time.perf_counter()
    command = [*S3FILES, "sync", str(fs.root), "--cache-dir", str(fs.disk_dir)]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - start


def _append(root: Path, seconds: int) -> tuple[int, float]:
    start = time.perf_counter()
    out = subprocess.run(["bash", "-c", APPEND, "append", str(root / "log"), str(seconds)], capture_output=True,
                         text=True, check=True, timeout=seconds + 600)
    return int(out.stdout.strip()), time.perf_counter() - start


def _round_trips(root: Path, count: int = 2000) -> tuple[float, float]:
    """Microseconds per close of a duplicate descriptor with nothing written since the last close (on a
    mount: one FUSE flush that has nothing to do), and per 2-byte append (one FUSE write): what a program
    that closes per line pays before any close does work, the floor under the appender's lines/s."""
    fd = os.open(root / "round-trips", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, b"x\n")
        os.close(os.dup(fd))
        start = time.perf_counter()
        for _ in range(count):
            os.close(os.dup(fd))
        flush = (time.perf_counter() - start) / count
        start = time.perf_counter()
        for _ in range(count):
            os.write(fd, b"x\n")
        write = (time.perf_counter() - start) / count
    finally:
        os.close(fd)
    return flush * 1e6, write * 1e6


def _tree(where: Path, files: int) -> Path:
    src = where / "src"
    for i in range(files):
        folder = src / f"d{i % 20:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:05d}.txt").write_bytes(os.urandom(4096))
    return src


def _rsync(src: Path, dst: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["rsync", "-a", f"{src}/", f"{dst}/"], check=True, capture_output=True, timeout=1800)
    return time.perf_counter() - start


def _one(mode: str, target: Target, base: Path, src: Path, args: argparse.Namespace, r: int) -> dict[str, float]:
    """One round of both programs in ``mode``: lines/s, rsync files/s, sync seconds, requests per file."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=base))
    fs = None
    if mode == "local":
        root = workdir / "local"
        root.mkdir()
    else:
        fs = start_s3files(target, workdir, FLAGS[mode], name="mount")
        root = fs.root / f"everyday-{mode}-r{r}"
        root.mkdir()
    try:
        found: dict[str, float] = {}
        before = fs.request_counts() if fs else None
        lines, took = _append(root, args.seconds)
        found["lines/s"] = lines / took
        found["empty close us"], found["append write us"] = _round_trips(root)
        found["append sync s"] = _sync(fs) if mode.startswith("eventual") and fs else 0.0
        if fs is not None:
            counts = sdk.diff_counts(fs.request_counts() or {}, before or {})
            found["append PUTs"] = counts.get("put", 0) + counts.get("complete_multipart", 0)
            body = target_body(target, f"everyday-{mode}-r{r}/log")
            if body.decode().split() != [str(i) for i in range(lines)]:
                raise SystemExit(f"{mode}: the log in the bucket is not the {lines} lines written")
            before = fs.request_counts()
        found["rsync files/s"] = args.files / _rsync(src, root / "tree")
        found["rsync sync s"] = _sync(fs) if mode.startswith("eventual") and fs else 0.0
        if fs is not None:
            counts = sdk.diff_counts(fs.request_counts() or {}, before or {})
            found["rsync requests/file"] = sum(counts.values()) / args.files
            found["rsync PUTs/file"] = counts.get("put", 0) / args.files
            keys = sdk.list_keys(_client(target), target.bucket, target.key(f"everyday-{mode}-r{r}/tree/"))
            if len([k for k in keys if not k.endswith("/")]) != args.files:
                raise SystemExit(f"{mode}: {len(keys)} keys in the bucket after rsync, expected {args.files}")
        return found
    finally:
        if fs is not None:
            fs.stop()
        shutil.rmtree(workdir, ignore_errors=True)


_clients: dict[str, object] = {}


def _client(target: Target) -> object:
    if target.source not in _clients:
        _clients[target.source] = sdk.make_client(target)
    return _clients[target.source]


def target_body(target: Target, name: str) -> bytes:
    client = _client(target)
    return client.get_object(Bucket=target.bucket, Key=target.key(name))["Body"].read()  # type: ignore[attr-defined]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=("rgw", "moto"), default="rgw")
    parser.add_argument("--seconds", type=int, default=10, help="how long the shell appends")
    parser.add_argument("--files", type=int, default=600, help="files rsync copies")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with open_target(args.server, None, None, None, 256 * 2**20, lambda line: print(line, file=sys.stderr)) as target:
        base = Path(tempfile.mkdtemp(prefix="s3files-everyday-"))
        try:
            src = _tree(base, args.files)
            for r in range(args.rounds):
                for mode in MODES:
                    results[mode].append(_one(mode, target, base, src, args, r))
        finally:
            shutil.rmtree(base, ignore_errors=True)
    keys = list(results["eventual"][0])
    print(f"\nEveryday writers on {args.server}, median of {args.rounds} rounds ({args.seconds} s of appends, "
          f"rsync -a of {args.files} files of 4 KiB)\n")
    print("| figure | " + " | ".join(MODES) + " |")
    print("|---|" + "---|" * len(MODES))
    for key in keys:
        cells = [f"{statistics.median(row[key] for row in results[m]):.4g}" if key in results[m][0] else "" for m in MODES]
        print(f"| {key} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
