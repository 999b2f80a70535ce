"""Credentials that change under a running mount: refreshed before they expire on both data paths (the
aiobotocore client and the direct HTTP path), EACCES with one log line while they are refused or expired,
and the same mount working again, with what was closed meanwhile uploaded, once they are valid again.

Against a moto server that checks every request's signature and access key (IAM users and keys made
before ``require_auth``), with credentials from a ``credential_process`` in an AWS config file: a shell
script that prints the keys the test wrote to a file, with the expiry the test chose, and counts its calls.
An expiry 12 minutes ahead is inside botocore's advisory refresh window (15 minutes), so botocore asks
the process again at each request: keys changed in the file are taken up at once, and the old keys can
be deleted in IAM (as an expired key is refused) without one request failing.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from conftest import run_trio
from daemons import Daemons

from s3files.errors import CredentialsError
from s3files.localserver import MotoServer, start_moto_server
from s3files.store.s3 import open_s3_store

ALLOW_ALL = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)
REFUSED_LINE = "credentials unusable:"


@dataclass
class IamMoto:
    """A moto server checking credentials, with an admin key (for set-up and checks) and users whose
    keys the credential process hands out."""

    server: MotoServer
    admin: dict[str, str]  # aws_access_key_id / aws_secret_access_key of the admin user

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.server.endpoint_url,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
            **self.admin,
        )

    def new_user(self) -> str:
        """A user allowed everything (IAM gives a user at most two keys: one user per test)."""
        name = f"mounter-{uuid.uuid4().hex[:8]}"
        self.client("iam").create_user(UserName=name)
        self.client("iam").put_user_policy(UserName=name, PolicyName="all", PolicyDocument=ALLOW_ALL)
        return name

    def new_key(self, user: str) -> tuple[str, str]:
        key = self.client("iam").create_access_key(UserName=user)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def delete_key(self, user: str, key_id: str) -> None:
        self.client("iam").delete_access_key(UserName=user, AccessKeyId=key_id)

    def new_bucket(self) -> str:
        name = f"creds-{uuid.uuid4().hex[:10]}"
        self.client("s3").create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="module")
def iam_moto(fake_aws_credentials: None) -> Iterator[IamMoto]:
    server = start_moto_server()
    try:
        kwargs: dict[str, Any] = {
            "endpoint_url": server.endpoint_url,
            "region_name": "us-east-1",
            "aws_access_key_id": "setup",
            "aws_secret_access_key": "setup",
        }
        iam = boto3.client("iam", **kwargs)
        iam.create_user(UserName="admin")
        iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=ALLOW_ALL)
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        server.require_auth()
        yield IamMoto(server, {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]})
    finally:
        server.stop()


@dataclass
class RgwKeys:
    """Ceph RadosGW (which checks keys for real, and serves presigned GETs, so the direct path reads
    there): the S3 user's keys added and removed with radosgw-admin (scripts/rgw.sh key)."""

    rgw: Any  # s3files.rgwserver.RgwServer

    @property
    def server(self) -> Any:
        return self.rgw

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.rgw.endpoint_url,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
            aws_access_key_id=self.rgw.access_key,
            aws_secret_access_key=self.rgw.secret_key,
        )

    def new_user(self) -> str:
        return ""  # the one S3 user of rgw.sh

    def new_key(self, user: str) -> tuple[str, str]:
        key = ("S3FK" + uuid.uuid4().hex[:16]).upper(), uuid.uuid4().hex
        self.rgw.add_key(*key)
        return key

    def delete_key(self, user: str, key_id: str) -> None:
        self.rgw.remove_key(key_id)

    def new_bucket(self) -> str:
        name = f"creds-{uuid.uuid4().hex[:10]}"
        self.client("s3").create_bucket(Bucket=name)
        return name


