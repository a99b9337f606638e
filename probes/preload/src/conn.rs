//! Talking to oknekd over `<runtime>/oknek.sock` (SOCK_SEQPACKET).
//!
//! A process keeps a pool of up to four connections. A thread that needs one takes a free slot
//! (one atomic swap), uses it and puts it back, so concurrent threads never read each other's
//! replies; when all four are busy it opens a temporary connection for the one request.
//!
//! * Verdicts: send without blocking, then wait for the reply with the same `seq` until the
//!   deadline (the table's timeout, 200 ms by default). A timeout, a garbage reply or a closed
//!   connection gives "unavailable", the caller applies the fail mode, the connection is dropped
//!   (so a late reply can never be taken for a later question), and for one second every further
//!   question is answered "unavailable" at once: a hung daemon slows the agent by one timeout,
//!   not by one per call. A refused connect (daemon not running) has the same effect for 250 ms.
//! * Reports: `MSG_DONTWAIT`; if the socket buffer is full the report is dropped and counted.
//!   `seq` grows by one per frame a process builds, sent or not, so oknekd can count drops per
//!   process from the gaps.
//! * Sockets are `SOCK_CLOEXEC`. A program may close or `dup2` over the shim's descriptor (shells
//!   and daemons do): before every use the pooled fd is checked to still be the same socket
//!   (fstat: socket inode), and frames are sent with `send(2)`, which fails on anything that is not
//!   a socket, so a frame can never land in one of the program's files.
//! * fork: a `pthread_atfork` child handler closes the inherited pool (the parent keeps using
//!   it). A child made without the handler (a raw `clone`) or a `vfork` child — which shares the
//!   parent's memory until it execs — sees that `getpid()` is not the owner's and only uses
//!   temporary connections, touching no shared state.

use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};

use libc::c_int;
use oknek_protocol::{REPLY_LEN, Reply};

use crate::{config, sys, table_map};

const POOL: usize = 4;
const DOWN_AFTER_CONNECT_FAIL_NS: u64 = 250_000_000;
const DOWN_AFTER_TIMEOUT_NS: u64 = 1_000_000_000;
const SEND_FLAGS: c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

struct PooledConn {
    busy: AtomicBool,
    fd: AtomicI32,
    ino: AtomicU64,
}

impl PooledConn {
    const fn new() -> PooledConn {
        PooledConn {
            busy: AtomicBool::new(false),
            fd: AtomicI32::new(-1),
            ino: AtomicU64::new(0),
        }
    }
}

static CONNS: [PooledConn; POOL] = [const { PooledConn::new() }; POOL];
static OWNER_PID: AtomicI32 = AtomicI32::new(0);
static SEQ: AtomicU32 = AtomicU32::new(0);
static DOWN_UNTIL_NS: AtomicU64 = AtomicU64::new(0);

/// Counters, readable with `oknek_preload_stats`.
pub struct Stats {
    pub asked: AtomicU64,
    pub denied: AtomicU64,
    pub unavailable: AtomicU64,
    pub reported: AtomicU64,
    pub dropped: AtomicU64,
}

pub static STATS: Stats = Stats {
    asked: AtomicU64::new(0),
    denied: AtomicU64::new(0),
    unavailable: AtomicU64::new(0),
    reported: AtomicU64::new(0),
    dropped: AtomicU64::new(0),
};

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub fn init_owner() {
    OWNER_PID.store(sys::getpid(), Ordering::SeqCst);
}

/// True in the process that set up the shim's state (not in a vfork or raw-clone child).
pub fn is_owner() -> bool {
    sys::getpid() == OWNER_PID.load(Ordering::SeqCst)
}

/// Per-request context: who we are and the frame's sequence number.
pub struct Ctx {
    owner: bool,
    pub seq: u32,
}

impl Ctx {
    pub fn new() -> Ctx {
        let owner = is_owner();
        // A vfork child must not write the parent's counter; its temporary connection makes a
        // fixed seq unambiguous.
        let seq = if owner {
            SEQ.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
        } else {
            0
        };
        Ctx { owner, seq }
    }
}

pub enum Outcome {
    Allow,
    Deny(c_int),
    Unavailable,
}

#[derive(Clone, Copy)]
enum Fail {
    Connect,
    Timeout,
    Broken,
}

