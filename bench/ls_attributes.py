"""`ls -l` of a folder of N files whose objects carry POSIX metadata: requests and time, cold, listed again
past the metadata TTL, and after a remount, for s3files (true attributes, the default), s3files
``--listing-attributes=fast`` and s3fs-fuse.

Each variant runs twice on the same objects: once straight to the server (the times), once through a
counting proxy (tests/faultproxy.py, no faults) that tells the requests each ``ls -l`` sent (s3fs-fuse
counts none itself). A remount keeps the cache folder (s3files' metadata cache, core/metacache.py);
s3fs-fuse keeps its stat cache in memory only. Run (as root, /dev/fuse):
``python -m s3files_bench.ls_attributes [--server rgw|moto] [--files 1000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from s3files_bench import sdk
from s3files_bench.mounts import FsMount, start_s3files, start_s3fs
from s3files_bench.servers import Target, open_target

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from faultproxy import FaultProxy  # the tests' proxy, used here only to count

TTL_WAIT = 2.0  # seconds between the cold listing and the next: past s3files' --metadata-ttl (1 s)
PHASES = ("cold", "again", "remount")


def _seed(target: Target, folder: str, files: int) -> None:
    client = sdk.make_client(target)
    meta = {"mode": "33261", "uid": "1000", "gid": "1000", "mtime": "1700000000"}  # as s3fs-fuse writes them

    def put(i: int) -> None:
        client.put_object(Bucket=target.bucket, Key=target.key(f"{folder}/f{i:05d}"), Body=b"x" * (i % 97), Metadata=meta)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(files)))


def _ls(folder: Path, files: int, true_modes: bool) -> float:
    """Seconds ``ls -l`` took; checks it showed every file, with the objects' own mode if ``true_modes``."""
    start = time.perf_counter()
    out = subprocess.run(["ls", "-l", str(folder)], capture_output=True, text=True, timeout=600, check=True)
    took = time.perf_counter() - start
    lines = out.stdout.splitlines()[1:]
    if len(lines) != files or (true_modes and not all(line.startswith("-rwxr-xr-x") for line in lines)):
        raise SystemExit(f"ls -l of {folder} showed {len(lines)} entries, first {lines[:1]}")
    return took


Starter = Callable[[Target, Path, Path], FsMount]


def _s3files(*args: str) -> Starter:
    def start(target: Target, workdir: Path, cache: Path) -> FsMount:
        return start_s3files(target, workdir, [*args, "--cache-dir", str(cache)])

    return start


def _s3fs(target: Target, workdir: Path, cache: Path) -> FsMount:
    return start_s3fs(target, workdir)


VARIANTS: dict[str, Starter] = {
    "s3files": _s3files(),
    "s3files --listing-attributes=fast": _s3files("--listing-attributes", "fast"),
    "s3fs-fuse 1.90": _s3fs,
}


@contextmanager
def _mounted(start: Starter, target: Target, base: Path, cache: Path) -> Iterator[FsMount]:
    workdir = Path(tempfile.mkdtemp(prefix="m-", dir=base))
    fs = start(target, workdir, cache)
    try:
        yield fs
    finally:
        fs.stop()


Phase = tuple[float, float, dict[str, int]]  # seconds, the file system's CPU seconds, requests by operation


def _run(start: Starter, target: Target, base: Path, folder: str, files: int, proxy: FaultProxy | None) -> dict[str, Phase]:
    """phase -> what it took, for one variant."""
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=base))
    found: dict[str, Phase] = {}

    def phase(name: str, fs: FsMount) -> None:
        if proxy is not None:
            proxy.stats.reset()
        cpu = fs.cpu_seconds()
        took = _ls(fs.root / folder, files, true_modes=start is not VARIANTS["s3files --listing-attributes=fast"])
        ops = dict(proxy.stats.snapshot()["operations"]) if proxy is not None else {}  # type: ignore[arg-type]
        found[name] = (took, fs.cpu_seconds() - cpu, ops)

    with _mounted(start, target, base, cache) as fs:
        subprocess.run(["stat", str(fs.root / folder)], capture_output=True, check=True)
        phase("cold", fs)
        time.sleep(TTL_WAIT)
        phase("again", fs)
    with _mounted(start, target, base, cache) as fs:
        subprocess.run(["stat", str(fs.root / folder)], capture_output=True, check=True)
        phase("remount", fs)
    shutil.rmtree(cache, ignore_errors=True)
    return found


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=("rgw", "moto"), default="rgw")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    folder = "ls"
    with open_target(args.server, None, None, None, 64 * 2**20, lambda line: print(line, file=sys.stderr)) as target:
        _seed(target, folder, args.files)
        base = Path(tempfile.mkdtemp(prefix="s3files-ls-bench-"))
        times: dict[str, dict[str, list[float]]] = {v: {p: [] for p in PHASES} for v in VARIANTS}
        cpus: dict[str, dict[str, list[float]]] = {v: {p: [] for p in PHASES} for v in VARIANTS}
        requests: dict[str, dict[str, dict[str, int]]] = {}
        assert target.endpoint_url is not None
        with FaultProxy(target.endpoint_url, timeout=600) as proxy:
            counted = replace(target, endpoint_url=proxy.endpoint_url)
            for name, start in VARIANTS.items():
                requests[name] = {p: ops for p, (_, _, ops) in _run(start, counted, base, folder, args.files, proxy).items()}
        for _ in range(args.rounds):  # interleaved, straight to the server
            for name, start in VARIANTS.items():
                for phase, (took, cpu, _) in _run(start, target, base, folder, args.files, None).items():
                    times[name][phase].append(took)
                    cpus[name][phase].append(cpu)
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"\n`ls -l` of {args.files} files on {args.server}, median of {args.rounds}: wall time, the file system"
        " process's CPU time, requests LIST / HEAD / other\n"
    )
    print("| variant | cold | again (past the TTL) | after a remount |")
    print("|---|---|---|---|")
    for name in VARIANTS:
        cells = []
        for phase in PHASES:
            ops = requests[name][phase]
            lists = ops.get("ListObjectsV2", 0) + ops.get("ListObjects", 0)
            heads = ops.get("HeadObject", 0)
            other = sum(ops.values()) - lists - heads
            took, cpu = statistics.median(times[name][phase]), statistics.median(cpus[name][phase])
            cells.append(f"{took:.2f} s, cpu {cpu:.2f} s, {lists} / {heads} / {other}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
