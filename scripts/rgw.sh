#!/usr/bin/env bash
# rgw.sh - a throw-away single-node Ceph RadosGW (S3) server on 127.0.0.1 for tests and benchmarks.
#
# Why: moto's S3 emulator answers a ranged GET by reading the whole object, so read-ahead and ranged-read
# figures measured against it mean nothing. RadosGW serves ranges for real.
#
# Usage:
#   rgw.sh install              install radosgw, ceph-mon, ceph-osd, ceph-common with apt if missing
#   rgw.sh start DIR [PORT]     bring up (idempotently) 1 mon + 1 memstore OSD + radosgw, all files under DIR,
#                               S3 on 127.0.0.1:PORT (default: a free port); prints KEY=VALUE lines on stdout:
#                               ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and RGW_DIR)
#   rgw.sh stop DIR             stop the daemons whose pid files are in DIR (rgw, osd, mon); DIR is then removable
#   rgw.sh status DIR           print each daemon's state; exit 0 when S3 answers, 3 otherwise
#   rgw.sh key DIR add ACCESS SECRET | key DIR rm ACCESS
#                               give the S3 user one more key, or take one away (tests of credentials that
#                               change: the old key refused from then on)
#
# Environment: RGW_WAIT_SECONDS (bound on each wait, default 120), RGW_STOP_SECONDS (bound on each daemon's
# exit, default 60), RGW_MEMSTORE_BYTES (OSD capacity, default 8 GiB). The OSD is memstore: objects live in
# RAM (measured: OSD RSS ~2x the data just written, ~1x after a restart) and are saved to DIR/osd/0 on stop.
# Measured on 2 vCPUs: start ~3.5-5 s from empty, ~1.5 s from a stopped DIR; stop <1 s empty, ~4 s per GiB.
#
# What must stay true: nothing outside DIR is written (every ceph command gets -c DIR/ceph.conf and
# CEPH_CONF; every path option - data, logs, pid files, admin sockets, crash dumps, cluster log - points
# into DIR), and only processes whose pid file is in DIR and whose command line names DIR/ceph.conf are
# ever signalled.
#
# Facts that cost hours to find (Ceph 16.2, Debian 12):
#   - there is no standalone RGW backend: a mon and an OSD are required;
#   - with auth none, radosgw also needs auth_client_required = none and ms_mon_client_mode = crc in its
#     own section, or it hangs for 300 s;
#   - the beast frontend needs tcp_nodelay=1, or every GET costs 40-50 ms more (Nagle + delayed ACK);
#   - osd_fast_shutdown (default true) skips unmounting the object store, so memstore would lose every
#     object on stop; we turn it off so that the OSD saves memstore's contents to DIR/osd/0 on SIGTERM
#     (start after stop keeps the buckets). If the OSD died any other way its objects are gone while the
#     mon still knows the pools, so start then recreates the cluster from scratch (with a warning);
#   - the OSD must be stopped while the mon is still up, or it waits osd_mon_shutdown_timeout (5 s);
#   - radosgw creates its pools lazily, each costing a paxos round; we create them all up front.
set -euo pipefail

readonly ACCESS_KEY=s3filesaccess
readonly SECRET_KEY=s3filessecret
readonly S3_USER=s3files
readonly WAIT_SECONDS=${RGW_WAIT_SECONDS:-120}
readonly STOP_SECONDS=${RGW_STOP_SECONDS:-60}
readonly MEMSTORE_BYTES=${RGW_MEMSTORE_BYTES:-8589934592}
readonly DAEMONS_STOP_ORDER=(client.rgw.a osd.0 mon.a)
readonly RGW_POOLS=(.rgw.root default.rgw.log default.rgw.control default.rgw.meta
                    default.rgw.buckets.index default.rgw.buckets.data default.rgw.buckets.non-ec)

PROG=$(basename "$0")
readonly PROG

die() {
    echo "$PROG: error: $*" >&2
    exit 1
}

usage() {
    echo "usage: $PROG install | start DIR [PORT] | stop DIR | status DIR | key DIR add ACCESS SECRET | key DIR rm ACCESS" >&2
    exit 2
}

# note MSG: progress goes to DIR/log/rgw.sh.log, never to stdout (stdout carries only KEY=VALUE lines).
note() {
    if [[ -d $DIR/log ]]; then echo "$(date -u +%FT%T.%3NZ) $*" >>"$DIR/log/rgw.sh.log"; fi
}

