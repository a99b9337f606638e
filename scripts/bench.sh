#!/usr/bin/env bash
# Every benchmark of the workspace, and fapolicyd beside oknekd's tiers as the reference.
#
#   1. builds the release binaries the tier bench drives (oknekd, oknek, liboknek_preload.so);
#   2. fapolicyd (Debian package, installed with apt if missing): runs it in the foreground on a
#      private configuration that allows everything but decides every open, and times the same
#      open()+close() loop as uid 65534 with the same timing program as the tier bench;
#   3. cargo bench: oknekd tiers (real daemon: fanotify, oknek run, preload shim), the fanotify
#      and seccomp tier benches, engine, evidence, preload shim, the eBPF probes (tracepoint and
#      cgroup tiers here, the BPF LSM tier inside a 6.1 VM through vm-tests/bench.sh);
#   4. prints one summary table: fapolicyd and each oknekd tier side by side.
#
# Root for the kernel parts (fanotify, uid switches); as a user those parts report why they are
# skipped. Nothing on the host is changed besides installing fapolicyd: it runs in a private
# mount namespace whose /etc/fapolicyd, /var/lib/fapolicyd, /run and /var/log are temporary
# directories, and it is stopped when the script ends (exit, error, Ctrl-C). Its fanotify marks
# are mount marks (allow_filesystem_mark = 0) on that namespace's copies of the mounts, so only
# processes inside the namespace — the timing program — wait for it, even if it outlived a
# script killed with SIGKILL.
#
# Environment: OKNEK_BENCH_N (timed opens per case, default 30000), OKNEK_BENCH_ROUNDS (default
# 5), CARGO_TARGET_DIR (default ./target). `--quick`: 2 rounds of 5000 opens, shorter benches.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=
case "${1:-}" in
    --quick) quick=1 ;;
    "") ;;
    *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
esac
if [ -n "$quick" ]; then
    n=${OKNEK_BENCH_N:-5000}
    rounds=${OKNEK_BENCH_ROUNDS:-2}
else
    n=${OKNEK_BENCH_N:-30000}
    rounds=${OKNEK_BENCH_ROUNDS:-5}
fi
export OKNEK_BENCH_N=$n OKNEK_BENCH_ROUNDS=$rounds
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
agent_uid=65534

