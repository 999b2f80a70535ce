"""The multipart requests of the S3 store (asyncio side): create (with the lost-reply cleanup), upload a
part (bytes, or a local file on the direct path), upload a part by copy, complete, abort, and list
uploads and parts.

Owns: what this store remembers of the uploads it started (part sizes, user metadata, the source version
checked for part copies), so that completing one describes the object without a HEAD; and the
interoperability rules of multipart uploads:
- CreateMultipartUpload is not idempotent: uploads made by attempts whose reply was lost are found
  (``lost_uploads``) and aborted.
- Ceph RGW 16 and moto ignore conditions on CompleteMultipartUpload and CopySourceIfMatch on
  UploadPartCopy (AWS honours them): a HEAD checks them first (objects.py ``check_condition``).
- An empty ETag from CompleteMultipartUpload (RGW) is replaced by the one a HEAD reports.
- Completing or aborting an upload that is gone raises UploadNotFound, or is done (abort).

Must not: open clients or translate S3 errors itself (session.py, translate.py), or hash or read local
files (the trio side, s3.py, does that on worker threads before a request crosses). Every method of
``MultipartRequests`` runs on the store's asyncio thread and raises only StoreError subclasses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from s3files.errors import EndpointUnreachable, ObjectNotFound, PreconditionFailed, StoreError, UploadNotFound
from s3files.store.base import CompletedPart, MultipartUpload, ObjectInfo
from s3files.store.objects import ObjectRequests
from s3files.store.session import S3Session
from s3files.store.translate import never_connected
from s3files.store.wire import response_time, strip_etag

log = logging.getLogger(__name__)

MAX_UPLOAD_PAGES = 10_000  # ListMultipartUploads pages (1000 uploads each) before giving up: a server bug
# How far the initiation time of an upload may lie before the server-clock estimate of a retried
# CreateMultipartUpload's first attempt and still be taken for its lost upload (see lost_uploads).
LOST_UPLOAD_MARGIN = 2.0


def lost_uploads(
    uploads: Sequence[MultipartUpload],
    key: str,
    returned: str | None,
    started: float,
    server_now: float,
    client_now: float,
    live: frozenset[str] | set[str],
) -> list[MultipartUpload]:
    """The uploads of exactly ``key`` that a retried CreateMultipartUpload, first sent at ``started``,
    may have made in attempts whose reply was lost; ``returned`` is the id the last attempt answered (None
    if none answered), ``live`` the ids in progress through this store. The caller also checks that
    each has no part (nobody else ever knew its id) before aborting it.

    Which uploads: those initiated between the first attempt and the one that answered. ``Initiated`` is
    by the server's clock, ``started`` by ours, and the two may differ by any amount (an unsynchronised
    RGW, a VM's drifting clock), so the server's clock at ``started`` is estimated from a reply's Date
    header (``server_now``, received at ``client_now``): at least ``started + server_now - client_now``,
    since Date is truncated to whole seconds and the reply travelled before ``client_now``. LOST_UPLOAD_MARGIN
    more seconds allow for Initiated's own rounding and a server whose front ends' clocks differ a little.
    Narrow on purpose: another writer's upload of the same key initiated in that window, still without any
    part, would be taken for ours (it then meets UploadNotFound).

    A server whose Initiated does not follow its clock (moto reports one fixed date for every upload) is
    recognised by the returned upload's time lying outside the window; then every other upload of the key
    that is not live here is a candidate (and still must have no part)."""
    earliest = started + (server_now - client_now) - LOST_UPLOAD_MARGIN
    latest = server_now + 1.0 + LOST_UPLOAD_MARGIN
    others = [u for u in uploads if u.key == key and u.upload_id != returned and u.upload_id not in live]
    answered = next((u for u in uploads if u.upload_id == returned), None)
    if answered is not None:
        if not earliest <= answered.initiated <= latest:
            return others  # Initiated says nothing about when (moto)
        latest = answered.initiated  # every earlier attempt reached the server before the last one
    return [u for u in others if earliest <= u.initiated <= latest]


class MultipartRequests:
    """Multipart uploads of one bucket, through ``session``; HEADs through ``objects``."""

    def __init__(self, session: S3Session, objects: ObjectRequests) -> None:
        self._s3 = session
        self._objects = objects
        # Sizes and metadata of parts/uploads started here, so complete can describe the object without a
        # HEAD; the (source, etag) checked once per upload for part copies.
        self._part_sizes: dict[str, dict[int, int]] = {}
        self._upload_metadata: dict[str, dict[str, str]] = {}
        self._checked_sources: dict[str, tuple[str, str]] = {}

    async def create(self, key: str, metadata: dict[str, str]) -> str:
        """CreateMultipartUpload. It is not idempotent: when a reply is lost after S3 made the upload,
        botocore's retry makes a second one and the first id is never known, an orphan holding its key's
        parts until a lifecycle rule reaps it. So after a retry (RetryAttempts > 0) or when every attempt
        failed to connect or answer, the uploads of this key those attempts made are found and aborted."""
        started = time.time()
        try:
            response = await self._s3.call(
                "create_multipart", key, "create_multipart_upload", Key=key, Metadata=metadata
            )
        except EndpointUnreachable as exc:
            # Perhaps an attempt reached S3 and only its reply was lost (closed or timed out): a best effort.
            # Not when the last attempt could not even connect: a listing would fail the same way, slowly.
            if not never_connected(exc):
                await self._abort_lost_uploads(key, None, started)
            raise
        upload_id: str = response["UploadId"]
        self._upload_metadata[upload_id] = metadata
        self._part_sizes[upload_id] = {}
        if response.get("ResponseMetadata", {}).get("RetryAttempts", 0) > 0:
            await self._abort_lost_uploads(key, upload_id, started)
        return upload_id

    async def _abort_lost_uploads(self, key: str, returned: str | None, started: float) -> None:
        """Abort the uploads of ``key`` that attempts of a CreateMultipartUpload sent since ``started`` may
        have made (``lost_uploads``) and that have no part. Failures are logged, never raised: the upload
        the caller got is good either way."""
        try:
            uploads, server_now = await self.uploads(key)
            client_now = time.time()
            candidates = lost_uploads(
                uploads, key, returned, started, server_now, client_now, set(self._upload_metadata)
            )
            for upload in candidates:
                try:
                    parts = await self._s3.call(
                        "list_parts", key, "list_parts", Key=key, UploadId=upload.upload_id, MaxParts=1
                    )
                except (UploadNotFound, ObjectNotFound):
                    continue  # gone meanwhile (RGW says NoSuchKey for the parts of a completed upload)
                if parts.get("Parts"):
                    continue  # someone knows this upload's id: not one whose creation reply was lost
                await self.abort(key, upload.upload_id)
                log.info(
                    "op=create_multipart key=%s aborted upload %s: made by an attempt whose reply was lost",
                    key,
                    upload.upload_id,
                )
        except StoreError as exc:
            # After a failed create the endpoint is most likely down and this says nothing new.
            level = logging.WARNING if returned is not None else logging.DEBUG
            log.log(level, "op=create_multipart key=%s could not look for lost uploads: %s", key, exc)

    async def uploads(self, prefix: str) -> tuple[list[MultipartUpload], float]:
        """Every upload in progress under ``prefix`` (all pages of ListMultipartUploads) and the server's
        clock when the last page was answered (its Date header)."""
        kwargs: dict[str, Any] = {"Prefix": prefix}
        found: list[MultipartUpload] = []
        for _ in range(MAX_UPLOAD_PAGES):
            response = await self._s3.call(
                "list_multipart_uploads", prefix, "list_multipart_uploads", **kwargs
            )
            for item in response.get("Uploads", []):
                initiated = item["Initiated"].timestamp() if "Initiated" in item else 0.0
                found.append(MultipartUpload(item["Key"], item["UploadId"], initiated))
            if not response.get("IsTruncated"):
                return found, response_time(response)
            markers = (response.get("NextKeyMarker"), response.get("NextUploadIdMarker"))
            if not markers[0] or markers == (kwargs.get("KeyMarker"), kwargs.get("UploadIdMarker")):
                raise StoreError(f"listing the uploads under {prefix!r}: the listing did not advance")
            kwargs["KeyMarker"], kwargs["UploadIdMarker"] = markers
            if not markers[1]:
                del kwargs["UploadIdMarker"]
        raise StoreError(f"listing the uploads under {prefix!r}: more than {MAX_UPLOAD_PAGES} pages")

    async def upload_part_direct(
        self, key: str, upload_id: str, number: int, fd: int, offset: int, length: int, sha256: str
    ) -> CompletedPart | None:
        """Part ``number`` from a local file on the direct path (sendfile), signed with ``sha256``; None
        when the direct path did not take it (the caller then sends the bytes with ``upload_part``)."""
        assert self._s3.direct is not None
        answer = await self._s3.direct.put_part(key, upload_id, number, (fd, offset, length), sha256)
        if answer is None or not answer.get("etag"):
            return None  # aiobotocore sends it again (an answer without an ETag is no use to Complete)
        self._part_sizes.setdefault(upload_id, {})[number] = length
        return CompletedPart(number=number, etag=strip_etag(answer["etag"]))

    async def upload_part(
        self, key: str, upload_id: str, number: int, data: bytes, md5: str
    ) -> CompletedPart:
        response = await self._s3.call(
            "upload_part",
            key,
            "upload_part",
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            ContentMD5=md5,
        )
        self._part_sizes.setdefault(upload_id, {})[number] = len(data)
        return CompletedPart(number=number, etag=strip_etag(response.get("ETag")))

    async def upload_part_copy(
        self, key: str, upload_id: str, number: int, src: str, start: int, end: int, if_match: str | None
    ) -> CompletedPart:
        kwargs: dict[str, Any] = {
            "Key": key,
            "UploadId": upload_id,
            "PartNumber": number,
            "CopySource": {"Bucket": self._s3.bucket, "Key": src},
            "CopySourceRange": f"bytes={start}-{end - 1}",
        }
        if if_match is not None:
            kwargs["CopySourceIfMatch"] = strip_etag(if_match)
            # Ceph RGW 16 and moto ignore CopySourceIfMatch on UploadPartCopy (AWS honours it): check the
            # source's version once per upload, so parts of a newer version are never mixed in.
            if self._checked_sources.get(upload_id) != (src, if_match):
                await self._objects.check_condition(src, if_match, False)
                self._checked_sources[upload_id] = (src, if_match)
        response = await self._s3.call("upload_part_copy", src, "upload_part_copy", **kwargs)
        self._part_sizes.setdefault(upload_id, {})[number] = end - start
        return CompletedPart(number=number, etag=strip_etag(response.get("CopyPartResult", {}).get("ETag")))

    async def complete(
        self, key: str, upload_id: str, parts: list[CompletedPart], if_match: str | None, if_none_match: bool
    ) -> ObjectInfo:
        ordered = sorted(parts, key=lambda part: part.number)
        kwargs: dict[str, Any] = {
            "Key": key,
            "UploadId": upload_id,
            # Part ETags quoted, as S3 returned them: the form every server accepts in this XML body.
            "MultipartUpload": {"Parts": [{"PartNumber": p.number, "ETag": f'"{p.etag}"'} for p in ordered]},
        }
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = strip_etag(if_match)
        if if_none_match or if_match is not None:
            # Ceph RGW 16 and moto ignore conditions on CompleteMultipartUpload (AWS honours them). Check
            # first, so a conflict is still caught there; only the short window between this HEAD and the
            # completion is unprotected on such servers. One extra HEAD per large conditional write.
            await self._objects.check_condition(key, if_match, if_none_match)
        try:
            response = await self._s3.call("complete_multipart", key, "complete_multipart_upload", **kwargs)
        except PreconditionFailed:
            if if_match is not None:
                await self._objects.head(key)  # ObjectNotFound when the 412 meant "missing" (RGW)
            raise
        except UploadNotFound:
            # Completed (perhaps by an attempt of this very call whose reply was lost: AWS and moto then
            # answer the retry with success, other servers with NoSuchUpload) or aborted: the caller tells.
            self._forget(upload_id)
            raise
        sizes = self._part_sizes.get(upload_id, {})
        metadata = self._upload_metadata.get(upload_id)
        self._forget(upload_id)
        etag = strip_etag(response.get("ETag"))
        if not etag or metadata is None or any(p.number not in sizes for p in ordered):
            # RGW sends no ETag; an upload started by another process has no sizes here.
            return await self._objects.head(key)
        return ObjectInfo(
            key=key,
            size=sum(sizes[p.number] for p in ordered),
            etag=etag,
            last_modified=response_time(response),
            metadata=metadata,
        )

    def _forget(self, upload_id: str) -> None:
        self._part_sizes.pop(upload_id, None)
        self._upload_metadata.pop(upload_id, None)
        self._checked_sources.pop(upload_id, None)

    async def abort(self, key: str, upload_id: str) -> None:
        self._forget(upload_id)
        try:
            await self._s3.call("abort_multipart", key, "abort_multipart_upload", Key=key, UploadId=upload_id)
        except UploadNotFound:
            # Abandoning an upload that is already gone is done, as for the memory store (and what a retried
            # abort whose first reply was lost meets).
            return
