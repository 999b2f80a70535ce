"""Lost replies through a real mount: every 13th reply dropped after the server applied the request.

The mount talks to S3 through tests/faultproxy.py, which forwards each request, reads the server's whole
reply (so S3 applied it) and, every 13th time, closes the connection instead of sending it. The SDK then
retries a request S3 already applied: a conditional PUT or CompleteMultipartUpload is refused (412 or
NoSuchUpload), a CreateMultipartUpload makes a second upload. The mount must recognise its own earlier
attempt every time (docs/SEMANTICS.md, Writes): no EIO, no conflict copy, no upload left behind, every
byte right.
"""

from __future__ import annotations

import hashlib
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import S3Server
from faultproxy import FaultProxy
from test_fuse import mount

from s3files.options import MIB

pytestmark = pytest.mark.fuse

SMALL_FILES = 200
LARGE_FILES = 3
LARGE = 64 * MIB


def test_every_13th_reply_lost_costs_no_eio_no_conflict_no_orphan(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    small = {f"small/{n:03d}.txt": f"file {n}\n".encode() * (n % 7 + 1) for n in range(SMALL_FILES)}
    large = {f"large/{n}.bin": random.Random(n).randbytes(LARGE) for n in range(LARGE_FILES)}
    with FaultProxy(s3_server.endpoint_url, drop_reply_every=13) as proxy:
        with mount(S3Server(s3_server.kind, proxy.endpoint_url), s3_bucket, tmp_path / "m") as _fs:
            root = tmp_path / "m"
            (root / "small").mkdir()
            (root / "large").mkdir()

            def write(item: tuple[str, bytes]) -> None:
                with open(root / item[0], "wb") as f:  # a close that raised would fail the test
                    f.write(item[1])

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(write, small.items()))
            for item in large.items():
                write(item)
        dropped = proxy.stats.faults.get("drop_reply", 0)
    assert dropped >= (SMALL_FILES + LARGE_FILES * 8) // 13  # the faults really happened
    keys = {
        o["Key"]: o["Size"]
        for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
        for o in page.get("Contents", [])
    }
    assert [k for k in keys if "s3files-conflict" in k] == []
    assert sorted(k for k in keys if not k.endswith("/")) == sorted([*small, *large])
    for key, data in [*small.items(), *large.items()]:
        body = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest(), key
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
