# shellcheck shell=bash
# Debian kernels and a QEMU launcher for oknek's VM tests. Source this file; it defines:
#
#   oknek_vm_kernel NAME         print the path of a vmlinuz for NAME (5.10, 6.1 or 6.12),
#                                downloading and unpacking the Debian package once
#   oknek_vm_kernel_config NAME  print the path of that kernel's build config
#   oknek_vm_kernel_release NAME print that kernel's release string (uname -r)
#   oknek_vm_qemu [options]      boot a kernel with an initramfs or a disk under TCG, serial
#                                console captured to a log file, with a hard timeout
#
# Kernels come from the Debian archive through apt-get with a private APT_CONFIG (its own
# sources list, package lists and download cache under the cache directory), so the system's
# apt state is never read or changed. Everything is cached under
# ${OKNEK_VM_CACHE:-/var/cache/oknek-vm}; a second call for the same kernel does no network
# access. OKNEK_VM_REFRESH=1 fetches the newest package again.
#
# Functions return non-zero and print "oknek-vm: ..." on stderr on failure; they never exit the
# calling shell.

# Debian release shipping each kernel series.
oknek_vm__suite() {
    case "$1" in
        5.10) echo bullseye ;;
        6.1) echo bookworm ;;
        6.12) echo trixie ;;
        *)
            echo "oknek-vm: unknown kernel '$1' (known: 5.10, 6.1, 6.12; no 4.x kernel is obtainable from the Debian archive)" >&2
            return 1
            ;;
    esac
}

oknek_vm__cache() {
    printf '%s\n' "${OKNEK_VM_CACHE:-/var/cache/oknek-vm}"
}

# Kernel options the tests rely on. The cloud flavour is preferred (small, boots fast, NVMe and
# ext4 built in); the generic flavour is used only when the cloud build lacks one of these.
OKNEK_VM_REQUIRED_CONFIG=(
    CONFIG_BLK_DEV_INITRD=y
    CONFIG_DEVTMPFS=y
    CONFIG_SERIAL_8250_CONSOLE=y
    CONFIG_SECURITYFS=y
    CONFIG_BPF_SYSCALL=y
    CONFIG_BPF_LSM=y
    CONFIG_DEBUG_INFO_BTF=y
    CONFIG_CGROUP_BPF=y
    CONFIG_FANOTIFY_ACCESS_PERMISSIONS=y
    CONFIG_SECCOMP_FILTER=y
)

# Writes the private apt configuration for SUITE and prints its path.
oknek_vm__apt_config() {
    local suite=$1 root
    root="$(oknek_vm__cache)/apt/$suite"
    mkdir -p "$root/lists/partial" "$root/archives/partial" "$root/parts" \
        "$root/preferences.d" "$root/sources.list.d" || return 1
    : >"$root/status"
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    if [[ ! -r $keyring ]]; then
        echo "oknek-vm: $keyring missing (apt-get install debian-archive-keyring)" >&2
        return 1
    fi
    cat >"$root/sources.list" <<EOF
deb [signed-by=$keyring] http://deb.debian.org/debian $suite main
deb [signed-by=$keyring] http://deb.debian.org/debian-security $suite-security main
EOF
    cat >"$root/apt.conf" <<EOF
Dir::Etc::SourceList "$root/sources.list";
Dir::Etc::SourceParts "$root/sources.list.d";
Dir::Etc::Parts "$root/parts";
Dir::Etc::Preferences "$root/preferences";
Dir::Etc::PreferencesParts "$root/preferences.d";
Dir::State "$root";
Dir::State::Lists "$root/lists";
Dir::State::status "$root/status";
Dir::Cache "$root";
Dir::Cache::archives "$root/archives";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
APT::Sandbox::User "root";
Acquire::Languages "none";
Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled "false";
EOF
    printf '%s\n' "$root/apt.conf"
}

# Refreshes the package lists of SUITE (once per cache, or again with OKNEK_VM_REFRESH=1).
oknek_vm__apt_update() {
    local suite=$1 conf root
    conf=$(oknek_vm__apt_config "$suite") || return 1
    root=$(dirname "$conf")
    if [[ -f $root/updated && ${OKNEK_VM_REFRESH:-0} != 1 ]]; then
        printf '%s\n' "$conf"
        return 0
    fi
    if ! APT_CONFIG=$conf apt-get -q update >"$root/update.log" 2>&1; then
        echo "oknek-vm: cannot reach deb.debian.org: apt-get update for $suite failed (log: $root/update.log)" >&2
        tail -n 5 "$root/update.log" >&2
        return 1
    fi
    if grep -qE '^(W|E): Failed to fetch' "$root/update.log"; then
        echo "oknek-vm: cannot reach deb.debian.org: some $suite indexes failed (log: $root/update.log)" >&2
        grep -E '^(W|E): ' "$root/update.log" >&2
        return 1
    fi
    touch "$root/updated"
    printf '%s\n' "$conf"
}

