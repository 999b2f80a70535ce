"""The store seam: the ONLY package that talks to S3 (aiobotocore/botocore live here and nowhere else).

``S3Store``/``open_s3_store``/``create_bucket`` (and the trio->asyncio bridge) are imported lazily, so code
that only needs the protocol or the in-memory store does not pay for importing aiobotocore. The S3
store's modules (session, error translation, object and multipart requests, the direct path) are listed
in s3.py's docstring.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from s3files.store.base import (
    CompletedPart,
    Copied,
    ListPage,
    MultipartUpload,
    ObjectInfo,
    ObjectStore,
    RequestCounts,
)
from s3files.store.memory import MemoryStore

if TYPE_CHECKING:
    from s3files.store.bridge import AsyncioThread, open_asyncio_thread
    from s3files.store.s3 import S3Store, create_bucket, open_s3_store

_LAZY = {
    "AsyncioThread": "s3files.store.bridge",
    "open_asyncio_thread": "s3files.store.bridge",
    "S3Store": "s3files.store.s3",
    "create_bucket": "s3files.store.s3",
    "open_s3_store": "s3files.store.s3",
}

__all__ = [
    "AsyncioThread",
    "CompletedPart",
    "Copied",
    "ListPage",
    "MemoryStore",
    "MultipartUpload",
    "ObjectInfo",
    "ObjectStore",
    "RequestCounts",
    "S3Store",
    "create_bucket",
    "open_asyncio_thread",
    "open_s3_store",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
