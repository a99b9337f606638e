//! The writer end to end: batches, rotation, reopening, repair after interrupted writes, queries
//! and the baseline.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{append, build, config, event};
use oknek_event::{BaselineView, Feature, Timestamp, Verdict};
use oknek_evidence::{
    EventReader, Problem, Query, Report, Store, VerifyOptions, journal_files, verify,
};

fn check(dir: &Path) -> Report {
    verify(
        &VerifyOptions {
            state_dir: Some(dir.to_owned()),
            ..VerifyOptions::default()
        },
        &mut |_| {},
    )
    .unwrap()
}

fn journal_text(dir: &Path) -> (std::path::PathBuf, String) {
    let (_, last) = journal_files(&dir.join("journal")).unwrap().pop().unwrap();
    let text = fs::read_to_string(&last).unwrap();
    (last, text)
}

#[test]
fn chain_continues_across_batches_files_and_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut cfg = config(dir);
    cfg.rotate_bytes = 8 << 10;
    cfg.batch_max = 7;
    let mut store = Store::open(cfg.clone()).unwrap();
    assert!(store.recovery().is_empty());
    let mut committed = 0;
    for i in 0..100 {
        append(&mut store, i);
        if let Some(c) = store.flush_due(Instant::now()).unwrap() {
            assert_eq!(c.first_seq, committed + 1);
            committed = c.last_seq;
        }
    }
    assert!(store.pending() < 7);
    store.close().unwrap();
    let report = check(dir);
    assert!(report.ok(), "{:?}", report.finding);
    assert_eq!(report.bundles, 100);
    assert!(report.journal_files > 2, "rotation by size");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(report.head.unwrap().seq, 100);

    let mut store = Store::open(cfg).unwrap();
    assert!(store.recovery().is_empty(), "{:?}", store.recovery());
    for i in 100..110 {
        append(&mut store, i);
    }
    store.close().unwrap();
    let report = check(dir);
    assert!(report.ok(), "{:?}", report.finding);
    assert_eq!(report.bundles, 110);

    let reader = EventReader::open(dir).unwrap();
    let all = reader.query(&Query::default()).unwrap();
    assert_eq!(all.len(), 110);
    assert!(all.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    let blocks = reader
        .query(&Query {
            verdict: Some(Verdict::Block),
            agent: Some("claude-code".into()),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(blocks.len(), 37);
    let newest = reader
        .query(&Query {
            limit: Some(3),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(
        newest.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [108, 109, 110]
    );
    let window = reader
        .query(&Query {
            since: Some(event(10).time),
            until: Some(event(20).time),
            pid: Some(event(10).process.pid),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(window.iter().map(|r| r.seq).collect::<Vec<_>>(), [11, 18]);
}

#[test]
fn deadline_closes_a_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.batch_delay = Duration::from_millis(3);
    let mut store = Store::open(cfg).unwrap();
    assert_eq!(store.next_deadline(), None);
    append(&mut store, 0);
    let deadline = store.next_deadline().unwrap();
    assert_eq!(store.flush_due(Instant::now()).unwrap(), None);
    let c = store.flush_due(deadline).unwrap().unwrap();
    assert_eq!((c.first_seq, c.last_seq), (1, 1));
    assert_eq!(store.next_deadline(), None);
    assert_eq!(store.head().unwrap().seq, 1);
}

#[test]
fn torn_last_line_is_reported_then_moved_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir, 20, 5);
    let (last, mut text) = journal_text(dir);
    text.push_str("{\"bundle\":{\"agent\":\"aid");
    fs::write(&last, &text).unwrap();
    let report = check(dir);
    assert!(report.ok(), "{:?}", report.finding);
    assert!(
        report.warnings.iter().any(|w| w.contains("partial line")),
        "{:?}",
        report.warnings
    );

    let mut store = Store::open(config(dir)).unwrap();
    let torn = store
        .recovery()
        .torn
        .clone()
        .expect("torn line moved aside");
    assert!(fs::read_to_string(torn).unwrap().starts_with("{\"bundle\""));
    append(&mut store, 20);
    store.close().unwrap();
    let report = check(dir);
    assert!(report.ok(), "{:?}", report.finding);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(report.bundles, 21);
}

#[test]
fn uncommitted_journal_batch_is_imported_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir, 10, 10);
    // Keep the database as it was after the first batch…
    let saved = tmp.path().join("saved.db");
    fs::copy(dir.join("oknek.db"), &saved).unwrap();
    let mut store = Store::open(config(dir)).unwrap();
    for i in 10..15 {
        append(&mut store, i);
    }
    store.close().unwrap();
    // …and make it look as if the writer died between the journal write and the commit: the
    // database misses the batch and the journal has no signed-head line after it.
    fs::copy(&saved, dir.join("oknek.db")).unwrap();
    let (last, text) = journal_text(dir);
    let cut = text.trim_end().rfind('\n').unwrap() + 1;
    assert!(text[cut..].starts_with("{\"head\""));
    fs::write(&last, &text[..cut]).unwrap();

    let report = check(dir);
    assert!(report.ok(), "{:?}", report.finding);
    assert!(
        report.warnings.iter().any(|w| w.contains("seq 11..15")),
        "{:?}",
        report.warnings
    );
    let store = Store::open(config(dir)).unwrap();
    assert_eq!(store.recovery().imported, 5);
    store.close().unwrap();
    let report = check(dir);
    assert!(report.ok(), "{:?}", report.finding);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(report.db_rows, Some(15));
}

#[test]
fn lost_journal_tail_is_flagged_then_restored_from_the_database() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir, 12, 4);
    let (last, text) = journal_text(dir);
    // Drop the last batch (4 bundle lines and its head line).
    let lines: Vec<&str> = text.lines().collect();
    let keep = lines[..lines.len() - 5].join("\n") + "\n";
    fs::write(&last, keep).unwrap();
    let report = check(dir);
    let f = report.finding.expect("a cut journal is reported");
    assert_eq!((f.problem, f.seq), (Problem::TruncatedTail, Some(9)), "{f}");

    let store = Store::open(config(dir)).unwrap();
    assert_eq!(store.recovery().restored, 4);
    store.close().unwrap();
    let report = check(dir);
    assert!(report.ok(), "{:?}", report.finding);
}

