//! Test support: a fake oknekd on a temporary runtime directory, the shim's location, and a
//! runner with a hard time limit. Shared by tests/preload.rs and benches/preload.rs.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use oknek_protocol::table::TableBuilder;
use oknek_protocol::{FLAG_WANT_VERDICT, Reply, Request, decode};

/// `liboknek_preload.so` of the profile these tests were built with.
///
/// `cargo test` does not build a cdylib for integration tests (nothing links it), so the first
/// call runs `cargo build -p oknek-preload` with the same target directory and profile — a
/// no-op when the library is up to date — and returns `target/<profile>/liboknek_preload.so`.
/// Cargo releases its build lock before it runs tests, so the nested build does not wait.
pub fn shim() -> PathBuf {
    static SO: OnceLock<PathBuf> = OnceLock::new();
    SO.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/<test>-<hash>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable inside target/<profile>/deps")
            .to_path_buf();
        let so = profile_dir.join("liboknek_preload.so");
        {
            let target_dir = profile_dir.parent().expect("target dir");
            let profile = profile_dir
                .file_name()
                .and_then(OsStr::to_str)
                .unwrap_or("debug");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-p", "oknek-preload"])
                .env("CARGO_TARGET_DIR", target_dir)
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            match profile {
                "debug" => {}
                "release" => {
                    cmd.arg("--release");
                }
                p => {
                    cmd.args(["--profile", p]);
                }
            }
            let st = cmd.status().expect("run cargo build -p oknek-preload");
            assert!(st.success(), "cargo build -p oknek-preload failed");
        }
        assert!(so.exists(), "{} not found", so.display());
        so
    })
    .clone()
}

/// Tests rely on the environment overrides, which the shim ignores on a host where oknek is
/// installed. Returns the reason to skip, if any.
pub fn skip_reason() -> Option<String> {
    for p in ["/etc/oknek/preload.conf", "/run/oknek/preload.table"] {
        if Path::new(p).exists() {
            return Some(format!(
                "{p} exists: oknek is installed here, the shim ignores the test environment"
            ));
        }
    }
    None
}

