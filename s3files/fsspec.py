"""The ``s3files://`` fsspec file system: ``open_fs`` for fsspec's consumers (pandas, pyarrow, dask, ...).

Owns: translating fsspec's calls (paths ``bucket/key``, ``ls``/``info`` dictionaries, ``_open``) into an
``OpenFS`` per bucket, opened at first use with the instance's storage options (``endpoint_url``,
``consistency``, ``cache_dir``, and every other ``open_fs`` option) and kept while the instance lives
(fsspec caches instances by their options, so one per process and options). Registered through the
``fsspec.specs`` entry point (pyproject.toml). Must stay a thin adapter: behaviour is open_fs's, which is
the mount's.

    pandas.read_csv("s3files://bucket/data.csv", storage_options={"endpoint_url": "http://127.0.0.1:9000"})
"""

from __future__ import annotations

import datetime
import errno
import os
import stat
import threading
from typing import Any

from fsspec.spec import AbstractFileSystem

from s3files.openfs import OpenFS, open_fs

FSSPEC_OPTIONS = frozenset(
    ("use_listings_cache", "listings_expiry_time", "max_paths", "asynchronous", "loop", "skip_instance_cache")
)


class S3FilesFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """fsspec over ``open_fs``: one OpenFS per bucket, with the instance's options."""

    protocol = "s3files"
    root_marker = ""

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        # fsspec's own options (listings cache, event loop) are not open_fs's
        self._options = {name: value for name, value in options.items() if name not in FSSPEC_OPTIONS}
        self._buckets: dict[str, OpenFS] = {}
        self._lock = threading.Lock()

    def _split(self, path: str) -> tuple[OpenFS, str]:
        path = self._strip_protocol(path)
        bucket, _, key = path.partition("/")
        if not bucket:
            raise OSError(errno.EINVAL, "an s3files path names a bucket: s3files://bucket/key", path)
        with self._lock:
            fs = self._buckets.get(bucket)
            if fs is None or fs.closed:
                fs = self._buckets[bucket] = open_fs(f"s3://{bucket}/", **self._options)
        return fs, key

    def close(self) -> None:
        """Close every bucket's OpenFS (uploads what waits: eventual mode's write-back)."""
        with self._lock:
            opened, self._buckets = list(self._buckets.values()), {}
        for fs in opened:
            fs.close()

    def _details(self, name: str, st: os.stat_result) -> dict[str, Any]:
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else "file"
        return {
            "name": name,
            "size": st.st_size if kind == "file" else 0,
            "type": kind,
            "mode": st.st_mode,
            "mtime": st.st_mtime,
            "ino": st.st_ino,
        }

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        fs, key = self._split(path)
        return self._details(self._strip_protocol(path).rstrip("/"), fs.stat(key))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        fs, key = self._split(path)
        base = self._strip_protocol(path).rstrip("/")
        if not fs.isdir(key):
            found = [self.info(path)]
        else:
            found = [self._details(f"{base}/{entry.name}", entry.stat()) for entry in fs.scandir(key)]
        return found if detail else [entry["name"] for entry in found]

    def _open(self, path: str, mode: str = "rb", block_size: Any = None, autocommit: bool = True, **kwargs: Any) -> Any:
        if not autocommit:
            raise NotImplementedError("s3files publishes at close (autocommit) only")
        fs, key = self._split(path)
        return fs.open(key, mode if "b" in mode else mode + "b")

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        fs, key = self._split(path)
        if create_parents:
            fs.makedirs(key, exist_ok=True)
        else:
            fs.mkdir(key)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        fs, key = self._split(path)
        fs.makedirs(key, exist_ok=exist_ok)

    def rmdir(self, path: str) -> None:
        fs, key = self._split(path)
        fs.rmdir(key)

    def rm_file(self, path: str) -> None:
        fs, key = self._split(path)
        fs.remove(key)

    def _rm(self, path: str) -> None:
        fs, key = self._split(path)
        if fs.isdir(key):
            fs.rmdir(key)
        else:
            fs.remove(key)

    def mv(self, path1: str, path2: str, recursive: bool = False, maxdepth: Any = None, **kwargs: Any) -> None:
        """A rename (as the mount's: a file, or a folder with everything below it) within one bucket."""
        src, key1 = self._split(path1)
        dst, key2 = self._split(path2)
        if src is not dst:
            super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)
            return
        src.rename(key1, key2)

    def modified(self, path: str) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.info(path)["mtime"], tz=datetime.UTC)

    def sync(self, path: str) -> dict[str, str]:
        """Upload now what waits in the bucket of ``path`` (OpenFS.sync)."""
        fs, key = self._split(path)
        return fs.sync(key or None)
