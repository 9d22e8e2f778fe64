#!/bin/sh
# Makes a `kind: agent` package directory from an agent build:
#   scripts/agent-package.sh STAMP AGENT_BINARY PACKAGE_DIR
# writes PACKAGE_DIR/patchcast-agent, a copy of AGENT_BINARY carrying the build stamp STAMP
# (`patchcast-agent stamp`), and sets `version:` in PACKAGE_DIR/package.yaml to the version
# that copy reports. Then: patchcast package lint PACKAGE_DIR && patchcast package publish …
set -eu
[ $# -eq 3 ] || { echo "usage: $0 STAMP AGENT_BINARY PACKAGE_DIR" >&2; exit 2; }
stamp=$1 bin=$2 dir=$3
version=$("$bin" stamp "$stamp" --out "$dir/patchcast-agent")
reported=$("$dir/patchcast-agent" --version | awk '{print $2}')
[ "$version" = "$reported" ] || { echo "the stamped agent reports $reported, not $version" >&2; exit 1; }
sed -i "s/^version: .*/version: $version/" "$dir/package.yaml"
echo "$dir: version $version"
