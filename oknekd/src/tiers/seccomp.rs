//! The seccomp user-notify tier: the daemon's half of `oknek run`.
//!
//! `oknek run` installs a seccomp filter in the agent it launches and hands the filter's listener
//! fd to the daemon (op `RegisterSeccomp` on the hook socket). From then on every execve,
//! execveat, open, openat, openat2, creat, connect, sendto, sendmsg, sendmmsg and
//! inotify_add_watch of that process tree stops in the kernel until this module answers.
//!
//! This is a mechanism: it turns notifications into [`SyscallRequest`]s, asks a [`Decider`]
//! (the daemon's rule engine) for an [`Answer`], and carries the answer out so that **the call
//! that was judged is the call that happens**. A pointer argument can change after we read it
//! (another thread, a `vfork` parent, a shared mapping, a symlink swapped on disk), so a plain
//! "continue" would run the kernel on arguments nobody judged. Instead (docs/adr/0003):
//!
//! | call | on allow |
//! |---|---|
//! | open, openat, openat2, creat | **emulated**: the daemon resolves the path itself, one component at a time, as the caller (its uid, gids, capabilities, root, cwd/dirfd, umask), judges the object it reached, opens that very object and injects the fd (`SECCOMP_IOCTL_NOTIF_ADDFD` + `SECCOMP_ADDFD_FLAG_SEND`) |
//! | inotify_add_watch | **emulated** on the caller's inotify fd (taken with `pidfd_getfd`) and the object judged |
//! | connect, sendto, sendmsg, sendmmsg on AF_INET/AF_INET6 sockets | **emulated** on the caller's socket (taken with `pidfd_getfd`) with the judged address and bytes |
//! | send (sendto without an address) on AF_INET/AF_INET6 sockets | **emulated** without a verdict (the peer was judged at connect), reading the model of plaintext requests to model providers on the way (below) |
//! | send (sendto without an address) on other sockets | `CONTINUE` without a verdict: nothing was judged, so nothing can be raced |
//! | execve, execveat | cannot be emulated: `CONTINUE`, only when the caller cannot race (below) or the [`RacePolicy`] says a racing caller gains nothing |
//! | connect/send on other sockets (AF_UNIX, netlink, …) | cannot be emulated (the peer would see the daemon's credentials): as exec |
//!
//! A caller *cannot race* when no one else can write the memory the arguments live in: its thread
//! group has one thread, it shares its address space with no running task (the filter forbids
//! `CLONE_VM` without `CLONE_THREAD`/`CLONE_VFORK` and `clone3`; a `vfork` child is checked
//! against its parent with `kcmp`), every argument lies in anonymous private memory or in a
//! private mapping of a file the caller cannot write, and no other agent process can write into
//! it (the filter denies `ptrace` and `process_vm_writev`; this module refuses write opens of
//! `/proc/*/mem`). Everything else is [`SyscallRequest::racy`].
//!
//! Denials are `-EPERM` (or the errno the decider chose), which is always safe. Every
//! notification is answered exactly once; nothing here blocks for long: sockets are driven
//! non-blocking and a caller's blocking connect or send is answered when its socket becomes
//! ready (the listener's epoll fd, [`SeccompListener::as_raw_fd`], wakes the loop for both).
//!
//! **Plaintext model requests.** Every send on a connected AF_INET/AF_INET6 stream socket whose
//! peer the decider names a plaintext model provider ([`Decider::reads_models_sent_to`]) is read
//! as HTTP/1.1 ([`http::RequestStream`], one per connection, keyed by the socket's cookie).
//! The bytes of a send are read *before* they are sent: when they complete a request's
//! `"model"`, [`Decider::decide_model`] judges it, and a refusal fails the whole send with its
//! errno (nothing of it is sent). The stream's state only ever advances by the bytes that were
//! actually sent, so a short write and its retry are read once. `write(2)`/`writev(2)` on a
//! socket are not intercepted (the filter would stop every file write): what an agent writes
//! that way is not read.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use oknek_event::SockAddr;

mod http;

/// The file in the runtime directory where the daemon publishes what `oknek run` should also
/// deny with Landlock (see [`write_landlock_policy`]).
pub const LANDLOCK_POLICY_FILE: &str = "seccomp-landlock.policy";

/// Longest path read from a caller (PATH_MAX).
const MAX_PATH: usize = 4096;
/// At most this many argv entries and bytes are read for an exec; the rest is flagged.
const MAX_ARGS: usize = 256;
const MAX_ARGV_BYTES: usize = 64 * 1024;
/// Largest payload an emulated send carries in one call (stream sockets get a short count).
const MAX_SEND: usize = 256 * 1024;
const MAX_IOV: usize = 1024;
const MAX_CONTROL: usize = 4096;
/// Symlinks followed in one resolution (the kernel's limit).
const MAX_SYMLINKS: usize = 40;
/// Notifications handled per `drain` before the loop gets its turn back.
const BATCH: usize = 256;
/// Calls parked waiting for a socket or FIFO; beyond this a blocking call gets EAGAIN.
const MAX_PENDING: usize = 1024;
/// Connections to plaintext model providers followed per listener. The kernel does not tell
/// us when a socket closes: beyond this the least recently used one is forgotten (its next
/// send is read as the start of a request).
const MAX_PROVIDER_CONNS: usize = 1024;

const LISTENER_TOKEN: u64 = 0;
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

// x86_64 syscall numbers this module answers.
const NR_OPEN: i32 = 2;
const NR_CONNECT: i32 = 42;
const NR_SENDTO: i32 = 44;
const NR_SENDMSG: i32 = 46;
const NR_EXECVE: i32 = 59;
const NR_CREAT: i32 = 85;
const NR_INOTIFY_ADD_WATCH: i32 = 254;
const NR_OPENAT: i32 = 257;
const NR_SENDMMSG: i32 = 307;
const NR_EXECVEAT: i32 = 322;
const NR_OPENAT2: i32 = 437;

const RESOLVE_NO_XDEV: u64 = 0x01;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;
const RESOLVE_IN_ROOT: u64 = 0x10;
const RESOLVE_CACHED: u64 = 0x20;

const IN_DONT_FOLLOW: u32 = 0x0200_0000;
const IN_ONLYDIR: u32 = 0x0100_0000;
const KCMP_VM: libc::c_int = 1;

/// Errors of the listener itself (never of one call: those are answered to the caller).
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("this kernel cannot report seccomp notification sizes: {0}")]
    Sizes(#[source] io::Error),
    #[error("epoll for the seccomp listener: {0}")]
    Epoll(#[source] io::Error),
    #[error("receiving a seccomp notification: {0}")]
    Recv(#[source] io::Error),
    #[error("writing the Landlock policy {path}: {source}")]
    Policy {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One intercepted call, decoded and with its pointer arguments read.
#[derive(Debug, Clone, PartialEq)]
pub struct SyscallRequest {
    /// The calling thread (as the daemon's pid namespace sees it).
    pub pid: u32,
    /// Its thread group (the process).
    pub tgid: u32,
    /// The agent `oknek run --agent` registered this listener for.
    pub agent: String,
    /// The syscall's name (`openat`, `execve`, …), for evidence.
    pub syscall: &'static str,
    pub kind: RequestKind,
    /// The arguments can change between this judgement and the kernel's own reading of them,
    /// and this call cannot be emulated: allowing it lets the kernel run the syscall with any
    /// arguments of this kind. Only emulated calls are never racy.
    pub racy: bool,
}

/// What the call asks for. Paths are canonical: absolute in the caller's root, symlinks and
/// `..` resolved, as reached by the resolution that (for open and watch) produced the object.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestKind {
    Exec {
        path: PathBuf,
        argv: Vec<OsString>,
        /// argv had more entries or bytes than were read.
        argv_truncated: bool,
        /// (st_dev, st_ino) of the file, when it could be resolved.
        inode: Option<(u64, u64)>,
    },
    Open {
        path: PathBuf,
        /// open(2) flags as the caller passed them (`creat` is `O_CREAT|O_WRONLY|O_TRUNC`).
        flags: u32,
        mode: u32,
        /// (st_dev, st_ino) of the existing object; `None` when the call creates it.
        inode: Option<(u64, u64)>,
    },
    Connect {
        /// `None` for families oknek does not model (netlink, packet, …) and AF_UNSPEC.
        dest: Option<SockAddr>,
        /// The socket's address family (`SO_DOMAIN`), authoritative over the sockaddr's.
        family: u16,
    },
    Send {
        /// The explicit destination, else the connected peer, when known.
        dest: Option<SockAddr>,
        family: u16,
        bytes: u64,
    },
    Watch {
        path: PathBuf,
        mask: u32,
    },
}

impl RequestKind {
    pub fn name(&self) -> &'static str {
        match self {
            RequestKind::Exec { .. } => "exec",
            RequestKind::Open { .. } => "open",
            RequestKind::Connect { .. } => "connect",
            RequestKind::Send { .. } => "send",
            RequestKind::Watch { .. } => "watch",
        }
    }
}

/// The decider's verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Allow,
    /// Fail the call with this errno (positive, e.g. `libc::EPERM`).
    Deny(i32),
}

impl Answer {
    pub const DENY: Answer = Answer::Deny(libc::EPERM);
}

/// The daemon's side of the tier: the verdict on each call, and which connections carry model
/// requests to read. A closure `FnMut(&SyscallRequest) -> Answer` is a decider that reads none
/// ([`SeccompListener::drain`]).
pub trait Decider {
    /// The verdict on one call.
    fn decide(&mut self, req: &SyscallRequest) -> Answer;

    /// Whether `peer` is a model provider spoken to in plaintext HTTP, whose requests' models
    /// are to be judged with [`Decider::decide_model`]. Asked on every send on a connected
    /// inet stream socket: keep it cheap.
    fn reads_models_sent_to(&mut self, _peer: &SockAddr) -> bool {
        false
    }

    /// The verdict on a request naming `model`, completed by `send` (a [`RequestKind::Send`]
    /// to the provider). `Deny` fails the send before any of its bytes leave.
    fn decide_model(&mut self, _send: &SyscallRequest, _model: &str) -> Answer {
        Answer::Allow
    }
}

/// A decide closure as a [`Decider`] that reads no model requests.
struct Calls<'a>(&'a mut dyn FnMut(&SyscallRequest) -> Answer);

impl Decider for Calls<'_> {
    fn decide(&mut self, req: &SyscallRequest) -> Answer {
        (self.0)(req)
    }
}

/// Which racy requests may still be allowed (see [`SyscallRequest::racy`]). Set it from the
/// rule set: a kind may be allowed while racy only if no block rule of that kind applies to the
/// agent that a substituted argument could match — or if every such rule is also enforced by
/// Landlock in the agent. A racy request the policy does not allow is denied (EPERM) *after*
/// the decider has seen it, so the evidence still shows what was attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RacePolicy {
    pub allow_racy_exec: bool,
    /// connect/send on sockets that cannot be emulated (AF_UNIX, netlink, …). Note that a racing
    /// caller can also swap the fd, so this must only be true when no connect or send block
    /// rule of any family applies to the agent.
    pub allow_racy_socket: bool,
}

