//! oknek's eBPF probes: agent tracking, observation and in-kernel enforcement.
//!
//! The C programs in `src/bpf/` are compiled by `build.rs` (clang, CO-RE) and embedded here.
//! [`Probes::start`] loads them, pins maps and links under a pin directory so enforcement
//! survives daemon restarts, and adopts pins of the same object instead of reloading. See
//! `docs/ebpf.md`.

#[doc(hidden)]
pub mod bench;
pub mod layout;
pub mod models;
mod rules;
mod support;
mod sys;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::Key as LpmKey;
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{
    BtfTracePoint, CgroupAttachMode, CgroupSockAddr, Lsm, Program, ProgramError, TracePoint,
};
use aya::{Btf, Ebpf, EbpfLoader};
use sha2::{Digest, Sha256};

pub use layout::DecodeError;
pub use oknek_event::Kind;
pub use rules::CompiledRules;
pub use support::{Check, Support, active_lsms, probe_support};

use layout::{
    BlockValue, InodeKey, MAX_PROVIDERS, Meta, ModelPolicy, NetKeyData, ProviderKey, ProviderValue,
    QuotaKey, Settings, Task,
};
pub use models::{Bucket, ModelRule, ProviderEntry, QuotaBy};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oknek.bpf.o"));

/// Default size of the event ring buffer.
pub const DEFAULT_RING_BYTES: u32 = 16 * 1024 * 1024;
/// Default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/oknek";
/// Agent ids usable in a rule's agent scope bitmask.
pub const MAX_SCOPED_AGENT_ID: u32 = 63;

/// What went wrong loading, attaching or feeding the probes.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("cannot mount {fstype} at {path}: {source}")]
    Mount {
        fstype: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the eBPF object: {0}")]
    Load(String),
    #[error("program {program}: {message}")]
    Program {
        program: &'static str,
        message: String,
    },
    #[error("map {map}: {message}")]
    Map { map: &'static str, message: String },
    #[error("no cgroup2 mount found in /proc/self/mounts (needed for the cgroup tier)")]
    NoCgroup2,
    #[error("cannot open cgroup2 root {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ring buffer size {0} is not a power of two of at least 4096 bytes")]
    RingSize(u32),
}

/// Which parts to attach and where to pin them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    pub pin_dir: PathBuf,
    /// Attach the BPF LSM enforcement programs (exec, open, watch, connect, send).
    pub lsm: bool,
    /// Attach cgroup/connect4/6 and sendmsg4/6 to the cgroup2 root (network enforcement).
    pub cgroup: bool,
    /// Report agent activity on the ring buffer (syscall tracepoints and exec).
    pub observe: bool,
    pub ring_bytes: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            lsm: false,
            cgroup: true,
            observe: true,
            ring_bytes: DEFAULT_RING_BYTES,
        }
    }
}

/// How [`Probes::start`] found the pin directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Nothing was pinned: loaded and attached.
    Fresh,
    /// Pins of this same object were reused: no reload, no detach.
    Adopted,
    /// Pins of a different object were replaced, the new one attached before the old detached.
    Upgraded,
}

/// The kernel hook that refuses an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Enforcer {
    Lsm,
    CgroupSockAddr,
}

/// Who counts as an agent, as the kernel sees it at exec time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentMaps {
    /// ((st_dev, ino) of the agent's executable, agent id).
    pub exes: Vec<((u64, u64), u32)>,
    /// (cgroup v2 id, agent id).
    pub cgroups: Vec<(u64, u32)>,
    /// (uid, agent id).
    pub uids: Vec<(u32, u32)>,
}

/// One rule's kernel-enforceable part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRule {
    pub rule_index: u32,
    pub kinds: Vec<Kind>,
    /// Bit n = agent id n; 0 = every agent.
    pub agents: u64,
    /// Stop the agent (SIGSTOP) as well as refusing the call.
    pub hold: bool,
    /// (st_dev, ino) of files refused to open (and watch, when the rule has the watch kind).
    pub files: Vec<(u64, u64)>,
    /// (st_dev, ino) of directories: everything below them, within their filesystem.
    pub dirs: Vec<(u64, u64)>,
    /// (st_dev, ino) of executables refused to exec.
    pub exes: Vec<(u64, u64)>,
    pub nets: Vec<NetEntry>,
}

/// A network destination prefix with optional port ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetEntry {
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// Inclusive ranges; empty = any port.
    pub ports: Vec<(u16, u16)>,
}

