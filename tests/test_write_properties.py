"""Property test of the write path: random file-system operations on a real mount and on a local folder.

A hypothesis state machine applies the same operation to a real FUSE mount (``mount`` of tests/test_fuse.py,
against moto's S3 server on 127.0.0.1) and to a reference folder on the local disk, and compares. The local
file system is the specification: whatever it answers, the mount must answer too, except for the documented
differences below, which are asserted explicitly rather than skipped.

Start: folders and files put by another S3 client before the mount (writes into those fetch what they
need), then a few files written through the mount. Operations: open (rb, wb, ab, r+b, xb, w+b, a+b), write
at the current position, seek (also beyond EOF, and from the end), truncate through a handle (shrink and
grow), read at an offset through a handle, fsync, close, open-write-close in one step, truncate by path,
rename (of files, also over an existing one, and of folders), unlink, mkdir, rmdir, listdir and stat.
Several handles stay open at once (a bundle; each holds a reference descriptor and a mount descriptor).
Names come from a small fixed set (a, b, and the same below the folders d1 and d2), so operations collide
often: a file and a folder of the same name, renames over open files, and so on. Data is mostly small
(0-300 bytes), sometimes 6-9 MiB, or a seek or truncate past 6 MiB, so that uploads go multipart.

Compared after every step:
- results: a value the reference returns, the mount returns too; when the reference raises OSError, the
  mount raises one with the same errno, and the other way round;
- the tree (names and kinds), each file's size (stat) and content (read through a fresh open), and the
  size of each open handle (fstat);
- close-to-open in the bucket (boto3): every file that no descriptor has open for writing, or that was
  fsynced since it last changed, is in S3 with the reference's bytes; no other file key exists; folder
  markers only for reference folders.
After the last step every handle is closed and the file system unmounted; then the bucket must hold exactly
the reference's files, byte for byte, and a key (marker or child) for each reference folder.

Documented differences (docs/SEMANTICS.md), asserted where they apply:
- a file open only for reading that was deleted through the mount may read ENOENT (no local copy);
- a handle open only for reading is pinned to the version it opened: once the file changed since, a read
  through it may be ESTALE instead of the new bytes (close-to-open);
- renaming a folder onto a non-empty folder that looks like an interrupted copy of it merges the two
  instead of failing with ENOTEMPTY (the reference is merged the same way);
- mtime is not compared; an empty folder is a ``dir/`` marker; links and symlinks are out of scope.

Bugs this test found (each fixed, with a regression test in tests/test_writer.py): a rename over a file
open for writing uploaded the replaced file again as a conflict at its close; a read-only open of a file
being written counted as a writer that never closed; handles opened before a writer came and went read
ESTALE.

Reproducing a failure: hypothesis prints the steps; ``CI=true`` runs the fixed examples of the 'ci' profile
(tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import itertools
import os
import random
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import FULL_COUNTS, S3Server
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from test_fuse import mount

from s3files.options import MIB

pytestmark = pytest.mark.fuse

T = TypeVar("T")

FOLDERS = ("d1", "d2")
PATHS = ("a", "b", *FOLDERS, *(f"{d}/{n}" for d in FOLDERS for n in ("a", "b")))
MODES: dict[str, int] = {
    "rb": os.O_RDONLY,
    "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "r+b": os.O_RDWR,
    "xb": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "w+b": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "a+b": os.O_RDWR | os.O_CREAT | os.O_APPEND,
}
MAX_HANDLES = 4
BIG = (6 * MIB, 9 * MIB)  # sizes of the rare big writes: with a part size of 8 MiB, some go multipart
FILE_PATHS = tuple(p for p in PATHS if p not in FOLDERS)


@dataclass(frozen=True)
class Blob:
    """Bytes to write: small ones literally, big ones as (seed, size) so that examples print short."""

    data: bytes = b""
    seed: int = 0
    size: int = 0

    def bytes(self) -> bytes:
        return self.data if not self.size else random.Random(self.seed).randbytes(self.size)

    def __repr__(self) -> str:
        return f"Blob({self.data!r})" if not self.size else f"Blob(seed={self.seed}, size={self.size})"


SMALL_BLOBS = st.binary(max_size=300).map(Blob)
BIG_BLOBS = st.builds(lambda seed, size: Blob(seed=seed, size=size), st.integers(0, 3), st.integers(*BIG))
# rare big ones; the big branch is at the top so that shrinking moves towards small data
BLOBS = st.integers(0, 9).flatmap(lambda n: BIG_BLOBS if n == 9 else SMALL_BLOBS)
SMALL_OFFSETS = st.integers(0, 400)
OFFSETS = st.integers(0, 9).flatmap(lambda n: st.integers(*BIG) if n == 9 else SMALL_OFFSETS)


@dataclass
class Handle:
    """One open file: a descriptor on the reference folder and one on the mount, opened the same way."""

    number: int
    path: str  # the name it was opened by (the file may since have been renamed or unlinked)
    mode: str
    ref_fd: int
    mnt_fd: int
    opened_at: int  # the step it was opened at

    @property
    def writable(self) -> bool:
        return bool(MODES[self.mode] & (os.O_WRONLY | os.O_RDWR))

    @property
    def ref_ino(self) -> int:
        return os.fstat(self.ref_fd).st_ino

    def __repr__(self) -> str:
        return f"<h{self.number} {self.mode} {self.path}>"


@dataclass(frozen=True)
class Outcome:
    """What one call did: returned ``value``, or raised OSError ``errno``."""

    value: Any = None
    errno: int | None = None

    @property
    def ok(self) -> bool:
        return self.errno is None

    def show(self) -> str:
        return (
            short(self.value) if self.ok else f"OSError({errno.errorcode.get(self.errno or 0, self.errno)})"
        )


def attempt(call: Callable[[], Any]) -> Outcome:
    try:
        return Outcome(call())
    except OSError as exc:
        return Outcome(errno=exc.errno)


def short(value: Any) -> str:
    """Bytes as size and digest (an assertion message of 9 MiB helps nobody)."""
    if isinstance(value, bytes) and len(value) > 64:
        return f"<{len(value)} bytes sha256={hashlib.sha256(value).hexdigest()[:12]} head={value[:16]!r}>"
    return repr(value)


def read_all(path: Path) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


@dataclass(frozen=True)
class Walked:
    """A tree as seen by calls: folders, and files with their size (stat) and content (a fresh open;
    None for the files ``walk`` was told not to open)."""

    folders: frozenset[str]
    files: dict[str, tuple[int, bytes | None]]


def walk(root: Path, unopened: frozenset[str] = frozenset()) -> Walked:
    folders: set[str] = set()
    files: dict[str, tuple[int, bytes | None]] = {}
    pending = [""]
    while pending:
        folder = pending.pop()
        for name in sorted(os.listdir(root / folder)):
            rel = f"{folder}/{name}" if folder else name
            st_ = os.lstat(root / rel)
            if stat.S_ISDIR(st_.st_mode):
                folders.add(rel)
                pending.append(rel)
            else:
                assert stat.S_ISREG(st_.st_mode), f"{rel} is neither a file nor a folder: {st_.st_mode:o}"
                files[rel] = (st_.st_size, None if rel in unopened else read_all(root / rel))
    return Walked(frozenset(folders), files)


@dataclass
class Env:
    """What the pytest test hands the machine: the S3 server, a boto3 client, a bucket, a work folder."""

    server: S3Server
    client: Any
    bucket: str
    work: Path
    mount_options: dict[str, Any] = field(default_factory=dict)
    examples: itertools.count = field(default_factory=itertools.count)

    def keys(self) -> dict[str, str]:
        """Every key in the bucket and its ETag."""
        out: dict[str, str] = {}
        token: dict[str, str] = {}
        for _ in range(100):
            page = self.client.list_objects_v2(Bucket=self.bucket, **token)
            out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
            if not page.get("IsTruncated"):
                return out
            token = {"ContinuationToken": page["NextContinuationToken"]}
        raise AssertionError("listing did not end")

    def body(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def empty_bucket(self) -> None:
        for key in self.keys():
            self.client.delete_object(Bucket=self.bucket, Key=key)
        uploads = self.client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        for upload in uploads:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )


def step(method: Callable[..., T]) -> Callable[..., T]:
    """Mark the machine unclean while a rule or check runs: teardown then only cleans up (a failure of its
    own would hide the step's)."""

    @functools.wraps(method)
    def wrapper(self: WriteMachine, *args: Any, **kwargs: Any) -> T:
        self.clean = False
        result = method(self, *args, **kwargs)
        self.clean = True
        return result

    return wrapper


class WriteMachine(RuleBasedStateMachine):
    """The same operations on a mount and a reference folder; see the module docstring."""

    ENV: Env  # set by the test (state machines cannot take fixtures)

    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        env = self.ENV
        self.env = env
        env.empty_bucket()
        self.base = Path(tempfile.mkdtemp(prefix=f"ex{next(env.examples)}-", dir=env.work))
        self.ref = self.base / "ref"
        self.ref.mkdir()
        self.mnt = self.base / "mnt"
        self.stack = contextlib.ExitStack()  # the mount, from ``seed`` (always the first step) to teardown
        self.open: list[Handle] = []
        self.numbers = itertools.count(1)
        self.steps = 0
        self.changed_at: dict[int, int] = {}  # reference inode -> the last step that changed its content
        self.unlinked_at: dict[int, int] = {}  # reference inode -> the step that unlinked it
        self.synced_at: dict[int, int] = {}  # reference inode -> the last step that fsynced it
        self.writable_at: dict[int, int] = {}  # reference inode -> the last step that opened it for writing
        self.verified: dict[str, tuple[str, str]] = {}  # key -> (ETag, sha256) already compared with S3
        self.clean = True

    # -- helpers -------------------------------------------------------------------------------------

    def both(self, call: Callable[[Path], Any]) -> tuple[Outcome, Outcome]:
        self.steps += 1
        return attempt(lambda: call(self.ref)), attempt(lambda: call(self.mnt))

    @staticmethod
    def same(
        what: str, ref: Outcome, mnt: Outcome, documented: Callable[[Outcome, Outcome], bool] | None = None
    ) -> None:
        if documented is not None and documented(ref, mnt):
            return
        assert ref == mnt, f"{what}: reference {ref.show()}, mount {mnt.show()}"

    def on_handles(self, handle: Handle, call: Callable[[int], Any]) -> tuple[Outcome, Outcome]:
        self.steps += 1
        return attempt(lambda: call(handle.ref_fd)), attempt(lambda: call(handle.mnt_fd))

    def touched(self, ino: int) -> None:
        self.changed_at[ino] = self.steps

    def ref_ino(self, path: str) -> int | None:
        try:
            return os.lstat(self.ref / path).st_ino
        except OSError:
            return None

    def writers(self) -> set[int]:
        """Reference inodes that some handle has open for writing."""
        return {h.ref_ino for h in self.open if h.writable}

    # -- a start that is not empty -------------------------------------------------------------------

    @initialize(
        folders=st.sets(st.sampled_from(FOLDERS), min_size=1),
        outside=st.dictionaries(st.sampled_from(FILE_PATHS), BLOBS, max_size=3),
        inside=st.dictionaries(st.sampled_from(FILE_PATHS), SMALL_BLOBS, max_size=2),
    )
    @step
    def seed(self, folders: set[str], outside: dict[str, Blob], inside: dict[str, Blob]) -> None:
        """Folders and files put by another S3 client before the mount (so neither the kernel nor the
        mount has seen them: writes into them fetch what they need), then files written through it."""
        env = self.env
        for folder in sorted(folders):
            env.client.put_object(Bucket=env.bucket, Key=folder + "/", Body=b"")
            (self.ref / folder).mkdir()
        for path, blob in sorted(outside.items()):
            if "/" not in path or path.split("/")[0] in folders:
                env.client.put_object(Bucket=env.bucket, Key=path, Body=blob.bytes())
                (self.ref / path).write_bytes(blob.bytes())
        self.stack.enter_context(mount(env.server, env.bucket, self.mnt, **env.mount_options))
        for path, blob in sorted(inside.items()):
            self.write_file(path, "wb", blob)

    # -- handles -------------------------------------------------------------------------------------

    @precondition(lambda self: len(self.open) < MAX_HANDLES)
    @rule(
        target=handles,
        path=st.sampled_from(FILE_PATHS),
        mode=st.sampled_from(["a+b", "ab", "w+b", "wb"]),
        blob=BLOBS,
    )
    @step
    def create_file(self, path: str, mode: str, blob: Blob) -> Any:
        """An open that creates the file if need be, and a first write (more handles with data)."""
        handle = self.open_file(path, mode)
        if isinstance(handle, Handle):
            self.write(handle, blob)
        return handle

    @precondition(lambda self: len(self.open) < MAX_HANDLES)
    @rule(target=handles, path=st.sampled_from(PATHS), mode=st.sampled_from(sorted(MODES)))
    @step
    def open_file(self, path: str, mode: str) -> Any:
        flags = MODES[mode]
        ref, mnt = self.both(lambda root: os.open(root / path, flags, 0o644))
        if ref.ok and mnt.ok:
            handle = Handle(next(self.numbers), path, mode, ref.value, mnt.value, self.steps)
            if stat.S_ISDIR(os.fstat(handle.ref_fd).st_mode):  # O_RDONLY opens a folder: not a file handle
                os.close(handle.ref_fd)
                os.close(handle.mnt_fd)
                return multiple()
            if handle.writable:
                self.writable_at[handle.ref_ino] = self.steps
            if flags & os.O_TRUNC:
                self.touched(handle.ref_ino)
            self.open.append(handle)
            return handle
        for fd in (o.value for o in (ref, mnt) if o.ok):
            os.close(fd)
        self.same(f"open({path!r}, {mode!r})", Outcome(errno=ref.errno), Outcome(errno=mnt.errno))
        return multiple()

    @rule(handle=handles, blob=BLOBS)
    @step
    def write(self, handle: Handle, blob: Blob) -> None:
        data = blob.bytes()
        ref, mnt = self.on_handles(handle, lambda fd: os.write(fd, data))
        self.same(f"write({handle}, {len(data)} bytes)", ref, mnt)
        if ref.ok:
            self.touched(handle.ref_ino)

    @rule(handle=handles, offset=OFFSETS, whence=st.sampled_from([os.SEEK_SET, os.SEEK_END]))
    @step
    def seek(self, handle: Handle, offset: int, whence: int) -> None:
        if whence == os.SEEK_END:
            offset %= 50
        ref, mnt = self.on_handles(handle, lambda fd: os.lseek(fd, offset, whence))
        self.same(f"lseek({handle}, {offset}, {whence})", ref, mnt)

    @rule(handle=handles, size=OFFSETS)
    @step
    def truncate_handle(self, handle: Handle, size: int) -> None:
        ref, mnt = self.on_handles(handle, lambda fd: os.ftruncate(fd, size))
        self.same(f"ftruncate({handle}, {size})", ref, mnt)
        if ref.ok:
            self.touched(handle.ref_ino)

    @rule(handle=handles, offset=OFFSETS, size=st.sampled_from([1, 100, 4096, 10 * MIB]))
    @step
    def pread(self, handle: Handle, offset: int, size: int) -> None:
        ref, mnt = self.on_handles(handle, lambda fd: os.pread(fd, size, offset))

        def pinned(ref: Outcome, mnt: Outcome) -> bool:
            if not ref.ok or handle.writable:
                return False
            # Documented (SEMANTICS, close-to-open): a read-only handle reads the version it opened; once
            # the file changed since, a read may be ESTALE.
            if self.changed_at.get(handle.ref_ino, -1) > handle.opened_at and mnt.errno == errno.ESTALE:
                return True
            # Documented (SEMANTICS): a file open only for reading has no local copy; once it was deleted
            # through the mount, reading bytes not fetched yet is ENOENT.
            return self.unlinked_at.get(handle.ref_ino, -1) > handle.opened_at and mnt.errno == errno.ENOENT

        self.same(f"pread({handle}, {size}, {offset})", ref, mnt, pinned)

    @rule(handle=handles)
    @step
    def fsync(self, handle: Handle) -> None:
        ref, mnt = self.on_handles(handle, os.fsync)
        self.same(f"fsync({handle})", ref, mnt)
        if ref.ok and handle.writable:
            self.synced_at[handle.ref_ino] = self.steps

    @rule(handle=consumes(handles))
    @step
    def close(self, handle: Handle) -> None:
        self.open.remove(handle)
        ref, mnt = self.on_handles(handle, os.close)
        self.same(f"close({handle})", ref, mnt)

    # -- paths ---------------------------------------------------------------------------------------

    @rule(path=st.sampled_from(PATHS), mode=st.sampled_from(sorted(set(MODES) - {"rb"})), blob=BLOBS)
    @step
    def write_file(self, path: str, mode: str, blob: Blob) -> None:
        """open, write, close: one whole small write, the most common case."""
        data, flags = blob.bytes(), MODES[mode]

        def write(root: Path) -> int:
            fd = os.open(root / path, flags, 0o644)
            try:
                return os.write(fd, data)
            finally:
                os.close(fd)

        ref, mnt = self.both(write)
        self.same(f"open({path!r}, {mode!r}), write {len(data)} bytes, close", ref, mnt)
        written = self.ref_ino(path)
        if ref.ok and written is not None:
            self.touched(written)

    @rule(path=st.sampled_from(PATHS), size=OFFSETS)
    @step
    def truncate_path(self, path: str, size: int) -> None:
        ino = self.ref_ino(path)
        ref, mnt = self.both(lambda root: os.truncate(root / path, size))
        self.same(f"truncate({path!r}, {size})", ref, mnt)
        if ref.ok and ino is not None:
            self.touched(ino)

    @rule(src=st.sampled_from(PATHS), dst=st.sampled_from(PATHS))
    @step
    def rename(self, src: str, dst: str) -> None:
        what = f"rename({src!r}, {dst!r})"
        self.steps += 1
        replaced, moved = self.ref_ino(dst), self.ref_ino(src)
        if (self.ref / src).is_dir():
            mnt = attempt(lambda: os.rename(self.mnt / src, self.mnt / dst))
            looked_like_a_copy = self.looks_like_an_interrupted_copy(src, dst)
            ref = attempt(lambda: os.rename(self.ref / src, self.ref / dst))
            if ref.errno == errno.ENOTEMPTY and mnt.ok and looked_like_a_copy:
                # Documented (SEMANTICS, folder rename): a destination that looks like an interrupted copy
                # of the source is accepted instead of ENOTEMPTY, and the two are merged.
                self.merge_folder(src, dst)
                return
        else:
            ref = attempt(lambda: os.rename(self.ref / src, self.ref / dst))
            mnt = attempt(lambda: os.rename(self.mnt / src, self.mnt / dst))
        self.same(what, ref, mnt)
        if ref.ok and replaced is not None and replaced != moved:
            self.touched(replaced)  # a handle of the replaced file may read ESTALE: its key has new bytes

    def looks_like_an_interrupted_copy(self, src: str, dst: str) -> bool:
        """SEMANTICS' rule, on the reference: one folder's keys contain the other's, every key both hold
        has the same bytes, and at least one of those is not empty."""

        def keys(folder: str) -> dict[str, bytes | None]:
            if not (self.ref / folder).is_dir():
                return {}
            out: dict[str, bytes | None] = {"": None}  # the folder's marker
            for name in os.listdir(self.ref / folder):
                full = self.ref / folder / name
                if full.is_dir():
                    out[name + "/"] = None  # a subfolder here is empty (one folder level)
                else:
                    out[name] = full.read_bytes()
            return out

        a, b = keys(src), keys(dst)
        if not b or not (a.keys() <= b.keys() or b.keys() <= a.keys()):
            return False
        shared = a.keys() & b.keys()
        return all(a[k] == b[k] for k in shared) and any(a[k] for k in shared)

    def merge_folder(self, src: str, dst: str) -> None:
        for name in sorted(os.listdir(self.ref / src)):
            moved, target = self.ref / src / name, self.ref / dst / name
            if moved.is_dir() and target.is_dir():
                os.rmdir(moved)
            else:
                os.replace(moved, target)
        os.rmdir(self.ref / src)

    @rule(path=st.sampled_from(PATHS))
    @step
    def unlink(self, path: str) -> None:
        ino = self.ref_ino(path)
        ref, mnt = self.both(lambda root: os.unlink(root / path))
        self.same(f"unlink({path!r})", ref, mnt)
        if ref.ok and ino is not None:
            self.unlinked_at[ino] = self.steps

    @rule(path=st.sampled_from(PATHS))
    @step
    def mkdir(self, path: str) -> None:
        ref, mnt = self.both(lambda root: os.mkdir(root / path))
        self.same(f"mkdir({path!r})", ref, mnt)

    @rule(path=st.sampled_from(PATHS))
    @step
    def rmdir(self, path: str) -> None:
        ref, mnt = self.both(lambda root: os.rmdir(root / path))
        self.same(f"rmdir({path!r})", ref, mnt)

    @rule(path=st.sampled_from(("", *PATHS)))
    @step
    def listdir(self, path: str) -> None:
        ref, mnt = self.both(lambda root: sorted(os.listdir(root / path)))
        self.same(f"listdir({path!r})", ref, mnt)

    @rule(path=st.sampled_from(PATHS))
    @step
    def stat(self, path: str) -> None:
        def kind_and_size(root: Path) -> tuple[str, int]:
            st_ = os.stat(root / path)
            return ("dir", 0) if stat.S_ISDIR(st_.st_mode) else ("file", st_.st_size)

        ref, mnt = self.both(kind_and_size)
        self.same(f"stat({path!r})", ref, mnt)

    # -- after every step ----------------------------------------------------------------------------

    @invariant()
    @step
    def tree_matches(self) -> None:
        # Files a read-only handle has open are not opened afresh here: a fresh open revalidates the
        # inode's page cache, and so would change what those handles read next (their reads are checked
        # by pread; the content by a fresh open again once they are closed).
        reading = {h.ref_ino for h in self.open if not h.writable}
        busy = frozenset(path for path in PATHS if self.ref_ino(path) in reading)
        ref, mnt = walk(self.ref), walk(self.mnt, unopened=busy)
        assert mnt.folders == ref.folders, "folders differ"
        assert sorted(mnt.files) == sorted(ref.files), "files differ"
        for path, (size, data) in ref.files.items():
            mnt_size, mnt_data = mnt.files[path]
            assert mnt_size == size, f"stat({path!r}).st_size: reference {size}, mount {mnt_size}"
            if mnt_data is None:
                readers = [h for h in self.open if h.ref_ino == self.ref_ino(path) and "+" in h.mode]
                if not readers:
                    continue
                mnt_data = os.pread(readers[0].mnt_fd, size + 1, 0)
            assert mnt_data == data, f"content of {path!r}: reference {short(data)}, mount {short(mnt_data)}"

    @invariant()
    @step
    def handle_sizes_match(self) -> None:
        for handle in self.open:
            ref, mnt = os.fstat(handle.ref_fd).st_size, os.fstat(handle.mnt_fd).st_size
            assert mnt == ref, f"fstat({handle}).st_size: reference {ref}, mount {mnt}"

    @invariant()
    @step
    def bucket_is_close_to_open(self) -> None:
        """Closed and fsynced files are in S3 as the reference has them; nothing else is."""
        ref = walk(self.ref)
        self.check_bucket(ref, open_for_writing=self.writers())

    def check_bucket(self, ref: Walked, open_for_writing: set[int]) -> None:
        keys = self.env.keys()
        markers = {k[:-1] for k in keys if k.endswith("/")}
        assert markers <= ref.folders, (
            f"folder markers of no reference folder: {sorted(markers - ref.folders)}"
        )
        files = {k for k in keys if not k.endswith("/")}
        assert files <= set(ref.files), f"keys of no reference file: {sorted(files - set(ref.files))}"
        for path, (_size, data) in ref.files.items():
            ino = self.ref_ino(path) or 0
            unsynced = max(self.changed_at.get(ino, 0), self.writable_at.get(ino, 0))
            if ino in open_for_writing and self.synced_at.get(ino, -1) < unsynced:
                continue  # uploaded at close or fsync
            assert path in keys, f"{path!r} is closed but not in the bucket"
            digest = hashlib.sha256(data).hexdigest()
            if self.verified.get(path) == (keys[path], digest):
                continue
            body = self.env.body(path)
            assert body == data, f"S3 {path!r} after close: reference {short(data)}, bucket {short(body)}"
            self.verified[path] = (keys[path], digest)

    # -- the end -------------------------------------------------------------------------------------

    def teardown(self) -> None:
        clean = self.clean
        try:
            for handle in list(self.open):
                self.open.remove(handle)
                ref, mnt = (
                    attempt(lambda h=handle: os.close(h.ref_fd)),
                    attempt(lambda h=handle: os.close(h.mnt_fd)),
                )
                if clean:
                    self.same(f"close({handle}) at the end", ref, mnt)
            ref = walk(self.ref)
            self.stack.close()  # unmounts: whatever is still staged is uploaded now
            if clean:
                self.verified.clear()
                self.check_bucket(ref, open_for_writing=set())
                keys = self.env.keys()
                for folder in ref.folders:
                    assert any(k.startswith(folder + "/") for k in keys), f"folder {folder!r} is not in S3"
        finally:
            self.stack.close()
            shutil.rmtree(self.base, ignore_errors=True)


def run_machine(moto_server: Any, bucket: str, tmp_path: Path, examples: int, **mount_options: Any) -> None:
    import boto3

    env = Env(
        server=S3Server("moto", moto_server.endpoint_url),
        client=boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name="us-east-1"),
        bucket=bucket,
        work=tmp_path,
        mount_options=mount_options,
    )

    class Machine(WriteMachine):
        ENV = env

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )


def test_writes_match_a_local_folder(moto_server: Any, bucket: str, tmp_path: Path) -> None:
    run_machine(moto_server, bucket, tmp_path, examples=25 if FULL_COUNTS else 15)


def test_writes_match_a_local_folder_with_direct_io(moto_server: Any, bucket: str, tmp_path: Path) -> None:
    """The same machine through a --direct-io mount: no page cache, every read and write reaches the
    daemon, and the files must still match a local folder step by step."""
    run_machine(moto_server, bucket, tmp_path, examples=10 if FULL_COUNTS else 6, direct_io=True)
