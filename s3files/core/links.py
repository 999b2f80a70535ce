"""Symlinks as objects: how one is written so that a listing can tell it from a file.

Owns: the object form of a symlink and the test a listing entry must pass to be worth a HEAD. Must not
touch inodes or caches (fs.py does).

Form (s3fs-compatible): the body is the target's bytes; user metadata ``mode`` is the decimal
``S_IFLNK | 0o777``, with uid, gid and mtime as for files. A LIST carries no user metadata, so a symlink
seen only in a listing would look like a regular file, and the kernel marks an inode bad when a later
getattr reports another type. So we write symlinks as a *one-part multipart upload*: S3 allows a last
(here: only) part under 5 MiB, and the object's ETag then ends in ``-1``. A plain file of 4096 bytes or
less almost always has a plain MD5 ETag (PUT), so only the rare small ``-1`` objects cost a HEAD when a
folder is listed, and ``ls -l`` of N plain files stays ceil(N/1000) LISTs.

Objects made by other tools (s3fs writes symlinks with a plain PUT) look like files in a listing until a
HEAD shows S_IFLNK; the inode table then gives the name a new inode (see inodes.py).
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from dataclasses import replace

from s3files.core.namespace import posix_metadata
from s3files.core.tasks import for_each
from s3files.core.times import format_time
from s3files.store.base import CompletedPart, ObjectInfo, ObjectStore, abort_quietly

MAX_COPY_OBJECT = 5 * 1024**3  # CopyObject's limit; larger objects are copied part by part
COPY_PART = 512 * 1024**2  # UploadPartCopy part size (grown so a copy never needs over 10,000 parts)
LINK_MAX = 4096  # PATH_MAX: a symlink target is shorter (4095 bytes and the kernel's NUL)
LINK_MODE = stat.S_IFLNK | 0o777


def link_candidate(info: ObjectInfo) -> bool:
    """True if a listed object may be one of our symlinks (small, and a one-part multipart ETag)."""
    return info.size <= LINK_MAX and info.etag.endswith("-1")


def is_link(info: ObjectInfo) -> bool:
    """True if a HEAD (metadata known) says the object is a symlink."""
    if info.metadata is None:
        return False
    return stat.S_ISLNK(int(posix_metadata(info.metadata).get("mode", 0)))


def posix_fields(mode: int, uid: int, gid: int, mtime_ns: int) -> dict[str, str]:
    """x-amz-meta-* of a new object in the s3fs-compatible form files use (mode as decimal st_mode, times
    as times.py writes them; a new object's ctime is its mtime)."""
    now = format_time(mtime_ns)
    return {"mode": str(mode), "uid": str(uid), "gid": str(gid), "mtime": now, "ctime": now}


def link_metadata(uid: int, gid: int, mtime_ns: int) -> dict[str, str]:
    """x-amz-meta-* of a new symlink."""
    return posix_fields(LINK_MODE, uid, gid, mtime_ns)


async def put_link(
    store: ObjectStore, key: str, target: bytes, metadata: Mapping[str, str], if_none_match: bool
) -> ObjectInfo:
    """Write symlink ``key`` -> ``target`` as a one-part multipart upload (3 requests). With
    ``if_none_match``, PreconditionFailed if the key exists. The result carries ``metadata``."""
    upload_id = await store.create_multipart(key, metadata)
    try:
        part = await store.upload_part(key, upload_id, 1, target)
        info = await store.complete_multipart(key, upload_id, [part], if_none_match=if_none_match)
    except BaseException:
        await abort_quietly(store, key, upload_id)
        raise
    return info if info.metadata is not None else replace(info, metadata=dict(metadata))


async def copy_object(
    store: ObjectStore,
    src: ObjectInfo,
    dst: str,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """``copy_object_version``'s ETag only."""
    return (await copy_object_version(store, src, dst, metadata))[0]


async def copy_object_version(
    store: ObjectStore,
    src: ObjectInfo,
    dst: str,
    metadata: Mapping[str, str] | None = None,
) -> tuple[str, float]:
    """Server-side copy of object ``src`` to ``dst`` (``src.key`` itself to rewrite metadata), metadata
    kept unless ``metadata`` is given; returns the copy's ETag. A symlink stays in its listable form: a
    server may give the copy of a multipart object a plain ETag (AWS does), and a copied symlink would then
    look like a file in listings. When a link candidate's copy comes back with a plain ETag, a HEAD tells
    whether it is a symlink, and a symlink is written again as a one-part upload (on such servers only).
    Returns the copy's ETag and when the server said it made it (its LastModified is not later)."""
    if src.size > MAX_COPY_OBJECT:
        return await _copy_in_parts(store, src, dst, metadata, COPY_PART)
    copied = await store.copy(src.key, dst, metadata=metadata)
    if not link_candidate(src) or copied.etag.endswith("-1"):
        return copied.etag, copied.last_modified
    info = await store.head(dst)
    if not is_link(info) or info.metadata is None:
        return info.etag, info.last_modified
    target = await store.get_range(dst, 0, info.size, if_match=info.etag) if info.size else b""
    linked = await put_link(store, dst, target, info.metadata, if_none_match=False)
    return linked.etag, linked.last_modified


async def _copy_in_parts(
    store: ObjectStore, src: ObjectInfo, dst: str, metadata: Mapping[str, str] | None, part_size: int
) -> tuple[str, float]:
    """A copy over CopyObject's 5 GiB limit: a multipart upload of UploadPartCopy parts, each pinned to
    ``src``'s version (If-Match), so a copy never mixes two versions. Metadata kept unless given."""
    if metadata is None:
        metadata = (await store.head(src.key)).metadata or {}
    size = max(part_size, -(-src.size // 10_000))
    upload_id = await store.create_multipart(dst, metadata)
    spans = [(n + 1, start, min(start + size, src.size)) for n, start in enumerate(range(0, src.size, size))]
    parts: dict[int, CompletedPart] = {}

    async def one(span: tuple[int, int, int]) -> None:
        number, start, end = span
        parts[number] = await store.upload_part_copy(dst, upload_id, number, src.key, start, end, src.etag)

    try:
        await for_each(spans, one)
        done = await store.complete_multipart(dst, upload_id, [parts[n] for n, _, _ in spans])
    except BaseException:
        await abort_quietly(store, dst, upload_id)
        raise
    return done.etag, done.last_modified
