"""Write-back (``--consistency eventual``): when an acknowledged local copy is uploaded, and ``sync``.

Owns: the schedule of the copies a close acknowledged without uploading them (files.py ``acknowledge``):
each is due ``--writeback-delay`` seconds after its LAST acknowledgement (every close re-arms it, so a file
rewritten or appended ten times within the delay is uploaded once), and at the latest ``MAX_HOLD`` delays
after the first acknowledgement that is still waiting (a file closed again and again without a pause is
still uploaded regularly). One background task on the mount's nursery uploads what is due, a bounded
number at a time; ``sync`` uploads now what a path holds and reports per file what is not in S3 after.

Must not decide what an acknowledgement is (files.py) nor how a copy is published: every upload goes
through ``publish`` (files.py -> uploader.py: conditional writes, conflict copies, retries), as a
background publish, which is abandoned if the program changes the file before it commits (the next close
schedules it again), so no other mount ever sees bytes no close acknowledged.

Holding back (``s3files exec --publish on-success``, MountOptions.hold): while ``held``, nothing waiting
is uploaded, neither when due nor by ``sync`` (nor by fsync, files.py), and every record the cache writes
says ``held`` (records.py), so neither a stop (fs.py ``aclose``: kept or discarded, never published) nor
the recovery after a crash (recovery.py) publishes it. ``release`` ends the hold for good (the command
succeeded): what waits is uploaded at once. The hold is on from the mount's first moment, so no write
of the command can slip out before it.

Time: trio's clock (``trio.current_time``, ``trio.sleep_until``), the one the task sleeps on, so tests
drive the schedule with ``trio.testing.MockClock`` instead of sleeping through delays.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import trio

from s3files.core.copies import LocalCopy
from s3files.core.tasks import CONCURRENCY
from s3files.core.writestate import WAITING, WriteState
from s3files.errors import S3FilesError

log = logging.getLogger(__name__)

MAX_HOLD = 10  # a copy waits at most this many delays after its first acknowledgement still waiting


@dataclass
class _Due:
    first: float  # trio time of the first acknowledgement not uploaded yet
    at: float  # when the upload is due (inf: written again since, due at its next acknowledgement)


class WriteBack:
    """The write-back schedule of one mount (see the module docstring).

    ``publish(copy, background)`` uploads a waiting copy (files.py ``publish_due``: its bytes, or the
    version kept aside if it was written again since its close); ``settle(copy)`` is called after an upload
    the scheduler made, for a copy nobody has open any more; ``spawn`` starts background work on the
    mount's nursery."""

    def __init__(
        self,
        delay: float,
        publish: Callable[[LocalCopy, bool], Awaitable[object]],
        settle: Callable[[LocalCopy], Awaitable[None]],
        spawn: Callable[..., object],
        held: bool = False,
    ) -> None:
        self.delay = max(0.0, delay)
        self.held = held  # uploads held back until ``release`` (see the module docstring)
        self._publish = publish
        self._settle = settle
        self._spawn = spawn
        self._due: dict[LocalCopy, _Due] = {}
        self._busy: set[LocalCopy] = set()  # found due, their upload not done yet
        self._wake = trio.Event()
        self._until = math.inf  # when the schedule wakes by itself next: earlier dues wake it (``arm``)
        self._running = False
        self._limit = trio.CapacityLimiter(CONCURRENCY)
        self.uploaded = 0  # copies the schedule uploaded (statistics)

    def arm(self, copy: LocalCopy) -> None:
        """``copy`` was acknowledged (again): due ``delay`` from now, but not past its longest hold."""
        now = trio.current_time()
        waiting = self._due.get(copy)
        first = now if waiting is None else waiting.first
        due = self._due[copy] = _Due(first, min(now + self.delay, first + MAX_HOLD * self.delay))
        if not self._running:
            self._running = True
            self._spawn(self._run)
        if due.at < self._until:  # (a later due needs no wake: a close per line would scan every copy)
            self._wake.set()

    def waiting(self, copy: LocalCopy) -> bool:
        """Whether ``copy`` waits for its upload here (it stays live meanwhile; no error to log)."""
        return copy in self._due or copy in self._busy

    def pending(self) -> int:
        return len(self._due)

    def release(self) -> None:
        """End the hold (the command succeeded): from now on waiting copies are uploaded as usual. The
        caller syncs what waits at once (fs.py ``publish_held``)."""
        if self.held:
            log.info("op=release uploads are no longer held back")
        self.held = False
        self._wake.set()

    async def _run(self) -> None:
        """Upload what is due, then sleep until the next copy is due or one is armed. Ends with the mount
        (its nursery is cancelled). While held, nothing is due."""
        while True:
            self._wake = trio.Event()
            self._until = -math.inf  # until it sleeps again, every arm wakes it
            if self.held:
                self._until = math.inf
                await self._wake.wait()  # released
                continue
            now = trio.current_time()
            for copy in [c for c, due in self._due.items() if due.at <= now]:
                self._busy.add(copy)
                self._spawn(self._upload, copy, self._due.pop(copy))
            soonest = min((due.at for due in self._due.values()), default=math.inf)
            self._until = soonest
            with trio.move_on_at(soonest):
                await self._wake.wait()

    async def _upload(self, copy: LocalCopy, due: _Due) -> None:
        try:
            tried = await self._upload_due(copy, due)
        finally:
            self._busy.discard(copy)
        if tried and copy.handles == 0 and not self.waiting(copy) and not copy.closed:
            await self._settle(copy)

    async def _upload_due(self, copy: LocalCopy, due: _Due) -> bool:
        """Upload ``copy`` if it still waits; whether an upload was tried (the copy is then settled
        here if nobody has it open: no close will)."""
        if copy in self._due:
            return False  # acknowledged again since it was found due: re-armed
        if self.held:  # (never found due while held; kept for the release)
            self._due[copy] = due
            return False
        if copy.state is WriteState.DIRTY and not copy.closed:
            self._due[copy] = _Due(due.first, math.inf)  # written since its acknowledgement: due at the next
            return False
        if copy.state not in WAITING or copy.closed or copy.sending.retry_pending:
            return False  # uploaded meanwhile, lost its name, or failed and waits for the uploader's retry
        async with self._limit:
            try:
                await self._publish(copy, True)
            except S3FilesError as exc:
                # A conflict (ours is kept beside theirs), a failure (the uploader retries it), or changed
                # again while uploading: the uploader has logged what it did; the copy's state says the rest.
                log.debug("op=writeback path=%r not uploaded now: %s", copy.node.path, exc)
            else:
                self.uploaded += 1
        if copy.state is WriteState.DIRTY and not copy.closed and copy not in self._due:
            # Changed while it was uploading: waits for the close that acknowledges the change.
            self._due[copy] = _Due(due.first, math.inf)
        return True

    async def sync(self, copies: Iterable[LocalCopy]) -> dict[str, str]:
        """Upload ``copies`` now (those acknowledged; the others are reported): path -> why it is not in
        S3 after, for each that is not. Returns once every upload is done."""
        failed: dict[str, str] = {}

        async def one(copy: LocalCopy) -> None:
            path = copy.node.path
            if self.held:
                failed[path] = "held back: published only when the command succeeds (s3files exec --publish on-success)"
                return
            if copy.state is WriteState.BROKEN:
                failed[path] = f"not uploaded: a write to it failed ({copy.broken})"
                return
            if copy.state is WriteState.DIRTY:
                failed[path] = "not uploaded: open for writing, changed since its last close or fsync"
                return
            self._due.pop(copy, None)
            try:
                async with self._limit:
                    await self._publish(copy, False)
            except S3FilesError as exc:
                failed[path] = str(exc)
            else:
                if copy.state is WriteState.DIRTY:  # its closed version was published, not what came after
                    failed[path] = "not uploaded: open for writing, changed since its last close or fsync"
                elif copy.unsent:
                    failed[path] = f"not uploaded ({copy.state.value})"
            if copy.handles == 0 and not copy.closed:
                await self._settle(copy)

        async with trio.open_nursery() as nursery:
            for copy in copies:
                if copy.unsent or copy.state is WriteState.BROKEN:
                    nursery.start_soon(one, copy)
        return failed