/// A rule (or one entry of it) the kernel cannot hold; the daemon enforces it in userspace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleRefusal {
    pub rule_index: u32,
    pub reason: String,
}

/// One record from the ring buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelEvent {
    pub kind: Kind,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub agent_id: u32,
    pub cgroup_id: u64,
    pub comm: String,
    pub ktime_ns: u64,
    /// Set when a kernel hook refused the call.
    pub blocked: Option<Blocked>,
    pub detail: Detail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub rule_index: u32,
    pub enforcer: Enforcer,
    /// The process was sent SIGSTOP.
    pub held: bool,
}

/// What the record is about. Paths observed at syscall entry are as the process passed them
/// (possibly relative); paths in blocks reported by LSM hooks are the final component only,
/// with the inode (kernel dev, ino) to name the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detail {
    Exec {
        path: String,
        argv: Vec<String>,
        truncated: bool,
    },
    Open {
        path: String,
        flags: u32,
        mode: u32,
        inode: Option<(u32, u64)>,
    },
    Connect {
        dest: oknek_event::SockAddr,
        /// The model provider (its id in the provider map) when the destination is one.
        provider: Option<u32>,
        /// A quota that metered the model call: (rule index, whole calls left after it).
        quota: Option<(u32, u32)>,
    },
    Send {
        dest: Option<oknek_event::SockAddr>,
        bytes: u64,
    },
    Watch {
        path: String,
        mask: u32,
        inode: Option<(u32, u64)>,
    },
}

/// The kernel's device number (`MKDEV(major, minor)` = major << 20 | minor, as in
/// `inode->i_sb->s_dev`) for a userspace `st_dev` (glibc's encoding).
pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = ((st_dev >> 8) & 0xfff) | ((st_dev >> 32) & !0xfff);
    let minor = (st_dev & 0xff) | ((st_dev >> 12) & !0xff);
    ((major << 20) | (minor & 0xf_ffff)) as u32
}

/// sha256 of the embedded eBPF object.
pub fn object_sha256() -> [u8; 32] {
    Sha256::digest(OBJECT).into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Tracking,
    Observe,
    /// Reports connects only when no enforcement hook does.
    ObserveConnect,
    Lsm,
    Cgroup,
}

