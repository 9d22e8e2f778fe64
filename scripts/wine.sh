#!/usr/bin/env bash
# Prepares a private Wine prefix for the Windows agent tests and prints its export line
# (PATCHCAST_TEST_WINEPREFIX). Run by scripts/test.sh (which stops it at exit), or by hand:
#   eval "$(scripts/wine.sh start DIR)"   ...   scripts/wine.sh stop DIR
# Installs Debian's wine64 and the MinGW compiler with apt-get when they are missing. The
# prefix reports Windows 10 (the samples' target) and gets tools/wine's ProcessPrng DLL,
# without which Rust programs do not start under Wine 8.0 (see ARCHITECTURE.md, Windows).
set -euo pipefail
cd "$(dirname "$0")/.."

WINE=/usr/lib/wine/wine64

install_wine() {
    if ! [ -x "$WINE" ] || ! command -v x86_64-w64-mingw32-gcc >/dev/null; then
        echo "installing Wine and MinGW (apt-get)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
            --no-install-recommends wine64 gcc-mingw-w64-x86-64 >&2
    fi
}

start() {
    local dir=$1
    install_wine
    mkdir -p "$dir"
    export WINEPREFIX="$dir/prefix" WINEDEBUG=-all
    x86_64-w64-mingw32-gcc -shared -O2 -s -o "$dir/bcryptprimitives.dll" \
        tools/wine/bcryptprimitives.c tools/wine/bcryptprimitives.def -ladvapi32
    "$WINE" wineboot --init >&2 2>/dev/null
    "$WINE" winecfg -v win10 >&2
    cp "$dir/bcryptprimitives.dll" "$WINEPREFIX/drive_c/windows/system32/"
    # The prefix outlives this script; its wineserver serves every test process.
    echo "export PATCHCAST_TEST_WINEPREFIX='$WINEPREFIX'"
}

stop() {
    local dir=$1
    WINEPREFIX="$dir/prefix" /usr/lib/wine/wineserver -k 2>/dev/null || true
}

case "${1:-}" in
    start) start "${2:?usage: $0 start DIR}" ;;
    stop) stop "${2:?usage: $0 stop DIR}" ;;
    *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
