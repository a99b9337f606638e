//! A loaded rule set and how it judges events.

use std::path::Path;
use std::sync::Arc;

use oknek_event::{BaselineView, Event, Field, Kind, Verdict};
use serde::Serialize;

use crate::LoadErrors;
use crate::compile::{self, Source};
use crate::index::KindIndex;
use crate::predicate::{EventView, Pred};
use crate::quota::{QuotaLedger, QuotaSpec, QuotaState, QuotaUnit, Take};
use crate::when::When;

/// How serious a rule's finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn from_name(name: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a rule is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSource {
    /// The file, as named when the set was loaded.
    pub file: Arc<str>,
    /// Position of the rule in the file's `rules` list, from 0.
    pub index: usize,
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub(crate) id: Arc<str>,
    pub(crate) title: Arc<str>,
    pub(crate) description: Option<String>,
    pub(crate) kinds: Vec<Kind>,
    pub(crate) agents: Option<Vec<String>>,
    /// Bit i set: the rule applies to agent i of the set's agent table.
    pub(crate) agent_bits: Vec<u64>,
    pub(crate) pred: Option<Pred>,
    pub(crate) action: Verdict,
    pub(crate) hold: bool,
    pub(crate) severity: Severity,
    pub(crate) tags: Arc<[String]>,
    pub(crate) capture: Option<Arc<[Field]>>,
    pub(crate) when: Option<When>,
    pub(crate) quota: Option<QuotaSpec>,
    pub(crate) source: RuleSource,
}

impl Rule {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn title(&self) -> &str {
        &self.title
    }

    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The kinds of event the rule judges, in [`Kind`] order.
    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }

    /// The agents the rule is limited to; `None` for every agent.
    pub fn agents(&self) -> Option<&[String]> {
        self.agents.as_deref()
    }

    pub fn action(&self) -> Verdict {
        self.action
    }

    pub fn hold(&self) -> bool {
        self.hold
    }

    pub fn severity(&self) -> Severity {
        self.severity
    }

    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    pub fn quota(&self) -> Option<&QuotaSpec> {
        self.quota.as_ref()
    }

    /// Whether the rule has a `when` time window.
    pub fn has_when(&self) -> bool {
        self.when.is_some()
    }

    pub fn source(&self) -> &RuleSource {
        &self.source
    }

    /// The fields kept in evidence for an event of `kind`: `evidence.capture`, or by default the
    /// action fields of the kind.
    pub fn capture_for(&self, kind: Kind) -> Arc<[Field]> {
        match &self.capture {
            Some(fields) => Arc::clone(fields),
            None => default_capture(kind),
        }
    }
}

/// The action fields of a kind: what evidence keeps when a rule names no `evidence.capture`.
pub fn default_capture(kind: Kind) -> Arc<[Field]> {
    use std::sync::OnceLock;
    static DEFAULTS: OnceLock<[Arc<[Field]>; 6]> = OnceLock::new();
    let defaults = DEFAULTS.get_or_init(|| {
        Kind::ALL.map(|k| {
            ALL_FIELDS
                .iter()
                .copied()
                .filter(|f| !f.is_process() && f.applies_to(k))
                .collect()
        })
    });
    Arc::clone(&defaults[kind.index()])
}

/// Every field, in vocabulary order.
pub(crate) const ALL_FIELDS: [Field; 28] = {
    use Field::*;
    [
        Pid, Ppid, Tgid, Uid, Gid, Exe, ExeSha256, Comm, ParentExe, ParentComm, CgroupId, Cgroup,
        Unit, Agent, Path, Argv, Flags, Mode, Family, Addr, Port, UnixPath, Bytes, Mask, Provider,
        Model, Api, Weights,
    ]
};

fn as_sources<N: AsRef<str>, T: AsRef<[u8]>>(sources: &[(N, T)]) -> Vec<Source<'_>> {
    sources
        .iter()
        .map(|(name, text)| Source {
            name: name.as_ref().to_owned(),
            bytes: text.as_ref(),
        })
        .collect()
}

/// What a rule firing on an event reports; one evidence bundle each.
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    /// Index of the rule in [`RuleSet::rules`].
    pub index: usize,
    pub rule_id: Arc<str>,
    pub title: Arc<str>,
    pub action: Verdict,
    pub hold: bool,
    pub severity: Severity,
    pub tags: Arc<[String]>,
    /// The event fields the evidence bundle keeps.
    pub capture: Arc<[Field]>,
    /// Set when the rule has a quota: the bucket that was found empty.
    pub quota: Option<QuotaState>,
}

/// One tokens quota charged with a model call's usage (see [`RuleSet::charge_usage`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageCharge {
    #[serde(rename = "rule")]
    pub rule_id: String,
    /// The bucket after the charge.
    pub quota: QuotaState,
}

