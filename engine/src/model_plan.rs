//! The model-call rules the kernel can apply when an agent connects to a provider.
//!
//! At `connect()` the kernel knows the caller (agent, uid, executable) and which provider the
//! destination belongs to, not the model. A `model_call` block rule is decided there when its
//! match depends on nothing but the provider and its API style, and it has no time window: the
//! match is evaluated here once per provider, and the kernel gets, per provider, the rules that
//! refuse every call and the quotas that meter them (token buckets in a kernel map).

use oknek_event::{Action, Event, Field, Kind, NoBaseline, Process, Timestamp, Verdict};
use serde::Serialize;

use crate::kernel::Enforceability;
use crate::predicate::{EventView, Pred};
use crate::quota::{QuotaSpec, QuotaUnit};
use crate::ruleset::{Rule, RuleSet};

/// A provider as the plan needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRef<'a> {
    pub name: &'a str,
    pub api: &'a str,
}

/// One `model_call` block rule at connect time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelConnectRule {
    pub id: String,
    /// The agents the rule is limited to; `None` for every agent.
    pub agents: Option<Vec<String>>,
    pub hold: bool,
    /// The providers whose calls the rule applies to: refused outright, or metered when the
    /// rule has a quota.
    pub providers: Vec<String>,
    pub quota: Option<QuotaSpec>,
    pub enforceability: Enforceability,
}

impl RuleSet {
    /// The `model_call` block rules and what the kernel can do with each at connect time.
    pub fn model_connect_plan(&self, providers: &[ProviderRef<'_>]) -> Vec<ModelConnectRule> {
        self.rules()
            .iter()
            .filter(|r| r.action() == Verdict::Block && r.kinds().contains(&Kind::ModelCall))
            .map(|r| model_connect_rule(r, providers))
            .collect()
    }
}

fn model_connect_rule(rule: &Rule, providers: &[ProviderRef<'_>]) -> ModelConnectRule {
    let mut reasons = Vec::new();
    if rule.when.is_some() {
        reasons.push("when (time windows are judged in userspace)".to_owned());
    }
    if rule.quota.is_some_and(|q| q.unit == QuotaUnit::Tokens) {
        // The kernel meters calls at connect; tokens are charged from responses, later.
        reasons.push("quota in tokens (charged from the responses' usage)".to_owned());
    }
    if let Some(pred) = &rule.pred {
        connect_time_fields(pred, &mut reasons);
    }
    reasons.dedup();
    let matching = if reasons.is_empty() {
        providers
            .iter()
            .filter(|p| rule.pred.as_ref().is_none_or(|pred| matches(pred, p)))
            .map(|p| p.name.to_owned())
            .collect()
    } else {
        Vec::new()
    };
    ModelConnectRule {
        id: rule.id().to_owned(),
        agents: rule.agents().map(<[String]>::to_vec),
        hold: rule.hold(),
        providers: matching,
        quota: rule.quota().copied(),
        enforceability: if reasons.is_empty() {
            Enforceability::Kernel
        } else {
            Enforceability::Userspace { reasons }
        },
    }
}

/// Collects why `pred` needs more than the provider and its API style.
fn connect_time_fields(pred: &Pred, reasons: &mut Vec<String>) {
    match pred {
        Pred::All(preds) | Pred::Any(preds) => {
            for p in preds.iter() {
                connect_time_fields(p, reasons);
            }
        }
        Pred::Not(p) => connect_time_fields(p, reasons),
        Pred::Baseline(_) => reasons.push("baseline".to_owned()),
        _ => {
            for field in Field::all_names().filter_map(|n| Field::from_name(n).ok()) {
                if pred.uses_field(field) && !matches!(field, Field::Provider | Field::Api) {
                    reasons.push(format!("{} is not known at connect", field.name()));
                }
            }
        }
    }
}

/// Whether `pred` holds for a call to `provider` whose model is not known.
fn matches(pred: &Pred, provider: &ProviderRef<'_>) -> bool {
    let event = Event {
        time: Timestamp::from_secs(0),
        source: oknek_event::Mechanism::Recorded,
        process: Process {
            agent: Some(String::new()),
            ..Default::default()
        },
        action: Action::ModelCall {
            provider: provider.name.to_owned(),
            model: None,
            api: Some(provider.api.to_owned()),
            dest: None,
            weights: None,
        },
    };
    pred.eval(&mut EventView::new(&event), &NoBaseline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(yaml: &str) -> Vec<ModelConnectRule> {
        let set = RuleSet::from_sources(&[("t.yaml", yaml)]).unwrap();
        set.model_connect_plan(&[
            ProviderRef {
                name: "openai",
                api: "openai",
            },
            ProviderRef {
                name: "ollama",
                api: "ollama",
            },
            ProviderRef {
                name: "mystery",
                api: "openai",
            },
        ])
    }

    #[test]
    fn provider_allowlists_and_quotas_go_to_the_kernel() {
        let rules = plan(
            "oknek_rules: 1\nrules:\n\
             - {id: P, title: t, kind: model_call, action: block,\n\
                match: {not: {provider: {exact: [openai, ollama]}}}}\n\
             - {id: Q, title: t, kind: model_call, action: block, agents: [a],\n\
                quota: {limit: 3, per: 1m, by: caller}}\n\
             - {id: M, title: t, kind: model_call, action: block,\n\
                match: {model: {present: true}, not: {model: {glob: [gpt-*]}}}}\n\
             - {id: H, title: t, kind: model_call, action: block,\n\
                when: {zone: 'Z', outside: [{days: [mon-fri], from: '07:00', to: '20:00'}]}}\n\
             - {id: W, title: t, kind: model_call, action: warn}\n",
        );
        let ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["P", "Q", "M", "H"], "warn rules are not planned");
        assert_eq!(rules[0].providers, ["mystery"]);
        assert_eq!(rules[0].enforceability, Enforceability::Kernel);
        assert_eq!(rules[1].providers, ["openai", "ollama", "mystery"]);
        assert_eq!(rules[1].quota.map(|q| q.limit), Some(3));
        assert_eq!(rules[1].agents.as_deref(), Some(&["a".to_owned()][..]));
        assert!(rules[2].providers.is_empty());
        assert!(
            matches!(&rules[2].enforceability, Enforceability::Userspace { reasons }
                if reasons.iter().any(|r| r.contains("model is not known at connect"))),
            "{:?}",
            rules[2].enforceability
        );
        assert!(matches!(
            &rules[3].enforceability,
            Enforceability::Userspace { .. }
        ));
    }
}
