"""s3files: mount an S3 bucket (or a prefix of it) as a file system that plain-file code can use.

    with s3files.mount("s3://bucket/prefix", "/mnt/data") as root:
        text = (root / "notes.txt").read_text()
"""

from s3files.api import mount, sync
from s3files.errors import MountError, S3FilesError
from s3files.options import Consistency

__version__ = "0.1.0"
__all__ = ["Consistency", "MountError", "S3FilesError", "mount", "sync"]
