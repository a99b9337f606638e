//! Deciding what a hooked call needs — nothing, a report, or a verdict — and getting it.
//!
//! The table is consulted in memory. Only when it says a block rule may apply (or there is no
//! table to say otherwise) does the call wait for oknekd. Paths are compared in the daemon's form:
//! absolute and lexically normalised; a relative path is joined to the current directory
//! (`getcwd`, one cheap syscall) or to its directory fd (`/proc/self/fd/N`), and only when some
//! entry of that kind needs the full path.

use core::ffi::CStr;

use libc::c_int;
use oknek_protocol::table::{self, Action, Ip, Kind, Summary};
use oknek_protocol::{FLAG_WANT_VERDICT, HEADER_LEN, MAX_FRAME, MAX_SOCKADDR, Op, Writer};

use crate::conn::{self, Ctx, Outcome};
use crate::{config, sys, table_map};

const PATH_MAX: usize = 4096;

/// The answer for one call.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Fail the call with this errno.
    Deny(c_int),
}

/// The answer for a path call before it runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PathVerdict {
    Allow,
    /// Allowed by path; the table protects some files by identity, so check the file itself
    /// (after the open, or before it when the open could change the file).
    CheckIdentity,
    Deny(c_int),
}

/// Fail mode and timeout in force for one call.
#[derive(Clone, Copy)]
struct Mode {
    fail_closed: bool,
    timeout_ms: u32,
}

impl Mode {
    fn of(t: Option<&table::Table<'_>>) -> Mode {
        match t {
            Some(t) => Mode {
                fail_closed: t.fail_closed(),
                timeout_ms: t.timeout_ms(),
            },
            None => {
                let c = config::get();
                Mode {
                    fail_closed: c.fail_closed,
                    timeout_ms: c.timeout_ms,
                }
            }
        }
    }

    fn settle(self, o: Outcome) -> Verdict {
        match o {
            Outcome::Allow => Verdict::Allow,
            Outcome::Deny(e) => Verdict::Deny(e),
            Outcome::Unavailable if self.fail_closed => Verdict::Deny(libc::EPERM),
            Outcome::Unavailable => Verdict::Allow,
        }
    }
}

/// The verdict when a frame could not even be encoded: the fail mode for a question, allow for
/// a report.
fn unaskable(action: Action, mode: Mode) -> Verdict {
    if action == Action::Ask {
        mode.settle(Outcome::Unavailable)
    } else {
        Verdict::Allow
    }
}

/// A path in the daemon's form, built on the stack.
struct AbsPath {
    buf: [u8; PATH_MAX],
    len: usize,
}

impl AbsPath {
    fn new() -> AbsPath {
        AbsPath {
            buf: [0; PATH_MAX],
            len: 0,
        }
    }

    fn get(&self) -> Option<&[u8]> {
        if self.len == 0 {
            None
        } else {
            self.buf.get(..self.len)
        }
    }

    /// Joins `rel` to `dirfd` (or the current directory) and normalises it.
    #[inline(never)]
    fn resolve(&mut self, dirfd: c_int, rel: &[u8]) -> Option<&[u8]> {
        let mut base = [0u8; PATH_MAX];
        let blen = if rel.first() == Some(&b'/') {
            0
        } else if dirfd == libc::AT_FDCWD {
            sys::getcwd(&mut base).ok()?
        } else {
            fd_path(dirfd, &mut base)?
        };
        self.len = table::normalize(base.get(..blen)?, rel, &mut self.buf).unwrap_or(0);
        self.get()
    }

    /// The path of an open descriptor (what `/proc/self/fd/N` points at).
    fn of_fd(&mut self, fd: c_int) -> Option<&[u8]> {
        self.len = fd_path(fd, &mut self.buf).unwrap_or(0);
        self.get()
    }
}

/// The absolute path behind a descriptor, if it has one that still exists.
fn fd_path(fd: c_int, out: &mut [u8]) -> Option<usize> {
    let mut pbuf = [0u8; 32];
    let proc = sys::proc_fd_path(fd, &mut pbuf);
    let n = sys::readlink(proc, out).ok()?;
    let p = out.get(..n)?;
    // "socket:[…]", "pipe:[…]" or a deleted file: no path to match.
    if n == 0 || n >= out.len() || p.first() != Some(&b'/') || p.ends_with(b" (deleted)") {
        return None;
    }
    Some(n)
}

