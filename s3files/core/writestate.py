"""The write state of a local copy: an explicit enum and the only transitions allowed between states.

Owns: ``WriteState``, ``TRANSITIONS`` and ``advance``. Every room asks ``advance`` to move a copy from one
state to another; an illegal move raises ``AssertionError`` (a bug, never a user error), so no code can
drift into a state the rest does not expect. tests/test_recovery.py makes every allowed move at least once
through the file system (a move no scenario can make does not belong in the table).

    CLEAN      the copy equals the object version it is based on (or a new file nobody wrote yet).
    DIRTY      it differs from S3 and no close/fsync acknowledged the difference yet. Never published by
               a stop; kept (not uploaded) by recovery.
    ACKED      a close or fsync acknowledged the current bytes: they must reach S3. Waiting for an upload
               (the first failed, or the daemon stopped; in eventual mode, a close acknowledges without
               uploading and the write-back uploads it later, writeback.py); retried in the background
               and by recovery.
    REWRITTEN  an ACKED copy written again (or truncated, chmod-ed) before its upload (or an UPLOADING
               copy written during its upload, which then failed): the acknowledged
               version is kept aside (copies.py ``AckedView``: its length, metadata, and the bytes the
               later writes overwrote or cut, in a side file), and it is that version the background
               retry, a stop and recovery publish; the newer bytes are not acknowledged (DIRTY once the
               kept version is published). A later close/fsync acknowledges the newer bytes and drops
               what was kept. Its own state rather than a flag on ACKED or DIRTY: it is published
               (the kept version) yet holds bytes that must never be, and every room must tell it apart.
    UPLOADING  being published (PUT or multipart); the bytes are acknowledged. A copy on disk written
               during its upload keeps the acknowledged version aside already (as REWRITTEN does), and
               the upload reads through it, so that it publishes what was acknowledged.
    CONFLICTED someone else's version won the key; ours is in a conflict copy. Dropped at last close.
    ORPHANED   the file lost its name (unlink, rename over it): never published, dropped at last close.
    BROKEN     a local write into it failed: it is not what the program wrote, so never published.
"""

from __future__ import annotations

import enum


class WriteState(enum.Enum):
    CLEAN = "clean"
    DIRTY = "dirty"
    ACKED = "acked"
    REWRITTEN = "rewritten"
    UPLOADING = "uploading"
    CONFLICTED = "conflicted"
    ORPHANED = "orphaned"
    BROKEN = "broken"


S = WriteState
TRANSITIONS: dict[WriteState, frozenset[WriteState]] = {
    # written, truncated or chmod-ed / a flush of an unchanged copy needs no upload / lost its name
    S.CLEAN: frozenset({S.DIRTY, S.ORPHANED}),
    # close/fsync: publish (acknowledged from here on) / eventual mode's close: acknowledged, kept durably
    # in the cache folder, uploaded by the write-back later / lost its name / a local write failed
    S.DIRTY: frozenset({S.UPLOADING, S.ACKED, S.ORPHANED, S.BROKEN}),
    # retry / written again (the acknowledged version is kept aside: never DIRTY, which would lose it) /
    # lost its name / a write failed
    S.ACKED: frozenset({S.UPLOADING, S.REWRITTEN, S.ORPHANED, S.BROKEN}),
    # a close/fsync acknowledges the newer bytes (the kept version is dropped) / the kept version was
    # published, or written beside on a conflict (the newer bytes stay unacknowledged) / eventual mode's
    # close acknowledges the newer bytes without uploading them (the kept version is dropped) / lost its
    # name / the kept version was published after a later local write failed (the newer bytes are unfit;
    # the copy stays REWRITTEN until then: a failed write never reaches the version kept aside)
    S.REWRITTEN: frozenset({S.UPLOADING, S.DIRTY, S.ACKED, S.ORPHANED, S.BROKEN}),
    # published (CLEAN, or DIRTY when written meanwhile) / failed or cancelled: retry later (REWRITTEN
    # when written meanwhile: the acknowledged version was kept aside) / someone else won / a later
    # write failed (what the flush acknowledged was read before it)
    S.UPLOADING: frozenset({S.CLEAN, S.DIRTY, S.ACKED, S.REWRITTEN, S.CONFLICTED, S.BROKEN}),
    # written again (its next publish conflicts again: the base is gone) / lost its name
    S.CONFLICTED: frozenset({S.DIRTY, S.ORPHANED}),
    S.ORPHANED: frozenset(),
    S.BROKEN: frozenset({S.ORPHANED}),
}

PUBLISHABLE = frozenset({S.DIRTY, S.ACKED, S.REWRITTEN})  # states a flush may publish
UNSENT = frozenset({S.DIRTY, S.ACKED, S.REWRITTEN, S.UPLOADING})  # the copy holds bytes S3 does not have
WAITING = frozenset({S.ACKED, S.REWRITTEN})  # an acknowledged version waits for a retry, a stop or recovery


def advance(current: WriteState, new: WriteState) -> WriteState:
    """``new`` if the move is allowed (or no move at all), else AssertionError."""
    if new is not current and new not in TRANSITIONS[current]:
        raise AssertionError(f"write state cannot go from {current.name} to {new.name}")
    return new
