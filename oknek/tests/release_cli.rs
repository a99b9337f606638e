//! `oknek sign` and `oknek verify-release`: a good release verifies; every tampered input is
//! refused with a message naming the problem. Signatures are cross-checked with the minisign
//! tool when it is installed.

mod release_support;

use std::fs;
use std::process::Command;

use release_support::*;

fn verify(dir: &std::path::Path, pubkey: &std::path::Path, extra: &[&str]) -> std::process::Output {
    oknek()
        .arg("verify-release")
        .arg("--pubkey")
        .arg(pubkey)
        .args(extra)
        .arg(dir)
        .output()
        .unwrap()
}

fn assert_refused(out: &std::process::Output, needle: &str) {
    assert!(
        !out.status.success(),
        "expected a refusal containing {needle:?}, got success:\n{}",
        stdout(out)
    );
    assert!(
        stderr(out).contains(needle),
        "expected {needle:?} in:\n{}",
        stderr(out)
    );
}

#[test]
fn good_release_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = keypair(tmp.path(), "release");
    let rel = release(tmp.path(), &sk, "0.3.1");
    let out = verify(&rel, &pk, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("ok: version 0.3.1, 3 signed files verified"),
        "{}",
        stdout(&out)
    );
    // The explicit key is announced, so a substituted key never goes unnoticed.
    assert!(stderr(&out).contains("not the pinned oknek release key"));
}

#[test]
fn tampered_artifact_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = keypair(tmp.path(), "release");
    let rel = release(tmp.path(), &sk, "0.3.1");
    tamper(&rel.join("oknek-0.3.1-x86_64-linux.tar.gz"));
    assert_refused(&verify(&rel, &pk, &[]), "does not match SHA256SUMS");
}

#[test]
fn re_signed_artifact_with_stale_sums_is_refused() {
    // An attacker with a valid signature for other bytes still fails the checksum list.
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = keypair(tmp.path(), "release");
    let rel = release(tmp.path(), &sk, "0.3.1");
    let bundle = rel.join("install.sh");
    fs::write(&bundle, "#!/bin/sh\necho evil\n").unwrap();
    sign(&sk, "0.3.1", &[&bundle]);
    assert_refused(&verify(&rel, &pk, &[]), "does not match SHA256SUMS");
}

#[test]
fn tampered_signed_file_is_refused_by_its_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = keypair(tmp.path(), "release");
    let rel = release(tmp.path(), &sk, "0.3.1");
    let sums = rel.join("SHA256SUMS");
    let text = fs::read_to_string(&sums).unwrap();
    fs::write(&sums, text.replacen('a', "b", 1)).unwrap();
    assert_refused(&verify(&rel, &pk, &[]), "signature does not match");
}

#[test]
fn wrong_key_is_refused_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, _) = keypair(tmp.path(), "release");
    let (_, other_pk) = keypair(tmp.path(), "other");
    let rel = release(tmp.path(), &sk, "0.3.1");
    assert_refused(&verify(&rel, &other_pk, &[]), "but the trusted key is");
}

#[test]
fn pinned_key_refuses_a_release_by_another_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, _) = keypair(tmp.path(), "release");
    let rel = release(tmp.path(), &sk, "0.3.1");
    let out = oknek().arg("verify-release").arg(&rel).output().unwrap();
    assert_refused(&out, "but the trusted key is E4311B4A02BFC76A");
}

#[test]
fn missing_signature_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = keypair(tmp.path(), "release");
    let rel = release(tmp.path(), &sk, "0.3.1");
    fs::remove_file(rel.join("oknek-rules-0.3.1.tar.gz.minisig")).unwrap();
    assert_refused(
        &verify(&rel, &pk, &[]),
        "oknek-rules-0.3.1.tar.gz.minisig: missing",
    );
}

#[test]
fn missing_artifact_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = keypair(tmp.path(), "release");
    let rel = release(tmp.path(), &sk, "0.3.1");
    fs::remove_file(rel.join("install.sh")).unwrap();
    assert_refused(&verify(&rel, &pk, &[]), "install.sh: missing");
}