work=$(mktemp -d /tmp/oknek-bench.XXXXXX)
chmod 755 "$work"
fapo_pid=
stop_fapolicyd() {
    [ -n "$fapo_pid" ] || return 0
    kill -TERM "$fapo_pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$fapo_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$fapo_pid" 2>/dev/null; then
        kill -KILL "$fapo_pid" 2>/dev/null || true
    fi
    wait "$fapo_pid" 2>/dev/null || true
    fapo_pid=
}
cleanup() {
    stop_fapolicyd
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# median FILE: the middle value of the numbers in FILE (one per line).
median() { sort -g "$1" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# field NAME LINE: the value of NAME=… in the timing program's output.
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<< " $2"; }

# one_loop FILE PREFIX CMD…: runs the timing program through CMD…, appends its p50/p99 (µs) to
# $work/PREFIX.p50 and .p99.
one_loop() {
    local file=$1 prefix=$2 out
    shift 2
    out=$("$@" "$opener" "$file" "$n" "$((n / 10))")
    awk -v v="$(field p50 "$out")" 'BEGIN { printf "%.3f\n", v / 1000 }' >> "$work/$prefix.p50"
    awk -v v="$(field p99 "$out")" 'BEGIN { printf "%.3f\n", v / 1000 }' >> "$work/$prefix.p99"
}

as_agent() { setpriv --reuid="$agent_uid" --regid="$agent_uid" --clear-groups "$@"; }

# ---------------------------------------------------------------------------------------------
say "building the release binaries (oknekd, oknek, liboknek_preload.so) in $CARGO_TARGET_DIR"
cargo build --release -p oknekd -p oknek -p oknek-preload

say "compiling the timing program (the tier bench's own)"
opener=$(cargo bench -p oknekd --bench tiers -- --write-opener "$work/bin" | tail -n 1)
[ -x "$opener" ] || { echo "no timing program at '$opener'" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# fapolicyd. fapolicyd_why says why it could not be measured; the rest runs regardless.
fapolicyd_why=
fapolicyd_note=
fapolicyd_version=
fapolicyd_counts=
files=$work/files
mkdir -p "$files"
chmod 755 "$files"
printf 'bench\n' > "$files/plain.txt"
printf 'bench\n' > "$files/named.txt"
chmod 644 "$files"/*.txt

fapolicyd_setup() {
    if [ "$(id -u)" -ne 0 ]; then
        fapolicyd_why="needs root (fanotify permission events, a private mount namespace)"
        return 1
    fi
    if ! command -v fapolicyd > /dev/null; then
        say "installing fapolicyd (Debian package)"
        if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y fapolicyd; } \
            > "$work/apt.log" 2>&1; then
            fapolicyd_why="apt-get install fapolicyd failed: $(tail -n 3 "$work/apt.log" | tr '\n' ' ')"
            return 1
        fi
    fi
    fapolicyd_version=$(dpkg-query -W -f '${Version}' fapolicyd 2> /dev/null || echo unknown)
    local running
    if running=$(pgrep -x fapolicyd); then
        fapolicyd_why="a fapolicyd is already running (pid $(echo "$running" | tr '\n' ' ')): not measuring beside it"
        return 1
    fi
    for d in /etc/fapolicyd /var/lib/fapolicyd; do
        if [ ! -d "$d" ]; then
            fapolicyd_why="$d is missing (it is the bind-mount point of the private configuration)"
            return 1
        fi
    done
    if ! getent passwd fapolicyd > /dev/null; then
        fapolicyd_why="no 'fapolicyd' user (the package's postinst creates it)"
        return 1
    fi
    for tool in unshare nsenter setpriv; do
        if ! command -v "$tool" > /dev/null; then
            fapolicyd_why="$tool (util-linux) is missing"
            return 1
        fi
    done

    # The private configuration: 1.1.7's shipped fapolicyd.conf with trust = file (Debian has no
    # rpm database), and rules that allow everything — the first names one file, so fapolicyd
    # matches a rule naming a path, like an oknek rule; every open is still decided by the rules.
    local f=$work/fapolicyd
    mkdir -p "$f/etc/rules.d" "$f/etc/trust.d" "$f/lib" "$f/run/fapolicyd" "$f/log"
    cat > "$f/etc/fapolicyd.conf" << 'EOF'
permissive = 0
nice_val = 14
q_size = 640
uid = fapolicyd
gid = fapolicyd
do_stat_report = 1
detailed_report = 1
db_max_size = 50
subj_cache_size = 1549
obj_cache_size = 8191
watch_fs = ext2,ext3,ext4,tmpfs,xfs,vfat,iso9660,btrfs
trust = file
integrity = none
syslog_format = rule,dec,perm,auid,pid,exe,:,path,ftype,trust
rpm_sha256_only = 0
allow_filesystem_mark = 0
EOF
    cat > "$f/etc/compiled.rules" << EOF
allow perm=open uid=$agent_uid : path=$files/named.txt
allow perm=any all : all
EOF
    cp "$f/etc/compiled.rules" "$f/etc/rules.d/10-bench.rules"
    printf '# no trusted files: the bench allows by rule\n' > "$f/etc/fapolicyd.trust"
    chown -R root:fapolicyd "$f/etc" "$f/run"
    chmod 750 "$f/etc" "$f/etc/rules.d" "$f/etc/trust.d"
    chmod 640 "$f/etc/fapolicyd.conf" "$f/etc/compiled.rules" "$f/etc/rules.d/10-bench.rules" \
        "$f/etc/fapolicyd.trust"
    chmod 770 "$f/run/fapolicyd"
    chmod 755 "$f/run"
    chown fapolicyd:fapolicyd "$f/lib"

    if fapolicyd_start; then
        return 0
    fi
    # fapolicyd drops to its own uid keeping CAP_SYS_RESOURCE among others; where the bounding
    # set lacks it (containers; this project's development machines), the drop fails. Run it
    # as root instead: same code path per event, only the credentials differ.
    if grep -q 'Cannot change to uid' "$work/fapolicyd.log"; then
        echo "fapolicyd cannot drop to its uid here ($(grep -m1 'Cannot change' "$work/fapolicyd.log")); running it as root"
        sed -i -e 's/^uid = .*/uid = root/' -e 's/^gid = .*/gid = root/' "$f/etc/fapolicyd.conf"
        fapolicyd_note="runs as root: no CAP_SYS_RESOURCE for its privilege drop"
        fapolicyd_start && return 0
    fi
    fapolicyd_why="fapolicyd exited at start: $(tail -n 5 "$work/fapolicyd.log" | tr '\n' ' ')"
    return 1
}

# fapolicyd_start: starts fapolicyd on the private configuration; 0 once it listens.
fapolicyd_start() {
    local f=$work/fapolicyd
    say "starting fapolicyd $fapolicyd_version in a private mount namespace (--debug-deny: foreground)"
    # shellcheck disable=SC2016 # expanded by the inner shell
    unshare --mount --propagation private -- bash -c '
        set -e
        mount --bind "$1/etc" /etc/fapolicyd
        mount --bind "$1/lib" /var/lib/fapolicyd
        mount --bind "$1/run" /run
        mount --bind "$1/log" /var/log
        exec fapolicyd --debug-deny
    ' fapolicyd-bench "$f" > "$work/fapolicyd.log" 2>&1 &
    fapo_pid=$!
    for _ in $(seq 1200); do
        grep -q 'Starting to listen for events' "$work/fapolicyd.log" && return 0
        if ! kill -0 "$fapo_pid" 2> /dev/null; then
            wait "$fapo_pid" 2> /dev/null || true
            fapo_pid=
            return 1
        fi
        sleep 0.1
    done
    echo "fapolicyd did not start listening within 120 s" >> "$work/fapolicyd.log"
    stop_fapolicyd
    return 1
}

in_fapolicyd() { nsenter --target "$fapo_pid" --mount -- "$@"; }

if fapolicyd_setup; then
    say "fapolicyd: $rounds interleaved rounds of $n opens per case, as uid $agent_uid"
    for r in $(seq "$rounds"); do
        # Bare runs in the host's mount namespace, where fapolicyd marked nothing.
        one_loop "$files/plain.txt" bare as_agent
        one_loop "$files/plain.txt" fapo-plain in_fapolicyd setpriv --reuid="$agent_uid" \
            --regid="$agent_uid" --clear-groups
        one_loop "$files/named.txt" fapo-named in_fapolicyd setpriv --reuid="$agent_uid" \
            --regid="$agent_uid" --clear-groups
        echo "round $r/$rounds done"
    done
    stop_fapolicyd
    # fapolicyd's own report (do_stat_report) shows that it decided the opens.
    fapolicyd_counts=$(grep -hiE '^(allowed|denied|permission|inter-thread|object|subject)' \
        "$work/fapolicyd/log/fapolicyd-access.log" 2> /dev/null | tr '\n' ';' || true)
    echo "fapolicyd's report: ${fapolicyd_counts:-none written}"
else
    echo "fapolicyd not measured: $fapolicyd_why"
fi

# ---------------------------------------------------------------------------------------------
declare -a bench_rows=()
# run_bench NAME CARGO-ARGS…: runs one cargo bench, shows and keeps its output.
run_bench() {
    local name=$1 status=0 t0 t1
    shift
    say "cargo bench $*"
    t0=$(date +%s)
    cargo bench "$@" 2>&1 | tee "$work/$name.log" || status=$?
    t1=$(date +%s)
    if [ "$status" -eq 0 ]; then
        if grep -q '^skipped' "$work/$name.log"; then
            bench_rows+=("$name|skipped: $(grep -m1 '^skipped' "$work/$name.log" | cut -c10-)|$((t1 - t0)) s")
        else
            bench_rows+=("$name|ok|$((t1 - t0)) s")
        fi
    else
        bench_rows+=("$name|FAILED (exit $status), see its output above|$((t1 - t0)) s")
    fi
}

quick_arg=()
[ -n "$quick" ] && quick_arg=(--quick)
run_bench tiers -p oknekd --bench tiers -- "${quick_arg[@]}"
run_bench fanotify -p oknekd --bench fanotify
run_bench seccomp -p oknekd --bench seccomp
run_bench engine -p oknek-engine
run_bench evidence -p oknek-evidence
run_bench preload -p oknek-preload -- "${quick_arg[@]}"
run_bench ebpf -p oknek-bpf --bench open_cost -- "${quick_arg[@]}"
# The BPF LSM hooks cannot load on this kernel: the same measurements inside a Debian 6.1 VM.
say "BPF LSM tier: vm-tests/bench.sh (open_cost inside a 6.1 VM under QEMU)"
t0=$(date +%s)
if vm-tests/bench.sh -- "${quick_arg[@]}" 2>&1 | tee "$work/ebpf-lsm.log"; then
    bench_rows+=("ebpf-lsm|ok (6.1 VM, software emulation: compare ratios, not ns)|$(($(date +%s) - t0)) s")
else
    bench_rows+=("ebpf-lsm|FAILED, see its output above|$(($(date +%s) - t0)) s")
fi

# ---------------------------------------------------------------------------------------------
say "summary"
echo "open()+close() as uid $agent_uid: p50/p99 in µs, medians of interleaved rounds; + and × against"
echo "a bare open measured in the same rounds (oknekd stopped; outside fapolicyd's namespace)."
echo
fmt='%-10s %-40s %8s %8s %8s %8s %7s %7s  %s\n'
# shellcheck disable=SC2059 # the format is ours
printf "$fmt" mechanism case "p50" "p99" "+p50" "+p99" "p50 ×" "p99 ×" verdict
if [ -s "$work/fapo-plain.p50" ]; then
    b50=$(median "$work/bare.p50")
    b99=$(median "$work/bare.p99")
    for c in plain named; do
        p50=$(median "$work/fapo-$c.p50")
        p99=$(median "$work/fapo-$c.p99")
        label="every open (plain file)"
        [ "$c" = named ] && label="file a rule names (allowed)"
        awk -v f="$fmt" -v l="$label" -v p50="$p50" -v p99="$p99" -v b50="$b50" -v b99="$b99" \
            'BEGIN { printf f, "fapolicyd", l, sprintf("%.2f", p50), sprintf("%.2f", p99),
                     sprintf("%.2f", p50 - b50), sprintf("%.2f", p99 - b99),
                     sprintf("%.2f", p50 / b50), sprintf("%.2f", p99 / b99), "reference" }'
    done
    # shellcheck disable=SC2059
    printf "$fmt" fapolicyd "bare open, same rounds" "$(printf %.2f "$b50")" \
        "$(printf %.2f "$b99")" - - 1.00 1.00 "fapolicyd $fapolicyd_version${fapolicyd_note:+ ($fapolicyd_note)}"
else
    # shellcheck disable=SC2059
    printf "$fmt" fapolicyd "not measured" - - - - - - "$fapolicyd_why"
fi
if grep -q '^SUMMARY' "$work/tiers.log" 2> /dev/null; then
    grep '^SUMMARY' "$work/tiers.log" | while IFS=$'\t' read -r _ tier label p50 p99 a50 a99 x50 x99 verdict; do
        # shellcheck disable=SC2059
        printf "$fmt" "$tier" "$label" "$p50" "$p99" "$a50" "$a99" "$x50" "$x99" "$verdict"
    done
else
    echo "oknekd tiers: no figures (see the tiers bench output above)"
fi
echo
echo "goals: a protected-but-allowed open adds p50 ≤ 20 µs and p99 ≤ 200 µs; an unprotected"
echo "open costs nothing measurable (no mark, no round trip). The tier bench's table above has"
echo "the extra rows (warn bundle, non-agent) and the daemon's CPU time per decision."
echo
printf '%-10s %-60s %s\n' bench result time
for row in "${bench_rows[@]}"; do
    IFS='|' read -r name result took <<< "$row"
    printf '%-10s %-60s %s\n' "$name" "$result" "$took"
done
