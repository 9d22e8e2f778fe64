#!/usr/bin/env bash
# Benchmark: deliver one 100 MB package to 20 SSH hosts (20 sshd on loopback ports) with
# patchcast's agentless SSH delivery (release build), with OpenSSH's own scp plus a remote
# sha256sum (the practical limit: the same bytes and the same check, all hosts in parallel),
# and with Ansible (copy + command modules, default forks=5 and forks=20), side by side in one
# run; prints times and ratios.
#
#   scripts/bench-ssh-vs-ansible.sh [HOSTS] [SIZE_MB]      (defaults 20 and 100)
#
# Every run does the same work per host: send the 100 MB file, check it arrived intact,
# "install" it (copy it into place), and leave it identifiable. patchcast: SFTP upload into a
# private work directory, SHA-256 on the host, tar extract, the package's install command,
# probe before and after. Ansible: `copy` (which checksums on both sides) then `command: cp`.
# Ansible comes from `pip install ansible` in a venv (ANSIBLE_VENV, default
# /tmp/patchcast-ansible-venv) when `ansible-playbook` is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTS=${1:-20}
SIZE_MB=${2:-100}

BENCH=$(mktemp -d /tmp/patchcast-bench-ssh.XXXXXX)
chmod 755 "$BENCH"
SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    scripts/sshd.sh stop "$BENCH/sshd" || true
    rm -rf "$BENCH"
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.2f}')"; }

echo "== building patchcast (release)" >&2
cargo build --release --quiet --bin patchcast
PC=$PWD/target/release/patchcast

VENV=${ANSIBLE_VENV:-/tmp/patchcast-ansible-venv}
if ! command -v ansible-playbook >/dev/null && [ ! -x "$VENV/bin/ansible-playbook" ]; then
    echo "== installing Ansible (pip, venv $VENV)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q ansible >&2
fi
ANSIBLE_PLAYBOOK=$(command -v ansible-playbook || echo "$VENV/bin/ansible-playbook")

echo "== starting $HOSTS sshd on loopback" >&2
eval "$(scripts/sshd.sh start "$BENCH/sshd" "$HOSTS")"
IFS=, read -r -a ADDRS <<<"$PATCHCAST_TEST_SSH"
SSH_USER=$PATCHCAST_TEST_SSH_USER
# Per-host directories on the "hosts" (all this machine), owned by the login user.
for i in "${!ADDRS[@]}"; do
    mkdir -p "$BENCH/hosts/h$i"
done
chown -R "$SSH_USER" "$BENCH/hosts"
KNOWN=$BENCH/known_hosts
for a in "${ADDRS[@]}"; do
    echo "[127.0.0.1]:${a##*:} $(cat "$PATCHCAST_TEST_SSH_HOST_KEY")" >>"$KNOWN"
done

echo "== the ${SIZE_MB} MB package" >&2
PKG=$BENCH/pkg/bench-100mb
mkdir -p "$PKG"
head -c "$((SIZE_MB * 1024 * 1024))" /dev/urandom >"$PKG/blob.bin"
# Each sshd port is one host: the probe and the install find their directory from the
# port the connection came in on ($SSH_CONNECTION), so one package serves all hosts.
cat >"$PKG/package.yaml" <<EOF
id: bench-100mb
kind: application
title: ${SIZE_MB} MB benchmark payload
version: 1.0.0
targets:
  - { os: debian }
  - { os: ubuntu }
  - { os: rhel }
  - { os: rocky }
identification:
  - probe: 'test -f $BENCH/hosts/port-\$(echo \$SSH_CONNECTION | cut -d" " -f4)/installed.bin'
    exit_code: 0
payload: [blob.bin]
install:
  command: 'p=\$(echo \$SSH_CONNECTION | cut -d" " -f4); mkdir -p $BENCH/hosts/port-\$p && cp "{{payload.0}}" $BENCH/hosts/port-\$p/installed.bin'
  timeout: 10m
EOF
"$PC" key generate --out "$BENCH/publisher" >/dev/null
"$PC" package build "$PKG" --key "$BENCH/publisher.key" --out "$BENCH/bench-100mb.pcpkg" >/dev/null
ARCHIVE_BYTES=$(stat -c %s "$BENCH/bench-100mb.pcpkg")

echo "== patchcast server (release)" >&2
mkdir -p "$BENCH/data"
"$PC" server --data "$BENCH/data" --listen 127.0.0.1:0 --trust-key "$BENCH/publisher.pub" \
    --reserve 0 >"$BENCH/server.out" 2>"$BENCH/server.log" &
SERVER_PID=$!
for _ in $(seq 1 200); do [ -s "$BENCH/data/server.json" ] && break; sleep 0.05; done
export PATCHCAST_DATA=$BENCH/data
"$PC" package publish "$BENCH/bench-100mb.pcpkg" >/dev/null
MACHINES=()
for i in "${!ADDRS[@]}"; do
    "$PC" machine add-ssh "bench-$i" "$SSH_USER@${ADDRS[$i]}" --key "$PATCHCAST_TEST_SSH_KEY" \
        --known-hosts "$KNOWN" --work-dir "$BENCH/hosts/h$i" >/dev/null
    MACHINES+=("bench-$i")
done
cat >"$BENCH/scenario.yaml" <<EOF
name: bench-ssh
packages: [bench-100mb]
targets:
  machines: [$(IFS=,; echo "${MACHINES[*]}")]
options:
  retry: { max_attempts: 1 }
EOF

