"""Keys <-> names: which S3 keys are files and folders of the mount, and which are hidden.

Owns: the mapping between mount paths ('' is the root, 'a/b' a file or folder) and keys (mount prefix +
path), the rules for names that cannot be file names, and turning listing pages into directory entries.
Must not do I/O; the caller brings the pages.

Rules (interoperable with s3fs-fuse and Mountpoint, see DESIGN.md):
- an object ``prefix + path`` is a file; any key under ``prefix + path + '/'`` makes ``path`` a folder;
  an empty object ``path/`` is a folder marker (an empty folder).
- a name is hidden when it is empty (``a//b``), ``.``, ``..``, longer than 255 bytes, or contains NUL;
  each hidden key is logged once (bounded memory).
- a folder shadows a file of the same name (``a`` and ``a/x`` both exist: ``a`` is a folder).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cachetools import LRUCache

from s3files.core.times import parse_time
from s3files.errors import InvalidName
from s3files.store.base import ListPage, ObjectInfo

log = logging.getLogger(__name__)

NAME_MAX = 255


@dataclass(frozen=True)
class Entry:
    """What a listing or a HEAD says about one name. ``info`` is None for folders."""

    name: str
    is_dir: bool
    info: ObjectInfo | None = None


def valid_name(name: str) -> bool:
    """True if ``name`` can be shown as one path segment."""
    return (
        name not in ("", ".", "..")
        and "/" not in name
        and "\0" not in name
        and len(name.encode("utf-8", "surrogatepass")) <= NAME_MAX
    )


def check_length(name: str | bytes) -> None:
    """ENAMETOOLONG for a name over NAME_MAX bytes, whatever the operation and whether or not it exists:
    the kernel leaves this check to each file system (ext4 makes it in its lookup), and without it such a
    name would be ENOENT for stat, unlink or rename but ENAMETOOLONG for create."""
    size = len(name) if isinstance(name, bytes) else len(name.encode("utf-8", "surrogatepass"))
    if size > NAME_MAX:
        shown = name[:40].decode("utf-8", "replace") if isinstance(name, bytes) else name[:40]
        raise InvalidName(f"name too long ({size} bytes, at most {NAME_MAX}): {shown}...")


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


class Namespace:
    """Key layout of one mount. Holds only the prefix and the set of keys already warned about."""

    def __init__(self, prefix: str) -> None:
        assert prefix == "" or prefix.endswith("/"), prefix
        self.prefix = prefix
        self._warned: LRUCache[str, bool] = LRUCache(maxsize=10_000)

    def file_key(self, path: str) -> str:
        return self.prefix + path

    def dir_prefix(self, path: str) -> str:
        return self.prefix + path + "/" if path else self.prefix

    def hidden(self, key: str, why: str) -> None:
        """Log a key that is not shown, once per key (while the bounded memory of warnings holds it)."""
        if key not in self._warned:
            self._warned[key] = True
            log.warning("hiding key=%r: %s", key, why)

    def entries(self, path: str, pages: Iterable[ListPage]) -> dict[str, Entry]:
        """Turn the pages of a delimited listing of folder ``path`` into its entries, by name."""
        base = self.dir_prefix(path)
        files: dict[str, ObjectInfo] = {}
        dirs: set[str] = set()
        for page in pages:
            for info in page.objects:
                name = info.key[len(base) :]
                if name == "":
                    continue  # the folder's own marker object
                if valid_name(name):
                    files[name] = info
                else:
                    self.hidden(info.key, "not a valid file name")
            for common in page.prefixes:
                name = common[len(base) : -1]
                if valid_name(name):
                    dirs.add(name)
                else:
                    self.hidden(common, "not a valid folder name")
        result: dict[str, Entry] = {}
        for name, info in files.items():
            if name in dirs:
                self.hidden(info.key, "a folder of the same name shadows this file")
                continue
            result[name] = Entry(name, is_dir=False, info=info)
        for name in dirs:
            result[name] = Entry(name, is_dir=True)
        return dict(sorted(result.items()))


def posix_metadata(metadata: Mapping[str, str] | None) -> dict[str, int]:
    """The POSIX fields found in ``x-amz-meta-*`` (s3fs-compatible names); garbage is ignored, not fatal.
    ``mtime``, ``ctime`` and ``atime`` come as integer nanoseconds (times.py has their text form)."""
    found: dict[str, int] = {}
    if not metadata:
        return found
    # s3fs writes mode as the decimal st_mode (type bits included), e.g. "33188" for -rw-r--r--; rdev (a
    # device's number, decimal, as the kernel's st_rdev) is ours: s3fs writes none (its devices show 0).
    for field in ("mode", "uid", "gid", "mtime", "ctime", "atime", "rdev"):
        raw = metadata.get(field)
        if raw is None:
            continue
        value = parse_time(raw) if field in TIMES else _integer(raw)
        if value is None or not _representable(field, value):
            log.debug("ignoring x-amz-meta-%s=%r: no stat can carry it", field, raw)
            continue
        found[field] = value
    return found


TIMES = ("mtime", "ctime", "atime")


def _integer(raw: str) -> int | None:
    try:
        return int(raw)
    except ValueError:
        return None


def _representable(field: str, value: int) -> bool:
    """Whether ``value`` fits its stat field (mode 16 bits, ids 32 bits; times.py checks times)."""
    if field == "mode":
        return 0 <= value <= 0o177777
    if field in ("uid", "gid"):
        return 0 <= value < 2**32 - 1  # 2**32 - 1 is (uid_t)-1, "no change" to chown
    if field == "rdev":
        return 0 <= value < 2**32  # FUSE carries a device number in 32 bits
    return True
