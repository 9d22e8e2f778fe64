#!/usr/bin/env bash
# Build patchcast's binary sample payloads (PE stubs, a PE DLL and a .deb)
# from tools/samples/src/ and copy them to their destinations in the repo.
#
# Deterministic: running this twice yields byte-identical outputs.
# Usage (from anywhere, typically the repo root):  bash tools/samples/build.sh
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/../.." && pwd)"
SRC="${SCRIPT_DIR}/src"

CC="${CC_MINGW:-x86_64-w64-mingw32-gcc}"
WINDRES="${WINDRES_MINGW:-x86_64-w64-mingw32-windres}"

for tool in "$CC" "$WINDRES" dpkg-deb wixl sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || { echo "error: required tool '$tool' not found" >&2; exit 1; }
done

# Reproducibility knobs.
export SOURCE_DATE_EPOCH=0
export LC_ALL=C
export TZ=UTC
umask 022

WORK="$(mktemp -d "${TMPDIR:-/tmp}/patchcast-samples.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
# Build from a fixed-name copy so no host path can leak into any output.
BUILD="${WORK}/b"
mkdir -p "$BUILD"
cp -R "$SRC/." "$BUILD/"
cd "$BUILD"

CFLAGS=(-Os -ffreestanding -fno-stack-protector -fno-asynchronous-unwind-tables
        -fno-ident -ffile-prefix-map="${BUILD}"=. -Wall -Wextra -Werror)
LDFLAGS=(-nostdlib -s -Wl,--no-insert-timestamp -Wl,--build-id=none
         -Wl,--file-alignment=512 -Wl,--section-alignment=4096)

# windres: compile a .rc into a COFF object.
rc() { "$WINDRES" --input-format=rc --output-format=coff -I. -i "$1" -o "$2"; }

# stub_exe <message-id> <out.exe> [res.o]
stub_exe() {
    local id="$1" out="$2" res="${3:-}"
    "$CC" "${CFLAGS[@]}" -DSTUB_MESSAGE_ID="$id" -c stub.c -o "stub_${id}.o"
    "$CC" "${LDFLAGS[@]}" -mconsole -Wl,-e,stub_entry \
        -o "$out" "stub_${id}.o" ${res:+"$res"} -lkernel32
}

mkdir -p out

# (a) MS08-067 stub for Windows Server 2003 (JA)
rc kb958644.rc kb958644.res.o
stub_exe 958644 out/WindowsServer2003-KB958644-x86-JPN.exe kb958644.res.o

# (b) MS10-046 stub for Windows Server 2008
rc kb2286198.rc kb2286198.res.o
stub_exe 2286198 out/Windows6.0-KB2286198-x86.exe kb2286198.res.o

# (c) sample DLL with a file version
rc pcsample.rc pcsample.res.o
"$CC" "${CFLAGS[@]}" -c pcsample.c -o pcsample.o
"$CC" "${LDFLAGS[@]}" -shared -mwindows -Wl,-e,pcsample_dll_entry \
    -o out/pcsample.dll pcsample.o pcsample.res.o -lkernel32

# (d) KB981550 stub installer
rc kb981550.rc kb981550.res.o
stub_exe 981550 out/Windows6.0-KB981550-x86.exe kb981550.res.o

# (f) Windows Server 2008 SP2 stub installer
rc kb948465.rc kb948465.res.o
stub_exe 948465 out/Windows6.0-KB948465-X86.exe kb948465.res.o

# (g) an EXE installer (copies pctool.dll, writes a registry value, exits 3010) and its DLL
rc setup.rc setup.res.o
"$CC" "${CFLAGS[@]}" -c setup.c -o setup.o
"$CC" "${LDFLAGS[@]}" -mconsole -Wl,-e,setup_entry \
    -o out/patchcast-sample-tool-2.0-setup.exe setup.o setup.res.o -lkernel32 -ladvapi32
rc pctool.rc pctool.res.o
"$CC" "${LDFLAGS[@]}" -shared -mwindows -Wl,-e,pcsample_dll_entry \
    -o out/pctool.dll pcsample.o pctool.res.o -lkernel32

# (h) an MSI installing pcsample.dll under Program Files (wixl, from msitools). Not
# byte-reproducible: wixl writes a fresh package code and creation time into the summary
# information, as every new MSI build has.
cp out/pcsample.dll msi/pcsample.dll
(cd msi && wixl -a x64 -o ../out/patchcast-sample-app-1.2.0-x64.msi sample-app.wxs)

# (e) PE without any version resource
stub_exe 0 out/noversion.exe

# .deb: normalise ownership-independent metadata (modes, mtimes) then build.
DEBROOT="${BUILD}/deb/patchcast-sample-hello"
find "$DEBROOT" -type d -exec chmod 0755 {} +
find "$DEBROOT" -type f -exec chmod 0644 {} +
find "$DEBROOT" -exec touch -h -d @0 {} +
dpkg-deb --root-owner-group -Zxz -z9 --build "$DEBROOT" out/patchcast-sample-hello_1.2.0-1_all.deb >/dev/null

# Install outputs into the repo.
install_out() {
    local src="$1" dest="${REPO_ROOT}/$2"
    mkdir -p "$(dirname "$dest")"
    cp -f "$src" "$dest"
    chmod 0644 "$dest"
    OUTPUTS+=("$2")
}
OUTPUTS=()
install_out out/WindowsServer2003-KB958644-x86-JPN.exe packages/ms08-067-ws2003-ja/WindowsServer2003-KB958644-x86-JPN.exe
install_out out/Windows6.0-KB2286198-x86.exe          packages/ms10-046-ws2008-multi/Windows6.0-KB2286198-x86.exe
install_out out/pcsample.dll                          packages/kb981550-ws2008-fileversion/pcsample.dll
install_out out/Windows6.0-KB981550-x86.exe           packages/kb981550-ws2008-fileversion/Windows6.0-KB981550-x86.exe
install_out out/Windows6.0-KB948465-X86.exe           packages/ws2008-sp2/Windows6.0-KB948465-X86.exe
install_out out/patchcast-sample-tool-2.0-setup.exe packages/win-sample-tool-exe/patchcast-sample-tool-2.0-setup.exe
install_out out/pctool.dll                             packages/win-sample-tool-exe/pctool.dll
install_out out/patchcast-sample-app-1.2.0-x64.msi     packages/win-sample-app-msi/patchcast-sample-app-1.2.0-x64.msi
install_out out/noversion.exe                         tests/fixtures/pe/noversion.exe
install_out out/pcsample.dll                          tests/fixtures/pe/withversion.dll
install_out out/patchcast-sample-hello_1.2.0-1_all.deb packages/linux-hello-deb/patchcast-sample-hello_1.2.0-1_all.deb

cd "$REPO_ROOT"
echo "Built outputs (sha256  size  path):"
for f in "${OUTPUTS[@]}"; do
    printf '%s  %6s  %s\n' "$(sha256sum "$f" | cut -d' ' -f1)" "$(stat -c %s "$f")" "$f"
done
