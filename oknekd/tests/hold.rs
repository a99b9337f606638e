//! `hold: true`: a block that also stops the agent until an operator decides, with
//! `oknek allow PID` (continue) or `oknek block PID` (kill the tree and quarantine the agent until
//! `oknek unblock AGENT`). Needs root; run as an ordinary user it reports itself skipped.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const AGENT: &str = "nobody-agent";

fn held_pids(d: &Daemon) -> Vec<u64> {
    d.status()
        .map(|(v, _)| {
            v["held"]
                .as_array()
                .map(|a| a.iter().filter_map(|h| h["pid"].as_u64()).collect())
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

fn wait_for_hold(d: &Daemon) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(&pid) = held_pids(d).first() {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no process was held:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn state_of(pid: u64) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// `sh -c 'cat CANARY; echo after-$?'` as the agent, in the background.
fn spawn_reader(canary: &std::path::Path) -> Child {
    let script = format!("cat '{}'; echo after-$?", canary.display());
    agent_cmd("sh", &[os("-c"), os(&script)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh runs")
}

fn wait_output(child: Child) -> std::process::Output {
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let mut child = child;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        assert!(Instant::now() < deadline, "the agent never finished");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn held_agent_is_released_by_allow_and_killed_and_quarantined_by_block() {
    if !root_or_skip() {
        return;
    }
    let _serial = serial();
    let dir = scratch("hold", false);
    let canary = dir.path().join("canary.txt");
    std::fs::write(&canary, "CANARY-CONTENT\n").unwrap();
    set_mode(&canary, 0o644);
    let rules = rules_with(&format!(
        "oknek_rules: 1\nrules:\n  - id: HOLD.canary\n    title: Agent opens the canary\n    \
         kind: open\n    match:\n      path: {}\n    action: block\n    hold: true\n",
        canary.display()
    ));
    let mut d = Daemon::start(rules.path(), NOBODY_AGENT);

    // 1. The read is refused and the reader is stopped until an operator lets it go.
    let reader = spawn_reader(&canary);
    let pid = wait_for_hold(&d);
    assert_eq!(state_of(pid), Some('T'), "the held process is stopped");
    // The agent itself cannot release its own hold.
    let own = d.oknek_as(AGENT_UID, AGENT_GID, &["allow", &pid.to_string()]);
    assert!(
        !own.status.success(),
        "the agent released itself: {}",
        text(&own)
    );
    assert_eq!(state_of(pid), Some('T'));
    let allow = d.oknek(&["allow", &pid.to_string()]);
    assert!(allow.status.success(), "{}", text(&allow));
    let out = wait_output(reader);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("CANARY-CONTENT"), "{stdout}");
    assert!(
        stdout.contains("after-1"),
        "cat did not go on to fail: {}",
        text(&out)
    );
    assert!(held_pids(&d).is_empty());
    // Releasing twice is an error, not a crash.
    assert!(!d.oknek(&["allow", &pid.to_string()]).status.success());

    // 2. `oknek block` kills the held tree and quarantines the agent.
    let reader = spawn_reader(&canary);
    let pid = wait_for_hold(&d);
    let block = d.oknek(&["block", &pid.to_string()]);
    assert!(block.status.success(), "{}", text(&block));
    let out = wait_output(reader);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("after-"),
        "the shell of the held process survived: {}",
        text(&out)
    );
    let status = d.assert_serving(Duration::from_secs(5));
    assert_eq!(status["blocked_agents"], serde_json::json!([AGENT]));
    // Every judged action of a quarantined agent is refused, here an ordinary read under
    // `oknek run` (which asks about every open).
    let quarantined = d.run_agent(
        AGENT,
        &std::path::PathBuf::from("/"),
        &[os("cat"), os("/etc/hostname")],
    );
    assert!(!quarantined.status.success(), "{}", text(&quarantined));
    assert!(
        text(&quarantined).contains(EPERM_TEXT),
        "{}",
        text(&quarantined)
    );

    // 3. `oknek unblock` lifts the quarantine.
    let unblock = d.oknek(&["unblock", AGENT]);
    assert!(unblock.status.success(), "{}", text(&unblock));
    let after = d.run_agent(
        AGENT,
        &std::path::PathBuf::from("/"),
        &[os("cat"), os("/etc/hostname")],
    );
    assert!(after.status.success(), "{}", text(&after));

    d.stop();
    let events = d.events();
    let rules_fired: Vec<&str> = events
        .iter()
        .filter_map(|e: &Value| e["bundle"]["rule"].as_str())
        .collect();
    for rule in [
        "HOLD.canary",
        "oknek.operator.allow",
        "oknek.operator.block",
        "oknek.quarantine",
    ] {
        assert!(
            rules_fired.contains(&rule),
            "{rule} missing from {rules_fired:?}"
        );
    }
    d.assert_verifies();
}
