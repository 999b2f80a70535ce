"""Property tests of the read side: random "outside" puts and deletes against mount-side reads, vs a model.

What is compared. ``BucketModel`` is the expected bucket (key -> newest ``Version``, plus every version a key
ever had). The visible tree is computed from its keys by the rules in ``s3files.core.namespace``'s
docstring, written again here independently (a reference model must not import what it checks): a key
``prefix + path`` is a file, any key under ``path/`` makes ``path`` a folder and shadows the file, a marker
``path/`` is an empty folder, and names that are empty, ``.``, ``..``, over 255 bytes or hold NUL are hidden.
With ``metadata_ttl=0`` every answer must match the model exactly after every step: lookups, stats
(size, mode, uid, gid, mtime from x-amz-meta-* or the defaults and LastModified), listings (names, kinds,
no duplicates, only valid names, sizes), whole and partial reads, and errnos (ENOENT, ENOTDIR, EISDIR).
After every step the whole tree is walked and compared, and every open handle reads again.

Reads through a handle opened before an outside change. Observable, and so checked: a handle of an
unchanged object reads exactly its bytes; a handle of a changed (or deleted) object reads the bytes of the
version it opened or fails with ESTALE (ENOENT once deleted), never the new bytes nor a mix. Which of the two
depends on what its reader already holds, which is not the contract, so it is not checked. Through a real
kernel the page cache belongs to the inode, not the handle (as on NFS), so there an old handle may also show
bytes of a later version; each byte must still be of some version the key had since the open. The other
way round is not allowed: what an old handle reads lands in the inode's page cache, where a handle opened
later reads it without asking the file system, so it must be of that newer handle's version too (checked by
the core machine, which models the page cache; a known bug today).

One machine, two drivers. ``ReadSemantics`` holds the rules and the checks; a *driver* performs each
operation on one kind of mount and reports plain results or raises ``OSError`` with an errno:
- ``CoreDriver``: a ``FileSystem`` over ``MemoryStore`` (fast: many examples, tiny read parts so that a
  60-byte object already needs several ranged GETs and read-ahead). It also plays the kernel's part: it
  counts lookups (``forget``), acquires readdir entries, and keeps a model of the page cache to check the
  promise ``open`` makes with ``keep_cache`` (every cached byte is of the version being opened).
- ``FuseDriver``: a real mount (``mounted_in_thread``, read-write, but only read here) of a moto bucket,
  outside writes through boto3, reads through ``os`` calls. Fewer examples; a fresh bucket and mount per
  example; the tree walk every few steps. With ``metadata_ttl=0`` the kernel asks getattr (a HEAD) before
  every read(2), so the machine does not read in 1-byte chunks there.

How the core machine gets a trio context. Hypothesis calls rules synchronously, while ``FileSystem`` needs a
running trio loop and a nursery for background fetches that outlive one call (read-ahead). Each machine
instance therefore owns a ``TrioPortal``: one ``trio.run`` on its own thread, holding a nursery until
teardown (the same shape as ``mounted_in_thread``). Rules call ``portal.run(async_fn)``
(``trio.from_thread.run``), which also waits until every background task is blocked or done before it
returns (``wait_all_tasks_blocked``; the memory store never blocks, so fetches finish): outside writes and
background fetches never race, every step is deterministic, and hypothesis can shrink. Teardown cancels
the nursery and joins the thread.

Extending for the write path. Mount-side writes become new rules that call a new driver method and then
update ``self.model`` (``model.put``/``model.delete``) with what the bucket must hold; every existing check
(tree, listings, reads, handles) then applies to them unchanged. Per-mode behaviour (consistency modes,
``metadata_ttl > 0``) goes into the driver flags and the ``expect_*``/``check_*`` helpers, not the rules.

Known bugs. What these machines found in s3files is pinned by small xfail(strict=True) tests at the end of
this file; the machines step around it (``KNOWN_BUGS``) so that they keep checking everything else. When
a fix lands, its xfail test fails as XPASS: delete the entry, and the machines check that case too. Bugs
found and fixed keep a plain regression test there.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import itertools
import math
import os
import random
import stat
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
import trio
import trio.testing
from conftest import FULL_COUNTS
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from s3files.core.fs import FileSystem
from s3files.core.inodes import ROOT_INO, Attr
from s3files.errors import S3FilesError
from s3files.options import Consistency, MountOptions, ReadOptions, Source, StoreOptions
from s3files.store import MemoryStore

T = TypeVar("T")

FILE, DIR = "file", "dir"
Path_ = tuple[str, ...]  # a mount path as its segments; () is the root

LONG = "n" * 256  # one byte over NAME_MAX
VALID_SEGMENTS = ("a", "b", "x")
AWKWARD_SEGMENTS = ("", ".", "..", LONG, "ü")  # "ü" is valid (non-ASCII); the others are hidden
# Weighted so that most keys are ordinary and collide often (file x and folder x/ at once).
KEY_SEGMENT = st.sampled_from(VALID_SEGMENTS * 3 + AWKWARD_SEGMENTS)

# x-amz-meta-* values: well-formed ones, and garbage that must fall back to the defaults (not numbers, or
# numbers no stat can carry). Keep in step with expected_head_attrs(). Type bits that name no kind of
# file object (a folder's "16877", no type's "12708" = 0o30644) make a regular file. No S_IFLNK mode
# ("41471") nor a special file's (a FIFO's "4516"): such an object is a symlink or a FIFO, whose kind a
# mount learns from a HEAD (a listing may say "file" until then, and the name then gets a new inode). This model has files and folders only; symlinks, and names that turn
# out to be symlinks, are checked by tests/test_core_names.py and tests/test_fuse_names.py.
METADATA_VALUES: dict[str, tuple[str, ...]] = {
    "mtime": (
        "1600000000.5",
        "0",
        "-86400",
        "1700000000.123456",
        "abc",
        "",
        "1,5",
        "nan",
        "inf",
        "-inf",
        "1e30",
    ),
    "mode": ("33188", "420", "384", "0", "16877", "12708", "abc", "-1", "99999999", "0o644"),
    "uid": ("0", "1000", "65534", "x", "", "-1", "4294967296"),
    "gid": ("0", "1000", "65534", "x", "", "-1", "4294967296"),
}
# Bugs these machines found in s3files and that are not fixed yet. Each is pinned by an xfail(strict=True)
# test at the end of this file, and the machines step around it so that they keep checking everything else.
# When a fix lands, its xfail test fails as XPASS: delete the entry here (and the xfail mark).
KNOWN_BUGS: frozenset[str] = frozenset()

METADATA = st.one_of(
    st.just({}),
    st.fixed_dictionaries({}, optional={k: st.sampled_from(v) for k, v in METADATA_VALUES.items()}),
)

TINY_CONTENT = st.binary(max_size=64)


@functools.cache
def fresh_keys(prefixes: tuple[str, ...]) -> st.SearchStrategy[str]:
    """Keys not drawn from the model: mostly ordinary paths, some with awkward segments or markers."""
    ordinary = st.builds(
        lambda outer, segments: outer + "/".join(segments),
        st.sampled_from(prefixes),
        st.lists(st.sampled_from(VALID_SEGMENTS), min_size=1, max_size=3),
    )
    awkward = st.builds(
        lambda outer, segments, tail: outer + "/".join(segments) + tail,
        st.sampled_from(prefixes),
        st.lists(KEY_SEGMENT, min_size=1, max_size=3),
        st.sampled_from(("", "/")),  # a trailing "/" is a folder marker
    ).filter(bool)
    return st.one_of(ordinary, ordinary, awkward)  # mostly files that can be seen


@functools.cache
def lookup_paths(segments: tuple[str, ...]) -> st.SearchStrategy[Path_]:
    return st.lists(st.sampled_from(segments), min_size=1, max_size=4).map(tuple)


def seeded_bytes(max_size: int) -> st.SearchStrategy[bytes]:
    """Bigger bodies without asking hypothesis for every byte: a seed and a size."""
    return st.builds(
        lambda seed, size: random.Random(seed).randbytes(size), st.integers(0, 3), st.integers(65, max_size)
    )


# -- the reference model ---------------------------------------------------------------------------


def visible_name(name: str) -> bool:
    """The namespace rules for one path segment, written independently of s3files.core.namespace."""
    return name not in ("", ".", "..") and "\0" not in name and len(name.encode("utf-8")) <= 255


@dataclass(frozen=True)
class Version:
    """One object as an outside writer put it."""

    data: bytes
    metadata: dict[str, str]
    last_modified: float

    @property
    def etag(self) -> str:
        return hashlib.md5(self.data).hexdigest()  # single-part PUT: what S3 (and MemoryStore) report


@dataclass(frozen=True)
class Defaults:
    uid: int
    gid: int
    file_mode: int
    dir_mode: int


def _parse_int(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def expected_head_attrs(version: Version, d: Defaults) -> tuple[int, int, int, float]:
    """(st_mode, uid, gid, mtime) once a HEAD has been seen: s3fs-compatible metadata wins when valid."""
    meta = version.metadata
    mode = _parse_int(meta.get("mode"))
    if mode is None or not 0 <= mode <= 0o177777:  # st_mode is 16 bits
        mode = d.file_mode
    uid = _parse_int(meta.get("uid"))
    gid = _parse_int(meta.get("gid"))
    uid = uid if uid is not None and 0 <= uid < 2**32 - 1 else None  # (uid_t)-1 means "no change"
    gid = gid if gid is not None and 0 <= gid < 2**32 - 1 else None
    mtime: float = version.last_modified
    if meta.get("mtime") is not None:
        try:
            parsed = float(meta["mtime"])
        except ValueError:
            parsed = math.nan
        if math.isfinite(parsed) and abs(parsed) < 2**63 / 1e9:  # st_mtime_ns is an int64
            mtime = parsed
    return (
        stat.S_IFREG | stat.S_IMODE(mode),  # type bits of no file object kind in metadata: a regular file
        d.uid if uid is None else uid,
        d.gid if gid is None else gid,
        mtime,
    )


def expected_listing_attrs(version: Version, d: Defaults) -> tuple[int, int, int, float]:
    """What an entry known only from a LIST shows: the mount defaults and LastModified."""
    return (stat.S_IFREG | d.file_mode, d.uid, d.gid, version.last_modified)


class BucketModel:
    """The expected bucket and the tree a mount of ``prefix`` must show for it."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.objects: dict[str, Version] = {}
        self.history: dict[str, list[Version | None]] = {}  # every version of a key; None: deleted

    def put(self, key: str, version: Version) -> None:
        self.objects[key] = version
        self.history.setdefault(key, []).append(version)

    def delete(self, key: str) -> None:
        if self.objects.pop(key, None) is not None:
            self.history[key].append(None)

    def key(self, path: Path_) -> str:
        return self.prefix + "/".join(path)

    def _rel_keys(self) -> list[str]:
        return [k[len(self.prefix) :] for k in self.objects if k.startswith(self.prefix)]

    def kind(self, path: Path_) -> str | None:
        """FILE, DIR or None for a path of visible segments (the root is always a folder)."""
        if not path:
            return DIR
        if not all(visible_name(s) for s in path):
            return None
        rel = "/".join(path)
        keys = self._rel_keys()
        if any(k.startswith(rel + "/") for k in keys):
            return DIR
        return FILE if rel in keys else None

    def resolve(self, path: Path_) -> tuple[str | None, int]:
        """(kind, 0) if ``path`` resolves, else (None, the errno a path walk must fail with)."""
        for i, name in enumerate(path):
            if self.kind(path[:i]) == FILE:
                return None, errno.ENOTDIR
            if not visible_name(name) or self.kind(path[: i + 1]) is None:
                return None, errno.ENOENT
        return self.kind(path), 0

    def children(self, path: Path_) -> dict[str, str]:
        """Name -> kind of the entries of folder ``path``."""
        base = "/".join(path) + "/" if path else ""
        files, dirs = set(), set()
        for key in self._rel_keys():
            if not key.startswith(base):
                continue
            name, sep, _ = key[len(base) :].partition("/")
            if not visible_name(name):
                continue  # includes the folder's own marker (name "")
            (dirs if sep else files).add(name)
        return {**{n: FILE for n in files - dirs}, **{n: DIR for n in dirs}}

    def version(self, path: Path_) -> Version:
        return self.objects[self.key(path)]

    def visible(self, limit: int = 1000) -> list[tuple[Path_, str]]:
        """Every visible (path, kind), root excluded, breadth first (bounded)."""
        out: list[tuple[Path_, str]] = []
        queue: list[Path_] = [()]
        while queue and len(out) < limit:
            parent = queue.pop(0)
            for name, kind in sorted(self.children(parent).items()):
                out.append(((*parent, name), kind))
                if kind == DIR:
                    queue.append((*parent, name))
        return out


