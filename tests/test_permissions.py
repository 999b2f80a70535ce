"""Permissions on a mount other users share (``--allow-other``): no access is granted on a guessed mode.

The kernel checks every other user's access against the attributes the mount hands out
(``default_permissions``), through whichever path it learned them: a lookup, a readdirplus entry, a
getattr. So on such a mount (superblock.py: ``true_attributes``) each of these must carry the object's own
metadata: a file's from a HEAD of its version, a folder's from its marker object ``dir/``.

Through real mounts (moto, then Ceph RGW), a second user runs ordinary commands in a subprocess as
uid/gid 65534 (``setpriv``); the mount sits in a 0755 folder so that user can reach it. Every listing,
stat and lookup sequence is followed by reads: a 0600 file is "Permission denied", a 0644 one is read.
The request budget of ``ls -l`` with and without ``--allow-other`` is asserted on moto (and its figures
printed, for README.md: ``pytest -s tests/test_permissions.py -k cost``). Races that a real mount cannot
time (a listing in flight while we chmod, a readdir paging through an older snapshot) are driven through
the core against the in-memory store.
"""

from __future__ import annotations

import math
import os
import stat
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import S3Server
from test_core import resolve, run_fs
from test_fuse import mount, put, put_many

from s3files.core.fs import FileSystem
from s3files.core.inodes import ROOT_INO
from s3files.store import MemoryStore
from s3files.store.base import ObjectInfo

pytestmark = pytest.mark.fuse

OTHER = 65534  # nobody / nogroup
DENIED = "Permission denied"
TTL = 1.0  # the default --metadata-ttl


# -- the second user ---------------------------------------------------------------------------------


