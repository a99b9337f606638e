//! The rule language end to end: rule text in, verdicts out.

use oknek_engine::{
    Engine, EvalContext, LoadErrors, QuotaBy, QuotaLedger, RuleSet, Severity, default_capture,
};
use oknek_event::{Event, Feature, Field, Kind, MemoryBaseline, NoBaseline, Verdict};

fn set(rules: &str) -> RuleSet {
    let text = format!("oknek_rules: 1\n{rules}");
    RuleSet::from_sources(&[("test.yaml", text.as_str())]).unwrap_or_else(|e| panic!("{e}"))
}

fn errors(rules: &str) -> LoadErrors {
    let text = format!("oknek_rules: 1\n{rules}");
    match RuleSet::from_sources(&[("test.yaml", text.as_str())]) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

/// An event of `agent` (or none) with the given kind-specific JSON fields.
fn event(agent: Option<&str>, action: &str) -> Event {
    event_at("2026-11-23T10:00:00Z", agent, action)
}

fn event_at(time: &str, agent: Option<&str>, action: &str) -> Event {
    let agent = agent.map_or(String::new(), |a| format!(r#","agent":"{a}""#));
    Event::from_json(&format!(
        r#"{{"time":"{time}","source":"recorded",
            "process":{{"pid":42,"ppid":1,"uid":1000,"gid":1000,"exe":"/usr/bin/bash","comm":"bash"{agent}}},
            {action}}}"#
    ))
    .unwrap_or_else(|e| panic!("{e}: {action}"))
}

fn open(path: &str) -> Event {
    event(
        Some("aider"),
        &format!(r#""kind":"open","path":"{path}","flags":0"#),
    )
}

fn exec(path: &str, argv: &[&str]) -> Event {
    let argv = serde_json::to_string(argv).unwrap();
    event(
        Some("aider"),
        &format!(r#""kind":"exec","path":"{path}","argv":{argv}"#),
    )
}

fn connect(addr: &str, port: u16) -> Event {
    let family = if addr.contains(':') { "inet6" } else { "inet" };
    event(
        Some("aider"),
        &format!(
            r#""kind":"connect","dest":{{"family":"{family}","addr":"{addr}","port":{port}}}"#
        ),
    )
}

fn verdict(set: &RuleSet, event: &Event) -> Verdict {
    let mut quotas = QuotaLedger::new();
    set.evaluate(event, &mut EvalContext::new(&mut quotas, &NoBaseline))
        .verdict
}

fn fired(set: &RuleSet, event: &Event) -> Vec<String> {
    let mut quotas = QuotaLedger::new();
    set.evaluate(event, &mut EvalContext::new(&mut quotas, &NoBaseline))
        .fired
        .iter()
        .map(|f| f.rule_id.to_string())
        .collect()
}

#[test]
fn strongest_action_wins_and_first_such_rule_decides() {
    let s = set(r#"
rules:
  - { id: a, title: t, kind: open, action: allow }
  - { id: w, title: t, kind: open, action: warn }
  - { id: b1, title: t, kind: open, match: { path: /etc/shadow }, action: block, hold: true }
  - { id: b2, title: t, kind: open, match: { path: { prefix: /etc/ } }, action: block }
"#);
    let mut quotas = QuotaLedger::new();
    let d = s.evaluate(
        &open("/etc/shadow"),
        &mut EvalContext::new(&mut quotas, &NoBaseline),
    );
    assert_eq!(d.verdict, Verdict::Block);
    let ids: Vec<&str> = d.fired.iter().map(|f| &*f.rule_id).collect();
    assert_eq!(ids, ["a", "w", "b1", "b2"]);
    assert_eq!(&*d.deciding_rule().unwrap().rule_id, "b1");
    assert!(d.hold());
    let d = s.evaluate(
        &open("/etc/passwd"),
        &mut EvalContext::new(&mut quotas, &NoBaseline),
    );
    assert_eq!(&*d.deciding_rule().unwrap().rule_id, "b2");
    assert!(!d.hold());
    let d = s.evaluate(
        &open("/tmp/x"),
        &mut EvalContext::new(&mut quotas, &NoBaseline),
    );
    assert_eq!((d.verdict, d.deciding), (Verdict::Warn, Some(1)));
    // No rule fired: allow, nothing decides.
    let d = s.evaluate(
        &exec("/bin/ls", &["ls"]),
        &mut EvalContext::new(&mut quotas, &NoBaseline),
    );
    assert_eq!(
        (d.verdict, d.deciding, d.fired.len()),
        (Verdict::Allow, None, 0)
    );
}

#[test]
fn non_agents_and_other_agents_are_never_matched() {
    let s = set(r#"
rules:
  - { id: all, title: t, kind: open, action: block }
  - { id: codex-only, title: t, kind: open, agents: [codex], action: warn }
"#);
    let mut e = open("/etc/shadow");
    assert_eq!(fired(&s, &e), ["all"]);
    e.process.agent = Some("codex".into());
    assert_eq!(fired(&s, &e), ["all", "codex-only"]);
    e.process.agent = None;
    assert_eq!(verdict(&s, &e), Verdict::Allow);
}

#[test]
fn string_tests() {
    let s = set(r#"
rules:
  - id: ssh
    title: t
    kind: open
    match:
      path: { glob: /home/*/.ssh/id_* }
      not: { path: { suffix: .pub } }
    action: block
  - { id: base, title: t, kind: exec, match: { path: { basename: [nc, ncat] } }, action: block }
  - { id: conf, title: t, kind: open, match: { path: { prefix: /etc/, suffix: .conf } }, action: warn }
  - { id: re, title: t, kind: open, match: { path: { regex: "^/tmp/[0-9]+$" } }, action: warn }
  - { id: has, title: t, kind: open, match: { path: { contains: /.git/ } }, action: warn }
  - { id: list, title: t, kind: exec, match: { comm: [bash, sh] }, action: allow }
"#);
    assert_eq!(
        verdict(&s, &open("/home/dev/.ssh/id_ed25519")),
        Verdict::Block
    );
    assert_eq!(
        verdict(&s, &open("/home/dev/.ssh/id_ed25519.pub")),
        Verdict::Allow
    );
    assert_eq!(verdict(&s, &open("/home/a/b/.ssh/id_rsa")), Verdict::Allow);
    assert_eq!(verdict(&s, &exec("/usr/bin/nc", &["nc"])), Verdict::Block);
    assert_eq!(verdict(&s, &exec("/usr/bin/ncat2", &["x"])), Verdict::Allow);
    assert_eq!(fired(&s, &open("/etc/x.conf")), ["conf"]);
    assert_eq!(fired(&s, &open("/etc/x.conf.bak")), Vec::<String>::new());
    assert_eq!(fired(&s, &open("/tmp/123")), ["re"]);
    assert_eq!(fired(&s, &open("/tmp/123a")), Vec::<String>::new());
    assert_eq!(fired(&s, &open("/src/.git/config")), ["has"]);
    assert_eq!(fired(&s, &exec("/bin/x", &[])), ["list"]);
}

#[test]
fn absent_fields_fail_tests_and_present_tests_absence() {
    let s = set(r#"
rules:
  - { id: m, title: t, kind: model_call, match: { model: { prefix: gpt } }, action: warn }
  - { id: not-m, title: t, kind: model_call, match: { not: { model: { prefix: gpt } } }, action: allow }
  - { id: no-model, title: t, kind: model_call, match: { model: { present: false } }, action: block }
  - { id: no-port, title: t, kind: model_call, match: { port: { present: false } }, action: allow }
"#);
    let call = event(Some("aider"), r#""kind":"model_call","provider":"openai""#);
    assert_eq!(fired(&s, &call), ["not-m", "no-model", "no-port"]);
    let call = event(
        Some("aider"),
        r#""kind":"model_call","provider":"openai","model":"gpt-4o","dest":{"family":"inet","addr":"1.2.3.4","port":443}"#,
    );
    assert_eq!(fired(&s, &call), ["m"]);
}

#[test]
fn argv_tests() {
    let s = set(r#"
rules:
  - id: rm
    title: t
    kind: exec
    match:
      path: { basename: rm }
      argv: { contains: [-rf, -fr], element: { exact: ["/", "~"] } }
    action: block
  - { id: all, title: t, kind: exec, match: { argv: { contains_all: [push, --force] } }, action: warn }
  - { id: el, title: t, kind: exec, match: { argv: { element: { glob: "-*r*", prefix: "-" } } }, action: allow }
  - { id: re, title: t, kind: exec, match: { argv: { regex: 'curl .*\| *sh' } }, action: block }
"#);
    assert_eq!(
        fired(&s, &exec("/bin/rm", &["rm", "-rf", "/"])),
        ["rm", "el"]
    );
    assert_eq!(
        fired(&s, &exec("/bin/rm", &["rm", "-rf", "./build"])),
        ["el"]
    );
    assert_eq!(
        fired(&s, &exec("/usr/bin/git", &["git", "push", "--force"])),
        ["all", "el"]
    );
    assert_eq!(
        fired(&s, &exec("/usr/bin/git", &["git", "push"])),
        Vec::<String>::new()
    );
    assert_eq!(
        fired(&s, &exec("/bin/sh", &["sh", "-c", "curl", "x", "|", "sh"])),
        ["re"]
    );
}

#[test]
fn numbers_addresses_and_flags() {
    let s = set(r#"
rules:
  - { id: ports, title: t, kind: connect, match: { port: [22, "8000-8100"] }, action: warn }
  - { id: imds, title: t, kind: connect, match: { addr: [169.254.169.254, "fd00:ec2::254"] }, action: block }
  - { id: private, title: t, kind: connect, match: { addr: 10.0.0.0/8 }, action: allow }
  - { id: root, title: t, kind: open, match: { uid: 0 }, action: allow }
  - { id: users, title: t, kind: open, match: { uid: "1000-1999" }, action: allow }
  - { id: write, title: t, kind: open, match: { flags: { write: true } }, action: warn }
  - { id: creat, title: t, kind: open, match: { flags: { any_of: [O_CREAT], none_of: [O_EXCL] } }, action: warn }
  - { id: watch, title: t, kind: watch, match: { mask: { all_of: [IN_MODIFY, IN_CLOSE_WRITE] } }, action: warn }
"#);
    assert_eq!(fired(&s, &connect("192.0.2.1", 8050)), ["ports"]);
    assert_eq!(fired(&s, &connect("192.0.2.1", 8101)), Vec::<String>::new());
    assert_eq!(fired(&s, &connect("169.254.169.254", 80)), ["imds"]);
    assert_eq!(fired(&s, &connect("fd00:ec2::254", 80)), ["imds"]);
    assert_eq!(fired(&s, &connect("::ffff:10.1.2.3", 80)), ["private"]);
    assert_eq!(fired(&s, &connect("11.1.2.3", 80)), Vec::<String>::new());
    assert_eq!(fired(&s, &open("/x")), ["users"]);
    let mut e = event(Some("aider"), r#""kind":"open","path":"/x","flags":577"#); // O_WRONLY|O_CREAT|O_TRUNC
    e.process.uid = 0;
    assert_eq!(fired(&s, &e), ["root", "write", "creat"]);
    let e = event(Some("aider"), r#""kind":"watch","path":"/x","mask":10"#);
    assert_eq!(fired(&s, &e), ["watch"]);
    let e = event(Some("aider"), r#""kind":"watch","path":"/x","mask":2"#);
    assert_eq!(fired(&s, &e), Vec::<String>::new());
}

#[test]
fn lists_are_shared_spliced_and_escaped() {
    let lists = "oknek_rules: 1\nlists:\n  shells: [bash, sh]\n  interpreters: [$shells, python3]\n  ports: [22, \"8000-8001\"]\n";
    let rules = r#"oknek_rules: 1
rules:
  - { id: i, title: t, kind: exec, match: { comm: { exact: $interpreters } }, action: warn }
  - { id: d, title: t, kind: exec, match: { comm: $$weird }, action: block }
  - { id: p, title: t, kind: connect, match: { port: $ports }, action: warn }
"#;
    let s = RuleSet::from_sources(&[("00-lists.yaml", lists), ("10-rules.yaml", rules)])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut e = exec("/usr/bin/python3", &[]);
    e.process.comm = "python3".into();
    assert_eq!(fired(&s, &e), ["i"]);
    e.process.comm = "sh".into();
    assert_eq!(fired(&s, &e), ["i"]);
    e.process.comm = "$weird".into();
    assert_eq!(fired(&s, &e), ["d"]);
    assert_eq!(fired(&s, &connect("1.2.3.4", 8001)), ["p"]);
}

#[test]
fn time_windows() {
    let s = set(r#"
rules:
  - id: late
    title: t
    kind: model_call
    when: { zone: "+01:00", outside: [ { days: [mon-fri], from: "07:00", to: "20:00" } ] }
    action: warn
  - id: night
    title: t
    kind: model_call
    when: { inside: [ { days: [fri], from: "22:00", to: "06:00" } ] }
    action: block
"#);
    let call = |t: &str| {
        event_at(
            t,
            Some("aider"),
            r#""kind":"model_call","provider":"openai""#,
        )
    };
    // Monday 2026-11-23.
    assert_eq!(
        fired(&s, &call("2026-11-23T06:00:00Z")),
        Vec::<String>::new()
    ); // 07:00 local
    assert_eq!(fired(&s, &call("2026-11-23T05:59:00Z")), ["late"]);
    assert_eq!(fired(&s, &call("2026-11-23T19:00:00Z")), ["late"]); // 20:00 local
    assert_eq!(fired(&s, &call("2026-11-28T01:00:00Z")), ["late", "night"]); // Saturday 01:00
    assert_eq!(fired(&s, &call("2026-11-29T01:00:00Z")), ["late"]); // Sunday 01:00
}

#[test]
fn quotas_fire_beyond_the_limit_and_survive_reload() {
    let rules = r#"
rules:
  - id: q
    title: t
    kind: model_call
    match: { provider: openai }
    quota: { limit: 2, per: 1m, by: caller_provider }
    action: block
"#;
    let engine = Engine::new(set(rules));
    let mut quotas = QuotaLedger::new();
    let call = |t: &str| {
        event_at(
            t,
            Some("aider"),
            r#""kind":"model_call","provider":"openai""#,
        )
    };
    let judge = |engine: &Engine, quotas: &mut QuotaLedger, t: &str| {
        engine
            .current()
            .evaluate(&call(t), &mut EvalContext::new(quotas, &NoBaseline))
    };
    assert_eq!(
        judge(&engine, &mut quotas, "2026-11-23T10:00:00Z").verdict,
        Verdict::Allow
    );
    assert_eq!(
        judge(&engine, &mut quotas, "2026-11-23T10:00:01Z").verdict,
        Verdict::Allow
    );
    let d = judge(&engine, &mut quotas, "2026-11-23T10:00:02Z");
    assert_eq!(d.verdict, Verdict::Block);
    let q = d.fired[0].quota.as_ref().unwrap();
    assert_eq!(
        (q.limit, q.per_secs, q.by, q.remaining),
        (2, 60, QuotaBy::CallerProvider, 0)
    );
    assert_eq!(q.key, "aider|1000|/usr/bin/bash|openai");

    // Same id and quota: the bucket stays empty across a reload.
    let reloaded = set(&format!(
        "{rules}  - {{ id: other, title: t, kind: open, action: warn }}\n"
    ));
    engine.reload(Ok(reloaded), &mut quotas).unwrap();
    assert_eq!(
        judge(&engine, &mut quotas, "2026-11-23T10:00:03Z").verdict,
        Verdict::Block
    );
    // A changed quota starts afresh.
    engine
        .reload(Ok(set(&rules.replace("limit: 2", "limit: 3"))), &mut quotas)
        .unwrap();
    assert_eq!(
        judge(&engine, &mut quotas, "2026-11-23T10:00:04Z").verdict,
        Verdict::Allow
    );
    // After the refill (2 per minute), events pass again.
    let mut fresh = QuotaLedger::new();
    for t in ["10:00:00", "10:00:00", "10:00:31"] {
        assert_eq!(
            judge(&engine, &mut fresh, &format!("2026-11-23T{t}Z")).verdict,
            Verdict::Allow,
            "{t}"
        );
    }
}

#[test]
fn baselines_hold_only_after_warmup_for_new_values() {
    let s = set(r#"
rules:
  - id: new
    title: t
    kind: [exec, open]
    match: { baseline: { features: [exec_basename, open_dir], seen_fewer_than: 2, warmup: 7d } }
    action: warn
"#);
    let mut baseline = MemoryBaseline::default();
    let mut quotas = QuotaLedger::new();
    let nc = exec("/usr/bin/nc", &["nc"]);
    let mut judge = |b: &MemoryBaseline, e: &Event| {
        s.evaluate(e, &mut EvalContext::new(&mut quotas, b)).verdict
    };
    // No history at all, then history shorter than the warmup: never holds.
    assert_eq!(judge(&baseline, &nc), Verdict::Allow);
    baseline
        .since
        .insert("aider".into(), "2026-11-20T00:00:00Z".parse().unwrap());
    assert_eq!(judge(&baseline, &nc), Verdict::Allow);
    baseline
        .since
        .insert("aider".into(), "2026-11-01T00:00:00Z".parse().unwrap());
    assert_eq!(judge(&baseline, &nc), Verdict::Warn);
    baseline
        .counts
        .insert(("aider".into(), Feature::ExecBasename, "nc".into()), 1);
    assert_eq!(judge(&baseline, &nc), Verdict::Warn); // seen once < 2
    baseline
        .counts
        .insert(("aider".into(), Feature::ExecBasename, "nc".into()), 2);
    assert_eq!(judge(&baseline, &nc), Verdict::Allow);
    assert_eq!(judge(&baseline, &open("/home/dev/src/x")), Verdict::Warn);
}

#[test]
fn fired_rules_carry_what_evidence_needs() {
    let s = set(r#"
rules:
  - id: cap
    title: Captures
    kind: [connect, send]
    action: warn
    severity: high
    tags: [mitre:T1071]
    evidence: { capture: [addr, port, exe] }
  - { id: def, title: Default, kind: [connect, send], action: allow }
"#);
    let mut quotas = QuotaLedger::new();
    let d = s.evaluate(
        &connect("1.2.3.4", 1),
        &mut EvalContext::new(&mut quotas, &NoBaseline),
    );
    let cap = &d.fired[0];
    assert_eq!((&*cap.title, cap.severity), ("Captures", Severity::High));
    assert_eq!(&*cap.tags, ["mitre:T1071".to_owned()]);
    assert_eq!(&*cap.capture, [Field::Addr, Field::Port, Field::Exe]);
    assert_eq!(d.fired[1].capture, default_capture(Kind::Connect));
    assert_eq!(
        &*default_capture(Kind::Open),
        [Field::Path, Field::Flags, Field::Mode]
    );
    assert_eq!(d.fired[1].severity, Severity::Medium);
}

#[test]
fn digest_ignores_formatting_comments_key_order_and_file_split() {
    let one = r#"oknek_rules: 1
lists:
  keys: [/a, /b]
rules:
  - { id: a, title: A, kind: open, match: { path: $keys }, action: block }
  - { id: b, title: B, kind: [send, connect], action: warn, severity: medium }
"#;
    let lists = "oknek_rules: 1\nlists: { keys: [\"/a\", '/b'] }\n";
    let first = r#"
# A comment.
oknek_rules: 1
rules:
  - action: block
    match:
      path: $keys
    kind: open
    title: A
    id: a
"#;
    let second =
        "oknek_rules: 1\nrules: [ { id: b, title: B, kind: [connect, send], action: warn } ]\n";
    let a = RuleSet::from_sources(&[("all.yaml", one)]).unwrap();
    let b =
        RuleSet::from_sources(&[("0.yaml", lists), ("1.yaml", first), ("2.yaml", second)]).unwrap();
    assert_eq!(a.digest(), b.digest());
    assert!(a.digest().starts_with("sha256:") && a.digest().len() == 7 + 64);
    // Any change of meaning changes it: order, a value, a list item.
    let swapped =
        RuleSet::from_sources(&[("0.yaml", lists), ("2.yaml", second), ("1.yaml", first)]).unwrap();
    assert_ne!(a.digest(), swapped.digest());
    let edited =
        RuleSet::from_sources(&[("all.yaml", one.replace("[/a, /b]", "[/a, /c]"))]).unwrap();
    assert_ne!(a.digest(), edited.digest());
}

#[test]
fn all_errors_of_a_set_are_reported_with_positions() {
    let e = errors(
        r#"rules:
  - id: one
    title: t
    kind: opn
    action: block
  - id: two
    title: t
    kind: open
    match: { pat: /x }
    action: warn
    hold: true
"#,
    );
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("  hint")).collect();
    assert_eq!(
        lines,
        [
            "test.yaml:5:11: error: unknown kind `opn`",
            "test.yaml:10:14: error: unknown field `pat`",
            "test.yaml:12:11: error: `hold: true` on a rule whose action is not block",
        ],
        "{text}"
    );
    assert!(text.contains("hint: did you mean `open`?"), "{text}");
    assert!(text.contains("hint: did you mean `path`?"), "{text}");
}

#[test]
fn cross_file_errors_name_both_places() {
    let a = "oknek_rules: 1\nlists: { l: [a] }\nrules:\n  - { id: dup, title: t, kind: open, action: warn }\n";
    let b = "oknek_rules: 1\nlists:\n  l: [b]\nrules:\n  - { id: dup, title: t, kind: open, match: { comm: $nope }, action: warn }\n";
    let e = RuleSet::from_sources(&[("a.yaml", a), ("b.yaml", b)]).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("b.yaml:3:3: error: duplicate list `l` (first defined at a.yaml:2:10)"),
        "{text}"
    );
    assert!(
        text.contains("b.yaml:5:11: error: duplicate rule id `dup` (first defined at a.yaml:4:11)"),
        "{text}"
    );
    assert!(
        text.contains("b.yaml:5:53: error: undefined list `$nope`"),
        "{text}"
    );
}

#[test]
fn a_broken_reload_keeps_the_running_set() {
    let good = set("rules:\n  - { id: a, title: t, kind: open, action: block }\n");
    let digest = good.digest().to_owned();
    let engine = Engine::new(good);
    let before = engine.current();
    let mut quotas = QuotaLedger::new();
    let broken = RuleSet::from_sources(&[("x.yaml", "oknek_rules: 1\nrules: [ { id: a } ]\n")]);
    assert!(engine.reload(broken, &mut quotas).is_err());
    assert_eq!(engine.current().digest(), digest);
    // A reader holding the old set keeps it whole while a new one is swapped in.
    let newer = set("rules:\n  - { id: b, title: t, kind: open, action: warn }\n");
    let old = engine.replace(newer);
    assert_eq!(old.digest(), digest);
    assert_eq!(before.rules()[0].id(), "a");
    assert_eq!(engine.current().rules()[0].id(), "b");
}

#[test]
fn reload_from_a_directory() {
    let dir = std::env::temp_dir().join(format!("oknek-engine-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("fixtures")).unwrap();
    std::fs::write(
        dir.join("10-a.yaml"),
        "oknek_rules: 1\nrules:\n  - { id: a, title: t, kind: open, action: block }\n",
    )
    .unwrap();
    std::fs::write(dir.join("fixtures/ignored.yaml"), "not: [rules").unwrap();
    std::fs::write(dir.join("README.md"), "ignored").unwrap();
    let engine = Engine::new(RuleSet::empty());
    let mut quotas = QuotaLedger::new();
    let set = engine.reload_dir(&dir, &mut quotas).unwrap();
    assert_eq!(set.len(), 1);
    std::fs::write(dir.join("20-b.yml"), "oknek_rules: 2\n").unwrap();
    let err = engine.reload_dir(&dir, &mut quotas).unwrap_err();
    assert!(
        err.to_string()
            .contains("20-b.yml:1:14: error: unsupported rule language version 2"),
        "{err}"
    );
    assert_eq!(engine.current().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn digest_is_sha256_of_the_documented_canonical_form() {
    use sha2::{Digest, Sha256};
    let text = r#"oknek_rules: 1
lists:
  zeta: [b, $alpha]
  alpha: ["a\"q", 22]
rules:
  - id: R1
    title: "Tab\there"
    kind: [send, connect]
    agents: aider
    match: { comm: $$alpha, addr: 10.0.0.0/8 }
    action: block
    tags: [x]
"#;
    // Lists by name, items as written; the rule's keys sorted, kind and agents as lists in
    // canonical order, severity and hold made explicit, strings as written (`$$` unexpanded).
    let canonical = concat!(
        r#"{"lists":{"alpha":["a\"q",22],"zeta":["b","$alpha"]},"oknek_rules":1,"rules":["#,
        r#"{"action":"block","agents":["aider"],"hold":false,"id":"R1","kind":["connect","send"],"#,
        r#""match":{"addr":"10.0.0.0/8","comm":"$$alpha"},"severity":"medium","tags":["x"],"#,
        r#""title":"Tab\there"}]}"#
    );
    let expected = format!("sha256:{:x}", Sha256::digest(canonical.as_bytes()));
    let set = RuleSet::from_sources(&[("d.yaml", text)]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.digest(), expected);
}

#[test]
fn sets_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<RuleSet>();
    shareable::<Engine>();
    shareable::<QuotaLedger>();
    shareable::<LoadErrors>();
}

#[test]
fn backtracking_bombs_run_in_linear_time() {
    let s = set(r#"
rules:
  - { id: redos, title: t, kind: exec, match: { argv: { regex: '^(a+)+$' } }, action: warn }
  - { id: glob, title: t, kind: open, match: { path: { glob: "*a*a*a*a*a*a*a*a*b" } }, action: warn }
"#);
    let evil = format!("{}!", "a".repeat(50_000));
    let start = std::time::Instant::now();
    assert_eq!(verdict(&s, &exec("/bin/x", &[&evil])), Verdict::Allow);
    assert_eq!(verdict(&s, &open(&"a".repeat(50_000))), Verdict::Allow);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}
