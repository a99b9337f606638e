#!/bin/busybox sh
# /init of oknek's test VM: mounts what oknekd needs, runs the scenario once and powers off.
#
# The cell is chosen on the kernel command line:
#   oknek.path=ebpf|preload   static agent with no shim, or dynamic agent with LD_PRELOAD
#   oknek.ebpf=auto|off       tiers.ebpf in the daemon's config (ebpf path only)
#   oknek.verbose=1           run oknekd with -v (debug log on the console)
#
# Everything the host needs is printed on the serial console as lines starting with OKNEK-:
#   OKNEK-INFO key value...
#   OKNEK-TIER ACTION TIER MECHANISM          what `oknek doctor` predicts for the agent
#   OKNEK-RESULT CHECK PASS|FAIL DETAIL
#   OKNEK-DONE                                 the scenario ran to its end
# shellcheck shell=sh

# shellcheck source=SCRIPTDIR/boot.sh
. /etc/oknek-vm-boot.sh

read -r CMDLINE </proc/cmdline
arg() {
    for word in $CMDLINE; do
        case "$word" in "oknek.$1="*) echo "${word#*=}" && return ;; esac
    done
    echo "$2"
}
PATH_UNDER_TEST=$(arg path ebpf)
EBPF=$(arg ebpf auto)
VERBOSE=""
[ "$(arg verbose 0)" = 1 ] && VERBOSE=-v

SECRET=/srv/secret/key.pem
FORBIDDEN=/usr/local/bin/forbidden
PORT=7777
# A model provider (a declared local inference server): connects to it are model calls.
MODEL_PORT=7778
STATE=/var/lib/oknek
RUNTIME=/run/oknek
AGENT_UID=1000

result() { echo "OKNEK-RESULT $1 $2 $3"; }

echo "OKNEK-INFO kernel $(uname -r)"
echo "OKNEK-INFO lsm $(cat /sys/kernel/security/lsm 2>/dev/null || echo unreadable)"
echo "OKNEK-INFO cell path=$PATH_UNDER_TEST ebpf=$EBPF"

# The ebpf path is a static agent with nothing in its address space: only kernel tiers can stop
# it. seccomp is switched off because the agent is not launched with `oknek run`, so the doctor's
# prediction is about this agent. The preload path switches every kernel tier off so that the
# shim decides.
case "$PATH_UNDER_TEST" in
    ebpf)
        TIERS="{ ebpf: $EBPF, fanotify: auto, seccomp: off, preload: off }"
        AGENT="/opt/oknek/agent-static"
        ;;
    preload)
        TIERS="{ ebpf: off, fanotify: off, seccomp: off, preload: on }"
        AGENT="/opt/oknek/agent-dynamic"
        ;;
    *)
        result cell FAIL "unknown oknek.path=$PATH_UNDER_TEST"
        exit 1
        ;;
esac

mkdir -p /etc/oknek "$STATE" "$RUNTIME" /srv/secret
# Under software emulation on a shared machine a verdict round trip can take longer than the
# default 200 ms; the shim would then fail closed (EPERM without a decision or evidence).
cat >/etc/oknek/oknek.yaml <<EOF
oknek_config: 1
decision_timeout_ms: 5000
tiers: $TIERS
agents:
  - name: vm-agent
    uid: [$AGENT_UID]
providers:
  - { name: vm-provider, kind: local, api: openai, endpoints: ["127.0.0.1:$MODEL_PORT"] }
EOF
# An oknekd built before the eBPF tier existed rejects the tiers.ebpf key; such a build has no
# eBPF tier, which the doctor rows then show (and the row expectations fail on).
if ! oknekd --config /etc/oknek/oknek.yaml --rules-dir /etc/oknek/rules --check >/tmp/check.txt 2>&1; then
    if grep -q 'ebpf' /tmp/check.txt; then
        echo "OKNEK-INFO oknekd has no tiers.ebpf switch: configured without it"
        sed -i 's/ebpf: [a-z]*, //' /etc/oknek/oknek.yaml
    fi
    if ! oknekd --config /etc/oknek/oknek.yaml --rules-dir /etc/oknek/rules --check >/tmp/check.txt 2>&1; then
        result config FAIL "$(tr '\n' ' ' </tmp/check.txt)"
        exit 1
    fi
fi
sed 's/^/OKNEK-CONFIG /' /etc/oknek/oknek.yaml

