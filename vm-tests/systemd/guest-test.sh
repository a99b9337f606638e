#!/bin/bash
# Runs inside the systemd VM (see run.sh) as a oneshot unit after multi-user.target. Prints
# OKNEK-VM lines on the console and powers off.
set -u

dir=/opt/oknek-test
failures=0
say() { echo "OKNEK-VM: $*"; }
pass() { say "ok - $*"; }
fail() {
    say "FAIL - $*"
    failures=$((failures + 1))
}
check() {
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
# Everything install.sh may write, as one hash, to prove "changed nothing".
state_hash() {
    find /usr/local /etc/oknek /etc/systemd/system /var/lib/oknek -xdev \
        \( -type f -o -type l \) -print0 2>/dev/null | sort -z |
        xargs -0 -r sha256sum 2>/dev/null | sha256sum | cut -d' ' -f1
}
wait_active() {
    local _
    for _ in $(seq 1 "${2:-60}"); do
        [ "$(systemctl is-active "$1")" = active ] && return 0
        sleep 1
    done
    return 1
}
main_pid() { systemctl show -p MainPID --value oknekd.service; }
restarts() { systemctl show -p NRestarts --value oknekd.service; }

say "kernel $(uname -r), $(systemctl --version | head -1)"
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

# 1. A tampered release is refused before anything is installed.
before=$(state_hash)
if bash "$dir/tampered/install.sh" --pubkey "$dir/test.pub" "$dir/tampered" >/tmp/tampered.log 2>&1; then
    fail "install.sh accepted a tampered release"
else
    check "tampered release refused: $(grep -m1 REFUSED /tmp/tampered.log || echo 'no REFUSED line')" \
        grep -q 'REFUSED' /tmp/tampered.log
fi
check "refusal changed nothing" [ "$before" = "$(state_hash)" ]
check "no oknek binary after refusal" [ ! -e /usr/local/bin/oknek ]

# 2. Install over HTTPS from a server inside the guest.
(cd "$dir/release" && exec openssl s_server -quiet -WWW -accept 127.0.0.1:8443 \
    -cert "$dir/tls.crt" -key "$dir/tls.key") >/tmp/s_server.log 2>&1 &
server=$!
sleep 2
if bash "$dir/release/install.sh" --pubkey "$dir/test.pub" --cacert "$dir/tls.crt" \
    https://localhost:8443 >/tmp/install.log 2>&1; then
    pass "install.sh installed from https://localhost:8443"
else
    fail "install.sh failed"
    sed 's/^/OKNEK-VM:   /' /tmp/install.log | tail -30
    journalctl -u oknekd --no-pager | tail -30 | sed 's/^/OKNEK-VM:   /'
fi
check "oknek doctor was printed" grep -q 'kernel ' /tmp/install.log
check "oknekd is active (READY received)" wait_active oknekd.service 5
check "oknekd is enabled" systemctl -q is-enabled oknekd.service
check "host key exists, 0600" [ "$(stat -c %a /var/lib/oknek/host.key 2>/dev/null)" = 600 ]
check "rules are active" [ -f /var/lib/oknek/rules/active/.oknek-pack ]
check "oknek status answers" /usr/local/bin/oknek status
if systemd-analyze verify /usr/local/lib/systemd/system/oknekd.service >/tmp/verify.log 2>&1; then
    pass "systemd-analyze verify oknekd.service"
else
    fail "systemd-analyze verify: $(tr '\n' ' ' </tmp/verify.log)"
fi
say "security exposure: $(systemd-analyze security oknekd.service 2>/dev/null | tail -1)"

# A signed rule pack over HTTPS with `oknek update` (the test CA joins the system store, as a
# private mirror's CA would), swapped in and reloaded by the running daemon.
cp "$dir/tls.crt" /usr/local/share/ca-certificates/oknek-test.crt
update-ca-certificates >/dev/null 2>&1
pack=$(cd "$dir/release" && ls oknek-rules-*.tar.gz)
if /usr/local/bin/oknek update --pubkey "$dir/test.pub" "https://localhost:8443/$pack" >/tmp/update.log 2>&1; then
    pass "oknek update from https: $(grep -c . /tmp/update.log) lines, $(grep -o 'oknekd reloaded' /tmp/update.log)"
else
    fail "oknek update from https: $(tr '\n' ' ' </tmp/update.log)"
fi
check "previous pack kept" [ -f /var/lib/oknek/rules/previous/.oknek-pack ]
check "rollback" /usr/local/bin/oknek update --rollback
kill "$server" 2>/dev/null

# 3. restart and reload.
pid=$(main_pid)
systemctl restart oknekd.service
check "restart: active again" wait_active oknekd.service 5
check "restart: new main pid" [ "$(main_pid)" != "$pid" ]
check "reload succeeds" systemctl reload oknekd.service
check "still active after reload" wait_active oknekd.service 5

# 4. The watchdog restarts a hung daemon (SIGSTOP: no more WATCHDOG=1 pings).
pid=$(main_pid)
n=$(restarts)
kill -STOP "$pid"
say "oknekd ($pid) stopped; waiting for the watchdog"
restarted=false
for _ in $(seq 1 150); do
    sleep 1
    if [ "$(restarts)" -gt "$n" ] && [ "$(systemctl is-active oknekd)" = active ] && [ "$(main_pid)" != "$pid" ]; then
        restarted=true
        break
    fi
done
check "watchdog restarted the hung daemon" $restarted
journalctl -u oknekd --no-pager | grep -i watchdog | tail -2 | sed 's/^/OKNEK-VM:   /'

# 5. Re-running install.sh is an in-place upgrade that keeps the host key.
key_before=$(sha256sum /var/lib/oknek/host.key)
check "re-run of install.sh succeeds" bash "$dir/release/install.sh" --pubkey "$dir/test.pub" "$dir/release"
check "host key kept" [ "$key_before" = "$(sha256sum /var/lib/oknek/host.key)" ]
check "active after re-run" wait_active oknekd.service 5

# 6. A tampered upgrade is refused and the installed system is untouched.
before=$(state_hash)
if bash "$dir/tampered/install.sh" --pubkey "$dir/test.pub" "$dir/tampered" >/tmp/tampered2.log 2>&1; then
    fail "tampered upgrade accepted"
else
    pass "tampered upgrade refused"
fi
check "installed system unchanged" [ "$before" = "$(state_hash)" ]
check "service still active" wait_active oknekd.service 5

# 7. An agent service put under oknek by `oknek agent enable`.
printf '[Service]\nExecStart=/bin/sleep infinity\n' >/etc/systemd/system/vm-agent.service
check "oknek agent enable" /usr/local/bin/oknek agent enable vm-agent.service --agent vm-agent
systemctl daemon-reload
check "agent unit starts with the drop-in" systemctl start vm-agent.service
agent_pid=$(systemctl show -p MainPID --value vm-agent.service)
check "agent carries the preload shim" grep -q liboknek_preload "/proc/$agent_pid/environ"
after_oknekd() { systemctl show -p After --value vm-agent.service | grep -q oknekd.service; }
check "agent is ordered after oknekd" after_oknekd
systemctl stop vm-agent.service

# 8. Uninstall keeps the evidence.
check "uninstall" bash "$dir/release/install.sh" --uninstall
check "service gone" [ ! -e /usr/local/lib/systemd/system/oknekd.service ]
check "binaries gone" [ ! -e /usr/local/bin/oknek ]
check "evidence key kept" [ -f /var/lib/oknek/host.key ]

if [ "$failures" -eq 0 ]; then
    say "all checks passed"
    echo "OKNEK-VM-RESULT: PASS"
else
    echo "OKNEK-VM-RESULT: FAIL ($failures)"
fi
sync
systemctl poweroff -ff 2>/dev/null || poweroff -f
