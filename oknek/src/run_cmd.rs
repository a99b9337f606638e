//! `oknek run [--agent NAME] [--] CMD ARGS…`: launch an agent under oknekd's seccomp tier.
//!
//! ```text
//! oknek run (parent)                    child                              oknekd
//!   connect <runtime>/oknek.sock
//!   build filter + Landlock ruleset
//!   fork ───────────────────────────────► NO_NEW_PRIVS, Landlock,
//!                                         seccomp(NEW_LISTENER) → fd N
//!   ◄──────────── N (pipe) ────────────── wait
//!   pidfd_getfd(child, N)
//!   RegisterSeccomp(agent) + fd ─────────────────────────────────────────► accept: errno 0
//!   ◄────────────────────────────────────────────────────────────────────── Reply
//!   go (pipe) ──────────────────────────► close N, execve(CMD)  ─ judged ─► …
//!   subreaper: forward signals, wait, exit with the child's status
//! ```
//!
//! The child registers nothing itself: once its filter is installed, its own `sendmsg` would
//! wait for a listener nobody holds yet. The parent takes the listener out of the child with
//! `pidfd_getfd` instead. Without a daemon, or if the daemon refuses, the command never runs
//! (exit 126).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};

use oknek_protocol as proto;

use crate::cli::{CliError, Global};
use crate::sandbox::{filter, landlock};

const HELP: &str = "\
oknek run — launch a program as an agent, every exec/open/connect/send/watch judged by oknekd

Usage: oknek [--runtime-dir DIR] run [--agent NAME] [--no-landlock] [--] CMD [ARGS…]

