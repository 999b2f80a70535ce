"""The single-object requests of the S3 store (asyncio side): HEAD, GET (first bytes, a range), PUT,
ListObjectsV2, DELETE, CopyObject, and the HEAD that checks a condition a server ignores.

Owns: the parameters of those requests and what their answers mean, the choice between the direct path
(direct.py: ranged GETs, small PUTs) and aiobotocore, and the follow-ups that make every server answer
like AWS:
- ETags are sent bare in If-Match (RGW 16 refuses the quoted form).
- A 412 for If-Match may mean "missing key" (RGW) or "changed" (everyone): a HEAD tells them apart, so
  callers always see ObjectNotFound for a missing key, as on AWS.
- A 416 on an empty object (it has no byte 0) is answered by a HEAD: an empty body, not an error.
- A server that ignores Range (allowed by HTTP) still gives the caller only the bytes asked for.
- Listings are capped at 1000 keys a page and their LastModified cut to whole seconds, as HEAD says it.

Must not: open clients or translate S3 errors itself (session.py, translate.py), keep state between
requests, or touch multipart uploads (multipart.py, which asks ``head`` and ``check_condition`` here).
Every method runs on the store's asyncio thread and raises only StoreError subclasses.
"""

from __future__ import annotations

from typing import Any

from s3files.errors import ObjectNotFound, PreconditionFailed, StoreError
from s3files.store.base import Copied, ListPage, ObjectInfo
from s3files.store.session import S3Session
from s3files.store.translate import TRANSLATED, range_not_satisfiable
from s3files.store.wire import (
    META,
    described,
    described_by_head,
    described_by_headers,
    header_time,
    response_time,
    strip_etag,
)

MAX_LIST_KEYS = 1000
# PUTs up to this size go the direct way (store/direct.py): small files, where per-request CPU dominates.
DIRECT_PUT_MAX = 8 * 1024 * 1024


