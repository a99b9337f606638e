#!/usr/bin/env bash
# The one test command: formatting, lints, every test in the workspace, and the shipped rule pack.
# Tests that need root and the real kernel run when this runs as root (CI does); run as an
# ordinary user they report themselves as skipped, with the reason.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

passed=0
failed=0
failures=()

step() {
    local name=$1
    shift
    echo
    echo "==> $name"
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        failures+=("$name")
    fi
}

step "cargo fmt --check" cargo fmt --all --check
step "cargo clippy (-D warnings)" cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo test" cargo test --workspace --locked
step "oknek rules check rules/" "${CARGO_TARGET_DIR:-target}/debug/oknek" rules check rules
step "oknek rules test rules/" "${CARGO_TARGET_DIR:-target}/debug/oknek" rules test rules
step "shellcheck" shellcheck -x scripts/*.sh vm-tests/*.sh vm-tests/lib/*.sh vm-tests/scenario/*.sh \
    vm-tests/systemd/*.sh install.sh nixos-module/*.sh nixos-module/tests/*.sh .ci/run
# Parses every .nix file and, with OKNEK_NIXPKGS_LIB (a nixpkgs lib tree), evaluates the NixOS
# module with lib.evalModules; without it the evaluation is reported as skipped, with the reason.
step "NixOS module (nixos-module/tests/run.sh)" nixos-module/tests/run.sh

# Real kernels under QEMU: the BPF LSM tier (which this machine's kernel refuses) and the preload
# path on Debian 5.10, 6.1 and 6.12. Needs root (the kernel cache) and deb.debian.org once.
# The appliance: two release builds compared byte for byte (one offline from the vendored
# source tarball), then that release installed by install.sh into Debian 12 booted with systemd.
if [ "$(id -u)" -eq 0 ]; then
    step "VM matrix (vm-tests/run.sh)" vm-tests/run.sh
    release_dir=$(mktemp -d /tmp/oknek-test-release.XXXXXX)
    step "reproducible release (scripts/repro-test.sh)" scripts/repro-test.sh --release-out "$release_dir"
    step "systemd VM (vm-tests/systemd/run.sh)" vm-tests/systemd/run.sh --release "$release_dir"
    rm -rf "$release_dir"
else
    for slow in "VM matrix (vm-tests/run.sh)" "reproducible release (scripts/repro-test.sh)" \
        "systemd VM (vm-tests/systemd/run.sh)"; do
        echo
        echo "==> $slow"
        echo "skipped: needs root (kernel cache in /var/cache/oknek-vm, QEMU boots, debootstrap)"
    done
fi

echo
if [ "$failed" -gt 0 ]; then
    printf 'failed step: %s\n' "${failures[@]}"
fi
echo "steps: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
