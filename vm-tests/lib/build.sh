# shellcheck shell=bash
# Builds what oknek's test VMs run and packs it into an initramfs. Source this file; it defines:
#
#   oknek_vm_build_binaries      static oknekd and oknek (musl), the preload shim (glibc)
#   oknek_vm_binaries_present    true when the three artifacts exist in the target dir
#   oknek_vm_build_agents DIR    the scenario's agent, static (musl) and dynamic (glibc)
#   oknek_vm_initramfs OUT INIT [SRC:DEST ...]
#                                a gzip'd newc initramfs: busybox, the binaries, the agents,
#                                the glibc libraries the dynamic ones need, INIT as /init
#
# OKNEK_VM_REPO is the repository root (default: two levels above this file); cargo writes to
# ${CARGO_TARGET_DIR:-$OKNEK_VM_REPO/target}. The daemon and CLI are linked statically against
# musl; OKNEK_VM_LIBC=glibc links them statically against glibc instead (static-pie), for
# comparing the two or when the musl build is broken.

# What every VM's /init sources first (vm-tests/scenario/boot.sh of this checkout).
OKNEK_VM_BOOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../scenario" && pwd)/boot.sh
OKNEK_VM_REPO=${OKNEK_VM_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}

oknek_vm__static_target() {
    case "${OKNEK_VM_LIBC:-musl}" in
        musl) echo x86_64-unknown-linux-musl ;;
        glibc) echo x86_64-unknown-linux-gnu ;;
        *)
            echo "oknek-vm: OKNEK_VM_LIBC must be musl or glibc, not '$OKNEK_VM_LIBC'" >&2
            return 1
            ;;
    esac
}

oknek_vm__target_dir() {
    printf '%s\n' "${CARGO_TARGET_DIR:-$OKNEK_VM_REPO/target}"
}

oknek_vm_oknekd() { printf '%s\n' "$(oknek_vm__target_dir)/$(oknek_vm__static_target)/release/oknekd"; }
oknek_vm_oknek() { printf '%s\n' "$(oknek_vm__target_dir)/$(oknek_vm__static_target)/release/oknek"; }
oknek_vm_preload() { printf '%s\n' "$(oknek_vm__target_dir)/release/liboknek_preload.so"; }

oknek_vm_binaries_present() {
    local file ok=0
    for file in "$(oknek_vm_oknekd)" "$(oknek_vm_oknek)" "$(oknek_vm_preload)"; do
        [[ -x $file || -f $file ]] || {
            echo "oknek-vm: $file not built" >&2
            ok=1
        }
    done
    return "$ok"
}

oknek_vm_build_binaries() {
    command -v cargo >/dev/null || {
        echo "oknek-vm: cargo not found" >&2
        return 1
    }
    local target rustflags=""
    target=$(oknek_vm__static_target) || return 1
    if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
        echo "oknek-vm: adding the $target Rust target" >&2
        rustup target add "$target" || return 1
    fi
    # With --target, RUSTFLAGS reach only the target's crates, not build scripts.
    [[ $target == *-gnu ]] && rustflags="-C target-feature=+crt-static"
    echo "oknek-vm: building static oknekd and oknek (release, $target; several minutes when cold)" >&2
    (cd "$OKNEK_VM_REPO" && RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }$rustflags" \
        cargo build --release --locked --target "$target" -p oknekd -p oknek) || {
        echo "oknek-vm: building oknekd/oknek for $target failed" >&2
        [[ $target == *-musl ]] &&
            echo "oknek-vm: OKNEK_VM_LIBC=glibc builds them statically against glibc instead" >&2
        return 1
    }
    echo "oknek-vm: building the preload shim (release, glibc)" >&2
    (cd "$OKNEK_VM_REPO" && cargo build --release --locked -p oknek-preload) || {
        echo "oknek-vm: building liboknek_preload.so failed" >&2
        return 1
    }
    oknek_vm_binaries_present
}

oknek_vm_build_agents() {
    local out=$1 src
    src="$OKNEK_VM_REPO/vm-tests/scenario/agent.c"
    mkdir -p "$out" || return 1
    command -v musl-gcc >/dev/null || {
        echo "oknek-vm: musl-gcc not found (apt-get install musl-tools)" >&2
        return 1
    }
    musl-gcc -static -O2 -Wall -Wextra -Werror -o "$out/agent-static" "$src" || return 1
    gcc -O2 -Wall -Wextra -Werror -o "$out/agent-dynamic" "$src" || return 1
}

# Copies FILE and every shared library it needs (per ldd) into ROOT at the same paths.
oknek_vm__copy_with_libs() {
    local root=$1 file=$2 lib
    while read -r lib; do
        [[ -n $lib ]] || continue
        mkdir -p "$root$(dirname "$lib")" || return 1
        cp -L "$lib" "$root$lib" || return 1
    done < <(ldd "$file" | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }')
}

oknek_vm_initramfs() {
    local out=$1 init=$2
    shift 2
    local busybox
    busybox=$(command -v busybox) || {
        echo "oknek-vm: busybox not found (apt-get install busybox-static)" >&2
        return 1
    }
    if ldd "$busybox" 2>/dev/null | grep -q '=>'; then
        echo "oknek-vm: $busybox is dynamically linked (apt-get install busybox-static)" >&2
        return 1
    fi
    command -v cpio >/dev/null || {
        echo "oknek-vm: cpio not found (apt-get install cpio)" >&2
        return 1
    }
    local root
    root=$(mktemp -d "${TMPDIR:-/tmp}/oknek-initramfs.XXXXXX") && chmod 0755 "$root" || return 1
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/local/bin,etc,proc,sys,dev,tmp,run,var/lib,opt/oknek} ||
        return 1
    cp "$busybox" "$root/bin/busybox" || return 1
    cp "$init" "$root/init" && chmod 0755 "$root/init" || return 1
    cp "$OKNEK_VM_BOOT" "$root/etc/oknek-vm-boot.sh" || return 1
    local spec src dest
    for spec in "$@"; do
        src=${spec%%:*}
        dest=${spec#*:}
        mkdir -p "$root$(dirname "$dest")" || return 1
        if [[ -d $src ]]; then
            cp -r "$src" "$root$dest" || return 1
        else
            cp -L "$src" "$root$dest" || return 1
            # Dynamic executables and libraries bring their glibc along.
            if ldd "$src" >/dev/null 2>&1; then
                oknek_vm__copy_with_libs "$root" "$src" || return 1
            fi
        fi
    done
    (cd "$root" && find . -print0 | cpio --null -o -H newc -R 0:0 --quiet) | gzip -1 >"$out.tmp" ||
        return 1
    mv "$out.tmp" "$out"
    rm -rf "$root"
}
