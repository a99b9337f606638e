//! The one event model of oknek.
//!
//! Every hook (eBPF, fanotify, seccomp, the preload shim, the model gateway) turns what an agent
//! did into an [`Event`]; the rule engine judges it; the evidence writer records it. Events are
//! serialised one per line as JSON (JSONL), which is also the format of recorded event files that
//! `oknek simulate` and the rule fixtures read.
//!
//! ```json
//! {"time":"2026-11-22T08:30:00Z","source":"fanotify",
//!  "process":{"pid":4242,"ppid":4200,"tgid":4242,"uid":1000,"gid":1000,
//!             "exe":"/usr/bin/cat","comm":"cat","agent":"claude-code"},
//!  "kind":"open","path":"/home/dev/.ssh/id_ed25519","flags":0}
//! ```

mod baseline;
mod field;
mod time;

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use baseline::{BaselineView, Feature, MemoryBaseline, NoBaseline, address_class};
pub use field::{Field, FieldValue, UnknownField};
pub use time::{Civil, ParseTimestampError, Timestamp, Weekday, parse_utc_offset};

/// Something an agent process did, as one hook saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub time: Timestamp,
    /// The mechanism that observed (and, for blocks, enforced) this action.
    pub source: Mechanism,
    pub process: Process,
    #[serde(flatten)]
    pub action: Action,
}

/// Who did it: the identity the kernel reports, never what the process claims.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    pub pid: u32,
    #[serde(default)]
    pub tgid: u32,
    #[serde(default)]
    pub ppid: u32,
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    /// Absolute path of the executable image.
    #[serde(default)]
    pub exe: String,
    /// Hex sha256 of the executable, when the hook measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe_sha256: Option<String>,
    /// The kernel's task name (at most 15 bytes).
    #[serde(default)]
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_exe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_comm: Option<String>,
    /// cgroup v2 id (the inode number of the cgroup directory); 0 when unknown.
    #[serde(default)]
    pub cgroup_id: u64,
    /// cgroup v2 path relative to the cgroup2 mount, e.g. `/system.slice/aider.service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// systemd unit owning the cgroup, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Namespaces::is_unknown")]
    pub namespaces: Namespaces,
    /// The configured agent this process belongs to; `None` for processes that are not agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// Namespace inode numbers (as in /proc/PID/ns/*); 0 when unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Namespaces {
    pub mnt: u64,
    pub pid: u64,
    pub net: u64,
    pub user: u64,
    pub uts: u64,
    pub ipc: u64,
    pub cgroup: u64,
}

impl Namespaces {
    pub fn is_unknown(&self) -> bool {
        *self == Namespaces::default()
    }
}

/// What the process did. The `kind` tag selects the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    Exec {
        /// The file being executed, as resolved by the kernel.
        path: String,
        #[serde(default)]
        argv: Vec<String>,
    },
    Open {
        path: String,
        /// open(2) flags (O_WRONLY = 1, O_RDWR = 2, O_CREAT = 0o100, …).
        #[serde(default)]
        flags: u32,
        #[serde(default)]
        mode: u32,
    },
    Connect {
        dest: SockAddr,
    },
    Send {
        dest: SockAddr,
        #[serde(default)]
        bytes: u64,
    },
    Watch {
        path: String,
        /// inotify event mask (IN_ACCESS = 1, IN_MODIFY = 2, …).
        #[serde(default)]
        mask: u32,
    },
    ModelCall {
        provider: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// API style of the provider (openai, anthropic, ollama, …).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dest: Option<SockAddr>,
        /// Local weights file, when the call is the open of a model file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weights: Option<String>,
    },
}

/// A socket destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "lowercase", deny_unknown_fields)]
pub enum SockAddr {
    Inet { addr: std::net::Ipv4Addr, port: u16 },
    Inet6 { addr: std::net::Ipv6Addr, port: u16 },
    Unix { path: String },
}

impl From<std::net::SocketAddr> for SockAddr {
    fn from(addr: std::net::SocketAddr) -> SockAddr {
        match addr {
            std::net::SocketAddr::V4(v4) => SockAddr::Inet {
                addr: *v4.ip(),
                port: v4.port(),
            },
            std::net::SocketAddr::V6(v6) => SockAddr::Inet6 {
                addr: *v6.ip(),
                port: v6.port(),
            },
        }
    }
}