class ObjectRequests:
    """HEAD, GET, PUT, LIST, DELETE and COPY of one bucket, through ``session``."""

    def __init__(self, session: S3Session) -> None:
        self._s3 = session

    async def head(self, key: str) -> ObjectInfo:
        direct = self._s3.direct
        if direct is not None:
            headers = await direct.head(key)
            if headers is not None:
                if headers.get(":status") == "404":
                    raise ObjectNotFound(f"no such key: {key}")
                info = described_by_head(key, headers)
                if info is not None:
                    return info
        response = await self._s3.call("head", key, "head_object", Key=key)
        return described(key, int(response["ContentLength"]), response)

    async def get_first(self, key: str, nbytes: int) -> tuple[ObjectInfo, bytes | bytearray]:
        s3 = self._s3
        if s3.direct is not None:
            answer = await s3.direct.get_first(key, nbytes)
            if answer is not None:
                headers, body = answer
                info = described_by_headers(key, headers)
                if info is not None:
                    return info, body
        try:
            response = await s3.client.get_object(Bucket=s3.bucket, Key=key, Range=f"bytes=0-{nbytes - 1}")
            async with response["Body"] as body:
                data: bytes = await body.read()
        except TRANSLATED as exc:
            if range_not_satisfiable(exc):  # an empty object has no byte 0: a HEAD describes it
                info = await self.head(key)
                if info.size == 0:
                    return info, b""
            s3.reraise(exc, "get", key)
        total = (response.get("ContentRange") or "").rpartition("/")[2]
        if not total.isdigit():  # no Content-Range: the server ignored Range and sent everything
            total = str(len(data))
        return described(key, int(total), response), data[:nbytes]

    async def get_range(
        self, key: str, start: int, end: int, if_match: str | None, into: bytearray | None = None
    ) -> bytes | bytearray:
        s3 = self._s3
        # Ranges are inclusive in HTTP. An empty request (end == start) still asks for one byte: "bytes=5-4"
        # is invalid and S3 would answer with the WHOLE object.
        last = max(end, start + 1) - 1
        if s3.direct is not None:
            # The direct path (one copy per byte); None means "ask aiobotocore", which handles every error
            # and special case (412, 416, a Range ignored, retries).
            direct = await s3.direct.get(key, start, last, if_match, into)
            if direct is not None:
                return direct if len(direct) == end - start else direct[: end - start]
        kwargs: dict[str, Any] = {"Key": key, "Range": f"bytes={start}-{last}"}
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        try:
            response = await s3.client.get_object(Bucket=s3.bucket, **kwargs)
            async with response["Body"] as body:
                data: bytes = await body.read()
        except TRANSLATED as exc:
            if range_not_satisfiable(exc):
                return await self._unsatisfiable_range(key, start, if_match, exc)
            s3.reraise(exc, "get", key)
        if not response.get("ContentRange"):
            data = data[start:]  # the server ignored Range and sent everything (allowed by HTTP)
        return data[: end - start]

    async def _unsatisfiable_range(self, key: str, start: int, if_match: str | None, exc: Exception) -> bytes:
        """416: an empty object has no byte 0 to ask for, so any range on it is refused; a HEAD tells an
        empty object (answer b'', like the memory store) from a read past the end (an error)."""
        info = await self.head(key)
        if if_match is not None and info.etag != if_match:
            raise PreconditionFailed(f"get s3://{self._s3.bucket}/{key}: precondition failed (etag changed)")
        if info.size == 0:
            return b""
        raise StoreError(f"range {start}- not satisfiable for {key} of {info.size} bytes") from exc

    async def put(
        self,
        key: str,
        data: bytes,
        md5: str,
        metadata: dict[str, str],
        if_match: str | None,
        if_none_match: bool,
    ) -> ObjectInfo:
        direct = self._s3.direct
        if direct is not None and len(data) <= DIRECT_PUT_MAX:
            headers = {"Content-MD5": md5, **{META + name: value for name, value in metadata.items()}}
            if if_none_match:
                headers["If-None-Match"] = "*"
            if if_match is not None:
                headers["If-Match"] = strip_etag(if_match)
            answer = await direct.put(key, data, headers)
            if answer is not None:
                if not answer.get("etag"):  # stored, but no ETag said: ask (never PUT again)
                    return await self.head(key)
                return ObjectInfo(
                    key=key,
                    size=len(data),
                    etag=strip_etag(answer["etag"]),
                    last_modified=header_time(answer.get("date")),
                    metadata=metadata,
                )
            # None: refused (412 ...) or not possible; aiobotocore asks again and translates the answer.
        kwargs: dict[str, Any] = {"Key": key, "Body": data, "ContentMD5": md5, "Metadata": metadata}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = strip_etag(if_match)
        try:
            response = await self._s3.call("put", key, "put_object", **kwargs)
        except PreconditionFailed:
            if if_match is not None:
                await self.head(key)  # raises ObjectNotFound when the 412 really meant "missing" (RGW)
            raise
        return ObjectInfo(
            key=key,
            size=len(data),
            etag=strip_etag(response.get("ETag")),
            last_modified=response_time(response),
            metadata=metadata,
        )

    async def list_page(
        self, prefix: str, delimiter: str | None, token: str | None, max_keys: int, start_after: str | None
    ) -> ListPage:
        # AWS caps a page at 1000 keys; some servers (moto) do not: cap here so every server pages alike.
        kwargs: dict[str, Any] = {"Prefix": prefix, "MaxKeys": min(max_keys, MAX_LIST_KEYS)}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if token:
            kwargs["ContinuationToken"] = token
        if start_after:
            kwargs["StartAfter"] = start_after
        response = await self._s3.call("list", prefix, "list_objects_v2", **kwargs)
        objects = [
            ObjectInfo(
                key=item["Key"],
                size=int(item["Size"]),
                etag=strip_etag(item.get("ETag")),
                # Whole seconds, as HEAD and GET say it (an HTTP date): RGW lists milliseconds, and a file
                # whose mtime moved from the listing's to the HEAD's lost its kernel page cache at reopen.
                last_modified=int(item["LastModified"].timestamp()),
                metadata=None,
            )
            for item in response.get("Contents", [])
        ]
        prefixes = [item["Prefix"] for item in response.get("CommonPrefixes", [])]
        next_token = response.get("NextContinuationToken") if response.get("IsTruncated") else None
        return ListPage(objects=objects, prefixes=prefixes, next_token=next_token)

    async def delete(self, key: str) -> None:
        await self._s3.call("delete", key, "delete_object", Key=key)

    async def copy(self, src: str, dst: str, metadata: dict[str, str] | None) -> Copied:
        """CopyObject: one request (objects over 5 GiB would need UploadPartCopy, not done here)."""
        kwargs: dict[str, Any] = {"Key": dst, "CopySource": {"Bucket": self._s3.bucket, "Key": src}}
        if metadata is not None:
            kwargs["MetadataDirective"] = "REPLACE"
            kwargs["Metadata"] = metadata
        response = await self._s3.call("copy", src, "copy_object", **kwargs)
        result = response.get("CopyObjectResult", {})
        etag = strip_etag(result.get("ETag"))
        if not etag:  # no server seen does this; a HEAD then says what was made
            info = await self.head(dst)
            return Copied(dst, info.etag, info.last_modified)
        modified = result["LastModified"].timestamp() if "LastModified" in result else response_time(response)
        return Copied(dst, etag, modified)

    async def check_condition(self, key: str, if_match: str | None, if_none_match: bool) -> None:
        """Check If-Match/If-None-Match by a HEAD, for servers that ignore the condition on a request
        (Ceph RGW 16 and moto on CompleteMultipartUpload and UploadPartCopy). ObjectNotFound for If-Match
        on a missing key, PreconditionFailed when the condition does not hold."""
        try:
            current = await self.head(key)
        except ObjectNotFound:
            if if_match is not None:
                raise
            return
        if if_none_match:
            raise PreconditionFailed(f"{key} already exists")
        if if_match is not None and current.etag != strip_etag(if_match):
            raise PreconditionFailed(f"{key} changed (etag {current.etag}, expected {strip_etag(if_match)})")