/// What `path` may match in the table: resolves it only if some entry needs the full path.
fn match_path(
    t: &table::Table<'_>,
    s: Summary,
    kind: Kind,
    dirfd: c_int,
    path: &[u8],
    write: bool,
    abs: &mut Option<AbsPath>,
) -> Action {
    if !s.has(kind, Summary::ABS_PATHS) && !s.has(kind, Summary::NAME_PATHS) {
        return Action::Ignore;
    }
    if table::is_normal_absolute(path) {
        return t.match_path(kind, path, write, true);
    }
    if s.has(kind, Summary::ABS_PATHS)
        && let Some(p) = abs.get_or_insert_with(AbsPath::new).resolve(dirfd, path)
    {
        return t.match_path(kind, p, write, true);
    }
    t.match_path(kind, path, write, false)
}

/// The op-specific part of a path frame.
#[derive(Clone, Copy)]
pub enum PathOp {
    Open { flags: u32, mode: u32 },
    Watch { mask: u32 },
}

impl PathOp {
    fn kind(self) -> Kind {
        match self {
            PathOp::Open { .. } => Kind::Open,
            PathOp::Watch { .. } => Kind::Watch,
        }
    }

    fn op(self) -> Op {
        match self {
            PathOp::Open { .. } => Op::Open,
            PathOp::Watch { .. } => Op::Watch,
        }
    }
}

fn path_frame<'b>(
    buf: &'b mut [u8],
    op: PathOp,
    seq: u32,
    flags: u32,
    dirfd: c_int,
    path: &[u8],
) -> Option<&'b [u8]> {
    let mut w = Writer::new(buf, op.op(), seq, flags)?;
    match op {
        PathOp::Open { flags, mode } => {
            w.put_u32(dirfd as u32);
            w.put_u32(flags);
            w.put_u32(mode);
        }
        // The watch frame has no dirfd: the path is absolute when the shim could resolve it,
        // otherwise relative to the caller's current directory.
        PathOp::Watch { mask } => w.put_u32(mask),
    }
    w.put_cstr(path);
    Some(w.finish())
}

/// Sends a path frame as a question (Ask) or a report, and settles the answer.
fn send_path(action: Action, mode: Mode, op: PathOp, dirfd: c_int, path: &[u8]) -> Verdict {
    let ctx = Ctx::new();
    let mut buf = [0u8; HEADER_LEN + 16 + PATH_MAX];
    let want = if action == Action::Ask {
        FLAG_WANT_VERDICT
    } else {
        0
    };
    let Some(frame) = path_frame(&mut buf, op, ctx.seq, want, dirfd, path) else {
        return unaskable(action, mode);
    };
    if action == Action::Ask {
        mode.settle(conn::ask(&ctx, frame, op.op() as u16, mode.timeout_ms))
    } else {
        conn::report(&ctx, frame, false, mode.timeout_ms);
        Verdict::Allow
    }
}

/// An open or watch of `path` (relative to `dirfd`), before the call runs.
pub fn judge_path(op: PathOp, dirfd: c_int, path: &CStr, write: bool) -> PathVerdict {
    let kind = op.kind();
    let path = path.to_bytes();
    // Only a relative or unusual path needs this 4 KiB buffer: not zeroed unless used.
    let mut abs: Option<AbsPath> = None;
    let hold = table_map::acquire();
    let view = hold
        .as_ref()
        .and_then(|h| Some((h.table()?, h.summary, h.selfpol)));
    let mode = Mode::of(view.as_ref().map(|(t, _, _)| t));
    let (action, identity) = match &view {
        // No table (none published, or not acceptable): every call may be blocked.
        None => (Action::Ask, false),
        Some((t, s, sp)) => {
            let mut a = t.policy(kind).max(sp.get(kind));
            if a < Action::Ask {
                a = a.max(match_path(t, *s, kind, dirfd, path, write, &mut abs));
            }
            (a, a < Action::Ask && s.has(kind, Summary::INODES))
        }
    };
    drop(hold);
    let v = if action == Action::Ignore {
        Verdict::Allow
    } else if table::is_normal_absolute(path) {
        send_path(action, mode, op, libc::AT_FDCWD, path)
    } else {
        // The daemon gets the absolute form whenever it can be had; otherwise dirfd + path,
        // which it resolves through /proc/PID/cwd or /proc/PID/fd/N.
        let abs = abs.get_or_insert_with(AbsPath::new);
        if abs.get().is_none() {
            let _ = abs.resolve(dirfd, path);
        }
        match abs.get() {
            Some(p) => send_path(action, mode, op, libc::AT_FDCWD, p),
            None => send_path(action, mode, op, dirfd, path),
        }
    };
    match v {
        Verdict::Deny(e) => PathVerdict::Deny(e),
        Verdict::Allow if identity => PathVerdict::CheckIdentity,
        Verdict::Allow => PathVerdict::Allow,
    }
}

