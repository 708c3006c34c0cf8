#!/usr/bin/env bash
# Starts, stops and shows a local etcd for pm.
#
#   ./docker.sh up [--cluster 3]   start etcd (one member, or a cluster of N)
#   ./docker.sh down               stop it and remove its data
#   ./docker.sh status             show what runs and the endpoints to use
#
# It runs etcd in Docker when a Docker engine answers. Otherwise it runs the local `etcd`
# binary in the background, with data and logs under $PM_ETCD_DIR (default .pm-etcd/ in
# this directory). When there is neither and it runs as root, it installs Debian's
# etcd-server with apt-get. Client ports start at $PM_ETCD_PORT (default 2379); member i
# uses client port PORT+2i and peer port PORT+2i+1. etcd runs with periodic
# auto-compaction (1 h); `status` shows each member's database size, and
#   etcdctl --endpoints URL defrag
# shrinks a member's database file after compaction (one member at a time).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
dir=${PM_ETCD_DIR:-$here/.pm-etcd}
base_port=${PM_ETCD_PORT:-2379}
image=${PM_ETCD_IMAGE:-quay.io/coreos/etcd:v3.5.17}

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

docker_up() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

ensure_etcd_binary() {
    if [ -n "${ETCD_BIN:-}" ] && [ -x "$ETCD_BIN" ]; then echo "$ETCD_BIN"; return; fi
    if command -v etcd >/dev/null 2>&1; then command -v etcd; return; fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "docker.sh: no Docker engine and no etcd binary; installing etcd-server with apt-get" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >&2
        # Debian's package may start a system etcd on 2379; ours must own the port.
        if command -v systemctl >/dev/null 2>&1; then systemctl disable --now etcd >/dev/null 2>&1 || true; fi
        command -v etcd; return
    fi
    echo "docker.sh: need a Docker engine or the etcd binary (apt-get install etcd-server, or set ETCD_BIN)" >&2
    exit 1
}

endpoints() {
    local n=$1 i out=""
    for ((i = 0; i < n; i++)); do
        out+="${out:+,}http://127.0.0.1:$((base_port + 2 * i))"
    done
    echo "$out"
}

initial_cluster() {
    local n=$1 host=$2 i out=""
    for ((i = 0; i < n; i++)); do
        out+="${out:+,}m$i=http://$host:$((base_port + 2 * i + 1))"
    done
    echo "$out"
}

member_args() {
    local i=$1 n=$2 host=$3 listen=$4
    local cport=$((base_port + 2 * i)) pport=$((base_port + 2 * i + 1))
    echo --name "m$i" \
        --listen-client-urls "http://$listen:$cport" --advertise-client-urls "http://$host:$cport" \
        --listen-peer-urls "http://$listen:$pport" --initial-advertise-peer-urls "http://$host:$pport" \
        --initial-cluster "$(initial_cluster "$n" "$host")" --initial-cluster-state new \
        --initial-cluster-token pm-local \
        --auto-compaction-mode periodic --auto-compaction-retention 1h
}

wait_healthy() {
    local eps=$1 i
    for ((i = 0; i < 150; i++)); do
        if command -v etcdctl >/dev/null 2>&1; then
            ETCDCTL_API=3 etcdctl --endpoints "$eps" --dial-timeout 1s endpoint health >/dev/null 2>&1 && return 0
        elif curl -fsS "${eps%%,*}/health" 2>/dev/null | grep -q '"health":"true"'; then
            return 0
        fi
        sleep 0.2
    done
    echo "docker.sh: etcd did not become healthy; logs are in $dir" >&2
    return 1
}

up() {
    local n=1
    while [ $# -gt 0 ]; do
        case $1 in
            --cluster) n=${2:?--cluster needs a member count}; shift 2 ;;
            --cluster=*) n=${1#--cluster=}; shift ;;
            *) echo "docker.sh up: unknown argument $1" >&2; usage ;;
        esac
    done
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "docker.sh: --cluster wants a positive number, got $n" >&2; exit 2; }
    if [ -f "$dir/mode" ]; then
        echo "docker.sh: etcd is already up ($(cat "$dir/mode")); run ./docker.sh down first" >&2
        status
        return 0
    fi
    mkdir -p "$dir"
    echo "$n" >"$dir/members"
    if docker_up; then
        echo docker >"$dir/mode"
        docker network create pm-etcd >/dev/null 2>&1 || true
        for ((i = 0; i < n; i++)); do
            local cport=$((base_port + 2 * i)) pport=$((base_port + 2 * i + 1))
            # shellcheck disable=SC2046
            docker run -d --name "pm-etcd-m$i" --network host \
                -v "$dir/m$i:/data" "$image" etcd --data-dir /data \
                $(member_args "$i" "$n" 127.0.0.1 127.0.0.1) >/dev/null
            echo "started etcd member m$i in Docker (client :$cport, peer :$pport)"
        done
    else
        local bin
        bin=$(ensure_etcd_binary)
        echo local >"$dir/mode"
        for ((i = 0; i < n; i++)); do
            # shellcheck disable=SC2046
            nohup "$bin" --data-dir "$dir/m$i" $(member_args "$i" "$n" 127.0.0.1 127.0.0.1) \
                >"$dir/m$i.log" 2>&1 </dev/null &
            echo $! >"$dir/m$i.pid"
        done
        echo "no Docker engine answered: started $n local etcd member(s) from $bin"
        echo "data and logs: $dir"
    fi
    wait_healthy "$(endpoints "$n")"
    echo "etcd is up. Client endpoints:"
    echo "  PM_ETCD=$(endpoints "$n")"
}

down() {
    if [ ! -f "$dir/mode" ]; then
        echo "docker.sh: no etcd of ours is up"
        return 0
    fi
    local n mode
    n=$(cat "$dir/members")
    mode=$(cat "$dir/mode")
    for ((i = 0; i < n; i++)); do
        if [ "$mode" = docker ]; then
            docker rm -f "pm-etcd-m$i" >/dev/null 2>&1 || true
        elif [ -f "$dir/m$i.pid" ]; then
            local pid
            pid=$(cat "$dir/m$i.pid")
            kill "$pid" 2>/dev/null || true
            for ((t = 0; t < 50; t++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$dir"
    echo "etcd stopped and its data removed"
}

status() {
    if [ ! -f "$dir/mode" ]; then
        echo "etcd: down"
        return 0
    fi
    local n mode alive=0
    n=$(cat "$dir/members")
    mode=$(cat "$dir/mode")
    for ((i = 0; i < n; i++)); do
        local state=stopped
        if [ "$mode" = docker ]; then
            docker inspect -f '{{.State.Running}}' "pm-etcd-m$i" 2>/dev/null | grep -q true && state=running
        elif [ -f "$dir/m$i.pid" ] && kill -0 "$(cat "$dir/m$i.pid")" 2>/dev/null; then
            state="running (pid $(cat "$dir/m$i.pid"), log $dir/m$i.log)"
        fi
        [[ $state == running* ]] && alive=$((alive + 1))
        echo "member m$i: $state, client http://127.0.0.1:$((base_port + 2 * i))"
    done
    echo "etcd: $alive of $n member(s) running ($mode)"
    echo "  PM_ETCD=$(endpoints "$n")"
    if command -v etcdctl >/dev/null 2>&1 && [ "$alive" -gt 0 ]; then
        ETCDCTL_API=3 etcdctl --endpoints "$(endpoints "$n")" --dial-timeout 1s endpoint status -w table 2>/dev/null || true
    fi
}

case ${1:-} in
    up) shift; up "$@" ;;
    down) down ;;
    status) status ;;
    *) usage ;;
esac
