"""Tree changes held back: a held mount's mkdir, unlink, rmdir, rename and chmod, seen at once, sent to S3 never
or only when the command succeeded (``s3files exec --publish on-success``).

Owns: the held changes of one mount (``HeldChanges``: per key, deleted, written with a small body, or copied
from an object S3 held before the job), their journal in the cache folder, the order they reach S3 in
(``apply_creations``, then the file uploads, then ``apply_deletes``), and ``HeldView``: the ObjectStore the
name operations (superblock, files, tree, folder markers, the cache's reads) talk to. While the write-back
holds uploads back (writeback.py ``WriteBack.held``), every change of a visible object asked of it (PUT,
CopyObject, DeleteObject, CompleteMultipartUpload of a small object: a symlink) is recorded instead of sent,
and every read (HEAD, GET, LIST) answers as if it had been sent: a renamed object is read from the key it
was copied from (its ETag there), a deleted one is absent, a folder made here is listed. So the rooms above
stay as they are: they believe S3 did what they asked, and nothing reaches S3 until the command succeeded.
The uploader talks to S3 itself (it runs only once the hold ended, after ``apply_creations``); multipart
parts streamed while the command writes are invisible in S3 and go through unchanged.

Must not decide when the hold ends (writeback.py, fs.py ``publish_held``), nor touch local copies.

Order of publishing (fs.py ``publish_held``): first every key the job created or replaced by a copy or a
small PUT (``apply_creations``: a copy whose source is written in this phase too runs before that write, a
cycle goes through a temporary key), then the file uploads (which may be based on those copies), and only
then the deletes (``apply_deletes``: a renamed object's old key among them), and only if every upload
succeeded; so a job that moves its input aside never loses it to a failed upload. Each applied change
leaves the journal at once, so a crash in the middle resumes with what is left.

Crash safety: the journal (``held/<mount>.json`` in the cache folder) gets one line per change, appended
and synced (fdatasync) before the change is answered; a torn last line is a change never answered. A later mount
of that folder leaves S3 as it was (the default, the journal stays and is reported), applies it
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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from s3files.errors import ObjectNotFound, PreconditionFailed, StoreError
from s3files.store.base import CompletedPart, Copied, ListPage, MultipartUpload, ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

MAX_HELD_BODY = 64 * 1024  # bytes of one object a held change may write (markers, symlinks, empty files)
MAX_REFILL = 1000  # pages one merged LIST page may read when held deletes empty the real ones
MAX_TOKENS = 1024  # continuation tokens whose lower bound is remembered
TEMP_SUFFIX = ".s3files-held-swap"

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


def _etag(body: bytes, parts: int) -> str:
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


@dataclasses.dataclass
class _Upload:
    metadata: dict[str, str]
    bodies: dict[int, bytes | None]  # part number -> its bytes (None: too large, or copied in S3)


class HeldView:
    """An ObjectStore over ``inner`` that holds back changes while ``held()`` (see the module docstring).
    Reads answer from the held changes whether or not the hold still is on, until they are applied."""

    def __init__(self, inner: ObjectStore, changes: HeldChanges, held: Callable[[], bool], wall: Callable[[], float] = time.time) -> None:
        self.inner = inner
        self.held_changes = changes
        self._held = held
        self._wall = wall
        self._lower: dict[str, str] = {}  # continuation token -> the last entry of the page before it
        self._uploads: dict[str, _Upload] = {}  # multipart uploads started while held

    @property
    def requests(self):  # type: ignore[no-untyped-def]
        return self.inner.requests

    @property
    def _changes(self) -> dict[str, Change]:
        return self.held_changes.changes

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)  # anything else a store offers (statistics, direct reads)

    async def check_bucket(self) -> None:
        await self.inner.check_bucket()

    # -- reads ---------------------------------------------------------------------------------------

    def _seen(self, key: str) -> Change | None:
        change = self._changes.get(key)
        if change is not None and change.kind == "delete":
            raise ObjectNotFound(f"{key} was deleted (held back)")
        return change

    async def _current(self, key: str) -> ObjectInfo | None:
        """The object at ``key`` as the job sees it, or None."""
        try:
            return await self.head(key)
        except ObjectNotFound:
            return None

    async def head(self, key: str) -> ObjectInfo:
        change = self._seen(key)
        if change is None:
            return await self.inner.head(key)
        assert change.info is not None
        return change.info

    async def get_first(self, key: str, nbytes: int) -> tuple[ObjectInfo, bytes | bytearray]:
        change = self._seen(key)
        if change is None:
            return await self.inner.get_first(key, nbytes)
        assert change.info is not None
        return change.info, await self.get_range(key, 0, min(nbytes, change.info.size))

    async def get_range(
        self, key: str, start: int, end: int, if_match: str | None = None, into: bytearray | None = None
    ) -> bytes | bytearray:
        change = self._seen(key)
        if change is None:
            return await self.inner.get_range(key, start, end, if_match=if_match, into=into)
        assert change.info is not None
        if if_match is not None and if_match != change.info.etag:
            raise PreconditionFailed(f"{key} is no longer version {if_match}")
        if change.kind == "put":
            assert change.body is not None
            return change.body[start:end]
        assert change.origin is not None
        end = min(end, change.info.size)
        if end <= start:
            return b""
        sized = into if into is not None and len(into) == end - start else None
        try:
            return await self.inner.get_range(change.origin, start, end, if_match=change.origin_etag, into=sized)
        except PreconditionFailed:
            raise ObjectNotFound(f"{key}: {change.origin}, which it was renamed from, changed outside") from None

    async def list_page(
        self,
        prefix: str,
        delimiter: str | None = "/",
        token: str | None = None,
        max_keys: int = 1000,
        start_after: str | None = None,
    ) -> ListPage:
        """One page as the job sees it: S3's, without the keys deleted here, with the keys written here
        that fall within it (by key order, so each is on exactly one page)."""
        if not self._changes:
            return await self.inner.list_page(prefix, delimiter, token, max_keys, start_after)
        lower = (self._lower.get(token, "") if token is not None else "") or (start_after or "")
        objects: dict[str, ObjectInfo] = {}
        prefixes: set[str] = set()
        last = ""
        for _ in range(MAX_REFILL):
            page = await self.inner.list_page(prefix, delimiter, token, max_keys, start_after)
            start_after = None
            for obj in page.objects:
                last = max(last, obj.key)
                if obj.key not in self._changes:
                    objects[obj.key] = obj
            for common in page.prefixes:
                last = max(last, common)
                if await self._shows(common):
                    prefixes.add(common)
            token = page.next_token
            if token is None or len(objects) + len(prefixes) >= max_keys:
                break
        upper = last if token is not None else None
        for key, change in self._changes.items():
            if change.kind == "delete" or not key.startswith(prefix):
                continue
            rest = key[len(prefix) :]
            cut = rest.find(delimiter) if delimiter else -1
            entry = key if cut < 0 else prefix + rest[: cut + len(delimiter or "")]
            if entry <= lower or (upper is not None and entry > upper):
                continue
            if cut < 0:
                assert change.info is not None
                objects[key] = change.info
            else:
                prefixes.add(entry)
        if token is not None:
            if len(self._lower) >= MAX_TOKENS:
                self._lower.pop(next(iter(self._lower)))
            self._lower[token] = last
        return ListPage(sorted(objects.values(), key=lambda o: o.key), sorted(prefixes), token)

    async def _shows(self, common: str) -> bool:
        """Whether folder ``common`` (a prefix S3 listed) still has a key as the job sees it."""
        deleted = [k for k, c in self._changes.items() if k.startswith(common) and c.kind == "delete"]
        if not deleted or any(k.startswith(common) and c.kind != "delete" for k, c in self._changes.items()):
            return True
        page = await self.inner.list_page(common, None, max_keys=len(deleted) + 1)
        return any(obj.key not in self._changes for obj in page.objects)

    async def list_multipart_uploads(self, prefix: str) -> list[MultipartUpload]:
        return await self.inner.list_multipart_uploads(prefix)

    # -- changes ---------------------------------------------------------------------------------------

    async def _check(self, key: str, if_match: str | None, if_none_match: bool) -> None:
        if not if_match and not if_none_match:
            return
        current = await self._current(key)
        if if_none_match and current is not None:
            raise PreconditionFailed(f"{key} exists")
        if if_match is not None:
            if current is None:
                raise ObjectNotFound(f"{key} does not exist")
            if current.etag != if_match:
                raise PreconditionFailed(f"{key} is no longer version {if_match}")

    def _hold(self, key: str, body: bytes, metadata: Mapping[str, str] | None, parts: int) -> ObjectInfo:
        if len(body) > MAX_HELD_BODY:
            raise StoreError(f"{key}: {len(body)} bytes cannot be held back as a change of the tree")
        info = ObjectInfo(key, len(body), _etag(body, parts), self._wall(), dict(metadata or {}))
        self.held_changes.record(key, Change("put", info, bytes(body), parts))
        return info

    async def put(
        self,
        key: str,
        data: bytes,
        metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        if not self._held():
            return await self.inner.put(key, data, metadata, if_match=if_match, if_none_match=if_none_match)
        await self._check(key, if_match, if_none_match)
        return self._hold(key, data, metadata, 0)

    async def delete(self, key: str) -> None:
        if not self._held():
            await self.inner.delete(key)
            self.held_changes.drop(key)
            return
        self.held_changes.record(key, Change("delete"))

    async def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None) -> Copied:
        if not self._held():
            return await self.inner.copy(src, dst, metadata)
        now = self._wall()
        source = self._seen(src)
        if source is not None and source.kind == "put":
            assert source.body is not None and source.info is not None
            info = self._hold(dst, source.body, metadata if metadata is not None else source.info.metadata, 0)
            return Copied(dst, info.etag, now)
        if source is not None:
            assert source.info is not None and source.origin is not None
            origin, origin_etag, was = source.origin, source.origin_etag, source.info
        else:
            was = await self.inner.head(src)
            origin, origin_etag = src, was.etag
        kept = metadata is None
        info = ObjectInfo(dst, was.size, was.etag, now, dict(was.metadata or {}) if kept else dict(metadata or {}))
        replace = not kept or (source is not None and source.replace_metadata)
        self.held_changes.record(dst, Change("copy", info, origin=origin, origin_etag=origin_etag, replace_metadata=replace))
        return Copied(dst, info.etag, now)

    async def create_multipart(self, key: str, metadata: Mapping[str, str] | None = None) -> str:
        upload_id = await self.inner.create_multipart(key, metadata)
        if self._held():  # parts are invisible in S3; only the completion is held back
            self._uploads[upload_id] = _Upload(dict(metadata or {}), {})
        return upload_id

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> CompletedPart:
        part = await self.inner.upload_part(key, upload_id, number, data)
        upload = self._uploads.get(upload_id)
        if upload is not None:
            upload.bodies[number] = bytes(data) if len(data) <= MAX_HELD_BODY else None
        return part

    async def upload_part_from(
        self, key: str, upload_id: str, number: int, fd: int, offset: int, length: int
    ) -> CompletedPart:
        upload = self._uploads.get(upload_id)
        if upload is not None:
            upload.bodies[number] = None
        return await self.inner.upload_part_from(key, upload_id, number, fd, offset, length)

    async def upload_part_copy(
        self,
        key: str,
        upload_id: str,
        number: int,
        src: str,
        start: int,
        end: int,
        if_match: str | None = None,
    ) -> CompletedPart:
        upload = self._uploads.get(upload_id)
        if upload is not None:
            upload.bodies[number] = None
        change = self._seen(src)
        if change is None:
            return await self.inner.upload_part_copy(key, upload_id, number, src, start, end, if_match)
        assert change.info is not None
        if if_match is not None and if_match != change.info.etag:
            raise PreconditionFailed(f"{src} is no longer version {if_match}")
        if change.kind == "put":
            assert change.body is not None
            return await self.inner.upload_part(key, upload_id, number, change.body[start:end])
        assert change.origin is not None
        return await self.inner.upload_part_copy(key, upload_id, number, change.origin, start, end, change.origin_etag)

    async def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[CompletedPart],
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        upload = self._uploads.pop(upload_id, None)
        if not self._held():
            return await self.inner.complete_multipart(key, upload_id, parts, if_match=if_match, if_none_match=if_none_match)
        if upload is None or len(parts) != 1 or upload.bodies.get(parts[0].number) is None:
            await self.inner.abort_multipart(key, upload_id)
            raise StoreError(f"{key}: an object made of parts cannot be held back as a change of the tree")
        await self._check(key, if_match, if_none_match)
        body = upload.bodies[parts[0].number]
        assert body is not None
        await self.inner.abort_multipart(key, upload_id)  # its one part is kept here instead
        return self._hold(key, body, upload.metadata, 1)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        self._uploads.pop(upload_id, None)
        await self.inner.abort_multipart(key, upload_id)

    async def aclose(self) -> None:
        await self.inner.aclose()


__all__ = ["Change", "HeldChanges", "HeldView", "journal_path", "journals"]
