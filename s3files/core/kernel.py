"""What the core tells the kernel's caches when it learns that S3 changed under them.

Owns: the ``KernelCache`` seam. The kernel keeps a file's attributes (size, mode, times) and its name for
the entry and attribute timeouts it was given (the mode's ``metadata_ttl``), and a file's pages until it is
opened again without ``keep_cache``. When the mount learns of a change by a way whose reply does not carry
the new attributes (an open's HEAD, a listing, a probe), the kernel would go on serving the old view for up
to that timeout: a file that grew outside would read truncated after an open that saw the new version.
So the superblock calls this seam; the FUSE adapter implements it with pyfuse3 (fuse/kernel.py), core
tests with a recording fake. Must not import pyfuse3 (the core knows nothing of FUSE).
"""

from __future__ import annotations

from typing import Protocol


class KernelCache(Protocol):
    """The kernel's caches of one mount. Every method returns at once and never raises: the kernel may
    not know the inode or name (it forgot them), and a request handler is calling."""

    def attributes_changed(self, ino: int) -> None:
        """``ino``'s attributes changed (mode, owner, times): the kernel asks for them again."""

    def data_changed(self, ino: int) -> None:
        """``ino``'s object is another version now: the kernel asks for its attributes again at once and
        drops its cached pages (soon after: it may have to wait for reads in flight)."""

    def entry_gone(self, parent_ino: int, name: str) -> None:
        """``name`` in folder ``parent_ino`` no longer names what the kernel thinks (deleted, or another
        kind now): the kernel looks it up again at its next use."""


class NoKernelCache:
    """No kernel (core tests, before the FUSE session starts): nothing to tell."""

    def attributes_changed(self, ino: int) -> None:
        pass

    def data_changed(self, ino: int) -> None:
        pass

    def entry_gone(self, parent_ino: int, name: str) -> None:
        pass
