#!/usr/bin/env bash
# Several servers on one PostgreSQL (issue 17, goal 3): check-ins/s and deliveries/s with one
# `patchcast server` against two, side by side in one run, each on a fresh database of the
# same PostgreSQL.
#
#   one server:  one `patchcast loadtest` of AGENTS simulated agents against server A;
#   two servers: A and B (B joined to A's identity, sharing its content store), and two
#                `patchcast loadtest` processes at once, AGENTS/2 agents each, one per server.
#
# Each loadtest checks in open loop every INTERVAL (short, so the offered load is above what
# the server answers and check-ins/s is its capacity) for DURATION, then rolls one package
# out to its agents; deliveries/s = deliveries applied / seconds until the last one.
#
#   POSTGRES=postgres://user@host:port/postgres scripts/bench-multi-server.sh
#   (PATCHCAST_TEST_POSTGRES is used when POSTGRES is unset; `source /tmp/servers.env`.)
#   AGENTS (default 1000), INTERVAL (1s), DURATION (20s), BIN (target/debug/patchcast).
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTS=${AGENTS:-1000}
INTERVAL=${INTERVAL:-1s}
DURATION=${DURATION:-20s}
BIN=${BIN:-target/debug/patchcast}
POSTGRES=${POSTGRES:-${PATCHCAST_TEST_POSTGRES:?set POSTGRES to a PostgreSQL URL (an administrative database)}}
[ -x "$BIN" ] || cargo build --quiet --bin patchcast
work=$(mktemp -d)
pids=()
dbs=()
cleanup() {
    local p d
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for d in "${dbs[@]}"; do psql -q "$POSTGRES" -c "DROP DATABASE IF EXISTS $d" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT

"$BIN" key generate --out "$work/publisher" >/dev/null

# A fresh database; prints a file holding its URL (never on a command line).
database() {
    local name="bench_multi_$1_$$"
    psql -q "$POSTGRES" -c "CREATE DATABASE $name" >/dev/null
    dbs+=("$name")
    printf '%s/%s\n' "${POSTGRES%/*}" "$name" >"$work/$1.url"
    chmod 600 "$work/$1.url"
}

# start NAME URLFILE [EXTRA...]: a server on a free port; waits for its banner.
start() {
    local name=$1 url=$2
    shift 2
    "$BIN" server --data "$work/$name" --listen 127.0.0.1:0 --database-file "$url" \
        --trust-key "$work/publisher.pub" --reserve 0 "$@" >"$work/$name.out" 2>"$work/$name.log" &
    pids+=($!)
    eval "pid_$name=$!"
    for _ in $(seq 1 300); do
        grep -q "admin commands" "$work/$name.out" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "server $name did not start:" >&2
    cat "$work/$name.log" >&2
    exit 1
}

# load NAME AGENTS OUT: a loadtest against server NAME.
load() {
    local pid_var="pid_$1"
    "$BIN" --json loadtest --data "$work/$1" --key "$work/publisher.key" \
        --server-pid "${!pid_var}" --agents "$2" --check-in-interval "$INTERVAL" \
        --duration "$DURATION" --rollout >"$3" 2>"$3.err"
}


echo "== one server, $AGENTS agents"
database one
start one "$work/one.url"
load one "$AGENTS" "$work/r1.json"
kill "$pid_one"

echo "== two servers, $((AGENTS / 2)) agents each, at once"
database two
start a "$work/two.url"
"$BIN" server join --from "$work/a" --data "$work/b" >/dev/null
start b "$work/two.url" --content "$work/a/content"
load a $((AGENTS / 2)) "$work/ra.json" &
la=$!
load b $((AGENTS / 2)) "$work/rb.json" &
lb=$!
wait "$la" "$lb"

python3 - "$work/r1.json" "$work/ra.json" "$work/rb.json" <<'EOF'
import json, sys
one, a, b = (json.load(open(p)) for p in sys.argv[1:])
def deliveries(rs):
    applied = sum(r["rollout_applied"] for r in rs)
    secs = max(r["rollout_seconds"] or float("inf") for r in rs)
    return applied, secs, applied / secs
c1 = one["check_ins_per_s"]
c2 = a["check_ins_per_s"] + b["check_ins_per_s"]
d1 = deliveries([one])
d2 = deliveries([a, b])
errs1 = one["errors"] + one["rollout_errors"]
errs2 = a["errors"] + a["rollout_errors"] + b["errors"] + b["rollout_errors"]
print(f"{'':24}{'one server':>14}{'two servers':>14}{'ratio':>8}")
print(f"{'check-ins/s':24}{c1:14.0f}{c2:14.0f}{c2 / c1:8.2f}")
p99_2 = max(a["check_in_p99_ms"], b["check_in_p99_ms"])
print(f"{'check-in p99 ms':24}{one['check_in_p99_ms']:14.1f}{p99_2:14.1f}")
print(f"{'deliveries applied':24}{d1[0]:14d}{d2[0]:14d}")
print(f"{'rollout seconds':24}{d1[1]:14.1f}{d2[1]:14.1f}")
print(f"{'deliveries/s':24}{d1[2]:14.1f}{d2[2]:14.1f}{d2[2] / d1[2]:8.2f}")
print(f"{'errors':24}{errs1:14d}{errs2:14d}")
EOF
