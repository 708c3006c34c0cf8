#!/usr/bin/env bash
# pm's quick start: a local pool on etcd + gce-sim + a scheduler + one agent per zone.
#
#   ./quickstart.sh        build, start everything, create the example pool, show it
#                          converge, then preempt VMs and stock a zone out so you see
#                          pm heal and redistribute. Everything keeps running.
#   ./quickstart.sh down   stop everything it started (and etcd).
#
# State, logs and pids live in $PM_LOCAL_DIR (default .pm-local/). Ports: etcd
# $PM_ETCD_PORT (default 2379, via docker.sh, data in $PM_ETCD_DIR), gce-sim $PM_SIM_PORT
# (default 8787).
set -euo pipefail
cd "$(dirname "$0")"
root=$PWD
state=${PM_LOCAL_DIR:-$root/.pm-local}
sim_port=${PM_SIM_PORT:-8787}
etcd_port=${PM_ETCD_PORT:-2379}
export PM_ETCD=http://127.0.0.1:$etcd_port
export PM_PREFIX=/pm
sim=http://127.0.0.1:$sim_port
zones=(us-central1-a us-central1-b us-central1-f)
bin=$root/target/debug
pmctl() { "$bin/pmctl" "$@"; }

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

down() {
    if [ -d "$state" ]; then
        for pidfile in "$state"/*.pid; do
            [ -e "$pidfile" ] || continue
            kill "$(cat "$pidfile")" 2>/dev/null || true
        done
        sleep 1
        for pidfile in "$state"/*.pid; do
            [ -e "$pidfile" ] || continue
            kill -9 "$(cat "$pidfile")" 2>/dev/null || true
        done
        rm -rf "$state"
    fi
    PM_ETCD_PORT=$etcd_port ./docker.sh down
    echo "quick start stopped"
}

# Polls "$@" (a command) until it succeeds, at most $1 seconds.
wait_for() {
    local bound=$1 what=$2
    shift 2
    local end=$((SECONDS + bound))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $end ]; then
            echo "timed out after ${bound}s waiting for: $what (logs in $state)" >&2
            return 1
        fi
        sleep 0.5
    done
}

# Exits 0 when pm sees exactly $1 RUNNING instances of the pool in GCE and in etcd,
# and nothing starting, lost or being deleted.
running_is() {
    curl -fsS "$sim/sim/v1/state" | python3 -c '
import json, sys
want = int(sys.argv[1])
zones = json.load(sys.stdin)["zones"]
running = sum(z["instances"].get("RUNNING", 0) for z in zones.values())
others = sum(n for z in zones.values() for s, n in z["instances"].items() if s != "RUNNING")
sys.exit(0 if running == want and others == 0 else 1)' "$1" &&
    pmctl status demo -o json | python3 -c '
import json, sys
t = json.load(sys.stdin)["pools"][0]["totals"]
sys.exit(0 if t["running"] == int(sys.argv[1]) and t["starting"] + t["lost"] + t["deleting"] == 0 else 1)' "$1"
}

zone_running() {
    curl -fsS "$sim/sim/v1/state" | python3 -c '
import json, sys
print(json.load(sys.stdin)["zones"][sys.argv[1]]["instances"].get("RUNNING", 0))' "$1"
}

exhausted() {
    pmctl status demo -o json | python3 -c '
import json, sys
pool = json.load(sys.stdin)["pools"][0]
sys.exit(0 if any(z["exhausted"] and z["zone"] == sys.argv[1] for z in pool["zones"]) else 1)' "$1"
}

start() {
    local name=$1
    shift
    nohup "$@" >"$state/$name.log" 2>&1 </dev/null &
    echo $! >"$state/$name.pid"
}

up() {
    if [ -d "$state" ]; then
        echo "the quick start already runs; ./quickstart.sh down first" >&2
        exit 1
    fi
    scripts/prereqs.sh
    command -v python3 >/dev/null || { echo "python3 is needed for the quick start" >&2; exit 1; }

    say "Building pm (the first build takes a few minutes)"
    cargo build --workspace --bins

    say "Starting etcd"
    PM_ETCD_PORT=$etcd_port ./docker.sh up
    mkdir -p "$state"

    say "Starting gce-sim on $sim: 3 zones of 10 VMs each, GCE-like delays"
    if curl -fsS "$sim/sim/v1/state" >/dev/null 2>&1; then
        echo "port $sim_port is taken; set PM_SIM_PORT" >&2
        exit 1
    fi
    start gce-sim "$bin/gce-sim" --listen "127.0.0.1:$sim_port" --zones "$(IFS=,; echo "${zones[*]}")" \
        --capacity 10 --op-delay-ms 400 --boot-delay-ms 1500 --seed 7
    wait_for 20 "gce-sim" curl -fsS "$sim/sim/v1/state"

    say "Starting pm-scheduler and one pm-agent per zone"
    start scheduler "$bin/pm-scheduler" --id scheduler-1
    for zone in "${zones[@]}"; do
        start "agent-$zone" env PM_HOOK_LOG="$state/hooks.log" "$bin/pm-agent" --zone "$zone" --id "agent-$zone" \
            --project demo-project --gce-endpoint "$sim/compute/v1/" --no-auth --hooks-dir "$root/examples/hooks"
    done

    say "Creating pool 'demo' from a prevmtable-style config: 6 VMs over 3 zones"
    pmctl config set demo -f examples/demo-pool.hjson
    wait_for 60 "6 running VMs" running_is 6
    pmctl status demo

    say "Preempting 2 VMs in us-central1-a: pm replaces them"
    curl -fsS -X POST "$sim/sim/v1/preempt" -H 'content-type: application/json' \
        -d '{"zone": "us-central1-a", "count": 2}'
    echo
    sleep 2
    pmctl status demo
    wait_for 60 "6 running VMs again" running_is 6
    pmctl status demo

    say "us-central1-b runs out of capacity and loses its VMs: pm exhausts it and moves its share"
    curl -fsS -X POST "$sim/sim/v1/zones/us-central1-b" -H 'content-type: application/json' -d '{"capacity": 0}'
    echo
    curl -fsS -X POST "$sim/sim/v1/preempt" -H 'content-type: application/json' \
        -d '{"zone": "us-central1-b", "count": 2}'
    echo
    wait_for 60 "us-central1-b exhausted" exhausted us-central1-b
    wait_for 60 "6 running VMs in the other zones" running_is 6
    pmctl status demo
    echo "us-central1-b now runs $(zone_running us-central1-b) VMs; it is retried when its exhaustion lease runs out."

    say "Recent events"
    pmctl events demo | tail -n 15

    cat <<EOF

Everything keeps running. Explore with pmctl (PM_ETCD=$PM_ETCD is what it reads):
  target/debug/pmctl status --watch            live per-zone table
  target/debug/pmctl events demo --follow      what pm does, as it does it
  target/debug/pmctl scale demo 9              change the target
  target/debug/pmctl zone clear demo us-central1-b
  target/debug/pmctl instances demo
  target/debug/pmctl agents; target/debug/pmctl leader
Make trouble with gce-sim's control API:
  curl -X POST -H 'content-type: application/json' $sim/sim/v1/preempt -d '{"zone":"us-central1-f","count":3}'
  curl -X POST -H 'content-type: application/json' $sim/sim/v1/zones/us-central1-b -d '{"capacity":10}'
  kill -9 \$(cat $state/scheduler.pid)   (then start another: see $state/*.log)
Logs: $state/*.log; hooks write to $state/hooks.log.
Stop it all: ./quickstart.sh down
EOF
}

case ${1:-up} in
    up) up ;;
    down) down ;;
    *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
