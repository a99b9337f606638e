#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# oknek's VM matrix: Debian kernels × enforcement paths, each cell one QEMU boot running the
# real static binaries against the scenario in vm-tests/scenario/. See vm-tests/README.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/kernels.sh
. "$HERE/lib/kernels.sh"
# shellcheck source=lib/build.sh
. "$HERE/lib/build.sh"

USAGE="\
Usage: vm-tests/run.sh [options]

Builds oknekd, oknek, the preload shim and the scenario's agent, then boots one QEMU VM per
cell of the matrix (kernel row × enforcement path) and prints the table. Exits 1 when any cell
fails, 2 on a usage or build error.

Options:
  --kernels LIST   rows to run, comma-separated [default: all]:
                     6.1, 6.12, 5.10-bpf (lsm=...,bpf), 5.10-nobpf (bpf not in lsm=),
                     5.10-ebpf-off (tiers.ebpf: off; stands in for a 4.x kernel)
  --paths LIST     columns to run: ebpf, preload [default: both]
  --keep           keep the console logs (they are kept anyway when a cell fails)
  --logs DIR       write the console logs to DIR [default: a new temporary directory]
  --no-build       use the binaries already in the cargo target dir
  --verbose        run oknekd with -v in the VMs (its debug log lands in the console log)
  --timeout SECS   hard limit per boot [default: 300]
  -h, --help       show this help

Environment: OKNEK_VM_CACHE (kernels, default /var/cache/oknek-vm), CARGO_TARGET_DIR,
OKNEK_VM_CONSOLE=1 (copy each VM's console to stderr while it runs)."

ALL_ROWS=(6.1 6.12 5.10-bpf 5.10-nobpf 5.10-ebpf-off)
ALL_PATHS=(ebpf preload)
LSM_WITH_BPF=lockdown,capability,yama,apparmor,bpf
LSM_WITHOUT_BPF=lockdown,capability,yama,apparmor

rows=("${ALL_ROWS[@]}")
paths=("${ALL_PATHS[@]}")
keep=0
logs=""
build=1
timeout=300
verbose=0

usage_error() {
    echo "run.sh: $1 (see --help)" >&2
    exit 2
}

in_list() { # in_list WORD ITEM...
    local word=$1 item
    shift
    for item in "$@"; do [[ $item == "$word" ]] && return 0; done
    return 1
}

while (($#)); do
    case "$1" in
        --kernels)
            (($# >= 2)) || usage_error "--kernels needs a list"
            IFS=, read -r -a rows <<<"$2"
            for row in "${rows[@]}"; do
                in_list "$row" "${ALL_ROWS[@]}" || usage_error "unknown kernel row '$row' (rows: ${ALL_ROWS[*]}; no 4.x kernel can be obtained from the Debian archive, 5.10-ebpf-off stands in for one)"
            done
            shift 2
            ;;
        --paths)
            (($# >= 2)) || usage_error "--paths needs a list"
            IFS=, read -r -a paths <<<"$2"
            for path in "${paths[@]}"; do
                in_list "$path" "${ALL_PATHS[@]}" || usage_error "unknown path '$path' (paths: ${ALL_PATHS[*]})"
            done
            shift 2
            ;;
        --keep) keep=1 && shift ;;
        --logs)
            (($# >= 2)) || usage_error "--logs needs a directory"
            logs=$2 && keep=1 && shift 2
            ;;
        --no-build) build=0 && shift ;;
        --verbose) verbose=1 && shift ;;
        --timeout)
            [[ ${2:-} =~ ^[0-9]+$ ]] || usage_error "--timeout needs a number of seconds"
            timeout=$2 && shift 2
            ;;
        -h | --help)
            echo "$USAGE"
            exit 0
            ;;
        *) usage_error "unknown option '$1'" ;;
    esac
done

