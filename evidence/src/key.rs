//! The host's Ed25519 evidence key: creation, safe loading, export and fingerprints.
//!
//! Key file format (text, mode 0600, owned by the user the writer runs as — root in production):
//!
//! ```text
//! oknek-host-key-v1
//! install-id 5f0c8e1d2a4b6c8e0f1a2b3c4d5e6f70
//! created 2026-11-22T08:30:00.000000000Z
//! secret <64 lowercase hex digits: the 32-byte Ed25519 seed>
//! public oknek-ed25519:<base64 of the 32-byte public key>
//! ```

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use oknek_event::Timestamp;
use sha2::{Digest, Sha256};

use crate::codec::{base64, hex, unbase64, unhex};
use crate::error::{Error, Result};
use crate::sys;

pub const KEY_FILE: &str = "host.key";
pub const PUB_FILE: &str = "host.pub";
const MAGIC: &str = "oknek-host-key-v1";
const PUB_PREFIX: &str = "oknek-ed25519:";
/// Prefix of the message a signed head signs (docs/evidence.md, "Signed head").
pub const HEAD_TAG: &[u8] = b"oknek-head-v1\0";

/// An Ed25519 public key: what `oknek verify --pubkey` takes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<PublicKey> {
        VerifyingKey::from_bytes(bytes).ok().map(PublicKey)
    }

    /// Parses `oknek-ed25519:<base64>` (surrounding whitespace ignored).
    pub fn parse(input: &str) -> Result<PublicKey> {
        let err = |reason: &str| Error::PublicKey {
            input: input.chars().take(80).collect(),
            reason: reason.to_owned(),
        };
        let s = input.trim();
        let b64 = s
            .strip_prefix(PUB_PREFIX)
            .ok_or_else(|| err("missing the oknek-ed25519: prefix"))?;
        let bytes = unbase64(b64).ok_or_else(|| err("not valid base64"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| err("an Ed25519 public key is 32 bytes"))?;
        PublicKey::from_bytes(&bytes).ok_or_else(|| err("not a point on the curve"))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// `sha256:<hex of SHA-256 over the 32 public key bytes>`.
    pub fn fingerprint(&self) -> String {
        format!("sha256:{}", hex(&Sha256::digest(self.as_bytes())))
    }

    /// The first 16 hex digits of the fingerprint: the `key` field of every bundle.
    pub fn key_id(&self) -> String {
        hex(&Sha256::digest(self.as_bytes())[..8])
    }

    /// Checks a bundle signature: Ed25519 over the 32-byte bundle hash.
    pub fn verify_hash(&self, hash: &[u8; 32], sig: &[u8; 64]) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(sig);
        self.0.verify_strict(hash, &sig).is_ok()
    }

    /// Checks a signed head.
    pub fn verify_head(&self, head: &Head) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(&head.sig);
        self.0
            .verify_strict(&head_message(head.seq, &head.hash), &sig)
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    /// The export form, one line: `oknek-ed25519:<base64>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUB_PREFIX}{}", base64(self.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// The chain head signed by the writer after every batch: (seq, hash) of the last bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: [u8; 32],
    pub sig: [u8; 64],
}

pub fn head_message(seq: u64, hash: &[u8; 32]) -> [u8; 54] {
    let mut m = [0u8; 54];
    m[..14].copy_from_slice(HEAD_TAG);
    m[14..22].copy_from_slice(&seq.to_be_bytes());
    m[22..].copy_from_slice(hash);
    m
}

/// The host's signing key with its install id.
pub struct HostKey {
    signing: SigningKey,
    public: PublicKey,
    install_id: String,
    created: Timestamp,
}

impl fmt::Debug for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("HostKey")
            .field("public", &self.public)
            .field("install_id", &self.install_id)
            .finish_non_exhaustive()
    }
}

impl HostKey {
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    pub fn install_id(&self) -> &str {
        &self.install_id
    }

    pub fn created(&self) -> Timestamp {
        self.created
    }

    pub fn sign_hash(&self, hash: &[u8; 32]) -> [u8; 64] {
        self.signing.sign(hash).to_bytes()
    }

    pub fn sign_head(&self, seq: u64, hash: &[u8; 32]) -> Head {
        Head {
            seq,
            hash: *hash,
            sig: self.signing.sign(&head_message(seq, hash)).to_bytes(),
        }
    }

