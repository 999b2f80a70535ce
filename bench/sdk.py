"""boto3, the reference SDK of the benchmark: clients that count their requests, and bucket chores.

Owns: making boto3 clients for a ``Target``, counting the requests each one sends (named as the mount's
statistics name them, so the columns compare), seeding and deleting objects, waiting for an object to
appear. Why boto3 here and not the store's aiobotocore: the references must be what a user's own script
would do (the plain SDK), and keeping them independent of s3files' store means a bug there cannot flatter
the mount. The product code keeps botocore inside ``s3files/store``; the harness may use boto3 freely.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

if TYPE_CHECKING:
    from s3files_bench.servers import Target

#: S3 operation names as the mount counts them (`s3files stats`).
OP_NAMES = {
    "HeadObject": "head",
    "GetObject": "get",
    "PutObject": "put",
    "ListObjectsV2": "list",
    "ListObjects": "list",
    "DeleteObject": "delete",
    "DeleteObjects": "delete",
    "CopyObject": "copy",
    "UploadPartCopy": "copy",
    "CreateMultipartUpload": "create_multipart",
    "UploadPart": "upload_part",
    "CompleteMultipartUpload": "complete_multipart",
    "AbortMultipartUpload": "abort_multipart",
    "HeadBucket": "head_bucket",
}

#: boto3's managed transfers (download_file / upload_file) as a user gets them, with 8 MiB parts.
TRANSFER = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024)

#: The "raw parallel" reference: the transfer manager with as many 8 MiB requests in flight as the mount
#: has for one file (a 64 MiB read-ahead window of 8 MiB parts; 8 parts uploaded at once).
PARALLEL = TransferConfig(
    multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024, max_concurrency=8
)


class RequestCounter:
    """Requests a client sent (each attempt, retries included), by operation; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def hook(self, operation_name: str = "", **_: Any) -> None:
        with self._lock:
            self._counts[OP_NAMES.get(operation_name, operation_name)] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def make_client(target: Target, counter: RequestCounter | None = None, pool: int = 16) -> Any:
    """A boto3 S3 client on ``target``; with ``counter``, every request it sends is counted there."""
    session = boto3.session.Session(
        aws_access_key_id=target.access_key,
        aws_secret_access_key=target.secret_key,
        region_name=target.region,
    )
    client = session.client(
        "s3",
        endpoint_url=target.endpoint_url,
        config=Config(
            connect_timeout=10,
            read_timeout=120,
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=pool,
            s3={"addressing_style": "path"} if target.endpoint_url else None,
        ),
    )
    if counter is not None:
        client.meta.events.register("request-created.s3", counter.hook)
    return client


def diff_counts(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """Requests sent between two snapshots (operations with none left out)."""
    return {op: n - before.get(op, 0) for op, n in sorted(after.items()) if n - before.get(op, 0) > 0}


def upload(client: Any, bucket: str, key: str, path: Path) -> None:
    client.upload_file(str(path), bucket, key, Config=TRANSFER)


def copy(client: Any, bucket: str, source: str, key: str) -> None:
    client.copy({"Bucket": bucket, "Key": source}, bucket, key, Config=TRANSFER)


def delete_keys(client: Any, bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[start : start + 1000]]
        client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})


def list_keys(client: Any, bucket: str, prefix: str, limit: int = 1_000_000) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
        if len(keys) >= limit:
            break
    return keys


def delete_prefix(client: Any, bucket: str, prefix: str) -> int:
    """Delete every object under ``prefix`` (which must be non-empty: never the whole bucket)."""
    if not prefix:
        raise ValueError("refusing to delete a whole bucket")
    keys = list_keys(client, bucket, prefix)
    delete_keys(client, bucket, keys)
    return len(keys)


def wait_object(client: Any, bucket: str, key: str, size: int, timeout: float) -> None:
    """Return once ``key`` exists with ``size`` bytes; TimeoutError (an OSError) after ``timeout``.

    A file system may upload after close returns (rclone's write-back), so "written" means "in the bucket".
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            if client.head_object(Bucket=bucket, Key=key)["ContentLength"] == size:
                return
        except client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{key} not in the bucket with {size} bytes {timeout:.0f} s after close")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def wait_keys(client: Any, bucket: str, prefix: str, count: int, timeout: float) -> None:
    """Return once ``count`` objects exist under ``prefix``; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while len(list_keys(client, bucket, prefix, limit=count)) < count:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"fewer than {count} objects under {prefix} {timeout:.0f} s after close")
        time.sleep(0.05)