# -- what drivers report ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """Attributes as a driver observed them."""

    kind: str
    ino: int
    size: int
    mode: int
    uid: int
    gid: int
    mtime: float

    @classmethod
    def of_attr(cls, attr: Attr) -> Seen:
        kind = DIR if stat.S_ISDIR(attr.mode) else FILE
        return cls(kind, attr.ino, attr.size, attr.mode, attr.uid, attr.gid, attr.mtime_ns / 1e9)

    @classmethod
    def of_stat(cls, st_: os.stat_result) -> Seen:
        kind = DIR if stat.S_ISDIR(st_.st_mode) else FILE
        return cls(kind, st_.st_ino, st_.st_size, st_.st_mode, st_.st_uid, st_.st_gid, st_.st_mtime_ns / 1e9)


@dataclass
class Opened:
    handle: Any
    ino: int
    size: int
    keep_cache: bool | None  # None: the driver cannot tell (a real kernel decides)


Walk = tuple[dict[Path_, list[tuple[str, Seen]]], dict[Path_, bytes]]  # listings of folders, file contents


def walk_by_calls(driver: Driver) -> Walk:
    """The whole tree as the mount shows it, following its own listings (bounded)."""
    listings: dict[Path_, list[tuple[str, Seen]]] = {}
    contents: dict[Path_, bytes] = {}
    queue: list[Path_] = [()]
    for _ in range(1000):
        if not queue:
            return listings, contents
        path = queue.pop(0)
        listings[path] = driver.listdir(path)
        for name, seen in listings[path]:
            if seen.kind == DIR:
                queue.append((*path, name))
            else:
                contents[(*path, name)] = driver.read_file((*path, name), 1 << 20)
    raise AssertionError("tree walk did not finish")


class Driver(Protocol):
    defaults: Defaults
    stable_inos: bool  # same path and kind -> same ino while we hold it (false where the kernel forgets)
    listing_attrs_from_head: bool  # listed entries carry HEAD attributes (FUSE: scandir + lstat)
    mtime_slack: float  # tolerance for LastModified-based mtimes (HTTP dates have whole seconds)
    handle_reads_pinned: bool  # a handle reads only its version (no kernel page cache shared per inode)

    def outside_put(self, key: str, data: bytes, metadata: dict[str, str]) -> Version: ...
    def outside_delete(self, key: str) -> None: ...
    def bucket_keys(self) -> set[str]: ...
    def stat(self, path: Path_) -> Seen: ...
    def listdir(self, path: Path_) -> list[tuple[str, Seen]]: ...
    def read_file(self, path: Path_, chunk: int) -> bytes: ...
    def walk(self) -> Walk: ...
    def pread(self, path: Path_, off: int, size: int) -> bytes: ...
    def open(self, path: Path_) -> Opened: ...
    def read_handle(self, opened: Opened, off: int, size: int) -> bytes: ...
    def close_handle(self, opened: Opened) -> None: ...
    def allowed_errnos(self, expected: int, path: Path_) -> set[int]: ...
    def close(self) -> None: ...


