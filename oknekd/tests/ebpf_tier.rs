//! The eBPF tier through the real daemon on the running kernel: the cgroup sock_addr programs
//! refuse an agent's connect with EPERM (this machine's kernel has no BPF LSM; the LSM hooks are
//! proven in the VM matrix, vm-tests/), observations of every kind arrive as verified bundles,
//! and the pinned programs keep refusing while the daemon is killed and restarted.
//!
//! Needs root (BPF, switching to uid 65534) plus bash and python3 for the agent's actions; as an
//! ordinary user every test prints "skipped: needs root …".

mod common;

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A pin directory of this test process, removed (with everything pinned) on drop.
struct Pins(String);

impl Pins {
    fn new(tag: &str) -> Pins {
        let dir = format!("/sys/fs/bpf/oknek-test-{tag}-{}", std::process::id());
        uninstall(&dir);
        Pins(dir)
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        uninstall(&self.0);
    }
}

fn uninstall(dir: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oknekd"));
    cmd.args(["--uninstall-probes", "--bpf-pin-dir", dir]);
    run(&mut cmd, Duration::from_secs(30))
}

/// A loopback TCP listener that accepts (and drops) connections in the background.
fn listener() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in l.incoming().flatten() {
            let _ = conn.read(&mut [0u8; 1]);
        }
    });
    port
}

/// bash's /dev/tcp to 127.0.0.1: the connect's outcome as bash reports it.
fn connect_as(uid: u32, port: u16) -> Output {
    connect_to(uid, "127.0.0.1", port)
}

fn assert_connect_refused(what: &str, o: &Output) {
    let t = text(o);
    assert!(
        !o.status.success() && t.contains(EPERM_TEXT) && !t.contains("connected"),
        "{what}: the connect must fail with EPERM, got: {t}"
    );
}

fn assert_connected(what: &str, o: &Output) {
    let t = text(o);
    assert!(
        o.status.success() && t.contains("connected"),
        "{what}: the connect must succeed, got: {t}"
    );
}

