"""The error hierarchy of s3files and THE errno table.

Every failure the file system can report is an ``S3FilesError`` carrying an errno. The FUSE adapter turns
it into ``FUSEError(errno)``; the CLI prints ``str(error)`` as the one line a user reads. Store errors
(raised by ``s3files.store``, which translates S3/botocore errors once) are subclasses too, so the core can
let them travel up unchanged when no better errno exists.

Nothing here imports pyfuse3 or botocore.
"""

from __future__ import annotations

import errno


class S3FilesError(Exception):
    """Base class. ``errno`` is what a file-system caller sees; ``str()`` is the user-facing line."""

    errno: int = errno.EIO
    quiet: bool = False  # part of normal work (logged at debug by the FUSE adapter), not a failure to report
    # What a failed operation's log line names (the FUSE adapter's ``op=... key=... s3=...``): the S3 key
    # of the request that failed and S3's error code (``AccessDenied``, ``SlowDown``...), set by the
    # store's translation (store/translate.py) on the error it raises; None when not known or not S3's.
    key: str | None = None
    s3_code: str | None = None


# --- file-system level -------------------------------------------------------------------------


class NotFound(S3FilesError):
    errno = errno.ENOENT


class NotADirectory(S3FilesError):
    errno = errno.ENOTDIR


class IsADirectory(S3FilesError):
    errno = errno.EISDIR


class ReadOnly(S3FilesError):
    # Writes on a --read-only mount: EROFS, which every tool reports as "Read-only file system".
    errno = errno.EROFS


class FileExists(S3FilesError):
    errno = errno.EEXIST


class NotEmpty(S3FilesError):
    errno = errno.ENOTEMPTY


class KindChanged(S3FilesError):
    # Judgement call: a name changed kind in S3 (a file became a symlink, say) while the kernel holds its
    # old inode. ESTALE, not attributes of the new type: the kernel would mark the inode bad (EIO from then
    # on), whereas ESTALE makes path walks look the name up again, and the lookup gives a new inode.
    errno = errno.ESTALE


class NotSupported(S3FilesError):
    errno = errno.ENOTSUP


class NamespaceNotStored(NotSupported):
    # setxattr of a namespace S3 does not hold (system.posix_acl_access, security.*): ENOTSUP, which
    # cp -a and rsync -X take quietly; they try it for every file, so it is not worth a warning each.
    quiet = True


class NoAttribute(S3FilesError):
    # An extended attribute that is not there (ENODATA, which is ENOATTR on Linux).
    errno = errno.ENODATA


class NoSpace(S3FilesError):
    # Judgement call: extended attributes beyond S3's 2 KB of user metadata are ENOSPC ("insufficient
    # space remaining to store the extended attribute", setxattr(2)), not E2BIG, which setxattr(2) keeps
    # for one value over the kernel's own limit; the message says it is S3's metadata limit.
    errno = errno.ENOSPC


class Unimplemented(S3FilesError):
    # ENOSYS: an operation this mount does not do at all (extended attributes with --no-xattrs). The
    # kernel remembers it per operation and stops asking, so getxattr before every write costs nothing.
    errno = errno.ENOSYS


class NotPermitted(S3FilesError):
    errno = errno.EPERM


class BadHandle(S3FilesError):
    # A handle number the kernel never got from us, or one already released.
    errno = errno.EBADF


class InvalidArgument(S3FilesError):
    errno = errno.EINVAL


class TooLarge(S3FilesError):
    # A size or offset past the largest object S3 stores (5 TiB), or past what the cache folder's file
    # system holds: EFBIG, as a local file system answers past its own limit, never EIO or ENOSPC.
    errno = errno.EFBIG


class InvalidName(S3FilesError):
    # A name that cannot be an S3 key segment we can round-trip (e.g. over 1024 bytes of key).
    errno = errno.ENAMETOOLONG


# --- store level (S3 said something, or could not be reached) -----------------------------------


class StoreError(S3FilesError):
    """S3 failed in a way a file system caller sees as an I/O error (5xx after retries, bad reply)."""

    errno = errno.EIO


class ObjectNotFound(StoreError, NotFound):
    errno = errno.ENOENT


class PreconditionFailed(StoreError):
    # The object changed under us (If-Match/If-None-Match refused). Judgement call: ESTALE tells a reader the
    # data it was reading is gone; writers map it to a conflict in the core.
    errno = errno.ESTALE


class UploadNotFound(StoreError):
    # S3 answered NoSuchUpload: the multipart upload was completed or aborted. EIO (a file caller cannot act
    # on it), but a class of its own: after a retried CompleteMultipartUpload whose first attempt S3 applied,
    # the core tells its own completion (the upload id in the object's user metadata) from a real loss.
    errno = errno.EIO


class AccessDenied(StoreError):
    errno = errno.EACCES


class BucketNotFound(StoreError):
    # S3's NoSuchBucket when a mount or open_fs starts (told apart from NoSuchKey by store/translate.py):
    # the CLI prints the line and exits; the library raises it with ENOENT, "no such bucket".
    errno = errno.ENOENT


class BucketGone(BucketNotFound):
    # NoSuchBucket from any later request: the bucket was deleted under a running mount. Judgement call:
    # EIO, not ENOENT: a close answering "no such file" would say the file is gone, while its bytes are
    # kept in the cache folder and uploaded once the bucket exists again.
    errno = errno.EIO


class CredentialsError(StoreError):
    # Missing or rejected credentials: EACCES, not EIO, because retrying will not help.
    errno = errno.EACCES


class EndpointUnreachable(StoreError):
    # Judgement call: EIO rather than ENETUNREACH/ETIMEDOUT, which many programs do not expect from files.
    errno = errno.EIO


# --- set-up (mount time) ------------------------------------------------------------------------


class MountError(S3FilesError):
    """The mount cannot start (bad mount point, bad source, ...). Message is shown as one line."""

    errno = errno.EINVAL
