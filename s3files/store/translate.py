"""THE translation of S3 answers and botocore/connection failures into ``s3files.errors``, in one place.

Owns: which S3 error codes mean what (credentials, access, not found: a missing bucket at start, a bucket
gone while mounted, a missing key; precondition, range, the RGW quirk
of completing a gone upload), which exceptions are translated at all (``TRANSLATED``), and the message
each StoreError carries. The request modules (session.py, objects.py, multipart.py) catch ``TRANSLATED``
and raise what this module says; they ask it (``range_not_satisfiable``, ``never_connected``) instead of
reading error codes themselves, so nothing botocore-specific about errors lives anywhere else.

Must not: send requests, retry, or decide what a caller does next (a follow-up HEAD is the request
modules' business). Bad programming (TypeError and friends) is never translated: only S3 answers,
botocore errors and OS-level connection errors become StoreError, so bugs stay visible.

Never log credentials or signed headers: log lines carry op, key and the S3 error code only.
"""

from __future__ import annotations

import logging

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)

from s3files.errors import (
    AccessDenied,
    BucketGone,
    BucketNotFound,
    CredentialsError,
    EndpointUnreachable,
    ObjectNotFound,
    PreconditionFailed,
    StoreError,
    UploadNotFound,
)

log = logging.getLogger(__name__)

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

# What gets translated into StoreError: S3 answers, botocore failures, and OS-level connection errors.
# Anything else (TypeError, ...) is a bug and propagates unchanged so it stays visible. RuntimeError is
# caught only for botocore's one bare RuntimeError (refreshed credentials that are already expired, see
# ``expired_after_refresh``): ``translate`` raises any other RuntimeError again, unchanged.
TRANSLATED: tuple[type[Exception], ...] = (ClientError, BotoCoreError, OSError, aiohttp.ClientError, RuntimeError)

# What botocore's RefreshableCredentials raises (a bare RuntimeError) when its source (credential_process,
# web identity, container or instance credentials) gave credentials whose expiry is already past.
EXPIRED_AFTER_REFRESH = "refreshed credentials are still expired"


def expired_after_refresh(exc: BaseException) -> bool:
    """Is ``exc`` botocore's "credentials were refreshed, but ... still expired"?"""
    return type(exc) is RuntimeError and EXPIRED_AFTER_REFRESH in str(exc)


def credential_trouble(exc: BaseException) -> bool:
    """Could no request be signed because the credentials could not be got, or came expired? (The
    direct path then steps aside for this request, and the client's attempt reports it.)"""
    return isinstance(exc, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)) or (
        expired_after_refresh(exc)
    )


def error_code(exc: ClientError) -> tuple[str, int | None, str]:
    """(S3 error code, HTTP status, message) of an S3 answer; the code is the status when S3 sent none."""
    error = exc.response.get("Error", {}) or {}
    status = (exc.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode")
    return str(error.get("Code", "") or status or ""), status, str(error.get("Message", "") or "")


def translate(
    exc: Exception, op: str, key: str | None, *, bucket: str, endpoint: str, profile: str | None
) -> StoreError:
    """The StoreError for one of TRANSLATED (S3 said no, or could not be reached). ``endpoint`` names the
    endpoint in messages, ``profile`` the AWS profile asked for. The error carries ``key`` and S3's error
    code (``S3FilesError.key``, ``.s3_code``) for the failed operation's log line."""
    error = _translate(exc, op, key, bucket=bucket, endpoint=endpoint, profile=profile)
    if error.key is None:
        error.key = key
    if error.s3_code is None and isinstance(exc, ClientError):
        error.s3_code = error_code(exc)[0] or None
    return error


def _translate(
    exc: Exception, op: str, key: str | None, *, bucket: str, endpoint: str, profile: str | None
) -> StoreError:
    where = f"s3://{bucket}/{key}" if key is not None else f"s3://{bucket}"
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, RuntimeError):
        if not expired_after_refresh(exc):
            raise exc  # a bug, not an S3 answer: stays visible as itself
        return CredentialsError(
            f"the AWS credentials for {endpoint} are expired: their source gave credentials whose expiry"
            " is already past"
        )
    if isinstance(exc, CredentialRetrievalError):
        return CredentialsError(f"cannot get AWS credentials for {endpoint}: {' '.join(str(exc).split())}")
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return CredentialsError(
            f"no usable AWS credentials for {endpoint}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or use --profile"
        )
    if isinstance(exc, ProfileNotFound):
        return CredentialsError(f"AWS profile {profile!r} not found (--profile)")
    if isinstance(exc, NoRegionError):
        return StoreError("no AWS region configured: set AWS_DEFAULT_REGION or --region")
    if isinstance(exc, ClientError):
        code, status, message = error_code(exc)
        log.debug("op=%s key=%s S3 error %s (%s)", op, key, code, status)
        if code == "NoSuchBucket" and op == "head_bucket":  # a mount's start (check_bucket)
            return BucketNotFound(f"bucket {bucket!r} does not exist at {endpoint}")
        if code == "NoSuchBucket":
            return BucketGone(f"bucket {bucket!r} no longer exists at {endpoint} (deleted while mounted)")
        if code == "NoSuchUpload" or (op == "complete_multipart" and RGW_GONE in message):
            return UploadNotFound(f"{op} {where}: no such multipart upload (aborted or completed)")
        if code in NOT_FOUND_CODES or (status == 404 and code not in CREDENTIAL_CODES):
            return ObjectNotFound(f"no such key: {key}" if key is not None else f"not found: {where}")
        if code in PRECONDITION_CODES or status == 412:
            return PreconditionFailed(f"{op} {where}: precondition failed ({code})")
        if code in CREDENTIAL_CODES:
            return CredentialsError(
                f"credentials rejected by {endpoint}: {code}; check AWS_ACCESS_KEY_ID/--profile"
            )
        if code in ACCESS_CODES or status == 403:
            return AccessDenied(f"access denied to {where} by {endpoint} ({code})")
        return StoreError(f"{op} {where} failed: S3 error {code} (HTTP {status}): {message}")
    if isinstance(exc, ReadTimeoutError):
        return EndpointUnreachable(f"S3 endpoint {endpoint} did not answer {op} {where} in time: {exc}")
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        return EndpointUnreachable(f"cannot reach S3 endpoint {endpoint}: {exc}")
    if isinstance(exc, (HTTPClientError, OSError, aiohttp.ClientConnectionError)):
        # Reached it once, then the connection broke (reset, closed mid-body): after retries, the same
        # story for the user.
        return EndpointUnreachable(f"connection to S3 endpoint {endpoint} failed ({op} {where}): {exc}")
    return StoreError(f"{op} {where} failed: {exc}")


