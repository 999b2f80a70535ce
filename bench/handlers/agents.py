"""Handler 4: an agent workspace: 4 processes read a shared tree, write their own outputs and append to
a shared log, each through its own file system (its own mount, its own open_fs, or its own SDK client).

Inputs: ``docs/``: 100 text documents of ~16 KiB (4 of 2 KiB for --quick). Agent i scores every document
(words whose length mod 4 is i), writes ``agent-i.json``, and appends a line to the shared ``log.txt``
after each quarter of its documents. The log is the contended part: S3 has no append, so every version
rewrites the object. The SDK version does what scripts do (read it, add the line, put it back: the last
writer wins, lines are lost); through s3files a close that meets a newer log keeps the writer's version
as a conflict copy beside it (docs/SEMANTICS.md, conflicts). The report counts the lines the log kept.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from s3files_bench.handlers.common import LOCAL, Files, list_keys, progress

NAME = "agents"
WHAT = "4 processes read a shared tree, write outputs, append to a shared log"
INPUT = "docs"  # the input folder, below the handler's inputs
PROCESSES = 4
SDK_CODE = ("sdk", "common.list_keys", "_append")
FILES_CODE = ("files", "append")
SHARED_CODE = ("score", "log_line")
ATTEMPTS = 10  # appends tried before the conflict is the handler's error
WORDS = ("alpha", "beta", "gamma", "delta", "s3", "file", "mount", "object", "bucket", "lambda", "agent", "a")


def score(text: str, agent: int) -> int:
    return sum(1 for word in text.split() if len(word) % 4 == agent)


def log_line(agent: int, done: int, total: int) -> str:
    return f"agent {agent}: {done}/{total} documents\n"


def files(src: str, dst: str, agent: int, fs: Files = LOCAL) -> None:
    """The files version: paths in, paths out, the log appended to."""
    names = sorted(fs.listdir(src))
    fs.makedirs(dst, exist_ok=True)
    scores = {}
    for i, name in enumerate(names):
        with fs.open(posixpath.join(src, name)) as f:
            scores[name] = score(f.read(), agent)
        if (i + 1) % max(1, len(names) // 4) == 0:
            append(fs, posixpath.join(dst, "log.txt"), log_line(agent, i + 1, len(names)))
        progress(i + 1, len(names))
    with fs.open(posixpath.join(dst, f"agent-{agent}.json"), "w") as out:
        json.dump(scores, out, sort_keys=True)


def append(fs: Files, path: str, line: str) -> None:
    """Append ``line``; when another agent's append landed first, the close fails (EIO, this writer's
    bytes kept as a conflict copy) or the log changed while it was read (ESTALE): append again, to the
    newer log."""
    # [errors]
    for attempt in range(ATTEMPTS):
        try:
            # [/errors]
            with fs.open(path, "a") as log:
                log.write(line)
            # [errors]
            return
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.ESTALE) or attempt == ATTEMPTS - 1:
                raise
    # [/errors]


def _append(client: Any, bucket: str, key: str, line: str) -> None:
    # [transfer]
    try:
        old = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        old = b""
    client.put_object(Bucket=bucket, Key=key, Body=old + line.encode())
    # [/transfer]


def sdk(client: Any, bucket: str, src: str, dst: str, tmp: str, agent: int) -> None:
    """The SDK version: download the tree to /tmp, score, upload, append by rewriting, clean up."""
    # [transfer]
    keys = list_keys(client, bucket, src + "/")
    # [/transfer]
    # [cleanup]
    work = tempfile.mkdtemp(dir=tmp)
    try:
        # [/cleanup]
        scores = {}
        for i, key in enumerate(keys):
            local = os.path.join(work, posixpath.basename(key))
            # [transfer]
            client.download_file(bucket, key, local)
            # [/transfer]
            with open(local) as f:
                scores[posixpath.basename(key)] = score(f.read(), agent)
            if (i + 1) % max(1, len(keys) // 4) == 0:
                # [transfer]
                _append(client, bucket, f"{dst}/log.txt", log_line(agent, i + 1, len(keys)))
                # [/transfer]
            progress(i + 1, len(keys))
        local_out = os.path.join(work, f"agent-{agent}.json")
        with open(local_out, "w") as out:
            json.dump(scores, out, sort_keys=True)
        # [transfer]
        client.upload_file(local_out, bucket, f"{dst}/agent-{agent}.json")
        # [/transfer]
    # [cleanup]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # [/cleanup]


def make_inputs(folder: Path, quick: bool) -> None:
    """``folder/docs/``: documents of seeded random words."""
    count, size = (4, 2048) if quick else (100, 16 * 1024)
    out = folder / INPUT
    out.mkdir(parents=True)
    rng = random.Random(19)
    for i in range(count):
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < size:
            words.append(rng.choice(WORDS))
        (out / f"doc-{i:03d}.txt").write_text(" ".join(words) + "\n")


def expected_log(quick: bool) -> list[str]:
    """Every line the 4 agents append (the order depends on their race)."""
    count = 4 if quick else 100
    step = max(1, count // 4)
    return [log_line(a, done, count) for a in range(PROCESSES) for done in range(step, count + 1, step)]
