"""THE retry policy of every S3 request: how many attempts, how long each may wait, and the pause between.

Owns: ``RetryPolicy`` (``--max-attempts``, ``--request-timeout``, capped exponential backoff with jitter,
``Retry-After``), which answers are worth another attempt (``retryable``), the worst case one call can
take (``budget``), and the botocore hook that makes aiobotocore follow it (``install``), replacing
botocore's own retry handler. The direct HTTP path (direct.py) takes its timeouts from the same policy and
never retries itself: anything but its one expected answer is asked again through aiobotocore, so every
request follows this one policy.

Why our own handler: botocore's standard mode ignores ``Retry-After`` (it reads only
``x-amz-retry-after``), and its retry quota stops retrying for the whole client once a long outage has
used it up (until enough calls succeed again): whether a call is retried would depend on history.

Must not: translate errors (translate.py) or send requests. Outages end: nothing here remembers a failure
between calls, so the first call after the endpoint is back succeeds.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError

# 5xx a server sends when it is overloaded or briefly broken, and 429; S3's codes for "slow down" and
# for a request it gave up waiting on. 501 (not implemented) is not worth another attempt.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
THROTTLING_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequests", "RequestLimitExceeded",
     "BandwidthLimitExceeded", "ServiceUnavailable"}
)  # fmt: skip
TRANSIENT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException", "InternalError", "PriorRequestNotComplete"})
# Connecting never waits longer than this, whatever --request-timeout says: a host that does not answer a
# connection within seconds is down, while a slow answer (a large copy inside S3) may take long.
CONNECT_MOST = 5.0


@dataclass(frozen=True)
class RetryPolicy:
    """How every S3 request is retried. ``max_attempts`` counts the first; ``request_timeout`` is what
    one attempt may wait for the endpoint: to connect (at most ``CONNECT_MOST``) and for each read of
    its answer. Pauses: ``first_delay`` doubling up to ``most_delay``, each drawn in [half, whole] of
    that (jitter: many clients do not come back in step); after a throttling answer (SlowDown, 429, 503)
    from ``throttled_delay``; never shorter than a ``Retry-After`` the server sent, up to
    ``retry_after_most``."""

    max_attempts: int = 4
    request_timeout: float = 30.0
    first_delay: float = 0.2
    throttled_delay: float = 0.5
    most_delay: float = 5.0
    retry_after_most: float = 20.0

    @property
    def connect_timeout(self) -> float:
        return min(self.request_timeout, CONNECT_MOST)

    def delay(self, retry: int, *, throttled: bool = False, retry_after: float | None = None,
              rand: Callable[[], float] = random.random) -> float:  # fmt: skip
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        base = self.throttled_delay if throttled else self.first_delay
        capped = min(self.most_delay, base * 2 ** (retry - 1))
        pause = capped * (0.5 + rand() / 2)
        if retry_after is not None:
            pause = max(pause, min(retry_after, self.retry_after_most))
        return pause

    def budget(self) -> float:
        """The longest one call can take when every attempt waits its whole timeouts (a silent endpoint),
        every pause at its longest (no ``Retry-After``): ``max_attempts`` attempts through aiobotocore,
        and the direct path's one attempt before them (direct.py)."""
        attempt = self.connect_timeout + self.request_timeout
        pauses = sum(min(self.most_delay, self.throttled_delay * 2 ** (n - 1)) for n in range(1, self.max_attempts))
        return (self.max_attempts + 1) * attempt + pauses

    def retryable(self, status: int | None, code: str, exception: BaseException | None) -> bool:
        """Is this outcome of one attempt worth another (attempts left aside)?"""
        if exception is not None:
            # Could not connect, the connection broke, or an attempt timed out: the endpoint may be back.
            return isinstance(exception, (BotoConnectionError, HTTPClientError, OSError))
        return status in RETRY_STATUSES or code in THROTTLING_CODES or code in TRANSIENT_CODES

    def needs_retry(
        self,
        response: tuple[Any, Mapping[str, Any]] | None = None,
        attempts: int = 1,
        caught_exception: BaseException | None = None,
        **_: Any,
    ) -> float | None:
        """botocore's ``needs-retry`` hook: the pause before the next attempt, or None (no retry)."""
        if attempts >= self.max_attempts:
            return None
        status, code, headers = None, "", {}
        if response is not None:
            http, parsed = response
            status = getattr(http, "status_code", None)
            headers = getattr(http, "headers", {}) or {}
            code = str((parsed.get("Error") or {}).get("Code", "") or "")
        if not self.retryable(status, code, caught_exception):
            return None
        throttled = status in (429, 503) or code in THROTTLING_CODES
        return self.delay(attempts, throttled=throttled, retry_after=retry_after(headers))


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds a server asked to wait: ``Retry-After`` (seconds or an HTTP date) or ``x-amz-retry-after``
    (milliseconds); None when it said nothing usable."""
    try:
        value = headers.get("retry-after") or headers.get("Retry-After")
        if value:
            value = value.strip()
            if value.isdigit():
                return float(value)
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
        amz = headers.get("x-amz-retry-after")
        if amz:
            seconds = int(amz) / 1000
            return seconds if math.isfinite(seconds) and seconds >= 0 else None
    except (ValueError, TypeError, OverflowError):
        return None
    return None


def install(client: Any, policy: RetryPolicy) -> None:
    """Make an aiobotocore S3 client retry by ``policy``: its own handler (registered by botocore under
    this unique id for the configured retry mode) is replaced, so exactly one decides."""
    events = client.meta.events
    events.unregister("needs-retry.s3", unique_id="retry-config-s3")
    events.register("needs-retry.s3", policy.needs_retry, unique_id="retry-config-s3")
