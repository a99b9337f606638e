//! What the current rule set asks of each tier that protects objects or decides without
//! asking the daemon: the Landlock policy `oknek run` applies, the race policy of seccomp
//! listeners, and the objects fanotify marks. Computed once per (re)load from the engine's
//! kernel plan.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use oknek_engine::{Enforceability, KernelEntry, KernelRule, RuleSet};
use oknek_event::Kind;

use crate::config::Config;
use crate::expand::expand_glob;
use crate::tiers::fanotify::{AccessSet, Scope, Target};
use crate::tiers::seccomp::{LandlockPolicy, RacePolicy};

#[derive(Debug, Default)]
pub struct TierPlan {
    /// Exact paths of open/exec block rules that apply to every agent: enforced by Landlock for
    /// trees launched with `oknek run`, without a round trip and without a race.
    pub landlock: LandlockPolicy,
    /// Block rules, with what Landlock covers of them.
    rules: Vec<(KernelRule, bool)>,
    /// Operators may accept racy exec and socket calls (see docs/adr/0003).
    allow_racy: bool,
    /// Objects fanotify marks: the open/exec block rules that name files, prefixes or
    /// executables. Rules limited to some agents are marked too; the decision is per agent.
    pub fanotify: Vec<Target>,
    /// Protected files by (dev, ino) → the path their rule names, so any other name of the same
    /// file (hard link, bind mount) is judged as the protected path.
    pub protected: HashMap<(u64, u64), String>,
}

/// The existing files an object entry of a block rule names; `None` when the entry is not an
/// object (prefix, network, executable identity).
pub fn entry_paths(entry: &KernelEntry) -> Option<Vec<PathBuf>> {
    match entry {
        KernelEntry::ExactPath { path } => Some(vec![PathBuf::from(path)]),
        KernelEntry::PathGlob { glob } => Some(expand_glob(glob)),
        _ => None,
    }
}

fn add_fanotify_targets(
    rule: &KernelRule,
    targets: &mut Vec<Target>,
    protected: &mut HashMap<(u64, u64), String>,
) {
    let access = AccessSet {
        open: rule.kinds.contains(&Kind::Open),
        exec: rule.kinds.contains(&Kind::Exec),
    };
    let mut add = |path: PathBuf, scope: Scope| {
        if scope == Scope::File
            && access.open
            && let Ok(md) = std::fs::metadata(&path)
        {
            protected.insert((md.dev(), md.ino()), path.to_string_lossy().into_owned());
        }
        targets.push(Target::new(path, scope, access).with_rules([rule.id.clone()]));
    };
    for entry in &rule.entries {
        match entry {
            KernelEntry::ExactPath { path } => add(PathBuf::from(path), Scope::File),
            KernelEntry::PathGlob { glob } => {
                for path in expand_glob(glob) {
                    add(path, Scope::File);
                }
            }
            // A prefix ending in '/' is a directory tree; any other prefix is not an object.
            KernelEntry::PathPrefix { prefix } if prefix.ends_with('/') && prefix.len() > 1 => {
                add(PathBuf::from(prefix.trim_end_matches('/')), Scope::Prefix);
            }
            KernelEntry::ExePath { path } if access.exec => add(PathBuf::from(path), Scope::File),
            _ => {}
        }
    }
}

fn applies_to(rule: &KernelRule, agent: &str) -> bool {
    rule.agents
        .as_ref()
        .is_none_or(|agents| agents.iter().any(|a| a == agent))
}

impl TierPlan {
    pub fn new(rules: &RuleSet, config: &Config) -> TierPlan {
        let mut landlock = LandlockPolicy::default();
        let mut plan_rules = Vec::new();
        let mut fanotify = Vec::new();
        let mut protected = HashMap::new();
        for rule in rules.kernel_plan().rules {
            let object_rule = !matches!(rule.enforceability, Enforceability::Userspace { .. })
                && !rule.entries.is_empty()
                && rule
                    .kinds
                    .iter()
                    .all(|k| matches!(k, Kind::Open | Kind::Exec));
            // Landlock's policy is one for every launched tree: only rules for every agent.
            let mut covered = object_rule && rule.agents.is_none();
            if covered {
                let mut paths = Vec::new();
                for entry in &rule.entries {
                    match entry_paths(entry) {
                        Some(p) => paths.extend(p),
                        None => covered = false,
                    }
                }
                if covered {
                    if rule.kinds.contains(&Kind::Open) {
                        landlock.deny_read.extend(paths.iter().cloned());
                    }
                    if rule.kinds.contains(&Kind::Exec) {
                        landlock.deny_exec.extend(paths);
                    }
                }
            }
            if object_rule {
                add_fanotify_targets(&rule, &mut fanotify, &mut protected);
            }
            plan_rules.push((rule, covered));
        }
        for list in [&mut landlock.deny_read, &mut landlock.deny_exec] {
            list.sort();
            list.dedup();
        }
        TierPlan {
            landlock,
            rules: plan_rules,
            allow_racy: config.seccomp_allow_racy,
            fanotify,
            protected,
        }
    }

    /// The path a protected file's rule names, if `(dev, ino)` is one.
    pub fn protected_path(&self, dev: u64, ino: u64) -> Option<&str> {
        self.protected.get(&(dev, ino)).map(String::as_str)
    }

