"""Descriptions: what a folder listing's entries must carry before the listing is answered.

Owns: which listed files and folders are asked about (symlink candidates always; with true attributes,
every file whose version is not known and every folder's marker ``dir/`` per ``metadata_ttl``), asking
S3 concurrently (right after each LIST page of a full listing), and the cache of folder markers. Asks the
metadata cache (metacache.py) before S3 and tells it every answer. Must not change inodes or listings
(the superblock does, superblock.py explains the policy and its request budget).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial

import trio
from cachetools import LRUCache, TTLCache

from s3files.core.inodes import Inode, InodeTable
from s3files.core.links import link_candidate
from s3files.core.metacache import MetaCache
from s3files.core.namespace import Entry, Namespace, join
from s3files.core.tasks import CONCURRENCY, Spawn, for_each
from s3files.core.times import seconds_of_ns
from s3files.errors import ObjectNotFound, S3FilesError
from s3files.store.base import ListPage, ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

AHEAD_MOST = 16  # names described ahead of a sequential lookup loop at most (the window: 2, 4, 8, 16)


@dataclass
class _Ahead:
    """A folder's lookups that needed a description: where the last one was in the listing's order, how
    many names ahead of it are being described, and up to where they were asked."""

    last: int
    window: int = 0
    asked_until: int = -1


class Descriptions:
    """What a listing's entries must carry at once, and what was already asked: symlink candidates (an
    inode's type must never change later) and, with ``true`` attributes (see the module docstring), every
    file's and folder's own metadata. Asks the metadata cache (``meta``) before S3; owns the cache of
    folder markers (``ttl``)."""

    def __init__(
        self,
        store: ObjectStore,
        ns: Namespace,
        inodes: InodeTable,
        meta: MetaCache,
        true: bool,
        ttl: float,
        now: Callable[[], float],
        mount_time: int,
        spawn: Spawn | None = None,
    ) -> None:
        self.store, self.ns, self.inodes, self.meta, self.true, self.ttl = store, ns, inodes, meta, true, ttl
        self.mount_time = mount_time
        self._spawn = spawn  # describing ahead of a lookup loop (``ahead``); None: never
        self._ahead: LRUCache[str, _Ahead] = LRUCache(maxsize=256)
        self._asking: dict[str, trio.Event] = {}  # keys whose HEAD ``ahead`` started, until answered
        # folder -> its marker's HEAD (or "no marker"), trusted for metadata_ttl
        self.markers: TTLCache[str, ObjectInfo] = TTLCache(maxsize=4096, ttl=max(ttl, 1e-9), timer=now)

    def _wanted(self, info: ObjectInfo) -> bool:
        """Whether a listed file's metadata must be known before the listing is answered."""
        return self.true or link_candidate(info)

    @contextlib.asynccontextmanager
    async def prefetching(
        self, heads: dict[str, ObjectInfo | None], enabled: bool
    ) -> AsyncIterator[Callable[[ListPage], None]]:
        """While a folder is listed page by page: ``prefetch(page)`` starts the HEADs of the page's files
        whose version is not known (``CONCURRENCY`` at a time over all pages) and puts their answers in
        ``heads`` (None: deleted since). Leaving the block waits for them; an S3 error is raised as itself.
        Not ``enabled`` (a listing that may stop early, for lookups): nothing is started."""
        failed: list[S3FilesError] = []
        limiter = trio.CapacityLimiter(CONCURRENCY)

        async def head(info: ObjectInfo, scope: trio.CancelScope) -> None:
            async with limiter:
                try:
                    heads[info.key] = await self.store.head(info.key)
                except ObjectNotFound:
                    heads[info.key] = None
                except S3FilesError as exc:
                    failed.append(exc)
                    scope.cancel()

        async with trio.open_nursery() as nursery:

            def prefetch(page: ListPage) -> None:
                if not enabled:
                    return
                wanted = [info for info in page.objects if self._wanted(info) and not info.key.endswith("/")]
                known = self.meta.known(wanted)
                for info in wanted:
                    node = self.inodes.by_path(info.key[len(self.ns.prefix) :])
                    if info.key not in known and not (node is not None and self.known(node, info)):
                        heads[info.key] = None  # asked: a placeholder until the answer comes
                        nursery.start_soon(head, info, nursery.cancel_scope)

            try:
                yield prefetch
            except S3FilesError as exc:  # the listing itself failed: raised as itself, not in a group
                failed.insert(0, exc)
                nursery.cancel_scope.cancel()
        if failed:
            raise failed[0]

    async def listing(
        self,
        path: str,
        entries: dict[str, Entry],
        heads: dict[str, ObjectInfo | None] | None = None,
        known_too: bool = False,
    ) -> dict[str, Entry]:
        """The listing with the metadata that must be known at once: symlink candidates and, with
        ``true`` attributes, every file and folder. A version this mount knows (its inode's, or the
        metadata cache's) is not asked again, nor what ``prefetching`` asked already (``heads``), nor a
        folder's marker within ``metadata_ttl``. ``known_too`` (a lookup's one name): the other files
        take what this mount knows too, without a request, so a version a GET showed to be a symlink is
        never a file again once the kernel forgot its inode."""
        heads = heads or {}
        found = dict(entries)
        files: list[tuple[str, ObjectInfo]] = []
        folders: list[str] = []
        for name, entry in entries.items():
            info = entry.info
            if entry.is_dir:
                if info is None and self.true:
                    marker = self.markers.get(join(path, name))
                    if marker is None:
                        folders.append(name)
                    else:
                        found[name] = Entry(name, is_dir=True, info=marker)
                continue
            if info is None or not (known_too or self._wanted(info)):  # (None: a file being written here)
                continue
            if info.key in heads:
                head = heads[info.key]
                if head is None:
                    found.pop(name, None)  # deleted since the listing
                else:
                    self.meta.learn(head)
                    found[name] = Entry(name, is_dir=False, info=head)
                continue
            node = self.inodes.by_path(join(path, name))
            if node is not None and self.known(node, info):
                meta = node.stored_metadata()
                found[name] = Entry(name, is_dir=False, info=replace(info, metadata=meta))
            else:
                files.append((name, info))
        known = self.meta.known(info for _, info in files)
        asked = []
        for name, info in files:
            if info.key in known:
                found[name] = Entry(name, is_dir=False, info=replace(info, metadata=known[info.key]))
            elif self._wanted(info):
                asked.append((name, info))

        async def head(item: tuple[str, ObjectInfo]) -> None:
            name, info = item
            asking = self._asking.get(info.key)
            if asking is not None:  # described ahead, or by a lookup of the name at the same time: its answer
                await asking.wait()
            # (also when that answer came between ``known`` above and now: the workers start later)
            meta = self.meta.known([info]).get(info.key)
            if meta is not None:
                found[name] = Entry(name, is_dir=False, info=replace(info, metadata=meta))
                return
            self._asking[info.key] = asking = trio.Event()  # (``ahead`` and other lookups wait for it)
            try:
                described = await self.store.head(info.key)
            except ObjectNotFound:
                found.pop(name, None)  # deleted since the listing
                return
            finally:
                asking.set()
                if self._asking.get(info.key) is asking:
                    del self._asking[info.key]
            self.meta.learn(described)
            found[name] = Entry(name, is_dir=False, info=described)

        async def head_marker(name: str) -> None:
            found[name] = Entry(name, is_dir=True, info=await self.marker(join(path, name)))

        calls = [partial(head, item) for item in asked] + [partial(head_marker, name) for name in folders]
        await for_each(calls, _call)
        self.meta.flush()  # one transaction per listing
        return found

    def ahead(self, path: str, listing: dict[str, Entry], name: str) -> None:
        """A lookup of ``name`` in folder ``path`` needs its description (a HEAD) from ``listing``. If the
        lookups there that needed one go through the listing in its order (a ``stat`` or ``open`` of each
        file in turn: ``find``, ``du``, a data loader's file list), describe the next names now, as the
        reader reads ahead: a window of 2, 4, 8, then 16 names, at once. Their answers go to the metadata
        cache, where those lookups find them without a round trip; one that comes while its HEAD is in
        flight waits for it (``listing``). The price is at most ``AHEAD_MOST`` HEADs of names a loop
        stopped before; lookups in any other order start nothing."""
        if self._spawn is None or not self.true:
            return
        names = list(listing)
        try:
            here = names.index(name)
        except ValueError:
            return
        state = self._ahead.get(path)
        if state is None or not state.last < here <= state.last + state.window + 2:
            self._ahead[path] = _Ahead(here)
            return
        window = min(max(2 * state.window, 2), AHEAD_MOST)
        start, end = max(here + 1, state.asked_until + 1), min(len(names), here + 1 + window)
        self._ahead[path] = _Ahead(here, window, max(state.asked_until, end - 1))
        infos = [
            entry.info
            for entry in (listing[n] for n in names[start:end])
            if not entry.is_dir and entry.info is not None and entry.info.metadata is None
            and entry.info.key not in self._asking and self._wanted(entry.info)
        ]
        known = self.meta.known(infos)
        infos = [info for info in infos if info.key not in known]
        for info in infos:
            self._asking[info.key] = trio.Event()
        if infos:
            self._spawn(self._describe_ahead, infos)

    async def _describe_ahead(self, infos: list[ObjectInfo]) -> None:
        async def head(info: ObjectInfo) -> None:
            try:
                self.meta.learn(await self.store.head(info.key))
            except S3FilesError as exc:  # (deleted since: the lookup's own HEAD says so) the lookup asks again
                log.debug("describing %s ahead of its lookup failed: %s", info.key, exc)
            finally:
                self._asking.pop(info.key).set()

        await for_each(infos, head)

    def known(self, node: Inode, info: ObjectInfo) -> bool:
        """Whether a HEAD already described the version of file ``node`` that a listing shows as ``info``.
        With ``true`` attributes the version must not be newer than the one described: a metadata-only
        change keeps the ETag (S3 copies keep the MD5) but moves LastModified."""
        if node.is_dir or node.meta_etag != info.etag:
            return False
        if not self.true:
            return True
        return node.meta_modified is not None and info.last_modified <= node.meta_modified

    async def marker(self, path: str, exists: bool = True, listed: ObjectInfo | None = None) -> ObjectInfo:
        """Folder ``path``'s own metadata: its marker's HEAD, or "no marker" (no metadata: the mount's
        defaults). ``exists``: False when a LIST just showed there is none (no HEAD then); ``listed``: the
        marker as that LIST showed it (no HEAD when the metadata cache knows that version)."""
        marker = self.markers.get(path)
        if marker is not None:
            return marker
        return await self.refresh_marker(path, exists, listed)

    async def refresh_marker(self, path: str, exists: bool = True, listed: ObjectInfo | None = None) -> ObjectInfo:
        """What ``marker`` answers, asked again even if its cached answer is fresh (a listing made again
        before it expires, superblock.py ``_refresh_ahead``); the cached answer serves meanwhile."""
        key = self.ns.dir_prefix(path)
        marker = ObjectInfo(key, 0, "", seconds_of_ns(self.mount_time), {})
        known = self.meta.get(listed) if listed is not None else None
        if known is not None and listed is not None:
            marker = replace(listed, metadata=known)
        elif exists:
            try:
                marker = await self.store.head(key)
                self.meta.learn(marker)
            except ObjectNotFound:
                pass
        if self.ttl > 0:
            self.markers[path] = marker
        return marker

    def folder_changed(self, node: Inode) -> ObjectInfo:
        """Folder ``node``'s marker was written here with its attributes: what a HEAD would now say."""
        metadata = node.stored_metadata()
        key = self.ns.dir_prefix(node.path)
        marker = ObjectInfo(key, 0, node.marker_etag or "", seconds_of_ns(node.mtime_ns), metadata)
        if self.ttl > 0:
            self.markers[node.path] = marker
        return marker


async def _call(call: Callable[[], Awaitable[None]]) -> None:
    await call()
