"""The handlers comparison's results: the JSON document and its tables (terminal and markdown).

Owns: ``summarize`` (per handler and version: the median duration over rounds, the highest peaks, mean
requests per round, whether every round's outputs matched the reference, the cost per 1,000
invocations from cost.PRICES; the lines of code of each version; what a halfway kill left) and the
renderings, which read only the JSON document.
"""

from __future__ import annotations

import signal
import statistics
from types import ModuleType
from typing import Any

from rich.console import Console
from rich.table import Table
from s3files_bench.handlers import cost, loc

#: The columns of each version's entry (tests/test_handlers.py checks every one is reported).
COLUMNS = (
    "seconds", "start_s", "handler_peak_mib", "daemon_peak_mib", "disk_peak_mib", "requests", "same_output", "cost_per_1000",
)
KILLED_COLUMNS = ("exit", "s3_objects", "s3_bytes", "multipart_uploads", "local_bytes")
VERSION_NAMES = {"sdk": "SDK + /tmp", "mount": "mount", "open_fs": "open_fs", "exec": "mount, exec on-success"}


def _mean_requests(rounds: list[dict[str, int]]) -> dict[str, float]:
    ops = sorted({op for r in rounds for op in r})
    means = {op: sum(r.get(op, 0) for r in rounds) / len(rounds) for op in ops}
    return {op: int(n) if n == int(n) else round(n, 1) for op, n in means.items()}


def _version(samples: list[dict[str, Any]], processes: int) -> dict[str, Any]:
    done = [s for s in samples if "error" not in s]
    errors = [s["error"] for s in samples if "error" in s]
    if not done:
        return {"error": errors[0] if errors else "not measured"}
    peaks = {k: max((s[k] for s in done if s.get(k) is not None), default=None) for k in
             ("handler_peak_mib", "daemon_peak_mib", "disk_peak_mib")}
    entry: dict[str, Any] = {
        "seconds": round(statistics.median(s["seconds"] for s in done), 3),
        "rounds": [round(s["seconds"], 3) for s in done],
        **{k: None if v is None else round(v, 1) for k, v in peaks.items()},
        "requests": _mean_requests([s["requests"] for s in done]),
        "same_output": all(s["same_output"] for s in done),
    }
    entry["start_s"] = round(statistics.median(s["start_s"] for s in done), 3)
    for extra in ("log_lines", "conflict_copies"):
        if extra in done[-1]:
            entry[extra] = done[-1][extra]
    if "log_lines" in entry:
        entry["log_lines_rounds"] = [s["log_lines"] for s in done]
    memory = (entry["handler_peak_mib"] or 0) + (entry["daemon_peak_mib"] or 0)
    entry["lambda_memory_mb"] = cost.memory_mb(memory)
    entry["cost_per_1000"] = {
        k: round(v, 5) for k, v in cost.per_thousand(entry["requests"], entry["seconds"], memory, processes).items()
    }
    if errors:
        entry["errors"] = errors
    return entry