/// What one `drain` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainStats {
    pub received: usize,
    pub allowed: usize,
    pub denied: usize,
    /// Allowed calls the daemon performed itself.
    pub emulated: usize,
    /// Notifications whose caller went away before the answer.
    pub vanished: usize,
    /// The batch limit was reached: more notifications are waiting (an edge-triggered loop
    /// must call `drain` again).
    pub more: bool,
}

/// One agent's seccomp listener, polled by the daemon's loop.
pub struct SeccompListener {
    notify: OwnedFd,
    epoll: OwnedFd,
    agent: String,
    notif_size: usize,
    resp_size: usize,
    race: RacePolicy,
    pending: HashMap<u64, Pending>,
    next_token: u64,
    closed: bool,
    /// Connections to plaintext model providers, by socket cookie.
    provider_conns: HashMap<u64, ProviderConn>,
    /// Ticks on every use of `provider_conns`, for least-recently-used eviction.
    provider_clock: u64,
}

/// What is known of one connection to a plaintext model provider.
struct ProviderConn {
    peer: SockAddr,
    requests: http::RequestStream,
    /// Bytes the daemon has sent on the connection.
    sent: u64,
    /// The part of the last send that did not go out (a short send): its SHA-256 and length.
    /// It was read and its models judged; when the next send starts with exactly these bytes
    /// (the caller sending the rest), they are not judged twice.
    judged_tail: Option<([u8; 32], usize)>,
    last_used: u64,
}

/// A send on a connection whose model requests are read: where its bytes go in the stream.
#[derive(Debug, Clone, Copy)]
struct StreamPos {
    cookie: u64,
    /// The connection's `sent` when the send was judged.
    at: u64,
}

/// A call answered later: a blocking connect or send, or a FIFO waiting for its writer.
struct Pending {
    id: u64,
    fd: OwnedFd,
    op: PendingOp,
}

enum PendingOp {
    Connect,
    Send {
        data: Vec<u8>,
        dest: Option<Vec<u8>>,
        flags: i32,
        tid: u32,
        /// Set on a connection whose model requests are read.
        stream: Option<StreamPos>,
    },
    FifoRead {
        cloexec: bool,
        restore_flags: i32,
    },
}

