//! Content hashes of files the daemon measures (agent executables, model weights), named by the
//! version of the file they were read from.

use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;

use sha2::{Digest, Sha256};

/// One version of a file: its identity and the size and modification time it had. A hash is
/// valid for the version it was read from; a rewritten file is another version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileVersion {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileVersion {
    pub fn of(md: &std::fs::Metadata) -> FileVersion {
        FileVersion {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
        }
    }
}

/// Lowercase hex sha256 of everything `reader` yields, read `chunk` bytes at a time.
pub fn sha256_hex(reader: &mut impl Read, chunk: usize) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; chunk.max(1)];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_whatever_the_chunk_size() {
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_hex(&mut &b"abc"[..], 1).unwrap(), abc);
        assert_eq!(sha256_hex(&mut &b"abc"[..], 1 << 20).unwrap(), abc);
    }
}
