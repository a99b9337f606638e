//! What one decision costs an agent, per enforcement tier, with the real daemon: p50/p99 of an
//! open()+close() by an agent process (uid 65534), timed by that process itself with
//! clock_gettime, against the same open with oknekd stopped.
//!
//! `cargo bench -p oknekd --bench tiers` (root; prints "skipped" otherwise). After `--`:
//! `--quick` (2 rounds, 5000 opens per case), `--write-opener DIR` (compile the timing program
//! into DIR, print its path and stop; `scripts/bench.sh` times fapolicyd with it). Environment:
//! `OKNEK_BENCH_N` (timed opens per case, default 30000), `OKNEK_BENCH_ROUNDS` (default 5).
//!
//! It runs the release binaries next to this bench (`<target>/release/{oknekd, oknek,
//! liboknek_preload.so}`) and builds them with `cargo build --release -p oknekd -p oknek -p
//! oknek-preload` when one is missing (`scripts/bench.sh` builds them first).
//!
//! # The cases
//!
//! (a) **bare**: the timing program alone, oknekd stopped. (b) **unprotected**: oknekd running,
//! the agent opens a file no rule names. (c) **protected-but-allowed**: a file that a block rule
//! names, so the tier hands the open to oknekd, and whose rule does not block this caller — the
//! figure is one whole decision (kernel or socket round trip, agent lookup, /proc identity, rule
//! evaluation) with no evidence to write. The rule shape differs per tier:
//!
//! * **fanotify**: `scoped.txt`, named by a block rule limited to another agent (`agents:
//!   [someone-else]`). `oknekd/src/plan.rs` marks rules limited to some agents too (the decision
//!   is per agent), so every open of the file waits for oknekd, and the engine skips the rule for
//!   agent `bench`. (A rule for every agent would block the agent; a conditional rule — flags,
//!   `when` — is not marked at all.)
//! * **`oknek run`** (seccomp) notifies *every* open of the launched tree, so (b) is already a
//!   decision. It cannot open `scoped.txt`: oknekd refuses to emulate an open of any object its
//!   fanotify tier marked (it would wait for itself), whatever the rules say. (c) therefore opens
//!   `guarded.txt`, named by a rule for every agent that blocks only opens that may write
//!   (`flags: {write: true}`): the rule applies, its path matches, only the flags let the read
//!   through. Such a rule is userspace-only, so fanotify does not mark it.
//! * **preload**: the hook table lists every block rule's paths, agent-scoped ones included, so
//!   the shim asks about `scoped.txt` and oknekd answers "allow". Measured against a daemon with
//!   the fanotify tier off (as on a host without it), so that the figure is this tier's alone;
//!   with fanotify armed too the same open makes two decisions (extra row). (b) costs the table
//!   lookup and, because the table has inode entries, one `fstat`.
//!
//! Extra rows: a `warn` rule that fires on a fanotify-marked file (allowed, one signed evidence
//! bundle and one alert per open), and a non-agent (uid 65533) opening the marked file (marks are
//! per inode: everyone pays the round trip; oknekd allows non-agents after the agent lookup).
//!
//! The figures are medians over interleaved rounds of each round's p50 and p99 (the host is
//! shared and noisy). Each daemon case also reports the decisions oknekd counted per open (its
//! `events` counter: "no round trip" is shown, not inferred from timings), evidence bundles per
//! open, oknekd's CPU time per open (/proc/PID/stat), and whether the file carries a fanotify
//! mark of oknekd (/proc/PID/fdinfo).

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use oknekd::control::{Request, Response};
use serde_json::Value;

/// The agent's uid (declared in the config below) and a uid that is no agent.
const AGENT_UID: u32 = 65534;
const OTHER_UID: u32 = 65533;

