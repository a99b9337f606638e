#!/usr/bin/env bash
# Builds oknek and shows it working end to end, entirely inside a temporary directory:
#   1. the shipped rule pack R1–R7 is linted and its fixtures run;
#   2. a recorded agent session is replayed through the rules into a fresh, signed evidence store,
#      which `oknek verify` then checks;
#   3. as root: oknekd starts on a default configuration and an agent launched with `oknek run`,
#      running as an ordinary user, is refused a fake SSH key by the kernel while the same read
#      outside oknek succeeds; the block is in the evidence and the store verifies.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "building (release)"
cargo build --release --locked -p oknek -p oknekd
bin=$PWD/target/release
demo=$(mktemp -d /tmp/oknek-demo.XXXXXX)
chmod 755 "$demo"
daemon_pid=
cleanup() {
    [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
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

say "starting oknekd on a default configuration in $demo"
# R1 protects every user's ~/.ssh private keys; the demo user is 'nobody' with a throwaway home.
demo_home=/home/oknek-demo
mkdir -p "$demo_home/.ssh"
printf -- '-----BEGIN OPENSSH PRIVATE KEY-----\nfake key for the oknek demo\n-----END OPENSSH PRIVATE KEY-----\n' \
    > "$demo_home/.ssh/id_ed25519"
chown -R nobody: "$demo_home"
chmod 600 "$demo_home/.ssh/id_ed25519"
mkdir -p "$demo/run" "$demo/state"
"$bin/oknekd" --config /dev/null --rules-dir rules --state-dir "$demo/state" \
    --runtime-dir "$demo/run" 2> "$demo/oknekd.log" &
daemon_pid=$!
for _ in $(seq 50); do [ -S "$demo/run/control.sock" ] && break; sleep 0.1; done
"$bin/oknek" --runtime-dir "$demo/run" status

as_user() { setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME="$demo_home" "$@"; }
say "as user nobody, without oknek: cat ~/.ssh/id_ed25519"
as_user cat "$demo_home/.ssh/id_ed25519"
say "as user nobody, as an agent: oknek run --agent demo -- cat ~/.ssh/id_ed25519"
if as_user "$bin/oknek" --runtime-dir "$demo/run" run --agent demo -- cat "$demo_home/.ssh/id_ed25519"; then
    echo "!! the read was not blocked" >&2
    exit 1
fi
sleep 0.2
say "the evidence of that block"
"$bin/oknek" events --state-dir "$demo/state" --verdict block
kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=
"$bin/oknek" verify --state-dir "$demo/state"
say "done: oknekd's log was"
cat "$demo/oknekd.log"
