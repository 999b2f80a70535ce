"""Tree changes held back: a held mount's mkdir, unlink, rmdir, rename and chmod, seen at once, sent to S3 never
or only when the command succeeded (``s3files exec --publish on-success``).

Owns: the held changes of one mount (``HeldChanges``: per key, deleted, written with a small body, or copied
from an object S3 held before the job), their journal in the cache folder, the order they reach S3 in
(``apply_creations``, then the file uploads, then ``apply_deletes``). The name operations see them through
heldview.py's ``HeldView``, the ObjectStore that records them while the hold is on.

Must not decide when the hold ends (writeback.py, fs.py ``publish_held``), nor touch local copies.

Order of publishing (fs.py ``publish_held``): first every key the job created or replaced by a copy or a
small PUT (``apply_creations``: a copy whose source is written in this phase too runs before that write, a
cycle goes through a temporary key), then the file uploads (which may be based on those copies), and only
then the deletes (``apply_deletes``: a renamed object's old key among them), and only if every upload
succeeded; so a job that moves its input aside never loses it to a failed upload. Each applied change
leaves the journal at once, so a crash in the middle resumes with what is left.

Crash safety: the journal (``held/<mount>.json`` in the cache folder) gets one line per change, appended
and synced (fdatasync) before the change is answered; a torn last line is a change never answered. A later
mount of that folder leaves S3 as it was (the default, the journal stays and is reported), applies it
(``--on-recovery upload-held``: creations, the held files, deletes) or deletes it (``discard``): recovery.py.

Limits: a held body is at most ``MAX_HELD_BODY`` (folder markers, symlinks and empty special files are far
smaller); a copy of an object over 5 GiB (made in parts) cannot be held and fails with EIO. What is applied
is what the job left, without conditions: a change made outside to the same keys meanwhile is overwritten.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from s3files.errors import StoreError
from s3files.store.base import Copied, ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

MAX_HELD_BODY = 64 * 1024  # bytes of one object a held change may write (markers, symlinks, empty files)
TEMP_SUFFIX = ".s3files-held-swap"
MAX_PASSES = 10  # passes over the creations recorded meanwhile (folder times written as they are made)

Kind = Literal["delete", "put", "copy"]


@dataclasses.dataclass
class Change:
    """What the job did to one key. ``info``: the object as the job sees it (None when deleted)."""

    kind: Kind
    info: ObjectInfo | None = None
    body: bytes | None = None  # put: the object's bytes
    parts: int = 0  # put: 0 a plain PUT, else a multipart upload of that many parts (a symlink's form)
    origin: str | None = None  # copy: the key it is copied from (as S3 held it before the job)
    origin_etag: str | None = None
    replace_metadata: bool = False  # copy: the copy's metadata is info.metadata (else the origin's is kept)

    def to_json(self) -> dict[str, object]:
        info = self.info
        return {
            "kind": self.kind,
            "info": None
            if info is None
            else {
                "size": info.size,
                "etag": info.etag,
                "modified": info.last_modified,
                "metadata": dict(info.metadata or {}),
            },
            "body": None if self.body is None else base64.b64encode(self.body).decode(),
            "parts": self.parts,
            "origin": self.origin,
            "origin_etag": self.origin_etag,
            "replace_metadata": self.replace_metadata,
        }

    @classmethod
    def from_json(cls, key: str, raw: Mapping[str, object]) -> Change:
        info_raw = raw.get("info")
        info = None
        if isinstance(info_raw, dict):
            info = ObjectInfo(
                key, int(info_raw["size"]), str(info_raw["etag"]), float(info_raw["modified"]), dict(info_raw["metadata"])
            )
        body = raw.get("body")
        kind = str(raw["kind"])
        assert kind in ("delete", "put", "copy")
        return cls(
            kind,  # type: ignore[arg-type]
            info,
            None if body is None else base64.b64decode(str(body)),
            int(raw.get("parts") or 0),  # type: ignore[call-overload]
            None if raw.get("origin") is None else str(raw["origin"]),
            None if raw.get("origin_etag") is None else str(raw["origin_etag"]),
            bool(raw.get("replace_metadata")),
        )


def etag_of(body: bytes, parts: int) -> str:
    """The ETag S3 gives ``body`` (a plain PUT, or a multipart upload of one part per ``parts``)."""
    if not parts:
        return hashlib.md5(body, usedforsecurity=False).hexdigest()
    digest = hashlib.md5(hashlib.md5(body, usedforsecurity=False).digest(), usedforsecurity=False).hexdigest()
    return f"{digest}-{parts}"


class HeldChanges:
    """The held tree changes of one mount and their journal (see the module docstring). ``journal``: the
    file they are recorded in, one JSON line per change (or per change dropped), appended and synced
    before the change is answered (created at the first change, removed once nothing is left, rewritten
    whole when it holds many lines no longer needed); a torn last line is a change never answered."""

    def __init__(self, journal: Path) -> None:
        self.journal = journal
        self.changes: dict[str, Change] = {}
        self._fd: int | None = None
        self._lines = 0  # lines in the journal file

    def __bool__(self) -> bool:
        return bool(self.changes)

    @classmethod
    def load(cls, journal: Path) -> HeldChanges:
        """The changes a journal left by an earlier mount records (StoreError if it cannot be read)."""
        held = cls(journal)
        try:
            lines = journal.read_bytes().split(b"\n")
            for index, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    if index >= len(lines) - 2:  # the last line, torn by a crash: never answered
                        break
                    raise
                key = str(entry["key"])
                held.changes.pop(key, None)
                if not entry.get("drop"):
                    held.changes[key] = Change.from_json(key, entry["change"])
                held._lines += 1
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
            raise StoreError(f"cannot read the held changes in {journal}: {exc}") from None
        return held

    def record(self, key: str, change: Change) -> None:
        """The job changed ``key``: in the journal (durably) before the caller answers."""
        self.changes.pop(key, None)  # the newest change goes last (the order shown)
        self.changes[key] = change
        self._append([{"key": key, "change": change.to_json()}])

    def drop(self, key: str) -> None:
        """``key``'s change was made in S3 (or is not wanted any more)."""
        if self.changes.pop(key, None) is not None:
            self._append([{"key": key, "drop": True}])

    def _append(self, entries: list[dict[str, object]]) -> None:
        if not self.changes:
            self._remove()
            return
        if self._lines > 2 * len(self.changes) + 64:
            self._rewrite()
            return
        created = self._fd is None and not self.journal.exists()
        if self._fd is None:
            self.journal.parent.mkdir(mode=0o700, exist_ok=True)
            self._fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        os.write(self._fd, b"".join(json.dumps(entry).encode() + b"\n" for entry in entries))
        os.fdatasync(self._fd)
        self._lines += len(entries)
        if created:
            _sync_folder(self.journal.parent)

    def _rewrite(self) -> None:
        """The journal whole, atomically (write, fsync, rename, fsync of the folder): one line a change."""
        self.close()
        body = b"".join(json.dumps({"key": k, "change": c.to_json()}).encode() + b"\n" for k, c in self.changes.items())
        tmp = self.journal.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.journal)
        _sync_folder(self.journal.parent)
        self._lines = len(self.changes)

    def _remove(self) -> None:
        self.close()
        if self.journal.exists():
            self.journal.unlink()
            _sync_folder(self.journal.parent)
        self._lines = 0

    def close(self) -> None:
        """Close the journal file (it stays, with what it holds)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Forget every change (``--on-failure discard``, ``--on-recovery discard``)."""
        self.changes.clear()
        self._remove()

    def summary(self) -> list[dict[str, object]]:
        """One entry per held change, for ``s3files status`` and exec's report: key, what, from where."""
        return [
            {"key": key, "change": c.kind, **({"from": c.origin} if c.origin is not None else {})}
            for key, c in self.changes.items()
        ]

    # -- applying them ---------------------------------------------------------------------------------

    async def apply_creations(self, store: ObjectStore) -> dict[str, Copied]:
        """Send every held PUT and copy to ``store`` (first of the three steps; see the module docstring).
        Returns the copies made (key -> what S3 answered), whose ETag may differ from the one the job saw
        (a copy of a multipart object). Raises the first store error; what was applied has left the
        journal."""
        copied: dict[str, Copied] = {}
        for _ in range(MAX_PASSES):  # a change recorded while these were made (a folder's times): again
            if all(c.kind == "delete" for c in self.changes.values()):
                break
            copied |= await self._apply_creations(store)
        return copied

    async def _apply_creations(self, store: ObjectStore) -> dict[str, Copied]:
        copied: dict[str, Copied] = {}
        pending = [k for k, c in self.changes.items() if c.kind != "delete"]
        # How many held copies still read each key: a key is written once none does.
        readers = Counter(c.origin for k, c in self.changes.items() if c.kind == "copy" and c.origin != k)
        ready = deque(k for k in pending if not readers[k])
        waiting = {k for k in pending if readers[k]}
        for _ in range(2 * len(pending) + 1):  # each round applies one change, or frees one by a swap
            if not ready:
                if not waiting:
                    return copied
                key = min(waiting)  # a cycle (a swap of two names): copy one source aside first
                await self._set_aside(store, key)
                waiting.discard(key)
                ready.append(key)
                continue
            key = ready.popleft()
            change = self.changes[key]
            if change.kind == "put":
                assert change.body is not None and change.info is not None
                await _put(store, key, change.body, change.info.metadata or {}, change.parts)
            else:
                assert change.origin is not None and change.info is not None
                metadata = dict(change.info.metadata or {}) if change.replace_metadata else None
                copied[key] = await store.copy(change.origin, key, metadata=metadata)
                readers[change.origin] -= 1
                if readers[change.origin] <= 0 and change.origin in waiting:
                    waiting.discard(change.origin)
                    ready.append(change.origin)
            log.debug("op=publish-held key=%r %s made", key, change.kind)
            self.drop(key)
        raise StoreError("held changes: cannot order the copies")  # (the loop's bound)

    async def _set_aside(self, store: ObjectStore, key: str) -> None:
        """``key`` is the source of a held copy and written by another: copy it to a temporary key that the
        copies read instead, deleted with the other deletes."""
        temp = key + TEMP_SUFFIX
        await store.copy(key, temp)
        for dst, change in list(self.changes.items()):
            if change.kind == "copy" and change.origin == key:
                change.origin = temp
                self.record(dst, change)
        self.record(temp, Change("delete"))

    async def apply_deletes(self, store: ObjectStore) -> None:
        """Send every held delete to ``store`` (the last step); what was applied leaves the journal."""
        for key in [k for k, c in self.changes.items() if c.kind == "delete"]:
            await store.delete(key)
            self.drop(key)


async def _put(store: ObjectStore, key: str, body: bytes, metadata: Mapping[str, str], parts: int) -> ObjectInfo:
    if not parts:
        return await store.put(key, body, metadata)
    upload_id = await store.create_multipart(key, metadata)
    part = await store.upload_part(key, upload_id, 1, body)
    return await store.complete_multipart(key, upload_id, [part])


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def journal_path(root: Path) -> Path:
    """A new journal's path in cache folder ``root`` (one per mount, so a later job's are its own)."""
    return root / "held" / f"{time.time_ns()}-{os.getpid()}.json"


def journals(root: Path) -> list[Path]:
    """The journals earlier mounts left in cache folder ``root``, oldest first."""
    folder = root / "held"
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


__all__ = ["MAX_HELD_BODY", "Change", "HeldChanges", "etag_of", "journal_path", "journals"]
