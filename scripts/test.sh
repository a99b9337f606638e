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

echo
if [ "$failed" -gt 0 ]; then
    printf 'failed step: %s\n' "${failures[@]}"
fi
echo "steps: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