# ---------------------------------------------------------------------------------------------- install

cmd_install() {
    local missing=() pkg
    for pkg in radosgw ceph-mon ceph-osd ceph-common; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} (Ceph 16.2) by hand"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo -n)
    local log
    log=$(mktemp /tmp/rgw-install.XXXXXX.log)
    if ! apt-cache show radosgw >/dev/null 2>&1; then
        "${sudo[@]}" apt-get update >>"$log" 2>&1 || die "apt-get update failed (log: $log)"
    fi
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends \
        radosgw ceph-mon ceph-osd ceph-common >>"$log" 2>&1 \
        || die "apt-get install ${missing[*]} failed (log: $log)"
    rm -f "$log"
}

require_binaries() {
    local b
    for b in ceph ceph-mon ceph-osd radosgw radosgw-admin monmaptool; do
        command -v "$b" >/dev/null || die "$b not found; run '$0 install' first"
    done
}

# ---------------------------------------------------------------------------------------------- helpers

free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
        return
    fi
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    die "no free TCP port found on 127.0.0.1"
}

# pid_of NAME: print the pid of daemon NAME (mon.a, osd.0, client.rgw.a) if it runs from this DIR.
# A pid file alone is not enough (pids are reused): the process's command line must name our ceph.conf.
pid_of() {
    local pidfile="$DIR/run/$1.pid" pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "-c $CONF " || return 1
    echo "$pid"
}

is_running() { pid_of "$1" >/dev/null; }

# alive PID: the process exists and is not a zombie (an exited daemon, reparented to an init that is slow
# to reap it, still answers kill -0).
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

log_of() { echo "$DIR/log/$1.log"; }

# ceph_cmd ARGS...: the ceph CLI against our cluster, bounded in time.
ceph_cmd() {
    timeout 30 ceph -c "$CONF" --connect-timeout 20 "$@"
}

conf_get() { # conf_get KEY: value of "KEY = value" in ceph.conf (first match)
    sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$CONF" | head -n1
}

rgw_port() { conf_get rgw_frontends | sed -n 's/.*endpoint=127\.0\.0\.1:\([0-9]*\).*/\1/p'; }

s3_answers() { # any HTTP status at all means radosgw is serving
    local code
    code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$1/" 2>/dev/null) || true
    [[ -n $code && $code != 000 ]]
}

print_endpoint() {
    echo "ENDPOINT_URL=http://127.0.0.1:$(rgw_port)"
    echo "AWS_ACCESS_KEY_ID=$ACCESS_KEY"
    echo "AWS_SECRET_ACCESS_KEY=$SECRET_KEY"
    echo "RGW_DIR=$DIR"
}

