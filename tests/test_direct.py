"""The direct HTTP path (s3files/store/direct.py): ranged GETs read straight into one buffer, small PUTs
signed without aiobotocore.

Two halves: through S3Store against moto and Ceph RadosGW (the path is really taken, with awkward keys,
metadata and conditions, and every refusal still becomes the right error through aiobotocore), and
DirectHttp alone against a scripted HTTP server on 127.0.0.1 (keep-alive, each answer it must not trust,
stalls, failures, what a signed PUT carries).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import subprocess
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from botocore.credentials import ReadOnlyCredentials
from conftest import S3Server, run_trio

from s3files.errors import ObjectNotFound, PreconditionFailed
from s3files.store.direct import UNSIGNED_PAYLOAD, DirectHttp, sign_v4, signing_key
from s3files.store.s3 import open_s3_store

DATA = os.urandom(3 * 1024 * 1024 + 17)


# --- through the S3 store, on real servers -----------------------------------------------------------


def test_ranged_gets_take_the_direct_path(s3_server: S3Server, s3_bucket: str, s3_client: Any) -> None:
    key = "a folder/ünïcode + plus?&=.bin"
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=DATA)
    etag = s3_client.head_object(Bucket=s3_bucket, Key=key)["ETag"].strip('"')

    async def main() -> None:
        async with open_s3_store(s3_bucket, endpoint_url=s3_server.endpoint_url, max_attempts=2) as store:
            ranges = [(0, 1), (5, 1_000_005), (1_000_000, len(DATA)), (len(DATA) - 1, len(DATA))]
            for start, end in ranges:
                assert await store.get_range(key, start, end, if_match=etag) == DATA[start:end]
            assert await store.get_range(key, 7, 7) == b""
            assert store.statistics()["direct_requests"] == len(ranges) + 1
            assert store.requests["get"] == len(ranges) + 1  # one request each: no fallback happened

            # Refusals come back through aiobotocore as the usual errors (the direct try + the fallback).
            with pytest.raises(PreconditionFailed):
                await store.get_range(key, 0, 10, if_match="0" * 32)
            with pytest.raises(ObjectNotFound):
                await store.get_range("no/such/key", 0, 10)
            assert store.statistics()["direct_requests"] == len(ranges) + 1

    run_trio(main)


def test_get_first_takes_the_direct_path_and_reads_like_a_head(
    s3_server: S3Server, s3_bucket: str, s3_client: Any
) -> None:
    key = "small files/ünï + &=.txt"
    meta = {"mode": "33188", "uid": "1000", "mtime": "1700000000.5"}
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=DATA[:5000], Metadata=meta)
    s3_client.put_object(Bucket=s3_bucket, Key="empty", Body=b"")

    async def main() -> None:
        async with open_s3_store(s3_bucket, endpoint_url=s3_server.endpoint_url, max_attempts=2) as store:
            head = await store.head(key)
            store.requests.reset()
            info, data = await store.get_first(key, 4096)
            assert (data, info) == (DATA[:4096], head)  # size, ETag, time and metadata as a HEAD says them
            info, data = await store.get_first(key, 1 << 20)
            assert (data, info.size) == (DATA[:5000], 5000)
            # (3: the HEAD above took the direct path too)
            assert store.statistics()["direct_requests"] == 3 and store.requests.snapshot() == {"get": 2}
            # An empty object's 416 and a missing key go through aiobotocore (direct try + fallback).
            info, data = await store.get_first("empty", 4096)
            assert (data, info.size) == (b"", 0)
            with pytest.raises(ObjectNotFound):
                await store.get_first("no/such/key", 4096)
            assert store.statistics()["direct_requests"] == 4  # and the empty object's HEAD

    run_trio(main)


def test_heads_take_the_direct_path(s3_server: S3Server, s3_bucket: str, s3_client: Any) -> None:
    """A HEAD answers what aiobotocore's answers (size, ETag, time, metadata), a missing key is
    ObjectNotFound, each in one request (a listing HEADs every file version it does not know)."""
    key = "small files/ünï + &=.txt"
    meta = {"mode": "33188", "uid": "1000", "mtime": "1700000000.5"}
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=DATA[:5000], Metadata=meta)
    s3_client.put_object(Bucket=s3_bucket, Key="empty", Body=b"")

    async def main() -> None:
        async with open_s3_store(s3_bucket, endpoint_url=s3_server.endpoint_url, max_attempts=2) as store:
            response = s3_client.head_object(Bucket=s3_bucket, Key=key)
            info = await store.head(key)
            assert (info.size, info.etag, info.metadata) == (5000, response["ETag"].strip('"'), meta)
            assert info.last_modified == response["LastModified"].timestamp()
            assert (await store.head("empty")).size == 0
            with pytest.raises(ObjectNotFound):
                await store.head("no/such/key")
            assert store.statistics()["direct_requests"] == 3 and store.requests.snapshot() == {"head": 3}

    run_trio(main)


def test_small_puts_take_the_direct_path(s3_server: S3Server, s3_bucket: str, s3_client: Any) -> None:
    """Metadata, Content-MD5 and conditions arrive as aiobotocore would send them; refusals are the
    usual errors (the direct try, then aiobotocore's)."""
    keys = ["plain", "a folder/ünïcode + plus?&=%.txt", "tilde~/x"]
    meta = {"mode": "33188", "mtime": "1700000000.5"}

    async def main() -> None:
        async with open_s3_store(s3_bucket, endpoint_url=s3_server.endpoint_url, max_attempts=2) as store:
            for key in keys:
                info = await store.put(key, key.encode() * 3, meta, if_none_match=True)
                head = s3_client.head_object(Bucket=s3_bucket, Key=key)
                assert head["ETag"].strip('"') == info.etag and head["Metadata"] == meta
                assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == key.encode() * 3
                assert abs(info.last_modified - head["LastModified"].timestamp()) < 5
                replaced = await store.put(key, b"v2", if_match=info.etag)
                assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == b"v2"
                assert replaced.etag != info.etag
            assert store.statistics()["direct_requests"] == 2 * len(keys)
            assert store.requests["put"] == 2 * len(keys)  # no fallback was needed

            with pytest.raises(PreconditionFailed):
                await store.put("plain", b"x", if_none_match=True)
            with pytest.raises(PreconditionFailed):
                await store.put("plain", b"x", if_match="0" * 32)
            with pytest.raises(ObjectNotFound):
                await store.put("never/written", b"x", if_match="0" * 32)
            assert s3_client.get_object(Bucket=s3_bucket, Key="plain")["Body"].read() == b"v2"
            # the HEADs that tell a 412 from a missing key (how many: the server's answers) went direct too
            assert store.statistics()["direct_requests"] == 2 * len(keys) + store.requests["head"] > 2 * len(keys)

    run_trio(main)


def test_parts_from_a_file_take_the_direct_path_and_a_wrong_hash_is_refused(
    s3_server: S3Server, s3_bucket: str, s3_client: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part sent from a local file goes by sendfile on the direct path (one request, signed with its
    query), and the server checks it against the payload's SHA-256 signed before: a part that changed in
    between (here: a wrong hash) is refused there and sent again, hashed anew, through aiobotocore (RGW;
    moto checks no part's payload hash)."""
    import s3files.store.s3 as s3_module

    key = "multi part/ünï + &=.bin"
    content = os.urandom(13 * 1024 * 1024 + 5)
    local = tmp_path / "copy"
    local.write_bytes(content)
    cut = 5 * 1024 * 1024

    async def main() -> None:
        async with open_s3_store(s3_bucket, endpoint_url=s3_server.endpoint_url, max_attempts=2) as store:
            upload_id = await store.create_multipart(key)
            fd = os.open(local, os.O_RDONLY)
            try:
                first = await store.upload_part_from(key, upload_id, 1, fd, 0, cut)
                assert store.statistics()["direct_requests"] == 1 and store.requests["upload_part"] == 1
                real = s3_module.file_sha256
                monkeypatch.setattr(s3_module, "file_sha256", lambda *a: real(fd, 0, 16))  # not this part's
                second = await store.upload_part_from(key, upload_id, 2, fd, cut, len(content) - cut)
                if s3_server.kind == "rgw":
                    assert store.statistics()["direct_requests"] == 1  # refused there ...
                    assert store.requests["upload_part"] == 3  # ... and sent again
                else:  # moto does not check a part's payload hash: taken as sent (the bytes are right)
                    assert store.statistics()["direct_requests"] == 2
            finally:
                os.close(fd)
            await store.complete_multipart(key, upload_id, [first, second])
        assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == content

    run_trio(main)


# --- DirectHttp alone, against a scripted server ------------------------------------------------------

DIGEST = hashlib.sha256(b"the part").hexdigest()  # the part's hash as the caller gives it (not checked here)
Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]  # returns: keep the connection open


class Scripted:
    """An HTTP server on 127.0.0.1 whose answer to each request ``handler`` writes; records requests."""

    def __init__(self, handler: Handler, with_bodies: bool = False, tls: tuple[str, str] | None = None) -> None:
        self.handler = handler
        self.tls = tls  # (certificate, key) files: serve HTTPS
        self.with_bodies = with_bodies  # requests carry Content-Length bodies (PUTs): read them
        self.bodies: list[bytes] = []
        self.requests: list[bytes] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Scripted:
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self.tls)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(request)
                if self.with_bodies:
                    length = [line for line in request.split(b"\r\n") if line.lower().startswith(b"content-length:")]
                    self.bodies.append(await reader.readexactly(int(length[0].split(b":")[1])) if length else b"")
                if not await self.handler(request, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def getter(self, read_timeout: float = 5.0) -> tuple[DirectHttp, list[str]]:
        sent: list[str] = []

        scheme = "http" if self.tls is None else "https"

        async def presign(key: str) -> str:
            path = urllib.parse.quote(key.encode(), safe="/~")
            return f"{scheme}://127.0.0.1:{self.port}/bucket/{path}?X-Amz-Signature=abc"

        async def credentials() -> ReadOnlyCredentials:
            return ReadOnlyCredentials("AKIDEXAMPLE", "secret", None)

        getter = DirectHttp(
            presign,
            credentials,
            f"{scheme}://127.0.0.1:{self.port}",
            "us-east-1",
            max_connections=4,
            connect_timeout=2.0,
            read_timeout=read_timeout,
            on_request=sent.append,
            ca_bundle=None if self.tls is None else self.tls[0],
        )
        return getter, sent


def _range_of(request: bytes) -> tuple[int, int]:
    for line in request.decode().split("\r\n"):
        if line.lower().startswith("range: bytes="):
            first, last = line.split("=", 1)[1].split("-")
            return int(first), int(last)
    raise AssertionError(f"no Range in {request!r}")


async def partial(request: bytes, writer: asyncio.StreamWriter, extra: str = "") -> bool:
    first, last = _range_of(request)
    body = DATA[first : last + 1]
    head = (
        f"HTTP/1.1 206 Partial Content\r\nContent-Length: {len(body)}\r\n"
        f"Content-Range: bytes {first}-{last}/{len(DATA)}\r\n{extra}\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    return "close" not in extra


def run_asyncio(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), 30))


def test_keep_alive_reuses_one_connection_and_sends_the_signed_url() -> None:
    async def main() -> None:
        async with Scripted(partial) as server:
            getter, sent = server.getter()
            for start, last in [(0, 99), (100, 1_048_675), (len(DATA) - 5, len(DATA) - 1)]:
                assert await getter.get("k", start, last, "etag1") == DATA[start : last + 1]
            await getter.aclose()
            assert server.connections == 1 and sent == ["get"] * 3 and getter.served == 3
            request = server.requests[0].decode()
            assert request.startswith("GET /bucket/k?X-Amz-Signature=abc HTTP/1.1\r\n")
            assert f"Host: 127.0.0.1:{server.port}\r\n" in request and "If-Match: etag1\r\n" in request

    run_asyncio(main)


def test_a_body_belongs_to_the_caller_alone() -> None:
    """The reader recycles a part's buffer only when nothing else refers to it (refcount 2: its name and
    getrefcount's argument). An idle keep-alive connection once held its last answer, so no buffer of a
    sequential read was ever recycled (every 8 MiB part a fresh, zeroed allocation)."""

    async def main() -> None:
        async with Scripted(partial) as server:
            getter, _ = server.getter()
            body = await getter.get("k", 0, 99, None)
            assert body == DATA[:100] and sys.getrefcount(body) == 2
            into = bytearray(1000)
            again = await getter.get("k", 100, 1099, None, into=into)
            assert again is into and into == DATA[100:1100]
            del again
            assert sys.getrefcount(into) == 2
            await getter.aclose()
            assert server.connections == 1

    run_asyncio(main)


def test_https_bodies_arrive_whole(tmp_path: Any) -> None:
    """Over TLS a response arrives in 16 KiB records, and asyncio's TLS transport (3.11) fills the buffer
    the protocol hands it in several reads, each into ``buf[offset:]``: of a bytearray that is a copy, so
    every byte of the first 64 KiB after the first record was lost and the body's start came back stale
    (zeros, or the previous answer's bytes). Real S3 is HTTPS: every ranged GET was wrong there."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    made = subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        capture_output=True,
    )
    assert made.returncode == 0, made.stderr

    async def main() -> None:
        async with Scripted(partial, tls=(str(cert), str(key))) as server:
            getter, sent = server.getter()
            ranges = [(0, 99), (5, 1_048_580), (70_000, 70_000 + 65_535), (len(DATA) - 200_000, len(DATA) - 1)]
            for start, last in ranges:
                into = bytearray(last - start + 1)
                assert await getter.get("k", start, last, None, into=into) == DATA[start : last + 1]
                assert await getter.get("k", start, last, None) == DATA[start : last + 1]
            await getter.aclose()
            assert server.connections == 1 and getter.served == 8 and sent == ["get"] * 8

    run_asyncio(main)


def test_connection_close_is_honoured() -> None:
    async def main() -> None:
        async with Scripted(lambda r, w: partial(r, w, "Connection: close\r\n")) as server:
            getter, _ = server.getter()
            assert await getter.get("k", 0, 9, None) == DATA[:10]
            assert await getter.get("k", 10, 19, None) == DATA[10:20]
            await getter.aclose()
            assert server.connections == 2

    run_asyncio(main)


async def whole_object(request: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(DATA)}\r\n\r\n".encode() + DATA)
    return True


async def chunked(request: bytes, writer: asyncio.StreamWriter) -> bool:
    first, last = _range_of(request)
    body = DATA[first : last + 1]
    writer.write(
        f"HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\nContent-Range: bytes {first}-{last}/"
        f"{len(DATA)}\r\n\r\n{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    )
    return True


async def wrong_range(request: bytes, writer: asyncio.StreamWriter) -> bool:
    first, last = _range_of(request)
    body = DATA[first + 1 : last + 2]
    writer.write(
        f"HTTP/1.1 206 Partial Content\r\nContent-Length: {len(body)}\r\nContent-Range: bytes {first + 1}-"
        f"{last + 1}/{len(DATA)}\r\n\r\n".encode() + body
    )
    return True


async def precondition_failed(request: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 412 Precondition Failed\r\nContent-Length: 0\r\n\r\n")
    return True


async def cut_short(request: bytes, writer: asyncio.StreamWriter) -> bool:
    first, last = _range_of(request)
    writer.write(
        f"HTTP/1.1 206 Partial Content\r\nContent-Length: {last - first + 1}\r\nContent-Range: bytes {first}-"
        f"{last}/{len(DATA)}\r\n\r\n".encode() + DATA[first : first + (last - first) // 2]
    )
    await writer.drain()
    return False


@pytest.mark.parametrize("handler", [whole_object, chunked, wrong_range, precondition_failed, cut_short])
def test_anything_but_the_exact_range_means_ask_aiobotocore(handler: Handler) -> None:
    """None (the caller falls back), never wrong bytes, and the connection is not reused."""

    async def main() -> None:
        async with Scripted(handler) as server:
            getter, sent = server.getter()
            assert await getter.get("k", 1000, 1000 + 65_535, None) is None
            assert await getter.get("k", 0, 9, None) is None
            await getter.aclose()
            assert len(sent) == 2 and server.connections == 2 and getter.served == 0

    run_asyncio(main)


def test_a_stalled_answer_times_out() -> None:
    async def stall(request: bytes, writer: asyncio.StreamWriter) -> bool:
        first, last = _range_of(request)
        writer.write(
            f"HTTP/1.1 206 Partial Content\r\nContent-Length: {last - first + 1}\r\nContent-Range: bytes "
            f"{first}-{last}/{len(DATA)}\r\n\r\n".encode() + DATA[first : first + 10]
        )
        await asyncio.sleep(5)
        return False

    async def main() -> None:
        async with Scripted(stall) as server:
            getter, _ = server.getter(read_timeout=0.3)
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await getter.get("k", 0, 999, None) is None
            assert loop.time() - started < 2
            await getter.aclose()

    run_asyncio(main)


def test_connection_failures_pause_the_direct_path() -> None:
    """Against a closed port: three refused connections, then no attempts at all for a while."""

    async def main() -> None:
        async with Scripted(partial) as server:
            getter, sent = server.getter()
        # The server is gone; its port refuses connections now.
        for _ in range(3):
            assert await getter.get("k", 0, 9, None) is None
        assert getter._paused_until > 0
        assert await getter.get("k", 0, 9, None) is None
        assert sent == [] and getter.served == 0

    run_asyncio(main)


def test_off_behind_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)

    async def presign(key: str) -> str:
        raise AssertionError("not used")

    async def credentials() -> None:
        raise AssertionError("not used")

    getter = DirectHttp(
        presign,
        credentials,
        "http://10.1.2.3:9000",
        "us-east-1",
        max_connections=1,
        connect_timeout=1,
        read_timeout=1,
        on_request=lambda op: None,
    )
    assert not getter.enabled
    assert run_asyncio(lambda: getter.get("k", 0, 9, None)) is None


@pytest.mark.parametrize("signed_payload", [False, True])
@pytest.mark.parametrize("token", [None, "session-token/+="])
def test_sign_v4_signs_as_botocore_does(token: str | None, signed_payload: bool) -> None:
    """Headers only (small PUTs, Content-MD5) and with the payload's SHA-256 signed (parts from files)."""
    import types

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest

    credentials = ReadOnlyCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    headers = {
        "Content-MD5": "Q2hlY2sgSW50ZWdyaXR5IQ==",
        "x-amz-meta-mode": "33188",
        "x-amz-meta-mtime": "  1700000000.5  ",
        "If-Match": '"0123abcd"',
        "Content-Length": "4096",
    }
    path = "/bucket/a%20folder/%C3%BCn%C3%AFcode%20%2B%20plus%3F%26%3D.bin"
    url = f"http://127.0.0.1:9000{path}"
    body = b"x" * 4096
    theirs = AWSRequest(method="PUT", url=url, headers=dict(headers), data=body)
    theirs.context["client_config"] = types.SimpleNamespace(s3={"payload_signing_enabled": signed_payload})
    S3SigV4Auth(credentials, "s3", "eu-west-3").add_auth(theirs)
    date = theirs.headers["X-Amz-Date"]
    key = signing_key(credentials.secret_key, date[:8], "eu-west-3")
    payload = hashlib.sha256(body).hexdigest() if signed_payload else UNSIGNED_PAYLOAD
    ours = sign_v4("PUT", "127.0.0.1:9000", path, headers, credentials, "eu-west-3", date, key, payload=payload)
    assert ours["Authorization"] == theirs.headers["Authorization"]
    assert {k.lower(): v for k, v in ours.items()} == {k.lower(): v for k, v in theirs.headers.items()}


def test_a_put_is_signed_and_carries_its_headers_and_body() -> None:
    async def accept(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b'HTTP/1.1 200 OK\r\nETag: "abc123"\r\nDate: Sat, 28 Nov 2026 04:47:14 GMT\r\n'
            b"Content-Length: 0\r\n\r\n"
        )
        return True

    async def main() -> None:
        async with Scripted(accept, with_bodies=True) as server:
            getter, sent = server.getter()
            headers = {"Content-MD5": "Q2hlY2sgSW50ZWdyaXR5IQ==", "x-amz-meta-mode": "33188", "If-None-Match": "*"}
            answer = await getter.put("dir/ü x", b"payload!", headers)
            assert answer is not None and answer["etag"] == '"abc123"'
            await getter.aclose()
            assert sent == ["put"] and server.bodies == [b"payload!"]
            request = server.requests[0].decode("utf-8")
        assert request.startswith("PUT /bucket/dir/%C3%BC%20x HTTP/1.1\r\n")
        for line in (
            "Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==",
            "x-amz-meta-mode: 33188",
            "If-None-Match: *",
            "Content-Length: 8",
            "X-Amz-Content-SHA256: UNSIGNED-PAYLOAD",
        ):
            assert line + "\r\n" in request, line
        assert "Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/" in request
        signed = request.split("SignedHeaders=", 1)[1].split(",", 1)[0]
        assert {"content-md5", "host", "if-none-match", "x-amz-meta-mode", "x-amz-date"} <= set(signed.split(";"))

    run_asyncio(main)


def test_a_part_from_a_file_is_sent_whole_or_handed_back(tmp_path: Any) -> None:
    """The file's bytes are the body, the query is signed; a file shorter than the part, or a server that
    answers before the body and hangs up, gives None (aiobotocore's turn), never an exception."""
    content = os.urandom(3 * 1024 * 1024 + 1)
    local = tmp_path / "copy"
    local.write_bytes(content)

    async def ok(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b'HTTP/1.1 200 OK\r\nETag: "p1"\r\nContent-Length: 0\r\n\r\n')
        return True

    async def hang_up(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        return False

    async def main() -> None:
        fd = os.open(local, os.O_RDONLY)
        try:
            async with Scripted(ok, with_bodies=True) as server:
                getter, sent = server.getter()
                answer = await getter.put_part("a b/ü", "2~x+y/z=", 7, (fd, 5, len(content) - 5), DIGEST)
                assert answer is not None and answer["etag"] == '"p1"'
                assert server.bodies == [content[5:]] and sent == ["upload_part"]
                head = server.requests[0].decode()
                assert head.startswith("PUT /bucket/a%20b/%C3%BC?partNumber=7&uploadId=2~x%2By%2Fz%3D HTTP/1.1")
                assert f"X-Amz-Content-SHA256: {DIGEST}" in head and "Content-MD5" not in head
                assert f"Content-Length: {len(content) - 5}" in head
                assert await getter.put_part("k", "u", 1, (fd, 0, len(content) + 10), DIGEST) is None
                await getter.aclose()
            async with Scripted(hang_up) as server:
                getter, sent = server.getter()
                big = 64 * 1024 * 1024  # more than the socket buffers take before the server hangs up
                with open(local, "ab") as f:
                    f.truncate(big)
                assert await getter.put_part("k", "u", 1, (fd, 0, big), DIGEST) is None
                assert getter.served == 0
                await getter.aclose()
        finally:
            os.close(fd)

    run_asyncio(main)


def test_a_refused_put_or_an_unexpected_quoting_means_ask_aiobotocore() -> None:
    async def refuse(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 412 Precondition Failed\r\nContent-Length: 0\r\n\r\n")
        return True

    async def main() -> None:
        async with Scripted(refuse, with_bodies=True) as server:
            getter, sent = server.getter()
            assert await getter.put("k", b"x", {"If-None-Match": "*"}) is None
            assert sent == ["put"] and getter.served == 0
            await getter.aclose()

            odd, odd_sent = server.getter()

            async def presign(key: str) -> str:  # a server whose paths are not botocore's quoting
                return f"http://127.0.0.1:{server.port}/bucket/{key.replace(' ', '+')}?X-Amz-Signature=abc"

            odd._presign = presign
            assert await odd.put("k", b"x", {}) is None
            assert odd_sent == []  # nothing was sent
            await odd.aclose()

    run_asyncio(main)
