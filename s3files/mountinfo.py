"""What is mounted where, from /proc/self/mountinfo, and the checks of a mount point before mounting.

Owns: parsing mountinfo (the kernel's octal escapes included), ``check_mountpoint``, and stale mounts:
a FUSE mount whose daemon died (kill -9, OOM) stays in the mount table and answers every access with
ENOTCONN ("Transport endpoint is not connected") until it is unmounted; ``clean_stale`` does that, for
``s3files mount`` on that mount point and for ``s3files unmount``. Must not import
pyfuse3 (or anything that does): the CLI, the library and the benchmark read mountinfo through this
module without loading FUSE bindings.

The kernel writes a mount point as raw path bytes with four characters escaped as ``\\ooo`` octal (space
``\\040``, tab ``\\011``, newline ``\\012``, backslash ``\\134``); anything else, UTF-8 included, is left
as it is. So the fields are unescaped as bytes and only then decoded, with surrogateescape as Python does
for paths: a mount point that is not valid UTF-8 still compares equal to ``str(Path)`` of it.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from s3files.errors import MountError

MOUNTINFO = "/proc/self/mountinfo"

_OCTAL = re.compile(rb"\\([0-3][0-7]{2})")  # a byte: \000 to \377


class MountEntry(NamedTuple):
    """One line of mountinfo: ``device`` is major:minor (as in /sys/class/bdi), ``fstype`` e.g. fuse.s3files."""

    device: str
    mountpoint: str
    fstype: str


def unescape(field: bytes) -> str:
    """A mountinfo field as a path string: octal escapes undone on the bytes, then UTF-8 decoded."""
    raw = _OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field)
    return raw.decode("utf-8", "surrogateescape")


def parse_line(line: bytes) -> MountEntry:
    """Fields are separated by single spaces (a space inside a path is escaped); optional fields end at '-'."""
    fields = line.rstrip(b"\n").split(b" ")
    sep = fields.index(b"-")
    return MountEntry(fields[2].decode(), unescape(fields[4]), unescape(fields[sep + 1]))


def mounts() -> Iterator[MountEntry]:
    """Every mount this process sees, in mount order."""
    with open(MOUNTINFO, "rb") as info:
        for line in info:
            yield parse_line(line)


def mount_entry(mountpoint: Path) -> MountEntry | None:
    """The mount at ``mountpoint`` (the last one, if several are stacked there), or None."""
    target = str(mountpoint)
    found = None
    for entry in mounts():
        if entry.mountpoint == target:
            found = entry
    return found


def is_stale(mountpoint: Path) -> bool:
    """Is ``mountpoint`` a FUSE mount whose daemon is gone (every access: ENOTCONN)?"""
    entry = mount_entry(mountpoint)
    if entry is None or not entry.fstype.startswith("fuse"):
        return False
    try:
        os.statvfs(mountpoint)  # always asks the daemon (a stat may be answered from the kernel's cache)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def clean_stale(mountpoint: Path) -> str | None:
    """Unmount ``mountpoint`` if it is a stale FUSE mount (fusermount3 -u; lazily if something still
    holds it: a dead mount has nothing to flush) and return the one line that says so, else None.
    MountError if it stays mounted."""
    if not is_stale(mountpoint):
        return None
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    commands = [[tool, "-u"], [tool, "-uz"]] if tool else []
    for command in [*commands, ["umount", "-l"]]:
        subprocess.run([*command, str(mountpoint)], capture_output=True, timeout=30, check=False)
        if mount_entry(mountpoint) is None:
            return (
                f"{mountpoint} was left mounted by a daemon that died (Transport endpoint is not connected);"
                " unmounted it"
            )
    raise MountError(
        f"{mountpoint} was left mounted by a daemon that died and cannot be unmounted; try: sudo umount -l {mountpoint}"
    )


def check_mountpoint(mountpoint: Path) -> str | None:
    """Refuse a mount point that is missing, not a folder, or already mounted; say what to do. A stale
    mount left there by a daemon that died is unmounted first: the line that says so is returned."""
    cleaned = clean_stale(mountpoint)
    if mount_entry(mountpoint) is not None:
        raise MountError(
            f"mount point {mountpoint} is already mounted; unmount it first (s3files unmount {mountpoint})"
        )
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise MountError(f"mount point {mountpoint} does not exist; create it with mkdir -p") from None
    except OSError as exc:
        raise MountError(f"mount point {mountpoint} cannot be used: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mount point {mountpoint} is not a folder")
    return cleaned
