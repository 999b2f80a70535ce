"""``s3files status``: files waiting or uploading, files kept after a stop or crash, conflicts, cache use.

Through real mounts started with the ``s3files mount`` command on moto (a file held open for writing; a
daemon killed with SIGKILL), and through the core on the in-memory store for an upload that fails (its
status written by the same StatusWriter the mount's task uses), each read back by running
``s3files status`` as a user does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from test_cli import assert_one_line_error, s3files

from s3files.core.fs import FileSystem
from s3files.core.inodes import ROOT_INO
from s3files.errors import S3FilesError, StoreError
from s3files.localserver import MotoServer
from s3files.mountinfo import mount_entry
from s3files.options import MIB, MountOptions, Source
from s3files.status import STATUS_FILE, StatusWriter, daemon_pid, human_size
from s3files.store import MemoryStore


def status_json(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = s3files("status", *args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def wait_for(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


@contextlib.contextmanager
def mounted(
    moto_server: MotoServer, bucket: str, mp: Path, cache_dir: Path, env: dict[str, str] | None = None
) -> Iterator[Path]:
    """``s3files mount`` as a command; yields the mount's cache folder. Unmounted afterwards, whatever
    happened (a dead daemon's mount too). With ``env``, the cache dir is the default one it implies."""
    mp.mkdir()
    given = [] if env else ["--cache-dir", str(cache_dir)]
    result = s3files(
        "mount",
        f"s3://{bucket}",
        str(mp),
        "--endpoint-url",
        moto_server.endpoint_url,
        *given,
        "--log-file",
        str(mp.parent / "daemon.log"),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    try:
        (folder,) = [p for p in cache_dir.iterdir() if (p / "lock").exists()]
        yield folder
    finally:
        if mount_entry(mp) is not None:
            s3files("unmount", str(mp))
        deadline = time.monotonic() + 15
        while mount_entry(mp) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if mount_entry(mp) is not None:
            subprocess.run([shutil.which("fusermount3") or "fusermount", "-u", "-z", str(mp)], check=False)


@contextlib.contextmanager
def held_open(path: Path, size: int) -> Iterator[subprocess.Popen[str]]:
    """Another process writes ``size`` bytes to ``path`` and keeps it open until the block ends (then it
    closes it). Not this process: every fork of a process holding a file descriptor closes a copy of it
    at exec, which the kernel sends as a FUSE flush, and a flush publishes (close-to-open)."""
    script = (
        "import os, sys; f = open(sys.argv[1], 'wb'); f.write(os.urandom(int(sys.argv[2]))); f.flush();"
        " print('written', flush=True); sys.stdin.read(); f.close()"
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", script, str(path), str(size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "written\n", writer.stderr
        yield writer
    finally:
        with contextlib.suppress(OSError):
            assert writer.stdin is not None
            writer.stdin.close()
        writer.wait(30)


def only_file(status: dict[str, Any]) -> dict[str, Any] | None:
    files = status["files"]
    return files[0] if len(files) == 1 else None


@pytest.mark.fuse
def test_a_file_held_open_for_writing_shows_as_waiting(
    moto_server: MotoServer, bucket: str, tmp_path: Path
) -> None:
    """By mount point with the default cache dir (here $XDG_CACHE_HOME/s3files), by cache folder, by
    cache dir, and with --cache-dir."""
    mp, xdg = tmp_path / "m", {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    cache_dir = tmp_path / "xdg" / "s3files"
    with mounted(moto_server, bucket, mp, cache_dir, env=xdg) as folder:
        assert status_json(str(mp), env=xdg)["files"] == []
        with held_open(mp / "report.csv", 3 * MIB):
            entry = wait_for(lambda: only_file(status_json(str(mp), env=xdg)))
            assert entry is not None, json.dumps(status_json(str(mp), env=xdg))
            assert entry["path"] == "report.csv"
            assert (entry["state"], entry["acknowledged"], entry["bytes"]) == ("dirty", False, 3 * MIB)
            assert entry["open_handles"] == 1
            assert entry["data"] is not None and Path(entry["data"]).parent == folder / "files"

            # the same status by mount point, by cache folder and by cache dir; and for people
            by_mount = status_json(str(mp), env=xdg)
            assert by_mount["running"] and by_mount["pid"] == int((folder / "lock").read_text())
            assert by_mount["mountpoint"] == str(mp) and by_mount["source"] == f"s3://{bucket}/"
            assert by_mount["cache_folder"] == str(folder)
            assert status_json(str(folder))["files"] == by_mount["files"]
            assert [s["files"] for s in status_json(str(cache_dir))["cache_folders"]] == [by_mount["files"]]
            assert status_json(str(mp), "--cache-dir", str(cache_dir))["files"] == by_mount["files"]
            # another --cache-dir: the registry of running mounts (status.registered_folder) still finds it
            assert status_json(str(mp), "--cache-dir", str(tmp_path))["cache_folder"] == str(folder)
            shown = s3files("status", str(mp), env=xdg)
            assert shown.returncode == 0 and not shown.stderr, shown.stderr
            lines = shown.stdout.splitlines()
            assert "running" in lines[0] and str(mp) in lines[0]
            (line,) = [line for line in lines if str(mp / "report.csv") in line]
            assert line.split()[:3] == ["dirty", "3.0", "MiB"], line
            assert entry["data"] in line and "not closed" in line
        # closed: uploaded, nothing waits
        assert wait_for(lambda: status_json(str(mp), env=xdg)["files"] == []), status_json(str(mp), env=xdg)
        assert "nothing" in s3files("status", str(mp), env=xdg).stdout
    # a clean unmount removes the live status; the folder still answers, from its records
    assert not (folder / STATUS_FILE).exists()
    after = status_json(str(folder))
    assert (after["running"], after["files"], after["kept"]) == (False, [], [])
    assert_one_line_error(
        s3files("status", str(mp)), str(mp), "neither a mount point of s3files nor a cache folder"
    )


@pytest.mark.fuse
def test_after_kill_9_the_kept_file_is_listed_from_the_records(
    moto_server: MotoServer, bucket: str, tmp_path: Path
) -> None:
    mp, cache_dir = tmp_path / "m", tmp_path / "cache"
    size = 20 * MIB  # past two parts: parts are streamed while it is written, and the record names its key
    with mounted(moto_server, bucket, mp, cache_dir) as folder:
        with held_open(mp / "big.bin", size):  # closed after the kill: ENOTCONN, the daemon is gone
            entry = wait_for(lambda: only_file(status_json(str(folder))))
            assert entry is not None and entry["bytes"] == size and entry["state"] == "dirty"
            pid = int((folder / "lock").read_text())
            assert daemon_pid(folder) == pid
            os.kill(pid, signal.SIGKILL)
            assert wait_for(lambda: daemon_pid(folder) is None), "the lock is still held"
        # the mount point is still mounted, without its daemon: found by the status file it left
        dead = status_json(str(mp), "--cache-dir", str(cache_dir))
        assert dead["running"] is False and dead["cache_folder"] == str(folder)
        assert "not running" in dead["note"] and "s3files unmount" in dead["note"]
        assert dead["files"] == []
        (kept,) = dead["kept"]
        assert kept["state"] == "dirty" and kept["acknowledged"] is False and kept["bytes"] == size
        assert kept["key"] == "big.bin"
        assert Path(kept["data"]).stat().st_size == size
    # unmounted (the dead mount too): the cache folder and the cache dir still tell what is kept
    assert mount_entry(mp) is None
    for target in (folder, cache_dir):
        shown = s3files("status", str(target))
        assert shown.returncode == 0 and not shown.stderr, shown.stderr
        lines = shown.stdout.splitlines()
        assert f"last mounted at {mp}" in lines[0] and "no daemon running" in lines[0]
        assert "kept in the cache folder: 1 file, 20.0 MiB" in shown.stdout
        (line,) = [line for line in lines if "big.bin" in line]
        assert line.split()[:4] == ["dirty", "20.0", "MiB", "big.bin"], line
        assert kept["data"] in line and "never closed" in line
    on_disk = status_json(str(folder))
    assert on_disk["kept"] == [kept] and on_disk["cache_bytes"] >= size and on_disk["unrecorded_files"] == 0


def test_a_failed_upload_shows_as_acknowledged_and_retrying(tmp_path: Path) -> None:
    """The core on the in-memory store with every PUT failing; its status written by the mount's
    StatusWriter while this process holds the cache folder, read by ``s3files status``."""
    store = MemoryStore()
    opts = MountOptions(source=Source("bucket", ""), mountpoint=tmp_path / "unused")
    folder = tmp_path / "cache-folder"
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            fs = FileSystem(store, opts, spawn=nursery.start_soon, staging=folder)
            opened = await fs.create(ROOT_INO, "precious.txt", 0o644, 0, 0)
            await fs.write(opened.fh, 0, b"precious")
            store.fail("put", StoreError("503 after retries"), times=1000)
            with pytest.raises(S3FilesError):
                await fs.flush(opened.fh)
            with contextlib.suppress(S3FilesError):  # tries once more; the kernel ignores what release says
                await fs.release(opened.fh)
            writer = StatusWriter(folder, "/mnt/data", "s3://bucket/")
            assert writer.update(fs.status)
            assert not writer.update(fs.status)  # unchanged: not written again
            seen["json"] = await trio.to_thread.run_sync(status_json, str(folder))
            seen["text"] = await trio.to_thread.run_sync(s3files, "status", str(folder))
            writer.remove()
            await fs.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)
    status = seen["json"]
    assert status["running"] is True and status["pid"] == os.getpid()
    (entry,) = status["files"]
    assert entry["path"] == "precious.txt" and entry["bytes"] == len(b"precious")
    assert entry["state"] == "acked" and entry["acknowledged"] is True
    assert entry["data"] is not None and Path(entry["data"]).read_bytes() == b"precious"  # kept on disk
    assert status["retrying_uploads"] >= 1
    assert status["mountpoint"] == "/mnt/data" and status["source"] == "s3://bucket/"
    text = seen["text"].stdout
    assert re.search(r"waiting or uploading: 1 file, 8 B; \d+ retr(y|ies) pending in the background", text), (
        text
    )
    (line,) = [line for line in text.splitlines() if "/mnt/data/precious.txt" in line]
    assert line.split()[:3] == ["acked", "8", "B"] and "upload failed, retried in the background" in line
    # the daemon (here: this process) is gone: the record says what the next mount uploads
    after = status_json(str(folder))
    assert after["running"] is False and after["files"] == []
    (kept,) = after["kept"]
    assert (kept["key"], kept["state"], kept["acknowledged"], kept["bytes"]) == (
        "precious.txt",
        "acked",
        True,
        8,
    )
    assert "the next mount uploads it" in s3files("status", str(folder)).stdout


def test_a_bad_argument_is_one_line(tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_text("x")
    for target in (tmp_path / "missing", tmp_path, regular, Path("/proc")):
        result = s3files("status", str(target))
        assert_one_line_error(result, str(target), "neither a mount point of s3files nor a cache folder")
        assert result.stdout == ""
    assert_one_line_error(s3files("status", str(tmp_path), "--json"), "neither")


def test_the_status_file_is_replaced_whole_and_only_when_changed(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "lock").write_text("")
    writer = StatusWriter(tmp_path, "/mnt/x", "s3://b/", pid=123)
    status: dict[str, object] = {"files": [], "cache_bytes": 0}
    assert writer.update(lambda: status, now=1.0)
    first = (tmp_path / STATUS_FILE).stat().st_ino
    assert not writer.update(lambda: status, now=2.0)
    assert (tmp_path / STATUS_FILE).stat().st_ino == first
    status["cache_bytes"] = 5
    assert writer.update(lambda: status, now=3.0)
    body = json.loads((tmp_path / STATUS_FILE).read_text())
    assert body == {
        "files": [],
        "cache_bytes": 5,
        "mountpoint": "/mnt/x",
        "source": "s3://b/",
        "pid": 123,
        "updated": 3.0,
    }
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    def broken() -> dict[str, object]:
        raise RuntimeError("a bug in status()")

    assert not writer.update(broken)  # logged, never raised: a status must not stop a mount
    writer.remove()
    assert not (tmp_path / STATUS_FILE).exists()
    assert daemon_pid(tmp_path) is None  # nobody holds the lock


def test_human_sizes() -> None:
    assert [human_size(n) for n in (0, 1023, 1024, 3 * MIB, 20 * 1024**3)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "3.0 MiB",
        "20.0 GiB",
    ]


def test_a_stopped_folder_counts_data_files_no_record_names(tmp_path: Path) -> None:
    """Data files without a record (clean copies of the last mount, or a copy whose record was never
    written) are deleted by the next mount: status says so instead of hiding them."""
    (tmp_path / "files").mkdir()
    (tmp_path / "lock").write_text("")
    (tmp_path / "files" / "0123.data").write_bytes(b"x" * 8192)
    status = status_json(str(tmp_path))
    assert (status["running"], status["kept"], status["unrecorded_files"]) == (False, [], 1)
    assert status["unrecorded_bytes"] == status["cache_bytes"] >= 8192
    shown = s3files("status", str(tmp_path)).stdout
    assert "data files no record names: 1 file" in shown and "the next mount deletes them" in shown


def test_a_rewritten_file_says_which_version_is_uploaded() -> None:
    """A file whose closed version waits for its upload and that was written since (REWRITTEN)."""
    from s3files.status import _why_kept, _why_live

    live = _why_live({"state": "rewritten", "open_handles": 1}, retrying=1)
    assert live == (
        "closed or fsynced, upload failed, retried in the background; written again since (the closed"
        " version is uploaded), 1 open handle"
    )
    assert _why_kept({"state": "rewritten", "acknowledged": False}) == (
        "closed or fsynced, then written again: the next mount uploads the closed version, keeps the rest"
    )