/// Goals of the issue: added latency of one decision, and the reference figures it quotes.
const GOAL_P50_US: f64 = 20.0;
const GOAL_P99_US: f64 = 200.0;
/// "Nothing measurable" for unprotected opens: no round trip, and at most this much more p50.
const NOISE_US: f64 = 1.0;
const SEED_MEDIAN_US: f64 = 3000.0;
const FAPOLICYD_QUOTED_US: f64 = 30.0;
const AUDITD_QUOTED_US: f64 = 60.0;

/// The timing program: opens and closes PATH N times after WARM untimed opens and prints
/// percentiles of the open()+close() durations in ns. Dynamically linked, so the preload shim
/// can be loaded into it; it calls the public `open`, as programs do.
const OPENER_C: &str = r#"/* open()+close() timing loop of oknekd/benches/tiers.rs (also used by scripts/bench.sh) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int cmp(const void *a, const void *b) {
    unsigned long long x = *(const unsigned long long *)a, y = *(const unsigned long long *)b;
    return (x > y) - (x < y);
}

static unsigned long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s PATH N [WARM]\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    long n = atol(argv[2]);
    long warm = argc > 3 ? atol(argv[3]) : n / 10;
    if (n <= 0 || warm < 0) {
        fprintf(stderr, "N must be > 0 and WARM >= 0\n");
        return 2;
    }
    unsigned long long *s = malloc(sizeof *s * (size_t)n);
    if (!s) return 3;
    for (long i = 0; i < warm + n; i++) {
        unsigned long long t0 = now_ns();
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            fprintf(stderr, "open %s: %s\n", path, strerror(errno));
            return 1;
        }
        close(fd);
        unsigned long long dt = now_ns() - t0;
        if (i >= warm) s[i - warm] = dt;
    }
    qsort(s, (size_t)n, sizeof *s, cmp);
    double sum = 0;
    for (long i = 0; i < n; i++) sum += (double)s[i];
#define AT(q) s[(long)((double)(n - 1) * (q) + 0.5)]
    printf("n=%ld p50=%llu p90=%llu p99=%llu p999=%llu max=%llu mean=%.0f\n", n, AT(0.50),
           AT(0.90), AT(0.99), AT(0.999), s[n - 1], sum / (double)n);
    return 0;
}
"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--write-opener") {
        let Some(dir) = args.get(i + 1) else {
            eprintln!("--write-opener needs a directory");
            std::process::exit(2);
        };
        match compile_opener(Path::new(dir)) {
            Ok(p) => println!("{}", p.display()),
            Err(e) => {
                eprintln!("tiers: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root (fanotify, oknek run as uid {AGENT_UID})");
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let env_num = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&v| v > 0)
            .unwrap_or(default)
    };
    let n = env_num("OKNEK_BENCH_N", if quick { 5_000 } else { 30_000 });
    let rounds = env_num("OKNEK_BENCH_ROUNDS", if quick { 2 } else { 5 });
    if let Err(e) = run(n, rounds) {
        // A setup failure is a failure; slow figures never are.
        eprintln!("tiers: {e}");
        std::process::exit(1);
    }
}

/// The release binaries this bench drives.
struct Bins {
    oknekd: PathBuf,
    oknek: PathBuf,
    shim: PathBuf,
}

/// Finds the binaries in the target directory this bench was built into
/// (`<target>/release/deps/tiers-…` → `<target>/release/`), always built first: cargo does
/// nothing when they are current, and a stale daemon would be measured otherwise.
fn locate_bins() -> Result<Bins, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let release = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot find the target directory of this bench")?;
    let target = release.parent().unwrap_or(release);
    let bins = Bins {
        oknekd: release.join("oknekd"),
        oknek: release.join("oknek"),
        shim: release.join("liboknek_preload.so"),
    };
    let missing = || -> Vec<String> {
        [&bins.oknekd, &bins.oknek, &bins.shim]
            .iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect()
    };
    let build = format!(
        "CARGO_TARGET_DIR={} cargo build --release -p oknekd -p oknek -p oknek-preload",
        target.display()
    );
    eprintln!("tiers: running `{build}`");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "oknekd",
            "-p",
            "oknek",
            "-p",
            "oknek-preload",
        ])
        .env("CARGO_TARGET_DIR", target)
        .current_dir(workspace)
        .status();
    match status {
        Ok(s) if s.success() && missing().is_empty() => Ok(bins),
        Ok(s) if s.success() => Err(format!(
            "`{build}` succeeded but {} still missing",
            missing().join(", ")
        )),
        Ok(s) => Err(format!(
            "`{build}` failed ({s}); build the binaries and rerun"
        )),
        Err(e) => Err(format!("cannot run cargo ({e}); run `{build}` and rerun")),
    }
}