impl SeccompListener {
    /// Takes over a listener fd received with `RegisterSeccomp`.
    pub fn new(fd: OwnedFd, agent: String) -> Result<SeccompListener, SeccompError> {
        let mut sizes = libc::seccomp_notif_sizes {
            seccomp_notif: 0,
            seccomp_notif_resp: 0,
            seccomp_data: 0,
        };
        // SAFETY: SECCOMP_GET_NOTIF_SIZES writes one seccomp_notif_sizes to the pointer.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_GET_NOTIF_SIZES,
                0,
                &raw mut sizes,
            )
        };
        if rc < 0 {
            return Err(SeccompError::Sizes(io::Error::last_os_error()));
        }
        // SAFETY: no pointers.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(SeccompError::Epoll(io::Error::last_os_error()));
        }
        // SAFETY: the kernel just returned this fd.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        epoll_add(
            &epoll,
            notify_raw(&fd),
            libc::EPOLLIN as u32,
            LISTENER_TOKEN,
        )
        .map_err(SeccompError::Epoll)?;
        Ok(SeccompListener {
            notify: fd,
            epoll,
            agent,
            notif_size: (sizes.seccomp_notif as usize).max(size_of::<libc::seccomp_notif>()),
            resp_size: (sizes.seccomp_notif_resp as usize)
                .max(size_of::<libc::seccomp_notif_resp>()),
            race: RacePolicy::default(),
            pending: HashMap::new(),
            next_token: 1,
            closed: false,
            provider_conns: HashMap::new(),
            provider_clock: 0,
        })
    }

    pub fn agent(&self) -> &str {
        &self.agent
    }

    pub fn set_race_policy(&mut self, policy: RacePolicy) {
        self.race = policy;
    }

    /// True once every process under the filter has exited: drop the listener.
    pub fn is_closed(&self) -> bool {
        self.closed && self.pending.is_empty()
    }

    /// Calls waiting on a socket or FIFO.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Handles everything that is ready: new notifications (up to a batch) and parked calls
    /// whose socket or FIFO became ready, with `decide` as a [`Decider`] that reads no model
    /// requests. Never blocks.
    pub fn drain(
        &mut self,
        decide: &mut dyn FnMut(&SyscallRequest) -> Answer,
    ) -> Result<DrainStats, SeccompError> {
        self.drain_with(&mut Calls(decide))
    }

    /// [`SeccompListener::drain`] with a full [`Decider`].
    pub fn drain_with(&mut self, decide: &mut dyn Decider) -> Result<DrainStats, SeccompError> {
        let mut stats = DrainStats::default();
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        // SAFETY: events is a valid array of 64 epoll_event.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 64, 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(SeccompError::Epoll(err));
            }
        }
        for ev in events.iter().take(n.max(0) as usize) {
            let token = ev.u64;
            if token != LISTENER_TOKEN {
                self.finish_pending(token, &mut stats);
            }
        }
        for i in 0..=BATCH {
            if i == BATCH {
                stats.more = true;
                break;
            }
            match poll_in(self.notify.as_raw_fd()) {
                Poll::Ready => {}
                Poll::Empty => break,
                Poll::Hangup => {
                    self.closed = true;
                    break;
                }
            }
            match self.recv() {
                Ok(Some(notif)) => {
                    stats.received += 1;
                    self.handle(&notif, decide, &mut stats);
                }
                Ok(None) => stats.vanished += 1,
                Err(e) => return Err(SeccompError::Recv(e)),
            }
        }
        self.collect_abandoned();
        Ok(stats)
    }

    fn recv(&self) -> io::Result<Option<Notification>> {
        let mut buf = vec![0u8; self.notif_size];
        // SAFETY: buf is zeroed (as the kernel requires) and at least as large as the kernel's
        // struct seccomp_notif.
        let rc = unsafe {
            libc::ioctl(
                self.notify.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV as _,
                buf.as_mut_ptr(),
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                // The caller was killed between our poll and the receive.
                Some(libc::ENOENT) | Some(libc::EINTR) => Ok(None),
                _ => Err(err),
            };
        }
        Ok(Notification::parse(&buf))
    }

    fn handle(&mut self, n: &Notification, decide: &mut dyn Decider, stats: &mut DrainStats) {
        let outcome = match Caller::new(self, n) {
            Ok(caller) => self.dispatch(&caller, n, decide),
            Err(errno) => Outcome::Error(errno),
        };
        self.carry_out(n.id, outcome, stats);
    }

    fn carry_out(&mut self, id: u64, outcome: Outcome, stats: &mut DrainStats) {
        let ok = match outcome {
            Outcome::Denied(errno) => {
                stats.denied += 1;
                self.respond(id, 0, -errno, 0)
            }
            Outcome::Error(errno) => self.respond(id, 0, -errno, 0),
            Outcome::Value(v) => {
                stats.allowed += 1;
                stats.emulated += 1;
                self.respond(id, v, 0, 0)
            }
            Outcome::Continue => {
                stats.allowed += 1;
                self.respond(id, 0, 0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32)
            }
            Outcome::InjectFd { fd, cloexec } => {
                stats.allowed += 1;
                stats.emulated += 1;
                self.inject(id, &fd, cloexec)
            }
            Outcome::Park(p) => {
                stats.allowed += 1;
                stats.emulated += 1;
                self.park(p)
            }
        };
        if !ok {
            stats.vanished += 1;
        }
    }

    fn respond(&self, id: u64, val: i64, error: i32, flags: u32) -> bool {
        let mut buf = vec![0u8; self.resp_size];
        buf[0..8].copy_from_slice(&id.to_ne_bytes());
        buf[8..16].copy_from_slice(&val.to_ne_bytes());
        buf[16..20].copy_from_slice(&error.to_ne_bytes());
        buf[20..24].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: buf holds a seccomp_notif_resp of the kernel's size.
        let rc = unsafe {
            libc::ioctl(
                self.notify.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SEND as _,
                buf.as_ptr(),
            )
        };
        rc >= 0
    }

    /// Installs `fd` in the caller and makes its number the syscall's return value, atomically.
    fn inject(&self, id: u64, fd: &OwnedFd, cloexec: bool) -> bool {
        let addfd = libc::seccomp_notif_addfd {
            id,
            flags: libc::SECCOMP_ADDFD_FLAG_SEND as u32,
            srcfd: fd.as_raw_fd() as u32,
            newfd: 0,
            newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
        };
        // SAFETY: addfd is a valid seccomp_notif_addfd.
        let rc = unsafe {
            libc::ioctl(
                self.notify.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ADDFD as _,
                &raw const addfd,
            )
        };
        if rc >= 0 {
            return true;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENOENT) => false,
            // Out of fds in the caller (EMFILE) and the like: the call fails with that errno.
            Some(e) => self.respond(id, 0, -e, 0),
            None => false,
        }
    }

    fn id_valid(&self, id: u64) -> bool {
        // SAFETY: the argument is a pointer to a u64 notification id.
        let rc = unsafe {
            libc::ioctl(
                self.notify.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ID_VALID as _,
                &raw const id,
            )
        };
        rc == 0
    }

    fn park(&mut self, p: Pending) -> bool {
        if self.pending.len() >= MAX_PENDING {
            return self.respond(p.id, 0, -libc::EAGAIN, 0);
        }
        let token = self.next_token;
        self.next_token += 1;
        let events = match p.op {
            PendingOp::FifoRead { .. } => libc::EPOLLIN | libc::EPOLLHUP,
            _ => libc::EPOLLOUT,
        } as u32;
        if let Err(e) = epoll_add(&self.epoll, p.fd.as_raw_fd(), events, token) {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            return self.respond(p.id, 0, -errno, 0);
        }
        self.pending.insert(token, p);
        true
    }

    fn finish_pending(&mut self, token: u64, stats: &mut DrainStats) {
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        epoll_del(&self.epoll, p.fd.as_raw_fd());
        let ok = match p.op {
            PendingOp::Connect => match sock_error(&p.fd) {
                0 => self.respond(p.id, 0, 0, 0),
                e => self.respond(p.id, 0, -e, 0),
            },
            PendingOp::Send {
                stream: Some(pos),
                ref data,
                ..
            } if self.stream_moved(pos, data) => {
                // Judged for a place in the stream it no longer has, and it completes a model:
                // refuse rather than send a request nobody judged.
                stats.denied += 1;
                self.respond(p.id, 0, -libc::EPERM, 0)
            }
            PendingOp::Send {
                data,
                dest,
                flags,
                tid,
                stream,
            } => match send_raw(&p.fd, &data, dest.as_deref(), flags) {
                Ok(n) => {
                    if let Some(pos) = stream {
                        self.advance_stream(pos, &data, n);
                    }
                    self.respond(p.id, n as i64, 0, 0)
                }
                Err(libc::EAGAIN) => {
                    // Woken but the buffer filled again: wait once more.
                    let again = Pending {
                        id: p.id,
                        fd: p.fd,
                        op: PendingOp::Send {
                            data,
                            dest,
                            flags,
                            tid,
                            stream,
                        },
                    };
                    if !self.park(again) {
                        stats.vanished += 1;
                    }
                    return;
                }
                Err(e) => {
                    if e == libc::EPIPE && flags & libc::MSG_NOSIGNAL == 0 {
                        raise_sigpipe(tid);
                    }
                    self.respond(p.id, 0, -e, 0)
                }
            },
            PendingOp::FifoRead {
                cloexec,
                restore_flags,
            } => {
                // SAFETY: plain fcntl on an fd we own.
                unsafe { libc::fcntl(p.fd.as_raw_fd(), libc::F_SETFL, restore_flags) };
                self.inject(p.id, &p.fd, cloexec)
            }
        };
        if !ok {
            stats.vanished += 1;
        }
    }

    /// Drops parked calls whose caller is gone (killed, or interrupted and restarted).
    fn collect_abandoned(&mut self) {
        let gone: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| !self.id_valid(p.id))
            .map(|(t, _)| *t)
            .collect();
        for t in gone {
            if let Some(p) = self.pending.remove(&t) {
                epoll_del(&self.epoll, p.fd.as_raw_fd());
            }
        }
    }

    fn dispatch(&mut self, c: &Caller, n: &Notification, decide: &mut dyn Decider) -> Outcome {
        let a = &n.args;
        let result = match n.nr {
            NR_OPEN => self.open(c, n, "open", libc::AT_FDCWD, a[0], a[1], a[2], 0, decide),
            NR_CREAT => {
                let flags = (libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC) as u64;
                self.open(c, n, "creat", libc::AT_FDCWD, a[0], flags, a[1], 0, decide)
            }
            NR_OPENAT => self.open(c, n, "openat", a[0] as i32, a[1], a[2], a[3], 0, decide),
            NR_OPENAT2 => self.openat2(c, n, decide),
            NR_EXECVE => self.exec(c, n, "execve", libc::AT_FDCWD, a[0], a[1], 0, decide),
            NR_EXECVEAT => self.exec(
                c,
                n,
                "execveat",
                a[0] as i32,
                a[1],
                a[2],
                a[4] as i32,
                decide,
            ),
            NR_CONNECT => self.connect(c, n, decide),
            NR_SENDTO => self.sendto(c, n, decide),
            NR_SENDMSG => self.sendmsg(c, n, a[1], a[2] as i32, "sendmsg", decide),
            // sendmmsg: the first message is judged and sent; the call returns 1, a short count
            // every caller of sendmmsg must handle.
            NR_SENDMMSG => {
                if a[2] == 0 {
                    Ok(Outcome::Value(0))
                } else {
                    match self.sendmsg(c, n, a[1], a[3] as i32, "sendmmsg", decide) {
                        Ok(Outcome::Value(v)) if v >= 0 => {
                            // msg_len of the first mmsghdr is not written back; callers read
                            // the return value. (Documented limitation.)
                            Ok(Outcome::Value(1))
                        }
                        other => other,
                    }
                }
            }
            NR_INOTIFY_ADD_WATCH => self.watch(c, n, decide),
            // Anything else was not meant to reach us: refuse.
            _ => Err(libc::ENOSYS),
        };
        match result {
            Ok(o) => o,
            Err(errno) => Outcome::Error(errno),
        }
    }

    fn request(&self, c: &Caller, syscall: &'static str, kind: RequestKind) -> SyscallRequest {
        SyscallRequest {
            pid: c.tid,
            tgid: c.status.tgid,
            agent: self.agent.clone(),
            syscall,
            kind,
            racy: false,
        }
    }

    // ---- open ------------------------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn open(
        &self,
        c: &Caller,
        n: &Notification,
        syscall: &'static str,
        dirfd: i32,
        path_ptr: u64,
        flags: u64,
        mode: u64,
        resolve: u64,
        decide: &mut dyn Decider,
    ) -> Result<Outcome, i32> {
        let path = c.mem.read_cstr(path_ptr, MAX_PATH)?;
        let flags = flags as u32 as i32;
        let mode = (mode as u32) & 0o7777;
        if !self.id_valid(n.id) {
            return Err(libc::ENOENT);
        }
        let bases = Bases::new(c, dirfd)?;
        let _creds = CredGuard::enter(&c.status)?;
        // Creation may race with another creator: then the object exists and is judged again.
        for _ in 0..3 {
            let target = resolve_open(c, &bases, &path, flags, resolve)?;
            let (canon, inode) = match &target {
                Target::Existing { fd, canon } => (canon.clone(), Some(inode_of(fd)?)),
                Target::Missing { canon, .. } => (canon.clone(), None),
            };
            if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
                refuse_proc_mem_write(&canon, &target)?;
            }
            let req = self.request(
                c,
                syscall,
                RequestKind::Open {
                    path: canon,
                    flags: flags as u32,
                    mode,
                    inode,
                },
            );
            if let Answer::Deny(e) = decide.decide(&req) {
                return Ok(Outcome::Denied(e));
            }
            let cloexec = flags & libc::O_CLOEXEC != 0;
            match open_target(target, flags, mode, c.status.umask, n.id) {
                Ok(Opened::Fd(fd)) => return Ok(Outcome::InjectFd { fd, cloexec }),
                Ok(Opened::Fifo(p)) => return Ok(Outcome::Park(p)),
                Err(libc::EEXIST) if flags & libc::O_EXCL == 0 => continue,
                Err(e) => return Err(e),
            }
        }
        Err(libc::EAGAIN)
    }

    fn openat2(
        &self,
        c: &Caller,
        n: &Notification,
        decide: &mut dyn Decider,
    ) -> Result<Outcome, i32> {
        let size = n.args[3] as usize;
        if size < 24 {
            return Err(libc::EINVAL);
        }
        let how = c.mem.read_exact(n.args[2], 24)?;
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&how[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(b)
        };
        let (flags, mode, resolve) = (word(0), word(1), word(2));
        if flags > u32::MAX as u64 || mode & !0o7777 != 0 {
            return Err(libc::EINVAL);
        }
        if resolve
            & !(RESOLVE_NO_XDEV
                | RESOLVE_NO_MAGICLINKS
                | RESOLVE_NO_SYMLINKS
                | RESOLVE_BENEATH
                | RESOLVE_IN_ROOT
                | RESOLVE_CACHED)
            != 0
        {
            return Err(libc::EINVAL);
        }
        // Fields beyond the ones we know must be zero (the kernel's extensible-struct rule).
        if size > 24 {
            let rest = c.mem.read_exact(n.args[2] + 24, (size - 24).min(4096))?;
            if rest.iter().any(|&b| b != 0) {
                return Err(libc::E2BIG);
            }
        }
        self.open(
            c,
            n,
            "openat2",
            n.args[0] as i32,
            n.args[1],
            flags,
            mode,
            resolve,
            decide,
        )
    }

    // ---- exec ------------------------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn exec(
        &self,
        c: &Caller,
        n: &Notification,
        syscall: &'static str,
        dirfd: i32,
        path_ptr: u64,
        argv_ptr: u64,
        at_flags: i32,
        decide: &mut dyn Decider,
    ) -> Result<Outcome, i32> {
        let path = c.mem.read_cstr(path_ptr, MAX_PATH)?;
        let mut spans = vec![(path_ptr, path.len() as u64 + 1)];
        let (argv, argv_truncated) = c.mem.read_argv(argv_ptr, &mut spans)?;
        if !self.id_valid(n.id) {
            return Err(libc::ENOENT);
        }
        let bases = Bases::new(c, dirfd)?;
        let (canon, inode) = {
            let _creds = CredGuard::enter(&c.status)?;
            let nofollow = at_flags & libc::AT_SYMLINK_NOFOLLOW != 0;
            if path.is_empty() && at_flags & libc::AT_EMPTY_PATH != 0 {
                let fd = bases.dir()?;
                (fd_path(fd), Some(inode_of(fd)?))
            } else {
                let flags = if nofollow { libc::O_NOFOLLOW } else { 0 };
                match resolve_open(c, &bases, &path, flags, 0)? {
                    Target::Existing { fd, canon } => (canon, Some(inode_of(&fd)?)),
                    Target::Missing { .. } => return Err(libc::ENOENT),
                }
            }
        };
        let mut req = self.request(
            c,
            syscall,
            RequestKind::Exec {
                path: canon,
                argv,
                argv_truncated,
                inode,
            },
        );
        req.racy = can_race(c, &spans);
        Ok(self.verdict_for_continue(&req, decide, self.race.allow_racy_exec))
    }

    /// The answer for a call that can only be let through (`CONTINUE`) or refused.
    fn verdict_for_continue(
        &self,
        req: &SyscallRequest,
        decide: &mut dyn Decider,
        racy_allowed: bool,
    ) -> Outcome {
        match decide.decide(req) {
            Answer::Deny(e) => Outcome::Denied(e),
            Answer::Allow if req.racy && !racy_allowed => Outcome::Denied(libc::EPERM),
            Answer::Allow => Outcome::Continue,
        }
    }

    // ---- sockets ---------------------------------------------------------------------------

    fn connect(
        &self,
        c: &Caller,
        n: &Notification,
        decide: &mut dyn Decider,
    ) -> Result<Outcome, i32> {
        let len = n.args[2] as usize;
        if len > 128 {
            return Err(libc::EINVAL);
        }
        let raw = c.mem.read_exact(n.args[1], len)?;
        let sock = c.take_fd(n.args[0] as i32)?;
        if !self.id_valid(n.id) {
            return Err(libc::ENOENT);
        }
        let family = sock_domain(&sock)?;
        let dest = SockAddr::from_raw(&raw);
        let mut req = self.request(c, "connect", RequestKind::Connect { dest, family });
        if !is_inet(family) {
            req.racy = can_race(c, &[(n.args[1], len as u64)]);
            return Ok(self.verdict_for_continue(&req, decide, self.race.allow_racy_socket));
        }
        if let Answer::Deny(e) = decide.decide(&req) {
            return Ok(Outcome::Denied(e));
        }
        let blocking = fd_flags(&sock)? & libc::O_NONBLOCK == 0;
        let rc = if blocking {
            with_nonblock(&sock, |fd| connect_raw(fd, &raw))?
        } else {
            connect_raw(sock.as_raw_fd(), &raw)
        };
        match rc {
            Ok(()) => Ok(Outcome::Value(0)),
            Err(libc::EINPROGRESS) if blocking => Ok(Outcome::Park(Pending {
                id: n.id,
                fd: sock,
                op: PendingOp::Connect,
            })),
            // A second blocking connect while the first is under way waits for it.
            Err(libc::EALREADY) if blocking => Ok(Outcome::Park(Pending {
                id: n.id,
                fd: sock,
                op: PendingOp::Connect,
            })),
            Err(e) => Err(e),
        }
    }

    fn sendto(
        &mut self,
        c: &Caller,
        n: &Notification,
        decide: &mut dyn Decider,
    ) -> Result<Outcome, i32> {
        let a = &n.args;
        if a[4] == 0 {
            return self.send_connected(c, n, decide);
        }
        let len = a[5] as usize;
        if len > 128 {
            return Err(libc::EINVAL);
        }
        let raw = c.mem.read_exact(a[4], len)?;
        let sock = c.take_fd(a[0] as i32)?;
        if !self.id_valid(n.id) {
            return Err(libc::ENOENT);
        }
        let family = sock_domain(&sock)?;
        let bytes = a[2];
        let kind = RequestKind::Send {
            dest: SockAddr::from_raw(&raw),
            family,
            bytes,
        };
        let mut req = self.request(c, "sendto", kind);
        if !is_inet(family) {
            req.racy = can_race(c, &[(a[4], len as u64), (a[1], bytes.min(1 << 20))]);
            return Ok(self.verdict_for_continue(&req, decide, self.race.allow_racy_socket));
        }
        if let Answer::Deny(e) = decide.decide(&req) {
            return Ok(Outcome::Denied(e));
        }
        let data = c.mem.read_exact(a[1], clamp_send(&sock, bytes as usize)?)?;
        self.emulate_send(c, n.id, sock, data, Some(raw), a[3] as i32, decide)
    }

    /// sendto without an address (what send(2) is on x86_64): on an inet socket, emulated
    /// without a verdict, the peer having been judged at connect; elsewhere let through, as it
    /// always was.
    fn send_connected(
        &mut self,
        c: &Caller,
        n: &Notification,
        decide: &mut dyn Decider,
    ) -> Result<Outcome, i32> {
        let a = &n.args;
        let sock = c.take_fd(a[0] as i32)?;
        if !self.id_valid(n.id) {
            return Err(libc::ENOENT);
        }
        if !is_inet(sock_domain(&sock)?) {
            return Ok(Outcome::Continue);
        }
        let data = c.mem.read_exact(a[1], clamp_send(&sock, a[2] as usize)?)?;
        self.emulate_send(c, n.id, sock, data, None, a[3] as i32, decide)
    }

    fn sendmsg(
        &mut self,
        c: &Caller,
        n: &Notification,
        msg_ptr: u64,
        flags: i32,
        syscall: &'static str,
        decide: &mut dyn Decider,
    ) -> Result<Outcome, i32> {
        // struct msghdr on x86_64: name, namelen(+pad), iov, iovlen, control, controllen, flags.
        let m = c.mem.read_exact(msg_ptr, 56)?;
        let word = |off: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&m[off..off + 8]);
            u64::from_ne_bytes(b)
        };
        let (name_ptr, name_len) = (word(0), word(8) as u32 as usize);
        let (iov_ptr, iov_len) = (word(16), word(24) as usize);
        let (ctl_ptr, ctl_len) = (word(32), word(40) as usize);
        if name_len > 128 || iov_len > MAX_IOV || ctl_len > MAX_CONTROL {
            return Err(if iov_len > MAX_IOV {
                libc::EMSGSIZE
            } else {
                libc::EINVAL
            });
        }
        let name = if name_ptr != 0 && name_len > 0 {
            Some(c.mem.read_exact(name_ptr, name_len)?)
        } else {
            None
        };
        let iovs = c.mem.read_exact(iov_ptr, iov_len * 16)?;
        let mut segments = Vec::with_capacity(iov_len);
        let mut total: u64 = 0;
        for chunk in iovs.chunks_exact(16) {
            let mut b = [0u8; 8];
            b.copy_from_slice(&chunk[0..8]);
            let base = u64::from_ne_bytes(b);
            b.copy_from_slice(&chunk[8..16]);
            let len = u64::from_ne_bytes(b);
            total = total.saturating_add(len);
            segments.push((base, len));
        }
        let sock = c.take_fd(n.args[0] as i32)?;
        if !self.id_valid(n.id) {
            return Err(libc::ENOENT);
        }
        let family = sock_domain(&sock)?;
        let dest = match &name {
            Some(raw) => SockAddr::from_raw(raw),
            None => peer_of(&sock),
        };
        let kind = RequestKind::Send {
            dest,
            family,
            bytes: total,
        };
        let mut req = self.request(c, syscall, kind);
        if !is_inet(family) {
            let mut spans = vec![(msg_ptr, 56), (iov_ptr, iov_len as u64 * 16)];
            spans.extend(name.as_ref().map(|r| (name_ptr, r.len() as u64)));
            spans.push((ctl_ptr, ctl_len as u64));
            req.racy = can_race(c, &spans);
            return Ok(self.verdict_for_continue(&req, decide, self.race.allow_racy_socket));
        }
        if let Answer::Deny(e) = decide.decide(&req) {
            return Ok(Outcome::Denied(e));
        }
        if ctl_len > 0 {
            // Ancillary data on inet sockets (IP_PKTINFO, UDP_SEGMENT, …) is not carried over:
            // refuse rather than send something other than what was asked.
            return Err(libc::EOPNOTSUPP);
        }
        let want = clamp_send(&sock, total.min(usize::MAX as u64) as usize)?;
        let mut data = Vec::with_capacity(want);
        for (base, len) in segments {
            if data.len() >= want {
                break;
            }
            let take = (len as usize).min(want - data.len());
            data.extend_from_slice(&c.mem.read_exact(base, take)?);
        }
        self.emulate_send(c, n.id, sock, data, name, flags, decide)
    }

    /// Sends `data` on the caller's socket for it. On a connection to a plaintext model
    /// provider the bytes are read first, and a request whose model the decider refuses fails
    /// the send before anything of it leaves.
    #[allow(clippy::too_many_arguments)]
    fn emulate_send(
        &mut self,
        c: &Caller,
        id: u64,
        sock: OwnedFd,
        data: Vec<u8>,
        dest: Option<Vec<u8>>,
        flags: i32,
        decide: &mut dyn Decider,
    ) -> Result<Outcome, i32> {
        let stream = match self.read_models(c, &sock, &data, dest.as_deref(), decide) {
            Ok(stream) => stream,
            Err(answer) => return Ok(answer),
        };
        let blocking = fd_flags(&sock)? & libc::O_NONBLOCK == 0 && flags & libc::MSG_DONTWAIT == 0;
        match send_raw(&sock, &data, dest.as_deref(), flags) {
            Ok(n) => {
                if let Some(pos) = stream {
                    self.advance_stream(pos, &data, n);
                }
                Ok(Outcome::Value(n as i64))
            }
            Err(libc::EAGAIN) if blocking => Ok(Outcome::Park(Pending {
                id,
                fd: sock,
                op: PendingOp::Send {
                    data,
                    dest,
                    flags,
                    tid: c.tid,
                    stream,
                },
            })),
            Err(e) => {
                if e == libc::EPIPE && flags & libc::MSG_NOSIGNAL == 0 {
                    raise_sigpipe(c.tid);
                }
                Err(e)
            }
        }
    }

    // ---- plaintext model requests ------------------------------------------------------------

    /// Reads the model requests `data` completes when `sock` is a connection to a plaintext
    /// model provider, and has the decider judge each. `Ok(Some(pos))`: a followed connection
    /// (advance it by what is sent); `Ok(None)`: nothing to read; `Err(outcome)`: refused.
    fn read_models(
        &mut self,
        c: &Caller,
        sock: &OwnedFd,
        data: &[u8],
        dest: Option<&[u8]>,
        decide: &mut dyn Decider,
    ) -> Result<Option<StreamPos>, Outcome> {
        if data.is_empty() || sock_type(sock) != Ok(libc::SOCK_STREAM) {
            return Ok(None);
        }
        // Not connected yet: a TCP Fast Open send carries its request in the SYN.
        let Some(peer) = peer_of(sock).or_else(|| dest.and_then(SockAddr::from_raw)) else {
            return Ok(None);
        };
        if !decide.reads_models_sent_to(&peer) {
            return Ok(None);
        }
        let Some(cookie) = socket_cookie(sock) else {
            // Without an identity the connection cannot be followed: refuse rather than let a
            // request to a provider go unread.
            return Err(Outcome::Denied(libc::EPERM));
        };
        let conn = self.provider_conn(cookie, &peer);
        let mut probe = conn.requests.clone();
        let at = conn.sent;
        // The rest of a short send was read (and its models judged) in this very context.
        let skip = match conn.judged_tail.take() {
            Some((digest, len)) if len <= data.len() && sha256(&data[..len]) == digest => len,
            _ => 0,
        };
        let mut models = Vec::new();
        probe.feed(&data[..skip], &mut Vec::new());
        probe.feed(&data[skip..], &mut models);
        if !models.is_empty() {
            let family = sock_domain(sock).unwrap_or(0);
            let req = self.request(
                c,
                "send",
                RequestKind::Send {
                    dest: Some(peer),
                    family,
                    bytes: data.len() as u64,
                },
            );
            for model in &models {
                if let Answer::Deny(e) = decide.decide_model(&req, model) {
                    // Nothing of this send leaves, but the server may hold the request's start
                    // and would wait for the rest; clients that read on after a failed write
                    // (httpx does) would wait with it. End the connection: both see it at once.
                    // SAFETY: plain shutdown of a socket we hold.
                    unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_RDWR) };
                    self.provider_conns.remove(&cookie);
                    return Err(Outcome::Denied(e));
                }
            }
        }
        Ok(Some(StreamPos { cookie, at }))
    }

    /// The followed connection `cookie`, new (at a request's start) when unknown or when the
    /// socket was reconnected elsewhere.
    fn provider_conn(&mut self, cookie: u64, peer: &SockAddr) -> &mut ProviderConn {
        self.provider_clock += 1;
        let now = self.provider_clock;
        if !self.provider_conns.contains_key(&cookie)
            && self.provider_conns.len() >= MAX_PROVIDER_CONNS
            && let Some(oldest) = self
                .provider_conns
                .iter()
                .min_by_key(|(_, conn)| conn.last_used)
                .map(|(k, _)| *k)
        {
            self.provider_conns.remove(&oldest);
        }
        let conn = self
            .provider_conns
            .entry(cookie)
            .or_insert_with(|| ProviderConn {
                peer: peer.clone(),
                requests: http::RequestStream::new(),
                sent: 0,
                judged_tail: None,
                last_used: now,
            });
        if conn.peer != *peer {
            *conn = ProviderConn {
                peer: peer.clone(),
                requests: http::RequestStream::new(),
                sent: 0,
                judged_tail: None,
                last_used: now,
            };
        }
        conn.last_used = now;
        conn
    }

    /// Moves the followed connection past the first `sent` bytes of `data`, which was read
    /// and judged whole.
    fn advance_stream(&mut self, pos: StreamPos, data: &[u8], sent: usize) {
        if let Some(conn) = self.provider_conns.get_mut(&pos.cookie) {
            conn.requests.feed(&data[..sent], &mut Vec::new());
            conn.sent += sent as u64;
            let tail = &data[sent..];
            conn.judged_tail = (!tail.is_empty()).then(|| (sha256(tail), tail.len()));
        }
    }

    /// Whether a parked send still goes out where it was judged: another send on the same
    /// connection in between (concurrent writers) would put its bytes in another context.
    fn stream_moved(&self, pos: StreamPos, data: &[u8]) -> bool {
        let Some(conn) = self.provider_conns.get(&pos.cookie) else {
            return false;
        };
        if conn.sent == pos.at {
            return false;
        }
        let mut models = Vec::new();
        conn.requests.clone().feed(data, &mut models);
        !models.is_empty()
    }

    // ---- inotify ---------------------------------------------------------------------------

    fn watch(
        &self,
        c: &Caller,
        n: &Notification,
        decide: &mut dyn Decider,
    ) -> Result<Outcome, i32> {
        let path = c.mem.read_cstr(n.args[1], MAX_PATH)?;
        let mask = n.args[2] as u32;
        let inotify = c.take_fd(n.args[0] as i32)?;
        if !self.id_valid(n.id) {
            return Err(libc::ENOENT);
        }
        let bases = Bases::new(c, libc::AT_FDCWD)?;
        let _creds = CredGuard::enter(&c.status)?;
        let mut flags = 0;
        if mask & IN_DONT_FOLLOW != 0 {
            flags |= libc::O_NOFOLLOW;
        }
        if mask & IN_ONLYDIR != 0 {
            flags |= libc::O_DIRECTORY;
        }
        let (fd, canon) = match resolve_open(c, &bases, &path, flags, 0)? {
            Target::Existing { fd, canon } => (fd, canon),
            Target::Missing { .. } => return Err(libc::ENOENT),
        };
        if mask & IN_ONLYDIR != 0 && !is_dir(&fd)? {
            return Err(libc::ENOTDIR);
        }
        let req = self.request(
            c,
            "inotify_add_watch",
            RequestKind::Watch { path: canon, mask },
        );
        if let Answer::Deny(e) = decide.decide(&req) {
            return Ok(Outcome::Denied(e));
        }
        let magic = self_fd_path(&fd);
        // The object is already resolved (symlink or not): follow our magic link to it.
        let rc = {
            // SAFETY: magic is a NUL-terminated path; the fds are ours.
            unsafe {
                libc::inotify_add_watch(
                    inotify.as_raw_fd(),
                    magic.as_ptr(),
                    mask & !(IN_DONT_FOLLOW | IN_ONLYDIR),
                )
            }
        };
        if rc < 0 {
            return Err(last_errno());
        }
        Ok(Outcome::Value(rc as i64))
    }
}