echo "-----BEGIN PRIVATE KEY----- test material" >"$SECRET"
chmod 0755 /srv/secret
chmod 0644 "$SECRET"
printf '#!/bin/sh\nexit 77\n' >"$FORBIDDEN"
chmod 0755 "$FORBIDDEN"

/opt/oknek/agent-static listen "$PORT" &
/opt/oknek/agent-static listen "$MODEL_PORT" &

# shellcheck disable=SC2086 # VERBOSE is empty or one word
/usr/bin/oknekd --config /etc/oknek/oknek.yaml --rules-dir /etc/oknek/rules \
    --state-dir "$STATE" --runtime-dir "$RUNTIME" $VERBOSE >/tmp/oknekd.log 2>&1 &
DAEMON=$!

show_daemon_log() {
    sed 's/^/OKNEKD-LOG /' /tmp/oknekd.log
}

ready=""
for _ in $(seq 1 120); do
    if oknek --runtime-dir "$RUNTIME" status >/tmp/status.txt 2>&1; then
        ready=yes
        break
    fi
    kill -0 "$DAEMON" 2>/dev/null || break
    sleep 0.5
done
if [ -z "$ready" ]; then
    result daemon FAIL "oknekd did not become ready"
    show_daemon_log
    exit 1
fi
result daemon PASS "oknekd answers on $RUNTIME/control.sock"

# The doctor's prediction per action: mechanism "none" means nothing will stop it.
oknek --runtime-dir "$RUNTIME" doctor --json >/tmp/doctor.json 2>&1
oknek --runtime-dir "$RUNTIME" doctor 2>&1 | sed 's/^/OKNEK-DOCTOR /'
field() { # field OBJECT KEY
    echo "$1" | sed -n "s/.*\"$2\": *\"\([^\"]*\)\".*/\1/p"
}
tr -d '\n' </tmp/doctor.json | tr '}' '\n' | grep '"action"' >/tmp/doctor.rows
for action in exec open connect; do
    row=$(grep "\"action\": *\"$action\"" /tmp/doctor.rows | head -n 1)
    mechanism=$(field "$row" mechanism)
    tier=$(field "$row" tier | tr ' ' '_')
    if [ -z "$mechanism" ]; then
        # Doctor rows without a mechanism name: the tier names it.
        case "$tier" in
            seccomp*) mechanism=seccomp ;;
            ?*) mechanism=$tier ;;
        esac
    fi
    if [ -z "$mechanism" ]; then
        result "doctor-$action" FAIL "no row for $action in oknek doctor --json"
        mechanism=missing
    fi
    echo "OKNEK-TIER $action ${tier:-?} $mechanism"
    echo "$mechanism" >"/tmp/predicted.$action"
done

run_agent() { # run_agent OUTPUT [--as UID]; connects to TRY_PORT (default PORT)
    out=$1
    shift
    if [ "$PATH_UNDER_TEST" = preload ]; then
        LD_PRELOAD=/opt/oknek/liboknek_preload.so "$AGENT" try "$@" "$SECRET" "$FORBIDDEN" "${TRY_PORT:-$PORT}" >"$out" 2>&1
    else
        "$AGENT" try "$@" "$SECRET" "$FORBIDDEN" "${TRY_PORT:-$PORT}" >"$out" 2>&1
    fi
    sed 's/^/OKNEK-AGENT /' "$out"
}
run_agent /tmp/agent.out --as "$AGENT_UID"
run_agent /tmp/root.out
# Two model calls of the agent: the quota allows one.
TRY_PORT=$MODEL_PORT run_agent /tmp/model1.out --as "$AGENT_UID"
TRY_PORT=$MODEL_PORT run_agent /tmp/model2.out --as "$AGENT_UID"

# What the agent got for ACTION in OUTPUT: "blocked" (EPERM), "allowed" (it happened), or the
# line itself when it is neither.
outcome() {
    line=$(grep "^AGENT $2 " "$1" | head -n 1)
    case "$line" in
        "AGENT $2 errno=1 "*) echo blocked ;;
        "AGENT open ok" | "AGENT connect ok" | "AGENT exec ran exit=77") echo allowed ;;
        "") echo "no-output" ;;
        *) echo "${line#AGENT "$2" }" | tr ' ' '_' ;;
    esac
}