echo "== patchcast: deliver to $HOSTS hosts" >&2
T0=$(now)
SID=$("$PC" --json scenario run "$BENCH/scenario.yaml" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
while :; do
    ST=$("$PC" --json scenario status "$SID" --limit 0)
    if echo "$ST" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["done"] else 1)'; then break; fi
    sleep 0.05
done
T1=$(now)
PC_SECS=$(elapsed "$T0" "$T1")
APPLIED=$(echo "$ST" | python3 -c 'import json,sys; print(json.load(sys.stdin)["counts"].get("applied",0))')
[ "$APPLIED" = "$HOSTS" ] || { echo "patchcast applied $APPLIED of $HOSTS:" >&2; echo "$ST" >&2; exit 1; }
INSTALLED=$(ls "$BENCH"/hosts/port-*/installed.bin | wc -l)

echo "== scp + remote sha256sum, all hosts in parallel" >&2
WANT_SHA=$(sha256sum "$BENCH/bench-100mb.pcpkg" | cut -d' ' -f1)
SSH_OPTS=(-o BatchMode=yes -o UserKnownHostsFile="$KNOWN" -i "$PATCHCAST_TEST_SSH_KEY")
T0=$(now)
SCP_PIDS=()
for i in "${!ADDRS[@]}"; do
    (
        port=${ADDRS[$i]##*:}
        scp -q -P "$port" "${SSH_OPTS[@]}" "$BENCH/bench-100mb.pcpkg" \
            "$SSH_USER@127.0.0.1:$BENCH/hosts/h$i/scp.pcpkg"
        got=$(ssh -p "$port" "${SSH_OPTS[@]}" "$SSH_USER@127.0.0.1" sha256sum "$BENCH/hosts/h$i/scp.pcpkg")
        [ "${got%% *}" = "$WANT_SHA" ]
    ) &
    SCP_PIDS+=($!)
done
SCP_FAILED=0
for pid in "${SCP_PIDS[@]}"; do wait "$pid" || SCP_FAILED=$((SCP_FAILED + 1)); done
T1=$(now)
SCP_SECS=$(elapsed "$T0" "$T1")
[ "$SCP_FAILED" = 0 ] || { echo "scp: $SCP_FAILED hosts failed" >&2; exit 1; }

echo "== Ansible (copy + command)" >&2
INV=$BENCH/inventory.ini
{
    echo "[bench]"
    for i in "${!ADDRS[@]}"; do
        echo "h$i ansible_host=127.0.0.1 ansible_port=${ADDRS[$i]##*:} ansible_dir=$BENCH/hosts/h$i"
    done
    echo "[bench:vars]"
    echo "ansible_user=$SSH_USER"
    echo "ansible_ssh_private_key_file=$PATCHCAST_TEST_SSH_KEY"
    echo "ansible_python_interpreter=/usr/bin/python3"
} >"$INV"
cat >"$BENCH/ansible.cfg" <<EOF
[defaults]
host_key_checking = False
remote_tmp = /tmp/.ansible-bench-remote
local_tmp = $BENCH/ansible-local
stdout_callback = default
[ssh_connection]
ssh_args = -o UserKnownHostsFile=$KNOWN -o ControlMaster=auto -o ControlPersist=60s
# The unprivileged test sshd cannot allocate a PTY (Ansible asks for one to run modules).
usetty = False
EOF
cat >"$BENCH/play.yaml" <<EOF
- hosts: bench
  gather_facts: false
  tasks:
    - name: copy the payload
      copy:
        src: $PKG/blob.bin
        dest: "{{ ansible_dir }}/ansible-{{ run }}.bin"
        mode: "0600"
    - name: install it
      command: cp "{{ ansible_dir }}/ansible-{{ run }}.bin" "{{ ansible_dir }}/ansible-installed-{{ run }}.bin"
EOF
run_ansible() {
    local forks=$1 run=$2 t0 t1
    t0=$(now)
    ANSIBLE_CONFIG=$BENCH/ansible.cfg "$ANSIBLE_PLAYBOOK" -i "$INV" -f "$forks" -e "run=$run" \
        "$BENCH/play.yaml" >"$BENCH/ansible-$run.log" 2>&1 ||
        { cat "$BENCH/ansible-$run.log" >&2; return 1; }
    t1=$(now)
    grep -q "failed=0" "$BENCH/ansible-$run.log"
    elapsed "$t0" "$t1"
}
A5=$(run_ansible 5 f5)
A20=$(run_ansible 20 f20)
A_INSTALLED=$(ls "$BENCH"/hosts/h*/ansible-installed-f20.bin | wc -l)

ratio() { python3 -c "print(f'{$1 / $2:.1f}')"; }
echo
echo "SSH delivery benchmark: $HOSTS hosts (sshd on loopback ports), ${SIZE_MB} MiB payload (archive $ARCHIVE_BYTES bytes), $(nproc) CPUs"
printf '%-40s %8s s   %s\n' "patchcast (SFTP, sha256, probe/verify)" "$PC_SECS" "$APPLIED/$HOSTS applied, $INSTALLED files in place"
printf '%-40s %8s s   patchcast is %sx this\n' "scp + remote sha256sum (parallel)" "$SCP_SECS" "$(ratio "$PC_SECS" "$SCP_SECS")"
printf '%-40s %8s s   ratio %sx patchcast\n' "ansible copy+command, forks=5 (default)" "$A5" "$(ratio "$A5" "$PC_SECS")"
printf '%-40s %8s s   ratio %sx patchcast (%s files in place)\n' "ansible copy+command, forks=20" "$A20" "$(ratio "$A20" "$PC_SECS")" "$A_INSTALLED"
