#!/usr/bin/env bash
# setup.sh - make this machine ready to run s3files and its tests (idempotent; Debian/Ubuntu, as root).
#
# Installs what a fresh machine lacks: fuse3, libfuse3-dev and pkg-config (pyfuse3 builds against them),
# a virtualenv in .venv with the package and its test extras. Set S3FILES_WITH_RGW=1 to also install the
# Ceph packages for the RadosGW test server (scripts/rgw.sh install).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "setup.sh: error: run as root (it installs Debian packages and uses /dev/fuse)" >&2
    exit 1
fi

missing=()
for pkg in fuse3 libfuse3-dev pkg-config python3-venv; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [[ ! -e /dev/fuse ]]; then
    echo "setup.sh: error: /dev/fuse is missing; in a container run with --device /dev/fuse --cap-add SYS_ADMIN" >&2
    exit 1
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
.venv/bin/python -m pip install -q -e '.[test]' 2>&1 | grep -v "^WARNING: Location" >&2 || true
.venv/bin/python -c "import s3files, pyfuse3, aiobotocore, moto" || {
    echo "setup.sh: error: the package did not install into .venv (see pip's output above)" >&2
    exit 1
}

if [[ ${S3FILES_WITH_RGW:-0} == 1 ]]; then
    scripts/rgw.sh install
fi
echo "setup.sh: ready (.venv/bin/s3files)" >&2
