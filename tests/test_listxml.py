"""The ListObjectsV2 parser (store/listxml.py) gives what botocore's parser gives, for every field S3 lists."""

from __future__ import annotations

import asyncio
from typing import Any

import botocore.session
import pytest
from botocore import parsers

from s3files.store.listxml import FastListParsers, parse_list
from s3files.store.wire import parse_timestamp

OUTPUT = botocore.session.get_session().get_service_model("s3").operation_model("ListObjectsV2").output_shape


def _body(contents: str, extra: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        "<Name>b</Name><Prefix>d%2F</Prefix><KeyCount>3</KeyCount><MaxKeys>1000</MaxKeys>"
        "<Delimiter>/</Delimiter><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
        f"<ContinuationToken>t0</ContinuationToken><NextContinuationToken>t1==</NextContinuationToken>{extra}"
        f"{contents}"
        "<CommonPrefixes><Prefix>d%2Fsub%2F</Prefix></CommonPrefixes>"
        "<CommonPrefixes><Prefix>d%2Fx%26y%2F</Prefix></CommonPrefixes>"
        "</ListBucketResult>"
    ).encode()


ITEMS = (
    "<Contents><Key>d%2Fa%20b</Key><LastModified>2026-12-07T12:00:00.123Z</LastModified>"
    "<ETag>&quot;0cc175b9c0f1b6a831c399e269772661&quot;</ETag><Size>1</Size><StorageClass>STANDARD</StorageClass>"
    "<Owner><ID>o</ID><DisplayName>O</DisplayName></Owner><Type>Normal</Type></Contents>"
    "<Contents><Key>d%2Fc&amp;d%0A</Key><LastModified>2026-01-01T00:00:00Z</LastModified>"
    "<ETag>&quot;e-2&quot;</ETag><Size>12345678901</Size><ChecksumAlgorithm>CRC32</ChecksumAlgorithm>"
    "<ChecksumAlgorithm>SHA256</ChecksumAlgorithm><ChecksumType>FULL_OBJECT</ChecksumType></Contents>"
)


def _botocore(body: bytes) -> Any:
    parser = parsers.RestXMLParser(timestamp_parser=parse_timestamp)
    return parser.parse({"body": body, "headers": {"x-amz-request-id": "r"}, "status_code": 200}, OUTPUT)


def _ours(body: bytes) -> Any:
    factory = FastListParsers()
    factory.set_parser_defaults(timestamp_parser=parse_timestamp)
    parser = factory.create_parser("rest-xml")
    response = {"body": body, "headers": {"x-amz-request-id": "r"}, "status_code": 200}
    return asyncio.run(parser.parse(response, OUTPUT))


@pytest.mark.parametrize("contents", [ITEMS, ""], ids=["objects", "prefixes-only"])
def test_a_listing_parses_as_botocore_parses_it(contents: str) -> None:
    body = _body(contents)
    ours, theirs = _ours(body), _botocore(body)
    theirs["ResponseMetadata"]["HTTPStatusCode"] = 200
    theirs["ResponseMetadata"]["HTTPHeaders"] = {"x-amz-request-id": "r"}
    assert ours == theirs
    assert parse_list(body, parse_timestamp) is not None  # (parsed by ours, not handed back to botocore)
    if contents:
        assert [item["Key"] for item in ours["Contents"]] == ["d%2Fa%20b", "d%2Fc&d%0A"]  # decoded later, by botocore
        assert ours["Contents"][1]["Size"] == 12345678901


def test_what_it_does_not_know_goes_to_botocore() -> None:
    restore = ITEMS.replace("<Type>Normal</Type>", "<RestoreStatus><IsRestoreInProgress>true</IsRestoreInProgress></RestoreStatus>")
    for body in (_body(restore), b"<not xml", b"<Other/>"):
        assert parse_list(body, parse_timestamp) is None
    ours, theirs = _ours(_body(restore)), _botocore(_body(restore))
    assert ours["Contents"] == theirs["Contents"]
    assert ours["Contents"][0]["RestoreStatus"] == {"IsRestoreInProgress": True}
