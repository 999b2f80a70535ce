"""The library API through a real mount daemon against moto's server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import s3files
from s3files.fuse.mount import mount_entry
from s3files.localserver import MotoServer

pytestmark = pytest.mark.fuse


def test_library_mount_reads_writes_and_unmounts(
    moto_server: MotoServer, boto3_client: Any, bucket: str, tmp_path: Path
) -> None:
    boto3_client.put_object(Bucket=bucket, Key="in/data.csv", Body=b"a,b\n1,2\n")
    with s3files.mount(f"s3://{bucket}/in", tmp_path / "m", endpoint_url=moto_server.endpoint_url) as root:
        assert (root / "data.csv").read_text() == "a,b\n1,2\n"
        (root / "out.csv").write_text("done\n")
        assert mount_entry(root) is not None
    assert mount_entry(tmp_path / "m") is None
    assert boto3_client.get_object(Bucket=bucket, Key="in/out.csv")["Body"].read() == b"done\n"


def test_library_mount_error_is_one_line(moto_server: MotoServer, tmp_path: Path) -> None:
    endpoint = moto_server.endpoint_url
    with pytest.raises(s3files.MountError) as failed, s3files.mount("s3://missing-bucket-x", tmp_path / "m", endpoint_url=endpoint):
        pass
    assert "missing-bucket-x" in str(failed.value) and "\n" not in str(failed.value)
