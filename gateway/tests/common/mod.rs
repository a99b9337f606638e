//! The real `oknekd`, the real gateway and fake providers, in a temporary directory.
//!
//! The daemon runs with the eBPF tier off and one agent, uid 65534; clients are dropped to that
//! uid with `setpriv`. Needs root (a daemon judging another uid's process, switching uid).

// Each test binary that includes this module uses a different subset of it.
#![allow(dead_code)]

pub mod fake;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const AGENT_UID: u32 = 65534;

/// True when the suite can run; prints the skip line otherwise.
pub fn root_or_skip() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        true
    } else {
        eprintln!("skipped: needs root (a daemon judging another uid, setpriv to uid {AGENT_UID})");
        false
    }
}

/// One scenario at a time: the machine has two cores and each starts a daemon and a gateway.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

// -------------------------------------------------------------------------------------------------
// Binaries
// -------------------------------------------------------------------------------------------------

pub struct Bins {
    pub gateway: PathBuf,
    pub oknekd: PathBuf,
    pub oknek: PathBuf,
}

/// The gateway of this package, and oknekd and oknek from the same target directory, brought up
/// to date first: cargo only builds the binaries of the package under test, and a stale daemon
/// would test yesterday's decisions.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let gateway = PathBuf::from(env!("CARGO_BIN_EXE_oknek-gateway"));
        let profile_dir = gateway.parent().unwrap().to_owned();
        let oknekd = profile_dir.join("oknekd");
        let oknek = profile_dir.join("oknek");
        {
            let target_dir = profile_dir.parent().unwrap();
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = Command::new(&cargo);
            build
                .args(["build", "-p", "oknekd", "-p", "oknek"])
                .env("CARGO_TARGET_DIR", target_dir)
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if profile_dir.file_name() == Some(OsStr::new("release")) {
                build.arg("--release");
            }
            let status = build.status();
            assert!(
                matches!(status, Ok(s) if s.success()) && oknekd.is_file() && oknek.is_file(),
                "oknekd/oknek are not built in {} and `cargo build -p oknekd -p oknek` failed \
                 ({status:?})",
                profile_dir.display()
            );
        }
        Bins {
            gateway,
            oknekd,
            oknek,
        }
    })
}

// -------------------------------------------------------------------------------------------------
// Python clients
// -------------------------------------------------------------------------------------------------

/// The Python environment with the official `openai` and `anthropic` SDKs and the `llm` CLI.
pub struct Python {
    /// The venv's interpreter (a symlink to the system one).
    pub python: PathBuf,
    /// The interpreter binary itself, what /proc/PID/exe shows.
    pub real: PathBuf,
    pub site_packages: PathBuf,
    pub llm: PathBuf,
}

