"""The metadata cache: what each object version's user metadata is, remembered across mounts.

Owns: the content of ``metadata.db`` in the mount's cache folder (records.py names the file) and the
rule that says whether a listed object is a version whose metadata is known. Must not talk to S3 nor
touch inodes (the superblock asks and tells).

Why: a LIST carries no user metadata, so a listing whose entries must show their objects' own mode,
owner and mtime (superblock.py, true attributes) would cost a HEAD per file every time. Metadata never
changes within one version, so what one HEAD said (or what this mount wrote) is remembered per version:
a folder listed again, also after a remount with the same cache folder, costs no HEAD for objects that
did not change, and a version known to carry no metadata (``{}``) is never asked again.

Versions: one row per key, its newest version known: (ETag, ``modified``, the x-amz-meta fields).
``modified`` is the LastModified a HEAD said, or for a version written here the server's Date of the
write's reply, an upper bound (S3 stamps a version no later than it answers). A listed object (ETag,
LastModified) is that version when the ETag is the same and its LastModified is not later: a change of
metadata only (a chmod elsewhere, an SDK's copy onto itself) keeps the ETag but moves LastModified, and
is asked again. (LastModified has whole seconds: such a change in the same second as the version known
is not seen; docs/SEMANTICS.md says so.)

Storage: SQLite, WAL journal, ``synchronous=NORMAL``: each write is one transaction, so a crash leaves
the old or the new state, never half; commits do not fsync (checkpoints do, rarely). What is learnt is
kept in memory and committed in one transaction per listing (``flush``), when ``PENDING_MAX`` pile up,
and at the mount's end. Bounded: past ``max_bytes`` of used pages the oldest-written rows go. A file
that cannot be opened or read (another schema, a torn file after a machine crash) is replaced by an
empty one; a failure while mounted turns persistence off for the mount (logged once). Losing the cache
costs HEADs, never a wrong answer. Without a file (``path`` None) the cache lives in memory only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from cachetools import LRUCache

from s3files.store.base import ObjectInfo

log = logging.getLogger(__name__)

SCHEMA = 1
PENDING_MAX = 512  # versions learnt before a commit even without a listing
MEMORY_ENTRIES = 16_384  # versions kept in memory as well (a folder re-listed every TTL asks no file)
MAX_BYTES = 64 * 1024 * 1024  # the file's used pages; past that the oldest rows go (10% at a time)
QUERY_CHUNK = 500  # keys per SELECT (SQLite's bound on variables is 999 in older builds)


@dataclass(frozen=True)
class Version:
    etag: str
    modified: float
    metadata: Mapping[str, str]

    def matches(self, info: ObjectInfo) -> bool:
        """Whether a listing's ``info`` shows this version (see the module docstring)."""
        return bool(info.etag) and info.etag == self.etag and info.last_modified <= self.modified


