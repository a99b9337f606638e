//! Compiled match predicates and their evaluation.
//!
//! The compiler (`compile.rs`) turns a rule's `match` mapping into a [`Pred`] tree once; evaluating
//! it reads event fields through [`Event::field`] and allocates nothing, except the joined argv
//! for argv regexes and baseline feature values, each computed at most once per event.

use std::collections::HashSet;
use std::net::IpAddr;

use oknek_event::{BaselineView, Event, Feature, Field, FieldValue};
use regex::Regex;

use crate::glob::Glob;
use crate::index::FxBuild;

#[derive(Debug, Clone)]
pub(crate) enum Pred {
    All(Box<[Pred]>),
    Any(Box<[Pred]>),
    Not(Box<Pred>),
    /// `present: bool` on any field.
    Present {
        field: Field,
        present: bool,
    },
    /// All checks hold on the string value of `field`.
    Str {
        field: Field,
        check: StrCheck,
    },
    Argv(ArgvCheck),
    /// The number is in one of the inclusive ranges.
    Num {
        field: Field,
        ranges: Box<[(u64, u64)]>,
    },
    Addr(AddrSet),
    /// open flags: the open can (or cannot) change the file.
    Write(bool),
    /// open flags or inotify mask against named bits.
    Bits {
        field: Field,
        test: BitTest,
        bits: Box<[u32]>,
    },
    Baseline(BaselineTest),
}

#[derive(Debug, Clone)]
pub(crate) enum StrCheck {
    Exact(StrSet),
    Prefix(Box<[Box<str>]>),
    Suffix(Box<[Box<str>]>),
    Contains(Box<[Box<str>]>),
    Basename(StrSet),
    Glob(Box<[Glob]>),
    Regex(Box<[Regex]>),
}

