"""The trio -> asyncio bridge: results, exceptions, cancellation that really reaches asyncio, concurrency."""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio
from conftest import run_trio

from s3files.store.bridge import AsyncioThread, BridgeClosed, open_asyncio_thread


async def _add(a: int, b: int) -> tuple[int, str]:
    await asyncio.sleep(0)
    return a + b, threading.current_thread().name


def test_result_crosses_back() -> None:
    async def main() -> None:
        async with open_asyncio_thread(name="bridge-test") as bridge:
            total, thread_name = await bridge.run(_add, 2, 3)
            assert total == 5
            assert thread_name == "bridge-test"  # it really ran on the loop thread
            assert bridge.statistics().in_flight == 0

    run_trio(main)


def test_exception_crosses_back() -> None:
    class Boom(Exception):
        pass

    async def fail() -> None:
        await asyncio.sleep(0)
        raise Boom("from asyncio")

    async def main() -> None:
        async with open_asyncio_thread() as bridge:
            with pytest.raises(Boom, match="from asyncio"):
                await bridge.run(fail)
            # The bridge still works after an exception.
            assert (await bridge.run(_add, 1, 1))[0] == 2

    run_trio(main)


def test_cancellation_cancels_the_asyncio_task() -> None:
    started = threading.Event()
    seen: list[str] = []

    async def slow() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        seen.append("finished")

    async def main() -> None:
        async with open_asyncio_thread() as bridge:
            with trio.move_on_after(5) as outer:
                async with trio.open_nursery() as nursery:
                    cancelled = trio.Event()

                    async def caller() -> None:
                        try:
                            await bridge.run(slow)
                        except trio.Cancelled:
                            # By the time trio.Cancelled arrives, asyncio has already seen its cancellation.
                            assert seen == ["cancelled"]
                            cancelled.set()
                            raise

                    nursery.start_soon(caller)
                    assert await trio.to_thread.run_sync(started.wait, 5)
                    nursery.cancel_scope.cancel()
                assert cancelled.is_set()
            assert not outer.cancelled_caught, "cancellation did not complete in time"
            assert bridge.statistics().in_flight == 0

    run_trio(main)
    assert seen == ["cancelled"]


def test_already_cancelled_scope_never_starts_the_coroutine() -> None:
    ran: list[bool] = []

    async def mark() -> None:
        ran.append(True)

    async def main() -> None:
        async with open_asyncio_thread() as bridge:
            with trio.CancelScope() as scope:
                scope.cancel()
                await bridge.run(mark)
            assert scope.cancelled_caught

    run_trio(main)
    assert ran == []


def test_many_concurrent_calls() -> None:
    async def echo(i: int) -> int:
        await asyncio.sleep(0.01)
        return i

    async def main() -> None:
        results: dict[int, int] = {}
        async with open_asyncio_thread() as bridge:

            async def one(i: int) -> None:
                results[i] = await bridge.run(echo, i)

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    for i in range(500):
                        nursery.start_soon(one, i)
            assert bridge.statistics().calls == 500
        assert results == {i: i for i in range(500)}

    run_trio(main)


def test_stop_with_a_call_in_flight_wakes_the_caller() -> None:
    started = threading.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(60)

    async def main() -> None:
        bridge = AsyncioThread()
        bridge.start()
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:

                async def caller() -> None:
                    with pytest.raises(BridgeClosed):
                        await bridge.run(forever)

                nursery.start_soon(caller)
                assert await trio.to_thread.run_sync(started.wait, 5)
                await bridge.aclose()
        with pytest.raises(BridgeClosed):
            await bridge.run(_add, 1, 2)
        assert not bridge.statistics().running

    run_trio(main)


def test_stop_is_idempotent_and_needs_no_trio() -> None:
    bridge = AsyncioThread()
    bridge.start()
    bridge.stop()
    bridge.stop()
