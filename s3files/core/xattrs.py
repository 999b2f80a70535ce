"""Extended attributes: the ``user.`` namespace, stored in ``x-amz-meta-xattr`` as s3fs-fuse stores them.

Owns: s3fs-fuse's encoding of that header, the namespace rules, S3's limit on user metadata, and the four
xattr operations. Must not decide how metadata reaches S3 (files.py ``write_metadata`` does: a closed
file's object is copied in place as for chmod, a file being written carries them in its publish, a folder's
marker is written) nor when it is asked for (files.py ``describe``).

Encoding (s3fs-fuse ``build_xattrs``/``parse_xattrs``): the JSON-like text ``{"name":"<base64 value>",...}``
with names in byte order, then URL-encoded (every byte but letters, digits and ``.-_~/`` as ``%XX``). Names
are not escaped in it, so a name with ``"`` or ``,`` cannot be stored (EINVAL). Keys of other namespaces that
s3fs-fuse may have stored there (``system.posix_acl_access``) are kept on rewrites and not shown.

Namespaces: only ``user.`` attributes are stored. Other names read as absent (ENODATA: the kernel asks
``security.capability`` before every write, and ``ls``/``cp -a`` ask for ACLs and SELinux labels, which must
not print errors) and cannot be set (ENOTSUP). The kernel itself refuses ``user.`` attributes on symlinks
and special files (EPERM to set, ENODATA to read); the core says the same.

Limit: S3 keeps at most 2 KB of user metadata (names without ``x-amz-meta-`` plus values, in bytes), which
the encoded attributes share with mode, owner, times and the upload id; a set beyond it is ENOSPC, with a
message that says why.
"""

from __future__ import annotations

import base64
import binascii
import stat
from collections.abc import Callable, Mapping
from urllib.parse import quote_from_bytes, unquote_to_bytes

from s3files.core.files import Files
from s3files.core.inodes import ROOT_INO, Inode
from s3files.core.streaming import TOKEN, posix_metadata
from s3files.core.superblock import Superblock
from s3files.errors import (
    InvalidArgument,
    NamespaceNotStored,
    NoAttribute,
    NoSpace,
    NotPermitted,
    NotSupported,
    Unimplemented,
)

USER = b"user."
METADATA_LIMIT = 2048  # S3's limit on a PUT's user metadata, in bytes
TOKEN_SIZE = len(TOKEN) + 16  # the upload id every publish adds (streaming.py: 8 random bytes in hex)


def decode(raw: str | None) -> dict[bytes, bytes]:
    """The attributes in an ``x-amz-meta-xattr`` value; what does not parse is skipped, as s3fs does."""
    if not raw:
        return {}
    text = unquote_to_bytes(raw)
    start, end = text.find(b"{"), text.rfind(b"}")
    if start < 0 or end <= start:
        return {}
    found = {}
    for pair in text[start + 1 : end].split(b","):
        name, colon, value = pair.rpartition(b":")  # base64 has no ':', names may
        if not colon:
            continue
        name, value = name.strip(b" "), value.strip(b" ")
        if len(name) < 2 or not (name.startswith(b'"') and name.endswith(b'"')) or b'"' in name[1:-1]:
            continue
        try:
            found[name[1:-1]] = base64.b64decode(value.strip(b'"'), validate=True)
        except (binascii.Error, ValueError):
            continue
    return found


def encode(attrs: Mapping[bytes, bytes]) -> str | None:
    """The ``x-amz-meta-xattr`` value for ``attrs`` (None when there are none: no header at all)."""
    if not attrs:
        return None
    pairs = (b'"' + name + b'":"' + base64.b64encode(attrs[name]) + b'"' for name in sorted(attrs))
    return quote_from_bytes(b"{" + b",".join(pairs) + b"}", safe="/")