# wait_for DESCRIPTION LOG DAEMON CMD...: run CMD until it succeeds, at most WAIT_SECONDS; give up at once
# if DAEMON (mon.a, osd.0, client.rgw.a; "-" for none) has exited meanwhile.
wait_for() {
    local what=$1 log=$2 daemon=$3
    shift 3
    local deadline=$((SECONDS + WAIT_SECONDS))
    until "$@"; do
        if [[ $daemon != - ]] && ! is_running "$daemon"; then
            die "$daemon exited while waiting for $what (log: $log)"
        fi
        ((SECONDS < deadline)) || die "timed out after ${WAIT_SECONDS}s waiting for $what (log: $log)"
        sleep 0.2
    done
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

set_dir() {
    [[ -n ${1:-} ]] || usage
    mkdir -p "$1" || die "cannot create directory $1"
    DIR=$(cd "$1" && pwd -P)
    CONF=$DIR/ceph.conf
    export CEPH_CONF=$CONF
}

# ---------------------------------------------------------------------------------------------- start

write_conf() {
    local fsid=$1 mon_port=$2 rgw_port=$3
    cat >"$CONF.tmp" <<EOF
# Generated by scripts/rgw.sh: a throw-away single-node cluster; every path points into this directory.
[global]
fsid = $fsid
mon_host = v2:127.0.0.1:$mon_port
public_addr = 127.0.0.1
ms_bind_msgr1 = false
ms_bind_msgr2 = true
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
ms_cluster_mode = crc
ms_service_mode = crc
ms_client_mode = crc
ms_mon_cluster_mode = crc
ms_mon_service_mode = crc
ms_mon_client_mode = crc
keyring = $DIR/keyring
run_dir = $DIR/run
exec_dir = $DIR/run
crash_dir = $DIR/crash
mon_cluster_log_file = $DIR/log/cluster.\$channel.log
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 2
mon_data_avail_crit = 1
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
paxos_propose_interval = 0.1
debug_ms = 0/0

[mon]
mon_data = $DIR/mon/\$id
pid_file = $DIR/run/\$name.pid
admin_socket = $DIR/run/\$name.asok
log_file = $DIR/log/\$name.log
mon_allow_pool_delete = true

[osd]
osd_data = $DIR/osd/\$id
osd_journal = $DIR/osd/\$id/journal
osd_objectstore = memstore
memstore_device_bytes = $MEMSTORE_BYTES
osd_fast_shutdown = false
pid_file = $DIR/run/\$name.pid
admin_socket = $DIR/run/\$name.asok
log_file = $DIR/log/\$name.log

[client.rgw.a]
rgw_frontends = beast endpoint=127.0.0.1:$rgw_port tcp_nodelay=1
rgw_data = $DIR/rgw
auth_client_required = none
ms_mon_client_mode = crc
pid_file = $DIR/run/\$name.pid
admin_socket = $DIR/run/\$name.asok
log_file = $DIR/log/\$name.log
debug_rgw = 0/5
rgw_enable_usage_log = false
# Deleted objects are freed by garbage collection, by default hours later; the OSD keeps data in RAM, so
# benchmarks that write and delete a lot would grow it without bound. Collect within a minute instead.
rgw_gc_obj_min_wait = 30
rgw_gc_processor_period = 30
rgw_gc_processor_max_time = 30
EOF
    mv "$CONF.tmp" "$CONF"
}

init_cluster() { # conf, monmap and mon store; each step guarded by a marker so a rerun resumes
    mkdir -p "$DIR/run" "$DIR/log" "$DIR/crash" "$DIR/mon" "$DIR/osd/0" "$DIR/rgw" "$DIR/state"
    if [[ ! -f $CONF ]]; then
        local fsid mon_port rgw_port=${PORT:-}
        fsid=$(cat /proc/sys/kernel/random/uuid)
        for _ in 1 2 3 4 5 6 7 8; do # two free_port calls may return the same port
            mon_port=$(free_port)
            [[ -n $rgw_port ]] || rgw_port=$(free_port)
            [[ $mon_port != "$rgw_port" ]] && break
            [[ -n ${PORT:-} ]] || rgw_port=
        done
        [[ $mon_port != "$rgw_port" ]] || die "could not pick distinct free ports for the mon and radosgw"
        write_conf "$fsid" "$mon_port" "$rgw_port"
    fi
    if [[ ! -f $DIR/state/mon.done ]]; then
        note "creating mon store"
        rm -rf "$DIR/mon/a"
        local mon_addr
        mon_addr=$(conf_get mon_host)
        monmaptool --create --clobber --add a "$mon_addr" --fsid "$(conf_get fsid)" "$DIR/monmap" \
            >>"$DIR/log/mkfs.log" 2>&1 || die "monmaptool failed (log: $DIR/log/mkfs.log)"
        ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" >>"$DIR/log/mkfs.log" 2>&1 \
            || die "ceph-mon --mkfs failed (log: $DIR/log/mkfs.log)"
        touch "$DIR/state/mon.done"
    fi
}

set_port() { # an explicit PORT differing from the configured one: only possible while radosgw is down
    local current
    current=$(rgw_port)
    [[ -z ${PORT:-} || $PORT == "$current" ]] && return 0
    is_running client.rgw.a && die "radosgw from $DIR already listens on port $current, not $PORT; stop it first"
    sed -i "s/endpoint=127\.0\.0\.1:[0-9]*/endpoint=127.0.0.1:$PORT/" "$CONF"
}

start_daemon() { # start_daemon NAME CMD...: daemonizes; its stdout/stderr go to DIR/log/NAME.out
    local name=$1
    shift
    is_running "$name" && return 0
    rm -f "$DIR/run/$name.pid" "$DIR/run/$name.asok"
    note "starting $name"
    "$@" -c "$CONF" >>"$DIR/log/$name.out" 2>&1 9>&- \
        || die "$name failed to start (log: $(log_of "$name"), $DIR/log/$name.out)"
    wait_for "$name to write its pid file" "$(log_of "$name")" - is_running "$name"
}

osd_is_up() { ceph_cmd osd stat -f json 2>/dev/null | grep -q '"num_up_osds":1'; }

ensure_osd() {
    if [[ ! -f $DIR/state/osd.done ]]; then
        note "creating osd.0"
        [[ -s $DIR/osd.uuid ]] || cat /proc/sys/kernel/random/uuid >"$DIR/osd.uuid"
        local uuid
        uuid=$(<"$DIR/osd.uuid")
        # 'osd new UUID 0' is idempotent for the same uuid and id, so a rerun after a failure is safe.
        ceph_cmd osd new "$uuid" 0 >>"$DIR/log/mkfs.log" 2>&1 \
            || die "'ceph osd new' failed (log: $DIR/log/mkfs.log, $(log_of mon.a))"
        rm -rf "$DIR/osd/0" && mkdir -p "$DIR/osd/0"
        timeout 120 ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$uuid" >>"$DIR/log/mkfs.log" 2>&1 \
            || die "ceph-osd --mkfs failed (log: $DIR/log/mkfs.log)"
        touch "$DIR/state/osd.done" "$DIR/state/osd.saved"
    fi
    # From here on memstore's RAM and DIR/osd/0 differ until a clean stop saves it again.
    is_running osd.0 || rm -f "$DIR/state/osd.saved"
    start_daemon osd.0 ceph-osd -i 0
    wait_for "osd.0 to be up" "$(log_of osd.0)" osd.0 osd_is_up
}

ensure_pools() {
    [[ -f $DIR/state/pools.done ]] && return 0
    note "creating pools"
    local pool pids=() pid
    # In parallel: the mon batches the proposals into few paxos rounds.
    for pool in "${RGW_POOLS[@]}"; do
        { ceph_cmd osd pool create "$pool" 8 8 replicated &&
            ceph_cmd osd pool application enable "$pool" rgw; } >>"$DIR/log/pools.log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || die "creating the RGW pools failed (log: $DIR/log/pools.log)"
    done
    touch "$DIR/state/pools.done"
}

ensure_user() {
    [[ -f $DIR/state/user.done ]] && return 0
    note "creating S3 user $S3_USER"
    local log=$DIR/log/radosgw-admin.log
    if ! timeout 120 radosgw-admin -c "$CONF" user info --uid="$S3_USER" >>"$log" 2>&1; then
        timeout 120 radosgw-admin -c "$CONF" user create --uid="$S3_USER" --display-name="$S3_USER" \
            --access-key="$ACCESS_KEY" --secret="$SECRET_KEY" >>"$log" 2>&1 \
            || die "radosgw-admin user create failed (log: $log)"
    fi
    touch "$DIR/state/user.done"
}

cmd_start() {
    PORT=${2:-}
    [[ -z $PORT || ($PORT =~ ^[0-9]+$ && $PORT -gt 0 && $PORT -lt 65536) ]] \
        || die "PORT must be a TCP port number, not '$PORT'"
    set_dir "${1:-}"
    require_binaries
    command -v curl >/dev/null || die "curl not found"
    mkdir -p "$DIR/log"
    exec 9>"$DIR/.lock"
    flock -w "$WAIT_SECONDS" 9 || die "another '$PROG start/stop $DIR' holds $DIR/.lock"
    if [[ -f $CONF ]] && is_running mon.a && is_running osd.0 && is_running client.rgw.a \
        && s3_answers "$(rgw_port)"; then
        [[ -z $PORT || $PORT == "$(rgw_port)" ]] \
            || die "radosgw from $DIR already listens on port $(rgw_port), not $PORT; stop it first"
        print_endpoint
        return 0
    fi
    if [[ -f $DIR/state/osd.done && ! -f $DIR/state/osd.saved ]] && ! is_running osd.0; then
        # The OSD died without saving memstore (SIGKILL, crash, reboot): its objects are gone while the
        # mon still knows the pools, so the cluster could never become healthy. Start over.
        echo "$PROG: warning: osd.0 in $DIR stopped without saving its data; recreating the cluster" >&2
        note "osd.0 lost its data; recreating the cluster"
        stop_daemons
        rm -rf "$DIR/mon" "$DIR/osd" "$DIR/rgw" "$DIR/state" "$DIR/run" "$DIR/monmap" "$DIR/osd.uuid"
    fi
    init_cluster
    set_port
    start_daemon mon.a ceph-mon -i a
    ensure_osd
    ensure_pools
    ensure_user
    local port
    port=$(rgw_port)
    if ! is_running client.rgw.a && port_in_use "$port"; then
        die "port 127.0.0.1:$port is already in use by another program; choose another PORT"
    fi
    start_daemon client.rgw.a radosgw -n client.rgw.a
    wait_for "S3 to answer on 127.0.0.1:$port" "$(log_of client.rgw.a)" client.rgw.a s3_answers "$port"
    note "up on 127.0.0.1:$port"
    print_endpoint
}

# ---------------------------------------------------------------------------------------------- stop

# stop_daemons: SIGTERM each daemon of DIR in order, wait (bounded), SIGKILL if it ignores that.
# Marks state/osd.saved when the OSD exited on SIGTERM, i.e. memstore wrote its contents to DIR/osd/0.
stop_daemons() {
    local name pid deadline failed=()
    # Order matters: radosgw, then the OSD while the mon can still hear it leave, then the mon.
    for name in "${DAEMONS_STOP_ORDER[@]}"; do
        pid=$(pid_of "$name") || continue
        note "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || continue
        deadline=$((SECONDS + STOP_SECONDS))
        while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
        if alive "$pid"; then
            note "$name (pid $pid) ignored SIGTERM for ${STOP_SECONDS}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 10))
            while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
            if alive "$pid"; then failed+=("$name (pid $pid)"); fi
        elif [[ $name == osd.0 && -d $DIR/state ]]; then
            touch "$DIR/state/osd.saved"
        fi
        rm -f "$DIR/run/$name.pid" "$DIR/run/$name.asok"
    done
    ((${#failed[@]} == 0)) || die "still running after SIGKILL: ${failed[*]} (log: $DIR/log/rgw.sh.log)"
}

cmd_stop() {
    [[ -n ${1:-} ]] || usage
    [[ -d $1 ]] || return 0
    set_dir "$1"
    exec 9>"$DIR/.lock"
    flock -w "$WAIT_SECONDS" 9 || die "another '$PROG start/stop $DIR' holds $DIR/.lock"
    stop_daemons
}

# ---------------------------------------------------------------------------------------------- status

cmd_status() {
    [[ -n ${1:-} ]] || usage
    if [[ ! -f $1/ceph.conf ]]; then
        echo "no cluster in $1"
        return 3
    fi
    set_dir "$1"
    if [[ ! -f $CONF ]]; then
        echo "no cluster in $DIR"
        return 3
    fi
    local name pid
    for name in mon.a osd.0 client.rgw.a; do
        if pid=$(pid_of "$name"); then
            echo "$name: running (pid $pid)"
        else
            echo "$name: stopped"
        fi
    done
    if is_running client.rgw.a && s3_answers "$(rgw_port)"; then
        echo "s3: answering on 127.0.0.1:$(rgw_port)"
        print_endpoint
        return 0
    fi
    echo "s3: not answering"
    return 3
}

# ---------------------------------------------------------------------------------------------- keys

cmd_key() { # key DIR add ACCESS SECRET | key DIR rm ACCESS
    [[ -n ${1:-} && -f $1/ceph.conf ]] || die "no cluster in '${1:-}'"
    set_dir "$1"
    local action=${2:-} access=${3:-} secret=${4:-} log
    log=$DIR/log/radosgw-admin.log
    [[ $access =~ ^[A-Za-z0-9]+$ ]] || die "ACCESS must be letters and digits, not '$access'"
    case $action in
    add)
        [[ -n $secret ]] || usage
        timeout 120 radosgw-admin -c "$CONF" key create --uid="$S3_USER" --key-type=s3 \
            --access-key="$access" --secret-key="$secret" >>"$log" 2>&1 \
            || die "radosgw-admin key create failed (log: $log)"
        ;;
    rm)
        timeout 120 radosgw-admin -c "$CONF" key rm --uid="$S3_USER" --key-type=s3 \
            --access-key="$access" >>"$log" 2>&1 || die "radosgw-admin key rm failed (log: $log)"
        ;;
    *) usage ;;
    esac
}

case ${1:-} in
install) cmd_install ;;
key) cmd_key "${@:2}" ;;
start) cmd_start "${@:2}" ;;
stop) cmd_stop "${@:2}" ;;
status) cmd_status "${@:2}" ;;
*) usage ;;
esac
