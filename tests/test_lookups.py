"""Lookups through a real mount (moto behind the fault proxy, which records every request): a program
that stats a folder's files in order has the next names described before it gets to them, and threads
looking up names of one folder are answered at the same time."""

from __future__ import annotations

import os
import stat
import threading
import time
from typing import Any

from daemons import Daemons


def test_a_stat_loop_through_a_mount_has_the_next_names_described_before_it_gets_there(
    daemons: Daemons, fault_proxy: Any, bucket: str, boto3_client: Any
) -> None:
    """Each file's true attributes need its HEAD; in the listing's order the mount asks for the next
    names' HEADs while the program is still at an earlier one (core: descriptions.py ``ahead``). Shown by
    the order of requests, not by time: for the names past the first few, their HEADs reached the server
    before the program's ``stat`` of them began (all but at most two, see below), and no name was asked
    twice."""
    names = [f"f{n:03d}" for n in range(40)]
    for n, name in enumerate(names):
        boto3_client.put_object(
            Bucket=bucket, Key=f"d/{name}", Body=b"x" * n, Metadata={"mode": str(stat.S_IFREG | 0o640)}
        )
    daemon = daemons.mount(fault_proxy.endpoint_url, bucket, extra=("--metadata-ttl", "30"))
    fault_proxy.stats.record = True
    began: dict[str, int] = {}
    for n, name in enumerate(names):
        began[name] = len(fault_proxy.stats.recorded)
        st = os.stat(daemon.mountpoint / "d" / name)
        assert (st.st_size, stat.S_IMODE(st.st_mode)) == (n, 0o640)
    heads = [
        (i, request.path.rsplit("/", 1)[-1])
        for i, request in enumerate(list(fault_proxy.stats.recorded))
        if request.operation == "HeadObject" and request.path.startswith(f"/{bucket}/d/f") and not request.path.endswith("/")
    ]
    first: dict[str, int] = {}
    for i, name in heads:
        first.setdefault(name, i)
    assert sorted(first) == names
    assert len(heads) == len(names)  # each described once
    late = [name for name in names[6:] if first[name] >= began[name]]
    # A HEAD started ahead may reach the server a moment after the program's stat began when the machine
    # is loaded (one did in a CI run with two test workers); without describing ahead all 34 would be late.
    assert len(late) <= 2, late


def test_threads_looking_up_names_of_one_folder_are_answered_at_the_same_time(
    daemons: Daemons, fault_proxy: Any, bucket: str, boto3_client: Any
) -> None:
    """8 threads stat 8 files of one folder. The kernel sends their lookups at once only if the mount's
    INIT reply allowed it (libfuse before 3.17.1 leaves that out: fuse/dirops.py answers INIT instead), and
    then the mount asks S3 about them at once. Shown with S3 down (the proxy holds every request
    unanswered): serialized, one lookup's two requests would be held; at once, every name's are (two
    probes, then one listing for the rest: at least 5 requests). Once S3 is back, every stat is right."""
    names = [f"f{n}" for n in range(8)]
    for n, name in enumerate(names):
        boto3_client.put_object(Bucket=bucket, Key=f"d/{name}", Body=b"x" * n, Metadata={"mode": str(stat.S_IFREG | 0o640)})
    daemon = daemons.mount(fault_proxy.endpoint_url, bucket, extra=("--metadata-ttl", "30"))
    assert os.path.isdir(daemon.mountpoint / "d")  # the folder's own lookup, before the outage
    fault_proxy.set_down("drop")
    results: dict[str, tuple[int, int]] = {}

    def look(name: str) -> None:
        st = os.stat(daemon.mountpoint / "d" / name)
        results[name] = (st.st_size, stat.S_IMODE(st.st_mode))

    threads = [threading.Thread(target=look, args=(name,)) for name in names]
    try:
        for thread in threads:
            thread.start()
        held = [0]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the held requests stop coming (0.5 s without one more)
            time.sleep(0.5)
            now = fault_proxy.stats.snapshot()["down_drop"]
            if now == held[-1] and now > 0:
                break
            held.append(now)
    finally:
        fault_proxy.set_down(None)
        for thread in threads:
            thread.join(60)
    assert held[-1] >= 5, held
    assert results == {name: (n, 0o640) for n, name in enumerate(names)}