#[test]
fn truncated_download_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = keypair(tmp.path(), "release");
    let rel = release(tmp.path(), &sk, "0.3.1");
    truncate(&rel.join("oknek-0.3.1-x86_64-linux.tar.gz"));
    assert_refused(&verify(&rel, &pk, &[]), "does not match SHA256SUMS");
    // A truncated signature file is refused too.
    truncate(&rel.join("SHA256SUMS.minisig"));
    assert_refused(&verify(&rel, &pk, &[]), "not a minisign signature");
}

#[test]
fn downgrade_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = keypair(tmp.path(), "release");
    let rel = release(tmp.path(), &sk, "0.3.1");
    assert_refused(
        &verify(&rel, &pk, &["--min-version", "0.10.0"]),
        "refusing a downgrade",
    );
    let same = verify(&rel, &pk, &["--min-version", "0.3.1"]);
    assert!(same.status.success(), "{}", stderr(&same));
}

#[test]
fn signature_for_another_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = keypair(tmp.path(), "release");
    let rel = release(tmp.path(), &sk, "0.3.1");
    // A genuine signature of the rule pack presented as the signature of install.sh.
    fs::copy(rel.join("oknek-rules-0.3.1.tar.gz"), rel.join("install.sh")).unwrap();
    fs::copy(
        rel.join("oknek-rules-0.3.1.tar.gz.minisig"),
        rel.join("install.sh.minisig"),
    )
    .unwrap();
    let out = oknek()
        .args(["verify-release", "--pubkey"])
        .arg(&pk)
        .arg(rel.join("install.sh"))
        .output()
        .unwrap();
    assert_refused(&out, "the signature is for \"oknek-rules-0.3.1.tar.gz\"");
}

#[test]
fn pinned_release_key_is_the_committed_one_and_install_sh_agrees() {
    let repo = repo();
    let pub_text = fs::read_to_string(repo.join("keys/oknek-release.pub")).unwrap();
    let b64 = pub_text.lines().nth(1).unwrap().trim();
    let install = fs::read_to_string(repo.join("install.sh")).unwrap();
    assert!(
        install.contains(&format!("RELEASE_PUBKEY={b64}\n")),
        "install.sh pins a different key than keys/oknek-release.pub"
    );
    let id = pub_text.lines().next().unwrap().rsplit(' ').next().unwrap();
    assert!(install.contains(&format!("RELEASE_KEY_ID={id}\n")));
}

#[test]
fn minisign_tool_accepts_oknek_signatures_and_oknek_accepts_minisign_ones() {
    if Command::new("minisign").arg("-v").output().is_err() {
        println!("skipped: minisign is not installed (apt install minisign)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = keypair(tmp.path(), "release");
    let file = tmp.path().join("artifact.bin");
    fs::write(&file, vec![7u8; 300_000]).unwrap();
    sign(&sk, "1.0.0", &[&file]);
    run_ok(
        Command::new("minisign")
            .arg("-Vm")
            .arg(&file)
            .arg("-p")
            .arg(&pk),
    );
    tamper(&file);
    let out = Command::new("minisign")
        .arg("-Vm")
        .arg(&file)
        .arg("-p")
        .arg(&pk)
        .output()
        .unwrap();
    assert!(!out.status.success(), "minisign accepted a tampered file");

    // The other way: a key and signature made by minisign itself.
    let mk = tmp.path().join("m.key");
    let mp = tmp.path().join("m.pub");
    run_ok(
        Command::new("minisign")
            .args(["-G", "-W", "-s"])
            .arg(&mk)
            .arg("-p")
            .arg(&mp),
    );
    let other = tmp.path().join("pack.tar.gz");
    fs::write(&other, b"pack bytes").unwrap();
    run_ok(
        Command::new("minisign")
            .args(["-S", "-s"])
            .arg(&mk)
            .arg("-m")
            .arg(&other)
            .args(["-t", "timestamp:1\tfile:pack.tar.gz\tversion:2.0.0"]),
    );
    let out = run_ok(
        oknek()
            .args(["verify-release", "--pubkey"])
            .arg(&mp)
            .arg(&other),
    );
    assert!(
        stdout(&out).contains("ok: version 2.0.0"),
        "{}",
        stdout(&out)
    );
    // And oknek signs with a key minisign generated.
    let third = tmp.path().join("third.bin");
    fs::write(&third, b"x").unwrap();
    sign(&mk, "3.0.0", &[&third]);
    run_ok(
        Command::new("minisign")
            .arg("-Vm")
            .arg(&third)
            .arg("-p")
            .arg(&mp),
    );
}