/// Waits until bundles of `rule` with `verdict` appear (the daemon records from the ring
/// buffer as it drains it).
fn wait_for(d: &Daemon, rule: &str, verdict: &str, at_least: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = d.events();
        let found: Vec<Value> = bundles(&events, rule, verdict)
            .into_iter()
            .cloned()
            .collect();
        if found.len() >= at_least {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no {verdict} bundle of {rule} (wanted {at_least}, have {}):\n{}",
            found.len(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A rule directory with only `yaml`: the shipped pack would (rightly) hold an agent that runs
/// `bash -c 'exec 3<>/dev/tcp/…'` or a python one-liner with sockets as a reverse shell.
fn only_rules(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("90-test.yaml"), yaml).unwrap();
    dir
}

fn rules_blocking(port: u16) -> tempfile::TempDir {
    only_rules(&format!(
        "oknek_rules: 1\nrules:\n  - id: T.ebpf.connect\n    title: Test destination refused in the kernel\n    kind: [connect]\n    match: {{ addr: 127.0.0.1, port: {port} }}\n    action: block\n"
    ))
}

fn ebpf_config(pins: &Pins) -> String {
    format!(
        "paths: {{ bpf_pin_dir: {} }}\ntiers: {{ ebpf: on }}\n{NOBODY_AGENT}",
        pins.0
    )
}

#[test]
fn cgroup_tier_refuses_an_agent_connect_and_survives_a_restart() {
    if !root_or_skip() {
        return;
    }
    let _serial = serial();
    let pins = Pins::new("restart");
    let blocked = listener();
    let rules = rules_blocking(blocked);
    let mut d = Daemon::start(rules.path(), &ebpf_config(&pins));
    let status = d.assert_serving(Duration::from_secs(5));
    assert_eq!(
        status["ebpf"]["enforcing"]["connect"], "cgroup_sock_addr",
        "this kernel's connect enforcer: {status}"
    );

    assert_connect_refused("agent", &connect_as(AGENT_UID, blocked));
    assert_connected("root (not an agent)", &connect_as(0, blocked));
    assert_connected(
        "another user (not an agent)",
        &connect_as(OTHER_UID, blocked),
    );
    let first = wait_for(&d, "T.ebpf.connect", "block", 1);
    assert_eq!(mechanism(&first[0]), "cgroup_sock_addr");
    assert_eq!(uid_of(&first[0]), Some(u64::from(AGENT_UID)));

    // A crash: nothing in userspace for a moment, the kernel keeps refusing.
    d.kill9();
    assert_connect_refused(
        "agent while oknekd is down",
        &connect_as(AGENT_UID, blocked),
    );
    assert_connected("root while oknekd is down", &connect_as(0, blocked));

    d.spawn();
    let status = d.assert_serving(Duration::from_secs(5));
    assert_eq!(status["ebpf"]["start"], "adopted", "{status}");
    // The refusal made while the daemon was down waited in the ring buffer.
    wait_for(&d, "T.ebpf.connect", "block", 2);
    assert_connect_refused("agent after restart", &connect_as(AGENT_UID, blocked));
    wait_for(&d, "T.ebpf.connect", "block", 3);
    d.assert_verifies();

    // A clean stop leaves the probes enforcing too; only --uninstall-probes ends it.
    d.stop();
    assert_connect_refused("agent after SIGTERM", &connect_as(AGENT_UID, blocked));
    let o = uninstall(&pins.0);
    assert!(o.status.success(), "uninstall: {}", text(&o));
    assert!(!Path::new(&pins.0).exists(), "{} must be gone", pins.0);
    assert_connected("agent after uninstall", &connect_as(AGENT_UID, blocked));
}

#[test]
fn observations_of_every_kind_become_verified_bundles() {
    if !root_or_skip() {
        return;
    }
    let _serial = serial();
    let pins = Pins::new("observe");
    let work = scratch("ebpf-observe", true);
    let file = work.path().join("observed.txt");
    std::fs::write(&file, "x").unwrap();
    give_to_agent(&file);
    let script = work.path().join("observed.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    set_mode(&script, 0o755);
    let tcp = listener();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let f = file.to_str().unwrap();
    let sc = script.to_str().unwrap();
    let rules = only_rules(&format!(
        r#"oknek_rules: 1
rules:
  - id: T.obs.exec
    title: observed exec
    kind: exec
    match: {{ path: "{sc}" }}
    action: warn
  - id: T.obs.open
    title: observed open
    kind: open
    match: {{ path: "{f}" }}
    action: warn
  - id: T.obs.connect
    title: observed connect
    kind: connect
    match: {{ addr: 127.0.0.1, port: {tcp} }}
    action: warn
  - id: T.obs.send
    title: observed send
    kind: send
    match: {{ addr: 127.0.0.1, port: {udp_port} }}
    action: warn
  - id: T.obs.watch
    title: observed watch
    kind: watch
    match: {{ path: "{f}" }}
    action: warn
"#
    ));
    let mut d = Daemon::start(rules.path(), &ebpf_config(&pins));
    let py = format!(
        r#"
import ctypes, socket, subprocess
open("{f}").read()
subprocess.run(["{sc}", "oknek-observed"], check=True)
s = socket.create_connection(("127.0.0.1", {tcp})); s.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b"12345", ("127.0.0.1", {udp_port}))
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init()
assert libc.inotify_add_watch(fd, b"{f}", 2) >= 0, ctypes.get_errno()
print("done")
"#
    );
    let o = run(
        as_user(
            AGENT_UID,
            AGENT_GID,
            "/usr/bin/python3",
            &[os("-c"), os(&py)],
        )
        .current_dir(work.path()),
        CHILD_TIMEOUT,
    );
    assert!(o.status.success(), "the agent's actions: {}", text(&o));

    for (rule, mech) in [
        ("T.obs.exec", "tracepoint"),
        ("T.obs.open", "tracepoint"),
        ("T.obs.connect", "cgroup_sock_addr"),
        ("T.obs.send", "tracepoint"),
        ("T.obs.watch", "tracepoint"),
    ] {
        let found = wait_for(&d, rule, "warn", 1);
        let agent_ones: Vec<&Value> = found
            .iter()
            .filter(|e| uid_of(e) == Some(u64::from(AGENT_UID)))
            .collect();
        assert!(!agent_ones.is_empty(), "{rule}: no bundle from the agent");
        assert_eq!(mechanism(agent_ones[0]), mech, "{rule}: {}", agent_ones[0]);
    }
    let sent = wait_for(&d, "T.obs.send", "warn", 1);
    assert_eq!(sent[0]["bundle"]["capture"]["bytes"], 5, "{}", sent[0]);

    // Root doing the same is no agent: nothing new is recorded.
    let before = d.events().len();
    let o = run(
        Command::new("/usr/bin/python3").args(["-c", &py]),
        CHILD_TIMEOUT,
    );
    assert!(o.status.success(), "root's actions: {}", text(&o));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        d.events().len(),
        before,
        "non-agent actions must not be recorded"
    );

    d.assert_verifies();
    d.stop();
}

/// The model-call bundles of `rule` with `verdict` for `provider`, each naming the caller.
fn model_calls<'a>(
    events: &'a [Value],
    rule: &str,
    verdict: &str,
    provider: &str,
) -> Vec<&'a Value> {
    bundles(events, rule, verdict)
        .into_iter()
        .filter(|e| {
            e["bundle"]["kind"] == "model_call" && e["bundle"]["capture"]["provider"] == provider
        })
        .inspect(|e| {
            assert_eq!(uid_of(e), Some(u64::from(AGENT_UID)), "caller: {e}");
            assert_eq!(e["bundle"]["agent"], "nobody-agent", "agent: {e}");
        })
        .collect()
}