#[derive(Debug, Clone, Copy)]
enum Hook {
    TpBtf(&'static str),
    Syscall(&'static str),
    Lsm(&'static str),
    Cgroup,
}

struct ProgramSpec {
    name: &'static str,
    hook: Hook,
    group: Group,
    /// A missing optional program degrades observation; it is reported, not fatal.
    optional: bool,
}

const fn spec(name: &'static str, hook: Hook, group: Group, optional: bool) -> ProgramSpec {
    ProgramSpec {
        name,
        hook,
        group,
        optional,
    }
}

const PROGRAMS: &[ProgramSpec] = &[
    spec(
        "track_exec",
        Hook::TpBtf("sched_process_exec"),
        Group::Tracking,
        false,
    ),
    spec(
        "track_fork",
        Hook::TpBtf("sched_process_fork"),
        Group::Tracking,
        false,
    ),
    spec(
        "track_exit",
        Hook::TpBtf("sched_process_exit"),
        Group::Tracking,
        false,
    ),
    spec(
        "observe_open_legacy",
        Hook::Syscall("sys_enter_open"),
        Group::Observe,
        true,
    ),
    spec(
        "observe_openat",
        Hook::Syscall("sys_enter_openat"),
        Group::Observe,
        false,
    ),
    spec(
        "observe_openat2",
        Hook::Syscall("sys_enter_openat2"),
        Group::Observe,
        true,
    ),
    spec(
        "observe_sendto",
        Hook::Syscall("sys_enter_sendto"),
        Group::Observe,
        false,
    ),
    spec(
        "observe_sendmsg",
        Hook::Syscall("sys_enter_sendmsg"),
        Group::Observe,
        false,
    ),
    spec(
        "observe_watch",
        Hook::Syscall("sys_enter_inotify_add_watch"),
        Group::Observe,
        false,
    ),
    spec(
        "observe_connect",
        Hook::Syscall("sys_enter_connect"),
        Group::ObserveConnect,
        false,
    ),
    spec(
        "enforce_exec",
        Hook::Lsm("bprm_check_security"),
        Group::Lsm,
        false,
    ),
    spec("enforce_open", Hook::Lsm("file_open"), Group::Lsm, false),
    spec("enforce_watch", Hook::Lsm("path_notify"), Group::Lsm, false),
    spec(
        "enforce_connect",
        Hook::Lsm("socket_connect"),
        Group::Lsm,
        false,
    ),
    spec(
        "enforce_sendmsg",
        Hook::Lsm("socket_sendmsg"),
        Group::Lsm,
        false,
    ),
    spec("enforce_connect4", Hook::Cgroup, Group::Cgroup, false),
    spec("enforce_connect6", Hook::Cgroup, Group::Cgroup, false),
    spec("enforce_sendmsg4", Hook::Cgroup, Group::Cgroup, false),
    spec("enforce_sendmsg6", Hook::Cgroup, Group::Cgroup, false),
    spec(
        "hold_connect",
        Hook::Syscall("sys_exit_connect"),
        Group::Cgroup,
        false,
    ),
    spec(
        "hold_sendto",
        Hook::Syscall("sys_exit_sendto"),
        Group::Cgroup,
        false,
    ),
    spec(
        "hold_sendmsg",
        Hook::Syscall("sys_exit_sendmsg"),
        Group::Cgroup,
        false,
    ),
];

fn wanted(cfg: &ProbeConfig, group: Group) -> bool {
    match group {
        Group::Tracking => true,
        Group::Observe => cfg.observe,
        Group::ObserveConnect => cfg.observe && !cfg.lsm && !cfg.cgroup,
        Group::Lsm => cfg.lsm,
        Group::Cgroup => cfg.cgroup,
    }
}

/// Maps shared with userspace, by pin name.
const COPIED_ON_UPGRADE: [&str; 10] = [
    "agent_tasks",
    "agent_exes",
    "agent_cgroups",
    "agent_uids",
    "block_exes",
    "block_files",
    "block_dirs",
    "block_nets",
    // Quota buckets: an upgrade must not hand every caller a full bucket.
    "quota_used",
    "quota_credit",
];

/// The loaded (or adopted) probes. Dropping it leaves everything pinned and attached.
pub struct Probes {
    version_dir: PathBuf,
    lsm: bool,
    cgroup: bool,
    agent_tasks: HashMap<MapData, u32, Task>,
    agent_exes: HashMap<MapData, InodeKey, u32>,
    agent_cgroups: HashMap<MapData, u64, u32>,
    agent_uids: HashMap<MapData, u32, u32>,
    block_exes: HashMap<MapData, InodeKey, BlockValue>,
    block_files: HashMap<MapData, InodeKey, BlockValue>,
    block_dirs: HashMap<MapData, InodeKey, BlockValue>,
    block_nets: LpmTrie<MapData, NetKeyData, BlockValue>,
    providers: HashMap<MapData, ProviderKey, ProviderValue>,
    model_policy: Array<MapData, ModelPolicy>,
    quota_used: HashMap<MapData, QuotaKey, u64>,
    quota_credit: HashMap<MapData, QuotaKey, u64>,
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    unpinned: Vec<&'static str>,
    skipped: Vec<(&'static str, String)>,
    /// Holds links the kernel cannot pin (they detach when this is dropped).
    _ebpf: Option<Ebpf>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("version_dir", &self.version_dir)
            .field("lsm", &self.lsm)
            .field("cgroup", &self.cgroup)
            .field("unpinned", &self.unpinned)
            .field("skipped", &self.skipped)
            .finish_non_exhaustive()
    }
}

fn pin_error(path: &Path) -> impl FnOnce(std::io::Error) -> BpfError + '_ {
    move |source| BpfError::PinDir {
        path: path.to_path_buf(),
        source,
    }
}

fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> BpfError {
    move |error| BpfError::Map {
        map,
        message: with_sources(&error),
    }
}

fn version_name(ring_bytes: u32) -> String {
    let sha = object_sha256();
    let hex: String = sha[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("obj-{hex}-r{ring_bytes}")
}

fn open_pinned(maps_dir: &Path, name: &'static str) -> Result<Map, BpfError> {
    let data = MapData::from_pin(maps_dir.join(name)).map_err(map_error(name))?;
    Map::from_map_data(data).map_err(map_error(name))
}

fn read_meta(maps_dir: &Path) -> Option<Meta> {
    let map = open_pinned(maps_dir, "meta").ok()?;
    let array = Array::<MapData, Meta>::try_from(map).ok()?;
    array.get(&0, 0).ok()
}

/// Existing version directories under the pin dir (those made by [`Probes::start`]).
fn version_dirs(pin_dir: &Path) -> Result<Vec<PathBuf>, BpfError> {
    let mut dirs = Vec::new();
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(dirs),
        Err(error) => return Err(pin_error(pin_dir)(error)),
    };
    for entry in entries {
        let entry = entry.map_err(pin_error(pin_dir))?;
        if entry.file_name().to_string_lossy().starts_with("obj-") {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Unpins links first (detaching them), then maps.
fn remove_version_dir(dir: &Path) -> Result<(), BpfError> {
    let links = dir.join("links");
    if let Ok(entries) = std::fs::read_dir(&links) {
        for entry in entries.flatten() {
            if let Ok(link) = sys::obj_get(&entry.path()) {
                let _ = sys::detach_link(&link);
            }
            std::fs::remove_file(entry.path()).map_err(pin_error(&entry.path()))?;
        }
    }
    std::fs::remove_dir_all(dir).or_else(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            Ok(())
        } else {
            Err(pin_error(dir)(error))
        }
    })
}

/// An error and its sources on one line (aya's messages name the syscall, the source the errno).
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn program_error(program: &'static str) -> impl Fn(ProgramError) -> BpfError {
    move |error| BpfError::Program {
        program,
        message: with_sources(&error),
    }
}

fn typed<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, BpfError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or(BpfError::Program {
        program: name,
        message: "missing from the object".to_owned(),
    })?;
    program.try_into().map_err(program_error(name))
}

/// Loads and attaches one program; pins its link under `links_dir` when the kernel allows.
/// Returns false when the link could not be pinned (it stays owned by `ebpf`).
fn attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    spec: &ProgramSpec,
    links_dir: &Path,
    cgroup_root: Option<&std::fs::File>,
) -> Result<bool, BpfError> {
    let name = spec.name;
    let err = program_error(name);
    let link: FdLink = match spec.hook {
        Hook::TpBtf(tracepoint) => {
            let prog: &mut BtfTracePoint = typed(ebpf, name)?;
            prog.load(tracepoint, btf).map_err(&err)?;
            let id = prog.attach().map_err(&err)?;
            prog.take_link(id).map_err(&err)?.into()
        }
        Hook::Lsm(hook) => {
            let prog: &mut Lsm = typed(ebpf, name)?;
            prog.load(hook, btf).map_err(&err)?;
            let id = prog.attach().map_err(&err)?;
            prog.take_link(id).map_err(&err)?.into()
        }
        Hook::Syscall(event) => {
            let prog: &mut TracePoint = typed(ebpf, name)?;
            prog.load().map_err(&err)?;
            let id = prog.attach("syscalls", event).map_err(&err)?;
            if !aya::features().bpf_perf_link() {
                // Older kernels attach tracepoints with an ioctl: no link object to pin.
                return Ok(false);
            }
            let link = prog.take_link(id).map_err(&err)?;
            FdLink::try_from(link).map_err(|e| BpfError::Program {
                program: name,
                message: e.to_string(),
            })?
        }
        Hook::Cgroup => {
            let root = cgroup_root.ok_or(BpfError::NoCgroup2)?;
            let prog: &mut CgroupSockAddr = typed(ebpf, name)?;
            prog.load().map_err(&err)?;
            // Cgroup links (5.7+) always coexist with other programs and refuse attach flags;
            // older kernels attach with BPF_F_ALLOW_MULTI.
            let mode = if kernel_at_least(5, 7) {
                CgroupAttachMode::Single
            } else {
                CgroupAttachMode::AllowMultiple
            };
            let id = prog.attach(root, mode).map_err(&err)?;
            let link = prog.take_link(id).map_err(&err)?;
            match FdLink::try_from(link) {
                Ok(link) => link,
                // Kernels before 5.7 have no cgroup links; the attachment lives with ebpf.
                Err(_) => return Ok(false),
            }
        }
    };
    link.pin(links_dir.join(name))
        .map_err(|e| BpfError::Program {
            program: name,
            message: format!("pinning the link: {e}"),
        })?;
    Ok(true)
}

fn kernel_at_least(major: u8, minor: u8) -> bool {
    aya::util::KernelVersion::current()
        .is_ok_and(|v| v >= aya::util::KernelVersion::new(major, minor, 0))
}

fn load_object(maps_dir: &Path, ring_bytes: u32) -> Result<Ebpf, BpfError> {
    let mut loader = EbpfLoader::new();
    // Full verifier output in load errors, for diagnosing a kernel that refuses a program.
    if std::env::var_os("OKNEK_BPF_VERIFIER_LOG").is_some() {
        loader.verifier_log_level(aya::VerifierLogLevel::VERBOSE | aya::VerifierLogLevel::STATS);
    }
    loader
        .default_map_pin_directory(maps_dir)
        .map_max_entries("events", ring_bytes)
        .load(OBJECT)
        .map_err(|e| BpfError::Load(with_sources(&e)))
}

fn copy_hash<K: aya::Pod + Ord, V: aya::Pod>(
    from: &Path,
    to: &Path,
    name: &'static str,
) -> Result<(), BpfError> {
    let source =
        HashMap::<MapData, K, V>::try_from(open_pinned(from, name)?).map_err(map_error(name))?;
    let mut target =
        HashMap::<MapData, K, V>::try_from(open_pinned(to, name)?).map_err(map_error(name))?;
    for entry in source.iter() {
        let (key, value) = entry.map_err(map_error(name))?;
        target.insert(key, value, 0).map_err(map_error(name))?;
    }
    Ok(())
}

/// Carries agent tracking and rules from an older version's maps into the new ones, so the new
/// programs enforce from their first call. Maps whose layout changed are skipped.
fn copy_state(from: &Path, to: &Path) -> Vec<(&'static str, String)> {
    let mut skipped = Vec::new();
    for name in COPIED_ON_UPGRADE {
        let result = match name {
            "agent_tasks" => copy_hash::<u32, Task>(from, to, name),
            "agent_uids" => copy_hash::<u32, u32>(from, to, name),
            "quota_used" | "quota_credit" => copy_hash::<QuotaKey, u64>(from, to, name),
            "agent_exes" => copy_hash::<InodeKey, u32>(from, to, name),
            "agent_cgroups" => copy_hash::<u64, u32>(from, to, name),
            "block_nets" => (|| {
                let source =
                    LpmTrie::<MapData, NetKeyData, BlockValue>::try_from(open_pinned(from, name)?)
                        .map_err(map_error(name))?;
                let mut target =
                    LpmTrie::<MapData, NetKeyData, BlockValue>::try_from(open_pinned(to, name)?)
                        .map_err(map_error(name))?;
                for entry in source.iter() {
                    let (key, value) = entry.map_err(map_error(name))?;
                    target.insert(&key, value, 0).map_err(map_error(name))?;
                }
                Ok(())
            })(),
            _ => copy_hash::<InodeKey, BlockValue>(from, to, name),
        };
        if let Err(error) = result {
            skipped.push((
                name,
                format!("not carried over from the previous version: {error}"),
            ));
        }
    }
    skipped
}

impl Probes {
    /// Loads and attaches the probes, or adopts pinned ones of the same object.
    pub fn start(cfg: &ProbeConfig) -> Result<(Probes, Start), BpfError> {
        if cfg.ring_bytes < 4096 || !cfg.ring_bytes.is_power_of_two() {
            return Err(BpfError::RingSize(cfg.ring_bytes));
        }
        sys::prepare_filesystems(&cfg.pin_dir)?;
        std::fs::create_dir_all(&cfg.pin_dir).map_err(pin_error(&cfg.pin_dir))?;
        let version_dir = cfg.pin_dir.join(version_name(cfg.ring_bytes));
        let maps_dir = version_dir.join("maps");
        let links_dir = version_dir.join("links");
        let sha = object_sha256();

        let adoptable = read_meta(&maps_dir)
            .is_some_and(|meta| meta.object_sha256 == sha && meta.ring_bytes == cfg.ring_bytes);
        let others: Vec<PathBuf> = version_dirs(&cfg.pin_dir)?
            .into_iter()
            .filter(|dir| *dir != version_dir)
            .collect();
        if !adoptable && version_dir.exists() {
            // A half-made version (a start that failed before writing meta).
            remove_version_dir(&version_dir)?;
        }
        std::fs::create_dir_all(&maps_dir).map_err(pin_error(&maps_dir))?;
        std::fs::create_dir_all(&links_dir).map_err(pin_error(&links_dir))?;

        let cgroup_root = if cfg.cgroup {
            let path = sys::cgroup2_mount().ok_or(BpfError::NoCgroup2)?;
            let file =
                std::fs::File::open(&path).map_err(|source| BpfError::Cgroup { path, source })?;
            Some(file)
        } else {
            None
        };

        // Which programs need loading now: everything when fresh; on adoption only those whose
        // link is not pinned (never pinnable on this kernel, or newly enabled).
        let mut missing = Vec::new();
        for spec in PROGRAMS {
            let pinned = links_dir.join(spec.name);
            if wanted(cfg, spec.group) {
                if !adoptable || PinnedLink::from_pin(&pinned).is_err() {
                    missing.push(spec);
                }
            } else if pinned.exists() {
                std::fs::remove_file(&pinned).map_err(pin_error(&pinned))?;
            }
        }

        let mut unpinned = Vec::new();
        let mut skipped = Vec::new();
        let mut ebpf = None;
        let result = (|| -> Result<(), BpfError> {
            if missing.is_empty() {
                return Ok(());
            }
            let mut loaded = load_object(&maps_dir, cfg.ring_bytes)?;
            if !adoptable && let Some(previous) = others.last() {
                skipped.extend(copy_state(&previous.join("maps"), &maps_dir));
            }
            let btf = Btf::from_sys_fs().map_err(|e| BpfError::Load(format!("kernel BTF: {e}")))?;
            for spec in &missing {
                match attach(&mut loaded, &btf, spec, &links_dir, cgroup_root.as_ref()) {
                    Ok(true) => {}
                    Ok(false) => unpinned.push(spec.name),
                    Err(error) if spec.optional => skipped.push((spec.name, error.to_string())),
                    Err(error) => return Err(error),
                }
            }
            ebpf = Some(loaded);
            Ok(())
        })();
        if let Err(error) = result {
            if !adoptable {
                drop(ebpf.take());
                let _ = remove_version_dir(&version_dir);
            }
            return Err(error);
        }

        let mut settings =
            Array::<MapData, Settings>::try_from(open_pinned(&maps_dir, "settings")?)
                .map_err(map_error("settings"))?;
        let net_observer = if cfg.lsm {
            layout::HOOK_LSM
        } else if cfg.cgroup {
            layout::HOOK_CGROUP
        } else {
            layout::HOOK_TRACEPOINT
        };
        settings
            .set(
                0,
                Settings {
                    observe: cfg.observe as u32,
                    net_observer,
                },
                0,
            )
            .map_err(map_error("settings"))?;
        if !adoptable {
            let mut meta = Array::<MapData, Meta>::try_from(open_pinned(&maps_dir, "meta")?)
                .map_err(map_error("meta"))?;
            let value = Meta {
                object_sha256: sha,
                ring_bytes: cfg.ring_bytes,
                _pad: 0,
            };
            meta.set(0, value, 0).map_err(map_error("meta"))?;
        }
        // The new version is attached: only now detach and remove older ones.
        for other in &others {
            remove_version_dir(other)?;
        }
        // Unreferenced programs of this load are freed; pinned links keep theirs alive.
        let keep_ebpf = if unpinned.is_empty() { None } else { ebpf };

        let probes = Probes {
            agent_tasks: hash(&maps_dir, "agent_tasks")?,
            agent_exes: hash(&maps_dir, "agent_exes")?,
            agent_cgroups: hash(&maps_dir, "agent_cgroups")?,
            agent_uids: hash(&maps_dir, "agent_uids")?,
            block_exes: hash(&maps_dir, "block_exes")?,
            block_files: hash(&maps_dir, "block_files")?,
            block_dirs: hash(&maps_dir, "block_dirs")?,
            block_nets: LpmTrie::try_from(open_pinned(&maps_dir, "block_nets")?)
                .map_err(map_error("block_nets"))?,
            providers: hash(&maps_dir, "providers")?,
            model_policy: Array::try_from(open_pinned(&maps_dir, "model_policy")?)
                .map_err(map_error("model_policy"))?,
            quota_used: hash(&maps_dir, "quota_used")?,
            quota_credit: hash(&maps_dir, "quota_credit")?,
            ring: RingBuf::try_from(open_pinned(&maps_dir, "events")?)
                .map_err(map_error("events"))?,
            lost: PerCpuArray::try_from(open_pinned(&maps_dir, "lost")?)
                .map_err(map_error("lost"))?,
            version_dir,
            lsm: cfg.lsm,
            cgroup: cfg.cgroup,
            unpinned,
            skipped,
            _ebpf: keep_ebpf,
        };
        let start = if adoptable {
            Start::Adopted
        } else if others.is_empty() {
            Start::Fresh
        } else {
            Start::Upgraded
        };
        Ok((probes, start))
    }

