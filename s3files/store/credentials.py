"""What a mount says when S3 refuses its credentials, and that it says it once, not per request.

Owns: ``CredentialWatch``, which hears about every request that failed because of the credentials (S3
rejected them, or they could not be got or were expired: ``CredentialsError`` from translate.py) and
about every answer that proves they work, and logs ONE line when trouble starts (or its reason changes,
or every ``REMIND_SECONDS`` while it lasts), saying where the credentials come from and what to do, and
one line when they work again; ``SOURCES``, the user's words for botocore's credential sources.

Why here: refreshing is botocore's (RefreshableCredentials asks its source again within 15 minutes of the
expiry, and at every request within 10), and the session owns the one credentials object both data paths
use (session.py); this module only keeps the log readable during an outage of the credentials, when
every FUSE operation fails and the adapter's per-operation lines say only what failed.

Must not: retry, cache or look at credentials themselves (never log them), nor decide errnos (errors.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

REMIND_SECONDS = 600.0  # while the trouble lasts, its line again at most this often

#: botocore's ``Credentials.method`` -> where a user renews them.
SOURCES: dict[str, str] = {
    "env": "the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN)",
    "custom-process": "the profile's credential_process",
    "assume-role-with-web-identity": "web identity (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN)",
    "container-role": "the container credentials endpoint",
    "iam-role": "the instance's role (instance metadata)",
    "shared-credentials-file": "the shared credentials file",
    "config-file": "the AWS config file",
    "assume-role": "the profile's role_arn",
    "sso": "AWS IAM Identity Center (aws sso login)",
}


class CredentialWatch:
    """Per store session (asyncio thread only). ``source`` is botocore's method name, once known."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.source: str | None = None
        self.failing_since: float | None = None  # read on every answer: a cheap None test when all is well
        self._said: tuple[str, float] = ("", 0.0)  # (reason, when) of the last line
        self._clock = clock
        self.failures = 0  # requests refused for the credentials (statistics, tests)

    def failed(self, reason: str) -> None:
        """A request failed because of the credentials (``reason``: the CredentialsError's line)."""
        now = self._clock()
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = now
        said, when = self._said
        if reason == said and now - when < REMIND_SECONDS:
            return
        self._said = (reason, now)
        where = SOURCES.get(self.source or "", self.source or "the AWS credentials chain")
        log.error(
            "credentials unusable: %s (credentials from %s). Every operation that needs S3 answers EACCES"
            " until valid credentials are available: renew them there; the mount takes them up by itself"
            " at its next request (no remount), and files whose close failed meanwhile are kept in the"
            " cache folder and uploaded then",
            reason, where,
        )  # fmt: skip

    def worked(self) -> None:
        """An answer that proves the credentials work (any but a refusal of them)."""
        if self.failing_since is None:
            return
        log.warning(
            "credentials accepted again after %.0f s (%d requests refused meanwhile)",
            self._clock() - self.failing_since,
            self.failures,
        )
        self.failing_since = None
        self._said = ("", 0.0)
        self.failures = 0