fn is_ours(fd: c_int, ino: u64) -> bool {
    sys::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK && st.st_ino == ino)
}

fn connect_new(timeout_ms: u32) -> Result<(c_int, u64), Fail> {
    let fd = sys::socket_seqpacket().map_err(|_| Fail::Connect)?;
    // Bounds connect() when the daemon's backlog is full; sends never block (MSG_DONTWAIT).
    let _ = sys::set_send_timeout(fd, timeout_ms);
    let (addr, len) = config::get().socket_addr();
    let ino = sys::connect_unix(fd, &addr, len).and_then(|()| sys::fstat(fd));
    match ino {
        Ok(st) => Ok((fd, st.st_ino)),
        Err(_) => {
            sys::close(fd);
            Err(Fail::Connect)
        }
    }
}

fn take_slot() -> Option<&'static PooledConn> {
    CONNS.iter().find(|c| !c.busy.swap(true, Ordering::Acquire))
}

fn put_slot(c: &PooledConn) {
    c.busy.store(false, Ordering::Release);
}

/// Forgets a pooled connection, closing it only if the descriptor is still our socket.
fn drop_conn(c: &PooledConn) {
    let fd = c.fd.swap(-1, Ordering::AcqRel);
    if fd >= 0 && is_ours(fd, c.ino.load(Ordering::Acquire)) {
        sys::close(fd);
    }
}

fn pooled_fd(c: &PooledConn, timeout_ms: u32) -> Result<c_int, Fail> {
    let fd = c.fd.load(Ordering::Acquire);
    if fd >= 0 && is_ours(fd, c.ino.load(Ordering::Acquire)) {
        return Ok(fd);
    }
    // Gone or replaced by the program: forget it (never close what is not ours).
    c.fd.store(-1, Ordering::Release);
    let (fd, ino) = connect_new(timeout_ms)?;
    c.ino.store(ino, Ordering::Release);
    c.fd.store(fd, Ordering::Release);
    Ok(fd)
}

fn mark_down(ctx: &Ctx, f: Fail) {
    if !ctx.owner {
        return;
    }
    let period = match f {
        Fail::Connect => DOWN_AFTER_CONNECT_FAIL_NS,
        Fail::Timeout | Fail::Broken => DOWN_AFTER_TIMEOUT_NS,
    };
    DOWN_UNTIL_NS.store(sys::now_ns().saturating_add(period), Ordering::Relaxed);
}

fn is_down() -> bool {
    let until = DOWN_UNTIL_NS.load(Ordering::Relaxed);
    until != 0 && sys::now_ns() < until
}

/// Waits for the reply to `seq`; skips replies to other (earlier) questions.
fn wait_reply(fd: c_int, seq: u32, op: u16, deadline: u64) -> Result<i32, Fail> {
    let mut buf = [0u8; 64];
    loop {
        let now = sys::now_ns();
        if now >= deadline {
            return Err(Fail::Timeout);
        }
        match sys::poll_in(fd, deadline.saturating_sub(now)) {
            Ok(0) => return Err(Fail::Timeout),
            Ok(rev) if rev & libc::POLLIN == 0 => return Err(Fail::Broken),
            Ok(_) => {}
            Err(libc::EINTR) => continue,
            Err(_) => return Err(Fail::Broken),
        }
        match sys::recv(fd, &mut buf, libc::MSG_DONTWAIT) {
            Ok(0) => return Err(Fail::Broken),
            Ok(n) => {
                let reply = if n == REPLY_LEN {
                    buf.get(..n).and_then(Reply::decode)
                } else {
                    None
                };
                let Some(r) = reply else {
                    return Err(Fail::Broken);
                };
                if r.seq != seq {
                    continue;
                }
                if r.op != op {
                    return Err(Fail::Broken);
                }
                return Ok(r.errno);
            }
            Err(libc::EAGAIN | libc::EINTR) => continue,
            Err(_) => return Err(Fail::Broken),
        }
    }
}

fn ask_pooled(
    c: &PooledConn,
    frame: &[u8],
    seq: u32,
    op: u16,
    deadline: u64,
    t: u32,
) -> Result<i32, Fail> {
    // Twice: a pooled connection may have been closed by a daemon restart since its last use.
    for attempt in 0..2 {
        let fd = pooled_fd(c, t)?;
        match sys::send(fd, frame, SEND_FLAGS) {
            Ok(_) => {}
            Err(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN | libc::ECONNREFUSED)
                if attempt == 0 =>
            {
                drop_conn(c);
                continue;
            }
            Err(_) => {
                drop_conn(c);
                return Err(Fail::Broken);
            }
        }
        let r = wait_reply(fd, seq, op, deadline);
        if r.is_err() {
            drop_conn(c);
        }
        return r;
    }
    Err(Fail::Broken)
}