@pytest.fixture(params=["moto", "rgw"])
def key_server(request: pytest.FixtureRequest) -> Any:
    """A server that checks keys and whose keys a test can add and take away: moto (IAM) or RadosGW."""
    if request.param == "moto":
        return request.getfixturevalue("iam_moto")
    return RgwKeys(request.getfixturevalue("rgw_server"))


class CredentialProcess:
    """An AWS config file whose default profile's ``credential_process`` prints what ``set`` wrote."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.answer = folder / "answer.json"
        self.calls_file = folder / "calls"
        script = folder / "creds.sh"
        script.write_text(f'#!/bin/sh\necho call >> "{self.calls_file}"\nexec cat "{self.answer}"\n')
        self.config = folder / "config"
        self.config.write_text(f"[default]\ncredential_process = sh {script}\nregion = us-east-1\n")

    def set(self, key: tuple[str, str], expires_in: float = 12 * 60) -> None:
        """Hand out ``key`` (id, secret) from now on, expiring ``expires_in`` seconds from now (negative:
        already expired). Written whole and renamed, so the process never prints half an answer."""
        expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=expires_in)
        answer = {
            "Version": 1,
            "AccessKeyId": key[0],
            "SecretAccessKey": key[1],
            "Expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        staged = self.answer.with_suffix(".tmp")
        staged.write_text(json.dumps(answer))
        staged.rename(self.answer)

    def calls(self) -> int:
        return len(self.calls_file.read_text().splitlines()) if self.calls_file.exists() else 0

    def env(self) -> dict[str, str]:
        """The environment of a process whose only credentials are this process's."""
        env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        env.update(
            AWS_CONFIG_FILE=str(self.config),
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            AWS_EC2_METADATA_DISABLED="true",
        )
        return env


BAD_KEY = ("AKIAREVOKEDREVOKED00", "not-a-secret")


