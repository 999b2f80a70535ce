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
- a listing's symlink candidates (<= 4096 bytes, ETag ``-1``: see links.py) cost one HEAD each, at most
  ``CONCURRENCY`` at once; plain files none.
- ``symlink``: 3 requests (one-part multipart upload, If-None-Match); ``readlink``: one GET per version.
- ``rename`` of a folder of N keys: ceil(N/1000) LIST, N copies, N deletes (see trees.py).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import resource
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

import trio
from cachetools import LRUCache, TTLCache

from s3files.core.inodes import ROOT_INO, Attr, Defaults, Inode, InodeTable
from s3files.core.links import LINK_MAX, copy_object, link_candidate, link_metadata, posix_fields, put_link
from s3files.core.namespace import Entry, Namespace, join, valid_name
from s3files.core.reader import PartBuffers, Reader, Spawn
from s3files.core.tasks import for_each, run_all
from s3files.core.trees import move_tree
from s3files.core.writer import (
    PartLayout,
    StagedFile,
    Staging,
    WriteConflict,
    clean_files_for,
    posix_metadata,
)
from s3files.errors import (
    FileExists,
    InvalidArgument,
    InvalidName,
    IsADirectory,
    KindChanged,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotSupported,
    ObjectNotFound,
    PreconditionFailed,
    ReadOnly,
    S3FilesError,
)
from s3files.options import MountOptions
from s3files.store.base import ListPage, ObjectInfo, ObjectStore

log = logging.getLogger(__name__)


class BadHandle(S3FilesError):
    errno = errno.EBADF


MAX_LIST_PAGES = 1_000_000  # a bound on any listing loop: 10^9 keys
PROBES_BEFORE_LISTING = 2  # names probed (HEAD + LIST each) in a folder never listed before it is listed
SMALL_FOLDER_PAGES = 2  # a folder listed instead of probed: at most this many pages (RGW sometimes ends a
# page early: the raw SDK's listing of 1,000 keys took 2 LISTs in one benchmark round of 3)
UNMOUNT_UPLOAD_TIMEOUT = 300  # seconds unmount waits for unsent files before leaving them on disk
RENAME_NOREPLACE = 1  # linux/fs.h renameat2 flags
RENAME_EXCHANGE = 2


@dataclass(frozen=True)
class OpenFile:
    fh: int
    keep_cache: bool  # the kernel may keep its cached pages: the object is the version it cached
    attr: Attr
    direct_io: bool = False  # the kernel's page cache is bypassed for this open (--direct-io)


@dataclass
class _DirHandle:
    ino: int
    path: str
    entries: list[tuple[str, Entry]] | None = None


@dataclass
class _FileHandle:
    node: Inode  # held, not looked up by number: it must outlive a forget while the file is open
    reader: Reader
    writable: bool = False
    etag: str | None = None  # the version this handle reads
    counted: bool = False  # counted in its staged copy's handles: the copy lives until this one closes

    @property
    def ino(self) -> int:
        return self.node.ino


