//! The eBPF tier: the probes of `oknek-bpf`, fed from the rule set's kernel plan and the
//! declared agents, and their ring buffer decoded into the events every other tier produces.
//!
//! The kernel refuses what the plan can express as map lookups (files and directories by inode,
//! executables by inode, destinations by CIDR and port) without asking the daemon; the daemon
//! writes the evidence for those refusals from the ring buffer afterwards, and judges the
//! observations (everything else an agent does) against the whole rule set.
//!
//! Agent and rule numbers in the kernel maps outlive the daemon (the maps are pinned), so their
//! meaning is kept in `ebpf-ids.json` in the state directory and only ever grows: a restarted
//! daemon reads what the previous one left in the ring buffer with the same names.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oknek_bpf::{
    AgentMaps, BlockRule, Detail, Enforcer, KernelEvent, NetEntry, ProbeConfig, Probes, Start,
    Support,
};
use oknek_engine::{Enforceability, KernelEntry, KernelPlan, ModelConnectRule, QuotaBy};
use oknek_event::{Action, Event, Kind, Mechanism, Process, SockAddr, Timestamp};
use serde::{Deserialize, Serialize};

use crate::config::AgentSpec;
use crate::expand::expand_glob;
use crate::models::{GATEWAY_ONLY_RULE, ModelCalls, QUOTA_FULL_RULE};
use crate::procinfo;

/// Where the probes pin their maps and links unless configured otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/oknek";

/// How long an observation waits for the refusal of the same call (see [`EbpfTier::drain`]).
const SETTLE: Duration = Duration::from_millis(50);

/// Agents limited by a rule are a 64-bit mask in the kernel: ids from here on cannot be scoped.
const MAX_SCOPED_AGENTS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(transparent)]
    Probes(#[from] oknek_bpf::BpfError),
    #[error("{path}: {source}")]
    Ids { path: PathBuf, source: io::Error },
}

/// The meaning of the numbers in the kernel maps, kept across restarts.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Ids {
    agents: Vec<String>,
    rules: Vec<String>,
    /// Model providers, by their index in the kernel's policy array.
    #[serde(default)]
    providers: Vec<String>,
}

impl Ids {
    fn load(path: &Path) -> Ids {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).map_err(io::Error::other)?)?;
        std::fs::rename(&tmp, path)
    }

    fn agent(&mut self, name: &str) -> u32 {
        Self::number(&mut self.agents, name)
    }

    fn rule(&mut self, id: &str) -> u32 {
        Self::number(&mut self.rules, id)
    }

    fn number(table: &mut Vec<String>, name: &str) -> u32 {
        match table.iter().position(|n| n == name) {
            Some(i) => i as u32,
            None => {
                table.push(name.to_owned());
                (table.len() - 1) as u32
            }
        }
    }
}

/// What a rule's entries became in the kernel.
#[derive(Debug, Clone, Serialize)]
pub struct RuleCoverage {
    pub rule: String,
    /// Entries the kernel holds.
    pub entries: usize,
    /// Parts left to the userspace tiers, and why.
    pub userspace: Vec<String>,
}

/// One event as the kernel reported it.
pub struct Reported {
    pub event: Event,
    /// The rule the kernel refused it by.
    pub refused_by: Option<String>,
    /// A model call the kernel metered: the quota rule and the whole calls its bucket has left.
    pub quota: Option<(String, u32)>,
}

pub struct EbpfTier {
    probes: Probes,
    pub start: Start,
    ids: Ids,
    ids_path: PathBuf,
    /// Protected objects by kernel (dev, ino) → the path their rule names, to name refused opens.
    protected: HashMap<(u32, u64), String>,
    /// Lost-event count already recorded as a gap.
    lost_recorded: u64,
    /// Observations waiting for a refusal of the same call.
    pending: VecDeque<(Instant, Event)>,
    /// The cgroup directories of agents declared by unit or cgroup, as last found.
    agent_cgroup_dirs: Vec<(PathBuf, u32)>,
    pub coverage: Vec<RuleCoverage>,
    /// Quotas the kernel meters: rule index → (limit, period).
    quota_rates: BTreeMap<u32, (u64, Duration)>,
    last_refill: Instant,
}

