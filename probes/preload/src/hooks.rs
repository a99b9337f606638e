//! The exported libc entry points.
//!
//! Each hook: (1) passes a null path/command straight through (libc reports the error its own
//! way); (2) enters the per-thread guard — a call made while this thread is already inside the
//! shim goes straight to libc; (3) judges the call; (4) leaves the guard, restoring the caller's
//! errno; (5) either fails the way the function documents (errno EPERM and -1 or NULL; an error
//! number for `posix_spawn`) or calls the real function. The real call is always made outside the
//! guard, so an exec that succeeds in a `vfork` child leaves no flag set in the parent's memory.
//!
//! `open`, `open64`, `openat` and `openat64` are variadic in C. They are defined here with the
//! optional `mode` as a plain last parameter: on x86_64 (System V) a variadic argument travels in
//! the same register as a fixed one, so the definition is ABI-compatible with every caller; the
//! value is only used when the flags say a mode was passed (O_CREAT, O_TMPFILE), exactly as libc
//! does. The real function is called through a variadic pointer, which stable Rust supports.

use core::ffi::CStr;

use libc::{
    FILE, c_char, c_int, c_uint, c_void, mmsghdr, mode_t, msghdr, pid_t, sockaddr, socklen_t,
};
use libc::{posix_spawn_file_actions_t, posix_spawnattr_t, size_t, ssize_t};
use oknek_protocol::table::Kind;

use crate::check::{self, CArgv, ExecTarget, PathOp, PathVerdict, Verdict};
use crate::real::{self, Argv};
use crate::{enter, sys};

fn needs_mode(flags: c_int) -> bool {
    flags & libc::O_CREAT != 0 || flags & libc::O_TMPFILE == libc::O_TMPFILE
}

/// The rule language's `write: true`: the open can change the file.
fn may_write(flags: c_int) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
        || flags & (libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) != 0
        || flags & libc::O_TMPFILE == libc::O_TMPFILE
}

fn deny_int(e: c_int) -> c_int {
    sys::set_errno(e);
    -1
}

fn deny_ptr<T>(e: c_int) -> *mut T {
    sys::set_errno(e);
    core::ptr::null_mut()
}

/// The check before an open: by path, then — for an open that could truncate a file the table
/// protects by identity — by identity before the file is touched.
fn open_verdict(op: PathOp, dirfd: c_int, path: &CStr, flags: c_int) -> PathVerdict {
    let v = check::judge_path(op, dirfd, path, may_write(flags));
    if v == PathVerdict::CheckIdentity && flags & libc::O_TRUNC != 0 {
        let follow = flags & libc::O_NOFOLLOW == 0;
        return match check::judge_identity_at(op, dirfd, path, follow) {
            Verdict::Allow => PathVerdict::Allow,
            Verdict::Deny(e) => PathVerdict::Deny(e),
        };
    }
    v
}

/// # Safety
/// `path` is the caller's argument: null or a NUL-terminated string.
unsafe fn open_common(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: mode_t,
    real: impl FnOnce() -> c_int,
) -> c_int {
    if path.is_null() {
        return real();
    }
    let Some(g) = enter() else {
        return real();
    };
    // SAFETY: non-null, and the caller passes a NUL-terminated string as open(2) requires.
    let p = unsafe { CStr::from_ptr(path) };
    let op = PathOp::Open {
        flags: flags as u32,
        mode: if needs_mode(flags) { mode } else { 0 },
    };
    let v = open_verdict(op, dirfd, p, flags);
    drop(g);
    match v {
        PathVerdict::Deny(e) => deny_int(e),
        PathVerdict::Allow => real(),
        PathVerdict::CheckIdentity => {
            let fd = real();
            if fd < 0 {
                return fd;
            }
            let Some(g) = enter() else {
                return fd;
            };
            let v = check::judge_identity_fd(op, fd);
            drop(g);
            match v {
                Verdict::Allow => fd,
                Verdict::Deny(e) => {
                    sys::close(fd);
                    deny_int(e)
                }
            }
        }
    }
}

/// # Safety
/// As open(2).
unsafe fn call_open(
    f: Option<real::OpenFn>,
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: mode_t,
) -> c_int {
    match f {
        // SAFETY: libc's open/open64 with the caller's arguments.
        Some(f) => unsafe { f(path, flags, mode as c_uint) },
        // SAFETY: the same call, straight to the kernel.
        None => unsafe { sys::openat_fallback(dirfd, path, flags, mode) },
    }
}