impl AsRawFd for SeccompListener {
    /// The fd to poll for readability: an epoll set of the listener and of the calls parked on
    /// sockets. Register it level- or edge-triggered; `drain` empties it.
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

fn notify_raw(fd: &OwnedFd) -> RawFd {
    fd.as_raw_fd()
}

/// What to tell the kernel about one notification.
enum Outcome {
    Denied(i32),
    Error(i32),
    Continue,
    Value(i64),
    InjectFd { fd: OwnedFd, cloexec: bool },
    Park(Pending),
}

/// A received notification.
struct Notification {
    id: u64,
    pid: u32,
    nr: i32,
    args: [u64; 6],
}

impl Notification {
    fn parse(buf: &[u8]) -> Option<Notification> {
        let u64_at = |off: usize| -> Option<u64> {
            let b: [u8; 8] = buf.get(off..off + 8)?.try_into().ok()?;
            Some(u64::from_ne_bytes(b))
        };
        let u32_at = |off: usize| -> Option<u32> {
            let b: [u8; 4] = buf.get(off..off + 4)?.try_into().ok()?;
            Some(u32::from_ne_bytes(b))
        };
        // struct seccomp_notif { u64 id; u32 pid; u32 flags; struct seccomp_data data; }
        // struct seccomp_data { int nr; u32 arch; u64 instruction_pointer; u64 args[6]; }
        let mut args = [0u64; 6];
        for (i, a) in args.iter_mut().enumerate() {
            *a = u64_at(32 + i * 8)?;
        }
        Some(Notification {
            id: u64_at(0)?,
            pid: u32_at(8)?,
            nr: u32_at(16)? as i32,
            args,
        })
    }
}

// ---- the caller -------------------------------------------------------------------------------

/// The calling task as /proc shows it at notification time.
struct Caller {
    tid: u32,
    status: Status,
    mem: Mem,
}

impl Caller {
    fn new(l: &SeccompListener, n: &Notification) -> Result<Caller, i32> {
        let status = Status::read(n.pid).map_err(|_| libc::ESRCH)?;
        // The pid could have been reused between the notification and our reading of /proc.
        if !l.id_valid(n.id) {
            return Err(libc::ESRCH);
        }
        Ok(Caller {
            tid: n.pid,
            status,
            mem: Mem { pid: n.pid },
        })
    }

