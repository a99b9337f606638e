//! The decision point every tier calls: agent membership, the rule engine, evidence, holds.
//!
//! A tier hands over what a process is about to do; the judge finds out whether the process is an
//! agent (non-agents are allowed at once and cost nothing more), builds the [`Event`], evaluates
//! it, writes one signed bundle per fired rule, counts it into the agent's baseline, and returns
//! the verdict. Blocks with `hold: true` also stop the process until an operator decides.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oknek_engine::{Decision, EvalContext, Fired, QuotaLedger, RuleSet};
use oknek_event::{Action, Event, Field, Mechanism, SockAddr, Timestamp, Verdict};
use oknek_evidence::{Firing, Store, StoreConfig};
use oknek_protocol::{Header, Request as Frame};
use serde_json::{Value, json};

use crate::agents::{Agents, ProcKey};
use crate::alert::{Alert, AlertSink, LogAlerts};
use crate::config::{Config, TierSwitch};
use crate::control::{self, Request, Response};
use crate::hook::Received;
use crate::kernel::{self, KernelFacts};
use crate::models::{GATEWAY_ONLY_RULE, ModelCalls, QUOTA_FULL_RULE};
use crate::weights::{Hashed, WEIGHTS_HASH_RULE, WeightsHasher};
use crate::{notice, procinfo, warn};

/// Rule id of bundles written for processes of a quarantined agent.
pub const QUARANTINE_RULE: &str = "oknek.quarantine";
/// Rule ids of operator decisions on held processes.
pub const OPERATOR_ALLOW_RULE: &str = "oknek.operator.allow";
pub const OPERATOR_BLOCK_RULE: &str = "oknek.operator.block";
/// Rule id of a refusal to open a fanotify-protected object through seccomp emulation.
pub const PROTECTED_OBJECT_RULE: &str = "oknek.protected_object";
/// The kernel refused an event by a rule the current rule set no longer blocks it with (the
/// rules were reloaded while the event waited in the ring buffer).
pub const KERNEL_REFUSAL_RULE: &str = "oknek.kernel_refusal";
/// Events the kernel could not hand over (ring buffer full): a gap, recorded as such.
pub const EVENTS_LOST_RULE: &str = "oknek.events_lost";
/// A model call no rule fired on: recorded anyway, every model call decision is evidence.
pub const MODEL_CALL_RULE: &str = "oknek.model_call";

/// How long a decision taken before a syscall ran suppresses the kernel's observation of it.
const RECENT_TTL: Duration = Duration::from_secs(5);
const RECENT_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("rules in {dir}: {errors}")]
    Rules { dir: PathBuf, errors: String },
    #[error("evidence store in {dir}: {source}")]
    Evidence {
        dir: PathBuf,
        source: oknek_evidence::Error,
    },
}

