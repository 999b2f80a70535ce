"""Shared test fixtures: a moto S3 server on 127.0.0.1, fresh buckets, and a trio runner.

Conventions: no pytest-trio; a test that needs trio calls ``run_trio(async_fn, *args)``. Session-wide AWS
credentials are fake (testing/testing) so the standard credential chain never reaches a real account.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from daemons import Daemons

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


@pytest.fixture
def fault_proxy(moto_server: MotoServer) -> Iterator[Any]:
    """A fault-injecting HTTP proxy (tests/faultproxy.py) in front of the moto server, no faults set:
    point a client at ``fault_proxy.endpoint_url``, then ``fault_proxy.set_faults(drop_reply_every=13)``.
    Stopped after the test, every thread and socket with it."""
    from faultproxy import FaultProxy

    with FaultProxy(moto_server.endpoint_url) as proxy:
        yield proxy


# -- the same tests on a second, real S3 implementation: Ceph RadosGW -------------------------------


@dataclass(frozen=True)
class S3Server:
    """An S3 server on 127.0.0.1 as the tests see it, whichever implementation it is."""

    kind: str  # "moto" or "rgw"
    endpoint_url: str

    def create_bucket(self, name: str) -> None:
        from s3files.store.s3 import create_bucket

        create_bucket(name, endpoint_url=self.endpoint_url, region="us-east-1")


@pytest.fixture(scope="session")
def rgw_server(fake_aws_credentials: None) -> Iterator[Any]:
    """One throw-away Ceph RadosGW for the session (scripts/rgw.sh; installs Ceph on first use).

    Its fixed keys become the session's credentials: moto accepts any keys, so both servers work with them.
    Set S3FILES_SKIP_RGW=1 to skip the RGW runs (e.g. where Debian's ceph packages cannot be installed).
    """
    if os.environ.get("S3FILES_SKIP_RGW") == "1":
        pytest.skip("S3FILES_SKIP_RGW=1")
    from s3files.rgwserver import RgwServer

    server = RgwServer.start()
    os.environ["AWS_ACCESS_KEY_ID"] = server.access_key
    os.environ["AWS_SECRET_ACCESS_KEY"] = server.secret_key
    try:
        yield server
    finally:
        server.stop()


#: ``S3FILES_FULL_COUNTS=1``: the issues' full counts, and every ``s3_server`` test on both servers.
FULL_COUNTS = os.environ.get("S3FILES_FULL_COUNTS") == "1"

#: For tests of the daemon's own logic (signals, records, locks), which no server behaviour changes: CI runs
#: them on moto only, a full run (FULL_COUNTS) on RGW too. Tests of what a server does (multipart resume,
#: conditional writes, ranged reads) keep both servers in CI.
rgw_in_full_runs = pytest.mark.parametrize("s3_server", ["moto", "rgw"] if FULL_COUNTS else ["moto"], indirect=True)


@pytest.fixture(scope="session", params=["moto", "rgw"])
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    """Each test that takes this runs on moto and again on Ceph RadosGW (one server of each per session)."""
    kind = str(request.param)
    server = request.getfixturevalue("moto_server" if kind == "moto" else "rgw_server")
    return S3Server(kind, server.endpoint_url)


@pytest.fixture
def s3_client(s3_server: S3Server) -> Any:
    """A boto3 client on ``s3_server``, from a new boto3 session: boto3's default session caches the
    credentials it first found, and the session's credentials change when RGW starts."""
    import boto3

    return boto3.session.Session().client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1")


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on ``s3_server``."""
    name = f"test-{next(_bucket_numbers)}-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(name)
    return name


# -- hypothesis: a fixed seed in CI, so a submission's result does not depend on the draw -----------------
# Locally every run draws new examples (and remembers failures in .hypothesis/); in CI (CI=true) the same
# examples run every time, so a red run is reproducible with `CI=true pytest tests/test_properties.py`.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI") == "true":
    _hypothesis_settings.load_profile("ci")


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    """Daemons and helper processes of one test (tests/daemons.py): ended by pid and unmounted after it,
    whatever happened."""
    started = Daemons(tmp_path)
    try:
        yield started
    finally:
        started.close()