#[derive(Debug, Clone)]
pub(crate) enum ArgvCheck {
    /// Some element equals one of the values.
    Contains(StrSet),
    /// Every value equals some element.
    ContainsAll(Box<[Box<str>]>),
    /// Some element passes every check.
    Element(Box<[StrCheck]>),
    /// The elements joined by single spaces contain a match.
    Regex(Box<[Regex]>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BitTest {
    /// `any_of`: at least one of the bits is set.
    Any,
    /// `all_of`
    All,
    /// `none_of`
    None,
}

/// A set of strings: a slice while small (a few comparisons beat hashing), a hash set beyond.
#[derive(Debug, Clone)]
pub(crate) enum StrSet {
    Few(Box<[Box<str>]>),
    Many(HashSet<Box<str>, FxBuild>),
}

const FEW: usize = 8;

impl StrSet {
    pub fn new(values: Vec<Box<str>>) -> StrSet {
        if values.len() <= FEW {
            StrSet::Few(values.into())
        } else {
            StrSet::Many(values.into_iter().collect())
        }
    }

    pub fn contains(&self, s: &str) -> bool {
        match self {
            StrSet::Few(values) => values.iter().any(|v| **v == *s),
            StrSet::Many(values) => values.contains(s),
        }
    }

    /// The values, in the order given for small sets and sorted for large ones.
    pub fn values(&self) -> Vec<&str> {
        match self {
            StrSet::Few(values) => values.iter().map(|v| &**v).collect(),
            StrSet::Many(values) => {
                let mut v: Vec<&str> = values.iter().map(|v| &**v).collect();
                v.sort_unstable();
                v
            }
        }
    }
}

/// Networks as (address, mask) pairs; IPv4-mapped IPv6 networks are stored as IPv4.
#[derive(Debug, Clone, Default)]
pub(crate) struct AddrSet {
    pub v4: Box<[(u32, u32)]>,
    pub v6: Box<[(u128, u128)]>,
}

impl AddrSet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match normalize(ip) {
            IpAddr::V4(v4) => {
                let a = u32::from(v4);
                self.v4.iter().any(|&(net, mask)| a & mask == net)
            }
            IpAddr::V6(v6) => {
                let a = u128::from(v6);
                self.v6.iter().any(|&(net, mask)| a & mask == net)
            }
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are IPv4 addresses for matching.
pub(crate) fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[derive(Debug, Clone)]
pub(crate) struct BaselineTest {
    pub features: Box<[Feature]>,
    pub seen_fewer_than: u64,
    pub warmup_nanos: i64,
}

/// An event under evaluation, with what is derived from it computed at most once.
pub(crate) struct EventView<'e> {
    pub event: &'e Event,
    argv_joined: Option<String>,
}

impl<'e> EventView<'e> {
    pub fn new(event: &'e Event) -> EventView<'e> {
        EventView {
            event,
            argv_joined: None,
        }
    }

    fn argv_joined(&mut self) -> &str {
        let event = self.event;
        self.argv_joined
            .get_or_insert_with(|| match event.field(Field::Argv) {
                Some(FieldValue::List(items)) => items.join(" "),
                _ => String::new(),
            })
    }
}

impl Pred {
    /// True when the predicate reads `field` anywhere.
    pub fn uses_field(&self, wanted: Field) -> bool {
        match self {
            Pred::All(ps) | Pred::Any(ps) => ps.iter().any(|p| p.uses_field(wanted)),
            Pred::Not(p) => p.uses_field(wanted),
            Pred::Present { field, .. }
            | Pred::Str { field, .. }
            | Pred::Num { field, .. }
            | Pred::Bits { field, .. } => *field == wanted,
            Pred::Argv(_) => wanted == Field::Argv,
            Pred::Addr(_) => wanted == Field::Addr,
            Pred::Write(_) => wanted == Field::Flags,
            Pred::Baseline(_) => false,
        }
    }

    pub fn eval(&self, view: &mut EventView<'_>, baseline: &dyn BaselineView) -> bool {
        match self {
            Pred::All(preds) => preds.iter().all(|p| p.eval(view, baseline)),
            Pred::Any(preds) => preds.iter().any(|p| p.eval(view, baseline)),
            Pred::Not(pred) => !pred.eval(view, baseline),
            Pred::Present { field, present } => view.event.field(*field).is_some() == *present,
            Pred::Str { field, check } => match view.event.field(*field) {
                Some(FieldValue::Str(s)) => check.holds(s),
                _ => false,
            },
            Pred::Argv(check) => check.holds(view),
            Pred::Num { field, ranges } => match view.event.field(*field) {
                Some(FieldValue::Uint(n)) => ranges.iter().any(|&(lo, hi)| lo <= n && n <= hi),
                _ => false,
            },
            Pred::Addr(set) => match view.event.field(Field::Addr) {
                Some(FieldValue::Ip(ip)) => set.contains(ip),
                _ => false,
            },
            Pred::Write(want) => match view.event.field(Field::Flags) {
                Some(FieldValue::Uint(flags)) => {
                    oknek_event::open_flags::is_write_intent(flags as u32) == *want
                }
                _ => false,
            },
            Pred::Bits { field, test, bits } => match view.event.field(*field) {
                Some(FieldValue::Uint(value)) => {
                    let set = |b: &u32| value as u32 & *b == *b;
                    match test {
                        BitTest::Any => bits.iter().any(set),
                        BitTest::All => bits.iter().all(set),
                        BitTest::None => !bits.iter().any(set),
                    }
                }
                _ => false,
            },
            Pred::Baseline(test) => test.holds(view.event, baseline),
        }
    }

    /// Every regex in the predicate, for reuse by the next load.
    pub fn regexes<'a>(&'a self, out: &mut Vec<&'a Regex>) {
        let from_checks = |checks: &'a [StrCheck], out: &mut Vec<&'a Regex>| {
            for check in checks {
                if let StrCheck::Regex(r) = check {
                    out.extend(r.iter());
                }
            }
        };
        match self {
            Pred::All(ps) | Pred::Any(ps) => ps.iter().for_each(|p| p.regexes(out)),
            Pred::Not(p) => p.regexes(out),
            Pred::Str { check, .. } => from_checks(std::slice::from_ref(check), out),
            Pred::Argv(ArgvCheck::Regex(r)) => out.extend(r.iter()),
            Pred::Argv(ArgvCheck::Element(checks)) => from_checks(checks, out),
            _ => {}
        }
    }

    /// A rough evaluation cost, to test cheap conjuncts first.
    pub fn cost(&self) -> u32 {
        match self {
            Pred::Present { .. } | Pred::Num { .. } | Pred::Write(_) | Pred::Bits { .. } => 1,
            Pred::Addr(set) => 1 + (set.v4.len() + set.v6.len()) as u32 / 8,
            Pred::Str { check, .. } => check.cost(),
            Pred::Argv(ArgvCheck::Contains(_) | ArgvCheck::ContainsAll(_)) => 8,
            Pred::Argv(ArgvCheck::Element(checks)) => {
                8 * checks.iter().map(StrCheck::cost).sum::<u32>()
            }
            Pred::Argv(ArgvCheck::Regex(_)) => 60,
            Pred::All(ps) | Pred::Any(ps) => ps.iter().map(Pred::cost).sum(),
            Pred::Not(p) => p.cost(),
            Pred::Baseline(_) => 200,
        }
    }
}

impl StrCheck {
    pub fn holds(&self, s: &str) -> bool {
        match self {
            StrCheck::Exact(set) => set.contains(s),
            StrCheck::Prefix(values) => values.iter().any(|v| s.starts_with(&**v)),
            StrCheck::Suffix(values) => values.iter().any(|v| s.ends_with(&**v)),
            StrCheck::Contains(values) => values.iter().any(|v| s.contains(&**v)),
            StrCheck::Basename(set) => set.contains(s.rsplit('/').next().unwrap_or(s)),
            StrCheck::Glob(globs) => globs.iter().any(|g| g.matches(s)),
            StrCheck::Regex(regexes) => regexes.iter().any(|r| r.is_match(s)),
        }
    }

    fn cost(&self) -> u32 {
        match self {
            StrCheck::Exact(_) | StrCheck::Basename(_) => 2,
            StrCheck::Prefix(v) | StrCheck::Suffix(v) => 2 + v.len() as u32 / 4,
            StrCheck::Contains(v) => 4 + v.len() as u32,
            StrCheck::Glob(v) => 4 + v.len() as u32,
            StrCheck::Regex(v) => 20 * v.len() as u32,
        }
    }
}

impl ArgvCheck {
    fn holds(&self, view: &mut EventView<'_>) -> bool {
        let argv = match view.event.field(Field::Argv) {
            Some(FieldValue::List(items)) => items,
            _ => return false,
        };
        match self {
            ArgvCheck::Contains(set) => argv.iter().any(|a| set.contains(a)),
            ArgvCheck::ContainsAll(values) => {
                values.iter().all(|v| argv.iter().any(|a| **a == **v))
            }
            ArgvCheck::Element(checks) => argv.iter().any(|a| checks.iter().all(|c| c.holds(a))),
            ArgvCheck::Regex(regexes) => {
                let joined = view.argv_joined();
                regexes.iter().any(|r| r.is_match(joined))
            }
        }
    }
}

impl BaselineTest {
    fn holds(&self, event: &Event, baseline: &dyn BaselineView) -> bool {
        let Some(agent) = event.agent() else {
            return false;
        };
        let history = baseline.history_since(agent).map_or(0, |since| {
            event.time.as_nanos().saturating_sub(since.as_nanos())
        });
        if history < self.warmup_nanos {
            return false;
        }
        self.features.iter().any(|&feature| {
            event.feature_value(feature).is_some_and(|value| {
                baseline.seen_count(agent, feature, &value) < self.seen_fewer_than
            })
        })
    }
}
