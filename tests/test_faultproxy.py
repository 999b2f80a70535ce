"""The fault-injecting proxy (tests/faultproxy.py) itself: it forwards S3 requests faithfully, each fault
really happens as described (checked against what moto holds behind it), and stop() leaves nothing running.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import threading
import time
from typing import Any

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError
from faultproxy import FaultProxy, Request, s3_operation

from s3files.localserver import MotoServer

MiB = 1024 * 1024


def _client(endpoint: str, attempts: int = 1, **config: Any) -> Any:
    """A boto3 client on ``endpoint``; ``attempts=1``: no retries, so a fault reaches the caller."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=botocore.config.Config(retries={"total_max_attempts": attempts, "mode": "standard"}, **config),
    )


def _keys(direct: Any, bucket: str) -> list[str]:
    return [item["Key"] for item in direct.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_forwards_every_kind_of_request_and_reply(
    moto_server: MotoServer, bucket: str, boto3_client: Any
) -> None:
    """Bodies with Content-Length (and Expect: 100-continue), chunked, aws-chunked, and none; replies with
    Content-Length, none (HEAD, 204, 304) and errors; all on kept-alive client connections."""
    with FaultProxy(moto_server.endpoint_url, record=True) as proxy:
        _forwards_everything(proxy, bucket, boto3_client)


def _forwards_everything(fault_proxy: FaultProxy, bucket: str, boto3_client: Any) -> None:
    client = _client(fault_proxy.endpoint_url)
    plain = _client(fault_proxy.endpoint_url, request_checksum_calculation="when_required")
    big = os.urandom(6 * MiB)
    plain.put_object(Bucket=bucket, Key="plain", Body=b"hello")
    plain.put_object(Bucket=bucket, Key="big", Body=big)
    assert boto3_client.get_object(Bucket=bucket, Key="big")["Body"].read() == big
    # Bodies boto3 sends only over https (aws-chunked with trailing checksums), by hand: HTTP chunked,
    # and aws-chunked framing inside a Content-Length body.
    raw = http.client.HTTPConnection("127.0.0.1", fault_proxy.port, timeout=10)
    raw.request("PUT", f"/{bucket}/chunked", body=iter([b"abc", b"defg", b"h" * 70000]), encode_chunked=True)
    assert raw.getresponse().read() == b""
    framed = b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    aws_headers = {
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": "7",
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    }
    raw.request("PUT", f"/{bucket}/aws-chunked", body=framed, headers=aws_headers)
    assert raw.getresponse().read() == b""
    raw.close()
    assert boto3_client.get_object(Bucket=bucket, Key="chunked")["Body"].read() == b"abcdefg" + b"h" * 70000
    assert boto3_client.get_object(Bucket=bucket, Key="aws-chunked")["Body"].read() == b"abcdefg"
    head = client.head_object(Bucket=bucket, Key="plain")
    assert head["ContentLength"] == 5
    got = client.get_object(Bucket=bucket, Key="big", Range="bytes=10-19")
    assert got["Body"].read() == big[10:20]
    with pytest.raises(ClientError) as caught:
        client.get_object(Bucket=bucket, Key="plain", IfNoneMatch=head["ETag"])
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(ClientError, match="NoSuchKey"):
        client.get_object(Bucket=bucket, Key="missing")
    upload = plain.create_multipart_upload(Bucket=bucket, Key="multi")["UploadId"]
    part = plain.upload_part(Bucket=bucket, Key="multi", UploadId=upload, PartNumber=1, Body=b"part")
    plain.complete_multipart_upload(
        Bucket=bucket,
        Key="multi",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    assert client.delete_object(Bucket=bucket, Key="plain")["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert sorted(_keys(client, bucket)) == ["aws-chunked", "big", "chunked", "multi"]
    stats = fault_proxy.stats.snapshot()
    assert stats["faults"] == {}
    assert stats["requests"] == stats["forwarded"] == 13
    assert stats["operations"] == {
        "PutObject": 4,
        "HeadObject": 1,
        "GetObject": 3,
        "CreateMultipartUpload": 1,
        "UploadPart": 1,
        "CompleteMultipartUpload": 1,
        "DeleteObject": 1,
        "ListObjectsV2": 1,
    }
    assert stats["connections"] <= 3  # one kept-alive connection per client (moto closes its own each time)
    assert stats["upstream_connections"] == 13
    puts = [r.headers for r in fault_proxy.stats.recorded if r.operation == "PutObject"]
    assert puts[1]["expect"] == "100-continue"
    assert puts[2]["transfer-encoding"] == "chunked" and "content-length" not in puts[2]
    assert puts[3]["content-encoding"] == "aws-chunked"


def test_drop_reply_after_the_server_applied_the_request(
    fault_proxy: FaultProxy, bucket: str, boto3_client: Any
) -> None:
    fault_proxy.set_faults(drop_reply_every=2, drop_reply_when="PutObject")
    client = _client(fault_proxy.endpoint_url)
    client.put_object(Bucket=bucket, Key="first", Body=b"1")
    client.head_object(Bucket=bucket, Key="first")  # not a PutObject: not counted, not dropped
    with pytest.raises(ConnectionClosedError):
        client.put_object(Bucket=bucket, Key="second", Body=b"2")
    # The client never heard, yet S3 has it.
    assert boto3_client.get_object(Bucket=bucket, Key="second")["Body"].read() == b"2"
    client.put_object(Bucket=bucket, Key="third", Body=b"3")
    stats = fault_proxy.stats.snapshot()
    assert stats["faults"] == {"drop_reply": 1}
    assert stats["faults_by_operation"] == {("drop_reply", "PutObject"): 1}
    assert stats["requests"] == stats["forwarded"] == 4


def test_drop_reply_with_retries_applies_twice_and_answers_once(
    fault_proxy: FaultProxy, bucket: str, boto3_client: Any
) -> None:
    """With retries on, the client retries a dropped reply: the server sees the request twice (what makes
    a lost reply dangerous for requests that are not idempotent)."""
    fault_proxy.set_faults(
        drop_reply_every=2, drop_reply_when=lambda r: r.method == "POST" and "uploads" in r.query
    )
    client = _client(fault_proxy.endpoint_url, attempts=3)
    first = client.create_multipart_upload(Bucket=bucket, Key="k")
    second = client.create_multipart_upload(Bucket=bucket, Key="k")
    assert first["ResponseMetadata"]["RetryAttempts"] == 0
    assert second["ResponseMetadata"]["RetryAttempts"] == 1
    uploads = boto3_client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert len(uploads) == 3  # the lost one is there, its id known to nobody
    assert fault_proxy.stats.snapshot()["faults"] == {"drop_reply": 1}
    for upload in uploads:
        boto3_client.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload["UploadId"])


def test_fail_answers_an_s3_error_without_forwarding(
    fault_proxy: FaultProxy, bucket: str, boto3_client: Any
) -> None:
    fault_proxy.set_faults(fail_every=2)
    client = _client(fault_proxy.endpoint_url)
    client.put_object(Bucket=bucket, Key="a", Body=b"a")
    with pytest.raises(ClientError) as caught:
        client.put_object(Bucket=bucket, Key="b", Body=b"b")
    error = caught.value.response
    assert (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]) == ("SlowDown", 503)
    assert _keys(boto3_client, bucket) == ["a"]  # never forwarded
    # HEAD: the status, no body; the connection stays usable.
    assert client.head_object(Bucket=bucket, Key="a")["ContentLength"] == 1
    with pytest.raises(ClientError) as caught:
        client.head_object(Bucket=bucket, Key="a")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert client.head_object(Bucket=bucket, Key="a")["ContentLength"] == 1
    # With retries on, boto3 gets through (a 503 is retried).
    fault_proxy.set_faults(fail_every=2, fail_when="PutObject", fail_status=500)
    retrying = _client(fault_proxy.endpoint_url, attempts=3)
    retrying.put_object(Bucket=bucket, Key="c", Body=b"c")
    retrying.put_object(Bucket=bucket, Key="d", Body=b"d")
    assert sorted(_keys(boto3_client, bucket)) == ["a", "c", "d"]
    stats = fault_proxy.stats.snapshot()
    assert stats["faults"] == {"fail": 3}
    assert stats["requests"] - stats["forwarded"] == 3
    assert stats["connections"] == 2  # the failures kept the connections alive


def test_fail_with_a_body_and_expect_100_continue(fault_proxy: FaultProxy, bucket: str) -> None:
    """boto3 sends large bodies with Expect: 100-continue; a failure then still reads and answers cleanly."""
    fault_proxy.set_faults(fail_every=1, fail_when="UploadPart")
    client = _client(fault_proxy.endpoint_url, request_checksum_calculation="when_required")
    upload = client.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    with pytest.raises(ClientError, match="SlowDown"):
        client.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=1, Body=os.urandom(2 * MiB))
    fault_proxy.clear_faults()
    part = client.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=1, Body=b"x" * (2 * MiB))
    assert part["ETag"].strip('"') == hashlib.md5(b"x" * (2 * MiB)).hexdigest()
    client.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload)


