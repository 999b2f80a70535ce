"""What is mounted where, from /proc/self/mountinfo, and the checks of a mount point before mounting.

Owns: parsing mountinfo and ``check_mountpoint``. Must not import pyfuse3 (or anything that does): the
CLI, the library and the benchmark read mountinfo through this module without loading FUSE bindings.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from s3files.errors import MountError


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (space is \\040)."""
    return field.encode().decode("unicode_escape")


def mount_entry(mountpoint: Path) -> tuple[str, str] | None:
    """(major:minor, fstype) of the mount at ``mountpoint`` per /proc/self/mountinfo, or None."""
    target = str(mountpoint)
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        for line in info:
            fields = line.split()
            sep = fields.index("-")
            if _unescape(fields[4]) == target:
                found = (fields[2], fields[sep + 1])
    return found


def check_mountpoint(mountpoint: Path) -> None:
    """Refuse a mount point that is missing, not a folder, or already mounted; say what to do."""
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
