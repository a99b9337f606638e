//! SIGKILL in the middle of writing: what was committed verifies, and after a restart the chain
//! continues (the interrupted batch is imported from the journal or cleanly absent).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{append, config};
use oknek_evidence::{EventReader, Store, VerifyOptions, verify};

const DIR_ENV: &str = "OKNEK_TEST_WRITER_DIR";

/// Not a test: the child process of `sigkill_mid_batch_then_restart`. Without the environment
/// variable it returns at once.
#[test]
fn helper_writer_process() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let mut cfg = config(Path::new(&dir));
    cfg.batch_max = 50;
    let mut store = Store::open(cfg).unwrap();
    let mut i = 0u64;
    loop {
        append(&mut store, i);
        store.flush_due(Instant::now()).unwrap();
        i += 1;
    }
}

fn committed(dir: &Path) -> u64 {
    EventReader::open(dir)
        .and_then(|r| r.last_seq())
        .unwrap_or(0)
}

#[test]
fn sigkill_mid_batch_then_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut total_appended_after = 0;
    for round in 0..3u64 {
        let before = committed(dir);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "helper_writer_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_ENV, dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        // Let it commit a few batches, then kill it at an arbitrary point of the next one.
        while committed(dir) < before + 150 {
            assert!(Instant::now() < deadline, "the writer made no progress");
            assert!(
                child.try_wait().unwrap().is_none(),
                "the writer died on its own"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(3 + 7 * round));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        // What was committed verifies, before any repair.
        let opts = VerifyOptions {
            state_dir: Some(dir.to_owned()),
            ..VerifyOptions::default()
        };
        let report = verify(&opts, &mut |_| {}).unwrap();
        assert!(report.ok(), "round {round}: {:?}", report.finding);
        let committed_rows = report.db_rows.unwrap();
        println!(
            "round {round}: killed with {committed_rows} committed; warnings: {:?}",
            report.warnings
        );

        // Restart: the chain continues where it stopped.
        let mut store = Store::open(config(dir)).unwrap();
        let rec = store.recovery().clone();
        println!("round {round}: recovery {rec:?}");
        let resumed_at = store.head().map_or(0, |h| h.seq);
        assert_eq!(resumed_at, committed_rows + rec.imported);
        for i in 0..100 {
            append(&mut store, 1_000_000 + i);
        }
        total_appended_after += 100;
        store.close().unwrap();
        let report = verify(&opts, &mut |_| {}).unwrap();
        assert!(
            report.ok(),
            "round {round} after restart: {:?}",
            report.finding
        );
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert_eq!(report.bundles, resumed_at + 100);
    }
    assert_eq!(total_appended_after, 300);
}
