//! Who is calling: the process at the other end of a client connection, from the kernel.
//!
//! On the unix socket the kernel says it directly (`SO_PEERCRED`). On loopback TCP there is no
//! such option: the client's socket is looked up by its addresses in the kernel's socket table
//! (one exact `NETLINK_SOCK_DIAG` request; /proc/net/tcp{,6} where netlink is unavailable), which
//! gives its inode and owner uid, and the inode is found among processes' open files. Nothing
//! the client sends (headers, API keys) takes part.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub pid: u32,
    pub uid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("SO_PEERCRED: {0}")]
    PeerCred(io::Error),
    #[error("reading the socket table: {0}")]
    Table(io::Error),
    #[error("no established TCP socket {peer} -> {local} in this host's socket table")]
    NoSocket { peer: SocketAddr, local: SocketAddr },
    #[error("no process holds socket inode {inode} (the caller exited or passed it on)")]
    NoProcess { inode: u64 },
}

pub fn unix_peer(stream: &UnixStream) -> Result<Caller, PeerError> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writing and sized for SO_PEERCRED.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(PeerError::PeerCred(io::Error::last_os_error()));
    }
    Ok(Caller {
        pid: cred.pid as u32,
        uid: cred.uid,
    })
}

/// The process that owns the client end (`peer`) of a loopback connection to `local`.
pub fn tcp_peer(local: SocketAddr, peer: SocketAddr) -> Result<Caller, PeerError> {
    let (uid, inode) = socket_row(local, peer)?;
    let pid = owner_of_inode(inode, uid).ok_or(PeerError::NoProcess { inode })?;
    Ok(Caller { pid, uid })
}

/// (uid, inode) of the client's socket: one exact lookup through NETLINK_SOCK_DIAG, or, where
/// that is unavailable, a search of /proc/net/tcp{,6} (slow with many sockets in the table).
fn socket_row(local: SocketAddr, peer: SocketAddr) -> Result<(u32, u64), PeerError> {
    let (local, peer) = (canonical(local), canonical(peer));
    if let Some(found) = sock_diag_lookup(local, peer) {
        return Ok(found);
    }
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(PeerError::Table(e)),
        };
        if let Some(found) = find_row(&text, local, peer) {
            return Ok(found);
        }
    }
    Err(PeerError::NoSocket { peer, local })
}

/// Asks the kernel for the one TCP socket whose source is `peer` and destination `local` (a
/// non-dump `SOCK_DIAG_BY_FAMILY` request is an exact 4-tuple lookup). A client socket of
/// either family is tried: AF_INET, then AF_INET6 with IPv4-mapped addresses.
fn sock_diag_lookup(local: SocketAddr, peer: SocketAddr) -> Option<(u32, u64)> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLMSG_ERROR: u16 = 2;
    let families: Vec<(u8, [u8; 16], [u8; 16])> = match (peer.ip(), local.ip()) {
        (IpAddr::V4(p), IpAddr::V4(l)) => {
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src[..4].copy_from_slice(&p.octets());
            dst[..4].copy_from_slice(&l.octets());
            vec![
                (libc::AF_INET as u8, src, dst),
                (
                    libc::AF_INET6 as u8,
                    p.to_ipv6_mapped().octets(),
                    l.to_ipv6_mapped().octets(),
                ),
            ]
        }
        (IpAddr::V6(p), IpAddr::V6(l)) => vec![(libc::AF_INET6 as u8, p.octets(), l.octets())],
        _ => return None,
    };
    // SAFETY: socket(2) with constant arguments; the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    for (family, src, dst) in families {
        let mut req = Vec::with_capacity(72);
        req.extend_from_slice(&72u32.to_ne_bytes()); // nlmsg_len
        req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        req.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        req.extend_from_slice(&1u32.to_ne_bytes()); // seq
        req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        req.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
        req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
        req.extend_from_slice(&peer.port().to_be_bytes());
        req.extend_from_slice(&local.port().to_be_bytes());
        req.extend_from_slice(&src);
        req.extend_from_slice(&dst);
        req.extend_from_slice(&0u32.to_ne_bytes()); // interface: any
        req.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
        // SAFETY: `req` is valid for reading its length; the fd is a netlink socket.
        let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if sent != req.len() as isize {
            return None;
        }
        let mut buf = [0u8; 512];
        // SAFETY: `buf` is valid for writing its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 16 {
            return None;
        }
        let msg_type = u16::from_ne_bytes([buf[4], buf[5]]);
        if msg_type == NLMSG_ERROR || msg_type != SOCK_DIAG_BY_FAMILY || n < 16 + 72 {
            continue;
        }
        let field = |at: usize| u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or([0; 4]));
        // inet_diag_msg after the 16-byte header: uid at 64, inode at 68.
        let (uid, inode) = (field(16 + 64), field(16 + 68));
        if inode != 0 {
            return Some((uid, u64::from(inode)));
        }
    }
    None
}

