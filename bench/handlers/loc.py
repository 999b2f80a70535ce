"""Lines of code of each handler version, counted from the sources, with transfer, cleanup and error
handling counted apart.

A version is the functions its module names (``SDK_CODE``, ``FILES_CODE``; ``common.NAME`` for one in
common.py); the processing both share (``SHARED_CODE``) is counted once, apart. Code lines only: no
blank lines, comments or docstrings. A line between ``# [transfer]`` and ``# [/transfer]`` (likewise
``cleanup``, ``errors``) counts in that region too; the markers are comments, so they are not counted.
"""

from __future__ import annotations

import ast
import inspect
import re
from types import ModuleType

from s3files_bench.handlers import common

REGIONS = ("transfer", "cleanup", "errors")
MARKER = re.compile(r"#\s*\[(/?)(\w+)\]")


def _function(module: ModuleType, ref: str) -> tuple[list[str], set[int]]:
    """The source lines of function ``ref`` and the indexes (in them) of its docstring's lines."""
    owner, name = (common, ref.split(".", 1)[1]) if ref.startswith("common.") else (module, ref)
    source = inspect.getsource(getattr(owner, name))
    lines = source.splitlines()
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.FunctionDef), ref
    skip: set[int] = set()
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        skip = set(range(first.lineno - 1, (first.end_lineno or first.lineno)))
    return lines, skip


def count(module: ModuleType, refs: tuple[str, ...]) -> dict[str, int]:
    """``{"lines": n, "transfer": t, "cleanup": c, "errors": e}`` over the functions ``refs``."""
    totals = dict.fromkeys(("lines", *REGIONS), 0)
    for ref in refs:
        lines, skip = _function(module, ref)
        inside: set[str] = set()
        for index, line in enumerate(lines):
            text = line.strip()
            marker = MARKER.fullmatch(text)
            if marker:
                closing, region = marker.groups()
                if region not in REGIONS:
                    raise ValueError(f"{module.__name__}.{ref}: unknown region {region!r}")
                (inside.discard if closing else inside.add)(region)
                continue
            if not text or text.startswith("#") or index in skip:
                continue
            totals["lines"] += 1
            for region in inside:
                totals[region] += 1
        if inside:
            raise ValueError(f"{module.__name__}.{ref}: region {sorted(inside)} not closed")
    return totals


def versions(module: ModuleType) -> dict[str, dict[str, int]]:
    """Lines of the SDK version, the files version and the shared processing of one handler."""
    return {
        "sdk": count(module, module.SDK_CODE),
        "files": count(module, module.FILES_CODE),
        "shared": count(module, module.SHARED_CODE),
    }