/// # Safety
/// As openat(2).
unsafe fn call_openat(
    f: Option<real::OpenatFn>,
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: mode_t,
) -> c_int {
    match f {
        // SAFETY: libc's openat/openat64 with the caller's arguments.
        Some(f) => unsafe { f(dirfd, path, flags, mode as c_uint) },
        // SAFETY: the same call, straight to the kernel.
        None => unsafe { sys::openat_fallback(dirfd, path, flags, mode) },
    }
}

/// `open(path, flags, ...)`; see the module docs for the mode argument.
///
/// # Safety
/// As open(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn open(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    unsafe {
        open_common(libc::AT_FDCWD, path, flags, mode, || {
            call_open(real::open(), libc::AT_FDCWD, path, flags, mode)
        })
    }
}

/// # Safety
/// As open(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn open64(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    unsafe {
        open_common(libc::AT_FDCWD, path, flags, mode, || {
            call_open(real::open64(), libc::AT_FDCWD, path, flags, mode)
        })
    }
}

/// The fortified `open` (`_FORTIFY_SOURCE`, no mode).
///
/// # Safety
/// As open(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __open_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    unsafe {
        open_common(libc::AT_FDCWD, path, flags, 0, || match real::open_2() {
            Some(f) => f(path, flags),
            None => sys::openat_fallback(libc::AT_FDCWD, path, flags, 0),
        })
    }
}

/// # Safety
/// As open(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __open64_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    unsafe {
        open_common(libc::AT_FDCWD, path, flags, 0, || match real::open64_2() {
            Some(f) => f(path, flags),
            None => sys::openat_fallback(libc::AT_FDCWD, path, flags, 0),
        })
    }
}

/// # Safety
/// As openat(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn openat(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: mode_t,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    unsafe {
        open_common(dirfd, path, flags, mode, || {
            call_openat(real::openat(), dirfd, path, flags, mode)
        })
    }
}

/// # Safety
/// As openat(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn openat64(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: mode_t,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    unsafe {
        open_common(dirfd, path, flags, mode, || {
            call_openat(real::openat64(), dirfd, path, flags, mode)
        })
    }
}

/// # Safety
/// As openat(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    unsafe {
        open_common(dirfd, path, flags, 0, || match real::openat_2() {
            Some(f) => f(dirfd, path, flags),
            None => sys::openat_fallback(dirfd, path, flags, 0),
        })
    }
}

/// # Safety
/// As openat(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    unsafe {
        open_common(dirfd, path, flags, 0, || match real::openat64_2() {
            Some(f) => f(dirfd, path, flags),
            None => sys::openat_fallback(dirfd, path, flags, 0),
        })
    }
}

const CREAT_FLAGS: c_int = libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC;

/// # Safety
/// As creat(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn creat(path: *const c_char, mode: mode_t) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    unsafe {
        open_common(
            libc::AT_FDCWD,
            path,
            CREAT_FLAGS,
            mode,
            || match real::creat() {
                Some(f) => f(path, mode),
                None => sys::openat_fallback(libc::AT_FDCWD, path, CREAT_FLAGS, mode),
            },
        )
    }
}

/// # Safety
/// As creat(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn creat64(path: *const c_char, mode: mode_t) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    unsafe {
        open_common(
            libc::AT_FDCWD,
            path,
            CREAT_FLAGS,
            mode,
            || match real::creat64() {
                Some(f) => f(path, mode),
                None => sys::openat_fallback(libc::AT_FDCWD, path, CREAT_FLAGS, mode),
            },
        )
    }
}

/// open(2) flags for an fopen mode string ("r", "w+", "ae", "wx", …), as glibc reads it.
fn fopen_flags(mode: &[u8]) -> c_int {
    let mut flags = match mode.first() {
        Some(b'w') => libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        Some(b'a') => libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND,
        _ => libc::O_RDONLY,
    };
    // glibc looks at up to 6 more characters; stop at ",ccs=".
    for &c in mode.iter().skip(1).take(6) {
        match c {
            b'+' => flags = (flags & !libc::O_ACCMODE) | libc::O_RDWR,
            b'x' => flags |= libc::O_EXCL,
            b'e' => flags |= libc::O_CLOEXEC,
            b',' => break,
            _ => {}
        }
    }
    flags
}

