#!/bin/sh
# Installs the sample tool as /usr/local/bin/patchcast-hello (under $DESTDIR when set).
set -eu
here=$(dirname "$0")
dest="${DESTDIR:-}/usr/local/bin"
mkdir -p "$dest"
# Copy then rename, so the file is never seen half written.
cp "$here/patchcast-hello" "$dest/.patchcast-hello.new"
chmod 755 "$dest/.patchcast-hello.new"
mv -f "$dest/.patchcast-hello.new" "$dest/patchcast-hello"
echo "installed $dest/patchcast-hello"
