"""The superblock: inodes, names, listings, the lookup policy and every TTL decision, in one place.

Owns: the inode table, the cached folder listings (``metadata_ttl``), which names are probed and which
folders are listed instead, what a HEAD or a first-part GET tells about a file, and whether attributes
came from the object's own metadata. Must not read or write file data, and must not know about handles;
it asks ``is_local`` whether an inode has a local copy (whose attributes are newer than anything S3 says).

True attributes (the default; ``--listing-attributes=fast`` turns them off, and is refused with
``--allow-other``, where the kernel checks other users' access against what we answer): every entry a
listing or a probe hands out carries its object's own metadata, so ``ls -l``, ``stat``, ``rsync``, ``make``
and the kernel's permission checks see the same mode, owner and mtime before and after a remount, and
after the kernel forgot an inode. A file's metadata comes from a HEAD of its version, remembered per
version in the cache folder (metacache.py: a version is ETag and LastModified, because a metadata-only
change keeps the ETag but not the LastModified), or from what this mount wrote. A folder's comes from its
marker object ``dir/`` (mkdir writes it; chmod, chown and utime of a folder rewrite it); a folder without
a marker has the mount's defaults (``Descriptions`` asks). Our own changes reach every cached copy of an
entry: the inode, the folder's cached listing (``listed``, ``listed_file``, ``listed_folder``), a listing
that was in flight while we changed it (``_since``), and a readdir's earlier snapshot (``record`` prefers
the cached listing). With ``fast`` listings keep the cheaper view described in inodes.py.

Request budget (asserted by tests):
- a listing of N entries: ceil(N/1000) LIST, plus (true attributes) a HEAD of every file whose version
  the metadata cache does not know, started right after the LIST page that showed it, ``CONCURRENCY`` at
  a time, and of every folder's marker not asked within ``metadata_ttl`` (404 when there is none). With
  ``fast``: no HEAD per file, except symlink candidates (links.py).
- a lookup of a name not in a fresh listing: one HEAD and one LIST (max-keys 1), concurrently, because a
  name may be a file, a folder (any key below it), or both (the folder wins); after
  ``PROBES_BEFORE_LISTING`` such names a small folder is listed instead. With true attributes, a
  folder whose LIST shows a marker of a version not known costs one HEAD of the marker more.
- attributes younger than ``metadata_ttl``: nothing; after it, one HEAD for a file (strict: a folder's
  attributes too, one LIST of one key, see ``revalidate``).

Consistency modes (options.Consistency, docs/SEMANTICS.md): the mode sets ``metadata_ttl`` (strict 0, so
nothing is cached: no listing, no marker, no negative answer) and two rules decided here: whether an open
may trust fresh attributes without asking S3 (``trusts_open``: eventual only) and whether a folder's
attributes go stale (``is_fresh``: strict only; elsewhere a folder is checked when it is looked up or
listed). Whatever the mode, what the mount learns of a change made elsewhere (a new ETag from a HEAD, a
probe, a listing or an open, a name gone or of another kind) it tells the kernel (``kernel``, a
KernelCache: core/kernel.py), so the kernel's caches never outlive what the mode promises.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import NoReturn

import trio
from cachetools import LRUCache, TTLCache

from s3files.core.descriptions import Descriptions
from s3files.core.inodes import ROOT_INO, Attr, Defaults, Inode, InodeTable
from s3files.core.kernel import KernelCache, NoKernelCache
from s3files.core.metacache import MetaCache
from s3files.core.namespace import Entry, Namespace, join
from s3files.core.tasks import Spawn, run_all
from s3files.core.times import NS
from s3files.errors import KindChanged, NotFound, ObjectNotFound, S3FilesError
from s3files.options import Consistency, MountOptions
from s3files.store.base import ListPage, ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

MAX_LIST_PAGES = 1_000_000  # a bound on any listing loop: 10^9 keys
_UNKNOWN = object()  # a probe's HEAD not asked yet
PROBES_BEFORE_LISTING = 2  # names probed (HEAD + LIST each) in a folder never listed before it is listed
SMALL_FOLDER_PAGES = 2  # a folder listed instead of probed: at most this many pages (RGW sometimes ends a
# page early: the raw SDK's listing of 1,000 keys took 2 LISTs in one benchmark round of 3)
REFRESH_AHEAD = 0.25  # a small folder's listing that lookups use is made again in this last part of its TTL
REFRESH_LISTS = 2  # ... or at least this many of its last LIST's durations before it expires
REFRESH_MARKERS = 16  # folder markers a refreshed listing re-asks at most (those looked up since the last)


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
        meta: MetaCache | None = None,
        spawn: Spawn | None = None,
    ) -> None:
        self.store = store
        self._spawn = spawn  # background work (listings made again before they expire); None: none
        self.ttl = opts.metadata_ttl
        self.consistency = opts.consistency
        self.kernel: KernelCache = NoKernelCache()  # the FUSE session's, once it runs (fs.use_kernel_cache)
        # Attributes shown are the object's own unless --listing-attributes=fast (never with --allow-other,
        # where the kernel checks other users' access against them). See Descriptions.
        self.true_attributes = opts.listing_attributes == "true" or opts.allow_other
        self.meta = meta if meta is not None else MetaCache(None)
        self.is_local = is_local
        self._now = now
        self.ns = Namespace(opts.source.prefix)
        self.mount_time = wall() // NS * NS  # whole seconds: folders without a marker show it, as LastModified
        self.inodes = InodeTable(Defaults(opts.uid, opts.gid, opts.file_mode, opts.dir_mode), self.mount_time)
        self.described = Descriptions(
            store, self.ns, self.inodes, self.meta, self.true_attributes, self.ttl, now, self.mount_time, spawn
        )
        self._listings: TTLCache[str, dict[str, Entry]] = TTLCache(maxsize=256, ttl=max(self.ttl, 1e-9), timer=now)
        # When each cached listing was made: what it tells is fresh until then plus the TTL, not until a TTL
        # after a lookup it answered (else the kernel's timeouts would stack on ours: twice the TTL).
        self._listed_at: LRUCache[str, float] = LRUCache(maxsize=256)
        # Folders whose last listing was small (SMALL_FOLDER_PAGES): a lookup there re-lists (a LIST answers
        # every name for metadata_ttl) instead of probing each new name (HEAD + LIST), as when creating files.
        self._small_folders: LRUCache[str, bool] = LRUCache(maxsize=4096)
        self._probed: LRUCache[str, int] = LRUCache(maxsize=4096)  # folder -> names probed there
        # Folders whose cached listing was made for lookups and is not described yet (see ``listing``).
        self._bare: LRUCache[str, bool] = LRUCache(maxsize=4096)
        self._list_took: LRUCache[str, float] = LRUCache(maxsize=4096)  # folder -> its last listing's seconds
        self._refreshing: set[str] = set()  # folders being listed again in the background
        self._lookups: dict[str, _Lookup] = {}  # path -> the lookup of it in flight (``entry``)
        self._listing_for_lookups: dict[str, trio.Event] = {}  # folder -> its listing a lookup awaits
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

    def valid_for(self, node: Inode) -> float:
        """Seconds the kernel may keep ``node``'s name and attributes: what is left of its freshness (at
        most the TTL). A local copy's and the root's are ours: the whole TTL."""
        if node.ino == ROOT_INO or self.is_local(node.ino):
            return self.ttl
        left = node.fresh_until - self._now()
        parent = node.path.rpartition("/")[0] if node.is_dir else None
        if parent is not None and parent in self._small_folders:
            # the kernel keeps a folder's name until its parent's listing expires, and then every path walk
            # through it would wait for that listing: it asks again in the last part of the TTL instead,
            # where the lookup is answered from the cache and has the listing made again ahead
            left -= self._refresh_window(parent)
        return min(self.ttl, max(0.0, left))

    def is_fresh(self, node: Inode) -> bool:
        """Whether ``node``'s attributes may be answered without asking S3. A folder's are, except in
        strict mode (the root always: it has no object)."""
        if node.is_dir:
            return self.consistency is not Consistency.STRICT or node.ino == ROOT_INO or node.fresh_until > self._now()
        return node.fresh_until > self._now() or self.is_local(node.ino)

    def trusts_open(self, node: Inode) -> bool:
        """Whether opening ``node`` may skip asking S3 for its newest version: in eventual mode, while its
        attributes are fresh. Close-to-open and strict revalidate every open."""
        return self.consistency is Consistency.EVENTUAL and self.is_fresh(node)

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
        parent, _, name = path.rpartition("/")
        return self.recorder(parent)(name, entry)

    def recorder(self, folder: str) -> Callable[[str, Entry], Inode]:
        """``record`` for names of ``folder``, many at once (a readdir's page): the folder's cached
        listing and when it was made are looked up once, not per name (each is a cache lookup with its
        expiry, a good part of an ``ls`` of a folder the mount knows)."""
        listing = self._listings.get(folder)
        listed_at = self._listed_at.get(folder) if listing is not None else None
        return partial(self._record, folder, listing, listed_at)

    def _record(
        self, parent: str, listing: dict[str, Entry] | None, listed_at: float | None, name: str, entry: Entry
    ) -> Inode:
        path = join(parent, name)
        node = self.inodes.by_path(path)
        if node is not None and self.is_local(node.ino):
            return node  # being changed here: our copy is newer than anything S3 or a listing says
        cached = None if listing is None else listing.get(name)
        if cached is not None and not (_bare(cached) and not _bare(entry)):
            entry = cached
        # fresh for a TTL after S3 said so: after the cached listing was made, if the name is in one
        if cached is None:
            until = self.fresh_until()
        else:
            until = (self._now() if listed_at is None else listed_at) + self.ttl
        if entry.is_dir:
            recorded = self.inodes.put_dir(path, self.mount_time, until)
            if entry.info is not None:  # its marker's metadata (true_attributes)
                self.inodes.describe_dir(recorded, entry.info)
        elif entry.info is None:
            raise NotFound(f"{path} is no longer here")  # a local file that is gone
        elif node is not None and not node.is_dir and self.inodes.shows(node, entry.info):
            node.fresh_until = max(until, node.fresh_until)  # (every entry of every readdir: keep it cheap)
            return node
        else:
            before, etag = (node.attr(), node.etag) if node is not None else (None, None)
            if node is not None and etag == entry.info.etag:
                until = max(until, node.fresh_until)  # this version was confirmed later (a HEAD, our upload)
            recorded = self.inodes.put_file(path, entry.info, until)
            if before is not None and recorded is node:
                self._told(recorded, etag, before)
        if node is not None and recorded is not node:
            self._entry_gone(path)  # another kind now: a new inode for the name
        return recorded

    # -- listings --------------------------------------------------------------------------------------

    async def listing(self, path: str, max_pages: int = MAX_LIST_PAGES) -> dict[str, Entry] | None:
        """All entries of folder ``path``, from a fresh cached listing or ceil(N/1000) LIST requests
        (None if that takes more than ``max_pages``)."""
        cached = self._listings.get(path)
        if cached is not None:
            if max_pages < MAX_LIST_PAGES or path not in self._bare:
                return cached
            # listed for lookups, now read whole (readdir): describe it, in place (its age stays)
            since = self._changes
            described = self._since(since, path, await self.described.listing(path, dict(cached)))
            cached.clear()
            cached.update(described)
            self._bare.pop(path, None)
            return cached
        return await self._list(path, max_pages)

    async def _list(self, path: str, max_pages: int) -> dict[str, Entry] | None:
        """Folder ``path`` listed from S3 (``listing`` says what for), and cached."""
        started = self._now()
        prefix = self.ns.dir_prefix(path)
        since = self._changes
        pages: list[ListPage] = []
        heads: dict[str, ObjectInfo | None] = {}
        whole = max_pages >= MAX_LIST_PAGES
        async with self.described.prefetching(heads, enabled=whole) as prefetch:
            token: str | None = None
            for _ in range(MAX_LIST_PAGES):
                page = await self.store.list_page(prefix, "/", token=token)
                pages.append(page)
                prefetch(page)  # a whole listing: its files' HEADs start now, while the next page is asked
                token = page.next_token
                if not token:
                    break
                if len(pages) >= max_pages:
                    self._small_folders.pop(path, None)  # too big to list for lookups: probe its names now
                    return None
        entries = self.ns.entries(path, pages)
        if whole:
            entries = await self.described.listing(path, entries, heads)
        # else: listed for lookups (a stat loop, names being created): ``entry`` describes only the names
        # asked for, so creating a file in a big folder never HEADs every file in it
        entries = self._since(since, path, entries)
        self._gone_from(path, entries)
        self.inodes.subfolders_listed(path, sum(entry.is_dir for entry in entries.values()))  # st_nlink
        if self.caches:
            self._listings[path] = entries
            self._listed_at[path] = self._now()
            self._list_took[path] = self._now() - started
            if whole:
                self._bare.pop(path, None)
            else:
                self._bare[path] = True
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
        if info.last_modified and info.metadata is not None:
            self.meta.learn(info)  # what a HEAD will say of this version (LastModified at most the reply's)
        else:
            self.meta.forget(info.key)
        meta = node.stored_metadata()
        self.listed(node.path, Entry(node.path.rpartition("/")[2], is_dir=False, info=replace(info, metadata=meta)))

    def listed_folder(self, node: Inode) -> None:
        """Folder ``node``'s marker now carries its attributes (mkdir, chmod, chown, utime here): the
        parent's listing and the marker cache learn them."""
        marker = self.described.folder_changed(node)
        self.listed(node.path, Entry(node.path.rpartition("/")[2], is_dir=True, info=marker))

    def learn(self, info: ObjectInfo) -> None:
        """``info`` (with its metadata) was written here or told by S3: the metadata cache keeps it."""
        self.meta.learn(info)

    def deleted(self, *keys: str) -> None:
        """Objects ``keys`` were deleted here: what is remembered of their versions goes, since the next
        object under such a key may have the same ETag and LastModified second and still be another one."""
        for key in keys:
            self.meta.forget(key)

    def copied(self, src: ObjectInfo, dst: ObjectInfo) -> None:
        """Version ``src`` was copied to ``dst`` here, metadata kept (metacache.copied)."""
        self.meta.copied(src, dst)

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
            self._listed_at[path] = self._now()
            self._small_folders[path] = True

    def forget_listings(self, *paths: str, below: tuple[str, ...] = ()) -> None:
        """Drop the cached listings (and folder markers) of ``paths`` and of every folder below ``below``."""
        for cache in (self._listings, self.described.markers):
            for path in list(cache):
                if path in paths or (below and path.startswith(below)):
                    cache.pop(path, None)

    # -- lookups ---------------------------------------------------------------------------------------

    async def entry(self, parent_path: str, name: str) -> Entry:
        """What ``name`` in folder ``parent_path`` is: a local file, or per a fresh listing, or S3.

        Lookups of one name at the same time share the first one's answer: threads opening one file each
        revalidate its name in the kernel (a FUSE lookup per path walk), and each would ask S3 the same
        HEADs and LIST. The shared answer is as fresh as any lookup's (S3's, within ``metadata_ttl``);
        one that found nothing, or came while this mount changed a name, is not shared, nor any with a
        ``metadata_ttl`` of 0 (strict mode)."""
        path = join(parent_path, name)
        flight = self._lookups.get(path)
        if flight is not None and self.caches:  # (TTL 0: every lookup asks S3 after it began)
            changes = self._changes
            await flight.done.wait()
            if flight.entry is not None and self._changes == changes == flight.changes:
                return flight.entry
        flight = _Lookup(self._changes)
        self._lookups[path] = flight
        try:
            flight.entry = await self._entry(parent_path, name, path)
            return flight.entry
        finally:
            flight.done.set()
            if self._lookups.get(path) is flight:
                del self._lookups[path]

    async def _entry(self, parent_path: str, name: str, path: str) -> Entry:
        local = self.inodes.by_path(path)
        if local is not None and self.is_local(local.ino):
            return Entry(name, is_dir=False)
        listing = self._listings.get(parent_path)
        if listing is not None:
            self._refresh_ahead(parent_path)
        heads: dict[str, ObjectInfo | None] = {}
        listing_now = self._listing_for_lookups.get(parent_path)
        if listing is None and listing_now is not None:
            # lookups in one folder at the same time (the kernel sends them at once, dirops.py): one LIST
            await listing_now.wait()
            listing = self._listings.get(parent_path)
        if listing is None and (parent_path in self._small_folders or self._probed_enough(parent_path)):
            listing = await self._listing_for(parent_path, name, heads)
        if listing is not None:
            entry = listing.get(name)
            if entry is None:
                raise NotFound(f"no such file or folder: {path}")
            if _bare(entry):
                # listed for lookups: describe this name alone (one HEAD at most), and keep the answer
                self.described.ahead(parent_path, listing, name)
                described = (await self.described.listing(parent_path, {name: entry}, known_too=True)).get(name)
                if listing.get(name) is entry:  # (not changed here meanwhile)
                    if described is None:
                        listing.pop(name, None)
                    else:
                        listing[name] = described
                if described is None:
                    raise NotFound(f"no such file or folder: {path}")
                return described
            return entry
        return await self._probe(path, heads.get(self.ns.file_key(path), _UNKNOWN))

    def _refresh_ahead(self, path: str) -> None:
        """A lookup used the cached listing of small folder ``path``: if it expires soon, make it again in
        the background, with the markers of the folders in it that were looked up, so that lookups there
        (a loop opening or stat-ing the folder's files, every path walk through it) never wait for the
        LIST and HEADs that an expired listing costs. Nothing is answered from older than
        ``metadata_ttl``; the price is a folder in use listed a little more often than once per TTL
        (``REFRESH_AHEAD``); a folder nobody looks up in is never listed ahead."""
        if self._spawn is None or path in self._refreshing or path not in self._small_folders:
            return
        listed = self._listed_at.get(path)
        if listed is None or self._now() - listed < self.ttl - self._refresh_window(path):
            return
        self._refreshing.add(path)
        self._spawn(self._refresh, path)

    def _refresh_window(self, path: str) -> float:
        """How long before its cached listing expires folder ``path`` is listed again when a lookup uses it."""
        return max(self.ttl * REFRESH_AHEAD, REFRESH_LISTS * self._list_took.get(path, 0.0))

    async def _refresh(self, path: str) -> None:
        old = self._listings.get(path) or {}
        looked_up = [join(path, name) for name, entry in old.items() if entry.is_dir and entry.info is not None]

        async def relist() -> None:
            await self._list(path, SMALL_FOLDER_PAGES)

        calls = [relist] + [partial(self.described.refresh_marker, folder) for folder in looked_up[:REFRESH_MARKERS]]
        try:
            await run_all(calls)
        except S3FilesError as exc:  # the next lookup lists when the listing expired, and meets the error itself
            log.debug("listing %s ahead of its expiry failed: %s", path, exc)
        finally:
            self._refreshing.discard(path)

    async def _listing_for(
        self, parent_path: str, name: str, found: dict[str, ObjectInfo | None]
    ) -> dict[str, Entry] | None:
        """Folder ``parent_path`` listed for the lookup of ``name``, with what describing ``name`` takes
        asked at the same time (true attributes): its HEAD as a file and as a folder (its marker).
        One round trip instead of two in a row (LIST, then HEAD: on a network ~20 ms each, and a cold
        ``open`` of ``a/b`` looks up two names); the price is the HEAD of the kind it is not (404).
        ``found``: the HEADs' answers by key (None: no such key), for a probe if the folder is too big to
        list."""
        path = join(parent_path, name)
        listing: list[dict[str, Entry] | None] = []

        async def head(key: str) -> None:
            try:
                found[key] = await self.store.head(key)
            except ObjectNotFound:
                found[key] = None

        async def lister() -> None:
            listing.append(await self.listing(parent_path, SMALL_FOLDER_PAGES))

        file_key, marker_key = self.ns.file_key(path), self.ns.dir_prefix(path)
        calls = [lister]
        if self.true_attributes:  # (else a listed name is described by the listing alone)
            calls.append(lambda: head(file_key))
            if self.described.markers.get(path) is None:
                calls.append(lambda: head(marker_key))
        listed = self._listing_for_lookups[parent_path] = trio.Event()
        try:
            await run_all(calls)
        finally:
            listed.set()
            if self._listing_for_lookups.get(parent_path) is listed:
                del self._listing_for_lookups[parent_path]
        entries = listing[0]
        entry = entries.get(name) if entries is not None else None
        if entry is None or not _bare(entry):
            return entries
        if entry.is_dir and marker_key in found:
            marker = found[marker_key]
            if marker is not None:
                self.meta.learn(marker)
            # as a HEAD would: no request now (the metadata cache knows that version, or there is none)
            await self.described.marker(path, exists=marker is not None, listed=marker)
        elif not entry.is_dir:
            info = found.get(file_key)
            if info is not None:
                self.meta.learn(info)  # ``entry`` below finds this version described: no HEAD
        return entries

    def _gone_from(self, path: str, entries: dict[str, Entry]) -> None:
        """A whole listing of folder ``path``: names the kernel holds there that it no longer shows were
        deleted elsewhere (ours are in ``entries`` already, see ``_since``, or have a local copy)."""
        for node in self.inodes.children(path):
            name = node.path.rpartition("/")[2]
            if node.lookups > 0 and name not in entries and not self.is_local(node.ino):
                self._entry_gone(node.path)

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

    async def _probe(self, path: str, headed: ObjectInfo | object | None = _UNKNOWN) -> Entry:
        """Ask S3 whether ``path`` is a folder or a file: HEAD and a 1-key LIST, concurrently.
        ``headed``: the file's HEAD asked a moment ago (None: no such key), or ``_UNKNOWN``."""
        found: dict[str, object] = {}
        if isinstance(headed, ObjectInfo):
            found["file"] = headed
            self.meta.learn(headed)

        async def head() -> None:
            if headed is not _UNKNOWN:
                return
            try:
                found["file"] = info = await self.store.head(self.ns.file_key(path))
                self.meta.learn(info)
            except ObjectNotFound:
                pass

        async def below() -> None:
            page = await self.store.list_page(self.ns.dir_prefix(path), "/", max_keys=1)
            found["dir"] = bool(page.objects or page.prefixes)
            if page.objects and page.objects[0].key == self.ns.dir_prefix(path):
                found["marker"] = page.objects[0]

        await run_all((head, below))
        name = path.rsplit("/", 1)[-1]
        if found.get("dir"):
            if "file" in found:
                self.ns.hidden(self.ns.file_key(path), "a folder of the same name shadows this file")
            if not self.true_attributes:
                return Entry(name, is_dir=True)
            marker = found.get("marker")
            listed = marker if isinstance(marker, ObjectInfo) else None
            return Entry(name, is_dir=True, info=await self.described.marker(path, exists=listed is not None, listed=listed))
        info = found.get("file")
        if isinstance(info, ObjectInfo):
            return Entry(name, is_dir=False, info=info)
        raise NotFound(f"no such file or folder: {path}")

    # -- what S3 says of one file ----------------------------------------------------------------------

    async def head(self, node: Inode) -> Inode:
        return self.refreshed(node, await self.ask(node))

    async def ask(self, node: Inode) -> ObjectInfo:
        """S3's answer for file ``node`` (a HEAD), not applied yet (``refreshed`` does): the caller
        applies it after answers asked earlier. NotFound, and the name forgotten, if it is gone."""
        try:
            return await self.store.head(self.ns.file_key(node.path))
        except ObjectNotFound:
            self._removed(node)

    async def revalidate(self, node: Inode) -> Inode:
        """Ask S3 about ``node`` (its attributes are not fresh): a file's HEAD; a folder's one-key LIST
        (does any key still have its prefix?) and, with true attributes, its marker (a HEAD only for a
        marker version the metadata cache does not know)."""
        if not node.is_dir:
            return await self.head(node)
        page = await self.store.list_page(self.ns.dir_prefix(node.path), "/", max_keys=1)
        if not (page.objects or page.prefixes):
            self._removed(node)
        marker = page.objects[0] if page.objects and page.objects[0].key == self.ns.dir_prefix(node.path) else None
        node.fresh_until = self.fresh_until()
        if self.true_attributes:
            before = node.attr()
            self.inodes.describe_dir(node, await self.described.marker(node.path, exists=marker is not None, listed=marker))
            if node.attr() != before and node.lookups > 0:
                self.kernel.attributes_changed(node.ino)
        return node

    async def get_first(self, node: Inode, first: int) -> tuple[Inode, bytes | bytearray]:
        """What ``head`` does, for a file about to be read: the same answer and the reader's first part
        in one GET (a HEAD and then a GET cost two round trips per file read; this costs one). A file of
        up to two first parts comes whole: its second half costs less than the round trip it saves."""
        nbytes = node.size if node.size <= 2 * first else first
        try:
            info, data = await self.store.get_first(self.ns.file_key(node.path), nbytes)
        except ObjectNotFound:
            self._removed(node)
        return self.refreshed(node, info), data

    def refreshed(self, node: Inode, info: ObjectInfo) -> Inode:
        self.meta.learn(info)
        before, etag = node.attr(), node.etag
        if not self.inodes.refresh_file(node, info, self.fresh_until()):
            self._kind_changed(node, info)
        self._told(node, etag, before)
        return node

    def _told(self, node: Inode, etag: str | None, before: Attr) -> None:
        """S3 told us of file ``node``, which was version ``etag`` with attributes ``before``: if another
        version is there now, or other attributes, the kernel forgets what it cached of the old (if it
        holds the inode at all)."""
        if node.lookups <= 0:
            return
        if etag is not None and node.etag != etag:
            self.kernel.data_changed(node.ino)
        elif node.attr() != before:
            self.kernel.attributes_changed(node.ino)

    def _removed(self, node: Inode) -> NoReturn:
        """S3 says ``node``'s object (a folder: every key below it) is gone: the cached listing and the
        kernel forget its name."""
        if self.linked(node):
            parent, _, name = node.path.rpartition("/")
            listing = self._listings.get(parent)
            if listing is not None and not (name in listing and listing[name].is_dir != node.is_dir):
                listing.pop(name, None)
            self._entry_gone(node.path)
        raise NotFound(f"{node.path} was removed from the bucket")

    def _entry_gone(self, path: str) -> None:
        parent_path, _, name = path.rpartition("/")
        parent = self.inodes.by_path(parent_path)
        if parent is not None and parent.is_dir:
            self.kernel.entry_gone(parent.ino, name)

    def _kind_changed(self, node: Inode, info: ObjectInfo) -> NoReturn:
        """``node``'s object is of another kind now (a file became a symlink, or was one all along and
        only a listing had been seen). The name gets a new inode and the cached listing learns the truth;
        the old inode is ESTALE, which makes the kernel look the name up again (see inodes.py)."""
        if self.linked(node):
            self.inodes.put_file(node.path, info, self.fresh_until())
            self._entry_gone(node.path)
            parent, _, name = node.path.rpartition("/")
            listing = self._listings.get(parent)
            if listing is not None and name in listing and not listing[name].is_dir:
                listing[name] = Entry(name, is_dir=False, info=info)
        raise KindChanged(f"{node.path} is no longer a {'symlink' if stat.S_ISLNK(node.mode) else 'file'}")

    def statistics(self) -> dict[str, int]:
        return {"inodes": len(self.inodes), "cached_listings": len(self._listings), **self.meta.statistics()}


@dataclass(eq=False)
class _Lookup:
    """A lookup in flight, for lookups of the same name meanwhile: its answer, once ``done``, and the
    mount's change number when it began (see ``Superblock.entry``)."""

    changes: int
    entry: Entry | None = None
    done: trio.Event = field(default_factory=trio.Event)


def _bare(entry: Entry) -> bool:
    """Whether a listed ``entry`` lacks what a description adds: a folder's marker, a file's metadata."""
    if entry.is_dir:
        return entry.info is None
    return entry.info is not None and entry.info.metadata is None
