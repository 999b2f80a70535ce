"""``mount.s3files``, the helper for /etc/fstab and ``mount -t s3files`` (s3files/fstab.py).

The option translation is tested as a pure function; the helper end to end as root, called as mount(8)
calls it, through real ``mount -t s3files`` and ``mount -T FSTAB`` with /sbin/mount.s3files linked to this
checkout for the test, then ``umount``: the daemon exits and what was written is in the bucket.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from s3files.fstab import EXIT_FAILURE, EXIT_USAGE, OptionError, parse_command_line, split_options, translate
from s3files.localserver import MotoServer
from s3files.mountinfo import mount_entry

# -- the option translation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "flags"),
    [
        ("", []),
        ("endpoint_url=http://127.0.0.1:9000", ["--endpoint-url", "http://127.0.0.1:9000"]),
        ("endpoint-url=http://h:1", ["--endpoint-url", "http://h:1"]),
        ("consistency=eventual,metadata_ttl=30", ["--consistency", "eventual", "--metadata-ttl", "30"]),
        ("allow_other,direct_io,no_xattrs", ["--allow-other", "--direct-io", "--no-xattrs"]),
        ("ro", ["--read-only"]),
        ("read_only", ["--read-only"]),
        ("ro,rw", []),  # the last one wins, as for mount(8)
        ("rw,ro", ["--read-only"]),
        ("_netdev,nofail,defaults,auto,noauto,user,users,nouser,rw", []),
        ("nosuid,nodev,exec,async,noatime", []),  # what every s3files mount already is
        ("comment=systemd.automount,x-systemd.requires=network.target,x-mount.mkdir", []),
        ("user=alice", []),
        ("uid=1000,gid=100,file_mode=600,dir_mode=700", ["--uid", "1000", "--gid", "100", "--file-mode", "600", "--dir-mode", "700"]),
        ("cache_dir=/var/cache/s3,cache_size=20G", ["--cache-dir", "/var/cache/s3", "--cache-size", "20G"]),
        ("profile=analytics,region=eu-west-1", ["--profile", "analytics", "--region", "eu-west-1"]),
        ("log_file=/var/log/s3files.log,log_level=DEBUG", ["--log-file", "/var/log/s3files.log", "--log-level", "DEBUG"]),
        ('log_file="/var/log/a,b.log"', ["--log-file", "/var/log/a,b.log"]),
        ("on_recovery=keep,writeback_delay=2.5", ["--on-recovery", "keep", "--writeback-delay", "2.5"]),
        ("listing_attributes=fast,max_connections=64", ["--listing-attributes", "fast", "--max-connections", "64"]),
        ("upload_concurrency=4,upload_part_size=10M", ["--upload-concurrency", "4", "--upload-part-size", "10M"]),
        ("metrics_port=9100,metrics_address=127.0.0.2", ["--metrics-port", "9100", "--metrics-address", "127.0.0.2"]),
        (",,allow_other,", ["--allow-other"]),
    ],
)
def test_translate(options: str, flags: list[str]) -> None:
    assert translate(options) == (flags, [])


def test_every_mount_flag_is_an_option() -> None:
    """Each ``s3files mount`` flag but --foreground (and the hidden --ready-fd) has its fstab option."""
    from s3files.fstab import _flags, _mount_parser

    for name, action in _flags(_mount_parser()).items():
        if name in ("foreground", "help"):
            continue
        option = name if action.nargs == 0 else f"{name}=1"
        flags, _ = translate(option)
        assert flags[0] in action.option_strings, (name, flags)


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ("bogus", "unknown option 'bogus'"),
        ("sync", "unknown option 'sync'"),  # a generic flag s3files does not honour is refused, not dropped
        ("noexec", "unknown option 'noexec'"),
        ("endpoint_url", "option 'endpoint_url' needs a value"),
        ("allow_other=yes", "option 'allow_other' takes no value"),
        ("ro=1", "unknown option 'ro=1'"),
        ("foreground", "not for fstab"),
        ("help", "not for fstab"),
        ("ready_fd=3", "unknown option 'ready_fd=3'"),
        ('log_file="/a,b', "unbalanced double quote"),
    ],
)
def test_translate_refuses(options: str, needle: str) -> None:
    with pytest.raises(OptionError) as caught:
        translate(options)
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)


def test_sloppy_ignores_unknown_options_with_a_warning() -> None:
    flags, warnings = translate("bogus,allow_other,sync", sloppy=True)
    assert flags == ["--allow-other"]
    assert len(warnings) == 2 and "'bogus'" in warnings[0] and "'sync'" in warnings[1]
    with pytest.raises(OptionError, match="needs a value"):  # sloppy forgives unknown names only
        translate("endpoint_url", sloppy=True)


def test_split_options_keeps_quoted_commas() -> None:
    assert split_options('a=1,b="x,y",c') == ["a=1", 'b="x,y"', "c"]


@pytest.mark.parametrize(
    ("argv", "expected", "fake", "verbose"),
    [
        (["s3://b/p/", "/mnt/d", "-o", "rw,allow_other"], ["mount", "s3://b/p/", "/mnt/d", "--allow-other"], False, False),
        (["s3://b", "/m", "-o", "ro", "-o", "uid=7"], ["mount", "s3://b", "/m", "--uid", "7", "--read-only"], False, False),
        (["s3://b", "/m", "-ouid=7"], ["mount", "s3://b", "/m", "--uid", "7"], False, False),
        (["-fv", "s3://b", "/m"], ["mount", "s3://b", "/m"], True, True),
        (["s3://b", "/m", "-n", "-s", "-o", "x", "-t", "s3files"], ["mount", "s3://b", "/m"], False, False),
        (["s3://b", "/m", "-t", "fuse.s3files"], ["mount", "s3://b", "/m"], False, False),
    ],
)
def test_command_line(argv: list[str], expected: list[str], fake: bool, verbose: bool) -> None:
    invocation = parse_command_line(argv)
    assert (invocation.argv, invocation.fake, invocation.verbose) == (expected, fake, verbose)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["s3://b"], "usage: mount.s3files"),
        (["s3://b", "/m", "/x"], "usage: mount.s3files"),
        (["b/p", "/m"], "source must look like s3://"),
        (["s3://b", "/m", "-t", "nfs"], "type s3files, not 'nfs'"),
        (["s3://b", "/m", "-N", "/proc/1/ns/mnt"], "-N"),
        (["s3://b", "/m", "-o"], "-o needs a value"),
        (["s3://b", "/m", "-x"], "unknown switch '-x'"),
        (["s3://b", "/m", "-o", "consistency=sometimes"], "invalid choice: 'sometimes'"),
        (["s3://b", "/m", "-o", "max_connections=many"], "invalid int value: 'many'"),
        (["s3://b", "/m", "-o", "cache_size=lots"], "--cache-size"),
        (["s3://b", "/m", "-o", "file_mode=999"], "--file-mode"),
    ],
)
def test_command_line_refused(argv: list[str], needle: str) -> None:
    with pytest.raises(OptionError) as caught:
        parse_command_line(argv)
    assert needle in str(caught.value)


def test_helper_refuses_with_one_line_and_status_1(tmp_path: Path) -> None:
    result = subprocess.run(
        [*HELPER, "s3://b/", str(tmp_path), "-o", "rw,bogus"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == EXIT_USAGE
    assert result.stderr.splitlines() == [
        "mount.s3files: unknown option 'bogus' (options are s3files mount's flags as key=value,"
        " see s3files mount --help)"
    ]


# -- end to end, as root: the helper, mount -t s3files, mount -T fstab, umount ----------------------------

ENTRY_POINT = Path(sys.executable).with_name("mount.s3files")
# The installed console script when this checkout's package is installed with it, else the same main().
HELPER = [str(ENTRY_POINT)] if ENTRY_POINT.exists() else [sys.executable, "-m", "s3files.fstab"]
SBIN_HELPER = Path("/sbin/mount.s3files")

needs_root_and_fuse = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or shutil.which("mount") is None,
    reason="needs root, /dev/fuse and mount(8)",
)


@pytest.fixture
def sbin_helper(tmp_path: Path) -> Iterator[Path]:
    """/sbin/mount.s3files for the test: a link to the entry point (or a wrapper running this checkout's
    helper), removed afterwards; skipped if /sbin is not writable or another helper is installed there."""
    if not os.access("/sbin", os.W_OK):
        pytest.skip("/sbin is not writable")
    if SBIN_HELPER.exists() or SBIN_HELPER.is_symlink():
        pytest.skip(f"{SBIN_HELPER} exists already; not replacing it")
    if ENTRY_POINT.exists():
        target = ENTRY_POINT
    else:
        target = tmp_path / "mount.s3files"
        target.write_text(f'#!/bin/sh\nexec {sys.executable} -m s3files.fstab "$@"\n')
        target.chmod(0o755)
    SBIN_HELPER.symlink_to(target)
    try:
        yield SBIN_HELPER
    finally:
        if SBIN_HELPER.is_symlink() and os.readlink(SBIN_HELPER) == str(target):
            SBIN_HELPER.unlink()


def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)


def wait_for(predicate: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


class Mounted:
    """One mount the test makes through mount(8) or the helper; ``close`` unmounts it if it is still there."""

    def __init__(self, tmp_path: Path, endpoint_url: str) -> None:
        self.mountpoint = tmp_path / "data"
        self.mountpoint.mkdir()
        self.log = tmp_path / "daemon.log"
        # The options an fstab line would carry; the cache and the log kept in this test's folder.
        self.options = f"endpoint_url={endpoint_url},cache_dir={tmp_path / 'cache'},log_file={self.log}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def unmounted_and_daemon_gone(self) -> bool:
        """The mount is gone and the daemon said it finished (its uploads at unmount included)."""
        return mount_entry(self.mountpoint) is None and "unmounted " in self.log_text()

    def close(self) -> None:
        if mount_entry(self.mountpoint) is not None:
            run("umount", "-l", str(self.mountpoint))


@pytest.fixture
def mounted(tmp_path: Path, moto_server: MotoServer) -> Iterator[Mounted]:
    m = Mounted(tmp_path, moto_server.endpoint_url)
    try:
        yield m
    finally:
        m.close()


def _write_then_umount(m: Mounted, boto3_client: Any, bucket: str, key: str) -> None:
    entry = mount_entry(m.mountpoint)
    assert entry is not None and entry.fstype == "fuse.s3files"
    assert (m.mountpoint / "in.txt").read_bytes() == b"input"
    (m.mountpoint / "out.txt").write_bytes(b"written before umount")
    done = run("umount", str(m.mountpoint))
    assert done.returncode == 0, done.stderr
    assert wait_for(m.unmounted_and_daemon_gone), m.log_text()[-2000:]
    assert boto3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"written before umount"


@needs_root_and_fuse
def test_helper_called_as_mount_does(mounted: Mounted, boto3_client: Any, bucket: str) -> None:
    boto3_client.put_object(Bucket=bucket, Key="pre/in.txt", Body=b"input")
    result = run(
        *HELPER, f"s3://{bucket}/pre/", str(mounted.mountpoint), "-o", f"rw,_netdev,allow_other,{mounted.options}"
    )
    assert result.returncode == 0, result.stderr
    assert mount_entry(mounted.mountpoint) is not None  # mounted when the helper returned
    _write_then_umount(mounted, boto3_client, bucket, "pre/out.txt")


@needs_root_and_fuse
def test_mount_t_s3files(sbin_helper: Path, mounted: Mounted, boto3_client: Any, bucket: str) -> None:
    """Real mount(8); eventual mode, so the file is uploaded by the daemon after ``umount``, before it exits."""
    boto3_client.put_object(Bucket=bucket, Key="in.txt", Body=b"input")
    options = f"{mounted.options},consistency=eventual,writeback_delay=600"
    result = run("mount", "-t", "s3files", f"s3://{bucket}/", str(mounted.mountpoint), "-o", options)
    assert result.returncode == 0, result.stderr
    _write_then_umount(mounted, boto3_client, bucket, "out.txt")


@needs_root_and_fuse
def test_mount_from_an_fstab_file(
    sbin_helper: Path, mounted: Mounted, boto3_client: Any, bucket: str, tmp_path: Path
) -> None:
    boto3_client.put_object(Bucket=bucket, Key="p/q/in.txt", Body=b"input")
    fstab = tmp_path / "fstab"
    fstab.write_text(
        f"# an fstab line as a user writes it\n"
        f"s3://{bucket}/p/q/ {mounted.mountpoint} s3files"
        f" _netdev,allow_other,{mounted.options},consistency=eventual,x-systemd.after=network-online.target 0 0\n"
    )
    result = run("mount", "-T", str(fstab), str(mounted.mountpoint))
    assert result.returncode == 0, result.stderr
    again = run("mount", "-T", str(fstab), "-a", "-t", "s3files")  # already mounted: mount(8) skips it
    assert again.returncode == 0, again.stderr
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    assert len([line for line in lines if f" {mounted.mountpoint} " in line]) == 1
    _write_then_umount(mounted, boto3_client, bucket, "p/q/out.txt")


@needs_root_and_fuse
def test_mount_refuses_a_bad_option(sbin_helper: Path, mounted: Mounted, bucket: str) -> None:
    result = run("mount", "-t", "s3files", f"s3://{bucket}/", str(mounted.mountpoint), "-o", "bogus")
    assert result.returncode == EXIT_USAGE, (result.stdout, result.stderr)
    assert "mount.s3files: unknown option 'bogus'" in result.stderr
    assert mount_entry(mounted.mountpoint) is None


@needs_root_and_fuse
def test_helper_reports_a_failed_mount(mounted: Mounted, moto_server: MotoServer) -> None:
    result = run(*HELPER, "s3://no-such-bucket-here/", str(mounted.mountpoint), "-o", mounted.options)
    assert result.returncode == EXIT_FAILURE
    assert "no-such-bucket-here" in result.stderr and "Traceback" not in result.stderr
    assert mount_entry(mounted.mountpoint) is None
