//! The ring-buffer record and map layouts shared with `src/bpf/oknek_event.h`.
//!
//! Sizes and offsets are asserted here and, with the same numbers, by `_Static_assert` in the C
//! header: a change on one side that is not made on the other fails the build.

use std::mem::{offset_of, size_of};
use std::net::{Ipv4Addr, Ipv6Addr};

use oknek_event::{Kind, SockAddr};

use crate::{Blocked, Detail, Enforcer, KernelEvent};

pub const COMM_LEN: usize = 16;
pub const PATH_LEN: usize = 256;
pub const ARGV_LEN: usize = 1024;
pub const SLOTS: usize = 4;
pub const SLOT_PORTS: usize = 4;

pub const KIND_EXEC: u32 = 0;
pub const KIND_OPEN: u32 = 1;
pub const KIND_CONNECT: u32 = 2;
pub const KIND_SEND: u32 = 3;
pub const KIND_WATCH: u32 = 4;

pub const FLAG_BLOCKED: u32 = 1;
pub const FLAG_HELD: u32 = 2;
pub const FLAG_OBSERVED: u32 = 4;

pub const HOOK_TRACEPOINT: u32 = 0;
pub const HOOK_LSM: u32 = 1;
pub const HOOK_CGROUP: u32 = 2;

pub const EXEC_ARGV_TRUNCATED: u32 = 1;

