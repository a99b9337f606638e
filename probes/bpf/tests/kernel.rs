//! Tests against the running kernel: real processes, real EPERM. They need root; without it
//! each prints `skipped: needs root`. They share the kernel, so they run one at a time.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use oknek_bpf::{
    AgentMaps, BlockRule, Detail, Enforcer, KernelEvent, Kind, NetEntry, ProbeConfig, Probes, Start,
};

static SERIAL: Mutex<()> = Mutex::new(());

const CHILD_ENV: &str = "OKNEK_BPF_TEST_CHILD";
const AGENT: u32 = 5;

/// Serialises the tests and removes the pin directory when done.
struct Fixture {
    pin_dir: PathBuf,
    _lock: MutexGuard<'static, ()>,
}

impl Fixture {
    fn new(name: &str) -> Option<Fixture> {
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: needs root");
            return None;
        }
        let lock = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/oknek-test-{name}-{}",
            std::process::id()
        ));
        let _ = Probes::uninstall(&pin_dir);
        Some(Fixture {
            pin_dir,
            _lock: lock,
        })
    }

    fn config(&self) -> ProbeConfig {
        ProbeConfig {
            pin_dir: self.pin_dir.clone(),
            lsm: false,
            cgroup: true,
            observe: true,
            ring_bytes: 1 << 20,
        }
    }

    fn start(&self) -> Probes {
        let (probes, start) = Probes::start(&self.config()).expect("probes start");
        assert_eq!(start, Start::Fresh);
        probes
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        Probes::uninstall(&self.pin_dir).expect("uninstall");
    }
}

fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn block_connect(rule_index: u32, addr: SocketAddr, hold: bool) -> BlockRule {
    BlockRule {
        rule_index,
        kinds: vec![Kind::Connect, Kind::Send],
        agents: 0,
        hold,
        files: vec![],
        dirs: vec![],
        exes: vec![],
        nets: vec![NetEntry {
            addr: addr.ip(),
            prefix_len: 32,
            ports: vec![(addr.port(), addr.port())],
        }],
    }
}