#[test]
fn model_calls_at_connect_are_metered_and_refused_in_the_kernel() {
    if !root_or_skip() {
        return;
    }
    let _serial = serial();
    let pins = Pins::new("models");
    let local = listener();
    let cloud = listener();
    let unapproved = listener();
    let fixtures = scratch("ebpf-models", false);
    let hosts = fixtures.path().join("hosts");
    let resolv = fixtures.path().join("resolv.conf");
    // Tests have no DNS: the cloud provider's name comes from a hosts-file fixture.
    std::fs::write(&hosts, "127.0.0.1 api.openai.test\n").unwrap();
    std::fs::write(&resolv, "# no nameservers in tests\n").unwrap();
    let rules = only_rules(
        "oknek_rules: 1\nrules:\n\
         \x20 - id: T.provider\n    title: Unapproved provider\n    kind: model_call\n\
         \x20   match: { not: { provider: { exact: [ollama, openai] } } }\n    action: block\n\
         \x20 - id: T.quota\n    title: Model call quota exceeded\n    kind: model_call\n\
         \x20   quota: { limit: 2, per: 4s, by: caller }\n    action: block\n",
    );
    let config = format!(
        "{}providers:\n\
         \x20 - {{ name: ollama, kind: local, api: ollama, endpoints: [\"127.0.0.1:{local}\"] }}\n\
         \x20 - {{ name: openai, kind: cloud, api: openai, endpoints: [\"api.openai.test:{cloud}\"] }}\n\
         \x20 - {{ name: mystery, kind: local, api: openai, endpoints: [\"127.0.0.1:{unapproved}\"] }}\n\
         gateway: {{ listen: [/run/oknek-test-gateway.sock], hosts_file: {}, resolv_conf: {} }}\n",
        ebpf_config(&pins),
        hosts.display(),
        resolv.display()
    );
    let mut d = Daemon::start(rules.path(), &config);
    d.assert_serving(Duration::from_secs(5));

    // The quota: two calls, then EPERM in connect(); others are never metered.
    assert_connected("first call", &connect_as(AGENT_UID, local));
    assert_connected("second call", &connect_as(AGENT_UID, local));
    assert_connect_refused("third call within the quota", &connect_as(AGENT_UID, local));
    assert_connected("root (not an agent)", &connect_as(0, local));
    // A cloud provider bypassing the gateway, and a provider no rule approves.
    assert_connect_refused(
        "direct call to the cloud provider",
        &connect_as(AGENT_UID, cloud),
    );
    assert_connected("root to the cloud provider", &connect_as(0, cloud));
    assert_connect_refused("unapproved provider", &connect_as(AGENT_UID, unapproved));
    // 2 per 4 s refills one call every 2 s (the daemon refills once a second).
    std::thread::sleep(Duration::from_millis(3200));
    assert_connected("call after the refill", &connect_as(AGENT_UID, local));

    let allowed = wait_for(&d, "oknek.model_call", "allow", 3);
    let quota = wait_for(&d, "T.quota", "block", 1);
    let gateway = wait_for(&d, "oknek.gateway_only", "block", 1);
    let provider = wait_for(&d, "T.provider", "block", 1);
    let events = d.events();
    assert_eq!(
        model_calls(&events, "oknek.model_call", "allow", "ollama").len(),
        3,
        "{allowed:?}"
    );
    // Each allowed call carries its bucket as the kernel left it.
    let mut left: Vec<u64> = model_calls(&events, "oknek.model_call", "allow", "ollama")
        .iter()
        .filter_map(|e| e["bundle"]["extra"]["quotas"][0]["remaining"].as_u64())
        .collect();
    left.sort_unstable();
    assert_eq!(left, [0, 0, 1], "{allowed:?}");
    let q = &model_calls(&events, "T.quota", "block", "ollama")[0]["bundle"];
    assert_eq!(mechanism(&quota[0]), "cgroup_sock_addr");
    assert_eq!(q["extra"]["quota"]["remaining"], 0, "quota state: {q}");
    assert_eq!(q["extra"]["quota"]["limit"], 2, "quota state: {q}");
    assert_eq!(
        model_calls(&events, "oknek.gateway_only", "block", "openai").len(),
        1,
        "{gateway:?}"
    );
    assert_eq!(
        model_calls(&events, "T.provider", "block", "mystery").len(),
        1,
        "{provider:?}"
    );
    assert!(
        bundles(&events, "T.quota", "block").len() == 1,
        "one refusal, one bundle: {quota:?}"
    );
    d.assert_verifies();
}

