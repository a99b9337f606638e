//! install.sh, run with `--root DIR` so it installs into a temporary directory: it verifies the
//! release with openssl before changing anything, refuses every tampered input without touching
//! the target, upgrades in place keeping the host key, the configuration, hand-edited rules and
//! evidence, and uninstalls everything but the evidence.

mod release_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use release_support::*;

fn tools_present() -> bool {
    let openssl3 = Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).starts_with("OpenSSL 3"))
        .unwrap_or(false);
    if !openssl3 {
        println!("skipped: install.sh needs OpenSSL 3 (openssl version)");
        return false;
    }
    true
}

struct Setup {
    tmp: tempfile::TempDir,
    sk: PathBuf,
    pk: PathBuf,
    root: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let (sk, pk) = keypair(tmp.path(), "release");
        let root = tmp.path().join("root");
        fs::create_dir_all(&root).unwrap();
        Setup { tmp, sk, pk, root }
    }

    fn release(&self, version: &str) -> PathBuf {
        release(self.tmp.path(), &self.sk, version)
    }

    fn install(&self, release: &Path, extra: &[&str]) -> Output {
        Command::new("bash")
            .arg(repo().join("install.sh"))
            .arg("--root")
            .arg(&self.root)
            .arg("--pubkey")
            .arg(&self.pk)
            .args(extra)
            .arg(release)
            .output()
            .unwrap()
    }

    fn install_ok(&self, release: &Path, extra: &[&str]) -> Output {
        let out = self.install(release, extra);
        assert!(
            out.status.success(),
            "install.sh failed:\n{}\n{}",
            stdout(&out),
            stderr(&out)
        );
        out
    }

    /// install.sh must refuse with `needle` and leave the target exactly as it was.
    fn refused(&self, release: &Path, extra: &[&str], needle: &str) {
        let before = snapshot(&self.root);
        let out = self.install(release, extra);
        assert!(
            !out.status.success(),
            "install.sh accepted:\n{}",
            stdout(&out)
        );
        let err = stderr(&out);
        assert!(err.contains("REFUSED"), "{err}");
        assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
        assert!(err.contains("nothing was installed or changed"), "{err}");
        assert_eq!(
            before,
            snapshot(&self.root),
            "install.sh changed the target"
        );
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

#[test]
fn fresh_install_lays_out_the_system() {
    if !tools_present() {
        return;
    }
    let s = Setup::new();
    let rel = s.release("0.4.0");
    let out = s.install_ok(&rel, &[]);
    let err = stderr(&out);
    assert!(err.contains("NOT the pinned oknek release key"), "{err}");
    for f in [
        "usr/local/bin/oknek",
        "usr/local/sbin/oknekd",
        "usr/local/lib/oknek/liboknek_preload.so",
        "usr/local/lib/systemd/system/oknekd.service",
        "usr/local/share/oknek/systemd/oknek-agent.conf",
        "etc/oknek/oknek.yaml",
        "etc/oknek/preload.conf",
        "var/lib/oknek/host.key",
        "var/lib/oknek/host.pub",
        "var/lib/oknek/rules/active/10-r1-secrets.yaml",
        "var/lib/oknek/rules/active/.oknek-pack",
    ] {
        assert!(
            s.path(f).is_file(),
            "{f} missing after install:\n{}",
            stdout(&out)
        );
    }
    assert_eq!(
        fs::read_to_string(s.path("usr/local/lib/oknek/VERSION")).unwrap(),
        "0.4.0\n"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(s.path("var/lib/oknek/host.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "host.key is readable by others: {mode:o}");
    assert!(
        stdout(&out).contains("verified: oknek 0.4.0"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn reinstall_and_upgrade_keep_key_config_evidence_and_edited_rules() {
    if !tools_present() {
        return;
    }
    let s = Setup::new();
    s.install_ok(&s.release("0.4.0"), &[]);
    let key = fs::read(s.path("var/lib/oknek/host.key")).unwrap();
    // Running it again changes nothing that matters.
    s.install_ok(&s.release("0.4.0"), &[]);
    assert_eq!(key, fs::read(s.path("var/lib/oknek/host.key")).unwrap());

    // The administrator edits the config, adds evidence, and edits the rules.
    let config = s.path("etc/oknek/oknek.yaml");
    fs::write(&config, "oknek_config: 1\nagents: []\n# mine\n").unwrap();
    fs::create_dir_all(s.path("var/lib/oknek/journal")).unwrap();
    fs::write(s.path("var/lib/oknek/journal/0001.jsonl"), "{}\n").unwrap();
    let upgraded = s.install_ok(&s.release("0.5.0"), &[]);
    assert!(stdout(&upgraded).contains("upgrading oknek 0.4.0 → 0.5.0"));
    assert_eq!(key, fs::read(s.path("var/lib/oknek/host.key")).unwrap());
    assert!(fs::read_to_string(&config).unwrap().contains("# mine"));
    assert!(s.path("var/lib/oknek/journal/0001.jsonl").is_file());
    // Untouched rules follow the release.
    let pack = fs::read_to_string(s.path("var/lib/oknek/rules/active/.oknek-pack")).unwrap();
    assert!(pack.contains("version: 0.5.0"), "{pack}");

    let mine = s.path("var/lib/oknek/rules/active/99-mine.yaml");
    fs::write(
        &mine,
        "oknek_rules: 1\nrules:\n  - id: MINE.1\n    title: Mine\n    kind: exec\n    \
         match: { exe: { exact: /usr/bin/nc } }\n    action: warn\n",
    )
    .unwrap();
    let out = s.install_ok(&s.release("0.6.0"), &[]);
    assert!(stdout(&out).contains("kept"), "{}", stdout(&out));
    assert!(mine.is_file(), "hand-edited rules were replaced");
    assert_eq!(
        fs::read_to_string(s.path("usr/local/lib/oknek/VERSION")).unwrap(),
        "0.6.0\n"
    );
}

#[test]
fn tampered_bundle_is_refused_and_nothing_changes() {
    if !tools_present() {
        return;
    }
    let s = Setup::new();
    s.install_ok(&s.release("0.4.0"), &[]);
    let rel = s.release("0.5.0");
    tamper(&rel.join("oknek-0.5.0-x86_64-linux.tar.gz"));
    s.refused(&rel, &[], "does not match its signature");
}

#[test]
fn fresh_target_stays_empty_when_refused() {
    if !tools_present() {
        return;
    }
    let s = Setup::new();
    let rel = s.release("0.5.0");
    tamper(&rel.join("oknek-rules-0.5.0.tar.gz"));
    s.refused(
        &rel,
        &[],
        "oknek-rules-0.5.0.tar.gz does not match its signature",
    );
    assert!(snapshot(&s.root).is_empty());
}

#[test]
fn truncated_download_is_refused() {
    if !tools_present() {
        return;
    }
    let s = Setup::new();
    let rel = s.release("0.5.0");
    truncate(&rel.join("oknek-0.5.0-x86_64-linux.tar.gz"));
    s.refused(&rel, &[], "does not match its signature");
}

#[test]
fn wrong_key_is_refused() {
    if !tools_present() {
        return;
    }
    let s = Setup::new();
    let (other, _) = keypair(s.tmp.path(), "other");
    let rel = release(&s.tmp.path().join("x"), &other, "0.5.0");
    s.refused(&rel, &[], "not by the trusted key");
}

#[test]
fn pinned_key_refuses_a_release_signed_by_another_key() {
    if !tools_present() {
        return;
    }
    let s = Setup::new();
    let rel = s.release("0.5.0");
    let out = Command::new("bash")
        .arg(repo().join("install.sh"))
        .arg("--root")
        .arg(&s.root)
        .arg(&rel)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("not by the trusted key E4311B4A02BFC76A"),
        "{err}"
    );
    assert!(snapshot(&s.root).is_empty());
}

#[test]
fn missing_signature_and_missing_file_are_refused() {
    if !tools_present() {
        return;
    }
    let s = Setup::new();
    let rel = s.release("0.5.0");
    fs::remove_file(rel.join("oknek-0.5.0-x86_64-linux.tar.gz.minisig")).unwrap();
    s.refused(
        &rel,
        &[],
        "oknek-0.5.0-x86_64-linux.tar.gz.minisig is missing",
    );
    let rel = s.release("0.5.1");
    fs::remove_file(rel.join("SHA256SUMS.minisig")).unwrap();
    s.refused(&rel, &[], "SHA256SUMS.minisig is missing");
    let rel = s.release("0.5.2");
    fs::remove_file(rel.join("oknek-rules-0.5.2.tar.gz")).unwrap();
    s.refused(&rel, &[], "oknek-rules-0.5.2.tar.gz is missing");
}

#[test]
fn altered_trusted_comment_is_refused() {
    if !tools_present() {
        return;
    }
    let s = Setup::new();
    let rel = s.release("0.5.0");
    let sig = rel.join("SHA256SUMS.minisig");
    let text = fs::read_to_string(&sig)
        .unwrap()
        .replace("version:0.5.0", "version:9.0.0");
    fs::write(&sig, text).unwrap();
    s.refused(
        &rel,
        &[],
        "trusted comment of SHA256SUMS.minisig was altered",
    );
}

#[test]
fn signature_moved_to_another_file_is_refused() {
    if !tools_present() {
        return;
    }
    let s = Setup::new();
    let rel = s.release("0.5.0");
    // Swap in the (genuinely signed) rule pack as the bundle, with its signature.
    let bundle = rel.join("oknek-0.5.0-x86_64-linux.tar.gz");
    fs::copy(rel.join("oknek-rules-0.5.0.tar.gz"), &bundle).unwrap();
    fs::copy(
        rel.join("oknek-rules-0.5.0.tar.gz.minisig"),
        rel.join("oknek-0.5.0-x86_64-linux.tar.gz.minisig"),
    )
    .unwrap();
    s.refused(&rel, &[], "was made for 'oknek-rules-0.5.0.tar.gz'");
}

#[test]
fn downgrade_is_refused_unless_asked() {
    if !tools_present() {
        return;
    }
    let s = Setup::new();
    s.install_ok(&s.release("0.10.0"), &[]);
    let old = s.release("0.9.0");
    s.refused(&old, &[], "0.9.0 is older (a downgrade");
    s.install_ok(&old, &["--allow-downgrade"]);
    assert_eq!(
        fs::read_to_string(s.path("usr/local/lib/oknek/VERSION")).unwrap(),
        "0.9.0\n"
    );
}

#[test]
fn plain_http_is_refused() {
    if !tools_present() {
        return;
    }
    let s = Setup::new();
    let out = Command::new("bash")
        .arg(repo().join("install.sh"))
        .arg("--root")
        .arg(&s.root)
        .arg("http://127.0.0.1:9/release")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("only https:// URLs"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn uninstall_keeps_evidence_unless_purged() {
    if !tools_present() {
        return;
    }
    let s = Setup::new();
    s.install_ok(&s.release("0.4.0"), &[]);
    fs::create_dir_all(s.path("etc/systemd/system/aider.service.d")).unwrap();
    fs::write(
        s.path("etc/systemd/system/aider.service.d/oknek-agent.conf"),
        "[Service]\n",
    )
    .unwrap();
    let uninstall = |extra: &[&str]| {
        run_ok(
            Command::new("bash")
                .arg(repo().join("install.sh"))
                .arg("--root")
                .arg(&s.root)
                .arg("--uninstall")
                .args(extra),
        )
    };
    uninstall(&[]);
    for gone in [
        "usr/local/bin/oknek",
        "usr/local/sbin/oknekd",
        "usr/local/lib/oknek",
        "usr/local/share/oknek",
        "usr/local/lib/systemd/system/oknekd.service",
        "etc/oknek",
        "var/lib/oknek/rules",
        "etc/systemd/system/aider.service.d/oknek-agent.conf",
    ] {
        assert!(!s.path(gone).exists(), "{gone} survived --uninstall");
    }
    assert!(
        s.path("var/lib/oknek/host.key").is_file(),
        "evidence key removed"
    );
    uninstall(&["--purge"]);
    assert!(!s.path("var/lib/oknek").exists());
}

#[test]
fn install_sh_is_shellcheck_clean() {
    let Ok(out) = Command::new("shellcheck")
        .arg(repo().join("install.sh"))
        .arg(repo().join("scripts/dist.sh"))
        .output()
    else {
        println!("skipped: shellcheck is not installed (apt install shellcheck)");
        return;
    };
    assert!(out.status.success(), "{}", stdout(&out));
}
