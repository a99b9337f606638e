//! The offline pipeline: recorded events → rules → signed evidence → verification.

use std::path::Path;
use std::process::Command;

fn oknek(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_oknek"))
        .args(args)
        .output()
        .expect("oknek runs")
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn simulated_session_becomes_verifiable_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    let sim = oknek(&[
        "simulate",
        "--rules",
        &repo("rules"),
        "--events",
        &repo("rules/examples/agent-session.jsonl"),
        "--state-dir",
        state,
    ]);
    assert!(
        sim.status.success(),
        "{}",
        String::from_utf8_lossy(&sim.stderr)
    );

    let verify = oknek(&["verify", "--state-dir", state]);
    assert!(
        verify.status.success(),
        "verify failed: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    let events = oknek(&[
        "events",
        "--state-dir",
        state,
        "--json",
        "--verdict",
        "block",
    ]);
    assert!(events.status.success());
    let text = String::from_utf8_lossy(&events.stdout);
    let rules: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("NDJSON");
            v["bundle"]["rule"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    for expected in [
        "R1.ssh",
        "R2.revshell",
        "R4.shellrc",
        "R6.provider",
        "R6.model",
    ] {
        assert!(
            rules.iter().any(|r| r == expected),
            "{expected} missing from {rules:?}"
        );
    }

    // A second replay continues the same chain, and the store still verifies.
    let again = oknek(&[
        "simulate",
        "--rules",
        &repo("rules"),
        "--events",
        &repo("rules/examples/agent-session.jsonl"),
        "--state-dir",
        state,
    ]);
    assert!(again.status.success());
    let verify = oknek(&["verify", "--state-dir", state]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