def metadata_size(metadata: Mapping[str, str]) -> int:
    """Bytes of user metadata as S3 counts them against its limit."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())


class ExtendedAttributes:
    """getxattr, listxattr, setxattr and removexattr of one mount (see the module docstring)."""

    def __init__(self, sb: Superblock, files: Files, enabled: bool, wall: Callable[[], int]) -> None:
        self.sb = sb
        self.files = files
        self._wall = wall  # nanoseconds: a change of attributes moves the ctime
        self.enabled = enabled  # off (--no-xattrs): ENOSYS, after which the kernel never asks again

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise Unimplemented("extended attributes are off (--no-xattrs)")

    async def get(self, ino: int, name: bytes) -> bytes:
        self._check_enabled()
        node = self.sb.node(ino)
        if not name.startswith(USER) or not _holds_user_attributes(node):
            raise NoAttribute(f"no extended attribute {name!r}")  # no I/O: asked before every write
        value = (await self._attributes(node)).get(name)
        if value is None:
            raise NoAttribute(f"{node.path} has no extended attribute {name!r}")
        return value

    async def names(self, ino: int) -> list[bytes]:
        self._check_enabled()
        node = self.sb.node(ino)
        if not _holds_user_attributes(node):
            return []
        return [name for name in await self._attributes(node) if name.startswith(USER)]

    async def set(self, ino: int, name: bytes, value: bytes) -> None:
        node = self._changeable(ino, name)
        attrs = await self._attributes(node)
        attrs[name] = value
        await self._write(node, attrs)

    async def remove(self, ino: int, name: bytes) -> None:
        node = self._changeable(ino, name)
        attrs = await self._attributes(node)
        if attrs.pop(name, None) is None:
            raise NoAttribute(f"{node.path} has no extended attribute {name!r}")
        await self._write(node, attrs)

    def _changeable(self, ino: int, name: bytes) -> Inode:
        self._check_enabled()
        node = self.sb.node(ino)
        self.files.check_writable(f"change extended attributes of {node.path}")
        if not name.startswith(USER):
            raise NamespaceNotStored(f"only user.* extended attributes can be stored in S3, not {name!r}")
        if b'"' in name or b"," in name:
            raise InvalidArgument(f"an extended attribute name with '\"' or ',' cannot be stored: {name!r}")
        if not _holds_user_attributes(node):
            raise NotPermitted(f"{node.path}: user.* attributes are for files and folders only")
        if node.ino == ROOT_INO:
            raise NotSupported("the mount's root folder has no object to hold extended attributes")
        return node

    async def _attributes(self, node: Inode) -> dict[bytes, bytes]:
        """Every attribute of ``node``'s object now (a HEAD when its metadata is not known and fresh)."""
        await self.files.describe(node, fresh=True)
        return decode(node.xattr)

    async def _write(self, node: Inode, attrs: dict[bytes, bytes]) -> None:
        """Publish ``attrs`` (with the keys of other namespaces s3fs may have stored, an ACL, kept)."""
        before, node.xattr = node.xattr, encode(attrs)
        before_ctime, node.ctime_ns = node.ctime_ns, self._wall()
        size = metadata_size(posix_metadata(node)) + TOKEN_SIZE
        if size > METADATA_LIMIT:
            node.xattr, node.ctime_ns = before, before_ctime
            raise NoSpace(
                f"{node.path}: extended attributes do not fit in S3's {METADATA_LIMIT} bytes of user metadata"
                f" ({size} bytes with them, base64 and URL-encoded as s3fs-fuse stores them)"
            )
        try:
            await self.files.write_metadata(node)
        except BaseException:
            if self.files.cache.get(node.ino) is None:  # (a local copy publishes them later)
                node.xattr, node.ctime_ns = before, before_ctime
            raise


def _holds_user_attributes(node: Inode) -> bool:
    """The kernel keeps ``user.`` attributes to regular files and folders (symlinks' and devices' are
    the target's or the driver's business)."""
    return stat.S_ISREG(node.mode) or node.is_dir
