"""Recovery at mount: what a stopped or dead daemon left in the cache folder.

Owns: going through the records (records.py) once at mount, deciding per record by ``--on-recovery``,
and the report. Must not publish by itself: acknowledged copies are published by the uploader with the
usual conditional rules (If-Match the version they were based on; a conflict copy if the key changed
meanwhile), resuming their multipart upload where its parts are still in S3.

What is done with each record:
- acknowledged (a close or fsync acknowledged its bytes; or the close was under way when the daemon
  died): ``upload`` publishes it (the default); ``keep`` keeps it; ``discard`` deletes it.
- never acknowledged (a program still had it open for writing): kept, not published (``discard``
  deletes it). Such a file is reported at every mount until it is discarded.
- acknowledged, then written again before its upload (REWRITTEN: the acknowledged version is kept
  aside, copies.py ``AckedView``): ``upload`` publishes that version, never the newer bytes, which are
  then kept and reported as never closed (``keep`` keeps both; ``discard`` deletes both). An
  acknowledged record whose data file is longer than it says is such a copy too: appended to since
  (``_appended_since_ack``).
- held (written while ``s3files exec --publish on-success`` held uploads back, and its command did not
  succeed: records.py ``held``): kept like ``keep``, unless ``upload-held`` (then as ``upload``) or
  ``discard``. A crash while held therefore never publishes what the command wrote.
- held changes of the tree (heldtree.py: a held job's mkdir, unlink, rmdir, rename, chmod, in a journal
  ``held/*.json``): S3 is left as it was and the journal kept and reported, unless ``upload-held`` (its
  creations are sent before the records are handled, its deletes after, if no upload failed) or
  ``discard`` (the journal is deleted).
- a conflict whose changes could not be merged: kept for the user.
- anything else (a clean copy, a copy of a removed file): deleted.
An upload id a record names that is not resumed is aborted, so no parts are left in S3.
"""

from __future__ import annotations

import enum
import logging
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from s3files.core.copies import Multipart
from s3files.core.heldtree import HeldChanges, journals
from s3files.core.namespace import posix_metadata
from s3files.core.records import Record
from s3files.core.times import ns_of_seconds
from s3files.core.uploader import WriteConflict
from s3files.core.writestate import WriteState
from s3files.errors import S3FilesError
from s3files.store.base import CompletedPart, abort_quietly

if TYPE_CHECKING:
    from s3files.core.fs import FileSystem

log = logging.getLogger(__name__)


class OnRecovery(enum.Enum):
    UPLOAD = "upload"
    KEEP = "keep"
    DISCARD = "discard"
    UPLOAD_HELD = "upload-held"  # upload, also what a hold kept back (s3files exec --publish on-success)


@dataclass
class RecoveryReport:
    uploaded: list[str] = field(default_factory=list)
    kept: list[dict[str, object]] = field(default_factory=list)  # key, why, bytes, acknowledged, data
    discarded: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # acknowledged, upload failed: retried in the background
    aborted_uploads: int = 0
    held_changes: list[dict[str, object]] = field(default_factory=list)  # kept: key, change, journal

    def summary(self) -> str:
        return (
            f"recovery: {len(self.uploaded)} uploaded, {len(self.kept)} kept, {len(self.discarded)} discarded,"
            f" {len(self.conflicts)} conflicts, {len(self.failed)} still to upload,"
            f" {self.aborted_uploads} abandoned uploads aborted"
            + (f", {len(self.held_changes)} held changes of the tree kept" if self.held_changes else "")
        )


