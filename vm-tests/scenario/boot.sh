# Sourced first by every /init of the test VMs (copied to /etc/oknek-vm-boot.sh by
# oknek_vm_initramfs): busybox applets, the `OKNEK-DONE` + power-off on exit, and the mounts the
# daemon and the eBPF probes need (proc, sysfs, devtmpfs, securityfs, bpffs, tracefs, cgroup2).
# shellcheck shell=sh

/bin/busybox mkdir -p /proc /sys /dev /tmp /run /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

finish() {
    echo "OKNEK-DONE"
    sync
    poweroff -f
}
# Never return from init: that would panic the kernel instead of powering off.
trap finish EXIT

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t securityfs securityfs /sys/kernel/security
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null ||
    mount -t tracefs tracefs /sys/kernel/debug/tracing 2>/dev/null
mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
ip link set lo up