class MetaCache:
    """Per-key newest known version and its metadata; ``path`` None: in memory only."""

    def __init__(self, path: Path | None, max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._memory: LRUCache[str, Version] = LRUCache(maxsize=MEMORY_ENTRIES)
        self._pending: dict[str, Version] = {}
        self._db: sqlite3.Connection | None = None
        self._since_trim = 0
        self.hits = self.misses = 0
        if path is not None:
            self._db = self._open(path)

    # -- asking ----------------------------------------------------------------------------------------

    def known(self, infos: Iterable[ObjectInfo]) -> dict[str, Mapping[str, str]]:
        """key -> metadata for each listed ``info`` whose version is known (``{}``: it carries none)."""
        found: dict[str, Mapping[str, str]] = {}
        ask: dict[str, ObjectInfo] = {}
        total = 0
        for info in infos:
            total += 1
            version = self._pending.get(info.key) or self._memory.get(info.key)
            if version is not None and version.matches(info):
                found[info.key] = version.metadata
            else:
                ask[info.key] = info
        if ask and self._db is not None:
            for key, version in self._select(list(ask)).items():
                if version.matches(ask[key]):
                    self._memory[key] = version
                    found[key] = version.metadata
        self.hits += len(found)
        self.misses += total - len(found)
        return found

    def get(self, info: ObjectInfo) -> Mapping[str, str] | None:
        return self.known([info]).get(info.key)

    # -- learning --------------------------------------------------------------------------------------

    def learn(self, info: ObjectInfo, modified: float | None = None) -> None:
        """``info`` came with its metadata (a HEAD, a GET, or a write here whose reply time is
        ``modified``, an upper bound of its LastModified). Infos without metadata or ETag are ignored."""
        if info.metadata is None or not info.etag:
            return
        version = Version(info.etag, info.last_modified if modified is None else modified, dict(info.metadata))
        self._memory[info.key] = version
        if self._db is not None:
            self._pending[info.key] = version
            if len(self._pending) >= PENDING_MAX:
                self.flush()

    def copied(self, src: ObjectInfo, dst: ObjectInfo) -> None:
        """Version ``src`` was copied here to ``dst`` (a rename; S3 keeps the metadata): ``dst`` is known
        when ``src`` is, else forgotten. Empty objects share their ETag, so the version ``dst`` replaced
        may match a listing of the copy in the same second: it must never be what ``dst`` is known as."""
        metadata = self.get(src)
        if metadata is None:
            self.forget(dst.key)
        else:
            self.learn(replace(dst, metadata=dict(metadata)))

    def forget(self, key: str) -> None:
        """``key`` was deleted or replaced here by a version whose LastModified is not known."""
        self._memory.pop(key, None)
        self._pending.pop(key, None)
        if self._db is not None:
            self._write(lambda db: db.execute("DELETE FROM versions WHERE key = ?", (key,)))

    def flush(self) -> None:
        """Commit what was learnt since the last flush, in one transaction (no fsync)."""
        if not self._pending or self._db is None:
            self._pending.clear()
            return
        rows = [(k, v.etag, v.modified, json.dumps(v.metadata, sort_keys=True)) for k, v in self._pending.items()]
        self._pending.clear()
        self._write(lambda db: db.executemany("INSERT OR REPLACE INTO versions VALUES (?, ?, ?, ?)", rows))
        self._since_trim += len(rows)
        if self._since_trim >= 4096:
            self._since_trim = 0
            self._trim()

    def close(self) -> None:
        self.flush()
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def statistics(self) -> dict[str, int]:
        return {"metadata_cache_hits": self.hits, "metadata_cache_misses": self.misses}

    # -- the file --------------------------------------------------------------------------------------

    def _open(self, path: Path) -> sqlite3.Connection | None:
        for attempt in range(2):
            try:
                db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=NORMAL")
                    if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA:
                        db.execute("DROP TABLE IF EXISTS versions")
                        db.execute(f"PRAGMA user_version={SCHEMA}")
                    db.execute(
                        "CREATE TABLE IF NOT EXISTS versions"
                        " (key TEXT PRIMARY KEY, etag TEXT NOT NULL, modified REAL NOT NULL, metadata TEXT NOT NULL)"
                    )
                    db.execute("SELECT count(*) FROM versions").fetchone()
                    return db
                except BaseException:
                    db.close()
                    raise
            except sqlite3.Error as exc:
                if attempt:
                    log.warning("metadata cache %s unusable (%s); kept in memory only", path, exc)
                    return None
                log.warning("metadata cache %s unreadable (%s); starting an empty one", path, exc)
                for suffix in ("", "-wal", "-shm", "-journal"):
                    path.with_name(path.name + suffix).unlink(missing_ok=True)
        return None

    def _select(self, keys: list[str]) -> dict[str, Version]:
        found: dict[str, Version] = {}
        db = self._db
        try:
            for start in range(0, len(keys), QUERY_CHUNK):
                chunk = keys[start : start + QUERY_CHUNK]
                marks = ",".join("?" * len(chunk))
                assert db is not None
                for key, etag, modified, metadata in db.execute(
                    f"SELECT key, etag, modified, metadata FROM versions WHERE key IN ({marks})", chunk
                ):
                    found[key] = Version(etag, modified, json.loads(metadata))
        except (sqlite3.Error, ValueError) as exc:
            self._broken(exc)
        return found

    def _write(self, change: Callable[[sqlite3.Connection], object]) -> None:
        db = self._db
        if db is None:
            return
        try:
            with db:  # one transaction
                db.execute("BEGIN")
                change(db)
        except sqlite3.Error as exc:
            self._broken(exc)

    def _trim(self) -> None:
        """Drop the oldest-written rows while the used pages exceed ``max_bytes``."""
        db = self._db
        if db is None:
            return
        try:
            for _ in range(10):
                pages, free, size = (db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size"))
                if (pages - free) * size <= self.max_bytes:
                    return
                drop = (max(1, db.execute("SELECT count(*) FROM versions").fetchone()[0] // 10),)
                self._write(partial(_delete_oldest, drop=drop))
        except sqlite3.Error as exc:
            self._broken(exc)

    def _broken(self, exc: Exception) -> None:
        log.warning("metadata cache %s failed (%s); kept in memory only for this mount", self.path, exc)
        db, self._db = self._db, None
        self._pending.clear()
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()


def _delete_oldest(db: sqlite3.Connection, drop: tuple[int]) -> None:
    db.execute("DELETE FROM versions WHERE rowid IN (SELECT rowid FROM versions ORDER BY rowid LIMIT ?)", drop)
