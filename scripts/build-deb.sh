#!/usr/bin/env bash
# Builds the Debian packages `patchcast` (the server and admin CLI, with its systemd unit and
# system user) and `patchcast-agent` (the endpoint agent, with its unit) from the files in
# packaging/deb/.
#
#   scripts/build-deb.sh [--bin-dir DIR] [--out DIR] [--compress xz|gzip|none]
#
# Without --bin-dir it builds the release binaries first (cargo build --release). Prints the
# path of each .deb it wrote.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN_DIR="" OUT="target/debian" COMPRESS=xz
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) BIN_DIR=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --compress) COMPRESS=$2; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-deb.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$BIN_DIR" ]; then
    cargo build --release --locked --bin patchcast --bin patchcast-agent
    BIN_DIR="${CARGO_TARGET_DIR:-target}/release"
fi
for b in patchcast patchcast-agent; do
    [ -x "$BIN_DIR/$b" ] || { echo "build-deb.sh: $BIN_DIR/$b is missing: build it or give --bin-dir" >&2; exit 1; }
done

VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
ARCH=$(dpkg --print-architecture)
mkdir -p "$OUT"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

# One package: NAME, DESCRIPTION, DEPENDS, then "SOURCE:DEST:MODE" files.
package() {
    local name=$1 description=$2 depends=$3; shift 3
    local root="$STAGE/$name"
    install -d "$root/DEBIAN"
    for spec in "$@"; do
        IFS=: read -r src dest mode <<<"$spec"
        install -D -m "$mode" "$src" "$root$dest"
    done
    for s in postinst prerm postrm; do
        install -m 0755 "packaging/deb/$name/$s" "$root/DEBIAN/$s"
    done
    (cd "$root" && find etc -type f 2>/dev/null | sed 's|^|/|') >"$root/DEBIAN/conffiles"
    [ -s "$root/DEBIAN/conffiles" ] || rm "$root/DEBIAN/conffiles"
    local size
    size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
    cat >"$root/DEBIAN/control" <<CONTROL
Package: $name
Version: $VERSION
Architecture: $ARCH
Maintainer: patchcast developers <patchcast@example.org>
Installed-Size: $size
Depends: $depends
Section: admin
Priority: optional
Homepage: https://github.com/patchcast/patchcast
Description: $description
CONTROL
    local deb="$OUT/${name}_${VERSION}_${ARCH}.deb"
    dpkg-deb --root-owner-group -Z"$COMPRESS" --build "$root" "$deb" >/dev/null
    echo "$deb"
}

MAN="$STAGE/man"
"$BIN_DIR/patchcast" man --out "$MAN" >/dev/null
gzip -9n "$MAN"/*.1
# The agent's pages (patchcast-agent*.1) go with the agent, the rest with the server.
SERVER_MAN=() AGENT_MAN=()
for m in "$MAN"/*.1.gz; do
    page="$m:/usr/share/man/man1/$(basename "$m"):0644"
    case "$(basename "$m")" in
        patchcast-agent*) AGENT_MAN+=("$page") ;;
        *) SERVER_MAN+=("$page") ;;
    esac
done

package patchcast \
    "remote patch distributor: management server and admin CLI
 Authors signed packages with identification rules, delivers them to endpoint
 agents in scheduled windows, verifies each, and re-delivers until applied.
 The server runs as the system user patchcast from patchcast-server.service." \
    "adduser, libc6" \
    "$BIN_DIR/patchcast:/usr/bin/patchcast:0755" \
    "packaging/deb/patchcast/patchcast-server.service:/lib/systemd/system/patchcast-server.service:0644" \
    "packaging/deb/patchcast/default:/etc/default/patchcast:0644" \
    "${SERVER_MAN[@]}"

package patchcast-agent \
    "remote patch distributor: endpoint agent
 Long-polls its patchcast server over pinned HTTPS, installs signed packages,
 verifies them with their identification rules and reports each result.
 Enroll once with 'patchcast-agent enroll', then patchcast-agent.service runs it." \
    "libc6" \
    "$BIN_DIR/patchcast-agent:/usr/bin/patchcast-agent:0755" \
    "packaging/deb/patchcast-agent/patchcast-agent.service:/lib/systemd/system/patchcast-agent.service:0644" \
    "packaging/deb/patchcast-agent/default:/etc/default/patchcast-agent:0644" \
    "${AGENT_MAN[@]}"