/// # Safety
/// `path` and `mode` are the caller's fopen arguments; `real` makes the real call.
unsafe fn fopen_common(
    path: *const c_char,
    mode: *const c_char,
    real: impl FnOnce() -> *mut FILE,
    on_deny: impl FnOnce(),
) -> *mut FILE {
    if path.is_null() || mode.is_null() {
        return real();
    }
    let Some(g) = enter() else {
        return real();
    };
    // SAFETY: both non-null and NUL-terminated, as fopen requires.
    let (p, m) = unsafe { (CStr::from_ptr(path), CStr::from_ptr(mode)) };
    let flags = fopen_flags(m.to_bytes());
    let op = PathOp::Open {
        flags: flags as u32,
        mode: if needs_mode(flags) { 0o666 } else { 0 },
    };
    let v = open_verdict(op, libc::AT_FDCWD, p, flags);
    drop(g);
    match v {
        PathVerdict::Deny(e) => {
            on_deny();
            deny_ptr(e)
        }
        PathVerdict::Allow => real(),
        PathVerdict::CheckIdentity => {
            let fp = real();
            if fp.is_null() {
                return fp;
            }
            let Some(g) = enter() else {
                return fp;
            };
            // SAFETY: fp is the stream libc just opened; fileno is not hooked.
            let fd = unsafe { libc::fileno(fp) };
            let v = check::judge_identity_fd(op, fd);
            drop(g);
            match v {
                Verdict::Allow => fp,
                Verdict::Deny(e) => {
                    // SAFETY: our own freshly opened stream, nothing written to it.
                    unsafe { libc::fclose(fp) };
                    deny_ptr(e)
                }
            }
        }
    }
}

/// # Safety
/// As fopen(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fopen(path: *const c_char, mode: *const c_char) -> *mut FILE {
    // SAFETY: the caller's arguments, passed on.
    unsafe {
        fopen_common(
            path,
            mode,
            || match real::fopen() {
                Some(f) => f(path, mode),
                None => deny_ptr(libc::ENOSYS),
            },
            || {},
        )
    }
}

/// # Safety
/// As fopen(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fopen64(path: *const c_char, mode: *const c_char) -> *mut FILE {
    // SAFETY: the caller's arguments, passed on.
    unsafe {
        fopen_common(
            path,
            mode,
            || match real::fopen64() {
                Some(f) => f(path, mode),
                None => deny_ptr(libc::ENOSYS),
            },
            || {},
        )
    }
}

/// A denied freopen closes the original stream, as POSIX says a failed freopen does.
///
/// # Safety
/// As freopen(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn freopen(
    path: *const c_char,
    mode: *const c_char,
    stream: *mut FILE,
) -> *mut FILE {
    // SAFETY: the caller's arguments, passed on; stream is the caller's open stream.
    unsafe {
        fopen_common(
            path,
            mode,
            || match real::freopen() {
                Some(f) => f(path, mode, stream),
                None => deny_ptr(libc::ENOSYS),
            },
            || {
                if !stream.is_null() {
                    libc::fclose(stream);
                }
            },
        )
    }
}

/// # Safety
/// As freopen(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn freopen64(
    path: *const c_char,
    mode: *const c_char,
    stream: *mut FILE,
) -> *mut FILE {
    // SAFETY: the caller's arguments, passed on; stream is the caller's open stream.
    unsafe {
        fopen_common(
            path,
            mode,
            || match real::freopen64() {
                Some(f) => f(path, mode, stream),
                None => deny_ptr(libc::ENOSYS),
            },
            || {
                if !stream.is_null() {
                    libc::fclose(stream);
                }
            },
        )
    }
}

/// # Safety
/// As inotify_add_watch(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn inotify_add_watch(fd: c_int, path: *const c_char, mask: u32) -> c_int {
    let real = || match real::inotify_add_watch() {
        // SAFETY: the caller's arguments, passed on.
        Some(f) => unsafe { f(fd, path, mask) },
        None => deny_int(libc::ENOSYS),
    };
    if path.is_null() {
        return real();
    }
    let Some(g) = enter() else {
        return real();
    };
    // SAFETY: non-null and NUL-terminated, as inotify_add_watch requires.
    let p = unsafe { CStr::from_ptr(path) };
    let op = PathOp::Watch { mask };
    let mut v = check::judge_path(op, libc::AT_FDCWD, p, false);
    if v == PathVerdict::CheckIdentity {
        // No fd comes back: check the identity first.
        let follow = mask & libc::IN_DONT_FOLLOW == 0;
        v = match check::judge_identity_at(op, libc::AT_FDCWD, p, follow) {
            Verdict::Allow => PathVerdict::Allow,
            Verdict::Deny(e) => PathVerdict::Deny(e),
        };
    }
    drop(g);
    match v {
        PathVerdict::Deny(e) => deny_int(e),
        _ => real(),
    }
}

