"""What S3's answers and bodies look like on the wire, turned into base.py's shapes, and back.

Owns: ETags (bare in s3files, quoted by S3), user metadata names (HTTP header names, lower case), S3's
timestamps (ISO 8601 in listings, RFC 1123 in headers: parsed fast), what a HEAD or GET answer says of an
object (``described``), and the checksums of bodies (Content-MD5 of a bytes body, SHA-256 of a part in a
local file). Pure functions over plain values: no client, no request, no error translation (see
translate.py); the only S3 error raised here is StoreError for a local file that is shorter than a part.
Must not: send anything or hash a large body on an event loop (``content_md5`` moves it to a worker
thread; ``file_sha256`` blocks and is for a worker thread only).
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import hashlib
import os
import time
from collections.abc import Mapping
from typing import Any

import botocore.utils
import trio

from s3files.errors import StoreError
from s3files.store.base import ObjectInfo

META = "x-amz-meta-"  # user metadata headers (lower case, as the direct path reports headers)


async def content_md5(data: bytes) -> str:
    """Base64 MD5 of a body, for Content-MD5: the server checks the bytes it got against it. Large bodies
    are hashed on a worker thread (hashlib releases the GIL), never on the event loops."""
    if len(data) < 256 * 1024:
        return base64.b64encode(hashlib.md5(data).digest()).decode()
    digest = await trio.to_thread.run_sync(lambda: hashlib.md5(data).digest())
    return base64.b64encode(digest).decode()


def file_sha256(fd: int, offset: int, length: int) -> str:
    """Hex SHA-256 of ``length`` bytes of file ``fd`` from ``offset``, read 1 MiB at a time into one buffer
    (no part-sized copy in memory). Blocking: run it on a worker thread. StoreError if the file is short."""
    digest = hashlib.sha256()
    chunk = bytearray(min(length, 1024 * 1024))
    view = memoryview(chunk)
    done = 0
    while done < length:
        n = os.preadv(fd, [view[: min(len(chunk), length - done)]], offset + done)
        if n <= 0:
            raise StoreError(f"the local copy ended {length - done} bytes before the end of the part")
        digest.update(view[:n])
        done += n
    return digest.hexdigest()


def strip_etag(etag: str | None) -> str:
    """ETags travel bare in s3files (see base.py); S3 sends them quoted."""
    return (etag or "").strip().strip('"')


def user_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """User metadata as S3 will store and return it: names in lowercase (they are HTTP header names)."""
    return {name.lower(): value for name, value in (metadata or {}).items()}


def parse_timestamp(value: str) -> datetime.datetime:
    """S3's timestamps, fast: ISO 8601 in listings (``2026-11-28T04:47:14.123Z``), RFC 1123 in headers.

    botocore parses each with dateutil, about 60 us apiece: 7% of the daemon's CPU while creating small
    files, whose folder listings are re-read. Anything unusual goes to botocore's own parser."""
    try:
        if value[:1].isdigit():
            parsed = datetime.datetime.fromisoformat(value)
        else:
            parsed = email.utils.parsedate_to_datetime(value)
        if parsed.tzinfo is not None:
            return parsed
    except (TypeError, ValueError, IndexError):
        pass
    result: datetime.datetime = botocore.utils.parse_timestamp(value)
    return result


def header_time(date: str | None) -> float:
    """An HTTP date header as epoch seconds; now if it is missing or unreadable."""
    if date:
        try:
            return email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            pass
    return time.time()


def response_time(response: Mapping[str, Any]) -> float:
    """The server's Date header as epoch seconds (PUT/COPY/complete replies carry no LastModified)."""
    return header_time((response.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}).get("date"))


def described(key: str, size: int, response: Mapping[str, Any]) -> ObjectInfo:
    """What a HEAD or GET answer (through aiobotocore) says of ``key``."""
    return ObjectInfo(
        key=key,
        size=size,
        etag=strip_etag(response.get("ETag")),
        last_modified=response["LastModified"].timestamp(),
        metadata=dict(response.get("Metadata") or {}),
    )


def described_by_headers(key: str, headers: Mapping[str, str]) -> ObjectInfo | None:
    """What the headers of a ranged GET's 206 (on the direct path) say of ``key``, or None when they do
    not say the whole size and the time (then aiobotocore asks again)."""
    total = headers.get("content-range", "").rpartition("/")[2]
    if not total.isdigit() or "last-modified" not in headers:
        return None
    meta = {name[len(META) :]: v for name, v in headers.items() if name.startswith(META)}
    etag, modified = strip_etag(headers.get("etag")), header_time(headers["last-modified"])
    return ObjectInfo(key, int(total), etag, modified, meta)


def described_by_head(key: str, headers: Mapping[str, str]) -> ObjectInfo | None:
    """What the headers of a HEAD's 200 (on the direct path) say of ``key``, or None when they do not say
    the size and the time (then aiobotocore asks again)."""
    length = headers.get("content-length", "")
    if not length.isdigit() or "last-modified" not in headers:
        return None
    meta = {name[len(META) :]: v for name, v in headers.items() if name.startswith(META)}
    return ObjectInfo(key, int(length), strip_etag(headers.get("etag")), header_time(headers["last-modified"]), meta)