/// Is the file open at `fd` one the table protects by identity (dev, ino)? Asks with the
/// file's real path, as `/proc/self/fd/N` names it.
pub fn judge_identity_fd(op: PathOp, fd: c_int) -> Verdict {
    let Ok(st) = sys::fstat(fd) else {
        return Verdict::Allow;
    };
    let hold = table_map::acquire();
    let Some((action, mode)) = hold.as_ref().and_then(|h| {
        let t = h.table()?;
        Some((
            t.match_inode(op.kind(), st.st_dev, st.st_ino),
            Mode::of(Some(&t)),
        ))
    }) else {
        return Verdict::Allow;
    };
    drop(hold);
    if action == Action::Ignore {
        return Verdict::Allow;
    }
    let mut abs = AbsPath::new();
    let path = abs.of_fd(fd).unwrap_or(b"");
    send_path(action, mode, op, libc::AT_FDCWD, path)
}

/// The identity check before a call that could change the file (O_TRUNC) or has no fd to
/// check afterwards (inotify): looks the file up with O_PATH, which neither reads, writes nor
/// waits on it.
pub fn judge_identity_at(op: PathOp, dirfd: c_int, path: &CStr, follow: bool) -> Verdict {
    let flags = libc::O_PATH | if follow { 0 } else { libc::O_NOFOLLOW };
    match sys::openat(dirfd, path.to_bytes_with_nul(), flags, 0) {
        Ok(fd) => {
            let v = judge_identity_fd(op, fd);
            sys::close(fd);
            v
        }
        // Nothing there (or not reachable): no existing file to protect.
        Err(_) => Verdict::Allow,
    }
}

/// How an exec names its program.
#[derive(Clone, Copy)]
pub enum ExecTarget<'a> {
    /// A path, relative to `dirfd` unless absolute.
    Path { dirfd: c_int, path: &'a [u8] },
    /// A name searched in `$PATH` when it has no slash (execvp, posix_spawnp).
    Search(&'a [u8]),
    /// An open descriptor (fexecve, execveat with AT_EMPTY_PATH).
    Fd(c_int),
}

/// Finds `file` in `$PATH` the way execvp does: the first regular, executable candidate.
fn search_path(file: &[u8], out: &mut AbsPath) -> bool {
    // SAFETY: getenv with a NUL-terminated name; it neither allocates nor is hooked.
    let p = unsafe { libc::getenv(c"PATH".as_ptr()) };
    let dirs: &[u8] = if p.is_null() {
        b"/bin:/usr/bin"
    } else {
        // SAFETY: getenv returned a NUL-terminated string.
        unsafe { CStr::from_ptr(p) }.to_bytes()
    };
    let mut cand = [0u8; PATH_MAX];
    for dir in dirs.split(|&b| b == b':') {
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        let mut len = 0usize;
        let mut fits = true;
        for &b in dir.iter().chain(b"/").chain(file).chain(&[0u8]) {
            match cand.get_mut(len) {
                Some(d) => *d = b,
                None => fits = false,
            }
            len = len.saturating_add(1);
        }
        let Some(c) = cand.get(..len).filter(|_| fits) else {
            continue;
        };
        let regular = sys::fstatat(libc::AT_FDCWD, c, 0)
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
        if regular && sys::faccessat(libc::AT_FDCWD, c, libc::X_OK).is_ok() {
            let name = c.get(..len.saturating_sub(1)).unwrap_or(&[]);
            if table::is_normal_absolute(name) {
                let n = name.len().min(out.buf.len());
                if let (Some(d), Some(s)) = (out.buf.get_mut(..n), name.get(..n)) {
                    d.copy_from_slice(s);
                    out.len = n;
                }
                return out.len != 0;
            }
            return out.resolve(libc::AT_FDCWD, name).is_some();
        }
    }
    false
}

/// An exec (or spawn) of `target` with `argv`, before it runs.
pub fn judge_exec<'x, I>(target: ExecTarget<'_>, argv: I) -> Verdict
where
    I: Iterator<Item = &'x [u8]> + Clone,
{
    let mut abs = AbsPath::new();
    // Resolve the program's path the way the daemon will judge it: absolute and normal.
    let ok = match target {
        ExecTarget::Fd(fd) => abs.of_fd(fd).is_some(),
        ExecTarget::Search(file) if !file.contains(&b'/') => search_path(file, &mut abs),
        ExecTarget::Search(path) | ExecTarget::Path { path, .. }
            if table::is_normal_absolute(path) =>
        {
            false
        }
        ExecTarget::Search(path) => abs.resolve(libc::AT_FDCWD, path).is_some(),
        ExecTarget::Path { dirfd, path } => abs.resolve(dirfd, path).is_some(),
    };
    let mut proc_buf = [0u8; 32];
    let given: &[u8] = match target {
        ExecTarget::Search(p) | ExecTarget::Path { path: p, .. } => p,
        // A descriptor without a path (a memfd, a deleted file): name it so that the daemon
        // can look at /proc/PID/fd/N while the caller waits.
        ExecTarget::Fd(fd) => {
            let p = sys::proc_fd_path(fd, &mut proc_buf);
            p.get(..p.len().saturating_sub(1)).unwrap_or(b"")
        }
    };
    let (path, resolved) = match abs.get() {
        Some(p) if ok => (p, true),
        _ => (given, table::is_normal_absolute(given)),
    };
    let hold = table_map::acquire();
    let view = hold
        .as_ref()
        .and_then(|h| Some((h.table()?, h.summary, h.selfpol)));
    let mode = Mode::of(view.as_ref().map(|(t, _, _)| t));
    let action = match &view {
        None => Action::Ask,
        Some((t, s, sp)) => {
            let mut a = t.policy(Kind::Exec).max(sp.get(Kind::Exec));
            if a < Action::Ask
                && (s.has(Kind::Exec, Summary::ABS_PATHS) || s.has(Kind::Exec, Summary::NAME_PATHS))
            {
                a = a.max(t.match_path(Kind::Exec, path, false, resolved));
            }
            if a < Action::Ask && s.has(Kind::Exec, Summary::INODES) {
                // exec follows symlinks; an exec is rare enough to afford the stat.
                let st = match target {
                    ExecTarget::Fd(fd) => sys::fstat(fd).ok(),
                    _ => nul_copy(path)
                        .and_then(|(b, n)| sys::fstatat(libc::AT_FDCWD, b.get(..n)?, 0).ok()),
                };
                if let Some(st) = st {
                    a = a.max(t.match_inode(Kind::Exec, st.st_dev, st.st_ino));
                }
            }
            a
        }
    };
    drop(hold);
    if action == Action::Ignore {
        return Verdict::Allow;
    }
    let ctx = Ctx::new();
    let want = if action == Action::Ask {
        FLAG_WANT_VERDICT
    } else {
        0
    };
    let mut buf = [0u8; MAX_FRAME];
    let Some(frame) = oknek_protocol::encode_exec(&mut buf, ctx.seq, want, path, argv) else {
        // Only a path longer than any the kernel accepts gets here; a question that cannot be
        // asked is treated like one that is not answered.
        return unaskable(action, mode);
    };
    if action == Action::Ask {
        mode.settle(conn::ask(&ctx, frame, Op::Exec as u16, mode.timeout_ms))
    } else {
        conn::report(&ctx, frame, true, mode.timeout_ms);
        Verdict::Allow
    }
}