/// Finds the established row `client_local == peer`, `client_remote == local`: (uid, inode).
fn find_row(table: &str, local: SocketAddr, peer: SocketAddr) -> Option<(u32, u64)> {
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 10 || cols[3] != "01" {
            continue;
        }
        let (Some(row_local), Some(row_remote)) = (parse_addr(cols[1]), parse_addr(cols[2])) else {
            continue;
        };
        if canonical(row_local) == peer && canonical(row_remote) == local {
            let uid = cols[7].parse().ok()?;
            let inode = cols[9].parse().ok()?;
            if inode != 0 {
                return Some((uid, inode));
            }
        }
    }
    None
}

/// `0100007F:1F90` (v4) or 32 hex digits `:port` (v6): the kernel prints each 32-bit word of
/// the address in host byte order.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// IPv4-mapped IPv6 addresses as IPv4, so a dual-stack client matches either table.
fn canonical(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// Callers seen last: a process that connected before is the likeliest to connect again, and
/// checking its open files first spares a walk over every process.
static RECENT: Mutex<Vec<u32>> = Mutex::new(Vec::new());
const RECENT_MAX: usize = 32;

/// The pid of a process with `socket:[inode]` among its open files: recent callers first, then
/// processes of the socket's owner uid, newest first (clients are usually younger than the
/// long-running services), then everyone else.
fn owner_of_inode(inode: u64, uid: u32) -> Option<u32> {
    let target = format!("socket:[{inode}]");
    let me = std::process::id();
    let holds = |pid: u32| -> bool {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()))
    };
    let recent: Vec<u32> = RECENT.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let found = recent
        .iter()
        .rev()
        .copied()
        .find(|&pid| holds(pid))
        .or_else(|| {
            let mut pids: Vec<(bool, std::cmp::Reverse<u32>)> = std::fs::read_dir("/proc")
                .ok()?
                .filter_map(|e| {
                    let e = e.ok()?;
                    let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                    let owner = e.metadata().ok().map(|m| m.uid());
                    Some((owner != Some(uid), std::cmp::Reverse(pid)))
                })
                .collect();
            pids.sort_unstable();
            pids.into_iter()
                .map(|(_, std::cmp::Reverse(pid))| pid)
                .filter(|&pid| pid != me && !recent.contains(&pid))
                .find(|&pid| holds(pid))
        })?;
    let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
    recent.retain(|&p| p != found);
    recent.push(found);
    if recent.len() > RECENT_MAX {
        recent.remove(0);
    }
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_table_rows_parse() {
        let v4 = parse_addr("0100007F:1F90").unwrap();
        assert_eq!(v4, "127.0.0.1:8080".parse().unwrap());
        let v6 = parse_addr("0000000000000000FFFF00000100007F:0050").unwrap();
        assert_eq!(canonical(v6), "127.0.0.1:80".parse().unwrap());
        let loop6 = parse_addr("00000000000000000000000001000000:0050").unwrap();
        assert_eq!(loop6, "[::1]:80".parse().unwrap());
    }

    #[test]
    fn finds_the_client_of_a_loopback_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(local).unwrap();
        let (_server_side, peer) = listener.accept().unwrap();
        // The client is this very process: the gateway skips itself, so look it up directly.
        let (uid, inode) = socket_row(local, peer).unwrap();
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        assert_eq!(
            find_row(&table, local, peer),
            Some((uid, inode)),
            "netlink and /proc agree"
        );
        match sock_diag_lookup(local, peer) {
            Some(found) => assert_eq!(found, (uid, inode)),
            None => eprintln!("note: NETLINK_SOCK_DIAG unavailable here; /proc/net/tcp was used"),
        }
        // SAFETY: getuid has no preconditions.
        assert_eq!(uid, unsafe { libc::getuid() });
        let fd = client.as_raw_fd();
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        assert_eq!(link.to_str().unwrap(), format!("socket:[{inode}]"));
    }

    #[test]
    fn finds_the_pid_of_another_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let script = format!(
            "import socket,time; s=socket.create_connection(('127.0.0.1',{})); time.sleep(5)",
            local.port()
        );
        let Ok(mut child) = std::process::Command::new("python3")
            .args(["-c", &script])
            .spawn()
        else {
            eprintln!("skipped: python3 is not installed");
            return;
        };
        let (_s, peer) = listener.accept().unwrap();
        let caller = tcp_peer(local, peer).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(caller.pid, child.id());
    }

    #[test]
    fn unix_peer_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(unix_peer(&a).unwrap().pid, std::process::id());
    }
}
