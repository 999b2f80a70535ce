"""Lookups through a real mount (moto behind the fault proxy, which records every request): a program
that stats a folder's files in order has the next names described before it gets to them."""

from __future__ import annotations

import os
import stat
from typing import Any

from daemons import Daemons


def test_a_stat_loop_through_a_mount_has_the_next_names_described_before_it_gets_there(
    daemons: Daemons, fault_proxy: Any, bucket: str, boto3_client: Any
) -> None:
    """Each file's true attributes need its HEAD; in the listing's order the mount asks for the next
    names' HEADs while the program is still at an earlier one (core: descriptions.py ``ahead``). Shown by
    the order of requests, not by time: for every name past the first few, its HEAD reached the server
    before the program's ``stat`` of it began, and no name was asked twice."""
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
    ahead = [name for name in names[6:] if first[name] < began[name]]
    assert ahead == names[6:]
