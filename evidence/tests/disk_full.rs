//! A full disk: a clear error naming the path, nothing committed is damaged, and the queued
//! batch is written once there is space again. Needs root to mount a small tmpfs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::config;
use oknek_event::{Field, Verdict};
use oknek_evidence::{Error, Firing, Store, VerifyOptions, verify};

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> Option<Mount> {
    let ok = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
        ])
        .arg(at)
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Mount(at.to_owned()))
}

fn skip_or_fail(why: &str) {
    if std::env::var_os("OKNEK_SKIP_ROOT_TESTS").is_some() {
        eprintln!("skipped: needs root ({why})");
        return;
    }
    panic!(
        "this test needs root to mount a tmpfs ({why}); run it as root, or set \
         OKNEK_SKIP_ROOT_TESTS=1 to skip it explicitly"
    );
}

#[test]
fn full_disk_gives_a_clear_error_and_no_corruption() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip_or_fail("not running as root");
    }
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let Some(_mount) = mount_tmpfs(&mnt, "1m") else {
        return skip_or_fail("mount -t tmpfs failed");
    };
    let dir = mnt.join("state");
    let mut cfg = config(&dir);
    cfg.batch_max = 20;
    let mut store = Store::open(cfg).unwrap();
    let mut ev = common::event(1);
    if let oknek_event::Action::Exec { argv, .. } = &mut ev.action {
        argv.push("x".repeat(3000));
    }
    let firing = Firing {
        event: &ev,
        rule_id: "R2.shell",
        rule_title: None,
        verdict: Verdict::Warn,
        rule_set_digest: "sha256:00",
        capture: &[Field::Argv],
        extra: None,
    };
    let mut committed = 0;
    let mut appended = 0;
    let err = loop {
        store.append(&firing).unwrap();
        appended += 1;
        if appended % 20 == 0 {
            match store.flush() {
                Ok(c) => committed = c.unwrap().last_seq,
                Err(e) => break e,
            }
        }
        assert!(appended < 10_000, "a 1 MiB file system never filled up");
    };
    let msg = err.to_string();
    println!("after {committed} committed bundles: {msg}");
    assert!(matches!(err, Error::DiskFull { .. }), "{err:?}");
    assert!(
        msg.contains("disk full") && msg.contains(dir.to_str().unwrap()),
        "{msg}"
    );
    assert_eq!(store.pending(), 20, "the failed batch stays queued");
    assert!(store.flush().unwrap_err().is_disk_full(), "still full");

    // What was committed is intact and verifies while the disk is full.
    let opts = VerifyOptions {
        state_dir: Some(dir.clone()),
        ..VerifyOptions::default()
    };
    let report = verify(&opts, &mut |_| {}).unwrap();
    assert!(report.ok(), "{:?}", report.finding);
    assert_eq!(report.bundles, committed);
    let conn = rusqlite::Connection::open(dir.join("oknek.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);

    // Space again: the queued batch is written, nothing acknowledged or queued was lost.
    assert!(
        Command::new("mount")
            .args(["-o", "remount,size=8m"])
            .arg(&mnt)
            .status()
            .unwrap()
            .success()
    );
    let c = store.flush().unwrap().unwrap();
    assert_eq!(c.last_seq, appended);
    store.close().unwrap();
    let report = verify(&opts, &mut |_| {}).unwrap();
    assert!(report.ok(), "{:?}", report.finding);
    assert_eq!(report.bundles, appended);
}
