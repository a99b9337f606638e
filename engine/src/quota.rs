//! Quotas: token buckets per rule and key, timed by event time.
//!
//! A bucket holds `limit` tokens and refills continuously at `limit` per `per`. Levels are kept in
//! integer units of 1/`per_nanos` token, so refill is exact and replays give identical results.
//!
//! A quota counts either events (`unit: calls`: each event takes one token) or model tokens
//! (`unit: tokens`: an event takes nothing, the usage a provider reports afterwards is charged
//! with [`RuleSet::charge_usage`]). A tokens bucket may go into debt, at most one full bucket
//! (`-limit`), so one large response is paid for without locking its caller out for more than
//! one period.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use oknek_event::{Action, Event, Timestamp};
use serde::Serialize;

use crate::RuleSet;

/// Whose events share a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaBy {
    /// agent + uid + executable.
    Caller,
    /// The model provider (model_call rules only).
    Provider,
    /// caller + provider (model_call rules only).
    CallerProvider,
    /// The agent.
    Agent,
}

impl QuotaBy {
    pub const ALL: [QuotaBy; 4] = [
        QuotaBy::Caller,
        QuotaBy::Provider,
        QuotaBy::CallerProvider,
        QuotaBy::Agent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            QuotaBy::Caller => "caller",
            QuotaBy::Provider => "provider",
            QuotaBy::CallerProvider => "caller_provider",
            QuotaBy::Agent => "agent",
        }
    }

    pub fn from_name(name: &str) -> Option<QuotaBy> {
        QuotaBy::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The bucket key of an event: `agent`, `agent|uid|exe`, `provider`, …
    pub fn key(self, event: &Event) -> String {
        let agent = event.agent().unwrap_or("");
        let provider = match &event.action {
            Action::ModelCall { provider, .. } => provider.as_str(),
            _ => "",
        };
        let p = &event.process;
        match self {
            QuotaBy::Caller => format!("{agent}|{}|{}", p.uid, p.exe),
            QuotaBy::Provider => provider.to_owned(),
            QuotaBy::CallerProvider => format!("{agent}|{}|{}|{provider}", p.uid, p.exe),
            QuotaBy::Agent => agent.to_owned(),
        }
    }
}

impl fmt::Display for QuotaBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a quota counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaUnit {
    /// Events: each event that passes `match` and `when` takes one token.
    #[default]
    Calls,
    /// Model tokens (model_call rules only): the calls take nothing; the usage their responses
    /// report is charged afterwards.
    Tokens,
}

impl QuotaUnit {
    pub const ALL: [QuotaUnit; 2] = [QuotaUnit::Calls, QuotaUnit::Tokens];

    pub fn name(self) -> &'static str {
        match self {
            QuotaUnit::Calls => "calls",
            QuotaUnit::Tokens => "tokens",
        }
    }

    pub fn from_name(name: &str) -> Option<QuotaUnit> {
        QuotaUnit::ALL.into_iter().find(|u| u.name() == name)
    }
}

impl fmt::Display for QuotaUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A rule's `quota`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct QuotaSpec {
    /// Events (or tokens) allowed per period (≥ 1).
    pub limit: u64,
    /// The period, in seconds (≥ 1).
    pub per_secs: u64,
    pub by: QuotaBy,
    pub unit: QuotaUnit,
}

impl QuotaSpec {
    fn per_nanos(&self) -> i128 {
        i128::from(self.per_secs) * 1_000_000_000
    }

    fn capacity(&self) -> i128 {
        i128::from(self.limit) * self.per_nanos()
    }

    /// The state of a bucket at `level` (tokens × per_nanos).
    fn state(&self, key: String, level: i128) -> QuotaState {
        let per = self.per_nanos();
        QuotaState {
            key,
            remaining: u64::try_from(level.max(0) / per).unwrap_or(u64::MAX),
            // Whole tokens owed, rounded up: a bucket 0.5 tokens short still owes one.
            debt: u64::try_from(((-level).max(0) + per - 1) / per).unwrap_or(u64::MAX),
            limit: self.limit,
            per_secs: self.per_secs,
            by: self.by,
            unit: self.unit,
        }
    }
}

/// The quota state reported with a fired rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuotaState {
    /// The bucket key (see [`QuotaBy::key`]).
    pub key: String,
    /// Whole tokens left after this event (0 when the rule fired).
    pub remaining: u64,
    /// Whole tokens a tokens quota's bucket is overspent by (0 for calls quotas).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub debt: u64,
    pub limit: u64,
    pub per_secs: u64,
    pub by: QuotaBy,
    pub unit: QuotaUnit,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens × per_nanos; negative when a tokens quota is in debt.
    level: i128,
    /// Event time of the last refill, in nanoseconds.
    last: i64,
}