# The kernel, its extra command line, tiers.ebpf, and what the row proves.
row_kernel() { echo "${1%%-*}"; }
row_append() {
    case "$1" in
        5.10-bpf) echo "lsm=$LSM_WITH_BPF" ;;
        5.10-nobpf | 5.10-ebpf-off) echo "lsm=$LSM_WITHOUT_BPF" ;;
        *) echo "" ;;
    esac
}
row_ebpf() { [[ $1 == 5.10-ebpf-off ]] && echo off || echo auto; }
row_note() {
    case "$1" in
        5.10-nobpf) echo "bpf not in lsm=: the doctor must not claim bpf_lsm" ;;
        5.10-ebpf-off) echo "tiers.ebpf: off; stands in for a 4.x kernel's capability set; no 4.x kernel can be obtained here" ;;
        *) echo "" ;;
    esac
}

# What the row must get on the ebpf path, per action: allowed mechanisms, '|'-separated. The
# scenario itself checks that the doctor's prediction matches what happened; this checks that
# the prediction is the strongest tier the row's kernel and config offer.
expected_mechanisms() { # expected_mechanisms ROW PATH ACTION
    local row=$1 path=$2 action=$3
    if [[ $path == preload ]]; then
        echo preload
        return
    fi
    case "$row:$action" in
        5.10-nobpf:connect) echo cgroup_sock_addr ;;
        5.10-nobpf:*) echo fanotify ;;
        5.10-ebpf-off:connect) echo none ;;
        5.10-ebpf-off:*) echo fanotify ;;
        *:connect) echo "bpf_lsm|cgroup_sock_addr" ;;
        *) echo bpf_lsm ;;
    esac
}

if [[ -z $logs ]]; then
    logs=$(mktemp -d "${TMPDIR:-/tmp}/oknek-vm-tests.XXXXXX")
fi
mkdir -p "$logs"
work="$logs/build"
mkdir -p "$work"

if ((build)); then
    oknek_vm_build_binaries || exit 2
else
    oknek_vm_binaries_present || {
        echo "run.sh: --no-build, but the binaries are missing; run without --no-build" >&2
        exit 2
    }
fi
oknek_vm_build_agents "$work" || {
    echo "run.sh: building vm-tests/scenario/agent.c failed" >&2
    exit 2
}
initramfs="$work/initramfs.gz"
oknek_vm_initramfs "$initramfs" "$HERE/scenario/init.sh" \
    "$(oknek_vm_oknekd):/usr/bin/oknekd" \
    "$(oknek_vm_oknek):/usr/bin/oknek" \
    "$(oknek_vm_preload):/opt/oknek/liboknek_preload.so" \
    "$work/agent-static:/opt/oknek/agent-static" \
    "$work/agent-dynamic:/opt/oknek/agent-dynamic" \
    "$HERE/scenario/rules:/etc/oknek/rules" || {
    echo "run.sh: building the initramfs failed" >&2
    exit 2
}
echo "run.sh: initramfs $(du -h "$initramfs" | cut -f1), logs in $logs" >&2

declare -A cell_status cell_tiers cell_reason
failures=0
skipped=0
no_ebpf_switch=0