fn ask_temp(frame: &[u8], seq: u32, op: u16, deadline: u64, t: u32) -> Result<i32, Fail> {
    let (fd, _) = connect_new(t)?;
    let r = match sys::send(fd, frame, SEND_FLAGS) {
        Ok(_) => wait_reply(fd, seq, op, deadline),
        Err(_) => Err(Fail::Broken),
    };
    sys::close(fd);
    r
}

/// Asks oknekd for a verdict on `frame` (which carries `FLAG_WANT_VERDICT` and `ctx.seq`).
pub fn ask(ctx: &Ctx, frame: &[u8], op: u16, timeout_ms: u32) -> Outcome {
    bump(&STATS.asked);
    if is_down() {
        bump(&STATS.unavailable);
        return Outcome::Unavailable;
    }
    let deadline = sys::now_ns().saturating_add(u64::from(timeout_ms).saturating_mul(1_000_000));
    let pooled = if ctx.owner { take_slot() } else { None };
    let r = match pooled {
        Some(c) => {
            let r = ask_pooled(c, frame, ctx.seq, op, deadline, timeout_ms);
            put_slot(c);
            r
        }
        None => ask_temp(frame, ctx.seq, op, deadline, timeout_ms),
    };
    match r {
        Ok(0) => Outcome::Allow,
        // Only real errno values are passed on; anything else is a plain EPERM.
        Ok(e) => {
            bump(&STATS.denied);
            Outcome::Deny(if (1..4096).contains(&e) {
                e
            } else {
                libc::EPERM
            })
        }
        Err(f) => {
            mark_down(ctx, f);
            bump(&STATS.unavailable);
            Outcome::Unavailable
        }
    }
}

/// Reports `frame` without waiting. `temp_ok`: when no pooled connection can be used (all busy,
/// or a vfork child), open a temporary one — worth it for rare calls (exec), not for opens.
pub fn report(ctx: &Ctx, frame: &[u8], temp_ok: bool, timeout_ms: u32) {
    if is_down() {
        bump(&STATS.dropped);
        return;
    }
    let pooled = if ctx.owner { take_slot() } else { None };
    let sent = match pooled {
        Some(c) => {
            let mut r = Err(Fail::Broken);
            for _ in 0..2 {
                match pooled_fd(c, timeout_ms) {
                    Err(f) => {
                        r = Err(f);
                        break;
                    }
                    Ok(fd) => match sys::send(fd, frame, SEND_FLAGS) {
                        Ok(_) => {
                            r = Ok(());
                            break;
                        }
                        // Buffer full: drop, keep the connection.
                        Err(libc::EAGAIN) => break,
                        Err(_) => drop_conn(c),
                    },
                }
            }
            put_slot(c);
            r
        }
        None if temp_ok => connect_new(timeout_ms).map(|(fd, _)| {
            // Queued data stays readable by the daemon after we close.
            let _ = sys::send(fd, frame, SEND_FLAGS);
            sys::close(fd);
        }),
        None => Err(Fail::Broken),
    };
    match sent {
        Ok(()) => bump(&STATS.reported),
        Err(f) => {
            if matches!(f, Fail::Connect) {
                mark_down(ctx, f);
            }
            bump(&STATS.dropped);
        }
    }
}

/// `pthread_atfork` child handler: the child starts with a fresh pool and sequence.
pub extern "C" fn after_fork_child() {
    OWNER_PID.store(sys::getpid(), Ordering::SeqCst);
    SEQ.store(0, Ordering::Relaxed);
    DOWN_UNTIL_NS.store(0, Ordering::Relaxed);
    for c in &CONNS {
        let fd = c.fd.swap(-1, Ordering::SeqCst);
        if fd >= 0 && is_ours(fd, c.ino.load(Ordering::SeqCst)) {
            sys::close(fd);
        }
        c.busy.store(false, Ordering::SeqCst);
    }
    table_map::after_fork_child();
}
