//! Quotas in model tokens: calls take nothing, the usage reported afterwards is charged.

use oknek_engine::{EvalContext, QuotaLedger, QuotaUnit, RuleSet};
use oknek_event::{Event, MemoryBaseline, NoBaseline, Verdict};

fn set(rules: &str) -> RuleSet {
    let text = format!("oknek_rules: 1\n{rules}");
    RuleSet::from_sources(&[("test.yaml", text.as_str())]).unwrap_or_else(|e| panic!("{e}"))
}

fn call(time: &str, agent: &str, provider: &str, model: &str) -> Event {
    Event::from_json(&format!(
        r#"{{"time":"{time}","source":"gateway",
            "process":{{"pid":42,"uid":1000,"exe":"/usr/bin/python3","agent":"{agent}"}},
            "kind":"model_call","provider":"{provider}","model":"{model}"}}"#
    ))
    .unwrap()
}

const BUDGET: &str = r#"
rules:
  - id: budget
    title: token budget
    kind: model_call
    agents: [aider]
    match: { provider: openai }
    quota: { limit: 50, per: 10s, by: caller, unit: tokens }
    action: block
  - id: calls
    title: call quota
    kind: model_call
    quota: { limit: 100, per: 10s }
    action: block
"#;

#[test]
fn calls_pass_until_the_usage_overspends_then_refill() {
    let s = set(BUDGET);
    let mut quotas = QuotaLedger::new();
    let t0 = "2026-11-23T10:00:00Z";
    let judge = |quotas: &mut QuotaLedger, t: &str| {
        s.evaluate(
            &call(t, "aider", "openai", "m"),
            &mut EvalContext::new(quotas, &NoBaseline),
        )
    };
    let charge = |quotas: &mut QuotaLedger, t: &str, tokens: u64| {
        s.charge_usage(
            &call(t, "aider", "openai", "m"),
            tokens,
            &mut EvalContext::new(quotas, &NoBaseline),
        )
    };
    // Checking a tokens quota takes nothing: many calls pass on a full bucket.
    for _ in 0..5 {
        assert_eq!(judge(&mut quotas, t0).verdict, Verdict::Allow);
    }
    let charged = charge(&mut quotas, t0, 30);
    assert_eq!(charged.len(), 1, "only the tokens quota is charged");
    assert_eq!(charged[0].rule_id, "budget");
    let q = &charged[0].quota;
    assert_eq!(
        (q.remaining, q.debt, q.limit, q.unit),
        (20, 0, 50, QuotaUnit::Tokens)
    );
    assert_eq!(q.key, "aider|1000|/usr/bin/python3");
    assert_eq!(judge(&mut quotas, t0).verdict, Verdict::Allow);
    // A large response is paid for: the bucket goes into debt.
    let q = &charge(&mut quotas, t0, 45)[0].quota;
    assert_eq!((q.remaining, q.debt), (0, 25));
    let d = judge(&mut quotas, t0);
    assert_eq!(d.verdict, Verdict::Block);
    let state = d.fired[0].quota.as_ref().unwrap();
    assert_eq!(
        (&*d.fired[0].rule_id, state.debt, state.unit),
        ("budget", 25, QuotaUnit::Tokens)
    );
    // 5 tokens per second come back: after 5 s the debt is paid, after 5.2 s one token is left.
    assert_eq!(
        judge(&mut quotas, "2026-11-23T10:00:05Z").verdict,
        Verdict::Block
    );
    assert_eq!(
        judge(&mut quotas, "2026-11-23T10:00:05.200Z").verdict,
        Verdict::Allow
    );
    // The calls quota counted every call and was never charged tokens.
    assert_eq!(
        quotas.remaining(
            "calls",
            "|1000|/usr/bin/python3",
            "2026-11-23T10:00:00Z".parse().unwrap()
        ),
        None
    );
    assert!(
        quotas
            .remaining(
                "calls",
                "aider|1000|/usr/bin/python3",
                "2026-11-23T10:00:00Z".parse().unwrap()
            )
            .unwrap()
            >= 90
    );
}

