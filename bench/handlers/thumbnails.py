"""Handler 1: a 256-pixel JPEG thumbnail of every JPEG in a folder (Pillow).

Inputs: ``images/`` of synthetic photos (a gradient with noise, so JPEG cannot shrink them much):
40 of 2048x1536 (~2-4 MB each), 3 tiny ones for --quick. Outputs: ``NAME.jpg`` per input, in the
output folder. Decoding uses JPEG's draft mode (scaled DCT), as thumbnailers do, so the work is mostly
moving bytes: the case where the transfer glue dominates.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any

from PIL import Image
from s3files_bench.handlers.common import LOCAL, Files, list_keys, progress

NAME = "thumbnails"
WHAT = "thumbnail every JPEG of a folder (Pillow)"
INPUT = "images"  # the input folder, below the handler's inputs
PROCESSES = 1
SDK_CODE = ("sdk", "common.list_keys")
FILES_CODE = ("files",)
SHARED_CODE = ("thumbnail",)
BOX = (256, 256)


def thumbnail(source: IO[bytes], dest: IO[bytes]) -> None:
    with Image.open(source) as image:
        image.draft("RGB", (BOX[0] * 2, BOX[1] * 2))
        small = image.convert("RGB")
    small.thumbnail(BOX)
    small.save(dest, "JPEG", quality=85)


def files(src: str, dst: str, fs: Files = LOCAL) -> None:
    """The files version: paths in, paths out."""
    names = sorted(n for n in fs.listdir(src) if n.endswith(".jpg"))
    fs.makedirs(dst, exist_ok=True)
    for i, name in enumerate(names):
        with fs.open(posixpath.join(src, name), "rb") as f, fs.open(posixpath.join(dst, name), "wb") as out:
            thumbnail(f, out)
        progress(i + 1, len(names))


def sdk(client: Any, bucket: str, src: str, dst: str, tmp: str) -> None:
    """The SDK version: list, download to /tmp, process, upload, clean up."""
    # [transfer]
    keys = [k for k in list_keys(client, bucket, src + "/") if k.endswith(".jpg")]
    # [/transfer]
    # [cleanup]
    work = tempfile.mkdtemp(dir=tmp)
    try:
        # [/cleanup]
        for i, key in enumerate(keys):
            name = posixpath.basename(key)
            local_in, local_out = os.path.join(work, name), os.path.join(work, "thumb-" + name)
            # [transfer]
            client.download_file(bucket, key, local_in)
            # [/transfer]
            with open(local_in, "rb") as f, open(local_out, "wb") as out:
                thumbnail(f, out)
            # [transfer]
            client.upload_file(local_out, bucket, f"{dst}/{name}")
            # [/transfer]
            # [cleanup]
            os.remove(local_in)
            os.remove(local_out)
            # [/cleanup]
            progress(i + 1, len(keys))
    # [cleanup]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # [/cleanup]


def make_inputs(folder: Path, quick: bool) -> None:
    """The input photos under ``folder/images`` (deterministic: seeded noise)."""
    import numpy as np

    count, (width, height) = (3, (320, 240)) if quick else (40, (2048, 1536))
    out = folder / INPUT
    out.mkdir(parents=True)
    rng = np.random.default_rng(19)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1).astype(np.int16)
    for i in range(count):
        noise = rng.integers(-90, 90, (height, width, 3), dtype=np.int16)
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(out / f"photo-{i:03d}.jpg", "JPEG", quality=95)
