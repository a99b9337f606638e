//! The hook socket (`<runtime>/oknek.sock`): where the preload shim and `oknek run` report and ask.
//!
//! Any uid may connect, so nothing in a frame is trusted about its sender: `SO_PASSCRED` makes
//! the kernel attach the sender's pid, uid and gid to every message. A client can report an
//! action, ask for a verdict about it, or hand over a seccomp listener for its own children;
//! it cannot command the daemon. Garbage is dropped and counted; a client that floods is cut off.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use oknek_protocol::MAX_FRAME;

use crate::sys::PeerCred;

/// At most this many connections at once, and per uid.
const MAX_CONNECTIONS: usize = 4096;
const MAX_CONNECTIONS_PER_UID: usize = 512;
/// At most this many registered seccomp listeners (`oknek run` trees) at once, and per uid of
/// the sender. Anyone can make a genuine listener for a filter on itself; each one holds two
/// fds in the daemon for as long as the sender lives.
const MAX_LISTENERS: usize = 1024;
const MAX_LISTENERS_PER_UID: usize = 128;
/// Frames read from one connection per wake-up before others get their turn.
pub const FRAMES_PER_TURN: usize = 64;

/// A frame as received: its bytes, its sender according to the kernel, and any fds sent along.
/// Fds nobody took out of `fds` are closed on the closer thread when this is dropped.
pub struct Received {
    pub len: usize,
    pub cred: PeerCred,
    pub fds: Vec<OwnedFd>,
}

impl Drop for Received {
    fn drop(&mut self) {
        for fd in self.fds.drain(..) {
            crate::closer::close_later(fd);
        }
    }
}

pub struct HookListener {
    fd: OwnedFd,
}

