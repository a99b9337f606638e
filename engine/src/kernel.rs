//! The kernel-enforceable subset of a rule set, as plain data for the eBPF tier.
//!
//! A block rule can be refused in the kernel when its match is a disjunction of map lookups:
//! exact paths, path prefixes, executables (path or sha256), destination networks and ports,
//! optionally scoped to agents. Path globs qualify once expanded to the files they match (the
//! kernel then matches by inode). Everything else is decided in userspace, and the plan says why.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use oknek_event::{Field, Kind, Verdict};
use serde::Serialize;

use crate::glob::GlobShape;
use crate::predicate::{ArgvCheck, Pred, StrCheck};
use crate::ruleset::{Rule, RuleSet};

/// What the kernel tier needs to know about the block rules of a set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelPlan {
    /// The digest of the rule set the plan was made from.
    pub digest: String,
    /// One entry per block rule, in set order.
    pub rules: Vec<KernelRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelRule {
    pub id: String,
    pub kinds: Vec<Kind>,
    /// The agents the rule is limited to; `None` for every agent.
    pub agents: Option<Vec<String>>,
    /// Also stop the agent after refusing.
    pub hold: bool,
    /// The lookups whose disjunction is the rule's match; empty when `enforceability` is
    /// [`Enforceability::Userspace`].
    pub entries: Vec<KernelEntry>,
    pub enforceability: Enforceability,
}