/// `OKNEK_TEST_VENV` (default /opt/oknek-test-venv, which .ci/run creates). Missing: a skip
/// line, or a failure under CI where it must be there.
pub fn python_or_skip() -> Option<Python> {
    let venv = PathBuf::from(
        std::env::var_os("OKNEK_TEST_VENV").unwrap_or_else(|| "/opt/oknek-test-venv".into()),
    );
    let python = venv.join("bin/python");
    let check = Command::new(&python)
        .args([
            "-c",
            "import openai, anthropic, sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output();
    let llm = venv.join("bin/llm");
    let problem = match &check {
        Ok(o) if o.status.success() && llm.is_file() => None,
        Ok(o) => Some(format!(
            "{} cannot import openai/anthropic or has no llm CLI: {}",
            python.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("{}: {e}", python.display())),
    };
    if let Some(problem) = problem {
        let fix = format!(
            "python3 -m venv {0} && {0}/bin/pip install openai anthropic llm",
            venv.display()
        );
        assert!(
            std::env::var_os("CI").is_none(),
            "the real-client tests need {problem}; .ci/run installs it ({fix})"
        );
        eprintln!("skipped: {problem} (install with: {fix})");
        return None;
    }
    let site_packages = PathBuf::from(String::from_utf8_lossy(&check.unwrap().stdout).trim());
    let real = std::fs::canonicalize(&python).unwrap();
    Some(Python {
        python,
        real,
        site_packages,
        llm,
    })
}

// -------------------------------------------------------------------------------------------------
// The scenario: fake providers, daemon, gateway
// -------------------------------------------------------------------------------------------------

pub const OPENAI_HOST: &str = "api.openai.test";
pub const ANTHROPIC_HOST: &str = "api.anthropic.test";

pub struct Providers {
    pub ca: fake::TestCa,
    pub openai: fake::FakeProvider,
    pub anthropic: fake::FakeProvider,
    pub local: fake::FakeProvider,
}

/// The fake providers, shared by every scenario of a test binary.
pub fn providers() -> &'static Providers {
    static P: OnceLock<Providers> = OnceLock::new();
    P.get_or_init(|| {
        let ca = fake::TestCa::new(&[OPENAI_HOST, ANTHROPIC_HOST]);
        let gap = Duration::from_millis(30);
        let openai = fake::FakeProvider::start(Some(&ca), gap);
        let anthropic = fake::FakeProvider::start(Some(&ca), gap);
        let local = fake::FakeProvider::start(None, gap);
        Providers {
            ca,
            openai,
            anthropic,
            local,
        }
    })
}

pub struct Scenario {
    pub dir: tempfile::TempDir,
    daemon: Option<Child>,
    gateway: Option<Child>,
    pub state: PathBuf,
    pub runtime: PathBuf,
    pub gateway_sock: PathBuf,
    pub gateway_tcp: String,
    gateway_log: PathBuf,
    daemon_log: PathBuf,
}

impl Scenario {
    /// A daemon with `rules` (one YAML file) and, when given, its clock pinned to `clock` (unix
    /// seconds), and a gateway in front of the three fake providers.
    pub fn start(rules: &str, clock: Option<i64>) -> Scenario {
        Scenario::start_as(rules, clock, AGENT_UID)
    }

    /// The same with another uid as the agent (the benchmark is its own client).
    pub fn start_as(rules: &str, clock: Option<i64>, agent_uid: u32) -> Scenario {
        let p = providers();
        let dir = tempfile::Builder::new()
            .prefix("oknek-gw-test-")
            .tempdir()
            .unwrap();
        set_mode(dir.path(), 0o755);
        let root = dir.path();
        let rules_dir = root.join("rules");
        std::fs::create_dir(&rules_dir).unwrap();
        std::fs::write(rules_dir.join("50-test.yaml"), rules).unwrap();
        let state = root.join("state");
        let runtime = root.join("run");
        let daemon_cfg = root.join("oknek.yaml");
        std::fs::write(
            &daemon_cfg,
            format!(
                "tiers: {{ebpf: off, fanotify: off, seccomp: off, preload: off}}\n\
                 agents:\n  - name: sdk-agent\n    uid: [{agent_uid}]\n"
            ),
        )
        .unwrap();
        let daemon_log = root.join("oknekd.log");
        let mut cmd = Command::new(&bins().oknekd);
        cmd.arg("--config")
            .arg(&daemon_cfg)
            .arg("--rules-dir")
            .arg(&rules_dir)
            .arg("--state-dir")
            .arg(&state)
            .arg("--runtime-dir")
            .arg(&runtime)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&daemon_log).unwrap());
        if let Some(secs) = clock {
            cmd.env("OKNEK_TEST_CLOCK", secs.to_string());
        }
        let daemon = cmd.spawn().expect("starting oknekd");
        let mut s = Scenario {
            gateway_sock: root.join("gateway.sock"),
            gateway_log: root.join("gateway.log"),
            dir,
            daemon: Some(daemon),
            gateway: None,
            state,
            runtime,
            gateway_tcp: String::new(),
            daemon_log,
        };
        s.wait_for(
            |s| s.runtime.join("control.sock").exists(),
            "oknekd's control socket",
        );
        let root = s.dir.path();
        std::fs::write(root.join("ca.pem"), &p.ca.ca_pem).unwrap();
        std::fs::write(
            root.join("hosts"),
            format!("127.0.0.1 {OPENAI_HOST} {ANTHROPIC_HOST}\n"),
        )
        .unwrap();
        // No nameserver: every name must come from the hosts fixture, no query leaves the host.
        std::fs::write(root.join("resolv.conf"), "# no nameservers in tests\n").unwrap();
        let gateway_cfg = root.join("gateway.yaml");
        std::fs::write(
            &gateway_cfg,
            format!(
                "providers:\n\
                 \x20 - {{name: openai, kind: cloud, api: openai, endpoints: [\"{OPENAI_HOST}:{}\"]}}\n\
                 \x20 - {{name: anthropic, kind: cloud, api: anthropic, endpoints: [\"{ANTHROPIC_HOST}:{}\"]}}\n\
                 \x20 - {{name: vllm, kind: local, api: openai, endpoints: [\"{}\"]}}\n\
                 gateway:\n\
                 \x20 listen: [\"{}\", \"127.0.0.1:0\"]\n\
                 \x20 control_socket: {}\n\
                 \x20 ca_file: {}\n\
                 \x20 system_roots: false\n\
                 \x20 hosts_file: {}\n\
                 \x20 resolv_conf: {}\n",
                p.openai.addr.port(),
                p.anthropic.addr.port(),
                p.local.addr,
                s.gateway_sock.display(),
                s.runtime.join("control.sock").display(),
                root.join("ca.pem").display(),
                root.join("hosts").display(),
                root.join("resolv.conf").display(),
            )
            ,
        )
        .unwrap();
        let gateway = Command::new(&bins().gateway)
            .arg("--config")
            .arg(&gateway_cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&s.gateway_log).unwrap())
            .spawn()
            .expect("starting oknek-gateway");
        s.gateway = Some(gateway);
        s.wait_for(
            |s| s.gateway_log().contains("listening on 127.0.0.1:"),
            "the gateway's TCP listener",
        );
        let log = s.gateway_log();
        s.gateway_tcp = log
            .lines()
            .find_map(|l| l.strip_prefix("oknek-gateway: listening on 127.0.0.1:"))
            .map(|port| format!("127.0.0.1:{}", port.trim()))
            .unwrap();
        s
    }

    fn wait_for(&mut self, ready: impl Fn(&Scenario) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(self) {
            let mut exited = None;
            for (name, child) in [
                ("oknekd", &mut self.daemon),
                ("oknek-gateway", &mut self.gateway),
            ] {
                if let Some(c) = child
                    && let Ok(Some(status)) = c.try_wait()
                {
                    exited = Some((name, status));
                }
            }
            if let Some((name, status)) = exited {
                panic!(
                    "{name} exited ({status}) while waiting for {what}:\n{}\n{}",
                    self.daemon_log(),
                    self.gateway_log()
                );
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn gateway_pid(&self) -> u32 {
        self.gateway.as_ref().map_or(0, Child::id)
    }

    pub fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().map_or(0, Child::id)
    }

    pub fn gateway_log(&self) -> String {
        std::fs::read_to_string(&self.gateway_log).unwrap_or_default()
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(&self.daemon_log).unwrap_or_default()
    }

    /// Runs a Python client script as the agent (uid 65534) with `interpreter`; the script prints
    /// one JSON line, which is returned.
    pub fn client(&self, py: &Python, interpreter: &Path, script: &str, args: &[&str]) -> Value {
        let path = self.dir.path().join("client.py");
        std::fs::write(&path, script).unwrap();
        set_mode(&path, 0o644);
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid",
            &AGENT_UID.to_string(),
            "--regid",
            &AGENT_UID.to_string(),
            "--clear-groups",
        ])
        .arg(interpreter)
        .arg(&path)
        .args(args)
        .env("PYTHONPATH", &py.site_packages)
        .env("HOME", self.dir.path())
        .env("GW_TCP", &self.gateway_tcp)
        .env("GW_SOCK", &self.gateway_sock);
        let o = run(&mut cmd, Duration::from_secs(60));
        let stdout = String::from_utf8_lossy(&o.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| {
                panic!(
                    "client printed no result ({}):\n{stdout}\n{}\ngateway:\n{}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr),
                    self.gateway_log()
                )
            });
        serde_json::from_str(line).unwrap()
    }

    /// Stops the daemon (it flushes evidence on SIGTERM) and the gateway; returns every bundle
    /// and checks the store verifies.
    pub fn finish(&mut self) -> Vec<Value> {
        if let Some(mut g) = self.gateway.take() {
            let _ = g.kill();
            let _ = g.wait();
        }
        if let Some(mut d) = self.daemon.take() {
            // SAFETY: kill has no memory preconditions; the pid is our own child's.
            unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while d.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "oknekd did not stop on SIGTERM");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let verify = run(
            Command::new(&bins().oknek)
                .arg("verify")
                .arg("--state-dir")
                .arg(&self.state),
            Duration::from_secs(60),
        );
        assert!(
            verify.status.success() && String::from_utf8_lossy(&verify.stdout).starts_with("ok"),
            "oknek verify must pass: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        let events = run(
            Command::new(&bins().oknek)
                .arg("events")
                .arg("--state-dir")
                .arg(&self.state)
                .arg("--json"),
            Duration::from_secs(60),
        );
        assert!(events.status.success(), "oknek events failed");
        String::from_utf8_lossy(&events.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        for child in [self.gateway.as_mut(), self.daemon.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a command with a time limit; a hung child is killed and fails the test.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} hung for {timeout:?}:\n{}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
