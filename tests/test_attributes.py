"""True attributes in listings, through real mounts: what everyday programs see after a remount and after
the kernel forgot an inode (issue 17: listings showed guessed attributes).

A LIST carries no user metadata. These tests hold that every attribute a program sees (mode, owner, mtime,
size) is the object's own whichever way it reached the kernel (a lookup, a listing, readdirplus), also after
a remount and after ``drop_caches``, and that it stays cheap: a remount with the same cache folder lists
known versions without a HEAD (core/metacache.py). One module mount pair (written, then remounted) serves
most tests (pyfuse3 allows one mount per process at a time: tests here that mount on their own, as the
mtime test without a cache folder on moto and Ceph RGW, live in test_attributes_servers.py).
"""

from __future__ import annotations

import io
import math
import os
import shutil
import stat
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import S3Server
from test_cli import assert_one_line_error, s3files
from test_core import run_fs
from test_fuse import mount, put_many
from test_permissions import Below

from s3files.core.fs import FileSystem
from s3files.core.inodes import ROOT_INO
from s3files.core.metacache import MetaCache
from s3files.core.records import CacheFolder
from s3files.store import MemoryStore
from s3files.store.base import ObjectInfo

TOUCHED = 1_700_000_000
N_LISTED = 1000 if os.environ.get("S3FILES_FULL_COUNTS") else 150
TREE_TIMES = 1_650_000_000


def _local_tree(root: Path) -> Path:
    """A small source tree with a script, nested folders and fixed mtimes (for tar and rsync)."""
    tree = root / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "src/deep").mkdir(parents=True)
    (tree / "README").write_text("hello\n")
    (tree / "bin/run.sh").write_text("#!/bin/sh\necho ran\n")
    (tree / "bin/run.sh").chmod(0o755)
    (tree / "src/deep/data.bin").write_bytes(os.urandom(3000))
    (tree / "src/private.txt").write_text("secret\n")
    (tree / "src/private.txt").chmod(0o600)
    for i, path in enumerate(sorted(tree.rglob("*"), reverse=True)):
        os.utime(path, (TREE_TIMES + i, TREE_TIMES + i))
    os.utime(tree, (TREE_TIMES - 1, TREE_TIMES - 1))
    return tree


def touch_five(folder: Path) -> None:
    folder.mkdir()
    for i in range(5):
        (folder / f"t{i}").write_text(f"file {i}\n")
    subprocess.run(["touch", "-m", "-d", f"@{TOUCHED}", *(str(folder / f"t{i}") for i in range(5))], check=True)


@pytest.fixture(scope="module")
def remounted(moto_server: Any, boto3_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, FileSystem, Path]]:
    """Mount, make what the tests look at, unmount, and mount again with the same cache folder."""
    server = S3Server("moto", moto_server.endpoint_url)
    bucket = f"attrs-{uuid.uuid4().hex[:8]}"
    moto_server.create_bucket(bucket)
    base = tmp_path_factory.mktemp("attrs")
    m, cache = base / "m", base / "cache"
    tree = _local_tree(base / "local")
    with tarfile.open(base / "tree.tar", "w") as tar:
        tar.add(tree, arcname="tree")
    meta = {"mode": str(stat.S_IFREG | 0o640), "uid": "1234", "gid": "4321", "mtime": "1600000000"}
    put_many(boto3_client, bucket, {f"many/f{i:04d}": b"x" for i in range(N_LISTED)})
    for i in range(0, N_LISTED, 100):  # some with metadata, the rest known to carry none
        boto3_client.put_object(Bucket=bucket, Key=f"many/f{i:04d}", Body=b"x", Metadata=meta)
    with mount(server, bucket, m, cache_dir=cache):
        touch_five(m / "touched")
        subprocess.run(["cp", "/bin/true", str(m / "t")], check=True)
        (m / "extracted").mkdir()
        subprocess.run(["tar", "xf", str(base / "tree.tar"), "-C", str(m / "extracted")], check=True)
        if shutil.which("rsync"):
            subprocess.run(["rsync", "-a", f"{tree}/", str(m / "synced")], check=True, capture_output=True)
        listed = subprocess.run(["ls", "-ln", str(m / "many")], check=True, capture_output=True, text=True)
        assert " 1234 4321 " in listed.stdout  # described: every version is now in the cache folder
    with mount(server, bucket, m, cache_dir=cache) as fs:
        yield m, fs, tree


