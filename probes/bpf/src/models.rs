//! Model providers in the kernel: which destinations are model calls, which callers may make
//! them, and the quota buckets that meter them.
//!
//! A bucket is two map entries under one [`QuotaKey`]: `quota_used` counts calls (only the
//! kernel writes it, atomically) and `quota_credit` is what may be spent (the kernel creates it
//! full; afterwards only [`refill`] writes it). A call passes while
//! `(used + 1) × QUOTA_UNIT ≤ credit`. Refilling adds `limit × UNIT` per period, capped at
//! `(used + limit) × UNIT` so a bucket never holds more than `limit` calls; since neither side
//! overwrites the other's counter, a refill racing a call can only cost that call its token
//! later, never grant an extra one.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::RuleRefusal;
use crate::layout::{
    BlockSlot, ModelPolicy, PROVIDER_GATEWAY_ONLY, ProviderKey, ProviderValue, QUOTA_SLOTS,
    QUOTA_UNIT, QuotaKey, QuotaSlot, SLOT_HOLD, SLOT_USED, SLOTS,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// One address:port of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderEntry {
    pub addr: IpAddr,
    pub port: u16,
    /// Index into the policy array (below [`crate::layout::MAX_PROVIDERS`]).
    pub provider_id: u32,
    /// Agents' connects are refused: the provider is reached through the gateway only.
    pub gateway_only: bool,
}

/// Whose calls share a bucket (same meaning as the rule language's `quota.by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaBy {
    Caller,
    Provider,
    CallerProvider,
    Agent,
}

/// A model-call rule the kernel applies at connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRule {
    pub rule_index: u32,
    /// Bit n = agent id n; 0 = every agent.
    pub agents: u64,
    pub hold: bool,
    /// Provider ids the rule applies to.
    pub providers: Vec<u32>,
    /// `None`: every call to these providers is refused. `Some`: calls are metered.
    pub quota: Option<(u64, QuotaBy)>,
}

/// Provider map key of an address.
pub fn provider_key(addr: IpAddr, port: u16) -> ProviderKey {
    let mut key = ProviderKey {
        port,
        ..ProviderKey::default()
    };
    match addr {
        IpAddr::V4(v4) => {
            key.family = AF_INET;
            key.addr[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            // The kernel looks IPv4-mapped destinations up as IPv4.
            Some(v4) => {
                key.family = AF_INET;
                key.addr[..4].copy_from_slice(&v4.octets());
            }
            None => {
                key.family = AF_INET6;
                key.addr = v6.octets();
            }
        },
    }
    key
}

/// The provider map's intended contents.
pub fn provider_map(entries: &[ProviderEntry]) -> BTreeMap<ProviderKey, ProviderValue> {
    entries
        .iter()
        .map(|e| {
            (
                provider_key(e.addr, e.port),
                ProviderValue {
                    id: e.provider_id,
                    flags: if e.gateway_only {
                        PROVIDER_GATEWAY_ONLY
                    } else {
                        0
                    },
                },
            )
        })
        .collect()
}

/// Per provider id, its policy; rules that do not fit (more than [`SLOTS`] refusing or
/// [`QUOTA_SLOTS`] metering rules for one provider) are refused with a reason.
pub fn compile(rules: &[ModelRule]) -> (BTreeMap<u32, ModelPolicy>, Vec<RuleRefusal>) {
    let mut policies: BTreeMap<u32, ModelPolicy> = BTreeMap::new();
    let mut refusals = Vec::new();
    for rule in rules {
        let flags = SLOT_USED | if rule.hold { SLOT_HOLD } else { 0 };
        for &provider in &rule.providers {
            let policy = policies.entry(provider).or_default();
            let placed = match rule.quota {
                None => policy
                    .refuse
                    .iter_mut()
                    .find(|s| s.flags & SLOT_USED == 0)
                    .map(|slot| {
                        *slot = BlockSlot {
                            agents: rule.agents,
                            rule_index: rule.rule_index,
                            flags,
                            ..BlockSlot::default()
                        }
                    })
                    .is_some(),
                Some((limit, by)) => policy
                    .quotas
                    .iter_mut()
                    .find(|s| s.flags & SLOT_USED == 0)
                    .map(|slot| {
                        *slot = QuotaSlot {
                            agents: rule.agents,
                            capacity: limit.saturating_mul(QUOTA_UNIT),
                            rule_index: rule.rule_index,
                            flags,
                            by: match by {
                                QuotaBy::Caller => crate::layout::QUOTA_BY_CALLER,
                                QuotaBy::Provider => crate::layout::QUOTA_BY_PROVIDER,
                                QuotaBy::CallerProvider => crate::layout::QUOTA_BY_CALLER_PROVIDER,
                                QuotaBy::Agent => crate::layout::QUOTA_BY_AGENT,
                            },
                            _pad: 0,
                        }
                    })
                    .is_some(),
            };
            if !placed {
                refusals.push(RuleRefusal {
                    rule_index: rule.rule_index,
                    reason: format!(
                        "provider #{provider}: more than {} model-call rules of this type",
                        if rule.quota.is_some() {
                            QUOTA_SLOTS
                        } else {
                            SLOTS
                        }
                    ),
                });
            }
        }
    }
    (policies, refusals)
}

/// A bucket's new credit after `elapsed` at `limit` calls per `per`.
pub fn refill(used: u64, credit: u64, limit: u64, per: Duration, elapsed: Duration) -> u64 {
    let per_nanos = per.as_nanos().max(1);
    let add = u128::from(limit) * u128::from(QUOTA_UNIT) * elapsed.as_nanos() / per_nanos;
    let cap = u128::from(used.saturating_add(limit)) * u128::from(QUOTA_UNIT);
    (u128::from(credit) + add)
        .min(cap)
        .min(u128::from(u64::MAX)) as u64
}

/// A bucket as userspace sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub key: QuotaKey,
    pub used: u64,
    pub credit: u64,
}

