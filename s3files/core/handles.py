"""Open files and folders: handle numbers, what each handle pins, and following a file that moves.

Owns: the handle tables. A file handle holds its inode (not its number: an open file outlives the
kernel's forget), its reader, whether it may write, the version (ETag) it reads, and whether it counts
as a user of the file's local copy. Must not do I/O beyond closing readers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from s3files.core.inodes import Inode
from s3files.core.namespace import Entry
from s3files.core.reader import SharedReader
from s3files.errors import BadHandle


@dataclass
class DirHandle:
    ino: int
    path: str
    entries: list[tuple[str, Entry | Inode]] | None = None  # Inode: a local file not in S3 yet


@dataclass
class FileHandle:
    node: Inode
    reader: SharedReader  # shared with the other handles of its version
    writable: bool = False
    etag: str | None = None  # the version this handle reads
    counted: bool = False  # counted in its local copy's handles: the copy lives until this one closes
    clears_privs: bool = False  # opened by a process without CAP_FSETID: its writes clear SUID/SGID

    @property
    def ino(self) -> int:
        return self.node.ino


class Handles:
    def __init__(self) -> None:
        self._numbers = itertools.count(1)
        self._files: dict[int, FileHandle] = {}
        self._dirs: dict[int, DirHandle] = {}

    def open_file(self, handle: FileHandle) -> int:
        fh = next(self._numbers)
        self._files[fh] = handle
        return fh

    def open_dir(self, handle: DirHandle) -> int:
        fh = next(self._numbers)
        self._dirs[fh] = handle
        return fh

    def file(self, fh: int) -> FileHandle:
        handle = self._files.get(fh)
        if handle is None:
            raise BadHandle(f"bad file handle {fh}")
        return handle

    def folder(self, fh: int) -> DirHandle:
        handle = self._dirs.get(fh)
        if handle is None:
            raise BadHandle(f"bad folder handle {fh}")
        return handle

    def path_of(self, fh: int) -> str | None:
        """The path of what handle ``fh`` has open (a file's current name), or None for no such handle."""
        handle = self._files.get(fh)
        if handle is not None:
            return handle.node.path
        folder = self._dirs.get(fh)
        return None if folder is None else folder.path

    def close_file(self, fh: int) -> FileHandle | None:
        handle = self._files.pop(fh, None)
        if handle is not None:
            handle.reader.close()
        return handle

    def close_dir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    def of(self, node: Inode) -> Iterator[FileHandle]:
        """The open handles of ``node``."""
        return (h for h in list(self._files.values()) if h.node is node)

    def move_folders(self, old: str, new: str) -> None:
        """Folder ``old`` is now ``new``: open folder handles below it follow."""
        for handle in self._dirs.values():
            if handle.path == old or handle.path.startswith(old + "/"):
                handle.path = new + handle.path[len(old) :]

    def statistics(self) -> dict[str, int]:
        files = self._files.values()  # handles of one version share a reader: its bytes count once
        return {
            "open_files": len(self._files),
            "open_folders": len(self._dirs),
            "held_read_bytes": sum(r.held_bytes for r in {id(h.reader.reader): h.reader.reader for h in files}.values()),
        }
