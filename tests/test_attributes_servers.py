"""True attributes after a remount, each test with mounts of its own (on moto and Ceph RGW): a
mount without a shared cache folder HEADs what its listing shows (test_attributes.py has the rest; pyfuse3
allows one mount per process at a time, so these do not share that module's mount)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import S3Server
from test_attributes import TOUCHED, touch_five
from test_fuse import mount


@pytest.mark.parametrize("drop", [False, True], ids=["listed", "after-drop-caches"])
def test_touch_m_mtimes_survive_a_remount_without_a_cache_folder(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, drop: bool
) -> None:
    """The same without a shared cache folder (each mount a private one): the listing HEADs the files."""
    if drop and s3_server.kind != "moto":
        pytest.skip("one server is enough for the drop_caches variant")
    with mount(s3_server, s3_bucket, tmp_path / "m"):
        touch_five(tmp_path / "m/touched")
    with mount(s3_server, s3_bucket, tmp_path / "m"):
        out = subprocess.run(["ls", "-l", "--time-style=+%s", str(tmp_path / "m/touched")], capture_output=True, text=True)
        assert [line.split()[5] for line in out.stdout.splitlines()[1:]] == [str(TOUCHED)] * 5, out.stdout
        if drop:
            Path("/proc/sys/vm/drop_caches").write_text("2")
        assert [os.stat(tmp_path / f"m/touched/t{i}").st_mtime for i in range(5)] == [TOUCHED] * 5