def test_reset_closes_before_forwarding(fault_proxy: FaultProxy, bucket: str, boto3_client: Any) -> None:
    fault_proxy.set_faults(reset_every=1, reset_when={"PutObject", "DeleteObject"})
    client = _client(fault_proxy.endpoint_url)
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        client.put_object(Bucket=bucket, Key="never", Body=b"x")
    assert _keys(boto3_client, bucket) == []  # never reached S3
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0  # other operations pass
    stats = fault_proxy.stats.snapshot()
    assert stats["faults"] == {"reset": 1}
    assert (stats["requests"], stats["forwarded"]) == (2, 1)


def test_faults_count_independently_and_reset_wins(moto_server: MotoServer, bucket: str) -> None:
    with FaultProxy(moto_server.endpoint_url, reset_every=3, fail_every=2) as proxy:
        client = _client(proxy.endpoint_url)
        outcomes = []
        for _ in range(6):
            try:
                client.list_objects_v2(Bucket=bucket)
                outcomes.append("ok")
            except ClientError:
                outcomes.append("fail")
            except (ConnectionClosedError, EndpointConnectionError):
                outcomes.append("reset")
        assert outcomes == ["ok", "fail", "reset", "fail", "ok", "reset"]  # the 6th: both fire, reset wins
        assert proxy.stats.snapshot()["faults"] == {"fail": 2, "reset": 2}