/// Writes the timing program's source into `dir` and compiles it with the system C compiler.
fn compile_opener(dir: &Path) -> Result<PathBuf, String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let src = dir.join("opener.c");
    let bin = dir.join("opener");
    fs::write(&src, OPENER_C).map_err(|e| format!("{}: {e}", src.display()))?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-O2", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .map_err(|e| format!("running the C compiler `{cc}` (install gcc): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cc} failed on {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    Ok(bin)
}

/// p50 and p99 of one run of the timing program, in ns.
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    p50: f64,
    p99: f64,
}

fn parse_stats(text: &str) -> Option<Stats> {
    let mut s = Stats::default();
    let (mut got50, mut got99) = (false, false);
    for kv in text.split_whitespace() {
        let (k, v) = kv.split_once('=')?;
        match k {
            "p50" => (s.p50, got50) = (v.parse().ok()?, true),
            "p99" => (s.p99, got99) = (v.parse().ok()?, true),
            _ => {}
        }
    }
    (got50 && got99).then_some(s)
}

/// How the timing program is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Bare,
    Preload,
    Seccomp,
}

/// Paths the runs need, all under the bench's temporary directory (readable by uid 65534).
struct Setup {
    root: PathBuf,
    opener: PathBuf,
    oknek: PathBuf,
    shim: PathBuf,
    runtime: PathBuf,
}

impl Setup {
    /// Runs the timing program `n` (+ n/10 warm-up) times on `path` as `uid`.
    fn open_loop(&self, via: Via, path: &Path, uid: u32, n: usize) -> Result<Stats, String> {
        let warm = (n / 10).max(100);
        let mut cmd = match via {
            Via::Seccomp => {
                let mut c = Command::new(&self.oknek);
                c.arg("--runtime-dir")
                    .arg(&self.runtime)
                    .args(["run", "--agent", "bench", "--"])
                    .arg(&self.opener);
                c
            }
            Via::Bare | Via::Preload => Command::new(&self.opener),
        };
        cmd.arg(path).arg(n.to_string()).arg(warm.to_string());
        cmd.env_clear().env("PATH", "/usr/bin:/bin");
        if via == Via::Preload {
            cmd.env("LD_PRELOAD", &self.shim)
                .env("OKNEK_RUNTIME_DIR", &self.runtime);
        }
        // std drops supplementary groups (setgroups(0)) when root sets a uid.
        cmd.uid(uid).gid(uid).current_dir(&self.root);
        let out = output_within(cmd, Duration::from_secs(900))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "{via:?} open loop on {} failed ({}): {}{}",
                path.display(),
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        parse_stats(stdout.lines().last().unwrap_or_default())
            .ok_or_else(|| format!("unexpected output of the timing program: {stdout:?}"))
    }
}

/// `Command::output` with a deadline: a wedged run is killed and reported, never waited for.
fn output_within(mut cmd: Command, limit: Duration) -> Result<Output, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning {cmd:?}: {e}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(r) => r.map_err(|e| format!("waiting for {cmd:?}: {e}")),
        Err(_) => {
            // SAFETY: no memory effects; the pid is our unreaped child (the waiting thread
            // has not returned), so it cannot have been reused.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            Err(format!("{cmd:?} did not finish within {limit:?}"))
        }
    }
}

