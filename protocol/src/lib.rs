//! Frames on oknekd's hook socket (`/run/oknek/oknek.sock`).
//!
//! Hook clients — the LD_PRELOAD shim and `oknek run` — report what an agent is about to do and
//! ask for verdicts. The socket is `SOCK_SEQPACKET`: one frame per message, boundaries kept by the
//! kernel. Any uid may connect, so the daemon trusts nothing in a frame about *who* sent it: the
//! sender's pid, uid and gid come from the kernel (`SO_PASSCRED` credentials on every message).
//! A client can only report and ask; no frame commands the daemon.
//!
//! Everything is little-endian and fixed-layout so the shim can encode a frame into a stack buffer
//! without allocating (it runs inside arbitrary programs, possibly between `vfork` and `exec`).
//!
//! ```text
//! request  = header(16) payload
//! header   = magic:u32 "OKNK" | version:u16 = 1 | op:u16 | seq:u32 | flags:u32
//! exec     = argc:u32 | path NUL | argv[0] NUL … argv[argc-1] NUL
//! open     = dirfd:i32 | flags:u32 | mode:u32 | path NUL
//! connect  = addrlen:u32 | sockaddr[addrlen]
//! send     = bytes:u64 | addrlen:u32 | sockaddr[addrlen]      (addrlen 0: connected socket)
//! watch    = mask:u32 | path NUL
//! register = agent NUL                       (with the seccomp listener fd as SCM_RIGHTS)
//! reply    = magic:u32 | version:u16 | op:u16 | seq:u32 | errno:i32   (0 = allow)
//! ```

#![no_std]

pub mod table;

/// `"OKNK"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"OKNK");
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 16;
pub const REPLY_LEN: usize = 16;
/// The largest frame either side sends; longer strings are truncated and flagged.
pub const MAX_FRAME: usize = 8192;
/// Longest sockaddr carried (sizeof(struct sockaddr_storage)).
pub const MAX_SOCKADDR: usize = 128;

/// Header flag: the client waits for a verdict (a block rule may apply).
pub const FLAG_WANT_VERDICT: u32 = 1;
/// Header flag: a string or argv did not fit and was cut.
pub const FLAG_TRUNCATED: u32 = 2;

/// What a frame reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    Exec = 1,
    Open = 2,
    Connect = 3,
    Send = 4,
    Watch = 5,
    /// `oknek run` hands its seccomp user-notify listener to the daemon.
    RegisterSeccomp = 64,
}

impl Op {
    pub fn from_u16(v: u16) -> Option<Op> {
        Some(match v {
            1 => Op::Exec,
            2 => Op::Open,
            3 => Op::Connect,
            4 => Op::Send,
            5 => Op::Watch,
            64 => Op::RegisterSeccomp,
            _ => return None,
        })
    }
}

/// Why a frame was rejected. The daemon logs it and drops the frame; a reply is sent only when
/// the header was readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    TooShort,
    BadMagic,
    UnsupportedVersion(u16),
    UnknownOp(u16),
    /// A string was not NUL-terminated inside the frame.
    Unterminated,
    /// A length field points past the end of the frame.
    BadLength,
    TooLong,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::TooShort => f.write_str("frame shorter than its header"),
            FrameError::BadMagic => f.write_str("bad magic (not an oknek frame)"),
            FrameError::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            FrameError::UnknownOp(op) => write!(f, "unknown op {op}"),
            FrameError::Unterminated => f.write_str("string without terminating NUL"),
            FrameError::BadLength => f.write_str("length field past the end of the frame"),
            FrameError::TooLong => f.write_str("frame longer than the maximum"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub op: Op,
    pub seq: u32,
    pub flags: u32,
}

/// A decoded request. Strings are raw bytes: paths need not be UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    Exec {
        path: &'a [u8],
        argv: Argv<'a>,
    },
    Open {
        dirfd: i32,
        flags: u32,
        mode: u32,
        path: &'a [u8],
    },
    Connect {
        sockaddr: &'a [u8],
    },
    Send {
        bytes: u64,
        sockaddr: &'a [u8],
    },
    Watch {
        mask: u32,
        path: &'a [u8],
    },
    RegisterSeccomp {
        agent: &'a [u8],
    },
}