def as_other(*cmd: str) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` as uid/gid 65534 with no supplementary groups (not root: the kernel checks modes)."""
    return subprocess.run(
        ["setpriv", f"--reuid={OTHER}", f"--regid={OTHER}", "--clear-groups", *cmd],
        capture_output=True,
        text=True,
        timeout=60,
    )


def read_as_other(path: Path) -> str:
    """The file's text as the other user reads it with cat, or DENIED (any other failure fails)."""
    out = as_other("cat", str(path))
    if out.returncode == 0:
        return out.stdout
    assert DENIED in out.stderr, f"cat {path}: {out.stderr}"
    return DENIED


def mode_as_other(path: Path) -> int:
    out = as_other("stat", "-c", "%a", str(path))
    assert out.returncode == 0, out.stderr
    return int(out.stdout, 8)


def listed_as_other(folder: Path) -> dict[str, int]:
    """``ls -l`` of ``folder`` as the other user: name -> permission bits as shown."""
    return _listed(as_other("ls", "-l", str(folder)))


def listed_as_owner(folder: Path) -> dict[str, int]:
    return _listed(subprocess.run(["ls", "-l", str(folder)], capture_output=True, text=True, timeout=60))


def _listed(out: subprocess.CompletedProcess[str]) -> dict[str, int]:
    assert out.returncode == 0, out.stderr
    return {line.split()[-1]: _bits(line.split()[0]) for line in out.stdout.splitlines()[1:]}


def _bits(shown: str) -> int:
    """'-rw-r-----' -> 0o640 (no setuid/sticky bits in these tests)."""
    return sum(1 << (8 - i) for i, c in enumerate(shown[1:10]) if c != "-")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A 0755 folder under /tmp (pytest's own tmp folders are 0700: the other user could not get in)."""
    base = Path(tempfile.mkdtemp(prefix="s3files-perm-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    for child in base.iterdir():
        assert not os.path.ismount(child), f"{child} is still mounted"
        child.rmdir()
    base.rmdir()


# -- the tree ----------------------------------------------------------------------------------------

PRIVATE = [  # nobody but root may read these
    "d/sdk-private",  # x-amz-meta-mode 0600, put by an SDK
    "d/made-private",  # created through the mount by root with mode 0600
    "d/chmodded",  # put by an SDK with 0644, chmod 600 through the mount
    "sdk-private/inside",  # 0644, in a folder whose marker says 0700
    "made-private/inside",  # 0644, in a folder made by mkdir -m 700 through the mount
    "chmodded-folder/inside",  # 0644, in a folder known only from its keys, chmod 700 through the mount
]
READABLE = {  # the other user reads these (path -> content)
    "d/sdk-public": "public",  # 0644
    "d/plain": "plain",  # no metadata: the mount's --file-mode 644
    "d/others-own": "mine",  # 0600, owned by the other user
    "d/group-read": "group",  # 0640, group of the other user
    "open/inside": "open",  # a folder without marker: --dir-mode 755
}
MODES = {  # what stat shows the other user
    "d": 0o755,
    "d/sdk-private": 0o600,
    "d/made-private": 0o600,
    "d/chmodded": 0o600,
    "d/sdk-public": 0o644,
    "d/plain": 0o644,
    "d/others-own": 0o600,
    "d/group-read": 0o640,
    "sdk-private": 0o700,
    "made-private": 0o700,
    "chmodded-folder": 0o700,
    "open": 0o755,
}


def make_tree(server: S3Server, client: Any, bucket: str, m: Path) -> None:
    """The tree above: SDK puts, then the changes made through a mount (as root)."""
    put(client, bucket, "d/sdk-private", b"secret", mode=str(stat.S_IFREG | 0o600))
    put(client, bucket, "d/sdk-public", b"public", mode=str(stat.S_IFREG | 0o644))
    put(client, bucket, "d/plain", b"plain")
    put(client, bucket, "d/others-own", b"mine", mode=str(stat.S_IFREG | 0o600), uid=str(OTHER))
    put(client, bucket, "d/group-read", b"group", mode=str(stat.S_IFREG | 0o640), gid=str(OTHER))
    put(client, bucket, "d/chmodded", b"secret", mode=str(stat.S_IFREG | 0o644))
    put(client, bucket, "sdk-private/", b"", mode=str(stat.S_IFDIR | 0o700))
    put(client, bucket, "sdk-private/inside", b"secret", mode=str(stat.S_IFREG | 0o644))
    put(client, bucket, "chmodded-folder/inside", b"secret", mode=str(stat.S_IFREG | 0o644))
    put(client, bucket, "open/inside", b"open")
    with mount(server, bucket, m, allow_other=True):
        fd = os.open(m / "d/made-private", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"secret")
        os.close(fd)
        os.chmod(m / "d/chmodded", 0o600)
        os.mkdir(m / "made-private", 0o700)
        (m / "made-private/inside").write_bytes(b"secret")
        os.chmod(m / "chmodded-folder", 0o700)
    head = client.head_object(Bucket=bucket, Key="made-private/")
    assert int(head["Metadata"]["mode"]) == stat.S_IFDIR | 0o700


def check_tree(m: Path, why: str) -> None:
    """Reads first (the sequence's state is what is tested), then modes as stat shows them."""
    for path in PRIVATE:
        assert read_as_other(m / path) == DENIED, f"{why}: the other user read {path}"
    for path, text in READABLE.items():
        assert read_as_other(m / path) == text, f"{why}: the other user could not read {path}"
    for path, mode in MODES.items():
        assert mode_as_other(m / path) == mode, f"{why}: {path} shown as {mode_as_other(m / path):o}"


def owner_walks_everything(m: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(m):
        for name in dirnames + filenames:
            os.lstat(Path(dirpath) / name)


# What may come before a read: each runs on a fresh mount (new kernel caches, new superblock).
SEQUENCES: dict[str, list[list[str]]] = {
    "nothing": [],
    "ls -l of every folder": [["ls", "-l", "{m}", "{m}/d", "{m}/open"]],
    "plain ls (readdirplus without stat)": [["ls", "{m}", "{m}/d"]],
    "stat of three other names (the folder gets listed for lookups)": [
        ["stat", "{m}/d/plain", "{m}/d/sdk-public", "{m}/d/group-read"]
    ],
    "stat of the private files themselves": [["stat", "{m}/d/sdk-private", "{m}/d/made-private", "{m}/d/chmodded"]],
    "find -ls of the whole mount": [["find", "{m}", "-ls"]],
    "ls -l, then again after the metadata TTL": [["ls", "-l", "{m}/d"], ["sleep", str(TTL + 0.3)], ["ls", "-l", "{m}/d"]],
    "the owner walks and stats everything first": [["owner"]],
}


@pytest.mark.parametrize("sequence", list(SEQUENCES))
def test_private_files_stay_private_after_any_sequence(
    sequence: str, s3_server: S3Server, s3_client: Any, s3_bucket: str, shared: Path
) -> None:
    m = shared / "m"
    make_tree(s3_server, s3_client, s3_bucket, m)
    with mount(s3_server, s3_bucket, m, allow_other=True, metadata_ttl=TTL):
        for step in SEQUENCES[sequence]:
            if step == ["owner"]:
                owner_walks_everything(m)
            elif step[0] == "sleep":
                time.sleep(float(step[1]))
            else:
                as_other(*(arg.format(m=m) for arg in step))  # may fail in part (a private folder)
        check_tree(m, sequence)
        # Once more after every cache (the kernel's and ours) expired: a re-listing of known versions.
        time.sleep(TTL + 0.3)
        assert listed_as_other(m / "d")["sdk-private"] == 0o600
        check_tree(m, f"{sequence}, then past the TTL")


def test_what_a_private_folder_hides(s3_server: S3Server, s3_client: Any, s3_bucket: str, shared: Path) -> None:
    """A 0700 folder, however it got its mode, is shown 0700 in its parent's listing and cannot be
    entered or listed by another user; a folder without marker has --dir-mode."""
    m = shared / "m"
    make_tree(s3_server, s3_client, s3_bucket, m)
    with mount(s3_server, s3_bucket, m, allow_other=True, metadata_ttl=TTL):
        shown = listed_as_other(m)
        assert {name: shown[name] for name in ("sdk-private", "made-private", "chmodded-folder", "open", "d")} == {
            "sdk-private": 0o700,
            "made-private": 0o700,
            "chmodded-folder": 0o700,
            "open": 0o755,
            "d": 0o755,
        }
        for folder in ("sdk-private", "made-private", "chmodded-folder"):
            out = as_other("ls", str(m / folder))
            assert out.returncode != 0 and DENIED in out.stderr, out
        assert as_other("ls", str(m / "open")).stdout.split() == ["inside"]
        # The owner still sees everything.
        assert sorted(os.listdir(m / "made-private")) == ["inside"]


def test_chmod_is_seen_at_once_by_ls_and_stat(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, shared: Path
) -> None:
    """``chmod 600 f; ls -l; stat f`` shows 600, whether the folder's listing was cached before the chmod
    or not, for the owner and the other user; chmod back to 644 makes it readable again; a remount
    shows what the last chmod wrote. The same for a folder (its marker carries the mode)."""
    put_many(s3_client, s3_bucket, {"d/f0": b"text", "d/f1": b"text", "d/f2": b"text", "e/g": b"text"})
    m = shared / "m"
    with mount(s3_server, s3_bucket, m, allow_other=True, metadata_ttl=30.0):
        assert listed_as_other(m / "d")["f0"] == 0o644  # the listing is cached for 30 s
        for name in ("f0", "f1"):  # f0: known from the listing only; f1 also looked up by the owner
            if name == "f1":
                os.stat(m / "d/f1")
            os.chmod(m / "d" / name, 0o600)
            assert listed_as_owner(m / "d")[name] == 0o600
            assert listed_as_other(m / "d")[name] == 0o600
            assert stat.S_IMODE(os.stat(m / "d" / name).st_mode) == 0o600
            assert mode_as_other(m / "d" / name) == 0o600
            assert read_as_other(m / "d" / name) == DENIED
        os.chmod(m / "d/f1", 0o644)
        assert listed_as_other(m / "d")["f1"] == 0o644 and read_as_other(m / "d/f1") == "text"
        os.chmod(m / "e/g", 0o600)  # a folder never listed: the chmod's own lookup was a probe
        assert (mode_as_other(m / "e/g"), listed_as_other(m / "e")) == (0o600, {"g": 0o600})
        os.chmod(m / "d", 0o711)  # a folder (known from its keys only): a marker is written
        assert listed_as_other(m)["d"] == 0o711 and mode_as_other(m / "d") == 0o711
        out = as_other("ls", str(m / "d"))
        assert out.returncode != 0 and DENIED in out.stderr
        assert read_as_other(m / "d/f2") == "text"  # 0711: the other user may pass, not list
    head = s3_client.head_object(Bucket=s3_bucket, Key="d/")
    assert int(head["Metadata"]["mode"]) == stat.S_IFDIR | 0o711
    with mount(s3_server, s3_bucket, m, allow_other=True):
        assert listed_as_other(m)["d"] == 0o711
        os.chmod(m / "d", 0o755)
        assert listed_as_other(m / "d") == {"f0": 0o600, "f1": 0o644, "f2": 0o644}
        assert [read_as_other(m / f"d/f{i}") for i in range(3)] == [DENIED, "text", "text"]
        assert read_as_other(m / "e/g") == DENIED


def test_a_chmod_from_outside_is_seen_within_the_ttl(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, shared: Path
) -> None:
    """An SDK (or another mount) changes only the metadata: a copy onto itself, which keeps the ETag (the
    bytes' MD5) but not LastModified. After the TTL, the next listing asks again, and the other user is
    refused, even though this mount had described that ETag before and listings kept it alive."""
    put(s3_client, s3_bucket, "d/f", b"text", mode=str(stat.S_IFREG | 0o644))
    put(s3_client, s3_bucket, "d/g", b"text", mode=str(stat.S_IFREG | 0o644))
    put(s3_client, s3_bucket, "d/sub/", b"", mode=str(stat.S_IFDIR | 0o755))
    put(s3_client, s3_bucket, "d/sub/x", b"text")
    m = shared / "m"
    with mount(s3_server, s3_bucket, m, allow_other=True, metadata_ttl=TTL):
        assert listed_as_other(m / "d") == {"f": 0o644, "g": 0o644, "sub": 0o755}
        assert read_as_other(m / "d/f") == "text" and read_as_other(m / "d/sub/x") == "text"
        etag = s3_client.head_object(Bucket=s3_bucket, Key="d/f")["ETag"]
        time.sleep(1.1)  # LastModified is in whole seconds
        for key, mode in (("d/f", stat.S_IFREG | 0o600), ("d/sub/", stat.S_IFDIR | 0o700)):
            s3_client.copy_object(
                Bucket=s3_bucket, Key=key, CopySource={"Bucket": s3_bucket, "Key": key},
                MetadataDirective="REPLACE", Metadata={"mode": str(mode)},
            )  # fmt: skip
        if s3_server.kind == "moto":
            assert s3_client.head_object(Bucket=s3_bucket, Key="d/f")["ETag"] == etag  # as on AWS
        time.sleep(TTL + 0.3)
        assert listed_as_other(m / "d") == {"f": 0o600, "g": 0o644, "sub": 0o700}
        assert read_as_other(m / "d/f") == DENIED and read_as_other(m / "d/sub/x") == DENIED
        assert read_as_other(m / "d/g") == "text"


# -- what it costs -----------------------------------------------------------------------------------

# The README's figures are for 1,000 files (S3FILES_FULL_COUNTS=1); CI lists 300, the same budget per file.
N_FILES = 1000 if os.environ.get("S3FILES_FULL_COUNTS") == "1" else 300


def _ls_l(folder: Path) -> tuple[int, float]:
    """``ls -l`` as the other user: (entries shown, seconds)."""
    start = time.perf_counter()
    out = as_other("ls", "-l", str(folder))
    took = time.perf_counter() - start
    assert out.returncode == 0, out.stderr
    return len(out.stdout.splitlines()) - 1, took


class Below:
    """Requests a mount's store sends for what lies below folder key ``prefix``: its listing (not the
    1-key LIST of a lookup) and HEADs of its entries. Lookups of the folder itself are left out: the kernel
    repeats them whenever its entry for the folder expired, which on a loaded machine may happen during
    a cold listing of 1,000 HEADs."""

    def __init__(self, store: Any, prefix: str) -> None:
        self.counts: Counter[str] = Counter()
        real_head, real_list = store.head, store.list_page

        async def head(key: str) -> ObjectInfo:
            if key.startswith(prefix) and key != prefix:
                self.counts["head"] += 1
            return await real_head(key)

        async def list_page(where: str, *args: Any, **kwargs: Any) -> Any:
            if where == prefix and kwargs.get("max_keys") != 1:
                self.counts["list"] += 1
            return await real_list(where, *args, **kwargs)

        store.head, store.list_page = head, list_page

    def take(self) -> dict[str, int]:
        taken = dict(self.counts)
        self.counts.clear()
        return taken


def test_cost_of_ls_l_with_true_and_fast_attributes(
    moto_server: Any, boto3_client: Any, bucket: str, shared: Path
) -> None:
    """ls -l of 1,000 files: ceil(N/1000) LIST and, with true attributes (the default, here with
    --allow-other), N HEADs the first time, none again within the TTL (nothing at all) nor after it for
    unchanged versions (the LIST only). With --listing-attributes=fast no HEAD ever (and no --allow-other).
    Three folders: with true attributes one HEAD of each marker (404 when there is none) per listing past
    the TTL. Prints the figures README.md quotes."""
    server = S3Server("moto", moto_server.endpoint_url)
    put_many(boto3_client, bucket, {f"many/f{i:04d}": b"x" for i in range(N_FILES)})
    put_many(boto3_client, bucket, {"top/a/x": b"", "top/b/": b"", "top/c/": b""})
    lists = math.ceil(N_FILES / 1000)
    m = shared / "m"
    figures = []
    ttl = 5.0
    for allow_other in (False, True):
        attributes = "true" if allow_other else "fast"
        with mount(server, bucket, m, allow_other=allow_other, listing_attributes=attributes, metadata_ttl=ttl) as fs:
            ls = _ls_l if allow_other else _ls_l_as_owner
            many, top = Below(fs.store, "many/"), Below(fs.store, "top/")
            shown, cold = ls(m / "many")
            assert shown == N_FILES
            assert many.take() == {"list": lists, **({"head": N_FILES} if allow_other else {})}
            _, warm = ls(m / "many")
            assert many.take() == {}  # within the TTL: the kernel's and our caches
            time.sleep(ttl + 0.2)
            _, relisted = ls(m / "many")
            assert many.take() == {"list": lists}  # versions known: no HEAD again
            figures.append((allow_other, cold, warm, relisted))
            ls(m / "top")
            assert top.take() == {"list": 1, **({"head": 3} if allow_other else {})}
            ls(m / "top")
            assert top.take() == {}
            time.sleep(ttl + 0.2)
            ls(m / "top")
            assert top.take() == {"list": 1, **({"head": 3} if allow_other else {})}  # markers: per TTL
    start = time.perf_counter()  # the same HEADs through boto3, 16 threads: what the server allows
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: boto3_client.head_object(Bucket=bucket, Key=f"many/f{i:04d}"), range(N_FILES)))
    print(f"\n{N_FILES} HEADs through boto3 with 16 threads: {time.perf_counter() - start:.2f} s")
    for allow_other, cold, warm, relisted in figures:
        print(
            f"\nls -l of {N_FILES} files on moto, {'true attributes' if allow_other else 'fast'}: "
            f"cold {cold:.2f} s, again within the TTL {warm:.3f} s, after the TTL {relisted:.2f} s"
        )


def _ls_l_as_owner(folder: Path) -> tuple[int, float]:
    """Without --allow-other only the mounting user (root) may use the mount."""
    start = time.perf_counter()
    out = subprocess.run(["ls", "-l", str(folder)], capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - start
    assert out.returncode == 0, out.stderr
    return len(out.stdout.splitlines()) - 1, took


def test_without_allow_other_the_other_user_is_refused(
    s3_server: S3Server, s3_client: Any, s3_bucket: str, shared: Path
) -> None:
    put(s3_client, s3_bucket, "f", b"text")
    m = shared / "m"
    with mount(s3_server, s3_bucket, m):
        out = as_other("ls", str(m))
        assert out.returncode != 0 and DENIED in out.stderr
        assert (m / "f").read_bytes() == b"text"


# -- races, through the core (the in-memory store lets a test decide what lands when) ------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _mode(fs: FileSystem, ino: int) -> int:
    return stat.S_IMODE(fs.sb.node(ino).mode)


async def readdir_modes(fs: FileSystem, ino: int) -> dict[str, int]:
    fh = await fs.opendir(ino)
    try:
        return {name: stat.S_IMODE(attr.mode) for name, attr, _ in await fs.readdir(fh, 0)}
    finally:
        fs.releasedir(fh)


def test_core_a_listing_in_flight_does_not_undo_our_chmod() -> None:
    """The listing's HEAD answered before our chmod's copy landed: its answer is older than ours."""
    store = MemoryStore()
    store.seed("d/f", b"text", {"mode": str(stat.S_IFREG | 0o644)})
    store.seed("d/g", b"text", {"mode": str(stat.S_IFREG | 0o644)})

    async def body(fs: FileSystem) -> None:
        ino = await resolve(fs, "d/f")
        d = await resolve(fs, "d")
        store.seed("d/f", b"new text", {"mode": str(stat.S_IFREG | 0o644)})  # a version not known yet
        real_head = store.head
        chmodded = []

        async def head_then_chmod(key: str) -> ObjectInfo:
            answer = await real_head(key)
            if key == "d/f" and not chmodded:
                chmodded.append(await fs.setattr(ino, mode=0o600))  # lands while the listing goes on
            return answer

        store.head = head_then_chmod  # type: ignore[method-assign]
        fs.sb.forget_listings("d")
        assert (await readdir_modes(fs, d))["f"] == 0o600
        assert _mode(fs, ino) == 0o600
        store.head = real_head  # type: ignore[method-assign]
        assert (await fs.lookup(d, "f")).mode & 0o777 == 0o600  # from the cached listing

    run_fs(store, body, allow_other=True, metadata_ttl=60.0)


def test_core_a_readdir_snapshot_does_not_undo_our_chmod() -> None:
    """A readdir pages through the listing it took at offset 0; a chmod between two pages must not be
    undone by the older entry of the later page."""
    store = MemoryStore()
    for name in ("a", "b", "c"):
        store.seed(f"d/{name}", b"text", {"mode": str(stat.S_IFREG | 0o644)})

    async def body(fs: FileSystem) -> None:
        d = await resolve(fs, "d")
        fh = await fs.opendir(d)
        first = await fs.readdir(fh, 0)
        assert [name for name, _, _ in first] == ["a", "b", "c"]
        await fs.setattr(first[2][1].ino, mode=0o600)
        rest = await fs.readdir(fh, 2)  # the kernel asks for the rest
        fs.releasedir(fh)
        assert [(name, attr.mode & 0o777) for name, attr, _ in rest] == [("c", 0o600)]
        assert _mode(fs, first[2][1].ino) == 0o600

    run_fs(store, body, allow_other=True, metadata_ttl=60.0)


def test_core_true_attributes_budget_and_metadata_only_changes() -> None:
    """With true attributes: a listing HEADs each file once and each folder's marker once per TTL; a
    version known (ETag and LastModified) is not asked again; a copy onto itself with new metadata keeps
    the ETag but moves LastModified, and is asked again. With --listing-attributes=fast: LIST only."""
    ticks = iter(range(10**6))
    store = MemoryStore(now=lambda: float(1_600_000_000 + next(ticks)))
    store.seed("d/f", b"text", {"mode": str(stat.S_IFREG | 0o644)})
    store.seed("d/g", b"text")
    store.seed("d/sub/", b"", {"mode": str(stat.S_IFDIR | 0o700)})
    store.seed("d/sub/x", b"")
    clock = Clock()

    async def body(fs: FileSystem) -> None:
        d = await resolve(fs, "d")
        store.requests.reset()
        assert await readdir_modes(fs, d) == {"f": 0o644, "g": 0o644, "sub": 0o700}
        assert store.requests.snapshot() == {"list": 1, "head": 3}
        assert await readdir_modes(fs, d) == {"f": 0o644, "g": 0o644, "sub": 0o700}
        assert store.requests.snapshot() == {"list": 1, "head": 3}  # within the TTL: nothing
        clock.t += 2
        store.requests.reset()
        assert await readdir_modes(fs, d) == {"f": 0o644, "g": 0o644, "sub": 0o700}
        assert store.requests.snapshot() == {"list": 1, "head": 1}  # the marker only: files known
        etag = (await store.head("d/f")).etag
        await store.copy("d/f", "d/f", metadata={"mode": str(stat.S_IFREG | 0o600)})
        assert (await store.head("d/f")).etag == etag
        clock.t += 2
        store.requests.reset()
        assert await readdir_modes(fs, d) == {"f": 0o600, "g": 0o644, "sub": 0o700}
        assert store.requests.snapshot() == {"list": 1, "head": 2}  # f (changed) and the marker

    run_fs(store, body, now=clock, allow_other=True, metadata_ttl=1.0)

    async def without(fs: FileSystem) -> None:
        d = await resolve(fs, "d")
        store.requests.reset()
        assert await readdir_modes(fs, d) == {"f": 0o644, "g": 0o644, "sub": 0o755}  # listed: the defaults
        assert store.requests.snapshot() == {"list": 1}

    store.seed("d/f", b"text", {"mode": str(stat.S_IFREG | 0o600)})
    run_fs(store, without, metadata_ttl=1.0, listing_attributes="fast")


def test_core_folder_attributes_from_marker_on_lookup_and_chmod() -> None:
    """A folder looked up without a listing (a probe) gets its marker's metadata; a chmod of a folder
    writes its marker (one PUT) and the parent's cached listing learns it; the root has no marker."""
    store = MemoryStore()
    store.seed("p/", b"", {"mode": str(stat.S_IFDIR | 0o750), "uid": "7", "gid": "8", "mtime": "1500000000"})
    store.seed("p/x", b"")
    store.seed("q/x", b"")

    async def body(fs: FileSystem) -> None:
        store.requests.reset()
        p = await fs.lookup(ROOT_INO, "p")
        assert (p.mode & 0o777, p.uid, p.gid, p.mtime_ns) == (0o750, 7, 8, 1_500_000_000 * 10**9)
        assert store.requests.snapshot() == {"head": 2, "list": 1}  # HEAD p, LIST p/, HEAD p/
        q = await fs.lookup(ROOT_INO, "q")
        assert q.mode & 0o777 == 0o755  # no marker: --dir-mode, and no HEAD of the marker
        assert store.requests.snapshot() == {"head": 3, "list": 2}
        await readdir_modes(fs, ROOT_INO)
        store.requests.reset()
        await fs.setattr(q.ino, mode=0o700)
        assert store.requests.snapshot() == {"put": 1}
        assert (await readdir_modes(fs, ROOT_INO))["q"] == 0o700
        assert (await store.head("q/")).metadata["mode"] == str(stat.S_IFDIR | 0o700)  # type: ignore[index]
        await fs.setattr(ROOT_INO, mode=0o700)  # the root: only while mounted
        assert "" not in store.keys() and "/" not in store.keys()

    run_fs(store, body, allow_other=True, metadata_ttl=60.0)