# Prints the versioned image package a metapackage (linux-image-cloud-amd64) points at.
oknek_vm__image_package() {
    local conf=$1 meta=$2 depends
    depends=$(APT_CONFIG=$conf apt-cache show --no-all-versions "$meta" 2>/dev/null |
        sed -n 's/^Depends: //p' | head -n 1)
    if [[ -z $depends ]]; then
        echo "oknek-vm: $meta not found in the package lists" >&2
        return 1
    fi
    # "linux-image-6.1.0-41-cloud-amd64 (= 6.1.158-1)" or a list of alternatives: first image.
    printf '%s\n' "${depends//[,|]/$'\n'}" | sed 's/^ *//; s/ .*//' | grep -m 1 '^linux-image-'
}

# True when every OKNEK_VM_REQUIRED_CONFIG option is set in CONFIG_FILE; names the missing ones.
oknek_vm__config_ok() {
    local config=$1 option absent=()
    for option in "${OKNEK_VM_REQUIRED_CONFIG[@]}"; do
        grep -qx "$option" "$config" || absent+=("$option")
    done
    if ((${#absent[@]})); then
        printf '%s\n' "${absent[*]}"
        return 1
    fi
}

# Downloads and unpacks FLAVOUR (cloud-amd64 or amd64) of NAME into DIR.
oknek_vm__fetch() {
    local name=$1 flavour=$2 dir=$3 suite conf pkg deb
    suite=$(oknek_vm__suite "$name") || return 1
    conf=$(oknek_vm__apt_update "$suite") || return 1
    pkg=$(oknek_vm__image_package "$conf" "linux-image-$flavour") || return 1
    local archives
    archives="$(dirname "$conf")/archives"
    echo "oknek-vm: downloading $pkg ($suite)" >&2
    if ! (cd "$archives" && APT_CONFIG=$conf apt-get -q download "$pkg" >/dev/null 2>"$archives/download.log"); then
        echo "oknek-vm: cannot reach deb.debian.org: apt-get download $pkg failed (log: $archives/download.log)" >&2
        tail -n 5 "$archives/download.log" >&2
        return 1
    fi
    deb=$(find "$archives" -maxdepth 1 -name "${pkg}_*.deb" -printf '%T@ %p\n' | sort -n | tail -n 1 | cut -d' ' -f2-)
    if [[ -z $deb ]]; then
        echo "oknek-vm: apt-get download reported success but no ${pkg}_*.deb is in $archives" >&2
        return 1
    fi
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp/root" || return 1
    if ! dpkg-deb -x "$deb" "$dir.tmp/root"; then
        echo "oknek-vm: dpkg-deb -x $deb failed" >&2
        return 1
    fi
    local vmlinuz config
    vmlinuz=$(find "$dir.tmp/root/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n 1)
    config=$(find "$dir.tmp/root/boot" -maxdepth 1 -name 'config-*' | head -n 1)
    if [[ -z $vmlinuz || -z $config ]]; then
        echo "oknek-vm: $deb has no /boot/vmlinuz-* or /boot/config-*" >&2
        return 1
    fi
    # Only the image and its config are needed: the initramfs is built by the tests.
    mv "$vmlinuz" "$dir.tmp/vmlinuz" && mv "$config" "$dir.tmp/config" || return 1
    basename "$vmlinuz" | sed 's/^vmlinuz-//' >"$dir.tmp/release"
    printf '%s\n' "$(basename "$deb")" >"$dir.tmp/package"
    printf '%s\n' "$flavour" >"$dir.tmp/flavour"
    rm -rf "$dir.tmp/root" "$dir" "$deb"
    mv "$dir.tmp" "$dir"
}

# The directory holding vmlinuz, config, release, package and flavour for NAME: the cloud
# flavour when its config has every OKNEK_VM_REQUIRED_CONFIG option, else the generic one. Each
# flavour is cached in its own directory, so callers that need more options (append them to
# OKNEK_VM_REQUIRED_CONFIG before the call) and callers that do not share one cache.
oknek_vm__kernel_dir() {
    local name=$1 flavour dir missing=""
    oknek_vm__suite "$name" >/dev/null || return 1
    for flavour in cloud-amd64 amd64; do
        dir="$(oknek_vm__cache)/kernels/$name/$flavour"
        if [[ ! -f $dir/vmlinuz || ! -f $dir/config || ${OKNEK_VM_REFRESH:-0} == 1 ]]; then
            local tool
            for tool in apt-get apt-cache dpkg-deb; do
                command -v "$tool" >/dev/null || {
                    echo "oknek-vm: $tool not found (a Debian or Ubuntu host is needed to fetch kernels)" >&2
                    return 1
                }
            done
            oknek_vm__fetch "$name" "$flavour" "$dir" || return 1
        fi
        if missing=$(oknek_vm__config_ok "$dir/config"); then
            printf '%s\n' "$dir"
            return 0
        fi
        if [[ $flavour == cloud-amd64 ]]; then
            echo "oknek-vm: the $name cloud kernel lacks $missing; using the generic amd64 kernel instead" >&2
        fi
    done
    echo "oknek-vm: the $name generic kernel lacks $missing as well" >&2
    return 1
}

oknek_vm_kernel() {
    local dir
    dir=$(oknek_vm__kernel_dir "${1:?usage: oknek_vm_kernel 5.10|6.1|6.12}") || return 1
    printf '%s\n' "$dir/vmlinuz"
}

oknek_vm_kernel_config() {
    local dir
    dir=$(oknek_vm__kernel_dir "${1:?usage: oknek_vm_kernel_config 5.10|6.1|6.12}") || return 1
    printf '%s\n' "$dir/config"
}

oknek_vm_kernel_release() {
    local dir
    dir=$(oknek_vm__kernel_dir "${1:?usage: oknek_vm_kernel_release 5.10|6.1|6.12}") || return 1
    cat "$dir/release"
}

# oknek_vm_qemu --kernel VMLINUZ (--initrd FILE | --disk IMAGE) --log FILE
#               [--append "KERNEL ARGS"] [--timeout SECONDS] [--memory MB] [--cpus N]
#               [-- EXTRA QEMU ARGS...]
#
# Boots under software emulation (this is the only accelerator the test machines offer; see
# KERNEL-FACTS) with no network card. The serial console (console=ttyS0 is always added) goes to
# the log file, and also to stderr with OKNEK_VM_CONSOLE=1. --disk attaches IMAGE as an NVMe
# drive in snapshot mode (the image is never written) and adds root=/dev/nvme0n1. The guest must
# power off (poweroff -f) or panic (panic=-1 is added, with -no-reboot that ends QEMU).
#
# Returns QEMU's status, or 124 when the timeout (default 180 s) killed it.
oknek_vm_qemu() {
    local kernel="" initrd="" disk="" log="" append="" timeout=180 memory=1024 cpus=2
    local extra=()
    while (($#)); do
        case "$1" in
            --kernel) kernel=$2 && shift 2 ;;
            --initrd) initrd=$2 && shift 2 ;;
            --disk) disk=$2 && shift 2 ;;
            --log) log=$2 && shift 2 ;;
            --append) append=$2 && shift 2 ;;
            --timeout) timeout=$2 && shift 2 ;;
            --memory) memory=$2 && shift 2 ;;
            --cpus) cpus=$2 && shift 2 ;;
            --)
                shift
                extra=("$@")
                break
                ;;
            *)
                echo "oknek-vm: oknek_vm_qemu: unknown option '$1'" >&2
                return 2
                ;;
        esac
    done
    if [[ -z $kernel || -z $log || (-z $initrd && -z $disk) ]]; then
        echo "oknek-vm: oknek_vm_qemu needs --kernel, --log and --initrd or --disk" >&2
        return 2
    fi
    local file
    for file in "$kernel" ${initrd:+"$initrd"} ${disk:+"$disk"}; do
        [[ -r $file ]] || {
            echo "oknek-vm: cannot read $file" >&2
            return 2
        }
    done
    command -v qemu-system-x86_64 >/dev/null || {
        echo "oknek-vm: qemu-system-x86_64 not found (apt-get install -t bookworm-backports qemu-system-x86)" >&2
        return 2
    }
    local args=(
        -accel 'tcg,thread=multi' -cpu max -smp "$cpus" -m "$memory"
        -nographic -no-reboot -nic none
        -kernel "$kernel"
    )
    [[ -n $initrd ]] && args+=(-initrd "$initrd")
    if [[ -n $disk ]]; then
        args+=(-drive "file=$disk,if=none,id=root,format=raw,snapshot=on" -device 'nvme,drive=root,serial=oknek')
        append="root=/dev/nvme0n1 rw $append"
    fi
    args+=(-append "console=ttyS0 panic=-1 $append" "${extra[@]}")
    mkdir -p "$(dirname "$log")" || return 2
    local status=0
    if [[ ${OKNEK_VM_CONSOLE:-0} == 1 ]]; then
        if timeout --kill-after=10 "$timeout" qemu-system-x86_64 "${args[@]}" </dev/null 2>&1 |
            tee "$log" >&2; then
            status=0
        else
            status=${PIPESTATUS[0]}
        fi
    else
        timeout --kill-after=10 "$timeout" qemu-system-x86_64 "${args[@]}" </dev/null >"$log" 2>&1 ||
            status=$?
    fi
    if ((status == 124 || status == 137)); then
        echo "oknek-vm: the VM did not power off within ${timeout}s (console: $log)" >&2
        return 124
    fi
    return "$status"
}