The program and everything it starts run under a seccomp filter whose decisions oknekd makes
with the rules of agent NAME: a blocked call fails with EPERM (\"Operation not permitted\")
before it happens, whether the program is dynamic or static, single- or multithreaded. Paths
that oknekd publishes as Landlock-expressible are also denied by Landlock, in the kernel.
oknekd must be running: without it the command is not started (exit 126).

Options:
  --agent NAME     The agent whose rules apply [default: the command's file name]
  --no-landlock    Skip the Landlock layer (seccomp still judges every call)
  -h, --help       Show this help

Exit status: the command's own; 128+N if it was killed by signal N; 126 if it could not be
started under oknek (no daemon, refused, denied exec); 127 if CMD was not found.

Examples:
  oknek run --agent coder -- ./my-agent --task fix-tests
  oknek run --agent aider -- aider --model gpt-4o
  oknek run -- python3 agent.py          # agent name: python3
";

/// Exit code when the command cannot be started under oknek.
const EXIT_CANNOT_RUN: u8 = 126;
const EXIT_NOT_FOUND: u8 = 127;
/// How long to wait for oknekd's answer to the registration.
const REGISTER_TIMEOUT_SECS: i64 = 10;

struct Options {
    agent: Option<String>,
    landlock: bool,
    command: OsString,
    args: Vec<OsString>,
}

pub fn run(parser: &mut lexopt::Parser, global: &Global) -> Result<ExitCode, CliError> {
    let Some(opts) = parse(parser)? else {
        print!("{HELP}");
        return Ok(ExitCode::SUCCESS);
    };
    match launch(&opts, global) {
        Ok(code) => Ok(code),
        Err(Failure::CannotRun(msg)) => {
            eprintln!("oknek: run: {msg}");
            Ok(ExitCode::from(EXIT_CANNOT_RUN))
        }
        Err(Failure::NotFound(msg)) => {
            eprintln!("oknek: run: {msg}");
            Ok(ExitCode::from(EXIT_NOT_FOUND))
        }
    }
}

fn parse(parser: &mut lexopt::Parser) -> Result<Option<Options>, CliError> {
    use lexopt::prelude::*;
    let mut agent = None;
    let mut landlock = true;
    loop {
        match parser.next()? {
            Some(Long("agent")) => {
                let name = parser.value()?.string()?;
                if name.is_empty() || name.len() > 255 || name.contains('\0') {
                    return Err(CliError::usage(
                        "--agent: a name of 1 to 255 bytes without NUL is required",
                    ));
                }
                agent = Some(name);
            }
            Some(Long("no-landlock")) => landlock = false,
            Some(Short('h') | Long("help")) => return Ok(None),
            Some(Value(command)) => {
                let args = parser.raw_args()?.collect();
                return Ok(Some(Options {
                    agent,
                    landlock,
                    command,
                    args,
                }));
            }
            Some(arg) => return Err(arg.unexpected().into()),
            None => {
                return Err(CliError::usage(
                    "run: a command is required, e.g. `oknek run --agent demo -- cat notes.txt`",
                ));
            }
        }
    }
}

enum Failure {
    CannotRun(String),
    NotFound(String),
}

fn cannot(msg: impl Into<String>) -> Failure {
    Failure::CannotRun(msg.into())
}

fn launch(opts: &Options, global: &Global) -> Result<ExitCode, Failure> {
    let agent = match &opts.agent {
        Some(a) => a.clone(),
        None => Path::new(&opts.command)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| cannot("cannot derive an agent name from the command; use --agent"))?,
    };
    let program = find_program(&opts.command).ok_or_else(|| {
        Failure::NotFound(format!(
            "{}: command not found",
            opts.command.to_string_lossy()
        ))
    })?;

    // The daemon first: nothing is started without it.
    let sock_path = global.runtime_dir.join("oknek.sock");
    let hook = connect_hook(&sock_path).map_err(|e| {
        cannot(format!(
            "cannot reach oknekd at {}: {e}. Is oknekd running (and is --runtime-dir right)? \
             The command was not started: `oknek run` never runs a program unmonitored.",
            sock_path.display()
        ))
    })?;

    // Everything the child needs is prepared here: after fork it only makes raw syscalls.
    let exec = ExecArgs::new(&program, &opts.command, &opts.args)?;
    let prog = filter::program();
    let ruleset = if opts.landlock {
        build_landlock(&global.runtime_dir)?
    } else {
        None
    };
    let (report_r, report_w) = pipe().map_err(|e| cannot(format!("pipe: {e}")))?;
    let (go_r, go_w) = pipe().map_err(|e| cannot(format!("pipe: {e}")))?;

    // Orphaned descendants are re-parented to us, so we reap them instead of init.
    // SAFETY: no pointers.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    // SAFETY: no pointers.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the CLI is single-threaded here; the child only makes async-signal-safe calls.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(cannot(format!("fork: {}", io::Error::last_os_error())));
    }
    if pid == 0 {
        drop_fd_raw(report_r.as_raw_fd());
        drop_fd_raw(go_w.as_raw_fd());
        child(
            parent,
            &prog,
            ruleset.as_ref().map(|r| r.fd.as_raw_fd()),
            report_w.as_raw_fd(),
            go_r.as_raw_fd(),
            &exec,
        );
    }
    drop(report_w);
    drop(go_r);
    drop(ruleset);
    CHILD.store(pid, Ordering::SeqCst);

    if let Err(msg) = register(pid, &report_r, &hook, &agent) {
        // SAFETY: no pointers.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = wait_for(pid);
        return Err(cannot(format!("{msg}; the command was not started")));
    }
    drop(hook);
    forward_signals();
    // SAFETY: plain write of one byte from a local.
    let go = [1u8];
    let n = unsafe { libc::write(go_w.as_raw_fd(), go.as_ptr().cast(), 1) };
    if n != 1 {
        // SAFETY: no pointers.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    drop(go_w);
    let status = wait_for(pid).map_err(|e| cannot(format!("waiting for the command: {e}")))?;
    Ok(exit_code(status))
}

fn build_landlock(runtime_dir: &Path) -> Result<Option<landlock::Ruleset>, Failure> {
    let policy = match landlock::Policy::load(runtime_dir) {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Err(cannot(format!(
                "cannot read oknekd's Landlock policy in {}: {e}",
                runtime_dir.display()
            )));
        }
    };
    if policy.is_empty() {
        return Ok(None);
    }
    if landlock::abi() < 2 {
        eprintln!(
            "oknek: run: note: this kernel has no usable Landlock (ABI < 2); seccomp alone \
             enforces the rules"
        );
        return Ok(None);
    }
    let rs = landlock::build(&policy)
        .map_err(|e| cannot(format!("building the Landlock ruleset: {e}")))?;
    if let Some(rs) = &rs {
        for dir in &rs.unlisted {
            eprintln!(
                "oknek: run: note: cannot list {}: nothing in it is readable under Landlock",
                dir.display()
            );
        }
    }
    Ok(rs)
}

