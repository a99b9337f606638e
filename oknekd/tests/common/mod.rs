//! Shared by oknekd's adversarial suite: the real `oknekd` in a temporary directory, the real
//! `oknek` CLI, a fake home with an SSH private key, a static helper written in C, and a client
//! for the hook socket that runs as another uid.
//!
//! The agent is always uid 65534 and treated as hostile. Everything here needs root (fanotify,
//! seccomp, switching uid); `root_or_skip` prints the skip line otherwise.

// Each test binary that includes this module uses a different subset of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The agent: an ordinary user.
pub const AGENT_UID: u32 = 65534;
pub const AGENT_GID: u32 = 65534;
/// Another ordinary user, declared as nothing.
pub const OTHER_UID: u32 = 65533;
pub const EPERM_TEXT: &str = "Operation not permitted";
const SKIP: &str = "skipped: needs root (fanotify, seccomp and setuid to an ordinary user)";
/// Every child process gets this long before the test calls it hung.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// The config every daemon of the suite starts with: all of uid 65534 is one agent.
pub const NOBODY_AGENT: &str = "agents:\n  - name: nobody-agent\n    uid: [65534]\n";

/// True when the suite can run; prints the skip line otherwise.
pub fn root_or_skip() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        true
    } else {
        eprintln!("{SKIP}");
        false
    }
}

/// The tests of this suite share fake homes under /home and the machine's two cores: one at a
/// time. A failed test poisons the lock; the next one still runs.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The shipped rule pack.
pub fn shipped_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules")
}

// -------------------------------------------------------------------------------------------------
// Binaries
// -------------------------------------------------------------------------------------------------

/// Copies of `oknek` and the static helper in a directory uid 65534 can reach (the build tree
/// may live under a private home).
pub struct Bins {
    pub oknek: PathBuf,
    pub helper: PathBuf,
}

pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        remove_stale("/tmp", "oknek-adv-bins-");
        let dir = std::env::temp_dir().join(format!("oknek-adv-bins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        set_mode(&dir, 0o755);
        let oknek = dir.join("oknek");
        std::fs::copy(oknek_binary(), &oknek).unwrap();
        set_mode(&oknek, 0o755);
        let helper = build_helper(&dir);
        Bins { oknek, helper }
    })
}

/// The `oknek` CLI built beside this `oknekd`; built on demand when missing.
fn oknek_binary() -> PathBuf {
    let daemon = Path::new(env!("CARGO_BIN_EXE_oknekd"));
    let oknek = daemon.with_file_name("oknek");
    if oknek.is_file() {
        return oknek;
    }
    let profile_dir = daemon.parent().expect("oknekd has a directory");
    let target_dir = profile_dir
        .parent()
        .expect("the profile directory has a parent");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(&cargo);
    build
        .args(["build", "-p", "oknek"])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name() == Some(OsStr::new("release")) {
        build.arg("--release");
    }
    let status = build.status();
    assert!(
        matches!(status, Ok(s) if s.success()) && oknek.is_file(),
        "the oknek CLI is not built at {} and `{} build -p oknek` (CARGO_TARGET_DIR={}) did not \
         produce it ({status:?}); build it with `cargo build -p oknek -p oknekd` first",
        oknek.display(),
        Path::new(&cargo).display(),
        target_dir.display()
    );
    oknek
}

/// A static C program the agent runs: raw syscalls only, so no libc hook can see or change
/// what it does.
const HELPER_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static long raw_open(const char *path, int flags) {
    return syscall(SYS_openat, AT_FDCWD, path, flags, 0);
}

static void said(const char *what, long rc) {
    if (rc < 0) printf("%s: errno=%d (%s)\n", what, errno, strerror(errno));
    else printf("%s: ok\n", what);
}