/// A running oknekd on the bench's temporary directories.
struct Daemon {
    child: Option<Child>,
    runtime: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(oknekd: &Path, root: &Path, config: Config) -> Result<Daemon, String> {
        let log = root.join("oknekd.log");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| e.to_string())?;
        let runtime = root.join("run");
        let child = Command::new(oknekd)
            .arg("--config")
            .arg(root.join(config.file()))
            .arg("--rules-dir")
            .arg(root.join("rules"))
            .arg("--state-dir")
            .arg(root.join("state"))
            .arg("--runtime-dir")
            .arg(&runtime)
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(|e| e.to_string())?)
            .stderr(file)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", oknekd.display()))?;
        let mut d = Daemon {
            child: Some(child),
            runtime,
            log,
        };
        // Ready when the control socket answers: the loop serves it only after every tier is
        // armed and the hook table is published.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = d.status() {
                let armed = |t: &str| st["tiers"][t].as_bool() == Some(true);
                if config.tiers().iter().all(|t| armed(t))
                    && d.runtime.join("preload.table").is_file()
                {
                    return Ok(d);
                }
                return Err(format!(
                    "oknekd runs but not every tier of {config:?} is armed: {}; log:\n{}",
                    st["tiers"],
                    d.log_tail()
                ));
            }
            if let Some(Ok(Some(status))) = d.child.as_mut().map(Child::try_wait) {
                return Err(format!("oknekd exited ({status}); log:\n{}", d.log_tail()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "oknekd did not answer within 60 s; log:\n{}",
                    d.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `oknek status` over the control socket.
    fn status(&self) -> Option<Value> {
        let mut s = UnixStream::connect(self.runtime.join("control.sock")).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let mut line = serde_json::to_vec(&Request::Status {}).ok()?;
        line.push(b'\n');
        s.write_all(&line).ok()?;
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).ok()?;
        let r: Response = serde_json::from_str(&answer).ok()?;
        r.result
    }

    /// The daemon's count of judged events, and of evidence bundles written.
    fn counters(&self) -> Result<(u64, u64), String> {
        let st = self.status().ok_or("oknekd stopped answering")?;
        let c = &st["counters"];
        Ok((
            c["events"].as_u64().unwrap_or(0),
            c["bundles"].as_u64().unwrap_or(0),
        ))
    }

    /// CPU time the daemon has used so far (user + system), in µs.
    fn cpu_us(&self) -> f64 {
        let text = fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<f64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        // utime and stime are fields 14 and 15 of /proc/PID/stat: 12 and 13 after the comm.
        (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) * 1e6 / hz
    }

    /// Inode numbers the daemon's fanotify group has marked (from /proc/PID/fdinfo).
    fn marked_inodes(&self) -> HashSet<u64> {
        let mut out = HashSet::new();
        let Ok(dir) = fs::read_dir(format!("/proc/{}/fdinfo", self.pid())) else {
            return out;
        };
        for entry in dir.flatten() {
            let Ok(text) = fs::read_to_string(entry.path()) else {
                continue;
            };
            for line in text.lines().filter(|l| l.starts_with("fanotify ino:")) {
                if let Some(ino) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("ino:"))
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                {
                    out.insert(ino);
                }
            }
        }
        out
    }

    fn stop(mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: no memory effects; our own unreaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("oknekd did not stop within 30 s of SIGTERM (killed)".into());
                }
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// (a): the reference.
    Bare,
    /// (b): must cost nothing measurable.
    Unprotected,
    /// (c): p50 ≤ 20 µs, p99 ≤ 200 µs added.
    Protected,
    /// Shown for information.
    Extra,
}

/// The daemon configurations the cases run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    /// Every tier the kernel offers (fanotify, seccomp, preload).
    All,
    /// `tiers: {fanotify: off}`: the preload shim alone, as on a host without fanotify.
    NoFanotify,
}

