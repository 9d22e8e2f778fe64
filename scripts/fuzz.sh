#!/usr/bin/env bash
# Fuzzes every parser of untrusted input: builds the cargo-fuzz targets of fuzz/ once, runs
# each target for SECONDS (default 60) on its corpus fuzz/corpus/TARGET/, keeps the new
# inputs it finds and minimises the corpus again (libFuzzer's set-cover merge), then prints
# one line per target: executions, executions per second, and crashes (0, or the paths of
# the inputs saved under fuzz/artifacts/TARGET/). Exits 1 when any target crashed, hung or
# ran out of memory. Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`);
# not run in CI, where tests/testsuite/fuzz_corpora.rs replays the saved corpora instead.
#
#   scripts/fuzz.sh [SECONDS]            every target
#   TARGETS="range archive" scripts/fuzz.sh 30
#
# On a shared machine run it niced: `nice -n 15 scripts/fuzz.sh 480`. A crash is reproduced
# with `cargo +nightly fuzz run -s none TARGET fuzz/artifacts/TARGET/crash-…`; once fixed, the
# input belongs in fuzz/regressions/TARGET/ (replayed by the test above).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
# No sanitizer: the fuzzed code is safe Rust, and an uninstrumented build runs several times
# more inputs per second. Overflow checks and debug assertions stay on (cargo-fuzz's default).
FUZZ=(cargo +nightly fuzz)
BUILD_FLAGS=(-s none)
LIBFUZZER_FLAGS=(-rss_limit_mb=2048 -timeout=10)
read -r -a targets <<<"${TARGETS:-$("${FUZZ[@]}" list | tr '\n' ' ')}"
logs=fuzz/target/fuzz-logs
bin=fuzz/target/x86_64-unknown-linux-gnu/release
mkdir -p "$logs"

# Built once: the targets then run from their binaries, so an edit made meanwhile in the
# work tree neither rebuilds nor changes what the later targets run.
"${FUZZ[@]}" build "${BUILD_FLAGS[@]}"

artifacts_of() {
    find "fuzz/artifacts/$1" -maxdepth 1 -type f \
        \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) \
        2>/dev/null | sort
}

# Keeps a smallest set of the inputs of fuzz/corpus/$1 that covers every edge they cover
# (`cargo fuzz cmin`, but by edges only, not hit counts: a corpus several times smaller).
minimise() {
    local t=$1 kept
    kept=$(mktemp -d "fuzz/target/cmin-$t.XXXXXX")
    if "$bin/$t" -set_cover_merge=1 -use_counters=0 "${LIBFUZZER_FLAGS[@]}" \
        "$kept" "fuzz/corpus/$t" \
        >"$logs/$t.cmin.log" 2>&1 && [ -n "$(ls -A "$kept")" ]; then
        find "fuzz/corpus/$t" -maxdepth 1 -type f -delete
        mv "$kept"/* "fuzz/corpus/$t/"
    else
        echo "minimising $t failed, corpus left as it was (see $logs/$t.cmin.log)"
    fi
    rm -rf "$kept"
}

summary=()
failed=0
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    before=$(artifacts_of "$t")
    echo "== $t: fuzzing for ${SECONDS_PER_TARGET}s (log: $logs/$t.log)"
    status=0
    "$bin/$t" "fuzz/corpus/$t" -artifact_prefix="fuzz/artifacts/$t/" \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 "${LIBFUZZER_FLAGS[@]}" \
        >"$logs/$t.log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$t.log" | tail -1)
    new=$(comm -13 <(echo "$before") <(artifacts_of "$t") | tr '\n' ' ')
    if [ "$status" -ne 0 ] || [ -n "$new" ]; then
        failed=1
        crashes=${new:-"exit status $status, see $logs/$t.log"}
        tail -n 30 "$logs/$t.log"
    else
        crashes=0
        minimise "$t"
    fi
    summary+=("$(printf '%-18s %ss, %s executions, %s exec/s, crashes: %s' \
        "$t" "$SECONDS_PER_TARGET" "${execs:-?}" "${rate:-?}" "$crashes")")
done

echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
