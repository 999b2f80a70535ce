"""Everyday programs on a real mount (moto), before and after a remount (issue 17: `git status` showed
changes that were not there, scripts lost their x bit after a remount).

The point is that programs run unchanged: each test drives the program itself (git, sh) and asserts on what
it prints and its exit status, not on our own idea of what it needs. tar, rsync, cp -a and executables after
a remount are in tests/test_attributes.py; make and nanosecond mtimes in tests/test_times.py; pandas and
memory maps in tests/test_fuse_reads.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import S3Server
from test_fuse import mount

pytestmark = [pytest.mark.fuse, pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")]

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **GIT_ENV},
    )
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout


def test_git_status_is_clean_after_a_remount_and_sees_a_same_second_edit(
    moto_server: Any, tmp_path: Path
) -> None:
    """A repository committed on the mount is clean after a remount (modes, sizes and mtimes are the
    objects' own: a listing's guesses made every script show as changed), its script still runs, and an
    edit that keeps the size within the same second as the commit is still seen as a change (git compares
    mtimes to the nanosecond; whole seconds hid it)."""
    server = S3Server("moto", moto_server.endpoint_url)
    bucket = f"git-{uuid.uuid4().hex[:8]}"
    moto_server.create_bucket(bucket)
    m, cache = tmp_path / "m", tmp_path / "cache"
    with mount(server, bucket, m, cache_dir=cache):
        repo = m / "repo"
        repo.mkdir()
        git(repo, "init", "-q")
        (repo / "run.sh").write_text("#!/bin/sh\necho ran\n")
        (repo / "run.sh").chmod(0o755)
        (repo / "src").mkdir()
        (repo / "src" / "data.txt").write_text("one\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "first")
        assert git(repo, "status", "--porcelain") == ""
    with mount(server, bucket, m, cache_dir=cache):
        repo = m / "repo"
        # a listing first, as a shell prompt or `ls` gives: its entries reach the kernel before git's lstat
        subprocess.run(["ls", "-lR", str(repo)], check=True, capture_output=True, timeout=60)
        assert git(repo, "status", "--porcelain") == ""
        assert git(repo, "diff", "--stat") == ""
        ran = subprocess.run([str(repo / "run.sh")], capture_output=True, text=True, timeout=30)
        assert (ran.returncode, ran.stdout) == (0, "ran\n")
        git(repo, "update-index", "--refresh")
        (repo / "src" / "data.txt").write_text("two\n")  # same size, most likely the same second
        assert git(repo, "status", "--porcelain") == " M src/data.txt\n"
        git(repo, "checkout", "--", "src/data.txt")
        assert (repo / "src" / "data.txt").read_text() == "one\n"
        assert git(repo, "status", "--porcelain") == ""