/// The argument vector of an exec frame: `argc` NUL-terminated strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argv<'a> {
    argc: u32,
    bytes: &'a [u8],
}

impl<'a> Argv<'a> {
    pub fn len(&self) -> usize {
        self.argc as usize
    }

    pub fn is_empty(&self) -> bool {
        self.argc == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let bytes = self.bytes;
        bytes.split(|&b| b == 0).take(self.argc as usize)
    }
}

/// Parses one request frame.
pub fn decode(frame: &[u8]) -> Result<(Header, Request<'_>), FrameError> {
    if frame.len() > MAX_FRAME {
        return Err(FrameError::TooLong);
    }
    let mut r = Reader { buf: frame, pos: 0 };
    let magic = r.u32().ok_or(FrameError::TooShort)?;
    if magic != MAGIC {
        return Err(FrameError::BadMagic);
    }
    let version = r.u16().ok_or(FrameError::TooShort)?;
    if version != VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let op_raw = r.u16().ok_or(FrameError::TooShort)?;
    let seq = r.u32().ok_or(FrameError::TooShort)?;
    let flags = r.u32().ok_or(FrameError::TooShort)?;
    let op = Op::from_u16(op_raw).ok_or(FrameError::UnknownOp(op_raw))?;
    let header = Header { op, seq, flags };
    let request = match op {
        Op::Exec => {
            let argc = r.u32().ok_or(FrameError::BadLength)?;
            let path = r.cstr()?;
            let start = r.pos;
            for _ in 0..argc {
                r.cstr()?;
            }
            Request::Exec {
                path,
                argv: Argv {
                    argc,
                    bytes: &frame[start..r.pos],
                },
            }
        }
        Op::Open => Request::Open {
            dirfd: r.u32().ok_or(FrameError::BadLength)? as i32,
            flags: r.u32().ok_or(FrameError::BadLength)?,
            mode: r.u32().ok_or(FrameError::BadLength)?,
            path: r.cstr()?,
        },
        Op::Connect => Request::Connect {
            sockaddr: r.sockaddr()?,
        },
        Op::Send => Request::Send {
            bytes: r.u64().ok_or(FrameError::BadLength)?,
            sockaddr: r.sockaddr()?,
        },
        Op::Watch => Request::Watch {
            mask: r.u32().ok_or(FrameError::BadLength)?,
            path: r.cstr()?,
        },
        Op::RegisterSeccomp => Request::RegisterSeccomp { agent: r.cstr()? },
    };
    Ok((header, request))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }

    fn cstr(&mut self) -> Result<&'a [u8], FrameError> {
        let rest = &self.buf[self.pos..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(FrameError::Unterminated)?;
        self.pos += nul + 1;
        Ok(&rest[..nul])
    }

    fn sockaddr(&mut self) -> Result<&'a [u8], FrameError> {
        let len = self.u32().ok_or(FrameError::BadLength)? as usize;
        if len > MAX_SOCKADDR {
            return Err(FrameError::BadLength);
        }
        self.take(len).ok_or(FrameError::BadLength)
    }
}

/// Encodes a request into a caller-provided buffer without allocating.
///
/// Strings that do not fit are truncated (and [`FLAG_TRUNCATED`] set); an exec frame keeps as
/// many whole arguments as fit.
pub struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
    truncated: bool,
}

