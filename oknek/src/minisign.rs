//! Minisign keys and signatures, as used for oknek releases and rule packs.
//!
//! Signing writes prehashed (`ED`, BLAKE2b-512 of the file) signatures, minisign's default, so
//! `minisign -V`, minisign-verify and `openssl pkeyutl` (see install.sh) all check them. Secret
//! keys are read and written unencrypted (`minisign -G -W`): release keys belong on an offline
//! machine, not behind a password in a build script. Verification goes through minisign-verify.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey};
use oknek_evidence::raw::{base64, unbase64};

use crate::blake2b::blake2b;

/// `Ed`: the algorithm id in keys.
const KEY_ALG: [u8; 2] = *b"Ed";
/// `ED`: a signature over the BLAKE2b-512 digest of the file.
const PREHASHED_ALG: [u8; 2] = *b"ED";
/// `Ed` in a signature: the file itself was signed (legacy; refused).
const LEGACY_ALG: [u8; 2] = *b"Ed";
const CHECKSUM_ALG: [u8; 2] = *b"B2";
const SECRET_KEY_LEN: usize = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32;

#[derive(Debug, thiserror::Error)]
pub enum MinisignError {
    #[error("not a minisign secret key: {0}")]
    BadSecretKey(&'static str),
    #[error(
        "the secret key is password-protected; oknek signs with unencrypted keys \
         (create one with `oknek sign --generate`, or `minisign -G -W`)"
    )]
    EncryptedSecretKey,
    #[error("not a minisign public key: {0}")]
    BadPublicKey(&'static str),
    #[error("not a minisign signature: {0}")]
    BadSignature(&'static str),
    #[error("signed with key {found}, but the trusted key is {expected}")]
    UnexpectedKey { found: KeyId, expected: KeyId },
    #[error("legacy (not prehashed) minisign signature; only prehashed signatures are accepted")]
    Legacy,
    #[error("signature does not match the data (tampered, truncated or corrupted)")]
    Mismatch,
    #[error("a trusted comment must be one line")]
    MultilineComment,
    #[error("cannot read random bytes: {0}")]
    Random(std::io::Error),
}

/// A key id: 8 bytes, shown as minisign shows it (hex of the little-endian number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.iter().rev() {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

/// The base64 line of a minisign file: the second line; the first is the untrusted comment.
fn payload_line(text: &str) -> Option<&str> {
    let mut lines = text.lines();
    let first = lines.next()?;
    if !first.starts_with("untrusted comment:") {
        return None;
    }
    lines.next().map(str::trim)
}

pub struct SecretKey {
    key_id: KeyId,
    signing: SigningKey,
}

impl SecretKey {
    /// A new random key pair.
    pub fn generate() -> Result<SecretKey, MinisignError> {
        let mut seed = [0u8; 32];
        let mut id = [0u8; 8];
        random_bytes(&mut seed).map_err(MinisignError::Random)?;
        random_bytes(&mut id).map_err(MinisignError::Random)?;
        Ok(SecretKey {
            key_id: KeyId(id),
            signing: SigningKey::from_bytes(&seed),
        })
    }

    /// Parses an unencrypted minisign secret key file.
    pub fn parse(text: &str) -> Result<SecretKey, MinisignError> {
        let b64 = payload_line(text).ok_or(MinisignError::BadSecretKey("no key line"))?;
        let bin = unbase64(b64).ok_or(MinisignError::BadSecretKey("bad base64"))?;
        if bin.len() != SECRET_KEY_LEN {
            return Err(MinisignError::BadSecretKey("wrong length"));
        }
        if bin[0..2] != KEY_ALG {
            return Err(MinisignError::BadSecretKey("not an Ed25519 key"));
        }
        match &bin[2..4] {
            [0, 0] => {}
            b"Sc" => return Err(MinisignError::EncryptedSecretKey),
            _ => return Err(MinisignError::BadSecretKey("unknown key derivation")),
        }
        if bin[4..6] != CHECKSUM_ALG {
            return Err(MinisignError::BadSecretKey("unknown checksum algorithm"));
        }
        let keynum = &bin[54..];
        let key_id: [u8; 8] = keynum[0..8].try_into().expect("8 bytes");
        let sk = &keynum[8..72];
        let checksum = &keynum[72..104];
        // minisign leaves the checksum zero in unencrypted keys; when present it must match.
        if checksum.iter().any(|&b| b != 0) && checksum != key_checksum(&key_id, sk) {
            return Err(MinisignError::BadSecretKey("checksum mismatch"));
        }
        let seed: [u8; 32] = sk[0..32].try_into().expect("32 bytes");
        let signing = SigningKey::from_bytes(&seed);
        if signing.verifying_key().as_bytes()[..] != sk[32..64] {
            return Err(MinisignError::BadSecretKey("public half does not match"));
        }
        Ok(SecretKey {
            key_id: KeyId(key_id),
            signing,
        })
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The secret key file (unencrypted, with its checksum).
    pub fn to_file_text(&self) -> String {
        let mut sk = Vec::with_capacity(64);
        sk.extend_from_slice(self.signing.as_bytes());
        sk.extend_from_slice(self.signing.verifying_key().as_bytes());
        let mut bin = Vec::with_capacity(SECRET_KEY_LEN);
        bin.extend_from_slice(&KEY_ALG);
        bin.extend_from_slice(&[0, 0]);
        bin.extend_from_slice(&CHECKSUM_ALG);
        bin.extend_from_slice(&[0; 32 + 8 + 8]);
        bin.extend_from_slice(&self.key_id.0);
        bin.extend_from_slice(&sk);
        bin.extend_from_slice(&key_checksum(&self.key_id.0, &sk));
        format!(
            "untrusted comment: minisign secret key {} (unencrypted)\n{}\n",
            self.key_id,
            base64(&bin)
        )
    }

    /// The public key file.
    pub fn public_file_text(&self) -> String {
        let mut bin = Vec::with_capacity(42);
        bin.extend_from_slice(&KEY_ALG);
        bin.extend_from_slice(&self.key_id.0);
        bin.extend_from_slice(self.signing.verifying_key().as_bytes());
        format!(
            "untrusted comment: minisign public key {}\n{}\n",
            self.key_id,
            base64(&bin)
        )
    }

    /// A prehashed signature file for `data` carrying `trusted_comment`.
    pub fn sign(&self, data: &[u8], trusted_comment: &str) -> Result<String, MinisignError> {
        if trusted_comment.contains(['\n', '\r']) {
            return Err(MinisignError::MultilineComment);
        }
        let digest = blake2b(64, data);
        let signature = self.signing.sign(&digest).to_bytes();
        let mut global = Vec::with_capacity(64 + trusted_comment.len());
        global.extend_from_slice(&signature);
        global.extend_from_slice(trusted_comment.as_bytes());
        let global_signature = self.signing.sign(&global).to_bytes();
        let mut line = Vec::with_capacity(74);
        line.extend_from_slice(&PREHASHED_ALG);
        line.extend_from_slice(&self.key_id.0);
        line.extend_from_slice(&signature);
        Ok(format!(
            "untrusted comment: signature from minisign secret key {}\n{}\ntrusted comment: {}\n{}\n",
            self.key_id,
            base64(&line),
            trusted_comment,
            base64(&global_signature)
        ))
    }
}

/// BLAKE2b-256 over the algorithm, key id and secret key: minisign's secret key checksum.
fn key_checksum(key_id: &[u8; 8], sk: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(2 + 8 + 64);
    input.extend_from_slice(&KEY_ALG);
    input.extend_from_slice(key_id);
    input.extend_from_slice(sk);
    blake2b(32, &input)
}

/// A trusted public key.
#[derive(Clone)]
pub struct PublicKey {
    key_id: KeyId,
    key: minisign_verify::PublicKey,
}

impl PublicKey {
    /// Parses a minisign public key file (two lines) or its bare base64 line.
    pub fn parse(text: &str) -> Result<PublicKey, MinisignError> {
        let b64 = payload_line(text).unwrap_or_else(|| text.trim());
        let bin = unbase64(b64).ok_or(MinisignError::BadPublicKey("bad base64"))?;
        if bin.len() != 42 || bin[0..2] != KEY_ALG {
            return Err(MinisignError::BadPublicKey("not an Ed25519 minisign key"));
        }
        let key = minisign_verify::PublicKey::from_base64(b64)
            .map_err(|_| MinisignError::BadPublicKey("rejected by the verifier"))?;
        Ok(PublicKey {
            key_id: KeyId(bin[2..10].try_into().expect("8 bytes")),
            key,
        })
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Checks `signature_text` over `data`; returns the (now trusted) comment.
    pub fn verify(
        &self,
        data: &[u8],
        signature_text: &str,
    ) -> Result<TrustedComment, MinisignError> {
        let b64 = payload_line(signature_text)
            .ok_or(MinisignError::BadSignature("no untrusted comment line"))?;
        let bin = unbase64(b64).ok_or(MinisignError::BadSignature("bad base64"))?;
        if bin.len() != 74 {
            return Err(MinisignError::BadSignature("wrong length"));
        }
        let algorithm: [u8; 2] = bin[0..2].try_into().expect("2 bytes");
        if algorithm == LEGACY_ALG {
            return Err(MinisignError::Legacy);
        }
        if algorithm != PREHASHED_ALG {
            return Err(MinisignError::BadSignature("unknown algorithm"));
        }
        let found = KeyId(bin[2..10].try_into().expect("8 bytes"));
        if found != self.key_id {
            return Err(MinisignError::UnexpectedKey {
                found,
                expected: self.key_id,
            });
        }
        let signature = minisign_verify::Signature::decode(signature_text)
            .map_err(|_| MinisignError::BadSignature("malformed"))?;
        self.key
            .verify(data, &signature, false)
            .map_err(|_| MinisignError::Mismatch)?;
        Ok(TrustedComment(signature.trusted_comment().to_owned()))
    }
}

/// A verified trusted comment: `timestamp:… file:… version:…`, fields separated by tabs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedComment(pub String);

impl TrustedComment {
    /// The value of `name:` in the comment.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.0
            .split(['\t', ' '])
            .find_map(|part| part.strip_prefix(name)?.strip_prefix(':'))
    }

    /// The comment oknek writes: signing time (SOURCE_DATE_EPOCH for reproducible releases),
    /// file name and version.
    pub fn for_file(timestamp: u64, file: &str, version: Option<&str>) -> String {
        match version {
            Some(v) => format!("timestamp:{timestamp}\tfile:{file}\tversion:{v}"),
            None => format!("timestamp:{timestamp}\tfile:{file}"),
        }
    }
}

fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe the writable slice `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        done += n as usize;
    }
    Ok(())
}

/// Compares dotted versions (`0.2.10` > `0.2.9`); a pre-release (`1.0.0-rc1`) sorts before its
/// release. Non-numeric parts compare as text.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let split = |v: &str| -> (Vec<String>, Option<String>) {
        let (main, pre) = match v.split_once('-') {
            Some((m, p)) => (m, Some(p.to_owned())),
            None => (v, None),
        };
        (main.split('.').map(str::to_owned).collect(), pre)
    };
    let part = |x: &str, y: &str| match (x.parse::<u64>(), y.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => x.cmp(y),
    };
    let ((am, ap), (bm, bp)) = (split(a), split(b));
    for i in 0..am.len().max(bm.len()) {
        let x = am.get(i).map_or("0", String::as_str);
        let y = bm.get(i).map_or("0", String::as_str);
        match part(x, y) {
            Ordering::Equal => {}
            other => return other,
        }
    }
    match (ap, bp) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => part(&x, &y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    #[test]
    fn sign_then_verify_and_reject_tampering() {
        let sk = SecretKey::generate().unwrap();
        let pk = PublicKey::parse(&sk.public_file_text()).unwrap();
        let sig = sk
            .sign(
                b"release bytes",
                "timestamp:1\tfile:a.tar.gz\tversion:1.2.3",
            )
            .unwrap();
        let tc = pk.verify(b"release bytes", &sig).unwrap();
        assert_eq!(tc.field("file"), Some("a.tar.gz"));
        assert_eq!(tc.field("version"), Some("1.2.3"));
        assert!(matches!(
            pk.verify(b"release bytez", &sig),
            Err(MinisignError::Mismatch)
        ));
        assert!(matches!(
            pk.verify(b"release byte", &sig),
            Err(MinisignError::Mismatch)
        ));
        // An edited trusted comment breaks the global signature.
        let edited = sig.replace("version:1.2.3", "version:9.9.9");
        assert!(matches!(
            pk.verify(b"release bytes", &edited),
            Err(MinisignError::Mismatch)
        ));
    }

    #[test]
    fn other_key_is_named_in_the_error() {
        let sk = SecretKey::generate().unwrap();
        let other = SecretKey::generate().unwrap();
        let pk = PublicKey::parse(&other.public_file_text()).unwrap();
        let sig = sk.sign(b"x", "file:x").unwrap();
        let err = pk.verify(b"x", &sig).unwrap_err();
        assert!(matches!(err, MinisignError::UnexpectedKey { .. }));
        assert!(err.to_string().contains(&sk.key_id().to_string()));
    }

    #[test]
    fn secret_key_file_round_trips_and_checksum_is_checked() {
        let sk = SecretKey::generate().unwrap();
        let text = sk.to_file_text();
        let again = SecretKey::parse(&text).unwrap();
        assert_eq!(again.key_id(), sk.key_id());
        assert_eq!(again.public_file_text(), sk.public_file_text());
        // Flip one bit of the checksum.
        let b64 = text.lines().nth(1).unwrap();
        let mut bin = unbase64(b64).unwrap();
        *bin.last_mut().unwrap() ^= 1;
        let bad = format!("untrusted comment: x\n{}\n", base64(&bin));
        assert!(SecretKey::parse(&bad).is_err());
        // Password-protected keys are recognised and refused with a clear error.
        bin[2..4].copy_from_slice(b"Sc");
        let enc = format!("untrusted comment: x\n{}\n", base64(&bin));
        assert!(matches!(
            SecretKey::parse(&enc),
            Err(MinisignError::EncryptedSecretKey)
        ));
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(compare_versions("0.2.10", "0.2.9"), Ordering::Greater);
        assert_eq!(compare_versions("0.1.0", "0.1"), Ordering::Equal);
        assert_eq!(compare_versions("1.0.0-rc1", "1.0.0"), Ordering::Less);
        assert_eq!(compare_versions("1.0.0", "0.99.99"), Ordering::Greater);
        assert_eq!(compare_versions("0.1.0", "0.1.1"), Ordering::Less);
    }
}