#[test]
fn a_replaced_key_is_refused_by_the_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    build(&dir, 3, 3);
    let other = tmp.path().join("b");
    build(&other, 1, 1);
    fs::copy(other.join("host.key"), dir.join("host.key")).unwrap();
    let err = Store::open(config(&dir)).unwrap_err().to_string();
    assert!(err.contains("refusing to continue"), "{err}");
}

#[test]
fn baseline_counts_persist_and_roll() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = Store::open(config(dir)).unwrap();
    for i in 0..30 {
        store.observe(&event(i));
    }
    // event(1), event(4), … are curl execs of aider.
    assert_eq!(store.seen_count("aider", Feature::ExecBasename, "curl"), 10);
    assert_eq!(
        store.seen_count("codex", Feature::ConnectDest, "public:4444"),
        10
    );
    assert_eq!(
        store.seen_count("codex", Feature::ConnectDest, "private:4444"),
        0
    );
    store.roll_up(event(30).time).unwrap();
    store.close().unwrap();
    let store = Store::open(config(dir)).unwrap();
    assert_eq!(store.seen_count("aider", Feature::ExecBasename, "curl"), 10);
    assert_eq!(store.history_since("aider"), Some(event(1).time));
    let mut store = store;
    store
        .roll_up(Timestamp(
            event(30).time.as_nanos() + 15 * 86_400 * 1_000_000_000,
        ))
        .unwrap();
    assert_eq!(store.seen_count("aider", Feature::ExecBasename, "curl"), 0);
    assert_eq!(store.history_since("aider"), None);
}

/// Corrupt journals and databases give findings or errors, never a panic, in verify and in the
/// writer's repair.
#[test]
fn corrupted_stores_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    build(&clean, 40, 10);
    let (journal, original) = journal_text(&clean);
    let journal_name = journal.file_name().unwrap().to_owned();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let pieces: [&[u8]; 6] = [b"\n", b"\"", b"\xc3\xa9", b"\xff", b"{\"head\":", b"0"];
    let mut findings = 0;
    for round in 0..60 {
        let dir = tmp.path().join(format!("r{round}"));
        fs::create_dir(&dir).unwrap();
        fs::create_dir(dir.join("journal")).unwrap();
        for f in ["host.key", "host.pub", "oknek.db"] {
            fs::copy(clean.join(f), dir.join(f)).unwrap();
        }
        let mut bytes = original.clone().into_bytes();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % bytes.len();
            match next() % 4 {
                0 => bytes[at] ^= 1 << (next() % 8),
                1 => bytes.truncate(at),
                2 => {
                    let p = pieces[(next() % pieces.len() as u64) as usize];
                    bytes.splice(at..at, p.iter().copied());
                }
                _ => {
                    let end = (at + 1 + (next() as usize) % 300).min(bytes.len());
                    bytes.drain(at..end);
                }
            }
            if bytes.is_empty() {
                break;
            }
        }
        fs::write(dir.join("journal").join(&journal_name), &bytes).unwrap();
        if round % 3 == 0 {
            let c = rusqlite::Connection::open(dir.join("oknek.db")).unwrap();
            let seq = 1 + next() % 40;
            let sql = [
                "UPDATE events SET body = substr(body, 2) WHERE seq = ?1",
                "UPDATE events SET hash = x'00' WHERE seq = ?1",
                "UPDATE events SET seq = 9223372036854775807 WHERE seq = ?1",
                "UPDATE events SET body = 'not json' WHERE seq = ?1",
                "UPDATE meta SET value = 'zz' WHERE key = 'head_hash' AND ?1 > 0",
            ][(next() % 5) as usize];
            c.execute(sql, [seq as i64]).unwrap();
        }
        let found = verify(
            &VerifyOptions {
                state_dir: Some(dir.clone()),
                ..VerifyOptions::default()
            },
            &mut |_| {},
        )
        .map_or(true, |r| r.finding.is_some());
        findings += u32::from(found);
        // The writer must open (repairing what it can) or refuse with an error.
        if let Ok(mut store) = Store::open(config(&dir)) {
            append(&mut store, 1000);
            let _ = store.close();
        }
        let _ = verify(
            &VerifyOptions {
                state_dir: Some(dir.clone()),
                ..VerifyOptions::default()
            },
            &mut |_| {},
        );
    }
    assert!(
        findings > 30,
        "most corruptions are findings: {findings}/60"
    );
}
