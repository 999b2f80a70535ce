"""The aiobotocore implementation of ObjectStore: S3 over HTTP, called from trio.

Owns: an AsyncioThread (aiobotocore is asyncio-only), the aiobotocore clients living on it, the request
counters, and THE translation of S3/botocore errors into ``s3files.errors`` (done once, here: nothing
botocore-specific leaves this module). Each public method is a trio coroutine that crosses the bridge once;
the asyncio half does the request (and, in the few cases noted, a follow-up HEAD) and translates errors
there, so the trio side only ever sees StoreError subclasses.

Interoperability choices (AWS, MinIO, Ceph RGW, moto):
- ETags are stripped of quotes on the way in and sent bare in If-Match (RGW 16 refuses the quoted form).
- A 412 for If-Match may mean "missing key" (RGW) or "changed" (everyone): a HEAD tells them apart, so
  callers always see ObjectNotFound for a missing key, as on AWS.
- An empty ETag from CompleteMultipartUpload (RGW) is replaced by the one a HEAD reports.
- Checksums are only computed when an operation requires them: the newer botocore default (CRC32 on every
  upload, aws-chunked bodies) is refused by several S3-compatible servers.
- Bad programming (TypeError and friends) is not translated: only S3 answers, botocore errors and OS-level
  connection errors (``TRANSLATED``) become StoreError, so bugs stay visible.

Never log credentials or signed headers: log lines carry op, bucket, key and the S3 error code only.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import aiohttp
import botocore.config
import botocore.session
import botocore.utils
import trio
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)
from botocore.handlers import convert_body_to_file_like_object

from s3files.errors import (
    AccessDenied,
    BucketNotFound,
    CredentialsError,
    EndpointUnreachable,
    ObjectNotFound,
    PreconditionFailed,
    StoreError,
    UploadNotFound,
)
from s3files.store.base import CompletedPart, Copied, ListPage, MultipartUpload, ObjectInfo, RequestCounts
from s3files.store.bridge import AsyncioThread, open_asyncio_thread
from s3files.store.direct import DirectHttp

log = logging.getLogger(__name__)

# botocore operation name -> the op names of base.py's RequestCounts.
OPERATION_NAMES: dict[str, str] = {
    "HeadObject": "head",
    "GetObject": "get",
    "PutObject": "put",
    "ListObjectsV2": "list",
    "DeleteObject": "delete",
    "CopyObject": "copy",
    "CreateMultipartUpload": "create_multipart",
    "UploadPart": "upload_part",
    "UploadPartCopy": "upload_part_copy",
    "CompleteMultipartUpload": "complete_multipart",
    "AbortMultipartUpload": "abort_multipart",
    "ListMultipartUploads": "list_multipart_uploads",
    "ListParts": "list_parts",
    "HeadBucket": "head_bucket",
    "CreateBucket": "create_bucket",
}

# S3 error codes that mean "your credentials are wrong/expired", as opposed to "you may not do that".
CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidToken",
        "TokenRefreshRequired",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
    }
)
ACCESS_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem", "403", "Forbidden"})
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# 409 ConditionalRequestConflict (AWS): a concurrent conditional write won; ours did not happen. For the
# caller this is the same situation as a failed precondition.
PRECONDITION_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})
RANGE_CODES = frozenset({"InvalidRange", "416"})
# Ceph RGW 16 answers CompleteMultipartUpload of an upload that no longer exists (completed or aborted) with
# 500 InternalError and this message (it fails to lock the upload's meta object), where AWS says
# NoSuchUpload. A real completion in progress would have ended during botocore's retries of the 500.
RGW_GONE = "This multipart completion is already in progress"
MAX_LIST_KEYS = 1000
MAX_UPLOAD_PAGES = 10_000  # ListMultipartUploads pages (1000 uploads each) before giving up: a server bug
# How far the initiation time of an upload may lie before the server-clock estimate of a retried
# CreateMultipartUpload's first attempt and still be taken for its lost upload (see lost_uploads).
LOST_UPLOAD_MARGIN = 2.0
# PUTs up to this size go the direct way (store/direct.py): small files, where per-request CPU dominates.
DIRECT_PUT_MAX = 8 * 1024 * 1024

# What gets translated into StoreError: S3 answers, botocore failures, and OS-level connection errors.
# Anything else (TypeError, ...) is a bug and propagates unchanged so it stays visible.
TRANSLATED: tuple[type[Exception], ...] = (ClientError, BotoCoreError, OSError, aiohttp.ClientError)


@dataclass(frozen=True)
class S3Settings:
    """How to reach the bucket; frozen so a store's behaviour cannot change under it."""

    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    max_connections: int = 32
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 4


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