    /// Which hook refuses this kind in the kernel, if any.
    pub fn enforcer(&self, kind: Kind) -> Option<Enforcer> {
        match kind {
            Kind::Exec | Kind::Open | Kind::Watch => self.lsm.then_some(Enforcer::Lsm),
            Kind::Connect | Kind::Send => {
                if self.lsm {
                    Some(Enforcer::Lsm)
                } else if self.cgroup {
                    Some(Enforcer::CgroupSockAddr)
                } else {
                    None
                }
            }
            Kind::ModelCall => None,
        }
    }

    /// Programs attached without a pinned link (re-attached on every start; they detach when
    /// this `Probes` is dropped).
    pub fn unpinned_links(&self) -> &[&'static str] {
        &self.unpinned
    }

    /// Optional programs that could not be attached, and state not carried over on upgrade,
    /// with reasons.
    pub fn degraded(&self) -> &[(&'static str, String)] {
        &self.skipped
    }

    /// The directory holding this object's pinned maps and links.
    pub fn version_dir(&self) -> &Path {
        &self.version_dir
    }

    /// Replaces the agent executables, cgroups and uids. New entries are written before stale
    /// ones are removed, so unchanged entries never lapse.
    pub fn set_agents(&mut self, agents: &AgentMaps) -> Result<(), BpfError> {
        let exes: BTreeMap<InodeKey, u32> = agents
            .exes
            .iter()
            .map(|&((dev, ino), id)| (rules::inode_key(dev, ino), id))
            .collect();
        let cgroups: BTreeMap<u64, u32> = agents.cgroups.iter().copied().collect();
        let uids: BTreeMap<u32, u32> = agents.uids.iter().copied().collect();
        replace_hash(&mut self.agent_exes, &exes, "agent_exes")?;
        replace_hash(&mut self.agent_cgroups, &cgroups, "agent_cgroups")?;
        replace_hash(&mut self.agent_uids, &uids, "agent_uids")?;
        Ok(())
    }

    /// Marks a running process (and, from now on, its children) as an agent. Its executable
    /// (the caller identity of quotas) is read from /proc; a process that already exited is
    /// tracked without one.
    pub fn track_task(&mut self, tgid: u32, agent_id: u32) -> Result<(), BpfError> {
        use std::os::unix::fs::MetadataExt;
        let (exe_dev, exe_ino) = std::fs::metadata(format!("/proc/{tgid}/exe"))
            .map_or((0, 0), |md| (kernel_dev(md.dev()), md.ino()));
        let task = Task {
            agent_id,
            exe_dev,
            exe_ino,
        };
        self.agent_tasks
            .insert(tgid, task, 0)
            .map_err(map_error("agent_tasks"))
    }

    /// Stops treating a process as an agent.
    pub fn untrack_task(&mut self, tgid: u32) -> Result<(), BpfError> {
        match self.agent_tasks.remove(&tgid) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(error) => Err(map_error("agent_tasks")(error)),
        }
    }

