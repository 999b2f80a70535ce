"""Shared test fixtures: a moto S3 server on 127.0.0.1, fresh buckets, and a trio runner.

Conventions: no pytest-trio; a test that needs trio calls ``run_trio(async_fn, *args)``. Session-wide AWS
credentials are fake (testing/testing) so the standard credential chain never reaches a real account.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import trio

from s3files.localserver import MotoServer, start_moto_server

T = TypeVar("T")

_FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Never read the developer's ~/.aws: tests must not depend on (or touch) real profiles.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
_DROPPED_AWS_ENV = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL")


def run_trio(async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``async_fn(*args)`` under trio and return its result (tests are plain functions)."""
    return trio.run(async_fn, *args)


@pytest.fixture(scope="session", autouse=True)
def fake_aws_credentials() -> Iterator[None]:
    """Fake credentials and region for the whole session, restored afterwards."""
    saved = {name: os.environ.get(name) for name in (*_FAKE_AWS_ENV, *_DROPPED_AWS_ENV)}
    os.environ.update(_FAKE_AWS_ENV)
    for name in _DROPPED_AWS_ENV:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def moto_server(fake_aws_credentials: None) -> Iterator[MotoServer]:
    """One moto S3 server (subprocess, free port on 127.0.0.1) for the session."""
    server = start_moto_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def boto3_client(moto_server: MotoServer) -> Any:
    """A plain boto3 S3 client on the moto server, for test set-up and out-of-band checks."""
    import boto3

    return boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name="us-east-1")


_bucket_numbers = itertools.count(1)


@pytest.fixture
def bucket(moto_server: MotoServer) -> str:
    """A fresh, empty bucket on the moto server (unique name per test)."""
    name = f"test-{next(_bucket_numbers)}-{uuid.uuid4().hex[:8]}"
    moto_server.create_bucket(name)
    return name
