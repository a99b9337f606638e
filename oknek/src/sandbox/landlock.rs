//! Landlock for `oknek run`: the block rules Landlock can express, enforced by the kernel with
//! no round trip and no race.
//!
//! oknekd publishes them in `<runtime-dir>/seccomp-landlock.policy`: `deny-read PATH` (neither
//! readable nor executable) and `deny-exec PATH` (not executable), a PATH being a file or a
//! directory (everything beneath it).
//!
//! Landlock only *grants*: a handled right is denied unless some rule grants it on a hierarchy
//! that contains the file. "Deny one file" is therefore written as "grant everything next to
//! it": a rule on `/` for the rights we do not restrict, and, along the path from `/` to each
//! protected path, a READ_FILE|EXECUTE grant on every *sibling* entry that exists now. The
//! protected object and its ancestors themselves get no read/exec grant.
//!
//! Trade-off: an entry created later *directly* in one of those ancestor directories (a new
//! file in `~` when `~/.ssh/id_ed25519` is protected) is not covered by any grant, so the agent
//! cannot read or execute it until it is restarted. Entries created deeper, inside a sibling
//! directory, are fine. Renames and links that would carry a protected file to a readable place
//! are refused by Landlock itself (LANDLOCK_ACCESS_FS_REFER), and a protected file created later
//! at its path is protected too. The ruleset is fixed at launch: rules added later are enforced
//! by seccomp only, rules removed later stay enforced until the agent restarts.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

pub const POLICY_FILE: &str = "seccomp-landlock.policy";

const ACCESS_EXECUTE: u64 = 1 << 0;
const ACCESS_READ_FILE: u64 = 1 << 2;
const ACCESS_REFER: u64 = 1 << 13;
const RULE_PATH_BENEATH: libc::c_int = 1;
const CREATE_RULESET_VERSION: libc::c_uint = 1;

/// The paths to protect, as published by oknekd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub deny_read: Vec<PathBuf>,
    pub deny_exec: Vec<PathBuf>,
}

impl Policy {
    /// Reads the published policy; `None` when oknekd publishes none.
    pub fn load(runtime_dir: &Path) -> io::Result<Option<Policy>> {
        match std::fs::read_to_string(runtime_dir.join(POLICY_FILE)) {
            Ok(text) => Ok(Some(Policy::parse(&text))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn parse(text: &str) -> Policy {
        let mut p = Policy::default();
        for line in text.lines().map(str::trim) {
            if let Some(path) = line.strip_prefix("deny-read ") {
                p.deny_read.push(PathBuf::from(path));
            } else if let Some(path) = line.strip_prefix("deny-exec ") {
                p.deny_exec.push(PathBuf::from(path));
            }
        }
        p.deny_read.retain(|p| p.is_absolute());
        p.deny_exec.retain(|p| p.is_absolute());
        p
    }

    pub fn is_empty(&self) -> bool {
        self.deny_read.is_empty() && self.deny_exec.is_empty()
    }
}

/// The running kernel's Landlock ABI version; 0 when Landlock is unavailable.
pub fn abi() -> i32 {
    // SAFETY: the version query takes no attribute.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if v < 0 { 0 } else { v as i32 }
}

#[derive(Debug, Default)]
struct Node {
    /// What is denied on this very object (rights bits); 0 for a mere ancestor.
    deny: u64,
    children: BTreeMap<OsString, Node>,
}

/// A ready ruleset fd, applied in the child with [`restrict_self`]; also how many rules it has.
pub struct Ruleset {
    pub fd: OwnedFd,
    pub rules: usize,
    /// Ancestor directories that could not be listed: nothing new in them is granted.
    pub unlisted: Vec<PathBuf>,
}

/// Builds the ruleset for `policy` (call before fork: it reads directories and allocates).
/// `Ok(None)` when there is nothing to protect or Landlock is below ABI 2 (without REFER, any
/// cross-directory rename would break).
pub fn build(policy: &Policy) -> io::Result<Option<Ruleset>> {
    if policy.is_empty() || abi() < 2 {
        return Ok(None);
    }
    let mut root = Node::default();
    for (paths, deny) in [
        (&policy.deny_read, ACCESS_READ_FILE | ACCESS_EXECUTE),
        (&policy.deny_exec, ACCESS_EXECUTE),
    ] {
        for p in paths {
            let canon = canonical(p);
            let mut node = &mut root;
            for c in canon.components() {
                if let Component::Normal(name) = c {
                    node = node.children.entry(name.to_owned()).or_default();
                }
            }
            node.deny |= deny;
        }
    }
    let handled = ACCESS_READ_FILE | ACCESS_EXECUTE | ACCESS_REFER;
    // struct landlock_ruleset_attr: only its first field (handled_access_fs).
    // SAFETY: the attribute is 8 readable bytes, its size passed alongside.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &raw const handled,
            size_of::<u64>(),
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let mut rs = Ruleset {
        fd,
        rules: 0,
        unlisted: Vec::new(),
    };
    // Renames and links stay possible everywhere; Landlock still refuses those that would
    // give a file rights it did not have (a protected key moved to /tmp).
    add_rule(&rs.fd, Path::new("/"), ACCESS_REFER)?;
    rs.rules += 1;
    grant_siblings(&mut rs, Path::new("/"), &root, handled & !ACCESS_REFER)?;
    Ok(Some(rs))
}

/// `p` with symlinks resolved as far as it exists (a protected file may not exist yet).
fn canonical(p: &Path) -> PathBuf {
    let mut existing = p.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = std::fs::canonicalize(&existing) {
            let mut out = c;
            out.extend(rest.iter().rev());
            return out;
        }
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return p.to_path_buf(),
        }
    }
}

fn grant_siblings(rs: &mut Ruleset, dir: &Path, node: &Node, rights: u64) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(_) => {
            rs.unlisted.push(dir.to_path_buf());
            return recurse_only(rs, dir, node, rights);
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let path = dir.join(&name);
        match node.children.get(&name) {
            None => grant(rs, &path, rights)?,
            Some(child) if child.deny != 0 => {
                // The protected object: grant what it keeps (read, for deny-exec), nothing more.
                let keep = rights & !child.deny;
                if keep != 0 {
                    grant(rs, &path, keep)?;
                }
            }
            Some(child) => {
                if path.is_dir() && !path.is_symlink() {
                    grant_siblings(rs, &path, child, rights)?;
                }
            }
        }
    }
    Ok(())
}

