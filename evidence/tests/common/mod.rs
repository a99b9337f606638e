//! Helpers shared by the evidence integration tests.
#![allow(dead_code)]

use std::path::Path;

use oknek_event::{Action, Event, Field, Mechanism, Process, SockAddr, Timestamp, Verdict};
use oknek_evidence::{Firing, Store, StoreConfig};

/// A varied event: agents, kinds and pids change with `i`.
pub fn event(i: u64) -> Event {
    let agents = ["claude-code", "aider", "codex"];
    let action = match i % 3 {
        0 => Action::Open {
            path: format!("/home/dev/.ssh/id_{i}"),
            flags: 0,
            mode: 0,
        },
        1 => Action::Exec {
            path: "/usr/bin/curl".into(),
            argv: vec!["curl".into(), format!("http://example.test/{i}")],
        },
        _ => Action::Connect {
            dest: SockAddr::Inet {
                addr: "192.0.2.7".parse().unwrap(),
                port: 4444,
            },
        },
    };
    Event {
        time: Timestamp::from_secs(1_795_000_000 + i as i64),
        source: Mechanism::Fanotify,
        process: Process {
            pid: 1000 + (i % 7) as u32,
            tgid: 1000 + (i % 7) as u32,
            ppid: 900,
            uid: 1000,
            gid: 1000,
            exe: "/usr/bin/cat".into(),
            comm: "cat".into(),
            agent: Some(agents[(i % 3) as usize].into()),
            ..Process::default()
        },
        action,
    }
}

pub fn verdict(i: u64) -> Verdict {
    [Verdict::Block, Verdict::Warn, Verdict::Allow][(i % 3) as usize]
}

pub const CAPTURE: &[Field] = &[
    Field::Path,
    Field::Argv,
    Field::Addr,
    Field::Port,
    Field::Exe,
];

pub fn append(store: &mut Store, i: u64) {
    let ev = event(i);
    let rule = format!("R{}.test", i % 3 + 1);
    store
        .append(&Firing {
            event: &ev,
            rule_id: &rule,
            rule_title: Some("a test rule"),
            verdict: verdict(i),
            rule_set_digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            capture: CAPTURE,
            extra: None,
        })
        .unwrap();
}

pub fn config(dir: &Path) -> StoreConfig {
    let mut cfg = StoreConfig::new(dir);
    cfg.create_key = true;
    cfg.host = Some("test-host".into());
    cfg
}

/// A store with `n` bundles committed in batches of `batch`.
pub fn build(dir: &Path, n: u64, batch: u64) {
    let mut store = Store::open(config(dir)).unwrap();
    for i in 0..n {
        append(&mut store, i);
        if (i + 1) % batch == 0 {
            store.flush().unwrap();
        }
    }
    store.close().unwrap();
}
