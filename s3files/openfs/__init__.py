"""``open_fs``: the mount's file system as a Python API, without FUSE (for hosts with no /dev/fuse, such as
AWS Lambda, and for programs that would rather not mount).

Owns: running one core ``FileSystem`` (s3files/core/fs.py: the same caches, read-ahead, uploads,
conditional writes, consistency modes and crash-safe cache folder as a mount) on a trio run in a daemon
thread of the caller's process, and the synchronous front over it: paths walked name by name as the
kernel walks them (a lookup per component, each reference given back when the call ends, a file's when
it is closed), file objects (``RawFile`` under Python's own buffered and text layers, as ``open()``
builds them), listings, stat, chmod, chown, utime, extended attributes, the cache folder's status.json (as a
mount's daemon writes it), and the kernel's part of each operation that the core leaves to it: close
is flush then release, an append writes at the file's size, open with O_CREAT looks the name up before it
creates. Errors are the core's ``S3FilesError`` raised as ``OSError`` with its errno (the one table, in
s3files/errors.py), as the FUSE adapter answers them; anything unexpected is EIO, as there.
Must not hold file-system logic (the core's) nor import pyfuse3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from s3files.openfs.base import START_TIMEOUT, FileSystemClosed, stat_result
from s3files.openfs.files import Files, RawFile
from s3files.openfs.metadata import Metadata
from s3files.openfs.tree import DirEntry, Tree
from s3files.options import MountOptions, ReadOptions, Source, StoreOptions, default_cache_dir

STORE_FIELDS = ("endpoint_url", "region", "profile", "max_connections", "max_attempts", "request_timeout")


class OpenFS(Metadata, Tree, Files):
    """The file system of ``s3://bucket/prefix/`` opened in this process (see ``open_fs``). Paths are
    relative to the prefix ('/'-separated; a leading '/' is the root). Thread-safe: calls from several
    threads run concurrently on the file system's trio thread. Its operations: files.py (open), tree.py
    (listings, mkdir, remove, rename, symlink), metadata.py (stat, chmod, chown, utime, extended
    attributes, sync, status); the path walk and the trio thread: base.py."""


def open_fs(
    source: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    consistency: str | None = None,
    cache_dir: str | Path | None = None,
    timeout: float = START_TIMEOUT,
    **options: Any,
) -> OpenFS:
    """Open ``s3://bucket/prefix/`` as a file system of this process, without FUSE: the same core as
    ``s3files mount`` with the same options (``consistency``, ``metadata_ttl``, ``writeback_delay``,
    ``cache_dir``, ``cache_size``, ``read_only``, ``on_recovery``, ``upload_part_size``, ...; the
    MountOptions fields) and the same contract (docs/SEMANTICS.md, "open_fs"). ``cache_dir`` defaults to
    the mount's default; on AWS Lambda give a folder under /tmp. Raises MountError (or the store's error:
    BucketNotFound, CredentialsError, ...) if it cannot start. Use it as a context manager, or close()."""
    from s3files.store.s3 import open_s3_store

    store = StoreOptions(
        endpoint_url=endpoint_url,
        region=region,
        profile=profile,
        **{name: options.pop(name) for name in STORE_FIELDS if name in options},
    )
    if "mountpoint" in options or "direct_io" in options:
        raise TypeError("open_fs takes no mountpoint and no direct_io (it has no kernel page cache)")
    opts = MountOptions(
        source=Source.parse(source),
        mountpoint=Path("/"),  # used by a mount only (its status file names it); open_fs has none
        store=store,
        read=options.pop("read", ReadOptions()),
        # No kernel page cache: every handle reads the version it opened, as with --direct-io.
        direct_io=True,
        consistency=consistency if consistency is not None else MountOptions.consistency,  # type: ignore[arg-type]
        cache_dir=Path(cache_dir).absolute() if cache_dir is not None else default_cache_dir(),
        **options,
    )

    def open_store() -> Any:
        return open_s3_store(
            opts.source.bucket,
            endpoint_url=store.endpoint_url,
            region=store.region,
            profile=store.profile,
            max_connections=store.max_connections,
            max_attempts=store.max_attempts,
            request_timeout=store.request_timeout,
        )

    return OpenFS(opts, open_store, timeout)



__all__ = ["DirEntry", "FileSystemClosed", "OpenFS", "RawFile", "open_fs", "stat_result"]