# -- the core driver ---------------------------------------------------------------------------------


class TrioPortal:
    """One trio run on its own thread with a nursery, for the life of one state machine (see module doc)."""

    def __init__(self, timeout: float = 20.0) -> None:
        self.timeout = timeout
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self.nursery: trio.Nursery | None = None
        self._thread = threading.Thread(target=self._run, name="trio-portal", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._token is None:
            raise RuntimeError(f"trio portal did not start: {self._error!r}")

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def run(self, afn: Callable[[], Awaitable[T]]) -> T:
        """Run ``afn()`` in the portal's trio run; return once background work has settled."""

        async def settled() -> T:
            with trio.fail_after(self.timeout):
                try:
                    return await afn()
                finally:
                    await trio.testing.wait_all_tasks_blocked()

        return trio.from_thread.run(settled, trio_token=self._token)

    def close(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(self.timeout)
        assert not self._thread.is_alive(), "trio portal did not stop"
        if self._error is not None:
            raise self._error


def _os_error(exc: S3FilesError) -> OSError:
    return OSError(exc.errno, f"{type(exc).__name__}: {exc}")


class CoreDriver:
    """FileSystem over MemoryStore, driven the way the kernel drives the FUSE adapter."""

    stable_inos = True
    listing_attrs_from_head = False
    mtime_slack = 0.0
    handle_reads_pinned = True

    def __init__(self, prefix: str, read: ReadOptions, consistency: Consistency = Consistency.CLOSE_TO_OPEN) -> None:
        self.defaults = Defaults(uid=1234, gid=5678, file_mode=0o640, dir_mode=0o750)
        self._clock = itertools.count(1_000_000_000)  # LastModified of outside puts: known to the model
        self.store = MemoryStore(now=lambda: float(next(self._clock)) + 0.25)
        self._staging = tempfile.TemporaryDirectory(prefix="s3files-prop-")
        self.portal = TrioPortal()
        opts = MountOptions(
            source=Source("bucket", prefix),
            mountpoint=Path("/unused"),
            read=read,
            uid=self.defaults.uid,
            gid=self.defaults.gid,
            file_mode=self.defaults.file_mode,
            dir_mode=self.defaults.dir_mode,
            consistency=consistency,
            metadata_ttl=0.0,
        )
        assert self.portal.nursery is not None
        self.fs = FileSystem(
            self.store, opts, spawn=self.portal.nursery.start_soon, staging=Path(self._staging.name)
        )
        self.lookups: dict[int, int] = {}  # ino -> references the "kernel" holds
        self.page_cache: dict[int, dict[int, int]] = {}  # ino -> offset -> byte the "kernel" cached
        # called with (path, cached bytes) when open lets the kernel keep its pages (the machine checks)
        self.on_keep_cache: Callable[[Path_, dict[int, int]], None] = lambda path, cached: None

    def _call(self, afn: Callable[[], Awaitable[T]]) -> T:
        try:
            return self.portal.run(afn)
        except S3FilesError as exc:
            raise _os_error(exc) from exc

    # outside writers (through the portal: the store is touched on the trio thread only)
    def outside_put(self, key: str, data: bytes, metadata: dict[str, str]) -> Version:
        async def put() -> Version:
            self.store.seed(key, data, metadata)
            info = await self.store.head(key)
            return Version(data, dict(metadata), info.last_modified)

        return self.portal.run(put)

    def outside_delete(self, key: str) -> None:
        async def delete() -> None:
            await self.store.delete(key)

        self.portal.run(delete)

    def bucket_keys(self) -> set[str]:
        return set(self.store.keys())

    # the kernel's side
    async def _resolve(self, path: Path_) -> tuple[int, Attr]:
        ino, attr = ROOT_INO, await self.fs.getattr(ROOT_INO)
        for name in path:
            attr = await self.fs.lookup(ino, name)
            ino = attr.ino
            self.lookups[ino] = self.lookups.get(ino, 0) + 1
        return ino, attr

    def lookup(self, path: Path_) -> Seen:
        return Seen.of_attr(self._call(lambda: self._resolve(path))[1])

    def stat(self, path: Path_) -> Seen:
        async def go() -> tuple[Attr, Attr]:
            ino, looked_up = await self._resolve(path)
            return looked_up, await self.fs.getattr(ino)

        looked_up, attr = self._call(go)
        # nothing changed between the two calls: a lookup and a getattr must agree
        assert looked_up == attr, (looked_up, attr)
        return Seen.of_attr(attr)

    def getattr(self, ino: int) -> Seen:
        return Seen.of_attr(self._call(lambda: self.fs.getattr(ino)))

    def forget(self, ino: int) -> None:
        self.fs.forget(ino, self.lookups.pop(ino))
        # The kernel forgets an inode when it evicts it, pages and all; the number may come back for the
        # same path (stable inode numbers), with nothing cached.
        self.page_cache.pop(ino, None)

    def listdir(self, path: Path_) -> list[tuple[str, Seen]]:
        return [(name, Seen.of_attr(attr)) for name, attr in self._call(lambda: self._listdir(path))]

    def walk(self) -> Walk:
        """The whole tree in one trip to the trio thread (the machine walks it after every step)."""

        async def go() -> Walk:
            listings: dict[Path_, list[tuple[str, Seen]]] = {}
            contents: dict[Path_, bytes] = {}
            queue: list[Path_] = [()]
            for _ in range(1000):
                if not queue:
                    return listings, contents
                path = queue.pop(0)
                entries = await self._listdir(path)
                listings[path] = [(name, Seen.of_attr(attr)) for name, attr in entries]
                for name, attr in entries:
                    if stat.S_ISDIR(attr.mode):
                        queue.append((*path, name))
                    else:
                        contents[(*path, name)] = await self._read_file((*path, name), 1 << 20)
            raise AssertionError("tree walk did not finish")

        return self._call(go)

    async def _listdir(self, path: Path_) -> list[tuple[str, Attr]]:
        ino, _ = await self._resolve(path)
        fh = await self.fs.opendir(ino)
        try:
            entries = await self.fs.readdir(fh, 0)
            for _name, attr, _ in entries:  # readdirplus: the kernel holds each entry it accepted
                self.fs.acquire(attr.ino)
                self.lookups[attr.ino] = self.lookups.get(attr.ino, 0) + 1
            # positions are stable while the handle is open: paging from any offset gives the rest
            for start in sorted({0, 1, len(entries) // 2, len(entries)}):
                rest = await self.fs.readdir(fh, start)
                assert [(n, a.ino, i) for n, a, i in rest] == [
                    (n, a.ino, i) for n, a, i in entries[start:]
                ], f"readdir({start}) of {path} is not the rest of readdir(0)"
            assert [i for _, _, i in entries] == list(range(1, len(entries) + 1))
        finally:
            self.fs.releasedir(fh)
        return [(name, attr) for name, attr, _ in entries]

    def _cache(self, ino: int, off: int, data: bytes) -> None:
        pages = self.page_cache.setdefault(ino, {})
        for i, byte in enumerate(data):
            pages[off + i] = byte

    async def _open(self, path: Path_) -> Opened:
        ino, _ = await self._resolve(path)
        opened = await self.fs.open(ino, os.O_RDONLY)
        assert opened.attr.ino == ino, f"open({ino}) answered for inode {opened.attr.ino}"
        if opened.keep_cache:
            self.on_keep_cache(path, dict(self.page_cache.get(ino, {})))
        else:
            self.page_cache.pop(ino, None)  # FOPEN_KEEP_CACHE unset: the kernel drops the inode's pages
        return Opened(opened.fh, ino, opened.attr.size, opened.keep_cache)

    async def _read(self, opened: Opened, off: int, size: int) -> bytes:
        data = bytes(await self.fs.read(opened.handle, off, size))  # may be a view of a held part
        self._cache(opened.ino, off, data)  # whatever a read returns lands in the inode's page cache
        return data

    def read_file(self, path: Path_, chunk: int) -> bytes:
        return self._call(lambda: self._read_file(path, chunk))

    async def _read_file(self, path: Path_, chunk: int) -> bytes:
        opened = await self._open(path)
        try:
            out = []
            for _ in range(opened.size // chunk + 2):
                data = await self._read(opened, sum(map(len, out)), chunk)
                if not data:
                    return b"".join(out)
                out.append(data)
            raise AssertionError(f"read of {path} did not stop at its size {opened.size}")
        finally:
            await self.fs.release(opened.handle)

    def pread(self, path: Path_, off: int, size: int) -> bytes:
        async def go() -> bytes:
            opened = await self._open(path)
            try:
                return await self._read(opened, off, size)
            finally:
                await self.fs.release(opened.handle)

        return self._call(go)

    def open(self, path: Path_) -> Opened:
        return self._call(lambda: self._open(path))

    def read_handle(self, opened: Opened, off: int, size: int) -> bytes:
        return self._call(lambda: self._read(opened, off, size))

    def close_handle(self, opened: Opened) -> None:
        self._call(lambda: self.fs.release(opened.handle))

    def allowed_errnos(self, expected: int, path: Path_) -> set[int]:
        # A name over 255 bytes is ENAMETOOLONG where the model (which only hides such keys) says ENOENT.
        return {expected, errno.ENAMETOOLONG} if any(len(s.encode()) > 255 for s in path) else {expected}

    def close(self) -> None:
        try:
            self.portal.close()
        finally:
            self._staging.cleanup()


# -- the machine ---------------------------------------------------------------------------------------


@dataclass
class Handle:
    """A file opened by the mount side, and what the bucket held at that key when it was opened."""

    path: Path_
    key: str
    version: Version
    since: int  # index into model.history[key] of the version opened
    opened: Opened
    results: list[bytes] = field(default_factory=list)


class ReadSemantics(RuleBasedStateMachine):
    """Rules and checks shared by every driver. Subclasses pick the driver in an ``@initialize`` rule."""

    handles = Bundle("handles")

    PREFIX = ""  # the mount's key prefix
    KEY_PREFIXES: tuple[str, ...] = ("",)  # what outside keys start with (some may miss the mount prefix)
    SPECIAL_KEYS: tuple[str, ...] = ("/", "//", "/x", "x//", "x/./", "x/../y", "x/" + LONG + "/y")
    LOOKUP_SEGMENTS: tuple[str, ...] = (*VALID_SEGMENTS, "ü", LONG)
    CONTENT: st.SearchStrategy[bytes] = st.one_of(TINY_CONTENT, seeded_bytes(200))
    CHUNKS: tuple[int, ...] = (1, 5, 64, 4096, 1 << 20)
    TREE_CHECK_EVERY = 1  # full-tree comparison after every n-th step
    MAX_HANDLES = 6

    def __init__(self) -> None:
        super().__init__()
        self.driver: Driver | None = None
        self.model = BucketModel(self.PREFIX)
        self.seen: dict[Path_, tuple[str, int]] = {}  # path -> (kind, ino) last observed
        self.inodes_seen: dict[int, tuple[Path_, str]] = {}  # every ino observed -> (path, kind)
        self.open_handles: list[Handle] = []
        self.steps = 0

    @property
    def d(self) -> Driver:
        assert self.driver is not None
        return self.driver

    def teardown(self) -> None:
        if self.driver is None:
            return
        try:
            for handle in self.open_handles:
                self.d.close_handle(handle.opened)
        finally:
            self.d.close()

    # -- drawing keys and paths (the choices depend on the model) ------------------------------------
    # Indices into lists the model holds, rather than strategies built afresh per step: cheaper to draw,
    # and faster to shrink.

    @staticmethod
    def pick(data: st.DataObject, items: list[T], label: str) -> T:
        return items[data.draw(st.integers(0, len(items) - 1), label=label)]

    def draw_key(self, data: st.DataObject) -> str:
        """A new key, an existing one (a new version), one below an existing key (file -> folder), or the
        key of a file someone has open (a writer replaces it under the reader)."""
        existing = sorted(self.model.objects)
        open_keys = sorted({h.key for h in self.open_handles})
        ways = ["new", "new", "special"] + (["existing", "below"] if existing else [])
        way = self.pick(data, ways + (["open"] if open_keys else []), "key kind")
        if way == "special":
            return self.pick(data, list(self.SPECIAL_KEYS), "special key")
        if way == "existing":
            return self.pick(data, existing, "existing key")
        if way == "below":
            return self.pick(data, existing, "parent key").rstrip("/") + "/" + data.draw(KEY_SEGMENT)
        if way == "open":
            return self.pick(data, open_keys, "open key")
        return data.draw(fresh_keys(self.KEY_PREFIXES), label="new key")

    def draw_path(self, data: st.DataObject, kind: str | None = None) -> Path_:
        """Mostly a path the model shows (of ``kind``), sometimes any path of lookup segments."""
        known = [p for p, k in self.model.visible() if kind is None or k == kind]
        if kind == DIR:
            known.append(())
        open_paths = sorted({h.path for h in self.open_handles}) if kind == FILE else []
        way = data.draw(st.integers(0, 4 if open_paths else 3), label="path kind")
        if way == 4:
            return self.pick(data, open_paths, "open path")  # a second open of a file open already
        if known and way > 0:
            return self.pick(data, known, "known path")
        return data.draw(lookup_paths(self.LOOKUP_SEGMENTS), label="any path")

    # -- outside writers ----------------------------------------------------------------------------

    def populate(self, data: st.DataObject) -> None:
        """Initial objects, so that the mount side has a tree to read from the first step."""
        for _ in range(data.draw(st.integers(1, 8), label="initial objects")):
            self.outside_put(data)

    @rule(data=st.data())
    def outside_put(self, data: st.DataObject) -> None:
        key = self.draw_key(data)
        body = b"" if key.endswith("/") else data.draw(self.CONTENT, label="body")
        metadata = data.draw(METADATA, label="metadata")
        self.model.put(key, self.d.outside_put(key, body, metadata))

    @precondition(lambda self: self.model.objects)
    @rule(data=st.data())
    def outside_metadata_change(self, data: st.DataObject) -> None:
        """Same bytes, new metadata (what s3fs's chmod does with a copy): same ETag, new attributes."""
        key = self.pick(data, sorted(self.model.objects), "key")
        metadata = data.draw(METADATA, label="metadata")
        self.model.put(key, self.d.outside_put(key, self.model.objects[key].data, metadata))

    @precondition(lambda self: self.model.objects)
    @rule(data=st.data())
    def outside_delete(self, data: st.DataObject) -> None:
        key = self.pick(data, sorted(self.model.objects), "key")
        self.d.outside_delete(key)
        self.model.delete(key)

    # -- the mount side -----------------------------------------------------------------------------

    @rule(data=st.data())
    def stat_path(self, data: st.DataObject) -> None:
        self.check_stat(self.draw_path(data))

    @rule(data=st.data())
    def list_folder(self, data: st.DataObject) -> None:
        self.check_listing(self.draw_path(data, DIR))

    @rule(data=st.data())
    def read_file(self, data: st.DataObject) -> None:
        path = self.draw_path(data, FILE)
        chunk = data.draw(st.sampled_from(self.CHUNKS), label="chunk")
        self.check_read_file(path, chunk)

    @rule(data=st.data(), off=st.integers(0, 400), size=st.integers(0, 300))
    def pread_path(self, data: st.DataObject, off: int, size: int) -> None:
        path = self.draw_path(data, FILE)
        kind, err = self.model.resolve(path)
        try:
            got = self.d.pread(path, off, size)
        except OSError as exc:
            self.expect_error(exc, path, kind, err)
            return
        assert kind == FILE, f"pread of {path} worked, but it is {kind or 'missing'}"
        assert got == self.model.version(path).data[off : off + size]

    @precondition(lambda self: len(self.open_handles) < self.MAX_HANDLES)
    @rule(target=handles, data=st.data())
    def open_handle(self, data: st.DataObject) -> Any:
        path = self.draw_path(data, FILE)
        kind, err = self.model.resolve(path)
        try:
            opened = self.d.open(path)
        except OSError as exc:
            self.expect_error(exc, path, kind, err)
            return multiple()
        assert kind == FILE, f"open of {path} worked, but it is {kind or 'missing'}"
        version = self.model.version(path)
        key = self.model.key(path)
        assert opened.size == len(version.data), "open reports the newest size (close-to-open)"
        handle = Handle(path, key, version, len(self.model.history[key]) - 1, opened)
        self.open_handles.append(handle)
        return handle

    @rule(handle=handles, off=st.integers(0, 400), size=st.integers(0, 300))
    def read_handle(self, handle: Handle, off: int, size: int) -> None:
        self.check_handle_read(handle, off, size)

    def check_handle_read(self, handle: Handle, off: int, size: int) -> None:
        """A handle reads the version it opened; after an outside change: those bytes or an error."""
        versions = self.model.history[handle.key][handle.since :]
        unchanged = all(v is not None and v.data == handle.version.data for v in versions)
        if (
            not unchanged
            and not self.d.handle_reads_pinned
            and "old-handle-read-feeds-newer-handles" in KNOWN_BUGS
        ):
            return  # through a real kernel, the known bug would show in the reads of newer handles
        try:
            got = self.d.read_handle(handle.opened, off, size)
        except OSError as exc:
            assert not unchanged, f"read of unchanged {handle.path} failed: {exc!r}"
            current = self.model.objects.get(handle.key)
            expected = errno.ENOENT if current is None else errno.ESTALE
            assert exc.errno in self.stale_errnos(expected), f"read of changed {handle.path}: {exc!r}"
            return
        wanted = handle.version.data[off : off + size]
        if unchanged or self.d.handle_reads_pinned:
            assert got == wanted, f"read of {handle.path} at {off}+{size} is not the version it opened"
        else:
            self.check_bytes_of_some_version(got, off, handle, versions)
        handle.results.append(got)
        if self.d.handle_reads_pinned and "old-handle-read-feeds-newer-handles" not in KNOWN_BUGS:
            self.check_newer_handles_would_read(handle, off, got)

    def check_newer_handles_would_read(self, handle: Handle, off: int, got: bytes) -> None:
        """What a read returns, the kernel caches for the inode: a handle opened later on the same inode
        then reads those bytes from the page cache, never asking us, so they must be of its version too."""
        newer = self.open_handles[self.open_handles.index(handle) + 1 :]
        for other in newer:
            if other.opened.ino != handle.opened.ino:
                continue
            theirs = other.version.data[off : off + len(got)]
            assert got[: len(theirs)] == theirs, (
                f"{handle.path}: a read through an older handle fed the page cache bytes that a newer "
                f"handle of another version would read: {got[:20]!r}, not {theirs[:20]!r}"
            )

    @rule(handle=consumes(handles))
    def close_handle(self, handle: Handle) -> None:
        self.open_handles.remove(handle)
        self.d.close_handle(handle.opened)

    # -- checks ---------------------------------------------------------------------------------------

    @invariant()
    def tree_matches_model(self) -> None:
        if self.driver is None:
            return
        self.steps += 1
        # Every open handle reads again after every step (at a position that moves): reads across outside
        # changes are where versions could mix, and a rule that reads one handle is drawn too rarely.
        for handle in self.open_handles:
            self.check_handle_read(handle, len(handle.results) * 13 % (len(handle.version.data) + 1), 64)
        if self.steps % self.TREE_CHECK_EVERY == 0:
            self.check_tree()

    def check_tree(self) -> None:
        """Every visible folder lists exactly its model entries; every file reads exactly its content."""
        listings, contents = self.d.walk()
        visible = self.model.visible()
        assert set(listings) == {()} | {p for p, k in visible if k == DIR}, "folders reached by a walk"
        for path, entries in sorted(listings.items()):
            self.check_entries(path, entries)
        assert set(contents) == {p for p, k in visible if k == FILE}, "files reached by a walk"
        for path, data in sorted(contents.items()):
            want = self.model.version(path).data
            assert data == want, f"{path}: read {len(data)} bytes {data[:20]!r}, expected {want[:20]!r}"

    def observe(self, path: Path_, seen: Seen) -> None:
        """Inode numbers: a kind change needs a new number; a path keeps its number while held."""
        before = self.seen.get(path)
        if before is not None:
            kind, ino = before
            if kind != seen.kind:
                assert ino != seen.ino, f"{path} changed from {kind} to {seen.kind} but kept inode {ino}"
            elif self.d.stable_inos:
                assert ino == seen.ino, f"{path} ({kind}) moved from inode {ino} to {seen.ino}"
        self.seen[path] = (seen.kind, seen.ino)
        self.inodes_seen[seen.ino] = (path, seen.kind)

    def expect_error(self, exc: OSError, path: Path_, kind: str | None, err: int) -> None:
        if kind is None:
            assert exc.errno in self.d.allowed_errnos(err, path), f"{path}: {exc!r}, expected {err}"
        elif kind == DIR:
            assert exc.errno == errno.EISDIR, f"{path} is a folder: {exc!r}"
        else:
            raise AssertionError(f"{path} is a {kind}, but: {exc!r}")

    def stale_errnos(self, expected: int) -> set[int]:
        # A handle of a deleted object fails with ENOENT when its GET finds the key gone, or with ESTALE
        # when a newer version was opened in this mount before the delete (its handle is stale either way).
        return {expected, errno.ESTALE}

    def check_file_attrs(self, path: Path_, seen: Seen, listed: bool = False) -> None:
        version = self.model.version(path)
        assert seen.size == len(version.data), f"{path}: size {seen.size}, content {len(version.data)}"
        got = (seen.mode, seen.uid, seen.gid)
        head = expected_head_attrs(version, self.d.defaults)
        if listed and not self.d.listing_attrs_from_head:
            # Documented (inodes.py): a listed entry shows the defaults and LastModified until a HEAD
            # was seen for its ETag; then that HEAD's metadata wins for the ETag.
            candidates = [expected_listing_attrs(version, self.d.defaults)] + [
                expected_head_attrs(v, self.d.defaults)
                for v in self.model.history[self.model.key(path)]
                if v is not None and v.etag == version.etag
            ]
            assert (*got, seen.mtime) in candidates, f"{path}: listed as {seen}, expected one of {candidates}"
            return
        assert got == head[:3], f"{path}: mode/uid/gid {got}, expected {head[:3]}"
        slack = 1e-6 if head[3] != version.last_modified else max(self.d.mtime_slack, 1e-6)
        assert abs(seen.mtime - head[3]) <= slack, f"{path}: mtime {seen.mtime}, expected {head[3]}"

    def check_dir_attrs(self, path: Path_, seen: Seen) -> None:
        """A folder shows the mount's defaults, or its marker object's metadata (only the permission bits
        of its mode count): of a version the marker had, since a marker HEAD is trusted for metadata_ttl.
        The root has the mount's defaults (its prefix's marker is not read)."""
        d = self.d.defaults
        candidates = {(stat.S_IFDIR | d.dir_mode, d.uid, d.gid)}
        if path:
            for version in self.model.history.get(self.model.key(path) + "/", []):
                if version is not None:
                    _, uid, gid, _ = expected_head_attrs(version, d)
                    mode = _parse_int(version.metadata.get("mode"))
                    if mode is None or not 0 <= mode <= 0o177777:
                        mode = d.dir_mode
                    candidates.add((stat.S_IFDIR | stat.S_IMODE(mode), uid, gid))
        got = (seen.mode, seen.uid, seen.gid)
        assert got in candidates, f"{path}: folder mode/uid/gid {got}, expected one of {sorted(candidates)}"

    def check_stat(self, path: Path_) -> None:
        kind, err = self.model.resolve(path)
        try:
            seen = self.d.stat(path)
        except OSError as exc:
            assert kind is None, f"stat of {kind} {path} failed: {exc!r}"
            assert exc.errno in self.d.allowed_errnos(err, path), f"stat {path}: {exc!r}, expected {err}"
            return
        assert kind is not None, f"stat of missing {path} answered {seen}"
        assert seen.kind == kind, f"{path} is a {seen.kind}, the model says {kind}"
        if kind == FILE:
            self.check_file_attrs(path, seen)
        else:
            self.check_dir_attrs(path, seen)
        self.observe(path, seen)

    def check_listing(self, path: Path_) -> dict[str, str]:
        kind, err = self.model.resolve(path)
        try:
            entries = self.d.listdir(path)
        except OSError as exc:
            assert kind != DIR, f"listing of folder {path} failed: {exc!r}"
            expected = errno.ENOTDIR if kind == FILE else err
            assert exc.errno in self.d.allowed_errnos(expected, path), f"list {path}: {exc!r}, not {expected}"
            return {}
        assert kind == DIR, f"listing of {kind or 'missing'} {path} worked: {entries}"
        return self.check_entries(path, entries)

    def check_entries(self, path: Path_, entries: list[tuple[str, Seen]]) -> dict[str, str]:
        """A folder's listing against the model: names, kinds, attributes, no duplicates."""
        names = [name for name, _ in entries]
        assert len(names) == len(set(names)), f"duplicates in listing of {path}: {names}"
        assert all(visible_name(n) and "/" not in n for n in names), f"bad names in {path}: {names}"
        expected_children = self.model.children(path)
        assert {n: s.kind for n, s in entries} == expected_children, f"listing of {path}"
        for name, seen in entries:
            if seen.kind == FILE:
                self.check_file_attrs((*path, name), seen, listed=True)
            else:
                self.check_dir_attrs((*path, name), seen)
            self.observe((*path, name), seen)
        return expected_children

    def check_read_file(self, path: Path_, chunk: int) -> None:
        kind, err = self.model.resolve(path)
        try:
            got = self.d.read_file(path, chunk)
        except OSError as exc:
            self.expect_error(exc, path, kind, err)
            return
        assert kind == FILE, f"read of {kind or 'missing'} {path} worked"
        want = self.model.version(path).data
        assert got == want, f"{path}: read {len(got)} bytes {got[:20]!r}, expected {len(want)} {want[:20]!r}"

    def check_page_cache(self, path: Path_, cached: dict[int, int]) -> None:
        """keep_cache promises that every page the kernel holds for the inode is of the opened version."""
        data = self.model.version(path).data
        wrong = sorted(o for o, b in cached.items() if o < len(data) and data[o] != b)
        assert not wrong, (
            f"open of {path} kept the page cache, but cached bytes {wrong[:8]}... are of another version"
        )

    def check_bytes_of_some_version(
        self, got: bytes, off: int, handle: Handle, versions: list[Version | None]
    ) -> None:
        """Through a real kernel the page cache is per inode: bytes may come from a newer open's reads."""
        datas = [v.data for v in versions if v is not None]
        for i, byte in enumerate(got):
            assert any(off + i < len(d) and d[off + i] == byte for d in datas), (
                f"{handle.path}: byte {off + i} of a read through an old handle is of no version"
            )


# -- core level -------------------------------------------------------------------------------------

READ_OPTIONS = st.one_of(
    st.just(ReadOptions()),
    st.lists(st.integers(1, 48), min_size=3, max_size=3)
    .map(sorted)
    .map(lambda s: ReadOptions(first_part=s[0], part_size=s[1], max_window=s[2])),
)


class CoreMachine(ReadSemantics):
    """FileSystem over MemoryStore; also checks what only the core shows (inode numbers, forget)."""

    CONSISTENCY = Consistency.CLOSE_TO_OPEN  # with metadata_ttl 0: only a folder's getattr differs from strict

    @initialize(read=READ_OPTIONS, data=st.data())
    def start(self, read: ReadOptions, data: st.DataObject) -> None:
        self.driver = CoreDriver(self.PREFIX, read, self.CONSISTENCY)
        self.core.on_keep_cache = self.check_page_cache
        self.populate(data)

    @property
    def core(self) -> CoreDriver:
        assert isinstance(self.driver, CoreDriver)
        return self.driver

    def known_inodes(self) -> list[tuple[Path_, str, int]]:
        """Inodes the "kernel" still holds, also those whose path has since become something else."""
        return sorted((p, k, i) for i, (p, k) in self.inodes_seen.items() if i in self.core.lookups)

    def forgettable_inodes(self) -> list[tuple[Path_, str, int]]:
        """Known inodes no open handle holds: the kernel never evicts (forgets) an inode of an open file."""
        held = {h.opened.ino for h in self.open_handles}
        return [(p, k, i) for p, k, i in self.known_inodes() if i not in held]

    @precondition(lambda self: self.forgettable_inodes())
    @rule(data=st.data())
    def forget_inode(self, data: st.DataObject) -> None:
        """The kernel drops every reference to an inode: the next lookup may give the path its number
        again (stable inode numbers), with nothing cached."""
        _, _, ino = data.draw(st.sampled_from(self.forgettable_inodes()), label="inode")
        self.core.forget(ino)
        self.seen = {p: s for p, s in self.seen.items() if s[1] != ino}
        with pytest.raises(OSError) as gone:
            self.core.getattr(ino)
        assert gone.value.errno == errno.ENOENT

    @precondition(lambda self: self.known_inodes())
    @rule(data=st.data())
    def getattr_inode(self, data: st.DataObject) -> None:
        """getattr of an inode the kernel still holds (an open fd, a cwd), however its path changed."""
        path, kind, ino = data.draw(st.sampled_from(self.known_inodes()), label="inode")
        strict = self.CONSISTENCY is Consistency.STRICT
        try:
            seen = self.core.getattr(ino)
        except OSError as exc:
            gone = self.model.key(path) not in self.model.objects if kind == FILE else strict and self.model.kind(path) != DIR
            assert gone, f"getattr of held {kind} inode {ino} ({path}) failed: {exc!r}"
            assert exc.errno == errno.ENOENT
            return
        if kind == DIR and strict:  # strict trusts nothing: a folder gone from S3 is gone at once
            assert self.model.kind(path) == DIR, f"getattr of folder {path} succeeded after it was deleted"
        assert seen.ino == ino, f"getattr({ino}) of {path} answered for inode {seen.ino}"
        assert seen.kind == kind
        if kind == FILE:
            version = self.model.objects[self.model.key(path)]
            assert seen.size == len(version.data)

    @rule()
    def bucket_is_untouched_by_reads(self) -> None:
        assert self.core.bucket_keys() == set(self.model.objects)
        for key, version in self.model.objects.items():
            assert self.core.store.data(key) == version.data
        writes = {"put", "delete", "copy", "create_multipart", "upload_part", "complete_multipart"}
        counts = self.core.store.requests.snapshot()
        # outside deletes go through the store's own delete; everything else the mount did is reads
        assert not (writes - {"delete"}) & set(counts), counts


class CoreStrictMachine(CoreMachine):
    """Strict mode: also a folder's getattr asks S3, so a held folder inode is ENOENT once its keys are gone."""

    CONSISTENCY = Consistency.STRICT


class CorePrefixMachine(CoreMachine):
    """A mount of ``p/``: keys beside it (``p``, ``px/...``, the root marker ``p/``) must stay invisible."""

    PREFIX = "p/"
    KEY_PREFIXES = ("p/", "p/", "p/", "", "p")
    SPECIAL_KEYS = ("p", "p/", "p//", "p//x", "px", "px/a", "p/x//", "p/./x")  # beside and at the root


# CI runs fewer examples than a full run (S3FILES_FULL_COUNTS=1) to stay in its 20-minute budget.
CORE_SETTINGS = settings(
    max_examples=200 if FULL_COUNTS else 120,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_core_read_semantics_match_the_model() -> None:
    run_state_machine_as_test(CoreMachine, settings=CORE_SETTINGS)


def test_core_strict_read_semantics_match_the_model() -> None:
    run_state_machine_as_test(CoreStrictMachine, settings=settings(CORE_SETTINGS, max_examples=80 if FULL_COUNTS else 50))


def test_core_prefix_mount_read_semantics_match_the_model() -> None:
    run_state_machine_as_test(CorePrefixMachine, settings=settings(CORE_SETTINGS, max_examples=80 if FULL_COUNTS else 50))


# -- FUSE level ---------------------------------------------------------------------------------------


class FuseDriver:
    """A real mount of a fresh moto bucket; outside writes through boto3, mount-side reads through os."""

    stable_inos = False  # the kernel may forget an inode whenever it likes; numbers then start afresh
    listing_attrs_from_head = True  # scandir's entry.stat() is an lstat: a lookup with a HEAD
    mtime_slack = 1.0  # HTTP dates carry whole seconds
    handle_reads_pinned = False  # the real kernel's page cache is shared by all opens of an inode

    def __init__(self, server: Any, client: Any, bucket: str, mountpoint: Path, prefix: str) -> None:
        from s3files.fuse.mount import mounted_in_thread
        from s3files.store.s3 import open_s3_store

        self.client = client
        self.bucket = bucket
        self.root = mountpoint
        self.defaults = Defaults(uid=os.getuid(), gid=os.getgid(), file_mode=0o644, dir_mode=0o755)
        server.create_bucket(bucket)
        mountpoint.mkdir(parents=True, exist_ok=True)
        opts = MountOptions(
            source=Source(bucket, prefix),
            mountpoint=mountpoint,
            store=StoreOptions(endpoint_url=server.endpoint_url),
            # small parts: a 20 KB object already takes several ranged GETs
            read=ReadOptions(first_part=4096, part_size=8192, max_window=32768),
            metadata_ttl=0.0,  # read-write: reads must not write (bucket_is_untouched_by_reads)
        )

        @contextlib.asynccontextmanager
        async def open_store() -> AsyncIterator[Any]:
            async with open_s3_store(bucket, endpoint_url=server.endpoint_url) as store:
                yield store

        self._stack = contextlib.ExitStack()
        self.fs = self._stack.enter_context(mounted_in_thread(opts, open_store))

    def outside_put(self, key: str, data: bytes, metadata: dict[str, str]) -> Version:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, Metadata=metadata)
        head = self.client.head_object(Bucket=self.bucket, Key=key)
        return Version(data, dict(metadata), head["LastModified"].timestamp())

    def outside_delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def bucket_keys(self) -> set[str]:
        keys: set[str] = set()
        token: dict[str, str] = {}
        for _ in range(100):
            page = self.client.list_objects_v2(Bucket=self.bucket, **token)
            keys.update(o["Key"] for o in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return keys
            token = {"ContinuationToken": page["NextContinuationToken"]}
        raise AssertionError("listing did not end")

    def _path(self, path: Path_) -> Path:
        return self.root.joinpath(*path)

    def stat(self, path: Path_) -> Seen:
        return Seen.of_stat(os.lstat(self._path(path)))

    def listdir(self, path: Path_) -> list[tuple[str, Seen]]:
        out = []
        with os.scandir(self._path(path)) as it:
            for entry in it:
                seen = Seen.of_stat(entry.stat(follow_symlinks=False))
                assert (seen.kind == DIR) == entry.is_dir(follow_symlinks=False), "d_type and lstat differ"
                out.append((entry.name, seen))
        return out

    def walk(self) -> Walk:
        return walk_by_calls(self)

    def read_file(self, path: Path_, chunk: int) -> bytes:
        fd = os.open(self._path(path), os.O_RDONLY)
        try:
            out = []
            for _ in range(1_000_000):
                data = os.read(fd, chunk)
                if not data:
                    return b"".join(out)
                out.append(data)
            raise AssertionError("read did not end")
        finally:
            os.close(fd)

    def pread(self, path: Path_, off: int, size: int) -> bytes:
        fd = os.open(self._path(path), os.O_RDONLY)
        try:
            return os.pread(fd, size, off)
        finally:
            os.close(fd)

    def open(self, path: Path_) -> Opened:
        fd = os.open(self._path(path), os.O_RDONLY)
        try:
            st_ = os.fstat(fd)
            if stat.S_ISDIR(st_.st_mode):
                raise IsADirectoryError(errno.EISDIR, "a folder", str(self._path(path)))
        except BaseException:
            os.close(fd)
            raise
        return Opened(fd, st_.st_ino, st_.st_size, None)

    def read_handle(self, opened: Opened, off: int, size: int) -> bytes:
        return os.pread(opened.handle, size, off)

    def close_handle(self, opened: Opened) -> None:
        os.close(opened.handle)

    def allowed_errnos(self, expected: int, path: Path_) -> set[int]:
        # A name over 255 bytes: the kernel or the file system may refuse it either way.
        return {expected, errno.ENAMETOOLONG} if any(len(s.encode()) > 255 for s in path) else {expected}

    def close(self) -> None:
        self._stack.close()
        assert not os.path.ismount(self.root), f"{self.root} is still mounted"


_fuse_numbers = itertools.count(1)


class FuseMachine(ReadSemantics):
    """The same rules through a real mount. ``server``/``client``/``workdir`` are set by the test."""

    server: Any = None
    client: Any = None
    workdir: Path = Path("/nonexistent")
    LOOKUP_SEGMENTS = (*VALID_SEGMENTS, "ü", LONG)  # "", ".", ".." mean other things to a path walk
    CONTENT = st.one_of(TINY_CONTENT, seeded_bytes(20_000))
    CHUNKS = (4096, 5000, 1 << 20)  # a read() of a ttl=0 mount costs a HEAD (getattr): no 1-byte reads
    TREE_CHECK_EVERY = 5

    @initialize(data=st.data())
    def start(self, data: st.DataObject) -> None:
        n = next(_fuse_numbers)
        self.driver = FuseDriver(self.server, self.client, f"prop-{n}", self.workdir / f"m{n}", self.PREFIX)
        self.populate(data)

    def stale_errnos(self, expected: int) -> set[int]:
        # Before a read(2) the kernel asks getattr (a HEAD) and returns its error as is; which of the HEAD
        # and the GET If-Match fails first depends on the kernel's page cache, not on the contract.
        return {errno.ESTALE, errno.ENOENT}

    @rule()
    def bucket_is_untouched_by_reads(self) -> None:
        assert self.d.bucket_keys() == set(self.model.objects)


@pytest.mark.fuse
def test_fuse_read_semantics_match_the_model(moto_server: Any, boto3_client: Any, tmp_path: Path) -> None:
    class Machine(FuseMachine):
        server = moto_server
        client = boto3_client
        workdir = tmp_path

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=15 if FULL_COUNTS else 10,
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


# -- bugs the machines found: regression tests for the fixed ones, xfail(strict=True) for the open ones ----


def run_core(
    store: MemoryStore,
    body: Callable[[FileSystem], Awaitable[None]],
    now: Callable[[], float] = lambda: 1000.0,  # a frozen clock: no TTL runs out while the body runs
    **kw: Any,
) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            kw.setdefault("metadata_ttl", 0.0)
            opts = MountOptions(source=Source("bucket"), mountpoint=Path("/unused"), **kw)
            with tempfile.TemporaryDirectory() as staging:
                fs = FileSystem(store, opts, spawn=nursery.start_soon, staging=Path(staging), now=now)
                await body(fs)
                await fs.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


async def _old_handle_reads_after_a_newer_open(fs: FileSystem, store: MemoryStore) -> tuple[Any, ...]:
    """h1 opens "one-one-one" and reads; the object becomes "TWO-TWO-TWO"; h2 opens it (the kernel drops
    the inode's pages); then h1 reads again, on a page miss: what it returns, the kernel caches."""
    ino = (await fs.lookup(ROOT_INO, "f")).ino
    first = await fs.open(ino, os.O_RDONLY)
    assert bytes(await fs.read(first.fh, 0, 4)) == b"one-"  # its reader now holds all 11 bytes
    store.seed("f", b"TWO-TWO-TWO")
    second = await fs.open(ino, os.O_RDONLY)
    assert not second.keep_cache  # a new version: the kernel drops the inode's pages
    try:
        stale: bytes | None = bytes(await fs.read(first.fh, 0, 11))
    except S3FilesError:
        stale = None  # ESTALE: nothing lands in the page cache
    return ino, first, second, stale


def test_next_open_drops_pages_an_old_handle_read_after_a_newer_open() -> None:
    """Fixed: the third open used to say keep_cache=True over pages holding the old version."""
    store = MemoryStore()
    store.seed("f", b"one-one-one")

    async def body(fs: FileSystem) -> None:
        ino, _, _, stale = await _old_handle_reads_after_a_newer_open(fs, store)
        third = await fs.open(ino, os.O_RDONLY)
        assert not (third.keep_cache and stale not in (None, b"TWO-TWO-TWO")), (
            f"open kept the page cache, which holds {stale!r} of the old version"
        )

    run_core(store, body)


def test_fixed_bug_old_handle_read_feeds_the_page_cache_of_a_newer_handle() -> None:
    store = MemoryStore()
    store.seed("f", b"one-one-one")

    async def body(fs: FileSystem) -> None:
        _, _, _, stale = await _old_handle_reads_after_a_newer_open(fs, store)
        # the kernel now serves these bytes to the second handle, opened at "TWO-TWO-TWO"
        assert stale in (None, b"TWO-TWO-TWO"), f"pages of the inode now hold {stale!r}"

    run_core(store, body)


def test_open_right_after_a_stat_sees_an_outside_change() -> None:
    """Fixed (the open-after-lookup HEAD reuse was reverted): open skipped its HEAD within 0.1 s of a
    stat's lookup, missed the change, and the fresh open's reads failed with ESTALE."""
    store = MemoryStore()
    store.seed("f", b"old")

    async def body(fs: FileSystem) -> None:
        attr = await fs.lookup(ROOT_INO, "f")  # stat(2): a HEAD, and no open follows
        store.seed("f", b"new!")  # an outside writer
        opened = await fs.open(attr.ino, os.O_RDONLY)  # a later open(2); the kernel's entry is cached
        assert opened.attr.size == 4, "open did not revalidate"
        assert bytes(await fs.read(opened.fh, 0, 10)) == b"new!"

    run_core(store, body, metadata_ttl=1.0)


def test_getattr_of_a_stale_inode_keeps_the_path_of_the_folder() -> None:
    """Fixed: getattr of a file inode whose path became a folder re-mapped the path to a new file inode
    (answering for another inode), and the folder got a new number at its next lookup."""
    store = MemoryStore()
    store.seed("y", b"file")

    async def body(fs: FileSystem) -> None:
        file_attr = await fs.lookup(ROOT_INO, "y")  # the kernel holds the file inode (say, an open fd)
        store.seed("y/z", b"below")  # now y is a folder (and shadows the file)
        folder_attr = await fs.lookup(ROOT_INO, "y")
        assert folder_attr.ino != file_attr.ino
        again = await fs.getattr(file_attr.ino)  # fstat on the old fd
        assert again.ino == file_attr.ino, f"getattr({file_attr.ino}) answered for inode {again.ino}"
        assert (await fs.lookup(ROOT_INO, "y")).ino == folder_attr.ino, "the folder changed its number"

    run_core(store, body)


@pytest.mark.parametrize(
    ("field", "value"),
    [("mtime", v) for v in ("nan", "inf", "-inf", "1e30")]
    + [(f, v) for f in ("uid", "gid") for v in ("-1", "4294967295", "4294967296")],
)
def test_metadata_no_stat_can_carry_falls_back_to_defaults(field: str, value: str) -> None:
    """Fixed: such values reached stat, and through FUSE made stat (and the folder's listing) EIO."""
    store = MemoryStore(now=lambda: 1_000_000_000.5)
    store.seed("f", b"data", {field: value})

    async def body(fs: FileSystem) -> None:
        attr = await fs.lookup(ROOT_INO, "f")
        assert (attr.uid, attr.gid, attr.mtime_ns) == (1234, 5678, 1_000_000_000_500_000_000)

    run_core(store, body, uid=1234, gid=5678)


@pytest.mark.fuse
def test_fixed_bug_newer_handle_reads_old_bytes_through_fuse(
    moto_server: Any, boto3_client: Any, tmp_path: Path
) -> None:
    driver = FuseDriver(moto_server, boto3_client, f"prop-bug-{next(_fuse_numbers)}", tmp_path / "m", "")
    try:
        meta = {"mtime": "1600000000.5"}  # same size and mtime: nothing else tells the kernel it changed
        driver.outside_put("f", b"one-one-one", meta)
        old = driver.open(("f",))
        assert driver.read_handle(old, 0, 4) == b"one-"
        driver.outside_put("f", b"TWO-TWO-TWO", meta)
        newer = driver.open(("f",))  # drops the inode's pages (keep_cache=False)
        with contextlib.suppress(OSError):  # ESTALE here would be right
            driver.read_handle(old, 0, 11)  # a page miss through the old fd refills the pages
        try:
            assert driver.read_handle(newer, 0, 11) == b"TWO-TWO-TWO"
            assert driver.read_file(("f",), 4096) == b"TWO-TWO-TWO"
        finally:
            driver.close_handle(newer)
            driver.close_handle(old)
    finally:
        driver.close()


@pytest.mark.fuse
def test_garbage_metadata_does_not_break_stat_or_listing_through_fuse(
    moto_server: Any, boto3_client: Any, tmp_path: Path
) -> None:
    """Fixed: one object with x-amz-meta-mtime: nan made its stat EIO and, once looked up, its folder's
    listing EIO (the adapter could not encode the value)."""
    driver = FuseDriver(moto_server, boto3_client, f"prop-bug-{next(_fuse_numbers)}", tmp_path / "m", "")
    try:
        driver.outside_put("ok", b"fine", {})
        driver.outside_put("bad", b"data", {"mtime": "nan", "uid": "-1"})
        assert driver.stat(("bad",)).size == 4
        assert sorted(name for name, _ in driver.listdir(())) == ["bad", "ok"]
    finally:
        driver.close()
