"""Reading /proc/self/mountinfo without pyfuse3 for the front ends that only need to know what is mounted."""

from __future__ import annotations

import subprocess
import sys


def test_front_ends_do_not_import_pyfuse3() -> None:
    """The CLI, the library and the benchmark's mount helpers read mountinfo without FUSE bindings."""
    code = (
        "import sys, s3files, s3files.api, s3files.cli, s3files.mountinfo, s3files_bench.mounts, s3files_bench.cli\n"
        "assert 'pyfuse3' not in sys.modules, 'pyfuse3 imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
