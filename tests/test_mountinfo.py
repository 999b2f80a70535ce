"""Reading /proc/self/mountinfo: the kernel's escapes undone on bytes, paths that are not ASCII, and no
pyfuse3 for the front ends that only need to know what is mounted."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3files.mountinfo import MountEntry, mount_entry, parse_line, unescape

TRICKY = [
    "/mnt/plain",
    "/mnt/with space",
    "/mnt/tab\there",
    "/mnt/new\nline",
    "/mnt/back\\slash",
    "/mnt/not\\040a space",  # a real backslash followed by digits must stay as it is
    "/mnt/dü",
    "/mnt/naïve café/日本語",
    "/mnt/emoji 📁",
    "/mnt/" + os.fsdecode(b"latin1-\xe9"),  # not UTF-8: kept as surrogates, like any Python path
]


def kernel_escape(path: str) -> bytes:
    """A path as the kernel writes it in mountinfo (fs/proc_namespace.c: mangle " \\t\\n\\\\")."""
    raw = os.fsencode(path)
    for char in b"\\ \t\n":
        raw = raw.replace(bytes([char]), b"\\%03o" % char)
    return raw


@pytest.mark.parametrize("path", TRICKY)
def test_unescape_gives_back_the_path(path: str) -> None:
    escaped = kernel_escape(path)
    assert b" " not in escaped and b"\n" not in escaped
    assert unescape(escaped) == path


def test_unescape_decodes_utf8_once() -> None:
    assert unescape("/mnt/dü".encode()) == "/mnt/dü"  # not 'dÃ¼', which unicode_escape made of it
    assert unescape(b"/mnt/a\\040b\\134c\\011d\\012e") == "/mnt/a b\\c\td\ne"
    assert unescape(b"/mnt/\\777") == "/mnt/\\777"  # not a byte: left alone


def test_parse_line_with_optional_fields() -> None:
    line = kernel_escape("/tmp/x/dü 📁")
    raw = b"36 35 0:52 / " + line + b" rw,nosuid shared:1 master:2 - fuse.s3files s3://b/ rw,user_id=0\n"
    assert parse_line(raw) == MountEntry("0:52", "/tmp/x/dü 📁", "fuse.s3files")


@pytest.fixture
def tmpfs_on() -> Iterator[list[Path]]:
    """Mount points this test mounted a tmpfs on, unmounted afterwards."""
    mounted: list[Path] = []
    yield mounted
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", os.fsencode(path)], check=False, capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_kernel_mountinfo_round_trips_tricky_names(tmp_path: Path, tmpfs_on: list[Path]) -> None:
    """The real kernel's escaping, not our idea of it: every tricky folder is found once mounted."""
    for i, path in enumerate(TRICKY):
        folder = tmp_path / f"{i}-{path.removeprefix('/mnt/').replace('/', '|')}"
        folder.mkdir()
        assert mount_entry(folder) is None
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "s3files-test", os.fsencode(folder)])
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
        tmpfs_on.append(folder)
        entry = mount_entry(folder)
        assert entry is not None and entry.fstype == "tmpfs", (path, entry)
        assert entry.mountpoint == str(folder)


def test_front_ends_do_not_import_pyfuse3() -> None:
    """The CLI, the library and the benchmark's mount helpers read mountinfo without FUSE bindings."""
    code = (
        "import sys, s3files, s3files.api, s3files.cli, s3files.mountinfo, s3files_bench.mounts, s3files_bench.cli\n"
        "assert 'pyfuse3' not in sys.modules, 'pyfuse3 imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
