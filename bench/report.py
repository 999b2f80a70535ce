"""Turning measurements into results: the JSON document, the terminal table, markdown, and a PNG chart.

Owns: the results' shape (``summarize``: medians over rounds, errors, requests per round, ratios) and every
rendering of it. The table, markdown and chart read only the JSON document, so a saved JSON file can be
rendered again. Ratios are speed ratios: mount speed / reference speed, so above 1 the mount is faster (for
figures where lower is better, such as seconds, that is reference / mount).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from s3files_bench.runner import Collected, Record
from s3files_bench.workloads import Workload

MOUNT = "mount"
REFERENCES = ("raw", "raw-parallel", "baseline")


def _number(value: float) -> float:
    return float(f"{value:.4g}")


def _per_round(requests: list[dict[str, int]]) -> dict[str, float]:
    """Mean requests per round, by operation (whole numbers stay whole)."""
    ops = sorted({op for r in requests for op in r})
    means = {op: sum(r.get(op, 0) for r in requests) / len(requests) for op in ops}
    return {op: int(n) if n == int(n) else round(n, 1) for op, n in means.items()}


def _entry(record: Record) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    if record.samples:
        values = [float(s["value"]) for s in record.samples]
        entry["value"] = _number(statistics.median(values))
        entry["rounds"] = [_number(v) for v in values]
        extras = sorted({k for s in record.samples for k in s} - {"value"})
        for key in extras:
            present = [float(s[key]) for s in record.samples if s.get(key) is not None]
            entry[key] = _number(statistics.median(present)) if present else None
        if record.errors:
            entry["errors"] = record.errors
    else:
        entry["error"] = record.errors[0] if record.errors else "not measured"
    if record.requests:
        entry["requests"] = _per_round(record.requests)
    if record.peak_rss is not None:
        entry["daemon_peak_rss_mib"] = _number(record.peak_rss / 2**20)
    return entry


def ratio(mount: dict[str, Any], reference: dict[str, Any], better: str) -> float | None:
    """Mount speed over reference speed (above 1: the mount is faster); None if either failed."""
    m, ref = mount.get("value"), reference.get("value")
    if not m or not ref:
        return None
    return _number(m / ref if better == "higher" else ref / m)


def summarize(
    collected: Collected, seconds: dict[str, float], workloads: Sequence[Workload], meta: dict[str, Any]
) -> dict[str, Any]:
    """The results document (what ``--json`` writes)."""
    out: dict[str, Any] = {"meta": meta, "workloads": {}}
    for workload in workloads:
        figures: dict[str, Any] = {}
        for figure in workload.figures:
            variants = {name: _entry(rec) for name, rec in collected[workload.name][figure.name].items()}
            ratios = {
                f"{MOUNT}/{name}": ratio(variants[MOUNT], entry, figure.better)
                for name, entry in variants.items()
                if name != MOUNT and MOUNT in variants
            }
            figures[figure.name] = {
                "unit": figure.unit,
                "better": figure.better,
                "what": figure.what,
                "variants": variants,
                "ratios": ratios,
            }
        out["workloads"][workload.name] = {"seconds": round(seconds[workload.name], 1), "figures": figures}
    return out


# -- rendering ------------------------------------------------------------------------------------------


def variant_names(results: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for workload in results["workloads"].values():
        for figure in workload["figures"].values():
            names.extend(n for n in figure["variants"] if n not in names)
    return names


def _value(entry: dict[str, Any]) -> str:
    if "value" in entry:
        return f"{entry['value']:.3g}" if entry["value"] < 1000 else f"{entry['value']:.0f}"
    return entry["error"].split(":")[0]


def _requests(entry: dict[str, Any] | None) -> str:
    if not entry or not entry.get("requests"):
        return ""
    ordered = sorted(entry["requests"].items(), key=lambda item: -item[1])
    return " ".join(f"{op} {n}" for op, n in ordered)


def _rows(results: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any], dict[str, Any]]]:
    rows = []
    for wname, workload in results["workloads"].items():
        for fname, figure in workload["figures"].items():
            rows.append(
                (
                    wname,
                    fname,
                    f"{figure['unit']} ({'↑' if figure['better'] == 'higher' else '↓'})",
                    figure["variants"],
                    figure["ratios"],
                )
            )
    return rows


def table(results: dict[str, Any]) -> Table:
    """The summary for the terminal: values (medians over rounds) and ratios."""
    names = variant_names(results)
    refs = [n for n in names if n != MOUNT]
    grid = Table(
        title="s3files bench: medians over rounds; mount/x = mount's speed ÷ x's speed (above 1: mount faster)"
    )
    grid.add_column("workload figure", style="bold")
    grid.add_column("unit")
    for name in names:
        grid.add_column(name, justify="right", style="cyan" if name == MOUNT else None)
    for name in refs:
        grid.add_column(f"mount/{name}", justify="right")
    for wname, fname, unit, variants, ratios in _rows(results):
        cells = [f"{wname} {fname}", unit]
        for name in names:
            entry = variants.get(name, {})
            text = _value(entry) if entry else ""
            cells.append(text if "value" in entry else f"[red]{text}[/red]")
        for name in refs:
            r = ratios.get(f"{MOUNT}/{name}")
            cells.append("" if r is None else f"[{'green' if r >= 1 else 'yellow'}]{r:.2f}x[/]")
        grid.add_row(*cells)
    return grid


def _counted(results: dict[str, Any]) -> list[str]:
    """The variants whose requests are counted (the SDK's and s3files'; the peers cannot be asked)."""
    return [n for n in variant_names(results) if n in REFERENCES or n == MOUNT or n.startswith(MOUNT + "-")]


def requests_table(results: dict[str, Any]) -> Table:
    grid = Table(title="S3 requests per round")
    grid.add_column("workload figure", style="bold")
    for name in _counted(results):
        grid.add_column(name, style="cyan" if name == MOUNT else None)
    for wname, fname, _, variants, _ in _rows(results):
        grid.add_row(f"{wname} {fname}", *(_requests(variants.get(n)) for n in _counted(results)))
    return grid


def _errors(results: dict[str, Any]) -> list[str]:
    return sorted(
        {
            f"{name}: {entry['error']}"
            for _, _, _, variants, _ in _rows(results)
            for name, entry in variants.items()
            if "error" in entry
        }
    )


def profile_lines(meta: dict[str, Any]) -> list[str]:
    """The run's profile beside the figures: today what the shaped network itself cost (``--network``),
    so that nobody takes the forwarder's CPU for a client's (no client figure includes it)."""
    lines = []
    if meta.get("network"):
        lines.append(f"network: {meta['network']}")
    forwarder = meta.get("forwarder")
    if forwarder:
        lines.append(
            f"forwarder (the shaped network, its own process, in no client's cpu figure): "
            f"{forwarder['cpu_s_per_gib']} CPU s per GiB forwarded ({forwarder['cpu_s']} CPU s of which "
            f"{forwarder.get('system_s', '?')} in the kernel, {forwarder['gib']} GiB both ways, "
            f"{forwarder.get('kib_per_splice', '?')} KiB per splice, {forwarder['connections']} connections)"
        )
    return lines


def print_table(results: dict[str, Any], console: Console) -> None:
    console.print(table(results))
    console.print(requests_table(results))
    for line in profile_lines(results["meta"]):
        console.print(line, highlight=False)
    for line in _errors(results):
        console.print(f"[red]failed[/red] {line}", highlight=False)


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown: the run's facts, values and ratios, requests, then per-figure details."""
    meta = results["meta"]
    names = variant_names(results)
    refs = [n for n in names if n != MOUNT]
    lines = [f"`{meta['command']}`", ""]
    for key in ("server", "date", "duration_s", "machine", "sizes", "rounds", "peers", "daemon_peak_rss_mib"):
        if meta.get(key) not in (None, "", []):
            lines.append(f"- {key.replace('_', ' ')}: {meta[key]}")
    lines += [f"- note: {note}" for note in meta.get("notes", [])]
    profile = profile_lines(meta)
    if profile:
        lines += ["", "Profile:", "", *(f"- {line}" for line in profile)]
    lines.append("")
    rows, request_rows = [], []
    for wname, fname, unit, variants, ratios in _rows(results):
        row = [wname, fname, unit, *(_value(variants[n]) if n in variants else "" for n in names)]
        for n in refs:
            r = ratios.get(f"{MOUNT}/{n}")
            row.append("" if r is None else f"{r:.2f}x")
        rows.append(row)
        request_rows.append([wname, fname, *(_requests(variants.get(n)) for n in _counted(results))])
    lines += _markdown_table(["workload", "figure", "unit", *names, *(f"mount/{n}" for n in refs)], rows)
    lines += ["", "S3 requests per round:", ""]
    lines += _markdown_table(["workload", "figure", *_counted(results)], request_rows)
    lines += ["", "Details (each round's value, then medians of the extras):", ""]
    for wname, fname, _, variants, _ in _rows(results):
        for name, entry in variants.items():
            if "error" in entry:
                lines.append(f"- {wname} {fname}, {name}: failed: {entry['error']}")
                continue
            extras = {k: v for k, v in entry.items() if k not in ("value", "requests")}
            lines.append(f"- {wname} {fname}, {name}: " + ", ".join(f"{k} {v}" for k, v in extras.items()))
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> str | None:
    """Write a PNG bar chart (one panel per figure); returns a message if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "--plot needs matplotlib: pip install matplotlib (no chart written)"
    rows = _rows(results)
    names = variant_names(results)
    columns = 4
    lines = (len(rows) + columns - 1) // columns
    fig, axes = plt.subplots(lines, columns, figsize=(4 * columns, 3 * lines), squeeze=False)
    for ax, (wname, fname, unit, variants, _) in zip(axes.flat, rows, strict=False):
        shown = [n for n in names if "value" in variants.get(n, {})]
        ax.bar(
            shown,
            [variants[n]["value"] for n in shown],
            color=["tab:blue" if n == MOUNT else "tab:gray" for n in shown],
        )
        ax.set_title(f"{wname} {fname}", fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(rows) :]:
        ax.axis("off")
    fig.suptitle(results["meta"]["command"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
