#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Runs the eBPF probes' benchmark binaries inside a 6.1 VM, where BPF LSM programs load (the
# development kernels refuse them). Numbers under TCG are slow in absolute terms: read the
# ratios each benchmark prints against its own baseline, never the raw times.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/kernels.sh
. "$HERE/lib/kernels.sh"
# shellcheck source=lib/build.sh
. "$HERE/lib/build.sh"

USAGE="\
Usage: vm-tests/bench.sh [--kernel 6.1|6.12|5.10] [--timeout SECS] [--keep] [--binary FILE]
                         [-- BENCH ARGS...]

Builds the benchmark binary of the probes crate (probes/bpf; the first kind found of
src/bin/*bench*.rs, examples/*bench*.rs, benches/*.rs) statically, boots one VM (default kernel
6.1; 5.10 boots with bpf in lsm=), runs it there as root with BENCH ARGS and prints what it
prints. --binary runs FILE (a static benchmark built before) instead of building. Exits 1 when
there is no benchmark to run or one fails."

kernel_name=6.1
timeout=600
keep=0
bench_args=()
prebuilt=""
while (($#)); do
    case "$1" in
        --kernel) kernel_name=${2:?--kernel needs 6.1, 6.12 or 5.10} && shift 2 ;;
        --timeout) timeout=${2:?--timeout needs seconds} && shift 2 ;;
        --keep) keep=1 && shift ;;
        --binary) prebuilt=${2:?--binary needs a file} && shift 2 ;;
        --)
            shift
            bench_args=("$@")
            break
            ;;
        -h | --help)
            echo "$USAGE"
            exit 0
            ;;
        *)
            echo "bench.sh: unknown option '$1' (see --help)" >&2
            exit 2
            ;;
    esac
done

build_benchmarks() {
    local crate="$OKNEK_VM_REPO/probes/bpf" selectors=()
    if [[ ! -f $crate/Cargo.toml ]]; then
        echo "bench.sh: FAIL: $crate does not exist: the eBPF probes crate is not built yet" >&2
        exit 1
    fi

    # The benchmark targets cargo would discover, as cargo selection flags: a dedicated binary is
    # preferred (it is written to run anywhere), then examples, then cargo benches.
    shopt -s nullglob
    for file in "$crate"/src/bin/*bench*.rs; do
        selectors+=(--bin "$(basename "$file" .rs)")
    done
    if ((${#selectors[@]} == 0)); then
        for file in "$crate"/examples/*bench*.rs; do
            selectors+=(--example "$(basename "$file" .rs)")
        done
    fi
    if ((${#selectors[@]} == 0)); then
        for file in "$crate"/benches/*.rs; do
            selectors+=(--bench "$(basename "$file" .rs)")
        done
    fi
    shopt -u nullglob
    if ((${#selectors[@]} == 0)); then
        echo "bench.sh: FAIL: probes/bpf has no benchmark binary yet (looked for benches/*.rs, examples/*bench*.rs, src/bin/*bench*.rs)" >&2
        exit 1
    fi

    local target rustflags="" file executable
    target=$(oknek_vm__static_target)
    [[ $target == *-gnu ]] && rustflags="-C target-feature=+crt-static"
    echo "bench.sh: building ${selectors[*]} for $target" >&2
    (cd "$OKNEK_VM_REPO" && RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }$rustflags" \
        cargo build --release --locked --target "$target" -p oknek-bpf "${selectors[@]}" \
        --message-format=json-render-diagnostics >"$work/cargo.json") || {
        echo "bench.sh: FAIL: building the probes' benchmarks failed" >&2
        exit 1
    }
    while read -r executable; do
        cp "$executable" "$work/bench/"
    done < <(grep -o '"executable":"[^"]*"' "$work/cargo.json" | sed 's/^"executable":"//; s/"$//')
    if [[ -z $(ls -A "$work/bench") ]]; then
        echo "bench.sh: FAIL: cargo built no benchmark executable" >&2
        exit 1
    fi
}

work=$(mktemp -d "${TMPDIR:-/tmp}/oknek-vm-bench.XXXXXX")
mkdir -p "$work/bench"
if [[ -n $prebuilt ]]; then
    cp "$prebuilt" "$work/bench/" || exit 1
else
    build_benchmarks
fi

kernel=$(oknek_vm_kernel "$kernel_name")
append="quiet"
[[ $kernel_name == 5.10 ]] && append+=" lsm=lockdown,capability,yama,apparmor,bpf"
printf '%s\n' "${bench_args[@]}" >"$work/bench.args"
oknek_vm_initramfs "$work/initramfs.gz" "$HERE/scenario/bench-init.sh" \
    "$work/bench:/opt/oknek/bench" "$work/bench.args:/opt/oknek/bench.args"
log="$work/console.log"
status=0
oknek_vm_qemu --kernel "$kernel" --initrd "$work/initramfs.gz" --log "$log" \
    --append "$append" --timeout "$timeout" || status=$?

tr -d '\r' <"$log" | grep -E '^OKNEK-(INFO|BENCH|RESULT)' || true
failed=0
grep -q '^OKNEK-DONE' "$log" || {
    echo "bench.sh: FAIL: the VM did not finish (console: $log)" >&2
    failed=1
}
grep -qE '^OKNEK-RESULT [^ ]+ FAIL' "$log" && failed=1
((status == 0)) || failed=1
if ((failed || keep)); then
    echo "bench.sh: console log and binaries in $work" >&2
else
    rm -rf "$work"
fi
exit "$failed"