static int read_fd(long fd) {
    char b[4096];
    ssize_t n = read((int)fd, b, sizeof b - 1);
    if (n < 0) { said("read", -1); return 4; }
    b[n] = 0;
    printf("content: %s\n", b);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "id")) {
        printf("helper-ran uid=%d exe=%s\n", (int)getuid(), argv[0]);
        return 0;
    }
    if (argc >= 3 && !strcmp(argv[1], "read")) {
        long fd = raw_open(argv[2], O_RDONLY);
        if (fd < 0) { said("open", fd); return 3; }
        return read_fd(fd);
    }
    if (argc >= 3 && !strcmp(argv[1], "reopen")) {
        long o = raw_open(argv[2], O_PATH);
        if (o < 0) { said("open O_PATH", o); return 5; }
        char p[64];
        snprintf(p, sizeof p, "/proc/self/fd/%ld", o);
        long fd = raw_open(p, O_RDONLY);
        if (fd < 0) { said("open", fd); return 3; }
        return read_fd(fd);
    }
    if (argc >= 3 && !strcmp(argv[1], "exec")) {
        syscall(SYS_execve, argv[2], &argv[2], environ);
        said("execve", -1);
        return 3;
    }
    if (argc >= 6 && !strcmp(argv[1], "flood")) {
        const char *allowed = argv[2], *key = argv[4];
        long n = atol(argv[3]), m = atol(argv[5]);
        long every = m > 0 && n >= m ? n / m : 1;
        long ok = 0, fail = 0, eperm = 0, other = 0, leaked = 0;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (long i = 0, k = 0; i < n || k < m; i++) {
            if (i < n) {
                long fd = raw_open(allowed, O_RDONLY);
                if (fd < 0) fail++; else { ok++; close((int)fd); }
            }
            if (k < m && (i >= n || i % every == 0)) {
                k++;
                long fd = raw_open(key, O_RDONLY);
                if (fd >= 0) { leaked++; close((int)fd); }
                else if (errno == EPERM) eperm++;
                else other++;
            }
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
        printf("allowed_ok=%ld allowed_failed=%ld key_eperm=%ld key_other=%ld key_opened=%ld ms=%ld\n",
               ok, fail, eperm, other, leaked, ms);
        return 0;
    }
    if (argc >= 3 && !strcmp(argv[1], "attack")) {
        pid_t pid = (pid_t)atol(argv[2]);
        char p[64];
        said("kill SIGKILL", kill(pid, SIGKILL));
        said("kill SIGSTOP", kill(pid, SIGSTOP));
        said("kill SIGTERM", kill(pid, SIGTERM));
        said("kill SIGHUP", kill(pid, SIGHUP));
        said("ptrace ATTACH", ptrace(PTRACE_ATTACH, pid, 0, 0));
        said("ptrace SEIZE", ptrace(PTRACE_SEIZE, pid, 0, 0));
        char b[16];
        struct iovec l = { b, sizeof b }, r = { (void *)0x400000, sizeof b };
        said("process_vm_readv", process_vm_readv(pid, &l, 1, &r, 1, 0));
        snprintf(p, sizeof p, "/proc/%d/mem", (int)pid);
        said("open mem", raw_open(p, O_RDWR));
        long pidfd = syscall(SYS_pidfd_open, pid, 0);
        if (pidfd >= 0) {
            said("pidfd_send_signal SIGKILL",
                 syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, 0, 0));
            said("pidfd_getfd", syscall(SYS_pidfd_getfd, pidfd, 0, 0));
        } else {
            said("pidfd_open", pidfd);
        }
        return 0;
    }
    fprintf(stderr, "usage: helper id|read|reopen|exec|flood|attack ...\n");
    return 2;
}
"#;

