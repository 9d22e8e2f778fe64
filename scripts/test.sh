#!/usr/bin/env bash
# Runs every check and test of patchcast on a fresh machine: formatting, lints, unit,
# property and integration tests, and the sample packages' lint. One build is shared by all.
# Real servers that later tests need are installed and started here, once per run.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
cargo --version
rustc --version

step "format (cargo fmt --check)"
cargo fmt --check

step "lints (cargo clippy -D warnings)"
cargo clippy --locked --all-targets -- -D warnings

step "PostgreSQL 15 (private cluster on loopback, for the server tests)"
if [ -z "${PATCHCAST_TEST_POSTGRES:-}" ]; then
    PG_DIR=$(mktemp -d /tmp/patchcast-pg.XXXXXX)
    chmod 755 "$PG_DIR"
    trap 'scripts/postgres.sh stop "$PG_DIR"; rm -rf "$PG_DIR"' EXIT
    eval "$(scripts/postgres.sh start "$PG_DIR")"
fi
echo "PATCHCAST_TEST_POSTGRES=$PATCHCAST_TEST_POSTGRES"

step "tests (unit, property, integration)"
cargo test --locked

step "sample packages lint clean"
cargo run --locked --quiet -- package lint packages/*

step "all checks passed"
