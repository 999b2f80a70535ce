"""One S3 store's session with S3: settings, credentials, the aiobotocore clients and the direct path.

Owns: ``S3Settings``; the aiobotocore session and its two clients, opened and closed on the store's
asyncio thread (the main client, and a probe with short timeouts for ``check_bucket``); their botocore
configuration (the retry policy of retry.py installed on both, timeouts, path-style addressing, checksums only when required, the fast timestamp
parser); the credentials chain (botocore's one credentials object, refreshed before temporary ones expire,
which both clients and the direct path sign with) and what it tells the credential watch (credentials.py:
refusals, answers); presigned GET URLs the direct path (direct.py) uses; the request counter
hook (one count per HTTP request sent, retries too); ``call``, the one way the request modules send a
request through the main client, with errors translated by translate.py; ``create_bucket`` (synchronous,
for tests and local servers).

Must not: know any operation's parameters or answers beyond HeadBucket (objects.py, multipart.py), or
decide what an S3 error means (translate.py). Everything here but ``S3Settings`` and ``create_bucket``
runs on the asyncio thread.

Never log credentials or signed headers.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

import botocore.config
import botocore.session
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import BotoCoreError, ClientError
from botocore.handlers import convert_body_to_file_like_object

from s3files.errors import CredentialsError, StoreError
from s3files.store import retry
from s3files.store.base import RequestCounts
from s3files.store.credentials import CredentialWatch
from s3files.store.direct import DirectHttp
from s3files.store.http1 import ExchangeFailed
from s3files.store.listxml import FastListParsers
from s3files.store.retry import RetryPolicy
from s3files.store.translate import (
    TRANSLATED,
    bucket_already_owned,
    credential_trouble,
    head_bucket_error,
    list_probe_error,
    translate,
)
from s3files.store.wire import parse_timestamp

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


@dataclass(frozen=True)
class S3Settings:
    """How to reach the bucket; frozen so a store's behaviour cannot change under it."""

    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    max_connections: int = 32
    retry: RetryPolicy = field(default_factory=RetryPolicy)  # attempts, timeouts, pauses (retry.py)


