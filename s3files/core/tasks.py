"""Running a few coroutines at once under trio, with errors that keep their errno.

Owns: ``run_all``. Why: a trio nursery wraps a child's exception in an ExceptionGroup, which the FUSE
adapter can only turn into EIO; a store error (ENOENT, ESTALE, ENOSPC...) must reach the caller as itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import trio


async def run_all(calls: Iterable[Callable[[], Awaitable[object]]]) -> None:
    """Await every call concurrently. The first to fail cancels the others and is raised unwrapped."""
    failures: list[Exception] = []

    async def one(call: Callable[[], Awaitable[object]], scope: trio.CancelScope) -> None:
        try:
            await call()
        except Exception as exc:
            failures.append(exc)
            scope.cancel()

    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(one, call, nursery.cancel_scope)
    if failures:
        raise failures[0]
