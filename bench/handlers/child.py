"""One handler invocation, as a function runtime runs one: ``python -m s3files_bench.handlers.child CONFIG``.

CONFIG is a JSON object: ``handler``, ``mode`` (``sdk``: boto3 and ``tmp``; ``files``: paths under
``root``, a mount; ``open_fs``: paths below ``source`` through s3files.open_fs with ``cache_dir``),
``src`` and ``dst`` (key prefixes for sdk, relative paths otherwise), ``bucket``, ``endpoint`` (None:
AWS), ``region``, and ``agent`` for the agents handler. Prints one JSON line: ``seconds`` (the handler's
wall time, after imports; for open_fs up to close() returning), ``start_s`` (making the boto3 client,
or open_fs() until it returns), ``peak_rss_bytes`` (VmHWM),
``requests`` (sdk: counted by the client; open_fs: the core's counts), or ``{"error": ...}``.
Credentials come from the environment the harness gives (the server's keys).
"""

from __future__ import annotations

import json
import posixpath
import sys
import time
from typing import Any

from s3files_bench.handlers import handlers
from s3files_bench.handlers.common import on_open_fs
from s3files_bench.transform import peak_rss


def invoke(config: dict[str, Any]) -> dict[str, Any]:
    """Run the configured handler once; what the child prints."""
    module = handlers((config["handler"],))[config["handler"]]
    extra = {"agent": config["agent"]} if "agent" in config else {}
    mode = config["mode"]
    answer: dict[str, Any] = {}
    failures: tuple[type[BaseException], ...] = (OSError,)  # the files version on a mount imports no SDK
    if mode == "sdk":
        from botocore.exceptions import BotoCoreError, ClientError
        from s3files_bench.sdk import RequestCounter, make_client
        from s3files_bench.servers import Target

        failures = (OSError, BotoCoreError, ClientError)
        counter = RequestCounter()
        started = time.perf_counter()
        target = Target("endpoint", config["endpoint"], config["bucket"], "", config["region"], None, None, {})
        client = make_client(target, counter)
        answer["start_s"] = time.perf_counter() - started
    elif mode == "open_fs":
        import s3files
        from s3files.errors import S3FilesError

        failures = (OSError, S3FilesError)
    start = time.perf_counter()
    try:
        if mode == "sdk":
            module.sdk(client, config["bucket"], config["src"], config["dst"], config["tmp"], **extra)
            answer["requests"] = counter.snapshot()
        elif mode == "files":
            root = config["root"]
            module.files(posixpath.join(root, config["src"]), posixpath.join(root, config["dst"]), **extra)
        else:
            fs = s3files.open_fs(
                config["source"], endpoint_url=config["endpoint"], region=config["region"],
                cache_dir=config["cache_dir"],
            )
            try:
                answer["start_s"] = time.perf_counter() - start
                start = time.perf_counter()  # the start is reported apart, as the client's and the mount's
                module.files(config["src"], config["dst"], fs=on_open_fs(fs), **extra)
                answer["requests"] = fs.statistics()["requests"]
            finally:
                fs.close()
    except failures as exc:
        from s3files_bench.errors import describe

        return {"error": describe(exc)}
    answer["seconds"] = time.perf_counter() - start
    answer["peak_rss_bytes"] = peak_rss()
    return answer


def main(argv: list[str]) -> int:
    print(json.dumps(invoke(json.loads(argv[0]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