// ---- exec -----------------------------------------------------------------------------------

/// Judges an exec; the caller fails the call its own way on `Some(errno)`.
///
/// # Safety
/// `argv` is null or a NULL-terminated array of C strings.
unsafe fn exec_denied(target: ExecTarget<'_>, argv: Argv) -> Option<c_int> {
    let g = enter()?;
    // SAFETY: per this function's contract.
    let v = check::judge_exec(target, unsafe { CArgv::new(argv) });
    drop(g);
    match v {
        Verdict::Allow => None,
        Verdict::Deny(e) => Some(e),
    }
}

/// # Safety
/// `p` is null or NUL-terminated.
unsafe fn bytes<'a>(p: *const c_char) -> &'a [u8] {
    if p.is_null() {
        return b"";
    }
    // SAFETY: per the contract.
    unsafe { CStr::from_ptr(p) }.to_bytes()
}

/// # Safety
/// As execve(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execve(path: *const c_char, argv: Argv, envp: Argv) -> c_int {
    // SAFETY: the caller's arguments: C strings and NULL-terminated arrays.
    unsafe {
        if !path.is_null() {
            let t = ExecTarget::Path {
                dirfd: libc::AT_FDCWD,
                path: bytes(path),
            };
            if let Some(e) = exec_denied(t, argv) {
                return deny_int(e);
            }
        }
        match real::execve() {
            Some(f) => f(path, argv, envp),
            None => deny_int(libc::ENOSYS),
        }
    }
}

/// # Safety
/// As execv(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execv(path: *const c_char, argv: Argv) -> c_int {
    // SAFETY: the caller's arguments: C strings and NULL-terminated arrays.
    unsafe {
        if !path.is_null() {
            let t = ExecTarget::Path {
                dirfd: libc::AT_FDCWD,
                path: bytes(path),
            };
            if let Some(e) = exec_denied(t, argv) {
                return deny_int(e);
            }
        }
        match real::execv() {
            Some(f) => f(path, argv),
            None => deny_int(libc::ENOSYS),
        }
    }
}

/// # Safety
/// As execvp(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: Argv) -> c_int {
    // SAFETY: the caller's arguments: C strings and NULL-terminated arrays.
    unsafe {
        if !file.is_null()
            && let Some(e) = exec_denied(ExecTarget::Search(bytes(file)), argv)
        {
            return deny_int(e);
        }
        match real::execvp() {
            Some(f) => f(file, argv),
            None => deny_int(libc::ENOSYS),
        }
    }
}

/// # Safety
/// As execvpe(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvpe(file: *const c_char, argv: Argv, envp: Argv) -> c_int {
    // SAFETY: the caller's arguments: C strings and NULL-terminated arrays.
    unsafe {
        if !file.is_null()
            && let Some(e) = exec_denied(ExecTarget::Search(bytes(file)), argv)
        {
            return deny_int(e);
        }
        match real::execvpe() {
            Some(f) => f(file, argv, envp),
            None => deny_int(libc::ENOSYS),
        }
    }
}

/// # Safety
/// As fexecve(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fexecve(fd: c_int, argv: Argv, envp: Argv) -> c_int {
    // SAFETY: the caller's arguments: NULL-terminated arrays.
    unsafe {
        if let Some(e) = exec_denied(ExecTarget::Fd(fd), argv) {
            return deny_int(e);
        }
        match real::fexecve() {
            Some(f) => f(fd, argv, envp),
            None => deny_int(libc::ENOSYS),
        }
    }
}

/// # Safety
/// As execveat(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execveat(
    dirfd: c_int,
    path: *const c_char,
    argv: Argv,
    envp: Argv,
    flags: c_int,
) -> c_int {
    // SAFETY: the caller's arguments: C strings and NULL-terminated arrays.
    unsafe {
        if !path.is_null() {
            let p = bytes(path);
            let t = if p.is_empty() && flags & libc::AT_EMPTY_PATH != 0 {
                ExecTarget::Fd(dirfd)
            } else {
                ExecTarget::Path { dirfd, path: p }
            };
            if let Some(e) = exec_denied(t, argv) {
                return deny_int(e);
            }
        }
        match real::execveat() {
            Some(f) => f(dirfd, path, argv, envp, flags),
            None => deny_int(libc::ENOSYS),
        }
    }
}

