"""Property test of attributes: random trees built through a mount and in a local folder stat the same after a
remount.

A hypothesis state machine applies the same operations to a real FUSE mount (``mount`` of tests/test_fuse.py,
moto's S3 server on 127.0.0.1) and to a local folder: mkdir with a mode, writes (create, overwrite, append),
truncate, chmod, chown (root and 65534), utime to the nanosecond, symlinks, FIFOs, renames of files and
folders, unlink and rmdir. Every call must succeed on both or fail on both with the same errno. At the end
every entry's times are set explicitly (deepest first, so creating an entry does not move its folder's mtime
afterwards: a written file's own mtime is the time of the write, which two file systems cannot share), the
mount is unmounted and mounted again, and every entry must stat the same on both: type, permission bits, uid,
gid, size (files and symlinks), nlink, rdev, mtime to the nanosecond (atime of files too), and symlink
targets. Before the remount the same is compared once, so a failure says whether the mount lost something at
the remount or never had it right. Then one file is created in every folder, which moves the folder's mtime at
each file system's own time: after the remount a folder's mtime must be the one the mount showed before it
(written to the folder's marker, markers.py), not the local folder's.

Not compared: ctime (set by the kernel locally, and by the mount when it changes an entry), st_ino, st_dev,
st_blocks, the size of folders (S3 has no folder size), atime of folders and symlinks (a listing of a local
folder moves its atime under relatime).

Reproducing a failure: hypothesis prints the steps; ``CI=true`` runs the fixed examples of the 'ci' profile
(tests/conftest.py); ``S3FILES_FULL_COUNTS=1`` runs more examples.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import S3Server
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test
from test_fuse import mount

pytestmark = pytest.mark.fuse

EXAMPLES = 40 if os.environ.get("S3FILES_FULL_COUNTS") == "1" else 8
FOLDERS = ("d1", "d2", "d1/e")
PATHS = ("a", "b", *FOLDERS, "d1/a", "d1/b", "d2/a", "d1/e/a")
PERMS = st.sampled_from([0o755, 0o700, 0o644, 0o600, 0o640, 0o750, 0o777, 0o4755, 0o2750, 0o1777, 0o444])
IDS = st.sampled_from([0, 65534])
# Times with nanoseconds that a float cannot carry (1700000000.123456789 is not a double).
NS = st.integers(1_000_000_000, 2_000_000_000).flatmap(
    lambda s: st.sampled_from([0, 1, 123456789, 200_000_000, 999_999_999]).map(lambda n: s * 10**9 + n)
)
DATA = st.binary(max_size=200)
_counter = itertools.count()


@dataclass(frozen=True)
class Outcome:
    errno: int | None

    def show(self) -> str:
        return "ok" if self.errno is None else errno.errorcode.get(self.errno, str(self.errno))


def attempt(call: Callable[[], Any]) -> Outcome:
    try:
        call()
    except OSError as exc:
        return Outcome(exc.errno)
    return Outcome(None)


def tree(root: Path) -> dict[str, os.stat_result]:
    """Every entry below ``root`` by relative path, lstat'ed after its folder was listed (a folder's nlink
    counts the subfolders the mount knows, i.e. has listed)."""
    found: dict[str, os.stat_result] = {}
    pending = [""]
    for _ in range(10_000):
        if not pending:
            break
        folder = pending.pop()
        for name in sorted(os.listdir(root / folder)):
            rel = f"{folder}/{name}" if folder else name
            found[rel] = os.lstat(root / rel)
            if stat.S_ISDIR(found[rel].st_mode):
                pending.append(rel)
    for rel, st_ in list(found.items()):
        if stat.S_ISDIR(st_.st_mode):
            found[rel] = os.lstat(root / rel)  # again, now that it was listed
    return found


def shown(st_: os.stat_result, with_atime: bool) -> dict[str, Any]:
    """What is compared of one entry (see the module docstring)."""
    kind = stat.S_IFMT(st_.st_mode)
    fields: dict[str, Any] = {
        "type": stat.filemode(kind)[0],
        "perm": oct(stat.S_IMODE(st_.st_mode)),
        "uid": st_.st_uid,
        "gid": st_.st_gid,
        "nlink": st_.st_nlink,
    }
    if kind in (stat.S_IFREG, stat.S_IFLNK):
        fields["size"] = st_.st_size
    if kind in (stat.S_IFCHR, stat.S_IFBLK):
        fields["rdev"] = st_.st_rdev
    if kind != stat.S_IFLNK:
        fields["mtime_ns"] = st_.st_mtime_ns
    if with_atime and kind == stat.S_IFREG:
        fields["atime_ns"] = st_.st_atime_ns
    return fields


class StatMachine(RuleBasedStateMachine):
    SERVER: S3Server
    BUCKET: str
    WORK: Path

    def __init__(self) -> None:
        super().__init__()
        n = next(_counter)
        self.prefix = f"stat{n}/"
        self.ref = self.WORK / f"ref{n}"
        self.mnt = self.WORK / f"mnt{n}"
        self.ref.mkdir()
        self.stack = contextlib.ExitStack()
        self.stack.enter_context(mount(self.SERVER, self.BUCKET, self.mnt, prefix=self.prefix))

    def both(self, what: str, call: Callable[[Path], Any]) -> None:
        ref, mnt = attempt(lambda: call(self.ref)), attempt(lambda: call(self.mnt))
        assert ref == mnt, f"{what}: local folder {ref.show()}, mount {mnt.show()}"

    @rule(path=st.sampled_from(FOLDERS), perm=PERMS)
    def mkdir(self, path: str, perm: int) -> None:
        # mkdir's mode is masked by the umask: chmod after it gives the mode asked for on both
        self.both(f"mkdir {path}", lambda root: os.mkdir(root / path, (perm & 0o777) | 0o700))

    @rule(path=st.sampled_from(PATHS), data=DATA, append=st.booleans())
    def write(self, path: str, data: bytes, append: bool) -> None:
        # O_NONBLOCK: opening a FIFO with no reader is ENXIO instead of a wait forever
        flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | (os.O_APPEND if append else os.O_TRUNC)

        def write(root: Path) -> None:
            fd = os.open(root / path, flags, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

        self.both(f"write {len(data)} bytes to {path} (append={append})", write)

    @rule(path=st.sampled_from(PATHS), size=st.integers(0, 300))
    def truncate(self, path: str, size: int) -> None:
        self.both(f"truncate {path} to {size}", lambda root: os.truncate(root / path, size))

    @rule(path=st.sampled_from(PATHS), perm=PERMS)
    def chmod(self, path: str, perm: int) -> None:
        def chmod(root: Path) -> None:
            if os.path.islink(root / path):
                return  # chmod follows links: the target is another entry of the tree, or missing
            os.chmod(root / path, perm)

        self.both(f"chmod {oct(perm)} {path}", chmod)

    @rule(path=st.sampled_from(PATHS), uid=IDS, gid=IDS)
    def chown(self, path: str, uid: int, gid: int) -> None:
        self.both(f"chown {uid}:{gid} {path}", lambda root: os.chown(root / path, uid, gid, follow_symlinks=False))

    @rule(path=st.sampled_from(PATHS), atime=NS, mtime=NS)
    def utime(self, path: str, atime: int, mtime: int) -> None:
        self.both(f"utime {path} ns={atime},{mtime}", lambda root: os.utime(root / path, ns=(atime, mtime)))

    @rule(path=st.sampled_from(PATHS), link_to=st.sampled_from(["a", "../a", "d1/b", "nowhere/x" * 3]))
    def symlink(self, path: str, link_to: str) -> None:
        self.both(f"symlink {path} -> {link_to}", lambda root: os.symlink(link_to, root / path))

    @rule(path=st.sampled_from(PATHS), perm=PERMS)
    def mkfifo(self, path: str, perm: int) -> None:
        self.both(f"mkfifo {path}", lambda root: os.mkfifo(root / path, stat.S_IMODE(perm) & 0o755))

    @rule(src=st.sampled_from(PATHS), dst=st.sampled_from(PATHS))
    def rename(self, src: str, dst: str) -> None:
        self.both(f"rename {src} {dst}", lambda root: os.rename(root / src, root / dst))

    @rule(path=st.sampled_from(PATHS))
    def unlink(self, path: str) -> None:
        self.both(f"unlink {path}", lambda root: os.unlink(root / path))

    @rule(path=st.sampled_from(FOLDERS))
    def rmdir(self, path: str) -> None:
        self.both(f"rmdir {path}", lambda root: os.rmdir(root / path))

    def settle_times(self) -> None:
        """Set every entry's times, deepest first (see the module docstring)."""
        entries = sorted(tree(self.ref), key=lambda p: (-p.count("/"), p))
        for i, rel in enumerate(entries):
            if os.path.islink(self.ref / rel):
                continue
            t = 1_600_000_000 * 10**9 + i * 1_000_000_007
            self.both(f"utime {rel} at the end", lambda root, t=t, rel=rel: os.utime(root / rel, ns=(t + 5, t)))

    def move_folder_times(self) -> dict[str, int]:
        """Create a file in every folder (its times then set explicitly, which moves no folder's mtime);
        the mount's folder mtimes this gives, by folder."""
        folders = sorted(rel for rel, st_ in tree(self.ref).items() if stat.S_ISDIR(st_.st_mode))
        for rel in folders:
            self.both(f"create {rel}/new", lambda root, rel=rel: (root / rel / "new").write_bytes(b"new"))
            t = 1_500_000_000 * 10**9 + 7
            self.both(f"utime {rel}/new", lambda root, rel=rel, t=t: os.utime(root / rel / "new", ns=(t, t)))
        return {rel: os.stat(self.mnt / rel).st_mtime_ns for rel in folders}

    def compare(self, when: str, folder_mtimes: dict[str, int] | None = None) -> None:
        """The mount against the local folder; ``folder_mtimes``: the mount's own folder mtimes instead."""
        ref, mnt = tree(self.ref), tree(self.mnt)
        assert sorted(mnt) == sorted(ref), f"{when}: names differ"
        for rel in ref:
            want, got = shown(ref[rel], with_atime=True), shown(mnt[rel], with_atime=True)
            source = "local folder"
            if folder_mtimes is not None and rel in folder_mtimes:
                want["mtime_ns"], source = folder_mtimes[rel], "local folder (mtime: the mount's before)"
            assert got == want, f"{when}: {rel}: {source} {want}, mount {got}"
            if stat.S_ISLNK(ref[rel].st_mode):
                assert os.readlink(self.mnt / rel) == os.readlink(self.ref / rel)

    def teardown(self) -> None:
        try:
            self.settle_times()
            self.compare("before the remount")
            folder_mtimes = self.move_folder_times()
            self.stack.close()
            with mount(self.SERVER, self.BUCKET, self.mnt, prefix=self.prefix):
                self.compare("after the remount", folder_mtimes)
        finally:
            self.stack.close()
            shutil.rmtree(self.ref, ignore_errors=True)


def test_stat_of_random_trees_matches_a_local_folder_after_a_remount(
    moto_server: Any, bucket: str, tmp_path: Path
) -> None:
    class Machine(StatMachine):
        SERVER = S3Server("moto", moto_server.endpoint_url)
        BUCKET = bucket
        WORK = tmp_path

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