impl EbpfTier {
    /// Loads (or adopts) the probes. `lsm` and `cgroup` say which enforcement hooks to attach.
    pub fn start(
        pin_dir: &Path,
        state_dir: &Path,
        support: &Support,
    ) -> Result<EbpfTier, EbpfError> {
        let cfg = ProbeConfig {
            pin_dir: pin_dir.to_owned(),
            lsm: support.lsm.available,
            cgroup: support.cgroup_sock_addr.available && support.cgroup2.is_some(),
            observe: support.tracepoint.available,
            ring_bytes: 16 << 20,
        };
        let (probes, start) = Probes::start(&cfg)?;
        let ids_path = state_dir.join("ebpf-ids.json");
        let ids = Ids::load(&ids_path);
        Ok(EbpfTier {
            probes,
            start,
            ids,
            ids_path,
            protected: HashMap::new(),
            lost_recorded: 0,
            pending: VecDeque::new(),
            agent_cgroup_dirs: Vec::new(),
            coverage: Vec::new(),
            quota_rates: BTreeMap::new(),
            last_refill: Instant::now(),
        })
    }

    pub fn ring_fd(&self) -> RawFd {
        self.probes.ring_fd()
    }

    /// The mechanism that refuses `kind` in the kernel, if any.
    pub fn enforcer(&self, kind: Kind) -> Option<Mechanism> {
        self.probes.enforcer(kind).map(mechanism)
    }

    fn save_ids(&self) -> Result<(), EbpfError> {
        self.ids
            .save(&self.ids_path)
            .map_err(|source| EbpfError::Ids {
                path: self.ids_path.clone(),
                source,
            })
    }

    /// Replaces the kernel's agent selectors with the declared agents.
    pub fn set_agents(&mut self, specs: &[AgentSpec]) -> Result<(), EbpfError> {
        let mut maps = AgentMaps {
            exes: Vec::new(),
            cgroups: Vec::new(),
            uids: Vec::new(),
        };
        let cgroup_root = procinfo::cgroup2_mount();
        let mut dirs = Vec::new();
        for spec in specs {
            let id = self.ids.agent(&spec.name);
            for exe in &spec.exe {
                if let Ok(md) = std::fs::metadata(exe) {
                    maps.exes.push(((md.dev(), md.ino()), id));
                }
            }
            for uid in &spec.uid {
                maps.uids.push((*uid, id));
            }
            if let Some(root) = cgroup_root {
                for cg in &spec.cgroup {
                    dirs.push((root.join(cg.trim_start_matches('/')), id));
                }
                for unit in &spec.unit {
                    // Where systemd puts system services, whether or not they run yet.
                    dirs.push((root.join("system.slice").join(unit), id));
                    for dir in find_unit_cgroups(root, unit) {
                        dirs.push((dir, id));
                    }
                }
            }
        }
        dirs.sort();
        dirs.dedup();
        for (dir, id) in &dirs {
            cgroup_tree(dir, &mut |cgid| maps.cgroups.push((cgid, *id)));
        }
        self.agent_cgroup_dirs = dirs;
        self.save_ids()?;
        self.probes.set_agents(&maps)?;
        Ok(())
    }