/// posix_spawn and posix_spawnp report errors as their return value, not in errno.
///
/// # Safety
/// As posix_spawn(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawn(
    pid: *mut pid_t,
    path: *const c_char,
    fa: *const posix_spawn_file_actions_t,
    attr: *const posix_spawnattr_t,
    argv: Argv,
    envp: Argv,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    unsafe {
        if !path.is_null() {
            let t = ExecTarget::Path {
                dirfd: libc::AT_FDCWD,
                path: bytes(path),
            };
            if let Some(e) = exec_denied(t, argv) {
                return e;
            }
        }
        match real::posix_spawn() {
            Some(f) => f(pid, path, fa, attr, argv, envp),
            None => libc::ENOSYS,
        }
    }
}

/// # Safety
/// As posix_spawnp(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawnp(
    pid: *mut pid_t,
    file: *const c_char,
    fa: *const posix_spawn_file_actions_t,
    attr: *const posix_spawnattr_t,
    argv: Argv,
    envp: Argv,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    unsafe {
        if !file.is_null()
            && let Some(e) = exec_denied(ExecTarget::Search(bytes(file)), argv)
        {
            return e;
        }
        match real::posix_spawnp() {
            Some(f) => f(pid, file, fa, attr, argv, envp),
            None => libc::ENOSYS,
        }
    }
}

/// glibc 2.39's pidfd variants of posix_spawn (absent from older libcs: then ENOSYS, which is
/// what a program built against a newer glibc would see there anyway).
///
/// # Safety
/// As pidfd_spawn(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pidfd_spawn(
    pidfd: *mut c_int,
    path: *const c_char,
    fa: *const posix_spawn_file_actions_t,
    attr: *const posix_spawnattr_t,
    argv: Argv,
    envp: Argv,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    unsafe {
        if !path.is_null() {
            let t = ExecTarget::Path {
                dirfd: libc::AT_FDCWD,
                path: bytes(path),
            };
            if let Some(e) = exec_denied(t, argv) {
                return e;
            }
        }
        match real::pidfd_spawn() {
            Some(f) => f(pidfd, path, fa, attr, argv, envp),
            None => libc::ENOSYS,
        }
    }
}

/// # Safety
/// As pidfd_spawnp(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pidfd_spawnp(
    pidfd: *mut c_int,
    file: *const c_char,
    fa: *const posix_spawn_file_actions_t,
    attr: *const posix_spawnattr_t,
    argv: Argv,
    envp: Argv,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    unsafe {
        if !file.is_null()
            && let Some(e) = exec_denied(ExecTarget::Search(bytes(file)), argv)
        {
            return e;
        }
        match real::pidfd_spawnp() {
            Some(f) => f(pidfd, file, fa, attr, argv, envp),
            None => libc::ENOSYS,
        }
    }
}

/// system(3) and popen(3) run `/bin/sh -c COMMAND` through glibc's internal spawn, which no
/// hook sees: judge that exec here.
///
/// # Safety
/// `cmd` is non-null and NUL-terminated.
unsafe fn shell_denied(cmd: *const c_char) -> Option<c_int> {
    let g = enter()?;
    // SAFETY: per the contract.
    let cmd = unsafe { CStr::from_ptr(cmd) }.to_bytes();
    let argv: [&[u8]; 3] = [b"sh", b"-c", cmd];
    let t = ExecTarget::Path {
        dirfd: libc::AT_FDCWD,
        path: b"/bin/sh",
    };
    let v = check::judge_exec(t, argv.iter().copied());
    drop(g);
    match v {
        Verdict::Allow => None,
        Verdict::Deny(e) => Some(e),
    }
}

/// A denied command returns -1 with errno set, as when no child could be created.
///
/// # Safety
/// As system(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn system(cmd: *const c_char) -> c_int {
    // SAFETY: the caller's argument, passed on; checked only when non-null (system(NULL) asks
    // whether a shell exists).
    unsafe {
        if !cmd.is_null()
            && let Some(e) = shell_denied(cmd)
        {
            return deny_int(e);
        }
        match real::system() {
            Some(f) => f(cmd),
            None => deny_int(libc::ENOSYS),
        }
    }
}