for action in exec open connect; do
    predicted=$(cat "/tmp/predicted.$action")
    got=$(outcome /tmp/agent.out "$action")
    if [ "$predicted" = none ]; then
        # Nothing claims to stop it: the check is that indeed nothing did.
        [ "$got" = allowed ] && verdict=PASS || verdict=FAIL
        result "agent-$action" "$verdict" "doctor=none expected=allowed got=$got"
    else
        [ "$got" = blocked ] && verdict=PASS || verdict=FAIL
        result "agent-$action" "$verdict" "doctor=$predicted expected=EPERM got=$got"
    fi
    got=$(outcome /tmp/root.out "$action")
    [ "$got" = allowed ] && verdict=PASS || verdict=FAIL
    result "root-$action" "$verdict" "expected=allowed got=$got"
done

# The model-call quota is refused where connects are: by the tier the doctor names for connect.
predicted=$(cat /tmp/predicted.connect)
first=$(outcome /tmp/model1.out connect)
second=$(outcome /tmp/model2.out connect)
if [ "$predicted" = none ]; then
    [ "$first" = allowed ] && [ "$second" = allowed ] && verdict=PASS || verdict=FAIL
    result model-quota "$verdict" "doctor=none expected=allowed,allowed got=$first,$second"
else
    [ "$first" = allowed ] && [ "$second" = blocked ] && verdict=PASS || verdict=FAIL
    result model-quota "$verdict" "doctor=$predicted expected=allowed,EPERM got=$first,$second"
fi

# Stop the daemon so that every decision is flushed before the evidence is read.
kill -TERM "$DAEMON"
for _ in $(seq 1 60); do
    kill -0 "$DAEMON" 2>/dev/null || break
    sleep 0.5
done
if kill -0 "$DAEMON" 2>/dev/null; then
    result daemon-stop FAIL "oknekd still running 30 s after SIGTERM"
else
    wait "$DAEMON"
    status=$?
    [ "$status" = 0 ] && verdict=PASS || verdict=FAIL
    result daemon-stop "$verdict" "exit status $status"
fi

for action in exec open connect; do
    predicted=$(cat "/tmp/predicted.$action")
    rule="vm.$action"
    if ! oknek events --state-dir "$STATE" --rule "$rule" --verdict block --json \
        >"/tmp/events.$action" 2>"/tmp/events.$action.err"; then
        result "evidence-$action" FAIL "oknek events failed: $(tr '\n' ' ' <"/tmp/events.$action.err")"
        continue
    fi
    sed 's/^/OKNEK-EVIDENCE /' "/tmp/events.$action"
    count=$(grep -c '"rule' "/tmp/events.$action")
    mechanisms=$(grep -o '"mechanism": *"[^"]*"' "/tmp/events.$action" |
        sed 's/.*"\([^"]*\)"$/\1/' | sort -u | tr '\n' ',' | sed 's/,$//')
    if [ "$predicted" = none ]; then
        [ "$count" = 0 ] && verdict=PASS || verdict=FAIL
        result "evidence-$action" "$verdict" "doctor=none expected=no-block-bundle got=$count(${mechanisms:-})"
    else
        [ "$count" -ge 1 ] && [ "$mechanisms" = "$predicted" ] && verdict=PASS || verdict=FAIL
        result "evidence-$action" "$verdict" "rule=$rule expected=$predicted got=${mechanisms:-no-bundle}"
    fi
done

# Each model call is a bundle: the allowed one, and the refused one where a tier refuses.
oknek events --state-dir "$STATE" --json >/tmp/events.all 2>&1
allowed=$(grep '"rule": *"oknek.model_call"' /tmp/events.all | grep -c 'vm-provider')
refused=$(grep '"rule": *"vm.model.quota"' /tmp/events.all | grep -o '"mechanism": *"[^"]*"' |
    sed 's/.*"\([^"]*\)"$/\1/' | sort -u | tr '\n' ',' | sed 's/,$//')
if [ "$predicted" = none ]; then
    # Nothing sees connects here: no refusal may be claimed.
    [ -z "$refused" ] && verdict=PASS || verdict=FAIL
    result evidence-model "$verdict" "doctor=none expected=no-refusal got=$allowed allow, refused by ${refused:-none}"
else
    [ "$allowed" -ge 1 ] && [ "$refused" = "$predicted" ] && verdict=PASS || verdict=FAIL
    result evidence-model "$verdict" "expected=allow+$predicted got=$allowed allow, refused by ${refused:-none}"
fi

if oknek verify --state-dir "$STATE" >/tmp/verify.txt 2>&1; then
    result verify PASS "$(tail -n 1 /tmp/verify.txt)"
else
    result verify FAIL "$(tail -n 1 /tmp/verify.txt)"
fi

show_daemon_log
