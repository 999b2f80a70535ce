"""The file system: POSIX operations composed from the namespace, inode table, listing cache and readers.

Owns: what each operation asks of S3 and what it trusts from its caches. Returns plain dataclasses
(``Attr``, ``OpenFile``) or raises ``S3FilesError``; knows nothing of FUSE, so it is tested directly
against the in-memory store, and through a real mount against S3 servers.

Request budget (asserted by tests):
- ``readdir`` of N entries: ceil(N/1000) LIST, no HEAD; the listing is kept ``metadata_ttl`` seconds, and
  lookups of its names within that time cost nothing (a name not in a fresh listing is ENOENT at once).
- ``lookup`` of a name not in a fresh listing: one HEAD and one LIST (max-keys 1), concurrently, because a
  name may be a file, a folder (any key below it), or both (the folder wins).
- ``getattr`` within ``metadata_ttl`` of the last answer: nothing; after it, one HEAD for a file.
- ``open``: one HEAD (close-to-open: every open sees the newest version); reads then pin its ETag.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

import trio
from cachetools import TTLCache

from s3files.core.inodes import ROOT_INO, Attr, Defaults, Inode, InodeTable
from s3files.core.namespace import Entry, Namespace, join, valid_name
from s3files.core.reader import Reader, Spawn
from s3files.errors import (
    IsADirectory,
    NotADirectory,
    NotFound,
    ObjectNotFound,
    ReadOnly,
    S3FilesError,
)
from s3files.options import MountOptions
from s3files.store.base import ListPage, ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

MAX_LIST_PAGES = 1_000_000  # a bound on any listing loop: 10^9 keys


@dataclass(frozen=True)
class OpenFile:
    fh: int
    keep_cache: bool  # the kernel may keep its cached pages: the object is the version it cached
    attr: Attr


@dataclass
class _DirHandle:
    ino: int
    path: str
    entries: list[tuple[str, Entry]] | None = None


@dataclass
class _FileHandle:
    ino: int
    reader: Reader


class FileSystem:
    """One mount's file system over ``store``. ``spawn`` starts background work on the mount's nursery."""

    def __init__(
        self,
        store: ObjectStore,
        opts: MountOptions,
        spawn: Spawn,
        now: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.opts = opts
        self._spawn = spawn
        self._now = now
        self.ns = Namespace(opts.source.prefix)
        self.inodes = InodeTable(
            Defaults(opts.uid, opts.gid, opts.file_mode, opts.dir_mode), root_mtime=wall()
        )
        self._mount_time = wall()
        self._listings: TTLCache[str, dict[str, Entry]] = TTLCache(
            maxsize=256, ttl=max(opts.metadata_ttl, 1e-9), timer=now
        )
        self._handles = itertools.count(1)
        self._dirs: dict[int, _DirHandle] = {}
        self._files: dict[int, _FileHandle] = {}

    # -- helpers -----------------------------------------------------------------------------------

    def _node(self, ino: int) -> Inode:
        node = self.inodes.get(ino)
        if node is None:
            raise NotFound(f"unknown inode {ino}")
        return node

    def _fresh_until(self) -> float:
        return self._now() + self.opts.metadata_ttl

    def _record(self, path: str, entry: Entry) -> Inode:
        if entry.is_dir:
            return self.inodes.put_dir(path, self._mount_time, self._fresh_until())
        assert entry.info is not None
        return self.inodes.put_file(path, entry.info, self._fresh_until())

    async def _list(self, path: str) -> dict[str, Entry]:
        """All entries of folder ``path``, from a fresh cached listing or ceil(N/1000) LIST requests."""
        cached = self._listings.get(path)
        if cached is not None:
            return cached
        prefix = self.ns.dir_prefix(path)
        pages: list[ListPage] = []
        token: str | None = None
        for _ in range(MAX_LIST_PAGES):
            page = await self.store.list_page(prefix, "/", token=token)
            pages.append(page)
            token = page.next_token
            if not token:
                break
        entries = self.ns.entries(path, pages)
        if self.opts.metadata_ttl > 0:
            self._listings[path] = entries
        return entries

    async def _probe(self, path: str) -> Entry:
        """Ask S3 whether ``path`` is a folder or a file: HEAD and a 1-key LIST, concurrently."""
        found: dict[str, object] = {}

        async def head() -> None:
            try:
                found["file"] = await self.store.head(self.ns.file_key(path))
            except ObjectNotFound:
                pass

        async def below() -> None:
            page = await self.store.list_page(self.ns.dir_prefix(path), "/", max_keys=1)
            found["dir"] = bool(page.objects or page.prefixes)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(head)
            nursery.start_soon(below)
        name = path.rsplit("/", 1)[-1]
        if found.get("dir"):
            if "file" in found:
                self.ns.hidden(self.ns.file_key(path), "a folder of the same name shadows this file")
            return Entry(name, is_dir=True)
        info = found.get("file")
        if isinstance(info, ObjectInfo):
            return Entry(name, is_dir=False, info=info)
        raise NotFound(f"no such file or folder: {path}")

    async def _head(self, node: Inode) -> Inode:
        try:
            info = await self.store.head(self.ns.file_key(node.path))
        except ObjectNotFound:
            raise NotFound(f"{node.path} was removed from the bucket") from None
        return self.inodes.put_file(node.path, info, self._fresh_until())

    # -- metadata operations -------------------------------------------------------------------------

    async def lookup(self, parent_ino: int, name: str) -> Attr:
        """Find ``name`` in folder ``parent_ino``; the kernel then holds one more reference to it."""
        parent = self._node(parent_ino)
        if not parent.is_dir:
            raise NotADirectory(f"{parent.path} is not a folder")
        if not valid_name(name):
            raise NotFound(f"not a valid name: {name!r}")
        path = join(parent.path, name)
        listing = self._listings.get(parent.path)
        if listing is not None:
            entry = listing.get(name)
            if entry is None:
                raise NotFound(f"no such file or folder: {path}")
        else:
            entry = await self._probe(path)
        node = self._record(path, entry)
        self.inodes.acquire(node.ino)
        return node.attr()

    async def getattr(self, ino: int) -> Attr:
        node = self._node(ino)
        if node.is_dir or node.fresh_until > self._now():
            return node.attr()
        return (await self._head(node)).attr()

    def forget(self, ino: int, n: int) -> None:
        self.inodes.forget(ino, n)

    def acquire(self, ino: int) -> None:
        self.inodes.acquire(ino)

    # -- folders -----------------------------------------------------------------------------------

    async def opendir(self, ino: int) -> int:
        node = self._node(ino)
        if not node.is_dir:
            raise NotADirectory(f"{node.path} is not a folder")
        fh = next(self._handles)
        self._dirs[fh] = _DirHandle(ino, node.path)
        return fh

    async def readdir(self, fh: int, start: int) -> list[tuple[str, Attr, int]]:
        """Entries from position ``start`` as (name, attributes, next position).

        The listing is taken at ``start == 0`` and kept for the handle, so positions stay stable while
        the kernel pages through it. The caller calls ``acquire`` for each entry the kernel accepted.
        """
        handle = self._dirs.get(fh)
        if handle is None:
            raise S3FilesError(f"bad folder handle {fh}")
        if start == 0 or handle.entries is None:
            handle.entries = list((await self._list(handle.path)).items())
        result = []
        for index in range(start, len(handle.entries)):
            name, entry = handle.entries[index]
            node = self._record(join(handle.path, name), entry)
            result.append((name, node.attr(), index + 1))
        return result

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files -------------------------------------------------------------------------------------

    def check_writable(self, what: str) -> None:
        """Every changing operation goes through here until the write path lands."""
        if self.opts.read_only:
            raise ReadOnly(f"{what}: the mount is read-only")
        raise ReadOnly(f"{what}: writing is not supported yet")

    async def open(self, ino: int, flags: int) -> OpenFile:
        node = self._node(ino)
        if node.is_dir:
            raise IsADirectory(f"{node.path} is a folder")
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            self.check_writable(f"open {node.path} for writing")
        node = await self._head(node)  # close-to-open: every open sees the newest version
        keep_cache = node.page_cache_etag == node.etag
        node.page_cache_etag = node.etag
        fh = next(self._handles)
        reader = Reader(
            self.store, self.ns.file_key(node.path), node.size, node.etag, self.opts.read, self._spawn
        )
        self._files[fh] = _FileHandle(node.ino, reader)
        return OpenFile(fh, keep_cache, node.attr())

    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._files.get(fh)
        if handle is None:
            raise S3FilesError(f"bad file handle {fh}")
        return await handle.reader.read(off, size)

    def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is not None:
            handle.reader.close()

    # -- whole file system -------------------------------------------------------------------------

    def statistics(self) -> dict[str, object]:
        return {
            "inodes": len(self.inodes),
            "open_files": len(self._files),
            "open_folders": len(self._dirs),
            "cached_listings": len(self._listings),
            "held_read_bytes": sum(h.reader.held_bytes for h in self._files.values()),
            "requests": self.store.requests.snapshot(),
        }


__all__ = ["ROOT_INO", "Attr", "FileSystem", "OpenFile"]
