//! Checks the BPF LSM enforcement hooks on the running kernel with real processes: a child
//! tracked by tgid must get EPERM for exec, open (file and directory prefix), inotify watch and
//! connect of blocked objects, while an untracked child is allowed the same calls. Prints one
//! `PASS name` / `FAIL name: why` line per check and `lsm_selftest: N passed, N failed`; exits
//! non-zero on any failure. Needs root and a kernel running BPF LSM (`bpf` in the LSM list).
//!
//! Usage: `lsm_selftest [--pin-dir DIR]` (default /sys/fs/bpf/oknek-selftest).

use std::io::{BufRead, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oknek_bpf::{BlockRule, Detail, Kind, NetEntry, ProbeConfig, Probes};

/// Exit codes a child uses to report what happened to its call.
const CHILD_OK: i32 = 0;
const CHILD_EPERM: i32 = 13;
const CHILD_OTHER_ERROR: i32 = 2;
/// What the blocked executable exits with when it really runs (an exec that was not refused).
const EXEC_RAN: i32 = 77;

fn child(mode: &str, arg: &str) -> i32 {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    let result = match mode {
        "open" => std::fs::File::open(arg).map(drop),
        "connect" => TcpStream::connect(arg).map(drop),
        "exec" => {
            use std::os::unix::process::CommandExt;
            // Only returns on failure.
            Err(Command::new(arg).arg("exec-ran").exec())
        }
        "watch" => {
            let path = std::ffi::CString::new(arg).expect("no NUL");
            // SAFETY: plain syscalls on a valid C string.
            unsafe {
                let fd = libc::inotify_init1(libc::IN_CLOEXEC);
                if libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_MODIFY) < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            }
        }
        _ => return CHILD_OTHER_ERROR,
    };
    match result {
        Ok(()) => CHILD_OK,
        Err(error) if error.raw_os_error() == Some(libc::EPERM) => CHILD_EPERM,
        Err(error) => {
            eprintln!("child {mode} {arg}: {error}");
            CHILD_OTHER_ERROR
        }
    }
}

struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    fn check(&mut self, name: &str, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.passed += 1;
                println!("PASS {name}");
            }
            Err(why) => {
                self.failed += 1;
                println!("FAIL {name}: {why}");
            }
        }
    }
}

/// Runs `mode arg` in a child of this binary; tracks it as an agent first when `agent`.
fn run_child(probes: &mut Probes, agent: bool, mode: &str, arg: &str) -> Result<i32, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["child", mode, arg])
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if agent {
        probes
            .track_task(child.id(), 1)
            .map_err(|e| e.to_string())?;
    }
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(b"go\n")
        .map_err(|e| e.to_string())?;
    let status = child.wait().map_err(|e| e.to_string())?;
    status
        .code()
        .ok_or_else(|| format!("child killed: {status}"))
}

fn expect_code(got: Result<i32, String>, want: i32) -> Result<(), String> {
    match got {
        Ok(code) if code == want => Ok(()),
        Ok(EXEC_RAN) => Err("the blocked executable ran".to_owned()),
        Ok(code) => Err(format!("child exited {code}, expected {want}")),
        Err(error) => Err(error),
    }
}

fn inode(path: &Path) -> (u64, u64) {
    let meta = std::fs::metadata(path).expect("stat");
    (meta.dev(), meta.ino())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        std::process::exit(child(&args[2], &args[3]));
    }
    if args.get(1).map(String::as_str) == Some("exec-ran") {
        std::process::exit(EXEC_RAN);
    }
    let pin_dir = match args.iter().position(|a| a == "--pin-dir") {
        Some(i) => PathBuf::from(&args[i + 1]),
        None => PathBuf::from("/sys/fs/bpf/oknek-selftest"),
    };
    let mut report = Report {
        passed: 0,
        failed: 0,
    };
    run(&pin_dir, &mut report);
    let _ = Probes::uninstall(&pin_dir);
    println!(
        "lsm_selftest: {} passed, {} failed",
        report.passed, report.failed
    );
    std::process::exit(if report.failed == 0 { 0 } else { 1 });
}

