"""The cache folder on disk: what must outlive the daemon, and the lock that gives it one owner.

Owns: the cache folder's layout (``<cache-dir>/<bucket>-<hash of endpoint, bucket, prefix>/``: one folder
per bucket and prefix, not per process, so the next mount finds what the last one left), its lock (one
daemon at a time), the data files of local copies on disk (``files/<id>.data``) and their records
(``files/<id>.json``), and the place of the metadata cache (``metadata.db``, metacache.py owns its
content). Must not talk to S3 nor decide what a record means (recovery.py and the cache do).

A record file has two slots, each holding one version of the record with a sequence number and a
checksum; the newest slot whose checksum holds is the record. It is created whole and atomically (write,
fsync when asked, rename, fsync of the folder), then rewritten in place: each save writes the slot that
does not hold the last durable version, so a crash (of the daemon or of the machine) in the middle of a
save leaves that version or the new one, never half of one, and never an older one than was synced.
Why in place: a durable save is then one fdatasync of the record (after the data file's), where a new
file per save also costs a rename and an fsync of the folder (eventual mode's close writes one per
close). A record that outgrows its slots is written again whole, with larger ones. Records of an
earlier version (one JSON object per file) are still read.

What a record holds is enough to publish the copy without the daemon's memory: the key, the version it
was based on (ETag and size), which parts differ from it and which are local, the write state and
whether a close/fsync acknowledged the bytes, the POSIX metadata to publish with, and the multipart
upload in flight (id and the parts sent, with their ETags) so that a recovery can resume or abort it.
A REWRITTEN copy's record also holds its acknowledged version (``acked``: length, metadata, the base's
size and changed parts then, and the extents of ``files/<id>-<random>.acked``, the side file that holds the bytes
later writes overwrote; copies.py ``AckedView``), so that recovery can publish exactly that version.
A record written while the mount held its uploads back says so (``held``), so that a crash while held
cannot publish it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from s3files.errors import MountError

log = logging.getLogger(__name__)

RECORD_VERSION = 1
SLOT_MIN = 4096  # bytes of each of a record file's two slots, at least (a power of two)
SLOT_MAGIC = b"s3files-record"  # a slot begins ``s3files-record <seq> <length> <crc32>\n``, then the JSON


@dataclass
class _Slots:
    """Where a record file written by this process stands: its slot size, the last sequence number
    written, and the slot holding the last durable version (never overwritten until another is)."""

    size: int
    seq: int
    durable: int


def _crc(seq: int, body: bytes) -> int:
    """The checksum of a slot: its sequence number and length too (a slot cut short after its header's
    first bytes must not pass for a newer version)."""
    return zlib.crc32(body, zlib.crc32(b"%d %d " % (seq, len(body))))


def _slot(seq: int, body: bytes) -> bytes:
    return b"%s %d %d %d\n%s" % (SLOT_MAGIC, seq, len(body), _crc(seq, body), body)


def parse_record(raw: bytes) -> dict[str, object]:
    """The record a record file's bytes hold: the newest slot whose checksum holds (or the JSON object
    of an earlier version's file). ValueError if none does."""
    if raw.startswith(b"{"):
        return json.loads(raw)
    best: tuple[int, bytes] | None = None
    half = len(raw) // 2
    for start in (0, half) if half else ():
        slot = raw[start : start + half]
        header, _, rest = slot.partition(b"\n")
        fields = header.split(b" ")
        if len(fields) != 4 or fields[0] != SLOT_MAGIC or not all(f.isdigit() for f in fields[1:]):
            continue  # (empty, or cut short)
        seq, length, crc = (int(f) for f in fields[1:])
        body = rest[:length]
        if len(body) == length and _crc(seq, body) == crc and (best is None or seq > best[0]):
            best = (seq, body)
    if best is None:
        raise ValueError("no complete slot")
    return json.loads(best[1])


