//! The fanotify tier: opens and execs of protected objects wait in the kernel for the daemon.
//!
//! A fanotify group of class `FAN_CLASS_CONTENT` receives *permission events*: the process that
//! opens (`FAN_OPEN_PERM`) or executes (`FAN_OPEN_EXEC_PERM`, Linux ≥ 5.0) a marked object
//! sleeps until the listener writes `FAN_ALLOW` or `FAN_DENY`; a denial makes the syscall fail
//! with `EPERM`. This module is the mechanism only: it marks what the daemon tells it to protect
//! ([`FanotifyTier::set_targets`]), turns every kernel question into a [`PermissionRequest`] and
//! writes back whatever the daemon's `decide` callback answers ([`FanotifyTier::drain`]). It
//! knows nothing about rules, agents or evidence.
//!
//! # What is marked
//!
//! Every mark costs every process that touches the object a round trip to the daemon, so the
//! tier marks objects, never whole mounts (the opt-in exec-only [`Scope::ExecFilesystem`] is the
//! one exception):
//!
//! * [`Scope::File`]: the inode the path resolves to (symlinks followed). The kernel tests marks
//!   on the inode, so every other name of it (hard link, symlink, bind mount, `..`,
//!   `/proc/PID/root/…`, the same path after a parent directory was renamed) is covered too.
//!   A file that does not exist yet (`~/.ssh/id_ed25519` created later) is awaited by name: its
//!   parent directory is marked with `FAN_EVENT_ON_CHILD`, an open of a child is matched by
//!   (parent inode, name), and the new inode is marked on that first open ("promotion") so that
//!   from then on its other names are covered as well.
//! * [`Scope::Prefix`]: the directory and its subdirectories (to a depth bound) are marked with
//!   `FAN_EVENT_ON_CHILD` — which only reports *direct* children, hence one mark per directory —
//!   and every existing non-directory entry is marked by inode, so hard links and renames out of
//!   the tree stay covered. Files created later are caught by their directory's mark and promoted.
//!   Symlinks inside a prefix are not followed: what they point to is not under the prefix.
//! * [`Scope::ExecFilesystem`]: a filesystem mark with `FAN_OPEN_EXEC_PERM` only. Every exec on
//!   that filesystem asks the daemon; this is what rules that name an executable by content
//!   (sha256) need, since a copy of a binary is a different inode. [`PermissionRequest::sha256`]
//!   hashes the file through the event's own descriptor (no new open, so no deadlock) and caches
//!   the digest by (device, inode, size, mtime, ctime).
//!
//! Directory marks never carry `FAN_ONDIR`, so opening a directory never produces an event; that
//! is what lets the tier list protected directories from the same thread that answers events.
//!
//! # Never deadlocking on our own opens
//!
//! A listener that opens an object it marked waits for itself. The tier reaches marked objects
//! only through `O_PATH` descriptors (which never raise permission events), `stat`/`readlink`
//! (no open at all) and the descriptor the kernel hands over with each event (opened with
//! `FMODE_NONOTIFY`). The daemon must keep to that rule too: the thread that calls
//! [`FanotifyTier::drain`] must never open a protected object. Other threads of the daemon are
//! answered `FAN_ALLOW` without asking `decide` (they cannot be agents), so a worker thread that
//! touches a protected file waits one drain, never forever.
//!
//! # Reloads
//!
//! [`FanotifyTier::set_targets`] resolves the new set first, then *adds* every new mark (or the
//! missing bits of an existing one), and only then takes away what nobody wants any more. An
//! object protected by both sets keeps its mark throughout. Marks that are no longer wanted
//! are not destroyed but *retired* to an inert mask, because the kernel lets a permission event
//! pass unasked when a mark it is reported to is destroyed concurrently (see
//! [`FanotifyTier::set_targets`]); retired inode marks are destroyed [`RETIRE_GRACE`] later,
//! retired filesystem marks when the tier is dropped. Each marked object is held by an `O_PATH`
//! descriptor so that its mark can be changed even after it was renamed or unlinked (one
//! descriptor per mark: keep `RLIMIT_NOFILE` above [`TierOptions::max_marks`] plus the retired
//! ones).
//!
//! # Limitations (what this tier cannot promise)
//!
//! * Nothing survives the daemon: when the fanotify fd closes (exit, crash, kill), the kernel
//!   allows every pending event and drops every mark. A wedged daemon holds every protected
//!   access until it is killed (a watchdog restart is the bound). The BPF LSM tier, pinned in
//!   bpffs, has neither property.
//! * An exec-only mark does not see `ld.so ./binary` (the loader maps the file after a plain
//!   open) nor `sh script` (the interpreter opens the script): protect open as well when that
//!   matters. A copy of a binary is a different inode (and a static one needs no loader):
//!   only [`Scope::ExecFilesystem`] with a content digest catches copies.
//! * A content digest is taken before the kernel denies writers to the executable: a process
//!   holding the file open for writing can change it after the answer.
//! * `FAN_EVENT_ON_CHILD` covers direct children only. Subdirectories created under a prefix
//!   after marking, and anything below them, are not covered until the next `set_targets`; a
//!   file created under an awaited name and hard-linked elsewhere before its first open through
//!   the awaited name is covered under the other name only after that open or the next
//!   `set_targets`. The daemon should watch marked directories (inotify `IN_CREATE`,
//!   `IN_MOVED_TO`) and re-mark.
//! * `O_CREAT` creates the file before the permission check: a denied create leaves an empty
//!   file behind.
//! * Paths in requests are as the daemon's mount namespace sees the object; a child matched
//!   through its directory is looked up by that path, so a rename racing with the open yields
//!   [`Matched::None`].
//! * Without `FAN_OPEN_EXEC_PERM` (Linux < 5.0) directory marks cannot be retired and are
//!   destroyed, with the kernel's race.

use std::cell::{OnceCell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::mem::{MaybeUninit, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// What the tier does when no decision can be made: `decide` answered [`Answer::Undecided`],
/// panicked, or the event could not even be described (e.g. `fstat` on its descriptor failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Allow: availability over protection.
    Open,
    /// Deny: the access fails with `EPERM`.
    #[default]
    Closed,
}

/// Tunables; [`TierOptions::default`] is what the daemon should start from.
#[derive(Debug, Clone)]
pub struct TierOptions {
    pub fail_mode: FailMode,
    /// Upper bound on inode marks (each holds an `O_PATH` descriptor). Prefix walks stop here and
    /// report `truncated`.
    pub max_marks: usize,
    /// How deep a [`Scope::Prefix`] is followed below its directory.
    pub max_prefix_depth: usize,
    /// A `decide` call slower than this is counted in [`DrainStats::over_budget`]: the accessing
    /// process waited that long in the kernel.
    pub decide_budget: Duration,
    /// [`PermissionRequest::sha256`] refuses files larger than this (hashing is done while the
    /// accessing process waits).
    pub max_hash_bytes: u64,
    /// Entries in the digest cache before it is emptied.
    pub hash_cache_entries: usize,
}

impl Default for TierOptions {
    fn default() -> Self {
        TierOptions {
            fail_mode: FailMode::Closed,
            max_marks: 8192,
            max_prefix_depth: 16,
            decide_budget: Duration::from_millis(20),
            max_hash_bytes: 256 << 20,
            hash_cache_entries: 4096,
        }
    }
}

/// The kind of access a permission event asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// `FAN_OPEN_PERM`. An execve of an object marked for open also raises this (the kernel
    /// asks both questions, exec first).
    Open,
    /// `FAN_OPEN_EXEC_PERM`: the object is being opened to be executed (execve, execveat, or as
    /// the ELF interpreter of an executed binary).
    Exec,
}

/// Which accesses a target protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccessSet {
    pub open: bool,
    pub exec: bool,
}

impl AccessSet {
    pub const OPEN: AccessSet = AccessSet {
        open: true,
        exec: false,
    };
    pub const EXEC: AccessSet = AccessSet {
        open: false,
        exec: true,
    };
    pub const BOTH: AccessSet = AccessSet {
        open: true,
        exec: true,
    };

    pub fn contains(self, access: Access) -> bool {
        match access {
            Access::Open => self.open,
            Access::Exec => self.exec,
        }
    }