impl<'a> Writer<'a> {
    /// Starts a frame; `buf` must hold at least [`HEADER_LEN`] bytes plus the fixed payload.
    pub fn new(buf: &'a mut [u8], op: Op, seq: u32, flags: u32) -> Option<Writer<'a>> {
        if buf.len() < HEADER_LEN + 32 {
            return None;
        }
        let mut w = Writer {
            buf,
            len: 0,
            truncated: false,
        };
        w.put_u32(MAGIC);
        w.put_u16(VERSION);
        w.put_u16(op as u16);
        w.put_u32(seq);
        w.put_u32(flags);
        Some(w)
    }

    fn room(&self) -> usize {
        self.buf.len().min(MAX_FRAME) - self.len
    }

    pub fn put_u16(&mut self, v: u16) {
        self.put_bytes(&v.to_le_bytes());
    }

    pub fn put_u32(&mut self, v: u32) {
        self.put_bytes(&v.to_le_bytes());
    }

    pub fn put_u64(&mut self, v: u64) {
        self.put_bytes(&v.to_le_bytes());
    }

    fn put_bytes(&mut self, b: &[u8]) {
        let n = b.len().min(self.room());
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
        if n < b.len() {
            self.truncated = true;
        }
    }

    /// Appends `s` (up to its first NUL) and a terminating NUL, cutting it to fit.
    pub fn put_cstr(&mut self, s: &[u8]) {
        let s = s.split(|&b| b == 0).next().unwrap_or(&[]);
        if self.room() == 0 {
            self.truncated = true;
            return;
        }
        let n = s.len().min(self.room() - 1);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
        self.buf[self.len] = 0;
        self.len += 1;
        if n < s.len() {
            self.truncated = true;
        }
    }

    /// True if a whole string of `len` bytes (plus its NUL) still fits.
    pub fn fits(&self, len: usize) -> bool {
        len < self.room()
    }

    pub fn put_sockaddr(&mut self, sockaddr: &[u8]) {
        let sockaddr = &sockaddr[..sockaddr.len().min(MAX_SOCKADDR)];
        self.put_u32(sockaddr.len() as u32);
        self.put_bytes(sockaddr);
    }

    /// Finishes the frame and returns its bytes.
    pub fn finish(self) -> &'a [u8] {
        if self.truncated {
            let flags =
                u32::from_le_bytes([self.buf[12], self.buf[13], self.buf[14], self.buf[15]]);
            self.buf[12..16].copy_from_slice(&(flags | FLAG_TRUNCATED).to_le_bytes());
        }
        &self.buf[..self.len]
    }
}

/// Encodes an exec frame: the path and as many whole arguments as fit.
pub fn encode_exec<'b, 'x>(
    buf: &'b mut [u8],
    seq: u32,
    flags: u32,
    path: &[u8],
    argv: impl Iterator<Item = &'x [u8]> + Clone,
) -> Option<&'b [u8]> {
    // Count first, so argc matches the strings actually written.
    let mut room = buf
        .len()
        .min(MAX_FRAME)
        .checked_sub(HEADER_LEN + 4 + path.len() + 1)?;
    let mut argc = 0u32;
    let mut cut = false;
    for arg in argv.clone() {
        if arg.len() + 1 > room {
            cut = true;
            break;
        }
        room -= arg.len() + 1;
        argc += 1;
    }
    let mut w = Writer::new(buf, Op::Exec, seq, flags)?;
    w.put_u32(argc);
    w.put_cstr(path);
    for arg in argv.take(argc as usize) {
        w.put_cstr(arg);
    }
    w.truncated |= cut;
    Some(w.finish())
}

/// A verdict reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub op: u16,
    pub seq: u32,
    /// 0 to allow; otherwise the errno the hooked call returns (EPERM, EACCES).
    pub errno: i32,
}