fn build_helper(dir: &Path) -> PathBuf {
    let src = dir.join("helper.c");
    std::fs::write(&src, HELPER_C).unwrap();
    let bin = dir.join("helper");
    let out = Command::new("gcc")
        .args(["-O1", "-static", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("gcc is needed to build the static helper (apt-get install gcc libc6-dev)");
    assert!(
        out.status.success(),
        "gcc -static failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if let Ok(f) = Command::new("file").arg(&bin).output() {
        let text = String::from_utf8_lossy(&f.stdout);
        assert!(
            text.contains("statically linked") || text.contains("static-pie"),
            "the helper must be static: {text}"
        );
    }
    set_mode(&bin, 0o755);
    bin
}

// -------------------------------------------------------------------------------------------------
// Files
// -------------------------------------------------------------------------------------------------

pub fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

pub fn give_to_agent(path: &Path) {
    chown(path, Some(AGENT_UID), Some(AGENT_GID))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// Removes `<dir>/<prefix><pid>…` entries whose process is gone (runs killed mid-test).
fn remove_stale(dir: &str, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !Path::new("/proc").join(&pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{nanos:09}", std::process::id())
}

/// `/home/oknek-adv-<pid>-<tag>`, owned by the agent, holding `.ssh/id_ed25519` (0600): the
/// shipped R1.ssh glob `/home/*/.ssh/id_*` names it. Removed on drop, also when a test fails.
pub struct FakeHome {
    pub home: PathBuf,
    pub ssh: PathBuf,
    pub key: PathBuf,
    pub secret: String,
}

impl FakeHome {
    pub fn new(tag: &str) -> FakeHome {
        remove_stale("/home", "oknek-adv-");
        let home = PathBuf::from(format!("/home/oknek-adv-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        let ssh = home.join(".ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        let key = ssh.join("id_ed25519");
        let secret = format!("SECRET-KEY-{tag}-{}", unique());
        std::fs::write(&key, format!("{secret}\n")).unwrap();
        std::fs::write(ssh.join("id_ed25519.pub"), "ssh-ed25519 AAAA public\n").unwrap();
        let guard = FakeHome {
            home,
            ssh,
            key,
            secret,
        };
        for (path, mode) in [
            (&guard.home, 0o755),
            (&guard.ssh, 0o700),
            (&guard.key, 0o600),
            (&guard.ssh.join("id_ed25519.pub"), 0o644),
        ] {
            give_to_agent(path);
            set_mode(path, mode);
        }
        guard
    }

    /// A directory in the home the agent may write (same file system as the key: hard links).
    pub fn workdir(&self) -> PathBuf {
        let dir = self.home.join("work");
        if !dir.exists() {
            std::fs::create_dir(&dir).unwrap();
            give_to_agent(&dir);
            set_mode(&dir, 0o755);
        }
        dir
    }
}

impl Drop for FakeHome {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.home) {
            eprintln!("could not remove {}: {e}", self.home.display());
        }
    }
}

/// A temporary directory that uid 65534 can enter (and, with `agent_owned`, write).
pub fn scratch(tag: &str, agent_owned: bool) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("oknek-adv-{tag}-"))
        .tempdir()
        .unwrap();
    set_mode(dir.path(), 0o755);
    if agent_owned {
        give_to_agent(dir.path());
    }
    dir
}

/// The shipped rules plus `extra` as `90-adversarial.yaml`, in a new directory.
pub fn rules_with(extra: &str) -> tempfile::TempDir {
    let dir = scratch("rules", false);
    for entry in std::fs::read_dir(shipped_rules()).unwrap().flatten() {
        let path = entry.path();
        if path.extension() == Some(OsStr::new("yaml")) {
            std::fs::copy(&path, dir.path().join(entry.file_name())).unwrap();
        }
    }
    std::fs::write(dir.path().join("90-adversarial.yaml"), extra).unwrap();
    dir
}

pub fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// -------------------------------------------------------------------------------------------------
// Processes
// -------------------------------------------------------------------------------------------------

/// Runs `cmd` to completion with a deadline; a hang is a test failure, not a stuck suite.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?} (a hung daemon holds its calls)");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// `program args…` as uid/gid 65534 (supplementary groups cleared), cwd `/`, no LD_PRELOAD.
pub fn agent_cmd(program: impl AsRef<OsStr>, args: &[&OsStr]) -> Command {
    as_user(AGENT_UID, AGENT_GID, program, args)
}

pub fn as_user(uid: u32, gid: u32, program: impl AsRef<OsStr>, args: &[&OsStr]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .uid(uid)
        .gid(gid)
        .current_dir("/")
        .env_remove("LD_PRELOAD");
    cmd
}

pub fn text(o: &Output) -> String {
    format!(
        "{}\n--- stdout:\n{}--- stderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// The attempt failed with EPERM and leaked nothing.
#[track_caller]
pub fn assert_refused(what: &str, o: &Output, secret: &str) {
    let all = text(o);
    assert!(!o.status.success(), "{what}: must fail, got {all}");
    assert!(all.contains(EPERM_TEXT), "{what}: expected EPERM: {all}");
    assert!(!all.contains(secret), "{what}: the secret leaked: {all}");
}

/// The attempt succeeded and printed `expected`.
#[track_caller]
pub fn assert_read(what: &str, o: &Output, expected: &str) {
    let all = text(o);
    assert!(o.status.success(), "{what}: must succeed: {all}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(expected),
        "{what}: expected {expected:?} on stdout: {all}"
    );
}

// -------------------------------------------------------------------------------------------------
// The daemon
// -------------------------------------------------------------------------------------------------

/// A real `oknekd` with its own config, state and runtime directories. `stop` ends it with
/// SIGTERM and checks it exited 0; dropping it without `stop` (a failed test) still ends it.
pub struct Daemon {
    child: Option<Child>,
    rules: PathBuf,
    config: PathBuf,
    /// Config, log, state and runtime directories: removed when the value is dropped.
    _dir: tempfile::TempDir,
    pub runtime: PathBuf,
    pub state: PathBuf,
    log: PathBuf,
}

/// These suites prove the userspace tiers: the eBPF tier (tested in `ebpf_tier.rs`) is off
/// unless a test's config sets `tiers.ebpf`, so its refusals cannot stand in for theirs.
fn without_ebpf_unless_asked(config: &str) -> String {
    let mut value: serde_norway::Value = if config.trim().is_empty() {
        serde_norway::Value::Null
    } else {
        serde_norway::from_str(config).unwrap()
    };
    if value.is_null() {
        value = serde_norway::Value::Mapping(Default::default());
    }
    let map = value.as_mapping_mut().expect("config is a mapping");
    let tiers = map
        .entry("tiers".into())
        .or_insert_with(|| serde_norway::Value::Mapping(Default::default()));
    let tiers = tiers.as_mapping_mut().expect("tiers is a mapping");
    tiers.entry("ebpf".into()).or_insert_with(|| "off".into());
    serde_norway::to_string(&value).unwrap()
}

impl Daemon {
    /// Starts oknekd on `rules` with `config` (YAML) and waits until `oknek status` answers.
    pub fn start(rules: &Path, config: &str) -> Daemon {
        let dir = scratch("daemon", false);
        let cfg = dir.path().join("oknek.yaml");
        std::fs::write(&cfg, without_ebpf_unless_asked(config)).unwrap();
        let runtime = dir.path().join("run");
        let state = dir.path().join("state");
        let log = dir.path().join("oknekd.log");
        let mut d = Daemon {
            child: None,
            rules: rules.to_owned(),
            config: cfg,
            _dir: dir,
            runtime,
            state,
            log,
        };
        d.spawn();
        d
    }

    /// Starts the daemon process (again) with the same config and directories, and waits until
    /// it answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the daemon is still running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_oknekd"))
            .arg("--config")
            .arg(&self.config)
            .arg("--rules-dir")
            .arg(&self.rules)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--runtime-dir")
            .arg(&self.runtime)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting oknekd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("oknekd exited at start ({status}):\n{}", self.log());
            }
            if self.runtime.join("control.sock").exists()
                && let Ok((status, _)) = self.status()
            {
                let tiers = &status["tiers"];
                let ebpf = tiers["ebpf"].as_bool() == Some(true);
                assert!(
                    ebpf || (tiers["fanotify"].as_bool(), tiers["seccomp"].as_bool())
                        == (Some(true), Some(true)),
                    "both kernel tiers must be armed for this suite: {status}"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "oknekd did not answer in time:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ends the daemon with SIGKILL: no flush, no cleanup, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still there and not stopped.
    pub fn alive_and_running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .unwrap_or("?");
        !matches!(state, "T" | "t" | "Z" | "X" | "?")
    }

    /// `oknek [--runtime-dir R] ARGS…` as root.
    pub fn oknek(&self, args: &[&str]) -> Output {
        self.oknek_as(0, 0, args)
    }

    pub fn oknek_as(&self, uid: u32, gid: u32, args: &[&str]) -> Output {
        let mut cmd = as_user(uid, gid, &bins().oknek, &[]);
        cmd.arg("--runtime-dir").arg(&self.runtime).args(args);
        run(&mut cmd, Duration::from_secs(30))
    }

    /// Root's `oknek status --json`, and how long the answer took.
    pub fn status(&self) -> Result<(Value, Duration), String> {
        let t0 = Instant::now();
        let o = self.oknek(&["status", "--json"]);
        let took = t0.elapsed();
        if !o.status.success() {
            return Err(text(&o));
        }
        serde_json::from_slice(&o.stdout)
            .map(|v| (v, took))
            .map_err(|e| format!("{e}: {}", text(&o)))
    }

    /// Root's `oknek status` must answer within `limit`.
    #[track_caller]
    pub fn assert_serving(&mut self, limit: Duration) -> Value {
        assert!(
            self.alive_and_running(),
            "oknekd is gone or stopped:\n{}",
            self.log()
        );
        let (status, took) = self
            .status()
            .unwrap_or_else(|e| panic!("oknek status failed: {e}\n{}", self.log()));
        assert!(took < limit, "oknek status took {took:?} (limit {limit:?})");
        status
    }

    /// `oknek run --agent AGENT -- CMD…` as uid 65534 from `cwd`.
    pub fn run_agent(&self, agent: &str, cwd: &Path, cmd: &[&OsStr]) -> Output {
        let mut c = agent_cmd(&bins().oknek, &[]);
        c.arg("--runtime-dir")
            .arg(&self.runtime)
            .args(["run", "--agent", agent, "--"])
            .args(cmd)
            .current_dir(cwd);
        run(&mut c, CHILD_TIMEOUT)
    }

    /// Number of open fds of the daemon.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, Iterator::count)
    }

    /// Every bundle, as `oknek events --json` prints them.
    pub fn events(&self) -> Vec<Value> {
        let mut cmd = Command::new(&bins().oknek);
        cmd.arg("events")
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--json");
        let o = run(&mut cmd, Duration::from_secs(60));
        assert!(o.status.success(), "oknek events: {}", text(&o));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    pub fn verify(&self) -> Output {
        let mut cmd = Command::new(&bins().oknek);
        cmd.arg("verify").arg("--state-dir").arg(&self.state);
        run(&mut cmd, Duration::from_secs(60))
    }

    #[track_caller]
    pub fn assert_verifies(&self) -> String {
        let o = self.verify();
        assert!(
            o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("ok:"),
            "oknek verify must pass: {}",
            text(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// SIGTERM, then the exit status must be 0. Returns the log. The state directory stays
    /// (for `events` and `verify`) until the value is dropped.
    #[track_caller]
    pub fn stop(&mut self) -> String {
        let status = self.terminate(Duration::from_secs(20));
        let log = self.log();
        match status {
            Some(s) => assert!(s.success(), "oknekd exited with {s} after SIGTERM:\n{log}"),
            None => panic!("oknekd did not stop within 20 s of SIGTERM:\n{log}"),
        }
        log
    }

    fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() && self.terminate(Duration::from_secs(10)).is_none() {
            eprintln!("oknekd had to be killed:\n{}", self.log());
        }
    }
}

// -------------------------------------------------------------------------------------------------
// Evidence
// -------------------------------------------------------------------------------------------------

/// Bundles of `rule` with `verdict`.
pub fn bundles<'a>(events: &'a [Value], rule: &str, verdict: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["bundle"]["rule"] == rule && e["bundle"]["verdict"] == verdict)
        .collect()
}

pub fn mechanism(e: &Value) -> &str {
    e["bundle"]["mechanism"].as_str().unwrap_or("")
}

pub fn uid_of(e: &Value) -> Option<u64> {
    e["bundle"]["process"]["uid"].as_u64()
}

pub fn path_of(e: &Value) -> &str {
    e["bundle"]["capture"]["path"].as_str().unwrap_or("")
}

// -------------------------------------------------------------------------------------------------
// A client of the hook socket running as another uid
// -------------------------------------------------------------------------------------------------

/// Counters a forked child sends back.
pub type Report = [i64; 32];

/// A child forked from the test process that switched to another uid. Its body runs between
/// `fork` and `_exit` in a process that had threads, so it may only make system calls on data
/// prepared before the fork: no allocation, no locks, no panics.
pub struct Forked {
    pid: libc::pid_t,
    from_child: OwnedFd,
    to_child: OwnedFd,
    reaped: bool,
}

/// What the child's body gets: its report and a way to wait for the parent.
pub struct ChildSide {
    pub report: Report,
    to_parent: RawFd,
    from_parent: RawFd,
}

impl ChildSide {
    /// Sends the report as it is now.
    pub fn send(&self) {
        let bytes = std::mem::size_of::<Report>();
        // SAFETY: writes the report array, which is `bytes` long.
        unsafe { libc::write(self.to_parent, self.report.as_ptr().cast(), bytes) };
    }

    /// Waits until the parent calls `release` (or dies).
    pub fn wait_for_parent(&self) {
        let mut b = 0u8;
        // SAFETY: reads one byte into a local.
        unsafe { libc::read(self.from_parent, (&raw mut b).cast(), 1) };
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the kernel just returned both.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Forks, switches the child to `uid`/`gid` (no supplementary groups), runs `body`, sends the
/// final report and exits 0. Exit 90: the uid switch failed.
pub fn fork_as(uid: u32, gid: u32, body: impl FnOnce(&mut ChildSide)) -> Forked {
    let (parent_reads, child_writes) = pipe();
    let (child_reads, parent_writes) = pipe();
    // SAFETY: the child only makes system calls (see `Forked`) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: raw system calls; _exit never returns.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0
                || libc::getuid() != uid
            {
                libc::_exit(90);
            }
            let mut side = ChildSide {
                report: [0; 32],
                to_parent: child_writes.as_raw_fd(),
                from_parent: child_reads.as_raw_fd(),
            };
            body(&mut side);
            side.send();
            libc::_exit(0);
        }
    }
    drop(child_writes);
    drop(child_reads);
    Forked {
        pid,
        from_child: parent_reads,
        to_child: parent_writes,
        reaped: false,
    }
}

impl Forked {
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// The next report the child sends; `None` when it exited or the time ran out.
    pub fn report(&self, timeout: Duration) -> Option<Report> {
        let mut report: Report = [0; 32];
        let size = std::mem::size_of::<Report>();
        let mut got = 0;
        let deadline = Instant::now() + timeout;
        while got < size {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut p = libc::pollfd {
                fd: self.from_child.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, left.as_millis().min(1000) as i32) };
            if p.revents == 0 {
                continue;
            }
            // SAFETY: reads into the rest of the report array.
            let n = unsafe {
                libc::read(
                    self.from_child.as_raw_fd(),
                    report.as_mut_ptr().cast::<u8>().add(got).cast(),
                    size - got,
                )
            };
            if n <= 0 {
                return None;
            }
            got += n as usize;
        }
        Some(report)
    }

    /// Lets a child waiting in `wait_for_parent` go on.
    pub fn release(&self) {
        // SAFETY: writes one byte from a local.
        unsafe { libc::write(self.to_child.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    }

    /// The child's exit code (negative: killed by that signal); kills it after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut status = 0;
            // SAFETY: status is a valid int.
            let rc = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if rc == self.pid {
                self.reaped = true;
                return if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    -libc::WTERMSIG(status)
                };
            }
            if Instant::now() > deadline {
                // SAFETY: our own child.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: our own child; reaping it.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// Raw socket calls for the child side. All of them are plain system calls.
pub mod raw {
    use std::os::fd::RawFd;

    /// `socket(AF_UNIX, kind)` + `connect`; the fd, or `-errno`.
    pub fn connect(addr: &libc::sockaddr_un, kind: libc::c_int) -> RawFd {
        // SAFETY: no pointers.
        let fd = unsafe { libc::socket(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return -errno();
        }
        // SAFETY: addr is a valid sockaddr_un.
        let rc = unsafe {
            libc::connect(
                fd,
                (addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            let e = errno();
            close(fd);
            return -e;
        }
        fd
    }

    pub fn close(fd: RawFd) {
        // SAFETY: closing an fd this child owns.
        unsafe { libc::close(fd) };
    }

    pub fn errno() -> i32 {
        // SAFETY: reading this thread's errno.
        unsafe { *libc::__errno_location() }
    }

    /// Sends one message with `fds` as SCM_RIGHTS (up to 8); bytes sent or `-errno`.
    pub fn send(fd: RawFd, bytes: &[u8], fds: &[RawFd], flags: libc::c_int) -> isize {
        let mut cmsg = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        // SAFETY: msghdr is plain data; the pointers below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        let fds = &fds[..fds.len().min(8)];
        if !fds.is_empty() {
            let data_len = std::mem::size_of_val(fds) as u32;
            msg.msg_control = cmsg.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE is arithmetic.
            msg.msg_controllen = unsafe { libc::CMSG_SPACE(data_len) } as usize;
            // SAFETY: the control buffer holds one header and 8 fds.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(data_len) as usize;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr(),
                    libc::CMSG_DATA(c).cast::<RawFd>(),
                    fds.len(),
                );
            }
        }
        // SAFETY: msg describes valid buffers.
        let n = unsafe { libc::sendmsg(fd, &msg, flags | libc::MSG_NOSIGNAL) };
        if n < 0 { -(errno() as isize) } else { n }
    }

    /// Waits up to `ms` for one message; its length (0: end of stream), or `-errno`
    /// (`-EAGAIN`: nothing came).
    pub fn recv(fd: RawFd, buf: &mut [u8], ms: i32) -> isize {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut p, 1, ms) } <= 0 {
            return -(libc::EAGAIN as isize);
        }
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 { -(errno() as isize) } else { n }
    }

    /// Whether the peer closed this connection (readable with nothing, or hung up).
    pub fn peer_closed(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 0) };
        p.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0
    }

    /// Raises the soft fd limit to the hard one.
    pub fn raise_nofile() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: lim is valid for reading and writing.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    }

    /// A seccomp user-notification listener of this process's own, from a filter that allows
    /// everything: a genuine listener anyone can make. The fd, or `-errno`.
    pub fn own_seccomp_listener() -> RawFd {
        let mut allow = [libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x7fff_0000,
        }];
        let prog = libc::sock_fprog {
            len: 1,
            filter: allow.as_mut_ptr(),
        };
        // SAFETY: prctl and seccomp with a valid program.
        unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            let fd = libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &raw const prog,
            );
            if fd < 0 { -errno() } else { fd as RawFd }
        }
    }

    pub fn eventfd() -> RawFd {
        // SAFETY: no pointers.
        unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) }
    }

    pub fn pipe() -> [RawFd; 2] {
        let mut fds = [-1; 2];
        // SAFETY: fds has room for two descriptors.
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        fds
    }

    pub fn open(path: &std::ffi::CStr, flags: libc::c_int) -> RawFd {
        // SAFETY: path is NUL-terminated.
        unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) }
    }
}

