"""The kernel's caches, told through pyfuse3's notifications (the core's KernelCache, core/kernel.py).

Owns: how each notification is sent so that it can never deadlock the mount. The core calls these from
inside request handlers, which run on the one trio thread that also answers every other request:
- attributes (``invalidate_inode(ino, attr_only=True)``): sent at once, in the handler. The kernel only
  marks the inode's attributes stale (no lock a request could hold), and must have done so before the
  handler's reply: an open that saw a bigger version must not read up to the old size.
- data (``invalidate_inode(ino)``): dropping cached pages waits for the page locks of reads in flight,
  which only this thread can answer, so it runs on a worker thread (``run``), one inode at a time.
- names (``invalidate_entry_async``): pyfuse3's own worker thread; the kernel waits for requests on the
  same folder to finish, the handler calling us among them.
Errors are logged, never raised: the kernel may have forgotten the inode or name already (ENOENT).
Nothing may be sent once the session is closed (pyfuse3 would use a freed session): ``aclose`` stops the
notifications and waits, briefly, for the one on the worker thread.
"""

from __future__ import annotations

import errno
import logging

import pyfuse3
import trio

log = logging.getLogger(__name__)

CLOSE_WAIT = 2.0  # seconds ``aclose`` waits for a page invalidation in flight (it waits for reads, see above)


class FuseKernelCache:
    """KernelCache for a running pyfuse3 session (pyfuse3.init done); ``run`` must run on its nursery."""

    def __init__(self) -> None:
        self._pending: dict[int, None] = {}  # inodes whose pages are to be dropped, in order, each once
        self._wake = trio.Event()
        self._idle = trio.Event()  # set while no invalidation runs on the worker thread
        self._idle.set()
        self._open = True

    def attributes_changed(self, ino: int) -> None:
        if self._open:
            _invalidate_inode(ino, attr_only=True)

    def data_changed(self, ino: int) -> None:
        if self._open:
            _invalidate_inode(ino, attr_only=True)
            self._pending[ino] = None
            self._wake.set()

    def entry_gone(self, parent_ino: int, name: str) -> None:
        if self._open:
            pyfuse3.invalidate_entry_async(parent_ino, name.encode("utf-8"), ignore_enoent=True)

    async def run(self) -> None:
        """Drop the pages of changed inodes, on a worker thread (see the module docstring)."""
        while self._open:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._pending and self._open:
                ino = next(iter(self._pending))
                del self._pending[ino]
                self._idle = trio.Event()
                try:
                    await trio.to_thread.run_sync(_invalidate_inode, ino, False, abandon_on_cancel=True)
                finally:
                    self._idle.set()

    async def aclose(self) -> None:
        """Before the session closes: send nothing more, and let a page invalidation in flight finish
        (at most CLOSE_WAIT: it may wait for a read nobody answers any more)."""
        self._open = False
        self._wake.set()
        with trio.move_on_after(CLOSE_WAIT) as waited:
            await self._idle.wait()
        if waited.cancelled_caught:
            log.warning("an invalidation of the kernel's page cache did not finish before the unmount")


def _invalidate_inode(ino: int, attr_only: bool) -> None:
    try:
        pyfuse3.invalidate_inode(ino, attr_only)
    except OSError as exc:
        if exc.errno != errno.ENOENT:  # ENOENT: the kernel forgot the inode, nothing is cached
            log.warning("cannot invalidate the kernel's cache of inode %d: %s", ino, exc)
