"""The transform workload's worker, run as a child process so its peak memory is its own.

``python -m s3files_bench.transform MODE ...`` uppercases a text object line by line (a streaming
transform: output byte i depends only on input byte i, so any chunking is line-wise correct) in one of
three ways, and prints one JSON line: ``{"seconds": wall time of the work, "requests": {op: n}}`` or
``{"error": ...}``. Timing starts after imports, so Python's start-up is not counted against anyone.

- ``files SRC DST``: plain file code; with SRC and DST on a mount, that is "process through the mount".
  It imports no SDK at all, which is the point of a mount.
- ``sdk ENDPOINT BUCKET SRC_KEY DST_KEY REGION``: the raw SDK done well: stream GetObject through the
  transform into a multipart upload of 8 MiB parts; no local disk, memory bounded by one part.
- ``baseline ENDPOINT BUCKET SRC_KEY DST_KEY REGION TMPDIR``: download-process-upload as most scripts do
  it: boto3 download_file to a temp dir, transform file to file, upload_file.

ENDPOINT is ``-`` for AWS; credentials come from the environment the harness gives the child.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

CHUNK = 1024 * 1024
PART = 8 * 1024 * 1024


def process(data: bytes) -> bytes:
    return data.upper()


def transform_files(source: Path, dest: Path) -> None:
    with open(source, "rb", buffering=0) as src, open(dest, "wb", buffering=0) as dst:
        while data := src.read(CHUNK):
            out = memoryview(process(data))
            while out:
                out = out[dst.write(out) :]


def _client(endpoint: str, region: str) -> tuple[Any, Any]:
    from s3files_bench.sdk import RequestCounter, make_client
    from s3files_bench.servers import Target

    counter = RequestCounter()
    target = Target("endpoint", None if endpoint == "-" else endpoint, "", "", region, None, None, {})
    return make_client(target, counter), counter


def transform_sdk(client: Any, bucket: str, source: str, dest: str) -> None:
    body = client.get_object(Bucket=bucket, Key=source)["Body"]
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=dest)["UploadId"]
    parts: list[dict[str, Any]] = []
    pending = bytearray()

    def flush() -> None:
        number = len(parts) + 1
        etag = client.upload_part(
            Bucket=bucket, Key=dest, UploadId=upload_id, PartNumber=number, Body=bytes(pending)
        )["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
        pending.clear()

    try:
        for data in body.iter_chunks(CHUNK):
            pending += process(data)
            if len(pending) >= PART:
                flush()
        if pending or not parts:
            flush()
        client.complete_multipart_upload(
            Bucket=bucket, Key=dest, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        client.abort_multipart_upload(Bucket=bucket, Key=dest, UploadId=upload_id)
        raise


def transform_baseline(client: Any, bucket: str, source: str, dest: str, tmp: Path) -> None:
    from s3files_bench.sdk import TRANSFER

    local_in, local_out = tmp / "in.txt", tmp / "out.txt"
    client.download_file(bucket, source, str(local_in), Config=TRANSFER)
    transform_files(local_in, local_out)
    client.upload_file(str(local_out), bucket, dest, Config=TRANSFER)
    local_in.unlink()
    local_out.unlink()


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM; fresh since exec, unlike ru_maxrss)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str]) -> int:
    mode, args = argv[0], argv[1:]
    counter = None
    start = time.perf_counter()
    try:
        if mode == "files":
            transform_files(Path(args[0]), Path(args[1]))
        else:
            from botocore.exceptions import BotoCoreError, ClientError

            endpoint, bucket, source, dest, region = args[:5]
            try:
                client, counter = _client(endpoint, region)
                if mode == "sdk":
                    transform_sdk(client, bucket, source, dest)
                else:
                    transform_baseline(client, bucket, source, dest, Path(args[5]))
            except (BotoCoreError, ClientError) as exc:
                print(json.dumps({"error": str(exc)}))
                return 0
    except OSError as exc:
        from s3files_bench.errors import describe

        print(json.dumps({"error": describe(exc)}))
        return 0
    answer: dict[str, Any] = {"seconds": time.perf_counter() - start, "peak_rss_bytes": peak_rss()}
    if counter is not None:
        answer["requests"] = counter.snapshot()
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