    fn mask(self) -> u64 {
        let mut m = 0;
        if self.open {
            m |= libc::FAN_OPEN_PERM;
        }
        if self.exec {
            m |= libc::FAN_OPEN_EXEC_PERM;
        }
        m
    }
}

/// How a target's path is interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One object (after following symlinks). If it does not exist, it is awaited by name in its
    /// parent directory.
    File,
    /// A directory and everything below it (to [`TierOptions::max_prefix_depth`]).
    Prefix,
    /// Every exec on the filesystem that holds the path (exec only). For rules that name an
    /// executable by content.
    ExecFilesystem,
}

/// One thing to protect, as the daemon derived it from its block rules (globs already expanded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Absolute path.
    pub path: PathBuf,
    pub scope: Scope,
    pub access: AccessSet,
    /// The rules that asked for this target; carried through to [`PermissionRequest::targets`].
    pub rules: Vec<String>,
}

impl Target {
    pub fn new(path: impl Into<PathBuf>, scope: Scope, access: AccessSet) -> Target {
        Target {
            path: path.into(),
            scope,
            access,
            rules: Vec::new(),
        }
    }

    pub fn with_rules(mut self, rules: impl IntoIterator<Item = impl Into<String>>) -> Target {
        self.rules = rules.into_iter().map(Into::into).collect();
        self
    }
}

/// A filesystem object's identity: what a block rule really protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    pub dev: u64,
    pub ino: u64,
}

impl ObjectId {
    fn of(st: &libc::stat) -> ObjectId {
        ObjectId {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// What happened to one target in [`FanotifyTier::set_targets`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The object is marked by inode.
    Marked,
    /// Directories marked with `FAN_EVENT_ON_CHILD` and files marked by inode.
    Prefix { dirs: usize, files: usize },
    /// The file does not exist; its parent directory is marked and the name is awaited.
    AwaitingCreation { parent: PathBuf },
    /// The filesystem holding the path is marked for exec.
    Filesystem { dev: u64 },
    /// Neither the object nor its parent directory exists: nothing could be marked. The daemon
    /// must call `set_targets` again when the path appears.
    Missing,
    /// The target cannot be expressed with fanotify (reason given).
    Unsupported(&'static str),
    /// Resolving the path failed for another reason than absence.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetReport {
    pub path: PathBuf,
    pub outcome: Outcome,
    /// A prefix walk stopped at [`TierOptions::max_marks`] or [`TierOptions::max_prefix_depth`].
    pub truncated: bool,
    /// The target asked for exec but the kernel has no `FAN_OPEN_EXEC_PERM` (< 5.0).
    pub exec_unsupported: bool,
    /// Marks that the kernel refused, as "path: error".
    pub errors: Vec<String>,
}

impl TargetReport {
    /// True when the target is armed in the kernel as asked.
    pub fn is_armed(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Marked
                | Outcome::Prefix { .. }
                | Outcome::AwaitingCreation { .. }
                | Outcome::Filesystem { .. }
        ) && self.errors.is_empty()
            && !self.exec_unsupported
    }
}

/// The result of one [`FanotifyTier::set_targets`]: one report per target, in input order.
#[derive(Debug, Clone, Default)]
pub struct MarkReport {
    pub targets: Vec<TargetReport>,
    /// Objects newly marked.
    pub added: usize,
    /// Objects that kept their mark (possibly with bits added or removed).
    pub kept: usize,
    /// Objects no longer protected (their marks were retired).
    pub removed: usize,
    /// Inode marks in force after the call.
    pub marks: usize,
    /// Filesystem marks in force after the call.
    pub filesystems: usize,
    /// Inert marks kept after retirement (see [`FanotifyTier::set_targets`]).
    pub retired: usize,
    pub elapsed: Duration,
}

/// How a request's object was tied to the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    /// The object itself is marked.
    Object,
    /// A child of a marked prefix directory (first open since marking; it is now marked too).
    Child { dir: ObjectId },
    /// A file awaited by name appeared (it is now marked by inode).
    Name { dir: ObjectId },
    /// Only a filesystem exec mark applies.
    Filesystem { dev: u64 },
    /// The kernel asked, but no current target claims the object: a mark removed by a reload
    /// while the event was queued, or a child renamed before the tier looked at it. `decide`
    /// should judge it by path (it will usually allow).
    None,
}

/// The decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Allow,
    Deny,
    /// No decision could be made (e.g. the process is gone): the fail mode applies.
    Undecided,
}

/// The thread identity the kernel reports in /proc/TID/status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskInfo {
    pub tgid: u32,
    pub ppid: u32,
    /// Real uid and gid.
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
}

/// Content identity for the digest cache: any write or metadata change moves ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    fn of(st: &libc::stat) -> Fingerprint {
        Fingerprint {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

struct HashCache {
    capacity: usize,
    digests: HashMap<Fingerprint, [u8; 32]>,
}

/// One question from the kernel: may thread `tid` open or execute `object`?
///
/// The accessing thread is blocked in the kernel until `decide` returns, so the lazy lookups
/// ([`task`](Self::task), [`open_flags`](Self::open_flags), [`sha256`](Self::sha256)) read a
/// stable picture of it.
pub struct PermissionRequest<'a> {
    /// The thread that made the access (`FAN_REPORT_TID`; on kernels without it, the tgid).
    pub tid: u32,
    pub access: Access,
    pub object: ObjectId,
    /// The accessed object's path as the daemon's mount namespace sees it (from
    /// /proc/self/fd/N). Empty if the kernel could not give one.
    pub path: PathBuf,
    /// The object has no name left (unlinked); `path` is its last name.
    pub unlinked: bool,
    pub matched: Matched,
    targets: Vec<&'a Target>,
    fd: BorrowedFd<'a>,
    stat: libc::stat,
    reports_tid: bool,
    max_hash_bytes: u64,
    cache: &'a RefCell<HashCache>,
    task: OnceCell<Option<TaskInfo>>,
    flags: OnceCell<Option<u32>>,
}

impl<'a> PermissionRequest<'a> {
    /// The targets (of the current set) that protect this object for this kind of access.
    pub fn targets(&self) -> &[&'a Target] {
        &self.targets
    }

    /// The rule ids of [`targets`](Self::targets), deduplicated.
    pub fn rules(&self) -> Vec<&'a str> {
        let mut ids: Vec<&str> = self
            .targets
            .iter()
            .flat_map(|t| t.rules.iter().map(String::as_str))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Thread group, parent and credentials of the accessing thread, from /proc/TID/status;
    /// `None` if it is gone.
    pub fn task(&self) -> Option<TaskInfo> {
        *self.task.get_or_init(|| read_task(self.tid))
    }

    /// The thread group id (the "pid" of the process).
    pub fn tgid(&self) -> Option<u32> {
        if self.reports_tid {
            self.task().map(|t| t.tgid)
        } else {
            Some(self.tid)
        }
    }

    /// The `open(2)` flags of an [`Access::Open`] (`O_WRONLY`, `O_CREAT`, …), read from the
    /// blocked thread's syscall arguments in /proc/TID/syscall; the fanotify event itself does
    /// not carry them (and `F_GETFL` on the event's descriptor gives the tier's own flags).
    /// `None` when they cannot be known for sure: the open did not come from
    /// open/openat/creat/open_by_handle_at (openat2 keeps its flags in user memory, which another
    /// thread could change; io_uring opens run on kernel workers), or the kernel reports tgids.
    /// Treat `None` as "may write".
    pub fn open_flags(&self) -> Option<u32> {
        if self.access != Access::Open || !self.reports_tid {
            return None;
        }
        *self.flags.get_or_init(|| {
            std::fs::read_to_string(format!("/proc/{}/syscall", self.tid))
                .ok()
                .and_then(|s| open_flags_from_syscall(&s))
        })
    }

    /// Size of the object in bytes.
    pub fn size(&self) -> u64 {
        u64::try_from(self.stat.st_size).unwrap_or(0)
    }

