#!/usr/bin/env bash
# Fault-injection trials (issue 12): each trial rolls one package out to AGENTS real
# `patchcast-agent` processes while the server and agents are killed with SIGKILL and
# restarted and some agents' connections are reset, closed, stalled, blackholed or delayed
# (tests/testsuite/fault_trials.rs), then checks that every delivery ended applied or with a
# result code, that none was lost or doubled, and that every delivery reported applied has
# the marker its signed payload writes. Prints one line per trial and a SUMMARY line; exits
# 1 when any trial broke an invariant (its seed replays it: FAULT_SEED=N scripts/faults.sh 1).
#
#   scripts/faults.sh [TRIALS] [AGENTS]      default 20 trials of 50 agents, SQLite
#   FAULT_BACKEND=postgres scripts/faults.sh 5 50   (needs PATCHCAST_TEST_POSTGRES)
#   FAULT_MS=8000     milliseconds of faults per trial
#   FAULT_SEED=1000   the first trial's seed (trial k uses FAULT_SEED+k-1)
#   PROFILE=release   build with --release (default: the debug build the tests use)
#
# 50 agents hold about 50 × 10 descriptors; raise `ulimit -n` above 2048 for more.
set -euo pipefail
cd "$(dirname "$0")/.."
export FAULT_TRIALS=${1:-20}
export FAULT_AGENTS=${2:-50}
flags=(--locked --test testsuite)
if [ "${PROFILE:-debug}" = release ]; then flags+=(--release); fi
cargo test "${flags[@]}" -- --ignored --exact fault_trials::many --nocapture --test-threads 1