#[derive(Debug, Clone)]
struct RuleBuckets {
    spec: QuotaSpec,
    buckets: HashMap<String, Bucket>,
}

/// Outcome of one event against a quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Take {
    /// A token was taken (a tokens quota: at least one token was left): the rule does not fire.
    Passed,
    /// The bucket was empty (a tokens quota: overspent): the rule fires.
    Exhausted(QuotaState),
}

/// Every quota bucket, across rules. Survives reloads through [`QuotaLedger::retain_for`].
///
/// Memory is bounded: beyond `max_buckets`, buckets that have refilled completely are dropped
/// first (losslessly: a new bucket starts full), then the least recently used ones.
#[derive(Debug, Clone)]
pub struct QuotaLedger {
    rules: HashMap<Arc<str>, RuleBuckets>,
    buckets: usize,
    max_buckets: usize,
}

impl Default for QuotaLedger {
    fn default() -> QuotaLedger {
        QuotaLedger::new()
    }
}

impl QuotaLedger {
    /// Default bound on the number of buckets kept.
    pub const DEFAULT_MAX_BUCKETS: usize = 65_536;

    pub fn new() -> QuotaLedger {
        QuotaLedger::with_max_buckets(QuotaLedger::DEFAULT_MAX_BUCKETS)
    }

    pub fn with_max_buckets(max_buckets: usize) -> QuotaLedger {
        QuotaLedger {
            rules: HashMap::new(),
            buckets: 0,
            max_buckets: max_buckets.max(1),
        }
    }

    /// Number of buckets held.
    pub fn len(&self) -> usize {
        self.buckets
    }

    pub fn is_empty(&self) -> bool {
        self.buckets == 0
    }

    /// Keeps only the buckets of rules that `set` still has with the same quota; call it when a
    /// new rule set replaces the old one.
    pub fn retain_for(&mut self, set: &RuleSet) {
        self.rules.retain(|id, rule| {
            set.rule(id)
                .and_then(|r| r.quota())
                .is_some_and(|spec| *spec == rule.spec)
        });
        self.buckets = self.rules.values().map(|r| r.buckets.len()).sum();
    }

    /// Tokens left in a bucket at `now`, if the bucket exists (for tests and status output).
    pub fn remaining(&self, rule_id: &str, key: &str, now: Timestamp) -> Option<u64> {
        let rule = self.rules.get(rule_id)?;
        let bucket = rule.buckets.get(key)?;
        let level = refilled(bucket, &rule.spec, now.as_nanos());
        Some(rule.spec.state(String::new(), level).remaining)
    }

    /// Judges one event against a quota. A calls quota takes a token; a tokens quota takes
    /// nothing and only tells whether the bucket still holds a whole token.
    pub(crate) fn take(&mut self, rule_id: &Arc<str>, spec: &QuotaSpec, event: &Event) -> Take {
        let (key, bucket) = self.bucket(rule_id, spec, event);
        let per = spec.per_nanos();
        if bucket.level < per {
            let level = bucket.level;
            return Take::Exhausted(spec.state(key, level));
        }
        if spec.unit == QuotaUnit::Calls {
            bucket.level -= per;
        }
        Take::Passed
    }

    /// Charges `tokens` to the bucket of a tokens quota; the bucket may go into debt, down to
    /// `-limit`. Returns the state after the charge.
    pub(crate) fn charge(
        &mut self,
        rule_id: &Arc<str>,
        spec: &QuotaSpec,
        event: &Event,
        tokens: u64,
    ) -> QuotaState {
        let (key, bucket) = self.bucket(rule_id, spec, event);
        let cost = i128::from(tokens).saturating_mul(spec.per_nanos());
        bucket.level = bucket.level.saturating_sub(cost).max(-spec.capacity());
        let level = bucket.level;
        spec.state(key, level)
    }

    /// The event's bucket of a rule, created full and refilled to the event's time.
    fn bucket(
        &mut self,
        rule_id: &Arc<str>,
        spec: &QuotaSpec,
        event: &Event,
    ) -> (String, &mut Bucket) {
        let now = event.time.as_nanos();
        let key = spec.by.key(event);
        let exists = self
            .rules
            .get(rule_id)
            .is_some_and(|r| r.spec == *spec && r.buckets.contains_key(&key));
        if !exists && self.buckets >= self.max_buckets {
            self.evict(now);
        }
        let rule = self
            .rules
            .entry(Arc::clone(rule_id))
            .or_insert_with(|| RuleBuckets {
                spec: *spec,
                buckets: HashMap::new(),
            });
        if rule.spec != *spec {
            // Same id, different quota: a different rule as far as the ledger is concerned.
            self.buckets -= rule.buckets.len();
            rule.buckets.clear();
            rule.spec = *spec;
        }
        let bucket = rule.buckets.entry(key.clone()).or_insert_with(|| {
            self.buckets += 1;
            Bucket {
                level: spec.capacity(),
                last: now,
            }
        });
        bucket.level = refilled(bucket, spec, now);
        bucket.last = bucket.last.max(now);
        (key, bucket)
    }