/// The outcome of one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    /// Index into `fired` of the deciding rule: the first fired rule with the verdict's action.
    /// `None` when no rule fired (the verdict is then allow).
    pub deciding: Option<usize>,
    /// Every fired rule, in set order.
    pub fired: Vec<Fired>,
}

impl Decision {
    fn allow() -> Decision {
        Decision {
            verdict: Verdict::Allow,
            deciding: None,
            fired: Vec::new(),
        }
    }

    /// The rule that decided the verdict, if any fired.
    pub fn deciding_rule(&self) -> Option<&Fired> {
        self.deciding.and_then(|i| self.fired.get(i))
    }

    /// True when the agent must also be stopped until an operator decides.
    pub fn hold(&self) -> bool {
        self.verdict == Verdict::Block && self.deciding_rule().is_some_and(|f| f.hold)
    }
}

/// Quota outcomes decided outside the ledger, by rule id (see [`EvalContext::decided_quotas`]).
pub type DecidedQuotas<'a> = &'a dyn Fn(&str) -> Option<Option<QuotaState>>;

/// What evaluation needs beyond the event: quota state (mutated) and the agents' baselines.
pub struct EvalContext<'a> {
    pub quotas: &'a mut QuotaLedger,
    pub baseline: &'a dyn BaselineView,
    /// Quotas another enforcer already applied to this event (the kernel's token buckets): for
    /// a rule id, `Some(None)` when the call passed, `Some(Some(state))` when the bucket was
    /// empty. Rules it answers `None` for use the ledger.
    pub decided_quotas: Option<DecidedQuotas<'a>>,
}

impl<'a> EvalContext<'a> {
    pub fn new(quotas: &'a mut QuotaLedger, baseline: &'a dyn BaselineView) -> EvalContext<'a> {
        EvalContext {
            quotas,
            baseline,
            decided_quotas: None,
        }
    }
}

/// A loaded, compiled rule set. Immutable; replace it whole to reload.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub(crate) rules: Vec<Rule>,
    /// Per kind, its rules in set order and the index that finds the candidates among them.
    pub(crate) by_kind: [KindIndex; 6],
    /// Every agent name some rule is scoped to; a rule's `agent_bits` index this table.
    pub(crate) agent_table: Vec<String>,
    pub(crate) files: Vec<String>,
    pub(crate) digest: String,
}

impl RuleSet {
    /// Loads every `*.yaml` / `*.yml` file directly in `dir`, in file-name order.
    pub fn load_dir(dir: &Path) -> Result<RuleSet, LoadErrors> {
        compile::load_dir(dir, None)
    }

    /// [`RuleSet::load_dir`] for a reload: compiled parts of `previous` that are unchanged
    /// (regexes) are reused instead of compiled again. The result is the same set.
    pub fn load_dir_reusing(dir: &Path, previous: &RuleSet) -> Result<RuleSet, LoadErrors> {
        compile::load_dir(dir, Some(previous))
    }

    /// Loads in-memory sources, `(name, text)`, in the order given (names appear in errors).
    pub fn from_sources<N: AsRef<str>, T: AsRef<[u8]>>(
        sources: &[(N, T)],
    ) -> Result<RuleSet, LoadErrors> {
        compile::compile(&as_sources(sources), None)
    }

    /// [`RuleSet::from_sources`] reusing the unchanged compiled parts of `previous`.
    pub fn from_sources_reusing<N: AsRef<str>, T: AsRef<[u8]>>(
        sources: &[(N, T)],
        previous: &RuleSet,
    ) -> Result<RuleSet, LoadErrors> {
        compile::compile(&as_sources(sources), Some(previous))
    }

    /// A set without rules: every event is allowed.
    pub fn empty() -> RuleSet {
        compile::build_set(Vec::new(), Vec::new(), &Default::default(), "")
    }