def test_the_store_refreshes_credentials_on_both_paths_and_says_once_when_they_are_refused(
    key_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Through S3Store: keys changed at the source are used by the next request of both paths (direct
    PUTs, HEADs and, on RadosGW, ranged GETs of a 3 MiB object; the client's LIST, and GET on moto, whose
    presigned GETs fail under auth), the old key deleted meanwhile: a direct GET whose presigned URL was
    signed with it fails once, falls back to the client, and the next one is presigned anew; refused or
    expired credentials are CredentialsError (EACCES) with one log line per reason, not per request;
    valid again, the same store works."""
    rgw = isinstance(key_server, RgwKeys)
    process = CredentialProcess(tmp_path / "creds")
    user = key_server.new_user()
    first = key_server.new_key(user)
    process.set(first)
    for name, value in process.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    bucket = key_server.new_bucket()
    big = os.urandom(3 * 1024 * 1024)
    key_server.client("s3").put_object(Bucket=bucket, Key="big", Body=big)
    caplog.set_level(logging.INFO, logger="s3files")

    async def main() -> None:
        async with open_s3_store(bucket, endpoint_url=key_server.server.endpoint_url) as store:

            def direct() -> int:
                return int(store.statistics()["direct_requests"])

            await store.put("one", b"first key")
            assert (await store.head("one")).size == 9
            assert direct() == 2  # the PUT and the HEAD went the direct way, signed with the first key
            assert await store.get_range("big", 1000, 1_001_000) == big[1000:1_001_000]
            assert direct() == (3 if rgw else 2)  # (its presigned URL is kept a minute)
            calls = process.calls()

            second = key_server.new_key(user)
            process.set(second)
            key_server.delete_key(user, first[0])  # from now on a request signed with the first key is refused
            await store.put("two", b"second key")
            assert (await store.head("two")).size == 10
            gets = store.requests["get"]
            assert await store.get_range("big", 2_000_000, 3_000_000) == big[2_000_000:3_000_000]
            assert store.requests["get"] == gets + 2  # the URL signed with the first key, then the client
            assert await store.get_range("big", 0, 1_000_000) == big[:1_000_000]  # presigned anew
            assert await store.get_range("one", 0, 9) == b"first key"
            assert [o.key for o in (await store.list_page("")).objects] == ["big", "one", "two"]
            assert direct() == (3 + 2 + 2 if rgw else 2 + 2)  # every path took the new key
            assert process.calls() > calls

            process.set(BAD_KEY)
            for attempt in range(3):
                with pytest.raises(CredentialsError, match="InvalidAccessKeyId") as refused:
                    await store.put(f"bad-{attempt}", b"x")
                assert refused.value.errno == errno.EACCES
            with pytest.raises(CredentialsError):
                await store.get_range("two", 0, 9)  # (a URL presigned a moment ago with valid keys would do)
            with pytest.raises(CredentialsError):
                await store.list_page("")

            process.set(second, expires_in=-60)  # a source that hands out expired credentials
            for _ in range(2):
                with pytest.raises(CredentialsError, match="expired") as expired:
                    await store.put("expired", b"x")
                assert expired.value.errno == errno.EACCES
            with pytest.raises(CredentialsError, match="expired"):
                await store.head("three")

            process.set(second)
            await store.put("three", b"valid again")
            assert await store.get_range("three", 0, 11) == b"valid again"
            assert await store.get_range("big", 5, 1_000_005) == big[5:1_000_005]

    run_trio(main)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(REFUSED_LINE)]
    assert len(lines) == 2, lines  # one for the refused key, one for the expired ones
    assert "InvalidAccessKeyId" in lines[0] and "expired" in lines[1]
    assert all("the profile's credential_process" in line and "no remount" in line for line in lines)
    assert sum("credentials accepted again" in r.getMessage() for r in caplog.records) == 1
    assert "not-a-secret" not in caplog.text
    s3 = key_server.client("s3")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["big", "one", "three", "two"]


def test_a_mount_takes_new_credentials_answers_eacces_while_refused_and_recovers(
    iam_moto: IamMoto, tmp_path: Path, daemons: Daemons
) -> None:
    """Through a real mount whose credentials come from a credential_process: (a) new keys are used
    before the old ones are gone, no operation fails; (b) refused or expired keys make stat, read,
    listing and close answer EACCES, with one log line per reason; (c) valid again, the same mount works
    and the file whose close failed meanwhile reaches S3 by itself."""
    process = CredentialProcess(tmp_path / "creds")
    user = iam_moto.new_user()
    first = iam_moto.new_key(user)
    process.set(first)
    bucket = iam_moto.new_bucket()
    s3 = iam_moto.client("s3")
    daemon = daemons.mount(iam_moto.server.endpoint_url, bucket, env=process.env(), extra=("--metadata-ttl", "0"))
    mp = daemon.mountpoint

    (mp / "a.txt").write_bytes(b"written with the first key")
    assert (mp / "a.txt").read_bytes() == b"written with the first key"

    # (a) The source hands out a new key. Within its advisory window botocore asks the source at each
    # request (a request that meets a refresh in progress goes with the key of the moment, still valid
    # then): once one request has taken the new key, the old one is deleted, as it would expire.
    calls = process.calls()
    second = iam_moto.new_key(user)
    process.set(second)
    (mp / "c.txt").write_bytes(b"written as the key changed")
    iam_moto.delete_key(user, first[0])
    s3.put_object(Bucket=bucket, Key="outside/b.txt", Body=b"made outside")
    assert sorted(os.listdir(mp / "outside")) == ["b.txt"]
    assert (mp / "outside" / "b.txt").read_bytes() == b"made outside"
    (mp / "g.txt").write_bytes(b"written with the second key")
    assert os.stat(mp / "g.txt").st_size == 27
    for key, body in (("c.txt", b"written as the key changed"), ("g.txt", b"written with the second key")):
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    assert process.calls() > calls
    assert REFUSED_LINE not in daemon.log()

    # (b) Refused keys, then expired ones: EACCES everywhere S3 is needed, one log line per reason.
    pending = open(mp / "pending.txt", "wb")  # closed below, while refused
    pending.write(b"closed while the credentials were refused")
    expiring = open(mp / "f.txt", "wb")  # closed below, while expired
    expiring.write(b"f")
    s3.put_object(Bucket=bucket, Key="later/d.txt", Body=b"d")
    s3.put_object(Bucket=bucket, Key="e.txt", Body=b"e")
    process.set(BAD_KEY)
    with pytest.raises(PermissionError):
        os.listdir(mp / "later")
    with pytest.raises(PermissionError):
        (mp / "e.txt").read_bytes()
    with pytest.raises(PermissionError):
        pending.close()
    process.set(second, expires_in=-60)
    with pytest.raises(PermissionError):
        os.stat(mp / "later" / "d.txt")
    with pytest.raises(PermissionError):
        expiring.close()  # its PUT cannot even be signed
    with pytest.raises(PermissionError):
        (mp / "h.txt").write_bytes(b"h")  # its creation's lookup
    log = daemon.log()
    lines = [line for line in log.splitlines() if REFUSED_LINE in line]
    assert len(lines) == 2, lines
    assert "InvalidAccessKeyId" in lines[0] and "expired" in lines[1]
    assert "op=flush path='/pending.txt' key='pending.txt' errno=EACCES s3=InvalidAccessKeyId: " in log
    assert "Traceback" not in log and "refreshed credentials are still expired" not in log  # (botocore's, per request)

    # (c) Valid again: the same mount works, and the closes that failed are uploaded by themselves.
    process.set(second)
    assert sorted(os.listdir(mp / "later")) == ["d.txt"]
    assert (mp / "e.txt").read_bytes() == b"e"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
        if {"pending.txt", "f.txt"} <= keys:
            break
        time.sleep(0.2)
    assert s3.get_object(Bucket=bucket, Key="pending.txt")["Body"].read() == b"closed while the credentials were refused"
    assert s3.get_object(Bucket=bucket, Key="f.txt")["Body"].read() == b"f"
    assert "credentials accepted again" in daemon.log()
    assert daemon.unmount() == 0
    assert daemon.leftovers() == []


def test_only_botocores_expired_credentials_runtimeerror_is_translated() -> None:
    """botocore's bare RuntimeError for refreshed-but-expired credentials is CredentialsError (EACCES);
    any other RuntimeError is a bug and comes out as itself."""
    from s3files.store.translate import translate

    where = {"bucket": "b", "endpoint": "http://127.0.0.1:1", "profile": None}
    expired = RuntimeError("Credentials were refreshed, but the refreshed credentials are still expired.")
    error = translate(expired, "put", "k", **where)
    assert isinstance(error, CredentialsError) and error.errno == errno.EACCES and "expired" in str(error)
    bug = RuntimeError("something else")
    with pytest.raises(RuntimeError, match="something else"):
        translate(bug, "put", "k", **where)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("ExpiredToken", 400),
        ("InvalidAccessKeyId", 403),
        ("SignatureDoesNotMatch", 403),
        ("InvalidToken", 400),
        ("TokenRefreshRequired", 400),
    ],
)
def test_refused_credentials_are_eacces_with_their_code(code: str, status: int) -> None:
    """Every S3 answer that refuses the credentials is CredentialsError (EACCES), its key and code kept
    for the failed operation's log line."""
    from botocore.exceptions import ClientError

    from s3files.store.translate import translate

    answer = {"Error": {"Code": code, "Message": "no"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    error = translate(
        ClientError(answer, "PutObject"), "put", "a/b", bucket="b", endpoint="http://127.0.0.1:1", profile=None
    )
    assert isinstance(error, CredentialsError) and error.errno == errno.EACCES
    assert (error.key, error.s3_code) == ("a/b", code)