impl Bucket {
    /// Whole calls left.
    pub fn remaining(&self) -> u64 {
        (self.credit / QUOTA_UNIT).saturating_sub(self.used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn mapped_addresses_share_the_ipv4_key() {
        let v4 = provider_key(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 443);
        let mapped = provider_key(
            IpAddr::V6(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped()),
            443,
        );
        assert_eq!(v4, mapped);
        assert_eq!(
            provider_key(IpAddr::V6(Ipv6Addr::LOCALHOST), 443).family,
            AF_INET6
        );
    }

    #[test]
    fn refill_is_capped_at_the_limit_above_what_was_used() {
        let per = Duration::from_secs(60);
        // 3 per minute, all spent: 20 s give one call back.
        let credit = refill(3, 3 * QUOTA_UNIT, 3, per, Duration::from_secs(20));
        assert_eq!(credit, 4 * QUOTA_UNIT);
        // Idle for an hour: full, not more.
        assert_eq!(
            refill(3, 4 * QUOTA_UNIT, 3, per, Duration::from_secs(3600)),
            6 * QUOTA_UNIT
        );
        let bucket = Bucket {
            key: QuotaKey::default(),
            used: 3,
            credit: 6 * QUOTA_UNIT,
        };
        assert_eq!(bucket.remaining(), 3);
    }

    #[test]
    fn rules_fill_slots_per_provider_and_overflow_is_reported() {
        let mut rules: Vec<ModelRule> = (0..5)
            .map(|i| ModelRule {
                rule_index: i,
                agents: 0,
                hold: false,
                providers: vec![7],
                quota: None,
            })
            .collect();
        rules.push(ModelRule {
            rule_index: 9,
            agents: 0b10,
            hold: true,
            providers: vec![7, 8],
            quota: Some((3, QuotaBy::Caller)),
        });
        let (policies, refusals) = compile(&rules);
        assert_eq!(refusals.len(), 1);
        assert_eq!(refusals[0].rule_index, 4);
        let p7 = &policies[&7];
        assert_eq!(p7.refuse[3].rule_index, 3);
        assert_eq!(p7.quotas[0].capacity, 3 * QUOTA_UNIT);
        assert_eq!(p7.quotas[0].flags, SLOT_USED | SLOT_HOLD);
        assert_eq!(policies[&8].quotas[0].rule_index, 9);
        assert_eq!(policies[&8].refuse[0].flags, 0);
    }
}
