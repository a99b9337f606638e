//! Raw system calls for the shim's own I/O.
//!
//! The shim exports `open`, `connect`, `sendto` and friends, so calling those libc functions from
//! inside the library would land in its own hooks. Everything the shim does for itself (reading
//! the table and config, talking to oknekd) therefore goes straight to the kernel with the
//! `syscall` instruction: no libc wrapper, no errno change, no allocation, no re-entry. Results are
//! `Ok(value)` or `Err(errno)`.

use core::arch::asm;

use libc::{c_int, c_long};

/// One system call with up to six arguments; returns the kernel's raw result (-errno on error).
///
/// # Safety
/// The arguments must be valid for the call `nr` (pointers to memory of the sizes it uses).
#[inline]
unsafe fn syscall6(nr: c_long, a: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the x86_64 Linux system call convention: number in rax, arguments in rdi, rsi, rdx,
    // r10, r8, r9; the kernel clobbers rcx and r11 and returns in rax. The caller vouches for the
    // arguments. No stack is used.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

fn result(r: isize) -> Result<usize, c_int> {
    if (-4095..0).contains(&r) {
        // r is in -4095..=-1, so its negation fits an i32.
        Err(r.unsigned_abs() as c_int)
    } else {
        Ok(r as usize)
    }
}

macro_rules! sc {
    ($nr:expr $(, $a:expr)*) => {{
        let mut args = [0usize; 6];
        let vals: &[usize] = &[$($a as usize),*];
        for (d, s) in args.iter_mut().zip(vals) {
            *d = *s;
        }
        // SAFETY: every caller below passes arguments that are valid for the call, as its own
        // comment says.
        result(unsafe { syscall6($nr, args) })
    }};
}

pub fn getpid() -> c_int {
    // getpid cannot fail.
    sc!(libc::SYS_getpid).map_or(0, |v| v as c_int)
}

/// `openat(dirfd, path, flags | O_CLOEXEC, mode)`; `path` must be NUL-terminated.
pub fn openat(dirfd: c_int, path: &[u8], flags: c_int, mode: u32) -> Result<c_int, c_int> {
    if path.last() != Some(&0) {
        return Err(libc::EINVAL);
    }
    // path is a NUL-terminated buffer the kernel only reads.
    sc!(
        libc::SYS_openat,
        dirfd as isize,
        path.as_ptr(),
        (flags | libc::O_CLOEXEC) as isize,
        mode
    )
    .map(|v| v as c_int)
}

pub fn close(fd: c_int) {
    // close takes no pointers; its error is of no use here.
    let _ = sc!(libc::SYS_close, fd as isize);
}

pub fn read(fd: c_int, buf: &mut [u8]) -> Result<usize, c_int> {
    // buf is writable for buf.len() bytes.
    sc!(libc::SYS_read, fd as isize, buf.as_mut_ptr(), buf.len())
}

fn zeroed_stat() -> libc::stat {
    // SAFETY: struct stat is plain integers; all-zero is a valid value.
    unsafe { core::mem::MaybeUninit::<libc::stat>::zeroed().assume_init() }
}

pub fn fstat(fd: c_int) -> Result<libc::stat, c_int> {
    let mut st = zeroed_stat();
    // st is a writable struct stat (the x86_64 kernel layout is glibc's).
    sc!(libc::SYS_fstat, fd as isize, &raw mut st).map(|_| st)
}

/// `newfstatat(dirfd, path, &st, flags)`; `path` must be NUL-terminated.
pub fn fstatat(dirfd: c_int, path: &[u8], flags: c_int) -> Result<libc::stat, c_int> {
    if path.last() != Some(&0) {
        return Err(libc::EINVAL);
    }
    let mut st = zeroed_stat();
    // path is NUL-terminated; st is a writable struct stat.
    sc!(
        libc::SYS_newfstatat,
        dirfd as isize,
        path.as_ptr(),
        &raw mut st,
        flags as isize
    )
    .map(|_| st)
}

/// `faccessat(dirfd, path, mode)`; `path` must be NUL-terminated.
pub fn faccessat(dirfd: c_int, path: &[u8], mode: c_int) -> Result<(), c_int> {
    if path.last() != Some(&0) {
        return Err(libc::EINVAL);
    }
    // path is NUL-terminated and only read.
    sc!(
        libc::SYS_faccessat,
        dirfd as isize,
        path.as_ptr(),
        mode as isize
    )
    .map(|_| ())
}

/// The current directory into `buf`; returns its length without the NUL.
pub fn getcwd(buf: &mut [u8]) -> Result<usize, c_int> {
    // buf is writable for buf.len() bytes; the kernel returns the length including the NUL.
    let n = sc!(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len())?;
    Ok(n.saturating_sub(1))
}

/// `readlinkat(AT_FDCWD, path, buf)`; `path` must be NUL-terminated. The result is not.
pub fn readlink(path: &[u8], buf: &mut [u8]) -> Result<usize, c_int> {
    if path.last() != Some(&0) {
        return Err(libc::EINVAL);
    }
    // path is NUL-terminated; buf is writable for buf.len() bytes.
    sc!(
        libc::SYS_readlinkat,
        libc::AT_FDCWD as isize,
        path.as_ptr(),
        buf.as_mut_ptr(),
        buf.len()
    )
}

/// Maps `len` bytes of `fd` read-only and shared.
pub fn mmap_ro(fd: c_int, len: usize) -> Result<*const u8, c_int> {
    // No user pointers: the kernel picks the address.
    sc!(
        libc::SYS_mmap,
        0usize,
        len,
        libc::PROT_READ as isize,
        libc::MAP_SHARED as isize,
        fd as isize,
        0usize
    )
    .map(|p| p as *const u8)
}

/// # Safety
/// `[ptr, ptr + len)` must be a mapping this library made and nobody uses any more.
pub unsafe fn munmap(ptr: *const u8, len: usize) {
    // The caller guarantees the range is ours and unused.
    let _ = sc!(libc::SYS_munmap, ptr, len);
}

pub fn socket_seqpacket() -> Result<c_int, c_int> {
    // No pointers.
    sc!(
        libc::SYS_socket,
        libc::AF_UNIX as isize,
        (libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC) as isize,
        0usize
    )
    .map(|v| v as c_int)
}

pub fn set_send_timeout(fd: c_int, ms: u32) -> Result<(), c_int> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::from(ms / 1000),
        tv_usec: libc::suseconds_t::from((ms % 1000).saturating_mul(1000)),
    };
    // tv is a readable struct timeval of the size passed.
    sc!(
        libc::SYS_setsockopt,
        fd as isize,
        libc::SOL_SOCKET as isize,
        libc::SO_SNDTIMEO as isize,
        &raw const tv,
        size_of::<libc::timeval>()
    )
    .map(|_| ())
}