impl SockAddr {
    /// Parses a raw Linux `struct sockaddr` (as passed to connect(2)): AF_INET, AF_INET6 and
    /// AF_UNIX; `None` for other families and short buffers. Abstract unix names are written
    /// with a leading `@`, as ss(8) does.
    pub fn from_raw(raw: &[u8]) -> Option<SockAddr> {
        const AF_UNIX: u16 = 1;
        const AF_INET: u16 = 2;
        const AF_INET6: u16 = 10;
        let family = u16::from_ne_bytes([*raw.first()?, *raw.get(1)?]);
        match family {
            AF_INET if raw.len() >= 8 => Some(SockAddr::Inet {
                port: u16::from_be_bytes([raw[2], raw[3]]),
                addr: std::net::Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7]),
            }),
            AF_INET6 if raw.len() >= 24 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&raw[8..24]);
                Some(SockAddr::Inet6 {
                    port: u16::from_be_bytes([raw[2], raw[3]]),
                    addr: std::net::Ipv6Addr::from(octets),
                })
            }
            AF_UNIX => {
                let p = &raw[2..];
                let path = if p.first() == Some(&0) && p.len() > 1 {
                    format!("@{}", String::from_utf8_lossy(&p[1..]))
                } else {
                    let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
                    String::from_utf8_lossy(&p[..end]).into_owned()
                };
                Some(SockAddr::Unix { path })
            }
            _ => None,
        }
    }

    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            SockAddr::Inet { addr, .. } => Some(IpAddr::V4(*addr)),
            SockAddr::Inet6 { addr, .. } => Some(IpAddr::V6(*addr)),
            SockAddr::Unix { .. } => None,
        }
    }

    pub fn port(&self) -> Option<u16> {
        match self {
            SockAddr::Inet { port, .. } | SockAddr::Inet6 { port, .. } => Some(*port),
            SockAddr::Unix { .. } => None,
        }
    }

    pub fn family(&self) -> &'static str {
        match self {
            SockAddr::Inet { .. } => "inet",
            SockAddr::Inet6 { .. } => "inet6",
            SockAddr::Unix { .. } => "unix",
        }
    }
}

impl fmt::Display for SockAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SockAddr::Inet { addr, port } => write!(f, "{addr}:{port}"),
            SockAddr::Inet6 { addr, port } => write!(f, "[{addr}]:{port}"),
            SockAddr::Unix { path } => write!(f, "unix:{path}"),
        }
    }
}

/// The six kinds of action, which index rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Exec,
    Open,
    Connect,
    Send,
    Watch,
    ModelCall,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Exec,
        Kind::Open,
        Kind::Connect,
        Kind::Send,
        Kind::Watch,
        Kind::ModelCall,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Exec => "exec",
            Kind::Open => "open",
            Kind::Connect => "connect",
            Kind::Send => "send",
            Kind::Watch => "watch",
            Kind::ModelCall => "model_call",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Action {
    pub fn kind(&self) -> Kind {
        match self {
            Action::Exec { .. } => Kind::Exec,
            Action::Open { .. } => Kind::Open,
            Action::Connect { .. } => Kind::Connect,
            Action::Send { .. } => Kind::Send,
            Action::Watch { .. } => Kind::Watch,
            Action::ModelCall { .. } => Kind::ModelCall,
        }
    }
}

impl Event {
    pub fn kind(&self) -> Kind {
        self.action.kind()
    }

    pub fn agent(&self) -> Option<&str> {
        self.process.agent.as_deref()
    }

    /// Parses one JSONL line.
    pub fn from_json(line: &str) -> Result<Event, serde_json::Error> {
        serde_json::from_str(line)
    }

    /// One JSONL line, without the trailing newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events always serialise")
    }
}

/// open(2) flag bits that matter to rules (x86_64 / generic values).
pub mod open_flags {
    pub const O_ACCMODE: u32 = 0o3;
    pub const O_WRONLY: u32 = 0o1;
    pub const O_RDWR: u32 = 0o2;
    pub const O_CREAT: u32 = 0o100;
    pub const O_TRUNC: u32 = 0o1000;
    pub const O_APPEND: u32 = 0o2000;
    pub const O_TMPFILE: u32 = 0o20_200_000;

    /// True when an open can change the file: write access, create, truncate or append.
    pub fn is_write_intent(flags: u32) -> bool {
        flags & O_ACCMODE != 0 || flags & (O_CREAT | O_TRUNC | O_APPEND | O_TMPFILE) != 0
    }
}