/// A nameserver on `ip`:53 answering A queries for every name with the address in `answer`
/// (TTL 1 s, which the daemon keeps for its 5 s minimum) and AAAA queries with no records.
fn fake_nameserver(
    ip: std::net::Ipv4Addr,
    answer: std::sync::Arc<std::sync::Mutex<std::net::Ipv4Addr>>,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let socket = UdpSocket::bind((ip, 53)).expect("binding a test nameserver on port 53");
    let queries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = queries.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let query = &buf[..n];
            // Header (12 bytes), then the question: name labels, a zero byte, type, class.
            let Some(name_end) = query[12..].iter().position(|&b| b == 0).map(|p| 12 + p + 1)
            else {
                continue;
            };
            let question = &query[12..name_end + 4];
            let qtype = u16::from_be_bytes([query[name_end], query[name_end + 1]]);
            let a = qtype == 1;
            let mut reply = Vec::new();
            reply.extend_from_slice(&query[..2]); // id
            reply.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(a), 0, 0, 0, 0]);
            reply.extend_from_slice(question);
            if a {
                let addr = *answer.lock().unwrap();
                reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
                reply.extend_from_slice(&addr.octets());
            }
            let _ = socket.send_to(&reply, from);
        }
    });
    queries
}

/// A listener on `ip` with a port also free on the other loopback address used.
fn listener_on(ip: &str, port: u16) -> TcpListener {
    let l = TcpListener::bind((ip, port)).unwrap();
    let dup = l.try_clone().unwrap();
    std::thread::spawn(move || {
        for mut conn in dup.incoming().flatten() {
            let _ = conn.read(&mut [0u8; 1]);
        }
    });
    l
}