# Judges one cell's console log; sets cell_status/cell_tiers/cell_reason for ROW:PATH.
judge_cell() {
    local row=$1 path=$2 log=$3 key="$1:$2"
    local reasons=() tiers=() allowed=() action line mechanism expected
    if grep -q '^OKNEK-INFO oknekd has no tiers.ebpf switch' "$log"; then
        no_ebpf_switch=1
    fi
    if ! grep -q '^OKNEK-DONE' "$log"; then
        reasons+=("the scenario did not finish (see the console log)")
    fi
    while read -r line; do
        reasons+=("${line#OKNEK-RESULT }")
    done < <(grep -E '^OKNEK-RESULT [^ ]+ FAIL' "$log" | tr -d '\r')
    for action in exec open connect; do
        mechanism=$(grep -E "^OKNEK-TIER $action " "$log" | tr -d '\r' | head -n 1 | awk '{ print $4 }')
        mechanism=${mechanism:-?}
        if [[ $mechanism == none ]]; then
            tiers+=("$action: none (doctor)")
        else
            tiers+=("$action: $mechanism")
        fi
        expected=$(expected_mechanisms "$row" "$path" "$action")
        IFS='|' read -r -a allowed <<<"$expected"
        if [[ $mechanism != "?" ]] && ! in_list "$mechanism" "${allowed[@]}"; then
            reasons+=("$action: expected ${expected//|/ or } on this row, the doctor predicts $mechanism")
        fi
    done
    if ((${#reasons[@]})); then
        cell_status[$key]=FAIL
        failures=$((failures + 1))
    else
        cell_status[$key]=PASS
    fi
    cell_tiers[$key]=$(IFS=';' && echo "${tiers[*]}")
    cell_reason[$key]=""
    ((${#reasons[@]} == 0)) || cell_reason[$key]=$(printf '%s; ' "${reasons[@]}")
}

for row in "${rows[@]}"; do
    kernel=""
    if ! kernel=$(oknek_vm_kernel "$(row_kernel "$row")" 2>"$logs/kernel-$row.err"); then
        for path in "${paths[@]}"; do
            cell_status[$row:$path]=SKIP
            cell_reason[$row:$path]="skipped: $(grep -m 1 '^oknek-vm:' "$logs/kernel-$row.err" | sed 's/^oknek-vm: //')"
            skipped=$((skipped + 1))
        done
        continue
    fi
    for path in "${paths[@]}"; do
        log="$logs/$row-$path.log"
        append="quiet oknek.path=$path oknek.ebpf=$(row_ebpf "$row") oknek.verbose=$verbose $(row_append "$row")"
        echo "run.sh: booting $row ($path path)" >&2
        started=$SECONDS
        qemu_status=0
        oknek_vm_qemu --kernel "$kernel" --initrd "$initramfs" --log "$log" \
            --append "$append" --timeout "$timeout" || qemu_status=$?
        judge_cell "$row" "$path" "$log"
        if ((qemu_status != 0)); then
            if [[ ${cell_status[$row:$path]} != FAIL ]]; then
                failures=$((failures + 1))
            fi
            cell_status[$row:$path]=FAIL
            cell_reason[$row:$path]+="QEMU exited with status $qemu_status; "
        fi
        echo "run.sh: $row $path: ${cell_status[$row:$path]} in $((SECONDS - started)) s" >&2
    done
done

# The table: one line per row, a cell per path, then the notes and reasons.
declare -A cell_text width
for path in "${paths[@]}"; do
    width[$path]=${#path}
    for row in "${rows[@]}"; do
        key="$row:$path"
        cell_tier_list=${cell_tiers[$key]:-}
        cell_text[$key]="${cell_status[$key]:-?}${cell_tier_list:+ (${cell_tier_list//;/, })}"
        ((${#cell_text[$key]} <= width[$path])) || width[$path]=${#cell_text[$key]}
    done
done
printf '\n%-15s' kernel
for path in "${paths[@]}"; do printf ' | %-*s' "${width[$path]}" "$path"; done
printf '\n'
for row in "${rows[@]}"; do
    printf '%-15s' "$row"
    for path in "${paths[@]}"; do printf ' | %-*s' "${width[$path]}" "${cell_text[$row:$path]}"; done
    printf '\n'
done
printf '\n'
for row in "${rows[@]}"; do
    note=$(row_note "$row")
    [[ -z $note ]] || printf '%s: %s\n' "$row" "$note"
    for path in "${paths[@]}"; do
        reason=${cell_reason[$row:$path]:-}
        [[ -z $reason ]] || printf '%s %s: %s\n' "$row" "$path" "${reason%; }"
    done
done
if ((no_ebpf_switch)); then
    echo "note: this oknekd has no tiers.ebpf switch (no eBPF tier): the scenario ran without it"
fi

if ((failures)) || ((keep)); then
    echo "console logs: $logs" >&2
else
    rm -rf "$logs"
fi
((skipped == 0)) || echo "run.sh: skipped: $skipped cell(s), see the reasons above" >&2
if ((failures)); then
    echo "run.sh: $failures cell(s) failed" >&2
    exit 1
fi