async def recover(fs: FileSystem, mode: OnRecovery) -> RecoveryReport:
    """Handle every record the cache folder holds (see the module docstring)."""
    report = RecoveryReport()
    fs.folder.sweep()
    trees = await _held_trees(fs, mode, report)
    records = sorted(fs.folder.records(), key=lambda r: r.updated)
    for record in records:
        _appended_since_ack(fs, record)
        state = WriteState(record.state)
        acknowledged = (record.acknowledged and state in (WriteState.ACKED, WriteState.UPLOADING)) or (
            state in (WriteState.REWRITTEN, WriteState.UPLOADING) and record.acked is not None
        )
        prefix = fs.sb.ns.file_key("")
        if mode is OnRecovery.DISCARD or state in (WriteState.CLEAN, WriteState.ORPHANED, WriteState.BROKEN):
            await _abort(fs, record, report)
            fs.folder.remove(record.id)
            if state not in (WriteState.CLEAN, WriteState.ORPHANED, WriteState.BROKEN):
                report.discarded.append(record.key)
                log.warning("recovery: discarded key=%r (%s, --on-recovery discard)", record.key, _why(record))
            continue
        path = record.key[len(prefix) :]
        node = fs.sb.inodes.by_path(path)
        if (
            not acknowledged
            or not _side_file_found(fs, record)
            or mode is OnRecovery.KEEP
            or (record.held and mode is not OnRecovery.UPLOAD_HELD)
            or not record.key.startswith(prefix)
            or (node is not None and fs.cache.get(node.ino) is not None)
        ):
            await _abort(fs, record, report)
            record.upload_id = record.upload_key = record.upload_metadata = None
            record.sent = {}
            if record.acked is not None:
                record.acked["upload_id"] = record.acked["upload_key"] = None
            fs.folder.save(record, durable=True)
            report.kept.append(
                {
                    "key": record.key,
                    "why": _why(record),
                    "state": record.state,
                    "acknowledged": record.acknowledged,
                    "held": record.held,
                    "bytes": fs.folder.data_size(record.id),
                    "data": str(fs.folder.data_path(record.id)),
                }
            )
            log.warning(
                "recovery: kept key=%r (%s), not uploaded; its bytes are at %s",
                record.key,
                _why(record),
                fs.folder.data_path(record.id),
            )
            continue
        await _publish(fs, record, path, report)
    for tree in trees:  # (upload-held) the deletes, once the files they may have been moved into are in S3
        try:
            if report.failed or report.conflicts:
                raise S3FilesError("some files are not in S3")
            await tree.apply_deletes(fs.store)
        except S3FilesError as exc:
            _keep_tree(tree, report, f"deletes not sent: {exc}")
        finally:
            tree.close()
    if records or trees or report.held_changes:
        log.warning("%s", report.summary())
    return report


async def _held_trees(fs: FileSystem, mode: OnRecovery, report: RecoveryReport) -> list[HeldChanges]:
    """The journals of held tree changes earlier mounts left: discarded, kept, or (``upload-held``) their
    creations sent now; returns those whose deletes are to be sent after the records."""
    applying = []
    for journal in journals(fs.folder.root):
        if journal == fs.held_tree.journal:
            continue
        try:
            tree = HeldChanges.load(journal)
        except S3FilesError as exc:
            log.error("recovery: %s", exc)
            continue
        if mode is OnRecovery.DISCARD:
            report.discarded.extend(tree.changes)
            log.warning("recovery: discarded %d held changes of the tree (--on-recovery discard)", len(tree.changes))
            tree.discard()
        elif mode is not OnRecovery.UPLOAD_HELD:
            _keep_tree(tree, report, "held back, made by a command that did not succeed (s3files exec --publish on-success)")
        else:
            try:
                await tree.apply_creations(fs.store)
            except S3FilesError as exc:
                tree.close()
                _keep_tree(tree, report, f"not sent: {exc}")
            else:
                applying.append(tree)
    return applying


def _keep_tree(tree: HeldChanges, report: RecoveryReport, why: str) -> None:
    for change in tree.summary():
        report.held_changes.append({**change, "why": why, "journal": str(tree.journal)})
        log.warning("recovery: kept key=%r %s (%s) in %s", change["key"], change["change"], why, tree.journal)


