#!/bin/busybox sh
# /init of the benchmark VM: mounts what the eBPF probes need, runs every benchmark binary in
# /opt/oknek/bench with the arguments in /opt/oknek/bench.args, its output prefixed by
# OKNEK-BENCH, and powers off.
# shellcheck shell=sh

/bin/busybox mkdir -p /proc /sys /dev /tmp /run /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

finish() {
    echo "OKNEK-DONE"
    sync
    poweroff -f
}
trap finish EXIT

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t securityfs securityfs /sys/kernel/security
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
ip link set lo up

echo "OKNEK-INFO kernel $(uname -r)"
echo "OKNEK-INFO lsm $(cat /sys/kernel/security/lsm 2>/dev/null || echo unreadable)"
# One argument per line, given to every benchmark.
set --
while IFS= read -r bench_arg; do
    [ -n "$bench_arg" ] && set -- "$@" "$bench_arg"
done </opt/oknek/bench.args
echo "OKNEK-INFO arguments: $*"
for bench in /opt/oknek/bench/*; do
    [ -x "$bench" ] || continue
    name=$(basename "$bench")
    echo "OKNEK-INFO running $name"
    if "$bench" "$@" >/tmp/bench.out 2>&1; then
        status=PASS
    else
        status=FAIL
    fi
    sed "s/^/OKNEK-BENCH $name /" /tmp/bench.out
    echo "OKNEK-RESULT bench-$name $status exit status of $name"
done
