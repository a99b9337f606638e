//! The daemon's configuration: /etc/oknek/oknek.yaml.
//!
//! ```yaml
//! oknek_config: 1
//! paths:
//!   rules_dir: /var/lib/oknek/rules/active
//!   state_dir: /var/lib/oknek
//!   runtime_dir: /run/oknek
//!   bpf_pin_dir: /sys/fs/bpf/oknek
//! fail_mode: closed          # what a tier does when no verdict can be reached: open | closed
//! decision_timeout_ms: 200   # how long a waiting tier (preload) waits for a verdict
//! control_gid: 0             # members of this numeric group may use the control socket
//! tiers: { ebpf: auto, fanotify: auto, seccomp: auto, preload: auto }
//! agents:
//!   - name: claude-code
//!     exe: [/usr/local/bin/claude]
//!   - name: aider
//!     unit: [aider.service]
//!     uid: [1001]
//! ```
//!
//! Every key is optional; a missing file means all defaults. Unknown keys are errors, so a typo
//! never silently weakens enforcement. Numeric ids only: the static daemon does no NSS lookups.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::providers::{GatewaySettings, ProviderSpec, Providers};

pub const DEFAULT_CONFIG: &str = "/etc/oknek/oknek.yaml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "version_one")]
    pub oknek_config: u32,
    #[serde(default)]
    pub paths: Paths,
    #[serde(default)]
    pub fail_mode: FailMode,
    #[serde(default = "default_timeout")]
    pub decision_timeout_ms: u64,
    /// Besides root, members of this group may use the control socket.
    #[serde(default)]
    pub control_gid: u32,
    #[serde(default)]
    pub tiers: Tiers,
    #[serde(default)]
    pub agents: Vec<AgentSpec>,
    /// Names `oknek run --agent NAME` may use: `any` (default) or `declared` (only names in
    /// `agents`). Launching under oknek only adds restrictions, so `any` is safe.
    #[serde(default)]
    pub run_agents: RunAgents,
    /// `oknek run`: let exec and unix-socket calls through even when another thread of the
    /// caller could change their arguments after the daemon judged them. Off by default (such
    /// calls are refused when a userspace block rule could apply); see docs/adr/0003.
    #[serde(default)]
    pub seccomp_allow_racy: bool,
    /// Model providers: a connect of an agent to one of their addresses is a `model_call`
    /// (docs/model-calls.md).
    #[serde(default)]
    pub providers: Vec<ProviderSpec>,
    /// The model gateway's settings, read by `oknek-gateway`. When present, agents' direct
    /// connects to cloud providers are refused: the gateway is their only way to a model.
    #[serde(default)]
    pub gateway: Option<GatewaySettings>,
}

fn version_one() -> u32 {
    1
}

fn default_timeout() -> u64 {
    200
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    pub rules_dir: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    /// Where the eBPF probes pin their maps and links (a bpffs directory): what is pinned
    /// keeps enforcing while the daemon restarts.
    pub bpf_pin_dir: PathBuf,
}