    /// `sha256:<hex>` over the canonical form of all rules and lists (see rules/README.md).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The rules in set order: file-name order, then order within the file.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| &*r.id == id)
    }

    /// True when some rule's match reads `field`: lets hooks skip measuring what no rule asks
    /// for (an executable's sha256 costs a read of the whole file).
    pub fn uses_field(&self, field: Field) -> bool {
        self.rules
            .iter()
            .any(|r| r.pred.as_ref().is_some_and(|p| p.uses_field(field)))
    }

    /// The files the set was read from, in order.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Judges one event. Events of processes that belong to no agent match no rule.
    pub fn evaluate(&self, event: &Event, ctx: &mut EvalContext<'_>) -> Decision {
        let Some(agent) = event.agent() else {
            return Decision::allow();
        };
        let index = &self.by_kind[event.kind().index()];
        if index.rules.is_empty() {
            return Decision::allow();
        }
        let agent_index = self.agent_table.iter().position(|a| a == agent);
        let mut view = EventView::new(event);
        let mut fired = Vec::new();
        index.for_each_candidate(event, |i| {
            if let Some(f) = self.judge(i, agent_index, &mut view, ctx) {
                fired.push(f);
            }
        });
        Decision::from_fired(fired)
    }

    /// Whether rule `i` fires on the event of `view` (taking a quota token if it has a quota).
    fn judge(
        &self,
        i: u32,
        agent_index: Option<usize>,
        view: &mut EventView<'_>,
        ctx: &mut EvalContext<'_>,
    ) -> Option<Fired> {
        let rule = &self.rules[i as usize];
        let event = view.event;
        if !self.applies(rule, agent_index, view, ctx.baseline) {
            return None;
        }
        let decided = ctx.decided_quotas.and_then(|decided| decided(&rule.id));
        let quota = match (&rule.quota, decided) {
            (None, _) => None,
            (Some(_), Some(None)) => return None,
            (Some(_), Some(Some(state))) => Some(state),
            (Some(spec), None) => match ctx.quotas.take(&rule.id, spec, event) {
                Take::Passed => return None,
                Take::Exhausted(state) => Some(state),
            },
        };
        Some(Fired {
            index: i as usize,
            rule_id: Arc::clone(&rule.id),
            title: Arc::clone(&rule.title),
            action: rule.action,
            hold: rule.hold,
            severity: rule.severity,
            tags: Arc::clone(&rule.tags),
            capture: rule.capture_for(event.kind()),
            quota,
        })
    }

    /// Whether `rule` judges the event of `view`: its agents, `when` and `match`.
    fn applies(
        &self,
        rule: &Rule,
        agent_index: Option<usize>,
        view: &mut EventView<'_>,
        baseline: &dyn BaselineView,
    ) -> bool {
        if rule.agents.is_some() {
            let Some(a) = agent_index else {
                return false;
            };
            if rule
                .agent_bits
                .get(a / 64)
                .is_none_or(|w| w & (1 << (a % 64)) == 0)
            {
                return false;
            }
        }
        if let Some(when) = &rule.when
            && !when.applies(view.event.time)
        {
            return false;
        }
        rule.pred
            .as_ref()
            .is_none_or(|pred| pred.eval(view, baseline))
    }

    /// Charges the model tokens a call used to every `unit: tokens` quota whose rule applies to
    /// the call's event (the same agents, `when` and `match` as [`RuleSet::evaluate`]; the
    /// event's time is when the usage became known). Buckets may go into debt, down to one full
    /// bucket. Returns the charged quotas in set order; nothing for events of non-agents.
    pub fn charge_usage(
        &self,
        event: &Event,
        tokens: u64,
        ctx: &mut EvalContext<'_>,
    ) -> Vec<UsageCharge> {
        let Some(agent) = event.agent() else {
            return Vec::new();
        };
        let agent_index = self.agent_table.iter().position(|a| a == agent);
        let mut view = EventView::new(event);
        let mut charged = Vec::new();
        self.by_kind[event.kind().index()].for_each_candidate(event, |i| {
            let rule = &self.rules[i as usize];
            let Some(spec) = rule.quota.filter(|q| q.unit == QuotaUnit::Tokens) else {
                return;
            };
            if self.applies(rule, agent_index, &mut view, ctx.baseline) {
                charged.push(UsageCharge {
                    rule_id: rule.id.to_string(),
                    quota: ctx.quotas.charge(&rule.id, &spec, event, tokens),
                });
            }
        });
        charged
    }

    /// [`RuleSet::evaluate`] without the index: every rule of the kind is judged. The index must
    /// never change a decision; tests compare the two.
    #[cfg(test)]
    pub(crate) fn evaluate_every_rule(&self, event: &Event, ctx: &mut EvalContext<'_>) -> Decision {
        let Some(agent) = event.agent() else {
            return Decision::allow();
        };
        let agent_index = self.agent_table.iter().position(|a| a == agent);
        let mut view = EventView::new(event);
        let fired = self.by_kind[event.kind().index()]
            .rules
            .iter()
            .filter_map(|&i| self.judge(i, agent_index, &mut view, ctx))
            .collect();
        Decision::from_fired(fired)
    }
}

impl Decision {
    fn from_fired(fired: Vec<Fired>) -> Decision {
        let Some(verdict) = fired.iter().map(|f| f.action).max() else {
            return Decision::allow();
        };
        let deciding = fired.iter().position(|f| f.action == verdict);
        Decision {
            verdict,
            deciding,
            fired,
        }
    }
}