#[allow(unused_macros)]
macro_rules! skip_if_installed {
    () => {
        if let Some(why) = support::skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use skip_if_installed;

/// One frame as the fake daemon received it.
#[derive(Debug, Clone)]
pub struct Frame {
    /// From SCM_CREDENTIALS: the kernel's word, not the frame's.
    pub pid: i32,
    pub uid: u32,
    pub seq: u32,
    pub want_verdict: bool,
    pub req: Req,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Req {
    Exec {
        path: Vec<u8>,
        argv: Vec<Vec<u8>>,
    },
    Open {
        dirfd: i32,
        flags: u32,
        path: Vec<u8>,
    },
    Connect {
        sockaddr: Vec<u8>,
    },
    Send {
        bytes: u64,
        sockaddr: Vec<u8>,
    },
    Watch {
        mask: u32,
        path: Vec<u8>,
    },
    Other,
}

impl Frame {
    pub fn path(&self) -> Option<&[u8]> {
        match &self.req {
            Req::Exec { path, .. } | Req::Open { path, .. } | Req::Watch { path, .. } => Some(path),
            _ => None,
        }
    }

    /// The destination port of a connect or send frame.
    pub fn port(&self) -> Option<u16> {
        let sa = match &self.req {
            Req::Connect { sockaddr } | Req::Send { sockaddr, .. } => sockaddr,
            _ => return None,
        };
        (sa.len() >= 4).then(|| u16::from_be_bytes([sa[2], sa[3]]))
    }
}

/// How the fake daemon answers questions.
pub enum Behaviour {
    /// errno for each question (0 = allow).
    Judge(Box<dyn Fn(&Frame) -> i32 + Send + Sync>),
    /// Reads and never answers.
    Silent,
    /// Answers every question with bytes that are not a reply.
    Garbage,
}

pub struct FakeDaemon {
    pub runtime: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    frames: Arc<Mutex<Vec<Frame>>>,
}

fn check(rc: libc::c_int, what: &str) {
    assert!(rc >= 0, "{what}: {}", std::io::Error::last_os_error());
}

fn set_passcred(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and an int option value.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(rc, "SO_PASSCRED");
}

fn bind_seqpacket(path: &Path) -> OwnedFd {
    // SAFETY: plain socket creation.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    check(fd, "socket");
    // SAFETY: fd was just created.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_passcred(fd.as_raw_fd());
    // SAFETY: zeroed sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len(), "socket path too long");
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: addr is a valid sockaddr_un.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    check(rc, "bind");
    // SAFETY: a bound socket.
    check(unsafe { libc::listen(fd.as_raw_fd(), 128) }, "listen");
    fd
}

/// Reads one message with its SCM_CREDENTIALS; `None` at EOF or on error, `Some(None)` when
/// nothing is pending.
fn recv_with_creds(fd: RawFd, buf: &mut [u8]) -> Option<Option<(usize, libc::ucred)>> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 16];
    // SAFETY: zeroed msghdr is valid; fields set below point into live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&cbuf);
    // SAFETY: msg describes valid buffers.
    let n = unsafe { libc::recvmsg(fd, &raw mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = std::io::Error::last_os_error().raw_os_error();
        return if e == Some(libc::EAGAIN) {
            Some(None)
        } else {
            None
        };
    }
    if n == 0 {
        return None;
    }
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    // SAFETY: walking the control messages the kernel filled in.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                cred = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::ucred>());
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    Some(Some((n as usize, cred)))
}

fn to_frame(bytes: &[u8], cred: libc::ucred) -> Option<Frame> {
    let (h, r) = decode(bytes).ok()?;
    let req = match r {
        Request::Exec { path, argv } => Req::Exec {
            path: path.to_vec(),
            argv: argv.iter().map(<[u8]>::to_vec).collect(),
        },
        Request::Open {
            dirfd, flags, path, ..
        } => Req::Open {
            dirfd,
            flags,
            path: path.to_vec(),
        },
        Request::Connect { sockaddr } => Req::Connect {
            sockaddr: sockaddr.to_vec(),
        },
        Request::Send { bytes, sockaddr } => Req::Send {
            bytes,
            sockaddr: sockaddr.to_vec(),
        },
        Request::Watch { mask, path } => Req::Watch {
            mask,
            path: path.to_vec(),
        },
        Request::RegisterSeccomp { .. } => Req::Other,
    };
    Some(Frame {
        pid: cred.pid,
        uid: cred.uid,
        seq: h.seq,
        want_verdict: h.flags & FLAG_WANT_VERDICT != 0,
        req,
    })
}

impl FakeDaemon {
    /// A runtime directory with no daemon (and no socket) at all.
    pub fn absent() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("okrt")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let p = dir.path().to_path_buf();
        (dir, p)
    }

    /// Starts a daemon answering with `behaviour` in the runtime directory `runtime`.
    pub fn start(runtime: &Path, behaviour: Behaviour) -> FakeDaemon {
        let listener = bind_seqpacket(&runtime.join("oknek.sock"));
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(Mutex::new(Vec::new()));
        let (stop2, frames2) = (stop.clone(), frames.clone());
        let thread = std::thread::spawn(move || serve(listener, behaviour, stop2, frames2));
        FakeDaemon {
            runtime: runtime.to_path_buf(),
            stop,
            thread: Some(thread),
            frames,
        }
    }

    pub fn frames(&self) -> Vec<Frame> {
        self.frames.lock().expect("frames").clone()
    }

    pub fn clear(&self) {
        self.frames.lock().expect("frames").clear();
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    listener: OwnedFd,
    behaviour: Behaviour,
    stop: Arc<AtomicBool>,
    frames: Arc<Mutex<Vec<Frame>>>,
) {
    let mut conns: Vec<OwnedFd> = Vec::new();
    let mut buf = vec![0u8; 16384];
    while !stop.load(Ordering::SeqCst) {
        let mut fds: Vec<libc::pollfd> = std::iter::once(listener.as_raw_fd())
            .chain(conns.iter().map(AsRawFd::as_raw_fd))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: fds is a valid array of pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
        if n <= 0 {
            continue;
        }
        if fds[0].revents != 0 {
            loop {
                // SAFETY: accepting on our listener.
                let fd = unsafe {
                    libc::accept4(
                        listener.as_raw_fd(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    )
                };
                if fd < 0 {
                    break;
                }
                set_passcred(fd);
                // SAFETY: fd was just accepted.
                conns.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        let mut closed = Vec::new();
        for (i, p) in fds.iter().enumerate().skip(1) {
            if p.revents == 0 {
                continue;
            }
            let fd = p.fd;
            loop {
                match recv_with_creds(fd, &mut buf) {
                    None => {
                        closed.push(i - 1);
                        break;
                    }
                    Some(None) => break,
                    Some(Some((len, cred))) => {
                        let Some(f) = to_frame(&buf[..len], cred) else {
                            continue;
                        };
                        let want = f.want_verdict;
                        let (op, seq) = (u16::from_le_bytes([buf[6], buf[7]]), f.seq);
                        let answer = match &behaviour {
                            Behaviour::Judge(judge) if want => Some(
                                Reply {
                                    op,
                                    seq,
                                    errno: judge(&f),
                                }
                                .encode()
                                .to_vec(),
                            ),
                            Behaviour::Garbage if want => Some(b"not a reply, not at all".to_vec()),
                            _ => None,
                        };
                        frames.lock().expect("frames").push(f);
                        if let Some(a) = answer {
                            // SAFETY: sending our buffer on a connected socket.
                            unsafe {
                                libc::send(fd, a.as_ptr().cast(), a.len(), libc::MSG_NOSIGNAL)
                            };
                        }
                    }
                }
            }
        }
        for i in closed.into_iter().rev() {
            conns.remove(i);
        }
    }
}

/// Publishes `b` as the runtime directory's hook table.
pub fn publish(runtime: &Path, b: &TableBuilder) {
    b.publish(runtime).expect("publish table");
}

/// A command run under the shim with the test environment.
pub fn shimmed(runtime: &Path, program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("LD_PRELOAD", shim())
        .env("OKNEK_RUNTIME_DIR", runtime)
        .env_remove("OKNEK_PRELOAD_FAIL_MODE")
        .env_remove("OKNEK_PRELOAD_TIMEOUT_MS");
    c
}

/// Runs `cmd` to completion, killing it after `limit` (then the test fails: the shim hung).
pub fn run_limited(cmd: &mut Command, limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {limit:?}: the shim hung");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    let output = Output {
        status,
        stdout: t_out.join().expect("stdout thread"),
        stderr: t_err.join().expect("stderr thread"),
    };
    (output, elapsed)
}

pub fn run(cmd: &mut Command) -> Output {
    run_limited(cmd, Duration::from_secs(20)).0
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