@dataclass
class Record:
    """The persisted state of one local copy (see the module docstring)."""

    id: str
    key: str
    base_etag: str | None
    base_size: int
    size: int
    state: str  # a WriteState value
    acknowledged: bool
    metadata: dict[str, str]
    changed: list[int] = field(default_factory=list)
    present: list[int] = field(default_factory=list)
    upload_id: str | None = None
    upload_key: str | None = None
    upload_metadata: dict[str, str] | None = None
    sent: dict[str, list[object]] = field(default_factory=dict)  # index -> [length, part number, etag]
    acked: dict[str, object] | None = None  # REWRITTEN: the acknowledged version kept aside (see above)
    # Written while the mount held its uploads back (``s3files exec --publish on-success``, writeback.py
    # ``WriteBack.held``): no mount publishes it unless asked (``--on-recovery upload-held``), also after a crash.
    held: bool = False
    updated: float = 0.0
    version: int = RECORD_VERSION


def _slot_size(length: int) -> int:
    """The slot size for a slot of ``length`` bytes: a power of two, at least SLOT_MIN."""
    return max(SLOT_MIN, 1 << (length - 1).bit_length())


def folder_name(endpoint: str | None, bucket: str, prefix: str) -> str:
    """A stable, file-name-safe folder name for one bucket and prefix at one endpoint."""
    digest = hashlib.sha256(f"{endpoint or 'aws'}\n{bucket}\n{prefix}".encode()).hexdigest()[:12]
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', bucket)[:60]}-{digest}"