async def _publish(fs: FileSystem, record: Record, path: str, report: RecoveryReport) -> None:
    meta = record.metadata
    times = posix_metadata(meta)
    node = fs.sb.inodes.put_local_file(
        path,
        int(meta.get("mode", stat.S_IFREG | fs.opts.file_mode)),
        int(meta.get("uid", fs.opts.uid)),
        int(meta.get("gid", fs.opts.gid)),
        times.get("mtime", ns_of_seconds(record.updated)),
    )
    node.ctime_ns = times.get("ctime", node.mtime_ns)
    node.atime_ns = times.get("atime")
    node.size = record.size
    node.xattr = meta.get("xattr")  # extended attributes set here travel with the publish
    if record.acked is not None:  # REWRITTEN, or UPLOADING and written during its upload
        record.state = WriteState.REWRITTEN.value
        # Only the version kept aside is published; the copy's own upload (of bytes no close
        # acknowledged) is never completed.
        await _abort(fs, record, report, acked=False)
        record.upload_id = record.upload_key = record.upload_metadata = None
        record.sent = {}
    else:
        record.state = WriteState.ACKED.value
    copy = fs.cache.open_recorded(record, node)
    if record.upload_id and record.upload_key and record.upload_metadata:
        upload = Multipart(record.upload_key, record.upload_id, dict(record.upload_metadata))
        for index, (length, number, etag) in record.sent.items():
            i = int(index)
            upload.sent[i] = (copy.changed.get(i, 0), int(length), CompletedPart(int(number), str(etag)))  # type: ignore[call-overload]
        copy.sending.upload = upload
    try:
        await fs.publish_recovered(copy)
    except WriteConflict as exc:
        report.conflicts.append(str(exc))
        log.warning("recovery: key=%r %s", record.key, exc)
        return
    except S3FilesError as exc:
        report.failed.append(record.key)
        log.warning("recovery: key=%r upload failed (%s); retried in the background", record.key, exc)
        return
    report.uploaded.append(record.key)
    log.info("recovery: uploaded key=%r (%s)", record.key, _why(record))
    if copy.state is WriteState.DIRTY and fs.cache.get(node.ino) is None:
        # REWRITTEN: its closed version is in S3 now; the newer bytes were set aside (files.py).
        report.kept.append(
            {
                "key": record.key,
                "why": "written again after its last close, never closed since",
                "state": copy.state.value,
                "acknowledged": False,
                "bytes": fs.folder.data_size(record.id),
                "data": str(fs.folder.data_path(record.id)),
            }
        )


def _appended_since_ack(fs: FileSystem, record: Record) -> None:
    """An acknowledged record whose data file is longer than it says: the file was appended to after
    that acknowledgement and not closed since (an append leaves the record as it is, copyio.py
    ``appends_only``). Read it as the record of such a copy would say: REWRITTEN, the acknowledged
    version kept aside (its bytes are the data file's first ``size``, nothing overwritten), the newer
    bytes after it never closed."""
    if record.acked is not None or not record.acknowledged or record.state != WriteState.ACKED.value:
        return
    size = fs.folder.data_size(record.id)
    if size <= record.size:
        return
    record.acked = {
        "size": record.size,
        "side": fs.folder.side_name(record.id),
        "metadata": dict(record.metadata),
        "base_size": record.base_size,
        "changed": list(record.changed),
        "low": record.size,
        "extents": [],
    }
    record.state, record.acknowledged, record.size = WriteState.REWRITTEN.value, False, size


def _side_file_found(fs: FileSystem, record: Record) -> bool:
    """The side file a record's kept version needs is there (else the record is kept, not published:
    its acknowledged bytes cannot be rebuilt)."""
    if record.acked is None or not record.acked.get("extents"):
        return True
    if fs.folder.side_path(str(record.acked.get("side"))).exists():
        return True
    log.error("recovery: key=%r: the side file of its closed version is missing; kept, not uploaded", record.key)
    return False


async def _abort(fs: FileSystem, record: Record, report: RecoveryReport, acked: bool = True) -> None:
    """Abort the uploads ``record`` names (also that of the version it keeps aside, if ``acked``)."""
    uploads = [(record.upload_key, record.upload_id)]
    if acked and record.acked is not None:
        uploads.append((record.acked.get("upload_key"), record.acked.get("upload_id")))  # type: ignore[arg-type]
    for key, upload_id in uploads:
        if upload_id and key:
            await abort_quietly(fs.store, str(key), str(upload_id))
            report.aborted_uploads += 1


def _why(record: Record) -> str:
    why = _why_kept(record)
    if record.held and (record.acknowledged or record.acked is not None):
        return f"held back, written by a command that did not succeed (s3files exec --publish on-success): {why}"
    return why


def _why_kept(record: Record) -> str:
    if record.state == WriteState.CONFLICTED.value:
        return "a conflict whose changes could not be merged"
    if record.acked is not None:  # REWRITTEN, or UPLOADING and written during its upload
        record.state = WriteState.REWRITTEN.value
        return "closed or fsynced, not uploaded yet, and written again since (that newer state never closed)"
    if record.acknowledged:
        return "closed or fsynced, not uploaded yet"
    return "still open for writing when the daemon stopped, never closed"
