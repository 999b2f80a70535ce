"""Running coroutines concurrently under trio, with errors that keep their errno.

Owns: ``run_all`` (a few calls at once), ``for_each`` (many items, a bounded number at a time) and the
``Spawn`` type (how rooms start background work on the mount's nursery). Why: a
trio nursery wraps a child's exception in an ExceptionGroup, which the FUSE adapter can only turn into
EIO; a store error (ENOENT, ESTALE, ENOSPC...) must reach the caller as itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import trio

from s3files.errors import S3FilesError

T = TypeVar("T")
Spawn = Callable[[Callable[[], Awaitable[None]]], None]  # a nursery's start_soon
CONCURRENCY = 16  # requests in flight at once for a bulk operation (folder copies, deletes, HEADs)


async def run_all(calls: Iterable[Callable[[], Awaitable[object]]]) -> None:
    """Await every call concurrently. The first to fail cancels the others and is raised unwrapped.
    None or one call is awaited here, without a nursery (the common case on every small write)."""
    calls = list(calls)
    if len(calls) <= 1:
        for call in calls:
            await call()
        return
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


async def for_each(
    items: Iterable[T], fn: Callable[[T], Awaitable[object]], limit: int = CONCURRENCY
) -> None:
    """Await ``fn(item)`` for every item, ``limit`` at a time. The first S3FilesError stops the rest from
    starting and is raised as itself (not in an exception group), so callers still map it to an errno."""
    pending = iter(items)
    failed: list[S3FilesError] = []

    async def worker() -> None:
        for item in pending:  # shared by the workers; ends when the items do
            if failed:
                return
            try:
                await fn(item)
            except S3FilesError as exc:
                failed.append(exc)
                return

    async with trio.open_nursery() as nursery:
        for _ in range(limit):
            nursery.start_soon(worker)
    if failed:
        raise failed[0]
