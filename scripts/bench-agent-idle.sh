#!/usr/bin/env bash
# Idle footprint of the agent: enrolled agents poll a server for 60 s (SECONDS_TO_RUN=N to
# change) with no work; VmRSS and CPU time are sampled from /proc every second and summarised.
# One agent per build profile (PROFILES, default "agent release": as shipped, and plain
# --release for comparison) run side by side against the same server, so the machine's noise
# falls on both alike. The server is the scripted test server
# (tests/testsuite/agent_bench_server.rs, `--ignored`), so the benchmark needs nothing but
# this repository. COMPARE=PATH adds one more agent binary (say, a copy built from an older
# commit), labelled "compare", to the same run: before/after figures from one run.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${SECONDS_TO_RUN:-60}
read -r -a profiles <<<"${PROFILES:-agent release}"
work=$(mktemp -d)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

bins=()
for p in "${profiles[@]}"; do
    cargo build --profile "$p" --quiet --bin patchcast-agent
    bins+=("target/$p/patchcast-agent")
done
if [ -n "${COMPARE:-}" ]; then
    profiles+=(compare)
    bins+=("$COMPARE")
fi

# The scripted server runs inside a test binary; it writes URL and fingerprint to a file and
# serves until killed.
BENCH_SERVER_INFO="$work/server.env" BENCH_SERVER_POLL_MS="${POLL_MS:-25000}" \
    cargo test --quiet --test testsuite -- --ignored --nocapture --exact \
    agent_bench_server::serve_for_benchmark \
    >"$work/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do
    [ -s "$work/server.env" ] && break
    sleep 0.5
done
[ -s "$work/server.env" ] || { echo "the bench server did not start:"; cat "$work/server.log"; exit 1; }
# shellcheck disable=SC1091
. "$work/server.env"

agents=()
for i in "${!profiles[@]}"; do
    p=${profiles[i]}
    bin=${bins[i]}
    "$bin" enroll --root "$work/$p" --server "$URL" --token bench --fingerprint "$FINGERPRINT" >/dev/null
    PATCHCAST_LOG=warn "$bin" run --root "$work/$p" 2>"$work/$p.log" &
    pids+=($!)
    agents+=($!)
done
sleep 2 # start-up (first inventory) is not idle time

ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
declare -A cpu0 max sum
for a in "${agents[@]}"; do
    cpu0[$a]=$(cpu "$a")
    max[$a]=0
    sum[$a]=0
done
for _ in $(seq 1 "$DURATION"); do
    sleep 1
    for a in "${agents[@]}"; do
        r=$(rss "$a")
        sum[$a]=$((sum[$a] + r))
        [ "$r" -gt "${max[$a]}" ] && max[$a]=$r
    done
done

echo "agents idle for $DURATION s side by side (current_thread runtime; goal <= 10 MB RSS)"
for i in "${!agents[@]}"; do
    a=${agents[i]}
    p=${profiles[i]}
    cpu1=$(cpu "$a")
    anon=$(awk '/RssAnon/ {print $2}' "/proc/$a/status")
    file=$(awk '/RssFile/ {print $2}' "/proc/$a/status")
    size=$(stat -c %s "${bins[i]}")
    logged=$(grep -c . "$work/$p.log" || true)
    awk -v p="$p" -v max="${max[$a]}" -v sum="${sum[$a]}" -v n="$DURATION" -v c0="${cpu0[$a]}" \
        -v c1="$cpu1" -v t="$ticks" -v anon="$anon" -v file="$file" -v size="$size" -v logged="$logged" 'BEGIN {
        printf "  %-8s RSS max %.1f MiB, mean %.1f MiB; at the end RssAnon %d kB (private), RssFile %d kB (code pages, shared and clean)\n", p, max / 1024, sum / n / 1024, anon, file
        printf "  %-8s CPU %.2f s in %d s = %.3f%% of one core; binary %.1f MiB; warnings/errors logged: %d\n", "", (c1 - c0) / t, n, (c1 - c0) / t / n * 100, size / 1048576, logged
    }'
done
if [ "${#agents[@]}" -eq 2 ]; then
    awk -v a="${max[${agents[0]}]}" -v b="${max[${agents[1]}]}" -v pa="${profiles[0]}" -v pb="${profiles[1]}" \
        'BEGIN { printf "  max RSS %s / %s = %.2f\n", pa, pb, a / b }'
fi