/// Hook-socket frames, built before forking.
pub mod frames {
    use oknek_protocol::{self as proto, FLAG_WANT_VERDICT, Op, Writer};

    pub fn open(seq: u32, path: &str, want_verdict: bool) -> Vec<u8> {
        let mut buf = vec![0u8; proto::MAX_FRAME];
        let flags = if want_verdict { FLAG_WANT_VERDICT } else { 0 };
        let mut w = Writer::new(&mut buf, Op::Open, seq, flags).unwrap();
        w.put_u32(libc::AT_FDCWD as u32);
        w.put_u32(0);
        w.put_u32(0);
        w.put_cstr(path.as_bytes());
        w.finish().to_vec()
    }

    pub fn register(seq: u32, agent: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; proto::MAX_FRAME];
        let mut w = Writer::new(&mut buf, Op::RegisterSeccomp, seq, 0).unwrap();
        w.put_cstr(agent);
        w.finish().to_vec()
    }

    /// A header with any magic, version, op and flags, then `payload`.
    pub fn raw(magic: u32, version: u16, op: u16, seq: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(16 + payload.len());
        f.extend_from_slice(&magic.to_le_bytes());
        f.extend_from_slice(&version.to_le_bytes());
        f.extend_from_slice(&op.to_le_bytes());
        f.extend_from_slice(&seq.to_le_bytes());
        f.extend_from_slice(&flags.to_le_bytes());
        f.extend_from_slice(payload);
        f
    }

    pub fn decode_reply(b: &[u8]) -> Option<proto::Reply> {
        proto::Reply::decode(b)
    }

    /// Deterministic bytes (xorshift), so a failure can be replayed.
    pub fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }
}

/// Root's plain connection to a stream socket: write `bytes`, read what comes back (or nothing
/// within `timeout`).
pub fn stream_exchange(path: &Path, bytes: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(bytes)?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) if out.is_empty() => Err(e),
        Err(_) => Ok(out),
    }
}
