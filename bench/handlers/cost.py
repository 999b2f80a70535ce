"""Cost per 1,000 invocations: S3 requests at list prices plus Lambda's duration x memory.

``PRICES`` is the one table to change (your region, your discounts, a newer price list); the report
prints the date and the source beside the figures. How an invocation is priced:

- S3: each request at its class's price (PUT/COPY/POST/LIST, or GET/HEAD and the rest; DELETE and
  abort are free); an operation the table does not name is charged as a PUT (the dearer class).
- Lambda: seconds x GB of memory x the GB-second price, plus the per-request charge, per process (the
  agents handler is 4 invocations). The memory is the peak the invocation needed, rounded up to whole
  MB, at least Lambda's minimum: the handler's peak, plus the mount daemon's for the mount (it would run
  in the same sandbox; Lambda itself cannot mount, so the mount's row prices a container doing the same).
- Not counted: data transfer (free within a region), storage, the mount's start (a long-running mount
  pays it once).
"""

from __future__ import annotations

import math
from typing import Any

PRICES: dict[str, Any] = {
    "date": "2026-12-07",
    "source": "AWS list prices, us-east-1: S3 Standard requests (aws.amazon.com/s3/pricing), Lambda x86 "
    "first tier (aws.amazon.com/lambda/pricing); as quoted by pricing guides of 2026-02 and 2026-05",
    "s3_per_1000": {
        "put": 0.005,
        "copy": 0.005,
        "list": 0.005,
        "create_multipart": 0.005,
        "upload_part": 0.005,
        "complete_multipart": 0.005,
        "get": 0.0004,
        "head": 0.0004,
        "head_bucket": 0.0004,
        "delete": 0.0,
        "abort_multipart": 0.0,
    },
    "lambda_gb_second": 0.0000166667,
    "lambda_per_million_requests": 0.20,
    "lambda_min_memory_mb": 128,
}


def request_dollars(requests: dict[str, float], prices: dict[str, Any] = PRICES) -> float:
    """What one invocation's S3 requests cost."""
    table = prices["s3_per_1000"]
    return sum(n * table.get(op, table["put"]) / 1000 for op, n in requests.items())


def memory_mb(peak_mib: float, prices: dict[str, Any] = PRICES) -> int:
    return max(int(prices["lambda_min_memory_mb"]), math.ceil(peak_mib * 1.048576))


def per_thousand(
    requests: dict[str, float], seconds: float, peak_mib: float, processes: int, prices: dict[str, Any] = PRICES
) -> dict[str, float]:
    """Dollars per 1,000 invocations: ``s3``, ``compute`` (GB-seconds and the request charge), ``total``.

    ``seconds`` and ``peak_mib`` are one process's; ``requests`` all processes' together.
    """
    s3 = 1000 * request_dollars(requests, prices)
    gb = memory_mb(peak_mib, prices) / 1024
    compute = 1000 * processes * (seconds * gb * prices["lambda_gb_second"] + prices["lambda_per_million_requests"] / 1e6)
    return {"s3": s3, "compute": compute, "total": s3 + compute}
