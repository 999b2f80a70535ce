"""AWS Signature Version 4 for S3 requests signed in their headers, as botocore's S3 signer makes it.

Owns: ``sign_v4`` (the headers of one signed request), ``canonical_query`` (a query string sent exactly as
it is signed) and ``signing_key`` (the day's key, four HMACs, kept by the caller for the day). Checked
equal to botocore's signer in tests/test_direct.py, at a sixth of its cost.

Must not: fetch credentials, send anything or keep state: pure functions of their arguments. Never log
what it computes (signatures, keys, security tokens).
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse
from collections.abc import Mapping
from typing import Any

# Headers are signed as they are sent. A small PUT's payload is not hashed (Content-MD5 protects it), as
# the aiobotocore client is configured (payload_signing_enabled False); a part sent from a file is signed
# with its SHA-256 instead (see DirectHttp.put_part).
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
UNSIGNED_HEADERS = frozenset({"connection", "expect", "keep-alive", "te", "transfer-encoding", "user-agent"})


def sign_v4(
    method: str,
    host: str,
    path: str,
    headers: Mapping[str, str],
    credentials: Any,
    region: str,
    amz_date: str,
    key: bytes,
    query: str = "",
    payload: str = UNSIGNED_PAYLOAD,
) -> dict[str, str]:
    """``headers`` plus what AWS Signature Version 4 adds for S3 (headers signed; the payload signed by
    ``payload``, its hex SHA-256, or not, UNSIGNED-PAYLOAD):
    X-Amz-Date, X-Amz-Content-SHA256, X-Amz-Security-Token for temporary credentials, Authorization.
    ``path`` is sent as given (already quoted), ``query`` too (``canonical_query``: sorted and quoted as
    SigV4 wants, so the same string is sent and signed). ``credentials``: botocore's frozen credentials
    (access_key, secret_key, token); ``key``: ``signing_key`` of their secret for the day."""
    out = dict(headers)
    out["X-Amz-Date"] = amz_date
    out["X-Amz-Content-SHA256"] = payload
    if credentials.token:
        out["X-Amz-Security-Token"] = credentials.token
    canonical = {name.lower(): " ".join(str(value).split()) for name, value in out.items()}
    canonical["host"] = host
    names = sorted(name for name in canonical if name not in UNSIGNED_HEADERS)
    lines = [f"{name}:{canonical[name]}" for name in names]
    request = "\n".join([method, path, query, *lines, "", ";".join(names), payload])
    day = amz_date[:8]
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(request.encode()).hexdigest()}"
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256)
    out["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, SignedHeaders={';'.join(names)}, "
        f"Signature={signature.hexdigest()}"
    )
    return out


def canonical_query(params: Mapping[str, str]) -> str:
    """A query string as SigV4 signs it (names sorted, everything but A-Z a-z 0-9 - _ . ~ encoded)."""
    quote = urllib.parse.quote
    return "&".join(
        f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in sorted(params.items())
    )


def signing_key(secret: str, day: str, region: str) -> bytes:
    """SigV4's key for one day, region and S3: four HMACs, so it is kept for the day (DirectHttp)."""
    key = f"AWS4{secret}".encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key