/// The child's side: sandbox itself, report the listener, wait for the go, exec.
/// Only raw syscalls: no allocation, no locks (the parent may have had threads in libc).
fn child(
    parent: libc::pid_t,
    prog: &[libc::sock_filter],
    ruleset: Option<RawFd>,
    report: RawFd,
    go: RawFd,
    exec: &ExecArgs,
) -> ! {
    let fail = |stage: i32, errno: i32| -> ! {
        let msg = [stage, errno];
        // SAFETY: writes 8 bytes from a local array; _exit never returns.
        unsafe {
            libc::write(report, msg.as_ptr().cast(), 8);
            libc::_exit(EXIT_CANNOT_RUN as i32)
        }
    };
    // SAFETY: no pointers.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        if libc::getppid() != parent {
            libc::_exit(EXIT_CANNOT_RUN as i32);
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(1, *libc::__errno_location());
        }
    }
    if let Some(rs) = ruleset {
        if let Err(e) = landlock::restrict_self(rs) {
            fail(2, e);
        }
        drop_fd_raw(rs);
    }
    let listener = match filter::install(prog) {
        Ok(fd) => fd,
        Err(e) => fail(3, e),
    };
    let msg = [0i32, listener];
    let mut go_byte = [0u8];
    // SAFETY: 8 bytes from a local array; 1 byte into a local.
    unsafe {
        if libc::write(report, msg.as_ptr().cast(), 8) != 8 {
            libc::_exit(EXIT_CANNOT_RUN as i32);
        }
        if libc::read(go, go_byte.as_mut_ptr().cast(), 1) != 1 || go_byte[0] != 1 {
            libc::_exit(EXIT_CANNOT_RUN as i32);
        }
    }
    drop_fd_raw(listener);
    drop_fd_raw(report);
    drop_fd_raw(go);
    // SAFETY: every pointer array is NUL-terminated and outlives the call.
    unsafe {
        libc::execve(exec.path.as_ptr(), exec.argv.as_ptr(), exec.envp.as_ptr());
        let errno = *libc::__errno_location();
        // Reported by the child itself: the exec was judged (or failed) after the handshake.
        let prefix: &[u8] = b"oknek: run: cannot execute ";
        libc::write(2, prefix.as_ptr().cast(), prefix.len());
        libc::write(2, exec.path.as_ptr().cast(), exec.path.as_bytes().len());
        let why: &[u8] = match errno {
            libc::EPERM => b": Operation not permitted (blocked by oknek)\n",
            libc::EACCES => b": Permission denied\n",
            libc::ENOENT => b": No such file or directory\n",
            _ => b": exec failed\n",
        };
        libc::write(2, why.as_ptr().cast(), why.len());
        libc::_exit(if errno == libc::ENOENT {
            EXIT_NOT_FOUND as i32
        } else {
            EXIT_CANNOT_RUN as i32
        })
    }
}

/// Takes the child's listener and hands it to oknekd; Ok once oknekd accepted it.
fn register(pid: libc::pid_t, report: &OwnedFd, hook: &OwnedFd, agent: &str) -> Result<(), String> {
    let mut msg = [0i32; 2];
    // SAFETY: reads up to 8 bytes into a local array.
    let n = unsafe { libc::read(report.as_raw_fd(), msg.as_mut_ptr().cast(), 8) };
    if n != 8 {
        return Err("the child exited before installing its seccomp filter".into());
    }
    if msg[0] != 0 {
        let what = match msg[0] {
            1 => "PR_SET_NO_NEW_PRIVS",
            2 => "applying the Landlock ruleset",
            _ => "installing the seccomp filter",
        };
        let mut text = format!("{what}: {}", io::Error::from_raw_os_error(msg[1]));
        if msg[0] == 3 && msg[1] == libc::EPERM {
            text.push_str(
                " (already under `oknek run`? a nested agent cannot install a second listener)",
            );
        }
        return Err(text);
    }
    let listener = take_fd(pid, msg[1])
        .map_err(|e| format!("taking the seccomp listener from the child (pidfd_getfd): {e}"))?;
    let mut frame = [0u8; proto::HEADER_LEN + 256 + 32];
    let bytes = {
        let mut w = proto::Writer::new(&mut frame, proto::Op::RegisterSeccomp, 1, 0)
            .ok_or("frame buffer too small")?;
        w.put_cstr(agent.as_bytes());
        w.finish().to_vec()
    };
    send_with_fd(hook, &bytes, listener.as_raw_fd())
        .map_err(|e| format!("sending the seccomp listener to oknekd: {e}"))?;
    drop(listener);
    let mut reply = [0u8; proto::REPLY_LEN + 16];
    // SAFETY: reads into a local buffer of the given size.
    let n = unsafe { libc::recv(hook.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return Err(if e.kind() == io::ErrorKind::WouldBlock {
            format!("oknekd did not answer the registration within {REGISTER_TIMEOUT_SECS} s")
        } else {
            format!("waiting for oknekd's answer: {e}")
        });
    }
    let reply = proto::Reply::decode(&reply[..n as usize])
        .ok_or("oknekd's answer to the registration was not a reply frame")?;
    if reply.op != proto::Op::RegisterSeccomp as u16 || reply.seq != 1 {
        return Err("oknekd answered a different request".into());
    }
    if reply.errno != 0 {
        return Err(format!(
            "oknekd refused agent {agent:?}: {}",
            io::Error::from_raw_os_error(reply.errno)
        ));
    }
    Ok(())
}

fn take_fd(pid: libc::pid_t, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: no pointers.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    // SAFETY: no pointers.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(got as RawFd) })
}

fn connect_hook(path: &Path) -> io::Result<OwnedFd> {
    // SAFETY: no pointers.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: addr is a valid sockaddr_un.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let tv = libc::timeval {
        // `as _`: time_t is deprecated as a name with musl (its width is changing there).
        tv_sec: REGISTER_TIMEOUT_SECS as _,
        tv_usec: 0,
    };
    // SAFETY: tv is a valid timeval.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    Ok(fd)
}

