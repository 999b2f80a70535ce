"""``s3files bench --network s3-like``: the forwarder (bench/netshape.py) shapes traffic and leaves nothing.

Against moto through a real forwarder process: a request's first byte waits at least the latency (and the
same request without the forwarder does not); a connection capped at N MiB/s moves M MiB in no less than
M/N s, and the link cap holds for two connections together; the bytes arrive unchanged; the process and its
port are gone after the block, and after a bench run is interrupted with SIGINT.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from s3files_bench import report
from s3files_bench.cli import build_parser, shape_from
from s3files_bench.netshape import MIB, Running, Shape, shaped

from s3files.localserver import MotoServer


def client(endpoint_url: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=endpoint_url, region_name="us-east-1", config=Config(max_pool_connections=4)
    )


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def gone(pid: int) -> bool:
    """No such process, or only its zombie (its sockets and pipes closed already)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.fixture
def forwarded(moto_server: MotoServer) -> Iterator[Any]:
    """Start a forwarder with the given shape in front of moto; after the test, check it left nothing."""
    started: list[Running] = []

    def start(shape: Shape) -> Running:
        started.append(stack.enter_context(shaped(moto_server.endpoint_url, shape)))
        return started[-1]

    with contextlib.ExitStack() as stack:
        yield start
    for running in started:
        assert gone(running.pid)
        assert not port_open(running.port)


def test_first_byte_waits_for_the_latency(forwarded: Any, moto_server: MotoServer, bucket: str) -> None:
    direct = client(moto_server.endpoint_url)
    direct.put_object(Bucket=bucket, Key="k", Body=b"x")
    net = forwarded(Shape(latency_s=0.2, conn_bps=None, link_bps=None))
    shaped_client = client(net.endpoint_url)

    def head_seconds(s3: Any) -> float:
        start = time.perf_counter()
        assert s3.head_object(Bucket=bucket, Key="k")["ContentLength"] == 1
        return time.perf_counter() - start

    unshaped = [head_seconds(direct) for _ in range(3)]
    through = [head_seconds(shaped_client) for _ in range(3)]  # a new connection, then kept-alive ones
    assert min(unshaped) < 0.1, unshaped
    assert min(through) >= 0.2, through


def test_connection_cap_and_link_cap(forwarded: Any, moto_server: MotoServer, bucket: str) -> None:
    direct = client(moto_server.endpoint_url)
    data = os.urandom(2 * MIB)
    direct.put_object(Bucket=bucket, Key="big", Body=data)

    def get(s3: Any) -> tuple[float, str]:
        start = time.perf_counter()
        body = s3.get_object(Bucket=bucket, Key="big")["Body"].read()
        return time.perf_counter() - start, hashlib.sha256(body).hexdigest()

    want = hashlib.sha256(data).hexdigest()
    per_conn = forwarded(Shape(latency_s=0.0, conn_bps=8 * MIB, link_bps=None))
    seconds, digest = get(client(per_conn.endpoint_url))
    assert digest == want
    assert seconds >= 2 / 8, seconds

    link = forwarded(Shape(latency_s=0.0, conn_bps=None, link_bps=8 * MIB))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        start = time.perf_counter()
        results = list(pool.map(get, [client(link.endpoint_url), client(link.endpoint_url)]))
        seconds = time.perf_counter() - start
    assert [d for _, d in results] == [want, want]
    assert seconds >= 4 / 8, seconds  # both connections' 4 MiB through one 8 MiB/s link


def test_forwarder_counts_its_bytes_and_stops(moto_server: MotoServer, bucket: str) -> None:
    data = os.urandom(MIB)
    with shaped(moto_server.endpoint_url, Shape(latency_s=0.0, conn_bps=None, link_bps=None)) as net:
        s3 = client(net.endpoint_url)
        s3.put_object(Bucket=bucket, Key="k", Body=data)
        assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == data
        assert port_open(net.port)
    assert gone(net.pid) and not port_open(net.port)
    assert net.final["bytes_up"] >= MIB and net.final["bytes_down"] >= MIB
    profile = net.profile()
    assert profile["gib"] >= 2 / 1024 and profile["connections"] >= 1 and profile["kib_per_splice"] > 0
    lines = report.profile_lines({"network": "s3-like: shaped", "forwarder": profile})
    assert lines[0] == "network: s3-like: shaped"
    assert f"{profile['cpu_s_per_gib']} CPU s per GiB forwarded" in lines[1]