    /// Reads the object's content at `offset` through the event's descriptor. That descriptor
    /// was opened by the kernel for the tier without notification, so reading never raises an
    /// event (no deadlock) and does not move the accessing process's file offset.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the fd is open for the
            // lifetime of the request.
            let n = unsafe {
                libc::pread(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off)
            };
            if n >= 0 {
                return Ok(n.unsigned_abs());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// sha256 of the object's content, cached by (device, inode, size, mtime, ctime).
    ///
    /// The file is checked again after hashing; a change while hashing is an error (answer
    /// [`Answer::Undecided`]). A writer that changes the file *after* the answer and before
    /// the kernel maps it is not seen: the BPF LSM `bprm_check_security` tier, which runs after
    /// the kernel denied writers, does not have that gap.
    pub fn sha256(&self) -> io::Result<[u8; 32]> {
        let fp = Fingerprint::of(&self.stat);
        if let Some(d) = self.cache.borrow().digests.get(&fp) {
            return Ok(*d);
        }
        if self.size() > self.max_hash_bytes {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "larger than max_hash_bytes",
            ));
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut offset = 0u64;
        loop {
            let n = self.read_at(&mut buf, offset)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            offset += n as u64;
            if offset > self.max_hash_bytes {
                return Err(io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    "grew beyond max_hash_bytes",
                ));
            }
        }
        if Fingerprint::of(&fstat(self.fd)?) != fp || offset != self.size() {
            return Err(io::Error::other("file changed while it was hashed"));
        }
        let digest: [u8; 32] = hasher.finalize().into();
        let mut cache = self.cache.borrow_mut();
        if cache.digests.len() >= cache.capacity {
            // Dropping everything is crude but bounded and never wrong: the next exec re-hashes.
            cache.digests.clear();
        }
        cache.digests.insert(fp, digest);
        Ok(digest)
    }
}

impl std::fmt::Debug for PermissionRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PermissionRequest")
            .field("tid", &self.tid)
            .field("access", &self.access)
            .field("object", &self.object)
            .field("path", &self.path)
            .field("unlinked", &self.unlinked)
            .field("matched", &self.matched)
            .field("rules", &self.rules())
            .finish()
    }
}

/// Counters of one [`FanotifyTier::drain`] (and, summed, of the tier's life).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainStats {
    /// Permission events answered (every one of them, whatever the outcome).
    pub events: u64,
    pub allowed: u64,
    pub denied: u64,
    /// Events answered by the fail mode (undecided, decide panicked, event not describable).
    pub fail_mode: u64,
    /// Events from the daemon's own threads, allowed without asking `decide`.
    pub own: u64,
    /// Answers the kernel no longer wanted: the accessing process was killed while waiting.
    pub canceled: u64,
    /// Requests with [`Matched::None`].
    pub unmatched: u64,
    /// Opens of unprotected entries of a directory marked only to await a name, allowed
    /// without asking `decide`.
    pub neighbors: u64,
    /// Objects marked by inode on their first event (awaited names, new files under a prefix).
    pub promoted: u64,
    /// `decide` panicked (the event got the fail mode).
    pub decide_panics: u64,
    /// `decide` took longer than [`TierOptions::decide_budget`].
    pub over_budget: u64,
    /// `FAN_Q_OVERFLOW` seen (only possible without `FAN_UNLIMITED_QUEUE`).
    pub overflows: u64,
    /// Events the kernel denied itself because it could not install a descriptor for us
    /// (EMFILE/ENFILE on read).
    pub kernel_denied: u64,
    /// Responses the kernel refused for another reason than cancellation.
    pub respond_errors: u64,
    /// Longest time from reading an event to answering it, in nanoseconds.
    pub max_latency_ns: u64,
}