impl Config {
    fn file(self) -> &'static str {
        match self {
            Config::All => "oknek.yaml",
            Config::NoFanotify => "oknek-nofanotify.yaml",
        }
    }

    fn tiers(self) -> &'static [&'static str] {
        match self {
            Config::All => &["fanotify", "seccomp", "preload"],
            Config::NoFanotify => &["seccomp", "preload"],
        }
    }
}

struct Case {
    tier: &'static str,
    label: &'static str,
    via: Via,
    path: PathBuf,
    uid: u32,
    n: usize,
    goal: Goal,
    /// The daemon it runs against; `None` for the bare cases.
    config: Option<Config>,
}

#[derive(Default)]
struct Results {
    p50: Vec<f64>,
    p99: Vec<f64>,
    /// Decisions the daemon counted per open (timed and warm-up), per round.
    judged: Vec<f64>,
    bundles: Vec<f64>,
    /// The daemon's CPU time per open, µs.
    cpu: Vec<f64>,
    marked: Option<bool>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        f64::NAN
    } else {
        s[s.len() / 2]
    }
}

fn write_files(root: &Path) -> Result<BTreeMap<&'static str, PathBuf>, String> {
    let io = |e: std::io::Error| e.to_string();
    let files = root.join("files");
    for d in ["files", "rules", "run", "state", "bin"] {
        fs::create_dir_all(root.join(d)).map_err(io)?;
    }
    for d in [root.to_path_buf(), files.clone(), root.join("bin")] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).map_err(io)?;
    }
    let mut paths = BTreeMap::new();
    for key in ["plain", "scoped", "warned", "guarded"] {
        let p = files.join(format!("{key}.txt"));
        fs::write(&p, "bench\n").map_err(io)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).map_err(io)?;
        paths.insert(key, p);
    }
    let rules = format!(
        r#"oknek_rules: 1
rules:
  # Marked by fanotify and listed in the preload hook table; skipped for agent 'bench'.
  - id: bench.scoped
    title: Another agent opens a scoped file
    kind: open
    agents: [someone-else]
    match: {{ path: ["{scoped}", "{warned}"] }}
    action: block
  - id: bench.warned
    title: An agent reads the warned file
    kind: open
    match: {{ path: "{warned}" }}
    action: warn
  # Applies to every agent, names the file, refuses only opens that may write. Userspace-only
  # (flags), so fanotify does not mark it and oknek run can emulate a read.
  - id: bench.guarded
    title: An agent modifies the guarded file
    kind: open
    match: {{ path: "{guarded}", flags: {{ write: true }} }}
    action: block
"#,
        scoped = paths["scoped"].display(),
        warned = paths["warned"].display(),
        guarded = paths["guarded"].display(),
    );
    fs::write(root.join("rules/bench.yaml"), rules).map_err(io)?;
    let agents = format!("agents:\n  - name: bench\n    uid: [{AGENT_UID}]\n");
    fs::write(root.join(Config::All.file()), &agents).map_err(io)?;
    fs::write(
        root.join(Config::NoFanotify.file()),
        format!("tiers: {{ fanotify: off }}\n{agents}"),
    )
    .map_err(io)?;
    Ok(paths)
}