pub const SLOT_USED: u8 = 1;
pub const SLOT_HOLD: u8 = 2;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Header {
    pub kind: u32,
    pub flags: u32,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub agent_id: u32,
    pub rule_index: u32,
    pub hook: u32,
    pub cgroup_id: u64,
    pub ktime_ns: u64,
    pub comm: [u8; COMM_LEN],
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ExecBody {
    pub ino: u64,
    pub dev: u32,
    pub argv_len: u32,
    pub exec_flags: u32,
    pub _pad: u32,
    pub path: [u8; PATH_LEN],
    pub argv: [u8; ARGV_LEN],
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct OpenBody {
    pub ino: u64,
    pub dev: u32,
    pub flags: u32,
    pub mode: u32,
    pub _pad: u32,
    pub path: [u8; PATH_LEN],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NetBody {
    pub bytes: u64,
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    /// connect: the model provider's id + 1 when the destination is one, else 0.
    pub provider: u32,
    /// Network byte order; IPv4 in the first four bytes.
    pub addr: [u8; 16],
    /// A model call that took a quota token: its rule index; else [`NO_RULE`].
    pub quota_rule: u32,
    /// Whole calls left in that bucket after this one.
    pub quota_left: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WatchBody {
    pub ino: u64,
    pub dev: u32,
    pub mask: u32,
    pub path: [u8; PATH_LEN],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub union Body {
    pub exec: ExecBody,
    pub open: OpenBody,
    pub net: NetBody,
    pub watch: WatchBody,
}

/// One fixed-size ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawEvent {
    pub hdr: Header,
    pub body: Body,
}

/// Key of the inode maps: the kernel's `s_dev` (see [`crate::kernel_dev`]) and inode number.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeKey {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockSlot {
    /// Bit n = agent id n; 0 = every agent.
    pub agents: u64,
    pub rule_index: u32,
    pub flags: u8,
    /// Bit n = kind n (exec 0 … watch 4).
    pub kinds: u8,
    /// 0 = any port.
    pub nports: u16,
    pub port_lo: [u16; SLOT_PORTS],
    pub port_hi: [u16; SLOT_PORTS],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockValue {
    pub slots: [BlockSlot; SLOTS],
}

/// The data part of a `block_nets` key (aya's `lpm_trie::Key` adds the prefix length in
/// front): the family byte, padding, and the address. Prefix lengths count these 32 leading
/// bits too.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetKeyData {
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    pub observe: u32,
    pub net_observer: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    pub object_sha256: [u8; 32],
    pub ring_bytes: u32,
    pub _pad: u32,
}

/// `agent_tasks` value: a tracked process's agent and the executable it runs.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Task {
    pub agent_id: u32,
    /// Kernel encoding (see [`crate::kernel_dev`]).
    pub exe_dev: u32,
    pub exe_ino: u64,
}

pub const KIND_MODEL_CALL: u32 = 5;
pub const MAX_PROVIDERS: usize = 256;
pub const QUOTA_SLOTS: usize = 4;
pub const PROVIDER_GATEWAY_ONLY: u32 = 1;
/// `rule_index` of a refusal because the provider is reachable through the gateway only.
pub const RULE_GATEWAY_ONLY: u32 = 0xffff_ff01;
/// `rule_index` of a refusal because no quota bucket could be created (map full).
pub const RULE_QUOTA_FULL: u32 = 0xffff_ff02;
/// `quota_rule` of a model call no quota metered.
pub const NO_RULE: u32 = u32::MAX;
pub const QUOTA_BY_CALLER: u8 = 0;
pub const QUOTA_BY_PROVIDER: u8 = 1;
pub const QUOTA_BY_CALLER_PROVIDER: u8 = 2;
pub const QUOTA_BY_AGENT: u8 = 3;
/// Credit units per call, so that refills can add fractions of a call.
pub const QUOTA_UNIT: u64 = 1_000_000;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProviderKey {
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    pub _pad: u32,
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProviderValue {
    /// Index into `model_policy`.
    pub id: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaSlot {
    /// As in [`BlockSlot::agents`].
    pub agents: u64,
    /// limit × [`QUOTA_UNIT`]: a new bucket's credit.
    pub capacity: u64,
    pub rule_index: u32,
    pub flags: u8,
    pub by: u8,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelPolicy {
    /// Rules refusing every call to the provider (`kinds` unused).
    pub refuse: [BlockSlot; SLOTS],
    pub quotas: [QuotaSlot; QUOTA_SLOTS],
}

/// A quota bucket: whose calls, under which rule.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QuotaKey {
    pub rule_index: u32,
    pub agent_id: u32,
    pub uid: u32,
    pub provider_id: u32,
    pub exe_ino: u64,
    pub exe_dev: u32,
    pub _pad: u32,
}

// SAFETY: plain C structs of integers and byte arrays, every bit pattern valid, no padding the
// compiler inserts (asserted below: sizes equal the sum of explicit fields).
unsafe impl aya::Pod for Task {}
unsafe impl aya::Pod for ProviderKey {}
unsafe impl aya::Pod for ProviderValue {}
unsafe impl aya::Pod for ModelPolicy {}
unsafe impl aya::Pod for QuotaKey {}
unsafe impl aya::Pod for InodeKey {}
unsafe impl aya::Pod for BlockValue {}
unsafe impl aya::Pod for NetKeyData {}
unsafe impl aya::Pod for Settings {}
unsafe impl aya::Pod for Meta {}

const _: () = assert!(size_of::<Header>() == 64 && offset_of!(Header, cgroup_id) == 32);
const _: () = assert!(offset_of!(Header, comm) == 48);
const _: () = assert!(size_of::<ExecBody>() == 1304 && offset_of!(ExecBody, path) == 24);
const _: () = assert!(offset_of!(ExecBody, argv) == 280);
const _: () = assert!(size_of::<OpenBody>() == 280 && offset_of!(OpenBody, path) == 24);
const _: () = assert!(size_of::<NetBody>() == 40 && offset_of!(NetBody, addr) == 16);
const _: () = assert!(offset_of!(NetBody, quota_rule) == 32);
const _: () = assert!(size_of::<WatchBody>() == 272 && offset_of!(WatchBody, path) == 16);
const _: () = assert!(size_of::<RawEvent>() == 1368 && offset_of!(RawEvent, body) == 64);
const _: () = assert!(size_of::<InodeKey>() == 16);
const _: () = assert!(size_of::<BlockSlot>() == 32 && offset_of!(BlockSlot, port_lo) == 16);
const _: () = assert!(size_of::<BlockValue>() == 128);
const _: () = assert!(size_of::<NetKeyData>() == 20 && 4 + size_of::<NetKeyData>() == 24);
const _: () = assert!(size_of::<Settings>() == 8);
const _: () = assert!(size_of::<Meta>() == 40);
const _: () = assert!(size_of::<Task>() == 16);
const _: () = assert!(size_of::<ProviderKey>() == 24 && size_of::<ProviderValue>() == 8);
const _: () = assert!(size_of::<QuotaSlot>() == 24);
const _: () = assert!(size_of::<ModelPolicy>() == 224 && offset_of!(ModelPolicy, quotas) == 128);
const _: () = assert!(size_of::<QuotaKey>() == 32);
const _: () = assert!(offset_of!(NetBody, provider) == 12);

/// Why a ring-buffer record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than the {1}-byte layout")]
    Short(usize, usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("connect record without a destination address (family {0})")]
    NoDestination(u16),
}

impl RawEvent {
    /// An all-zero record (for building records in tests and benchmarks).
    pub fn zeroed() -> RawEvent {
        // SAFETY: every field is an integer or byte array; all-zero is a valid value.
        unsafe { std::mem::zeroed() }
    }

    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: RawEvent is repr(C) plain data without implicit padding.
        unsafe {
            std::slice::from_raw_parts((self as *const RawEvent).cast::<u8>(), size_of::<Self>())
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
        if bytes.len() < size_of::<RawEvent>() {
            return Err(DecodeError::Short(bytes.len(), size_of::<RawEvent>()));
        }
        // SAFETY: length checked; every bit pattern is a valid RawEvent; unaligned read.
        Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawEvent>()) })
    }
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let raw = RawEvent::from_bytes(bytes)?;
    let hdr = raw.hdr;
    // SAFETY (all union reads below): each body is plain data; the kind says which one the
    // kernel wrote, and any other reading is still a valid value.
    let (kind, detail) = match hdr.kind {
        KIND_EXEC => {
            let body = unsafe { raw.body.exec };
            let used = (body.argv_len as usize).min(ARGV_LEN);
            let argv = split_argv(&body.argv[..used]);
            (
                Kind::Exec,
                Detail::Exec {
                    path: c_string(&body.path),
                    argv,
                    truncated: body.exec_flags & EXEC_ARGV_TRUNCATED != 0,
                },
            )
        }
        KIND_OPEN => {
            let body = unsafe { raw.body.open };
            (
                Kind::Open,
                Detail::Open {
                    path: c_string(&body.path),
                    flags: body.flags,
                    mode: body.mode,
                    inode: (body.ino != 0).then_some((body.dev, body.ino)),
                },
            )
        }
        KIND_CONNECT => {
            let body = unsafe { raw.body.net };
            let dest = sock_addr(&body).ok_or(DecodeError::NoDestination(body.family))?;
            let provider = body.provider.checked_sub(1);
            let quota = (provider.is_some() && body.quota_rule != NO_RULE)
                .then_some((body.quota_rule, body.quota_left));
            (
                Kind::Connect,
                Detail::Connect {
                    dest,
                    provider,
                    quota,
                },
            )
        }
        KIND_SEND => {
            let body = unsafe { raw.body.net };
            (
                Kind::Send,
                Detail::Send {
                    dest: sock_addr(&body),
                    bytes: body.bytes,
                },
            )
        }
        KIND_WATCH => {
            let body = unsafe { raw.body.watch };
            (
                Kind::Watch,
                Detail::Watch {
                    path: c_string(&body.path),
                    mask: body.mask,
                    inode: (body.ino != 0).then_some((body.dev, body.ino)),
                },
            )
        }
        other => return Err(DecodeError::UnknownKind(other)),
    };
    let blocked = (hdr.flags & FLAG_BLOCKED != 0).then_some(Blocked {
        rule_index: hdr.rule_index,
        enforcer: if hdr.hook == HOOK_CGROUP {
            Enforcer::CgroupSockAddr
        } else {
            Enforcer::Lsm
        },
        held: hdr.flags & FLAG_HELD != 0,
    });
    Ok(KernelEvent {
        kind,
        pid: hdr.pid,
        tgid: hdr.tgid,
        uid: hdr.uid,
        agent_id: hdr.agent_id,
        cgroup_id: hdr.cgroup_id,
        comm: c_string(&hdr.comm),
        ktime_ns: hdr.ktime_ns,
        blocked,
        detail,
    })
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn split_argv(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

fn sock_addr(body: &NetBody) -> Option<SockAddr> {
    match body.family {
        AF_INET => Some(SockAddr::Inet {
            addr: Ipv4Addr::new(body.addr[0], body.addr[1], body.addr[2], body.addr[3]),
            port: body.port,
        }),
        AF_INET6 => Some(SockAddr::Inet6 {
            addr: Ipv6Addr::from(body.addr),
            port: body.port,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u32) -> Header {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        Header {
            kind,
            pid: 11,
            tgid: 10,
            uid: 1000,
            agent_id: 3,
            cgroup_id: 77,
            ktime_ns: 5,
            comm,
            ..Header::default()
        }
    }

    fn path_bytes(path: &str) -> [u8; PATH_LEN] {
        let mut out = [0u8; PATH_LEN];
        out[..path.len()].copy_from_slice(path.as_bytes());
        out
    }

    #[test]
    fn decodes_exec_with_argv() {
        let mut raw = RawEvent::zeroed();
        raw.hdr = header(KIND_EXEC);
        let argv = b"curl\0-s\0http://x\0";
        let mut body = unsafe { raw.body.exec };
        body.path = path_bytes("/usr/bin/curl");
        body.argv[..argv.len()].copy_from_slice(argv);
        body.argv_len = argv.len() as u32;
        body.exec_flags = EXEC_ARGV_TRUNCATED;
        raw.body.exec = body;
        let event = decode(raw.as_bytes()).unwrap();
        assert_eq!(event.kind, Kind::Exec);
        assert_eq!(event.comm, "curl");
        assert_eq!(
            (event.pid, event.tgid, event.uid, event.agent_id),
            (11, 10, 1000, 3)
        );
        assert!(event.blocked.is_none());
        match event.detail {
            Detail::Exec {
                path,
                argv,
                truncated,
            } => {
                assert_eq!(path, "/usr/bin/curl");
                assert_eq!(argv, ["curl", "-s", "http://x"]);
                assert!(truncated);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn decodes_blocked_connect() {
        let mut raw = RawEvent::zeroed();
        raw.hdr = header(KIND_CONNECT);
        raw.hdr.flags = FLAG_BLOCKED | FLAG_HELD;
        raw.hdr.rule_index = 42;
        raw.hdr.hook = HOOK_CGROUP;
        raw.body.net = NetBody {
            family: AF_INET,
            port: 8080,
            addr: [127, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ..NetBody::default()
        };
        let event = decode(raw.as_bytes()).unwrap();
        let blocked = event.blocked.unwrap();
        assert_eq!(blocked.rule_index, 42);
        assert!(blocked.held);
        assert!(matches!(blocked.enforcer, Enforcer::CgroupSockAddr));
        match event.detail {
            Detail::Connect { dest, .. } => assert_eq!(dest.to_string(), "127.0.0.9:8080"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn decodes_open_send_watch() {
        let mut raw = RawEvent::zeroed();
        raw.hdr = header(KIND_OPEN);
        raw.body.open = OpenBody {
            ino: 99,
            dev: 0x80_0001,
            flags: 0o101,
            mode: 0o644,
            _pad: 0,
            path: path_bytes("notes.txt"),
        };
        match decode(raw.as_bytes()).unwrap().detail {
            Detail::Open {
                path,
                flags,
                mode,
                inode,
            } => {
                assert_eq!((path.as_str(), flags, mode), ("notes.txt", 0o101, 0o644));
                assert_eq!(inode, Some((0x80_0001, 99)));
            }
            other => panic!("unexpected {other:?}"),
        }

        let mut raw = RawEvent::zeroed();
        raw.hdr = header(KIND_SEND);
        raw.body.net = NetBody {
            bytes: 512,
            ..NetBody::default()
        };
        match decode(raw.as_bytes()).unwrap().detail {
            Detail::Send { dest, bytes } => assert_eq!((dest, bytes), (None, 512)),
            other => panic!("unexpected {other:?}"),
        }

        let mut raw = RawEvent::zeroed();
        raw.hdr = header(KIND_WATCH);
        raw.body.watch = WatchBody {
            ino: 0,
            dev: 0,
            mask: 2,
            path: path_bytes("/etc"),
        };
        match decode(raw.as_bytes()).unwrap().detail {
            Detail::Watch { path, mask, inode } => {
                assert_eq!((path.as_str(), mask, inode), ("/etc", 2, None));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert!(matches!(
            decode(&[0u8; 10]),
            Err(DecodeError::Short(10, 1368))
        ));
        let mut raw = RawEvent::zeroed();
        raw.hdr.kind = 9;
        assert!(matches!(
            decode(raw.as_bytes()),
            Err(DecodeError::UnknownKind(9))
        ));
        raw.hdr.kind = KIND_CONNECT;
        assert!(matches!(
            decode(raw.as_bytes()),
            Err(DecodeError::NoDestination(0))
        ));
    }
}
