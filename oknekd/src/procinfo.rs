//! Process identity from /proc: what the kernel says about a pid, never what the process claims.
//!
//! A pid can be reused between two reads; callers that must be sure compare `start_time` (in
//! clock ticks since boot, from /proc/PID/stat) before and after.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use oknek_event::{Namespaces, Process};

/// The fields of /proc/PID/stat that oknek uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    pub comm: String,
    pub ppid: u32,
    /// Start time in clock ticks after boot: (pid, start_time) names one process for good.
    pub start_time: u64,
}

pub fn stat(pid: u32) -> io::Result<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))
}

/// Parses /proc/PID/stat. The comm field is in parentheses and may itself contain spaces and
/// parentheses, so the fields after it are found from the *last* ')'.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is the state (field 3); ppid is field 4, starttime field 22.
    let ppid = rest.get(1)?.parse().ok()?;
    let start_time = rest.get(19)?.parse().ok()?;
    Some(Stat {
        pid,
        comm,
        ppid,
        start_time,
    })
}

/// Real uid and gid, thread group id and umask from /proc/PID/status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    pub tgid: u32,
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
    pub umask: u32,
    pub threads: u32,
}

pub fn status(pid: u32) -> io::Result<Status> {
    Ok(parse_status(&fs::read_to_string(format!(
        "/proc/{pid}/status"
    ))?))
}

pub fn parse_status(text: &str) -> Status {
    let mut s = Status::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let mut nums = value.split_whitespace();
        let mut next = |radix| nums.next().and_then(|n| u32::from_str_radix(n, radix).ok());
        match key {
            "Tgid" => s.tgid = next(10).unwrap_or(0),
            "Uid" => {
                s.uid = next(10).unwrap_or(u32::MAX);
                s.euid = next(10).unwrap_or(u32::MAX);
            }
            "Gid" => {
                s.gid = next(10).unwrap_or(u32::MAX);
                s.egid = next(10).unwrap_or(u32::MAX);
            }
            "Umask" => s.umask = next(8).unwrap_or(0o022),
            "Threads" => s.threads = next(10).unwrap_or(1),
            _ => {}
        }
    }
    s
}

/// The executable path; "(deleted)" suffixes are kept, they are evidence.
pub fn exe(pid: u32) -> io::Result<PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe"))
}

/// The cgroup v2 path of the process (`/system.slice/aider.service`).
pub fn cgroup(pid: u32) -> io::Result<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup v2 entry"))
}

/// The systemd unit a cgroup path belongs to: the innermost `.service` or `.scope` component.
pub fn unit_of_cgroup(cgroup: &str) -> Option<&str> {
    cgroup
        .rsplit('/')
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
}

/// Where cgroup v2 is mounted (found from /proc/self/mounts, never assumed).
pub fn cgroup2_mount() -> Option<&'static Path> {
    static MOUNT: OnceLock<Option<PathBuf>> = OnceLock::new();
    MOUNT
        .get_or_init(|| {
            let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
            mounts.lines().find_map(|line| {
                let mut f = line.split_whitespace();
                let (_src, target, fstype) = (f.next()?, f.next()?, f.next()?);
                (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount(target)))
            })
        })
        .as_deref()
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(char::from(v));
            i += 4;
        } else {
            out.push(char::from(b[i]));
            i += 1;
        }
    }
    out
}

/// The process ids (thread-group leaders) in /proc now.
pub fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The cgroup id (inode of the cgroup directory), 0 when unknown.
pub fn cgroup_id(cgroup: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    cgroup2_mount()
        .and_then(|m| fs::metadata(m.join(cgroup.trim_start_matches('/'))).ok())
        .map_or(0, |md| md.ino())
}

fn namespace_ino(pid: u32, ns: &str) -> u64 {
    // The link reads "mnt:[4026531840]".
    fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .ok()
        .and_then(|p| {
            let s = p.to_string_lossy().into_owned();
            s.rsplit_once('[')?.1.strip_suffix(']')?.parse().ok()
        })
        .unwrap_or(0)
}

pub fn namespaces(pid: u32) -> Namespaces {
    Namespaces {
        mnt: namespace_ino(pid, "mnt"),
        pid: namespace_ino(pid, "pid"),
        net: namespace_ino(pid, "net"),
        user: namespace_ino(pid, "user"),
        uts: namespace_ino(pid, "uts"),
        ipc: namespace_ino(pid, "ipc"),
        cgroup: namespace_ino(pid, "cgroup"),
    }
}

