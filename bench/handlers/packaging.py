"""Handler 3: packaging: zip a folder of files into one archive object (zipfile, deflate).

Inputs: ``files/``: 200 text files of 256 KiB (50 MiB; 5 of 4 KiB for --quick). Output: ``archive.zip``,
byte-for-byte reproducible (sorted names, fixed times and modes), so the two versions' archives compare.
"""

from __future__ import annotations

import base64
import os
import posixpath
import random
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from s3files_bench.handlers.common import LOCAL, Files, list_keys, progress

NAME = "packaging"
WHAT = "zip a folder of files into one archive object"
INPUT = "files"  # the input folder, below the handler's inputs
PROCESSES = 1
SDK_CODE = ("sdk", "common.list_keys")
FILES_CODE = ("files",)
SHARED_CODE = ("add",)
STAMP = (2026, 1, 1, 0, 0, 0)


def add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, STAMP)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data, compresslevel=6)


def files(src: str, dst: str, fs: Files = LOCAL) -> None:
    """The files version: paths in, paths out."""
    names = sorted(fs.listdir(src))
    fs.makedirs(dst, exist_ok=True)
    with fs.open(posixpath.join(dst, "archive.zip"), "wb") as out, zipfile.ZipFile(out, "w") as archive:
        for i, name in enumerate(names):
            with fs.open(posixpath.join(src, name), "rb") as f:
                add(archive, name, f.read())
            progress(i + 1, len(names))


def sdk(client: Any, bucket: str, src: str, dst: str, tmp: str) -> None:
    """The SDK version: download each file to /tmp, zip there, upload, clean up."""
    # [transfer]
    keys = list_keys(client, bucket, src + "/")
    # [/transfer]
    # [cleanup]
    work = tempfile.mkdtemp(dir=tmp)
    try:
        # [/cleanup]
        local_zip = os.path.join(work, "archive.zip")
        with zipfile.ZipFile(local_zip, "w") as archive:
            for i, key in enumerate(keys):
                local = os.path.join(work, "part")
                # [transfer]
                client.download_file(bucket, key, local)
                # [/transfer]
                with open(local, "rb") as f:
                    add(archive, posixpath.basename(key), f.read())
                # [cleanup]
                os.remove(local)
                # [/cleanup]
                progress(i + 1, len(keys))
        # [transfer]
        client.upload_file(local_zip, bucket, f"{dst}/archive.zip")
        # [/transfer]
    # [cleanup]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # [/cleanup]


def make_inputs(folder: Path, quick: bool) -> None:
    """``folder/files/``: text files (base64 of seeded random bytes: deflate saves about a quarter)."""
    count, size = (5, 4096) if quick else (200, 256 * 1024)
    out = folder / INPUT
    out.mkdir(parents=True)
    rng = random.Random(19)
    for i in range(count):
        (out / f"file-{i:04d}.txt").write_bytes(base64.encodebytes(rng.randbytes(size * 3 // 4))[:size])