impl Reply {
    pub fn encode(&self) -> [u8; REPLY_LEN] {
        let mut out = [0u8; REPLY_LEN];
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..6].copy_from_slice(&VERSION.to_le_bytes());
        out[6..8].copy_from_slice(&self.op.to_le_bytes());
        out[8..12].copy_from_slice(&self.seq.to_le_bytes());
        out[12..16].copy_from_slice(&self.errno.to_le_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Option<Reply> {
        if b.len() != REPLY_LEN || b[0..4] != MAGIC.to_le_bytes() {
            return None;
        }
        if u16::from_le_bytes([b[4], b[5]]) != VERSION {
            return None;
        }
        Some(Reply {
            op: u16::from_le_bytes([b[6], b[7]]),
            seq: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            errno: i32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_round_trip() {
        let mut buf = [0u8; 256];
        let mut w = Writer::new(&mut buf, Op::Open, 7, FLAG_WANT_VERDICT).unwrap();
        w.put_u32(-100i32 as u32);
        w.put_u32(0o1101);
        w.put_u32(0o644);
        w.put_cstr(b"/home/dev/.ssh/id_ed25519");
        let frame = w.finish();
        let (h, r) = decode(frame).unwrap();
        assert_eq!(
            h,
            Header {
                op: Op::Open,
                seq: 7,
                flags: FLAG_WANT_VERDICT
            }
        );
        assert_eq!(
            r,
            Request::Open {
                dirfd: -100,
                flags: 0o1101,
                mode: 0o644,
                path: b"/home/dev/.ssh/id_ed25519"
            }
        );
    }

    #[test]
    fn exec_keeps_whole_arguments_and_flags_truncation() {
        let mut buf = [0u8; 64];
        let args: [&[u8]; 3] = [
            b"sh",
            b"-c",
            b"a very long argument that cannot fit in the frame",
        ];
        let frame = encode_exec(&mut buf, 1, 0, b"/bin/sh", args.iter().copied()).unwrap();
        let (h, r) = decode(frame).unwrap();
        assert_ne!(h.flags & FLAG_TRUNCATED, 0);
        let Request::Exec { path, argv } = r else {
            panic!("not exec: {r:?}")
        };
        assert_eq!(path, b"/bin/sh");
        let got: [&[u8]; 2] = [b"sh", b"-c"];
        assert!(argv.iter().eq(got.iter().copied()));
    }

    #[test]
    fn garbage_is_rejected_not_misread() {
        assert_eq!(decode(b""), Err(FrameError::TooShort));
        assert_eq!(decode(&[0u8; 16]), Err(FrameError::BadMagic));
        let mut buf = [0u8; 64];
        let w = Writer::new(&mut buf, Op::Watch, 1, 0).unwrap();
        let frame = w.finish();
        assert_eq!(decode(frame), Err(FrameError::BadLength));
        let mut bad_op = [0u8; 16];
        bad_op[..4].copy_from_slice(&MAGIC.to_le_bytes());
        bad_op[4..6].copy_from_slice(&VERSION.to_le_bytes());
        bad_op[6..8].copy_from_slice(&999u16.to_le_bytes());
        assert_eq!(decode(&bad_op), Err(FrameError::UnknownOp(999)));
        // An exec claiming more arguments than the frame holds.
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf, Op::Exec, 1, 0).unwrap();
        w.put_u32(1_000_000);
        w.put_cstr(b"/bin/true");
        assert_eq!(decode(w.finish()), Err(FrameError::Unterminated));
        // A sockaddr length beyond the maximum.
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf, Op::Connect, 1, 0).unwrap();
        w.put_u32(4096);
        assert_eq!(decode(w.finish()), Err(FrameError::BadLength));
    }

    #[test]
    fn every_prefix_of_a_valid_frame_decodes_or_errors() {
        let mut buf = [0u8; 128];
        let args: [&[u8]; 2] = [b"curl", b"http://10.0.0.1/"];
        let frame = encode_exec(&mut buf, 3, 0, b"/usr/bin/curl", args.iter().copied()).unwrap();
        for cut in 0..frame.len() {
            let _ = decode(&frame[..cut]);
        }
        assert!(decode(frame).is_ok());
    }

    #[test]
    fn reply_round_trip() {
        let r = Reply {
            op: Op::Open as u16,
            seq: 9,
            errno: 1,
        };
        assert_eq!(Reply::decode(&r.encode()), Some(r));
        assert_eq!(Reply::decode(&[0u8; 16]), None);
    }
}
