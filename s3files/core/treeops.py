"""Changing the tree: unlink, mkdir, rmdir, rename of files and folders, symlinks, special files (mknod).

Owns: what each of these asks of S3 (S3 has no rename: server-side copies, then deletes; trees.py moves a
folder's keys) and of the superblock, and how open files follow. A file being written is never published
by a change of the tree (only close and fsync publish, files.py): it moves along, or loses its name.
Must not read or write file data.

Request budget (asserted by tests): ``mknod`` one PUT; ``symlink`` 3 requests (one-part multipart upload, If-None-Match);
``readlink`` one GET per version; ``rename`` of a file one copy and one delete; of a folder of N keys
ceil(N/1000) LIST, N copies, N deletes. Each of these (and a file's create) moves its folder's times, which
reach the folder's marker, where it has one, with at most one PUT per folder per second (markers.py).
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Callable
from dataclasses import replace

from s3files.core.cache import LocalCache
from s3files.core.copies import LocalCopy
from s3files.core.files import Files
from s3files.core.handles import Handles
from s3files.core.inodes import DEVICE_KINDS, SPECIAL_KINDS, Attr, Inode
from s3files.core.links import LINK_MAX, copy_object_version, link_metadata, posix_fields, put_link
from s3files.core.namespace import Entry, join
from s3files.core.superblock import Superblock
from s3files.core.trees import move_tree
from s3files.core.uploader import Uploader, posix_metadata
from s3files.core.writestate import WriteState
from s3files.errors import (
    FileExists,
    InvalidArgument,
    InvalidName,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotSupported,
    ObjectNotFound,
    PreconditionFailed,
)
from s3files.store.base import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1  # linux/fs.h renameat2 flags
RENAME_EXCHANGE = 2


class TreeOps:
    """The tree-changing operations of one mount (see the module docstring)."""

    def __init__(
        self,
        store: ObjectStore,
        sb: Superblock,
        cache: LocalCache,
        handles: Handles,
        files: Files,
        uploader: Uploader,
        wall: Callable[[], int],
    ) -> None:
        self.store = store
        self.sb = sb
        self.cache = cache
        self.handles = handles
        self.files = files
        self.uploader = uploader
        self._wall = wall

    async def symlink(self, parent_ino: int, name: str, target: bytes, uid: int, gid: int) -> Attr:
        """Create symlink ``name`` -> ``target`` (links.py: a one-part multipart upload, If-None-Match, so
        an existing key is EEXIST). Acquires the inode."""
        parent = self.sb.node(parent_ino)
        path = self.files.new_path(parent, name, "symlink")
        if not 0 < len(target) < LINK_MAX:
            raise InvalidName(f"a symlink target must be 1 to {LINK_MAX - 1} bytes")
        local = self.sb.inodes.by_path(path)
        if (local is not None and self.sb.is_local(local.ino)) or self.sb.cached_entry(parent.path, name):
            raise FileExists(f"{path} exists")
        now = self._wall()
        metadata = link_metadata(uid, gid, now)
        try:
            info = await put_link(self.store, self.sb.ns.file_key(path), target, metadata, if_none_match=True)
        except PreconditionFailed:
            raise FileExists(f"{path} exists") from None
        self.sb.learn(info)
        node = self.sb.inodes.put_file(path, info, self.sb.fresh_until())
        node.target, node.target_etag = target, info.etag
        self.files.markers.entries_changed(parent, now)
        self.sb.forget_listings(parent.path)
        self.sb.inodes.acquire(node.ino)
        return node.attr()

    async def mknod(self, parent_ino: int, name: str, mode: int, rdev: int, uid: int, gid: int) -> Attr:
        """Create an empty regular file or a special file (FIFO, character or block device, UNIX socket)
        as s3fs does: one empty object whose metadata ``mode`` carries the type bits, and ``rdev`` a
        device's number; one PUT with If-None-Match (an existing key is EEXIST). A special file's I/O is
        the kernel's (it never opens one through us). Acquires the inode."""
        parent = self.sb.node(parent_ino)
        path = self.files.new_path(parent, name, "mknod")
        kind = stat.S_IFMT(mode)
        if kind != stat.S_IFREG and kind not in SPECIAL_KINDS:
            raise InvalidArgument(f"mknod of {path}: not a file type that can be created ({oct(kind)})")
        local = self.sb.inodes.by_path(path)
        if (local is not None and self.sb.is_local(local.ino)) or self.sb.cached_entry(parent.path, name):
            raise FileExists(f"{path} exists")
        now = self._wall()
        metadata = posix_fields(kind | stat.S_IMODE(mode), uid, gid, now)
        if kind in DEVICE_KINDS:
            metadata["rdev"] = str(rdev)
        try:
            info = await self.store.put(self.sb.ns.file_key(path), b"", metadata, if_none_match=True)
        except PreconditionFailed:
            raise FileExists(f"{path} exists") from None
        if info.metadata is None:
            info = replace(info, metadata=metadata)
        node = self.sb.inodes.put_file(path, info, self.sb.fresh_until())
        self.sb.listed_file(node, info)
        self.files.markers.entries_changed(parent, now)
        self.sb.inodes.acquire(node.ino)
        return node.attr()

    async def readlink(self, ino: int) -> bytes:
        """The target of symlink ``ino``: one GET per version (ETag), then from the inode."""
        node = self.sb.node(ino)
        if not stat.S_ISLNK(node.mode):
            raise InvalidArgument(f"{node.path} is not a symlink")
        for _ in range(2):  # a second time only after a HEAD found a newer version
            if node.target is not None and node.target_etag == node.etag:
                return node.target
            etag = node.etag
            try:
                key = self.sb.ns.file_key(node.path)
                body = await self.store.get_range(key, 0, node.size, if_match=etag) if node.size else b""
            except PreconditionFailed:
                await self.sb.head(node)  # changed since we looked: learn the new version (or its new kind)
                continue
            except NotFound:
                raise NotFound(f"{node.path} was removed from the bucket") from None
            node.target, node.target_etag = bytes(body), etag
            return node.target
        raise PreconditionFailed(f"{node.path} keeps changing; try again")

    async def unlink(self, parent_ino: int, name: str) -> None:
        parent = self.sb.node(parent_ino)
        self.files.check_writable(f"unlink {name}")
        entry = await self.sb.entry(parent.path, name)
        if entry.is_dir:
            raise IsADirectory(f"{join(parent.path, name)} is a folder")
        path = join(parent.path, name)
        node = self.sb.inodes.by_path(path)
        copy = self.cache.get(node.ino) if node is not None else None
        key = self.sb.ns.file_key(path)
        if copy is None:
            await self.store.delete(key)
        else:
            async with self.uploader.held([copy]):  # a publish in flight lands first: our delete after it
                if copy.base_etag is not None or copy.state is WriteState.CLEAN:
                    await self.store.delete(key)
                await self.files.orphan(copy.node)
        self.sb.deleted(key)
        now = self._wall()
        if node is not None:
            node.changed(now)  # its link count changed (an open descriptor's fstat shows it)
            await self.files.orphan(node)
        self.sb.inodes.unlink_path(path)
        self.sb.listed(path, None)
        self.files.markers.entries_changed(parent, now)

    async def mkdir(self, parent_ino: int, name: str, mode: int, uid: int, gid: int) -> Attr:
        parent = self.sb.node(parent_ino)
        path = self.files.new_path(parent, name, "mkdir")
        try:
            await self.sb.entry(parent.path, name)
        except NotFound:
            pass
        else:
            raise FileExists(f"{path} exists")
        now = self._wall()
        node = self.sb.inodes.put_dir(path, now, self.sb.fresh_until())
        node.mode, node.uid, node.gid = stat.S_IFDIR | stat.S_IMODE(mode), uid, gid
        node.mtime_ns = node.ctime_ns = now
        try:
            info = await self.store.put(self.sb.ns.dir_prefix(path), b"", posix_metadata(node), if_none_match=True)
        except PreconditionFailed:
            raise FileExists(f"{path} exists") from None
        self.sb.learn(info)
        node.marker_etag = info.etag
        node.subdirs = 0
        self.sb.new_folder(path)
        self.sb.inodes.subfolders_changed(parent.path, +1)
        self.files.markers.entries_changed(parent, now)
        self.sb.inodes.acquire(node.ino)
        return node.attr()

    async def rmdir(self, parent_ino: int, name: str) -> None:
        parent = self.sb.node(parent_ino)
        self.files.check_writable(f"rmdir {name}")
        path = join(parent.path, name)
        if not (await self.sb.entry(parent.path, name)).is_dir:
            raise NotADirectory(f"{path} is not a folder")
        marker = self.sb.ns.dir_prefix(path)
        page = await self.store.list_page(marker, "/", max_keys=2)
        local = any(self.sb.is_local(c.node.ino) and c.node.path.startswith(path + "/") for c in self.cache.live())
        if local or page.prefixes or any(o.key != marker for o in page.objects):
            raise NotEmpty(f"{path} is not empty")
        async with self.files.markers.quiet():  # no write of its times lands after the delete
            await self.store.delete(marker)
            self.sb.deleted(marker)
            self.sb.inodes.unlink_path(path)
        self.sb.inodes.subfolders_changed(parent.path, -1)
        self.sb.listed(path, None)
        self.sb.forget_listings(path)
        self.files.markers.entries_changed(parent, self._wall())

    async def rename(self, old_parent: int, old_name: str, new_parent: int, new_name: str, flags: int) -> None:
        """Rename a file, symlink or folder: server-side copies, then deletes (S3 has no rename; neither
        is atomic, see docs/SEMANTICS.md). Open files and the kernel's inodes follow the new name; a file
        being written keeps being written, and is published under its new name at close."""
        src_parent, dst_parent = self.sb.node(old_parent), self.sb.node(new_parent)
        dst_path = self.files.new_path(dst_parent, new_name, "rename")
        src_path = join(src_parent.path, old_name)
        if flags & RENAME_EXCHANGE:
            raise NotSupported("rename with RENAME_EXCHANGE is not supported")
        source = await self.sb.entry(src_parent.path, old_name)
        if source.is_dir and dst_path.startswith(src_path + "/"):
            raise InvalidArgument(f"cannot move folder {src_path} into itself")
        try:
            target = await self.sb.entry(dst_parent.path, new_name)
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
        # An upload of a file that moves (the file, or one below the folder) lands first, at the key it
        # began with, and is moved with the rest; none begins until every key has moved (uploader.held).
        moving = self._copies_at(src_path, source.is_dir)
        async with self.uploader.held(moving):
            if not source.is_dir and moving and moving[0].node.path != src_path:
                raise NotFound(f"no such file or folder: {src_path} (renamed meanwhile)")
            await self._rename(src_parent, dst_parent, src_path, dst_path, source, target)

    def _copies_at(self, path: str, is_dir: bool) -> list[LocalCopy]:
        """The local copies of the file at ``path``, or of the files below folder ``path``."""
        if is_dir:
            return [c for c in self.cache.live() if c.node.path.startswith(path + "/")]
        node = self.sb.inodes.by_path(path)
        copy = self.cache.get(node.ino) if node is not None else None
        return [copy] if copy is not None else []

    async def _rename(
        self, src_parent: Inode, dst_parent: Inode, src_path: str, dst_path: str, source: Entry, target: Entry | None
    ) -> None:
        if source.is_dir:
            async with self.files.markers.quiet():  # no folder's times are written while its keys move
                await self._rename_folder(src_path, dst_path, target is not None)
            self.sb.inodes.subfolders_changed(src_parent.path, -1)
            if target is None:
                self.sb.inodes.subfolders_changed(dst_parent.path, +1)
            self.sb.forget_listings(src_parent.path, dst_parent.path)
        else:
            moved_local = self._never_uploaded(src_path)
            await self._rename_file(src_path, dst_path, source.info, target)
            if moved_local:
                # No key moved (the file exists only here): the two folders' listings stay true with the
                # old name gone and the new one answered by the local copy (and listed at its upload),
                # so rsync's next temporary name in the folder costs no HEAD or LIST; their markers
                # are untouched too (their times move in memory, markers.py), so a utime of the folder
                # after costs no HEAD.
                self.sb.listed(src_path, None)
                self.sb.listed(dst_path, None)
            else:
                self.sb.forget_listings(src_parent.path, dst_parent.path)
        # ctimes move: the two folders' (with their mtimes) and the moved entry's. The entry's new ctime is
        # kept in memory (inodes.py): the server-side copy keeps the object's metadata as it was, which a
        # rewrite could not without a HEAD (other tools' x-amz-meta-* are not all known here).
        now = self._wall()
        self.files.markers.entries_changed(src_parent, now)
        self.files.markers.entries_changed(dst_parent, now)
        moved = self.sb.inodes.by_path(dst_path)
        if moved is not None:
            moved.changed(now)

    def _never_uploaded(self, path: str) -> bool:
        """The file at ``path`` has a local copy of a new file, never uploaded: no key is copied or
        deleted when it moves."""
        node = self.sb.inodes.by_path(path)
        copy = self.cache.get(node.ino) if node is not None else None
        return copy is not None and copy.base_etag is None

    async def _rename_file(self, src_path: str, dst_path: str, info: ObjectInfo | None, target: Entry | None) -> None:
        """``info``: what a listing or HEAD said of the source (None for a file with a local copy). A
        local copy is not published here (only close and fsync publish): the version it is based on, if
        any, is copied to the new key, and the copy is published there when it is closed."""
        node = self.sb.inodes.by_path(src_path)
        copy = self.cache.get(node.ino) if node is not None else None
        src_key, dst_key = self.sb.ns.file_key(src_path), self.sb.ns.file_key(dst_path)
        copied: ObjectInfo | None = None
        if copy is None or copy.base_etag is not None:
            if copy is not None:  # (an upload since the lookup made a new version: the copy knows it)
                info = ObjectInfo(src_key, copy.base_size, copy.base_etag or "", 0.0)
            elif info is None or info.key != src_key:
                size = copy.base_size if copy else (node.size if node else 0)
                base = (copy.base_etag if copy else None) or (node.etag if node else None) or ""
                info = ObjectInfo(src_key, size, base, 0.0)
            try:
                etag, modified = await copy_object_version(self.store, info, dst_key)
            except ObjectNotFound:
                if copy is None:
                    raise
                # The version the local copy is based on was deleted outside: nothing to copy, nothing of
                # ours to delete at the old key. The copy moves along and is published at its new name,
                # whole, as an upload that finds its key deleted does (uploader._standalone; bytes it never
                # had went with that version: then it is kept as a conflict, never half-published).
                log.info("op=rename key=%r: its last uploaded version was deleted outside; moved here only", src_key)
            else:
                copied = ObjectInfo(dst_key, info.size, etag, modified)
                self.sb.copied(info, copied)
                await self.store.delete(src_key)
            self.sb.deleted(src_key)
        elif target is not None and not target.is_dir:
            replaced_etag = target.info.etag if target.info is not None and target.info.key == dst_key else None
            if self.files.write_back and copy.state is WriteState.ACKED and replaced_etag:
                # Eventual mode, a closed file waiting for its upload (rsync's temporary name): no request
                # now; its upload replaces the version it was renamed over (If-Match that version), so
                # others see the old file until the new one, never no file.
                copy.base_etag = replaced_etag  # base_size stays 0: nothing is copied from that version
            else:
                await self.store.delete(dst_key)  # the new file replaces it now; it is published at close
                self.sb.deleted(dst_key)
        replaced = self.sb.inodes.by_path(dst_path)
        if replaced is not None and replaced is not node:
            await self.files.orphan(replaced)
        self.sb.inodes.move(src_path, dst_path)
        if node is not None:
            await self.follow(node, copied)

    async def _rename_folder(self, src_path: str, dst_path: str, replace_target: bool) -> None:
        """Move every key of folder ``src_path`` (trees.py: copy all, then delete all). Local copies below
        it move along and are published under their new names at close."""
        below_src, below_dst = src_path + "/", dst_path + "/"
        if any(self.sb.is_local(c.node.ino) and c.node.path.startswith(below_dst) for c in self.cache.live()):
            raise NotEmpty(f"{dst_path} is not empty")
        src_prefix, dst_prefix = self.sb.ns.dir_prefix(src_path), self.sb.ns.dir_prefix(dst_path)
        moved = await move_tree(self.store, src_prefix, dst_prefix, replace_target)
        self.sb.deleted(dst_prefix, *(src_prefix + rel for rel in moved), *(dst_prefix + rel for rel in moved))
        for node in self.sb.inodes.move_tree(src_path, dst_path):
            if not node.is_dir:
                etag = moved.get(node.path[len(below_dst) :])
                copied = None if etag is None else ObjectInfo(self.sb.ns.file_key(node.path), node.size, etag, 0.0)
                await self.follow(node, copied)
        self.handles.move_folders(src_path, dst_path)
        self.sb.forget_listings(src_path, dst_path, below=(below_src, below_dst))

    async def follow(self, node: Inode, copied: ObjectInfo | None) -> None:
        """``node`` was renamed; its object is the copy ``copied`` now (None: nothing was copied; its
        ``last_modified``: when the server said it made it, 0 if not known). Open readers fetch from the
        new key, and a local copy's next publish is conditional on the copy's ETag. The copy keeps the
        metadata, so what a HEAD told of the old version holds for the copy's version."""
        etag = None if copied is None else copied.etag
        if copied is not None:
            if node.meta_etag == node.etag:
                node.meta_etag, node.meta_modified = copied.etag, copied.last_modified or None
            node.etag = copied.etag
        copy = self.cache.get(node.ino)
        if copy is not None:
            if etag is not None and copy.base_etag is not None:
                copy.base_etag = etag
            await self.uploader.parts.drop_upload(copy)  # its parts went to the old key
            await self.uploader.drop_acked_upload(copy)  # so did those of a version kept aside
            # a recovery publishes it (or the version it keeps aside) at its new key
            self.cache.save(copy, durable=copy.acknowledged or copy.acked is not None)
        key = self.sb.ns.file_key(node.path)
        for handle in self.handles.of(node):
            handle.reader.moved(key)