impl Default for Paths {
    fn default() -> Paths {
        Paths {
            rules_dir: PathBuf::from("/var/lib/oknek/rules/active"),
            state_dir: PathBuf::from("/var/lib/oknek"),
            runtime_dir: PathBuf::from("/run/oknek"),
            bpf_pin_dir: PathBuf::from("/sys/fs/bpf/oknek"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    Open,
    #[default]
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierSwitch {
    /// Use the tier when the kernel offers it.
    #[default]
    Auto,
    /// Require the tier: the daemon refuses to start without it.
    On,
    Off,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tiers {
    /// The eBPF probes: BPF LSM (or cgroup sock_addr) enforcement and tracepoint observation.
    pub ebpf: TierSwitch,
    pub fanotify: TierSwitch,
    pub seccomp: TierSwitch,
    pub preload: TierSwitch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunAgents {
    #[default]
    Any,
    Declared,
}

/// One agent: a named set of processes. A process is a member when it matches any selector, or
/// descends from a member (membership is inherited over fork and exec).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    pub name: String,
    /// Executable paths.
    #[serde(default)]
    pub exe: Vec<PathBuf>,
    /// Executable contents (hex sha256): a renamed copy is still the agent.
    #[serde(default)]
    pub exe_sha256: Vec<String>,
    /// systemd units (`aider.service`): every process in the unit's cgroup.
    #[serde(default)]
    pub unit: Vec<String>,
    /// cgroup v2 paths relative to the cgroup2 mount (`/system.slice/aider.service`), with
    /// everything below them.
    #[serde(default)]
    pub cgroup: Vec<String>,
    /// Numeric uids: every process of these users.
    #[serde(default)]
    pub uid: Vec<u32>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            oknek_config: 1,
            paths: Paths::default(),
            fail_mode: FailMode::default(),
            decision_timeout_ms: default_timeout(),
            control_gid: 0,
            tiers: Tiers::default(),
            agents: Vec::new(),
            run_agents: RunAgents::default(),
            seccomp_allow_racy: false,
            providers: Vec::new(),
            gateway: None,
        }
    }
}

impl Config {
    /// The validated `providers:` (checked when the file was parsed).
    pub fn providers(&self) -> Providers {
        Providers::from_specs(&self.providers).unwrap_or_default()
    }

    /// Hosts file and resolv.conf provider names are resolved with.
    pub fn resolver_files(&self) -> (PathBuf, PathBuf) {
        let settings = self.gateway.clone().unwrap_or_default();
        (settings.hosts_file, settings.resolv_conf)
    }
}

/// True for names usable as agent names: short, and safe in logs and evidence.
pub fn valid_agent_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Config {
    /// Reads a config file. A missing file at the default location means defaults; a missing file
    /// that was named explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        match fs::read_to_string(path) {
            Ok(text) => Config::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_norway::from_str(text).map_err(|e| {
                let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
                ConfigError::Parse {
                    path: path.to_owned(),
                    line,
                    column,
                    message: e.to_string(),
                }
            })?
        };
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        if self.oknek_config != 1 {
            return Err(invalid(format!(
                "oknek_config: {} is not a version this oknekd understands (expected 1)",
                self.oknek_config
            )));
        }
        if !(1..=10_000).contains(&self.decision_timeout_ms) {
            return Err(invalid(
                "decision_timeout_ms must be between 1 and 10000".to_owned(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for agent in &self.agents {
            if !valid_agent_name(&agent.name) {
                return Err(invalid(format!(
                    "agent name {:?} must be 1-64 characters of letters, digits, '-', '_' or '.'",
                    agent.name
                )));
            }
            if !names.insert(agent.name.as_str()) {
                return Err(invalid(format!("agent {:?} is declared twice", agent.name)));
            }
            for exe in &agent.exe {
                if !exe.is_absolute() {
                    return Err(invalid(format!(
                        "agent {:?}: exe {} must be an absolute path",
                        agent.name,
                        exe.display()
                    )));
                }
            }
            for hash in &agent.exe_sha256 {
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid(format!(
                        "agent {:?}: exe_sha256 {hash:?} must be 64 hex digits",
                        agent.name
                    )));
                }
            }
            for cg in &agent.cgroup {
                if !cg.starts_with('/') {
                    return Err(invalid(format!(
                        "agent {:?}: cgroup {cg:?} must start with '/' (relative to the cgroup2 mount)",
                        agent.name
                    )));
                }
            }
        }
        Providers::from_specs(&self.providers).map_err(|e| invalid(e.to_string()))?;
        for (what, dir) in [
            ("rules_dir", &self.paths.rules_dir),
            ("state_dir", &self.paths.state_dir),
            ("runtime_dir", &self.paths.runtime_dir),
        ] {
            if !dir.is_absolute() {
                return Err(invalid(format!(
                    "paths.{what} {} must be an absolute path",
                    dir.display()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("oknek.yaml"), text)
    }

    #[test]
    fn empty_means_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.fail_mode, FailMode::Closed);
        assert_eq!(c.paths.runtime_dir, PathBuf::from("/run/oknek"));
    }

    #[test]
    fn full_example_parses() {
        let c = parse(
            "oknek_config: 1\npaths: {state_dir: /tmp/s}\nfail_mode: open\n\
             tiers: {fanotify: on, preload: off}\n\
             agents:\n  - name: aider\n    unit: [aider.service]\n    uid: [1001]\n",
        )
        .unwrap();
        assert_eq!(c.fail_mode, FailMode::Open);
        assert_eq!(c.tiers.fanotify, TierSwitch::On);
        assert_eq!(c.agents[0].uid, vec![1001]);
        assert_eq!(c.paths.rules_dir, Paths::default().rules_dir);
    }

    #[test]
    fn providers_and_the_gateway_section_are_the_daemons_too() {
        let c = parse(
            "providers:\n  - {name: openai, kind: cloud, api: openai, endpoints: [\"api.openai.com:443\"]}\n\
             \x20 - {name: ollama, kind: local, api: ollama, endpoints: [\"127.0.0.1:11434\"]}\n\
             gateway: {listen: [/run/oknek/gateway.sock], hosts_file: /tmp/hosts}\n",
        )
        .unwrap();
        let providers = c.providers();
        let configured = c.gateway.is_some();
        assert!(providers.get("openai").unwrap().gateway_only(configured));
        assert!(!providers.get("ollama").unwrap().gateway_only(configured));
        assert_eq!(c.resolver_files().0, PathBuf::from("/tmp/hosts"));
    }

    #[test]
    fn typos_are_errors_with_a_location() {
        let err = parse("fail_mdoe: open\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("oknek.yaml:1:"), "{text}");
        assert!(text.contains("fail_mdoe"), "{text}");
    }

    #[test]
    fn invalid_values_are_explained() {
        for (text, needle) in [
            ("agents: [{name: 'a b'}]", "agent name"),
            ("agents: [{name: a}, {name: a}]", "declared twice"),
            ("agents: [{name: a, exe: [claude]}]", "absolute path"),
            ("agents: [{name: a, exe_sha256: [abc]}]", "64 hex digits"),
            ("paths: {state_dir: relative}", "absolute path"),
            ("oknek_config: 2", "version"),
            ("fail_mode: maybe", "unknown variant"),
            (
                "providers: [{name: local, kind: local, api: ollama, endpoints: [\"127.0.0.1:1\"]}]",
                "reserved",
            ),
            (
                "providers: [{name: o, kind: local, api: ollama, endpoints: [\"ollama.lan:1\"]}]",
                "without a name lookup",
            ),
            ("gateway: {lisen: []}", "lisen"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
