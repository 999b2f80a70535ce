"""open_fs's own contract beyond the behaviour it shares with a mount (tests/test_fronts.py): eventual
mode's close and sync, no FUSE at all (pyfuse3 cannot even be imported), the crash-safe cache folder across
processes, stat results, symlinks, and fsspec's ``s3files://`` protocol read by pandas. On moto.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import s3files
from s3files.localserver import MotoServer
from s3files.openfs import FileSystemClosed


def keys(client: Any, bucket: str) -> list[str]:
    return sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_eventual_close_is_local_and_sync_uploads(
    moto_server: MotoServer, boto3_client: Any, bucket: str, tmp_path: Path
) -> None:
    """Eventual mode, as through a mount: close returns with the file durable in the cache folder (not in
    S3, listed and readable here, shown by status()); sync(path) uploads that path, close() the rest."""
    fs = s3files.open_fs(
        f"s3://{bucket}/out/", endpoint_url=moto_server.endpoint_url, consistency="eventual",
        writeback_delay=600, cache_dir=tmp_path / "cache",
    )  # fmt: skip
    with fs:
        fs.makedirs("a/b")
        with fs.open("a/b/one.txt", "w") as f:
            f.write("one")
        with fs.open("two.txt", "wb") as f:
            f.write(b"two")
        assert keys(boto3_client, bucket) == ["out/a/", "out/a/b/"]  # folder markers only
        assert fs.listdir("") == ["a", "two.txt"] and fs.read_bytes("a/b/one.txt") == b"one"
        waiting = fs.status()
        assert sorted((f["path"], f["acknowledged"]) for f in waiting["files"]) == [  # type: ignore[union-attr]
            ("a/b/one.txt", True),
            ("two.txt", True),
        ]
        assert fs.sync("a") == {}
        assert keys(boto3_client, bucket) == ["out/a/", "out/a/b/", "out/a/b/one.txt"]
    assert boto3_client.get_object(Bucket=bucket, Key="out/two.txt")["Body"].read() == b"two"
    with pytest.raises(FileSystemClosed):
        fs.listdir("")


def test_stat_results_and_symlinks(moto_server: MotoServer, boto3_client: Any, bucket: str, tmp_path: Path) -> None:
    boto3_client.put_object(Bucket=bucket, Key="d/f.bin", Body=b"x" * 3000, Metadata={"mode": "33184", "mtime": "1700000000"})
    with s3files.open_fs(f"s3://{bucket}", endpoint_url=moto_server.endpoint_url, cache_dir=tmp_path / "c") as fs:
        st = fs.stat("d/f.bin")
        assert (st.st_size, oct(st.st_mode), st.st_mtime_ns, st.st_mtime) == (3000, "0o100640", 1_700_000_000 * 10**9, 1.7e9)
        assert st.st_blocks == 6 and st.st_blksize == 1024 * 1024 and st.st_ino == fs.stat("/d/f.bin").st_ino
        fs.symlink("d/f.bin", "link")
        assert fs.islink("link") and fs.readlink("link") == "d/f.bin"
        assert fs.stat("link").st_size == 3000 and fs.read_bytes("link") == b"x" * 3000
        entries = {entry.name: entry for entry in fs.scandir("")}
        assert entries["link"].is_symlink() and entries["link"].is_file() and entries["d"].is_dir()
        with pytest.raises(io_unsupported()):
            fs.open("d/f.bin", "rb").fileno()
    with pytest.raises(s3files.S3FilesError) as failed:  # as a mount's start: the store's error, named
        s3files.open_fs("s3://no-such-bucket-here", endpoint_url=moto_server.endpoint_url, cache_dir=tmp_path / "c")
    assert failed.value.errno == errno.ENOENT and "no-such-bucket-here" in str(failed.value)


def io_unsupported() -> type[Exception]:
    import io

    return io.UnsupportedOperation


WRITER = """
import os, sys
sys.modules["pyfuse3"] = None  # as on AWS Lambda: no FUSE; importing it would fail
import s3files
source, endpoint, cache, name, end = sys.argv[1:]
fs = s3files.open_fs(source, endpoint_url=endpoint, cache_dir=cache, consistency="eventual", writeback_delay=600)
assert fs.read_bytes("in.txt") == b"input"
with fs.open(name, "w") as f:
    f.write("computed")