#[test]
fn debt_is_bounded_by_one_bucket() {
    let s = set(BUDGET);
    let mut quotas = QuotaLedger::new();
    let t0 = "2026-11-23T10:00:00Z";
    let e = call(t0, "aider", "openai", "m");
    let q = &s.charge_usage(
        &e,
        1_000_000,
        &mut EvalContext::new(&mut quotas, &NoBaseline),
    )[0];
    assert_eq!((q.quota.remaining, q.quota.debt), (0, 50));
    let q = &s.charge_usage(
        &e,
        u64::MAX,
        &mut EvalContext::new(&mut quotas, &NoBaseline),
    )[0];
    assert_eq!(q.quota.debt, 50);
    // From the deepest debt, one period brings the bucket back to zero and a bit more to one.
    let later = call("2026-11-23T10:00:10.200Z", "aider", "openai", "m");
    let d = s.evaluate(&later, &mut EvalContext::new(&mut quotas, &NoBaseline));
    assert_eq!(d.verdict, Verdict::Allow);
}

#[test]
fn usage_is_charged_only_where_the_rule_applies() {
    let s = set(r#"
rules:
  - id: gpt
    title: t
    kind: model_call
    agents: [aider]
    match: { model: { glob: "gpt-*" } }
    when: { zone: UTC, inside: [ { days: [mon], from: "09:00", to: "17:00" } ] }
    quota: { limit: 10, per: 1h, unit: tokens }
    action: warn
"#);
    let mut quotas = QuotaLedger::new();
    let mut charge = |e: &Event| {
        s.charge_usage(
            e,
            5,
            &mut EvalContext::new(&mut quotas, &MemoryBaseline::default()),
        )
        .len()
    };
    // Monday 10:00 UTC.
    assert_eq!(
        charge(&call("2026-11-23T10:00:00Z", "aider", "openai", "gpt-4o")),
        1
    );
    assert_eq!(
        charge(&call("2026-11-23T10:00:00Z", "aider", "openai", "claude")),
        0
    );
    assert_eq!(
        charge(&call("2026-11-23T10:00:00Z", "codex", "openai", "gpt-4o")),
        0
    );
    assert_eq!(
        charge(&call("2026-11-23T18:00:00Z", "aider", "openai", "gpt-4o")),
        0
    );
    let no_agent = Event::from_json(
        r#"{"time":"2026-11-23T10:00:00Z","source":"gateway","process":{"pid":1,"uid":0},
            "kind":"model_call","provider":"openai","model":"gpt-4o"}"#,
    )
    .unwrap();
    assert_eq!(charge(&no_agent), 0);
}

#[test]
fn the_unit_is_part_of_the_digest_and_the_ledger_key() {
    let calls = set(&BUDGET.replace(", unit: tokens", ""));
    let tokens = set(BUDGET);
    assert_ne!(calls.digest(), tokens.digest());
    assert_eq!(
        calls.rule("budget").unwrap().quota().unwrap().unit,
        QuotaUnit::Calls
    );
    // Switching a rule's unit starts its buckets afresh.
    let mut quotas = QuotaLedger::new();
    let e = call("2026-11-23T10:00:00Z", "aider", "openai", "m");
    tokens.charge_usage(&e, 10, &mut EvalContext::new(&mut quotas, &NoBaseline));
    assert_eq!(quotas.len(), 1);
    quotas.retain_for(&calls);
    assert_eq!(quotas.len(), 0);
}

#[test]
fn tokens_quotas_stay_out_of_the_kernel() {
    let s = set(BUDGET);
    let plan = s.model_connect_plan(&[oknek_engine::ProviderRef {
        name: "openai",
        api: "openai",
    }]);
    let budget = plan.iter().find(|r| r.id == "budget").unwrap();
    assert!(
        matches!(&budget.enforceability, oknek_engine::Enforceability::Userspace { reasons }
            if reasons.iter().any(|r| r.contains("tokens"))),
        "{budget:?}"
    );
    let calls = plan.iter().find(|r| r.id == "calls").unwrap();
    assert_eq!(calls.enforceability, oknek_engine::Enforceability::Kernel);
}