    /// A duplicate of the caller's fd `fd` (same open file description).
    fn take_fd(&self, fd: i32) -> Result<OwnedFd, i32> {
        if fd < 0 {
            return Err(libc::EBADF);
        }
        let pidfd = pidfd_open(self.status.tgid)?;
        // SAFETY: no pointers.
        let rc = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if rc < 0 {
            return Err(match last_errno() {
                libc::EBADF => libc::EBADF,
                libc::ESRCH => libc::ESRCH,
                e => e,
            });
        }
        // SAFETY: the kernel just returned this fd (with O_CLOEXEC set).
        Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
    }
}

fn pidfd_open(pid: u32) -> Result<OwnedFd, i32> {
    // SAFETY: no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if rc < 0 {
        return Err(last_errno());
    }
    // SAFETY: the kernel just returned this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

/// The fields of /proc/PID/status this tier acts on.
#[derive(Debug, Clone, Default)]
struct Status {
    tgid: u32,
    /// The caller's own pid namespace view (last NStgid / NSpid entries), for /proc/self.
    ns_tgid: u32,
    ns_pid: u32,
    fsuid: u32,
    fsgid: u32,
    groups: Vec<u32>,
    cap_eff: u64,
    umask: u32,
    threads: u32,
}

impl Status {
    fn read(tid: u32) -> io::Result<Status> {
        let text = std::fs::read_to_string(format!("/proc/{tid}/status"))?;
        Ok(Status::parse(&text, tid))
    }

    fn parse(text: &str, tid: u32) -> Status {
        let mut s = Status {
            tgid: tid,
            ns_tgid: tid,
            ns_pid: tid,
            umask: 0o022,
            threads: 1,
            ..Status::default()
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            let nth = |i: usize| value.split_whitespace().nth(i).and_then(|v| v.parse().ok());
            let last = || value.split_whitespace().last().and_then(|v| v.parse().ok());
            match key {
                "Tgid" => s.tgid = nth(0).unwrap_or(tid),
                "NStgid" => s.ns_tgid = last().unwrap_or(s.tgid),
                "NSpid" => s.ns_pid = last().unwrap_or(tid),
                "Uid" => s.fsuid = nth(3).unwrap_or(u32::MAX),
                "Gid" => s.fsgid = nth(3).unwrap_or(u32::MAX),
                "Groups" => {
                    s.groups = value
                        .split_whitespace()
                        .filter_map(|g| g.parse().ok())
                        .collect()
                }
                "CapEff" => s.cap_eff = u64::from_str_radix(value, 16).unwrap_or(0),
                "Umask" => s.umask = u32::from_str_radix(value, 8).unwrap_or(0o022),
                "Threads" => s.threads = nth(0).unwrap_or(u32::MAX),
                _ => {}
            }
        }
        s
    }
}

/// The caller's memory, read with process_vm_readv (never written).
struct Mem {
    pid: u32,
}

impl Mem {
    /// Reads up to `buf.len()` bytes; stops at the first unreadable page.
    fn read_some(&self, addr: u64, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let at = addr.wrapping_add(done as u64);
            // Never cross a page boundary in one call: a fault ends the whole transfer.
            let to_page_end = 4096 - (at % 4096) as usize;
            let want = (buf.len() - done).min(to_page_end);
            let local = libc::iovec {
                iov_base: buf[done..].as_mut_ptr().cast(),
                iov_len: want,
            };
            let remote = libc::iovec {
                iov_base: at as *mut libc::c_void,
                iov_len: want,
            };
            // SAFETY: local points to `want` writable bytes of buf; the remote address is only
            // dereferenced by the kernel in the other process.
            let n = unsafe {
                libc::process_vm_readv(self.pid as libc::pid_t, &local, 1, &remote, 1, 0)
            };
            if n <= 0 {
                break;
            }
            done += n as usize;
        }
        done
    }

    fn read_exact(&self, addr: u64, len: usize) -> Result<Vec<u8>, i32> {
        let mut buf = vec![0u8; len];
        if len > 0 && (addr == 0 || self.read_some(addr, &mut buf) != len) {
            return Err(libc::EFAULT);
        }
        Ok(buf)
    }

    /// A NUL-terminated string of at most `max` bytes (without the NUL).
    fn read_cstr(&self, addr: u64, max: usize) -> Result<Vec<u8>, i32> {
        if addr == 0 {
            return Err(libc::EFAULT);
        }
        let mut out = Vec::new();
        let mut chunk = [0u8; 256];
        while out.len() <= max {
            let at = addr.wrapping_add(out.len() as u64);
            let want = chunk.len().min(4096 - (at % 4096) as usize);
            let got = self.read_some(at, &mut chunk[..want]);
            if got == 0 {
                return Err(libc::EFAULT);
            }
            if let Some(nul) = chunk[..got].iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..nul]);
                return if out.len() < max {
                    Ok(out)
                } else {
                    Err(libc::ENAMETOOLONG)
                };
            }
            out.extend_from_slice(&chunk[..got]);
        }
        Err(libc::ENAMETOOLONG)
    }

    /// argv as the caller passed it, bounded; records every span read in `spans`.
    fn read_argv(
        &self,
        ptr: u64,
        spans: &mut Vec<(u64, u64)>,
    ) -> Result<(Vec<OsString>, bool), i32> {
        let mut argv = Vec::new();
        if ptr == 0 {
            return Ok((argv, false));
        }
        let mut bytes = 0;
        for i in 0..=MAX_ARGS {
            let slot = ptr.wrapping_add(i as u64 * 8);
            let raw = self.read_exact(slot, 8)?;
            spans.push((slot, 8));
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw);
            let p = u64::from_ne_bytes(b);
            if p == 0 {
                return Ok((argv, false));
            }
            if i == MAX_ARGS || bytes >= MAX_ARGV_BYTES {
                return Ok((argv, true));
            }
            let s = match self.read_cstr(p, MAX_PATH * 32) {
                Ok(s) => s,
                Err(libc::ENAMETOOLONG) => return Ok((argv, true)),
                Err(e) => return Err(e),
            };
            spans.push((p, s.len() as u64 + 1));
            bytes += s.len() + 1;
            argv.push(OsString::from_vec(s));
        }
        Ok((argv, true))
    }
}

