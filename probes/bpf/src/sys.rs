//! Filesystems the probes need (bpffs, tracefs, securityfs) and the cgroup2 mount.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use std::os::fd::AsRawFd;

use crate::BpfError;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// Opens a pinned BPF object (BPF_OBJ_GET).
pub fn obj_get(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
    let c = c_path(path)?;
    // union bpf_attr for BPF_OBJ_GET: { __u64 pathname; __u32 bpf_fd; __u32 file_flags; ... }.
    let mut attr = [0u64; 8];
    attr[0] = c.as_ptr() as u64;
    // SAFETY: attr holds a valid path pointer that outlives the call; the kernel returns a new fd.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// Detaches a link now (BPF_LINK_DETACH, 5.9+), whoever else holds it. Closing the last
/// reference also detaches, but the kernel releases links asynchronously; an uninstall must
/// take effect before it returns. Link types without detach support report an error, which
/// callers may ignore (their release still follows the unpin).
pub fn detach_link(link: &impl AsRawFd) -> io::Result<()> {
    // union bpf_attr for BPF_LINK_DETACH: { __u32 link_fd; }, padded.
    let mut attr = [0u32; 16];
    attr[0] = link.as_raw_fd() as u32;
    // SAFETY: BPF_LINK_DETACH reads link_fd from a zeroed attr of the given size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
pub const TRACEFS_MAGIC: i64 = 0x7472_6163;
pub const SECURITYFS_MAGIC: i64 = 0x7363_6673;
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
pub const TRACEFS_ROOT: &str = "/sys/kernel/tracing";
pub const SECURITYFS_ROOT: &str = "/sys/kernel/security";

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// The filesystem magic of `path` (statfs f_type).
pub fn fs_magic(path: &Path) -> io::Result<i64> {
    let c = c_path(path)?;
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a statfs buffer of the right type.
    if unsafe { libc::statfs(c.as_ptr(), &mut buf) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf.f_type as i64)
}

/// Mounts `fstype` at `target` unless a filesystem with `magic` is already there.
pub fn ensure_mounted(fstype: &'static str, target: &str, magic: i64) -> Result<(), BpfError> {
    let path = Path::new(target);
    if fs_magic(path).map(|m| m == magic).unwrap_or(false) {
        return Ok(());
    }
    let mount_error = |source: io::Error| BpfError::Mount {
        fstype,
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(path).map_err(mount_error)?;
    let source = CString::new(fstype).expect("no NUL");
    let c_target = c_path(path).map_err(mount_error)?;
    // SAFETY: valid NUL-terminated strings; no mount data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            c_target.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(mount_error(io::Error::last_os_error()));
    }
    Ok(())
}

/// The mount point of the cgroup v2 hierarchy, from /proc/self/mounts.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
    })
}

/// /proc/self/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("0");
            out.push(u8::from_str_radix(octal, 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts bpffs at /sys/fs/bpf when the pin directory lives there, and tracefs (needed to attach
/// syscall tracepoints).
pub fn prepare_filesystems(pin_dir: &Path) -> Result<(), BpfError> {
    if pin_dir.starts_with(BPFFS_ROOT) {
        ensure_mounted("bpf", BPFFS_ROOT, BPF_FS_MAGIC)?;
    }
    ensure_mounted("tracefs", TRACEFS_ROOT, TRACEFS_MAGIC)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mount_paths() {
        assert_eq!(
            unescape_mount_path("/sys/fs/cgroup/unified"),
            "/sys/fs/cgroup/unified"
        );
        assert_eq!(unescape_mount_path("/mnt/my\\040dir"), "/mnt/my dir");
    }
}
