"""What the handlers share: the file calls a files version makes, and the halfway kill.

``Files`` is why one files version serves both fronts: on a mount its calls are the builtins (``open``,
``os.listdir``, ``os.makedirs``, ``os.stat``) on mounted paths; with ``open_fs`` they are the OpenFS
methods of the same names and signatures on paths below the source. The handler code is the same text.

``progress(done, total)``: a handler calls it after each unit of its work. With
``S3FILES_HANDLER_KILL_AT_HALF=1`` in its environment the process SIGKILLs itself the first time half the
work is done: exactly what a function killed at a timeout sees (no ``finally``, no ``atexit``, no
flush), at a point that does not depend on the machine's speed.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KILL_ENV = "S3FILES_HANDLER_KILL_AT_HALF"


@dataclass(frozen=True)
class Files:
    """The file calls of a files-version handler (the builtins' signatures)."""

    open: Callable[..., Any]
    listdir: Callable[[str], list[str]]
    makedirs: Callable[..., None]
    stat: Callable[[str], os.stat_result]


LOCAL = Files(open=open, listdir=os.listdir, makedirs=os.makedirs, stat=os.stat)


def on_open_fs(fs: Any) -> Files:
    """The same calls on an ``s3files.open_fs`` file system (paths below its source)."""
    return Files(open=fs.open, listdir=fs.listdir, makedirs=fs.makedirs, stat=fs.stat)


def progress(done: int, total: int) -> None:
    """After each unit of work; kills this process at half the work when asked (module docstring)."""
    if os.environ.get(KILL_ENV) == "1" and 2 * done >= total:
        os.kill(os.getpid(), signal.SIGKILL)


def list_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    """Every key under ``prefix`` (paginated), as an SDK handler lists its input."""
    # [transfer]
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return sorted(keys)
    # [/transfer]