// ---- can the arguments change under us? --------------------------------------------------------

/// True when some task other than the caller can write the memory in `spans` while the kernel
/// has not yet re-read it (module docs).
fn can_race(c: &Caller, spans: &[(u64, u64)]) -> bool {
    if c.status.threads != 1 || shares_mm_with_running_task(c.tid) {
        return true;
    }
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{}/maps", c.tid)) else {
        return true;
    };
    let regions: Vec<Region> = maps.lines().filter_map(Region::parse).collect();
    spans
        .iter()
        .filter(|(_, len)| *len > 0)
        .any(|&(addr, len)| !span_is_stable(c, &regions, addr, len))
}

/// A `vfork`/`posix_spawn` child shares its parent's memory; the parent's calling thread is
/// suspended until the exec, its other threads are not. Walks up while the memory is shared.
fn shares_mm_with_running_task(tid: u32) -> bool {
    let mut pid = tid;
    for _ in 0..16 {
        let Some(ppid) = parent_of(pid) else {
            return true;
        };
        if ppid <= 1 {
            return false;
        }
        // SAFETY: no pointers.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_kcmp,
                pid as libc::pid_t,
                ppid as libc::pid_t,
                KCMP_VM,
                0,
                0,
            )
        };
        match rc {
            0 => {
                // Shared: the parent must be a single thread (suspended in vfork).
                match Status::read(ppid) {
                    Ok(s) if s.threads == 1 => pid = ppid,
                    _ => return true,
                }
            }
            r if r > 0 => return false,
            _ => return true,
        }
    }
    true
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

struct Region {
    start: u64,
    end: u64,
    shared: bool,
    inode: u64,
}

impl Region {
    fn parse(line: &str) -> Option<Region> {
        let mut f = line.split_whitespace();
        let (start, end) = f.next()?.split_once('-')?;
        let perms = f.next()?;
        let _offset = f.next()?;
        let _dev = f.next()?;
        let inode = f.next()?.parse().ok()?;
        Some(Region {
            start: u64::from_str_radix(start, 16).ok()?,
            end: u64::from_str_radix(end, 16).ok()?,
            shared: perms.as_bytes().get(3) != Some(&b'p'),
            inode,
        })
    }
}

fn span_is_stable(c: &Caller, regions: &[Region], addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    let mut at = addr;
    while at < end {
        let Some(r) = regions.iter().find(|r| r.start <= at && at < r.end) else {
            return false;
        };
        if r.shared {
            return false;
        }
        // A private mapping of a file shows the file's pages until the caller writes them:
        // stable only if nobody among the agents can write the file.
        if r.inode != 0 && !file_mapping_is_read_only_for(c, r) {
            return false;
        }
        at = r.end;
    }
    true
}

fn file_mapping_is_read_only_for(c: &Caller, r: &Region) -> bool {
    let link = format!("/proc/{}/map_files/{:x}-{:x}", c.tid, r.start, r.end);
    let Ok(md) = std::fs::metadata(link) else {
        return false;
    };
    use std::os::unix::fs::MetadataExt;
    let uid = c.status.fsuid;
    if uid == 0 || md.uid() == uid || md.mode() & 0o002 != 0 {
        return false;
    }
    if md.mode() & 0o020 != 0 && (md.gid() == c.status.fsgid || c.status.groups.contains(&md.gid()))
    {
        return false;
    }
    true
}

// ---- acting as the caller ---------------------------------------------------------------------

/// Switches the calling thread's credentials to the caller's for file access and restores them
/// on drop. Per-thread raw syscalls: glibc's wrappers would change every thread of the daemon.
struct CredGuard {
    saved: Option<SavedCreds>,
}

struct SavedCreds {
    euid: u32,
    egid: u32,
    groups: Vec<u32>,
    caps: [CapData; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

const CAP_V3: u32 = 0x2008_0522;

impl CredGuard {
    fn enter(s: &Status) -> Result<CredGuard, i32> {
        if s.fsuid == u32::MAX || s.fsgid == u32::MAX {
            // Unknown identity (-1 would mean "unchanged" to setresuid): never act as root.
            return Err(libc::EACCES);
        }
        // SAFETY: no pointers.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            // An unprivileged daemon acts with its own credentials: it can only grant what it
            // could do itself, and the caller would need the same uid to be served at all.
            return if euid == s.fsuid {
                Ok(CredGuard { saved: None })
            } else {
                Err(libc::EACCES)
            };
        }
        // SAFETY: no pointers.
        let egid = unsafe { libc::getegid() };
        let groups = thread_groups()?;
        let caps = capget()?;
        let saved = SavedCreds {
            euid,
            egid,
            groups,
            caps,
        };
        let mut guard = CredGuard { saved: Some(saved) };
        // SAFETY: groups is a valid array of gid_t of the given length.
        sys(unsafe {
            libc::syscall(
                libc::SYS_setgroups,
                s.groups.len(),
                s.groups.as_ptr() as *const libc::gid_t,
            )
        })?;
        // SAFETY: no pointers.
        sys(unsafe { libc::syscall(libc::SYS_setresgid, -1, s.fsgid, -1) })?;
        // SAFETY: no pointers.
        sys(unsafe { libc::syscall(libc::SYS_setresuid, -1, s.fsuid, -1) })?;
        let mut caps = guard.saved.as_ref().map(|g| g.caps).unwrap_or_default();
        caps[0].effective = (s.cap_eff as u32) & caps[0].permitted;
        caps[1].effective = ((s.cap_eff >> 32) as u32) & caps[1].permitted;
        if let Err(e) = capset(&caps) {
            guard.restore();
            return Err(e);
        }
        Ok(guard)
    }

    fn restore(&mut self) {
        let Some(saved) = self.saved.take() else {
            return;
        };
        // Back to euid 0 first (the permitted set comes back as effective), then the rest.
        // SAFETY: no pointers.
        unsafe { libc::syscall(libc::SYS_setresuid, -1, saved.euid, -1) };
        let _ = capset(&saved.caps);
        // SAFETY: no pointers.
        unsafe { libc::syscall(libc::SYS_setresgid, -1, saved.egid, -1) };
        // SAFETY: groups is a valid array of gid_t of the given length.
        unsafe {
            libc::syscall(
                libc::SYS_setgroups,
                saved.groups.len(),
                saved.groups.as_ptr() as *const libc::gid_t,
            )
        };
    }
}

impl Drop for CredGuard {
    fn drop(&mut self) {
        self.restore();
    }
}

fn thread_groups() -> Result<Vec<u32>, i32> {
    // SAFETY: size 0 asks for the count only.
    let n = sys(unsafe { libc::syscall(libc::SYS_getgroups, 0, std::ptr::null_mut::<u32>()) })?;
    let mut groups = vec![0u32; n as usize];
    // SAFETY: groups has room for n gid_t.
    let n = sys(unsafe { libc::syscall(libc::SYS_getgroups, groups.len(), groups.as_mut_ptr()) })?;
    groups.truncate(n as usize);
    Ok(groups)
}

fn capget() -> Result<[CapData; 2], i32> {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: v3 capget writes two CapData.
    sys(unsafe { libc::syscall(libc::SYS_capget, &raw mut hdr, data.as_mut_ptr()) })?;
    Ok(data)
}

fn capset(data: &[CapData; 2]) -> Result<(), i32> {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    // SAFETY: v3 capset reads two CapData.
    sys(unsafe { libc::syscall(libc::SYS_capset, &raw mut hdr, data.as_ptr()) })?;
    Ok(())
}

// ---- path resolution ---------------------------------------------------------------------------

/// What a resolution reached.
enum Target {
    /// An existing object, held by an O_PATH fd (the final symlink itself under O_NOFOLLOW).
    Existing { fd: OwnedFd, canon: PathBuf },
    /// The last component does not exist; its parent directory is held.
    Missing {
        parent: OwnedFd,
        name: OsString,
        canon: PathBuf,
    },
}

enum Opened {
    Fd(OwnedFd),
    Fifo(Pending),
}

/// Resolves `path` for the caller the way the kernel would, one component at a time with
/// O_PATH|O_NOFOLLOW opens under the caller's credentials. `/proc/self` and
/// `/proc/thread-self` are the caller's, not the daemon's; procfs magic links are followed
/// from the caller's pid directory (so their access checks are the caller's).
fn resolve_open(
    c: &Caller,
    bases: &Bases,
    path: &[u8],
    flags: i32,
    resolve: u64,
) -> Result<Target, i32> {
    if path.is_empty() {
        return Err(libc::ENOENT);
    }
    let root = if resolve & (RESOLVE_IN_ROOT | RESOLVE_BENEATH) != 0 {
        dup_fd(bases.dir()?)?
    } else {
        dup_fd(&bases.root)?
    };
    let root_id = inode_of(&root)?;
    let root_canon = if resolve & (RESOLVE_IN_ROOT | RESOLVE_BENEATH) != 0 {
        fd_path(&root)
    } else {
        PathBuf::from("/")
    };
    let (mut cur, mut canon) = if path[0] == b'/' {
        if resolve & RESOLVE_BENEATH != 0 {
            return Err(libc::EXDEV);
        }
        (dup_fd(&root)?, root_canon.clone())
    } else if resolve & (RESOLVE_IN_ROOT | RESOLVE_BENEATH) != 0 {
        (dup_fd(&root)?, root_canon.clone())
    } else {
        let fd = dup_fd(bases.dir()?)?;
        let canon = fd_path(&fd);
        (fd, canon)
    };
    let start_dev = inode_of(&cur)?.0;
    let mut todo: Vec<Vec<u8>> = components(path);
    todo.reverse();
    let trailing_slash = path.ends_with(b"/");
    let mut links = 0usize;
    while let Some(name) = todo.pop() {
        let last = todo.is_empty();
        if name == b"." {
            if last {
                return Ok(Target::Existing { fd: cur, canon });
            }
            continue;
        }
        if name == b".." {
            if inode_of(&cur)? == root_id {
                if resolve & RESOLVE_BENEATH != 0 {
                    return Err(libc::EXDEV);
                }
            } else {
                cur = openat_path(&cur, b"..", libc::O_NOFOLLOW)?;
                canon.pop();
            }
            if last {
                return Ok(Target::Existing { fd: cur, canon });
            }
            continue;
        }
        let follow_last = flags & libc::O_NOFOLLOW == 0 || trailing_slash;
        let next = match openat_path(&cur, &name, libc::O_NOFOLLOW) {
            Ok(fd) => fd,
            Err(libc::ENOENT) if last => {
                return Ok(Target::Missing {
                    parent: cur,
                    canon: canon.join(OsStr::from_bytes(&name)),
                    name: OsString::from_vec(name),
                });
            }
            Err(e) => return Err(e),
        };
        if resolve & RESOLVE_NO_XDEV != 0 && inode_of(&next)?.0 != start_dev {
            return Err(libc::EXDEV);
        }
        if !is_symlink(&next)? || (last && !follow_last) {
            if (!last || trailing_slash) && !is_dir(&next)? {
                return Err(libc::ENOTDIR);
            }
            canon.push(OsStr::from_bytes(&name));
            cur = next;
            if last {
                return Ok(Target::Existing { fd: cur, canon });
            }
            continue;
        }
        // A symlink to follow.
        if resolve & RESOLVE_NO_SYMLINKS != 0 {
            return Err(libc::ELOOP);
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(libc::ELOOP);
        }
        let on_proc = is_procfs(&cur)?;
        if on_proc && inode_of(&cur)?.1 == 1 && (name == b"self" || name == b"thread-self") {
            // The caller's own entry, in its own pid namespace's numbering.
            let subst = if name == b"self" {
                c.status.ns_tgid.to_string()
            } else {
                format!("{}/task/{}", c.status.ns_tgid, c.status.ns_pid)
            };
            let mut parts = components(subst.as_bytes());
            parts.reverse();
            todo.extend(parts);
            continue;
        }
        let target = readlink_fd(&next)?;
        if on_proc && is_magic(&cur) {
            // A magic link (/proc/PID/fd/N, cwd, root, exe, map_files/…): let the kernel jump,
            // from the caller's pid directory, under the caller's credentials.
            if resolve & RESOLVE_NO_MAGICLINKS != 0 {
                return Err(libc::ELOOP);
            }
            let jumped = openat_path(&cur, &name, 0)?;
            canon = fd_path(&jumped);
            cur = jumped;
            if last {
                return Ok(Target::Existing { fd: cur, canon });
            }
            continue;
        }
        let mut parts = components(&target);
        parts.reverse();
        todo.extend(parts);
        if target.starts_with(b"/") {
            if resolve & RESOLVE_BENEATH != 0 {
                return Err(libc::EXDEV);
            }
            cur = dup_fd(&root)?;
            canon = root_canon.clone();
        }
        if todo.is_empty() {
            // "ln -s / x": the link names the root itself.
            return Ok(Target::Existing { fd: cur, canon });
        }
    }
    Ok(Target::Existing { fd: cur, canon })
}

/// The caller's root and the directory a relative path starts from, opened with the daemon's
/// own credentials (a caller that made itself non-dumpable still has a root and a cwd).
struct Bases {
    root: OwnedFd,
    dir: Result<OwnedFd, i32>,
}

impl Bases {
    fn new(c: &Caller, dirfd: i32) -> Result<Bases, i32> {
        Ok(Bases {
            root: open_path(&format!("/proc/{}/root", c.tid))?,
            dir: caller_dirfd(c, dirfd),
        })
    }

