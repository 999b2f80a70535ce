"""Run asyncio coroutines from trio code: one asyncio event loop on a dedicated daemon thread.

Why: aiobotocore (aiohttp underneath) only runs on asyncio, while the file system runs on trio. Measured
best is one long-lived asyncio loop on its own thread, with each S3 request crossing over once: the trio
task parks (no thread is blocked waiting) and is woken through its trio token when the asyncio task ends.

Owns: the thread, its event loop, and the bookkeeping of calls in flight. Must not: block the trio thread
for longer than a loop callback, keep global state, or leave a trio task parked forever (every call is
delivered exactly once: its result, its exception, trio.Cancelled if trio asked for cancellation, or
BridgeClosed if the loop went away first).

Threading invariants:
- ``_Call.deliver`` runs only on the trio thread (via ``run_sync_soon``), so ``_Call.delivered`` needs no
  lock and a trio task is rescheduled at most once.
- asyncio objects (the Task, the loop's internals) are touched only on the loop thread, through
  ``call_soon_threadsafe``.
- ``_inflight`` is shared by both threads and guarded by ``_lock``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import outcome
import trio

log = logging.getLogger(__name__)

T = TypeVar("T")


class BridgeClosed(RuntimeError):
    """The asyncio thread is stopped (or stopped while the call was in flight)."""


@dataclass(frozen=True)
class BridgeStatistics:
    """What a long-lived bridge reports: calls started in total and calls still in flight."""

    calls: int
    in_flight: int
    running: bool


class _Call:
    """One crossing: a coroutine run as an asyncio Task, whose end wakes one parked trio task."""

    __slots__ = ("asyncio_task", "coro", "delivered", "on_end", "raise_cancel", "token", "trio_task")

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        token: trio.lowlevel.TrioToken,
        trio_task: trio.lowlevel.Task,
        on_end: Callable[[_Call], None],
    ) -> None:
        self.coro = coro
        self.token = token
        self.trio_task = trio_task
        self.on_end = on_end
        self.asyncio_task: asyncio.Task[Any] | None = None
        # Set (on the trio thread) when trio asked to cancel; calling it raises trio.Cancelled (or
        # KeyboardInterrupt), which is what the parked task must see once the asyncio side has stopped.
        self.raise_cancel: Callable[[], Any] | None = None
        self.delivered = False

    # -- on the asyncio thread ------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop, stopping: bool) -> None:
        if stopping:
            self.coro.close()
            self.post(outcome.Error(BridgeClosed("asyncio thread is stopping")))
            return
        self.asyncio_task = loop.create_task(self.coro)
        self.asyncio_task.add_done_callback(self._task_done)

    def cancel(self) -> None:
        # start() always ran before this: both go through call_soon_threadsafe, which is FIFO.
        if self.asyncio_task is not None:
            self.asyncio_task.cancel()

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        result: outcome.Outcome[Any] | None
        if task.cancelled():
            result = None  # decided on the trio thread: trio.Cancelled if trio asked, else BridgeClosed
        elif (exc := task.exception()) is not None:
            result = outcome.Error(exc)
        else:
            result = outcome.Value(task.result())
        self.post(result)

    def post(self, result: outcome.Outcome[Any] | None) -> None:
        """Hand the result to the trio thread (safe from any thread)."""
        self.on_end(self)
        try:
            self.token.run_sync_soon(self.deliver, result)
        except trio.RunFinishedError:
            log.debug("trio run finished before an asyncio call ended; result dropped")

    # -- on the trio thread ---------------------------------------------------------------------

    def deliver(self, result: outcome.Outcome[Any] | None) -> None:
        if self.delivered:
            return
        self.delivered = True
        if result is None:
            if self.raise_cancel is not None:
                result = outcome.capture(self.raise_cancel)
            else:
                result = outcome.Error(BridgeClosed("asyncio thread stopped while the call was running"))
        trio.lowlevel.reschedule(self.trio_task, result)


class AsyncioThread:
    """An asyncio event loop running on a daemon thread, callable from trio with ``await run(...)``.

    ``start()``/``stop()`` are synchronous (usable outside trio); inside trio prefer
    ``async with open_asyncio_thread() as bridge:`` which stops it without blocking the trio loop.
    """

    def __init__(self, name: str = "s3files-asyncio") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._inflight: set[_Call] = set()
        self._closing = False  # no new calls once set (checked under _lock)
        self._stopping_on_loop = False  # read/written on the loop thread only
        self._calls = 0

    # -- life cycle ----------------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop (for code that must schedule on it directly, e.g. tests)."""
        if self._loop is None:
            raise BridgeClosed("asyncio thread is not running")
        return self._loop

    def start(self, timeout: float = 10.0) -> None:
        """Start the thread and wait (at most ``timeout`` seconds) until its loop runs."""
        if self._thread is not None:
            raise RuntimeError("AsyncioThread already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        thread = threading.Thread(target=self._main, args=(loop, ready), name=self._name, daemon=True)
        self._loop, self._thread = loop, thread
        thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"asyncio thread {self._name} did not start within {timeout} s")

    def _main(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            try:
                self._cancel_leftovers(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            except Exception:  # teardown must finish; a failure here only costs a log line
                log.exception("error while shutting down the asyncio loop")
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def _cancel_leftovers(self, loop: asyncio.AbstractEventLoop, timeout: float = 5.0) -> None:
        """Cancel tasks still running after stop (as asyncio.run does), waiting at most ``timeout``."""
        self._stopping_on_loop = True
        tasks = asyncio.all_tasks(loop)
        if not tasks:
            return
        log.debug("cancelling %d asyncio task(s) left at stop", len(tasks))
        for task in tasks:
            task.cancel()
        _, pending = loop.run_until_complete(asyncio.wait(tasks, timeout=timeout))
        if pending:
            log.warning("%d asyncio task(s) ignored cancellation at stop", len(pending))
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.debug("asyncio task ended with %r during stop", task.exception())

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop (cancelling leftover tasks) and join the thread, waiting at most ``timeout``.

        Safe to call twice. Blocks the calling thread: from trio use ``aclose()``.
        """
        with self._lock:
            self._closing = True
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        def _stop() -> None:
            self._stopping_on_loop = True
            loop.stop()

        try:
            loop.call_soon_threadsafe(_stop)
        except RuntimeError:  # loop already closed
            pass
        thread.join(timeout)
        if thread.is_alive():
            log.warning(
                "asyncio thread %s did not stop within %s s; leaving it (daemon)", self._name, timeout
            )
        self._loop = None
        # Any call whose asyncio side never ran (posted in the last instant) still owes its trio task a wake-up.
        with self._lock:
            orphans = list(self._inflight)
            self._inflight.clear()
        for call in orphans:
            call.post(outcome.Error(BridgeClosed("asyncio thread stopped before the call ran")))

    async def aclose(self) -> None:
        """Stop from trio: the blocking join runs on a worker thread so trio keeps delivering results."""
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.stop)

    def statistics(self) -> BridgeStatistics:
        with self._lock:
            in_flight = len(self._inflight)
        return BridgeStatistics(calls=self._calls, in_flight=in_flight, running=self._loop is not None)

    # -- crossing ------------------------------------------------------------------------------------

    def _forget(self, call: _Call) -> None:
        with self._lock:
            self._inflight.discard(call)

    async def run(self, async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``async_fn(*args)`` on the asyncio loop and return its result to this trio task.

        Exceptions re-raise here. If this trio task is cancelled, the asyncio task is cancelled and we
        wait for it to finish before trio.Cancelled propagates (so nothing keeps running behind our back);
        if it finished anyway, its result is returned and the cancellation arrives at the next checkpoint.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        coro = async_fn(*args)
        if not asyncio.iscoroutine(coro):
            raise TypeError(f"{async_fn!r} did not return a coroutine")
        call = _Call(coro, trio.lowlevel.current_trio_token(), trio.lowlevel.current_task(), self._forget)
        with self._lock:
            loop = self._loop
            if self._closing or loop is None:
                coro.close()
                raise BridgeClosed("asyncio thread is not running")
            self._inflight.add(call)
            self._calls += 1
        try:
            loop.call_soon_threadsafe(lambda: call.start(loop, self._stopping_on_loop))
        except RuntimeError:  # the loop closed between the check and the post
            self._forget(call)
            coro.close()
            raise BridgeClosed("asyncio thread is not running") from None

        def abort(raise_cancel: Callable[[], Any]) -> trio.lowlevel.Abort:
            call.raise_cancel = raise_cancel
            try:
                loop.call_soon_threadsafe(call.cancel)
            except RuntimeError:
                pass  # loop closed: stop() delivers BridgeClosed to every call still in flight
            # FAILED: we stay parked until the asyncio task has really ended; deliver() then raises
            # trio.Cancelled through raise_cancel.
            return trio.lowlevel.Abort.FAILED

        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result


@asynccontextmanager
async def open_asyncio_thread(name: str = "s3files-asyncio") -> AsyncIterator[AsyncioThread]:
    """An AsyncioThread started for the block and stopped (bounded) when it exits."""
    bridge = AsyncioThread(name)
    bridge.start()
    try:
        yield bridge
    finally:
        await bridge.aclose()
