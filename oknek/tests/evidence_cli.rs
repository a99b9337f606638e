//! `oknek keygen | key show | verify | events` end to end, and the tampering suite: every way of
//! changing a store we could think of, each of which `oknek verify` must catch and name.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use oknek_event::{Action, Event, Field, Mechanism, Process, Timestamp, Verdict};
use oknek_evidence::{
    Firing, HostKey, Record, Store, StoreConfig, bundle_hash, journal_files, raw,
};
use rusqlite::Connection;
use serde_json::Value;

const N: u64 = 150;
const BATCH: u64 = 25;

fn oknek(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oknek"))
        .args(args)
        .output()
        .expect("run oknek")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn event(i: u64) -> Event {
    Event {
        time: Timestamp::from_secs(1_795_000_000 + i as i64),
        source: Mechanism::Fanotify,
        process: Process {
            pid: 4000 + i as u32,
            ppid: 1,
            uid: 1000,
            exe: "/usr/bin/cat".into(),
            comm: "cat".into(),
            agent: Some(
                if i.is_multiple_of(2) {
                    "claude-code"
                } else {
                    "aider"
                }
                .into(),
            ),
            ..Process::default()
        },
        action: Action::Open {
            path: format!("/home/dev/.ssh/id_{i}"),
            flags: 0,
            mode: 0,
        },
    }
}

/// A store with N bundles in batches of BATCH. Returns the signed heads as meta held them after
/// each batch (seq, hash, sig), for the rollback cases.
fn build(dir: &Path) -> Vec<(String, String, String)> {
    let mut cfg = StoreConfig::new(dir);
    cfg.create_key = true;
    cfg.host = Some("test-host".into());
    let mut store = Store::open(cfg).unwrap();
    let mut heads = Vec::new();
    for i in 0..N {
        let ev = event(i);
        store
            .append(&Firing {
                event: &ev,
                rule_id: "R1.ssh",
                rule_title: Some("Agent reads an SSH private key"),
                verdict: if i % 3 == 0 {
                    Verdict::Block
                } else {
                    Verdict::Warn
                },
                rule_set_digest: "sha256:00",
                capture: &[Field::Path, Field::Pid],
                extra: None,
            })
            .unwrap();
        if (i + 1) % BATCH == 0 {
            store.flush().unwrap();
            heads.push(meta_head(dir));
        }
    }
    store.close().unwrap();
    heads
}

fn db(dir: &Path) -> Connection {
    Connection::open(dir.join("oknek.db")).unwrap()
}

fn meta_head(dir: &Path) -> (String, String, String) {
    let c = db(dir);
    let get = |k: &str| -> String {
        c.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
            .unwrap()
    };
    (get("head_seq"), get("head_hash"), get("head_sig"))
}

fn set_meta_head(dir: &Path, h: &(String, String, String)) {
    let c = db(dir);
    for (k, v) in [("head_seq", &h.0), ("head_hash", &h.1), ("head_sig", &h.2)] {
        c.execute("UPDATE meta SET value = ?2 WHERE key = ?1", [k, v.as_str()])
            .unwrap();
    }
}

fn journal(dir: &Path) -> PathBuf {
    let files = journal_files(&dir.join("journal")).unwrap();
    assert_eq!(files.len(), 1);
    files[0].1.clone()
}

/// Rewrites the journal's lines.
fn edit_journal(dir: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let path = journal(dir);
    let mut lines: Vec<String> = fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    f(&mut lines);
    fs::write(&path, lines.join("\n") + "\n").unwrap();
}

/// Index of the journal line holding bundle `seq`.
fn line_of(lines: &[String], seq: u64) -> usize {
    lines
        .iter()
        .position(|l| {
            serde_json::from_str::<Value>(l).unwrap()["bundle"]["seq"].as_u64() == Some(seq)
        })
        .unwrap()
}

fn verify(dir: &Path, extra: &[&str]) -> (bool, String) {
    let d = dir.to_str().unwrap();
    let mut args = vec!["verify", "--state-dir", d];
    args.extend_from_slice(extra);
    let out = oknek(&args);
    let code = out.status.code();
    assert!(matches!(code, Some(0 | 1)), "exit {code:?}: {}", text(&out));
    (code == Some(0), text(&out))
}

/// Runs one tampering case on a fresh store and checks verify's verdict.
fn tamper(name: &str, how: impl FnOnce(&Path, &[(String, String, String)]), expect: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let heads = build(dir);
    let (ok, _) = verify(dir, &[]);
    assert!(ok, "{name}: the untouched store must verify");
    how(dir, &heads);
    let (ok, out) = verify(dir, &[]);
    assert!(!ok, "{name}: tampering was not detected:\n{out}");
    for e in expect {
        assert!(out.contains(e), "{name}: expected {e:?} in:\n{out}");
    }
    println!("{name}: {}", out.lines().next().unwrap_or(""));
}

#[test]
fn sqlite_edit_of_a_signed_field() {
    tamper(
        "edit body in SQLite",
        |d, _| {
            db(d)
                .execute(
                    "UPDATE events SET body = replace(body, 'id_77', 'id_78') WHERE seq = 78",
                    [],
                )
                .unwrap();
        },
        &["FAILED: seq 78 (database row 78): edited"],
    );
}

#[test]
fn sqlite_edit_of_an_indexed_column() {
    tamper(
        "edit verdict column in SQLite",
        |d, _| {
            db(d)
                .execute("UPDATE events SET verdict = 'allow' WHERE seq = 40", [])
                .unwrap();
        },
        &["FAILED: seq 40 (database row 40): edited: column verdict is allow"],
    );
}

#[test]
fn sqlite_edit_with_recomputed_hash() {
    tamper(
        "edit body and hash in SQLite",
        |d, _| {
            let c = db(d);
            let body: String = c
                .query_row("SELECT body FROM events WHERE seq = 91", [], |r| r.get(0))
                .unwrap();
            let edited = body.replace("\"verdict\":\"block\"", "\"verdict\":\"allow\"");
            assert_ne!(edited, body);
            let body = edited;
            let hash = bundle_hash(body.as_bytes());
            c.execute(
                "UPDATE events SET body = ?1, hash = ?2, verdict = 'allow' WHERE seq = 91",
                rusqlite::params![body, &hash[..]],
            )
            .unwrap();
        },
        &["FAILED: seq 91 (database row 91): bad signature"],
    );
}

#[test]
fn journal_edit() {
    tamper(
        "edit the journal",
        |d, _| {
            edit_journal(d, |lines| {
                let i = line_of(lines, 61);
                lines[i] = lines[i].replace("id_60", "id_99");
            })
        },
        &[
            "FAILED: seq 61 (journal evidence-00000000000000000001.jsonl:",
            "edited",
        ],
    );
}

#[test]
fn sqlite_delete_middle_row() {
    tamper(
        "delete a middle row",
        |d, _| {
            db(d)
                .execute("DELETE FROM events WHERE seq = 77", [])
                .unwrap();
        },
        &["FAILED: seq 77 (database row 78): deleted"],
    );
}

#[test]
fn journal_delete_middle_line() {
    tamper(
        "delete a journal line",
        |d, _| {
            edit_journal(d, |lines| {
                let i = line_of(lines, 33);
                lines.remove(i);
            })
        },
        &["FAILED: seq 33 (journal", "deleted"],
    );
}

#[test]
fn sqlite_delete_newest_rows() {
    tamper(
        "delete the newest rows",
        |d, _| {
            db(d)
                .execute("DELETE FROM events WHERE seq > 140", [])
                .unwrap();
        },
        &["FAILED: seq 141 (meta): truncated tail"],
    );
}

#[test]
fn journal_cut_tail() {
    tamper(
        "cut the journal's tail",
        |d, _| {
            edit_journal(d, |lines| {
                let i = line_of(lines, 141);
                lines.truncate(i);
            })
        },
        &["FAILED: seq 141 (journal (end)): truncated tail"],
    );
}

#[test]
fn sqlite_swap_two_rows() {
    tamper(
        "swap two rows",
        |d, _| {
            let c = db(d);
            c.execute_batch(
                "UPDATE events SET seq = -1 WHERE seq = 50;
                 UPDATE events SET seq = 50 WHERE seq = 51;
                 UPDATE events SET seq = 51 WHERE seq = -1;",
            )
            .unwrap();
        },
        &["FAILED: seq 50 (database row 50): reordered"],
    );
}

#[test]
fn journal_swap_two_lines() {
    tamper(
        "swap two journal lines",
        |d, _| {
            edit_journal(d, |lines| {
                let (a, b) = (line_of(lines, 20), line_of(lines, 21));
                lines.swap(a, b);
            })
        },
        &["FAILED: seq 20 (journal", "reordered"],
    );
}

/// A record made by someone holding another key, chained correctly onto the real store.
fn forge(dir: &Path, other: &HostKey, seq: u64) -> Record {
    let c = db(dir);
    let (body, hash): (String, Vec<u8>) = c
        .query_row(
            "SELECT body, hash FROM events WHERE seq = ?1",
            [seq as i64 - 1],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let mut v: Value = serde_json::from_str(&body).unwrap();
    v["seq"] = seq.into();
    v["prev"] = raw::hex(&hash).into();
    v["key"] = other.public().key_id().into();
    v["verdict"] = "allow".into();
    let body = String::from_utf8(raw::to_canonical(&v)).unwrap();
    let hash = bundle_hash(body.as_bytes());
    Record {
        seq,
        hash,
        sig: other.sign_hash(&hash),
        time_ns: 1_795_000_000_000_000_000,
        agent: Some("claude-code".into()),
        rule: "R1.ssh".into(),
        verdict: "allow".into(),
        pid: 4000,
        body,
    }
}

#[test]
fn forged_record_signed_with_another_key() {
    let keys = tempfile::tempdir().unwrap();
    let other = HostKey::generate(&keys.path().join("host.key")).unwrap();
    tamper(
        "insert a forged row",
        |d, _| {
            let r = forge(d, &other, N + 1);
            db(d)
                .execute(
                    "INSERT INTO events VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    rusqlite::params![
                        r.seq as i64,
                        r.time_ns,
                        r.agent,
                        r.rule,
                        r.verdict,
                        r.pid,
                        r.body,
                        &r.hash[..],
                        &r.sig[..]
                    ],
                )
                .unwrap();
            edit_journal(d, |lines| lines.push(r.line()));
            // The forger signs a new head with their key too.
            let h = other.sign_head(r.seq, &r.hash);
            set_meta_head(d, &(h.seq.to_string(), raw::hex(&h.hash), raw::hex(&h.sig)));
        },
        &[
            &format!("FAILED: seq {} (database row {}): inserted", N + 1, N + 1),
            "forged",
        ],
    );
}

#[test]
fn replaced_key_file() {
    let keys = tempfile::tempdir().unwrap();
    HostKey::generate(&keys.path().join("host.key")).unwrap();
    tamper(
        "replace the key file",
        |d, _| {
            fs::copy(keys.path().join("host.key"), d.join("host.key")).unwrap();
        },
        &["FAILED: seq 1 (database row 1): wrong key"],
    );
}

#[test]
fn wrong_pubkey_given() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    let keys = tempfile::tempdir().unwrap();
    let other = HostKey::generate(&keys.path().join("host.key")).unwrap();
    let (ok, out) = verify(tmp.path(), &["--pubkey", &other.public().to_string()]);
    assert!(!ok);
    assert!(
        out.contains("FAILED: seq 1 (database row 1): wrong key"),
        "{out}"
    );
}

