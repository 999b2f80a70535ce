"""File times: nanosecond precision end to end, their s3fs-compatible form in x-amz-meta-*, and what
moves them (docs/SEMANTICS.md, Attributes). The FUSE tests run on moto only (the RGW run of the same
calls is ``test_times_on_rgw``): times are ours, not the server's, except LastModified."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import S3Server
from test_fuse import mount, put

from s3files.core.times import format_time, ns_of_seconds, parse_time

NS = 10**9


# -- the text form (times.py) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (1_700_000_000 * NS, "1700000000"),
        (1_700_000_000 * NS + 200_000_000, "1700000000.200000000"),
        (1_700_000_000 * NS + 1, "1700000000.000000001"),
        (0, "0"),
        (-1_500_000_000, "-2.500000000"),  # s3fs's timespec: tv_sec -2, tv_nsec 5e8
        (-315_619_140 * NS, "-315619140"),
    ],
)
def test_times_are_written_as_s3fs_writes_a_timespec_and_read_back_exactly(ns: int, text: str) -> None:
    assert format_time(ns) == text
    assert parse_time(text) == ns


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1700000000.2", 1_700_000_000 * NS + 200_000_000),  # a float's text, not 2 ns
        ("1600000000.5", 1_600_000_000 * NS + 500_000_000),
        ("1700000000.123456", 1_700_000_000 * NS + 123_456_000),
        (" 1700000000.5 ", 1_700_000_000 * NS + 500_000_000),
        ("1.7e9", 1_700_000_000 * NS),
        ("-86400", -86_400 * NS),
        ("1500000000.250000000", 1_500_000_000 * NS + 250_000_000),  # what s3files wrote before (:.9f)
    ],
)
def test_float_forms_are_read_as_their_decimal_value(text: str, ns: int) -> None:
    assert parse_time(text) == ns


@pytest.mark.parametrize("text", ["", "abc", "1,5", "nan", "inf", "-inf", "1e30", "1700000000.2.3", "0x10"])
def test_what_is_not_a_time_is_none(text: str) -> None:
    assert parse_time(text) is None


def test_last_modified_seconds_become_nanoseconds_without_float_noise() -> None:
    assert ns_of_seconds(1_500_000_000.25) == 1_500_000_000_250_000_000
    assert ns_of_seconds(1_700_000_000.0) == 1_700_000_000 * NS


# -- through a real mount (moto) ------------------------------------------------------------------------


def stat_ns(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_atime_ns, st.st_ctime_ns


def touch(*args: str) -> None:
    subprocess.run(["touch", *args], check=True)


def test_ns_times_round_trip_through_stat_and_a_remount(
    moto_server: Any, boto3_client: Any, bucket: str, tmp_path: Path
) -> None:
    """touch -d with nanoseconds; an s3fs float mtime and an s3fs timespec mtime read exactly."""
    server = S3Server("moto", moto_server.endpoint_url)
    put(boto3_client, bucket, "s3fs-float", b"f", mtime="1700000000.2")
    put(boto3_client, bucket, "s3fs-timespec", b"t", mtime="1700000000.000000007", ctime="1700000001")
    root = tmp_path / "m"
    # --allow-other: every entry carries its object's own metadata (until listings do so by default)
    with mount(server, bucket, root, allow_other=True):
        (root / "f").write_bytes(b"x")
        touch("-m", "-d", "@1700000000.123456789", str(root / "f"))
        assert os.stat(root / "f").st_mtime_ns == 1_700_000_000_123_456_789
        assert os.stat(root / "s3fs-float").st_mtime_ns == 1_700_000_000_200_000_000
        assert os.stat(root / "s3fs-timespec").st_mtime_ns == 1_700_000_000_000_000_007
    meta = boto3_client.head_object(Bucket=bucket, Key="f")["Metadata"]
    assert meta["mtime"] == "1700000000.123456789"
    with mount(server, bucket, root, allow_other=True):
        assert os.stat(root / "f").st_mtime_ns == 1_700_000_000_123_456_789
        assert os.stat(root / "s3fs-timespec").st_ctime_ns == 1_700_000_001 * NS