def test_forwarder_exits_when_the_bench_dies(moto_server: MotoServer) -> None:
    """A bench killed with SIGKILL cannot stop its forwarder; the forwarder notices and exits by itself."""
    code = (
        "import sys, time\n"
        "from s3files_bench.netshape import Shape, shaped\n"
        f"with shaped({moto_server.endpoint_url!r}, Shape()) as net:\n"
        "    print(net.pid, net.port, flush=True)\n"
        "    time.sleep(60)\n"
    )
    bench = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert bench.stdout is not None
        pid, port = map(int, bench.stdout.readline().split())
        assert port_open(port) and not gone(pid)
    finally:
        bench.kill()
        bench.wait(10)
    deadline = time.monotonic() + 10
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(pid) and not port_open(port)


def test_network_flags_need_s3_like() -> None:
    parser = build_parser()
    defaults = shape_from(parser.parse_args(["--network", "s3-like"]), parser)
    assert defaults == Shape(latency_s=0.020, conn_bps=90 * MIB, link_bps=1200 * MIB)
    custom = shape_from(parser.parse_args(["--network", "s3-like", "--latency-ms", "5", "--link-mibps", "0"]), parser)
    assert custom == Shape(latency_s=0.005, conn_bps=90 * MIB, link_bps=None)
    assert shape_from(parser.parse_args([]), parser) is None
    with pytest.raises(SystemExit):
        shape_from(parser.parse_args(["--latency-ms", "5"]), parser)


def _bench_children(pid: int) -> list[int]:
    """Forwarder processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"s3files_bench.netshape" in cmdline:
            found.append(int(entry))
    return found


def mounts_under(folder: Path) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        return [line.split()[4] for line in info if line.split()[4].startswith(f"{folder}/")]


@pytest.mark.fuse
def test_sigint_to_the_bench_stops_the_forwarder(tmp_path: Path) -> None:
    """Interrupted while measuring (its mount up and talking through the forwarder), the bench stops the
    mount, then the forwarder: its process and port are gone, and nothing is mounted in its work folder."""
    log = tmp_path / "bench.err"
    with open(log, "wb") as err:
        bench = subprocess.Popen(
            [sys.executable, "-m", "s3files", "bench", "--quick", "--network", "s3-like", "--workloads",
             "small_files", "--files", "4", "--rounds", "1"],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 90
        while "[0/" not in log.read_text() and bench.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        text = log.read_text()
        assert "[0/" in text, text[-2000:]
        line = next(ln for ln in text.splitlines() if ln.startswith("network s3-like"))
        port = int(line.split(" through ")[1].split()[0].rsplit(":", 1)[1])
        pid = int(line.split("forwarder pid ")[1].split(")")[0])
        assert _bench_children(bench.pid) == [pid], text[-2000:]
        workdir = Path(os.readlink(f"/proc/{pid}/fd/2")).parent  # its log is in the bench's work folder
        assert workdir.name.startswith("s3files-bench-") and mounts_under(workdir), workdir
        assert port_open(port)
        bench.send_signal(signal.SIGINT)
        assert bench.wait(60) == 130, log.read_text()[-3000:]
    finally:
        if bench.poll() is None:  # a failed assertion above: let the bench clean up, then make sure
            bench.send_signal(signal.SIGINT)
            try:
                bench.wait(60)
            except subprocess.TimeoutExpired:
                bench.kill()
                bench.wait(10)
    assert "interrupted" in log.read_text(), log.read_text()[-3000:]
    assert gone(pid) and not port_open(port)
    assert not mounts_under(workdir) and not workdir.exists()