#[test]
fn meta_head_rolled_back() {
    tamper(
        "roll the meta head back",
        |d, heads| set_meta_head(d, &heads[2]),
        &["FAILED: seq 76 (meta): head rolled back"],
    );
}

#[test]
fn newest_rows_deleted_and_head_rolled_back_together() {
    tamper(
        "delete rows and roll the head back to match",
        |d, heads| {
            db(d)
                .execute("DELETE FROM events WHERE seq > 100", [])
                .unwrap();
            set_meta_head(d, &heads[3]);
        },
        &["FAILED: seq 101 (meta): truncated tail", "in the journal"],
    );
}

#[test]
fn meta_head_signature_edited() {
    tamper(
        "edit the head signature",
        |d, _| {
            let mut h = meta_head(d);
            h.2 =
                h.2.replace(&h.2[..2], if &h.2[..2] == "00" { "11" } else { "00" });
            set_meta_head(d, &h);
        },
        &["FAILED: seq 150 (meta): invalid head"],
    );
}

#[test]
fn garbage_line_in_the_journal() {
    tamper(
        "insert a garbage journal line",
        |d, _| {
            edit_journal(d, |lines| {
                let i = line_of(lines, 10);
                lines.insert(i, "{\"bundle\":{}}".into());
            })
        },
        &["FAILED: seq 10 (journal evidence-00000000000000000001.jsonl:10): malformed"],
    );
}