    /// A racy call of a kind may only be let through when no block rule of that kind could
    /// refuse it in userspace: the arguments the daemon judged may not be the ones the kernel
    /// uses.
    pub fn race_policy(&self, agent: &str) -> RacePolicy {
        let uncovered = |kinds: &[Kind]| {
            self.rules.iter().any(|(rule, covered)| {
                !covered && applies_to(rule, agent) && rule.kinds.iter().any(|k| kinds.contains(k))
            })
        };
        RacePolicy {
            allow_racy_exec: self.allow_racy || !uncovered(&[Kind::Exec]),
            allow_racy_socket: self.allow_racy || !uncovered(&[Kind::Connect, Kind::Send]),
        }
    }

    /// Ids of block rules Landlock enforces completely.
    pub fn landlock_rules(&self) -> HashSet<&str> {
        self.rules
            .iter()
            .filter(|(_, covered)| *covered)
            .map(|(r, _)| r.id.as_str())
            .collect()
    }
}

/// The hook table the preload shim reads: what it must ask about (a block rule may apply) and
/// what it may let through without a round trip. Block rules the table cannot express make the
/// shim ask about every call of their kind, except opens (see docs/preload.md: asking about every
/// open would tax every agent; write-intent rules without paths are left to the other tiers).
pub fn preload_table(
    rules: &RuleSet,
    config: &Config,
    providers: &[std::net::SocketAddr],
    generation: u64,
) -> oknek_protocol::table::TableBuilder {
    use oknek_protocol::table::{self as t, Action, MatchType, TableBuilder};
    let mut table = TableBuilder::new(generation);
    table
        .fail_closed(config.fail_mode == crate::config::FailMode::Closed)
        .timeout_ms(config.decision_timeout_ms.clamp(1, 10_000) as u32);
    let bits = |kinds: &[Kind]| -> u8 {
        kinds
            .iter()
            .map(|k| match k {
                Kind::Exec => t::Kind::Exec.bit(),
                Kind::Open => t::Kind::Open.bit(),
                Kind::Connect => t::Kind::Connect.bit(),
                Kind::Send => t::Kind::Send.bit(),
                Kind::Watch => t::Kind::Watch.bit(),
                Kind::ModelCall => 0,
            })
            .fold(0, |a, b| a | b)
    };
    let ask_all = |table: &mut TableBuilder, kinds: u8| {
        for kind in t::KINDS {
            if kinds & kind.bit() != 0 && kind != t::Kind::Open {
                table.policy(kind, Action::Ask);
            }
        }
    };
    for rule in rules.kernel_plan().rules {
        let kinds = bits(&rule.kinds);
        if kinds == 0 {
            continue;
        }
        if matches!(rule.enforceability, Enforceability::Userspace { .. }) {
            ask_all(&mut table, kinds);
            continue;
        }
        let add_inodes = |table: &mut TableBuilder, paths: Vec<PathBuf>| {
            for p in paths {
                if let Ok(md) = std::fs::metadata(&p) {
                    let _ = table.inode(kinds, Action::Ask, md.dev(), md.ino());
                }
            }
        };
        for entry in &rule.entries {
            let ok = match entry {
                KernelEntry::Everything => {
                    ask_all(&mut table, kinds);
                    true
                }
                KernelEntry::ExactPath { path } => {
                    add_inodes(&mut table, vec![PathBuf::from(path)]);
                    table
                        .path(kinds, Action::Ask, MatchType::Exact, path.as_bytes())
                        .is_ok()
                }
                KernelEntry::PathPrefix { prefix } => table
                    .path(kinds, Action::Ask, MatchType::Prefix, prefix.as_bytes())
                    .is_ok(),
                KernelEntry::PathGlob { glob } => {
                    add_inodes(&mut table, expand_glob(glob));
                    table
                        .path(kinds, Action::Ask, MatchType::Glob, glob.as_bytes())
                        .is_ok()
                }
                KernelEntry::ExePath { path } => table
                    .exe_path(kinds, Action::Ask, MatchType::Exact, path.as_bytes())
                    .is_ok(),
                KernelEntry::ExeSha256 { .. } => {
                    ask_all(&mut table, kinds);
                    true
                }
                KernelEntry::Network { cidrs, ports } => {
                    let any_port = [oknek_engine::PortRange {
                        first: 0,
                        last: 65535,
                    }];
                    let ports: &[oknek_engine::PortRange] =
                        if ports.is_empty() { &any_port } else { ports };
                    let nets: Vec<(std::net::IpAddr, u8)> = if cidrs.is_empty() {
                        vec![
                            (std::net::Ipv4Addr::UNSPECIFIED.into(), 0),
                            (std::net::Ipv6Addr::UNSPECIFIED.into(), 0),
                        ]
                    } else {
                        cidrs.iter().map(|c| (c.addr, c.prefix_len)).collect()
                    };
                    nets.iter().all(|(addr, len)| {
                        ports.iter().all(|p| {
                            table
                                .net(kinds, Action::Ask, *addr, *len, p.first..=p.last)
                                .is_ok()
                        })
                    })
                }
            };
            if !ok {
                ask_all(&mut table, kinds);
            }
        }
    }
    // A connect to a model provider is a model call, judged (and recorded) whatever the rules.
    for provider in providers {
        let bits = if provider.is_ipv4() { 32 } else { 128 };
        let port = provider.port();
        if table
            .net(
                t::Kind::Connect.bit(),
                Action::Ask,
                provider.ip(),
                bits,
                port..=port,
            )
            .is_err()
        {
            ask_all(&mut table, t::Kind::Connect.bit());
        }
    }
    table
}