    /// The agent id of a tracked process.
    pub fn tracked_agent(&self, tgid: u32) -> Option<u32> {
        self.agent_tasks.get(&tgid, 0).ok().map(|t| t.agent_id)
    }

    /// Replaces the model providers' addresses and their connect-time policy; returns the
    /// rules (per provider) the kernel cannot hold. Quota buckets of rules no longer metered
    /// are dropped by the next [`Probes::refill_quotas`].
    pub fn set_models(
        &mut self,
        providers: &[ProviderEntry],
        rules: &[ModelRule],
    ) -> Result<Vec<RuleRefusal>, BpfError> {
        let (policies, refusals) = models::compile(rules);
        // Policies first: an address must never point at a provider id whose policy is stale.
        for id in 0..MAX_PROVIDERS as u32 {
            let policy = policies.get(&id).copied().unwrap_or_default();
            self.model_policy
                .set(id, policy, 0)
                .map_err(map_error("model_policy"))?;
        }
        let wanted = models::provider_map(
            &providers
                .iter()
                .filter(|p| (p.provider_id as usize) < MAX_PROVIDERS)
                .copied()
                .collect::<Vec<_>>(),
        );
        replace_hash(&mut self.providers, &wanted, "providers")?;
        Ok(refusals)
    }

    /// Adds `elapsed` worth of credit to every bucket (`rates`: rule index → (limit, period));
    /// removes buckets that are full (a new bucket starts full, so nothing is lost) and those
    /// of rules not in `rates`. Returns the buckets left.
    pub fn refill_quotas(
        &mut self,
        rates: &BTreeMap<u32, (u64, std::time::Duration)>,
        elapsed: std::time::Duration,
    ) -> Result<usize, BpfError> {
        let keys: Vec<QuotaKey> = self.quota_used.keys().filter_map(Result::ok).collect();
        let mut left = 0;
        for key in keys {
            let used = self.quota_used.get(&key, 0).unwrap_or(0);
            let credit = self.quota_credit.get(&key, 0).ok();
            let full = rates.get(&key.rule_index).and_then(|&(limit, per)| {
                let credit = credit?;
                let new = models::refill(used, credit, limit, per, elapsed);
                Some((new, new >= used.saturating_add(limit) * layout::QUOTA_UNIT))
            });
            match full {
                Some((credit, false)) => {
                    self.quota_credit
                        .insert(key, credit, 0)
                        .map_err(map_error("quota_credit"))?;
                    left += 1;
                }
                // Full, gone from the rules, or being created right now (no credit yet).
                _ if credit.is_none() => left += 1,
                _ => {
                    // Credit first: a call in between recreates it full, which it is.
                    let _ = self.quota_credit.remove(&key);
                    let _ = self.quota_used.remove(&key);
                }
            }
        }
        Ok(left)
    }