fn run(pin_dir: &Path, report: &mut Report) {
    let support = oknek_bpf::probe_support();
    report.check(
        "support: lsm",
        if support.lsm.available {
            Ok(())
        } else {
            Err(support.lsm.detail.clone())
        },
    );
    let _ = Probes::uninstall(pin_dir);
    let cfg = ProbeConfig {
        pin_dir: pin_dir.to_path_buf(),
        lsm: true,
        cgroup: false,
        observe: true,
        ring_bytes: 1 << 20,
    };
    let mut probes = match Probes::start(&cfg) {
        Ok((probes, _)) => probes,
        Err(error) => return report.check("start with lsm", Err(error.to_string())),
    };
    report.check("start with lsm", Ok(()));

    let work = std::env::temp_dir().join(format!("oknek-selftest-{}", std::process::id()));
    let secret_dir = work.join("secret");
    std::fs::create_dir_all(secret_dir.join("inner")).expect("work dir");
    let under_dir = secret_dir.join("inner/key.txt");
    let blocked_file = work.join("blocked.txt");
    let allowed_file = work.join("allowed.txt");
    for file in [&under_dir, &blocked_file, &allowed_file] {
        std::fs::write(file, b"x").expect("work file");
    }
    let blocked_exe = work.join("blocked-exe");
    std::fs::copy(std::env::current_exe().expect("own path"), &blocked_exe).expect("copy exe");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = listener.local_addr().expect("addr");

    let rule = |rule_index, kinds: Vec<Kind>| BlockRule {
        rule_index,
        kinds,
        agents: 0,
        hold: false,
        files: vec![],
        dirs: vec![],
        exes: vec![],
        nets: vec![],
    };
    let rules = vec![
        BlockRule {
            exes: vec![inode(&blocked_exe)],
            ..rule(1, vec![Kind::Exec])
        },
        BlockRule {
            files: vec![inode(&blocked_file)],
            ..rule(2, vec![Kind::Open])
        },
        BlockRule {
            dirs: vec![inode(&secret_dir)],
            ..rule(3, vec![Kind::Open, Kind::Watch])
        },
        BlockRule {
            nets: vec![NetEntry {
                addr: addr.ip(),
                prefix_len: 32,
                ports: vec![(addr.port(), addr.port())],
            }],
            ..rule(4, vec![Kind::Connect])
        },
    ];
    match probes.set_rules(&rules) {
        Ok(refusals) if refusals.is_empty() => {}
        Ok(refusals) => report.check("rules", Err(format!("refused: {refusals:?}"))),
        Err(error) => return report.check("rules", Err(error.to_string())),
    }

    let exe = blocked_exe.to_string_lossy().into_owned();
    let cases: [(&str, &str, String); 5] = [
        ("exec", "exec blocked executable", exe.clone()),
        (
            "open",
            "open blocked file",
            blocked_file.to_string_lossy().into_owned(),
        ),
        (
            "open",
            "open file under blocked directory",
            under_dir.to_string_lossy().into_owned(),
        ),
        (
            "watch",
            "inotify watch on blocked directory",
            secret_dir.to_string_lossy().into_owned(),
        ),
        ("connect", "connect to blocked address", addr.to_string()),
    ];
    for (mode, name, arg) in &cases {
        let agent = run_child(&mut probes, true, mode, arg);
        report.check(
            &format!("agent: {name} -> EPERM"),
            expect_code(agent, CHILD_EPERM),
        );
        let other = run_child(&mut probes, false, mode, arg);
        let want = if *mode == "exec" { EXEC_RAN } else { CHILD_OK };
        report.check(
            &format!("non-agent: {name} -> allowed"),
            match other {
                Ok(code) if code == want => Ok(()),
                Ok(code) => Err(format!("child exited {code}, expected {want}")),
                Err(error) => Err(error),
            },
        );
    }
    let allowed = run_child(&mut probes, true, "open", &allowed_file.to_string_lossy());
    report.check(
        "agent: open allowed file -> allowed",
        expect_code(allowed, CHILD_OK),
    );

    // Every refusal is reported with its rule.
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    let wanted = [
        (Kind::Exec, 1),
        (Kind::Open, 2),
        (Kind::Open, 3),
        (Kind::Watch, 3),
        (Kind::Connect, 4),
    ];
    let seen = |events: &Vec<oknek_bpf::KernelEvent>, (kind, rule): (Kind, u32)| {
        events
            .iter()
            .any(|e| e.kind == kind && e.blocked.as_ref().is_some_and(|b| b.rule_index == rule))
    };
    while Instant::now() < deadline && !wanted.iter().all(|w| seen(&events, *w)) {
        probes.drain(|e| events.push(e));
        std::thread::sleep(Duration::from_millis(50));
    }
    for want in wanted {
        report.check(
            &format!("event: blocked {} by rule {}", want.0, want.1),
            if seen(&events, want) {
                Ok(())
            } else {
                Err("no such event".to_owned())
            },
        );
    }
    let exec_inode = events.iter().find_map(|e| match &e.detail {
        Detail::Exec { .. } if e.blocked.is_some() => Some(e.clone()),
        _ => None,
    });
    report.check(
        "event: blocked exec names its file",
        match exec_inode.map(|e| e.detail) {
            Some(Detail::Exec { path, .. }) if path == exe => Ok(()),
            other => Err(format!("got {other:?}")),
        },
    );
    drop(listener);
    let _ = std::fs::remove_dir_all(&work);
}