/// One kernel map lookup. A rule blocks an event that hits any of its entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum KernelEntry {
    /// The rule has no `match`: every event of its kinds (for its agents).
    Everything,
    /// The event's `path` equals this path.
    ExactPath { path: String },
    /// The event's `path` starts with this string.
    PathPrefix { prefix: String },
    /// The event's `path` matches this glob: expand it to the existing files, match by inode.
    PathGlob { glob: String },
    /// The process executable is this file.
    ExePath { path: String },
    /// The process executable has this sha256 (hex).
    ExeSha256 { sha256: String },
    /// The destination is in one of `cidrs` (any address when empty) and its port in one of
    /// `ports` (any port when empty).
    Network {
        cidrs: Vec<Cidr>,
        ports: Vec<PortRange>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// Where a block rule can be enforced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "tier", rename_all = "snake_case")]
pub enum Enforceability {
    /// Entirely by kernel map lookups.
    Kernel,
    /// By kernel lookups once its path globs are expanded to files.
    KernelAfterGlobExpansion,
    /// Only by userspace; `reasons` name the parts the kernel cannot evaluate.
    Userspace { reasons: Vec<String> },
}

impl Enforceability {
    /// Short text for tables: `kernel`, `kernel (globs expanded)`, `userspace: argv regex, when`.
    pub fn summary(&self) -> String {
        match self {
            Enforceability::Kernel => "kernel".into(),
            Enforceability::KernelAfterGlobExpansion => "kernel (globs expanded)".into(),
            Enforceability::Userspace { reasons } => format!("userspace: {}", reasons.join(", ")),
        }
    }
}

impl RuleSet {
    /// The block rules and what the kernel can do with each.
    pub fn kernel_plan(&self) -> KernelPlan {
        KernelPlan {
            digest: self.digest().to_owned(),
            rules: self
                .rules()
                .iter()
                .filter(|r| r.action() == Verdict::Block)
                .map(kernel_rule)
                .collect(),
        }
    }
}

/// The kernel view of one rule (any action; the plan holds only block rules).
pub fn kernel_rule(rule: &Rule) -> KernelRule {
    let mut reasons = Vec::new();
    if rule.when.is_some() {
        reasons.push("when".to_owned());
    }
    if rule.quota.is_some() {
        reasons.push("quota".to_owned());
    }
    let entries = match &rule.pred {
        None => vec![KernelEntry::Everything],
        Some(pred) => match entries(pred) {
            Ok(entries) => entries,
            Err(more) => {
                reasons.extend(more);
                Vec::new()
            }
        },
    };
    let mut seen = std::collections::HashSet::new();
    reasons.retain(|r| seen.insert(r.clone()));
    let enforceability = if !reasons.is_empty() {
        Enforceability::Userspace { reasons }
    } else if entries
        .iter()
        .any(|e| matches!(e, KernelEntry::PathGlob { .. }))
    {
        Enforceability::KernelAfterGlobExpansion
    } else {
        Enforceability::Kernel
    };
    KernelRule {
        id: rule.id().to_owned(),
        kinds: rule.kinds().to_vec(),
        agents: rule.agents().map(<[String]>::to_vec),
        hold: rule.hold(),
        entries: if matches!(enforceability, Enforceability::Userspace { .. }) {
            Vec::new()
        } else {
            entries
        },
        enforceability,
    }
}

/// The entries whose disjunction equals `pred`, or why there are none.
fn entries(pred: &Pred) -> Result<Vec<KernelEntry>, Vec<String>> {
    match pred {
        Pred::Any(preds) => {
            let mut out = Vec::new();
            let mut reasons = Vec::new();
            for p in preds.iter() {
                match entries(p) {
                    Ok(e) => out.extend(e),
                    Err(r) => reasons.extend(r),
                }
            }
            if reasons.is_empty() {
                Ok(out)
            } else {
                Err(reasons)
            }
        }
        Pred::All(preds) => conjunction(preds),
        Pred::Not(_) => Err(vec!["not".into()]),
        Pred::Baseline(_) => Err(vec!["baseline".into()]),
        Pred::Present { field, .. } => Err(vec![format!("{field} present test")]),
        Pred::Str { field, check } => string_entries(*field, check),
        Pred::Argv(check) => Err(vec![
            match check {
                ArgvCheck::Regex(_) => "argv regex",
                _ => "argv test",
            }
            .into(),
        ]),
        Pred::Num {
            field: Field::Port,
            ranges,
        } => Ok(vec![KernelEntry::Network {
            cidrs: Vec::new(),
            ports: ports(ranges),
        }]),
        Pred::Num { field, .. } => Err(vec![format!("{field} test")]),
        Pred::Addr(set) => Ok(vec![KernelEntry::Network {
            cidrs: cidrs(set),
            ports: Vec::new(),
        }]),
        Pred::Write(_)
        | Pred::Bits {
            field: Field::Flags,
            ..
        } => Err(vec!["open flags test".into()]),
        Pred::Bits { field, .. } => Err(vec![format!("{field} test")]),
    }
}

/// Only destination network and port may be combined: that is one map entry.
fn conjunction(preds: &[Pred]) -> Result<Vec<KernelEntry>, Vec<String>> {
    if let [only] = preds {
        return entries(only);
    }
    let mut cidr_list = None;
    let mut port_list = None;
    for p in preds {
        match p {
            Pred::Addr(set) if cidr_list.is_none() => cidr_list = Some(cidrs(set)),
            Pred::Num {
                field: Field::Port,
                ranges,
            } if port_list.is_none() => port_list = Some(ports(ranges)),
            _ => {
                // Name the tests the kernel cannot combine, or what is not kernel-evaluable.
                let mut reasons: Vec<String> = preds
                    .iter()
                    .filter_map(|p| entries(p).err())
                    .flatten()
                    .collect();
                if reasons.is_empty() {
                    reasons.push(format!(
                        "tests that must all hold ({})",
                        preds.iter().map(describe).collect::<Vec<_>>().join(" and ")
                    ));
                }
                return Err(reasons);
            }
        }
    }
    Ok(vec![KernelEntry::Network {
        cidrs: cidr_list.unwrap_or_default(),
        ports: port_list.unwrap_or_default(),
    }])
}

fn describe(pred: &Pred) -> String {
    match pred {
        Pred::Str { field, .. } | Pred::Num { field, .. } | Pred::Bits { field, .. } => {
            field.to_string()
        }
        Pred::Present { field, .. } => field.to_string(),
        Pred::Addr(_) => "addr".into(),
        Pred::Write(_) => "flags".into(),
        Pred::Argv(_) => "argv".into(),
        Pred::Any(_) => "any".into(),
        Pred::All(_) => "all".into(),
        Pred::Not(_) => "not".into(),
        Pred::Baseline(_) => "baseline".into(),
    }
}

fn string_entries(field: Field, check: &StrCheck) -> Result<Vec<KernelEntry>, Vec<String>> {
    let test = match check {
        StrCheck::Exact(_) => "exact",
        StrCheck::Prefix(_) => "prefix",
        StrCheck::Suffix(_) => "suffix",
        StrCheck::Contains(_) => "contains",
        StrCheck::Basename(_) => "basename",
        StrCheck::Glob(_) => "glob",
        StrCheck::Regex(_) => "regex",
    };
    let unsupported = || Err(vec![format!("{field} {test}")]);
    match (field, check) {
        (Field::Path, StrCheck::Exact(set)) => Ok(set
            .values()
            .into_iter()
            .map(|p| KernelEntry::ExactPath { path: p.into() })
            .collect()),
        (Field::Path, StrCheck::Prefix(prefixes)) => Ok(prefixes
            .iter()
            .map(|p| KernelEntry::PathPrefix {
                prefix: p.to_string(),
            })
            .collect()),
        (Field::Path, StrCheck::Glob(globs)) => Ok(globs
            .iter()
            .map(|g| match g.shape() {
                GlobShape::Exact(p) => KernelEntry::ExactPath { path: p.into() },
                GlobShape::Prefix(p) => KernelEntry::PathPrefix { prefix: p.into() },
                GlobShape::Pattern => KernelEntry::PathGlob {
                    glob: g.as_str().into(),
                },
            })
            .collect()),
        (Field::Exe, StrCheck::Exact(set)) => Ok(set
            .values()
            .into_iter()
            .map(|p| KernelEntry::ExePath { path: p.into() })
            .collect()),
        (Field::Exe, StrCheck::Glob(globs))
            if globs
                .iter()
                .all(|g| matches!(g.shape(), GlobShape::Exact(_))) =>
        {
            Ok(globs
                .iter()
                .map(|g| KernelEntry::ExePath {
                    path: g.as_str().into(),
                })
                .collect())
        }
        (Field::ExeSha256, StrCheck::Exact(set)) => Ok(set
            .values()
            .into_iter()
            .map(|h| KernelEntry::ExeSha256 {
                sha256: h.to_ascii_lowercase(),
            })
            .collect()),
        _ => unsupported(),
    }
}

fn ports(ranges: &[(u64, u64)]) -> Vec<PortRange> {
    ranges
        .iter()
        .map(|&(lo, hi)| PortRange {
            first: u16::try_from(lo).unwrap_or(u16::MAX),
            last: u16::try_from(hi).unwrap_or(u16::MAX),
        })
        .collect()
}

fn cidrs(set: &crate::predicate::AddrSet) -> Vec<Cidr> {
    let v4 = set.v4.iter().map(|&(net, mask)| Cidr {
        addr: IpAddr::V4(Ipv4Addr::from(net)),
        prefix_len: mask.count_ones() as u8,
    });
    let v6 = set.v6.iter().map(|&(net, mask)| Cidr {
        addr: IpAddr::V6(Ipv6Addr::from(net)),
        prefix_len: mask.count_ones() as u8,
    });
    v4.chain(v6).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rules: &str) -> KernelPlan {
        let text = format!("oknek_rules: 1\nrules:\n{rules}");
        RuleSet::from_sources(&[("k.yaml", text.as_str())])
            .unwrap_or_else(|e| panic!("{e}"))
            .kernel_plan()
    }

    #[test]
    fn paths_exes_and_networks_are_kernel() {
        let p = plan(
            r#"
  - id: k1
    title: t
    kind: open
    agents: [aider]
    hold: true
    match:
      any:
        - path: [/etc/shadow, /etc/gshadow]
        - path: { prefix: /root/.ssh/ }
        - path: { glob: [/srv/secrets/**, /etc/ssl/private/key.pem] }
    action: block
  - id: k2
    title: t
    kind: [connect, send]
    match: { addr: [10.0.0.0/8, "::ffff:192.168.0.0/112"], port: [22, "8000-8100"] }
    action: block
  - id: k3
    title: t
    kind: exec
    match:
      any:
        - exe: /usr/bin/nc
        - exe_sha256: ABCDEF
    action: block
  - id: k4
    title: t
    kind: open
    match: { path: { glob: "/home/*/.aws/credentials" } }
    action: block
  - id: not-a-block
    title: t
    kind: open
    action: warn
"#,
        );
        assert_eq!(plan_ids(&p), ["k1", "k2", "k3", "k4"]);
        let k1 = &p.rules[0];
        assert_eq!(k1.enforceability, Enforceability::Kernel);
        assert!(k1.hold);
        assert_eq!(k1.agents.as_deref(), Some(&["aider".to_owned()][..]));
        assert_eq!(
            k1.entries,
            vec![
                KernelEntry::ExactPath {
                    path: "/etc/shadow".into()
                },
                KernelEntry::ExactPath {
                    path: "/etc/gshadow".into()
                },
                KernelEntry::PathPrefix {
                    prefix: "/root/.ssh/".into()
                },
                KernelEntry::PathPrefix {
                    prefix: "/srv/secrets/".into()
                },
                KernelEntry::ExactPath {
                    path: "/etc/ssl/private/key.pem".into()
                },
            ]
        );
        let KernelEntry::Network { cidrs, ports } = &p.rules[1].entries[0] else {
            panic!("not a network entry")
        };
        let shown: Vec<String> = cidrs.iter().map(Cidr::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.168.0.0/16"]);
        assert_eq!(
            ports,
            &[
                PortRange {
                    first: 22,
                    last: 22
                },
                PortRange {
                    first: 8000,
                    last: 8100
                }
            ]
        );
        assert_eq!(p.rules[2].enforceability, Enforceability::Kernel);
        assert_eq!(
            p.rules[2].entries[1],
            KernelEntry::ExeSha256 {
                sha256: "abcdef".into()
            }
        );
        assert_eq!(
            p.rules[3].enforceability,
            Enforceability::KernelAfterGlobExpansion
        );
    }

    #[test]
    fn userspace_rules_say_why() {
        let p = plan(
            r#"
  - id: u1
    title: t
    kind: exec
    match: { argv: { regex: "curl .*\\|\\s*sh" } }
    action: block
  - id: u2
    title: t
    kind: open
    match: { path: { prefix: /home/ }, not: { path: { suffix: .pub } } }
    when: { outside: [ { days: [mon-fri], from: "08:00", to: "18:00" } ] }
    action: block
  - id: u3
    title: t
    kind: model_call
    quota: { limit: 10, per: 1h }
    action: block
  - id: u4
    title: t
    kind: exec
    match: { baseline: { features: [exec_basename] } }
    action: block
  - id: u5
    title: t
    kind: open
    match: { path: { prefix: /etc/ }, flags: { write: true } }
    action: block
"#,
        );
        let reasons: Vec<String> = p.rules.iter().map(|r| r.enforceability.summary()).collect();
        assert_eq!(
            reasons,
            [
                "userspace: argv regex",
                "userspace: when, not",
                "userspace: quota",
                "userspace: baseline",
                "userspace: open flags test",
            ]
        );
        assert!(p.rules.iter().all(|r| r.entries.is_empty()));
    }

    fn plan_ids(p: &KernelPlan) -> Vec<&str> {
        p.rules.iter().map(|r| r.id.as_str()).collect()
    }
}
