"""s3files: mount an S3 bucket (or a prefix of it) as a file system that plain-file code can use.

    with s3files.mount("s3://bucket/prefix", "/mnt/data") as root:
        text = (root / "notes.txt").read_text()

    with s3files.open_fs("s3://bucket/prefix/") as fs:      # the same, without FUSE (AWS Lambda)
        with fs.open("notes.txt") as f:
            text = f.read()
"""

from typing import Any

from s3files.api import MountedFolder, mount, sync
from s3files.errors import MountError, S3FilesError
from s3files.options import Consistency

__version__ = "0.1.0"
__all__ = ["Consistency", "MountError", "MountedFolder", "OpenFS", "S3FilesError", "mount", "open_fs", "sync"]


def __getattr__(name: str) -> Any:
    # open_fs imports the core (trio and the rest) only when used: the CLI's quick commands stay light.
    if name in ("OpenFS", "open_fs"):
        from s3files import openfs

        return getattr(openfs, name)
    raise AttributeError(f"module 's3files' has no attribute {name!r}")