    fn dir(&self) -> Result<&OwnedFd, i32> {
        self.dir.as_ref().map_err(|e| *e)
    }
}

/// Is `dir` a procfs directory whose symlinks are magic (a pid directory, its fd/, map_files/…)?
/// Symlinks outside those (`/proc/mounts`, `/proc/self`) are ordinary.
fn is_magic(dir: &OwnedFd) -> bool {
    let p = fd_path(dir);
    let mut parts = p.components().skip(1);
    // /proc/<pid>[/task/<tid>][/fd | /map_files | …]
    matches!(parts.next(), Some(c) if c.as_os_str() == "proc")
        && matches!(parts.next(), Some(c) if c.as_os_str().as_bytes().iter().all(u8::is_ascii_digit))
}

fn components(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Opens what the caller resolved, with the flags it asked for.
fn open_target(target: Target, flags: i32, mode: u32, umask: u32, id: u64) -> Result<Opened, i32> {
    let accmode = flags & libc::O_ACCMODE;
    if accmode == 3 {
        return Err(libc::EINVAL);
    }
    match target {
        Target::Missing { parent, name, .. } => {
            if flags & libc::O_CREAT == 0 {
                return Err(libc::ENOENT);
            }
            let cname = CString::new(name.into_vec()).map_err(|_| libc::EINVAL)?;
            let f = (flags | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC) & !libc::O_NONBLOCK
                | (flags & libc::O_NONBLOCK);
            let fd = with_umask(umask, || {
                // SAFETY: cname is NUL-terminated; parent is a valid directory fd.
                unsafe { libc::openat(parent.as_raw_fd(), cname.as_ptr(), f, mode) }
            });
            if fd < 0 {
                return Err(last_errno());
            }
            // SAFETY: the kernel just returned this fd.
            Ok(Opened::Fd(unsafe { OwnedFd::from_raw_fd(fd) }))
        }
        Target::Existing { fd, .. } => {
            if flags & libc::O_CREAT != 0 && flags & libc::O_EXCL != 0 {
                return Err(libc::EEXIST);
            }
            let st = fstat(&fd)?;
            let kind = st.st_mode & libc::S_IFMT;
            if flags & libc::O_PATH != 0 {
                if flags & libc::O_DIRECTORY != 0 && kind != libc::S_IFDIR {
                    return Err(libc::ENOTDIR);
                }
                return Ok(Opened::Fd(fd));
            }
            if kind == libc::S_IFLNK {
                return Err(libc::ELOOP);
            }
            if flags & libc::O_DIRECTORY != 0 && kind != libc::S_IFDIR {
                return Err(libc::ENOTDIR);
            }
            if flags & libc::O_TMPFILE == libc::O_TMPFILE {
                let dot = c".";
                let f = flags | libc::O_CLOEXEC;
                let rc = with_umask(umask, || {
                    // SAFETY: "." is NUL-terminated; fd is a directory we hold.
                    unsafe { libc::openat(fd.as_raw_fd(), dot.as_ptr(), f, mode) }
                });
                if rc < 0 {
                    return Err(last_errno());
                }
                // SAFETY: the kernel just returned this fd.
                return Ok(Opened::Fd(unsafe { OwnedFd::from_raw_fd(rc) }));
            }
            let fifo_blocks = kind == libc::S_IFIFO && flags & libc::O_NONBLOCK == 0;
            let mut f =
                (flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW)) | libc::O_CLOEXEC;
            if fifo_blocks {
                f |= libc::O_NONBLOCK;
            }
            let magic = self_fd_path(&fd);
            // SAFETY: magic is NUL-terminated; it names the object we hold.
            let rc = unsafe { libc::open(magic.as_ptr(), f) };
            if rc < 0 {
                return Err(last_errno());
            }
            // SAFETY: the kernel just returned this fd.
            let opened = unsafe { OwnedFd::from_raw_fd(rc) };
            if !fifo_blocks {
                return Ok(Opened::Fd(opened));
            }
            let restore_flags = f & !libc::O_NONBLOCK & !libc::O_CLOEXEC;
            if accmode != libc::O_RDONLY {
                // A writer with no reader would block; we cannot wait for readers. Read-write
                // opens never block.
                // SAFETY: plain fcntl on an fd we own.
                unsafe { libc::fcntl(opened.as_raw_fd(), libc::F_SETFL, restore_flags) };
                return Ok(Opened::Fd(opened));
            }
            // A reader waits for a writer: answer when data or a hang-up arrives.
            Ok(Opened::Fifo(Pending {
                id,
                fd: opened,
                op: PendingOp::FifoRead {
                    cloexec: flags & libc::O_CLOEXEC != 0,
                    restore_flags,
                },
            }))
        }
    }
}

/// Write opens of process memory (`/proc/PID/mem`) would let one agent process rewrite
/// another's arguments after we judged them. Refused whatever the rules say.
fn refuse_proc_mem_write(canon: &Path, target: &Target) -> Result<(), i32> {
    let on_proc = match target {
        Target::Existing { fd, .. } => is_procfs(fd).unwrap_or(true),
        Target::Missing { parent, .. } => is_procfs(parent).unwrap_or(true),
    };
    if on_proc && canon.file_name().is_some_and(|n| n == "mem") {
        return Err(libc::EPERM);
    }
    Ok(())
}

fn caller_dirfd(c: &Caller, dirfd: i32) -> Result<OwnedFd, i32> {
    if dirfd == libc::AT_FDCWD {
        open_path(&format!("/proc/{}/cwd", c.tid))
    } else if dirfd < 0 {
        Err(libc::EBADF)
    } else {
        open_path(&format!("/proc/{}/fd/{}", c.tid, dirfd))
            .map_err(|e| if e == libc::ENOENT { libc::EBADF } else { e })
    }
}

fn open_path(path: &str) -> Result<OwnedFd, i32> {
    let c = CString::new(path).map_err(|_| libc::EINVAL)?;
    // SAFETY: c is NUL-terminated.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: the kernel just returned this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn openat_path(dir: &OwnedFd, name: &[u8], extra: i32) -> Result<OwnedFd, i32> {
    let c = CString::new(name).map_err(|_| libc::EINVAL)?;
    // SAFETY: c is NUL-terminated; dir is a valid fd.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC | extra,
        )
    };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: the kernel just returned this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn dup_fd(fd: &OwnedFd) -> Result<OwnedFd, i32> {
    fd.try_clone()
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

fn fstat(fd: &OwnedFd) -> Result<libc::stat, i32> {
    // SAFETY: stat is plain data the kernel fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: the empty path with AT_EMPTY_PATH stats the fd itself.
    let rc = unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc < 0 {
        return Err(last_errno());
    }
    Ok(st)
}

fn inode_of(fd: &OwnedFd) -> Result<(u64, u64), i32> {
    let st = fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

fn is_symlink(fd: &OwnedFd) -> Result<bool, i32> {
    Ok(fstat(fd)?.st_mode & libc::S_IFMT == libc::S_IFLNK)
}

fn is_dir(fd: &OwnedFd) -> Result<bool, i32> {
    Ok(fstat(fd)?.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

fn is_procfs(fd: &OwnedFd) -> Result<bool, i32> {
    // SAFETY: statfs is plain data the kernel fills.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fd is valid; sfs is writable.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut sfs) } < 0 {
        return Err(last_errno());
    }
    // f_type is a signed long with glibc, unsigned with musl.
    #[allow(clippy::unnecessary_cast)]
    Ok(sfs.f_type as i64 == PROC_SUPER_MAGIC)
}

fn readlink_fd(fd: &OwnedFd) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; MAX_PATH];
    // SAFETY: the empty path reads the symlink the O_PATH fd refers to; buf is writable.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(last_errno());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// The kernel's name for what `fd` refers to (in the daemon's root).
fn fd_path(fd: &OwnedFd) -> PathBuf {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

fn self_fd_path(fd: &OwnedFd) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

fn with_umask<T>(umask: u32, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask has no pointers; it is process-wide, and the daemon creates no files on
    // other threads while its loop thread is here.
    let old = unsafe { libc::umask((umask & 0o777) as libc::mode_t) };
    let out = f();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    out
}

// ---- socket helpers ----------------------------------------------------------------------------

fn is_inet(family: u16) -> bool {
    family == libc::AF_INET as u16 || family == libc::AF_INET6 as u16
}

fn sock_domain(fd: &OwnedFd) -> Result<u16, i32> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for getsockopt.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&raw mut v).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(last_errno());
    }
    Ok(v as u16)
}

