"""bench/crt_ab.py, the A/B of the store's body path (direct vs awscrt), as a harness: on moto with tiny sizes
it must finish, report every workload for both variants, and have sent each variant's requests its own way
(it stops otherwise). awscrt is not a dependency of s3files: without it the A/B says how to get it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKLOADS = {"seq_read", "write", "small_put", "small_get"}


def run_ab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "s3files_bench.crt_ab", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )


def test_ab_on_moto_reports_both_variants(tmp_path: Path) -> None:
    pytest.importorskip("awscrt")
    out = tmp_path / "ab.json"
    result = run_ab("--server", "moto", "--size", "16", "--small-count", "6", "--rounds", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| cold sequential read 16 MiB |" in result.stdout and "| small GET 6 x 16 KiB |" in result.stdout
    rounds = json.loads(out.read_text())["rounds"]
    assert set(rounds) == {"direct", "crt"}
    for variant in rounds.values():
        assert set(variant) == WORKLOADS
        for workload, figures in variant.items():
            assert len(figures) == 1, workload
            seconds, cpu, nbytes, count = figures[0]
            assert seconds > 0 and cpu > 0
            assert count == (2 if workload in ("seq_read", "write") else 6)
            assert nbytes == (16 * 2**20 if workload in ("seq_read", "write") else 6 * 16 * 1024)


def test_without_awscrt_the_ab_says_how_to_get_it(tmp_path: Path) -> None:
    blocker = tmp_path / "awscrt"  # a package named awscrt that fails to import, first on the path
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('blocked for the test')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(
        [sys.executable, "-m", "s3files_bench.crt_ab", "--server", "moto"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: the A/B needs the AWS Common Runtime: pip install 'awscrt>=0.38'"