/// # Safety
/// As popen(3).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn popen(cmd: *const c_char, mode: *const c_char) -> *mut FILE {
    // SAFETY: the caller's arguments, passed on.
    unsafe {
        if !cmd.is_null()
            && let Some(e) = shell_denied(cmd)
        {
            return deny_ptr(e);
        }
        match real::popen() {
            Some(f) => f(cmd, mode),
            None => deny_ptr(libc::ENOSYS),
        }
    }
}

// ---- network --------------------------------------------------------------------------------

fn sock_denied(kind: Kind, addr: *const sockaddr, len: socklen_t, bytes: u64) -> Option<c_int> {
    let g = enter()?;
    let v = check::judge_sock(kind, addr, len, bytes);
    drop(g);
    match v {
        Verdict::Allow => None,
        Verdict::Deny(e) => Some(e),
    }
}

/// # Safety
/// As connect(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    if let Some(e) = sock_denied(Kind::Connect, addr, len, 0) {
        return deny_int(e);
    }
    match real::connect() {
        // SAFETY: the caller's arguments, passed on.
        Some(f) => unsafe { f(fd, addr, len) },
        None => deny_int(libc::ENOSYS),
    }
}

/// # Safety
/// As send(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t {
    if let Some(e) = sock_denied(Kind::Send, core::ptr::null(), 0, len as u64) {
        return deny_int(e) as ssize_t;
    }
    match real::send() {
        // SAFETY: the caller's arguments, passed on.
        Some(f) => unsafe { f(fd, buf, len, flags) },
        None => deny_int(libc::ENOSYS) as ssize_t,
    }
}

/// # Safety
/// As sendto(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const sockaddr,
    alen: socklen_t,
) -> ssize_t {
    if let Some(e) = sock_denied(Kind::Send, addr, alen, len as u64) {
        return deny_int(e) as ssize_t;
    }
    match real::sendto() {
        // SAFETY: the caller's arguments, passed on.
        Some(f) => unsafe { f(fd, buf, len, flags, addr, alen) },
        None => deny_int(libc::ENOSYS) as ssize_t,
    }
}

/// Destination and size of one msghdr (at most 1024 iovecs are counted, the kernel's limit).
///
/// # Safety
/// `msg` is null or a readable msghdr whose iovec array is readable.
unsafe fn msg_dest(msg: *const msghdr) -> (*const sockaddr, socklen_t, u64) {
    if msg.is_null() {
        return (core::ptr::null(), 0, 0);
    }
    // SAFETY: per the contract.
    let m = unsafe { &*msg };
    let mut bytes = 0u64;
    if !m.msg_iov.is_null() {
        for i in 0..m.msg_iovlen.min(1024) {
            // SAFETY: i < msg_iovlen, and the caller's msghdr promises that many iovecs.
            let iov = unsafe { &*m.msg_iov.add(i) };
            bytes = bytes.saturating_add(iov.iov_len as u64);
        }
    }
    (m.msg_name.cast_const().cast(), m.msg_namelen, bytes)
}

/// # Safety
/// As sendmsg(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    // SAFETY: msg is the caller's msghdr (or null).
    let (addr, alen, bytes) = unsafe { msg_dest(msg) };
    if let Some(e) = sock_denied(Kind::Send, addr, alen, bytes) {
        return deny_int(e) as ssize_t;
    }
    match real::sendmsg() {
        // SAFETY: the caller's arguments, passed on.
        Some(f) => unsafe { f(fd, msg, flags) },
        None => deny_int(libc::ENOSYS) as ssize_t,
    }
}

/// Every message is judged; if any is denied, none is sent.
///
/// # Safety
/// As sendmmsg(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmmsg(
    fd: c_int,
    vec: *mut mmsghdr,
    vlen: c_uint,
    flags: c_int,
) -> c_int {
    if !vec.is_null() {
        // The kernel sends at most UIO_MAXIOV (1024) messages per call.
        for i in 0..vlen.min(1024) as usize {
            // SAFETY: i < vlen: the caller's array holds that many mmsghdrs.
            let (addr, alen, bytes) = unsafe { msg_dest(&raw const (*vec.add(i)).msg_hdr) };
            if let Some(e) = sock_denied(Kind::Send, addr, alen, bytes) {
                return deny_int(e);
            }
        }
    }
    match real::sendmmsg() {
        // SAFETY: the caller's arguments, passed on.
        Some(f) => unsafe { f(fd, vec, vlen, flags) },
        None => deny_int(libc::ENOSYS),
    }
}
