#!/usr/bin/env bash
# Starts private OpenSSH servers on loopback for the SSH tests and the benchmark, and prints
# the export lines they read. Sourced by scripts/test.sh (which stops them at exit), or by hand:
#   eval "$(scripts/sshd.sh start DIR [PORT…|COUNT])"   ...   scripts/sshd.sh stop DIR
# With no port, one free port is taken; a lone small number (≤ 100) asks for that many free ports.
# One sshd per port, each with its own config, all sharing one host key and one client key.
#
# sshd runs as an unprivileged user (`patchcast-ssh`, created when missing) so a login is that
# user with no power over this machine; key login only, no PAM, StrictModes off (DIR may sit
# under a world-writable /tmp). DIR/small is a 1 MiB tmpfs owned by that user (when mounting
# is allowed here) for the "not enough disk" tests.
#
# Printed: PATCHCAST_TEST_SSH (comma-separated host:port list), PATCHCAST_TEST_SSH_USER,
# PATCHCAST_TEST_SSH_KEY (client private key), PATCHCAST_TEST_SSH_HOST_KEY (host public key),
# PATCHCAST_TEST_SSH_SMALL_DIR (the tmpfs, when there is one).
set -euo pipefail

SSH_USER=patchcast-ssh

install_sshd() {
    if [ ! -x /usr/sbin/sshd ]; then
        echo "installing openssh-server (apt-get)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
            --no-install-recommends openssh-server openssh-client >&2
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start() {
    local dir=$1
    shift
    install_sshd
    if [ "$(id -u)" = 0 ] && ! id "$SSH_USER" >/dev/null 2>&1; then
        useradd -M -d /nonexistent -s /bin/sh "$SSH_USER"
    fi
    local user run_as=()
    if [ "$(id -u)" = 0 ]; then
        user=$SSH_USER
        run_as=(setpriv --reuid="$user" --regid="$user" --init-groups)
    else
        user=$(id -un)
    fi
    mkdir -p "$dir"
    chmod 755 "$dir"
    local ports=("$@")
    if [ ${#ports[@]} -eq 0 ]; then
        ports=(1)
    fi
    if [ ${#ports[@]} -eq 1 ] && [ "${ports[0]}" -le 100 ]; then
        local n=${ports[0]} i
        ports=()
        for ((i = 0; i < n; i++)); do ports+=("$(free_port)"); done
    fi
    ssh-keygen -q -t ed25519 -N '' -C '' -f "$dir/host_ed25519"
    ssh-keygen -q -t ed25519 -N '' -C 'patchcast-tests' -f "$dir/client_ed25519"
    cp "$dir/client_ed25519.pub" "$dir/authorized_keys"
    [ "$(id -u)" = 0 ] && chown "$user" "$dir/host_ed25519" "$dir/authorized_keys"
    chmod 600 "$dir/host_ed25519"
    local hosts=() port
    for port in "${ports[@]}"; do
        cat >"$dir/sshd_$port.conf" <<EOF
ListenAddress 127.0.0.1
Port $port
HostKey $dir/host_ed25519
PidFile $dir/sshd_$port.pid
AuthorizedKeysFile $dir/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowUsers $user
MaxStartups 100:30:200
MaxSessions 50
Subsystem sftp internal-sftp
EOF
        "${run_as[@]}" /usr/sbin/sshd -D -e -f "$dir/sshd_$port.conf" >>"$dir/sshd_$port.log" 2>&1 &
        echo $! >"$dir/sshd_$port.run"
        hosts+=("127.0.0.1:$port")
    done
    # Ready when every port accepts a connection (start takes ~30 ms each).
    local tries
    for port in "${ports[@]}"; do
        for tries in $(seq 1 100); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
            if [ "$tries" = 100 ]; then
                cat "$dir/sshd_$port.log" >&2
                echo "sshd on port $port did not start" >&2
                return 1
            fi
            sleep 0.05
        done
    done
    mkdir -p "$dir/small"
    if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=1m,mode=755 tmpfs "$dir/small" 2>/dev/null; then
        chown "$user" "$dir/small"
        echo "export PATCHCAST_TEST_SSH_SMALL_DIR=$dir/small"
    fi
    local IFS=,
    echo "export PATCHCAST_TEST_SSH=${hosts[*]}"
    echo "export PATCHCAST_TEST_SSH_USER=$user"
    echo "export PATCHCAST_TEST_SSH_KEY=$dir/client_ed25519"
    echo "export PATCHCAST_TEST_SSH_HOST_KEY=$dir/host_ed25519.pub"
}

stop() {
    local dir=$1 f pid
    for f in "$dir"/sshd_*.run; do
        [ -e "$f" ] || continue
        pid=$(cat "$f")
        kill "$pid" 2>/dev/null || true
        rm -f "$f"
    done
    if mountpoint -q "$dir/small" 2>/dev/null; then umount "$dir/small" || true; fi
}

case "${1:-}" in
    start) start "$2" "${@:3}" ;;
    stop) stop "$2" ;;
    *) echo "usage: $0 start DIR [PORT…|COUNT] | stop DIR" >&2; exit 2 ;;
esac
