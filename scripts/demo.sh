#!/usr/bin/env bash
# Builds oknek and shows it working end to end, entirely inside a temporary directory:
#   1. the shipped rule pack R1–R7 is linted and its fixtures run;
#   2. a recorded agent session is replayed through the rules into a fresh, signed evidence store,
#      which `oknek verify` then checks;
#   3. as root: oknekd starts on a default configuration and an agent launched with `oknek run`,
#      running as an ordinary user, is refused a fake SSH key by the kernel while the same read
#      outside oknek succeeds; the block is in the evidence and the store verifies;
#   4. as root: the eBPF tier refuses an agent's connect in the kernel, and keeps refusing while
#      oknekd is killed and restarted.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "building (release)"
cargo build --release --locked -p oknek -p oknekd -p oknek-preload
bin=$PWD/target/release
demo=$(mktemp -d /tmp/oknek-demo.XXXXXX)
chmod 755 "$demo"
daemon_pid=
listener_pid=
pins=/sys/fs/bpf/oknek-demo-$$
cleanup() {
    [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
    [ -n "$listener_pid" ] && kill "$listener_pid" 2>/dev/null
    [ -d "$pins" ] && "$bin/oknekd" --uninstall-probes --bpf-pin-dir "$pins" >/dev/null
    [ -n "${demo_home:-}" ] && rm -rf "$demo_home"
    rm -rf "$demo"
}
trap cleanup EXIT

say "oknek rules check rules/"
"$bin/oknek" rules check rules
say "oknek rules test rules/"
"$bin/oknek" rules test rules | tail -n 3

say "replaying a recorded agent session (rules/examples/agent-session.jsonl)"
"$bin/oknek" simulate --rules rules --events rules/examples/agent-session.jsonl \
    --state-dir "$demo/sim" | tail -n 15
say "oknek verify: every signature, the hash chain, the signed head"
"$bin/oknek" verify --state-dir "$demo/sim"
say "what was blocked"
"$bin/oknek" events --state-dir "$demo/sim" --verdict block

if [ "$(id -u)" -ne 0 ]; then
    echo
    echo "Run as root (sudo $0) to see oknekd block a real process."
    exit 0
fi

# R1 protects every user's ~/.ssh private keys; the demo user is 'nobody' with a throwaway home.
demo_home=/home/oknek-demo-$$
key=$demo_home/.ssh/id_ed25519
mkdir -p "$demo_home/.ssh"
printf -- '-----BEGIN OPENSSH PRIVATE KEY-----\nfake key for the oknek demo\n-----END OPENSSH PRIVATE KEY-----\n' > "$key"
chown -R nobody: "$demo_home"
chmod 600 "$key"
as_user() { setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME="$demo_home" "$@"; }

# start_daemon NAME CONFIG: runs oknekd with that config in $demo/NAME.
start_daemon() {
    local name=$1 config=$2
    mkdir -p "$demo/$name"
    printf '%s\n' "$config" > "$demo/$name/oknek.yaml"
    "$bin/oknekd" --config "$demo/$name/oknek.yaml" --rules-dir "${rules_dir:-rules}" \
        --state-dir "$demo/$name/state" --runtime-dir "$demo/$name/run" 2> "$demo/$name/oknekd.log" &
    daemon_pid=$!
    # Until it answers (a killed daemon's socket file may still be there).
    for _ in $(seq 100); do
        "$bin/oknek" --runtime-dir "$demo/$name/run" status >/dev/null 2>&1 && break
        sleep 0.1
    done
    "$bin/oknek" --runtime-dir "$demo/$name/run" status | grep -E '^(rules|tiers|ebpf):'
}
stop_daemon() {
    local name=$1
    kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=
    say "evidence written by this daemon"
    "$bin/oknek" events --state-dir "$demo/$name/state"
    "$bin/oknek" verify --state-dir "$demo/$name/state"
}
expect_blocked() {
    if "$@"; then echo "!! not blocked: $*" >&2; exit 1; fi
    echo "   -> refused, as it should be"
}

say "1/4 oknek run (seccomp user-notify + Landlock); the eBPF tier is shown in 4/4"
start_daemon run "tiers: {ebpf: off}"
say "as user nobody, not an agent: cat ~/.ssh/id_ed25519"
as_user cat "$key"
say "as user nobody, launched as an agent: oknek run --agent demo -- cat ~/.ssh/id_ed25519"
expect_blocked as_user "$bin/oknek" --runtime-dir "$demo/run/run" run --agent demo -- cat "$key"
stop_daemon run

say "2/4 fanotify permission events: every process of uid 65534 is the agent 'demo'"
start_daemon fanotify "$(printf 'tiers: {ebpf: off}\nagents: [{name: demo, uid: [65534]}]')"
say "as user nobody: cat ~/.ssh/id_ed25519, and through a hard link"
expect_blocked as_user cat "$key"
ln "$key" "$demo/hardlink"
expect_blocked as_user cat "$demo/hardlink"
rm -f "$demo/hardlink"
say "as root (not an agent): the same read works"
head -n 1 "$key"
stop_daemon fanotify

say "3/4 the LD_PRELOAD shim (the kernel tiers switched off to show the weakest tier alone)"
start_daemon preload "$(printf 'tiers: {ebpf: off, fanotify: off}\nagents: [{name: demo, uid: [65534]}]')"
say "as user nobody with LD_PRELOAD=oknek_preload.so: cat ~/.ssh/id_ed25519"
expect_blocked as_user env OKNEK_RUNTIME_DIR="$demo/preload/run" \
    LD_PRELOAD="$bin/liboknek_preload.so" cat "$key"
stop_daemon preload

say "4/4 the eBPF tier: a destination refused in the kernel, with no round trip to oknekd"
python3 -c '
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
print(s.getsockname()[1], flush=True)
while True: s.accept()[0].close()' > "$demo/port" &
listener_pid=$!
for _ in $(seq 50); do [ -s "$demo/port" ] && break; sleep 0.1; done
port=$(cat "$demo/port")
rules_dir=$demo/rules
cp -r rules "$rules_dir"
printf 'oknek_rules: 1\nrules:\n  - id: DEMO.connect\n    title: Demo destination refused in the kernel\n    kind: [connect, send]\n    match: { addr: 127.0.0.1, port: %s }\n    action: block\n' \
    "$port" > "$rules_dir/90-demo.yaml"
start_daemon ebpf "$(printf 'paths: {bpf_pin_dir: %s}\ntiers: {ebpf: on}\nagents: [{name: demo, uid: [65534]}]' "$pins")"
"$bin/oknek" --runtime-dir "$demo/ebpf/run" doctor | sed -n '/^action/,/^any/p'
# A plain client (bash's /dev/tcp would be held as a reverse shell by R2.revshell, rightly).
connect() {
    "$@" /usr/bin/python3 -c "import socket, sys
try:
    socket.create_connection(('127.0.0.1', $port), timeout=5).close()
except OSError as e:
    sys.exit('   ' + e.strerror)
print('   connected')"
}
say "as user nobody (the agent): connect to 127.0.0.1:$port"
expect_blocked connect as_user
say "as root (not an agent): the same connect works"
connect env
say "kill -9 oknekd: the pinned programs keep refusing while nothing runs in userspace"
kill -9 "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=
expect_blocked connect as_user
say "restart: oknekd adopts the pinned probes and records what they refused meanwhile"
start_daemon ebpf "$(cat "$demo/ebpf/oknek.yaml")"
sleep 1
stop_daemon ebpf
"$bin/oknekd" --uninstall-probes --bpf-pin-dir "$pins"
say "done"
