#!/usr/bin/env bash
# Idle footprint of the agent: an enrolled agent polls a server for 60 s (SECONDS=N to change)
# with no work; VmRSS and CPU time are sampled from /proc every second and summarised.
# The server is the scripted test server (tests/agent_bench_server.rs, `--ignored`), so the
# benchmark needs nothing but this repository. The agent is built as shipped: `--profile agent` (PROFILE=release to compare).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${SECONDS_TO_RUN:-60}
work=$(mktemp -d)
server_pid=""
agent_pid=""
cleanup() {
    [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null || true
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

PROFILE=${PROFILE:-agent}
cargo build --profile "$PROFILE" --quiet --bin patchcast-agent
agent=target/$PROFILE/patchcast-agent

# The scripted server runs inside a test binary; it writes URL and fingerprint to a file and
# serves until killed.
BENCH_SERVER_INFO="$work/server.env" BENCH_SERVER_POLL_MS="${POLL_MS:-25000}" \
    cargo test --quiet --test agent_bench_server -- --ignored --nocapture serve_for_benchmark \
    >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 600); do
    [ -s "$work/server.env" ] && break
    sleep 0.5
done
[ -s "$work/server.env" ] || { echo "the bench server did not start:"; cat "$work/server.log"; exit 1; }
# shellcheck disable=SC1091
. "$work/server.env"

"$agent" enroll --root "$work/agent" --server "$URL" --token bench --fingerprint "$FINGERPRINT" >/dev/null
PATCHCAST_LOG=warn "$agent" run --root "$work/agent" 2>"$work/agent.log" &
agent_pid=$!
sleep 2 # start-up (first inventory) is not idle time

ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$agent_pid/stat"; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$agent_pid/status"; }
cpu0=$(cpu)
max=0
sum=0
n=0
for _ in $(seq 1 "$DURATION"); do
    sleep 1
    r=$(rss)
    sum=$((sum + r))
    n=$((n + 1))
    [ "$r" -gt "$max" ] && max=$r
done
cpu1=$(cpu)
anon=$(awk '/RssAnon/ {print $2}' "/proc/$agent_pid/status")
file=$(awk '/RssFile/ {print $2}' "/proc/$agent_pid/status")
polls=$(grep -c . "$work/agent.log" || true)
awk -v max="$max" -v sum="$sum" -v n="$n" -v c0="$cpu0" -v c1="$cpu1" -v t="$ticks" -v d="$DURATION" -v p="$PROFILE" 'BEGIN {
    printf "agent idle for %d s (%s profile, current_thread runtime)\n", d, p
    printf "  RSS  max %.1f MiB, mean %.1f MiB (goal <= 10 MB)\n", max / 1024, sum / n / 1024
    printf "  CPU  %.2f s in %d s = %.3f%% of one core\n", (c1 - c0) / t, d, (c1 - c0) / t / d * 100
}'
echo "  at the end: RssAnon ${anon} kB (private), RssFile ${file} kB (binary and libraries mapped from the page cache, shared and clean)"
echo "  agent warnings/errors logged: $polls"
