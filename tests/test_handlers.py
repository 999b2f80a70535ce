"""``s3files bench --workloads handlers``: the handlers themselves, and the report a run writes.

The handler pairs must do the same work, or the comparison means nothing: every handler runs on tiny
inputs in its SDK version (boto3, a /tmp folder) and in its files version through ``s3files.open_fs``
and on a local folder, and all three outputs must be byte for byte the same (the agents' shared log line
for line), with the SDK version's /tmp folder left empty. Then one quick run of the bench (moto, one
handler, one round, real mounts and ``s3files exec``) must report every column for every version, the
lines of code, and what a halfway kill left: nothing in S3 under ``exec --publish on-success``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("PIL")
pytest.importorskip("pandas")

from s3files_bench.handlers import cost, handlers, loc, report
from s3files_bench.handlers.common import LOCAL, on_open_fs

import s3files
from s3files.localserver import MotoServer


def _objects(client: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {
        o["Key"][len(prefix) :]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        for o in listed
        if not o["Key"].endswith("/")
    }


def _local(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _same(got: dict[str, bytes], want: dict[str, bytes]) -> None:
    assert sorted(got) == sorted(want)
    for name, data in want.items():
        if name == "log.txt":  # sequential agents here: the same lines in the same order
            assert got[name].decode().splitlines() == data.decode().splitlines()
        else:
            assert got[name] == data, name


def test_each_handler_pair_gives_the_same_outputs(
    moto_server: MotoServer, boto3_client: Any, bucket: str, tmp_path: Path
) -> None:
    modules = handlers()
    for name, module in modules.items():  # every input in the bucket before open_fs first lists it
        inputs = tmp_path / "in" / name
        module.make_inputs(inputs, quick=True)
        for path in sorted(p for p in inputs.rglob("*") if p.is_file()):
            boto3_client.upload_file(str(path), bucket, f"in/{name}/{path.relative_to(inputs).as_posix()}")
    with s3files.open_fs(f"s3://{bucket}/", endpoint_url=moto_server.endpoint_url, cache_dir=tmp_path / "cache") as fs:
        files_on_fs = on_open_fs(fs)
        for name, module in modules.items():
            inputs = tmp_path / "in" / name
            tmp = tmp_path / "tmp" / name
            tmp.mkdir(parents=True)
            agents = [{"agent": i} for i in range(module.PROCESSES)] if module.PROCESSES > 1 else [{}]
            for extra in agents:
                module.sdk(boto3_client, bucket, f"in/{name}/{module.INPUT}", f"out/sdk/{name}", str(tmp), **extra)
                module.files(f"in/{name}/{module.INPUT}", f"out/fs/{name}", fs=files_on_fs, **extra)
                module.files(str(inputs / module.INPUT), str(tmp_path / "local" / name), fs=LOCAL, **extra)
            assert list(tmp.iterdir()) == []  # the SDK version cleaned up its /tmp
            want = _local(tmp_path / "local" / name)
            assert want, name
            _same(_objects(boto3_client, bucket, f"out/sdk/{name}/"), want)
            _same(_objects(boto3_client, bucket, f"out/fs/{name}/"), want)
    assert sorted(want) == ["agent-0.json", "agent-1.json", "agent-2.json", "agent-3.json", "log.txt"]
    assert len(want["log.txt"].decode().splitlines()) == 16  # 4 agents x 4 appends


def test_lines_of_code_count_regions_and_skip_docstrings_and_comments() -> None:
    counted = {name: loc.versions(module) for name, module in handlers().items()}
    for name, versions in counted.items():
        sdk, files = versions["sdk"], versions["files"]
        assert sdk["transfer"] > 0 and sdk["cleanup"] > 0, name
        assert files["transfer"] == 0 and files["cleanup"] == 0, name
        assert files["lines"] < sdk["lines"], name
    # csv_report's SDK version: download_file and upload_file are its transfer; mkdtemp, try, finally,
    # rmtree its cleanup; 10 code lines in all (def, 2 paths, with, summarize, and those).
    assert counted["csv_report"]["sdk"] == {"lines": 10, "transfer": 2, "cleanup": 4, "errors": 0}
    assert counted["agents"]["files"]["errors"] > 0  # retrying an append another agent beat


def test_cost_prices_requests_by_class_and_memory_in_whole_mb() -> None:
    prices = {**cost.PRICES, "s3_per_1000": {"put": 0.005, "get": 0.0004, "delete": 0.0}}
    # 1,000 invocations of 2 PUTs, 10 GETs, 1 DELETE and one unpriced operation (charged as a PUT)
    dollars = cost.per_thousand({"put": 2, "get": 10, "delete": 1, "odd": 1}, 2.0, 100.0, 1, prices)
    assert dollars["s3"] == pytest.approx(3 * 0.005 + 10 * 0.0004)
    # 100 MiB is 105 MB, below Lambda's 128 MB minimum: 2 s x 0.125 GB x price, plus the request charge
    assert dollars["compute"] == pytest.approx(1000 * (2.0 * 128 / 1024 * 0.0000166667 + 0.20 / 1e6))
    assert cost.memory_mb(1000.0) == 1049
    assert dollars["total"] == pytest.approx(dollars["s3"] + dollars["compute"])


@pytest.mark.fuse
def test_quick_run_reports_every_column_for_every_version(tmp_path: Path) -> None:
    out, md = tmp_path / "handlers.json", tmp_path / "handlers.md"
    result = subprocess.run(
        [sys.executable, "-m", "s3files", "bench", "--workloads", "handlers", "--handlers", "csv_report",
         "--quick", "--json", str(out), "--markdown", str(md)],
        capture_output=True, text=True, timeout=240, env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    with open("/proc/self/mountinfo", encoding="utf-8") as info:  # every mount it made is gone
        assert not [line for line in info if "/s3files-handlers-" in line]
    results = json.loads(out.read_text())
    assert results["meta"]["prices"]["date"] and results["meta"]["prices"]["lambda_gb_second"] > 0
    handler = results["handlers"]["csv_report"]
    assert set(handler["versions"]) == {"sdk", "mount", "open_fs"}
    for version, entry in handler["versions"].items():
        assert "error" not in entry, (version, entry)
        for column in report.COLUMNS:
            assert column in entry, (version, column)
        assert entry["same_output"] is True, version
        assert entry["seconds"] > 0 and entry["handler_peak_mib"] > 0
        assert entry["requests"]["get"] >= 1 and entry["requests"]["put"] >= 1, version
        assert entry["cost_per_1000"]["total"] > entry["cost_per_1000"]["s3"] > 0
    assert handler["versions"]["mount"]["daemon_peak_mib"] > 0
    assert handler["versions"]["sdk"]["requests"] == {"get": 1, "head": 1, "put": 1}  # download_file, upload_file
    assert handler["loc"]["sdk"]["lines"] > handler["loc"]["files"]["lines"]
    killed = handler["killed"]
    assert set(killed) == {"sdk", "exec", "open_fs"}
    for version, entry in killed.items():
        for column in report.KILLED_COLUMNS:
            assert column in entry, (version, column)
        assert entry["s3_objects"] == 0 and entry["multipart_uploads"] == 0, (version, entry)  # report never closed
    assert killed["sdk"]["exit"] == [-9]
    assert killed["sdk"]["local_bytes"] >= 2 * 1024 * 1024  # the downloaded CSV: no cleanup ran
    assert killed["exec"]["exit"] == [137]  # s3files exec: 128 + SIGKILL
    text = md.read_text()
    for heading in ("| handler | version | seconds |", "Lines of code", "Killed halfway", "PRICES"):
        assert heading in text, heading