/// An ancestor we cannot list: still descend into the protected paths below it.
fn recurse_only(rs: &mut Ruleset, dir: &Path, node: &Node, rights: u64) -> io::Result<()> {
    for (name, child) in &node.children {
        let path = dir.join(name);
        if child.deny == 0 && path.is_dir() && !path.is_symlink() {
            grant_siblings(rs, &path, child, rights)?;
        }
    }
    Ok(())
}

fn grant(rs: &mut Ruleset, path: &Path, rights: u64) -> io::Result<()> {
    match add_rule(&rs.fd, path, rights) {
        Ok(true) => rs.rules += 1,
        Ok(false) => {}
        // Gone since we listed it, or not ours to open: nothing to grant.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EACCES)) => {}
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Adds one path-beneath rule; `Ok(false)` for symlinks (their targets are reached through
/// their own location).
fn add_rule(ruleset: &OwnedFd, path: &Path, rights: u64) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is NUL-terminated.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let md = std::fs::symlink_metadata(path)?;
    if md.file_type().is_symlink() {
        return Ok(false);
    }
    // File rules may only carry file rights (both of ours are).
    #[repr(C, packed)]
    struct PathBeneath {
        allowed_access: u64,
        parent_fd: i32,
    }
    let attr = PathBeneath {
        allowed_access: rights,
        parent_fd: fd.as_raw_fd(),
    };
    // SAFETY: attr is a valid packed landlock_path_beneath_attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            RULE_PATH_BENEATH,
            &raw const attr,
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

/// Enforces the ruleset on the calling thread (after PR_SET_NO_NEW_PRIVS). Async-signal-safe.
pub fn restrict_self(ruleset: RawFd) -> Result<(), i32> {
    // SAFETY: no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0) };
    if rc < 0 {
        // SAFETY: reading errno of this thread.
        Err(unsafe { *libc::__errno_location() })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_parses_and_ignores_the_rest() {
        let p = Policy::parse(
            "# comment\ndeny-read /home/dev/.ssh/id_ed25519\ndeny-exec /usr/bin/nc\n\
             deny-read relative\nbogus line\n",
        );
        assert_eq!(
            p.deny_read,
            vec![PathBuf::from("/home/dev/.ssh/id_ed25519")]
        );
        assert_eq!(p.deny_exec, vec![PathBuf::from("/usr/bin/nc")]);
        assert!(Policy::parse("").is_empty());
    }

    #[test]
    fn canonical_keeps_the_missing_tail() {
        let dir = std::env::temp_dir();
        let p = dir.join("oknek-does-not-exist/key");
        let c = canonical(&p);
        assert!(c.ends_with("oknek-does-not-exist/key"));
        assert!(c.is_absolute());
    }
}