/// Everything the event model records about a process. Fails only when the process is gone.
pub fn identity(pid: u32) -> io::Result<Process> {
    let st = stat(pid)?;
    let status = status(pid)?;
    let exe = exe(pid)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cgroup = cgroup(pid).ok();
    let parent = stat(st.ppid).ok();
    Ok(Process {
        pid,
        tgid: status.tgid,
        ppid: st.ppid,
        uid: status.uid,
        gid: status.gid,
        exe,
        exe_sha256: None,
        comm: st.comm,
        parent_exe: parent
            .as_ref()
            .and_then(|p| self::exe(p.pid).ok())
            .map(|p| p.to_string_lossy().into_owned()),
        parent_comm: parent.map(|p| p.comm),
        cgroup_id: cgroup.as_deref().map_or(0, cgroup_id),
        unit: cgroup
            .as_deref()
            .and_then(unit_of_cgroup)
            .map(str::to_owned),
        cgroup,
        namespaces: namespaces(pid),
        agent: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_hostile_comm() {
        let text = "4242 (evil) 0 (x) S 1) S 4200 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        let st = parse_stat(text).unwrap();
        assert_eq!(st.comm, "evil) 0 (x) S 1");
        assert_eq!(st.ppid, 4200);
        assert_eq!(st.start_time, 987_654);
    }

    #[test]
    fn our_own_identity() {
        let me = std::process::id();
        let p = identity(me).unwrap();
        assert_eq!(p.pid, me);
        assert_eq!(p.uid, unsafe { libc::getuid() });
        assert!(p.exe.starts_with('/'));
        assert_eq!(p.tgid, me);
        assert_ne!(p.namespaces.mnt, 0);
    }

    #[test]
    fn status_fields() {
        let s = parse_status(
            "Name:\tcat\nUmask:\t0027\nTgid:\t77\nUid:\t1000\t1001\t1000\t1000\nGid:\t100\t100\t100\t100\nThreads:\t3\n",
        );
        assert_eq!(
            (s.tgid, s.uid, s.euid, s.gid, s.umask, s.threads),
            (77, 1000, 1001, 100, 0o027, 3)
        );
    }

    #[test]
    fn units_from_cgroups() {
        assert_eq!(
            unit_of_cgroup("/system.slice/aider.service"),
            Some("aider.service")
        );
        assert_eq!(
            unit_of_cgroup("/user.slice/user-1000.slice/session-3.scope"),
            Some("session-3.scope")
        );
        assert_eq!(unit_of_cgroup("/"), None);
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
    }
}

/// Identities of recently seen processes, so a busy agent is not re-read from /proc (about 15
/// reads) for every decision.
///
/// An entry is used only for the same process — (pid, start time) — running the same
/// executable (an exec changes it), and for at most [`IdentityCache::TTL`]: what a process can
/// change about itself without exec (its comm, its cgroup) is at most that stale.
#[derive(Debug, Default)]
pub struct IdentityCache {
    entries: std::collections::HashMap<(u32, u64), (std::time::Instant, Process)>,
}

impl IdentityCache {
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(1);
    const MAX: usize = 4096;

    /// The identity of `pid`, from the cache when still valid.
    pub fn get(&mut self, pid: u32) -> io::Result<Process> {
        self.get_started(pid, stat(pid)?.start_time)
    }

    /// [`IdentityCache::get`] for a process whose start time the caller already read.
    pub fn get_started(&mut self, pid: u32, start_time: u64) -> io::Result<Process> {
        let exe_now = exe(pid)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some((at, cached)) = self.entries.get(&(pid, start_time))
            && at.elapsed() < Self::TTL
            && cached.exe == exe_now
        {
            return Ok(cached.clone());
        }
        let fresh = identity(pid)?;
        if self.entries.len() >= Self::MAX {
            self.entries.retain(|_, (at, _)| at.elapsed() < Self::TTL);
            if self.entries.len() >= Self::MAX {
                self.entries.clear();
            }
        }
        self.entries.insert(
            (pid, start_time),
            (std::time::Instant::now(), fresh.clone()),
        );
        Ok(fresh)
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    #[test]
    fn cached_identity_matches_a_fresh_read() {
        let me = std::process::id();
        let mut cache = IdentityCache::default();
        let first = cache.get(me).unwrap();
        let second = cache.get(me).unwrap();
        assert_eq!(first, second);
        assert_eq!(first, identity(me).unwrap());
        assert!(cache.get(u32::MAX - 1).is_err(), "no such process");
    }
}
