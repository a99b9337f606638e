//! `oknek sign` and `oknek verify-release`: minisign signatures over release artifacts and rule
//! packs, checked against the release key pinned in this binary (keys/oknek-release.pub).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sha2::{Digest, Sha256};

use crate::cli::{CliError, Global};
use crate::minisign::{MinisignError, PublicKey, SecretKey, TrustedComment, compare_versions};

/// The project's release key. install.sh pins the same key.
pub const RELEASE_PUBLIC_KEY: &str = include_str!("../../keys/oknek-release.pub");

/// The checksum list every release carries, signed like the artifacts.
pub const SUMS_FILE: &str = "SHA256SUMS";

const SIGN_HELP: &str = "\
oknek sign — sign files with a minisign key (releases, rule packs)

Usage: oknek sign --key SECRET [--version V] [--comment TEXT] FILE...
       oknek sign --generate --key SECRET --pubkey PUBLIC

Writes FILE.minisig next to each FILE: a prehashed Ed25519 minisign signature whose trusted
comment names the file and, with --version, the version (`timestamp:T file:NAME version:V`).
The timestamp is SOURCE_DATE_EPOCH when set, so a reproducible release has reproducible
signatures. Check with `oknek verify-release`, `minisign -V -p PUBLIC -m FILE` or openssl.

Options:
  --key SECRET      Unencrypted minisign secret key (created by --generate or `minisign -G -W`)
  --version V       Put version:V in the trusted comment (required for releases and rule packs)
  --comment TEXT    Use TEXT as the whole trusted comment instead
  --generate        Create a new key pair: SECRET (mode 0600) and PUBLIC; never overwrites
  --pubkey PUBLIC   Where --generate writes the public key

Example:
  $ oknek sign --generate --key ~/offline/rules.key --pubkey rules.pub
  $ oknek sign --key ~/offline/rules.key --version 1.4.0 my-rules-1.4.0.tar.gz
";

const VERIFY_HELP: &str = "\
oknek verify-release — check a release's (or one file's) minisign signatures

Usage: oknek verify-release [--pubkey FILE] [--min-version V] (DIR | FILE)

DIR is a release directory: SHA256SUMS and SHA256SUMS.minisig, then every file SHA256SUMS
lists, each with its checksum and its own .minisig. Every signature must be by the trusted key,
name its own file and carry the release's version. FILE is one signed file with FILE.minisig.
Exits 0 and prints the version when all holds; otherwise names the first problem and exits 1.

Options:
  --pubkey FILE     Trust this minisign public key instead of the pinned oknek release key
  --min-version V   Refuse a version older than V (a downgrade)

Example:
  $ oknek verify-release --min-version \"$(oknek --version | cut -d' ' -f2)\" ./oknek-0.2.0/
";

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{path}: missing ({source})")]
    Missing {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Signature {
        path: PathBuf,
        source: MinisignError,
    },
    #[error("{path}: the signature is for {signed:?}, not for this file")]
    WrongFile { path: PathBuf, signed: String },
    #[error("{path}: the trusted comment has no version")]
    NoVersion { path: PathBuf },
    #[error("{path}: signed as version {found}, but the release is {expected}")]
    VersionMismatch {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{path}: SHA-256 does not match SHA256SUMS (tampered or truncated)")]
    Checksum { path: PathBuf },
    #[error("{path}:{line}: not a `<sha256>  <file name>` line")]
    BadSums { path: PathBuf, line: usize },
    #[error("version {found} is older than {minimum}: refusing a downgrade")]
    Downgrade { found: String, minimum: String },
}

/// What a verified file or release is.
#[derive(Debug)]
pub struct Verified {
    pub version: String,
    pub files: Vec<String>,
}

fn read(path: &Path) -> Result<Vec<u8>, ReleaseError> {
    fs::read(path).map_err(|source| ReleaseError::Missing {
        path: path.to_owned(),
        source,
    })
}

fn signature_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".minisig");
    PathBuf::from(s)
}

/// Verifies `path` against `path.minisig`: the right key, the right file name, a version.
pub fn verify_file(key: &PublicKey, path: &Path) -> Result<String, ReleaseError> {
    let data = read(path)?;
    verify_bytes(key, path, &data)
}