/// `path` with a NUL appended, in a stack buffer (for the raw stat of an exec path).
fn nul_copy(path: &[u8]) -> Option<([u8; PATH_MAX], usize)> {
    let mut b = [0u8; PATH_MAX];
    let n = path.len();
    b.get_mut(..n)?.copy_from_slice(path);
    *b.get_mut(n)? = 0;
    Some((b, n.checked_add(1)?))
}

/// Iterates a C `argv` (NULL-terminated array of C strings).
#[derive(Clone, Copy)]
pub struct CArgv {
    p: *const *const libc::c_char,
    i: usize,
}

impl CArgv {
    /// # Safety
    /// `p` is null or a NULL-terminated array of NUL-terminated strings that outlives the
    /// iterator.
    pub unsafe fn new(p: *const *const libc::c_char) -> CArgv {
        CArgv { p, i: 0 }
    }
}

impl Iterator for CArgv {
    type Item = &'static [u8];

    fn next(&mut self) -> Option<&'static [u8]> {
        if self.p.is_null() {
            return None;
        }
        // SAFETY: per CArgv::new, p[i] is readable up to and including the terminating NULL,
        // and iteration stops at that NULL. The 'static lifetime is a promise kept by the
        // callers: the iterator is consumed before the hook returns.
        let a = unsafe { *self.p.add(self.i) };
        if a.is_null() {
            return None;
        }
        self.i = self.i.saturating_add(1);
        // SAFETY: a non-null argv element is a NUL-terminated string.
        Some(unsafe { CStr::from_ptr(a) }.to_bytes())
    }
}

/// Where a connect or send goes.
enum Dest<'a> {
    None,
    Ip(Ip, u16),
    Unix(&'a [u8], bool),
    Other,
}