/// A process stopped by a `hold: true` rule, waiting for `oknek allow` or `oknek block`.
#[derive(Debug, Clone)]
struct Hold {
    key: ProcKey,
    event: Event,
    rule_id: String,
    since: Timestamp,
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Counters {
    pub events: u64,
    pub allowed: u64,
    pub warned: u64,
    pub blocked: u64,
    pub non_agent: u64,
    pub bundles: u64,
    pub evidence_errors: u64,
    pub dropped_frames: u64,
}

/// Which tiers are armed, by name, for `status` and `doctor`.
pub type Armed = BTreeMap<&'static str, bool>;

pub struct Judge {
    rules: Arc<RuleSet>,
    pub(crate) quotas: QuotaLedger,
    pub(crate) store: Store,
    pub agents: Agents,
    holds: HashMap<u32, Hold>,
    quarantined: HashSet<String>,
    quarantine_file: PathBuf,
    pub counters: Counters,
    pub armed: Armed,
    tiers: crate::config::Tiers,
    started: Instant,
    /// Some rule reads `exe_sha256`: measure it for every judged event.
    needs_exe_hash: bool,
    /// Recently read process identities.
    pub identities: procinfo::IdentityCache,
    /// Where warn and block decisions are announced.
    pub alerts: Box<dyn AlertSink>,
    /// Files fanotify protects for opening: never hashed, the daemon must not open them.
    pub never_open: std::collections::HashSet<(u64, u64)>,
    /// Calls a deciding tier (preload, seccomp) judged before they ran, so the eBPF tier's
    /// observation of the same call is not recorded a second time.
    recent: HashMap<(u32, String), Instant>,
    /// A pinned clock for tests of time windows (see [`Judge::clock_now`]).
    fixed_clock: Option<Timestamp>,
    /// Model providers: which connects are model calls.
    pub models: ModelCalls,
    /// Hashes weights files agents open, off the decision path (the daemon starts it).
    pub weights: Option<WeightsHasher>,
}

fn load_rules(dir: &Path) -> Result<RuleSet, JudgeError> {
    RuleSet::load_dir(dir).map_err(|errors| JudgeError::Rules {
        dir: dir.to_owned(),
        errors: errors.to_string(),
    })
}

/// `oknekd --check`: loads the rules and opens nothing else.
pub fn check(config: &Config) -> Result<String, JudgeError> {
    let rules = load_rules(&config.paths.rules_dir)?;
    Ok(format!(
        "{} rules in {} files from {}, digest {}; {} agents declared",
        rules.len(),
        rules.files().len(),
        config.paths.rules_dir.display(),
        rules.digest(),
        config.agents.len()
    ))
}

impl Judge {
    pub fn new(config: &Config) -> Result<Judge, JudgeError> {
        let rules = load_rules(&config.paths.rules_dir)?;
        let state = &config.paths.state_dir;
        // The daemon creates the host key on first start (install normally does it first).
        let mut store_config = StoreConfig::new(state);
        store_config.create_key = true;
        let store = Store::open(store_config).map_err(|source| JudgeError::Evidence {
            dir: state.clone(),
            source,
        })?;
        let quarantine_file = state.join("quarantine.json");
        let quarantined = std::fs::read(&quarantine_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok())
            .unwrap_or_default()
            .into_iter()
            .collect();
        Ok(Judge {
            rules: Arc::new(rules),
            quotas: QuotaLedger::new(),
            store,
            agents: Agents::new(config.agents.clone()),
            holds: HashMap::new(),
            quarantined,
            quarantine_file,
            counters: Counters::default(),
            armed: Armed::new(),
            tiers: config.tiers,
            started: Instant::now(),
            needs_exe_hash: false,
            alerts: Box::new(LogAlerts),
            identities: procinfo::IdentityCache::default(),
            never_open: HashSet::new(),
            recent: HashMap::new(),
            models: ModelCalls::new(config),
            weights: None,
            fixed_clock: std::env::var("OKNEK_TEST_CLOCK")
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .map(|secs| {
                    warn!("oknekd: OKNEK_TEST_CLOCK is set: model calls are judged at unix time {secs}, not now");
                    Timestamp::from_secs(secs)
                }),
        })
        .map(|mut judge| {
            judge.needs_exe_hash = judge.rules.uses_field(Field::ExeSha256);
            judge
        })
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Builds the new rule set completely, then swaps it in. On error nothing changes.
    pub fn reload(&mut self, config: &Config) -> Result<String, String> {
        let rules = RuleSet::load_dir_reusing(&config.paths.rules_dir, &self.rules)
            .map_err(|e| e.to_string())?;
        self.quotas.retain_for(&rules);
        self.needs_exe_hash = rules.uses_field(Field::ExeSha256);
        self.rules = Arc::new(rules);
        self.agents.replace_specs(config.agents.clone());
        self.tiers = config.tiers;
        let kernel_quotas = std::mem::take(&mut self.models.kernel_quotas);
        self.models = ModelCalls::new(config);
        self.models.kernel_quotas = kernel_quotas;
        Ok(self.status_line())
    }

    pub fn status_line(&self) -> String {
        let armed: Vec<&str> = self
            .armed
            .iter()
            .filter(|(_, on)| **on)
            .map(|(n, _)| *n)
            .collect();
        format!(
            "{} rules ({}), tiers: {}, {} agents declared, {} events judged",
            self.rules.len(),
            short_digest(self.rules.digest()),
            if armed.is_empty() {
                "none".to_owned()
            } else {
                armed.join(" ")
            },
            self.agents.declared().len(),
            self.counters.events
        )
    }

    /// Judges one event of an agent process, before it happens, and records the outcome.
    pub fn decide(&mut self, event: &Event) -> Verdict {
        if matches!(event.source, Mechanism::Preload | Mechanism::Seccomp) {
            if self.recent.len() >= RECENT_MAX {
                let now = Instant::now();
                self.recent
                    .retain(|_, at| now.duration_since(*at) < RECENT_TTL);
                if self.recent.len() >= RECENT_MAX {
                    self.recent.clear();
                }
            }
            self.recent.insert(call_key(event), Instant::now());
        }
        let verdict = self.decide_as(event, true);
        if verdict == Verdict::Block {
            return verdict;
        }
        verdict
            .max(self.judge_model_connect(event, true, None, None))
            .max(self.judge_weights(event, true))
    }

    /// Judges a plaintext request to a model server, once its model is known, before the write
    /// that completes it is let through. `send` is the write (a send or connect event of the
    /// agent, its destination the provider). The call's quota was taken when it connected, so
    /// quotas are not charged again here; everything else about the model is judged. `Allow`
    /// when the destination is no provider.
    pub fn decide_plaintext_model(&mut self, send: &Event, model: &str) -> Verdict {
        let connect = match &send.action {
            Action::Send { dest, .. } | Action::Connect { dest } => Event {
                action: Action::Connect { dest: dest.clone() },
                ..send.clone()
            },
            _ => return Verdict::Allow,
        };
        let Some((mut call, _)) = self.models.model_call(&connect) else {
            return Verdict::Allow;
        };
        if let Action::ModelCall { model: m, .. } = &mut call.action {
            *m = Some(model.to_owned());
        }
        let already_counted = |_: &str| Some(None);
        let (verdict, fired) = self.decide_full_with(&call, true, Some(&already_counted));
        if fired.is_empty() {
            self.record_synthetic(
                &call,
                MODEL_CALL_RULE,
                Verdict::Allow,
                "no rule fired: the request is allowed",
            );
        }
        verdict
    }

    /// Judges the open of a weights file as the `model_call` it is (R6.weights); `Allow` for
    /// other events. Recorded like every model call, an allow bundle when no rule fired.
    fn judge_weights(&mut self, open: &Event, enforced: bool) -> Verdict {
        let Some(call) = ModelCalls::weights_call(open) else {
            return Verdict::Allow;
        };
        let (verdict, fired) = self.decide_full(&call, enforced);
        if fired.is_empty() {
            self.record_synthetic(
                &call,
                MODEL_CALL_RULE,
                Verdict::Allow,
                "no rule fired: the weights may be loaded",
            );
        }
        // Loaded weights are named by content too, once hashed (see weights.rs).
        if (verdict != Verdict::Block || !enforced)
            && let (Some(hasher), Action::Open { path, .. }) = (&mut self.weights, &open.action)
        {
            hasher.request(&call, path);
        }
        verdict
    }

    /// Records the content hash of a weights file an agent opened.
    pub fn record_weights_hash(&mut self, hashed: &Hashed) {
        let mut extra = serde_json::Map::new();
        extra.insert("path".to_owned(), hashed.path.display().to_string().into());
        extra.insert("size".to_owned(), hashed.size.into());
        let title = match &hashed.sha256 {
            Ok(hex) => {
                extra.insert("sha256".to_owned(), hex.clone().into());
                "weights file hashed: the model is this content"
            }
            Err(why) => {
                extra.insert("error".to_owned(), why.clone().into());
                "weights file could not be hashed"
            }
        };
        self.record_outside_rules(
            &hashed.event,
            WEIGHTS_HASH_RULE,
            title,
            Verdict::Allow,
            &extra,
        );
    }

    /// Judges the model call a connect to a provider is; `Allow` for other events. The
    /// connect's own rules are judged separately. `kernel`: the kernel tier applied its
    /// connect-time model policy to this call and refused it by this rule (`Some(Some(id))`)
    /// or let it through (`Some(None)`); its quota outcomes stand. `enforced`: whether a
    /// refusal here stops the call.
    fn judge_model_connect(
        &mut self,
        connect: &Event,
        enforced: bool,
        kernel: Option<Option<&str>>,
        metered: Option<(&str, u32)>,
    ) -> Verdict {
        let Some((call, gateway_only)) = self.models.model_call(connect) else {
            return Verdict::Allow;
        };
        let special = match kernel {
            Some(Some(rule)) if rule == QUOTA_FULL_RULE => Some((
                QUOTA_FULL_RULE,
                "the kernel had no room for another quota bucket: refused rather than uncounted",
            )),
            _ if gateway_only => Some((
                GATEWAY_ONLY_RULE,
                "the provider is reached through the model gateway only: an agent's direct connect is refused",
            )),
            _ => None,
        };
        if let Some((rule, why)) = special {
            self.counters.events += 1;
            self.counters.blocked += 1;
            let mut extra = serde_json::Map::new();
            extra.insert("reason".to_owned(), why.into());
            if !enforced {
                extra.insert("enforced".to_owned(), false.into());
            }
            self.record_outside_rules(&call, rule, why, Verdict::Block, &extra);
            return Verdict::Block;
        }
        let kernel_quotas = self.models.kernel_quotas.clone();
        let rules = Arc::clone(&self.rules);
        let decided = |rule_id: &str| -> Option<Option<oknek_engine::QuotaState>> {
            let refused_by = kernel?;
            if !kernel_quotas.contains(rule_id) {
                return None;
            }
            if refused_by != Some(rule_id) {
                return Some(None);
            }
            let spec = rules.rule(rule_id)?.quota()?;
            Some(Some(oknek_engine::QuotaState {
                key: spec.by.key(&call),
                remaining: 0,
                debt: 0,
                limit: spec.limit,
                per_secs: spec.per_secs,
                by: spec.by,
                unit: spec.unit,
            }))
        };
        let (verdict, fired) = self.decide_full_with(&call, enforced, Some(&decided));
        if fired.is_empty() {
            self.record_allowed_call(&call, metered);
        }
        verdict
    }

    /// The allow bundle of a model call no rule refused, with the state of the quotas that
    /// metered it: the kernel's bucket (`metered`), or the daemon's own buckets.
    fn record_allowed_call(&mut self, call: &Event, metered: Option<(&str, u32)>) {
        let why = "no rule fired: the call is allowed";
        let mut extra = serde_json::Map::new();
        extra.insert("reason".to_owned(), why.into());
        let mut quotas = Vec::new();
        for rule in self.rules.rules() {
            let Some(spec) = rule.quota() else { continue };
            if !rule.kinds().contains(&oknek_event::Kind::ModelCall) {
                continue;
            }
            let key = spec.by.key(call);
            let remaining = match metered {
                Some((id, left)) if id == rule.id() => Some(u64::from(left)),
                _ if self.models.kernel_quotas.contains(rule.id()) => None,
                _ => self.quotas.remaining(rule.id(), &key, call.time),
            };
            if let Some(remaining) = remaining {
                quotas.push(json!({
                    "rule": rule.id(), "key": key, "remaining": remaining,
                    "limit": spec.limit, "per_secs": spec.per_secs, "by": spec.by,
                }));
            }
        }
        if !quotas.is_empty() {
            extra.insert("quotas".to_owned(), quotas.into());
        }
        self.record_outside_rules(call, MODEL_CALL_RULE, why, Verdict::Allow, &extra);
    }

    /// Judges an event the kernel reports after letting it through (a tracepoint, or a hook
    /// that found no kernel rule): recorded like any decision, but a block is marked as not
    /// enforced, and a hold still stops the agent. `None` when a deciding tier already judged
    /// the same call.
    pub fn decide_observed(&mut self, event: &Event) -> Option<Verdict> {
        self.decide_observed_metered(event, None)
    }

    /// [`Judge::decide_observed`] for a model call the kernel metered: `metered` is the quota
    /// rule and the whole calls its bucket has left, recorded with the call.
    pub fn decide_observed_metered(
        &mut self,
        event: &Event,
        metered: Option<(&str, u32)>,
    ) -> Option<Verdict> {
        if let Some(at) = self.recent.remove(&call_key(event))
            && at.elapsed() < RECENT_TTL
        {
            return None;
        }
        let verdict = self.decide_as(event, false);
        // A connect the kernel's enforcing hook saw has had its model-call policy applied.
        let kernel =
            matches!(event.source, Mechanism::BpfLsm | Mechanism::CgroupSockAddr).then_some(None);
        Some(
            verdict
                .max(self.judge_model_connect(event, false, kernel, metered))
                .max(self.judge_weights(event, false)),
        )
    }

    /// Records an event the kernel refused by `rule_id`. The event is judged again so every
    /// rule it fires is recorded; if the current rules do not block it (they were reloaded
    /// since), the kernel's refusal is recorded on its own.
    pub fn record_kernel_refusal(&mut self, event: &Event, rule_id: &str) {
        let model_rule = rule_id == GATEWAY_ONLY_RULE
            || rule_id == QUOTA_FULL_RULE
            || self
                .rules
                .rule(rule_id)
                .is_some_and(|r| r.kinds().contains(&oknek_event::Kind::ModelCall));
        if model_rule && self.models.provider_of(event).is_some() {
            if self.judge_model_connect(event, true, Some(Some(rule_id)), None) != Verdict::Block {
                self.record_synthetic(
                    event,
                    KERNEL_REFUSAL_RULE,
                    Verdict::Block,
                    &format!("refused in the kernel by rule {rule_id} of an earlier rule set"),
                );
            }
            return;
        }
        if self.decide_as(event, true) != Verdict::Block {
            self.counters.blocked += 1;
            self.record_synthetic(
                event,
                KERNEL_REFUSAL_RULE,
                Verdict::Block,
                &format!("refused in the kernel by rule {rule_id} of an earlier rule set"),
            );
        }
    }

    /// Records that `lost` kernel events were dropped before the daemon could read them.
    pub fn record_gap(&mut self, lost: u64, what: &str) {
        let mut extra = serde_json::Map::new();
        extra.insert("lost_events".to_owned(), lost.into());
        extra.insert("reason".to_owned(), what.into());
        let me = std::process::id();
        let event = Event {
            time: Timestamp::now(),
            source: Mechanism::Tracepoint,
            process: procinfo::identity(me).unwrap_or_else(|_| oknek_event::Process {
                pid: me,
                tgid: me,
                ..Default::default()
            }),
            action: Action::Watch {
                path: what.to_owned(),
                mask: 0,
            },
        };
        self.record_outside_rules(
            &event,
            EVENTS_LOST_RULE,
            "kernel events lost: evidence has a gap here",
            Verdict::Warn,
            &extra,
        );
    }

    fn decide_as(&mut self, event: &Event, enforced: bool) -> Verdict {
        self.decide_full(event, enforced).0
    }

    /// Judges and records; also returns the rules that fired (id, title, action).
    fn decide_full(&mut self, event: &Event, enforced: bool) -> (Verdict, Vec<Value>) {
        self.decide_full_with(event, enforced, None)
    }

    /// [`Judge::decide_full`] with quota outcomes another enforcer decided (see
    /// [`EvalContext::decided_quotas`]).
    fn decide_full_with(
        &mut self,
        event: &Event,
        enforced: bool,
        decided: Option<oknek_engine::DecidedQuotas<'_>>,
    ) -> (Verdict, Vec<Value>) {
        let measured;
        let event = if self.needs_exe_hash && event.process.exe_sha256.is_none() {
            measured = self.with_exe_hash(event);
            &measured
        } else {
            event
        };
        self.counters.events += 1;
        let agent = event.agent().unwrap_or_default().to_owned();
        let (verdict, decision) = if self.quarantined.contains(&agent) {
            self.record_synthetic(
                event,
                QUARANTINE_RULE,
                Verdict::Block,
                "agent is blocked by an operator",
            );
            (Verdict::Block, None)
        } else {
            let rules = Arc::clone(&self.rules);
            let decision = {
                let mut ctx = EvalContext::new(&mut self.quotas, self.store.baseline());
                ctx.decided_quotas = decided;
                rules.evaluate(event, &mut ctx)
            };
            self.record(event, &rules, &decision, enforced);
            (decision.verdict, Some(decision))
        };
        self.store.observe(event);
        match verdict {
            Verdict::Allow => self.counters.allowed += 1,
            Verdict::Warn => self.counters.warned += 1,
            Verdict::Block => self.counters.blocked += 1,
        }
        let fired = decision.as_ref().map_or_else(
            || vec![json!({ "id": QUARANTINE_RULE, "title": "agent is blocked by an operator", "action": "block" })],
            |d| {
                d.fired
                    .iter()
                    .map(|f| {
                        let mut rule = json!({ "id": &*f.rule_id, "title": &*f.title, "action": f.action.name() });
                        if let Some(q) = &f.quota {
                            rule["quota"] = serde_json::to_value(q).unwrap_or(Value::Null);
                        }
                        rule
                    })
                    .collect()
            },
        );
        if let Some(decision) = decision.filter(Decision::hold) {
            self.hold(event, &decision);
        }
        (verdict, fired)
    }

    /// Authorises a model call before it is made (asked by the model gateway). Every call is
    /// recorded: when no rule fires, an allow bundle says so.
    fn model_call(&mut self, call: control::ModelCallRequest) -> Response {
        let process = match self.gateway_caller(call.pid) {
            Ok(p) => p,
            Err(e) => return Response::err(format!("caller pid {}: {e}", call.pid)),
        };
        let event = self.gateway_call(process, call.provider, call.model, call.api, call.dest);
        let (verdict, fired) = if event.agent().is_some() {
            self.decide_full(&event, true)
        } else {
            (Verdict::Allow, Vec::new())
        };
        if fired.is_empty() {
            if event.agent().is_some() {
                self.record_allowed_call(&event, None);
            } else {
                let why = "the caller is not an agent: rules do not apply";
                self.record_synthetic(&event, MODEL_CALL_RULE, Verdict::Allow, why);
            }
        }
        Response::ok(json!({
            "verdict": verdict.name(),
            "rules": fired,
            "agent": event.agent(),
            "caller": {
                "pid": event.process.pid,
                "uid": event.process.uid,
                "exe": event.process.exe,
                "exe_sha256": event.process.exe_sha256,
                "unit": event.process.unit,
            },
        }))
    }

    /// The process behind a gateway connection, measured: executable hash and agent.
    pub(crate) fn gateway_caller(&mut self, pid: u32) -> Result<oknek_event::Process, String> {
        let process = self.identities.get(pid).map_err(|e| e.to_string())?;
        Ok(self.measured(pid, process))
    }

    /// `process` (of `pid`) with its executable hash and agent filled in.
    pub(crate) fn measured(
        &mut self,
        pid: u32,
        mut process: oknek_event::Process,
    ) -> oknek_event::Process {
        if process.exe_sha256.is_none() {
            process.exe_sha256 = self.agents.exe_hash(pid, Path::new(&process.exe));
        }
        process.agent = self.agents.agent_of(pid).map(|a| a.to_string());
        process
    }

    /// The `model_call` event of a request the gateway reports (`dest` as `ip:port`).
    pub(crate) fn gateway_call(
        &self,
        process: oknek_event::Process,
        provider: String,
        model: Option<String>,
        api: Option<String>,
        dest: Option<String>,
    ) -> Event {
        Event {
            time: self.clock_now(),
            source: Mechanism::Gateway,
            process,
            action: Action::ModelCall {
                provider,
                model,
                api,
                dest: dest
                    .and_then(|d| d.parse::<std::net::SocketAddr>().ok())
                    .map(SockAddr::from),
                weights: None,
            },
        }
    }

    /// The time model calls are judged at; tests pin it (`OKNEK_TEST_CLOCK`, unix seconds, in
    /// the daemon's environment) to judge time windows deterministically.
    pub(crate) fn clock_now(&self) -> Timestamp {
        self.fixed_clock.unwrap_or_else(Timestamp::now)
    }

    /// The event with the sha256 of the process's executable (read through /proc/PID/exe, so
    /// the image actually running), cached per file version.
    fn with_exe_hash(&mut self, event: &Event) -> Event {
        use std::os::unix::fs::MetadataExt;
        let mut event = event.clone();
        let pid = event.process.pid;
        let protected = std::fs::metadata(format!("/proc/{pid}/exe"))
            .is_ok_and(|md| self.never_open.contains(&(md.dev(), md.ino())));
        if !protected {
            event.process.exe_sha256 = self.agents.exe_hash(pid, Path::new(&event.process.exe));
        }
        event
    }

    fn record(&mut self, event: &Event, rules: &RuleSet, decision: &Decision, enforced: bool) {
        for fired in &decision.fired {
            let seq = with_firing(event, rules.digest(), fired, |firing| {
                if enforced || firing.verdict != Verdict::Block {
                    return self.append(firing);
                }
                // The call already happened: say so in the signed record.
                let mut extra = firing.extra.cloned().unwrap_or_default();
                extra.insert("enforced".to_owned(), false.into());
                extra.insert(
                    "reason".to_owned(),
                    "observed by the kernel after the call; no tier refused it".into(),
                );
                self.append(&Firing {
                    extra: Some(&extra),
                    ..*firing
                })
            });
            if fired.action != Verdict::Allow {
                self.alerts.alert(&Alert {
                    verdict: fired.action,
                    rule_id: &fired.rule_id,
                    title: &fired.title,
                    severity: fired.severity.name(),
                    agent: event.agent(),
                    pid: event.process.pid,
                    uid: event.process.uid,
                    kind: event.kind().name(),
                    seq,
                    event,
                });
            }
        }
    }

    pub fn record_synthetic(&mut self, event: &Event, rule_id: &str, verdict: Verdict, why: &str) {
        let mut extra = serde_json::Map::new();
        extra.insert("reason".to_owned(), why.into());
        self.record_outside_rules(event, rule_id, why, verdict, &extra);
    }

    /// A bundle for a decision no rule of the set made (operator actions, kernel gaps, …),
    /// capturing the kind's default fields.
    pub(crate) fn record_outside_rules(
        &mut self,
        event: &Event,
        rule_id: &str,
        title: &str,
        verdict: Verdict,
        extra: &serde_json::Map<String, Value>,
    ) {
        let capture: Vec<Field> = oknek_engine::default_capture(event.kind()).to_vec();
        let digest = self.rules.digest().to_owned();
        let _ = self.append(&Firing {
            event,
            rule_id,
            rule_title: Some(title),
            verdict,
            rule_set_digest: &digest,
            capture: &capture,
            extra: Some(extra),
        });
    }

    /// Writes one bundle; returns its sequence number.
    fn append(&mut self, firing: &Firing<'_>) -> Option<u64> {
        match self.store.append(firing) {
            Ok(appended) => {
                self.counters.bundles += 1;
                Some(appended.seq)
            }
            Err(e) => {
                self.counters.evidence_errors += 1;
                warn!(
                    "oknekd: evidence not written for rule {}: {e}",
                    firing.rule_id
                );
                None
            }
        }
    }

    fn hold(&mut self, event: &Event, decision: &Decision) {
        let pid = event.process.pid;
        let Ok(key) = ProcKey::of(pid) else { return };
        // SAFETY: kill has no memory effects; the pid was just confirmed to exist.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        let rule_id = decision
            .deciding_rule()
            .map_or_else(String::new, |f| f.rule_id.to_string());
        notice!(
            "oknekd: holding pid {pid} after rule {rule_id}; release with `oknek allow {pid}` or kill with `oknek block {pid}`"
        );
        self.holds.insert(
            pid,
            Hold {
                key,
                event: event.clone(),
                rule_id,
                since: event.time,
            },
        );
    }

    /// Flushes the evidence batch when its deadline passed.
    pub fn flush_if_due(&mut self) {
        if let Err(e) = self.store.flush_due(Instant::now()) {
            self.counters.evidence_errors += 1;
            warn!("oknekd: evidence flush: {e}");
        }
    }

    /// How long until the open evidence batch must be committed.
    pub fn flush_in(&self) -> Option<Duration> {
        self.store
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Once a second: baseline roll-up, forgetting holds of processes that are gone.
    pub fn periodic(&mut self) {
        if let Err(e) = self.store.roll_up(Timestamp::now()) {
            warn!("oknekd: baseline roll-up: {e}");
        }
        self.holds
            .retain(|pid, h| ProcKey::of(*pid).is_ok_and(|k| k == h.key));
    }

    pub fn shutdown(&mut self) {
        if let Err(e) = self.store.flush() {
            warn!("oknekd: final evidence flush: {e}");
        }
    }

    /// Handles a report or question from the preload shim; returns the errno to answer.
    pub fn on_hook_frame(
        &mut self,
        header: &Header,
        frame: &Frame<'_>,
        from: &Received,
        plan: &crate::plan::TierPlan,
    ) -> i32 {
        let _ = header;
        let pid = from.cred.pid;
        // One read of /proc/PID/stat serves the agent lookup and the identity.
        let Some((key, agent)) = ProcKey::of(pid)
            .ok()
            .and_then(|key| Some((key, self.agents.agent_of_key(key)?)))
        else {
            self.counters.non_agent += 1;
            return 0;
        };
        let Some(mut action) = action_from_frame(pid, frame) else {
            self.counters.dropped_frames += 1;
            return 0;
        };
        // A hard link or bind path to a protected file is judged as the protected file.
        if let Action::Open { path, .. } | Action::Exec { path, .. } = &mut action
            && let Ok(md) = std::fs::metadata(&*path)
        {
            use std::os::unix::fs::MetadataExt;
            if let Some(protected) = plan.protected_path(md.dev(), md.ino()) {
                *path = protected.to_owned();
            }
        }
        let Ok(mut process) = self.identities.get_started(pid, key.start_time) else {
            // The process is gone: nothing left to protect.
            return 0;
        };
        process.agent = Some(agent.to_string());
        let event = Event {
            time: Timestamp::now(),
            source: Mechanism::Preload,
            process,
            action,
        };
        match self.decide(&event) {
            Verdict::Block => libc::EPERM,
            _ => 0,
        }
    }

    /// Serves control requests other than reload and doctor (which the loop handles).
    pub fn control(&mut self, request: Request) -> Response {
        match request {
            Request::Status {} => Response::ok(self.status()),
            Request::Agents {} => Response::ok(self.agents_json()),
            Request::Allow { pid } => self.operator_allow(pid),
            Request::Block { pid } => self.operator_block(pid),
            Request::Unblock { agent } => {
                if self.quarantined.remove(&agent) {
                    self.save_quarantine();
                    Response::ok(json!({ "unblocked": agent }))
                } else {
                    Response::err(format!("agent {agent:?} is not blocked"))
                }
            }
            Request::ModelCall(call) => self.model_call(call),
            Request::ModelUsage(usage) => self.model_usage(usage),
            Request::Reload {} | Request::Doctor {} => Response::err("handled by the loop"),
        }
    }

    fn operator_allow(&mut self, pid: u32) -> Response {
        let Some(hold) = self.holds.remove(&pid) else {
            return Response::err(format!("pid {pid} is not held"));
        };
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
        let why = format!("operator released pid {pid} held by rule {}", hold.rule_id);
        self.record_synthetic(&hold.event, OPERATOR_ALLOW_RULE, Verdict::Allow, &why);
        notice!("oknekd: {why}");
        Response::ok(json!({ "released": pid, "rule": hold.rule_id }))
    }

    fn operator_block(&mut self, pid: u32) -> Response {
        let Some(hold) = self.holds.remove(&pid) else {
            return Response::err(format!("pid {pid} is not held"));
        };
        let agent = hold.event.agent().unwrap_or_default().to_owned();
        // The agent's tree: from the topmost ancestor that is still the same agent.
        let mut top = pid;
        for _ in 0..64 {
            let Ok(parent) = procinfo::stat(top).map(|s| s.ppid) else {
                break;
            };
            if parent <= 1 || self.agents.agent_of(parent).as_deref() != Some(agent.as_str()) {
                break;
            }
            top = parent;
        }
        let killed = kill_tree(top);
        self.quarantined.insert(agent.clone());
        self.save_quarantine();
        let why = format!(
            "operator killed the tree of pid {pid} ({killed} processes from pid {top}) and blocked agent {agent:?} (rule {})",
            hold.rule_id
        );
        self.record_synthetic(&hold.event, OPERATOR_BLOCK_RULE, Verdict::Block, &why);
        notice!("oknekd: {why}");
        Response::ok(json!({ "killed": killed, "blocked_agent": agent }))
    }

    fn save_quarantine(&self) {
        let list: Vec<&String> = self.quarantined.iter().collect();
        let tmp = self.quarantine_file.with_extension("json.tmp");
        let body = serde_json::to_vec(&list).unwrap_or_default();
        if let Err(e) =
            std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, &self.quarantine_file))
        {
            warn!("oknekd: saving {}: {e}", self.quarantine_file.display());
        }
    }

