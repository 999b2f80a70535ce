"""File times: nanosecond precision end to end, their s3fs-compatible form in x-amz-meta-*, and what
moves them (docs/SEMANTICS.md, Attributes). The FUSE tests run on moto only (the RGW run of the same
calls is ``test_times_on_rgw``): times are ours, not the server's, except LastModified."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
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
    with mount(server, bucket, root):
        (root / "f").write_bytes(b"x")
        touch("-m", "-d", "@1700000000.123456789", str(root / "f"))
        assert os.stat(root / "f").st_mtime_ns == 1_700_000_000_123_456_789
        assert os.stat(root / "s3fs-float").st_mtime_ns == 1_700_000_000_200_000_000
        assert os.stat(root / "s3fs-timespec").st_mtime_ns == 1_700_000_000_000_000_007
    meta = boto3_client.head_object(Bucket=bucket, Key="f")["Metadata"]
    assert meta["mtime"] == "1700000000.123456789"
    with mount(server, bucket, root):
        assert os.stat(root / "f").st_mtime_ns == 1_700_000_000_123_456_789
        assert os.stat(root / "s3fs-timespec").st_ctime_ns == 1_700_000_001 * NS


WRITES = ("put", "copy", "create_multipart", "upload_part", "upload_part_copy", "complete_multipart", "delete")


def writes(fs: Any) -> dict[str, int]:
    """The write requests the mount sent since its counters were last reset."""
    counts = fs.store.requests.snapshot()
    return {op: n for op, n in counts.items() if op in WRITES and n}


def test_written_data_gets_the_ns_time_of_its_last_write_through_close_and_remount(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    """The mtime is the time of the last write, to the nanosecond (not LastModified's whole second):
    the same value while open, after close and after a remount; two writes within one second give two
    increasing mtimes; a close without a write changes nothing. A file streamed while written (its
    upload created before the last write) gets its final mtime too. On moto and RGW."""
    root = tmp_path / "m"
    with mount(s3_server, s3_bucket, root, upload_part_size=5 * 2**20) as fs:
        with open(root / "a", "wb") as f:
            f.write(b"one")
            f.flush()
            while_open = os.fstat(f.fileno()).st_mtime_ns
        first = os.stat(root / "a").st_mtime_ns
        assert first == while_open and first % NS != 0  # 1 in 10^9 that a write falls on a whole second
        with open(root / "a", "ab") as f:
            f.write(b"two")
        second = os.stat(root / "a").st_mtime_ns
        assert second > first and second - first < NS  # within one second, and still told apart
        fs.store.requests.reset()
        with open(root / "a", "r+b"):
            pass  # opened for writing, closed without a write
        assert os.stat(root / "a").st_mtime_ns == second and writes(fs) == {}
        fs.store.requests.reset()
        with open(root / "big", "wb") as f:  # part 1 (5 MiB) is sent while the program goes on writing
            f.write(bytes(6 * 2**20))
            f.flush()
            time.sleep(0.3)
            f.write(b"end")
        big = os.stat(root / "big").st_mtime_ns
        assert writes(fs)["copy"] == 1  # the upload's metadata was of an earlier write: set once more
    assert s3_client.head_object(Bucket=s3_bucket, Key="a")["Metadata"]["mtime"] == format_time(second)
    with mount(s3_server, s3_bucket, root):
        assert os.stat(root / "a").st_mtime_ns == second
        assert os.stat(root / "big").st_mtime_ns == big
        assert (root / "a").read_bytes() == b"onetwo"


def test_make_sees_an_object_built_after_its_source_as_up_to_date(
    moto_server: Any, bucket: str, tmp_path: Path
) -> None:
    """make compares mtimes: with LastModified's whole seconds it rebuilt an object that was up to date
    (built in the same second as its source, whose mtime then read as later) and missed a rebuild when
    two edits fell in the same second."""
    server = S3Server("moto", moto_server.endpoint_url)
    root = tmp_path / "m"

    def make(*args: str) -> int:
        if shutil.which("make"):
            return subprocess.run(["make", "-s", "-C", str(root), *args], capture_output=True).returncode
        # no make here: its rule, "out is up to date unless src is newer", in Python
        out, src = root / "out", root / "src"
        stale = not out.exists() or os.stat(src).st_mtime_ns > os.stat(out).st_mtime_ns
        if "-q" in args:
            return int(stale)
        if stale:
            shutil.copyfile(src, out)
        return 0

    with mount(server, bucket, root):
        (root / "Makefile").write_text("out: src\n\tcp src out\n")
        (root / "src").write_text("v1\n")
        assert make("out") == 0 and (root / "out").read_text() == "v1\n"
        assert make("-q", "out") == 0  # up to date
        (root / "src").write_text("v2\n")  # an edit within the same second
        assert make("-q", "out") == 1  # out of date
        assert make("out") == 0 and (root / "out").read_text() == "v2\n"
    with mount(server, bucket, root):
        assert make("-q", "out") == 0  # still up to date after a remount


def test_atime_set_explicitly_survives_a_remount_and_a_read_writes_nothing(
    moto_server: Any, bucket: str, tmp_path: Path
) -> None:
    server = S3Server("moto", moto_server.endpoint_url)
    root = tmp_path / "m"
    with mount(server, bucket, root) as fs:
        (root / "f").write_bytes(b"data")
        mtime = os.stat(root / "f").st_mtime_ns
        touch("-a", "-d", "@1600000000.123456789", str(root / "f"))
        st = os.stat(root / "f")
        assert (st.st_atime_ns, st.st_mtime_ns) == (1_600_000_000_123_456_789, mtime)
    with mount(server, bucket, root) as fs:
        fs.store.requests.reset()
        assert (root / "f").read_bytes() == b"data"
        assert (root / "f").read_bytes() == b"data"
        assert writes(fs) == {}  # reads never turn into writes (no atime update)
        st = os.stat(root / "f")
        assert (st.st_atime_ns, st.st_mtime_ns) == (1_600_000_000_123_456_789, mtime)


def test_ctime_moves_on_chmod_chown_write_and_rename(moto_server: Any, bucket: str, tmp_path: Path) -> None:
    server = S3Server("moto", moto_server.endpoint_url)
    root = tmp_path / "m"
    with mount(server, bucket, root):
        (root / "f").write_bytes(b"x")
        ctimes = [os.stat(root / "f").st_ctime_ns]
        os.chmod(root / "f", 0o600)
        ctimes.append(os.stat(root / "f").st_ctime_ns)
        os.chown(root / "f", 123, 456)
        ctimes.append(os.stat(root / "f").st_ctime_ns)
        with open(root / "f", "ab") as f:
            f.write(b"y")
        ctimes.append(os.stat(root / "f").st_ctime_ns)
        os.rename(root / "f", root / "g")
        ctimes.append(os.stat(root / "g").st_ctime_ns)
        assert ctimes == sorted(set(ctimes)), ctimes  # strictly increasing
        mtime = os.stat(root / "g").st_mtime_ns
        assert mtime == ctimes[3]  # the write moved both; chmod, chown and rename only the ctime
    with mount(server, bucket, root):
        st = os.stat(root / "g")  # the rename's ctime is not stored (docs/SEMANTICS.md); the write's is
        assert (st.st_mtime_ns, st.st_ctime_ns, st.st_uid, st.st_mode & 0o777) == (mtime, ctimes[3], 123, 0o600)


def test_a_folders_mtime_moves_when_an_entry_is_created_removed_or_renamed(
    moto_server: Any, bucket: str, tmp_path: Path
) -> None:
    """At once in memory; creating a file is one PUT, and a folder's marker follows a second later at
    most (tests/test_folder_markers.py), so at most one PUT more per folder and second."""
    server = S3Server("moto", moto_server.endpoint_url)
    root = tmp_path / "m"
    with mount(server, bucket, root) as fs:
        os.mkdir(root / "d")
        os.mkdir(root / "e")
        seen = {name: os.stat(root / name).st_mtime_ns for name in ("d", "e")}

        def moved(folder: str = "d") -> None:
            st = os.stat(root / folder)
            assert st.st_mtime_ns == st.st_ctime_ns > seen[folder], (folder, st, seen)
            seen[folder] = st.st_mtime_ns

        fs.store.requests.reset()
        (root / "d/f").write_bytes(b"x")
        assert writes(fs) in ({"put": 1}, {"put": 2})  # the file's (and on a slow machine d/'s already)
        moved()
        os.rename(root / "d/f", root / "d/g")
        moved()
        os.rename(root / "d/g", root / "e/g")
        moved()
        moved("e")
        os.unlink(root / "e/g")
        moved("e")
        os.symlink("target", root / "d/link")
        moved()
        os.mkdir(root / "d/sub")
        moved()
        os.rmdir(root / "d/sub")
        moved()
        root_before = os.stat(root).st_mtime_ns
        (root / "top").write_bytes(b"t")
        assert os.stat(root).st_mtime_ns > root_before


def test_open_with_o_trunc_moves_the_mtime_also_of_an_empty_file(
    moto_server: Any, bucket: str, tmp_path: Path
) -> None:
    server = S3Server("moto", moto_server.endpoint_url)
    root = tmp_path / "m"
    with mount(server, bucket, root):
        (root / "empty").write_bytes(b"")
        before = os.stat(root / "empty").st_mtime_ns
        with open(root / "empty", "wb"):  # O_TRUNC, no write (as `: > empty`)
            pass
        after = os.stat(root / "empty").st_mtime_ns
        assert after > before
    with mount(server, bucket, root):
        assert os.stat(root / "empty").st_mtime_ns == after