fn sock_type(fd: &OwnedFd) -> Result<i32, i32> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for getsockopt.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut v).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(last_errno());
    }
    Ok(v)
}

fn sock_error(fd: &OwnedFd) -> i32 {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for getsockopt.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut v).cast(),
            &mut len,
        )
    };
    if rc < 0 { last_errno() } else { v }
}

/// How many bytes one emulated send carries: all of a datagram, at most [`MAX_SEND`] of a
/// stream (the caller sees a short count and sends the rest).
fn clamp_send(fd: &OwnedFd, want: usize) -> Result<usize, i32> {
    if sock_type(fd)? == libc::SOCK_STREAM {
        Ok(want.min(MAX_SEND))
    } else if want > MAX_SEND {
        Err(libc::EMSGSIZE)
    } else {
        Ok(want)
    }
}

fn fd_flags(fd: &OwnedFd) -> Result<i32, i32> {
    // SAFETY: plain fcntl.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if fl < 0 { Err(last_errno()) } else { Ok(fl) }
}

/// Runs `f` with O_NONBLOCK set on the (shared) file description, then restores the flags.
fn with_nonblock<T>(fd: &OwnedFd, f: impl FnOnce(RawFd) -> T) -> Result<T, i32> {
    let fl = fd_flags(fd)?;
    // SAFETY: plain fcntl.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) };
    let out = f(fd.as_raw_fd());
    // SAFETY: plain fcntl.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl) };
    Ok(out)
}

fn connect_raw(fd: RawFd, addr: &[u8]) -> Result<(), i32> {
    // SAFETY: addr is a readable buffer of the given length holding a sockaddr.
    let rc = unsafe { libc::connect(fd, addr.as_ptr().cast(), addr.len() as libc::socklen_t) };
    if rc < 0 { Err(last_errno()) } else { Ok(()) }
}

fn send_raw(fd: &OwnedFd, data: &[u8], dest: Option<&[u8]>, flags: i32) -> Result<usize, i32> {
    let (addr, len) = match dest {
        Some(d) => (d.as_ptr().cast(), d.len() as libc::socklen_t),
        None => (std::ptr::null(), 0),
    };
    // Never block the daemon, never take a SIGPIPE for the caller. MSG_ZEROCOPY would pin the
    // daemon's buffer, which is freed (and reused) as soon as this returns: send a copy.
    let flags = (flags | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) & !libc::MSG_ZEROCOPY;
    // SAFETY: data and addr are readable buffers of the given lengths.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            flags,
            addr,
            len,
        )
    };
    if n < 0 {
        Err(last_errno())
    } else {
        Ok(n as usize)
    }
}

fn raise_sigpipe(tid: u32) {
    // SAFETY: no pointers. The signal goes to the calling thread, as the kernel's would.
    unsafe {
        let tgid = Status::read(tid).map(|s| s.tgid).unwrap_or(tid);
        libc::syscall(
            libc::SYS_tgkill,
            tgid as libc::pid_t,
            tid as libc::pid_t,
            libc::SIGPIPE,
        );
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// The socket's cookie: an identity the kernel never reuses while it runs.
fn socket_cookie(fd: &OwnedFd) -> Option<u64> {
    let mut v: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: v and len are valid for getsockopt.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut v).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(v)
}

fn peer_of(fd: &OwnedFd) -> Option<SockAddr> {
    let mut buf = [0u8; 128];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf and len are valid for getpeername.
    let rc = unsafe { libc::getpeername(fd.as_raw_fd(), buf.as_mut_ptr().cast(), &mut len) };
    if rc < 0 {
        return None;
    }
    SockAddr::from_raw(&buf[..(len as usize).min(buf.len())])
}

// ---- small fd utilities ------------------------------------------------------------------------

enum Poll {
    Ready,
    Empty,
    Hangup,
}

fn poll_in(fd: RawFd) -> Poll {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: p is one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n <= 0 {
        return Poll::Empty;
    }
    if p.revents & libc::POLLIN != 0 {
        Poll::Ready
    } else if p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
        Poll::Hangup
    } else {
        Poll::Empty
    }
}

fn epoll_add(epoll: &OwnedFd, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: ev is a valid epoll_event.
    let rc = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn epoll_del(epoll: &OwnedFd, fd: RawFd) {
    // SAFETY: a null event is allowed for EPOLL_CTL_DEL.
    unsafe {
        libc::epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            fd,
            std::ptr::null_mut(),
        )
    };
}

fn sys(rc: libc::c_long) -> Result<libc::c_long, i32> {
    if rc < 0 { Err(last_errno()) } else { Ok(rc) }
}

fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

// ---- the Landlock policy the daemon publishes --------------------------------------------------

/// What `oknek run` should also deny with Landlock (kernel-enforced, race-free) in the agents
/// it launches. Only rules that Landlock can express belong here: exact paths of files or
/// directories (a directory covers everything beneath it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LandlockPolicy {
    /// Never readable (nor executable).
    pub deny_read: Vec<PathBuf>,
    /// Never executable (still readable).
    pub deny_exec: Vec<PathBuf>,
}

impl LandlockPolicy {
    /// The file format: one `deny-read PATH` or `deny-exec PATH` per line; `#` comments.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# oknekd: paths `oknek run` also denies with Landlock. Written by oknekd; do not edit.\n",
        );
        for (verb, paths) in [
            ("deny-read", &self.deny_read),
            ("deny-exec", &self.deny_exec),
        ] {
            for p in paths {
                if let Some(s) = p
                    .to_str()
                    .filter(|s| s.starts_with('/') && !s.contains('\n'))
                {
                    out.push_str(verb);
                    out.push(' ');
                    out.push_str(s);
                    out.push('\n');
                }
            }
        }
        out
    }
}

/// Publishes `policy` as `<runtime_dir>/seccomp-landlock.policy` (world-readable, replaced
/// atomically). Call it at start and after every rule reload.
pub fn write_landlock_policy(
    runtime_dir: &Path,
    policy: &LandlockPolicy,
) -> Result<(), SeccompError> {
    let path = runtime_dir.join(LANDLOCK_POLICY_FILE);
    let tmp = runtime_dir.join(format!(".{LANDLOCK_POLICY_FILE}.tmp"));
    let write = || -> io::Result<()> {
        std::fs::write(&tmp, policy.render())?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|source| SeccompError::Policy {
        path: path.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read() {
        let text = "Name:\tcat\nUmask:\t0027\nTgid:\t40\nNgid:\t0\nPid:\t41\nPPid:\t1\n\
                    Uid:\t1000\t1000\t1000\t1001\nGid:\t100\t100\t100\t102\nGroups:\t4 27 100 \n\
                    NStgid:\t40\t3\nNSpid:\t41\t4\nThreads:\t2\nCapEff:\t0000000000000400\n";
        let s = Status::parse(text, 41);
        assert_eq!((s.tgid, s.ns_tgid, s.ns_pid), (40, 3, 4));
        assert_eq!((s.fsuid, s.fsgid), (1001, 102));
        assert_eq!(s.groups, vec![4, 27, 100]);
        assert_eq!(s.umask, 0o027);
        assert_eq!(s.threads, 2);
        assert_eq!(s.cap_eff, 0x400);
    }

    #[test]
    fn hostile_status_does_not_panic() {
        for text in [
            "",
            "Uid:",
            "Threads:\tx\nCapEff:\tzz\nUmask:\t9",
            "::::\n\t\t",
        ] {
            let _ = Status::parse(text, 7);
        }
    }

    #[test]
    fn sockaddrs_decode() {
        let mut v4 = vec![0u8; 16];
        v4[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&8080u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(
            SockAddr::from_raw(&v4),
            Some(SockAddr::Inet {
                addr: std::net::Ipv4Addr::LOCALHOST,
                port: 8080
            })
        );
        let mut un = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        un.extend_from_slice(b"/run/x.sock\0");
        assert_eq!(
            SockAddr::from_raw(&un),
            Some(SockAddr::Unix {
                path: "/run/x.sock".into()
            })
        );
        let mut abs = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        abs.extend_from_slice(b"\0bus");
        assert_eq!(
            SockAddr::from_raw(&abs),
            Some(SockAddr::Unix {
                path: "@bus".into()
            })
        );
        assert_eq!(SockAddr::from_raw(&[]), None);
        assert_eq!(SockAddr::from_raw(&v4[..5]), None);
        assert_eq!(
            SockAddr::from_raw(&(libc::AF_NETLINK as u16).to_ne_bytes()),
            None
        );
    }

    #[test]
    fn maps_lines_parse() {
        let r = Region::parse(
            "7ffc1000-7ffc2000 rw-p 00000000 00:00 0                          [stack]",
        )
        .unwrap();
        assert_eq!(
            (r.start, r.end, r.shared, r.inode),
            (0x7ffc1000, 0x7ffc2000, false, 0)
        );
        let r = Region::parse("1000-2000 rw-s 00000000 00:05 77 /dev/zero (deleted)").unwrap();
        assert!(r.shared);
        assert!(Region::parse("garbage").is_none());
    }

    #[test]
    fn notification_layout() {
        let mut buf = vec![0u8; 80];
        buf[0..8].copy_from_slice(&7u64.to_ne_bytes());
        buf[8..12].copy_from_slice(&42u32.to_ne_bytes());
        buf[16..20].copy_from_slice(&257i32.to_ne_bytes());
        buf[40..48].copy_from_slice(&0xdead_u64.to_ne_bytes());
        let n = Notification::parse(&buf).unwrap();
        assert_eq!((n.id, n.pid, n.nr, n.args[1]), (7, 42, 257, 0xdead));
        assert!(Notification::parse(&buf[..40]).is_none());
    }

    #[test]
    fn policy_renders_only_absolute_single_line_paths() {
        let p = LandlockPolicy {
            deny_read: vec!["/home/dev/.ssh/id_ed25519".into(), "relative".into()],
            deny_exec: vec!["/usr/bin/nc".into(), "/tmp/a\nb".into()],
        };
        let text = p.render();
        assert!(text.contains("deny-read /home/dev/.ssh/id_ed25519\n"));
        assert!(text.contains("deny-exec /usr/bin/nc\n"));
        assert!(!text.contains("relative"));
        assert!(!text.contains("/tmp/a"));
    }
}
