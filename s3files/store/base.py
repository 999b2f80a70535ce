"""The ObjectStore protocol: the only way the core talks to S3.

Owns: the shapes of what S3 returns (``ObjectInfo``, ``ListPage``) and the operations the core may use.
Every method is a *trio* coroutine (the core and the FUSE adapter run on trio); an implementation that
speaks asyncio underneath (aiobotocore) crosses to its own event loop once per request.

Errors: implementations raise only ``s3files.errors.StoreError`` subclasses (``ObjectNotFound``,
``PreconditionFailed``, ``UploadNotFound``, ``AccessDenied``, ``BucketNotFound``, ``CredentialsError``,
``EndpointUnreachable``, plain ``StoreError``). Nothing S3-specific leaks past this seam.

ETags are carried *without* quotes everywhere (RGW compares bare ETags in If-Match; AWS accepts both).

``requests`` on every implementation counts requests sent, by operation name (``head``, ``get``, ``put``,
``list``, ``delete``, ``copy``, ``create_multipart``, ``upload_part``, ``upload_part_copy``, ``complete_multipart``,
``abort_multipart``, ``list_multipart_uploads``, ``head_bucket``; the S3 store also ``list_parts``), so tests
can assert request budgets on real and fake stores alike.

Lost replies. The S3 store's client retries a request whose reply was lost (connection closed, timeout);
for the idempotent requests (PUT, UploadPart, UploadPartCopy, DeleteObject, AbortMultipartUpload) that is
harmless. Two are not: a CreateMultipartUpload whose reply was lost leaves an upload nobody knows the id of
(the S3 store finds and aborts it, see ``S3Store.create_multipart``); a CompleteMultipartUpload applied
but answered too late is retried and may meet NoSuchUpload, raised as ``UploadNotFound`` for the caller to
tell by a HEAD (its upload id in the object's metadata) whether its own first attempt landed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import trio

from s3files.errors import S3FilesError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObjectInfo:
    """One object as S3 describes it. ``metadata`` is None when unknown (LIST does not return it)."""

    key: str
    size: int
    etag: str
    last_modified: float  # seconds since the epoch
    metadata: Mapping[str, str] | None = None


@dataclass(frozen=True)
class ListPage:
    """One ListObjectsV2 page. ``prefixes`` are the CommonPrefixes (ending in the delimiter)."""

    objects: Sequence[ObjectInfo]
    prefixes: Sequence[str]
    next_token: str | None = None


@dataclass(frozen=True)
class Copied:
    """What a server-side copy reports: the new object's ETag and time (S3 returns no size or metadata,
    and asking with a HEAD would double the cost of every rename)."""

    key: str
    etag: str
    last_modified: float


@dataclass(frozen=True)
class MultipartUpload:
    """One multipart upload in progress (ListMultipartUploads). ``initiated``: seconds since the epoch, by
    the server's clock (moto reports one fixed date for every upload)."""

    key: str
    upload_id: str
    initiated: float


@dataclass(frozen=True)
class CompletedPart:
    number: int
    etag: str


@dataclass
class RequestCounts:
    """Requests sent, by operation. Shared shape for every store so tests read one thing."""

    by_op: Counter[str] = field(default_factory=Counter)

    def add(self, op: str, n: int = 1) -> None:
        self.by_op[op] += n

    def __getitem__(self, op: str) -> int:
        return self.by_op[op]

    def total(self) -> int:
        return sum(self.by_op.values())

    def reset(self) -> None:
        self.by_op.clear()

    def snapshot(self) -> dict[str, int]:
        return dict(self.by_op)