impl DrainStats {
    fn add(&mut self, o: &DrainStats) {
        self.events += o.events;
        self.allowed += o.allowed;
        self.denied += o.denied;
        self.fail_mode += o.fail_mode;
        self.own += o.own;
        self.canceled += o.canceled;
        self.unmatched += o.unmatched;
        self.neighbors += o.neighbors;
        self.promoted += o.promoted;
        self.decide_panics += o.decide_panics;
        self.over_budget += o.over_budget;
        self.overflows += o.overflows;
        self.kernel_denied += o.kernel_denied;
        self.respond_errors += o.respond_errors;
        self.max_latency_ns = self.max_latency_ns.max(o.max_latency_ns);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FanotifyError {
    #[error("fanotify_init: {0}")]
    Init(#[source] io::Error),
    #[error("reading fanotify events: {0}")]
    Read(#[source] io::Error),
    /// The kernel speaks another event format than this code: the tier stops answering. Drop
    /// it: closing the group makes the kernel allow every pending event and remove every mark.
    #[error("fanotify metadata version {got}, this build understands {FANOTIFY_METADATA_VERSION}")]
    VersionMismatch { got: u8 },
    /// An event record that does not fit the buffer; same consequence as a version mismatch.
    #[error("malformed fanotify event record at offset {offset}")]
    Malformed { offset: usize },
    #[error("the fanotify tier stopped after an earlier unrecoverable error")]
    Broken,
}

/// `FANOTIFY_METADATA_VERSION` of <linux/fanotify.h>; stable since Linux 2.6.37.
const FANOTIFY_METADATA_VERSION: u8 = 3;
const METADATA_LEN: usize = size_of::<libc::fanotify_event_metadata>();
const PERM_EVENTS: u64 = libc::FAN_OPEN_PERM | libc::FAN_OPEN_EXEC_PERM;
/// Large enough for several hundred 24-byte records per read.
const READ_BUFFER: usize = 16 * 1024;

/// One marked inode and why.
struct Marked {
    /// `O_PATH` descriptor: reaches the object for `FAN_MARK_REMOVE` even after a rename.
    fd: OwnedFd,
    /// A path at marking time, for reports.
    path: PathBuf,
    /// Bits currently set in the kernel.
    mask: u64,
    is_dir: bool,
    /// Targets that protect the object itself.
    own: Vec<u32>,
    /// Prefix targets that protect the entries of this directory.
    children: Vec<u32>,
    /// Awaited names in this directory.
    names: HashMap<OsString, Vec<u32>>,
}

impl Marked {
    fn new(fd: OwnedFd, path: PathBuf, is_dir: bool) -> Marked {
        Marked {
            fd,
            path,
            mask: 0,
            is_dir,
            own: Vec::new(),
            children: Vec::new(),
            names: HashMap::new(),
        }
    }

    /// The mask the roles need. `FAN_EVENT_ON_CHILD` makes the directory's mask apply to its
    /// direct children; without `FAN_ONDIR` the directory itself raises no events.
    fn wanted(&self, targets: &[Target], exec_ok: bool) -> u64 {
        let bits = |ids: &[u32]| {
            ids.iter().fold(0, |m, &i| {
                m | targets.get(i as usize).map_or(0, |t| t.access.mask())
            })
        };
        let mut m = bits(&self.own);
        let mut child = bits(&self.children);
        for ids in self.names.values() {
            child |= bits(ids);
        }
        if child != 0 {
            m |= child | libc::FAN_EVENT_ON_CHILD;
        }
        if !exec_ok {
            m &= !libc::FAN_OPEN_EXEC_PERM;
        }
        m
    }
}

struct MarkedFs {
    fd: OwnedFd,
    mask: u64,
    targets: Vec<u32>,
}

/// A mark reduced to a mask that raises no events, waiting to be destroyed.
struct Retired {
    mark: Marked,
    since: Instant,
}

/// How long a retired inode mark stays inert before it is destroyed. An event takes its
/// references to marks microseconds after it started walking them; a second covers a thread
/// preempted in between on a loaded machine by orders of magnitude.
pub const RETIRE_GRACE: Duration = Duration::from_secs(1);

/// The fanotify permission tier. Register [`as_raw_fd`](AsRawFd::as_raw_fd) for readability
/// with the daemon's loop and call [`drain`](Self::drain) whenever it is readable (the fd is
/// non-blocking; drain reads until it would block, as an edge-triggered loop needs).
pub struct FanotifyTier {
    fd: OwnedFd,
    opts: TierOptions,
    reports_tid: bool,
    exec_supported: bool,
    own_pid: u32,
    targets: Vec<Target>,
    objects: HashMap<ObjectId, Marked>,
    filesystems: HashMap<u64, MarkedFs>,
    retired: HashMap<ObjectId, Retired>,
    retired_fs: HashMap<u64, MarkedFs>,
    cache: RefCell<HashCache>,
    buf: Vec<u8>,
    totals: DrainStats,
    broken: bool,
}

impl FanotifyTier {
    /// Creates the fanotify group (needs CAP_SYS_ADMIN). Nothing is marked yet.
    ///
    /// `FAN_UNLIMITED_QUEUE` matters for enforcement, not just for throughput: when a bounded
    /// queue is full the kernel drops the permission event and *allows* the access.
    pub fn new(opts: TierOptions) -> Result<FanotifyTier, FanotifyError> {
        let base = libc::FAN_CLASS_CONTENT
            | libc::FAN_CLOEXEC
            | libc::FAN_NONBLOCK
            | libc::FAN_UNLIMITED_QUEUE
            | libc::FAN_UNLIMITED_MARKS;
        let event_flags = (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as libc::c_uint;
        // FAN_REPORT_TID (4.20) names the blocked thread, which is what /proc/TID/syscall needs
        // to recover the open flags; older kernels report the tgid.
        let (fd, reports_tid) = match init(base | libc::FAN_REPORT_TID, event_flags) {
            Ok(fd) => (fd, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                (init(base, event_flags).map_err(FanotifyError::Init)?, false)
            }
            Err(e) => return Err(FanotifyError::Init(e)),
        };
        let exec_supported = probe_exec_perm(fd.as_fd());
        let cache = RefCell::new(HashCache {
            capacity: opts.hash_cache_entries.max(1),
            digests: HashMap::new(),
        });
        Ok(FanotifyTier {
            fd,
            opts,
            reports_tid,
            exec_supported,
            own_pid: std::process::id(),
            targets: Vec::new(),
            objects: HashMap::new(),
            filesystems: HashMap::new(),
            retired: HashMap::new(),
            retired_fs: HashMap::new(),
            cache,
            buf: vec![0; READ_BUFFER],
            totals: DrainStats::default(),
            broken: false,
        })
    }

    /// Whether the kernel has `FAN_OPEN_EXEC_PERM` (Linux ≥ 5.0).
    pub fn exec_supported(&self) -> bool {
        self.exec_supported
    }

    /// Whether requests carry thread ids (`FAN_REPORT_TID`, Linux ≥ 4.20).
    pub fn reports_tid(&self) -> bool {
        self.reports_tid
    }

    pub fn fail_mode(&self) -> FailMode {
        self.opts.fail_mode
    }

    pub fn set_fail_mode(&mut self, mode: FailMode) {
        self.opts.fail_mode = mode;
    }

    /// The current target set.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Whether `id` currently carries an inode mark.
    pub fn is_marked(&self, id: ObjectId) -> bool {
        self.objects.contains_key(&id)
    }

    /// Inode marks in force.
    pub fn marks(&self) -> usize {
        self.objects.len()
    }

    /// Sums of every drain so far.
    pub fn totals(&self) -> DrainStats {
        self.totals
    }

    /// Replaces the protected set. New marks are added before stale ones are retired, so an
    /// object in both sets is never unprotected. Per-target problems (missing, refused by the
    /// kernel) are in the report; the call itself fails only on a broken tier.
    ///
    /// Marks are never destroyed here, only *retired* (see [`RETIRE_GRACE`]): the kernel lets
    /// a permission event pass unasked when any mark it is being reported to is destroyed at
    /// that moment (`fsnotify_prepare_user_wait` fails "if we race with mark deletion"). The
    /// event for a protected file is also reported to its parent directory's `FAN_EVENT_ON_CHILD`
    /// mark, so destroying the directory's mark while keeping the file's let opens of the file
    /// through — measured here, a handful per thousand opens during re-marks.
    ///
    /// Events queued before the call are matched against the new set when they are drained.
    pub fn set_targets(&mut self, targets: &[Target]) -> Result<MarkReport, FanotifyError> {
        if self.broken {
            return Err(FanotifyError::Broken);
        }
        let start = Instant::now();
        self.purge_retired(start);
        let new_targets: Vec<Target> = targets.to_vec();
        let mut plan = Plan {
            objects: HashMap::new(),
            filesystems: HashMap::new(),
            reports: Vec::with_capacity(targets.len()),
        };
        for (i, t) in new_targets.iter().enumerate() {
            let report = self.resolve(&mut plan, t, i as u32);
            plan.reports.push(report);
        }

        // 1. Add: every planned object gets (at least) the bits it needs. A live or retired
        //    mark of the same object is reused: its bits are extended, it is never re-created.
        let exec_ok = self.exec_supported;
        let fan = self.fd.as_fd();
        let mut old = std::mem::take(&mut self.objects);
        let mut next: HashMap<ObjectId, Marked> = HashMap::with_capacity(plan.objects.len());
        let (mut added, mut kept) = (0, 0);
        for (id, mut m) in plan.objects {
            let wanted = m.wanted(&new_targets, exec_ok);
            if wanted == 0 {
                continue;
            }
            let prev = old
                .remove(&id)
                .or_else(|| self.retired.remove(&id).map(|r| r.mark));
            if let Some(mut prev) = prev {
                let missing = wanted & !prev.mask;
                if missing != 0 {
                    match mark(fan, libc::FAN_MARK_ADD, missing, prev.fd.as_fd()) {
                        Ok(()) => prev.mask |= missing,
                        Err(e) => note_error(&mut plan.reports, &m, &e),
                    }
                }
                prev.own = std::mem::take(&mut m.own);
                prev.children = std::mem::take(&mut m.children);
                prev.names = std::mem::take(&mut m.names);
                prev.path = m.path;
                next.insert(id, prev);
                kept += 1;
            } else {
                match mark(fan, libc::FAN_MARK_ADD, wanted, m.fd.as_fd()) {
                    Ok(()) => {
                        m.mask = wanted;
                        next.insert(id, m);
                        added += 1;
                    }
                    Err(e) => note_error(&mut plan.reports, &m, &e),
                }
            }
        }
        let mut old_fs = std::mem::take(&mut self.filesystems);
        let mut next_fs: HashMap<u64, MarkedFs> = HashMap::new();
        let fs_add = libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM;
        for (dev, mut f) in plan.filesystems {
            let wanted = libc::FAN_OPEN_EXEC_PERM;
            if let Some(mut prev) = old_fs.remove(&dev).or_else(|| self.retired_fs.remove(&dev)) {
                if prev.mask & wanted == 0 {
                    match mark(fan, fs_add, wanted, prev.fd.as_fd()) {
                        Ok(()) => prev.mask |= wanted,
                        Err(e) => note_fs_error(&mut plan.reports, &f.targets, &e),
                    }
                }
                prev.targets = f.targets;
                next_fs.insert(dev, prev);
                continue;
            }
            match mark(fan, fs_add, wanted, f.fd.as_fd()) {
                Ok(()) => {
                    f.mask = wanted;
                    next_fs.insert(dev, f);
                }
                Err(e) => note_fs_error(&mut plan.reports, &f.targets, &e),
            }
        }

        // 2. Retire: only now take away what no target wants any more. A failure here leaves
        //    a stale mark (extra questions, answered by `decide` as unmatched), never a gap.
        let mut removed = 0;
        for (id, m) in old.drain() {
            removed += 1;
            if let Some(mark) = retire(fan, m, exec_ok) {
                self.retired.insert(id, Retired { mark, since: start });
            }
        }
        for m in next.values_mut() {
            // Shrinking a mark that keeps some bits never destroys it.
            let extra = m.mask & !m.wanted(&new_targets, exec_ok);
            if extra != 0 && mark(fan, libc::FAN_MARK_REMOVE, extra, m.fd.as_fd()).is_ok() {
                m.mask &= !extra;
            }
        }
        for f in next_fs.values_mut() {
            let extra = f.mask & !libc::FAN_OPEN_EXEC_PERM;
            let flags = libc::FAN_MARK_REMOVE | libc::FAN_MARK_FILESYSTEM;
            if extra != 0 && mark(fan, flags, extra, f.fd.as_fd()).is_ok() {
                f.mask &= !extra;
            }
        }
        for (dev, f) in old_fs.drain() {
            if let Some(f) = retire_fs(fan, f) {
                self.retired_fs.insert(dev, f);
            }
        }

        self.objects = next;
        self.filesystems = next_fs;
        self.targets = new_targets;
        Ok(MarkReport {
            targets: plan.reports,
            added,
            kept,
            removed,
            marks: self.objects.len(),
            filesystems: self.filesystems.len(),
            retired: self.retired.len() + self.retired_fs.len(),
            elapsed: start.elapsed(),
        })
    }

    /// Destroys retired inode marks once they have been inert for [`RETIRE_GRACE`]: no event
    /// that could still hold on to them is in flight by then. Retired filesystem marks stay
    /// until the tier is dropped, because every event on their filesystem walks past them.
    fn purge_retired(&mut self, now: Instant) {
        let fan = self.fd.as_fd();
        self.retired.retain(|_, r| {
            if now.duration_since(r.since) < RETIRE_GRACE {
                return true;
            }
            let _ = mark(fan, libc::FAN_MARK_REMOVE, r.mark.mask, r.mark.fd.as_fd());
            false
        });
    }

    fn resolve(&self, plan: &mut Plan, t: &Target, idx: u32) -> TargetReport {
        let mut report = TargetReport {
            path: t.path.clone(),
            outcome: Outcome::Missing,
            truncated: false,
            exec_unsupported: t.access.exec && !self.exec_supported,
            errors: Vec::new(),
        };
        if !t.path.is_absolute() {
            report.outcome = Outcome::Unsupported("relative path");
            return report;
        }
        if !t.access.open && !t.access.exec {
            report.outcome = Outcome::Unsupported("no access to protect");
            return report;
        }
        if !t.access.open && !self.exec_supported {
            report.outcome = Outcome::Unsupported("the kernel has no FAN_OPEN_EXEC_PERM");
            return report;
        }
        report.outcome = match t.scope {
            Scope::File => self.resolve_file(plan, t, idx),
            Scope::Prefix => self.resolve_prefix(plan, t, idx, &mut report.truncated),
            Scope::ExecFilesystem => resolve_filesystem(plan, t, idx),
        };
        report
    }

    fn resolve_file(&self, plan: &mut Plan, t: &Target, idx: u32) -> Outcome {
        match open_opath(&t.path, 0).and_then(|fd| Ok((fstat(fd.as_fd())?, fd))) {
            Ok((st, _)) if is_dir(&st) => {
                Outcome::Unsupported("a directory: protect it as a prefix")
            }
            Ok((st, fd)) => {
                let id = ObjectId::of(&st);
                if !plan.has_room(id, self.opts.max_marks) {
                    return Outcome::Failed("max_marks reached".into());
                }
                plan.object(id, fd, &t.path, false).own.push(idx);
                Outcome::Marked
            }
            Err(e) if is_absent(&e) => {
                // Await the name in the directory that will hold it. A dangling symlink is
                // followed to the name its target will have.
                let Some(missing) = final_missing_path(&t.path) else {
                    return Outcome::Missing;
                };
                let (Some(parent), Some(name)) = (missing.parent(), missing.file_name()) else {
                    return Outcome::Missing;
                };
                let dir = match open_opath(parent, libc::O_DIRECTORY)
                    .and_then(|fd| Ok((fstat(fd.as_fd())?, fd)))
                {
                    Ok(v) => v,
                    Err(e) if is_absent(&e) => return Outcome::Missing,
                    Err(e) => return Outcome::Failed(format!("{}: {e}", parent.display())),
                };
                let id = ObjectId::of(&dir.0);
                if !plan.has_room(id, self.opts.max_marks) {
                    return Outcome::Failed("max_marks reached".into());
                }
                plan.object(id, dir.1, parent, true)
                    .names
                    .entry(name.to_owned())
                    .or_default()
                    .push(idx);
                Outcome::AwaitingCreation {
                    parent: parent.to_owned(),
                }
            }
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    fn resolve_prefix(
        &self,
        plan: &mut Plan,
        t: &Target,
        idx: u32,
        truncated: &mut bool,
    ) -> Outcome {
        let root = match open_opath(&t.path, libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if is_absent(&e) => return Outcome::Missing,
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Outcome::Unsupported("not a directory: protect it as a file");
            }
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let (mut dirs, mut files) = (0, 0);
        let mut queue = VecDeque::from([(root, t.path.clone(), 0usize)]);
        while let Some((fd, path, depth)) = queue.pop_front() {
            let Ok(st) = fstat(fd.as_fd()) else { continue };
            let id = ObjectId::of(&st);
            if !plan.has_room(id, self.opts.max_marks) {
                *truncated = true;
                break;
            }
            let entry = plan.object(id, fd, &path, true);
            if entry.children.contains(&idx) {
                continue; // reached twice (bind mount loop or overlapping walk)
            }
            entry.children.push(idx);
            dirs += 1;
            let Ok(dir_fd) = entry.fd.try_clone() else {
                continue;
            };
            // Listing the directory opens it; no mark of ours has FAN_ONDIR, so that raises no
            // event and cannot wait for this thread.
            let Ok(listing) = std::fs::read_dir(format!("/proc/self/fd/{}", dir_fd.as_raw_fd()))
            else {
                continue;
            };
            for ent in listing.flatten() {
                let name = ent.file_name();
                // O_NOFOLLOW | O_PATH gives the symlink itself; it is skipped below.
                let Ok(child) = openat_opath(dir_fd.as_fd(), &name, libc::O_NOFOLLOW) else {
                    continue;
                };
                let Ok(cst) = fstat(child.as_fd()) else {
                    continue;
                };
                let cpath = path.join(&name);
                match cst.st_mode & libc::S_IFMT {
                    libc::S_IFLNK => {}
                    libc::S_IFDIR => {
                        if depth < self.opts.max_prefix_depth {
                            queue.push_back((child, cpath, depth + 1));
                        } else {
                            *truncated = true;
                        }
                    }
                    _ => {
                        let cid = ObjectId::of(&cst);
                        if !plan.has_room(cid, self.opts.max_marks) {
                            *truncated = true;
                            continue;
                        }
                        let e = plan.object(cid, child, &cpath, false);
                        if !e.own.contains(&idx) {
                            e.own.push(idx);
                            files += 1;
                        }
                    }
                }
            }
        }
        Outcome::Prefix { dirs, files }
    }

    /// Reads every pending event, asks `decide` about each permission event and answers it.
    ///
    /// Every event read is answered exactly once, whatever happens: a panic in `decide` is
    /// caught (and answered with the fail mode), and a panic elsewhere answers the rest of the
    /// batch with the fail mode while unwinding. `decide` runs while the accessing thread waits
    /// in the kernel; keep it short (compiled rules, cached process data).
    ///
    /// An `Err` means the tier stopped understanding the kernel (see [`FanotifyError`]); the
    /// events read before that point were answered.
    pub fn drain<F>(&mut self, mut decide: F) -> Result<DrainStats, FanotifyError>
    where
        F: FnMut(&PermissionRequest<'_>) -> Answer,
    {
        if self.broken {
            return Err(FanotifyError::Broken);
        }
        let mut stats = DrainStats::default();
        let mut result = Ok(());
        loop {
            let n = match read_events(self.fd.as_fd(), &mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR) => continue,
                    // The kernel could not give us a descriptor and denied that event itself.
                    Some(libc::EMFILE | libc::ENFILE) => {
                        stats.kernel_denied += 1;
                        continue;
                    }
                    _ => {
                        result = Err(FanotifyError::Read(e));
                        break;
                    }
                },
            };
            let read_at = Instant::now();
            let (events, parse_err) =
                parse_events(self.fd.as_raw_fd(), &self.buf[..n], self.opts.fail_mode);
            for mut ev in events {
                self.handle(&mut ev, read_at, &mut decide, &mut stats);
            }
            if let Some(e) = parse_err {
                self.broken = true;
                result = Err(e);
                break;
            }
        }
        self.totals.add(&stats);
        result.map(|()| stats)
    }

    fn handle<F>(
        &mut self,
        ev: &mut RawEvent,
        read_at: Instant,
        decide: &mut F,
        stats: &mut DrainStats,
    ) where
        F: FnMut(&PermissionRequest<'_>) -> Answer,
    {
        if ev.mask & libc::FAN_Q_OVERFLOW != 0 {
            stats.overflows += 1;
        }
        if ev.mask & PERM_EVENTS == 0 {
            return; // nothing to answer; the descriptor closes with `ev`
        }
        stats.events += 1;
        let Some(fd) = ev.fd.as_ref().map(|f| f.as_raw_fd()) else {
            return; // cannot happen for permission events; there is nothing to answer with
        };
        let tid = u32::try_from(ev.pid).unwrap_or(0);
        let access = if ev.mask & libc::FAN_OPEN_EXEC_PERM != 0 {
            Access::Exec
        } else {
            Access::Open
        };

        if self.is_own_thread(tid) {
            stats.own += 1;
            self.finish(ev, libc::FAN_ALLOW, read_at, stats);
            return;
        }
        // SAFETY: `fd` belongs to `ev`, which outlives every use of this borrow below (the
        // caller drops `ev` only after `handle` returns, and answering does not close it).
        let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
        let Ok(st) = fstat(bfd) else {
            stats.fail_mode += 1;
            let fail = self.fail_response();
            self.finish(ev, fail, read_at, stats);
            return;
        };
        let object = ObjectId::of(&st);
        let raw_path = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default();
        let unlinked = st.st_nlink == 0;
        let path = if unlinked {
            strip_deleted(raw_path)
        } else {
            raw_path
        };

        // Which targets claim the object, and whether it must be marked by inode now.
        let mut ids: Vec<u32> = Vec::new();
        let mut promote: Vec<u32> = Vec::new();
        let mut matched = Matched::None;
        if let Some(m) = self.objects.get(&object) {
            ids.extend(&m.own);
            matched = Matched::Object;
        } else if let Some((dir, m)) = self.parent_of(&path) {
            promote.extend(&m.children);
            if let Some(named) = path.file_name().and_then(|n| m.names.get(n)) {
                promote.extend(named);
                matched = Matched::Name { dir };
            } else if !m.children.is_empty() {
                matched = Matched::Child { dir };
            } else if access == Access::Open || !self.filesystems.contains_key(&object.dev) {
                // The directory is marked only to await other names, and this object's inode
                // is not marked: no target protects it. (A hard link to a protected file has
                // the protected inode and is found above.)
                stats.neighbors += 1;
                self.finish(ev, libc::FAN_ALLOW, read_at, stats);
                return;
            }
            ids.extend(&promote);
        }
        if access == Access::Exec
            && let Some(f) = self.filesystems.get(&object.dev)
        {
            ids.extend(&f.targets);
            if matched == Matched::None {
                matched = Matched::Filesystem { dev: object.dev };
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let targets: Vec<&Target> = ids
            .iter()
            .filter_map(|&i| self.targets.get(i as usize))
            .filter(|t| t.access.contains(access))
            .collect();
        if matched == Matched::None {
            stats.unmatched += 1;
        }

        let req = PermissionRequest {
            tid,
            access,
            object,
            path,
            unlinked,
            matched,
            targets,
            fd: bfd,
            stat: st,
            reports_tid: self.reports_tid,
            max_hash_bytes: self.opts.max_hash_bytes,
            cache: &self.cache,
            task: OnceCell::new(),
            flags: OnceCell::new(),
        };
        let started = Instant::now();
        let answer = match catch_unwind(AssertUnwindSafe(|| decide(&req))) {
            Ok(a) => a,
            Err(_) => {
                stats.decide_panics += 1;
                Answer::Undecided
            }
        };
        if started.elapsed() > self.opts.decide_budget {
            stats.over_budget += 1;
        }
        drop(req);
        let response = match answer {
            Answer::Allow => libc::FAN_ALLOW,
            Answer::Deny => libc::FAN_DENY,
            Answer::Undecided => {
                stats.fail_mode += 1;
                self.fail_response()
            }
        };
        self.finish(ev, response, read_at, stats);

        if !promote.is_empty() && !is_dir(&st) {
            self.promote(object, bfd, &promote, stats);
        }
    }

    fn fail_response(&self) -> u32 {
        match self.opts.fail_mode {
            FailMode::Open => libc::FAN_ALLOW,
            FailMode::Closed => libc::FAN_DENY,
        }
    }

    fn finish(&self, ev: &mut RawEvent, response: u32, read_at: Instant, stats: &mut DrainStats) {
        match ev.respond(response) {
            Ok(()) => {
                if response == libc::FAN_ALLOW {
                    stats.allowed += 1;
                } else {
                    stats.denied += 1;
                }
            }
            // The waiting process was killed; the kernel dropped the question.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => stats.canceled += 1,
            Err(_) => stats.respond_errors += 1,
        }
        let ns = u64::try_from(read_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
        stats.max_latency_ns = stats.max_latency_ns.max(ns);
    }

    /// The marked directory holding `path`'s last component, looked up by `stat` (no open).
    fn parent_of(&self, path: &Path) -> Option<(ObjectId, &Marked)> {
        let parent = path.parent()?;
        if parent.as_os_str().is_empty() {
            return None;
        }
        let st = stat_path(parent).ok()?;
        let id = ObjectId::of(&st);
        self.objects.get(&id).map(|m| (id, m))
    }

    /// Marks a file that was matched through its directory by inode, so that its other names
    /// are covered from now on.
    fn promote(
        &mut self,
        id: ObjectId,
        event_fd: BorrowedFd<'_>,
        ids: &[u32],
        stats: &mut DrainStats,
    ) {
        if self.objects.len() >= self.opts.max_marks || self.objects.contains_key(&id) {
            return;
        }
        // A retired mark of this inode is still attached: extend it rather than add a second.
        let (mut m, since) = match self.retired.remove(&id) {
            Some(r) => (r.mark, Some(r.since)),
            None => {
                // An O_PATH reopen through the magic link is not an open of the content.
                let link = PathBuf::from(format!("/proc/self/fd/{}", event_fd.as_raw_fd()));
                let Ok(fd) = open_opath(&link, 0) else {
                    return;
                };
                let path = std::fs::read_link(&link).unwrap_or_default();
                (Marked::new(fd, path, false), None)
            }
        };
        m.own = ids.to_vec();
        let wanted = m.wanted(&self.targets, self.exec_supported);
        let missing = wanted & !m.mask;
        let fan = self.fd.as_fd();
        if wanted == 0
            || (missing != 0 && mark(fan, libc::FAN_MARK_ADD, missing, m.fd.as_fd()).is_err())
        {
            if let Some(since) = since {
                m.own.clear();
                self.retired.insert(id, Retired { mark: m, since });
            }
            return;
        }
        m.mask |= missing;
        let extra = m.mask & !wanted;
        if extra != 0 && mark(fan, libc::FAN_MARK_REMOVE, extra, m.fd.as_fd()).is_ok() {
            m.mask = wanted;
        }
        self.objects.insert(id, m);
        stats.promoted += 1;
    }

    fn is_own_thread(&self, tid: u32) -> bool {
        if tid == self.own_pid {
            return true;
        }
        if !self.reports_tid {
            return false;
        }
        let (Ok(pid), Ok(tid)) = (
            libc::pid_t::try_from(self.own_pid),
            libc::pid_t::try_from(tid),
        ) else {
            return false;
        };
        // tgkill with signal 0 delivers nothing; it succeeds exactly when `tid` is a thread of
        // our thread group — one syscall, no /proc lookup.
        // SAFETY: no pointers; signal 0 only checks existence and permission.
        unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, 0) == 0 }
    }
}

impl AsRawFd for FanotifyTier {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for FanotifyTier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for FanotifyTier {
    /// Answers what is still queued with the fail mode before the group closes. (Closing alone
    /// would make the kernel allow every pending event and drop every mark.)
    fn drop(&mut self) {
        if self.broken {
            return;
        }
        let fail = self.opts.fail_mode;
        // Bounded: under a flood, the rest is left to the kernel's release path.
        for _ in 0..64 {
            match read_events(self.fd.as_fd(), &mut self.buf) {
                Ok(n) if n > 0 => {
                    // RawEvent's Drop answers each with the fail mode and closes its fd.
                    let (events, err) = parse_events(self.fd.as_raw_fd(), &self.buf[..n], fail);
                    drop(events);
                    if err.is_some() {
                        return;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {}
                _ => return,
            }
        }
    }
}

/// A read event that owns its descriptor and, for a permission event, the duty to answer it:
/// dropped unanswered (a panic, an early return), it answers with the fail mode.
struct RawEvent {
    fan: RawFd,
    fd: Option<OwnedFd>,
    mask: u64,
    pid: i32,
    answered: bool,
    fail: FailMode,
}

impl RawEvent {
    fn respond(&mut self, response: u32) -> io::Result<()> {
        self.answered = true;
        let Some(fd) = &self.fd else {
            return Ok(());
        };
        let resp = libc::fanotify_response {
            fd: fd.as_raw_fd(),
            response,
        };
        loop {
            // SAFETY: `resp` is a valid fanotify_response for the duration of the call; the
            // fanotify fd outlives every event of its drain.
            let n = unsafe {
                libc::write(
                    self.fan,
                    (&raw const resp).cast(),
                    size_of::<libc::fanotify_response>(),
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

impl Drop for RawEvent {
    fn drop(&mut self) {
        if !self.answered && self.mask & PERM_EVENTS != 0 {
            let r = match self.fail {
                FailMode::Open => libc::FAN_ALLOW,
                FailMode::Closed => libc::FAN_DENY,
            };
            let _ = self.respond(r);
        }
    }
}

/// Splits a read buffer into events. Records after a malformed one cannot be located, so the
/// error is returned with the events before it.
fn parse_events(fan: RawFd, buf: &[u8], fail: FailMode) -> (Vec<RawEvent>, Option<FanotifyError>) {
    let mut out = Vec::with_capacity(buf.len() / METADATA_LEN);
    let mut off = 0;
    while off < buf.len() {
        let Some(rest) = buf.get(off..).filter(|r| r.len() >= METADATA_LEN) else {
            return (out, Some(FanotifyError::Malformed { offset: off }));
        };
        // SAFETY: `rest` holds at least METADATA_LEN bytes; read_unaligned copies them without
        // requiring alignment, and every bit pattern is a valid fanotify_event_metadata.
        let md: libc::fanotify_event_metadata =
            unsafe { std::ptr::read_unaligned(rest.as_ptr().cast()) };
        if md.vers != FANOTIFY_METADATA_VERSION {
            return (out, Some(FanotifyError::VersionMismatch { got: md.vers }));
        }
        let len = md.event_len as usize;
        if len < METADATA_LEN || len > rest.len() {
            return (out, Some(FanotifyError::Malformed { offset: off }));
        }
        let fd = (md.fd >= 0).then(|| {
            // SAFETY: the kernel installed this descriptor in our table for this event; nothing
            // else owns it.
            unsafe { OwnedFd::from_raw_fd(md.fd) }
        });
        out.push(RawEvent {
            fan,
            fd,
            mask: md.mask,
            pid: md.pid,
            answered: false,
            fail,
        });
        off += len;
    }
    (out, None)
}

struct Plan {
    objects: HashMap<ObjectId, Marked>,
    filesystems: HashMap<u64, MarkedFs>,
    reports: Vec<TargetReport>,
}

impl Plan {
    fn has_room(&self, id: ObjectId, max: usize) -> bool {
        self.objects.contains_key(&id) || self.objects.len() < max
    }

    fn object(&mut self, id: ObjectId, fd: OwnedFd, path: &Path, is_dir: bool) -> &mut Marked {
        self.objects
            .entry(id)
            .or_insert_with(|| Marked::new(fd, path.to_owned(), is_dir))
    }
}

fn resolve_filesystem(plan: &mut Plan, t: &Target, idx: u32) -> Outcome {
    if t.access.open {
        return Outcome::Unsupported(
            "filesystem marks are exec-only: every open on the filesystem would wait",
        );
    }
    match open_opath(&t.path, 0).and_then(|fd| Ok((fstat(fd.as_fd())?, fd))) {
        Ok((st, fd)) => {
            let dev = st.st_dev;
            plan.filesystems
                .entry(dev)
                .or_insert_with(|| MarkedFs {
                    fd,
                    mask: 0,
                    targets: Vec::new(),
                })
                .targets
                .push(idx);
            Outcome::Filesystem { dev }
        }
        Err(e) if is_absent(&e) => Outcome::Missing,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

fn note_error(reports: &mut [TargetReport], m: &Marked, e: &io::Error) {
    let mut ids: Vec<u32> = m.own.iter().chain(&m.children).copied().collect();
    ids.extend(m.names.values().flatten());
    ids.sort_unstable();
    ids.dedup();
    for i in ids {
        if let Some(r) = reports.get_mut(i as usize) {
            r.errors.push(format!("{}: {e}", m.path.display()));
        }
    }
}

fn note_fs_error(reports: &mut [TargetReport], targets: &[u32], e: &io::Error) {
    for &t in targets {
        if let Some(r) = reports.get_mut(t as usize) {
            r.errors.push(format!("filesystem mark: {e}"));
        }
    }
}

/// Turns a mark into an inert one without destroying it: first the inert bit is added, then
/// the live bits are removed, so the mark never passes through an empty mask (which the kernel
/// destroys). For a file the inert bit is `FAN_ONDIR` (it only concerns directories); for a
/// directory it is `FAN_OPEN_EXEC_PERM` without `FAN_EVENT_ON_CHILD` (a directory cannot be
/// executed; `FAN_ONDIR` would make opening the directory itself ask, including our own
/// listing). Returns `None` if the mark had to be destroyed after all.
fn retire(fan: BorrowedFd<'_>, mut m: Marked, exec_ok: bool) -> Option<Marked> {
    let inert = if m.is_dir {
        if exec_ok { libc::FAN_OPEN_EXEC_PERM } else { 0 }
    } else {
        libc::FAN_ONDIR
    };
    if inert != 0
        && (m.mask & inert != 0 || mark(fan, libc::FAN_MARK_ADD, inert, m.fd.as_fd()).is_ok())
    {
        m.mask |= inert;
        let live = m.mask & !inert;
        if live == 0 || mark(fan, libc::FAN_MARK_REMOVE, live, m.fd.as_fd()).is_ok() {
            m.mask = inert;
        }
        m.own.clear();
        m.children.clear();
        m.names.clear();
        return Some(m);
    }
    // No inert bit on this kernel: destroy, accepting the kernel's race for this one event.
    let _ = mark(fan, libc::FAN_MARK_REMOVE, m.mask, m.fd.as_fd());
    None
}

fn retire_fs(fan: BorrowedFd<'_>, mut f: MarkedFs) -> Option<MarkedFs> {
    let add = libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM;
    let remove = libc::FAN_MARK_REMOVE | libc::FAN_MARK_FILESYSTEM;
    if f.mask & libc::FAN_ONDIR != 0 || mark(fan, add, libc::FAN_ONDIR, f.fd.as_fd()).is_ok() {
        f.mask |= libc::FAN_ONDIR;
        let live = f.mask & !libc::FAN_ONDIR;
        if live == 0 || mark(fan, remove, live, f.fd.as_fd()).is_ok() {
            f.mask = libc::FAN_ONDIR;
        }
        f.targets.clear();
        return Some(f);
    }
    let _ = mark(fan, remove, f.mask, f.fd.as_fd());
    None
}

/// Follows a chain of symlinks from `path` to the name that does not exist yet. `None` if the
/// path exists after all (a race) or the chain is too long.
fn final_missing_path(path: &Path) -> Option<PathBuf> {
    let mut p = path.to_owned();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(md) if md.file_type().is_symlink() => {
                let link = std::fs::read_link(&p).ok()?;
                p = if link.is_absolute() {
                    link
                } else {
                    p.parent()?.join(link)
                };
            }
            Ok(_) => return None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Some(p),
            Err(_) => return None,
        }
    }
    None
}

fn strip_deleted(p: PathBuf) -> PathBuf {
    let bytes = p.as_os_str().as_bytes();
    match bytes.strip_suffix(b" (deleted)") {
        Some(b) => PathBuf::from(OsStr::from_bytes(b)),
        None => p,
    }
}

fn is_absent(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn init(flags: libc::c_uint, event_flags: libc::c_uint) -> io::Result<OwnedFd> {
    // SAFETY: fanotify_init takes no pointers.
    let fd = unsafe { libc::fanotify_init(flags, event_flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned to us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Marks (or unmarks) the object that the `O_PATH` descriptor `target` refers to.
///
/// fanotify_mark(fd, NULL) refuses `O_PATH` descriptors (EBADF), and any other kind of
/// descriptor would have been an open of the object. The magic link /proc/self/fd/N resolves to
/// exactly the object the descriptor holds, whatever happened to its names since, and a path
/// lookup opens nothing.
fn mark(
    fan: BorrowedFd<'_>,
    flags: libc::c_uint,
    mask: u64,
    target: BorrowedFd<'_>,
) -> io::Result<()> {
    let link = CString::new(format!("/proc/self/fd/{}", target.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `link` is a NUL-terminated path valid for the call; `fan` is a valid descriptor.
    let rc =
        unsafe { libc::fanotify_mark(fan.as_raw_fd(), flags, mask, libc::AT_FDCWD, link.as_ptr()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Tries an exec-permission mark on "/" (a directory without FAN_EVENT_ON_CHILD or FAN_ONDIR,
/// so it can raise no event) and removes it again.
fn probe_exec_perm(fan: BorrowedFd<'_>) -> bool {
    let Ok(root) = open_opath(Path::new("/"), libc::O_DIRECTORY) else {
        return false;
    };
    let ok = mark(
        fan,
        libc::FAN_MARK_ADD,
        libc::FAN_OPEN_EXEC_PERM,
        root.as_fd(),
    )
    .is_ok();
    if ok {
        let _ = mark(
            fan,
            libc::FAN_MARK_REMOVE,
            libc::FAN_OPEN_EXEC_PERM,
            root.as_fd(),
        );
    }
    ok
}

fn cstring(p: &OsStr) -> io::Result<CString> {
    CString::new(p.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// `O_PATH` open: resolves the path and pins the object without opening its content, so it
/// never raises a permission event.
fn open_opath(path: &Path, extra: libc::c_int) -> io::Result<OwnedFd> {
    let c = cstring(path.as_os_str())?;
    // SAFETY: `c` is a NUL-terminated path valid for the call.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC | extra) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: freshly returned descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn openat_opath(dir: BorrowedFd<'_>, name: &OsStr, extra: libc::c_int) -> io::Result<OwnedFd> {
    let c = cstring(name)?;
    // SAFETY: `c` is NUL-terminated; `dir` is a valid directory descriptor.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC | extra,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: freshly returned descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid for writes of one stat; fstat fills it on success.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so `st` is initialised.
    Ok(unsafe { st.assume_init() })
}

fn stat_path(path: &Path) -> io::Result<libc::stat> {
    let c = cstring(path.as_os_str())?;
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `c` is NUL-terminated and `st` valid for writes; stat opens nothing.
    let rc = unsafe { libc::stat(c.as_ptr(), st.as_mut_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: stat succeeded, so `st` is initialised.
    Ok(unsafe { st.assume_init() })
}

fn read_events(fan: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = unsafe { libc::read(fan.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n.unsigned_abs())
    }
}

fn read_task(tid: u32) -> Option<TaskInfo> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    parse_task_status(&text)
}

fn parse_task_status(text: &str) -> Option<TaskInfo> {
    let (mut tgid, mut ppid, mut uids, mut gids) = (None, None, None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let mut nums = value.split_whitespace().map(|n| n.parse::<u32>().ok());
        match key {
            "Tgid" => tgid = nums.next().flatten(),
            "PPid" => ppid = nums.next().flatten(),
            "Uid" => uids = Some((nums.next().flatten()?, nums.next().flatten()?)),
            "Gid" => gids = Some((nums.next().flatten()?, nums.next().flatten()?)),
            _ => {}
        }
    }
    let (uid, euid) = uids?;
    let (gid, egid) = gids?;
    Some(TaskInfo {
        tgid: tgid?,
        ppid: ppid.unwrap_or(0),
        uid,
        euid,
        gid,
        egid,
    })
}

/// The open flags of a thread blocked in an open-family syscall, from /proc/TID/syscall
/// ("NR arg1 … arg6 sp pc", arguments in hex). Only syscalls whose flags are a register value
/// are trusted.
fn open_flags_from_syscall(text: &str) -> Option<u32> {
    let mut f = text.split_whitespace();
    let nr: libc::c_long = f.next()?.parse().ok()?;
    let args: Vec<u64> = f
        .take(6)
        .map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16))
        .collect::<Result<_, _>>()
        .ok()?;
    // Flags are an int: the upper half of the register is not part of them.
    let arg = |i: usize| args.get(i).map(|&v| v as u32);
    #[cfg(target_arch = "x86_64")]
    {
        if nr == libc::SYS_open {
            return arg(1);
        }
        if nr == libc::SYS_creat {
            return Some((libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC) as u32);
        }
    }
    if nr == libc::SYS_openat || nr == libc::SYS_open_by_handle_at {
        return arg(2);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_status_parses_ids() {
        let text = "Name:\tcat\nTgid:\t42\nPid:\t43\nPPid:\t1\nUid:\t65534\t65534\t65534\t65534\n\
                    Gid:\t100\t101\t101\t101\n";
        let t = parse_task_status(text).unwrap();
        assert_eq!(
            (t.tgid, t.ppid, t.uid, t.euid, t.gid, t.egid),
            (42, 1, 65534, 65534, 100, 101)
        );
        assert_eq!(parse_task_status("Name:\tx\n"), None);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn syscall_flags_are_read_from_registers_only() {
        // openat(AT_FDCWD, path, O_WRONLY|O_CREAT|O_TRUNC, 0644)
        let openat = "257 0xffffffffffffff9c 0x7ffd1234 0x241 0x1a4 0x0 0x0 0x7ffd0000 0x7f00";
        assert_eq!(open_flags_from_syscall(openat), Some(0o1101));
        assert_eq!(
            open_flags_from_syscall("2 0x7ffd 0x0 0x0 0x0 0x0 0x0 0x1 0x2"),
            Some(0)
        );
        assert_eq!(
            open_flags_from_syscall("85 0x7ffd 0x1a4 0x0 0x0 0x0 0x0 0x1 0x2"),
            Some(0o1101)
        );
        // openat2 keeps flags in user memory: not trusted.
        assert_eq!(
            open_flags_from_syscall("437 0x1 0x2 0x3 0x18 0x0 0x0 0x1 0x2"),
            None
        );
        assert_eq!(open_flags_from_syscall("running"), None);
        assert_eq!(open_flags_from_syscall(""), None);
    }

    #[test]
    fn deleted_suffix_is_stripped() {
        assert_eq!(
            strip_deleted(PathBuf::from("/a/b (deleted)")),
            PathBuf::from("/a/b")
        );
        assert_eq!(strip_deleted(PathBuf::from("/a/b")), PathBuf::from("/a/b"));
    }

    #[test]
    fn malformed_and_foreign_records_stop_parsing() {
        let fail = FailMode::Closed;
        assert!(matches!(
            parse_events(-1, &[0u8; 10], fail).1,
            Some(FanotifyError::Malformed { offset: 0 })
        ));
        // A record with another version: nothing is trusted, not even its fd field.
        let mut rec = [0u8; METADATA_LEN];
        rec[..4].copy_from_slice(&(METADATA_LEN as u32).to_ne_bytes());
        rec[4] = 2;
        assert!(matches!(
            parse_events(-1, &rec, fail).1,
            Some(FanotifyError::VersionMismatch { got: 2 })
        ));
        // A length that runs past the buffer.
        rec[4] = FANOTIFY_METADATA_VERSION;
        rec[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(matches!(
            parse_events(-1, &rec, fail).1,
            Some(FanotifyError::Malformed { offset: 0 })
        ));
        // A well-formed notification record without fd (an overflow) parses.
        rec[..4].copy_from_slice(&(METADATA_LEN as u32).to_ne_bytes());
        rec[8..16].copy_from_slice(&libc::FAN_Q_OVERFLOW.to_ne_bytes());
        rec[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        let (ev, err) = parse_events(-1, &rec, fail);
        assert!(err.is_none());
        assert_eq!(ev.len(), 1);
        assert!(ev[0].fd.is_none());
    }

    #[test]
    fn directory_masks_reach_children_only() {
        let t = vec![
            Target::new("/a", Scope::Prefix, AccessSet::OPEN),
            Target::new("/b", Scope::File, AccessSet::EXEC),
        ];
        let fd = open_opath(Path::new("/"), 0).unwrap();
        let mut m = Marked::new(fd, PathBuf::from("/"), true);
        m.children.push(0);
        m.names.insert("b".into(), vec![1]);
        let w = m.wanted(&t, true);
        assert_eq!(
            w,
            libc::FAN_OPEN_PERM | libc::FAN_OPEN_EXEC_PERM | libc::FAN_EVENT_ON_CHILD
        );
        assert_eq!(
            w & libc::FAN_ONDIR,
            0,
            "directory opens must never raise events"
        );
        assert_eq!(m.wanted(&t, false) & libc::FAN_OPEN_EXEC_PERM, 0);
    }
}
