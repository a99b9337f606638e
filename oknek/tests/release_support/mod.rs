//! Builds throw-away signed releases and rule packs for the release, update and install.sh
//! tests: the real `oknek` binary, a stub `oknekd`, the shipped rules and units, signed with a
//! key generated for the test.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn oknek() -> Command {
    Command::new(env!("CARGO_BIN_EXE_oknek"))
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A key pair in `dir`: (secret, public).
pub fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let sk = dir.join(format!("{name}.key"));
    let pk = dir.join(format!("{name}.pub"));
    run_ok(
        oknek()
            .args(["sign", "--generate", "--key"])
            .arg(&sk)
            .arg("--pubkey")
            .arg(&pk),
    );
    (sk, pk)
}

pub fn sign(key: &Path, version: &str, files: &[&Path]) {
    run_ok(
        oknek()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["sign", "--key"])
            .arg(key)
            .args(["--version", version])
            .args(files),
    );
}

/// `tar czf archive -C parent name` with fixed metadata.
pub fn tar_gz(archive: &Path, parent: &Path, name: &str) {
    let tar = archive.with_extension("");
    run_ok(
        Command::new("tar")
            .args([
                "--format=gnu",
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
            ])
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(parent)
            .arg(name),
    );
    run_ok(Command::new("gzip").args(["-n", "-f"]).arg(&tar));
    assert!(archive.exists(), "gzip wrote {}", archive.display());
}

pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The shipped rule pack's contents (rule files, README, fixtures) copied into `dir`.
pub fn shipped_rules_into(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let rules = repo().join("rules");
    for entry in fs::read_dir(&rules).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".yaml") || name == "README.md" {
            fs::copy(&path, dir.join(&name)).unwrap();
        }
    }
    copy_dir(&rules.join("fixtures"), &dir.join("fixtures"));
}

/// A signed rule pack `dir/oknek-rules-VERSION.tar.gz` (+ .minisig); `edit` may change the
/// unpacked tree before packing.
pub fn rule_pack(dir: &Path, key: &Path, version: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let name = format!("oknek-rules-{version}");
    let src = dir.join(format!("src-{name}"));
    shipped_rules_into(&src.join(&name));
    edit(&src.join(&name));
    let archive = dir.join(format!("{name}.tar.gz"));
    tar_gz(&archive, &src, &name);
    sign(key, version, &[&archive]);
    archive
}

/// A signed release directory like scripts/dist.sh makes, with the test's `oknek` binary and a
/// stub `oknekd`.
pub fn release(dir: &Path, key: &Path, version: &str) -> PathBuf {
    let out = dir.join(format!("release-{version}"));
    fs::create_dir_all(&out).unwrap();
    let name = format!("oknek-{version}-x86_64-linux");
    let stage = dir.join(format!("stage-{version}"));
    let pkg = stage.join(&name);
    for sub in ["bin", "lib", "share/systemd", "share/etc", "share/keys"] {
        fs::create_dir_all(pkg.join(sub)).unwrap();
    }
    // bin/oknek runs the oknek under test; a wrapper keeps the release small (hashing a debug
    // binary in every test would dominate the run time).
    fs::write(
        pkg.join("bin/oknek"),
        format!("#!/bin/sh\nexec '{}' \"$@\"\n", env!("CARGO_BIN_EXE_oknek")),
    )
    .unwrap();
    fs::write(
        pkg.join("bin/oknekd"),
        "#!/bin/sh\necho 'oknekd (test stub)'\n",
    )
    .unwrap();
    for bin in ["bin/oknek", "bin/oknekd"] {
        fs::set_permissions(pkg.join(bin), fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::write(pkg.join("lib/liboknek_preload.so"), b"\x7fELF test stub").unwrap();
    let repo = repo();
    for f in ["oknekd.service", "oknek-agent.conf"] {
        fs::copy(
            repo.join("dist/systemd").join(f),
            pkg.join("share/systemd").join(f),
        )
        .unwrap();
    }
    for f in ["oknek.yaml", "preload.conf"] {
        fs::copy(repo.join("dist").join(f), pkg.join("share/etc").join(f)).unwrap();
    }
    fs::copy(
        repo.join("keys/oknek-release.pub"),
        pkg.join("share/keys/oknek-release.pub"),
    )
    .unwrap();
    shipped_rules_into(&pkg.join("share/rules"));
    fs::write(pkg.join("VERSION"), format!("{version}\n")).unwrap();
    let bundle = out.join(format!("{name}.tar.gz"));
    tar_gz(&bundle, &stage, &name);

    let rules = rule_pack(&stage, key, version, |_| {});
    let rules_name = rules.file_name().unwrap().to_owned();
    fs::copy(&rules, out.join(&rules_name)).unwrap();
    fs::copy(repo.join("install.sh"), out.join("install.sh")).unwrap();

    let names = [
        bundle.file_name().unwrap().to_string_lossy().into_owned(),
        rules_name.to_string_lossy().into_owned(),
        "install.sh".to_owned(),
    ];
    let out_sums = Command::new("sha256sum")
        .args(&names)
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(out_sums.status.success());
    fs::write(out.join("SHA256SUMS"), out_sums.stdout).unwrap();
    let mut files: Vec<PathBuf> = names.iter().map(|n| out.join(n)).collect();
    files.push(out.join("SHA256SUMS"));
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    sign(key, version, &refs);
    out
}

/// Every path under `dir` with its type, mode, size and content hash: two equal snapshots mean
/// nothing was changed.
pub fn snapshot(dir: &Path) -> Vec<String> {
    use sha2_lite::sha256_hex;
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(base).unwrap().display().to_string();
            if meta.is_dir() {
                out.push(format!("{rel}/ {:o}", meta.permissions().mode()));
                walk(base, &path, out);
            } else {
                let data = fs::read(&path).unwrap_or_default();
                out.push(format!(
                    "{rel} {:o} {} {}",
                    meta.permissions().mode(),
                    meta.len(),
                    sha256_hex(&data)
                ));
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// SHA-256 through the system tool, so the tests need no extra crate.
mod sha2_lite {
    use std::io::Write;
    use std::process::{Command, Stdio};

    pub fn sha256_hex(data: &[u8]) -> String {
        let mut child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(data).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout)[..64].to_owned()
    }
}

/// Flips one byte in the middle of a file.
pub fn tamper(path: &Path) {
    let mut data = fs::read(path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x20;
    fs::write(path, data).unwrap();
}

/// Cuts a file to half its length, as an interrupted download would.
pub fn truncate(path: &Path) {
    let data = fs::read(path).unwrap();
    fs::write(path, &data[..data.len() / 2]).unwrap();
}