/// [`verify_file`] for data already read from `path`.
pub fn verify_bytes(key: &PublicKey, path: &Path, data: &[u8]) -> Result<String, ReleaseError> {
    let sig_path = signature_path(path);
    let sig = read(&sig_path)?;
    let sig = String::from_utf8_lossy(&sig);
    let comment = key
        .verify(data, &sig)
        .map_err(|source| ReleaseError::Signature {
            path: path.to_owned(),
            source,
        })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match comment.field("file") {
        Some(signed) if signed == name => {}
        other => {
            return Err(ReleaseError::WrongFile {
                path: path.to_owned(),
                signed: other.unwrap_or("").to_owned(),
            });
        }
    }
    comment
        .field("version")
        .map(str::to_owned)
        .ok_or_else(|| ReleaseError::NoVersion {
            path: path.to_owned(),
        })
}

/// Verifies a release directory: the signed SHA256SUMS, then each listed artifact.
pub fn verify_release(key: &PublicKey, dir: &Path) -> Result<Verified, ReleaseError> {
    let sums_path = dir.join(SUMS_FILE);
    let sums = read(&sums_path)?;
    let version = verify_bytes(key, &sums_path, &sums)?;
    let mut files = Vec::new();
    for (i, line) in String::from_utf8_lossy(&sums).lines().enumerate() {
        let bad = || ReleaseError::BadSums {
            path: sums_path.clone(),
            line: i + 1,
        };
        let (hash, name) = line.split_once(' ').ok_or_else(bad)?;
        let name = name.trim_start_matches([' ', '*']);
        if hash.len() != 64 || name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(bad());
        }
        let path = dir.join(name);
        let data = read(&path)?;
        let actual: String = Sha256::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if !actual.eq_ignore_ascii_case(hash) {
            return Err(ReleaseError::Checksum { path });
        }
        let signed_version = verify_bytes(key, &path, &data)?;
        if signed_version != version {
            return Err(ReleaseError::VersionMismatch {
                path,
                found: signed_version,
                expected: version,
            });
        }
        files.push(name.to_owned());
    }
    Ok(Verified { version, files })
}

/// The trusted key: `--pubkey FILE`, announced on stderr, or the pinned release key.
pub fn trusted_key(pubkey: Option<&Path>) -> Result<PublicKey, CliError> {
    match pubkey {
        Some(path) => {
            let text = fs::read_to_string(path).map_err(|e| {
                CliError::failed(format!("cannot read public key {}: {e}", path.display()))
            })?;
            let key = PublicKey::parse(&text)
                .map_err(|e| CliError::failed(format!("{}: {e}", path.display())))?;
            eprintln!(
                "oknek: NOTE: trusting key {} from {}, not the pinned oknek release key",
                key.key_id(),
                path.display()
            );
            Ok(key)
        }
        None => PublicKey::parse(RELEASE_PUBLIC_KEY)
            .map_err(|e| CliError::failed(format!("the pinned release key is broken: {e}"))),
    }
}

pub fn check_not_downgrade(found: &str, minimum: Option<&str>) -> Result<(), ReleaseError> {
    match minimum {
        Some(min) if compare_versions(found, min).is_lt() => Err(ReleaseError::Downgrade {
            found: found.to_owned(),
            minimum: min.to_owned(),
        }),
        _ => Ok(()),
    }
}