    /// Catches agent services that started since the maps were written: a unit's cgroup is
    /// created just before its process execs, so the kernel may not have known the cgroup yet.
    /// Their processes are tracked from here on (their children inherit); called once a second.
    /// Returns how many processes were added.
    pub fn refresh_cgroup_agents(&mut self, specs: &[AgentSpec]) -> usize {
        let mut added = 0;
        let mut new_cgroup = false;
        for i in 0..self.agent_cgroup_dirs.len() {
            let (dir, id) = self.agent_cgroup_dirs[i].clone();
            let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
                continue;
            };
            for tgid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                if self.probes.tracked_agent(tgid).is_none()
                    && self.probes.track_task(tgid, id).is_ok()
                {
                    added += 1;
                    new_cgroup = true;
                }
            }
        }
        if new_cgroup && let Err(e) = self.set_agents(specs) {
            crate::warn!("oknekd: eBPF: refreshing agent cgroups: {e}");
        }
        added
    }

    /// Marks a running process (and, through fork inheritance, what it starts) as an agent.
    pub fn track(&mut self, tgid: u32, agent: &str) -> Result<(), EbpfError> {
        let id = self.ids.agent(agent);
        self.save_ids()?;
        self.probes.track_task(tgid, id)?;
        Ok(())
    }

    /// A rule's coverage entry and its agents as a kernel mask (0: every agent), or, when the
    /// kernel cannot hold it (userspace-only, or scoped to agents beyond the mask), just its
    /// coverage entry saying why.
    fn kernel_scope(
        &mut self,
        id: &str,
        enforceability: &Enforceability,
        agents: Option<&[String]>,
    ) -> Result<(RuleCoverage, u64), RuleCoverage> {
        let mut cov = RuleCoverage {
            rule: id.to_owned(),
            entries: 0,
            userspace: Vec::new(),
        };
        if let Enforceability::Userspace { reasons } = enforceability {
            cov.userspace.extend(reasons.iter().cloned());
            return Err(cov);
        }
        let Some(names) = agents else {
            return Ok((cov, 0));
        };
        let mut mask = 0u64;
        for name in names {
            let id = self.ids.agent(name) as usize;
            if id < MAX_SCOPED_AGENTS {
                mask |= 1 << id;
            } else {
                cov.userspace
                    .push(format!("agent {name}: more than 64 agents in the kernel"));
            }
        }
        if mask == 0 { Err(cov) } else { Ok((cov, mask)) }
    }

    /// Compiles the plan's block rules into the kernel maps; what the kernel cannot hold is
    /// listed in `coverage` for `oknek doctor`.
    pub fn set_rules(&mut self, plan: &KernelPlan) -> Result<(), EbpfError> {
        let mut rules = Vec::new();
        let mut coverage = Vec::new();
        let mut protected = HashMap::new();
        for rule in &plan.rules {
            let (mut cov, agents) =
                match self.kernel_scope(&rule.id, &rule.enforceability, rule.agents.as_deref()) {
                    Ok(scope) => scope,
                    Err(cov) => {
                        coverage.push(cov);
                        continue;
                    }
                };
            let rule_index = self.ids.rule(&rule.id);
            let mut block = BlockRule {
                rule_index,
                kinds: rule.kinds.clone(),
                agents,
                hold: rule.hold,
                files: Vec::new(),
                dirs: Vec::new(),
                exes: Vec::new(),
                nets: Vec::new(),
            };
            let objects = rule
                .kinds
                .iter()
                .any(|k| matches!(k, Kind::Open | Kind::Watch));
            let execs = rule.kinds.contains(&Kind::Exec);
            let network = rule
                .kinds
                .iter()
                .any(|k| matches!(k, Kind::Connect | Kind::Send));
            for entry in &rule.entries {
                match entry {
                    KernelEntry::ExactPath { path } => {
                        add_file(path.as_ref(), objects, execs, &mut block, &mut protected);
                    }
                    KernelEntry::PathGlob { glob } => {
                        for path in expand_glob(glob) {
                            add_file(&path, objects, execs, &mut block, &mut protected);
                        }
                    }
                    KernelEntry::PathPrefix { prefix }
                        if prefix.ends_with('/') && prefix.len() > 1 =>
                    {
                        if let Ok(md) = std::fs::metadata(prefix)
                            && md.is_dir()
                        {
                            if objects {
                                block.dirs.push((md.dev(), md.ino()));
                            }
                            if execs {
                                cov.userspace
                                    .push(format!("exec under {prefix}: decided in userspace"));
                            }
                        }
                    }
                    KernelEntry::PathPrefix { prefix } => cov
                        .userspace
                        .push(format!("path prefix {prefix:?} is not a directory")),
                    KernelEntry::ExePath { path } => cov
                        .userspace
                        .push(format!("calling executable {path}: matched in userspace")),
                    KernelEntry::ExeSha256 { .. } => cov
                        .userspace
                        .push("executable sha256: measured in userspace".into()),
                    KernelEntry::Network { cidrs, ports } if network => {
                        let ports: Vec<(u16, u16)> =
                            ports.iter().map(|p| (p.first, p.last)).collect();
                        if cidrs.is_empty() {
                            block.nets.extend(any_address(&ports));
                        }
                        for cidr in cidrs {
                            block.nets.push(NetEntry {
                                addr: cidr.addr,
                                prefix_len: cidr.prefix_len,
                                ports: ports.clone(),
                            });
                        }
                    }
                    KernelEntry::Network { .. } => {}
                    KernelEntry::Everything if network => block.nets.extend(any_address(&[])),
                    KernelEntry::Everything => cov
                        .userspace
                        .push("every event of the kind: decided in userspace".into()),
                }
            }
            cov.entries =
                block.files.len() + block.dirs.len() + block.exes.len() + block.nets.len();
            if cov.entries > 0 {
                rules.push(block);
            }
            coverage.push(cov);
        }
        self.save_ids()?;
        let refusals = self.probes.set_rules(&rules)?;
        for (id, reason) in self.refused_rules(refusals) {
            if let Some(cov) = coverage.iter_mut().find(|c| c.rule == id) {
                cov.userspace.push(reason);
            }
        }
        self.protected = protected;
        self.coverage = coverage;
        Ok(())
    }

    /// Loads the model providers' addresses and the connect-time model-call rules into the
    /// kernel. Returns the ids of the rules whose quotas the kernel now meters; the rules'
    /// coverage (what stays in userspace, and why) is added to `coverage`.
    pub fn set_models(
        &mut self,
        models: &ModelCalls,
        plan: &[ModelConnectRule],
    ) -> Result<HashSet<String>, EbpfError> {
        let mut entries = Vec::new();
        for (addr, name) in models.book().entries() {
            let Some(provider) = models.providers().get(name) else {
                continue;
            };
            let provider_id = Ids::number(&mut self.ids.providers, name);
            let (ip, port) = match addr {
                SockAddr::Inet { addr, port } => (std::net::IpAddr::V4(*addr), *port),
                SockAddr::Inet6 { addr, port } => (std::net::IpAddr::V6(*addr), *port),
                // Unix sockets are not connects the kernel tier matches.
                SockAddr::Unix { .. } => continue,
            };
            entries.push(oknek_bpf::ProviderEntry {
                addr: ip,
                port,
                provider_id,
                gateway_only: provider.gateway_only(models.gateway_configured()),
            });
        }
        let mut rules = Vec::new();
        let mut rates = BTreeMap::new();
        let mut metered = HashSet::new();
        for rule in plan {
            let (mut cov, agents) =
                match self.kernel_scope(&rule.id, &rule.enforceability, rule.agents.as_deref()) {
                    Ok(scope) => scope,
                    Err(cov) => {
                        self.coverage.push(cov);
                        continue;
                    }
                };
            let rule_index = self.ids.rule(&rule.id);
            let providers: Vec<u32> = rule
                .providers
                .iter()
                .map(|name| Ids::number(&mut self.ids.providers, name))
                .filter(|&id| (id as usize) < oknek_bpf::layout::MAX_PROVIDERS)
                .collect();
            cov.entries = providers.len();
            let quota = rule.quota.map(|q| {
                rates.insert(rule_index, (q.limit, Duration::from_secs(q.per_secs)));
                metered.insert(rule.id.clone());
                let by = match q.by {
                    QuotaBy::Caller => oknek_bpf::QuotaBy::Caller,
                    QuotaBy::Provider => oknek_bpf::QuotaBy::Provider,
                    QuotaBy::CallerProvider => oknek_bpf::QuotaBy::CallerProvider,
                    QuotaBy::Agent => oknek_bpf::QuotaBy::Agent,
                };
                (q.limit, by)
            });
            rules.push(oknek_bpf::ModelRule {
                rule_index,
                agents,
                hold: rule.hold,
                providers,
                quota,
            });
            self.coverage.push(cov);
        }
        self.save_ids()?;
        let refusals = self.probes.set_models(&entries, &rules)?;
        for (id, reason) in self.refused_rules(refusals) {
            metered.remove(&id);
            if let Some(cov) = self.coverage.iter_mut().rev().find(|c| c.rule == id) {
                cov.userspace.push(reason);
            }
        }
        self.quota_rates = rates;
        Ok(metered)
    }

    /// The rule ids and reasons of what the kernel could not hold.
    fn refused_rules(&self, refusals: Vec<oknek_bpf::RuleRefusal>) -> Vec<(String, String)> {
        refusals
            .into_iter()
            .map(|r| {
                let id = self.ids.rules.get(r.rule_index as usize).cloned();
                (id.unwrap_or_default(), r.reason)
            })
            .collect()
    }

    /// Refills the kernel's quota buckets for the time since the last refill (once a second).
    pub fn refill_quotas(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.last_refill);
        self.last_refill = now;
        if let Err(e) = self.probes.refill_quotas(&self.quota_rates, elapsed) {
            crate::warn!("oknekd: eBPF: refilling quota buckets: {e}");
        }
    }

    /// Events lost since the last call (ring buffer full), to record as a gap.
    pub fn take_lost(&mut self) -> u64 {
        let lost = self.probes.lost_events();
        let new = lost.saturating_sub(self.lost_recorded);
        self.lost_recorded = lost;
        new
    }

    pub fn lost_total(&self) -> u64 {
        self.probes.lost_events()
    }

    /// Decodes what the kernel reported, each event with the id of the rule the kernel refused
    /// it by (if it did).
    ///
    /// A syscall tracepoint sees an open, a watch or a send before the hook that may refuse it
    /// runs; such an observation waits [`SETTLE`] for that refusal, so a refused call is recorded
    /// once, as refused. Call [`EbpfTier::settled`] periodically for the ones that waited.
    pub fn drain(
        &mut self,
        identities: &mut procinfo::IdentityCache,
        now: Instant,
    ) -> Vec<Reported> {
        let mut batch = Vec::new();
        self.probes.drain(|ev| batch.push(ev));
        let mut out = Vec::with_capacity(batch.len());
        for ev in batch {
            let refused_by = ev.blocked.as_ref().and_then(|b| match b.rule_index {
                oknek_bpf::layout::RULE_GATEWAY_ONLY => Some(GATEWAY_ONLY_RULE.to_owned()),
                oknek_bpf::layout::RULE_QUOTA_FULL => Some(QUOTA_FULL_RULE.to_owned()),
                index => self.ids.rules.get(index as usize).cloned(),
            });
            let quota = match &ev.detail {
                Detail::Connect {
                    quota: Some((rule, left)),
                    ..
                } => self
                    .ids
                    .rules
                    .get(*rule as usize)
                    .map(|id| (id.clone(), *left)),
                _ => None,
            };
            let event = self.to_event(&ev, identities);
            let kind = event.kind();
            if ev.blocked.is_some() {
                if let Some(i) = self
                    .pending
                    .iter()
                    .rposition(|(_, p)| p.process.pid == event.process.pid && p.kind() == kind)
                {
                    self.pending.remove(i);
                }
                out.push(Reported {
                    event,
                    refused_by,
                    quota,
                });
            } else if matches!(kind, Kind::Open | Kind::Watch | Kind::Send)
                && self.probes.enforcer(kind).is_some()
            {
                self.pending.push_back((now, event));
            } else {
                out.push(Reported {
                    event,
                    refused_by: None,
                    quota,
                });
            }
        }
        out.extend(self.settled(now));
        out
    }

    /// Observations that waited long enough for a refusal that did not come.
    pub fn settled(&mut self, now: Instant) -> Vec<Reported> {
        let mut out = Vec::new();
        while self
            .pending
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= SETTLE)
        {
            if let Some((_, event)) = self.pending.pop_front() {
                out.push(Reported {
                    event,
                    refused_by: None,
                    quota: None,
                });
            }
        }
        out
    }

    fn to_event(&self, ev: &KernelEvent, identities: &mut procinfo::IdentityCache) -> Event {
        let mut process = identities.get(ev.tgid).unwrap_or_else(|_| Process {
            pid: ev.pid,
            tgid: ev.tgid,
            uid: ev.uid,
            comm: ev.comm.clone(),
            cgroup_id: ev.cgroup_id,
            ..Default::default()
        });
        process.pid = ev.pid;
        process.agent = self.ids.agents.get(ev.agent_id as usize).cloned();
        let named = |path: &str, inode: Option<(u32, u64)>| -> String {
            inode
                .and_then(|i| self.protected.get(&i).cloned())
                .unwrap_or_else(|| crate::judge::resolve_path(ev.pid, libc::AT_FDCWD, path, false))
        };
        let action = match &ev.detail {
            Detail::Exec { path, argv, .. } => Action::Exec {
                path: crate::judge::resolve_path(ev.pid, libc::AT_FDCWD, path, false),
                argv: argv.clone(),
            },
            Detail::Open {
                path,
                flags,
                mode,
                inode,
            } => Action::Open {
                path: named(path, *inode),
                flags: *flags,
                mode: *mode,
            },
            Detail::Connect { dest, .. } => Action::Connect { dest: dest.clone() },
            Detail::Send { dest, bytes } => Action::Send {
                dest: dest.clone().unwrap_or(SockAddr::Unix {
                    path: String::new(),
                }),
                bytes: *bytes,
            },
            Detail::Watch { path, mask, inode } => Action::Watch {
                path: named(path, *inode),
                mask: *mask,
            },
        };
        let source = match (&ev.blocked, &ev.detail) {
            (Some(b), _) => mechanism(b.enforcer),
            // Connects are seen by the hook that could refuse them.
            (None, Detail::Connect { .. }) => self
                .probes
                .enforcer(Kind::Connect)
                .map_or(Mechanism::Tracepoint, mechanism),
            (None, _) => Mechanism::Tracepoint,
        };
        Event {
            time: Timestamp::now(),
            source,
            process,
            action,
        }
    }
}