def _metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """User metadata as S3 will store and return it: names in lowercase (they are HTTP header names)."""
    return {name.lower(): value for name, value in (metadata or {}).items()}


def _error_code(exc: ClientError) -> tuple[str, int | None, str]:
    error = exc.response.get("Error", {}) or {}
    status = (exc.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode")
    return str(error.get("Code", "") or status or ""), status, str(error.get("Message", "") or "")


META = "x-amz-meta-"  # user metadata headers (lower case, as the direct path reports headers)


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


def _response_time(response: Mapping[str, Any]) -> float:
    """The server's Date header as epoch seconds (PUT/COPY/complete replies carry no LastModified)."""
    return _header_time((response.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}).get("date"))


def _described(key: str, size: int, response: Mapping[str, Any]) -> ObjectInfo:
    """What a HEAD or GET answer (through aiobotocore) says of ``key``."""
    return ObjectInfo(
        key=key,
        size=size,
        etag=strip_etag(response.get("ETag")),
        last_modified=response["LastModified"].timestamp(),
        metadata=dict(response.get("Metadata") or {}),
    )


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


def _header_time(date: str | None) -> float:
    if date:
        try:
            return email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            pass
    return time.time()


class S3Store:
    """ObjectStore over aiobotocore. Create it with ``open_s3_store``; every method is a trio coroutine."""

    def __init__(self, bridge: AsyncioThread, settings: S3Settings) -> None:
        self.requests = RequestCounts()
        self.settings = settings
        self.bucket = settings.bucket
        self._bridge = bridge
        self._stack = AsyncExitStack()
        self._closed = False
        self._client: Any = None  # the aiobotocore S3 client (asyncio thread only)
        self._probe: Any = None  # a client with a short connect timeout and one retry, for check_bucket
        self._direct: DirectHttp | None = None  # ranged GETs and small PUTs without aiobotocore (asyncio side)
        self._session: AioSession | None = None
        self._endpoint = settings.endpoint_url or "the default AWS S3 endpoint"
        # Sizes and metadata of parts/uploads started here, so complete_multipart can describe the object
        # without a HEAD. Touched on the asyncio thread only.
        self._part_sizes: dict[str, dict[int, int]] = {}
        self._upload_metadata: dict[str, dict[str, str]] = {}
        self._checked_sources: dict[str, tuple[str, str]] = {}  # upload id -> (source, etag) checked

    # -- life cycle (asyncio side) ---------------------------------------------------------------

    def _config(self, *, connect_timeout: float, read_timeout: float, max_attempts: int) -> AioConfig:
        s = self.settings
        return AioConfig(
            max_pool_connections=s.max_connections,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # total_max_attempts counts the first try (botocore's "max_attempts" counts only retries).
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            s3={
                # Custom endpoints (MinIO, RGW, moto) rarely have wildcard DNS for virtual-hosted buckets.
                **({"addressing_style": "path"} if s.endpoint_url else {}),
                # Bodies carry a Content-MD5 (signed with the headers) computed on a worker thread instead:
                # a SHA-256 of every body on the asyncio thread (which botocore does over plain http)
                # capped uploads at one core's hashing speed. Over https botocore skips it anyway.
                "payload_signing_enabled": False,
            },
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )

    async def _a_open(self) -> None:
        s = self.settings
        try:
            session = AioSession(profile=s.profile)
            session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_timestamp)
            common: dict[str, Any] = {"region_name": s.region, "endpoint_url": s.endpoint_url}
            self._client = await self._stack.enter_async_context(
                session.create_client(
                    "s3",
                    config=self._config(
                        connect_timeout=s.connect_timeout,
                        read_timeout=s.read_timeout,
                        max_attempts=s.max_attempts,
                    ),
                    **common,
                )
            )
            # check_bucket must answer within seconds even when the endpoint is a black hole or accepts
            # connections and never answers, so it has its own client: short timeouts, two attempts
            # (worst case about 2 x 3 s plus backoff). HeadBucket is tiny; a healthy S3 answers in ms.
            self._probe = await self._stack.enter_async_context(
                session.create_client(
                    "s3",
                    config=self._config(
                        connect_timeout=min(s.connect_timeout, 2.0),
                        read_timeout=min(s.read_timeout, 3.0),
                        max_attempts=2,
                    ),
                    **common,
                )
            )
        except TRANSLATED as exc:
            await self._stack.aclose()
            self._reraise(exc, "open")
        except BaseException:
            await self._stack.aclose()
            raise
        self._endpoint = s.endpoint_url or self._client.meta.endpoint_url
        self._session = session
        self._direct = DirectHttp(
            self._presign_get,
            self._frozen_credentials,
            self._client.meta.endpoint_url,
            self._client.meta.region_name,
            max_connections=s.max_connections,
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            on_request=self.requests.add,
            ca_bundle=session.get_config_variable("ca_bundle"),
        )
        self._stack.push_async_callback(self._direct.aclose)
        for client in (self._client, self._probe):
            client.meta.events.register("before-send.s3", self._count_request)
        for operation in ("PutObject", "UploadPart"):
            # botocore wraps bytes bodies in BytesIO, which aiohttp then copies and sends in 64 KiB slices
            # with a loop iteration each; bytes go out as they are.
            self._client.meta.events.unregister(
                f"before-parameter-build.s3.{operation}", convert_body_to_file_like_object
            )

    async def _presign_get(self, key: str) -> str:
        url: str = await self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=300
        )
        return url

    async def _frozen_credentials(self) -> Any:
        """The credentials the clients use (the standard chain, refreshed when they expire), for signing
        direct PUTs."""
        assert self._session is not None
        credentials = await self._session.get_credentials()
        return None if credentials is None else await credentials.get_frozen_credentials()

    def _count_request(self, event_name: str = "", **kwargs: Any) -> None:
        """botocore hook, once per HTTP request actually sent (each retry too). Must return None."""
        operation = event_name.rsplit(".", 1)[-1]
        self.requests.add(OPERATION_NAMES.get(operation, operation))

    async def aclose(self) -> None:
        """Close the clients (their connection pools) on the asyncio thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            await self._bridge.run(self._stack.aclose)

    def statistics(self) -> dict[str, Any]:
        return {
            "requests": self.requests.snapshot(),
            "bridge": self._bridge.statistics(),
            "direct_requests": self._direct.served if self._direct is not None else 0,
        }

    # -- error translation (asyncio side, once) ----------------------------------------------------

    def _reraise(self, exc: Exception, op: str, key: str | None = None) -> NoReturn:
        """Raise the StoreError for ``exc`` (call inside ``except TRANSLATED``)."""
        raise self._translate(exc, op, key) from exc

    def _translate(self, exc: Exception, op: str, key: str | None = None) -> StoreError:
        """The StoreError for one of TRANSLATED (S3 said no, or could not be reached)."""
        where = f"s3://{self.bucket}/{key}" if key is not None else f"s3://{self.bucket}"
        if isinstance(exc, StoreError):
            return exc
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return CredentialsError(
                f"no usable AWS credentials for {self._endpoint}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or use --profile"
            )
        if isinstance(exc, ProfileNotFound):
            return CredentialsError(f"AWS profile {self.settings.profile!r} not found (--profile)")
        if isinstance(exc, NoRegionError):
            return StoreError("no AWS region configured: set AWS_DEFAULT_REGION or --region")
        if isinstance(exc, ClientError):
            code, status, message = _error_code(exc)
            log.debug("op=%s key=%s S3 error %s (%s)", op, key, code, status)
            if code == "NoSuchBucket":
                return BucketNotFound(f"bucket {self.bucket!r} does not exist at {self._endpoint}")
            if code == "NoSuchUpload" or (op == "complete_multipart" and RGW_GONE in message):
                return UploadNotFound(f"{op} {where}: no such multipart upload (aborted or completed)")
            if code in NOT_FOUND_CODES or (status == 404 and code not in CREDENTIAL_CODES):
                return ObjectNotFound(f"no such key: {key}" if key is not None else f"not found: {where}")
            if code in PRECONDITION_CODES or status == 412:
                return PreconditionFailed(f"{op} {where}: precondition failed ({code})")
            if code in CREDENTIAL_CODES:
                return CredentialsError(
                    f"credentials rejected by {self._endpoint}: {code}; check AWS_ACCESS_KEY_ID/--profile"
                )
            if code in ACCESS_CODES or status == 403:
                return AccessDenied(f"access denied to {where} by {self._endpoint} ({code})")
            return StoreError(f"{op} {where} failed: S3 error {code} (HTTP {status}): {message}")
        if isinstance(exc, ReadTimeoutError):
            return EndpointUnreachable(
                f"S3 endpoint {self._endpoint} did not answer {op} {where} in time: {exc}"
            )
        if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
            return EndpointUnreachable(f"cannot reach S3 endpoint {self._endpoint}: {exc}")
        if isinstance(exc, (HTTPClientError, OSError, aiohttp.ClientConnectionError)):
            # Reached it once, then the connection broke (reset, closed mid-body): after retries, the same
            # story for the user.
            return EndpointUnreachable(
                f"connection to S3 endpoint {self._endpoint} failed ({op} {where}): {exc}"
            )
        return StoreError(f"{op} {where} failed: {exc}")

    async def _call(self, op: str, key: str | None, method: str, /, **kwargs: Any) -> dict[str, Any]:
        """One S3 request on the main client with errors translated."""
        try:
            response: dict[str, Any] = await getattr(self._client, method)(Bucket=self.bucket, **kwargs)
        except TRANSLATED as exc:
            self._reraise(exc, op, key)
        return response

    # -- ObjectStore (trio side: one crossing each) --------------------------------------------------

    async def check_bucket(self) -> None:
        """HeadBucket; its 403 has no body, so a 1-key listing names the real reason."""
        await self._bridge.run(self._a_check_bucket)

    async def _a_check_bucket(self) -> None:
        try:
            await self._probe.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            code, status, _ = _error_code(exc)
            if status == 404 or code in ("404", "NoSuchBucket", "NotFound"):
                raise BucketNotFound(f"bucket {self.bucket!r} does not exist at {self._endpoint}") from exc
            if status == 301 or code == "301":
                region = (
                    exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
                )
                raise StoreError(
                    f"bucket {self.bucket!r} is in region {region or '?'}, not the one configured (--region)"
                ) from exc
            if status != 403:
                self._reraise(exc, "head_bucket")
        except TRANSLATED as exc:
            self._reraise(exc, "head_bucket")
        try:
            await self._probe.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
        except TRANSLATED as exc:
            self._reraise(exc, "head_bucket")
        # Listing works although HeadBucket was refused: usable enough (some policies allow only List).

    async def head(self, key: str) -> ObjectInfo:
        return await self._bridge.run(self._a_head, key)

    async def _a_head(self, key: str) -> ObjectInfo:
        response = await self._call("head", key, "head_object", Key=key)
        return _described(key, int(response["ContentLength"]), response)

    async def get_first(self, key: str, nbytes: int) -> tuple[ObjectInfo, bytes | bytearray]:
        if nbytes < 1:
            raise StoreError(f"get_first of {key} needs at least one byte, not {nbytes}")
        return await self._bridge.run(self._a_get_first, key, nbytes)

    async def _a_get_first(self, key: str, nbytes: int) -> tuple[ObjectInfo, bytes | bytearray]:
        if self._direct is not None:
            answer = await self._direct.get_first(key, nbytes)
            if answer is not None:
                headers, body = answer
                total = headers.get("content-range", "").rpartition("/")[2]
                if total.isdigit() and "last-modified" in headers:
                    meta = {name[len(META) :]: v for name, v in headers.items() if name.startswith(META)}
                    etag, modified = strip_etag(headers.get("etag")), _header_time(headers["last-modified"])
                    return ObjectInfo(key, int(total), etag, modified, meta), body
        try:
            response = await self._client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes=0-{nbytes - 1}"
            )
            async with response["Body"] as body:
                data: bytes = await body.read()
        except ClientError as exc:
            code, status, _ = _error_code(exc)
            if code in RANGE_CODES or status == 416:  # an empty object has no byte 0: a HEAD describes it
                info = await self._a_head(key)
                if info.size == 0:
                    return info, b""
            self._reraise(exc, "get", key)
        except TRANSLATED as exc:
            self._reraise(exc, "get", key)
        total = (response.get("ContentRange") or "").rpartition("/")[2]
        if not total.isdigit():  # no Content-Range: the server ignored Range and sent everything
            total = str(len(data))
        return _described(key, int(total), response), data[:nbytes]

    async def get_range(
        self, key: str, start: int, end: int, if_match: str | None = None, into: bytearray | None = None
    ) -> bytes | bytearray:
        if start < 0 or end < start:
            raise StoreError(f"bad range {start}-{end} for {key}")
        return await self._bridge.run(self._a_get_range, key, start, end, if_match, into)

    async def _a_get_range(
        self, key: str, start: int, end: int, if_match: str | None, into: bytearray | None = None
    ) -> bytes | bytearray:
        # Ranges are inclusive in HTTP. An empty request (end == start) still asks for one byte: "bytes=5-4"
        # is invalid and S3 would answer with the WHOLE object.
        last = max(end, start + 1) - 1
        if self._direct is not None:
            # The direct path (one copy per byte); None means "ask aiobotocore", which handles every error
            # and special case (412, 416, a Range ignored, retries).
            direct = await self._direct.get(key, start, last, if_match, into)
            if direct is not None:
                return direct if len(direct) == end - start else direct[: end - start]
        kwargs: dict[str, Any] = {"Key": key, "Range": f"bytes={start}-{last}"}
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        try:
            response = await self._client.get_object(Bucket=self.bucket, **kwargs)
            async with response["Body"] as body:
                data: bytes = await body.read()
        except ClientError as exc:
            code, status, _ = _error_code(exc)
            if code in RANGE_CODES or status == 416:
                return await self._a_unsatisfiable_range(key, start, if_match, exc)
            self._reraise(exc, "get", key)
        except TRANSLATED as exc:
            self._reraise(exc, "get", key)
        if not response.get("ContentRange"):
            data = data[start:]  # the server ignored Range and sent everything (allowed by HTTP)
        return data[: end - start]

    async def _a_unsatisfiable_range(
        self, key: str, start: int, if_match: str | None, exc: Exception
    ) -> bytes:
        """416: an empty object has no byte 0 to ask for, so any range on it is refused; a HEAD tells an
        empty object (answer b'', like the memory store) from a read past the end (an error)."""
        info = await self._a_head(key)
        if if_match is not None and info.etag != if_match:
            raise PreconditionFailed(f"get s3://{self.bucket}/{key}: precondition failed (etag changed)")
        if info.size == 0:
            return b""
        raise StoreError(f"range {start}- not satisfiable for {key} of {info.size} bytes") from exc

    async def put(
        self,
        key: str,
        data: bytes,
        metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        data = bytes(data)
        md5 = await content_md5(data)
        return await self._bridge.run(self._a_put, key, data, md5, _metadata(metadata), if_match, if_none_match)

    async def _a_put(
        self,
        key: str,
        data: bytes,
        md5: str,
        metadata: dict[str, str],
        if_match: str | None,
        if_none_match: bool,
    ) -> ObjectInfo:
        if self._direct is not None and len(data) <= DIRECT_PUT_MAX:
            headers = {"Content-MD5": md5, **{META + name: value for name, value in metadata.items()}}
            if if_none_match:
                headers["If-None-Match"] = "*"
            if if_match is not None:
                headers["If-Match"] = strip_etag(if_match)
            answer = await self._direct.put(key, data, headers)
            if answer is not None:
                if not answer.get("etag"):  # stored, but no ETag said: ask (never PUT again)
                    return await self._a_head(key)
                return ObjectInfo(
                    key=key,
                    size=len(data),
                    etag=strip_etag(answer["etag"]),
                    last_modified=_header_time(answer.get("date")),
                    metadata=metadata,
                )
            # None: refused (412 ...) or not possible; aiobotocore asks again and translates the answer.
        kwargs: dict[str, Any] = {"Key": key, "Body": data, "ContentMD5": md5, "Metadata": metadata}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = strip_etag(if_match)
        try:
            response = await self._call("put", key, "put_object", **kwargs)
        except PreconditionFailed:
            if if_match is not None:
                await self._a_head(key)  # raises ObjectNotFound when the 412 really meant "missing" (RGW)
            raise
        return ObjectInfo(
            key=key,
            size=len(data),
            etag=strip_etag(response.get("ETag")),
            last_modified=_response_time(response),
            metadata=metadata,
        )

    async def list_page(
        self,
        prefix: str,
        delimiter: str | None = "/",
        token: str | None = None,
        max_keys: int = 1000,
        start_after: str | None = None,
    ) -> ListPage:
        return await self._bridge.run(self._a_list_page, prefix, delimiter, token, max_keys, start_after)

    async def _a_list_page(
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
        response = await self._call("list", prefix, "list_objects_v2", **kwargs)
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
        await self._bridge.run(self._a_delete, key)

    async def _a_delete(self, key: str) -> None:
        await self._call("delete", key, "delete_object", Key=key)

    async def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None) -> Copied:
        return await self._bridge.run(
            self._a_copy, src, dst, None if metadata is None else _metadata(metadata)
        )

    async def _a_copy(self, src: str, dst: str, metadata: dict[str, str] | None) -> Copied:
        """CopyObject: one request (objects over 5 GiB would need UploadPartCopy, not done here)."""
        kwargs: dict[str, Any] = {"Key": dst, "CopySource": {"Bucket": self.bucket, "Key": src}}
        if metadata is not None:
            kwargs["MetadataDirective"] = "REPLACE"
            kwargs["Metadata"] = metadata
        response = await self._call("copy", src, "copy_object", **kwargs)
        result = response.get("CopyObjectResult", {})
        etag = strip_etag(result.get("ETag"))
        if not etag:  # no server seen does this; a HEAD then says what was made
            info = await self._a_head(dst)
            return Copied(dst, info.etag, info.last_modified)
        modified = result["LastModified"].timestamp() if "LastModified" in result else _response_time(response)
        return Copied(dst, etag, modified)

    async def create_multipart(self, key: str, metadata: Mapping[str, str] | None = None) -> str:
        return await self._bridge.run(self._a_create_multipart, key, _metadata(metadata))

    async def _a_create_multipart(self, key: str, metadata: dict[str, str]) -> str:
        """CreateMultipartUpload. It is not idempotent: when a reply is lost after S3 made the upload,
        botocore's retry makes a second one and the first id is never known, an orphan holding its key's
        parts until a lifecycle rule reaps it. So after a retry (RetryAttempts > 0) or when every attempt
        failed to connect or answer, the uploads of this key those attempts made are found and aborted."""
        started = time.time()
        try:
            response = await self._call(
                "create_multipart", key, "create_multipart_upload", Key=key, Metadata=metadata
            )
        except EndpointUnreachable as exc:
            # Perhaps an attempt reached S3 and only its reply was lost (closed or timed out): a best effort.
            # Not when the last attempt could not even connect: a listing would fail the same way, slowly.
            if not isinstance(exc.__cause__, (EndpointConnectionError, ConnectTimeoutError)):
                await self._a_abort_lost_uploads(key, None, started)
            raise
        upload_id: str = response["UploadId"]
        self._upload_metadata[upload_id] = metadata
        self._part_sizes[upload_id] = {}
        if response.get("ResponseMetadata", {}).get("RetryAttempts", 0) > 0:
            await self._a_abort_lost_uploads(key, upload_id, started)
        return upload_id

    async def _a_abort_lost_uploads(self, key: str, returned: str | None, started: float) -> None:
        """Abort the uploads of ``key`` that attempts of a CreateMultipartUpload sent since ``started`` may
        have made (``lost_uploads``) and that have no part. Failures are logged, never raised: the upload
        the caller got is good either way."""
        try:
            uploads, server_now = await self._a_uploads(key)
            client_now = time.time()
            candidates = lost_uploads(
                uploads, key, returned, started, server_now, client_now, set(self._upload_metadata)
            )
            for upload in candidates:
                try:
                    parts = await self._call(
                        "list_parts", key, "list_parts", Key=key, UploadId=upload.upload_id, MaxParts=1
                    )
                except (UploadNotFound, ObjectNotFound):
                    continue  # gone meanwhile (RGW says NoSuchKey for the parts of a completed upload)
                if parts.get("Parts"):
                    continue  # someone knows this upload's id: not one whose creation reply was lost
                await self._a_abort_multipart(key, upload.upload_id)
                log.info(
                    "op=create_multipart key=%s aborted upload %s: made by an attempt whose reply was lost",
                    key,
                    upload.upload_id,
                )
        except StoreError as exc:
            # After a failed create the endpoint is most likely down and this says nothing new.
            level = logging.WARNING if returned is not None else logging.DEBUG
            log.log(level, "op=create_multipart key=%s could not look for lost uploads: %s", key, exc)

    async def list_multipart_uploads(self, prefix: str) -> list[MultipartUpload]:
        uploads, _ = await self._bridge.run(self._a_uploads, prefix)
        return uploads

    async def _a_uploads(self, prefix: str) -> tuple[list[MultipartUpload], float]:
        """Every upload in progress under ``prefix`` (all pages of ListMultipartUploads) and the server's
        clock when the last page was answered (its Date header)."""
        kwargs: dict[str, Any] = {"Prefix": prefix}
        found: list[MultipartUpload] = []
        for _ in range(MAX_UPLOAD_PAGES):
            response = await self._call("list_multipart_uploads", prefix, "list_multipart_uploads", **kwargs)
            for item in response.get("Uploads", []):
                initiated = item["Initiated"].timestamp() if "Initiated" in item else 0.0
                found.append(MultipartUpload(item["Key"], item["UploadId"], initiated))
            if not response.get("IsTruncated"):
                return found, _response_time(response)
            markers = (response.get("NextKeyMarker"), response.get("NextUploadIdMarker"))
            if not markers[0] or markers == (kwargs.get("KeyMarker"), kwargs.get("UploadIdMarker")):
                raise StoreError(f"listing the uploads under {prefix!r}: the listing did not advance")
            kwargs["KeyMarker"], kwargs["UploadIdMarker"] = markers
            if not markers[1]:
                del kwargs["UploadIdMarker"]
        raise StoreError(f"listing the uploads under {prefix!r}: more than {MAX_UPLOAD_PAGES} pages")

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> CompletedPart:
        data = bytes(data)
        md5 = await content_md5(data)
        return await self._bridge.run(self._a_upload_part, key, upload_id, number, data, md5)

    async def upload_part_from(
        self, key: str, upload_id: str, number: int, fd: int, offset: int, length: int
    ) -> CompletedPart:
        """Part ``number`` from a local file. On the direct path (plain HTTP) the bytes go from the page
        cache to the socket by sendfile, hashed (SHA-256, signed) 1 MiB at a time beforehand: no part-sized
        copy in this process, which for a large sequential write was a third of the daemon's CPU (read
        back, aiohttp's buffering, the send). Otherwise the part is read and sent as ``upload_part``.
        If the file changes between hashing and sending, the server refuses the part (the payload's hash
        does not match) and it is sent again through aiobotocore."""
        own = os.dup(fd)  # the caller may close ``fd`` meanwhile: a duplicate never names another file
        try:
            if self._direct is not None and self._direct.sends_files():
                sha256 = await trio.to_thread.run_sync(file_sha256, own, offset, length)
                part = await self._bridge.run(
                    self._a_upload_part_direct, key, upload_id, number, own, offset, length, sha256
                )
                if part is not None:
                    return part
            data = await trio.to_thread.run_sync(os.pread, own, length, offset)
            if len(data) != length:
                raise StoreError(f"the local copy ended {length - len(data)} bytes before the end of the part")
            return await self.upload_part(key, upload_id, number, data)  # hashed again: it may have changed
        finally:
            os.close(own)

    async def _a_upload_part_direct(
        self, key: str, upload_id: str, number: int, fd: int, offset: int, length: int, sha256: str
    ) -> CompletedPart | None:
        assert self._direct is not None
        answer = await self._direct.put_part(key, upload_id, number, (fd, offset, length), sha256)
        if answer is None or not answer.get("etag"):
            return None  # aiobotocore sends it again (an answer without an ETag is no use to Complete)
        self._part_sizes.setdefault(upload_id, {})[number] = length
        return CompletedPart(number=number, etag=strip_etag(answer["etag"]))

    async def _a_upload_part(
        self, key: str, upload_id: str, number: int, data: bytes, md5: str
    ) -> CompletedPart:
        response = await self._call(
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
        self,
        key: str,
        upload_id: str,
        number: int,
        src: str,
        start: int,
        end: int,
        if_match: str | None = None,
    ) -> CompletedPart:
        return await self._bridge.run(
            self._a_upload_part_copy, key, upload_id, number, src, start, end, if_match
        )

    async def _a_upload_part_copy(
        self, key: str, upload_id: str, number: int, src: str, start: int, end: int, if_match: str | None
    ) -> CompletedPart:
        kwargs: dict[str, Any] = {
            "Key": key,
            "UploadId": upload_id,
            "PartNumber": number,
            "CopySource": {"Bucket": self.bucket, "Key": src},
            "CopySourceRange": f"bytes={start}-{end - 1}",
        }
        if if_match is not None:
            kwargs["CopySourceIfMatch"] = strip_etag(if_match)
            # Ceph RGW 16 and moto ignore CopySourceIfMatch on UploadPartCopy (AWS honours it): check the
            # source's version once per upload, so parts of a newer version are never mixed in.
            if self._checked_sources.get(upload_id) != (src, if_match):
                await self._a_precondition(src, if_match, False)
                self._checked_sources[upload_id] = (src, if_match)
        response = await self._call("upload_part_copy", src, "upload_part_copy", **kwargs)
        self._part_sizes.setdefault(upload_id, {})[number] = end - start
        return CompletedPart(number=number, etag=strip_etag(response.get("CopyPartResult", {}).get("ETag")))

    async def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[CompletedPart],
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        return await self._bridge.run(
            self._a_complete_multipart, key, upload_id, list(parts), if_match, if_none_match
        )

    async def _a_complete_multipart(
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
            await self._a_precondition(key, if_match, if_none_match)
        try:
            response = await self._call("complete_multipart", key, "complete_multipart_upload", **kwargs)
        except PreconditionFailed:
            if if_match is not None:
                await self._a_head(key)  # ObjectNotFound when the 412 meant "missing" (RGW)
            raise
        except UploadNotFound:
            # Completed (perhaps by an attempt of this very call whose reply was lost: AWS and moto then
            # answer the retry with success, other servers with NoSuchUpload) or aborted: the caller tells.
            self._forget_upload(upload_id)
            raise
        sizes = self._part_sizes.get(upload_id, {})
        metadata = self._upload_metadata.get(upload_id)
        self._forget_upload(upload_id)
        etag = strip_etag(response.get("ETag"))
        if not etag or metadata is None or any(p.number not in sizes for p in ordered):
            # RGW sends no ETag; an upload started by another process has no sizes here.
            return await self._a_head(key)
        return ObjectInfo(
            key=key,
            size=sum(sizes[p.number] for p in ordered),
            etag=etag,
            last_modified=_response_time(response),
            metadata=metadata,
        )

    def _forget_upload(self, upload_id: str) -> None:
        self._part_sizes.pop(upload_id, None)
        self._upload_metadata.pop(upload_id, None)
        self._checked_sources.pop(upload_id, None)

    async def _a_precondition(self, key: str, if_match: str | None, if_none_match: bool) -> None:
        try:
            current = await self._a_head(key)
        except ObjectNotFound:
            if if_match is not None:
                raise
            return
        if if_none_match:
            raise PreconditionFailed(f"{key} already exists")
        if if_match is not None and current.etag != strip_etag(if_match):
            raise PreconditionFailed(f"{key} changed (etag {current.etag}, expected {strip_etag(if_match)})")

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self._bridge.run(self._a_abort_multipart, key, upload_id)

    async def _a_abort_multipart(self, key: str, upload_id: str) -> None:
        self._forget_upload(upload_id)
        try:
            await self._call("abort_multipart", key, "abort_multipart_upload", Key=key, UploadId=upload_id)
        except UploadNotFound:
            # Abandoning an upload that is already gone is done, as for the memory store (and what a retried
            # abort whose first reply was lost meets).
            return


@asynccontextmanager
async def open_s3_store(
    bucket: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    max_connections: int = 32,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
    max_attempts: int = 4,
) -> AsyncIterator[S3Store]:
    """An S3Store for the block: its own asyncio thread and aiobotocore clients, closed on exit.

    Credentials come from the standard AWS chain (env, ``profile``, config files, instance roles).
    Does not contact S3; call ``check_bucket()`` to fail fast on a bad bucket/endpoint/credentials.
    """
    settings = S3Settings(
        bucket=bucket,
        endpoint_url=endpoint_url,
        region=region,
        profile=profile,
        max_connections=max_connections,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_attempts=max_attempts,
    )
    async with open_asyncio_thread(name=f"s3files-asyncio-{bucket}") as bridge:
        store = S3Store(bridge, settings)
        await bridge.run(store._a_open)
        try:
            yield store
        finally:
            await store.aclose()


def create_bucket(
    bucket: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    timeout: float = 10.0,
) -> None:
    """Create ``bucket`` (synchronously; for tests, benchmarks and local servers). Exists already: fine.

    Lives here because botocore is imported only under s3files.store. Failures raise StoreError.
    """
    session = botocore.session.Session(profile=profile)
    client = session.create_client(
        "s3",
        region_name=region,
        endpoint_url=endpoint_url,
        config=botocore.config.Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"total_max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"} if endpoint_url else None,
        ),
    )
    try:
        kwargs: dict[str, Any] = {"Bucket": bucket}
        actual_region = region or client.meta.region_name
        if actual_region and actual_region not in ("us-east-1", "aws-global"):
            # Outside us-east-1, S3 wants the region repeated in the body.
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": actual_region}
        try:
            client.create_bucket(**kwargs)
        except ClientError as exc:
            if _error_code(exc)[0] != "BucketAlreadyOwnedByYou":
                raise StoreError(
                    f"cannot create bucket {bucket!r} at {client.meta.endpoint_url}: {exc}"
                ) from exc
        except BotoCoreError as exc:
            raise StoreError(f"cannot create bucket {bucket!r} at {client.meta.endpoint_url}: {exc}") from exc
    finally:
        client.close()