pub fn verify_release_cmd(
    parser: &mut lexopt::Parser,
    _global: &Global,
) -> Result<ExitCode, CliError> {
    use lexopt::prelude::*;
    let mut pubkey: Option<PathBuf> = None;
    let mut min_version: Option<String> = None;
    let mut target: Option<PathBuf> = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("pubkey") => pubkey = Some(parser.value()?.into()),
            Long("min-version") => min_version = Some(parser.value()?.string()?),
            Short('h') | Long("help") => {
                print!("{VERIFY_HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            Value(v) if target.is_none() => target = Some(v.into()),
            _ => return Err(arg.unexpected().into()),
        }
    }
    let target = target.ok_or_else(|| {
        CliError::usage("verify-release needs a release directory or a signed file")
    })?;
    let key = trusted_key(pubkey.as_deref())?;
    let verified = if target.is_dir() {
        verify_release(&key, &target)
    } else {
        verify_file(&key, &target).map(|version| Verified {
            version,
            files: vec![target.display().to_string()],
        })
    }
    .map_err(CliError::failed)?;
    check_not_downgrade(&verified.version, min_version.as_deref()).map_err(CliError::failed)?;
    println!(
        "ok: version {}, {} signed {} verified with key {}",
        verified.version,
        verified.files.len(),
        if verified.files.len() == 1 {
            "file"
        } else {
            "files"
        },
        key.key_id()
    );
    for f in &verified.files {
        println!("  {f}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn sign_cmd(parser: &mut lexopt::Parser, _global: &Global) -> Result<ExitCode, CliError> {
    use lexopt::prelude::*;
    let mut key_path: Option<PathBuf> = None;
    let mut pubkey_path: Option<PathBuf> = None;
    let mut version: Option<String> = None;
    let mut comment: Option<String> = None;
    let mut generate = false;
    let mut files: Vec<PathBuf> = Vec::new();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("key") => key_path = Some(parser.value()?.into()),
            Long("pubkey") => pubkey_path = Some(parser.value()?.into()),
            Long("version") => version = Some(parser.value()?.string()?),
            Long("comment") => comment = Some(parser.value()?.string()?),
            Long("generate") => generate = true,
            Short('h') | Long("help") => {
                print!("{SIGN_HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            Value(v) => files.push(v.into()),
            _ => return Err(arg.unexpected().into()),
        }
    }
    let key_path = key_path.ok_or_else(|| CliError::usage("sign needs --key SECRET"))?;
    if generate {
        let pubkey_path =
            pubkey_path.ok_or_else(|| CliError::usage("sign --generate needs --pubkey PUBLIC"))?;
        return generate_pair(&key_path, &pubkey_path);
    }
    if files.is_empty() {
        return Err(CliError::usage("sign needs at least one FILE"));
    }
    let text = fs::read_to_string(&key_path).map_err(|e| {
        CliError::failed(format!(
            "cannot read secret key {}: {e}",
            key_path.display()
        ))
    })?;
    let key = SecretKey::parse(&text)
        .map_err(|e| CliError::failed(format!("{}: {e}", key_path.display())))?;
    let timestamp = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .parse()
            .map_err(|_| CliError::usage("SOURCE_DATE_EPOCH must be a number of seconds"))?,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    for file in &files {
        let data = fs::read(file)
            .map_err(|e| CliError::failed(format!("cannot read {}: {e}", file.display())))?;
        let name = file
            .file_name()
            .ok_or_else(|| CliError::usage(format!("{} is not a file name", file.display())))?
            .to_string_lossy();
        let trusted = comment
            .clone()
            .unwrap_or_else(|| TrustedComment::for_file(timestamp, &name, version.as_deref()));
        let sig = key.sign(&data, &trusted).map_err(CliError::failed)?;
        let sig_path = signature_path(file);
        fs::write(&sig_path, sig)
            .map_err(|e| CliError::failed(format!("cannot write {}: {e}", sig_path.display())))?;
        println!("signed {} ({})", file.display(), key.key_id());
    }
    Ok(ExitCode::SUCCESS)
}

fn generate_pair(secret: &Path, public: &Path) -> Result<ExitCode, CliError> {
    for p in [secret, public] {
        if p.symlink_metadata().is_ok() {
            return Err(CliError::failed(format!(
                "{} exists; a key is never overwritten",
                p.display()
            )));
        }
    }
    let key = SecretKey::generate().map_err(CliError::failed)?;
    let write_new = |path: &Path, mode: u32, text: &str| -> Result<(), CliError> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|e| CliError::failed(format!("cannot create {}: {e}", path.display())))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display())))
    };
    write_new(secret, 0o600, &key.to_file_text())?;
    write_new(public, 0o644, &key.public_file_text())?;
    println!(
        "created {} (secret, keep it offline) and {} (public), key {}",
        secret.display(),
        public.display(),
        key.key_id()
    );
    Ok(ExitCode::SUCCESS)
}