/// A bash that connects to `addr` with /dev/tcp and exits 0 on success, 1 on failure (with
/// the error on stderr).
fn bash_connect(addr: SocketAddr) -> Command {
    let mut cmd = Command::new("/usr/bin/bash");
    cmd.arg("-c")
        .arg(format!("exec 3<>/dev/tcp/{}/{}", addr.ip(), addr.port()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn assert_refused(output: std::process::Output, what: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("Operation not permitted"),
        "{what}: expected EPERM, got {:?} / {stderr}",
        output.status
    );
}

fn assert_connects(addr: SocketAddr) {
    TcpStream::connect(addr).expect("a process that is not an agent connects");
}

fn collect(
    probes: &mut Probes,
    wait: Duration,
    mut until: impl FnMut(&[KernelEvent]) -> bool,
) -> Vec<KernelEvent> {
    let deadline = Instant::now() + wait;
    let mut events = Vec::new();
    loop {
        probes.drain(|event| events.push(event));
        if until(&events) || Instant::now() > deadline {
            return events;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn blocked_connect_to(events: &[KernelEvent], addr: SocketAddr, rule_index: u32) -> bool {
    events.iter().any(|e| {
        matches!(&e.detail, Detail::Connect { dest, .. } if dest.to_string() == addr.to_string())
            && e.blocked.as_ref().is_some_and(|b| {
                b.rule_index == rule_index && b.enforcer == Enforcer::CgroupSockAddr
            })
    })
}

fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

fn kill(child: &mut Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
}

/// A child that waits for a line on stdin (so the test can track it first), then runs `script`.
fn gated_bash(script: &str) -> Child {
    Command::new("/usr/bin/bash")
        .arg("-c")
        .arg(format!("read -r _; {script}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn release(child: &mut Child) {
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
}

#[test]
fn agent_by_tgid_gets_eperm_and_the_block_is_reported() {
    let Some(fx) = Fixture::new("tgid") else {
        return;
    };
    let mut probes = fx.start();
    assert_eq!(
        probes.enforcer(Kind::Connect),
        Some(Enforcer::CgroupSockAddr)
    );
    assert_eq!(probes.enforcer(Kind::Open), None);
    let (_listener, addr) = listener();
    let refusals = probes.set_rules(&[block_connect(17, addr, false)]).unwrap();
    assert!(refusals.is_empty());

    let mut child = gated_bash(&format!("exec 3<>/dev/tcp/{}/{}", addr.ip(), addr.port()));
    probes.track_task(child.id(), AGENT).unwrap();
    release(&mut child);
    let output = child.wait_with_output().unwrap();
    assert_refused(output, "tracked child");
    assert_connects(addr);

    let events = collect(&mut probes, Duration::from_secs(2), |ev| {
        blocked_connect_to(ev, addr, 17)
    });
    assert!(
        blocked_connect_to(&events, addr, 17),
        "no block event in {events:?}"
    );
    let block = events.iter().find(|e| e.blocked.is_some()).unwrap();
    assert_eq!(block.agent_id, AGENT);
    assert_eq!(block.comm, "bash");
}

#[test]
fn agent_by_uid_gets_eperm_and_others_connect() {
    let Some(fx) = Fixture::new("uid") else {
        return;
    };
    let mut probes = fx.start();
    let (_listener, addr) = listener();
    let uid = 61_000 + (std::process::id() % 1000);
    probes
        .set_agents(&AgentMaps {
            uids: vec![(uid, AGENT)],
            ..AgentMaps::default()
        })
        .unwrap();
    probes.set_rules(&[block_connect(3, addr, false)]).unwrap();

    let output = bash_connect(addr).uid(uid).output().unwrap();
    assert_refused(output, "child running as the agent uid");
    let output = bash_connect(addr).uid(uid + 1).output().unwrap();
    assert!(
        output.status.success(),
        "a child with another uid connects: {output:?}"
    );
    assert_connects(addr);
    let events = collect(&mut probes, Duration::from_secs(2), |ev| {
        blocked_connect_to(ev, addr, 3)
    });
    assert!(blocked_connect_to(&events, addr, 3));
    assert!(
        events.iter().all(|e| e.uid == uid),
        "only the agent is reported: {events:?}"
    );
}

#[test]
fn agent_by_exe_gets_eperm() {
    let Some(fx) = Fixture::new("exe") else {
        return;
    };
    let mut probes = fx.start();
    let (_listener, addr) = listener();
    let meta = std::fs::metadata("/usr/bin/bash").unwrap();
    probes
        .set_agents(&AgentMaps {
            exes: vec![((meta.dev(), meta.ino()), AGENT)],
            ..AgentMaps::default()
        })
        .unwrap();
    probes.set_rules(&[block_connect(4, addr, false)]).unwrap();
    assert_refused(
        bash_connect(addr).output().unwrap(),
        "bash as agent executable",
    );
    assert_connects(addr);
    let events = collect(&mut probes, Duration::from_secs(2), |ev| {
        blocked_connect_to(ev, addr, 4)
    });
    assert!(blocked_connect_to(&events, addr, 4));
}

/// A child cgroup under the cgroup2 mount, removed on drop.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new() -> TestCgroup {
        let root = oknek_bpf::probe_support().cgroup2.expect("cgroup2 mount");
        let path = root.join(format!("oknek-test-{}", std::process::id()));
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path).expect("create a child cgroup");
        TestCgroup(path)
    }

    fn id(&self) -> u64 {
        std::fs::metadata(&self.0).unwrap().ino()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Processes must have left; retry briefly while the kernel reaps them.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn agent_by_cgroup_gets_eperm() {
    let Some(fx) = Fixture::new("cgroup") else {
        return;
    };
    let mut probes = fx.start();
    let (_listener, addr) = listener();
    let cgroup = TestCgroup::new();
    probes
        .set_agents(&AgentMaps {
            cgroups: vec![(cgroup.id(), AGENT)],
            ..AgentMaps::default()
        })
        .unwrap();
    probes.set_rules(&[block_connect(6, addr, false)]).unwrap();
    let procs = cgroup.0.join("cgroup.procs");
    let mut cmd = bash_connect(addr);
    // Join the cgroup between fork and exec, so the exec is seen inside it.
    unsafe {
        cmd.pre_exec(move || std::fs::write(&procs, b"0"));
    }
    assert_refused(cmd.output().unwrap(), "child in the agent cgroup");
    assert_connects(addr);
    let events = collect(&mut probes, Duration::from_secs(2), |ev| {
        blocked_connect_to(ev, addr, 6)
    });
    let block = events
        .iter()
        .find(|e| e.blocked.is_some())
        .expect("block event");
    assert_eq!(block.cgroup_id, cgroup.id());
}

#[test]
fn hold_rule_stops_the_agent() {
    let Some(fx) = Fixture::new("hold") else {
        return;
    };
    let mut probes = fx.start();
    let (_listener, addr) = listener();
    probes.set_rules(&[block_connect(9, addr, true)]).unwrap();
    let mut child = gated_bash(&format!("exec 3<>/dev/tcp/{}/{}", addr.ip(), addr.port()));
    let pid = child.id();
    probes.track_task(pid, AGENT).unwrap();
    release(&mut child);
    let deadline = Instant::now() + Duration::from_secs(3);
    while proc_state(pid) != Some('T') && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let state = proc_state(pid);
    let events = collect(&mut probes, Duration::from_secs(2), |ev| {
        blocked_connect_to(ev, addr, 9)
    });
    kill(&mut child);
    assert_eq!(state, Some('T'), "held agent is stopped");
    let block = events
        .iter()
        .find(|e| e.blocked.is_some())
        .expect("block event");
    assert!(block.blocked.as_ref().unwrap().held);
}

/// Runs as a child process of the tests (selected by the CHILD_ENV variable): waits for a line
/// on stdin, then does one thing of each kind and exits.
#[test]
fn child_process_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut line = String::new();
    BufReader::new(std::io::stdin())
        .read_line(&mut line)
        .unwrap();
    let mut parts = spec.split(' ');
    let (dir, tcp, udp) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(format!("{dir}/observed.txt"))
        .unwrap();
    drop(file);
    let stream = TcpStream::connect(tcp).unwrap();
    drop(stream);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(&[7u8; 123], udp).unwrap();
    let dir_c = std::ffi::CString::new(dir).unwrap();
    unsafe {
        let fd = libc::inotify_init1(libc::IN_CLOEXEC);
        assert!(fd >= 0);
        assert!(
            libc::inotify_add_watch(fd, dir_c.as_ptr(), libc::IN_CREATE | libc::IN_DELETE) >= 0
        );
        libc::close(fd);
    }
    let status = Command::new("/bin/true")
        .args(["oknek-arg-1", "second arg"])
        .status()
        .unwrap();
    assert!(status.success());
    std::process::exit(0);
}

fn spawn_child(spec: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_entry",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, spec)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn observations_arrive_for_agents_only() {
    let Some(fx) = Fixture::new("observe") else {
        return;
    };
    let mut probes = fx.start();
    let dir = tempfile_dir("observe");
    let (listener, tcp) = listener();
    let udp_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp = udp_socket.local_addr().unwrap();
    let spec = format!("{} {tcp} {udp}", dir.display());

    let mut agent = spawn_child(&spec);
    let agent_pid = agent.id();
    probes.track_task(agent_pid, AGENT).unwrap();
    let mut other = spawn_child(&spec);
    let other_pid = other.id();
    release(&mut agent);
    release(&mut other);
    assert!(agent.wait().unwrap().success());
    assert!(other.wait().unwrap().success());
    drop(listener);

    let events = collect(&mut probes, Duration::from_secs(3), |ev| {
        ev.iter().any(|e| e.kind == Kind::Exec) && ev.iter().any(|e| e.kind == Kind::Watch)
    });
    std::fs::remove_dir_all(&dir).unwrap();
    let mine: Vec<&KernelEvent> = events.iter().filter(|e| e.tgid == agent_pid).collect();
    assert!(
        events.iter().all(|e| e.tgid != other_pid),
        "nothing from the non-agent: {events:?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e.agent_id == AGENT && e.blocked.is_none())
    );

    let open = mine
        .iter()
        .find_map(|e| match &e.detail {
            Detail::Open {
                path, flags, mode, ..
            } if path.ends_with("observed.txt") => Some((*flags, *mode)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no open event in {events:?}"));
    assert_eq!(open.0 & 0o3, 0o1, "O_WRONLY");
    assert_ne!(open.0 & 0o100, 0, "O_CREAT");
    assert_eq!(open.1, 0o640);
    assert!(
        mine.iter().any(
            |e| matches!(&e.detail, Detail::Connect { dest, .. } if dest.to_string() == tcp.to_string())
        ),
        "connect: {events:?}"
    );
    assert!(
        mine.iter().any(|e| matches!(&e.detail,
        Detail::Send { dest: Some(dest), bytes: 123 } if dest.to_string() == udp.to_string())),
        "send: {events:?}"
    );
    assert!(mine.iter().any(|e| matches!(&e.detail,
        Detail::Watch { path, mask, .. } if *path == dir.display().to_string() && *mask == libc::IN_CREATE | libc::IN_DELETE)), "watch: {events:?}");
    // The exec is the grandchild's (/bin/true), tracked through fork.
    let exec = events
        .iter()
        .find_map(|e| match &e.detail {
            Detail::Exec {
                path,
                argv,
                truncated,
            } if path == "/bin/true" => Some((argv.clone(), *truncated)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no exec event in {events:?}"));
    assert_eq!(exec.0, ["/bin/true", "oknek-arg-1", "second arg"]);
    assert!(!exec.1);
}

fn tempfile_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("oknek-bpf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    dir
}

#[test]
fn fork_inherits_and_exit_untracks() {
    let Some(fx) = Fixture::new("fork") else {
        return;
    };
    let mut probes = fx.start();
    let mut child = gated_bash("sleep 0.5 & echo $!; wait");
    let pid = child.id();
    probes.track_task(pid, AGENT).unwrap();
    release(&mut child);
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let grandchild: u32 = line.trim().parse().unwrap();
    assert_eq!(
        probes.tracked_agent(grandchild),
        Some(AGENT),
        "the fork inherits the agent"
    );
    assert!(child.wait().unwrap().success());
    assert_eq!(
        probes.tracked_agent(grandchild),
        None,
        "exited grandchild is dropped"
    );
    assert_eq!(probes.tracked_agent(pid), None, "exited child is dropped");
}

#[test]
fn thread_exit_keeps_the_process_tracked() {
    let Some(fx) = Fixture::new("threads") else {
        return;
    };
    let mut probes = fx.start();
    let me = std::process::id();
    probes.track_task(me, AGENT).unwrap();
    std::thread::spawn(|| {}).join().unwrap();
    assert_eq!(
        probes.tracked_agent(me),
        Some(AGENT),
        "a thread's exit is not the process's"
    );
    probes.untrack_task(me).unwrap();
}

#[test]
fn pinned_probes_enforce_without_userspace_and_are_adopted() {
    let Some(fx) = Fixture::new("adopt") else {
        return;
    };
    let (_listener, addr) = listener();
    let uid = 62_000 + (std::process::id() % 1000);
    {
        let mut probes = fx.start();
        probes
            .set_agents(&AgentMaps {
                uids: vec![(uid, AGENT)],
                ..AgentMaps::default()
            })
            .unwrap();
        probes.set_rules(&[block_connect(21, addr, false)]).unwrap();
    }
    // Nothing of ours runs in userspace now; the pins keep enforcing.
    assert_refused(
        bash_connect(addr).uid(uid).output().unwrap(),
        "agent with no daemon",
    );

    let (mut probes, start) = Probes::start(&fx.config()).unwrap();
    assert_eq!(start, Start::Adopted);
    assert!(
        probes.unpinned_links().is_empty(),
        "{:?}",
        probes.unpinned_links()
    );
    let events = collect(&mut probes, Duration::from_secs(2), |ev| {
        blocked_connect_to(ev, addr, 21)
    });
    assert!(
        blocked_connect_to(&events, addr, 21),
        "event from before adoption: {events:?}"
    );
    drop(probes);

    // A different object (here: another ring size) replaces it with no gap and keeps the state.
    let mut bigger = fx.config();
    bigger.ring_bytes = 1 << 21;
    let (probes, start) = Probes::start(&bigger).unwrap();
    assert_eq!(start, Start::Upgraded);
    assert!(probes.degraded().is_empty(), "{:?}", probes.degraded());
    assert_refused(
        bash_connect(addr).uid(uid).output().unwrap(),
        "agent after upgrade",
    );
    let old = fx.pin_dir.read_dir().unwrap().count();
    assert_eq!(old, 1, "only the new version stays pinned");
    drop(probes);

    Probes::uninstall(&fx.pin_dir).unwrap();
    assert!(!fx.pin_dir.exists());
    let output = bash_connect(addr).uid(uid).output().unwrap();
    assert!(
        output.status.success(),
        "after uninstall the agent connects: {output:?}"
    );
}

#[test]
fn a_full_ring_counts_lost_events() {
    let Some(fx) = Fixture::new("lost") else {
        return;
    };
    let mut cfg = fx.config();
    cfg.ring_bytes = 4096;
    let (mut probes, _) = Probes::start(&cfg).unwrap();
    assert_eq!(probes.lost_events(), 0);
    let mut child = gated_bash("for i in $(seq 300); do : < /dev/null; done");
    probes.track_task(child.id(), AGENT).unwrap();
    release(&mut child);
    assert!(child.wait().unwrap().success());
    let lost = probes.lost_events();
    let read = probes.drain(|_| {});
    assert!(lost >= 250, "lost {lost}, read {read}");
    assert!(read >= 1);
}

#[test]
fn support_probe_reports_this_kernel() {
    let Some(_fx) = Fixture::new("support") else {
        return;
    };
    let support = oknek_bpf::probe_support();
    println!("{support:#?}");
    for (name, check) in [
        ("tracepoint", &support.tracepoint),
        ("tp_btf", &support.tp_btf),
        ("ringbuf", &support.ringbuf),
        ("cgroup_sock_addr", &support.cgroup_sock_addr),
    ] {
        assert!(check.available, "{name}: {}", check.detail);
    }
    assert!(!support.fmod_ret.available && support.fmod_ret.detail.contains("aya"));
    assert!(!support.lsm.detail.is_empty() && !support.fentry.detail.is_empty());
    assert!(support.cgroup2.is_some());
}

#[test]
fn a_refused_lsm_start_leaves_no_pins() {
    let Some(fx) = Fixture::new("lsm-refused") else {
        return;
    };
    if oknek_bpf::probe_support().lsm.available {
        println!("skipped: BPF LSM runs on this kernel, so the refusal path cannot be exercised");
        return;
    }
    let mut cfg = fx.config();
    cfg.lsm = true;
    let error = Probes::start(&cfg).expect_err("LSM programs are refused here");
    assert!(error.to_string().contains("enforce_"), "{error}");
    let left = fx.pin_dir.read_dir().map(|dir| dir.count()).unwrap_or(0);
    assert_eq!(left, 0, "a failed start leaves nothing pinned");
}

/// One bash per connect, tracked as the agent before it connects; true when it connected.
/// The ring buffer is drained into `seen` after each (a bash reports a hundred opens).
fn agent_connects(probes: &mut Probes, addr: SocketAddr, seen: &mut Vec<KernelEvent>) -> bool {
    let mut child = gated_bash(&format!("exec 3<>/dev/tcp/{}/{}", addr.ip(), addr.port()));
    probes.track_task(child.id(), AGENT).unwrap();
    release(&mut child);
    let output = child.wait_with_output().unwrap();
    probes.drain(|e| {
        if e.kind == Kind::Connect {
            seen.push(e)
        }
    });
    if output.status.success() {
        return true;
    }
    assert_refused(output, "an agent's model call");
    false
}

fn model_call_to(events: &[KernelEvent], addr: SocketAddr, provider: u32) -> Vec<&KernelEvent> {
    events
        .iter()
        .filter(|e| {
            matches!(&e.detail, Detail::Connect { dest, provider: Some(p), .. }
                if dest.to_string() == addr.to_string() && *p == provider)
        })
        .collect()
}

#[test]
fn model_calls_are_metered_refused_and_refilled_in_connect() {
    use oknek_bpf::{ModelRule, ProviderEntry, QuotaBy};
    let Some(fx) = Fixture::new("models") else {
        return;
    };
    let mut probes = fx.start();
    let (_local, local) = listener();
    let (_cloud, cloud) = listener();
    let (_banned, banned) = listener();
    let entry = |addr: SocketAddr, provider_id, gateway_only| ProviderEntry {
        addr: addr.ip(),
        port: addr.port(),
        provider_id,
        gateway_only,
    };
    let refusals = probes
        .set_models(
            &[
                entry(local, 0, false),
                entry(cloud, 1, true),
                entry(banned, 2, false),
            ],
            &[
                ModelRule {
                    rule_index: 40,
                    agents: 0,
                    hold: false,
                    providers: vec![2],
                    quota: None,
                },
                ModelRule {
                    rule_index: 41,
                    agents: 1 << AGENT,
                    hold: false,
                    providers: vec![0, 2],
                    quota: Some((2, QuotaBy::Caller)),
                },
            ],
        )
        .unwrap();
    assert!(refusals.is_empty(), "{refusals:?}");

    let mut seen = Vec::new();
    // Two calls pass, the third fails in connect(); a non-agent is never metered.
    assert!(agent_connects(&mut probes, local, &mut seen), "first call");
    assert!(agent_connects(&mut probes, local, &mut seen), "second call");
    assert!(!agent_connects(&mut probes, local, &mut seen), "third call");
    for _ in 0..5 {
        assert_connects(local);
    }
    // Through the gateway only, and a provider no rule allows.
    assert!(
        !agent_connects(&mut probes, cloud, &mut seen),
        "direct cloud call"
    );
    assert!(
        !agent_connects(&mut probes, banned, &mut seen),
        "unapproved provider"
    );
    assert_connects(cloud);

    let buckets = probes.quota_buckets();
    assert_eq!(buckets.len(), 1, "{buckets:?}");
    assert_eq!((buckets[0].used, buckets[0].remaining()), (2, 0));
    assert_eq!(buckets[0].key.rule_index, 41);
    assert_eq!(buckets[0].key.agent_id, AGENT);
    assert_ne!(
        buckets[0].key.exe_ino, 0,
        "the caller's executable is in the key"
    );

    // Half a period gives one call back (2 per minute → 30 s).
    let rates = [(41, (2, Duration::from_secs(60)))].into_iter().collect();
    probes
        .refill_quotas(&rates, Duration::from_secs(30))
        .unwrap();
    assert!(
        agent_connects(&mut probes, local, &mut seen),
        "call after refill"
    );
    assert!(
        !agent_connects(&mut probes, local, &mut seen),
        "and only one"
    );

    let events = seen;
    let local_calls = model_call_to(&events, local, 0);
    let refused: Vec<u32> = local_calls
        .iter()
        .filter_map(|e| e.blocked.as_ref().map(|b| b.rule_index))
        .collect();
    assert_eq!(
        local_calls.len(),
        5,
        "every model call is reported: {local_calls:?}"
    );
    assert_eq!(refused, [41, 41], "the quota rule refused twice");
    // Each passed call says what its bucket has left: 1 after the first, 0 after the second.
    let left: Vec<Option<(u32, u32)>> = local_calls
        .iter()
        .filter(|e| e.blocked.is_none())
        .map(|e| match &e.detail {
            Detail::Connect { quota, .. } => *quota,
            _ => None,
        })
        .collect();
    assert_eq!(left, [Some((41, 1)), Some((41, 0)), Some((41, 0))]);
    let cloud_refusal = model_call_to(&events, cloud, 1);
    assert_eq!(
        cloud_refusal[0].blocked.as_ref().map(|b| b.rule_index),
        Some(oknek_bpf::layout::RULE_GATEWAY_ONLY)
    );
    let banned_refusal = model_call_to(&events, banned, 2);
    assert_eq!(
        banned_refusal[0].blocked.as_ref().map(|b| b.rule_index),
        Some(40)
    );

    // A full idle bucket is dropped (a new one starts full); rules gone drop theirs too.
    probes
        .refill_quotas(&rates, Duration::from_secs(3600))
        .unwrap();
    assert!(probes.quota_buckets().is_empty());
}
