"""The inode table: stable numbers for paths, their attributes, and the kernel's lookup counts.

Owns: ino <-> path, each inode's attributes and where they came from, lookup counting (an inode is
forgotten only when the kernel says so), and the rule for merging a listing's view of a file with what a
HEAD told us. Must not do I/O.

Why attributes have two sources: LIST returns size, ETag and LastModified but no user metadata; HEAD also
returns ``x-amz-meta-{mode,uid,gid,mtime}``. By default the superblock hands out only entries with their
object's own metadata (superblock.py: true attributes; a file's from a HEAD of its version or the metadata
cache, a folder's from its marker object: ``describe_dir``). With ``--listing-attributes=fast`` a listing
costs no HEAD per entry, so an entry only listed shows the mount defaults and LastModified until it is
looked up or opened; once a HEAD has been seen for an ETag, its metadata wins for that ETag.

Kinds: folder, regular file, symlink, FIFO, character and block device, UNIX socket: every non-folder is
one object, and its metadata ``mode`` carries the type bits (s3fs-compatible; an object without them is a
regular file); a device's number is ``x-amz-meta-rdev`` (``Inode.rdev``). An inode never changes kind: the
kernel marks an inode bad if its type changes, so when a name turns out to be of another kind (a HEAD shows
S_IFLNK or S_IFIFO for what a listing called a file), the name gets a new inode and the old one is left to
be forgotten (``refresh_file`` refuses to change it; the caller answers ESTALE).
"""

from __future__ import annotations

import itertools
import stat
from dataclasses import dataclass

from cachetools import LRUCache

from s3files.core.namespace import posix_metadata
from s3files.core.times import format_time, ns_of_seconds
from s3files.store.base import ObjectInfo

ROOT_INO = 1
NUMBERS_KEPT = 65_536  # numbers of forgotten inodes kept for their paths
DEVICE_KINDS = frozenset((stat.S_IFCHR, stat.S_IFBLK))
SPECIAL_KINDS = frozenset((stat.S_IFIFO, stat.S_IFSOCK)) | DEVICE_KINDS
# The kinds a file object may have (its metadata mode's type bits); any other type bits: a regular file.
OBJECT_KINDS = frozenset((stat.S_IFREG, stat.S_IFLNK)) | SPECIAL_KINDS


@dataclass(frozen=True)
class Attr:
    """Attributes as the file-system front end reports them."""

    ino: int
    mode: int  # st_mode, type bits included
    size: int
    uid: int
    gid: int
    mtime_ns: int  # times in integer nanoseconds since the epoch (times.py)
    nlink: int = 1
    rdev: int = 0  # a device's number (st_rdev)
    ctime_ns: int = 0
    atime_ns: int = 0


@dataclass(frozen=True)
class Defaults:
    """The mount's defaults for what objects do not say themselves."""

    uid: int
    gid: int
    file_mode: int  # permission bits only
    dir_mode: int