print("closed", flush=True)
if end == "crash":
    os._exit(0)  # dies before the write-back: no close(), no atexit
# else: the program ends without fs.close(); the atexit hook uploads
"""


def test_without_fuse_and_a_crash_recovered_by_the_next_open(
    moto_server: MotoServer, boto3_client: Any, bucket: str, tmp_path: Path
) -> None:
    """A process that cannot import pyfuse3 reads and writes through open_fs in eventual mode. Ending
    without close() uploads at exit; dying after the close, before the upload, leaves the file in the
    cache folder, and the next open_fs with that folder uploads what the close acknowledged (the
    recovery, as a remount's)."""
    boto3_client.put_object(Bucket=bucket, Key="job/in.txt", Body=b"input")
    cache = tmp_path / "cache"
    for name, end in (("at-exit.txt", "exit"), ("result.txt", "crash")):
        ran = subprocess.run(
            [sys.executable, "-c", WRITER, f"s3://{bucket}/job", moto_server.endpoint_url, str(cache), name, end],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert ran.returncode == 0 and ran.stdout == "closed\n", ran.stderr
    assert keys(boto3_client, bucket) == ["job/at-exit.txt", "job/in.txt"]
    with s3files.open_fs(f"s3://{bucket}/job", endpoint_url=moto_server.endpoint_url, cache_dir=cache) as fs:
        assert "1 uploaded" in str(fs.status()["recovery"])
        assert fs.read_bytes("result.txt") == b"computed"
    assert boto3_client.get_object(Bucket=bucket, Key="job/result.txt")["Body"].read() == b"computed"


def test_pandas_reads_and_writes_through_the_s3files_protocol(
    moto_server: MotoServer, boto3_client: Any, bucket: str, tmp_path: Path
) -> None:
    pandas = pytest.importorskip("pandas")
    fsspec = pytest.importorskip("fsspec")
    from s3files.fsspec import S3FilesFileSystem

    assert fsspec.get_filesystem_class("s3files") is S3FilesFileSystem  # the entry point
    boto3_client.put_object(Bucket=bucket, Key="data/rows.csv", Body=b"city,n\nParis,3\nOslo,4\nParis,5\n")
    # fsspec's own options (use_listings_cache) are fsspec's, the rest open_fs's
    options = {"endpoint_url": moto_server.endpoint_url, "cache_dir": str(tmp_path / "cache"), "use_listings_cache": False}
    try:
        frame = pandas.read_csv(f"s3files://{bucket}/data/rows.csv", storage_options=options)
        summary = frame.groupby("city")["n"].sum()
        assert summary.to_dict() == {"Oslo": 4, "Paris": 8}
        summary.to_csv(f"s3files://{bucket}/data/summary.csv", storage_options=options)
        assert boto3_client.get_object(Bucket=bucket, Key="data/summary.csv")["Body"].read() == b"city,n\nOslo,4\nParis,8\n"
        fs = fsspec.filesystem("s3files", **options)
        assert sorted(fs.ls(f"{bucket}/data", detail=False)) == [f"{bucket}/data/rows.csv", f"{bucket}/data/summary.csv"]
        assert fs.info(f"s3files://{bucket}/data/rows.csv")["size"] == 30
        fs.mv(f"{bucket}/data/summary.csv", f"{bucket}/report.csv")
        assert keys(boto3_client, bucket) == ["data/rows.csv", "report.csv"]
        with pytest.raises(FileNotFoundError):
            fs.info(f"{bucket}/data/summary.csv")
    finally:
        fsspec.filesystem("s3files", **options).close()
        S3FilesFileSystem.clear_instance_cache()


def test_pillow_saves_and_opens_an_image(moto_server: MotoServer, boto3_client: Any, bucket: str, tmp_path: Path) -> None:
    image = pytest.importorskip("PIL.Image")
    with s3files.open_fs(f"s3://{bucket}", endpoint_url=moto_server.endpoint_url, cache_dir=tmp_path / "c") as fs:
        with fs.open("red.png", "wb") as f:
            image.new("RGB", (64, 32), (255, 0, 0)).save(f, format="PNG")
        with fs.open("red.png", "rb") as f, image.open(f) as opened:
            assert opened.size == (64, 32) and opened.getpixel((5, 5)) == (255, 0, 0)


def test_threads_share_one_open_fs(moto_server: MotoServer, boto3_client: Any, bucket: str, tmp_path: Path) -> None:
    """Calls from several threads run concurrently on the file system's own thread."""
    from concurrent.futures import ThreadPoolExecutor

    with s3files.open_fs(f"s3://{bucket}", endpoint_url=moto_server.endpoint_url, cache_dir=tmp_path / "c") as fs:
        fs.mkdir("t")

        def write_and_read(n: int) -> bytes:
            fs.write_bytes(f"t/{n}.bin", bytes([n]) * (n * 1000 + 1))
            return fs.read_bytes(f"t/{n}.bin")

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(write_and_read, range(16)))
        assert [len(r) for r in results] == [n * 1000 + 1 for n in range(16)]
        assert sorted(fs.listdir("t"), key=lambda name: int(name.split(".")[0])) == [f"{n}.bin" for n in range(16)]
        for _ in fs.walk(""):
            pass
        # every reference a walk, an open or a listing took was given back: only the root stays known
        assert fs.statistics()["inodes"] <= 2
    assert len(keys(boto3_client, bucket)) == 17  # and t/


def test_unbuffered_reads_and_writes_larger_than_a_request(
    moto_server: MotoServer, boto3_client: Any, bucket: str, tmp_path: Path
) -> None:
    """A raw file (buffering=0) hands the core reads and writes of at most 1 MiB, as the kernel's FUSE
    requests, and still fills a large buffer in one readinto and writes a large block in one write."""
    data = bytes(range(256)) * (10 * 1024 + 7)  # 2.5 MiB and a bit
    with s3files.open_fs(f"s3://{bucket}", endpoint_url=moto_server.endpoint_url, cache_dir=tmp_path / "c") as fs:
        with fs.open("big.bin", "wb", buffering=0) as f:
            assert f.write(memoryview(data)) == len(data)
            assert f.tell() == len(data)
        with fs.open("big.bin", "rb", buffering=0) as f:
            buffer = bytearray(len(data) + 100)
            assert f.readinto(buffer) == len(data) and buffer[: len(data)] == data
            assert f.readinto(buffer) == 0
        with fs.open("big.bin", "ab", buffering=0) as f:
            assert f.write(b"end") == 3 and f.tell() == len(data) + 3
    assert boto3_client.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == data + b"end"


AS_NOBODY = """
import json, os, sys
import s3files
with s3files.open_fs(sys.argv[1], endpoint_url=sys.argv[2], cache_dir=sys.argv[3] + "-root") as warm:
    warm.stat("root.txt")  # (every module imported while the interpreter's files are readable)
os.setgroups([]); os.setegid(65534); os.seteuid(65534)
fs = s3files.open_fs(sys.argv[1], endpoint_url=sys.argv[2], cache_dir=sys.argv[3], uid=65534, gid=65534)

def code(action):
    try:
        action()
    except OSError as exc:
        return exc.errno
    return 0

print(json.dumps({
    "chmod theirs": code(lambda: fs.chmod("root.txt", 0o777)),
    "chown theirs to me": code(lambda: fs.chown("root.txt", 65534, -1)),
    "utime theirs to a time": code(lambda: fs.utime("root.txt", ns=(1, 1))),
    "utime theirs to now": code(lambda: fs.utime("root.txt")),
    "utime theirs writable to now": code(lambda: fs.utime("open.txt")),
    "chmod mine": code(lambda: fs.chmod("mine.txt", 0o2640)),
    "chmod mine in another group": code(lambda: fs.chmod("group0.txt", 0o2640)),
    "give mine away": code(lambda: fs.chown("mine.txt", 0, -1)),
    "chgrp mine to my group": code(lambda: fs.chown("mine.txt", -1, 65534)),
    "chgrp mine to another": code(lambda: fs.chown("mine.txt", -1, 0)),
    "modes": [oct(fs.stat(name).st_mode) for name in ("mine.txt", "group0.txt")],
}, sort_keys=True))
fs.close()
"""


def test_who_may_change_attributes_as_linux_decides(moto_server: MotoServer, boto3_client: Any, bucket: str) -> None:
    """open_fs has no kernel to check who may chmod, chown or utime: it decides as Linux does (EPERM
    for someone else's file, EACCES for utime to now without write access), here as effective uid 65534
    (the interpreter's own files are root's: it drops only its effective ids, after importing)."""
    import json
    import os
    import shutil
    import tempfile

    boto3_client.put_object(Bucket=bucket, Key="root.txt", Body=b"r", Metadata={"uid": "0", "gid": "0", "mode": "33188"})
    boto3_client.put_object(Bucket=bucket, Key="open.txt", Body=b"o", Metadata={"uid": "0", "gid": "0", "mode": "33206"})
    boto3_client.put_object(Bucket=bucket, Key="mine.txt", Body=b"m")  # no uid: the mount's --uid
    boto3_client.put_object(Bucket=bucket, Key="group0.txt", Body=b"g", Metadata={"uid": "65534", "gid": "0"})
    home = tempfile.mkdtemp(prefix="s3files-nobody-")
    try:
        # botocore reads its data files when a client is made, after the drop: a checkout in a folder
        # only root may enter (a CI's private clone) hides them, so uid 65534 gets a copy of those an S3
        # client needs, on botocore's own search path (AWS_DATA_PATH)
        import botocore

        data, models = Path(botocore.__file__).parent / "data", Path(home) / "models"
        shutil.copytree(data / "s3", models / "s3")
        for name in ("endpoints.json", "partitions.json", "sdk-default-configuration.json", "_retry.json"):
            shutil.copy(data / name, models / name)
        for path in (Path(home), *Path(home).rglob("*")):
            os.chown(path, 65534, 65534)
        env = {**os.environ, "HOME": home, "AWS_DATA_PATH": str(models)}
        ran = subprocess.run(
            [sys.executable, "-c", AS_NOBODY, f"s3://{bucket}", moto_server.endpoint_url, f"{home}/cache"],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )  # fmt: skip
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == {
        "chmod theirs": errno.EPERM,
        "chown theirs to me": errno.EPERM,
        "utime theirs to a time": errno.EPERM,
        "utime theirs to now": errno.EACCES,
        "utime theirs writable to now": 0,
        "chmod mine": 0,
        "chmod mine in another group": 0,
        "give mine away": errno.EPERM,
        "chgrp mine to my group": 0,
        "chgrp mine to another": errno.EPERM,
        "modes": ["0o102640", "0o100640"],  # set-group-ID only for a member of the file's group
    }


def test_s3files_status_shows_an_open_fs(moto_server: MotoServer, bucket: str, tmp_path: Path) -> None:
    """An open_fs writes its cache folder's status.json as a mount's daemon does (every second while it
    changes), so ``s3files status CACHE_FOLDER`` shows what it has not uploaded; removed at close."""
    import json
    import os
    import time

    from daemons import S3FILES

    def shown(folder: Path, *extra: str) -> str:
        done = subprocess.run([S3FILES, "status", str(folder), *extra], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    with s3files.open_fs(
        f"s3://{bucket}/", endpoint_url=moto_server.endpoint_url, consistency="eventual", writeback_delay=600,
        cache_dir=tmp_path / "cache",
    ) as fs:  # fmt: skip
        fs.write_bytes("w.txt", b"waiting")
        folder = Path(str(fs.status()["cache_folder"]))
        deadline = time.monotonic() + 10
        while True:
            status = json.loads(shown(folder, "--json"))
            if [f["path"] for f in status.get("files", [])] == ["w.txt"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert (status["front"], status["pid"], status["running"]) == ("open_fs", os.getpid(), True), status
        assert [(f["path"], f["bytes"]) for f in status["files"]] == [("w.txt", 7)]
        text = shown(folder)
        assert f"s3://{bucket}/ through open_fs: daemon pid {os.getpid()} running" in text and "w.txt" in text
    assert not (folder / "status.json").exists()
    after = json.loads(shown(folder, "--json"))
    assert (after["running"], after["files"], after["kept"]) == (False, [], [])
