#!/bin/busybox sh
# /init of the benchmark VM: mounts what the eBPF probes need, runs every benchmark binary in
# /opt/oknek/bench with the arguments in /opt/oknek/bench.args, its output prefixed by
# OKNEK-BENCH, and powers off.
# shellcheck shell=sh

# shellcheck source=SCRIPTDIR/boot.sh
. /etc/oknek-vm-boot.sh

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