    pub fn status(&self) -> Value {
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": self.started.elapsed().as_secs(),
            "rules": {
                "count": self.rules.len(),
                "files": self.rules.files(),
                "digest": self.rules.digest(),
            },
            "tiers": self.armed,
            "agents_declared": self.agents.declared().iter().map(|a| a.name.clone()).collect::<Vec<_>>(),
            "held": self.holds.iter().map(|(pid, h)| json!({"pid": pid, "rule": h.rule_id, "since": h.since.to_string()})).collect::<Vec<_>>(),
            "blocked_agents": self.quarantined.iter().collect::<Vec<_>>(),
            "counters": self.counters,
        })
    }

    fn agents_json(&mut self) -> Value {
        let launched: Vec<Value> = self
            .agents
            .launched()
            .into_iter()
            .map(|(k, a)| json!({ "agent": &*a, "root_pid": k.pid }))
            .collect();
        json!({
            "declared": self.agents.declared().iter().map(|a| json!({
                "name": a.name, "exe": a.exe, "exe_sha256": a.exe_sha256,
                "unit": a.unit, "cgroup": a.cgroup, "uid": a.uid,
            })).collect::<Vec<_>>(),
            "launched": launched,
        })
    }

    pub fn doctor(&self, facts: &KernelFacts, ebpf: Option<&EbpfView>) -> Value {
        doctor_table(facts, Some(&self.armed), ebpf)
    }

    pub fn tier_enabled(&self, switch: fn(&crate::config::Tiers) -> TierSwitch) -> TierSwitch {
        switch(&self.tiers)
    }
}