def head_bucket_error(
    exc: Exception, *, bucket: str, endpoint: str, profile: str | None
) -> StoreError | None:
    """The StoreError for a failed HeadBucket, or None for a bare 403 or 404: HeadBucket's answers have no
    body, so the caller lists one key to learn the real reason (or that listing is allowed), and whether
    the endpoint is S3 at all (``list_probe_error``)."""
    if isinstance(exc, ClientError):
        code, status, _ = error_code(exc)
        if code == "NoSuchBucket":
            return BucketNotFound(f"bucket {bucket!r} does not exist at {endpoint}")
        if status == 404 or code in ("404", "NotFound"):
            return None
        if status == 301 or code == "301":
            region = (
                exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
            )
            return StoreError(
                f"bucket {bucket!r} is in region {region or '?'}, not the one configured (--region)"
            )
        if status == 403:
            return None
    return translate(exc, "head_bucket", None, bucket=bucket, endpoint=endpoint, profile=profile)


def list_probe_error(exc: Exception, *, bucket: str, endpoint: str, profile: str | None) -> StoreError:
    """The StoreError for the 1-key listing that follows a HeadBucket refused without a body. S3 (AWS,
    RGW, MinIO, moto) answers a listing of a missing bucket with the error code NoSuchBucket; a 404
    without any S3 error code comes from an HTTP server that is not S3 (a wrong --endpoint-url, a web
    server or a proxy's page), which must not be reported as a missing bucket."""
    if isinstance(exc, ClientError):
        code, status, _ = error_code(exc)
        if status == 404 and code in ("404", "NotFound", ""):
            return StoreError(
                f"{endpoint} answered HTTP 404 without an S3 error: it does not look like an S3 endpoint"
                " (check --endpoint-url)"
            )
    return translate(exc, "head_bucket", None, bucket=bucket, endpoint=endpoint, profile=profile)


def range_not_satisfiable(exc: Exception) -> bool:
    """Is ``exc`` S3's 416 (a range past the end, or any range on an empty object)?"""
    if not isinstance(exc, ClientError):
        return False
    code, status, _ = error_code(exc)
    return code in RANGE_CODES or status == 416


def bucket_already_owned(exc: Exception) -> bool:
    """Is ``exc`` CreateBucket's "you own it already" (which is success for create_bucket)?"""
    return isinstance(exc, ClientError) and error_code(exc)[0] == "BucketAlreadyOwnedByYou"


def never_connected(exc: StoreError) -> bool:
    """Did the last attempt of the request behind ``exc`` (after botocore's retries) fail to connect at
    all, rather than lose its reply? Then a follow-up request would most likely fail the same way, slowly."""
    return isinstance(exc.__cause__, (EndpointConnectionError, ConnectTimeoutError))
