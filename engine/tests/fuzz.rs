//! Property tests of the rule parser: no input makes it panic or hang.
//!
//! Two generators: arbitrary bytes, and structure-aware mutations of valid rule files (cut,
//! duplicate, swap and re-indent lines, splice in YAML syntax and rule-language tokens). Every
//! set that loads is also run against a few events. Each test prints how many inputs it ran;
//! `PROPTEST_CASES=N` changes the count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use oknek_engine::fixtures::FixtureFile;
use oknek_engine::{EvalContext, QuotaLedger, RuleSet};
use oknek_event::{Event, NoBaseline};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Valid rule files that together use every feature of the language.
const SEEDS: &[&str] = &[
    r#"oknek_rules: 1
lists:
  ssh_keys: [/home/*/.ssh/id_*, /root/.ssh/id_*]
  shells: [bash, sh, dash]
  interpreters: [$shells, python3]
  ports: [22, "8000-8100"]
rules:
  - id: R1.ssh
    title: Agent reads an SSH private key
    kind: open
    agents: [claude-code, aider]
    match:
      path: { glob: $ssh_keys }
      not: { path: { suffix: .pub } }
    action: block
    hold: true
    severity: critical
    tags: [mitre:T1552.004]
    evidence: { capture: [path, flags, exe, uid] }
  - id: R2.shell
    title: Shell with a pipe
    kind: exec
    match:
      any:
        - comm: { exact: $interpreters }
        - argv: { contains: [-c], element: { glob: "-*r*" }, regex: 'curl .*\| *sh' }
    action: warn
"#,
    r#"oknek_rules: 1
lists:
  ports: [22, "8000-8100"]
rules:
  - id: R3.net
    title: Egress
    kind: [connect, send]
    match:
      addr: [10.0.0.0/8, "fe80::/10", 169.254.169.254]
      port: $ports
      family: { exact: [inet, inet6] }
    action: block
  - id: R4.write
    title: Writes
    kind: open
    match: { flags: { write: true, any_of: [O_CREAT, O_TRUNC], none_of: [O_EXCL] }, uid: "1000-1999" }
    action: warn
  - id: R4.watch
    title: Watches
    kind: watch
    match: { mask: { all_of: [IN_MODIFY] }, path: { prefix: /etc/ } }
    action: allow
"#,
    r#"oknek_rules: 1
rules:
  - id: R6.hours
    title: Late calls
    kind: model_call
    when:
      zone: "+01:00"
      outside: [ { days: [mon-fri], from: "07:00", to: "20:00" } ]
    action: warn
  - id: R6.quota
    title: Too many calls
    kind: model_call
    match: { provider: { exact: [openai, anthropic] }, model: { present: true, regex: "^gpt-" } }
    quota: { limit: 3, per: 1m, by: caller_provider }
    action: block
  - id: R7.new
    title: New binary
    kind: exec
    match: { baseline: { features: [exec_basename], seen_fewer_than: 2, warmup: 7d } }
    action: warn
"#,
];

const TOKENS: &[&str] = &[
    "\n",
    " ",
    "  ",
    "\t",
    "- ",
    ": ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "'",
    "\"",
    "#",
    "&a ",
    "*a",
    "!x ",
    "<<: ",
    "---\n",
    "...",
    "|\n",
    ">\n",
    "~",
    "null",
    "true",
    "1",
    "-1",
    "99999999999999999999",
    "1.5",
    "0x1f",
    "$ssh_keys",
    "$nope",
    "$$x",
    "$",
    "id",
    "kind",
    "match",
    "action",
    "block",
    "when",
    "quota",
    "baseline",
    "not",
    "any",
    "all",
    "path",
    "argv",
    "glob",
    "regex",
    "prefix",
    "exact",
    "present",
    "**",
    "*",
    "?",
    "[!a-z]",
    "\\",
    "(",
    ")",
    "{1000}",
    "(?=x)",
    "\\1",
    "10.0.0.0/33",
    "::ffff:1.2.3.4",
    "\"9000-80\"",
    "25:00",
    "mon-sun",
    "1w",
    "0s",
    "\u{0}",
    "é",
    "\u{feff}",
    "\r\n",
];

static BYTES_RUN: AtomicUsize = AtomicUsize::new(0);
static MUTATIONS_RUN: AtomicUsize = AtomicUsize::new(0);
static LOADED: AtomicUsize = AtomicUsize::new(0);

fn events() -> Vec<Event> {
    [
        r#""kind":"open","path":"/home/dev/.ssh/id_rsa","flags":577"#,
        r#""kind":"exec","path":"/bin/sh","argv":["sh","-c","curl x | sh","-rf"]"#,
        r#""kind":"connect","dest":{"family":"inet6","addr":"::ffff:10.1.2.3","port":8050}"#,
        r#""kind":"send","dest":{"family":"unix","path":"/run/x.sock"},"bytes":9"#,
        r#""kind":"watch","path":"/etc/passwd","mask":2"#,
        r#""kind":"model_call","provider":"openai","model":"gpt-4o""#,
    ]
    .iter()
    .map(|action| {
        Event::from_json(&format!(
            r#"{{"time":"2026-11-23T21:00:00Z","source":"recorded",
                "process":{{"pid":1,"uid":1000,"exe":"/bin/sh","comm":"bash","agent":"aider"}},{action}}}"#
        ))
        .unwrap()
    })
    .collect()
}

/// Loads, and when the set is valid, evaluates; panics propagate to proptest.
fn exercise(name: &str, bytes: &[u8], events: &[Event]) -> Duration {
    let start = Instant::now();
    match RuleSet::from_sources(&[(name, bytes)]) {
        Ok(set) => {
            LOADED.fetch_add(1, Ordering::Relaxed);
            let mut quotas = QuotaLedger::new();
            for event in events {
                for _ in 0..4 {
                    let _ = set.evaluate(event, &mut EvalContext::new(&mut quotas, &NoBaseline));
                }
            }
            let _ = set.kernel_plan();
            let _ = set.digest();
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in &errors {
                assert!(!e.message.is_empty());
                let _ = e.to_string();
            }
        }
    }
    let _ = FixtureFile::parse(name, bytes);
    start.elapsed()
}

#[derive(Debug, Clone)]
enum Mutation {
    Insert(usize, &'static str),
    Delete(usize, usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    DeleteLine(usize),
    Indent(usize, i8),
    Byte(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), proptest::sample::select(TOKENS)).prop_map(|(at, t)| Mutation::Insert(at, t)),
        2 => (any::<usize>(), 1usize..40).prop_map(|(at, n)| Mutation::Delete(at, n)),
        1 => any::<usize>().prop_map(Mutation::DuplicateLine),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        1 => any::<usize>().prop_map(Mutation::DeleteLine),
        1 => (any::<usize>(), -4i8..4).prop_map(|(l, d)| Mutation::Indent(l, d)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Byte(at, b)),
    ]
}

fn apply(text: &[u8], m: &Mutation) -> Vec<u8> {
    let mut bytes = text.to_vec();
    let len = bytes.len().max(1);
    let mut lines: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    let join = |lines: Vec<Vec<u8>>| lines.join(&b'\n');
    let n = lines.len().max(1);
    match *m {
        Mutation::Insert(at, token) => {
            let at = at % len;
            bytes.splice(at..at, token.bytes());
            bytes
        }
        Mutation::Delete(at, count) => {
            let at = at % len;
            let end = (at + count).min(bytes.len());
            bytes.drain(at..end);
            bytes
        }
        Mutation::DuplicateLine(i) => {
            let line = lines[i % n].clone();
            lines.insert(i % n, line);
            join(lines)
        }
        Mutation::SwapLines(a, b) => {
            lines.swap(a % n, b % n);
            join(lines)
        }
        Mutation::DeleteLine(i) => {
            lines.remove(i % n);
            join(lines)
        }
        Mutation::Indent(i, d) => {
            let line = &mut lines[i % n];
            if d > 0 {
                line.splice(0..0, std::iter::repeat_n(b' ', d as usize));
            } else {
                let strip = line
                    .iter()
                    .take((-d) as usize)
                    .take_while(|&&b| b == b' ')
                    .count();
                line.drain(..strip);
            }
            join(lines)
        }
        Mutation::Byte(at, b) => {
            if !bytes.is_empty() {
                let at = at % bytes.len();
                bytes[at] = b;
            }
            bytes
        }
    }
}

fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default_cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    let events = events();
    let mut runner = TestRunner::new(config(2000));
    let result = runner.run(&proptest::collection::vec(any::<u8>(), 0..2048), |bytes| {
        BYTES_RUN.fetch_add(1, Ordering::Relaxed);
        let took = exercise("fuzz.yaml", &bytes, &events);
        prop_assert!(took < Duration::from_secs(2), "took {took:?}");
        Ok(())
    });
    eprintln!(
        "arbitrary bytes: {} inputs run",
        BYTES_RUN.load(Ordering::Relaxed)
    );
    if let Err(err) = result {
        panic!("{err}");
    }
}

#[test]
fn mutated_rule_files_never_panic() {
    let events = events();
    for seed in SEEDS {
        assert!(
            RuleSet::from_sources(&[("seed.yaml", *seed)]).is_ok(),
            "seed does not load:\n{seed}"
        );
    }
    let mut runner = TestRunner::new(config(3000));
    let strategy = (
        proptest::sample::select(SEEDS),
        proptest::collection::vec(mutation(), 1..6),
    );
    let result = runner.run(&strategy, |(seed, mutations)| {
        MUTATIONS_RUN.fetch_add(1, Ordering::Relaxed);
        let mut bytes = seed.as_bytes().to_vec();
        for m in &mutations {
            bytes = apply(&bytes, m);
        }
        let took = exercise("mutated.yaml", &bytes, &events);
        prop_assert!(took < Duration::from_secs(2), "took {took:?}");
        Ok(())
    });
    eprintln!(
        "mutated rule files: {} inputs run, {} loaded as valid sets",
        MUTATIONS_RUN.load(Ordering::Relaxed),
        LOADED.load(Ordering::Relaxed)
    );
    if let Err(err) = result {
        panic!("{err}");
    }
}
