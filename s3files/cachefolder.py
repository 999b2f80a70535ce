"""The cache folder a mount or an ``open_fs`` file system runs in, opened and locked for its lifetime.

Owns: choosing it (``--cache-dir``/<bucket>-<hash>, or a private one under /var/tmp when no cache dir is
given) and removing a private one that holds nothing at the end. Shared by the FUSE mount
(fuse/mount.py) and ``open_fs`` (openfs/), so it must not import pyfuse3: ``open_fs`` runs where there
is no FUSE at all.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

from s3files.core.records import CacheFolder, folder_name
from s3files.errors import MountError
from s3files.options import MountOptions

log = logging.getLogger(__name__)


@contextlib.contextmanager
def cache_folder(opts: MountOptions) -> Iterator[CacheFolder]:
    """The cache folder of a mount or an open_fs, opened and locked: ``--cache-dir``/<bucket>-<hash>
    (mode 0700), one per bucket and prefix, so the next mount finds and recovers what this one leaves (core/records.py).
    Without a cache dir (tests of the library), a private folder under /var/tmp, removed at the end
    when it holds nothing (it never throws away unsent data)."""
    private = opts.cache_dir is None
    if opts.cache_dir is None:
        base = Path("/var/tmp") if Path("/var/tmp").is_dir() else Path(tempfile.gettempdir())
        try:
            root = Path(tempfile.mkdtemp(prefix="s3files-mount-", dir=base))
        except OSError as exc:
            raise MountError(f"cannot write to {base}: {exc.strerror}; choose a cache folder with --cache-dir") from None
    else:
        root = opts.cache_dir / folder_name(opts.store.endpoint_url, opts.source.bucket, opts.source.prefix)
    folder = CacheFolder(root, sync=opts.durability == "machine")
    folder.open()
    try:
        yield folder
    finally:
        folder.close()
        if private:
            folder.sweep()
            folder.remove_metadata()
            try:
                folder.files.rmdir()
                (root / "lock").unlink()
                root.rmdir()
            except OSError:
                log.error("unsent data left in %s", root)