#[test]
fn journal_record_overwritten_by_a_copy_of_its_neighbour() {
    tamper(
        "overwrite a journal record with a copy of the next",
        |d, _| {
            edit_journal(d, |lines| {
                let (a, b) = (line_of(lines, 30), line_of(lines, 31));
                lines[a] = lines[b].clone();
            })
        },
        &["FAILED: seq 30 (journal evidence-00000000000000000001.jsonl:31): deleted"],
    );
}

#[test]
fn torn_journal_line_is_a_warning_not_a_pass_in_silence() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir);
    let path = journal(dir);
    let mut data = fs::read(&path).unwrap();
    data.extend_from_slice(b"{\"bundle\":{\"agent\":\"cl");
    fs::write(&path, data).unwrap();
    let (ok, out) = verify(dir, &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("warning:") && out.contains("partial line"),
        "{out}"
    );
}

#[test]
fn journal_only_with_exported_public_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir);
    let d = dir.to_str().unwrap();
    let out = oknek(&["key", "show", "--state-dir", d, "--public"]);
    assert!(out.status.success(), "{}", text(&out));
    let exported = String::from_utf8(out.stdout).unwrap();
    assert!(exported.starts_with("oknek-ed25519:"));
    let pub_file = tmp.path().join("copied.pub");
    fs::write(&pub_file, &exported).unwrap();
    let copy = tempfile::tempdir().unwrap();
    let copied = copy.path().join("journal.jsonl");
    fs::copy(journal(dir), &copied).unwrap();
    for key in [exported.trim(), pub_file.to_str().unwrap()] {
        let out = oknek(&[
            "verify",
            "--journal",
            copied.to_str().unwrap(),
            "--pubkey",
            key,
        ]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains(&format!("ok: {N} bundles verified")));
    }
    let out = oknek(&["verify", "--journal", copied.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn keygen_key_show_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("state");
    let ds = d.to_str().unwrap();
    let out = oknek(&["keygen", "--state-dir", ds]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("fingerprint: sha256:") && t.contains("public key:  oknek-ed25519:"));
    let again = oknek(&["keygen", "--state-dir", ds]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again).contains("refusing to replace"));
    let idem = oknek(&["keygen", "--state-dir", ds, "--if-missing"]);
    assert!(idem.status.success());
    let show = oknek(&["key", "show", "--state-dir", ds]);
    assert!(show.status.success());
    assert_eq!(
        text(&show).lines().next(),
        t.lines().nth(1),
        "key show prints the same fingerprint"
    );
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(d.join("host.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let out = oknek(&["keygen", "--state-dir", ds, "--if-missing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("group or others"), "{}", text(&out));
    for args in [
        &["key"][..],
        &["key", "rotate"],
        &["verify", "--bogus"],
        &["events", "--verdict", "maybe"],
        &["events", "--since", "last tuesday"],
    ] {
        assert_eq!(oknek(args).status.code(), Some(2), "{args:?}");
    }
    for cmd in ["keygen", "key", "verify", "events"] {
        let out = oknek(&[cmd, "--help"]);
        assert!(out.status.success());
        assert!(
            text(&out).contains("Example"),
            "{cmd} --help teaches with an example"
        );
    }
}

#[test]
fn events_table_json_and_filters() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir);
    let d = dir.to_str().unwrap();
    let out = oknek(&[
        "events",
        "--state-dir",
        d,
        "--verdict",
        "block",
        "--agent",
        "aider",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    let rows: Vec<&str> = t.lines().skip(1).collect();
    // i odd (aider) and i % 3 == 0: i = 3, 9, …, 147 → 25 rows.
    assert_eq!(rows.len(), 25, "{t}");
    assert!(
        rows[0].contains("/home/dev/.ssh/id_3") && rows[0].contains("block"),
        "{t}"
    );

    let out = oknek(&["events", "--state-dir", d, "--json", "--pid", "4010"]);
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["bundle"]["seq"], 11);
    assert_eq!(
        lines[0]["bundle"]["capture"]["path"],
        "/home/dev/.ssh/id_10"
    );
    assert!(lines[0]["sig"].as_str().unwrap().len() == 128);

    let since = "2026-11-18T08:55:00Z"; // 1_795_000_000 + 6900 s
    let out = oknek(&[
        "events",
        "--state-dir",
        d,
        "--since",
        since,
        "--limit",
        "2",
        "--json",
    ]);
    let seqs: Vec<u64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["bundle"]["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [149, 150]);
}

#[test]
fn events_follow_prints_new_bundles() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir);
    let mut child = Command::new(env!("CARGO_BIN_EXE_oknek"))
        .args([
            "events",
            "--follow",
            "--json",
            "--state-dir",
            dir.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let seq = |l: String| serde_json::from_str::<Value>(&l).unwrap()["bundle"]["seq"].as_u64();
    // The newest 10 first…
    let first: Vec<_> = (0..10)
        .map(|_| seq(lines.next().unwrap().unwrap()))
        .collect();
    assert_eq!(first[0], Some(N - 9));
    // …then what is committed while it runs.
    let mut cfg = StoreConfig::new(dir);
    cfg.host = Some("test-host".into());
    let mut store = Store::open(cfg).unwrap();
    let ev = event(N);
    store
        .append(&Firing {
            event: &ev,
            rule_id: "R1.ssh",
            rule_title: None,
            verdict: Verdict::Block,
            rule_set_digest: "sha256:00",
            capture: &[Field::Path],
            extra: None,
        })
        .unwrap();
    store.close().unwrap();
    assert_eq!(seq(lines.next().unwrap().unwrap()), Some(N + 1));
    child.kill().unwrap();
    child.wait().unwrap();
}
