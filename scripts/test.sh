#!/usr/bin/env bash
# Runs every check and test of patchcast on a fresh machine: formatting, lints, unit,
# property and integration tests, and the sample packages' lint. One build is shared by all.
# Real servers that later tests need are installed and started here, once per run.
set -euo pipefail
cd "$(dirname "$0")/.."
# A run builds from clean once: incremental caches would only fill the disk (they took more
# than half of a 12 GB target directory, and a CI machine ran out of space mid-build).
export CARGO_INCREMENTAL=0

step() { printf '\n== %s\n' "$*"; }

# Servers this run starts are stopped on exit, the last started first.
CLEANUP=()
cleanup() { for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do eval "${CLEANUP[i]}" || true; done; }
trap cleanup EXIT

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
    CLEANUP+=("scripts/postgres.sh stop '$PG_DIR'; rm -rf '$PG_DIR'")
    eval "$(scripts/postgres.sh start "$PG_DIR")"
fi
echo "PATCHCAST_TEST_POSTGRES=$PATCHCAST_TEST_POSTGRES"

step "headless Chromium (the web console tests drive it over WebDriver)"
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null \
    || [ ! -d /usr/share/fonts/opentype/ipafont-gothic ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
        --no-install-recommends chromium chromium-driver fonts-ipafont-gothic
fi
chromium --version

step "nftables (the fault trials drop and reset agents' packets in network namespaces)"
if ! command -v nft >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
        --no-install-recommends nftables
fi
nft --version

step "Samba (private smbd on loopback, for the SMB and update source tests)"
if [ -z "${PATCHCAST_TEST_SMB:-}" ]; then
    SMB_DIR=$(mktemp -d /tmp/patchcast-smb.XXXXXX)
    CLEANUP+=("scripts/samba.sh stop '$SMB_DIR'; rm -rf '$SMB_DIR'")
    eval "$(scripts/samba.sh start "$SMB_DIR")"
fi
echo "PATCHCAST_TEST_SMB=$PATCHCAST_TEST_SMB"

step "tinyproxy (a private HTTP CONNECT proxy on loopback, for the proxy tests)"
if [ -z "${PATCHCAST_TEST_PROXY:-}" ]; then
    PROXY_DIR=$(mktemp -d /tmp/patchcast-proxy.XXXXXX)
    CLEANUP+=("scripts/tinyproxy.sh stop '$PROXY_DIR'; rm -rf '$PROXY_DIR'")
    eval "$(scripts/tinyproxy.sh start "$PROXY_DIR")"
fi
echo "PATCHCAST_TEST_PROXY=$PATCHCAST_TEST_PROXY"

step "OpenSSH (private sshd on loopback, for the SSH delivery tests)"
if [ -z "${PATCHCAST_TEST_SSH:-}" ]; then
    SSH_DIR=$(mktemp -d /tmp/patchcast-sshd.XXXXXX)
    CLEANUP+=("scripts/sshd.sh stop '$SSH_DIR'; rm -rf '$SSH_DIR'")
    eval "$(scripts/sshd.sh start "$SSH_DIR" 2)"
fi
echo "PATCHCAST_TEST_SSH=$PATCHCAST_TEST_SSH"

step "Windows agent (x86_64-pc-windows-gnu) and a Wine prefix to run it in"
if [ -z "${PATCHCAST_TEST_WINEPREFIX:-}" ]; then
    WINE_DIR=$(mktemp -d /tmp/patchcast-wine.XXXXXX)
    CLEANUP+=("scripts/wine.sh stop '$WINE_DIR'; rm -rf '$WINE_DIR'")
    eval "$(scripts/wine.sh start "$WINE_DIR")"   # installs wine64 and MinGW when missing
fi
echo "PATCHCAST_TEST_WINEPREFIX=$PATCHCAST_TEST_WINEPREFIX"
rustup target add x86_64-pc-windows-gnu
# The agent crate alone: it is the endpoint binary's whole code, and it leaves out the
# server's dependencies (sqlx, russh), which only the admin binary links.
cargo clippy --locked --target x86_64-pc-windows-gnu -p patchcast-agent --features bin -- -D warnings
cargo build --locked --target x86_64-pc-windows-gnu -p patchcast-agent --features bin
TARGET_DIR=$(realpath -m "${CARGO_TARGET_DIR:-target}")
export PATCHCAST_TEST_WINDOWS_AGENT="$TARGET_DIR/x86_64-pc-windows-gnu/debug/patchcast-agent.exe"

step "tests (unit, property, integration; the Windows agent under Wine among them)"
cargo test --locked

step "sample packages lint clean"
# The binary `cargo test` built: `cargo run` would rebuild the dependencies without the
# dev-dependencies' features (minutes on two cores).
"${CARGO_TARGET_DIR:-target}/debug/patchcast" package lint packages/*

step "all checks passed"