fn mechanism(enforcer: Enforcer) -> Mechanism {
    match enforcer {
        Enforcer::Lsm => Mechanism::BpfLsm,
        Enforcer::CgroupSockAddr => Mechanism::CgroupSockAddr,
    }
}

fn any_address(ports: &[(u16, u16)]) -> [NetEntry; 2] {
    [
        NetEntry {
            addr: std::net::Ipv4Addr::UNSPECIFIED.into(),
            prefix_len: 0,
            ports: ports.to_vec(),
        },
        NetEntry {
            addr: std::net::Ipv6Addr::UNSPECIFIED.into(),
            prefix_len: 0,
            ports: ports.to_vec(),
        },
    ]
}

fn add_file(
    path: &Path,
    objects: bool,
    execs: bool,
    block: &mut BlockRule,
    protected: &mut HashMap<(u32, u64), String>,
) {
    let Ok(md) = std::fs::metadata(path) else {
        return;
    };
    let id = (md.dev(), md.ino());
    if objects {
        block.files.push(id);
    }
    if execs && md.is_file() {
        block.exes.push(id);
    }
    protected.insert(
        (oknek_bpf::kernel_dev(md.dev()), md.ino()),
        path.to_string_lossy().into_owned(),
    );
}

/// Calls `f` with the id of `dir` and of every cgroup below it (bounded).
fn cgroup_tree(dir: &Path, f: &mut impl FnMut(u64)) {
    let mut stack = vec![(dir.to_owned(), 0usize)];
    let mut seen = 0usize;
    while let Some((dir, depth)) = stack.pop() {
        let Ok(md) = std::fs::metadata(&dir) else {
            continue;
        };
        f(md.ino());
        seen += 1;
        if depth >= 8 || seen >= 4096 {
            continue;
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((entry.path(), depth + 1));
                }
            }
        }
    }
}