    /// Creates a new key at `path` (normally `<state dir>/host.key`) and its public half beside
    /// it (`host.pub`). Never replaces an existing key: the evidence chain is bound to it.
    pub fn generate(path: &Path) -> Result<HostKey> {
        let dir = parent(path);
        sys::ensure_private_dir(dir)?;
        let mut seed = [0u8; 32];
        let mut id = [0u8; 16];
        sys::random_bytes(&mut seed).map_err(|e| Error::io(path, e))?;
        sys::random_bytes(&mut id).map_err(|e| Error::io(path, e))?;
        let signing = SigningKey::from_bytes(&seed);
        let key = HostKey {
            public: PublicKey(signing.verifying_key()),
            signing,
            install_id: hex(&id),
            created: Timestamp::now(),
        };
        let text = format!(
            "{MAGIC}\ninstall-id {}\ncreated {}\nsecret {}\npublic {}\n",
            key.install_id,
            key.created,
            hex(&seed),
            key.public
        );
        seed.fill(0);
        // Write a private temporary file, then hard-link it into place: the link is atomic and
        // fails if a key already exists, so a crash never leaves a half-written key and a race
        // never replaces one.
        let tmp = write_temp(dir, ".host.key", text.as_bytes(), 0o600)?;
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::key(
                    path,
                    "already exists; refusing to replace it (the evidence chain is bound to \
                     this key). `oknek key show` prints its public half",
                ));
            }
            Err(e) => return Err(Error::io(path, e)),
        }
        let pub_tmp = write_temp(
            dir,
            ".host.pub",
            format!("{}\n", key.public).as_bytes(),
            0o644,
        )?;
        let pub_path = dir.join(PUB_FILE);
        fs::rename(&pub_tmp, &pub_path).map_err(|e| Error::io(&pub_path, e))?;
        sys::fsync_dir(dir)?;
        Ok(key)
    }

    /// Loads the key at `path`, refusing a symlink, a non-regular file, a file that group or
    /// others can read or write, or one owned by another user.
    pub fn load(path: &Path) -> Result<HostKey> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => Error::key(
                    path,
                    "is a symlink; refusing to use it (an attacker could point it at their key)",
                ),
                Some(libc::ENOENT) => Error::key(
                    path,
                    "does not exist; create one with `oknek keygen` (or give --state-dir)",
                ),
                _ => Error::io(path, e),
            })?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if !meta.file_type().is_file() {
            return Err(Error::key(
                path,
                "is not a regular file; refusing to use it",
            ));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(Error::key(
                path,
                format!(
                    "is accessible by group or others (mode {mode:04o}); the key may be \
                     compromised: run `chmod 600 {}` if you are sure it is not",
                    path.display()
                ),
            ));
        }
        let euid = sys::euid();
        if meta.uid() != euid {
            return Err(Error::key(
                path,
                format!(
                    "is owned by uid {}, not by uid {euid} that this process runs as",
                    meta.uid()
                ),
            ));
        }
        sys::check_dir(parent(path)).map_err(|e| Error::key(path, e.to_string()))?;
        let mut text = String::new();
        file.take(4096)
            .read_to_string(&mut text)
            .map_err(|e| Error::io(path, e))?;
        parse_key_file(&text).map_err(|reason| Error::key(path, reason))
    }

    /// Loads the key, or creates it when there is none (first start of the daemon).
    pub fn load_or_generate(path: &Path) -> Result<(HostKey, bool)> {
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match HostKey::generate(path) {
                Ok(k) => Ok((k, true)),
                // Someone else created it meanwhile: use theirs.
                Err(Error::Key { .. }) if path.exists() => Ok((HostKey::load(path)?, false)),
                Err(e) => Err(e),
            },
            _ => Ok((HostKey::load(path)?, false)),
        }
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn write_temp(dir: &Path, stem: &str, data: &[u8], mode: u32) -> Result<PathBuf> {
    let mut r = [0u8; 8];
    sys::random_bytes(&mut r).map_err(|e| Error::io(dir, e))?;
    let tmp = dir.join(format!("{stem}.tmp-{}", hex(&r)));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    let res = f.write_all(data).and_then(|()| f.sync_all());
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    Ok(tmp)
}