/// The evidence input for one fired rule: the engine's decision in the evidence store's terms,
/// with the quota state when the rule has a quota. The daemon and `oknek simulate --state-dir`
/// both record through this, so their bundles cannot drift apart.
pub fn with_firing<R>(
    event: &Event,
    rule_set_digest: &str,
    fired: &Fired,
    record: impl FnOnce(&Firing<'_>) -> R,
) -> R {
    let extra = fired.quota.as_ref().map(|q| {
        let mut m = serde_json::Map::new();
        m.insert(
            "quota".to_owned(),
            serde_json::to_value(q).unwrap_or(Value::Null),
        );
        m
    });
    record(&Firing {
        event,
        rule_id: &fired.rule_id,
        rule_title: Some(&fired.title),
        verdict: fired.action,
        rule_set_digest,
        capture: &fired.capture,
        extra: extra.as_ref(),
    })
}

/// What identifies one call across tiers: the thread and the call's target.
fn call_key(event: &Event) -> (u32, String) {
    let target = match &event.action {
        Action::Exec { path, .. } | Action::Open { path, .. } | Action::Watch { path, .. } => {
            format!("{}:{path}", event.kind().name())
        }
        Action::Connect { dest } | Action::Send { dest, .. } => {
            format!("{}:{dest:?}", event.kind().name())
        }
        Action::ModelCall { provider, .. } => format!("model_call:{provider}"),
    };
    (event.process.pid, target)
}

fn short_digest(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

/// Sends SIGKILL to `pid` and every descendant; returns how many processes were signalled.
pub fn kill_tree(pid: u32) -> usize {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in procinfo::all_pids() {
        if let Ok(st) = procinfo::stat(p) {
            children.entry(st.ppid).or_default().push(p);
        }
    }
    // Stop the whole tree first so nothing forks away while we walk it, then kill.
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        if let Some(kids) = children.get(&tree[i]) {
            tree.extend(kids);
        }
        i += 1;
    }
    for &p in &tree {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(p as libc::pid_t, libc::SIGSTOP) };
    }
    for &p in &tree {
        // SAFETY: as above.
        unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
    }
    tree.len()
}

