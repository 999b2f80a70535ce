"""Whole folders in S3: every key under a prefix, moved to another prefix (folder rename).

Owns: listing a folder's subtree (no delimiter), the copy-all-then-delete-all order of a folder move, the
rule that tells a retried move from a rename onto a real non-empty folder, and running many requests at
a bounded concurrency (tasks.for_each). Must not touch inodes or caches (fs.py does).

Why copy all, then delete all: S3 has no rename, and a crash can stop a move anywhere. With this order a
crash leaves every key at the source (copies partly made) or every key at the destination (sources partly
deleted), never a key in neither place; running the same rename again finishes it, because a destination
that "looks like an interrupted copy" of the source is accepted (see ``interrupted_copy``).
"""

from __future__ import annotations

from s3files.core.links import copy_object
from s3files.core.tasks import for_each
from s3files.errors import NotEmpty, NotFound
from s3files.store.base import ObjectInfo, ObjectStore

MAX_LIST_PAGES = 1_000_000  # a bound on any listing loop: 10^9 keys


async def list_tree(store: ObjectStore, prefix: str) -> dict[str, ObjectInfo]:
    """Every key under ``prefix`` by its key relative to it ('' is the folder's own marker)."""
    found: dict[str, ObjectInfo] = {}
    token: str | None = None
    for _ in range(MAX_LIST_PAGES):
        page = await store.list_page(prefix, None, token=token)
        for info in page.objects:
            found[info.key[len(prefix) :]] = info
        token = page.next_token
        if not token:
            break
    return found


def interrupted_copy(source: dict[str, ObjectInfo], target: dict[str, ObjectInfo]) -> bool:
    """Whether ``target`` looks like what a crash while moving ``source`` onto it leaves: every key both
    hold may be a copy (``may_be_copy``), one side's keys contain the other's (copies partly made: target
    within source; deletes begun: source within target), and at least one shared key has content. Empty
    files and folder markers are no evidence: two folders holding only the same empty names (``a/x/`` and
    ``b/x/``) are told apart from a copy by nothing, so they are not merged (ENOTEMPTY, as POSIX says).
    The folders' own markers do not count."""
    a = {rel: info for rel, info in source.items() if rel}
    b = {rel: info for rel, info in target.items() if rel}
    common = a.keys() & b.keys()
    if not any(a[rel].size > 0 for rel in common):
        return False
    if not all(may_be_copy(a[rel], b[rel]) for rel in common):
        return False
    return a.keys() <= b.keys() or b.keys() <= a.keys()


def may_be_copy(src: ObjectInfo, copy: ObjectInfo) -> bool:
    """Same size and same ETag (a server-side copy keeps the MD5 ETag); a multipart source's copy may
    get a new ETag (AWS copies it as one part), so there the size must do."""
    return src.size == copy.size and (src.etag == copy.etag or "-" in src.etag)


async def move_tree(store: ObjectStore, src: str, dst: str, check_target: bool) -> dict[str, str]:
    """Move every key under prefix ``src`` to prefix ``dst``: copy all (metadata kept), then delete all.
    ``check_target``: ``dst`` may hold keys; an empty folder there is replaced, an interrupted copy of
    ``src`` completed, anything else is NotEmpty. Returns the ETags of the keys now under ``dst``, by key
    relative to it."""
    source = await list_tree(store, src)
    if not source:
        raise NotFound(f"nothing under {src} to move")
    target = await list_tree(store, dst) if check_target else {}
    if any(rel for rel in target) and not interrupted_copy(source, target):
        raise NotEmpty(f"{dst} is not empty")
    moved: dict[str, str] = {}

    async def copy(rel: str) -> None:
        there, here = target.get(rel), source[rel]
        if there is not None and (there.etag, there.size) == (here.etag, here.size):
            moved[rel] = there.etag  # copied before a crash: the same bytes are there already
        else:
            moved[rel] = await copy_object(store, here, dst + rel)

    await for_each(list(source), copy)
    if set(target) == {""} and "" not in source:
        await store.delete(dst)  # the replaced empty folder's marker: the moved keys make the folder now
    # The source's own marker goes last, so the folder stays visible there until the move is done.
    await for_each([rel for rel in source if rel], lambda rel: store.delete(src + rel))
    if "" in source:
        await store.delete(src)
    return moved
