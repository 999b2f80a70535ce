"""The recipes in deploy/, tested as far as this machine can without Docker or a cluster.

- deploy/entrypoint.sh, outside Docker with a stub ``s3files`` on PATH that prints its arguments: how the
  environment becomes ``s3files exec`` flags, and the one-line errors before anything is mounted.
- deploy/s3files@.service with ``systemd-analyze verify`` (skipped where it is missing).
- deploy/compose.yaml and deploy/pod.yaml parsed: the FUSE device and the capability are there.
- deploy/Dockerfile built only where a Docker daemon answers (skipped otherwise).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ENTRYPOINT = DEPLOY / "entrypoint.sh"

# -- the entrypoint ---------------------------------------------------------------------------------------

STUB = """#!/bin/sh
# a stand-in for s3files: one argument a line, then exits with $STUB_STATUS
for a in "$@"; do printf '[%s]\\n' "$a"; done
exit "${STUB_STATUS:-0}"
"""


def entrypoint(tmp_path: Path, *command: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the entrypoint with only ``env`` (and PATH with the stub first): no variable of this session leaks in."""
    stub_dir = tmp_path / "bin"
    if not stub_dir.exists():
        stub_dir.mkdir()
        (stub_dir / "s3files").write_text(STUB)
        (stub_dir / "s3files").chmod(0o755)
    env.setdefault("S3FILES_MOUNTPOINT", str(tmp_path))
    return subprocess.run(
        [str(ENTRYPOINT), *command],
        env={"PATH": f"{stub_dir}:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def argv_of(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [line[1:-1] for line in result.stdout.splitlines()]


def test_entrypoint_runs_the_command_under_s3files_exec(tmp_path: Path) -> None:
    result = entrypoint(tmp_path, "sh", "-c", 'echo "a b"', "x y", S3FILES_SOURCE="s3://bucket/in/")
    assert argv_of(result) == ["exec", "--mount", f"s3://bucket/in/:{tmp_path}", "--", "sh", "-c", 'echo "a b"', "x y"]


def test_entrypoint_defaults_to_mnt_data(tmp_path: Path) -> None:
    result = entrypoint(tmp_path, "true", S3FILES_SOURCE="s3://b", S3FILES_MOUNTPOINT="")
    if Path("/mnt/data").is_dir():
        assert argv_of(result)[:3] == ["exec", "--mount", "s3://b:/mnt/data"]
    else:  # outside the image: the default is what the error names
        assert result.returncode == 2 and "mount point /mnt/data is not a folder" in result.stderr


def test_entrypoint_passes_s3files_variables_as_flags(tmp_path: Path) -> None:
    result = entrypoint(
        tmp_path,
        "python3",
        "job.py",
        S3FILES_SOURCE="s3://bucket/",
        S3FILES_ENDPOINT_URL="http://minio:9000",
        S3FILES_CONSISTENCY="eventual",
        S3FILES_METADATA_TTL="1",  # a value of 1 is a value, not a switch
        S3FILES_LISTING_ATTRIBUTES="true",
        S3FILES_READ_ONLY="yes",
        S3FILES_ALLOW_OTHER="TRUE",
        S3FILES_DIRECT_IO="0",
        S3FILES_NO_XATTRS="",
        S3FILES_PUBLISH="on-success",  # an exec flag passes the same way
        S3FILES_ARGS="--uid 1000  --gid 100",
        S3FILES_FUSE_DEVICE="/dev/null" if not Path("/dev/fuse").exists() else "/dev/fuse",
    )
    assert argv_of(result) == [
        "exec", "--mount", f"s3://bucket/:{tmp_path}",
        "--allow-other",
        "--consistency", "eventual",
        "--endpoint-url", "http://minio:9000",
        "--listing-attributes", "true",
        "--metadata-ttl", "1",
        "--publish", "on-success",
        "--read-only",
        "--uid", "1000", "--gid", "100",
        "--", "python3", "job.py",
    ]  # fmt: skip


def test_entrypoint_exit_status_is_the_commands(tmp_path: Path) -> None:
    """The script execs s3files exec, so the container's status is exec's (the command's)."""
    result = entrypoint(tmp_path, "false", S3FILES_SOURCE="s3://b/", STUB_STATUS="3")
    assert result.returncode == 3


@pytest.mark.parametrize(
    ("env", "command", "needle"),
    [
        ({}, ["ls"], "S3FILES_SOURCE is not set"),
        ({"S3FILES_SOURCE": ""}, ["ls"], "S3FILES_SOURCE is not set"),
        ({"S3FILES_SOURCE": "bucket/prefix"}, ["ls"], "S3FILES_SOURCE must look like s3://bucket"),
        ({"S3FILES_SOURCE": "s3://"}, ["ls"], "S3FILES_SOURCE must look like s3://bucket"),
        ({"S3FILES_SOURCE": "s3://b/"}, [], "no command to run"),
        ({"S3FILES_SOURCE": "s3://b/", "S3FILES_FUSE_DEVICE": "/nonexistent/fuse"}, ["ls"], "/nonexistent/fuse is missing: run the container with --device /dev/fuse --cap-add SYS_ADMIN"),
        ({"S3FILES_SOURCE": "s3://b/", "S3FILES_MOUNTPOINT": "/nonexistent/data"}, ["ls"], "mount point /nonexistent/data is not a folder"),
        ({"S3FILES_SOURCE": "s3://b/", "S3FILES_READ_ONLY": "maybe"}, ["ls"], "S3FILES_READ_ONLY is a switch"),
    ],
)
def test_entrypoint_errors_are_one_line(tmp_path: Path, env: dict[str, str], command: list[str], needle: str) -> None:
    if "S3FILES_FUSE_DEVICE" not in env and not Path("/dev/fuse").exists():
        env = {**env, "S3FILES_FUSE_DEVICE": "/dev/null"}  # only the missing-device case tests the device
    result = entrypoint(tmp_path, *command, **env)
    assert result.returncode == 2
    assert result.stdout == ""  # the stub never ran: nothing was mounted
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("s3files-entrypoint: error: "), result.stderr
    assert needle in lines[0]


# -- the systemd unit ---------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` on an instance of the template, the binary pointed at this checkout's
    s3files (verify checks that ExecStart's program exists: the unrewritten unit must fail here)."""
    text = (DEPLOY / "s3files@.service").read_text()
    assert "ExecStart=/usr/local/bin/s3files mount ${S3FILES_SOURCE} %f --foreground $S3FILES_ARGS" in text
    assert "ExecStop=/usr/local/bin/s3files unmount %f" in text
    assert "Restart=on-failure" in text and "After=network-online.target" in text
    s3files = Path(sys.executable).with_name("s3files")
    unit = tmp_path / "s3files@mnt-data.service"
    unit.write_text(text.replace("/usr/local/bin/s3files", str(s3files)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "s3files@mnt-data.service" not in result.stderr, result.stderr
    broken = tmp_path / "s3files@mnt-x.service"
    broken.write_text(text.replace("/usr/local/bin/s3files", str(tmp_path / "missing")))
    result = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "is not executable" in result.stderr


# -- compose and Kubernetes: the FUSE device and the capability ----------------------------------------------


def test_compose_file_gives_fuse_to_the_job() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    job = compose["services"]["job"]
    assert job["devices"] == ["/dev/fuse"] and job["cap_add"] == ["SYS_ADMIN"]
    assert job["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert job["environment"]["S3FILES_SOURCE"].startswith("s3://")
    assert job["environment"]["S3FILES_ENDPOINT_URL"] == "http://s3:9000"
    assert job["depends_on"]["make-bucket"]["condition"] == "service_completed_successfully"
    assert "s3" in compose["services"]


def test_pod_gives_fuse_to_the_container() -> None:
    pod = yaml.safe_load((DEPLOY / "pod.yaml").read_text())
    assert pod["kind"] == "Pod"
    (container,) = pod["spec"]["containers"]
    assert container["securityContext"]["capabilities"]["add"] == ["SYS_ADMIN"]
    (volume,) = pod["spec"]["volumes"]
    assert volume["hostPath"] == {"path": "/dev/fuse", "type": "CharDevice"}
    assert container["volumeMounts"] == [{"name": volume["name"], "mountPath": "/dev/fuse"}]
    assert {"name": "S3FILES_SOURCE", "value": "s3://my-bucket/jobs/"} in container["env"]


def test_dockerfile_uses_the_entrypoint_and_fuse3() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.count("FROM debian:bookworm-slim") == 2
    assert "fuse3" in text and "COPY deploy/entrypoint.sh /usr/local/bin/s3files-entrypoint" in text
    assert 'ENTRYPOINT ["/usr/local/bin/s3files-entrypoint"]' in text
    assert "USER s3files" in text


def _docker_daemon() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.mark.skipif(
    os.environ.get("S3FILES_DOCKER_BUILD") != "1" or not _docker_daemon(),
    reason="set S3FILES_DOCKER_BUILD=1 where a Docker daemon answers to build the image",
)
def test_docker_image_builds() -> None:
    root = DEPLOY.parent
    result = subprocess.run(
        ["docker", "build", "-f", "deploy/Dockerfile", "-t", "s3files:test", "."],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