fn send_with_fd(sock: &OwnedFd, data: &[u8], fd: RawFd) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // Room for one cmsghdr carrying one int, 8-byte aligned.
    let mut cbuf = [0u64; 4];
    // SAFETY: msghdr is plain data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as _;
    // SAFETY: msg_control points to cbuf, large enough for one cmsg with one fd.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    // SAFETY: msg and everything it points to are valid for the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The exec arguments, built before fork.
struct ExecArgs {
    path: CString,
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

impl ExecArgs {
    fn new(program: &Path, argv0: &OsStr, args: &[OsString]) -> Result<ExecArgs, Failure> {
        let c = |s: &OsStr| {
            CString::new(s.as_bytes()).map_err(|_| cannot("an argument contains a NUL byte"))
        };
        let path = c(program.as_os_str())?;
        let mut strings = vec![c(argv0)?];
        for a in args {
            strings.push(c(a)?);
        }
        let argc = strings.len();
        for (k, v) in std::env::vars_os() {
            let mut kv = k.into_vec_bytes();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            if let Ok(s) = CString::new(kv) {
                strings.push(s);
            }
        }
        let mut argv: Vec<_> = strings[..argc].iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<_> = strings[argc..].iter().map(|s| s.as_ptr()).collect();
        envp.push(std::ptr::null());
        Ok(ExecArgs {
            path,
            _strings: strings,
            argv,
            envp,
        })
    }
}

trait IntoVecBytes {
    fn into_vec_bytes(self) -> Vec<u8>;
}

impl IntoVecBytes for OsString {
    fn into_vec_bytes(self) -> Vec<u8> {
        std::os::unix::ffi::OsStringExt::into_vec(self)
    }
}

/// `execvp`'s search, done before fork so the child makes exactly one judged exec.
fn find_program(cmd: &OsStr) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            // SAFETY: c is NUL-terminated.
            .map(|c| unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 && p.is_file())
            .unwrap_or(false)
    };
    if cmd.as_bytes().contains(&b'/') {
        let p = PathBuf::from(cmd);
        return p.exists().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(cmd))
        .find(|p| is_exec(p))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned these fds.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn drop_fd_raw(fd: RawFd) {
    // SAFETY: closing an fd this process owns (in the child, a copy of the parent's).
    unsafe { libc::close(fd) };
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // Signals the terminal sent to the whole foreground group reached the child already.
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    if code == libc::SI_KERNEL {
        return;
    }
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

fn forward_signals() {
    for sig in [
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGWINCH,
    ] {
        // SAFETY: sigaction is plain data; the handler is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Waits for `pid`, reaping re-parented orphans on the way.
fn wait_for(pid: libc::pid_t) -> io::Result<libc::c_int> {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid int.
        let got = unsafe { libc::waitpid(-1, &mut status, 0) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if got == pid {
            return Ok(status);
        }
    }
}

fn exit_code(status: libc::c_int) -> ExitCode {
    if libc::WIFEXITED(status) {
        ExitCode::from(libc::WEXITSTATUS(status) as u8)
    } else if libc::WIFSIGNALED(status) {
        ExitCode::from(128u8.wrapping_add(libc::WTERMSIG(status) as u8))
    } else {
        ExitCode::from(EXIT_CANNOT_RUN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_search_finds_sh() {
        let p = find_program(OsStr::new("sh")).expect("sh on PATH");
        assert!(p.is_absolute());
        assert!(find_program(OsStr::new("no-such-oknek-command")).is_none());
        assert_eq!(
            find_program(OsStr::new("/bin/sh")),
            Some(PathBuf::from("/bin/sh"))
        );
    }

    #[test]
    fn exec_args_are_nul_terminated() {
        let a = ExecArgs::new(
            Path::new("/bin/echo"),
            OsStr::new("echo"),
            &["hi".into(), "there".into()],
        )
        .ok()
        .unwrap();
        assert_eq!(a.argv.len(), 4);
        assert!(a.argv[3].is_null());
        assert!(a.envp.last().unwrap().is_null());
    }
}
