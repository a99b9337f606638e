//! `oknek update`: a signed pack is swapped in atomically and the previous one kept for
//! --rollback; every failure leaves the active rules exactly as they were.

mod release_support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Output;

use release_support::*;

struct Fixture {
    tmp: tempfile::TempDir,
    sk: PathBuf,
    pk: PathBuf,
    active: PathBuf,
    run: PathBuf,
}

impl Fixture {
    /// An active pack of version 1.0.0 installed through `oknek update`.
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let (sk, pk) = keypair(tmp.path(), "rules");
        let active = tmp.path().join("state/rules/active");
        let run = tmp.path().join("run");
        fs::create_dir_all(&run).unwrap();
        let f = Fixture {
            tmp,
            sk,
            pk,
            active,
            run,
        };
        let pack = f.pack("1.0.0", |_| {});
        let out = f.update(&[pack.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        f
    }

    fn pack(&self, version: &str, edit: impl FnOnce(&Path)) -> PathBuf {
        let dir = self
            .tmp
            .path()
            .join(format!("packs-{version}-{}", rand_suffix()));
        fs::create_dir_all(&dir).unwrap();
        rule_pack(&dir, &self.sk, version, edit)
    }

    fn update(&self, args: &[&str]) -> Output {
        oknek()
            .arg("update")
            .arg("--rules-dir")
            .arg(&self.active)
            .arg("--runtime-dir")
            .arg(&self.run)
            .arg("--pubkey")
            .arg(&self.pk)
            .args(args)
            .output()
            .unwrap()
    }

    fn version(&self, dir: &Path) -> String {
        fs::read_to_string(dir.join(".oknek-pack"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("version: "))
            .unwrap()
            .to_owned()
    }

    /// Runs `oknek update` expecting a refusal that names `needle`, and checks that the active
    /// rules did not change by a single byte.
    fn refused(&self, args: &[&str], needle: &str) {
        let before = snapshot(&self.active);
        let out = self.update(args);
        assert!(
            !out.status.success(),
            "update should fail: {}",
            stdout(&out)
        );
        assert!(
            stderr(&out).contains(needle),
            "expected {needle:?} in:\n{}",
            stderr(&out)
        );
        assert_eq!(before, snapshot(&self.active), "active rules changed");
        // No staging or download leftovers beside the active dir.
        let parent = self.active.parent().unwrap();
        for entry in fs::read_dir(parent).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with(".staging") && !name.starts_with(".download"),
                "leftover {name}"
            );
        }
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn update_swaps_keeps_previous_and_rolls_back() {
    let f = Fixture::new();
    assert_eq!(f.version(&f.active), "1.0.0");
    assert!(f.active.join("10-r1-secrets.yaml").is_file());
    assert!(f.active.join("fixtures").is_dir());

    let v2 = f.pack("1.1.0", |dir| {
        fs::write(
            dir.join("90-site.yaml"),
            "oknek_rules: 1\nrules:\n  - id: SITE.1\n    title: Site rule\n    kind: exec\n    \
             match: { exe: { exact: /usr/bin/nc } }\n    action: warn\n",
        )
        .unwrap();
    });
    let out = f.update(&[v2.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("oknekd is not reachable"),
        "{}",
        stdout(&out)
    );
    assert_eq!(f.version(&f.active), "1.1.0");
    assert!(f.active.join("90-site.yaml").is_file());
    let previous = f.active.parent().unwrap().join("previous");
    assert_eq!(f.version(&previous), "1.0.0");

    let out = f.update(&["--rollback"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(f.version(&f.active), "1.0.0");
    assert!(!f.active.join("90-site.yaml").exists());
    assert_eq!(f.version(&previous), "1.1.0");
}

#[test]
fn reload_is_requested_and_a_rejection_restores_the_old_rules() {
    let f = Fixture::new();
    let socket = f.run.join("control.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    // A stand-in daemon: first answer ok, then reject.
    let server = std::thread::spawn(move || {
        let mut requests = Vec::new();
        for answer in [
            r#"{"ok":true,"result":{"reloaded":true}}"#,
            r#"{"ok":false,"error":"reload rejected: test"}"#,
        ] {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            requests.push(line);
            (&stream)
                .write_all(format!("{answer}\n").as_bytes())
                .unwrap();
        }
        requests
    });
    let v2 = f.pack("2.0.0", |_| {});
    let out = f.update(&[v2.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("oknekd reloaded"));
    assert_eq!(f.version(&f.active), "2.0.0");

    let v3 = f.pack("3.0.0", |_| {});
    f.refused(&[v3.to_str().unwrap()], "oknekd rejected the new rules");
    assert_eq!(f.version(&f.active), "2.0.0");
    let requests = server.join().unwrap();
    assert_eq!(requests.len(), 2);
    assert!(
        requests.iter().all(|r| r.contains("reload")),
        "{requests:?}"
    );
}

#[test]
fn tampered_pack_is_refused() {
    let f = Fixture::new();
    let p = f.pack("1.2.0", |_| {});
    tamper(&p);
    f.refused(&[p.to_str().unwrap()], "signature does not match");
}

#[test]
fn truncated_pack_is_refused() {
    let f = Fixture::new();
    let p = f.pack("1.2.0", |_| {});
    truncate(&p);
    f.refused(&[p.to_str().unwrap()], "signature does not match");
}

#[test]
fn pack_signed_by_another_key_is_refused() {
    let f = Fixture::new();
    let (other_sk, _) = keypair(f.tmp.path(), "other");
    let p = f.pack("1.2.0", |_| {});
    sign(&other_sk, "1.2.0", &[&p]);
    f.refused(&[p.to_str().unwrap()], "but the trusted key is");
}

#[test]
fn the_pinned_key_refuses_a_pack_signed_by_another_key() {
    let f = Fixture::new();
    let p = f.pack("1.2.0", |_| {});
    let before = snapshot(&f.active);
    let out = oknek()
        .arg("update")
        .arg("--rules-dir")
        .arg(&f.active)
        .arg("--runtime-dir")
        .arg(&f.run)
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("E4311B4A02BFC76A"),
        "{}",
        stderr(&out)
    );
    assert_eq!(before, snapshot(&f.active));
}

#[test]
fn missing_signature_is_refused() {
    let f = Fixture::new();
    let p = f.pack("1.2.0", |_| {});
    fs::remove_file(format!("{}.minisig", p.display())).unwrap();
    f.refused(&[p.to_str().unwrap()], ".minisig: missing");
}

#[test]
fn downgrade_is_refused_unless_allowed() {
    let f = Fixture::new();
    let p = f.pack("0.9.0", |_| {});
    f.refused(&[p.to_str().unwrap()], "refusing a downgrade");
    let out = f.update(&["--allow-downgrade", p.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(f.version(&f.active), "0.9.0");
}

#[test]
fn pack_that_does_not_lint_is_refused() {
    let f = Fixture::new();
    let p = f.pack("1.2.0", |dir| {
        fs::write(
            dir.join("95-broken.yaml"),
            "oknek_rules: 1\nrules:\n  - id: BROKEN\n    kind: exec\n    action: explode\n",
        )
        .unwrap();
    });
    f.refused(&[p.to_str().unwrap()], "do not load");
}

#[test]
fn pack_whose_fixtures_fail_is_refused() {
    let f = Fixture::new();
    // Drop the SSH rule file but keep its fixtures: they now expect blocks that never come.
    let p = f.pack("1.2.0", |dir| {
        fs::remove_file(dir.join("10-r1-secrets.yaml")).unwrap();
    });
    f.refused(&[p.to_str().unwrap()], "fixtures fail");
}

#[test]
fn renamed_pack_is_refused() {
    // A genuine signature names its file: a pack served under another name is refused.
    let f = Fixture::new();
    let p = f.pack("1.2.0", |_| {});
    let renamed = p.with_file_name("oknek-rules-9.9.9.tar.gz");
    fs::rename(&p, &renamed).unwrap();
    fs::rename(
        format!("{}.minisig", p.display()),
        format!("{}.minisig", renamed.display()),
    )
    .unwrap();
    f.refused(&[renamed.to_str().unwrap()], "the signature is for");
}

/// One ustar header + data block.
fn tar_entry(out: &mut Vec<u8>, name: &str, kind: u8, data: &[u8], link: &str) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn signed_raw_pack(f: &Fixture, entries: &[(&str, u8, &[u8], &str)]) -> PathBuf {
    let mut tar = Vec::new();
    let rule = "oknek_rules: 1\nrules:\n  - id: RAW.1\n    title: Raw\n    kind: exec\n    \
                match: { exe: { exact: /usr/bin/nc } }\n    action: warn\n";
    tar_entry(&mut tar, "10-raw.yaml", b'0', rule.as_bytes(), "");
    for (name, kind, data, link) in entries {
        tar_entry(&mut tar, name, *kind, data, link);
    }
    tar.extend_from_slice(&[0u8; 1024]);
    let dir = f.tmp.path().join(format!("raw-{}", rand_suffix()));
    fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("oknek-rules-1.5.0.tar");
    fs::write(&raw, tar).unwrap();
    run_ok(std::process::Command::new("gzip").arg("-n").arg(&raw));
    let gz = dir.join("oknek-rules-1.5.0.tar.gz");
    sign(&f.sk, "1.5.0", &[&gz]);
    gz
}

#[test]
fn raw_pack_with_plain_files_is_accepted() {
    // The hand-made archive format itself is fine: the refusals below are about their entries.
    let f = Fixture::new();
    let p = signed_raw_pack(&f, &[]);
    let out = f.update(&[p.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(f.version(&f.active), "1.5.0");
}

#[test]
fn pack_with_a_symlink_is_refused() {
    let f = Fixture::new();
    let p = signed_raw_pack(&f, &[("20-link.yaml", b'2', b"", "/etc/shadow")]);
    f.refused(&[p.to_str().unwrap()], "only regular files and directories");
}

#[test]
fn pack_escaping_its_directory_is_refused() {
    let f = Fixture::new();
    let p = signed_raw_pack(&f, &[("../../escape.yaml", b'0', b"x", "")]);
    f.refused(&[p.to_str().unwrap()], "`..` in the path");
    assert!(
        !f.active
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("escape.yaml")
            .exists()
    );
    let p = signed_raw_pack(&f, &[("/tmp/abs.yaml", b'0', b"x", "")]);
    f.refused(&[p.to_str().unwrap()], "absolute path");
}

#[test]
fn plain_http_urls_are_refused() {
    let f = Fixture::new();
    f.refused(
        &["http://127.0.0.1:9/oknek-rules-1.0.0.tar.gz"],
        "only https:// URLs",
    );
}

#[test]
fn rollback_without_previous_is_refused() {
    let f = Fixture::new();
    f.refused(&["--rollback"], "no previous rule pack");
}
