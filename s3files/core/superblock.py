"""The superblock: inodes, names, listings, the lookup policy and every TTL decision, in one place.

Owns: the inode table, the cached folder listings (``metadata_ttl``), which names are probed and which
folders are listed instead, what a HEAD or a first-part GET tells about a file, and whether attributes
came from the object's own metadata. Must not read or write file data, and must not know about handles;
it asks ``is_local`` whether an inode has a local copy (whose attributes are newer than anything S3 says).

True attributes. On a mount that other users share (``--allow-other``) the kernel checks their access
against what we answer (``default_permissions``), so no permission may be granted on a guess: with
``true_attributes`` every entry a listing or a probe hands out carries its object's own metadata. A file's
comes from a HEAD of its version; a version is (ETag, LastModified), because a metadata-only change
(chmod by another mount or an SDK's copy onto itself) keeps the ETag but not the LastModified. A folder's
comes from its marker object ``dir/`` (mkdir writes it; chmod, chown and utime of a folder rewrite it); a
folder without a marker has the mount's defaults (``Descriptions`` asks). Our own changes reach every
cached copy of an entry: the inode, the folder's cached listing (``listed``, ``listed_file``,
``listed_folder``), a listing that was in flight while we changed it (``_since``), and a readdir's earlier
snapshot (``record`` prefers the cached listing). Mounts without ``--allow-other`` keep the cheaper view
described in inodes.py.

Request budget (asserted by tests):
- a listing of N entries: ceil(N/1000) LIST; no HEAD per file, except symlink candidates (links.py) and,
  with ``true_attributes``, every file whose version's metadata is not known yet and every folder whose
  marker was not asked within ``metadata_ttl`` (a HEAD of ``dir/``, 404 when there is none). Those HEADs
  run ``CONCURRENCY`` at a time; a file version whose metadata is known is never asked again.
- a lookup of a name not in a fresh listing: one HEAD and one LIST (max-keys 1), concurrently, because a
  name may be a file, a folder (any key below it), or both (the folder wins); after
  ``PROBES_BEFORE_LISTING`` such names a small folder is listed instead. With ``true_attributes``, a
  folder whose LIST shows a marker costs one HEAD of the marker more.
- attributes younger than ``metadata_ttl``: nothing; after it, one HEAD for a file.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import NoReturn

from cachetools import LRUCache, TTLCache

from s3files.core.inodes import Defaults, Inode, InodeTable
from s3files.core.links import link_candidate, posix_fields
from s3files.core.namespace import Entry, Namespace, join
from s3files.core.tasks import for_each, run_all
from s3files.core.times import NS, seconds_of_ns
from s3files.errors import KindChanged, NotFound, ObjectNotFound
from s3files.options import MountOptions
from s3files.store.base import ListPage, ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

MAX_LIST_PAGES = 1_000_000  # a bound on any listing loop: 10^9 keys
PROBES_BEFORE_LISTING = 2  # names probed (HEAD + LIST each) in a folder never listed before it is listed
SMALL_FOLDER_PAGES = 2  # a folder listed instead of probed: at most this many pages (RGW sometimes ends a
# page early: the raw SDK's listing of 1,000 keys took 2 LISTs in one benchmark round of 3)


class Superblock:
    """Names and attributes of one mount. ``now``: the clock of every TTL; ``wall``: times shown
    (nanoseconds)."""

    def __init__(
        self,
        store: ObjectStore,
        opts: MountOptions,
        is_local: Callable[[int], bool],
        now: Callable[[], float],
        wall: Callable[[], int],
    ) -> None:
        self.store = store
        self.ttl = opts.metadata_ttl
        # Attributes shown must be the object's own when other users share the mount: the kernel checks
        # their access against them (default_permissions). See Descriptions.
        self.true_attributes = opts.allow_other
        self.is_local = is_local
        self._now = now
        self.ns = Namespace(opts.source.prefix)
        self.mount_time = wall() // NS * NS  # whole seconds: folders without a marker show it, as LastModified
        self.inodes = InodeTable(Defaults(opts.uid, opts.gid, opts.file_mode, opts.dir_mode), self.mount_time)
        self.described = Descriptions(store, self.ns, self.inodes, opts.allow_other, self.ttl, now, self.mount_time)
        self._listings: TTLCache[str, dict[str, Entry]] = TTLCache(maxsize=256, ttl=max(self.ttl, 1e-9), timer=now)
        # Folders whose last listing was small (SMALL_FOLDER_PAGES): a lookup there re-lists (a LIST answers
        # every name for metadata_ttl) instead of probing each new name (HEAD + LIST), as when creating files.
        self._small_folders: LRUCache[str, bool] = LRUCache(maxsize=4096)
        self._probed: LRUCache[str, int] = LRUCache(maxsize=4096)  # folder -> names probed there
        # Our own changes, numbered, so a listing that was in flight meanwhile does not undo them.
        self._changes = 0
        self._changed: LRUCache[str, tuple[int, Entry | None]] = LRUCache(maxsize=4096)

    # -- TTL decisions ---------------------------------------------------------------------------------

    @property
    def caches(self) -> bool:
        """Whether anything S3 said may be trusted later at all (TTL 0: every call asks S3)."""
        return self.ttl > 0

    def fresh_until(self) -> float:
        return self._now() + self.ttl

    def is_fresh(self, node: Inode) -> bool:
        return node.is_dir or node.fresh_until > self._now() or self.is_local(node.ino)

    def stale(self, node: Inode) -> None:
        """Ask S3 about ``node`` at its next use (someone else's version won its key)."""
        node.fresh_until = 0.0
        node.page_cache_etag = None

    # -- inodes ----------------------------------------------------------------------------------------

    def node(self, ino: int) -> Inode:
        node = self.inodes.get(ino)
        if node is None:
            raise NotFound(f"unknown inode {ino}")
        return node

    def linked(self, node: Inode) -> bool:
        """Whether ``node`` still has its name (not unlinked or renamed over)."""
        return self.inodes.by_path(node.path) is node

    def record(self, path: str, entry: Entry) -> Inode:
        """The inode for ``path`` per ``entry`` (a listing's or a probe's answer). The folder's cached
        listing, when there is one, wins over ``entry``: a readdir pages through a snapshot taken at its
        start, and the cached listing has every change made here since."""
        node = self.inodes.by_path(path)
        if node is not None and self.is_local(node.ino):
            return node  # being changed here: our copy is newer than anything S3 or a listing says
        parent, _, name = path.rpartition("/")
        entry = self.cached_entry(parent, name) or entry
        if entry.is_dir:
            node = self.inodes.put_dir(path, self.mount_time, self.fresh_until())
            if entry.info is not None:  # its marker's metadata (true_attributes)
                self.inodes.describe_dir(node, entry.info)
            return node
        if entry.info is None:
            raise NotFound(f"{path} is no longer here")  # a local file that is gone
        return self.inodes.put_file(path, entry.info, self.fresh_until())

    # -- listings --------------------------------------------------------------------------------------

    async def listing(self, path: str, max_pages: int = MAX_LIST_PAGES) -> dict[str, Entry] | None:
        """All entries of folder ``path``, from a fresh cached listing or ceil(N/1000) LIST requests
        (None if that takes more than ``max_pages``)."""
        cached = self._listings.get(path)
        if cached is not None:
            return cached
        prefix = self.ns.dir_prefix(path)
        since = self._changes
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
        entries = self._since(since, path, await self.described.listing(path, self.ns.entries(path, pages)))
        self.inodes.subfolders_listed(path, sum(entry.is_dir for entry in entries.values()))  # st_nlink
        if self.caches:
            self._listings[path] = entries
            if len(pages) <= SMALL_FOLDER_PAGES:
                self._small_folders[path] = True
            else:
                self._small_folders.pop(path, None)
        return entries

    def listed(self, path: str, entry: Entry | None) -> None:
        """Keep a fresh listing of ``path``'s folder true after our own change (None: the name is gone),
        so the next lookups there still cost nothing; a listing in flight learns it too (``_since``)."""
        self._changes += 1
        self._changed[path] = (self._changes, entry)
        parent, _, name = path.rpartition("/")
        listing = self._listings.get(parent)
        if listing is None:
            return
        if entry is None:
            listing.pop(name, None)
        else:
            listing[name] = entry

    def _since(self, since: int, path: str, entries: dict[str, Entry]) -> dict[str, Entry]:
        """``entries`` of folder ``path`` (a listing that began at change number ``since``) with our own
        changes made there meanwhile: a chmod whose copy landed after the LIST (or the HEAD) must not be
        undone by it, nor a file we deleted come back."""
        if self._changes == since:
            return entries
        for changed, (number, entry) in list(self._changed.items()):
            parent, _, name = changed.rpartition("/")
            if number <= since or parent != path:
                continue
            if entry is None:
                entries.pop(name, None)
            else:
                entries[name] = entry
        return entries

    def listed_file(self, node: Inode, info: ObjectInfo) -> None:
        """``node``'s object is now ``info`` (written or changed here): the listing learns it, with the
        metadata we know, so a listing never shows an older mode than a chmod set. ``info.last_modified``
        is when S3 wrote it, as its reply said (0: not known, and a true-attributes listing HEADs it once)."""
        node.meta_modified = info.last_modified or None
        meta = {**posix_fields(*_fields(node)), **node.extra_metadata()}
        self.listed(node.path, Entry(node.path.rpartition("/")[2], is_dir=False, info=replace(info, metadata=meta)))

    def listed_folder(self, node: Inode) -> None:
        """Folder ``node``'s marker now carries its attributes (mkdir, chmod, chown, utime here): the
        parent's listing and the marker cache learn them."""
        marker = self.described.folder_changed(node)
        self.listed(node.path, Entry(node.path.rpartition("/")[2], is_dir=True, info=marker))

    def new_folder(self, path: str) -> None:
        """A folder created here: it is empty, and its parent's listing has it, with the attributes its
        marker was written with."""
        node = self.inodes.by_path(path)
        if node is not None and node.is_dir:
            self.listed_folder(node)
        else:
            self.listed(path, Entry(path.rpartition("/")[2], is_dir=True))
        if self.caches:
            self._listings[path] = {}
            self._small_folders[path] = True

    def forget_listings(self, *paths: str, below: tuple[str, ...] = ()) -> None:
        """Drop the cached listings (and folder markers) of ``paths`` and of every folder below ``below``."""
        for cache in (self._listings, self.described.markers):
            for path in list(cache):
                if path in paths or (below and path.startswith(below)):
                    cache.pop(path, None)

    # -- lookups ---------------------------------------------------------------------------------------

    async def entry(self, parent_path: str, name: str) -> Entry:
        """What ``name`` in folder ``parent_path`` is: a local file, or per a fresh listing, or S3."""
        path = join(parent_path, name)
        local = self.inodes.by_path(path)
        if local is not None and self.is_local(local.ino):
            return Entry(name, is_dir=False)
        listing = self._listings.get(parent_path)
        if listing is None and (parent_path in self._small_folders or self._probed_enough(parent_path)):
            listing = await self.listing(parent_path, SMALL_FOLDER_PAGES)
        if listing is not None:
            entry = listing.get(name)
            if entry is None:
                raise NotFound(f"no such file or folder: {path}")
            return entry
        return await self._probe(path)

    def cached_entry(self, parent_path: str, name: str) -> Entry | None:
        listing = self._listings.get(parent_path)
        return None if listing is None else listing.get(name)

    def _probed_enough(self, path: str) -> bool:
        """Whether to list folder ``path`` (SMALL_FOLDER_PAGES at most) instead of probing one more name.

        A stat or open of every file of a folder never listed (``find``, a data loader reading a file list)
        would cost HEAD + LIST per name. After ``PROBES_BEFORE_LISTING`` names a listing is tried once: if
        it takes SMALL_FOLDER_PAGES or fewer it answers every later name for ``metadata_ttl`` (and the
        folder is re-listed after that, see ``_small_folders``); a larger folder goes on being probed."""
        if not self.caches:
            return False
        probed = self._probed[path] = self._probed.get(path, 0) + 1
        return probed == PROBES_BEFORE_LISTING + 1

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
            found["marker"] = bool(page.objects) and page.objects[0].key == self.ns.dir_prefix(path)

        await run_all((head, below))
        name = path.rsplit("/", 1)[-1]
        if found.get("dir"):
            if "file" in found:
                self.ns.hidden(self.ns.file_key(path), "a folder of the same name shadows this file")
            if not self.true_attributes:
                return Entry(name, is_dir=True)
            return Entry(name, is_dir=True, info=await self.described.marker(path, exists=bool(found["marker"])))
        info = found.get("file")
        if isinstance(info, ObjectInfo):
            return Entry(name, is_dir=False, info=info)
        raise NotFound(f"no such file or folder: {path}")

    # -- what S3 says of one file ----------------------------------------------------------------------

    async def head(self, node: Inode) -> Inode:
        try:
            info = await self.store.head(self.ns.file_key(node.path))
        except ObjectNotFound:
            raise NotFound(f"{node.path} was removed from the bucket") from None
        return self.refreshed(node, info)

    async def get_first(self, node: Inode, first: int) -> tuple[Inode, bytes | bytearray]:
        """What ``head`` does, for a file about to be read: the same answer and the reader's first part
        in one GET (a HEAD and then a GET cost two round trips per file read; this costs one). A file of
        up to two first parts comes whole: its second half costs less than the round trip it saves."""
        nbytes = node.size if node.size <= 2 * first else first
        try:
            info, data = await self.store.get_first(self.ns.file_key(node.path), nbytes)
        except ObjectNotFound:
            raise NotFound(f"{node.path} was removed from the bucket") from None
        return self.refreshed(node, info), data

    def refreshed(self, node: Inode, info: ObjectInfo) -> Inode:
        if not self.inodes.refresh_file(node, info, self.fresh_until()):
            self._kind_changed(node, info)
        return node

    def _kind_changed(self, node: Inode, info: ObjectInfo) -> NoReturn:
        """``node``'s object is of another kind now (a file became a symlink, or was one all along and
        only a listing had been seen). The name gets a new inode and the cached listing learns the truth;
        the old inode is ESTALE, which makes the kernel look the name up again (see inodes.py)."""
        if self.linked(node):
            self.inodes.put_file(node.path, info, self.fresh_until())
            parent, _, name = node.path.rpartition("/")
            listing = self._listings.get(parent)
            if listing is not None and name in listing and not listing[name].is_dir:
                listing[name] = Entry(name, is_dir=False, info=info)
        raise KindChanged(f"{node.path} is no longer a {'symlink' if stat.S_ISLNK(node.mode) else 'file'}")

    def statistics(self) -> dict[str, int]:
        return {"inodes": len(self.inodes), "cached_listings": len(self._listings)}


class Descriptions:
    """What a listing's entries must carry at once, and what was already asked: symlink candidates (an
    inode's type must never change later) and, with ``true`` attributes (``--allow-other``, see the module
    docstring), every file's and folder's own metadata. Owns the cache of folder markers (``ttl``)."""

    def __init__(
        self,
        store: ObjectStore,
        ns: Namespace,
        inodes: InodeTable,
        true: bool,
        ttl: float,
        now: Callable[[], float],
        mount_time: int,
    ) -> None:
        self.store, self.ns, self.inodes, self.true, self.ttl = store, ns, inodes, true, ttl
        self.mount_time = mount_time
        # folder -> its marker's HEAD (or "no marker"), trusted for metadata_ttl
        self.markers: TTLCache[str, ObjectInfo] = TTLCache(maxsize=4096, ttl=max(ttl, 1e-9), timer=now)

    async def listing(self, path: str, entries: dict[str, Entry]) -> dict[str, Entry]:
        """The listing with the metadata that must be known at once: symlink candidates (an inode's type
        must never change later) and, with ``true`` attributes, every file and folder. A version a HEAD
        already described is not asked again (its inode's metadata ETag, and with ``true`` attributes
        its LastModified too); nor a folder's marker within ``metadata_ttl``."""
        found = dict(entries)
        files: list[tuple[str, ObjectInfo]] = []
        folders: list[str] = []
        for name, entry in entries.items():
            info = entry.info
            if info is None:
                if self.true:
                    marker = self.markers.get(join(path, name))
                    if marker is None:
                        folders.append(name)
                    else:
                        found[name] = Entry(name, is_dir=True, info=marker)
                continue
            if not (self.true or link_candidate(info)):
                continue
            node = self.inodes.by_path(join(path, name))
            if node is not None and self.known(node, info):
                meta = {**posix_fields(*_fields(node)), **node.extra_metadata()}
                found[name] = Entry(name, is_dir=False, info=replace(info, metadata=meta))
            else:
                files.append((name, info))

        async def head(item: tuple[str, ObjectInfo]) -> None:
            name, info = item
            try:
                found[name] = Entry(name, is_dir=False, info=await self.store.head(info.key))
            except ObjectNotFound:
                found.pop(name, None)  # deleted since the listing

        async def head_marker(name: str) -> None:
            found[name] = Entry(name, is_dir=True, info=await self.marker(join(path, name)))

        calls = [partial(head, item) for item in files] + [partial(head_marker, name) for name in folders]
        await for_each(calls, _call)
        return found

    def known(self, node: Inode, info: ObjectInfo) -> bool:
        """Whether a HEAD already described the version of file ``node`` that a listing shows as ``info``.
        With ``true`` attributes the version must not be newer than the one described: a metadata-only
        change keeps the ETag (S3 copies keep the MD5) but moves LastModified."""
        if node.is_dir or node.meta_etag != info.etag:
            return False
        if not self.true:
            return True
        return node.meta_modified is not None and info.last_modified <= node.meta_modified

    async def marker(self, path: str, exists: bool = True) -> ObjectInfo:
        """Folder ``path``'s own metadata: its marker's HEAD, or "no marker" (no metadata: the mount's
        defaults). ``exists``: False when a LIST just showed there is none (no HEAD then)."""
        marker = self.markers.get(path)
        if marker is not None:
            return marker
        key = self.ns.dir_prefix(path)
        marker = ObjectInfo(key, 0, "", seconds_of_ns(self.mount_time), {})
        if exists:
            try:
                marker = await self.store.head(key)
            except ObjectNotFound:
                pass
        if self.ttl > 0:
            self.markers[path] = marker
        return marker

    def folder_changed(self, node: Inode) -> ObjectInfo:
        """Folder ``node``'s marker was written here with its attributes: what a HEAD would now say."""
        metadata = {**posix_fields(*_fields(node)), **node.extra_metadata()}
        marker = ObjectInfo(self.ns.dir_prefix(node.path), 0, "", seconds_of_ns(node.mtime_ns), metadata)
        if self.ttl > 0:
            self.markers[node.path] = marker
        return marker


def _fields(node: Inode) -> tuple[int, int, int, int]:
    return node.mode, node.uid, node.gid, node.mtime_ns


async def _call(call: Callable[[], Awaitable[None]]) -> None:
    await call()