fn run(n: usize, rounds: usize) -> Result<(), String> {
    let bins = locate_bins()?;
    for installed in ["/etc/oknek/preload.conf", "/run/oknek/preload.table"] {
        if Path::new(installed).exists() {
            return Err(format!(
                "{installed} exists: the preload shim would ignore OKNEK_RUNTIME_DIR (oknek is installed on this host); run the bench where it is not"
            ));
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("oknek-tiers.")
        .tempdir_in("/tmp")
        .map_err(|e| e.to_string())?;
    let root = dir.path().to_path_buf();
    if let Err(e) = measure(&root, &bins, n, rounds) {
        let log = fs::read_to_string(root.join("oknekd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        let kept = dir.keep();
        return Err(format!(
            "{e}\n(files kept in {}; oknekd's log ends with:)\n{tail}",
            kept.display()
        ));
    }
    Ok(())
}

/// Sets the files up in `root`, runs every round and prints the report.
fn measure(root: &Path, bins: &Bins, n: usize, rounds: usize) -> Result<(), String> {
    let root = root.to_path_buf();
    let files = write_files(&root)?;
    // Copies readable by uid 65534 whatever the permissions of the target directory.
    let oknek = root.join("bin/oknek");
    let shim = root.join("bin/liboknek_preload.so");
    for (from, to) in [(&bins.oknek, &oknek), (&bins.shim, &shim)] {
        fs::copy(from, to).map_err(|e| format!("copying {}: {e}", from.display()))?;
        fs::set_permissions(to, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    }
    let setup = Setup {
        opener: compile_opener(&root.join("bin"))?,
        oknek,
        shim,
        runtime: root.join("run"),
        root: root.clone(),
    };

    // (tier, case, how it runs, file, uid, opens divided by, goal, daemon configuration).
    use Config::{All, NoFanotify};
    use Goal::{Bare, Extra, Protected, Unprotected};
    type Spec = (
        &'static str,
        &'static str,
        Via,
        &'static str,
        u32,
        usize,
        Goal,
        Option<Config>,
    );
    #[rustfmt::skip]
    let specs: [Spec; 14] = [
        ("bare", "plain file, oknekd stopped", Via::Bare, "plain", AGENT_UID, 1, Bare, None),
        ("bare", "scoped file, oknekd stopped", Via::Bare, "scoped", AGENT_UID, 1, Bare, None),
        ("bare", "warned file, oknekd stopped", Via::Bare, "warned", AGENT_UID, 1, Bare, None),
        ("bare", "guarded file, oknekd stopped", Via::Bare, "guarded", AGENT_UID, 1, Bare, None),
        ("fanotify", "(b) unprotected file", Via::Bare, "plain", AGENT_UID, 1, Unprotected, Some(All)),
        ("fanotify", "(c) protected-but-allowed (scoped rule)", Via::Bare, "scoped", AGENT_UID, 1, Protected, Some(All)),
        ("fanotify", "protected, allowed, warn rule fires", Via::Bare, "warned", AGENT_UID, 4, Extra, Some(All)),
        ("fanotify", "protected, opened by a non-agent", Via::Bare, "scoped", OTHER_UID, 1, Extra, Some(All)),
        ("seccomp", "(b) unprotected file", Via::Seccomp, "plain", AGENT_UID, 1, Unprotected, Some(All)),
        ("seccomp", "(c) protected-but-allowed (write rule)", Via::Seccomp, "guarded", AGENT_UID, 1, Protected, Some(All)),
        ("preload", "(b) unprotected file", Via::Preload, "plain", AGENT_UID, 1, Unprotected, Some(NoFanotify)),
        ("preload", "(c) protected-but-allowed (scoped rule)", Via::Preload, "scoped", AGENT_UID, 1, Protected, Some(NoFanotify)),
        ("preload", "(b) unprotected, fanotify armed too", Via::Preload, "plain", AGENT_UID, 1, Extra, Some(All)),
        ("preload", "(c) scoped, fanotify armed too", Via::Preload, "scoped", AGENT_UID, 1, Extra, Some(All)),
    ];
    let cases: Vec<Case> = specs
        .iter()
        .map(|&(tier, label, via, file, uid, div, goal, config)| Case {
            tier,
            label,
            via,
            path: files[file].clone(),
            uid,
            n: (n / div).max(100),
            goal,
            config,
        })
        .collect();
    let mut results: Vec<Results> = cases.iter().map(|_| Results::default()).collect();

    println!(
        "oknekd tiers: open()+close() as uid {AGENT_UID} (agent 'bench'), {n} timed opens per case, {rounds} interleaved rounds; figures are medians of the rounds' p50/p99"
    );
    println!(
        "binaries: {} (+ oknek, liboknek_preload.so)",
        bins.oknekd.display()
    );
    let started = Instant::now();
    let bare_cases: Vec<usize> = (0..cases.len())
        .filter(|&i| cases[i].config.is_none())
        .collect();
    // (a) with oknekd stopped, in a rotating order, before each daemon phase and after the last.
    let bare = |round: usize, results: &mut Vec<Results>| -> Result<(), String> {
        let mut order = bare_cases.clone();
        let shift = round % order.len();
        order.rotate_left(shift);
        for i in order {
            let c = &cases[i];
            let s = setup.open_loop(c.via, &c.path, c.uid, c.n)?;
            results[i].p50.push(s.p50);
            results[i].p99.push(s.p99);
        }
        Ok(())
    };
    for round in 0..rounds {
        bare(round, &mut results)?;
        let configs = if round % 2 == 0 {
            [Config::All, Config::NoFanotify]
        } else {
            [Config::NoFanotify, Config::All]
        };
        for config in configs {
            let daemon = Daemon::start(&bins.oknekd, &root, config)?;
            let marked = daemon.marked_inodes();
            // Rotate the order each round so that no case always runs first after the start.
            let mut order: Vec<usize> = (0..cases.len())
                .filter(|&i| cases[i].config == Some(config))
                .collect();
            let shift = round % order.len();
            order.rotate_left(shift);
            for i in order {
                let c = &cases[i];
                let (ev0, b0) = daemon.counters()?;
                let cpu0 = daemon.cpu_us();
                let s = setup.open_loop(c.via, &c.path, c.uid, c.n)?;
                let cpu1 = daemon.cpu_us();
                let (ev1, b1) = daemon.counters()?;
                let opens = (c.n + (c.n / 10).max(100)) as f64;
                let r = &mut results[i];
                r.p50.push(s.p50);
                r.p99.push(s.p99);
                r.judged.push(ev1.saturating_sub(ev0) as f64 / opens);
                r.bundles.push(b1.saturating_sub(b0) as f64 / opens);
                r.cpu.push((cpu1 - cpu0) / opens);
                let ino = fs::metadata(&c.path).map(|m| m.ino()).unwrap_or(0);
                r.marked = Some(marked.contains(&ino));
            }
            daemon.stop()?;
        }
        if round + 1 == rounds {
            bare(round + 1, &mut results)?;
        }
        eprintln!(
            "round {}/{rounds} done ({:.0} s)",
            round + 1,
            started.elapsed().as_secs_f64()
        );
    }

    report(&cases, &results);
    Ok(())
}

fn report(cases: &[Case], results: &[Results]) {
    let us = |ns: f64| ns / 1000.0;
    let or_dash = |show: bool, v: f64| {
        if show {
            format!("{v:.2}")
        } else {
            "-".to_owned()
        }
    };
    println!();
    println!(
        "{:<9} {:<40} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>6} {:>6} {:>7} {:>6}",
        "tier",
        "case",
        "p50 µs",
        "p99 µs",
        "+p50 µs",
        "+p99 µs",
        "p50 ×",
        "p99 ×",
        "judged",
        "bundle",
        "cpu µs",
        "marked"
    );
    let mut verdicts = Vec::new();
    let mut summary = Vec::new();
    // The bare files are alike (same directory, same size): one baseline from all their runs,
    // which evens out the run-to-run spread of a bare open on this host.
    let pooled = |f: fn(&Results) -> &Vec<f64>| {
        let all: Vec<f64> = cases
            .iter()
            .zip(results)
            .filter(|(c, _)| c.goal == Goal::Bare)
            .flat_map(|(_, r)| f(r).iter().copied())
            .collect();
        median(&all)
    };
    let (b50, b99) = (pooled(|r| &r.p50), pooled(|r| &r.p99));
    println!(
        "{:<9} {:<40} {:>8.2} {:>8.2} {:>8} {:>8} {:>7.2} {:>7.2} {:>6} {:>6} {:>7} {:>6}",
        "bare",
        "all bare runs pooled (the baseline)",
        us(b50),
        us(b99),
        "-",
        "-",
        1.0,
        1.0,
        "-",
        "-",
        "-",
        "-"
    );
    for (c, r) in cases.iter().zip(results) {
        let (p50, p99) = (median(&r.p50), median(&r.p99));
        let (add50, add99) = (us(p50 - b50), us(p99 - b99));
        let (judged, daemon) = (c.goal != Goal::Bare, median(&r.judged));
        let marked = match r.marked {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        println!(
            "{:<9} {:<40} {:>8.2} {:>8.2} {:>8} {:>8} {:>7.2} {:>7.2} {:>6} {:>6} {:>7} {:>6}",
            c.tier,
            c.label,
            us(p50),
            us(p99),
            or_dash(judged, add50),
            or_dash(judged, add99),
            p50 / b50,
            p99 / b99,
            or_dash(judged, daemon),
            or_dash(judged, median(&r.bundles)),
            or_dash(judged, median(&r.cpu)),
            marked
        );
        let met = |ok: bool| if ok { "goal met" } else { "goal missed" };
        let cheaper = |quoted: f64| {
            if add50 < quoted {
                "cheaper"
            } else {
                "not cheaper"
            }
        };
        let verdict = match c.goal {
            Goal::Protected if daemon < 0.5 => Some((
                "not measured",
                format!(
                    "not measured: {daemon:.2} decisions per open, the tier did not hand this open to oknekd \
                     (has the rule shape stopped being marked/listed?)"
                ),
            )),
            Goal::Protected => Some((
                met(add50 <= GOAL_P50_US && add99 <= GOAL_P99_US),
                format!(
                    "+{add50:.1} µs p50 (goal ≤ {GOAL_P50_US}), +{add99:.1} µs p99 (goal ≤ {GOAL_P99_US}); \
                     {:.0}× under the seed's 3 ms median; than fapolicyd's quoted +{FAPOLICYD_QUOTED_US} µs: \
                     {}; than auditd's quoted +{AUDITD_QUOTED_US} µs: {}",
                    SEED_MEDIAN_US / add50.max(0.01),
                    cheaper(FAPOLICYD_QUOTED_US),
                    cheaper(AUDITD_QUOTED_US),
                ),
            )),
            Goal::Unprotected if daemon > 0.01 => Some((
                "goal missed",
                format!("{daemon:.2} decisions per open: every open is a round trip on this tier"),
            )),
            Goal::Unprotected => Some((
                met(add50 <= NOISE_US),
                format!(
                    "no round trip, {}, +{add50:.2} µs p50 (≤ {NOISE_US} µs counts as nothing measurable)",
                    if marked == "yes" { "marked" } else { "no mark" }
                ),
            )),
            Goal::Bare | Goal::Extra => None,
        };
        if let Some((word, why)) = verdict {
            verdicts.push(format!("{:<9} {:<40} {word}: {why}", c.tier, c.label));
            summary.push(format!(
                "SUMMARY\t{}\t{}\t{:.2}\t{:.2}\t{add50:.2}\t{add99:.2}\t{:.2}\t{:.2}\t{word}",
                c.tier,
                c.label,
                us(p50),
                us(p99),
                p50 / b50,
                p99 / b99
            ));
        }
    }
    println!();
    println!(
        "+ and × are against the pooled bare open (oknekd stopped; the files are alike). \
         judged: decisions oknekd counted per open; bundle: evidence bundles written per open; \
         cpu: oknekd's CPU time per open; marked: the file's inode carries oknekd's fanotify mark."
    );
    println!();
    println!(
        "verdict (goals: a protected-but-allowed open adds p50 ≤ {GOAL_P50_US} µs and p99 ≤ {GOAL_P99_US} µs; \
         an unprotected open costs nothing measurable: no mark, no round trip):"
    );
    for v in verdicts {
        println!("  {v}");
    }
    println!();
    for line in summary {
        println!("{line}");
    }
}
