#!/bin/bash
# The s3files container's entrypoint: mount $S3FILES_SOURCE at /mnt/data and run the container's command
# there, under `s3files exec` (which makes sure every write is in S3, unmounts, and exits with the command's
# status):
#
#     s3files exec --mount "$S3FILES_SOURCE:$S3FILES_MOUNTPOINT" [options from S3FILES_*] -- "$@"
#
# Options come from the environment, one variable per `s3files mount`/`s3files exec` flag, upper case with
# '_' for '-': S3FILES_ENDPOINT_URL=http://minio:9000 gives --endpoint-url http://minio:9000. The switches
# (READ_ONLY, ALLOW_OTHER, DIRECT_IO, NO_XATTRS) are on for 1/true/yes and off for 0/false/no or empty.
# S3FILES_ARGS holds further arguments, split at whitespace. Not passed as flags: S3FILES_SOURCE,
# S3FILES_MOUNTPOINT (default /mnt/data), S3FILES_ARGS, S3FILES_FUSE_DEVICE (default /dev/fuse, checked before
# mounting). Credentials come from the AWS chain (AWS_ACCESS_KEY_ID, AWS_PROFILE, an instance role, ...).
#
# Errors are one line, `s3files-entrypoint: error: ...`, exit status 2, before anything is mounted.
set -euo pipefail

PROG=s3files-entrypoint
SWITCHES=" READ_ONLY ALLOW_OTHER DIRECT_IO NO_XATTRS "
NOT_FLAGS=" SOURCE MOUNTPOINT ARGS FUSE_DEVICE FOREGROUND READY_FD "

fail() {
    echo "$PROG: error: $*" >&2
    exit 2
}

source_url="${S3FILES_SOURCE:-}"
mountpoint="${S3FILES_MOUNTPOINT:-/mnt/data}"
fuse_device="${S3FILES_FUSE_DEVICE:-/dev/fuse}"

[ -n "$source_url" ] || fail "S3FILES_SOURCE is not set; set it to the bucket to mount, e.g. -e S3FILES_SOURCE=s3://bucket/prefix/"
case "$source_url" in
    s3://?*) ;;
    *) fail "S3FILES_SOURCE must look like s3://bucket[/prefix/], got '$source_url'" ;;
esac
[ $# -gt 0 ] || fail "no command to run; give the container a command, e.g. docker run ... IMAGE ls -l $mountpoint"
[ -c "$fuse_device" ] || fail "$fuse_device is missing: run the container with --device /dev/fuse --cap-add SYS_ADMIN (see deploy/README.md)"
[ -d "$mountpoint" ] || fail "mount point $mountpoint is not a folder"

options=()
for var in $(compgen -e -X '!S3FILES_*' | sort); do
    name="${var#S3FILES_}"
    case "$NOT_FLAGS" in *" $name "*) continue ;; esac
    value="${!var}"
    flag="--$(echo "$name" | tr 'A-Z_' 'a-z-')"
    case "$SWITCHES" in
        *" $name "*)
            case "${value,,}" in
                1 | true | yes) options+=("$flag") ;;
                0 | false | no | "") ;;
                *) fail "$var is a switch: set it to 1 or 0, got '$value'" ;;
            esac
            ;;
        *) options+=("$flag" "$value") ;;
    esac
done
if [ -n "${S3FILES_ARGS:-}" ]; then
    read -r -a extra <<< "$S3FILES_ARGS"
    options+=("${extra[@]}")
fi

exec s3files exec --mount "$source_url:$mountpoint" "${options[@]}" -- "$@"