pub fn connect_unix(fd: c_int, addr: &libc::sockaddr_un, len: u32) -> Result<(), c_int> {
    // addr is a readable sockaddr_un; len does not exceed its size (the caller computes it).
    let len = len.min(size_of::<libc::sockaddr_un>() as u32);
    sc!(
        libc::SYS_connect,
        fd as isize,
        core::ptr::from_ref(addr),
        len
    )
    .map(|_| ())
}

pub fn send(fd: c_int, buf: &[u8], flags: c_int) -> Result<usize, c_int> {
    // buf is readable for buf.len() bytes; no destination address.
    sc!(
        libc::SYS_sendto,
        fd as isize,
        buf.as_ptr(),
        buf.len(),
        flags as isize,
        0usize,
        0usize
    )
}

pub fn recv(fd: c_int, buf: &mut [u8], flags: c_int) -> Result<usize, c_int> {
    // buf is writable for buf.len() bytes; no source address wanted.
    sc!(
        libc::SYS_recvfrom,
        fd as isize,
        buf.as_mut_ptr(),
        buf.len(),
        flags as isize,
        0usize,
        0usize
    )
}

/// Waits up to `ns` nanoseconds for `fd` to become readable; returns the revents (0 on timeout).
pub fn poll_in(fd: c_int, ns: u64) -> Result<i16, c_int> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000).min(i64::MAX as u64) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // p is one writable pollfd, ts a readable timespec; no signal mask.
    sc!(
        libc::SYS_ppoll,
        &raw mut p,
        1usize,
        &raw const ts,
        0usize,
        0usize
    )?;
    Ok(p.revents)
}

pub fn sched_yield() {
    // No arguments.
    let _ = sc!(libc::SYS_sched_yield);
}

/// CLOCK_MONOTONIC in nanoseconds (through the vDSO: no system call).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a writable timespec; clock_gettime is not hooked by this library.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

pub fn errno() -> c_int {
    // SAFETY: __errno_location returns the calling thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

pub fn set_errno(v: c_int) {
    // SAFETY: as in errno().
    unsafe { *libc::__errno_location() = v }
}

/// Writes "/proc/self/fd/N\0" into `buf`; returns the slice including the NUL.
pub fn proc_fd_path(fd: c_int, buf: &mut [u8; 32]) -> &[u8] {
    const P: &[u8] = b"/proc/self/fd/";
    let mut digits = [0u8; 12];
    let mut n = fd.unsigned_abs();
    let mut i = digits.len();
    loop {
        i = i.saturating_sub(1);
        if let Some(d) = digits.get_mut(i) {
            *d = b'0'.saturating_add((n % 10) as u8);
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    let digits = digits.get(i..).unwrap_or(&[]);
    let mut len = 0usize;
    for &b in P.iter().chain(digits).chain(&[0u8]) {
        if let Some(d) = buf.get_mut(len) {
            *d = b;
            len = len.saturating_add(1);
        }
    }
    buf.get(..len).unwrap_or(&[])
}

/// The kernel's `openat` with libc's conventions (-1 and errno), for the one case where libc's
/// own `open` is unavailable: a call re-entered while `dlsym` resolves it.
///
/// # Safety
/// `path` must be a NUL-terminated string (or invalid in the way the caller's own call was:
/// the kernel then returns EFAULT).
pub unsafe fn openat_fallback(
    dirfd: c_int,
    path: *const libc::c_char,
    flags: c_int,
    mode: u32,
) -> c_int {
    // The kernel validates path itself.
    match sc!(libc::SYS_openat, dirfd as isize, path, flags as isize, mode) {
        Ok(fd) => fd as c_int,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}