/// The event a seccomp notification reports; `None` for socket families oknek does not model.
pub fn event_from_seccomp(
    req: &crate::tiers::seccomp::SyscallRequest,
    identities: &mut procinfo::IdentityCache,
) -> Option<Event> {
    use crate::tiers::seccomp::RequestKind;
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let action = match &req.kind {
        RequestKind::Exec { path: p, argv, .. } => Action::Exec {
            path: path(p),
            argv: argv
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        },
        RequestKind::Open {
            path: p,
            flags,
            mode,
            ..
        } => Action::Open {
            path: path(p),
            flags: *flags,
            mode: *mode,
        },
        RequestKind::Connect { dest, .. } => Action::Connect {
            dest: dest.clone()?,
        },
        RequestKind::Send { dest, bytes, .. } => Action::Send {
            dest: dest.clone()?,
            bytes: *bytes,
        },
        RequestKind::Watch { path: p, mask } => Action::Watch {
            path: path(p),
            mask: *mask,
        },
    };
    let mut process = identities
        .get(req.tgid)
        .unwrap_or_else(|_| oknek_event::Process {
            pid: req.tgid,
            tgid: req.tgid,
            ..Default::default()
        });
    process.pid = req.pid;
    process.agent = Some(req.agent.clone());
    Some(Event {
        time: Timestamp::now(),
        source: Mechanism::Seccomp,
        process,
        action,
    })
}