/// The cgroups named after a systemd unit (`aider.service` lives at
/// `/system.slice/aider.service`, or deeper under user slices).
fn find_unit_cgroups(root: &Path, unit: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(root.to_owned(), 0usize)];
    let mut visited = 0usize;
    while let Some((dir, depth)) = stack.pop() {
        visited += 1;
        if visited > 20_000 {
            break;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if entry.file_name().to_str() == Some(unit) {
                found.push(entry.path());
            } else if depth < 6 {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_only_grow_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ebpf-ids.json");
        let mut ids = Ids::default();
        assert_eq!(ids.rule("R1.ssh"), 0);
        assert_eq!(ids.rule("R3.exfil"), 1);
        assert_eq!(ids.rule("R1.ssh"), 0);
        assert_eq!(ids.agent("aider"), 0);
        ids.save(&path).unwrap();
        let mut again = Ids::load(&path);
        assert_eq!(again.rule("R3.exfil"), 1);
        assert_eq!(again.rule("R7.new"), 2);
        assert_eq!(again.agent("aider"), 0);
    }

    #[test]
    fn unit_cgroups_are_found_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("system.slice/aider.service/sub")).unwrap();
        std::fs::create_dir_all(dir.path().join("user.slice/other.service")).unwrap();
        let found = find_unit_cgroups(dir.path(), "aider.service");
        assert_eq!(found, vec![dir.path().join("system.slice/aider.service")]);
        let mut ids = Vec::new();
        cgroup_tree(&found[0], &mut |id| ids.push(id));
        assert_eq!(ids.len(), 2, "the unit's cgroup and the one below it");
    }
}
