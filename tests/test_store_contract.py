"""ONE contract for every ObjectStore: the in-memory store, and the aiobotocore store against moto's server
and against Ceph RadosGW (a real S3 implementation, whose quirks the store must absorb).

A test here states S3's behaviour once; every store must pass it. Where a server lacks a feature (moto and
RGW 16 ignore conditions on CompleteMultipartUpload) the store makes up for it, never the test.
The last section holds S3-only cases (buckets, endpoints, credentials) that the memory store has no notion of.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from conftest import S3Server, run_trio
from faultproxy import FaultProxy, Request

from s3files.errors import (
    BucketNotFound,
    CredentialsError,
    EndpointUnreachable,
    ObjectNotFound,
    PreconditionFailed,
    StoreError,
    UploadNotFound,
)
from s3files.localserver import MotoServer, free_port, start_moto_server
from s3files.store import (
    CompletedPart,
    ListPage,
    MemoryStore,
    MultipartUpload,
    ObjectInfo,
    ObjectStore,
    listxml,
)
from s3files.store.s3 import LOST_UPLOAD_MARGIN, S3Store, create_bucket, lost_uploads, open_s3_store

T = TypeVar("T")
MiB = 1024 * 1024

OpenStore = Callable[[], AbstractAsyncContextManager[ObjectStore]]
WithStore = Callable[[Callable[[ObjectStore], Awaitable[Any]]], Any]


@asynccontextmanager
async def _open_memory_store() -> AsyncIterator[ObjectStore]:
    store = MemoryStore()
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture(params=["memory", "s3", "rgw"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_store(store_kind: str, request: pytest.FixtureRequest) -> OpenStore:
    """Opens a fresh store of the parametrized kind (inside the test's trio run)."""
    if store_kind == "memory":
        return _open_memory_store
    if store_kind == "rgw":
        rgw = request.getfixturevalue("rgw_server")
        name = f"contract-{uuid.uuid4().hex[:12]}"
        create_bucket(name, endpoint_url=rgw.endpoint_url, region="us-east-1")
        return lambda: open_s3_store(name, endpoint_url=rgw.endpoint_url, max_attempts=2)
    server: MotoServer = request.getfixturevalue("moto_server")
    bucket: str = request.getfixturevalue("bucket")
    # Two attempts: retries stay exercised, but a moto 500 (see test_multipart_abort) costs < 1 s of backoff.
    return lambda: open_s3_store(bucket, endpoint_url=server.endpoint_url, max_attempts=2)


@pytest.fixture
def with_store(open_store: OpenStore) -> WithStore:
    """``with_store(async_fn)`` runs ``async_fn(store)`` under trio with the store open, bounded in time."""

    def run(test: Callable[[ObjectStore], Awaitable[T]]) -> T:
        async def main() -> T:
            with trio.fail_after(30):
                async with open_store() as store:
                    return await test(store)

        return run_trio(main)

    return run


async def _put_many(store: ObjectStore, keys: list[str], data: bytes = b"x") -> None:
    """Create ``keys`` with bounded concurrency (fast on the HTTP store, harmless on the memory store)."""
    limiter = trio.CapacityLimiter(32)

    async def one(key: str) -> None:
        async with limiter:
            await store.put(key, data)

    async with trio.open_nursery() as nursery:
        for key in keys:
            nursery.start_soon(one, key)


async def _list_all(
    store: ObjectStore, prefix: str, max_keys: int, delimiter: str | None = "/"
) -> list[ListPage]:
    pages: list[ListPage] = []
    token: str | None = None
    for _ in range(1000):  # bounded: far more pages than any test makes
        page = await store.list_page(prefix, delimiter=delimiter, token=token, max_keys=max_keys)
        pages.append(page)
        token = page.next_token
        if token is None:
            return pages
    raise AssertionError("listing never ended")


def _multipart_etag(parts: list[bytes]) -> str:
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    return f"{digest}-{len(parts)}"


# --- the protocol itself ------------------------------------------------------------------------


def test_stores_satisfy_the_protocol(with_store: WithStore) -> None:
    async def test(store: ObjectStore) -> None:
        assert isinstance(store, ObjectStore)
        assert store.requests.total() == 0  # opening sends nothing

    with_store(test)


# --- head -------------------------------------------------------------------------------------------


def test_head_reports_size_etag_and_metadata(with_store: WithStore) -> None:
    async def test(store: ObjectStore) -> None:
        before = time.time()
        put = await store.put("dir/file", b"hello world", {"mode": "33188", "mtime": "1700000000.5"})
        info = await store.head("dir/file")
        assert info.key == "dir/file"
        assert info.size == 11
        assert info.etag == hashlib.md5(b"hello world").hexdigest()  # bare: no quotes
        assert '"' not in info.etag
        assert info.etag == put.etag
        assert info.metadata == {"mode": "33188", "mtime": "1700000000.5"}
        assert abs(info.last_modified - before) < 60
        assert put.size == 11 and put.metadata == {"mode": "33188", "mtime": "1700000000.5"}

    with_store(test)


def test_metadata_names_come_back_lowercase(with_store: WithStore) -> None:
    # S3 stores user-metadata names in lowercase (they are HTTP header names).
    async def test(store: ObjectStore) -> None:
        put = await store.put("k", b"", {"Mode": "1", "UID": "2"})
        assert put.metadata == {"mode": "1", "uid": "2"}
        assert (await store.head("k")).metadata == {"mode": "1", "uid": "2"}

    with_store(test)


def test_head_missing_key_is_object_not_found(with_store: WithStore) -> None:
    async def test(store: ObjectStore) -> None:
        with pytest.raises(ObjectNotFound):
            await store.head("no/such/key")

    with_store(test)


# --- get_range ---------------------------------------------------------------------------------------

DATA = bytes(range(256)) * 40  # 10,240 bytes, every offset distinguishable


def test_get_range_slices(with_store: WithStore) -> None:
    async def test(store: ObjectStore) -> None:
        await store.put("blob", DATA)
        assert await store.get_range("blob", 100, 300) == DATA[100:300]  # middle
        assert await store.get_range("blob", 10_000, 20_000) == DATA[10_000:]  # end clipped
        assert await store.get_range("blob", 0, len(DATA)) == DATA  # whole
        assert await store.get_range("blob", 0, 1) == DATA[:1]
        assert await store.get_range("blob", len(DATA) - 1, len(DATA)) == DATA[-1:]
        assert await store.get_range("blob", 50, 50) == b""  # empty range, not the whole object

    with_store(test)


def test_get_first_is_a_head_and_the_first_bytes_in_one_request(with_store: WithStore) -> None:
    async def test(store: ObjectStore) -> None:
        meta = {"mode": "33188", "uid": "1000"}
        put = await store.put("blob", DATA, meta)
        await store.put("empty", b"", meta)
        store.requests.reset()
        info, data = await store.get_first("blob", 4096)
        assert data == DATA[:4096]
        assert (info.key, info.size, info.etag, info.metadata) == ("blob", len(DATA), put.etag, meta)
        assert abs(info.last_modified - put.last_modified) < 2
        assert store.requests.snapshot() == {"get": 1}
        info, data = await store.get_first("blob", 100_000)  # all of a smaller object
        assert (data, info.size) == (DATA, len(DATA))
        info, data = await store.get_first("empty", 4096)  # no byte 0 to ask for: still described
        assert (data, info.size, info.metadata) == (b"", 0, meta)
        with pytest.raises(ObjectNotFound):
            await store.get_first("no/such/key", 4096)

    with_store(test)


def test_a_listing_and_a_head_give_the_same_time(with_store: WithStore) -> None:
    async def test(store: ObjectStore) -> None:
        await store.put("timed/a", b"x")
        (listed,) = (await store.list_page("timed/", "/")).objects
        head = await store.head("timed/a")
        info, _ = await store.get_first("timed/a", 10)
        assert listed.last_modified == head.last_modified == info.last_modified  # a changed mtime drops
        # the kernel's cached pages of the file

    with_store(test)


def test_get_range_of_empty_object_is_empty(with_store: WithStore) -> None:
    async def test(store: ObjectStore) -> None:
        await store.put("empty", b"")
        assert await store.get_range("empty", 0, 4096) == b""
        assert await store.get_range("empty", 0, 0) == b""

    with_store(test)


def test_get_range_past_the_end_is_an_error(with_store: WithStore) -> None:
    async def test(store: ObjectStore) -> None:
        await store.put("short", b"abc")
        with pytest.raises(StoreError) as caught:
            await store.get_range("short", 3, 10)
        assert not isinstance(caught.value, (ObjectNotFound, PreconditionFailed))

    with_store(test)


def test_get_range_missing_key_is_object_not_found(with_store: WithStore) -> None:
    async def test(store: ObjectStore) -> None:
        with pytest.raises(ObjectNotFound):
            await store.get_range("absent", 0, 10)

    with_store(test)


def test_get_range_if_match(with_store: WithStore) -> None:
    async def test(store: ObjectStore) -> None:
        info = await store.put("blob", DATA)
        assert await store.get_range("blob", 0, 10, if_match=info.etag) == DATA[:10]
        with pytest.raises(PreconditionFailed):
            await store.get_range("blob", 0, 10, if_match=hashlib.md5(b"other").hexdigest())
        empty = await store.put("empty", b"")
        assert await store.get_range("empty", 0, 10, if_match=empty.etag) == b""
        with pytest.raises(PreconditionFailed):
            await store.get_range("empty", 0, 10, if_match=info.etag)

    with_store(test)


# --- put ------------------------------------------------------------------------------------------------


def test_put_if_none_match(with_store: WithStore) -> None:
    async def test(store: ObjectStore) -> None:
        await store.put("new", b"first", if_none_match=True)
        with pytest.raises(PreconditionFailed):
            await store.put("new", b"second", if_none_match=True)
        assert await store.get_range("new", 0, 100) == b"first"

    with_store(test)


def test_put_if_match(with_store: WithStore) -> None:
    async def test(store: ObjectStore) -> None:
        first = await store.put("obj", b"one")
        second = await store.put("obj", b"two", if_match=first.etag)
        assert second.etag == hashlib.md5(b"two").hexdigest()
        with pytest.raises(PreconditionFailed):
            await store.put("obj", b"three", if_match=first.etag)  # stale etag
        assert await store.get_range("obj", 0, 100) == b"two"
        with pytest.raises(ObjectNotFound):
            await store.put("missing", b"x", if_match=first.etag)
        with pytest.raises(ObjectNotFound):
            await store.head("missing")

    with_store(test)


def test_put_overwrites_data_and_metadata(with_store: WithStore) -> None:
    async def test(store: ObjectStore) -> None:
        await store.put("obj", b"old", {"mode": "1"})
        await store.put("obj", b"newer")
        info = await store.head("obj")
        assert (info.size, info.metadata) == (5, {})

    with_store(test)


# --- list_page --------------------------------------------------------------------------------------------


def test_list_with_delimiter_groups_prefixes(
    with_store: WithStore, store_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[int] = []  # pages the S3 store's fast parser read (store/listxml.py), not botocore's
    real = listxml.parse_list
    monkeypatch.setattr(listxml, "parse_list", lambda body, ts: parsed.append(1) or real(body, ts))

    async def test(store: ObjectStore) -> None:
        await _put_many(store, ["a.txt", "d/", "d/x", "d/sub/y", "d/sub/z/w", "e/f", "top"])
        root = await store.list_page("")
        assert [o.key for o in root.objects] == ["a.txt", "top"]
        assert list(root.prefixes) == ["d/", "e/"]
        assert root.next_token is None
        assert all(o.metadata is None for o in root.objects)
        assert all('"' not in o.etag for o in root.objects)

        d = await store.list_page("d/")
        assert [(o.key, o.size) for o in d.objects] == [("d/", 1), ("d/x", 1)]
        assert list(d.prefixes) == ["d/sub/"]
        nested = await store.list_page("d/sub/")
        assert [o.key for o in nested.objects] == ["d/sub/y"]
        assert list(nested.prefixes) == ["d/sub/z/"]

        flat = await store.list_page("d/", delimiter=None)
        assert [o.key for o in flat.objects] == ["d/", "d/sub/y", "d/sub/z/w", "d/x"]
        assert list(flat.prefixes) == []

        after = await store.list_page("d/", delimiter=None, start_after="d/sub/y")
        assert [o.key for o in after.objects] == ["d/sub/z/w", "d/x"]
        assert len(parsed) == (0 if store_kind == "memory" else 5)

    with_store(test)


def test_list_empty(with_store: WithStore) -> None:
    async def test(store: ObjectStore) -> None:
        page = await store.list_page("nothing/")
        assert (list(page.objects), list(page.prefixes), page.next_token) == ([], [], None)

    with_store(test)


def test_list_pagination_across_prefixes_and_objects(with_store: WithStore) -> None:
    async def test(store: ObjectStore) -> None:
        keys = [f"p/f{i:02d}" for i in range(10)]
        keys += [f"p/g{i}/x{j}" for i in range(4) for j in range(3)]  # 4 prefixes with 3 keys each
        keys += [f"p/h{i:02d}" for i in range(5)]
        await _put_many(store, keys)
        pages = await _list_all(store, "p/", max_keys=3)
        objects = [o.key for page in pages for o in page.objects]
        prefixes = [p for page in pages for p in page.prefixes]
        assert objects == [f"p/f{i:02d}" for i in range(10)] + [f"p/h{i:02d}" for i in range(5)]
        assert prefixes == [f"p/g{i}/" for i in range(4)]
        assert all(len(page.objects) + len(page.prefixes) <= 3 for page in pages)
        assert len(pages) == 7  # 19 entries, 3 a page

    with_store(test)


def test_list_pagination_past_1000_keys(with_store: WithStore) -> None:
    # 1,001 keys, not more: moto spends ~5 ms of CPU per PUT, and one key past the cap proves the paging.
    async def test(store: ObjectStore) -> None:
        keys = [f"many/{i:05d}" for i in range(1001)]
        await _put_many(store, keys)
        pages = await _list_all(store, "many/", max_keys=1000)
        assert [len(page.objects) for page in pages] == [1000, 1]
        assert [o.key for page in pages for o in page.objects] == keys
        # S3 never returns more than 1000 keys a page, whatever was asked.
        big = await _list_all(store, "many/", max_keys=5000)
        assert [len(page.objects) for page in big] == [1000, 1]

    with_store(test)


# --- delete / copy ---------------------------------------------------------------------------------------


def test_delete_is_idempotent(with_store: WithStore) -> None:
    async def test(store: ObjectStore) -> None:
        await store.put("gone", b"x")
        await store.delete("gone")
        with pytest.raises(ObjectNotFound):
            await store.head("gone")
        await store.delete("gone")
        await store.delete("never/existed")

    with_store(test)


def test_copy_keeps_or_replaces_metadata(with_store: WithStore) -> None:
    async def test(store: ObjectStore) -> None:
        src = await store.put("src", b"payload", {"mode": "1", "uid": "5"})
        store.requests.reset()
        kept = await store.copy("src", "kept")
        assert store.requests.snapshot() == {"copy": 1}  # a rename is one copy + one delete, no HEAD
        head = await store.head("kept")
        assert (kept.key, kept.etag, head.etag, head.size) == ("kept", src.etag, src.etag, 7)
        assert head.metadata == {"mode": "1", "uid": "5"}
        replaced = await store.copy("src", "replaced", metadata={"mode": "2"})
        assert replaced.etag == (await store.head("replaced")).etag
        assert (await store.head("replaced")).metadata == {"mode": "2"}
        assert await store.get_range("replaced", 0, 100) == b"payload"
        assert (await store.head("src")).metadata == {"mode": "1", "uid": "5"}  # source untouched
        with pytest.raises(ObjectNotFound):
            await store.copy("no-such-src", "dst")

    with_store(test)


# --- multipart ----------------------------------------------------------------------------------------------


def test_multipart_upload(with_store: WithStore) -> None:
    parts_data = [os.urandom(5 * MiB), os.urandom(5 * MiB), b"tail"]

    async def test(store: ObjectStore) -> None:
        upload_id = await store.create_multipart("big", {"mode": "33188"})
        parts: list[CompletedPart] = []
        for number, chunk in enumerate(parts_data, start=1):
            part = await store.upload_part("big", upload_id, number, chunk)
            assert part.number == number and part.etag == hashlib.md5(chunk).hexdigest()
            parts.append(part)
        info = await store.complete_multipart("big", upload_id, parts)
        expected_etag = _multipart_etag(parts_data)
        assert (info.key, info.size, info.etag) == ("big", 10 * MiB + 4, expected_etag)
        assert info.metadata == {"mode": "33188"}
        head = await store.head("big")
        assert (head.size, head.etag, head.metadata) == (10 * MiB + 4, expected_etag, {"mode": "33188"})
        whole = b"".join(parts_data)
        assert await store.get_range("big", 0, len(whole)) == whole
        assert await store.get_range("big", 5 * MiB - 2, 5 * MiB + 2) == whole[5 * MiB - 2 : 5 * MiB + 2]
        assert store.requests["upload_part"] == 3
        assert store.requests["complete_multipart"] == 1

    with_store(test)


def test_upload_part_from_a_local_file(with_store: WithStore, tmp_path: Path) -> None:
    """Parts sent from ranges of a local file (the write cache's copy) make the object those bytes make;
    the file may be closed by the caller as soon as the call returns; a short file is an error."""
    content = os.urandom(11 * MiB + 3)
    local = tmp_path / "copy"
    local.write_bytes(content)

    async def test(store: ObjectStore) -> None:
        upload_id = await store.create_multipart("from-file")
        fd = os.open(local, os.O_RDONLY)
        try:
            first = await store.upload_part_from("from-file", upload_id, 1, fd, 0, 5 * MiB)
            second = await store.upload_part_from("from-file", upload_id, 2, fd, 5 * MiB, len(content) - 5 * MiB)
            with pytest.raises(StoreError):
                await store.upload_part_from("from-file", upload_id, 3, fd, 6 * MiB, len(content))
        finally:
            os.close(fd)
        assert first.etag == hashlib.md5(content[: 5 * MiB]).hexdigest()
        assert second.etag == hashlib.md5(content[5 * MiB :]).hexdigest()
        info = await store.complete_multipart("from-file", upload_id, [first, second])
        assert info.size == len(content)
        assert await store.get_range("from-file", 0, len(content)) == content
        assert store.requests["upload_part"] == 2  # the short one was refused before any request

    with_store(test)


def test_upload_part_copy_reuses_ranges_of_a_pinned_version(with_store: WithStore) -> None:
    old = os.urandom(6 * MiB) + b"0123456789"

    async def test(store: ObjectStore) -> None:
        first = await store.put("src", old, {"mode": "33188"})
        upload_id = await store.create_multipart("src", {"mode": "33188"})
        copied = await store.upload_part_copy("src", upload_id, 1, "src", 0, 6 * MiB, if_match=first.etag)
        assert copied.etag == hashlib.md5(old[: 6 * MiB]).hexdigest()
        tail = await store.upload_part("src", upload_id, 2, b"new tail")
        info = await store.complete_multipart("src", upload_id, [copied, tail], if_match=first.etag)
        expected = old[: 6 * MiB] + b"new tail"
        assert info.size == len(expected)
        assert await store.get_range("src", 0, len(expected) + 10) == expected
        assert store.requests["upload_part_copy"] == 1
        # The source changed since: a copy pinned to the old version is refused, nothing mixed in.
        upload_id = await store.create_multipart("other")
        with pytest.raises(PreconditionFailed):
            await store.upload_part_copy("other", upload_id, 1, "src", 0, 5 * MiB, if_match=first.etag)
        await store.abort_multipart("other", upload_id)

    with_store(test)


def test_multipart_abort(with_store: WithStore) -> None:
    async def test(store: ObjectStore) -> None:
        upload_id = await store.create_multipart("aborted")
        await store.upload_part("aborted", upload_id, 1, b"data")
        await store.abort_multipart("aborted", upload_id)
        with pytest.raises(ObjectNotFound):
            await store.head("aborted")
        await store.abort_multipart("aborted", upload_id)  # already gone: fine
        # S3 says 404 NoSuchUpload; moto 5.2.5 answers 500 (KeyError) - a StoreError either way.
        with pytest.raises(StoreError):
            await store.upload_part("aborted", upload_id, 2, b"late")

    with_store(test)


def test_multipart_small_middle_part_is_refused(with_store: WithStore) -> None:
    # Every part but the last must be at least 5 MiB; the uploader must never rely on less.
    async def test(store: ObjectStore) -> None:
        upload_id = await store.create_multipart("small")
        parts = [await store.upload_part("small", upload_id, n, b"tiny") for n in (1, 2)]
        with pytest.raises(StoreError):
            await store.complete_multipart("small", upload_id, parts)
        await store.abort_multipart("small", upload_id)

    with_store(test)


def test_multipart_if_none_match(with_store: WithStore) -> None:
    async def test(store: ObjectStore) -> None:
        await store.put("exists", b"x")
        upload_id = await store.create_multipart("exists")
        part = await store.upload_part("exists", upload_id, 1, b"y")
        with pytest.raises(PreconditionFailed):
            await store.complete_multipart("exists", upload_id, [part], if_none_match=True)
        await store.abort_multipart("exists", upload_id)
        assert await store.get_range("exists", 0, 10) == b"x"

    with_store(test)


def test_multipart_if_match(with_store: WithStore) -> None:

    async def test(store: ObjectStore) -> None:
        old = await store.put("target", b"old")
        upload_id = await store.create_multipart("target")
        part = await store.upload_part("target", upload_id, 1, b"new")
        with pytest.raises(PreconditionFailed):
            await store.complete_multipart(
                "target", upload_id, [part], if_match=hashlib.md5(b"?").hexdigest()
            )
        info = await store.complete_multipart("target", upload_id, [part], if_match=old.etag)
        assert info.etag == _multipart_etag([b"new"])

    with_store(test)


def test_a_finished_upload_is_upload_not_found(with_store: WithStore, store_kind: str) -> None:
    """Parts for, or completion of, an upload that was aborted: UploadNotFound (S3's NoSuchUpload; RGW 16's
    500 for a completion), which the core tells from other failures. moto 5.2.6 answers 500: a StoreError."""
    expected = StoreError if store_kind == "s3" else UploadNotFound

    async def test(store: ObjectStore) -> None:
        upload_id = await store.create_multipart("gone")
        part = await store.upload_part("gone", upload_id, 1, b"data")
        await store.abort_multipart("gone", upload_id)
        with pytest.raises(expected):
            await store.complete_multipart("gone", upload_id, [part])
        with pytest.raises(expected):
            await store.upload_part("gone", upload_id, 1, b"data")

    with_store(test)


def test_list_multipart_uploads(with_store: WithStore, store_kind: str) -> None:
    async def test(store: ObjectStore) -> None:
        before = time.time()
        first = await store.create_multipart("up/a")
        second = await store.create_multipart("up/a")
        other = await store.create_multipart("up/b")
        outside = await store.create_multipart("upx")
        after = time.time()
        listed = await store.list_multipart_uploads("up/")
        assert all(isinstance(upload, MultipartUpload) for upload in listed)
        # By key; one key's uploads by initiation time (RGW: by upload id).
        assert [upload.key for upload in listed] == ["up/a", "up/a", "up/b"]
        assert {listed[0].upload_id, listed[1].upload_id} == {first, second} and listed[2].upload_id == other
        if store_kind != "s3":  # moto reports every upload as initiated 2010-11-10T20:48:33Z
            assert all(before - 5 <= upload.initiated <= after + 5 for upload in listed)
        part = await store.upload_part("up/b", other, 1, b"x")
        await store.complete_multipart("up/b", other, [part])
        await store.abort_multipart("up/a", first)
        assert [upload.upload_id for upload in await store.list_multipart_uploads("up/")] == [second]
        assert {upload.upload_id for upload in await store.list_multipart_uploads("")} == {second, outside}
        assert await store.list_multipart_uploads("nothing/") == []
        assert store.requests["list_multipart_uploads"] == 4
        await store.abort_multipart("up/a", second)
        await store.abort_multipart("upx", outside)
        assert await store.list_multipart_uploads("") == []

    with_store(test)


# --- request counting ---------------------------------------------------------------------------------------


def test_request_counts(with_store: WithStore) -> None:
    async def test(store: ObjectStore) -> None:
        await store.put("k", b"abc")
        assert store.requests.snapshot() == {"put": 1}
        store.requests.reset()
        await store.head("k")
        assert store.requests["head"] == 1 and store.requests.total() == 1
        await store.get_range("k", 0, 2)
        await store.list_page("")
        await store.delete("k")
        await store.check_bucket()
        assert store.requests.snapshot() == {"head": 1, "get": 1, "list": 1, "delete": 1, "head_bucket": 1}
        with pytest.raises(ObjectNotFound):
            await store.head("k")
        assert store.requests["head"] == 2  # failed requests count too

    with_store(test)


# --- S3 only: buckets, endpoints, credentials ----------------------------------------------------------------


def test_check_bucket_missing_bucket(moto_server: MotoServer) -> None:
    async def main() -> None:
        async with open_s3_store("no-such-bucket-here", endpoint_url=moto_server.endpoint_url) as store:
            with pytest.raises(BucketNotFound, match="no-such-bucket-here"):
                await store.check_bucket()
            with pytest.raises(BucketNotFound, match="no-such-bucket-here"):
                await store.list_page("")

    run_trio(main)


def test_unreachable_endpoint_fails_fast() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    async def main() -> S3Store:
        async with open_s3_store("bucket", endpoint_url=endpoint, max_attempts=2) as store:
            with pytest.raises(EndpointUnreachable, match="cannot reach S3 endpoint"):
                await store.check_bucket()
            store.requests.reset()
            with pytest.raises(EndpointUnreachable, match=endpoint):
                await store.head("key")
            assert store.requests["head"] == 2  # every attempt (retries) is counted
            return store

    started = time.monotonic()
    run_trio(main)
    assert time.monotonic() - started < 10


def test_silent_endpoint_does_not_hang_check_bucket() -> None:
    """A server that accepts connections and never answers: check_bucket gives up within its timeouts."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes handshakes; nobody ever reads or answers
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"

        async def main() -> None:
            async with open_s3_store("bucket", endpoint_url=endpoint, request_timeout=1.0) as store:
                with pytest.raises(EndpointUnreachable, match="did not answer"):
                    await store.check_bucket()

        started = time.monotonic()
        run_trio(main)
        assert time.monotonic() - started < 8


@pytest.fixture(scope="module")
def moto_auth_server(fake_aws_credentials: None) -> Any:
    server = start_moto_server(auth=True)
    try:
        yield server
    finally:
        server.stop()


def test_rejected_credentials(
    moto_auth_server: MotoServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "never-shown-secret-4f2a"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    caplog.set_level(logging.DEBUG, logger="s3files")

    async def main() -> None:
        async with open_s3_store("any-bucket", endpoint_url=moto_auth_server.endpoint_url) as store:
            with pytest.raises(CredentialsError, match="InvalidAccessKeyId") as caught:
                await store.check_bucket()
            message = str(caught.value)
            assert message.startswith(f"credentials rejected by {moto_auth_server.endpoint_url}")
            assert "\n" not in message
            with pytest.raises(CredentialsError):
                await store.put("key", b"x")

    run_trio(main)
    assert secret not in caplog.text


def test_missing_credentials(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # do not wait for an instance role

    async def main() -> None:
        async with open_s3_store("any-bucket", endpoint_url=moto_server.endpoint_url) as store:
            with pytest.raises(CredentialsError, match="credentials"):
                await store.check_bucket()
            assert store.requests.total() == 0  # nothing could be signed, so nothing was sent

    run_trio(main)


def test_s3_store_etags_are_bare_on_the_wire(moto_server: MotoServer, bucket: str, boto3_client: Any) -> None:
    """Out-of-band check that what S3 stores matches what the store reports (and moto quotes its ETags)."""
    boto3_client.put_object(Bucket=bucket, Key="k", Body=b"abc", Metadata={"mode": "1"})
    raw = boto3_client.head_object(Bucket=bucket, Key="k")["ETag"]
    assert raw.startswith('"')

    async def main() -> ObjectInfo:
        async with open_s3_store(bucket, endpoint_url=moto_server.endpoint_url) as store:
            return await store.head("k")

    info = run_trio(main)
    assert info.etag == raw.strip('"') and info.metadata == {"mode": "1"}


# --- S3 only: servers that behave like Ceph RGW (simulated on moto by rewriting replies) ----------------------


def _client_error(status: int, code: str, operation: str) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


def test_rgw_412_for_if_match_on_missing_key_is_object_not_found(
    moto_server: MotoServer, bucket: str
) -> None:
    """RGW answers If-Match on a missing key with 412 where AWS says 404: callers must see ObjectNotFound."""
    sent_if_match: list[str] = []

    async def main() -> None:
        async with open_s3_store(bucket, endpoint_url=moto_server.endpoint_url) as store:
            store._direct = None  # aiobotocore's way (the direct one: tests/test_direct.py, also on RGW)
            client = store._client
            real_put = client.put_object

            async def rgw_put(**kwargs: Any) -> Any:
                if "IfMatch" in kwargs:
                    raise _client_error(412, "PreconditionFailed", "PutObject")
                return await real_put(**kwargs)

            def capture(request: Any, **_: Any) -> None:
                value = request.headers.get("If-Match")
                if value is not None:
                    sent_if_match.append(value.decode() if isinstance(value, bytes) else value)

            info = await store.put("exists", b"x")
            await store.put("exists", b"y", if_match=info.etag)  # the real server, bare ETag on the wire
            client.meta.events.register("before-send.s3.PutObject", capture)
            client.put_object = rgw_put
            with pytest.raises(ObjectNotFound):
                await store.put("missing", b"x", if_match=info.etag)
            with pytest.raises(PreconditionFailed):
                await store.put("exists", b"z", if_match=info.etag)
            client.put_object = real_put
            await store.put("exists", b"w", if_match=hashlib.md5(b"y").hexdigest())

    run_trio(main)
    assert sent_if_match == [hashlib.md5(b"y").hexdigest()]  # bare, as RGW 16 requires


def test_rgw_empty_etag_from_complete_is_replaced_by_head(moto_server: MotoServer, bucket: str) -> None:
    async def main() -> None:
        async with open_s3_store(bucket, endpoint_url=moto_server.endpoint_url) as store:
            client = store._client
            real_complete = client.complete_multipart_upload

            async def rgw_complete(**kwargs: Any) -> Any:
                response = await real_complete(**kwargs)
                response["ETag"] = ""
                return response

            client.complete_multipart_upload = rgw_complete
            upload_id = await store.create_multipart("k", {"mode": "1"})
            part = await store.upload_part("k", upload_id, 1, b"abc")
            store.requests.reset()
            info = await store.complete_multipart("k", upload_id, [part])
            assert info.etag == _multipart_etag([b"abc"])
            assert (info.size, info.metadata) == (3, {"mode": "1"})
            assert store.requests.snapshot() == {"complete_multipart": 1, "head": 1}

    run_trio(main)


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-28T04:47:14.123Z",
        "2026-11-28T04:47:14Z",
        "2026-11-28T04:47:14.123456789Z",
        "2026-11-28T04:47:14+02:00",
        "Sat, 28 Nov 2026 04:47:14 GMT",
        "1700000000",
        "1700000000.25",
    ],
)
def test_fast_timestamp_parser_agrees_with_botocore(value: str) -> None:
    import botocore.utils

    from s3files.store.s3 import parse_timestamp

    assert parse_timestamp(value) == botocore.utils.parse_timestamp(value)
    assert parse_timestamp(value).tzinfo is not None


def test_list_multipart_uploads_reads_every_page(moto_server: MotoServer, bucket: str) -> None:
    """moto never pages ListMultipartUploads: its answer is cut into pages of two here, as AWS pages it."""
    seen: list[dict[str, Any]] = []

    async def main() -> None:
        async with open_s3_store(bucket, endpoint_url=moto_server.endpoint_url) as store:
            real = store._client.list_multipart_uploads

            async def paged(**kwargs: Any) -> Any:
                seen.append({k: v for k, v in kwargs.items() if k != "Bucket"})
                response = await real(**{k: v for k, v in kwargs.items() if not k.endswith("Marker")})
                uploads = response.get("Uploads", [])
                start = 0
                if "KeyMarker" in kwargs:
                    marker = (kwargs["KeyMarker"], kwargs.get("UploadIdMarker"))
                    start = [(u["Key"], u["UploadId"]) for u in uploads].index(marker) + 1
                page = uploads[start : start + 2]
                response["Uploads"] = page
                response["IsTruncated"] = start + 2 < len(uploads)
                if response["IsTruncated"]:
                    response["NextKeyMarker"], response["NextUploadIdMarker"] = page[-1]["Key"], page[-1]["UploadId"]
                return response

            store._client.list_multipart_uploads = paged
            made = [await store.create_multipart(f"p/{n}") for n in range(5)]
            listed = await store.list_multipart_uploads("p/")
            assert [upload.upload_id for upload in listed] == made
            assert store.requests["list_multipart_uploads"] == 3

            async def stuck(**kwargs: Any) -> Any:
                response = await paged(**{k: v for k, v in kwargs.items() if not k.endswith("Marker")})
                return response

            store._client.list_multipart_uploads = stuck
            with pytest.raises(StoreError, match="did not advance"):
                await store.list_multipart_uploads("p/")
            for n, upload_id in enumerate(made):
                await store.abort_multipart(f"p/{n}", upload_id)

    run_trio(main)
    assert seen[:3] == [
        {"Prefix": "p/"},
        {"Prefix": "p/", "KeyMarker": "p/1", "UploadIdMarker": seen[1]["UploadIdMarker"]},
        {"Prefix": "p/", "KeyMarker": "p/3", "UploadIdMarker": seen[2]["UploadIdMarker"]},
    ]


# --- lost replies: S3 applied the request, the reply never came (tests/faultproxy.py) --------------------------


def test_lost_uploads_are_those_initiated_since_the_first_attempt() -> None:
    """Which uploads a retried CreateMultipartUpload takes for the ones its lost replies made."""
    t0 = 1_000_000.0  # our clock when the first attempt left
    skew = 3600.0  # the server's clock runs an hour ahead of ours: Initiated and Date are by its clock

    def up(key: str, upload_id: str, initiated: float) -> MultipartUpload:
        return MultipartUpload(key, upload_id, initiated + skew)

    uploads = [
        up("k", "old", t0 - 60),  # an older orphan (a crash's upload, for recovery to judge): kept
        up("k", "lost1", t0 + 0.01),
        up("k", "lost2", t0 + 0.8),
        up("k", "live", t0 + 0.5),  # in progress through this store
        up("k", "answered", t0 + 1.5),
        up("k", "later", t0 + 1.6),  # after the answered one: another writer's
        up("k2", "other-key", t0 + 1.0),
    ]
    # The answer came at t0 + 1.6 by our clock; its Date header said the server's whole second.
    server_now, client_now = float(int(t0 + 1.6 + skew)), t0 + 1.6
    picked = lost_uploads(uploads, "k", "answered", t0, server_now, client_now, {"live", "answered"})
    assert [u.upload_id for u in picked] == ["lost1", "lost2"]
    # No upload answered (every attempt failed): the window ends at the server's present.
    picked = lost_uploads(uploads, "k", None, t0, server_now, client_now, {"live"})
    assert [u.upload_id for u in picked] == ["lost1", "lost2", "answered", "later"]
    # Just inside and just outside the margin before the first attempt.
    edge = [up("k", "in", t0 - LOST_UPLOAD_MARGIN + 1.0), up("k", "out", t0 - LOST_UPLOAD_MARGIN - 1.5)]
    picked = lost_uploads([*edge, uploads[4]], "k", "answered", t0, server_now, client_now, set())
    assert [u.upload_id for u in picked] == ["in"]
    # A server whose Initiated does not follow its clock (moto: one fixed date): every other upload of the
    # key not live here is a candidate (the caller still spares any that has parts).
    frozen = [MultipartUpload("k", name, 1289422113.0) for name in ("a", "answered", "live", "b")]
    picked = lost_uploads(frozen, "k", "answered", t0, server_now, client_now, {"live", "answered"})
    assert [u.upload_id for u in picked] == ["a", "b"]


@pytest.fixture
def lossy(s3_server: S3Server) -> Any:
    """A fault proxy in front of ``s3_server`` (moto, then RGW), no faults set yet."""
    with FaultProxy(s3_server.endpoint_url) as proxy:
        yield proxy


def _through(proxy: FaultProxy, bucket: str, max_attempts: int = 4) -> Any:
    return open_s3_store(bucket, endpoint_url=proxy.endpoint_url, max_attempts=max_attempts)


def _uploads_left(client: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


class FirstOf:
    """A drop_reply_when predicate: the first request of each of ``operations``, and no other."""

    def __init__(self, *operations: str) -> None:
        self.pending = set(operations)

    def __call__(self, request: Request) -> bool:
        if request.operation in self.pending:
            self.pending.discard(request.operation)
            return True
        return False


def test_a_lost_create_multipart_reply_leaves_no_orphan(
    lossy: FaultProxy, s3_bucket: str, s3_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="s3files.store")
    lossy.set_faults(drop_reply_every=2, drop_reply_when="CreateMultipartUpload")
    # Another writer's upload of the same key, with a part: someone knows its id, so it is not ours.
    theirs = s3_client.create_multipart_upload(Bucket=s3_bucket, Key="k")["UploadId"]
    s3_client.upload_part(Bucket=s3_bucket, Key="k", UploadId=theirs, PartNumber=1, Body=b"theirs")

    async def main() -> str:
        async with _through(lossy, s3_bucket) as store:
            first = await store.create_multipart("k")  # answered (it stays: in progress here)
            store.requests.reset()
            second = await store.create_multipart("k")  # reply dropped; the retry's answer is returned
            requests = store.requests.snapshot()
            # The parts of the lost upload (none) and, when its time is in the window, of the other writer's.
            assert requests.pop("list_parts") in (1, 2)
            assert requests == {"create_multipart": 2, "list_multipart_uploads": 1, "abort_multipart": 1}
            part = await store.upload_part("k", second, 1, b"ours")
            await store.complete_multipart("k", second, [part])
            return first

    first = run_trio(main)
    assert lossy.stats.snapshot()["faults"] == {"drop_reply": 1}
    left = {u["UploadId"] for u in s3_client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"]}
    assert left == {first, theirs}
    assert s3_client.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"ours"
    assert "made by an attempt whose reply was lost" in caplog.text
    for upload_id in left:
        s3_client.abort_multipart_upload(Bucket=s3_bucket, Key="k", UploadId=upload_id)


def test_lost_replies_to_idempotent_requests_are_harmless(
    lossy: FaultProxy, s3_bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    """The first reply of each kind of request is lost after S3 applied it: every call still returns what
    it should (retried by botocore; the direct path's requests fall back to it), nothing is left over."""
    operations = (
        "PutObject",
        "GetObject",
        "HeadObject",
        "ListObjectsV2",
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPartCopy",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
        "DeleteObject",
    )
    lossy.set_faults(drop_reply_every=1, drop_reply_when=FirstOf(*operations))
    local = tmp_path / "part"
    first_part = os.urandom(5 * MiB)
    local.write_bytes(first_part)

    async def main() -> dict[str, int]:
        async with _through(lossy, s3_bucket) as store:
            assert store._direct is not None and store._direct.enabled  # small PUTs, GETs, parts go direct
            put = await store.put("small", b"small object", {"mode": "33188"})
            assert put.etag == hashlib.md5(b"small object").hexdigest()
            assert await store.get_range("small", 0, 5) == b"small"
            assert (await store.head("small")).metadata == {"mode": "33188"}
            assert [o.key for o in (await store.list_page("")).objects] == ["small"]
            upload_id = await store.create_multipart("big", {"mode": "1"})
            fd = os.open(local, os.O_RDONLY)
            try:
                one = await store.upload_part_from("big", upload_id, 1, fd, 0, len(first_part))
            finally:
                os.close(fd)
            two = await store.upload_part_copy("big", upload_id, 2, "small", 0, 5)
            try:
                info = await store.complete_multipart("big", upload_id, [one, two])
            except UploadNotFound:  # the retry met the upload our first attempt completed (RGW)
                info = await store.head("big")
            assert info.etag == _multipart_etag([first_part, b"small"])
            abandoned = await store.create_multipart("abandoned")
            await store.abort_multipart("abandoned", abandoned)
            await store.delete("small")
            with pytest.raises(ObjectNotFound):
                await store.head("small")
            return store.requests.snapshot()

    requests = run_trio(main)
    stats = lossy.stats.snapshot()
    assert stats["faults_by_operation"] == {("drop_reply", op): 1 for op in operations}
    assert requests["put"] == 2 and requests["upload_part"] == 2  # direct, then again through aiobotocore
    assert s3_client.get_object(Bucket=s3_bucket, Key="big")["Body"].read() == first_part + b"small"
    assert [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])] == ["big"]
    assert _uploads_left(s3_client, s3_bucket) == []


def test_every_13th_reply_lost_leaves_no_orphan_and_every_object_right(
    lossy: FaultProxy, s3_bucket: str, s3_client: Any
) -> None:
    """200 multipart uploads (create, part, complete) and 100 small PUTs at once, every 13th reply of
    any request dropped after S3 applied it: no error, no upload left behind, every object's bytes."""
    lossy.set_faults(drop_reply_every=13)
    multipart = {f"mp/{n:03}": os.urandom(1 + n * 97) for n in range(200)}
    small = {f"put/{n:03}": os.urandom(1 + n * 31) for n in range(100)}

    async def upload(store: S3Store, key: str, data: bytes) -> None:
        upload_id = await store.create_multipart(key, {"key": key})
        part = await store.upload_part(key, upload_id, 1, data)
        try:
            info = await store.complete_multipart(key, upload_id, [part])
        except UploadNotFound:
            # The retry met the upload our lost first attempt completed (AWS and moto answer it with
            # success instead): the core recognises its own attempt by the metadata; here, by the ETag.
            info = await store.head(key)
        assert info.etag == _multipart_etag([data]) and info.size == len(data)

    async def put(store: S3Store, key: str, data: bytes) -> None:
        info = await store.put(key, data)
        assert info.etag == hashlib.md5(data).hexdigest()

    async def main() -> None:
        limiter = trio.CapacityLimiter(16)
        async with _through(lossy, s3_bucket) as store:

            async def one(job: Callable[[S3Store, str, bytes], Awaitable[None]], key: str, data: bytes) -> None:
                async with limiter:
                    await job(store, key, data)

            with trio.fail_after(120):
                async with trio.open_nursery() as nursery:
                    for key, data in multipart.items():
                        nursery.start_soon(one, upload, key, data)
                    for key, data in small.items():
                        nursery.start_soon(one, put, key, data)

    run_trio(main)
    stats = lossy.stats.snapshot()
    faults: Any = stats["faults_by_operation"]
    assert stats["faults"]["drop_reply"] >= 50  # type: ignore[index]
    assert faults.get(("drop_reply", "CreateMultipartUpload"), 0) > 0
    assert faults.get(("drop_reply", "CompleteMultipartUpload"), 0) > 0
    assert _uploads_left(s3_client, s3_bucket) == []
    for key, data in {**multipart, **small}.items():
        assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == data, key


def test_a_create_multipart_that_never_got_a_reply(
    lossy: FaultProxy, s3_bucket: str, s3_client: Any, s3_server: S3Server
) -> None:
    """Every attempt's reply lost: EndpointUnreachable, and the uploads those attempts made are aborted where
    the server's times say which they are (RGW, AWS); moto's do not, so there they stay."""
    lossy.set_faults(drop_reply_every=1, drop_reply_when="CreateMultipartUpload")

    async def main() -> dict[str, int]:
        async with _through(lossy, s3_bucket, max_attempts=2) as store:
            with pytest.raises(EndpointUnreachable):
                await store.create_multipart("k")
            return store.requests.snapshot()

    requests = run_trio(main)
    assert requests["create_multipart"] == 2 and requests["list_multipart_uploads"] == 1
    left = _uploads_left(s3_client, s3_bucket)
    if s3_server.kind == "moto":
        assert left == ["k", "k"]
        for upload in s3_client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"]:
            s3_client.abort_multipart_upload(Bucket=s3_bucket, Key="k", UploadId=upload["UploadId"])
    else:
        assert left == [] and requests["abort_multipart"] == 2


def test_503s_and_resets_are_retried(lossy: FaultProxy, s3_bucket: str, s3_client: Any) -> None:
    """Every 3rd request answered 503 SlowDown and every 5th connection reset before forwarding: nothing
    reached S3 twice or not at all; every call returns, every object is right, no upload is left."""
    lossy.set_faults(fail_every=3, reset_every=5)
    bodies = {f"f/{n:02}": os.urandom(100 + n) for n in range(30)}

    async def main() -> None:
        async with _through(lossy, s3_bucket) as store:
            for key, data in bodies.items():
                await store.put(key, data)
            upload_id = await store.create_multipart("mp")
            part = await store.upload_part("mp", upload_id, 1, b"part")
            await store.complete_multipart("mp", upload_id, [part])
            assert await store.get_range("f/07", 0, 1000) == bodies["f/07"]
            await store.delete("f/00")

    run_trio(main)
    faults: Any = lossy.stats.snapshot()["faults"]
    assert faults["fail"] >= 10 and faults["reset"] >= 5
    assert _uploads_left(s3_client, s3_bucket) == []
    assert s3_client.get_object(Bucket=s3_bucket, Key="mp")["Body"].read() == b"part"
    for key, data in bodies.items():
        if key != "f/00":
            assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == data
