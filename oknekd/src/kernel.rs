//! What the running kernel offers, found by trying, not by version numbers.
//!
//! `oknek doctor` prints this table, and the daemon uses it to pick, per action kind, the
//! strongest tier it can arm.

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::procinfo;

/// One mechanism and whether this kernel offers it, with the reason.
#[derive(Debug, Clone, Serialize)]
pub struct Facility {
    pub name: &'static str,
    pub available: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelFacts {
    pub release: String,
    pub facilities: Vec<Facility>,
}

impl KernelFacts {
    pub fn has(&self, name: &str) -> bool {
        self.facilities
            .iter()
            .any(|f| f.name == name && f.available)
    }
}

pub const FANOTIFY_OPEN_PERM: &str = "fanotify open permission";
pub const FANOTIFY_EXEC_PERM: &str = "fanotify exec permission";
pub const SECCOMP_USER_NOTIF: &str = "seccomp user-notify";
pub const LANDLOCK: &str = "Landlock";
pub const BPF_LSM_LISTED: &str = "BPF LSM in lsm= list";
pub const CGROUP2: &str = "cgroup v2";
pub const BTF: &str = "kernel BTF";

/// Probes the kernel. `scratch` is a directory where a temporary file may be created (for the
/// fanotify exec-permission probe); it is removed again.
pub fn probe(scratch: &Path) -> KernelFacts {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let (open_perm, exec_perm) = probe_fanotify(scratch);
    let facilities = vec![
        open_perm,
        exec_perm,
        probe_seccomp(),
        probe_landlock(),
        probe_bpf_lsm(),
        Facility {
            name: CGROUP2,
            available: procinfo::cgroup2_mount().is_some(),
            detail: procinfo::cgroup2_mount().map_or_else(
                || "no cgroup2 mount in /proc/self/mounts".to_owned(),
                |m| format!("mounted at {}", m.display()),
            ),
        },
        Facility {
            name: BTF,
            available: Path::new("/sys/kernel/btf/vmlinux").exists(),
            detail: "/sys/kernel/btf/vmlinux".to_owned(),
        },
    ];
    KernelFacts {
        release,
        facilities,
    }
}

fn probe_fanotify(scratch: &Path) -> (Facility, Facility) {
    let fail = |name, detail: String| Facility {
        name,
        available: false,
        detail,
    };
    // SAFETY: fanotify_init takes no pointers; the returned fd is closed below.
    let fd = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK,
            (libc::O_RDONLY | libc::O_LARGEFILE) as u32,
        )
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        let detail = format!("fanotify_init(FAN_CLASS_CONTENT): {err}");
        return (
            fail(FANOTIFY_OPEN_PERM, detail.clone()),
            fail(FANOTIFY_EXEC_PERM, detail),
        );
    }
    // Mark a private scratch file, so no other process can be made to wait on this probe.
    let probe_file: PathBuf = scratch.join(format!(".oknek-probe-{}", std::process::id()));
    let mark = |mask: u64| -> std::io::Result<()> {
        let path = CString::new(probe_file.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::fanotify_mark(fd, libc::FAN_MARK_ADD, mask, libc::AT_FDCWD, path.as_ptr())
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let result = match fs::write(&probe_file, b"") {
        Ok(()) => {
            let open = mark(libc::FAN_OPEN_PERM);
            let exec = mark(libc::FAN_OPEN_EXEC_PERM);
            let _ = fs::remove_file(&probe_file);
            (
                Facility {
                    name: FANOTIFY_OPEN_PERM,
                    available: open.is_ok(),
                    detail: open.map_or_else(
                        |e| format!("FAN_OPEN_PERM: {e}"),
                        |()| "FAN_OPEN_PERM".into(),
                    ),
                },
                Facility {
                    name: FANOTIFY_EXEC_PERM,
                    available: exec.is_ok(),
                    detail: exec.map_or_else(
                        |e| format!("FAN_OPEN_EXEC_PERM (kernel >= 5.0): {e}"),
                        |()| "FAN_OPEN_EXEC_PERM".into(),
                    ),
                },
            )
        }
        Err(e) => {
            let detail = format!("cannot create probe file in {}: {e}", scratch.display());
            (
                fail(FANOTIFY_OPEN_PERM, detail.clone()),
                fail(FANOTIFY_EXEC_PERM, detail),
            )
        }
    };
    // SAFETY: fd is ours and open.
    unsafe { libc::close(fd) };
    result
}

fn probe_seccomp() -> Facility {
    let actions = fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    let available = actions.split_whitespace().any(|a| a == "user_notif");
    Facility {
        name: SECCOMP_USER_NOTIF,
        available,
        detail: if available {
            "SECCOMP_RET_USER_NOTIF (kernel >= 5.0; fd injection >= 5.14)".into()
        } else {
            "user_notif missing from /proc/sys/kernel/seccomp/actions_avail".into()
        },
    }
}

/// The Landlock ABI version, if Landlock is enabled.
pub fn landlock_abi() -> Option<u32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with the VERSION flag the kernel reads no attribute pointer and returns the ABI.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (abi > 0).then_some(abi as u32)
}

fn probe_landlock() -> Facility {
    match landlock_abi() {
        Some(abi) => Facility {
            name: LANDLOCK,
            available: true,
            detail: format!("ABI {abi}"),
        },
        None => Facility {
            name: LANDLOCK,
            available: false,
            detail: format!(
                "landlock_create_ruleset: {} (kernel < 5.13 or landlock not in lsm=)",
                std::io::Error::last_os_error()
            ),
        },
    }
}

fn probe_bpf_lsm() -> Facility {
    match fs::read_to_string("/sys/kernel/security/lsm") {
        Ok(list) => {
            let listed = list.trim().split(',').any(|l| l == "bpf");
            Facility {
                name: BPF_LSM_LISTED,
                available: listed,
                detail: format!("lsm={}", list.trim()),
            }
        }
        Err(e) => Facility {
            name: BPF_LSM_LISTED,
            available: false,
            detail: format!("/sys/kernel/security/lsm: {e} (securityfs not mounted?)"),
        },
    }
}

/// The eBPF program types the daemon tried to load at start, as doctor rows.
pub fn bpf_facilities(support: &oknek_bpf::Support) -> Vec<Facility> {
    let row = |name: &'static str, check: &oknek_bpf::Check| Facility {
        name,
        available: check.available,
        detail: check.detail.clone(),
    };
    vec![
        row("eBPF BPF LSM (self-tested)", &support.lsm),
        row("eBPF fentry", &support.fentry),
        row("eBPF fmod_ret", &support.fmod_ret),
        row("eBPF cgroup sock_addr", &support.cgroup_sock_addr),
        row("eBPF tracepoint", &support.tracepoint),
        row("eBPF tp_btf", &support.tp_btf),
        row("eBPF ring buffer", &support.ringbuf),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reports_every_facility_with_a_reason() {
        let dir = std::env::temp_dir();
        let facts = probe(&dir);
        assert!(!facts.release.is_empty());
        assert_eq!(facts.facilities.len(), 7);
        for f in &facts.facilities {
            assert!(!f.detail.is_empty(), "{} has no detail", f.name);
        }
        // No probe file is left behind.
        let leftover = dir.join(format!(".oknek-probe-{}", std::process::id()));
        assert!(!leftover.exists());
    }
}
