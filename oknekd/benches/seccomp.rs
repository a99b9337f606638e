//! Overhead of the seccomp tier on open()+close() of an allowed file: p50/p99 under a
//! user-notify filter answered by `SeccompListener` (open emulated, fd injected) against the
//! same loop run bare, printed as ratios. Root only (the daemon side acts as the caller).
//!
//! `cargo bench -p oknekd --bench seccomp`

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use oknekd::tiers::seccomp::{Answer, SeccompListener};

const N: usize = 5000;
const PATH: &std::ffi::CStr = c"/etc/hostname";

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// open+close N times; durations in ns. Allocation-free (runs in a forked child).
fn measure(out: &mut [u64]) {
    for slot in out.iter_mut() {
        let t0 = now_ns();
        // SAFETY: PATH is NUL-terminated.
        let fd = unsafe { libc::open(PATH.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: closing the fd just opened.
            unsafe { libc::close(fd) };
        }
        *slot = now_ns() - t0;
    }
}

fn percentiles(mut v: Vec<u64>) -> (f64, f64) {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)] as f64 / 1000.0;
    (at(0.50), at(0.99))
}

fn under_seccomp() -> Vec<u64> {
    // arch check, notify open/openat, allow the rest.
    let mut prog = [
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 4,
        },
        libc::sock_filter {
            code: 0x15,
            jt: 1,
            jf: 0,
            k: 0xc000_003e,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x8000_0000,
        },
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: 0x15,
            jt: 2,
            jf: 0,
            k: 2,
        },
        libc::sock_filter {
            code: 0x15,
            jt: 1,
            jf: 0,
            k: 257,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x7fff_0000,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x7fc0_0000,
        },
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    let mut times = vec![0u64; N];
    let mut fds = [0; 2];
    // SAFETY: fds has room for two fds.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child runs allocation-free code and exits with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: raw syscalls in the child.
        unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            let l = libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &raw const fprog,
            ) as i32;
            libc::write(fds[1], (&raw const l).cast(), 4);
            measure(&mut times);
            libc::write(fds[1], times.as_ptr().cast(), N * 8);
            libc::_exit(0);
        }
    }
    // SAFETY: closing our write end.
    unsafe { libc::close(fds[1]) };
    // SAFETY: the read end is ours.
    let rd = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    let mut lfd = -1i32;
    // SAFETY: 4 bytes into a local.
    unsafe { libc::read(rd.as_raw_fd(), (&raw mut lfd).cast(), 4) };
    // SAFETY: no pointers.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    // SAFETY: no pointers.
    let l = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, lfd, 0) } as i32;
    assert!(l >= 0, "pidfd_getfd failed");
    // SAFETY: the kernel just returned it.
    let mut listener =
        SeccompListener::new(unsafe { OwnedFd::from_raw_fd(l) }, "bench".into()).unwrap();
    let mut bytes = Vec::with_capacity(N * 8);
    let mut buf = [0u8; 65536];
    while bytes.len() < N * 8 {
        let mut p = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: rd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: a valid pollfd array.
        unsafe { libc::poll(p.as_mut_ptr(), 2, 1000) };
        listener.drain(&mut |_| Answer::Allow).unwrap();
        if p[1].revents != 0 {
            // SAFETY: reads into a local buffer.
            let n = unsafe { libc::read(rd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            bytes.extend_from_slice(&buf[..n as usize]);
        }
    }
    let mut status = 0;
    // SAFETY: status is valid.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}

fn main() {
    // SAFETY: no pointers.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root (the daemon side switches to the caller's credentials)");
        return;
    }
    let started = Instant::now();
    let mut bare = vec![0u64; N];
    measure(&mut bare[..N / 10]); // warm-up
    measure(&mut bare);
    let (b50, b99) = percentiles(bare);
    let (s50, s99) = percentiles(under_seccomp());
    println!(
        "open()+close() of {} ({N} calls each)",
        PATH.to_string_lossy()
    );
    println!("  bare                 p50 {b50:8.1} µs   p99 {b99:8.1} µs");
    println!("  seccomp tier (emul.) p50 {s50:8.1} µs   p99 {s99:8.1} µs");
    println!(
        "  ratio                p50 {:8.1}x    p99 {:8.1}x   ({:.1} s)",
        s50 / b50,
        s99 / b99,
        started.elapsed().as_secs_f64()
    );
}
