"""``s3files bench --workloads handlers``: real function handlers, each in two versions, compared end to end.

Every handler exists twice: an SDK version as functions are written today (boto3, download to /tmp,
process, upload, clean up) and a files version (plain file calls on paths), which runs unchanged on an
s3files mount (``Files`` = the builtins) and on ``s3files.open_fs`` (``Files`` = the OpenFS methods).
Each invocation is a child process, as a function invocation is (``child``).

Modules, one concern each: ``common`` (the file calls a files version makes, the halfway kill),
``thumbnails``, ``csvreport``, ``packaging``, ``agents`` (the handlers, their inputs and expected
outputs), ``child`` (one invocation), ``loc`` (lines of code per version, transfer and cleanup counted
from ``# [transfer]`` / ``# [cleanup]`` regions), ``cost`` (THE price table: S3 requests, Lambda
GB-seconds, with their date), ``run`` (seeding, the measured rounds, the killed runs), ``report``
(tables). Results and how to read them: bench/RESULTS.md, "Handlers".
"""

from __future__ import annotations

import importlib
from types import ModuleType

NAMES = ("thumbnails", "csv_report", "packaging", "agents")
MODULES = {"thumbnails": "thumbnails", "csv_report": "csvreport", "packaging": "packaging", "agents": "agents"}


def handlers(names: tuple[str, ...] = NAMES) -> dict[str, ModuleType]:
    """The handler modules by name, in the order of the report; only those named are imported, so a
    child's memory holds its own handler's libraries (Pillow, pandas) and no other's."""
    return {name: importlib.import_module(f"s3files_bench.handlers.{MODULES[name]}") for name in names}
