"""Handler 2: a CSV report: aggregate a large CSV of sales into a small summary (pandas, in chunks).

Input: ``data/sales.csv`` (``region,product,quantity,price_cents``; ~200 MB, 2 MB for --quick). Output:
``report.csv``: rows, quantity and revenue (cents, integers: exact in any order) per region and product.
Read in chunks of 500,000 rows, as a function with bounded memory must.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any

import pandas as pd
from s3files_bench.handlers.common import LOCAL, Files, progress

NAME = "csv_report"
WHAT = "aggregate a large CSV into a summary (pandas, chunks)"
INPUT = "data"  # the input folder, below the handler's inputs
PROCESSES = 1
SDK_CODE = ("sdk",)
FILES_CODE = ("files",)
SHARED_CODE = ("summarize",)
CHUNK_ROWS = 500_000
REGIONS = ("africa", "americas-north", "americas-south", "asia-east", "asia-south", "europe", "oceania")


def summarize(source: IO[bytes], size: int, dest: IO[str]) -> None:
    parts = []
    for chunk in pd.read_csv(source, chunksize=CHUNK_ROWS):
        chunk["revenue_cents"] = chunk["quantity"] * chunk["price_cents"]
        groups = chunk.groupby(["region", "product"])
        part = groups[["quantity", "revenue_cents"]].sum()
        part.insert(0, "rows", groups.size())
        parts.append(part)
        progress(source.tell(), size)
    pd.concat(parts).groupby(level=[0, 1]).sum().to_csv(dest)


def files(src: str, dst: str, fs: Files = LOCAL) -> None:
    """The files version: paths in, paths out."""
    source = posixpath.join(src, "sales.csv")
    fs.makedirs(dst, exist_ok=True)
    with fs.open(source, "rb") as f, fs.open(posixpath.join(dst, "report.csv"), "w", newline="") as out:
        summarize(f, fs.stat(source).st_size, out)


def sdk(client: Any, bucket: str, src: str, dst: str, tmp: str) -> None:
    """The SDK version: download to /tmp, process, upload, clean up."""
    # [cleanup]
    work = tempfile.mkdtemp(dir=tmp)
    try:
        # [/cleanup]
        local_in, local_out = os.path.join(work, "sales.csv"), os.path.join(work, "report.csv")
        # [transfer]
        client.download_file(bucket, f"{src}/sales.csv", local_in)
        # [/transfer]
        with open(local_in, "rb") as f, open(local_out, "w", newline="") as out:
            summarize(f, os.path.getsize(local_in), out)
        # [transfer]
        client.upload_file(local_out, bucket, f"{dst}/report.csv")
        # [/transfer]
    # [cleanup]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # [/cleanup]


def make_inputs(folder: Path, quick: bool) -> None:
    """``folder/data/sales.csv`` of about 200 MB (2 MB quick), deterministic."""
    import numpy as np

    target = (2 if quick else 200) * 1024 * 1024
    rng = np.random.default_rng(19)
    products = np.array([f"product-{i:03d}" for i in range(60)])
    regions = np.array(REGIONS)
    path = folder / INPUT / "sales.csv"
    path.parent.mkdir(parents=True)
    with open(path, "w", newline="") as out:
        out.write("region,product,quantity,price_cents\n")
        while out.tell() < target:
            rows = 20_000 if quick else 400_000
            frame = pd.DataFrame(
                {
                    "region": regions[rng.integers(0, len(regions), rows)],
                    "product": products[rng.integers(0, len(products), rows)],
                    "quantity": rng.integers(1, 10, rows),
                    "price_cents": rng.integers(99, 99_999, rows),
                }
            )
            frame.to_csv(out, header=False, index=False)