def summarize(
    modules: dict[str, ModuleType],
    runs: dict[str, dict[str, list[dict[str, Any]]]],
    killed: dict[str, dict[str, dict[str, Any]]],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """The results document (what ``--json`` writes)."""
    out: dict[str, Any] = {"meta": {**meta, "prices": cost.PRICES}, "handlers": {}}
    for name, module in modules.items():
        out["handlers"][name] = {
            "what": module.WHAT,
            "processes": module.PROCESSES,
            "loc": loc.versions(module),
            "versions": {v: _version(samples, module.PROCESSES) for v, samples in runs[name].items()},
            "killed": killed.get(name, {}),
        }
    return out


def _requests(requests: dict[str, float]) -> str:
    return " ".join(f"{op} {n}" for op, n in sorted(requests.items(), key=lambda item: -item[1]))


def _note(entry: dict[str, Any]) -> str:
    notes = []
    if "log_lines" in entry:
        notes.append(f"log kept {', '.join(entry['log_lines_rounds'])} lines; {entry['conflict_copies']} conflict copies")
    return "; ".join(notes)


def _mib(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def main_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["handler", "version", "seconds", "start s", "handler MiB", "daemon MiB", "disk MiB", "S3 requests",
              "same output", "$ per 1,000 (S3 + compute)", "notes"]
    rows = []
    for name, handler in results["handlers"].items():
        for version, e in handler["versions"].items():
            if "error" in e:
                rows.append([name, VERSION_NAMES[version], "failed: " + e["error"], *[""] * 8])
                continue
            c = e["cost_per_1000"]
            rows.append([
                name, VERSION_NAMES[version], f"{e['seconds']:.2f}", f"{e['start_s']:.2f}", _mib(e["handler_peak_mib"]),
                _mib(e["daemon_peak_mib"]), _mib(e["disk_peak_mib"]), _requests(e["requests"]),
                "yes" if e["same_output"] else "NO",
                f"{c['total']:.4f} ({c['s3']:.4f} + {c['compute']:.4f}; {e['lambda_memory_mb']} MB)", _note(e),
            ])
    return header, rows


def loc_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["handler", "SDK + /tmp: lines (transfer, cleanup)", "files: lines (errors)", "shared processing"]
    rows = []
    for name, handler in results["handlers"].items():
        s, f, shared = handler["loc"]["sdk"], handler["loc"]["files"], handler["loc"]["shared"]
        rows.append([
            name, f"{s['lines']} ({s['transfer']}, {s['cleanup']})",
            f"{f['lines']} ({f['errors']})" if f["errors"] else str(f["lines"]), str(shared["lines"]),
        ])
    return header, rows


def killed_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["handler", "version", "exit", "objects in S3", "bytes in S3", "multipart uploads", "local bytes left"]
    rows = []
    for name, handler in results["handlers"].items():
        for version, k in handler["killed"].items():
            if "error" in k:
                rows.append([name, VERSION_NAMES[version], "failed: " + k["error"], "", "", "", ""])
                continue
            rows.append([name, VERSION_NAMES[version], ",".join(map(_exit, k["exit"])), str(k["s3_objects"]),
                         f"{k['s3_bytes']:,}", str(k["multipart_uploads"]), f"{k['local_bytes']:,}"])
    return header, rows


def _exit(code: int) -> str:
    """A child's exit status as a shell says it: SIGKILL for -9, 137 (128+9) through s3files exec."""
    return signal.Signals(-code).name if code < 0 else str(code)


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    prices = meta["prices"]
    lines = [f"`{meta['command']}`", ""]
    for key in ("server", "date", "duration_s", "machine", "sizes", "rounds"):
        if meta.get(key) not in (None, ""):
            lines.append(f"- {key.replace('_', ' ')}: {meta[key]}")
    lines.append(f"- prices: {prices['source']}, entered {prices['date']} (bench/handlers/cost.py, PRICES)")
    lines += [f"- note: {note}" for note in meta.get("notes", [])]
    lines += ["", *_markdown_table(*main_rows(results)), ""]
    lines += ["Lines of code (bench/handlers/, counted by bench/handlers/loc.py):", ""]
    lines += [*_markdown_table(*loc_rows(results)), ""]
    lines += ["Killed halfway (SIGKILL at half the work), what was left:", ""]
    lines += [*_markdown_table(*killed_rows(results))]
    return "\n".join(lines) + "\n"


def print_tables(results: dict[str, Any], console: Console) -> None:
    for title, (header, rows) in (
        ("handlers: median seconds over rounds, peaks, requests per invocation, cost", main_rows(results)),
        ("lines of code", loc_rows(results)),
        ("killed halfway: what was left", killed_rows(results)),
    ):
        grid = Table(title=title)
        for column in header:
            grid.add_column(column)
        for row in rows:
            grid.add_row(*row)
        console.print(grid)
    prices = results["meta"]["prices"]
    console.print(f"prices: {prices['source']}, entered {prices['date']} (bench/handlers/cost.py)", highlight=False)