/// Decodes a shim frame into the action it reports, resolving relative paths the way the
/// kernel will: against the process's cwd or the directory fd it passed.
fn action_from_frame(pid: u32, frame: &Frame<'_>) -> Option<Action> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Some(match *frame {
        Frame::Exec { path, argv } => Action::Exec {
            path: resolve_path(pid, libc::AT_FDCWD, &text(path), true),
            argv: argv.iter().map(text).collect(),
        },
        Frame::Open {
            dirfd,
            flags,
            mode,
            path,
        } => Action::Open {
            path: resolve_path(pid, dirfd, &text(path), false),
            flags,
            mode,
        },
        Frame::Connect { sockaddr } => Action::Connect {
            dest: SockAddr::from_raw(sockaddr)?,
        },
        Frame::Send { bytes, sockaddr } => Action::Send {
            dest: SockAddr::from_raw(sockaddr)?,
            bytes,
        },
        Frame::Watch { mask, path } => Action::Watch {
            path: resolve_path(pid, libc::AT_FDCWD, &text(path), false),
            mask,
        },
        Frame::RegisterSeccomp { .. } => return None,
    })
}

/// Makes `path` absolute and free of `.`, `..` and symlinks where it exists, so a rule on the
/// real path cannot be dodged by spelling it differently. Bare command names (exec through
/// PATH) stay as given.
pub fn resolve_path(pid: u32, dirfd: i32, path: &str, bare_is_command: bool) -> String {
    if bare_is_command && !path.contains('/') {
        return path.to_owned();
    }
    let joined = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        let base = if dirfd == libc::AT_FDCWD {
            std::fs::read_link(format!("/proc/{pid}/cwd"))
        } else {
            std::fs::read_link(format!("/proc/{pid}/fd/{dirfd}"))
        };
        match base {
            Ok(b) => b.join(path),
            Err(_) => PathBuf::from(path),
        }
    };
    canonical(&joined).to_string_lossy().into_owned()
}