def test_operations_are_named_as_s3_names_them() -> None:
    def op(method: str, path: str, query: str = "", **headers: str) -> str:
        import urllib.parse

        return s3_operation(method, path, urllib.parse.parse_qs(query, keep_blank_values=True), headers)

    assert op("POST", "/b/k", "uploads") == "CreateMultipartUpload"
    assert op("POST", "/b/k", "uploadId=u") == "CompleteMultipartUpload"
    assert op("PUT", "/b/k", "partNumber=1&uploadId=u") == "UploadPart"
    assert op("PUT", "/b/k", "partNumber=1&uploadId=u", **{"x-amz-copy-source": "b/s"}) == "UploadPartCopy"
    assert op("DELETE", "/b/k", "uploadId=u") == "AbortMultipartUpload"
    assert op("GET", "/b/k", "uploadId=u") == "ListParts"
    assert op("PUT", "/b/k/deeper") == "PutObject"
    assert op("PUT", "/b/k", **{"x-amz-copy-source": "b/s"}) == "CopyObject"
    assert (op("GET", "/b/k"), op("HEAD", "/b/k"), op("DELETE", "/b/k")) == (
        "GetObject",
        "HeadObject",
        "DeleteObject",
    )
    assert op("GET", "/b/k", "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=00") == "GetObject"  # presigned
    assert op("PUT", "/b/k", "x-id=PutObject") == "PutObject"
    assert op("GET", "/b", "list-type=2&prefix=a") == "ListObjectsV2"
    assert op("GET", "/b", "uploads&prefix=a") == "ListMultipartUploads"
    assert op("POST", "/b", "delete") == "DeleteObjects"
    assert (op("PUT", "/b"), op("HEAD", "/b"), op("GET", "/")) == (
        "CreateBucket",
        "HeadBucket",
        "ListBuckets",
    )


def test_a_predicate_sees_the_request(fault_proxy: FaultProxy, bucket: str) -> None:
    seen: list[Request] = []

    def only_key_x(request: Request) -> bool:
        seen.append(request)
        return request.path.endswith("/x") and request.headers.get("x-amz-meta-tag") == "1"

    fault_proxy.set_faults(fail_every=1, fail_when=only_key_x)
    client = _client(fault_proxy.endpoint_url)
    client.put_object(Bucket=bucket, Key="y", Body=b"", Metadata={"tag": "1"})
    client.put_object(Bucket=bucket, Key="x", Body=b"")
    with pytest.raises(ClientError, match="SlowDown"):
        client.put_object(Bucket=bucket, Key="x", Body=b"", Metadata={"tag": "1"})
    assert [r.path for r in seen] == [f"/{bucket}/y", f"/{bucket}/x", f"/{bucket}/x"]
    assert all(r.method == "PUT" and r.operation == "PutObject" for r in seen)


def test_stop_ends_every_thread_and_socket(moto_server: MotoServer, bucket: str) -> None:
    proxy = FaultProxy(moto_server.endpoint_url).start()
    port = proxy.port
    client = _client(proxy.endpoint_url)
    client.list_objects_v2(Bucket=bucket)  # a kept-alive connection, idle in the proxy
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    idle.connect()  # a connection that never sends a request
    assert len(proxy.threads()) >= 2
    started = time.monotonic()
    proxy.stop()
    assert time.monotonic() - started < 2
    assert proxy.threads() == []
    assert not [t for t in threading.enumerate() if t.name.startswith(f"faultproxy-{port}-")]
    assert idle.sock is not None and idle.sock.recv(1) == b""  # closed by the proxy
    idle.close()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    proxy.stop()  # idempotent
