#!/usr/bin/env bash
# The appliance test in a real systemd: a debootstrap'd Debian 12 (bookworm) booted under QEMU
# with the Debian 6.1 cloud kernel. Inside the guest, install.sh
#   1. refuses a release with a tampered artifact and changes nothing,
#   2. installs from a release served over HTTPS inside the guest (openssl s_server, private CA),
#      and oknekd reaches READY (Type=notify),
# then the service survives `systemctl restart` and `systemctl reload`, the watchdog restarts a
# hung (SIGSTOPped) daemon, a re-run of install.sh keeps the host key, a tampered upgrade is
# refused with the installed system untouched, and --uninstall keeps the evidence.
#
# Ubuntu 22.04/24.04 images cannot be fetched from the test machines; install.sh uses nothing
# that differs between them and Debian 12 (bash, coreutils, OpenSSL 3, curl, systemd).
#
#   vm-tests/systemd/run.sh [--release DIR]
#
# --release DIR: an unsigned release from `scripts/dist.sh` (default: run it now). The release is
# signed here with a throw-away key that install.sh is given with --pubkey.
# Needs root (debootstrap), qemu-system-x86_64, debootstrap, mkfs.ext4 (e2fsprogs), openssl.
# The root file system is cached in ${OKNEK_VM_CACHE:-/var/cache/oknek-vm}/systemd-bookworm.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd -P)
repo=$(cd "$here/../.." && pwd -P)
release_in=
while [ $# -gt 0 ]; do
    case $1 in
        --release) release_in=${2:?--release needs a directory}; shift 2 ;;
        -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

skip() {
    echo "skipped: $*"
    exit 0
}
[ "$(id -u)" -eq 0 ] || skip "needs root (debootstrap, image building)"
for tool in qemu-system-x86_64 debootstrap mkfs.ext4 openssl; do
    command -v "$tool" >/dev/null || skip "$tool is not installed"
done
[ -f "$repo/vm-tests/lib/kernels.sh" ] || { echo "run.sh: vm-tests/lib/kernels.sh is missing" >&2; exit 1; }
# shellcheck source=vm-tests/lib/kernels.sh
. "$repo/vm-tests/lib/kernels.sh"

cache=${OKNEK_VM_CACHE:-/var/cache/oknek-vm}
rootfs=$cache/systemd-bookworm
work=$(mktemp -d /tmp/oknek-systemd-vm.XXXXXX)
trap 'rm -rf "$work"' EXIT

# ---- root file system, built once -----------------------------------------------------------
if [ ! -f "$rootfs/.complete" ]; then
    echo "==> debootstrap bookworm into $rootfs (once, a few minutes)"
    rm -rf "$rootfs"
    mkdir -p "$rootfs"
    # What a stock Debian 12 / Ubuntu server has that install.sh relies on: openssl, curl, ca
    # certificates, procps; plus systemd itself.
    debootstrap --variant=minbase \
        --include=systemd,systemd-sysv,udev,dbus,kmod,openssl,curl,ca-certificates,procps \
        bookworm "$rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 || {
        tail -20 "$work/debootstrap.log" >&2
        echo "run.sh: debootstrap failed" >&2
        exit 1
    }
    echo oknek-vm >"$rootfs/etc/hostname"
    printf '/dev/nvme0n1 / ext4 rw 0 1\n' >"$rootfs/etc/fstab"
    # No login prompts on the console; the test unit owns it.
    rm -f "$rootfs/etc/systemd/system/getty.target.wants/"*
    touch "$rootfs/.complete"
fi

kernel=$(oknek_vm_kernel 6.1) || { echo "run.sh: no 6.1 kernel (see vm-tests/lib/kernels.sh)" >&2; exit 1; }

# ---- the release: built, signed with a throw-away key, and a tampered copy --------------------
if [ -z "$release_in" ]; then
    echo "==> scripts/dist.sh"
    "$repo/scripts/dist.sh" --out "$work/dist" >"$work/dist.log" 2>&1 || {
        tail -30 "$work/dist.log" >&2
        exit 1
    }
    release_in=$work/dist
fi
test_dir=$work/oknek-test
mkdir -p "$test_dir/release"
cp "$release_in"/SHA256SUMS "$release_in"/oknek-*.tar.gz "$release_in"/install.sh "$test_dir/release/"
version=$(sed -n 's/.*oknek-rules-\(.*\)\.tar\.gz$/\1/p' "$test_dir/release/SHA256SUMS")
[ -n "$version" ] || { echo "run.sh: no rule pack in $release_in/SHA256SUMS" >&2; exit 1; }
# The release's own (static) CLI signs it.
tar -xzf "$test_dir/release/oknek-$version-x86_64-linux.tar.gz" -C "$work" \
    "oknek-$version-x86_64-linux/bin/oknek"
oknek_host=$work/oknek-$version-x86_64-linux/bin/oknek
"$oknek_host" sign --generate --key "$work/test.key" --pubkey "$test_dir/test.pub" >/dev/null
(cd "$test_dir/release" && "$oknek_host" sign --key "$work/test.key" --version "$version" \
    SHA256SUMS oknek-*.tar.gz install.sh >/dev/null)
cp -r "$test_dir/release" "$test_dir/tampered"
bundle=oknek-$version-x86_64-linux.tar.gz
# One flipped byte in the middle of the bundle: the signature must catch it.
size=$(stat -c %s "$test_dir/tampered/$bundle")
printf '\x00' | dd of="$test_dir/tampered/$bundle" bs=1 seek=$((size / 2)) conv=notrunc status=none
# A private CA for the HTTPS server inside the guest.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost -keyout "$test_dir/tls.key" -out "$test_dir/tls.crt" \
    >/dev/null 2>&1
cp "$here/guest-test.sh" "$test_dir/"

# ---- the disk image ---------------------------------------------------------------------------
echo "==> image"
image_root=$work/rootfs
cp -a "$rootfs" "$image_root"
rm -f "$image_root/.complete"
cp -r "$test_dir" "$image_root/opt/oknek-test"
cat >"$image_root/etc/systemd/system/oknek-vm-test.service" <<'EOF'
[Unit]
Description=oknek appliance test
After=multi-user.target
[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/bin/bash /opt/oknek-test/guest-test.sh
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
EOF
# The serial getty would take over ttyS0 and swallow the test's output.
ln -sf /dev/null "$image_root/etc/systemd/system/serial-getty@ttyS0.service"
mkdir -p "$image_root/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/oknek-vm-test.service \
    "$image_root/etc/systemd/system/multi-user.target.wants/oknek-vm-test.service"
mkfs.ext4 -q -F -L oknek-root -d "$image_root" "$work/root.img" 3G

echo "==> booting Debian 12 with systemd under QEMU (TCG; a few minutes)"
log=${OKNEK_VM_LOG:-$work/console.log}
status=0
oknek_vm_qemu --kernel "$kernel" --disk "$work/root.img" --log "$log" --timeout 900 \
    --memory 1536 --append "systemd.unit=multi-user.target systemd.show_status=0" || status=$?
grep -a '^OKNEK-VM' "$log" || true
if grep -aq '^OKNEK-VM-RESULT: PASS' "$log"; then
    echo "vm-tests/systemd: ok"
    exit 0
fi
echo "vm-tests/systemd: FAILED (qemu status $status); console log:" >&2
tail -80 "$log" >&2
exit 1