@dataclass
class Inode:
    ino: int
    path: str
    is_dir: bool
    mode: int
    size: int
    uid: int
    gid: int
    mtime_ns: int  # nanoseconds since the epoch, as every time here (times.py)
    etag: str | None = None
    meta_etag: str | None = None  # the ETag whose HEAD metadata is applied (None: defaults/listing only)
    meta_modified: float | None = None  # that version's LastModified (None: not known)
    fresh_until: float = 0.0  # attributes may be trusted without asking S3 until then
    page_cache_etag: str | None = None  # the ETag whose data the kernel page cache may hold
    target: bytes | None = None  # a symlink's target, as read for ``target_etag``
    target_etag: str | None = None
    rdev: int = 0  # a character or block device's number (x-amz-meta-rdev)
    xattr: str | None = None  # x-amz-meta-xattr of the version described (xattrs.py), kept verbatim
    lookups: int = 0
    unlinked: bool = False  # lost its name (unlink, a rename over it) while still known: st_nlink 0
    subdirs: int | None = None  # a folder's subfolders as far as the mount knows them (None: never listed)
    ctime_ns: int = 0  # the last change of data or attributes (0: not known, the mtime is shown)
    atime_ns: int | None = None  # set explicitly (utimensat, touch -a): stored; None: the mtime is shown
    dir_changed_ns: int = 0  # a folder's last entry change here (see entries_changed)
    marker_etag: str | None = None  # a folder's marker ``dir/`` as last seen or written (None: none known)

    @property
    def kind(self) -> int:
        """S_IFDIR, S_IFREG, S_IFLNK or a special file's type (SPECIAL_KINDS)."""
        return stat.S_IFMT(self.mode)

    def attr(self) -> Attr:
        return Attr(
            self.ino,
            self.mode,
            self.size,
            self.uid,
            self.gid,
            self.mtime_ns,
            self.nlink,
            self.rdev,
            ctime_ns=self.ctime_ns or self.mtime_ns,
            atime_ns=self.mtime_ns if self.atime_ns is None else self.atime_ns,
        )

    @property
    def nlink(self) -> int:
        """A folder: 2 + its subfolders (``.`` and each child's ``..``) when the mount knows them (a
        listing, then our own mkdir, rmdir and rename), else 2. Anything else: 1, and 0 once it lost its name
        while still open (fstat of the descriptor of an unlinked file). S3 has no hard links."""
        if self.is_dir:
            return 2 + (self.subdirs or 0)
        return 0 if self.unlinked else 1

    def set_times(self, meta: dict[str, int], last_modified: float) -> None:
        """Times from parsed metadata (namespace.posix_metadata), else as s3fs-fuse shows them: the
        object's LastModified for mtime and ctime, and atime as the mtime."""
        modified = ns_of_seconds(last_modified)
        self.mtime_ns = meta.get("mtime", modified)
        self.ctime_ns = meta.get("ctime", modified)
        self.atime_ns = meta.get("atime")

    def stored_metadata(self) -> dict[str, str]:
        """Everything of this inode that its object's ``x-amz-meta-*`` carry, in s3fs-compatible form: mode
        (decimal st_mode), owner, mtime and ctime (times.py), atime only where one was set explicitly,
        and the extra fields below. Written whenever S3 is written anyway (a publish, a chmod's copy)."""
        fields = {
            "mode": str(self.mode),
            "uid": str(self.uid),
            "gid": str(self.gid),
            "mtime": format_time(self.mtime_ns),
            "ctime": format_time(self.ctime_ns or self.mtime_ns),
        }
        if self.atime_ns is not None:
            fields["atime"] = format_time(self.atime_ns)
        return {**fields, **self.extra_metadata()}

    def changed(self, now_ns: int, data: bool = False) -> None:
        """Its data (``data``: mtime and ctime) or only its attributes (ctime) changed at ``now_ns``."""
        self.ctime_ns = now_ns
        if data:
            self.mtime_ns = now_ns

    def entries_changed(self, now_ns: int) -> None:
        """An entry of this folder was created, removed or renamed here at ``now_ns``: its mtime and ctime
        move. Where the folder has a marker, markers.py writes them to it within a second (one PUT per
        folder however many entries change, not one per file created); until then, and for a folder
        without a marker for as long as this inode lives, ``describe_dir`` keeps the newer time over what
        a marker read meanwhile says."""
        self.mtime_ns = self.ctime_ns = self.dir_changed_ns = now_ns

    def extra_metadata(self) -> dict[str, str]:
        """The x-amz-meta-* fields besides mode, owner and times that a rewrite of the object must keep:
        a device's ``rdev`` and the extended attributes (``xattr``, s3fs's encoding)."""
        extra = {}
        if self.kind in DEVICE_KINDS:
            extra["rdev"] = str(self.rdev)
        if self.xattr is not None:
            extra["xattr"] = self.xattr
        return extra


def marker_etag(marker: ObjectInfo) -> str | None:
    """The ETag a marker write may be conditional on: an empty marker's (what mkdir and chmod write). None
    for "no marker" (no ETag) and for a marker object with a body, which a PUT of the empty marker
    would replace: its folder's times are not written (markers.py)."""
    return marker.etag or None if marker.size == 0 else None