    /// Every quota bucket (for status output and evidence).
    pub fn quota_buckets(&self) -> Vec<Bucket> {
        self.quota_used
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(key, used)| {
                let credit = self.quota_credit.get(&key, 0).ok()?;
                Some(Bucket { key, used, credit })
            })
            .collect()
    }

    /// Replaces the block maps; returns the rules (or entries) the kernel cannot hold.
    pub fn set_rules(&mut self, rules: &[BlockRule]) -> Result<Vec<RuleRefusal>, BpfError> {
        let (compiled, refusals) = rules::compile(rules);
        replace_hash(&mut self.block_exes, &compiled.exes, "block_exes")?;
        replace_hash(&mut self.block_files, &compiled.files, "block_files")?;
        replace_hash(&mut self.block_dirs, &compiled.dirs, "block_dirs")?;
        for ((prefix_len, data), value) in &compiled.nets {
            self.block_nets
                .insert(&LpmKey::new(*prefix_len, *data), *value, 0)
                .map_err(map_error("block_nets"))?;
        }
        let stale: Vec<LpmKey<NetKeyData>> = self
            .block_nets
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !compiled.nets.contains_key(&(key.prefix_len(), key.data())))
            .collect();
        for key in stale {
            self.block_nets
                .remove(&key)
                .map_err(map_error("block_nets"))?;
        }
        Ok(refusals)
    }

    /// Readable (for epoll/mio) when events are waiting.
    pub fn ring_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// Hands every waiting event to `f` without blocking; returns how many records were read
    /// (records that fail to decode are counted and skipped).
    pub fn drain(&mut self, mut f: impl FnMut(KernelEvent)) -> usize {
        let mut read = 0;
        while let Some(item) = self.ring.next() {
            read += 1;
            if let Ok(event) = layout::decode(&item) {
                f(event);
            }
        }
        read
    }

    /// Events the kernel could not reserve ring space for, summed over CPUs (monotonic).
    pub fn lost_events(&self) -> u64 {
        self.lost
            .get(&0, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    /// Detaches and removes everything pinned under `pin_dir`.
    pub fn uninstall(pin_dir: &Path) -> Result<(), BpfError> {
        for dir in version_dirs(pin_dir)? {
            remove_version_dir(&dir)?;
        }
        match std::fs::remove_dir(pin_dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(pin_error(pin_dir)(error)),
        }
    }
}

fn hash<K: aya::Pod, V: aya::Pod>(
    maps_dir: &Path,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, BpfError> {
    HashMap::try_from(open_pinned(maps_dir, name)?).map_err(map_error(name))
}

fn replace_hash<K: aya::Pod + Ord, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    wanted: &BTreeMap<K, V>,
    name: &'static str,
) -> Result<(), BpfError> {
    for (key, value) in wanted {
        map.insert(key, value, 0).map_err(map_error(name))?;
    }
    let stale: BTreeSet<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|key| !wanted.contains_key(key))
        .collect();
    for key in stale {
        match map.remove(&key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(error) => return Err(map_error(name)(error)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_matches_mkdev() {
        // 8:1 (sda1): glibc st_dev 0x801, kernel (8 << 20) | 1.
        assert_eq!(kernel_dev(0x0801), (8 << 20) | 1);
        // major 259, minor 300: glibc puts the high minor bits at 12..20 and high major bits at 32.
        let st_dev = libc::makedev(259, 300);
        assert_eq!(kernel_dev(st_dev), (259 << 20) | 300);
        let st_dev = libc::makedev(0, 0x2a);
        assert_eq!(kernel_dev(st_dev), 0x2a);
    }

    #[test]
    fn object_is_embedded_and_hashes() {
        assert!(OBJECT.starts_with(b"\x7fELF"));
        assert_ne!(object_sha256(), [0; 32]);
        assert!(version_name(4096).starts_with("obj-"));
    }
}