/// bash's /dev/tcp to `ip`: the connect's outcome as bash reports it.
fn connect_to(uid: u32, ip: &str, port: u16) -> Output {
    let script = format!("exec 3<>/dev/tcp/{ip}/{port} && echo connected");
    let mut cmd = if uid == 0 {
        let mut c = Command::new("bash");
        c.args(["-c", &script]);
        c
    } else {
        as_user(uid, uid, "bash", &[os("-c"), os(&script)])
    };
    run(&mut cmd, CHILD_TIMEOUT)
}

#[test]
fn provider_addresses_follow_dns_answers_without_nss() {
    if !root_or_skip() {
        return;
    }
    let _serial = serial();
    let pins = Pins::new("dns");
    // One port free on both loopback addresses the name will point at in turn.
    let first = listener();
    let _a = listener_on("127.0.0.2", first);
    let _b = listener_on("127.0.0.3", first);
    let answer = std::sync::Arc::new(std::sync::Mutex::new(std::net::Ipv4Addr::new(127, 0, 0, 2)));
    let nameserver = std::net::Ipv4Addr::new(127, 0, 0, 77); // not 127.0.0.53: systemd-resolved
    let queries = fake_nameserver(nameserver, answer.clone());
    let fixtures = scratch("ebpf-dns", false);
    let hosts = fixtures.path().join("hosts");
    let resolv = fixtures.path().join("resolv.conf");
    std::fs::write(&hosts, "# the name is not here: it is asked of DNS\n").unwrap();
    std::fs::write(
        &resolv,
        format!("nameserver {nameserver}\noptions timeout:1\n"),
    )
    .unwrap();
    let config = format!(
        "{}providers:\n\
         \x20 - {{ name: openai, kind: cloud, api: openai, endpoints: [\"api.dns.test:{first}\"] }}\n\
         gateway: {{ listen: [/run/oknek-test-gateway.sock], hosts_file: {}, resolv_conf: {} }}\n",
        ebpf_config(&pins),
        hosts.display(),
        resolv.display()
    );
    let rules = only_rules("oknek_rules: 1\nrules: []\n");
    let mut d = Daemon::start(rules.path(), &config);
    d.assert_serving(Duration::from_secs(5));

    // The daemon asked the nameserver itself (no NSS) and loaded the answer into the kernel.
    let until = Instant::now() + Duration::from_secs(10);
    while connect_to(AGENT_UID, "127.0.0.2", first).status.success() {
        assert!(
            Instant::now() < until,
            "127.0.0.2 never became the provider:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(queries.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert_connect_refused(
        "agent to the provider's address",
        &connect_to(AGENT_UID, "127.0.0.2", first),
    );
    assert_connected(
        "agent elsewhere",
        &connect_to(AGENT_UID, "127.0.0.3", first),
    );

    // The provider moves; once the answer expires, the kernel follows.
    *answer.lock().unwrap() = std::net::Ipv4Addr::new(127, 0, 0, 3);
    let until = Instant::now() + Duration::from_secs(20);
    while connect_to(AGENT_UID, "127.0.0.3", first).status.success() {
        assert!(
            Instant::now() < until,
            "the new address was never loaded:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_connect_refused(
        "agent to the new address",
        &connect_to(AGENT_UID, "127.0.0.3", first),
    );
    assert_connected(
        "agent to the old address",
        &connect_to(AGENT_UID, "127.0.0.2", first),
    );
    wait_for(&d, "oknek.gateway_only", "block", 2);
    d.assert_verifies();
}