impl HookListener {
    /// Binds the socket world-connectable (mode 0666), replacing a stale one.
    pub fn bind(path: &Path) -> io::Result<HookListener> {
        let _ = std::fs::remove_file(path);
        // SAFETY: no pointers.
        let fd = unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by the kernel.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let addr = sockaddr_un(path)?;
        set_passcred(fd.as_raw_fd())?;
        // SAFETY: addr is a valid sockaddr_un of the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
        // SAFETY: no pointers.
        if unsafe { libc::listen(fd.as_raw_fd(), 512) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(HookListener { fd })
    }

    /// Accepts one pending connection, `None` when there is none.
    pub fn accept(&self) -> io::Result<Option<HookConn>> {
        // SAFETY: null address pointers are allowed by accept4.
        let fd = unsafe {
            libc::accept4(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(err),
            };
        }
        // SAFETY: fd was just returned by the kernel.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The accepted socket inherits SO_PASSCRED on current kernels; set it anyway.
        set_passcred(fd.as_raw_fd())?;
        let peer = crate::sys::peer_cred(fd.as_raw_fd())?;
        Ok(Some(HookConn { fd, peer }))
    }
}

impl AsRawFd for HookListener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn set_passcred(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the option value is a valid c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn sockaddr_un(path: &Path) -> io::Result<libc::sockaddr_un> {
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path {} is longer than {} bytes",
                path.display(),
                addr.sun_path.len() - 1
            ),
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(addr)
}

/// One client connection.
pub struct HookConn {
    fd: OwnedFd,
    /// Who connected (used for per-uid limits; each frame carries its own credentials).
    pub peer: PeerCred,
}

impl HookConn {
    /// Receives one frame into `buf`. `Ok(None)`: nothing pending. `Err` with `UnexpectedEof`:
    /// the client closed.
    pub fn recv(&self, buf: &mut [u8; MAX_FRAME]) -> io::Result<Option<Received>> {
        // Room for credentials and the most fds one message can carry (SCM_MAX_FD = 253): if the
        // buffer were smaller the kernel would close the excess inside recvmsg, on this thread,
        // and a lingering socket among them would stall the loop.
        let mut cmsg = [0u64; 160];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; the pointers set below stay valid for the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        // `as _`: the field is usize with glibc, u32 with musl.
        msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
        // SAFETY: msg describes valid buffers.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(err),
            };
        }
        let mut cred = None;
        let mut fds = Vec::new();
        // SAFETY: walking the control buffer the kernel filled, with the CMSG_* helpers.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let data = libc::CMSG_DATA(c);
                let data_len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                match ((*c).cmsg_level, (*c).cmsg_type) {
                    (libc::SOL_SOCKET, libc::SCM_CREDENTIALS)
                        if data_len >= std::mem::size_of::<libc::ucred>() =>
                    {
                        let u = std::ptr::read_unaligned(data.cast::<libc::ucred>());
                        cred = Some(PeerCred {
                            pid: u.pid as u32,
                            uid: u.uid,
                            gid: u.gid,
                        });
                    }
                    (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                        let count = data_len / std::mem::size_of::<RawFd>();
                        for i in 0..count {
                            let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                            // Owning every received fd means unexpected ones get closed.
                            fds.push(OwnedFd::from_raw_fd(fd));
                        }
                    }
                    _ => {}
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if n == 0 && fds.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let truncated = msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0;
        if truncated {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "oversized frame",
            ));
        }
        Ok(Some(Received {
            len: n as usize,
            cred: cred.unwrap_or(self.peer),
            fds,
        }))
    }

    /// Sends a reply. A client that does not read its replies loses them, never blocks us.
    pub fn send(&self, bytes: &[u8]) -> io::Result<()> {
        // SAFETY: bytes is valid for its length.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

impl HookConn {
    /// The connection's fd, to close it off the loop thread (see [`crate::closer`]).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsRawFd for HookConn {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// True when `fd` is a seccomp user-notification listener. A client handing over anything else
/// as one (an eventfd, a pipe, a socket) would have it polled and kept for good.
pub fn is_seccomp_listener(fd: &OwnedFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|link| link.as_os_str() == "anon_inode:seccomp notify")
}

/// Connection limits, so one uid cannot exhaust the daemon's fds.
#[derive(Debug)]
pub struct ConnLimits {
    per_uid: HashMap<u32, usize>,
    total: usize,
    max_total: usize,
    max_per_uid: usize,
}

impl Default for ConnLimits {
    /// The limits of hook connections.
    fn default() -> ConnLimits {
        ConnLimits::new(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_UID)
    }
}

impl ConnLimits {
    pub fn new(max_total: usize, max_per_uid: usize) -> ConnLimits {
        ConnLimits {
            per_uid: HashMap::new(),
            total: 0,
            max_total,
            max_per_uid,
        }
    }

    /// The limits of registered seccomp listeners.
    pub fn listeners() -> ConnLimits {
        ConnLimits::new(MAX_LISTENERS, MAX_LISTENERS_PER_UID)
    }

    pub fn admit(&mut self, uid: u32) -> bool {
        let n = self.per_uid.entry(uid).or_default();
        if self.total >= self.max_total || *n >= self.max_per_uid {
            return false;
        }
        *n += 1;
        self.total += 1;
        true
    }

    pub fn release(&mut self, uid: u32) {
        if let Some(n) = self.per_uid.get_mut(&uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_uid.remove(&uid);
            }
            self.total = self.total.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_uid() {
        let mut l = ConnLimits::default();
        for _ in 0..MAX_CONNECTIONS_PER_UID {
            assert!(l.admit(1000));
        }
        assert!(!l.admit(1000));
        assert!(l.admit(1001));
        l.release(1000);
        assert!(l.admit(1000));
    }

    #[test]
    fn only_seccomp_listeners_pass_as_listeners() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!is_seccomp_listener(&OwnedFd::from(a)));
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(!is_seccomp_listener(&OwnedFd::from(null)));
        // SAFETY: no pointers.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(efd >= 0);
        // SAFETY: the kernel just returned it.
        assert!(!is_seccomp_listener(&unsafe { OwnedFd::from_raw_fd(efd) }));
    }

    #[test]
    fn frames_carry_kernel_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oknek.sock");
        let listener = HookListener::bind(&path).unwrap();
        let client =
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
        assert!(client >= 0);
        let client = unsafe { OwnedFd::from_raw_fd(client) };
        let addr = sockaddr_un(&path).unwrap();
        let rc = unsafe {
            libc::connect(
                client.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        let conn = listener.accept().unwrap().expect("pending connection");
        let sent = unsafe { libc::send(client.as_raw_fd(), b"hello".as_ptr().cast(), 5, 0) };
        assert_eq!(sent, 5);
        let mut buf = [0u8; MAX_FRAME];
        let got = conn.recv(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[..got.len], b"hello");
        assert_eq!(got.cred.pid, std::process::id());
        drop(client);
        assert_eq!(
            conn.recv(&mut buf).err().map(|e| e.kind()),
            Some(io::ErrorKind::UnexpectedEof)
        );
    }
}
