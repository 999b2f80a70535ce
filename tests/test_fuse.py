"""Through a real FUSE mount (/dev/fuse), against moto's S3 server and again against Ceph RadosGW (127.0.0.1).

Request budgets are read from the real store's counting hook (``S3Store.requests``, counted per HTTP
request by a botocore event hook) because the mount runs on a thread of this process.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import random
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import S3Server
from test_core import spy_gets

from s3files.core.fs import FileSystem
from s3files.fuse.mount import mounted_in_thread
from s3files.options import MIB, MountOptions, Source, StoreOptions
from s3files.store.base import ObjectStore
from s3files.store.s3 import open_s3_store

pytestmark = pytest.mark.fuse


@contextlib.contextmanager
def mount(
    server: S3Server, bucket: str, mountpoint: Path, prefix: str = "", spy: list | None = None, **kw: Any
) -> Iterator[FileSystem]:
    """Mount ``bucket`` at ``mountpoint`` on a thread; ``spy`` collects (start, end) of every ranged GET
    (the open's GET of a file's first bytes too)."""
    mountpoint.mkdir(exist_ok=True)
    opts = MountOptions(
        source=Source(bucket, prefix),
        mountpoint=mountpoint,
        store=StoreOptions(endpoint_url=server.endpoint_url),
        **kw,
    )

    @contextlib.asynccontextmanager
    async def open_store() -> AsyncIterator[ObjectStore]:
        async with open_s3_store(bucket, endpoint_url=server.endpoint_url) as store:
            if spy is not None:
                spy_gets(store, spy)
            yield store

    with mounted_in_thread(opts, open_store) as fs:
        yield fs
    assert not os.path.ismount(mountpoint)


def put(client: Any, bucket: str, key: str, body: bytes, **meta: str) -> None:
    client.put_object(Bucket=bucket, Key=key, Body=body, Metadata=meta)


def put_many(client: Any, bucket: str, objects: dict[str, bytes]) -> None:
    """Seed many objects with 16 requests in flight (set-up only; the servers are the slow part)."""
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: put(client, bucket, *item), objects.items()))


def test_nested_tree_contents_and_stat(s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path) -> None:
    tree = {
        "a.txt": b"alpha",
        "docs/readme.md": b"# hi\n",
        "docs/deep/er/still/file.bin": bytes(range(256)) * 10,
        "docs/deep/other.txt": b"",
        "img/x.png": b"\x89PNG" + b"\0" * 100,
        "empty-dir/": b"",
    }
    for key, body in tree.items():
        put(s3_client, s3_bucket, key, body)
    put(s3_client, s3_bucket, "meta.txt", b"12345", mtime="1600000000.5", mode=str(stat.S_IFREG | 0o600))
    with mount(s3_server, s3_bucket, tmp_path / "m") as fs:
        root = tmp_path / "m"
        # stat before any listing: a HEAD supplies x-amz-meta-mtime and mode
        st = os.stat(root / "meta.txt")
        assert (st.st_size, st.st_mtime, stat.S_IMODE(st.st_mode)) == (5, 1600000000.5, 0o600)
        found = {}
        for dirpath, _dirnames, filenames in os.walk(root):
            for name in filenames:
                full = Path(dirpath) / name
                found[str(full.relative_to(root))] = full.read_bytes()
        expected = {k: v for k, v in tree.items() if not k.endswith("/")}
        expected["meta.txt"] = b"12345"
        assert found == expected
        assert (root / "empty-dir").is_dir() and os.listdir(root / "empty-dir") == []
        # sizes and mtimes: LastModified for objects without x-amz-meta-mtime
        head = s3_client.head_object(Bucket=s3_bucket, Key="docs/readme.md")
        st = os.stat(root / "docs/readme.md")
        assert st.st_size == 5
        assert abs(st.st_mtime - head["LastModified"].timestamp()) < 1.0
        assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == os.getuid()
        assert stat.S_IMODE(os.stat(root / "docs").st_mode) == 0o755
        with pytest.raises(FileNotFoundError):
            os.stat(root / "docs/missing")
        with pytest.raises(NotADirectoryError):
            os.listdir(root / "a.txt")
        assert fs.statistics()["open_files"] == 0


def test_folder_of_1200_entries(s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path) -> None:
    names = [f"item-{i:04d}.dat" for i in range(1200)]
    put_many(s3_client, s3_bucket, {f"many/{name}": b"x" * (i % 13) for i, name in enumerate(names)})
    # paging and sizes only: fast attributes (true attributes HEAD the 1,200 files: test_core's 2,500)
    with mount(s3_server, s3_bucket, tmp_path / "m", metadata_ttl=60.0, listing_attributes="fast"):
        listed = sorted(os.listdir(tmp_path / "m/many"))
        assert listed == names
        sizes = {e.name: e.stat().st_size for e in os.scandir(tmp_path / "m/many")}
        assert all(sizes[name] == i % 13 for i, name in enumerate(names))


def test_ls_l_of_2500_entries_costs_3_lists_and_stat_after_list_is_free(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    put_many(s3_client, s3_bucket, {f"big/f{i:05d}": b"" for i in range(2500)})
    # the cheap path (--listing-attributes=fast); true attributes' cost: test_permissions, test_attributes
    with mount(s3_server, s3_bucket, tmp_path / "m", metadata_ttl=60.0, listing_attributes="fast") as fs:
        os.stat(tmp_path / "m/big")
        fs.store.requests.reset()
        out = subprocess.run(["ls", "-l", str(tmp_path / "m/big")], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert len(out.stdout.splitlines()) == 2501  # "total" + 2500 entries
        assert fs.store.requests.snapshot() == {"list": 3}
        fs.store.requests.reset()
        for i in (0, 1234, 2499):
            assert os.stat(tmp_path / f"m/big/f{i:05d}").st_size == 0
        assert fs.store.requests.total() == 0


def test_64_mib_sha256_and_no_overlapping_gets(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    data = random.Random(7).randbytes(64 * MIB)
    put(s3_client, s3_bucket, "big.bin", data)
    spans: list[tuple[int, int]] = []
    with mount(s3_server, s3_bucket, tmp_path / "m", spy=spans) as fs:
        digest = hashlib.sha256()
        with open(tmp_path / "m/big.bin", "rb") as f:
            for chunk in iter(lambda: f.read(4 * MIB), b""):
                digest.update(chunk)
        assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
        ordered = sorted(spans)
        for (s1, e1), (s2, e2) in itertools.pairwise(ordered):
            assert e1 <= s2, f"overlapping GETs {s1}-{e1} and {s2}-{e2}"
        assert sum(e - s for s, e in ordered) == len(data)
        assert fs.store.requests["get"] == len(spans) <= 16


def test_unaligned_partial_reads(s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path) -> None:
    data = random.Random(8).randbytes(3 * MIB + 17)
    put(s3_client, s3_bucket, "f.bin", data)
    rng = random.Random(9)
    with mount(s3_server, s3_bucket, tmp_path / "m"):
        fd = os.open(tmp_path / "m/f.bin", os.O_RDONLY)
        try:
            for _ in range(40):
                off = rng.randrange(0, len(data) + 10)
                size = rng.choice([1, 7, 4095, 4097, 65537, 300_001])
                assert os.pread(fd, size, off) == data[off : off + size]
            assert os.pread(fd, 100, len(data) - 3) == data[-3:]
        finally:
            os.close(fd)


def test_awkward_keys_are_hidden_not_fatal(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    for key in ["ok.txt", "a//b", "dots/./x", "dots/../y", "l/" + "n" * 256, "dup", "dup/inner", "sp ace/ü.txt"]:
        put(s3_client, s3_bucket, key, b"1")
    with mount(s3_server, s3_bucket, tmp_path / "m"):
        root = tmp_path / "m"
        assert sorted(os.listdir(root)) == ["a", "dots", "dup", "l", "ok.txt", "sp ace"]
        assert os.listdir(root / "a") == [] and os.listdir(root / "dots") == [] and os.listdir(root / "l") == []
        assert (root / "dup").is_dir() and os.listdir(root / "dup") == ["inner"]
        assert (root / "sp ace/ü.txt").read_bytes() == b"1"
        with pytest.raises(FileNotFoundError):
            os.stat(root / "dots/..x")
        assert (root / "ok.txt").read_bytes() == b"1"  # the mount is still alive


def test_prefix_mount(s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path) -> None:
    put(s3_client, s3_bucket, "outside.txt", b"no")
    put(s3_client, s3_bucket, "team/a/data.csv", b"1,2,3\n")
    put(s3_client, s3_bucket, "team/readme", b"r")
    with mount(s3_server, s3_bucket, tmp_path / "m", prefix="team/"):
        assert sorted(os.listdir(tmp_path / "m")) == ["a", "readme"]
        assert (tmp_path / "m/a/data.csv").read_bytes() == b"1,2,3\n"
        assert not (tmp_path / "m/outside.txt").exists()


def test_read_only_mount_refuses_writes_with_erofs(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    put(s3_client, s3_bucket, "f.txt", b"keep")
    put(s3_client, s3_bucket, "d/g.txt", b"keep")
    with mount(s3_server, s3_bucket, tmp_path / "m", read_only=True) as fs:
        root = tmp_path / "m"
        attempts = [
            lambda: open(root / "new.txt", "w"),
            lambda: open(root / "f.txt", "a"),
            lambda: os.truncate(root / "f.txt", 0),
            lambda: os.mkdir(root / "newdir"),
            lambda: os.unlink(root / "f.txt"),
            lambda: os.rmdir(root / "d"),
            lambda: os.rename(root / "f.txt", root / "g.txt"),
            lambda: os.symlink("f.txt", root / "link"),
            lambda: os.chmod(root / "f.txt", 0o600),
        ]
        fs.store.requests.reset()
        for attempt in attempts:
            with pytest.raises(OSError) as refused:
                attempt()
            assert refused.value.errno == errno.EROFS
        assert (root / "f.txt").read_bytes() == b"keep"
    assert s3_client.get_object(Bucket=s3_bucket, Key="f.txt")["Body"].read() == b"keep"
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == ["d/g.txt", "f.txt"]


def test_reading_a_small_file_costs_one_get_and_sees_changes(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    small, large = random.Random(3).randbytes(200_000), random.Random(4).randbytes(3 * MIB + 17)
    put_many(s3_client, s3_bucket, {"d/small.bin": small, "d/large.bin": large, "d/empty": b""})
    with mount(s3_server, s3_bucket, tmp_path / "m", metadata_ttl=60.0) as fs:
        os.listdir(tmp_path / "m/d")
        fs.store.requests.reset()
        assert (tmp_path / "m/d/small.bin").read_bytes() == small
        assert fs.store.requests.snapshot() == {"get": 1}  # the open's GET brought the bytes: no HEAD
        assert (tmp_path / "m/d/small.bin").read_bytes() == small
        # Its pages are in the kernel's cache now: the next open revalidates with a HEAD and reads nothing.
        # (Until listings gave whole seconds, RGW's listed mtime in ms became the HEAD's whole second at
        # the first open, and the kernel dropped the pages and read the file again.)
        assert fs.store.requests.snapshot() == {"get": 1, "head": 1}
        fs.store.requests.reset()
        assert (tmp_path / "m/d/large.bin").read_bytes() == large
        # Past the first part (1 MiB): the open's GET brought it, one more GET the rest, and no HEAD.
        assert fs.store.requests.snapshot() == {"get": 2}
        assert (tmp_path / "m/d/empty").read_bytes() == b""
        put(s3_client, s3_bucket, "d/small.bin", b"changed elsewhere")
        assert (tmp_path / "m/d/small.bin").read_bytes() == b"changed elsewhere"  # close-to-open
        assert os.stat(tmp_path / "m/d/small.bin").st_size == len(b"changed elsewhere")


def test_changed_object_is_seen_at_next_open(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    put(s3_client, s3_bucket, "v.txt", b"version one")
    with mount(s3_server, s3_bucket, tmp_path / "m", metadata_ttl=0.0):
        assert (tmp_path / "m/v.txt").read_bytes() == b"version one"
        put(s3_client, s3_bucket, "v.txt", b"version two!")
        assert (tmp_path / "m/v.txt").read_bytes() == b"version two!"


def test_writes_through_the_mount_reach_s3(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    put(s3_client, s3_bucket, "existing.txt", b"0123456789")
    big = random.Random(11).randbytes(20 * MIB + 5)
    with mount(s3_server, s3_bucket, tmp_path / "m") as fs:
        root = tmp_path / "m"
        (root / "new.txt").write_bytes(b"fresh")
        with open(root / "existing.txt", "r+b") as f:
            f.seek(2)
            f.write(b"AB")
        with open(root / "existing.txt", "ab") as f:
            f.write(b"++")
        (root / "big.bin").write_bytes(big)
        os.mkdir(root / "dir")
        os.rename(root / "new.txt", root / "dir/renamed.txt")
        os.chmod(root / "dir/renamed.txt", 0o600)
        os.truncate(root / "existing.txt", 6)
        (root / "gone.txt").write_bytes(b"x")
        os.unlink(root / "gone.txt")
        with pytest.raises(OSError) as not_empty:
            os.rmdir(root / "dir")
        assert not_empty.value.errno == errno.ENOTEMPTY
        assert (root / "big.bin").stat().st_size == len(big)
        assert sorted(os.listdir(root)) == ["big.bin", "dir", "existing.txt"]
        assert fs.statistics()["local_copies"] == 0

    def body(key: str) -> bytes:
        return s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()

    assert body("existing.txt") == b"01AB45"
    assert hashlib.sha256(body("big.bin")).digest() == hashlib.sha256(big).digest()
    assert body("dir/renamed.txt") == b"fresh"
    head = s3_client.head_object(Bucket=s3_bucket, Key="dir/renamed.txt")
    assert int(head["Metadata"]["mode"]) == stat.S_IFREG | 0o600
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert keys == ["big.bin", "dir/", "dir/renamed.txt", "existing.txt"]


def test_direct_io_mount_reads_past_the_page_cache(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    """--direct-io: every open reads from the daemon (a second read fetches again, where the page cache
    would answer); contents, partial reads and writes are as without it; private and shared maps work
    (fuse/dirops.py asks the kernel for FUSE_DIRECT_IO_ALLOW_MMAP), and a shared map's writes are what
    direct reads see and what is uploaded."""
    data = random.Random(21).randbytes(12 * MIB + 5)
    put(s3_client, s3_bucket, "big.bin", data)
    put(s3_client, s3_bucket, "small.txt", b"0123456789")
    spans: list[tuple[int, int]] = []
    with mount(s3_server, s3_bucket, tmp_path / "m", spy=spans, direct_io=True, metadata_ttl=60.0) as fs:
        root = tmp_path / "m"
        for _ in range(2):
            spans.clear()
            with open(root / "big.bin", "rb", buffering=0) as f:
                digest = hashlib.sha256()
                for chunk in iter(lambda: f.read(MIB), b""):
                    digest.update(chunk)
            assert digest.digest() == hashlib.sha256(data).digest()
            ordered = sorted(spans)
            assert all(e1 <= s2 for (_, e1), (s2, _) in itertools.pairwise(ordered))
            assert sum(e - s for s, e in ordered) == len(data)  # fetched in full, again the second time
        fd = os.open(root / "big.bin", os.O_RDONLY)
        try:
            for off, size in ((0, 1), (MIB - 3, 7), (5 * MIB + 1, 300_001), (len(data) - 3, 100)):
                assert os.pread(fd, size, off) == data[off : off + size]
        finally:
            os.close(fd)
        # mmap in another process, as a program would: a page fault here, in the process that serves
        # the mount, can wait for itself.
        probe = (
            "import errno, hashlib, mmap, sys\n"
            "f = open(sys.argv[1], 'rb')\n"
            "with mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ) as v:\n"
            "    print(hashlib.sha256(v[7 << 20 : (7 << 20) + 4096]).hexdigest())\n"
            "with mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as v:\n"
            "    print(hashlib.sha256(v[9 << 20 : (9 << 20) + 4096]).hexdigest())\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", probe, str(root / "big.bin")], capture_output=True, text=True, timeout=60
        )
        digests = [hashlib.sha256(data[n * MIB : n * MIB + 4096]).hexdigest() for n in (7, 9)]
        assert out.stdout.split() == digests, out.stderr
        # a shared writable map's bytes are what direct reads of the file see, before and after msync
        mapper = (
            "import mmap, os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "with mmap.mmap(fd, 0, flags=mmap.MAP_SHARED) as v:\n"
            "    v[3:5] = b'MM'\n"
            "    reader = os.open(sys.argv[1], os.O_RDONLY)\n"
            "    print(os.pread(reader, 10, 0).decode())\n"
            "    v.flush()\n"
            "    print(os.pread(reader, 10, 0).decode())\n"
        )
        (root / "mapped.txt").write_bytes(b"0123456789")
        out = subprocess.run(
            [sys.executable, "-c", mapper, str(root / "mapped.txt")], capture_output=True, text=True, timeout=60
        )
        assert out.stdout.split() == ["012MM56789", "012MM56789"], out.stderr
        with open(root / "small.txt", "r+b") as f:
            f.seek(2)
            f.write(b"AB")
        with open(root / "small.txt", "ab") as f:
            f.write(b"++")
        assert (root / "small.txt").read_bytes() == b"01AB456789++"
        (root / "new.bin").write_bytes(data[: 3 * MIB])
        assert (root / "new.bin").read_bytes() == data[: 3 * MIB]
        assert fs.statistics()["local_copies"] == 0
    assert s3_client.get_object(Bucket=s3_bucket, Key="small.txt")["Body"].read() == b"01AB456789++"
    assert s3_client.get_object(Bucket=s3_bucket, Key="new.bin")["Body"].read() == data[: 3 * MIB]
    assert s3_client.get_object(Bucket=s3_bucket, Key="mapped.txt")["Body"].read() == b"012MM56789"


def test_concurrent_outside_writer_is_detected_not_overwritten(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    put(s3_client, s3_bucket, "shared.txt", b"v1")
    with mount(s3_server, s3_bucket, tmp_path / "m"):
        f = open(tmp_path / "m/shared.txt", "r+b")
        f.write(b"ours")
        f.flush()
        put(s3_client, s3_bucket, "shared.txt", b"theirs")  # another machine, meanwhile
        with pytest.raises(OSError) as failed:
            f.close()
        assert failed.value.errno == errno.EIO
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert s3_client.get_object(Bucket=s3_bucket, Key="shared.txt")["Body"].read() == b"theirs"
    beside = [k for k in keys if k.startswith("shared.txt.s3files-conflict-")]
    assert len(beside) == 1
    assert s3_client.get_object(Bucket=s3_bucket, Key=beside[0])["Body"].read() == b"ours"


def test_full_cache_disk_is_enospc_and_loses_nothing(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    put(s3_client, s3_bucket, "keep.bin", b"original")
    cache = tmp_path / "cache"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(cache)], check=True, timeout=10)
    try:
        with mount(s3_server, s3_bucket, tmp_path / "m", cache_dir=cache):
            with pytest.raises(OSError) as full, open(tmp_path / "m/keep.bin", "wb") as f:
                for _ in range(4):
                    f.write(b"x" * MIB)
            assert full.value.errno == errno.ENOSPC
            (tmp_path / "m/small.txt").write_bytes(b"still works")  # the mount survives
    finally:
        subprocess.run(["umount", str(cache)], check=True, timeout=10)
    assert s3_client.get_object(Bucket=s3_bucket, Key="small.txt")["Body"].read() == b"still works"
    # The writer was told its write failed: the key keeps its last good version, never a truncated one.
    assert s3_client.get_object(Bucket=s3_bucket, Key="keep.bin")["Body"].read() == b"original"