/// Canonical form of a path that may not exist yet: the longest existing prefix is resolved,
/// the rest is normalised lexically.
fn canonical(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    let mut normal = PathBuf::from("/");
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                normal.pop();
            }
            std::path::Component::Normal(p) => normal.push(p),
            _ => {}
        }
    }
    match (normal.parent(), normal.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or(normal),
        _ => normal,
    }
}

/// The per-action tier table `oknek doctor` prints. `armed` is what the daemon armed; without
/// it (no daemon) the table says what the kernel would allow.
/// The eBPF tier as the daemon found it, for `oknek doctor`.
#[derive(Debug, Clone)]
pub enum EbpfView {
    /// `tiers.ebpf: off`.
    Off,
    /// The kernel refused what the tier needs.
    Unavailable { why: String },
    Armed {
        /// The mechanism refusing each action kind in the kernel.
        enforcers: Vec<(oknek_event::Kind, Mechanism)>,
        /// Why BPF LSM is or is not used.
        lsm: String,
        cgroup: String,
        /// Block rules (or parts) the kernel maps cannot hold, and why.
        userspace_rules: Vec<(String, String)>,
    },
}

/// The per-action table of `oknek doctor`: which tier refuses each kind of action, the
/// mechanism name its evidence carries, and why that tier and not a stronger one.
pub fn doctor_table(facts: &KernelFacts, armed: Option<&Armed>, ebpf: Option<&EbpfView>) -> Value {
    use oknek_event::Kind;
    let is_armed = |tier: &str| armed.is_none_or(|a| a.get(tier).copied().unwrap_or(false));
    let fan_open = facts.has(kernel::FANOTIFY_OPEN_PERM) && is_armed("fanotify");
    let fan_exec = facts.has(kernel::FANOTIFY_EXEC_PERM) && is_armed("fanotify");
    let seccomp = facts.has(kernel::SECCOMP_USER_NOTIF) && is_armed("seccomp");
    let landlock = facts.has(kernel::LANDLOCK);
    let preload = is_armed("preload");
    let lsm_note = match ebpf {
        Some(EbpfView::Off) => "eBPF tier off (tiers.ebpf: off)".to_owned(),
        Some(EbpfView::Unavailable { why }) => format!("eBPF tier unavailable: {why}"),
        Some(EbpfView::Armed { lsm, .. }) => format!("BPF LSM: {lsm}"),
        None if facts.has(kernel::BPF_LSM_LISTED) => {
            "BPF LSM is listed in lsm=; the daemon probes the eBPF tier at start".to_owned()
        }
        None => "BPF LSM: not in the kernel's lsm= list".to_owned(),
    };
    let enforcer = |kind: Kind| match ebpf {
        Some(EbpfView::Armed { enforcers, .. }) => {
            enforcers.iter().find(|(k, _)| *k == kind).map(|(_, m)| *m)
        }
        _ => None,
    };
    let mut rows = Vec::new();
    let mut row = |action: &str, tier: &str, mechanism: &str, why: String| {
        rows.push(json!({ "action": action, "tier": tier, "mechanism": mechanism, "why": why }));
    };
    // Without a kernel tier for an action, oknek run covers launched agents and the shim the rest.
    let userspace_row = |row: &mut dyn FnMut(&str, &str, &str, String), action: &str, why: &str| {
        if seccomp {
            row(action, "seccomp (oknek run)", "seccomp", why.into());
        } else if preload {
            row(
                action,
                "preload",
                "preload",
                "no kernel tier available: weakest tier".into(),
            );
        } else {
            row(
                action,
                "none",
                "none",
                "no tier available or enabled".into(),
            );
        }
    };
    let kernel_row = |row: &mut dyn FnMut(&str, &str, &str, String), action: &str, m: Mechanism| {
        let why = match (m, ebpf) {
            (Mechanism::BpfLsm, _) => {
                "BPF LSM hook refuses in the kernel before the call runs (self-test passed)"
                    .to_owned()
            }
            (_, Some(EbpfView::Armed { lsm, .. })) => format!(
                "cgroup connect4/6 and sendmsg4/6 on the cgroup2 root; BPF LSM: {lsm}; fmod_ret: not supported by this build's loader"
            ),
            _ => String::new(),
        };
        let tier = match m {
            Mechanism::BpfLsm => "bpf_lsm",
            _ => "cgroup_sock_addr",
        };
        row(action, tier, m.name(), why);
    };
    for (action, kind, fan) in [
        ("exec", Kind::Exec, fan_exec),
        ("open", Kind::Open, fan_open),
    ] {
        if let Some(m) = enforcer(kind) {
            kernel_row(&mut row, action, m);
        } else if fan {
            row(
                action,
                "fanotify",
                "fanotify",
                format!("permission events on protected objects; {lsm_note}"),
            );
        } else {
            userspace_row(
                &mut row,
                action,
                "fanotify permission events unavailable or off",
            );
        }
    }
    for (action, kind) in [
        ("connect", Kind::Connect),
        ("send", Kind::Send),
        ("watch", Kind::Watch),
    ] {
        if let Some(m) = enforcer(kind) {
            kernel_row(&mut row, action, m);
        } else {
            userspace_row(
                &mut row,
                action,
                "for agents launched with oknek run; preload for others",
            );
        }
    }
    row(
        "any",
        if seccomp {
            "seccomp + Landlock (oknek run)"
        } else {
            "unavailable"
        },
        if seccomp { "seccomp" } else { "none" },
        if landlock {
            format!(
                "Landlock {}",
                facts
                    .facilities
                    .iter()
                    .find(|f| f.name == kernel::LANDLOCK)
                    .map_or("", |f| f.detail.as_str())
            )
        } else {
            "Landlock unavailable".into()
        },
    );
    let userspace_rules: Vec<Value> = match ebpf {
        Some(EbpfView::Armed {
            userspace_rules, ..
        }) => userspace_rules
            .iter()
            .map(|(rule, why)| json!({ "rule": rule, "why": why }))
            .collect(),
        _ => Vec::new(),
    };
    json!({
        "kernel": facts.release,
        "facilities": facts.facilities,
        "tiers": rows,
        "ebpf": lsm_note,
        "userspace_rules": userspace_rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddrs() {
        let mut v4 = vec![0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&443u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(
            SockAddr::from_raw(&v4),
            Some(SockAddr::Inet {
                addr: "10.0.0.1".parse().unwrap(),
                port: 443
            })
        );
        let mut un = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        un.extend_from_slice(b"/run/x.sock\0\0\0");
        assert_eq!(
            SockAddr::from_raw(&un),
            Some(SockAddr::Unix {
                path: "/run/x.sock".into()
            })
        );
        let mut abs = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        abs.extend_from_slice(b"\0hidden");
        assert_eq!(
            SockAddr::from_raw(&abs),
            Some(SockAddr::Unix {
                path: "@hidden".into()
            })
        );
        assert_eq!(SockAddr::from_raw(&[2]), None);
        assert_eq!(SockAddr::from_raw(&v4[..6]), None);
    }

    #[test]
    fn paths_are_made_canonical() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("key"), "k").unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let real_key = std::fs::canonicalize(real.join("key")).unwrap();
        let me = std::process::id();
        let via_link = format!("{}/link/../real/./key", dir.path().display());
        assert_eq!(
            resolve_path(me, libc::AT_FDCWD, &via_link, false),
            real_key.to_string_lossy()
        );
        let via_symlink = format!("{}/link/key", dir.path().display());
        assert_eq!(
            resolve_path(me, libc::AT_FDCWD, &via_symlink, false),
            real_key.to_string_lossy()
        );
        let missing = format!("{}/link/new-file", dir.path().display());
        assert_eq!(
            resolve_path(me, libc::AT_FDCWD, &missing, false),
            std::fs::canonicalize(&real)
                .unwrap()
                .join("new-file")
                .to_string_lossy()
        );
        assert_eq!(resolve_path(me, libc::AT_FDCWD, "nc", true), "nc");
    }
}
