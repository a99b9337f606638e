//! Overhead of the seccomp tier, p50/p99 under a user-notify filter answered by
//! `SeccompListener` against the same loop run bare, printed as ratios and added time:
//!
//! - open()+close() of an allowed file (open emulated, fd injected);
//! - send() of 64 bytes on a loopback TCP connection to a peer that is not a model provider
//!   (emulated without a verdict: the added cost of every send of an agent under `oknek run`);
//! - send() of a whole small HTTP request naming a model, to a plaintext provider (read, the
//!   model handed to the decider, then emulated; the decider answers at once, so the rule
//!   engine's own time is not included).
//!
//! Root only (the daemon side acts as the caller). `cargo bench -p oknekd --bench seccomp`

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Instant;

use oknek_event::SockAddr;
use oknekd::tiers::seccomp::{Answer, Decider, SeccompListener, SyscallRequest};

const N: usize = 5000;
const PATH: &std::ffi::CStr = c"/etc/hostname";
const NR_OPEN: u32 = 2;
const NR_SENDTO: u32 = 44;
const NR_OPENAT: u32 = 257;
const SMALL_SEND: [u8; 64] = [b'x'; 64];
const REQUEST: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n\
    Content-Type: application/json\r\nContent-Length: 33\r\n\r\n\
    {\"model\":\"llama3.2\",\"messages\":[]}";

/// The connected socket the measured sends go to (set before the fork).
static SOCKET: AtomicI32 = AtomicI32::new(-1);

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

/// send() of `payload` N times on [`SOCKET`]; durations in ns. Allocation-free.
fn measure_send(out: &mut [u64], payload: &[u8]) {
    let fd = SOCKET.load(Ordering::Relaxed);
    for slot in out.iter_mut() {
        let t0 = now_ns();
        // SAFETY: payload is a readable buffer of its length.
        unsafe { libc::send(fd, payload.as_ptr().cast(), payload.len(), 0) };
        *slot = now_ns() - t0;
    }
}

fn measure_small_send(out: &mut [u64]) {
    measure_send(out, &SMALL_SEND);
}

fn measure_request_send(out: &mut [u64]) {
    measure_send(out, REQUEST);
}

/// A loopback TCP connection whose far end a thread drains until it closes.
fn sink_connection() -> RawFd {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while matches!(server.read(&mut buf), Ok(n) if n > 0) {}
    });
    client.into_raw_fd()
}

/// Allows every call; no peer is a model provider.
struct AllowAll;

impl Decider for AllowAll {
    fn decide(&mut self, _: &SyscallRequest) -> Answer {
        Answer::Allow
    }
}

/// Says every peer is a plaintext model provider and allows every model.
struct AllProviders {
    models: usize,
}

impl Decider for AllProviders {
    fn decide(&mut self, _: &SyscallRequest) -> Answer {
        Answer::Allow
    }
    fn reads_models_sent_to(&mut self, _: &SockAddr) -> bool {
        true
    }
    fn decide_model(&mut self, _: &SyscallRequest, _: &str) -> Answer {
        self.models += 1;
        Answer::Allow
    }
}

fn percentiles(mut v: Vec<u64>) -> (f64, f64) {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)] as f64 / 1000.0;
    (at(0.50), at(0.99))
}

/// Runs `measure` in a forked child under a filter notifying `notified`, answered by
/// `decider`; the child's durations.
fn under_seccomp(notified: &[u32], measure: fn(&mut [u64]), decider: &mut dyn Decider) -> Vec<u64> {
    let stmt = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    // arch check, notify the listed calls, allow the rest.
    let mut prog = vec![
        stmt(0x20, 4),
        libc::sock_filter {
            code: 0x15,
            jt: 1,
            jf: 0,
            k: 0xc000_003e,
        },
        stmt(0x06, 0x8000_0000),
        stmt(0x20, 0),
    ];
    for &nr in notified {
        prog.push(libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: nr,
        });
        prog.push(stmt(0x06, 0x7fc0_0000));
    }
    prog.push(stmt(0x06, 0x7fff_0000));
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
        listener.drain_with(decider).unwrap();
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
    let mut allow_all = AllowAll;
    compare(
        &format!("open()+close() of {}", PATH.to_string_lossy()),
        measure,
        &[NR_OPEN, NR_OPENAT],
        &mut allow_all,
    );
    SOCKET.store(sink_connection(), Ordering::Relaxed);
    compare(
        "send() of 64 B on loopback TCP to a peer that is not a model provider",
        measure_small_send,
        &[NR_SENDTO],
        &mut allow_all,
    );
    SOCKET.store(sink_connection(), Ordering::Relaxed);
    let mut providers = AllProviders { models: 0 };
    compare(
        &format!(
            "send() of a {}-byte HTTP request naming a model, to a plaintext provider",
            REQUEST.len()
        ),
        measure_request_send,
        &[NR_SENDTO],
        &mut providers,
    );
    assert_eq!(
        providers.models, N,
        "every request's model reached the decider"
    );
    println!("({:.1} s)", started.elapsed().as_secs_f64());
}

fn compare(what: &str, measure: fn(&mut [u64]), notified: &[u32], decider: &mut dyn Decider) {
    let mut bare = vec![0u64; N];
    measure(&mut bare[..N / 10]); // warm-up
    measure(&mut bare);
    let (b50, b99) = percentiles(bare);
    let (s50, s99) = percentiles(under_seccomp(notified, measure, decider));
    println!("{what} ({N} calls each)");
    println!("  bare                 p50 {b50:8.1} µs   p99 {b99:8.1} µs");
    println!("  seccomp tier (emul.) p50 {s50:8.1} µs   p99 {s99:8.1} µs");
    println!(
        "  added                p50 {:8.1} µs   p99 {:8.1} µs   (ratio p50 {:.1}x, p99 {:.1}x)",
        s50 - b50,
        s99 - b99,
        s50 / b50,
        s99 / b99,
    );
}