@runtime_checkable
class ObjectStore(Protocol):
    """A bucket (already chosen) seen through the operations s3files needs.

    Keys are full keys in the bucket; the core adds the mount prefix. Ranges are half-open
    ``[start, end)`` byte offsets; ``end`` past the object's size is clipped (as S3 does).
    """

    requests: RequestCounts

    async def check_bucket(self) -> None:
        """Raise BucketNotFound / CredentialsError / AccessDenied / EndpointUnreachable, or return."""

    async def head(self, key: str) -> ObjectInfo:
        """Size, ETag, LastModified and user metadata of ``key``; ObjectNotFound if absent."""

    async def get_first(self, key: str, nbytes: int) -> tuple[ObjectInfo, bytes | bytearray]:
        """What ``head`` says of ``key`` and its first ``nbytes`` bytes (all of a smaller object), in one
        GET: opening a small file then costs one request instead of a HEAD and a GET. ObjectNotFound if
        absent. The bytes may be a bytearray (as from ``get_range``): treat them as read-only."""

    async def get_range(
        self, key: str, start: int, end: int, if_match: str | None = None, into: bytearray | None = None
    ) -> bytes | bytearray:
        """Bytes ``[start, end)`` of ``key``. With ``if_match``, PreconditionFailed if the ETag differs.

        May be a bytearray (the S3 store receives bodies straight into one): treat it as read-only.
        ``into``: a spare buffer of exactly ``end - start`` bytes the store may fill and return instead of
        allocating one (a sequential reader recycles its parts' buffers); a store may also ignore it."""

    async def put(
        self,
        key: str,
        data: bytes,
        metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        """Write a whole object. ``if_none_match``: only if absent; ``if_match``: only if ETag matches."""

    async def list_page(
        self,
        prefix: str,
        delimiter: str | None = "/",
        token: str | None = None,
        max_keys: int = 1000,
        start_after: str | None = None,
    ) -> ListPage:
        """One page of ListObjectsV2."""

    async def delete(self, key: str) -> None:
        """Delete ``key`` (absent is not an error, as in S3)."""

    async def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None) -> Copied:
        """Server-side copy (one request); with ``metadata`` the copy's metadata is replaced, else kept."""

    async def create_multipart(self, key: str, metadata: Mapping[str, str] | None = None) -> str:
        """Start a multipart upload; returns its upload id."""

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> CompletedPart:
        """Upload part ``number`` (1-based). UploadNotFound if the upload was completed or aborted."""

    async def upload_part_from(
        self, key: str, upload_id: str, number: int, fd: int, offset: int, length: int
    ) -> CompletedPart:
        """Upload part ``number`` = ``length`` bytes of local file ``fd`` from ``offset`` (the write cache's
        copy), so an implementation can send them without copying them through memory. The caller may
        close ``fd`` once this returns. StoreError if the file is shorter than the part."""

    async def upload_part_copy(
        self,
        key: str,
        upload_id: str,
        number: int,
        src: str,
        start: int,
        end: int,
        if_match: str | None = None,
    ) -> CompletedPart:
        """Part ``number`` = bytes ``[start, end)`` of object ``src``, copied inside S3 (UploadPartCopy).

        With ``if_match``, PreconditionFailed if ``src`` is no longer that version: the part must be the
        bytes the writer started from.
        """

    async def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[CompletedPart],
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        """Finish the upload; returns the new object's info (ETag from a HEAD if the server sent none).
        UploadNotFound if S3 knows no such upload (completed, perhaps by this very call's first attempt
        whose reply was lost, or aborted)."""

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abandon the upload and its parts (already gone is not an error)."""

    async def list_multipart_uploads(self, prefix: str) -> list[MultipartUpload]:
        """Every multipart upload in progress whose key starts with ``prefix`` (all pages), in S3's order:
        by key, then by initiation time."""

    async def aclose(self) -> None:
        """Release connections/threads."""


async def abort_quietly(store: ObjectStore, key: str, upload_id: str, timeout: float = 10.0) -> None:
    """Abandon a multipart upload after a failure, even while being cancelled, within ``timeout``; a
    failure to abort is logged (S3 lifecycle rules reap such uploads), never raised over the first error."""
    with trio.CancelScope(shield=True), trio.move_on_after(timeout):
        try:
            await store.abort_multipart(key, upload_id)
        except S3FilesError as exc:
            log.warning("op=abort_multipart key=%s failed: %s", key, exc)