    fn evict(&mut self, now: i64) {
        for rule in self.rules.values_mut() {
            let spec = rule.spec;
            rule.buckets
                .retain(|_, b| refilled(b, &spec, now) < spec.capacity());
        }
        self.rules.retain(|_, r| !r.buckets.is_empty());
        self.buckets = self.rules.values().map(|r| r.buckets.len()).sum();
        // Keep headroom so that eviction is not repeated on every new key.
        let target = self.max_buckets - self.max_buckets / 8 - 1;
        if self.buckets <= target {
            return;
        }
        let mut by_age: Vec<(i64, Arc<str>, String)> = self
            .rules
            .iter()
            .flat_map(|(id, r)| {
                r.buckets
                    .iter()
                    .map(|(k, b)| (b.last, Arc::clone(id), k.clone()))
            })
            .collect();
        by_age.sort_unstable_by_key(|(last, _, _)| *last);
        let excess = self.buckets - target;
        for (_, id, key) in by_age.into_iter().take(excess) {
            if let Some(rule) = self.rules.get_mut(&id) {
                rule.buckets.remove(&key);
            }
        }
        self.rules.retain(|_, r| !r.buckets.is_empty());
        self.buckets = self.rules.values().map(|r| r.buckets.len()).sum();
    }
}

fn refilled(bucket: &Bucket, spec: &QuotaSpec, now: i64) -> i128 {
    let elapsed = i128::from(now.saturating_sub(bucket.last)).max(0);
    let refill = elapsed.saturating_mul(i128::from(spec.limit));
    bucket.level.saturating_add(refill).min(spec.capacity())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at: &str, uid: u32) -> Event {
        Event::from_json(&format!(
            r#"{{"time":"{at}","source":"recorded","process":{{"pid":1,"uid":{uid},"exe":"/usr/bin/curl","agent":"a"}},
               "kind":"model_call","provider":"openai"}}"#
        ))
        .unwrap()
    }

    const SPEC: QuotaSpec = QuotaSpec {
        limit: 3,
        per_secs: 3600,
        by: QuotaBy::Caller,
        unit: QuotaUnit::Calls,
    };

    #[test]
    fn limit_plus_one_fires_then_refills() {
        let mut ledger = QuotaLedger::new();
        let id: Arc<str> = "q".into();
        let e = event("2026-11-22T10:00:00Z", 1000);
        for _ in 0..3 {
            assert_eq!(ledger.take(&id, &SPEC, &e), Take::Passed);
        }
        let Take::Exhausted(state) = ledger.take(&id, &SPEC, &e) else {
            panic!("fourth event passed")
        };
        assert_eq!(state.key, "a|1000|/usr/bin/curl");
        assert_eq!((state.remaining, state.limit), (0, 3));
        // Another caller has its own bucket.
        assert_eq!(
            ledger.take(&id, &SPEC, &event("2026-11-22T10:00:00Z", 0)),
            Take::Passed
        );
        // One token comes back every 20 minutes.
        let later = event("2026-11-22T10:20:00Z", 1000);
        assert_eq!(ledger.take(&id, &SPEC, &later), Take::Passed);
        assert!(matches!(
            ledger.take(&id, &SPEC, &later),
            Take::Exhausted(_)
        ));
        // Time going backwards refills nothing.
        let earlier = event("2026-11-22T09:00:00Z", 1000);
        assert!(matches!(
            ledger.take(&id, &SPEC, &earlier),
            Take::Exhausted(_)
        ));
    }

    #[test]
    fn memory_is_bounded() {
        let mut ledger = QuotaLedger::with_max_buckets(64);
        let id: Arc<str> = "q".into();
        for uid in 0..1000 {
            ledger.take(&id, &SPEC, &event("2026-11-22T10:00:00Z", uid));
            assert!(ledger.len() <= 64);
        }
        // Recently used buckets survive eviction.
        assert_eq!(
            ledger.remaining(
                "q",
                "a|999|/usr/bin/curl",
                "2026-11-22T10:00:00Z".parse().unwrap()
            ),
            Some(2)
        );
    }
}