class InodeTable:
    """ino -> Inode and path -> ino. The root (ino 1) is never forgotten."""

    def __init__(self, defaults: Defaults, root_mtime_ns: int) -> None:
        self.defaults = defaults
        self._by_ino: dict[int, Inode] = {}
        self._by_path: dict[str, int] = {}
        self._next = itertools.count(ROOT_INO + 1)
        # path -> (number, kind) of inodes the kernel forgot (drop_caches, memory pressure): the name gets
        # its number back at its next lookup, so `find`, `du`, `tar` and `rsync` see one inode number per
        # path while mounted. Bounded; a name that lost its object (unlink, rename) forgets its number.
        self._numbers: LRUCache[str, tuple[int, int]] = LRUCache(maxsize=NUMBERS_KEPT)
        root = Inode(
            ROOT_INO, "", True, stat.S_IFDIR | defaults.dir_mode, 0, defaults.uid, defaults.gid, root_mtime_ns
        )
        root.fresh_until = float("inf")
        self._by_ino[ROOT_INO] = root
        self._by_path[""] = ROOT_INO

    def __len__(self) -> int:
        return len(self._by_ino)

    def get(self, ino: int) -> Inode | None:
        return self._by_ino.get(ino)

    def by_path(self, path: str) -> Inode | None:
        ino = self._by_path.get(path)
        return None if ino is None else self._by_ino[ino]

    def _node(self, path: str, kind: int) -> Inode:
        node = self.by_path(path)
        if node is not None and node.kind != kind:
            # The name changed kind in S3 (file <-> folder <-> symlink): give it a new number so the kernel
            # does not mix the two; the old inode lives on until the kernel forgets it.
            del self._by_path[path]
            node = None
        if node is None:
            d = self.defaults
            perm = {stat.S_IFDIR: d.dir_mode, stat.S_IFLNK: 0o777}.get(kind, d.file_mode)
            number, was = self._numbers.pop(path, (0, 0))
            if was != kind or number in self._by_ino:
                number = next(self._next)
            node = Inode(number, path, kind == stat.S_IFDIR, kind | perm, 0, d.uid, d.gid, 0)
            self._by_ino[node.ino] = node
            self._by_path[path] = node.ino
        return node

    def put_dir(self, path: str, mtime_ns: int, fresh_until: float) -> Inode:
        node = self._node(path, stat.S_IFDIR)
        if node.mtime_ns == 0:
            node.mtime_ns = mtime_ns
        node.fresh_until = fresh_until
        return node

    @staticmethod
    def shows(node: Inode, info: ObjectInfo) -> bool:
        """Whether file ``node`` shows exactly what ``info`` says: its version and size, with that
        version's metadata applied (a metadata version is ETag and LastModified; a listing's entry without
        metadata: the ETag a HEAD described). ``refresh_file`` would then change nothing but freshness."""
        return (
            node.etag == info.etag
            and node.size == info.size
            and node.meta_etag == info.etag
            and (info.metadata is None or node.meta_modified == info.last_modified)
        )

    def put_file(self, path: str, info: ObjectInfo, fresh_until: float) -> Inode:
        """Record what S3 says of file ``path`` (a listing or a lookup); ``info.metadata`` None: a listing."""
        node = self._node(path, self._kind(self.by_path(path), info))
        self.refresh_file(node, info, fresh_until)
        return node

    @staticmethod
    def _kind(node: Inode | None, info: ObjectInfo) -> int:
        """The type bits of the metadata's mode when they name a kind a file object may have (OBJECT_KINDS:
        a symlink, a FIFO, ...), else S_IFREG (a folder's bits on a file object, or none). A listing (no
        metadata) says S_IFREG, except for the version a HEAD already described, which keeps that answer."""
        if info.metadata is None:
            if node is not None and not node.is_dir and node.meta_etag == info.etag:
                return node.kind
            return stat.S_IFREG
        kind = stat.S_IFMT(int(posix_metadata(info.metadata).get("mode", 0)))
        return kind if kind in OBJECT_KINDS else stat.S_IFREG

    def refresh_file(self, node: Inode, info: ObjectInfo, fresh_until: float) -> bool:
        """Update ``node`` itself (getattr, open of a known inode): never re-maps its path, which may
        name something else by now (a folder that shadows it, say). False, and nothing changed, when
        ``info`` is of another kind than ``node`` (a file that is a symlink now): the caller must not
        show it through this inode."""
        if self._kind(node, info) != node.kind:
            return False
        d = self.defaults
        if info.metadata is not None:
            meta = posix_metadata(info.metadata)
            node.meta_etag, node.meta_modified = info.etag, info.last_modified
        elif node.meta_etag == info.etag:
            # a listing of the same version: keep what the HEAD told us
            node.size, node.etag, node.fresh_until = info.size, info.etag, fresh_until
            return True
        else:
            meta = {}
            node.meta_etag = node.meta_modified = None
        mode = int(meta.get("mode", d.file_mode))
        # Metadata may carry permission bits only, or a type no file object has (a folder's): the type
        # comes from the kind, the permissions from the metadata.
        node.mode = node.kind | stat.S_IMODE(mode)
        node.rdev = int(meta.get("rdev", 0)) if node.kind in DEVICE_KINDS else 0
        node.xattr = None if info.metadata is None else info.metadata.get("xattr")
        node.uid = int(meta.get("uid", d.uid))
        node.gid = int(meta.get("gid", d.gid))
        known_ctime = node.ctime_ns if node.etag == info.etag else 0
        node.set_times(meta, info.last_modified)
        # A ctime moved here without a write to S3 (a rename's copy keeps the metadata) holds for the
        # version this mount knows; a newer version brings its own.
        node.ctime_ns = max(node.ctime_ns, known_ctime)
        node.size = info.size
        node.etag = info.etag
        node.fresh_until = fresh_until
        return True

    def describe_dir(self, node: Inode, marker: ObjectInfo) -> None:
        """Folder ``node``'s attributes from its marker object ``dir/`` (its HEAD's metadata; none: the
        mount's defaults). Only the permission bits of a mode count: a folder stays a folder."""
        d = self.defaults
        meta = posix_metadata(marker.metadata)
        node.mode = stat.S_IFDIR | stat.S_IMODE(int(meta.get("mode", d.dir_mode)))
        node.xattr = (marker.metadata or {}).get("xattr")
        node.uid = int(meta.get("uid", d.uid))
        node.gid = int(meta.get("gid", d.gid))
        node.set_times(meta, marker.last_modified)
        node.marker_etag = marker_etag(marker)
        if node.dir_changed_ns:  # entries changed here since the marker was written
            node.mtime_ns = max(node.mtime_ns, node.dir_changed_ns)
            node.ctime_ns = max(node.ctime_ns, node.dir_changed_ns)

    def put_local_file(self, path: str, mode: int, uid: int, gid: int, mtime_ns: int) -> Inode:
        """A file created here that S3 does not have yet (it is uploaded when closed)."""
        node = self._node(path, stat.S_IFREG)
        node.mode = stat.S_IFREG | stat.S_IMODE(mode)
        node.uid, node.gid, node.size = uid, gid, 0
        node.mtime_ns = node.ctime_ns = mtime_ns
        node.atime_ns = None
        node.etag = node.meta_etag = node.page_cache_etag = node.xattr = None
        return node

    def move(self, old: str, new: str) -> None:
        """``old`` is now called ``new`` (rename); whatever was at ``new`` loses its name."""
        ino = self._by_path.pop(old, None)
        self._lose_name(new)
        self._numbers.pop(old, None)
        if ino is not None:
            self._by_ino[ino].path = new
            self._by_path[new] = ino

    def move_tree(self, old: str, new: str) -> list[Inode]:
        """Folder ``old`` is now folder ``new`` (rename): it and every name below it move along, so open
        handles and the kernel's inodes keep working; what had the new names loses them. Returns the
        moved inodes."""
        for path in [p for p in self._by_path if p == new or p.startswith(new + "/")]:
            self._lose_name(path)
        for path in [p for p in self._numbers if p in (old, new) or p.startswith((old + "/", new + "/"))]:
            self._numbers.pop(path, None)
        below = [(p, ino) for p, ino in self._by_path.items() if p == old or p.startswith(old + "/")]
        for path, _ in below:
            del self._by_path[path]
        moved = []
        for path, ino in below:
            node = self._by_ino[ino]
            node.path = new + path[len(old) :]
            self._by_path[node.path] = ino
            moved.append(node)
        return moved

    def unlink_path(self, path: str) -> None:
        """``path`` is gone; its inode lives on (open handles) until the kernel forgets it."""
        self._lose_name(path)

    def _lose_name(self, path: str) -> None:
        self._numbers.pop(path, None)
        ino = self._by_path.pop(path, None)
        if ino is not None:
            self._by_ino[ino].unlinked = True

    def children(self, path: str) -> list[Inode]:
        """The inodes named directly in folder ``path`` (a scan of every name: called once per listing)."""
        prefix = path + "/" if path else ""
        return [
            self._by_ino[ino]
            for child, ino in self._by_path.items()
            if child.startswith(prefix) and child and "/" not in child[len(prefix) :]
        ]

    def subfolders_listed(self, path: str, count: int) -> None:
        """A listing of folder ``path`` shows ``count`` subfolders: its link count from now on."""
        node = self.by_path(path)
        if node is not None and node.is_dir:
            node.subdirs = count

    def subfolders_changed(self, path: str, delta: int) -> None:
        """Folder ``path`` gained (+1) or lost (-1) a subfolder here: its link count follows, if known."""
        node = self.by_path(path)
        if node is not None and node.is_dir and node.subdirs is not None:
            node.subdirs = max(0, node.subdirs + delta)

    def acquire(self, ino: int, n: int = 1) -> None:
        """The kernel now holds ``n`` more references to ``ino`` (lookup, readdirplus entry)."""
        self._by_ino[ino].lookups += n

    def forget(self, ino: int, n: int, pinned: bool = False) -> None:
        """The kernel dropped ``n`` references. The inode goes when none is left, unless ``pinned`` (a
        local copy still needs it: its key, and a folder listing must still show it); then
        ``drop_if_forgotten`` ends it once the copy is gone."""
        node = self._by_ino.get(ino)
        if node is None or ino == ROOT_INO:
            return
        node.lookups -= n
        if not pinned:
            self.drop_if_forgotten(ino)

    def drop_if_forgotten(self, ino: int) -> None:
        node = self._by_ino.get(ino)
        if node is None or ino == ROOT_INO or node.lookups > 0:
            return
        del self._by_ino[ino]
        if self._by_path.get(node.path) == ino:
            del self._by_path[node.path]
            self._numbers[node.path] = (ino, node.kind)