class CacheFolder:
    """One mount's cache folder, locked for the daemon's lifetime (``open`` / ``close``)."""

    def __init__(self, root: Path, sync: bool = True) -> None:
        """``sync`` False (``--durability daemon``): durable saves write the same bytes in the same order
        but sync nothing, so what they save survives the daemon dying (the kernel holds it) and not a crash
        of the machine."""
        self.root = root
        self.sync = sync
        self.files = root / "files"
        self.metadata = root / "metadata.db"  # metacache.py: what each object version's metadata is
        self._lock_fd: int | None = None
        self._slots: dict[str, _Slots] = {}  # record files this process wrote (rewritten in place)
        self._new_names = False  # a file was created (data, side, record) since the folder's last fsync

    def open(self) -> None:
        """Create (mode 0700) and lock the folder; MountError with one line if another daemon has it."""
        try:
            self.files.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise MountError(
                f"cannot use cache folder {self.root}: {exc.strerror}; choose another with --cache-dir"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise MountError(
                f"cache folder {self.root} is in use by another s3files daemon (pid {owner}); unmount that"
                " mount first, or give this one its own --cache-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def remove_metadata(self) -> None:
        """Delete the metadata cache (a private folder at its end: it only saves HEADs)."""
        for suffix in ("", "-wal", "-shm", "-journal"):
            self.metadata.with_name(self.metadata.name + suffix).unlink(missing_ok=True)

    def data_path(self, copy_id: str) -> Path:
        return self.files / f"{copy_id}.data"

    def new_data(self, copy_id: str, size: int) -> tuple[int, Path]:
        """A new data file of ``size`` bytes, sparse (holes until parts are fetched or written), open."""
        path = self.data_path(copy_id)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._new_names = True  # made to last by the next durable save
        try:
            os.ftruncate(fd, size)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return fd, path

    def side_name(self, copy_id: str) -> str:
        """A new side file's name: where the bytes of an acknowledged version that later writes overwrote
        are kept (copies.py). One per kept version, so that a newer one never reuses a file that a
        record on disk may still name."""
        return f"{copy_id}-{secrets.token_hex(4)}.acked"

    def side_path(self, name: str) -> Path:
        return self.files / name

    def open_side(self, name: str) -> int:
        """Create (or empty) side file ``name``, open for reading and writing; its name is made to last
        by the next durable save."""
        fd = os.open(self.side_path(name), os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._new_names = True
        return fd

    def data_size(self, copy_id: str) -> int:
        """The bytes a data file holds (its record's size lags for a file never closed: records are not
        rewritten on every write)."""
        try:
            return self.data_path(copy_id).stat().st_size
        except OSError:
            return 0

    def _record_path(self, copy_id: str) -> Path:
        return self.files / f"{copy_id}.json"

    def save(self, record: Record, durable: bool = False, data: bool = True) -> None:
        """Save the record (see the module docstring). ``durable``: sync the data file (only if ``data``:
        the caller knows whether it changed since its last sync), then the record, so the record and the
        bytes it describes survive a crash of the machine too (a dead daemon alone loses nothing the
        kernel was given).

        fdatasync, not fsync, for the two files: it writes what reading them back needs (their bytes,
        size and blocks) and skips only times and other inode fields, which nothing here reads. The
        data file is synced first: a record rewritten in place is the record as soon as it is written."""
        body = json.dumps(vars(record), sort_keys=True).encode()  # (asdict deep-copies: slower, same JSON)
        if durable and data and self.sync:
            self._sync_data(record.id)
        slots = self._slots.get(record.id)
        seq = slots.seq + 1 if slots is not None else 1
        slot = _slot(seq, body)
        if slots is None or len(slot) > slots.size:
            self._create(record.id, slot, durable)
            self._slots[record.id] = _Slots(_slot_size(len(slot)), seq, 0)
            return
        index = 1 - slots.durable
        fd = os.open(self._record_path(record.id), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.pwrite(fd, slot, index * slots.size)
            if durable and self.sync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        slots.seq = seq
        if durable:
            slots.durable = index
            if self._new_names:
                self._sync_folder()

    def _create(self, copy_id: str, slot: bytes, durable: bool) -> None:
        """Write a record file whole (its first slot holding ``slot``, the second empty) under a
        temporary name and rename it into place; ``durable``: synced, and the folder after."""
        path = self._record_path(copy_id)
        tmp = path.with_suffix(".tmp")
        size = _slot_size(len(slot))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, slot + bytes(2 * size - len(slot)))  # every block allocated: later saves overwrite
            if durable and self.sync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self._new_names = True
        if durable:
            self._sync_folder()

    def sync_file(self, fd: int) -> None:
        """fsync a file of this folder (a side file) unless the mount's durability is the daemon's."""
        if self.sync:
            os.fsync(fd)

    def _sync_folder(self) -> None:
        """fsync the folder: the names of files created in it (and renamed into it) last."""
        self._new_names = False  # (before: a name made during the sync waits for the next one)
        if not self.sync:
            return
        dirfd = os.open(self.files, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

    def _sync_data(self, copy_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            data_fd = os.open(self.data_path(copy_id), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fdatasync(data_fd)
            finally:
                os.close(data_fd)

    def remove(self, copy_id: str, keep_data: bool = False) -> None:
        """Forget a record (and its data file unless ``keep_data``): record first, so a crash in between
        leaves an orphan data file (deleted at the next mount), never a record without its bytes."""
        self._record_path(copy_id).unlink(missing_ok=True)
        self._slots.pop(copy_id, None)
        if not keep_data:
            self.data_path(copy_id).unlink(missing_ok=True)
            for side in self.files.glob(f"{copy_id}-*.acked"):
                side.unlink(missing_ok=True)

    def records(self) -> list[Record]:
        """Every record left in the folder (unreadable ones are logged and skipped, never deleted)."""
        found = []
        for path in sorted(self.files.glob("*.json")):
            try:
                found.append(Record(**parse_record(path.read_bytes())))  # type: ignore[arg-type]
            except (OSError, ValueError, TypeError) as exc:
                log.error("cannot read cache record %s (%s); left as it is", path, exc)
        return found

    def sweep(self) -> int:
        """Delete data files no record names (clean copies of an earlier mount, a crash between writing
        the data and its first record) and half-written records. Returns how many were deleted."""
        named = {p.stem for p in self.files.glob("*.json")}
        removed = 0
        for path in self.files.iterdir():
            owner = path.stem.split("-")[0]  # a side file is <id>-<random>.acked
            if path.suffix == ".tmp" or (path.suffix in (".data", ".acked") and owner not in named):
                path.unlink(missing_ok=True)
                removed += 1
        return removed