fn parse_dest<'a>(sa: &'a [u8], unix_buf: &'a mut [u8; 112]) -> Dest<'a> {
    let Some(f) = sa.get(..2).and_then(|s| <[u8; 2]>::try_from(s).ok()) else {
        return Dest::None;
    };
    let family = c_int::from(u16::from_ne_bytes(f));
    let port = |s: &[u8]| {
        s.get(2..4)
            .and_then(|p| <[u8; 2]>::try_from(p).ok())
            .map_or(0, u16::from_be_bytes)
    };
    match family {
        libc::AF_INET => match sa.get(4..8).and_then(|a| <[u8; 4]>::try_from(a).ok()) {
            Some(a) => Dest::Ip(Ip::V4(a), port(sa)),
            None => Dest::Other,
        },
        libc::AF_INET6 => match sa.get(8..24).and_then(|a| <[u8; 16]>::try_from(a).ok()) {
            Some(a) => Dest::Ip(Ip::V6(a), port(sa)),
            None => Dest::Other,
        },
        libc::AF_UNIX => {
            let raw = sa.get(2..).unwrap_or(&[]);
            match raw.split_first() {
                // Abstract socket: "@name" (the name may hold NULs; it is matched as bytes).
                Some((0, name)) => {
                    let mut n = 0usize;
                    for &b in [b'@'].iter().chain(name) {
                        if let Some(d) = unix_buf.get_mut(n) {
                            *d = b;
                            n = n.saturating_add(1);
                        }
                    }
                    Dest::Unix(unix_buf.get(..n).unwrap_or(&[]), true)
                }
                Some(_) => {
                    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
                    let p = raw.get(..end).unwrap_or(&[]);
                    Dest::Unix(p, table::is_normal_absolute(p))
                }
                None => Dest::Other,
            }
        }
        libc::AF_UNSPEC => Dest::None,
        _ => Dest::Other,
    }
}

/// A connect, or a send of `bytes` (to an explicit address or the connected peer).
pub fn judge_sock(
    kind: Kind,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
    bytes: u64,
) -> Verdict {
    let mut sa = [0u8; MAX_SOCKADDR];
    let n = if addr.is_null() {
        0
    } else {
        (len as usize).min(MAX_SOCKADDR)
    };
    if n > 0 {
        // SAFETY: the caller passed addr/len for the kernel to read, so addr is readable for
        // len bytes; we read at most that many.
        let src = unsafe { core::slice::from_raw_parts(addr.cast::<u8>(), n) };
        if let Some(d) = sa.get_mut(..n) {
            d.copy_from_slice(src);
        }
    }
    let sa = sa.get(..n).unwrap_or(&[]);
    let mut ubuf = [0u8; 112];
    let dest = parse_dest(sa, &mut ubuf);
    let hold = table_map::acquire();
    let view = hold
        .as_ref()
        .and_then(|h| Some((h.table()?, h.summary, h.selfpol)));
    let mode = Mode::of(view.as_ref().map(|(t, _, _)| t));
    let action = match &view {
        None => Action::Ask,
        Some((t, s, sp)) => {
            let mut a = t.policy(kind).max(sp.get(kind));
            if a < Action::Ask {
                let m = match dest {
                    Dest::Ip(ip, port) if s.has(kind, Summary::NETS) => t.match_net(kind, ip, port),
                    Dest::Unix(p, resolved)
                        if s.has(kind, Summary::ABS_PATHS) || s.has(kind, Summary::NAME_PATHS) =>
                    {
                        t.match_path(kind, p, false, resolved)
                    }
                    _ => Action::Ignore,
                };
                a = a.max(m);
            }
            a
        }
    };
    drop(hold);
    if action == Action::Ignore {
        return Verdict::Allow;
    }
    let ctx = Ctx::new();
    let want = if action == Action::Ask {
        FLAG_WANT_VERDICT
    } else {
        0
    };
    let op = if kind == Kind::Connect {
        Op::Connect
    } else {
        Op::Send
    };
    let mut buf = [0u8; HEADER_LEN + 16 + MAX_SOCKADDR];
    let Some(mut w) = Writer::new(&mut buf, op, ctx.seq, want) else {
        return unaskable(action, mode);
    };
    if op == Op::Send {
        w.put_u64(bytes);
    }
    w.put_sockaddr(sa);
    let frame = w.finish();
    if action == Action::Ask {
        mode.settle(conn::ask(&ctx, frame, op as u16, mode.timeout_ms))
    } else {
        conn::report(&ctx, frame, kind == Kind::Connect, mode.timeout_ms);
        Verdict::Allow
    }
}