class S3Session:
    """The clients of one store (asyncio side). ``client`` and ``direct`` are read at each request, so a
    test may replace a client method or turn the direct path off (``direct = None``)."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.requests = RequestCounts()
        self.client: Any = None  # the aiobotocore S3 client
        self.probe: Any = None  # a client with a short connect timeout and one retry, for check_bucket
        self.direct: DirectHttp | None = None  # ranged GETs and small PUTs without aiobotocore
        self.endpoint = settings.endpoint_url or "the default AWS S3 endpoint"  # for messages
        self.credentials = CredentialWatch()  # says once that S3 refuses them, and when they work again
        self._session: AioSession | None = None
        self._stack = AsyncExitStack()

    @property
    def _probe_policy(self) -> RetryPolicy:
        # check_bucket answers within seconds even when the endpoint is a black hole or never answers.
        policy = self.settings.retry
        return replace(policy, max_attempts=min(policy.max_attempts, 2), request_timeout=min(policy.request_timeout, 3.0))

    # -- life cycle ---------------------------------------------------------------------------------

    def _config(self, policy: RetryPolicy) -> AioConfig:
        s = self.settings
        return AioConfig(
            max_pool_connections=s.max_connections,
            connect_timeout=policy.connect_timeout,
            read_timeout=policy.request_timeout,
            # total_max_attempts counts the first try (botocore's "max_attempts" counts only retries). The
            # handler botocore makes of it is replaced by the policy's (retry.install): one policy decides.
            retries={"total_max_attempts": policy.max_attempts, "mode": "standard"},
            s3={
                # Custom endpoints (MinIO, RGW, moto) rarely have wildcard DNS for virtual-hosted buckets.
                **({"addressing_style": "path"} if s.endpoint_url else {}),
                # Bodies carry a Content-MD5 (signed with the headers) computed on a worker thread instead:
                # a SHA-256 of every body on the asyncio thread (which botocore does over plain http)
                # capped uploads at one core's hashing speed. Over https botocore skips it anyway.
                "payload_signing_enabled": False,
            },
            # The newer botocore default (CRC32 on every upload, aws-chunked bodies) is refused by several
            # S3-compatible servers: checksums only where an operation requires them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )

    async def open(self) -> None:
        """Open the clients and the direct path. Does not contact S3."""
        s = self.settings
        try:
            session = AioSession(profile=s.profile)
            session.register_component("response_parser_factory", FastListParsers())  # listxml.py
            session.get_component("response_parser_factory").set_parser_defaults(
                timestamp_parser=parse_timestamp
            )
            common: dict[str, Any] = {"region_name": s.region, "endpoint_url": s.endpoint_url}
            self.client = await self._stack.enter_async_context(
                session.create_client(
                    "s3",
                    config=self._config(s.retry),
                    **common,
                )
            )
            # check_bucket must answer within seconds even when the endpoint is a black hole or accepts
            # connections and never answers, so it has its own client: short timeouts, two attempts
            # (_probe_policy). HeadBucket is tiny; a healthy S3 answers in ms.
            self.probe = await self._stack.enter_async_context(
                session.create_client(
                    "s3",
                    config=self._config(self._probe_policy),
                    **common,
                )
            )
        except TRANSLATED as exc:
            await self._stack.aclose()
            self.reraise(exc, "open")
        except BaseException:
            await self._stack.aclose()
            raise
        self.endpoint = s.endpoint_url or self.client.meta.endpoint_url
        self._session = session
        # The one credentials object of both clients and the direct path (create_client loaded it): a
        # RefreshableCredentials for temporary ones, which asks its source again before they expire.
        loaded = await session.get_credentials()
        self.credentials.source = getattr(loaded, "method", None)
        self.direct = DirectHttp(
            self._presign_get,
            self._frozen_credentials,
            self.client.meta.endpoint_url,
            self.client.meta.region_name,
            max_connections=s.max_connections,
            connect_timeout=s.retry.connect_timeout,
            read_timeout=s.retry.request_timeout,
            on_request=self.requests.add,
            ca_bundle=session.get_config_variable("ca_bundle"),
            on_served=self.credentials.worked,
        )
        self._stack.push_async_callback(self.direct.aclose)
        for client, policy in ((self.client, s.retry), (self.probe, self._probe_policy)):
            client.meta.events.register("before-send.s3", self._count_request)
            client.meta.events.register("after-call.s3", self._answered)
            retry.install(client, policy)
        for operation in ("PutObject", "UploadPart"):
            # botocore wraps bytes bodies in BytesIO, which aiohttp then copies and sends in 64 KiB slices
            # with a loop iteration each; bytes go out as they are.
            self.client.meta.events.unregister(
                f"before-parameter-build.s3.{operation}", convert_body_to_file_like_object
            )

    async def close(self) -> None:
        """Close the clients (their connection pools) and the direct path."""
        await self._stack.aclose()

    async def _presign_get(self, key: str) -> str:
        """A GET URL for ``key`` signed with the credentials of the moment (the direct path keeps it a
        minute). Credentials that cannot be got: the direct path steps aside and the client reports it."""
        try:
            url: str = await self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=300
            )
        except TRANSLATED as exc:
            if not credential_trouble(exc):
                raise
            raise ExchangeFailed("no usable credentials to presign with") from exc
        return url

    async def _frozen_credentials(self) -> Any:
        """The credentials the clients use at this moment, for signing direct PUTs and HEADs: botocore's
        one credentials object (shared with both clients, so never a copy taken at the start), frozen
        anew for each request. For temporary credentials (credential_process, web identity, container or
        instance role) that is RefreshableCredentials.get_frozen_credentials, which asks their source
        again once they are within 15 minutes of their expiry (at every request within 10) and otherwise
        costs a time comparison. None when they cannot be got (the direct path steps aside and the
        client's attempt reports why)."""
        assert self._session is not None
        try:
            credentials = await self._session.get_credentials()
            return None if credentials is None else await credentials.get_frozen_credentials()
        except TRANSLATED as exc:
            if not credential_trouble(exc):
                raise
            return None

    def _answered(self, http_response: Any = None, **kwargs: Any) -> None:
        """botocore hook after each call's answer: any answer but a refusal (S3 refuses credentials with
        400 or 403) proves the credentials work. Must return None."""
        if self.credentials.failing_since is None or http_response is None:
            return
        if http_response.status_code < 400 or http_response.status_code in (404, 409, 412, 416):
            self.credentials.worked()

    def _count_request(self, event_name: str = "", **kwargs: Any) -> None:
        """botocore hook, once per HTTP request actually sent (each retry too). Must return None."""
        operation = event_name.rsplit(".", 1)[-1]
        self.requests.add(OPERATION_NAMES.get(operation, operation))

    # -- requests -----------------------------------------------------------------------------------

    def reraise(self, exc: Exception, op: str, key: str | None = None) -> NoReturn:
        """Raise the StoreError for ``exc`` (call inside ``except TRANSLATED``); a refusal of the
        credentials is also told to the watch, which logs it once (credentials.py)."""
        error = translate(exc, op, key, bucket=self.bucket, endpoint=self.endpoint, profile=self.settings.profile)
        if isinstance(error, CredentialsError):
            self.credentials.failed(str(error))
        raise error from exc

    async def call(self, op: str, key: str | None, method: str, /, **kwargs: Any) -> dict[str, Any]:
        """One S3 request on the main client with errors translated."""
        try:
            response: dict[str, Any] = await getattr(self.client, method)(Bucket=self.bucket, **kwargs)
        except TRANSLATED as exc:
            self.reraise(exc, op, key)
        return response

    async def check_bucket(self) -> None:
        """HeadBucket on the probe client; its 403 has no body, so a 1-key listing names the real reason."""
        try:
            await self.probe.head_bucket(Bucket=self.bucket)
            return
        except TRANSLATED as exc:
            error = head_bucket_error(
                exc, bucket=self.bucket, endpoint=self.endpoint, profile=self.settings.profile
            )
            if error is not None:
                raise error from exc
        try:
            await self.probe.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
        except TRANSLATED as exc:
            raise list_probe_error(
                exc, bucket=self.bucket, endpoint=self.endpoint, profile=self.settings.profile
            ) from exc
        # Listing works although HeadBucket was refused: usable enough (some policies allow only List).


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
            if not bucket_already_owned(exc):
                raise StoreError(
                    f"cannot create bucket {bucket!r} at {client.meta.endpoint_url}: {exc}"
                ) from exc
        except BotoCoreError as exc:
            raise StoreError(f"cannot create bucket {bucket!r} at {client.meta.endpoint_url}: {exc}") from exc
    finally:
        client.close()
