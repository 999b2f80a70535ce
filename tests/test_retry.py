"""The one retry policy of every S3 request (s3files/store/retry.py): pauses, Retry-After, what is retried."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

from s3files.store.retry import RetryPolicy, retry_after


def answer(status: int, code: str = "", **headers: str) -> tuple[object, dict[str, object]]:
    return SimpleNamespace(status_code=status, headers=headers), {"Error": {"Code": code}} if code else {}


def test_pauses_double_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=10, first_delay=0.2, most_delay=5.0)
    for retry, whole in [(1, 0.2), (2, 0.4), (3, 0.8), (6, 5.0), (9, 5.0)]:
        assert policy.delay(retry, rand=lambda: 0.0) == pytest.approx(whole / 2)
        assert policy.delay(retry, rand=lambda: 1.0) == pytest.approx(whole)
    assert policy.delay(1, throttled=True, rand=lambda: 1.0) == pytest.approx(policy.throttled_delay)


def test_retry_after_is_honoured_up_to_its_cap() -> None:
    policy = RetryPolicy(max_attempts=4)
    slow_down = answer(503, "SlowDown", **{"retry-after": "3"})
    assert policy.needs_retry(slow_down, attempts=1) == 3.0
    assert policy.needs_retry(answer(503, "SlowDown", **{"x-amz-retry-after": "2500"}), attempts=1) == 2.5
    assert policy.needs_retry(answer(503, "SlowDown", **{"retry-after": "9999"}), attempts=1) == policy.retry_after_most
    assert retry_after({"retry-after": "soon"}) is None and retry_after({}) is None
    assert policy.needs_retry(slow_down, attempts=4) is None  # no attempts left


@pytest.mark.parametrize(
    ("response", "exception", "retried"),
    [
        (answer(500, "InternalError"), None, True),
        (answer(503, "SlowDown"), None, True),
        (answer(429), None, True),
        (answer(400, "RequestTimeout"), None, True),
        (answer(404, "NoSuchKey"), None, False),
        (answer(404, "NoSuchBucket"), None, False),
        (answer(403, "AccessDenied"), None, False),
        (answer(412, "PreconditionFailed"), None, False),
        (answer(501, "NotImplemented"), None, False),
        (None, EndpointConnectionError(endpoint_url="http://x"), True),
        (None, ReadTimeoutError(endpoint_url="http://x"), True),
        (None, ValueError("a bug"), False),
    ],
)
def test_what_is_retried(response: object, exception: BaseException | None, retried: bool) -> None:
    delay = RetryPolicy().needs_retry(response, attempts=1, caught_exception=exception)  # type: ignore[arg-type]
    assert (delay is not None) is retried


def test_the_budget_bounds_a_silent_endpoint() -> None:
    """README, "When S3 cannot be reached": the default budget, and the one tests/test_fuse_outages uses."""
    assert RetryPolicy().budget() == 178.5
    assert RetryPolicy(max_attempts=2, request_timeout=1.0).budget() == 6.5