fn parse_key_file(text: &str) -> std::result::Result<HostKey, String> {
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(format!(
            "not an oknek host key (first line must be {MAGIC})"
        ));
    }
    let (mut id, mut created, mut secret, mut public) = (None, None, None, None);
    for line in lines {
        let (k, v) = line
            .split_once(' ')
            .ok_or_else(|| format!("malformed line {line:?}"))?;
        let slot = match k {
            "install-id" => &mut id,
            "created" => &mut created,
            "secret" => &mut secret,
            "public" => &mut public,
            _ => return Err(format!("unknown entry {k:?}")),
        };
        if slot.replace(v).is_some() {
            return Err(format!("entry {k:?} appears twice"));
        }
    }
    let missing = |k: &str| format!("missing entry {k:?}");
    let id = id.ok_or_else(|| missing("install-id"))?;
    if unhex::<16>(id.as_bytes()).is_none() {
        return Err("install-id must be 32 lowercase hex digits".into());
    }
    let created: Timestamp = created
        .ok_or_else(|| missing("created"))?
        .parse()
        .map_err(|e| format!("created: {e}"))?;
    let seed = unhex::<32>(secret.ok_or_else(|| missing("secret"))?.as_bytes())
        .ok_or("secret must be 64 lowercase hex digits")?;
    let public =
        PublicKey::parse(public.ok_or_else(|| missing("public"))?).map_err(|e| e.to_string())?;
    let signing = SigningKey::from_bytes(&seed);
    if signing.verifying_key() != public.0 {
        return Err("the public entry does not belong to the secret (file edited?)".into());
    }
    Ok(HostKey {
        signing,
        public,
        install_id: id.to_owned(),
        created,
    })
}

/// Reads the public key from a key file, or from a file holding `oknek-ed25519:…`, or the
/// string itself.
pub fn public_key_from_arg(arg: &str) -> Result<PublicKey> {
    if arg.trim_start().starts_with(PUB_PREFIX) {
        return PublicKey::parse(arg);
    }
    let path = Path::new(arg);
    let mut text = String::new();
    File::open(path)
        .and_then(|f| f.take(8192).read_to_string(&mut text))
        .map_err(|e| Error::io(path, e))?;
    match text.lines().find_map(|l| {
        l.strip_prefix("public ")
            .or(Some(l).filter(|l| l.starts_with(PUB_PREFIX)))
    }) {
        Some(line) => PublicKey::parse(line),
        None => Err(Error::PublicKey {
            input: arg.to_owned(),
            reason: "the file holds no oknek-ed25519: line".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generate_load_and_refuse_to_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join(KEY_FILE);
        let key = HostKey::generate(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = HostKey::load(&path).unwrap();
        assert_eq!(again.public(), key.public());
        assert_eq!(again.install_id(), key.install_id());
        let err = HostKey::generate(&path).unwrap_err().to_string();
        assert!(err.contains("refusing to replace"), "{err}");
        let exported = key.public().to_string();
        assert_eq!(PublicKey::parse(&exported).unwrap(), *key.public());
        let from_pub = public_key_from_arg(dir.path().join("state/host.pub").to_str().unwrap());
        assert_eq!(from_pub.unwrap(), *key.public());
        assert_eq!(key.public().fingerprint().len(), 7 + 64);
        let h = [7u8; 32];
        assert!(key.public().verify_hash(&h, &key.sign_hash(&h)));
        assert!(key.public().verify_head(&key.sign_head(9, &h)));
        assert!(!key.public().verify_head(&Head {
            seq: 8,
            ..key.sign_head(9, &h)
        }));
    }

    #[test]
    fn refuses_unsafe_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        HostKey::generate(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = HostKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("group or others"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();

        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = HostKey::load(&link).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");

        let sub = dir.path().join("adir");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).unwrap();
        let err = HostKey::load(&sub).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");

        let err = HostKey::load(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("oknek keygen"), "{err}");
    }

    #[test]
    fn refuses_corrupt_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        HostKey::generate(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let other = HostKey::generate(&dir.path().join("b").join(KEY_FILE)).unwrap();
        for bad in [
            String::new(),
            "garbage".to_owned(),
            text.replace("secret ", "secret 00"),
            text.lines()
                .map(|l| {
                    if l.starts_with("public ") {
                        format!("public {}", other.public())
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n"),
            format!("{text}extra line\n"),
            "\u{0}\u{ff}".repeat(3000),
        ] {
            fs::write(&path, &bad).unwrap();
            assert!(HostKey::load(&path).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn public_key_parse_errors() {
        for bad in [
            "",
            "oknek-ed25519:",
            "oknek-ed25519:AAAA",
            "ssh-ed25519 AAAA",
            "oknek-ed25519:!!!!",
        ] {
            assert!(PublicKey::parse(bad).is_err(), "{bad}");
        }
    }
}
