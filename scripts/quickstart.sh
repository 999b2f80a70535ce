#!/usr/bin/env bash
# quickstart.sh - the README's first command: set this machine up, then run the main job,
# `s3files bench --quick`, against an embedded local S3 server (moto), and print its table.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/s3files bench --quick "$@"