class FileSystem:
    """One mount's file system over ``store``. ``spawn`` starts background work on the mount's nursery."""

    def __init__(
        self,
        store: ObjectStore,
        opts: MountOptions,
        spawn: Spawn,
        staging: Path,
        now: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._wall = wall
        self._staging = Staging(
            store,
            staging,
            spawn,
            PartLayout(opts.upload_part_size),
            concurrency=opts.upload_concurrency,
            limit=opts.cache_size,
            max_clean_files=clean_files_for(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
        )
        self._staged: dict[int, StagedFile] = {}  # ino -> its local copy while being changed
        self.opts = opts
        self._spawn = spawn
        self._part_buffers = PartBuffers(opts.read.part_size, opts.read.max_window + opts.read.part_size, spawn)
        self._now = now
        self.ns = Namespace(opts.source.prefix)
        self.inodes = InodeTable(
            Defaults(opts.uid, opts.gid, opts.file_mode, opts.dir_mode), root_mtime=wall()
        )
        self._mount_time = wall()
        self._listings: TTLCache[str, dict[str, Entry]] = TTLCache(
            maxsize=256, ttl=max(opts.metadata_ttl, 1e-9), timer=now
        )
        # Folders whose last listing was small (SMALL_FOLDER_PAGES): a lookup there re-lists (a LIST answers
        # every name for metadata_ttl) instead of probing each new name (HEAD + LIST), as when creating files.
        self._small_folders: LRUCache[str, bool] = LRUCache(maxsize=4096)
        self._probed: LRUCache[str, int] = LRUCache(maxsize=4096)  # folder -> names probed there
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
        node = self.inodes.by_path(path)
        if node is not None and node.ino in self._staged:
            return node  # being changed here: our copy is newer than anything S3 or a listing says
        if entry.is_dir:
            return self.inodes.put_dir(path, self._mount_time, self._fresh_until())
        assert entry.info is not None
        return self.inodes.put_file(path, entry.info, self._fresh_until())

    async def _list(self, path: str, max_pages: int = MAX_LIST_PAGES) -> dict[str, Entry] | None:
        """All entries of folder ``path``, from a fresh cached listing or ceil(N/1000) LIST requests
        (None if that takes more than ``max_pages``)."""
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
            if len(pages) >= max_pages:
                self._small_folders.pop(path, None)  # too big to list for lookups: probe its names now
                return None
        entries = await self._with_links(path, self.ns.entries(path, pages))
        if self.opts.metadata_ttl > 0:
            self._listings[path] = entries
            if len(pages) <= SMALL_FOLDER_PAGES:
                self._small_folders[path] = True
            else:
                self._small_folders.pop(path, None)
        return entries

    def _listed(self, path: str, entry: Entry | None) -> None:
        """Keep a fresh listing of ``path``'s folder true after our own change (None: the name is gone),
        so the next lookups there still cost nothing."""
        parent, _, name = path.rpartition("/")
        listing = self._listings.get(parent)
        if listing is None:
            return
        if entry is None:
            listing.pop(name, None)
        else:
            listing[name] = entry

    async def _with_links(self, path: str, entries: dict[str, Entry]) -> dict[str, Entry]:
        """The listing with its symlink candidates HEADed (links.py), so readdir and lookups report
        S_IFLNK at once: an inode's type must never change later. A version a HEAD already described
        (its inode's metadata ETag) is not asked again."""
        found = dict(entries)
        todo: list[tuple[str, ObjectInfo]] = []
        for name, entry in entries.items():
            info = entry.info
            if info is None or not link_candidate(info):
                continue
            node = self.inodes.by_path(join(path, name))
            if node is not None and not node.is_dir and node.meta_etag == info.etag:
                meta = posix_fields(node.mode, node.uid, node.gid, node.mtime)
                found[name] = Entry(name, is_dir=False, info=replace(info, metadata=meta))
            else:
                todo.append((name, info))

        async def head(item: tuple[str, ObjectInfo]) -> None:
            name, info = item
            try:
                found[name] = Entry(name, is_dir=False, info=await self.store.head(info.key))
            except ObjectNotFound:
                found.pop(name, None)  # deleted since the listing

        await for_each(todo, head)
        return found

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

        await run_all((head, below))
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
        return self._refreshed(node, info)

    async def _get_first(self, node: Inode) -> tuple[Inode, bytes | bytearray]:
        """What ``_head`` does, for a file about to be read: the same answer and the reader's first part
        in one GET (a HEAD and then a GET cost two round trips per file read; this costs one). A file of
        up to two first parts comes whole: its second half (1 MiB, ~10 ms at 100 MB/s) costs less than
        the second round trip it saves (10-20 ms per request on S3), and one request less."""
        first = self.opts.read.first_part
        nbytes = node.size if node.size <= 2 * first else first
        try:
            info, data = await self.store.get_first(self.ns.file_key(node.path), nbytes)
        except ObjectNotFound:
            raise NotFound(f"{node.path} was removed from the bucket") from None
        return self._refreshed(node, info), data

    def _refreshed(self, node: Inode, info: ObjectInfo) -> Inode:
        if not self.inodes.refresh_file(node, info, self._fresh_until()):
            self._kind_changed(node, info)
        return node

    def _kind_changed(self, node: Inode, info: ObjectInfo) -> NoReturn:
        """``node``'s object is of another kind now (a file became a symlink, or was one all along and
        only a listing had been seen). The name gets a new inode and the cached listing learns the truth;
        the old inode is ESTALE, which makes the kernel look the name up again (see inodes.py)."""
        if self.inodes.by_path(node.path) is node:
            self.inodes.put_file(node.path, info, self._fresh_until())
            parent, _, name = node.path.rpartition("/")
            listing = self._listings.get(parent)
            if listing is not None and name in listing and not listing[name].is_dir:
                listing[name] = Entry(name, is_dir=False, info=info)
        raise KindChanged(f"{node.path} is no longer a {'symlink' if stat.S_ISLNK(node.mode) else 'file'}")

    # -- metadata operations -------------------------------------------------------------------------

    async def lookup(self, parent_ino: int, name: str) -> Attr:
        """Find ``name`` in folder ``parent_ino``; the kernel then holds one more reference to it."""
        parent = self._node(parent_ino)
        if not parent.is_dir:
            raise NotADirectory(f"{parent.path} is not a folder")
        if not valid_name(name):
            raise NotFound(f"not a valid name: {name!r}")
        node = self._record(join(parent.path, name), await self._entry(parent.path, name))
        self.inodes.acquire(node.ino)
        return node.attr()

    async def _entry(self, parent_path: str, name: str) -> Entry:
        """What ``name`` in folder ``parent_path`` is: a local new file, or per a fresh listing, or S3."""
        path = join(parent_path, name)
        local = self.inodes.by_path(path)
        if local is not None and local.ino in self._staged:
            return Entry(name, is_dir=False)
        listing = self._listings.get(parent_path)
        if listing is None and (parent_path in self._small_folders or self._probed_enough(parent_path)):
            listing = await self._list(parent_path, SMALL_FOLDER_PAGES)
        if listing is not None:
            entry = listing.get(name)
            if entry is None:
                raise NotFound(f"no such file or folder: {path}")
            return entry
        return await self._probe(path)

    def _probed_enough(self, path: str) -> bool:
        """Whether to list folder ``path`` (SMALL_FOLDER_PAGES at most) instead of probing one more name.

        A stat or open of every file of a folder never listed (``find``, a data loader reading a file list)
        would cost HEAD + LIST per name. After ``PROBES_BEFORE_LISTING`` names a listing is tried once: if
        it takes SMALL_FOLDER_PAGES or fewer it answers every later name for ``metadata_ttl`` (and the
        folder is re-listed after that, see ``_small_folders``); a larger folder goes on being probed."""
        if self.opts.metadata_ttl <= 0:
            return False
        probed = self._probed[path] = self._probed.get(path, 0) + 1
        return probed == PROBES_BEFORE_LISTING + 1

    async def getattr(self, ino: int) -> Attr:
        node = self._node(ino)
        if node.is_dir or node.fresh_until > self._now() or ino in self._staged:
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
            listing = await self._list(handle.path)
            assert listing is not None  # every page was asked for
            entries = dict(listing)
            for staged in self._staged.values():
                node = staged.node
                if staged.unlinked:
                    continue
                parent, _, name = node.path.rpartition("/")
                if parent == handle.path:
                    entries.setdefault(name, Entry(name, is_dir=False))  # created here, not uploaded yet
            handle.entries = sorted(entries.items())
        result = []
        for index in range(start, len(handle.entries)):
            name, entry = handle.entries[index]
            node = self._record(join(handle.path, name), entry)
            result.append((name, node.attr(), index + 1))
        return result

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- symlinks ----------------------------------------------------------------------------------

    async def symlink(self, parent_ino: int, name: str, target: bytes, uid: int, gid: int) -> Attr:
        """Create symlink ``name`` -> ``target`` (links.py: a one-part multipart upload, If-None-Match, so
        an existing key is EEXIST). Acquires the inode."""
        parent = self._node(parent_ino)
        path = self._new_path(parent, name, "symlink")
        if not 0 < len(target) < LINK_MAX:
            raise InvalidName(f"a symlink target must be 1 to {LINK_MAX - 1} bytes")
        local = self.inodes.by_path(path)
        listing = self._listings.get(parent.path)
        if (local is not None and local.ino in self._staged) or (listing is not None and name in listing):
            raise FileExists(f"{path} exists")
        metadata = link_metadata(uid, gid, self._wall())
        try:
            info = await put_link(self.store, self.ns.file_key(path), target, metadata, if_none_match=True)
        except PreconditionFailed:
            raise FileExists(f"{path} exists") from None
        node = self.inodes.put_file(path, info, self._fresh_until())
        node.target, node.target_etag = target, info.etag
        self._listings.pop(parent.path, None)
        self.inodes.acquire(node.ino)
        return node.attr()

    async def readlink(self, ino: int) -> bytes:
        """The target of symlink ``ino``: one GET per version (ETag), then from the inode."""
        node = self._node(ino)
        if not stat.S_ISLNK(node.mode):
            raise InvalidArgument(f"{node.path} is not a symlink")
        for _ in range(2):  # a second time only after a HEAD found a newer version
            if node.target is not None and node.target_etag == node.etag:
                return node.target
            etag = node.etag
            try:
                key = self.ns.file_key(node.path)
                body = await self.store.get_range(key, 0, node.size, if_match=etag) if node.size else b""
            except PreconditionFailed:
                await self._head(node)  # changed since we looked: learn the new version (or its new kind)
                continue
            except ObjectNotFound:
                raise NotFound(f"{node.path} was removed from the bucket") from None
            node.target, node.target_etag = bytes(body), etag
            return node.target
        raise PreconditionFailed(f"{node.path} keeps changing; try again")

    # -- files -------------------------------------------------------------------------------------

    def check_writable(self, what: str) -> None:
        """Every changing operation goes through here: a --read-only mount refuses with EROFS."""
        if self.opts.read_only:
            raise ReadOnly(f"{what}: the mount is read-only")

    async def open(self, ino: int, flags: int) -> OpenFile:
        node = self._node(ino)
        if node.is_dir:
            raise IsADirectory(f"{node.path} is a folder")
        writable = bool(flags & (os.O_WRONLY | os.O_RDWR))
        if writable or flags & os.O_TRUNC:
            self.check_writable(f"open {node.path} for writing")
        staged = self._staged.get(ino)
        first: bytes | bytearray | None = None
        if staged is None and not writable and self._cold_to_read(node):
            node, first = await self._get_first(node)  # close-to-open, and the bytes along with it
        elif staged is None:
            node = await self._head(node)  # close-to-open: every open sees the newest version
            if writable:
                staged = await self._stage(node, truncate=bool(flags & os.O_TRUNC))
        elif flags & os.O_TRUNC:
            await self._truncate(node, staged, 0)
        keep_cache = staged is None and self._kernel_caches(node)
        if staged is None:
            node.page_cache_etag = node.etag
        else:
            staged.handles += 1  # readers too: they read the staged copy, which must outlive them
            node.page_cache_etag = None
        fh = next(self._handles)
        reader = self._reader(node, first if not keep_cache else None)
        self._files[fh] = _FileHandle(node, reader, writable, node.etag, counted=staged is not None)
        return OpenFile(fh, keep_cache, node.attr(), self.opts.direct_io)

    def _cold_to_read(self, node: Inode) -> bool:
        """Open with one GET of the file's first part (``_get_first``) instead of a HEAD: it was not empty
        when last seen, and neither the kernel's page cache nor a clean local copy is likely to hold its
        bytes already (then only the HEAD is needed). The price, for a program that opens a large file only
        to read elsewhere (a Parquet footer, a zip directory), is up to ``first_part`` bytes fetched in
        vain within the same round trip; every reader from the start saves a round trip."""
        return node.size > 0 and not self._kernel_caches(node) and not self._staging.holds_clean(node.ino)

    def _kernel_caches(self, node: Inode) -> bool:
        """The kernel's page cache may hold this version's bytes: it cached them at an earlier open (never
        with --direct-io, where no open uses the page cache)."""
        return not self.opts.direct_io and node.page_cache_etag == node.etag

    def _reader(self, node: Inode, first: bytes | bytearray | None = None) -> Reader:
        key = self.ns.file_key(node.path)
        return Reader(self.store, key, node.size, node.etag, self.opts.read, self._spawn, first, self._part_buffers)

    async def _stage(self, node: Inode, truncate: bool) -> StagedFile:
        """Make the local copy of ``node`` that writes go to (its parts are fetched when first needed)."""
        staged = self._staging.take_clean(node)  # the copy we uploaded last, if still this version
        if staged is None:
            staged = self._staging.create(node, node.etag, node.size, truncate)
        elif truncate:
            await self._staging.truncate(staged, 0)
        node.size = staged.size()
        self._staged[node.ino] = staged
        return staged

    async def _truncate(self, node: Inode, staged: StagedFile, size: int) -> None:
        await self._staging.truncate(staged, size)
        node.size = size
        node.mtime = self._wall()

    async def create(self, parent_ino: int, name: str, mode: int, uid: int, gid: int) -> OpenFile:
        """Create and open a new file; it exists in S3 once closed (or fsynced). Acquires the inode."""
        parent = self._node(parent_ino)
        path = self._new_path(parent, name, "create")
        node = self.inodes.put_local_file(path, mode, uid, gid, self._wall())
        staged = self._staging.create(node, None, 0, truncate=True)
        staged.handles = 1
        self._staged[node.ino] = staged
        self.inodes.acquire(node.ino)
        fh = next(self._handles)
        self._files[fh] = _FileHandle(node, self._reader(node), True, counted=True)
        return OpenFile(fh, False, node.attr(), self.opts.direct_io)

    def _new_path(self, parent: Inode, name: str, what: str) -> str:
        self.check_writable(f"{what} {name}")
        if not parent.is_dir:
            raise NotADirectory(f"{parent.path} is not a folder")
        if len(name.encode("utf-8", "surrogatepass")) > 255:
            raise InvalidName(f"name too long: {name[:40]}...")
        if not valid_name(name):
            raise InvalidArgument(f"not a valid name: {name!r}")
        return join(parent.path, name)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        handle = self._handle(fh)
        staged = self._staged.get(handle.ino)
        if staged is not None:
            return await self._staging.read(staged, self.ns.file_key(staged.node.path), off, size)
        node = handle.node
        if node.page_cache_etag != handle.etag and not self.opts.direct_io:
            # A newer version was opened since: the kernel caches what we return for the inode, not for
            # the handle, so old bytes returned now would be read by the newer handles too. ESTALE.
            # (With --direct-io nothing is cached: each handle reads its own version.)
            raise PreconditionFailed(f"{node.path} changed since this file was opened; open it again")
        local = self._staging.read_clean(node.ino, handle.etag, off, size)
        if local is not None:
            return local
        return await handle.reader.read(off, size)

    async def write(self, fh: int, off: int, data: bytes) -> int:
        handle = self._handle(fh)
        staged = self._staged.get(handle.ino)
        if not handle.writable or staged is None:
            raise BadHandle(f"file handle {fh} is not open for writing")
        written = await self._staging.write(staged, self.ns.file_key(staged.node.path), off, data)
        node = handle.node
        node.size = max(node.size, off + written)
        node.mtime = self._wall()
        return written

    async def flush(self, fh: int) -> None:
        """close() of one descriptor (and fsync): upload what was written, so others see it after."""
        handle = self._handle(fh)
        if handle.writable:
            await self._commit(handle.ino)

    async def _commit(self, ino: int) -> None:
        staged = self._staged.get(ino)
        if staged is None or staged.unlinked:
            return
        node = staged.node
        async with staged.lock:
            if not staged.dirty:
                return
            staged.dirty = False  # a write during the upload sets it again, so the next flush sends it
            try:
                key = self.ns.file_key(node.path)
                info = await self._staging.commit(staged, key, posix_metadata(node, staged.mtime_set))
            except WriteConflict:
                # Ours is safe beside theirs; the key holds theirs, which the next open will see.
                node.fresh_until = 0.0
                node.page_cache_etag = None
                raise
            except BaseException:
                staged.dirty = True
                raise
            node.etag = node.meta_etag = info.etag
            if not staged.mtime_set:
                node.mtime = info.last_modified  # what a HEAD will say from now on
            node.fresh_until = self._fresh_until()
            self._listed(node.path, Entry(node.path.rpartition("/")[2], is_dir=False, info=info))

    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is None:
            return
        handle.reader.close()
        staged = self._staged.get(handle.ino)
        if staged is None or not handle.counted:
            return
        staged.handles -= 1
        if staged.handles > 0:
            return
        try:
            await self._commit(handle.ino)
        finally:
            if not staged.dirty or staged.unlinked or staged.broken:
                # broken: the program was told a write failed; the object keeps its last good version
                with trio.CancelScope(shield=True):
                    await self._settle(staged)
            else:
                where = self._staging.keep_on_disk(staged)
                log.error("op=release ino=%d: upload failed; the data stays at %s", handle.ino, where)

    async def setattr(
        self,
        ino: int,
        *,
        size: int | None = None,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        mtime: float | None = None,
    ) -> Attr:
        node = self._node(ino)
        self.check_writable(f"change attributes of {node.path}")
        if size is not None:
            if node.is_dir:
                raise IsADirectory(f"{node.path} is a folder")
            staged = self._staged.get(ino)
            if staged is None:
                node = await self._head(node)
                staged = await self._stage(node, truncate=size == 0)
            await self._truncate(node, staged, size)
        if mode is not None:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)
        node.uid = node.uid if uid is None else uid
        node.gid = node.gid if gid is None else gid
        node.mtime = node.mtime if mtime is None else mtime
        metadata_changed = (mode, uid, gid, mtime) != (None, None, None, None)
        staged = self._staged.get(ino)
        if staged is not None:
            staged.dirty = staged.dirty or metadata_changed
            staged.mtime_set = staged.mtime_set or mtime is not None
            if staged.handles == 0:  # truncate(2) on a path, not through an open file: persist now
                try:
                    await self._commit(ino)
                finally:
                    if not staged.dirty:
                        await self._settle(staged)
        elif metadata_changed and not node.is_dir:
            key = self.ns.file_key(node.path)
            # copy_object: a symlink keeps its listable form, and objects over 5 GiB are copied in parts
            source = ObjectInfo(key, node.size, node.etag or "", node.mtime)
            node.etag = node.meta_etag = await copy_object(self.store, source, key, metadata=posix_metadata(node))
        # Folders have no object of their own to carry metadata: their changes live while mounted.
        return node.attr()

    async def _settle(self, staged: StagedFile) -> None:
        """A staged copy nobody has open any more: kept as the clean cache of the version it uploaded,
        or deleted (the file was removed, a write into it failed, or an upload is still unfinished)."""
        self._staged.pop(staged.node.ino, None)
        if staged.unlinked or staged.broken or staged.dirty or staged.upload is not None or staged.sending:
            await self._staging.discard(staged)
        else:
            self._staging.keep_clean(staged)
            self._repin(staged.node)

    def _repin(self, node: Inode) -> None:
        """The file's staged copy is now its object's version ``node.etag``: handles opened before (which
        read the staged copy meanwhile) and the kernel's cached pages (written through) are of it."""
        node.page_cache_etag = node.etag
        for handle in self._files.values():
            if handle.node is node and handle.etag != node.etag:
                handle.reader.close()
                handle.etag, handle.reader = node.etag, self._reader(node)

    def _handle(self, fh: int) -> _FileHandle:
        handle = self._files.get(fh)
        if handle is None:
            raise BadHandle(f"bad file handle {fh}")
        return handle

    # -- changing the tree -------------------------------------------------------------------------

    async def unlink(self, parent_ino: int, name: str) -> None:
        parent = self._node(parent_ino)
        self.check_writable(f"unlink {name}")
        entry = await self._entry(parent.path, name)
        if entry.is_dir:
            raise IsADirectory(f"{join(parent.path, name)} is a folder")
        path = join(parent.path, name)
        node = self.inodes.by_path(path)
        staged = self._staged.get(node.ino) if node is not None else None
        if staged is None or staged.base_etag is not None:
            await self.store.delete(self.ns.file_key(path))
        if node is not None:
            await self._orphan(node)
        self.inodes.unlink_path(path)
        self._listed(path, None)

    async def _orphan(self, node: Inode) -> None:
        """``node`` lost its name (unlink, or a rename over it): open handles keep working on its staged
        copy, which is never uploaded any more, and is dropped at the last close."""
        staged = self._staged.get(node.ino)
        if staged is not None:
            staged.unlinked = True
            if staged.handles == 0:
                await self._settle(staged)
        self._staging.forget_clean(node.ino)

    async def mkdir(self, parent_ino: int, name: str, mode: int, uid: int, gid: int) -> Attr:
        parent = self._node(parent_ino)
        path = self._new_path(parent, name, "mkdir")
        try:
            await self._entry(parent.path, name)
        except NotFound:
            pass
        else:
            raise FileExists(f"{path} exists")
        node = self.inodes.put_dir(path, self._wall(), self._fresh_until())
        node.mode, node.uid, node.gid = stat.S_IFDIR | stat.S_IMODE(mode), uid, gid
        try:
            await self.store.put(self.ns.dir_prefix(path), b"", posix_metadata(node), if_none_match=True)
        except PreconditionFailed:
            raise FileExists(f"{path} exists") from None
        self._listed(path, Entry(name, is_dir=True))
        if self.opts.metadata_ttl > 0:
            self._listings[path] = {}
            self._small_folders[path] = True
        self.inodes.acquire(node.ino)
        return node.attr()

    async def rmdir(self, parent_ino: int, name: str) -> None:
        parent = self._node(parent_ino)
        self.check_writable(f"rmdir {name}")
        path = join(parent.path, name)
        if not (await self._entry(parent.path, name)).is_dir:
            raise NotADirectory(f"{path} is not a folder")
        marker = self.ns.dir_prefix(path)
        page = await self.store.list_page(marker, "/", max_keys=2)
        local = any(
            s.node.path.startswith(path + "/") and not s.unlinked for s in self._staged.values()
        )
        if local or page.prefixes or any(o.key != marker for o in page.objects):
            raise NotEmpty(f"{path} is not empty")
        await self.store.delete(marker)
        self.inodes.unlink_path(path)
        self._listed(path, None)
        self._listings.pop(path, None)

    async def rename(
        self, old_parent: int, old_name: str, new_parent: int, new_name: str, flags: int
    ) -> None:
        """Rename a file, symlink or folder: server-side copies, then deletes (S3 has no rename; neither
        is atomic, see docs/SEMANTICS.md). Open files and the kernel's inodes follow the new name."""
        src_parent, dst_parent = self._node(old_parent), self._node(new_parent)
        dst_path = self._new_path(dst_parent, new_name, "rename")
        src_path = join(src_parent.path, old_name)
        if flags & RENAME_EXCHANGE:
            raise NotSupported("rename with RENAME_EXCHANGE is not supported")
        source = await self._entry(src_parent.path, old_name)
        if source.is_dir and dst_path.startswith(src_path + "/"):
            raise InvalidArgument(f"cannot move folder {src_path} into itself")
        try:
            target = await self._entry(dst_parent.path, new_name)
        except NotFound:
            target = None
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise FileExists(f"{dst_path} exists")
            if source.is_dir and not target.is_dir:
                raise NotADirectory(f"{dst_path} is not a folder")
            if target.is_dir and not source.is_dir:
                raise IsADirectory(f"{dst_path} is a folder")
        if src_path == dst_path:
            return  # rename(2) of a name onto itself does nothing
        if source.is_dir:
            await self._rename_folder(src_path, dst_path, target is not None)
        else:
            await self._rename_file(src_path, dst_path, source.info)
        for path in (src_parent.path, dst_parent.path):
            self._listings.pop(path, None)

    async def _rename_file(self, src_path: str, dst_path: str, info: ObjectInfo | None) -> None:
        """``info``: what a listing or HEAD said of the source (None for a file created here)."""
        node = self.inodes.by_path(src_path)
        if node is not None and node.ino in self._staged:
            await self._commit(node.ino)  # the copy must carry what was written
        src_key, dst_key = self.ns.file_key(src_path), self.ns.file_key(dst_path)
        if info is None or info.key != src_key:
            info = ObjectInfo(src_key, node.size if node else 0, (node.etag if node else None) or "", 0.0)
        etag = await copy_object(self.store, info, dst_key)
        await self.store.delete(src_key)
        replaced = self.inodes.by_path(dst_path)
        if replaced is not None and replaced is not node:
            await self._orphan(replaced)
        self.inodes.move(src_path, dst_path)
        if node is not None:
            self._follow(node, etag)

    async def _rename_folder(self, src_path: str, dst_path: str, replace_target: bool) -> None:
        """Move every key of folder ``src_path`` (trees.py: copy all, then delete all). Files written here
        and not yet uploaded are uploaded first, so the copies carry them."""
        below_src, below_dst = src_path + "/", dst_path + "/"
        for staged in list(self._staged.values()):
            if not staged.unlinked and staged.node.path.startswith(below_src):
                await self._commit(staged.node.ino)
        if any(not s.unlinked and s.node.path.startswith(below_dst) for s in self._staged.values()):
            raise NotEmpty(f"{dst_path} is not empty")
        src_prefix, dst_prefix = self.ns.dir_prefix(src_path), self.ns.dir_prefix(dst_path)
        moved = await move_tree(self.store, src_prefix, dst_prefix, replace_target)
        for node in self.inodes.move_tree(src_path, dst_path):
            etag = moved.get(node.path[len(below_dst) :]) if not node.is_dir else None
            if etag is not None:
                self._follow(node, etag)
        for handle in self._dirs.values():
            if handle.path == src_path or handle.path.startswith(below_src):
                handle.path = dst_path + handle.path[len(src_path) :]
        for path in list(self._listings):
            if path in (src_path, dst_path) or path.startswith((below_src, below_dst)):
                self._listings.pop(path, None)

    def _follow(self, node: Inode, etag: str) -> None:
        """``node`` was renamed and its object is the copy of ETag ``etag`` now: open readers fetch from
        the new key, and a staged copy's next upload is conditional on the copy's ETag. The copy keeps the
        metadata, so what a HEAD told of the old version holds for the copy."""
        if node.meta_etag == node.etag:
            node.meta_etag = etag
        node.etag = etag
        staged = self._staged.get(node.ino)
        if staged is not None:
            staged.base_etag = etag
        key = self.ns.file_key(node.path)
        for handle in self._files.values():
            if handle.node is node:
                handle.reader.moved(key)

    # -- whole file system -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """At unmount: upload what is still unsent (bounded), keep what fails on disk and say where."""
        with trio.move_on_after(UNMOUNT_UPLOAD_TIMEOUT) as scope:
            for ino, staged in list(self._staged.items()):
                try:
                    await self._commit(ino)
                except S3FilesError as exc:
                    where = self._staging.keep_on_disk(staged)
                    log.error("op=unmount ino=%d: upload failed (%s); data kept at %s", ino, exc, where)
                    continue
                if not staged.dirty or staged.unlinked:
                    self._staged.pop(ino, None)
                    await self._staging.discard(staged)
        for staged in self._staged.values():
            if staged.dirty and not staged.unlinked:
                self._staging.keep_on_disk(staged)  # memory copies would end with the process
        self._staging.aclose_clean()
        if scope.cancelled_caught:
            log.error(
                "uploads at unmount took over %d s; unsent data kept in %s", UNMOUNT_UPLOAD_TIMEOUT, self._staging.folder
            )

    def statistics(self) -> dict[str, object]:
        return {
            "inodes": len(self.inodes),
            "open_files": len(self._files),
            "open_folders": len(self._dirs),
            "cached_listings": len(self._listings),
            "held_read_bytes": sum(h.reader.held_bytes for h in self._files.values()),
            "spare_read_bytes": self._part_buffers.held_bytes,
            "staged_files": len(self._staged),
            "dirty_files": sum(1 for s in self._staged.values() if s.dirty),
            "cache_bytes": self._staging.used,
            "memory_bytes": self._staging.memory,
            "clean_files": self._staging.clean_count,
            "requests": self.store.requests.snapshot(),
        }


__all__ = ["ROOT_INO", "Attr", "FileSystem", "OpenFile"]