/// The three verdicts, ordered by strength: block > warn > allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Warn,
    Block,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Warn => "warn",
            Verdict::Block => "block",
        }
    }

    pub fn from_name(name: &str) -> Option<Verdict> {
        [Verdict::Allow, Verdict::Warn, Verdict::Block]
            .into_iter()
            .find(|v| v.name() == name)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The hook mechanism that observed an event and, for a block, refused the syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// BPF LSM program (`lsm/…`): refuses in the kernel before the syscall acts.
    BpfLsm,
    /// fmod_ret on a `security_*` function.
    FmodRet,
    /// cgroup sock_addr program (connect4/6, sendmsg4/6).
    CgroupSockAddr,
    /// Syscall or scheduler tracepoint: observation only.
    Tracepoint,
    /// fanotify permission event.
    Fanotify,
    /// seccomp user-notify for processes launched with `oknek run`.
    Seccomp,
    /// Landlock ruleset for processes launched with `oknek run`.
    Landlock,
    /// The LD_PRELOAD shim.
    Preload,
    /// The model gateway.
    Gateway,
    /// A recorded event replayed by `oknek simulate` or a fixture.
    Recorded,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::BpfLsm => "bpf_lsm",
            Mechanism::FmodRet => "fmod_ret",
            Mechanism::CgroupSockAddr => "cgroup_sock_addr",
            Mechanism::Tracepoint => "tracepoint",
            Mechanism::Fanotify => "fanotify",
            Mechanism::Seccomp => "seccomp",
            Mechanism::Landlock => "landlock",
            Mechanism::Preload => "preload",
            Mechanism::Gateway => "gateway",
            Mechanism::Recorded => "recorded",
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        Event {
            time: "2026-11-22T08:30:00Z".parse().unwrap(),
            source: Mechanism::Fanotify,
            process: Process {
                pid: 4242,
                tgid: 4242,
                ppid: 4200,
                uid: 1000,
                gid: 1000,
                exe: "/usr/bin/cat".into(),
                comm: "cat".into(),
                agent: Some("claude-code".into()),
                ..Process::default()
            },
            action: Action::Open {
                path: "/home/dev/.ssh/id_ed25519".into(),
                flags: 0,
                mode: 0,
            },
        }
    }

    #[test]
    fn jsonl_round_trip_for_every_kind() {
        let actions = [
            Action::Exec {
                path: "/usr/bin/curl".into(),
                argv: vec!["curl".into(), "http://x".into()],
            },
            Action::Open {
                path: "/etc/passwd".into(),
                flags: 0o1101,
                mode: 0o644,
            },
            Action::Connect {
                dest: SockAddr::Inet {
                    addr: "10.0.0.1".parse().unwrap(),
                    port: 443,
                },
            },
            Action::Send {
                dest: SockAddr::Inet6 {
                    addr: "::1".parse().unwrap(),
                    port: 53,
                },
                bytes: 512,
            },
            Action::Watch {
                path: "/home/dev".into(),
                mask: 2,
            },
            Action::ModelCall {
                provider: "openai".into(),
                model: Some("gpt-4o".into()),
                api: Some("openai".into()),
                dest: Some(SockAddr::Unix {
                    path: "/run/ollama.sock".into(),
                }),
                weights: None,
            },
        ];
        for action in actions {
            let mut event = sample();
            event.action = action;
            let line = event.to_json();
            assert!(!line.contains('\n'));
            assert_eq!(Event::from_json(&line).unwrap(), event, "{line}");
        }
    }

    #[test]
    fn reads_the_documented_example() {
        let line = r#"{"time":"2026-11-22T08:30:00Z","source":"fanotify",
            "process":{"pid":4242,"ppid":4200,"tgid":4242,"uid":1000,"gid":1000,
            "exe":"/usr/bin/cat","comm":"cat","agent":"claude-code"},
            "kind":"open","path":"/home/dev/.ssh/id_ed25519","flags":0}"#;
        assert_eq!(Event::from_json(line).unwrap(), sample());
    }

    #[test]
    fn rejects_unknown_kind_and_process_fields() {
        let bad_kind = r#"{"time":"2026-11-22T08:30:00Z","source":"recorded",
            "process":{"pid":1,"uid":0},"kind":"teleport","path":"/"}"#;
        assert!(Event::from_json(bad_kind).is_err());
        let bad_field = r#"{"time":"2026-11-22T08:30:00Z","source":"recorded",
            "process":{"pid":1,"uid":0,"root":true},"kind":"open","path":"/"}"#;
        assert!(Event::from_json(bad_field).is_err());
    }

    #[test]
    fn write_intent() {
        use open_flags::*;
        assert!(!is_write_intent(0));
        assert!(is_write_intent(O_WRONLY));
        assert!(is_write_intent(O_RDWR));
        assert!(is_write_intent(O_CREAT));
        assert!(is_write_intent(O_APPEND));
        assert!(!is_write_intent(0o2_000_000)); // O_CLOEXEC alone
    }

    #[test]
    fn verdicts_order_by_strength() {
        assert!(Verdict::Block > Verdict::Warn && Verdict::Warn > Verdict::Allow);
    }
}