def test_touch_m_mtimes_survive_a_remount(remounted: tuple[Path, FileSystem, Path]) -> None:
    """The issue's case: the first two stat'ed one by one (lookups), the others answered from the folder's
    listing; ls -l shows all five. Before: the listed three showed their upload time."""
    m, _, _ = remounted
    assert [os.stat(m / f"touched/t{i}").st_mtime for i in range(2)] == [TOUCHED] * 2
    assert [os.stat(m / f"touched/t{i}").st_mtime for i in range(2, 5)] == [TOUCHED] * 3
    out = subprocess.run(["ls", "-l", "--time-style=+%s", str(m / "touched")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert [line.split()[5] for line in out.stdout.splitlines()[1:]] == [str(TOUCHED)] * 5


def test_a_copied_executable_runs_after_a_remount(remounted: tuple[Path, FileSystem, Path]) -> None:
    """cp /bin/true MNT/t; remount; ls MNT; MNT/t. Before: Permission denied (the listing showed 0644)."""
    m, _, _ = remounted
    assert "t" in subprocess.run(["ls", str(m)], capture_output=True, text=True, check=True).stdout.split()
    assert stat.S_IMODE(os.stat(m / "t").st_mode) == 0o755
    assert subprocess.run([str(m / "t")], timeout=30).returncode == 0


def test_tar_c_of_a_tree_extracted_onto_the_mount_exits_0(remounted: tuple[Path, FileSystem, Path]) -> None:
    """tar c after a remount: every stat tar makes agrees (before: "file changed as we read it", exit 1),
    and the archive has the modes and mtimes tar x was given."""
    m, _, tree = remounted
    out = subprocess.run(["tar", "cf", "-", "-C", str(m / "extracted"), "tree"], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr == b""
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as archive:
        shown = {member.name: (member.mode, int(member.mtime)) for member in archive.getmembers()}
    for path in [tree, *tree.rglob("*")]:
        st = path.lstat()
        name = "tree" + ("/" + str(path.relative_to(tree)) if path != tree else "")
        assert shown[name] == (stat.S_IMODE(st.st_mode), int(st.st_mtime)), name


def test_rsync_a_of_an_unchanged_tree_copies_nothing(remounted: tuple[Path, FileSystem, Path]) -> None:
    """rsync -a onto the mount, remount, rsync -a again: nothing is transferred or changed (before: every
    file was copied again, its mtime and mode coming from the listing's guess)."""
    if not shutil.which("rsync"):
        pytest.skip("rsync is not installed")
    m, _, tree = remounted
    out = subprocess.run(
        ["rsync", "-a", "--itemize-changes", "--stats", f"{tree}/", str(m / "synced")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "Number of regular files transferred: 0" in out.stdout, out.stdout
    changed = [line for line in out.stdout.splitlines() if line[:2] in (">f", "cd", ".d", ".f", "cL", ".L")]
    assert changed == [], out.stdout


def test_a_folder_keeps_its_mode_when_the_kernel_forgets_it(remounted: tuple[Path, FileSystem, Path]) -> None:
    """mkdir d; chmod 700 d; drop_caches; stat -c %a d printed 755 (and ls -l showed drwxr-xr-x): at
    once (the parent's listing answers) and past --metadata-ttl (1 s: the folder is asked again). Inode
    numbers stay those of the paths (they changed)."""
    m, _, _ = remounted
    (m / "d").mkdir()
    (m / "d").chmod(0o700)
    os.chown(m / "d", 1234, 4321)
    numbers = {name: os.stat(m / name).st_ino for name in ("d", "t", "touched", "touched/t3")}
    for wait in (0.0, 1.2):
        time.sleep(wait)
        Path("/proc/sys/vm/drop_caches").write_text("2")
        st = os.stat(m / "d")
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, 1234, 4321)
        assert {name: os.stat(m / name).st_ino for name in numbers} == numbers  # and the same inode numbers
        out = subprocess.run(["ls", "-ln", str(m)], capture_output=True, text=True, check=True).stdout
        assert any(line.startswith("drwx------") and line.endswith(" d") and " 1234 4321 " in line for line in out.splitlines()), out


def test_a_remount_lists_known_versions_without_a_head(remounted: tuple[Path, FileSystem, Path]) -> None:
    """ls -l of N files a mount with the same cache folder already described: ceil(N/1000) LIST, 0 HEAD,
    and the attributes are the objects' own (those with metadata and those without)."""
    m, fs, _ = remounted
    os.stat(m / "many")
    below = Below(fs.store, "many/")
    out = subprocess.run(["ls", "-ln", "--time-style=+%s", str(m / "many")], capture_output=True, text=True, check=True)
    assert below.take() == {"list": math.ceil(N_LISTED / 1000)}
    lines = out.stdout.splitlines()[1:]
    assert len(lines) == N_LISTED
    owned = [line for line in lines if " 1234 4321 " in line]
    assert len(owned) == len(range(0, N_LISTED, 100))
    assert all(line.startswith("-rw-r----- ") and " 1600000000 " in line for line in owned)


# -- through the core ----------------------------------------------------------------------------------


def test_core_metadata_is_remembered_per_version_across_mounts(tmp_path: Path) -> None:
    """A second mount with the same cache folder lists 2,500 described files with 3 LIST and no HEAD; a
    version changed since (new bytes, or new metadata with the same ETag) is asked again, once."""
    ticks = iter(range(10**6))
    store = MemoryStore(now=lambda: float(1_600_000_000 + next(ticks)))
    for i in range(2500):
        meta = {"mode": str(stat.S_IFREG | 0o600), "mtime": "1000"} if i % 2 else {}
        store.seed(f"big/f{i:05d}", b"x", meta)
    folder = CacheFolder(tmp_path / "cache")
    modes: list[dict[str, int]] = []

    async def listed(fs: FileSystem, heads: int) -> None:
        big = await fs.lookup(ROOT_INO, "big")
        store.requests.reset()
        entries = {n: a for n, a, _ in await fs.readdir(await fs.opendir(big.ino), 0)}
        assert store.requests.snapshot() == {"list": 3, **({"head": heads} if heads else {})}
        assert entries["f00001"].mtime_ns == 1000 * 10**9
        modes.append({n: stat.S_IMODE(a.mode) for n, a in entries.items()})

    def mounted(heads: int) -> None:
        folder.open()
        try:
            run_fs(store, lambda fs: listed(fs, heads), staging=folder)
        finally:
            folder.close()

    mounted(2500)
    mounted(0)
    store.seed("big/f00002", b"new bytes")  # a new version without metadata
    etag = trio.run(store.head, "big/f00003").etag
    trio.run(partial(store.copy, "big/f00003", "big/f00003", metadata={"mode": str(stat.S_IFREG | 0o640)}))
    assert trio.run(store.head, "big/f00003").etag == etag  # same ETag, new metadata, later LastModified
    mounted(2)
    mounted(0)
    assert modes[0] == modes[1]
    assert modes[-1]["f00003"] == 0o640 and modes[-1]["f00002"] == 0o644 and modes[-1]["f00001"] == 0o600


def test_core_own_writes_are_known_without_a_head(tmp_path: Path) -> None:
    """Files written and chmodded here, a folder made and chmodded here: the next mount's listing asks
    S3 for none of the files (their versions are this mount's own)."""
    store = MemoryStore()
    folder = CacheFolder(tmp_path / "cache")

    async def write(fs: FileSystem) -> None:
        d = await fs.mkdir(ROOT_INO, "d", 0o755, 0, 0)
        for name in ("a", "b"):
            opened = await fs.create(d.ino, name, 0o644, 0, 0)
            await fs.write(opened.fh, 0, b"data")
            await fs.release(opened.fh)
        b = await fs.lookup(d.ino, "b")
        await fs.setattr(b.ino, mode=0o700, mtime_ns=1_234_500_000_000)
        await fs.setattr(d.ino, mode=0o711)

    async def relist(fs: FileSystem) -> None:
        store.requests.reset()
        d = await fs.lookup(ROOT_INO, "d")
        assert stat.S_IMODE(d.mode) == 0o711
        assert store.requests.snapshot() == {"head": 1, "list": 1}  # the probe; its marker's version known
        store.requests.reset()
        entries = {n: a for n, a, _ in await fs.readdir(await fs.opendir(d.ino), 0)}
        assert store.requests.snapshot() == {"list": 1}
        assert stat.S_IMODE(entries["b"].mode) == 0o700 and entries["b"].mtime_ns == 1_234_500_000_000
        assert stat.S_IMODE(entries["a"].mode) == 0o644

    for body in (write, relist):
        folder.open()
        try:
            run_fs(store, body, staging=folder)
        finally:
            folder.close()


def test_core_a_forgotten_inode_gets_its_number_back() -> None:
    """The kernel forgot an inode: the path's next lookup gets the same number; a file that replaced an
    unlinked one, or a name of another kind, gets a new one."""
    store = MemoryStore()
    store.seed("d/f", b"x")
    store.seed("d/g", b"y")

    async def body(fs: FileSystem) -> None:
        d = await fs.lookup(ROOT_INO, "d")
        f = await fs.lookup(d.ino, "f")
        fs.forget(f.ino, 1)
        fs.forget(d.ino, 1)
        assert fs.sb.inodes.get(f.ino) is None and fs.sb.inodes.get(d.ino) is None
        d2 = await fs.lookup(ROOT_INO, "d")
        assert d2.ino == d.ino and (await fs.lookup(d2.ino, "f")).ino == f.ino
        g = await fs.lookup(d.ino, "g")
        fs.forget(g.ino, 1)
        await fs.unlink(d.ino, "g")
        opened = await fs.create(d.ino, "g", 0o644, 0, 0)
        assert opened.attr.ino != g.ino
        await fs.release(opened.fh)

    run_fs(store, body, metadata_ttl=0.0)


def test_core_metadata_cache_file_survives_garbage_and_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "metadata.db"
    path.write_bytes(b"not a database at all" * 100)
    cache = MetaCache(path, max_bytes=256 * 1024)
    infos = [ObjectInfo(f"k{i:06d}", 1, f"e{i}", 100.0, {"mode": "33188", "pad": "x" * 200}) for i in range(20_000)]
    for info in infos:
        cache.learn(info)
    cache.close()
    assert path.stat().st_size < 2 * 1024 * 1024  # bounded (the oldest rows went)
    again = MetaCache(path)
    assert again.get(ObjectInfo("k019999", 1, "e19999", 100.0)) == infos[-1].metadata
    assert again.get(ObjectInfo("k019999", 1, "e19999", 101.0)) is None  # a newer version: not known
    assert again.get(ObjectInfo("k019999", 1, "other", 100.0)) is None
    assert again.get(ObjectInfo("k000000", 1, "e0", 100.0)) is None  # evicted
    again.close()


def test_listing_attributes_fast_is_refused_with_allow_other(tmp_path: Path) -> None:
    """No permission may be granted on a guess: one line, exit 1, nothing mounted."""
    (tmp_path / "m").mkdir()
    refused = s3files("mount", "s3://b", str(tmp_path / "m"), "--listing-attributes", "fast", "--allow-other")
    assert_one_line_error(refused, "--listing-attributes=fast cannot be used with --allow-other")
