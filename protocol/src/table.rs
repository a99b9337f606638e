//! The preload hook table: which hooked calls may hit a rule, so the shim asks only about those.
//!
//! oknekd publishes `<runtime>/preload.table` (mode 0644, owned by root) at start and on every
//! rules reload. The preload shim maps it read-only and consults it on every hooked call, in
//! memory, without a system call: a call that no entry can match costs a few loads and compares;
//! only a call that may hit a block rule waits for a verdict. The table is a *conservative
//! prefilter*: every entry must match at least every call its rule could match (a false positive
//! costs one round trip, a false negative lets a call through unjudged). The daemon makes the
//! real decision.
//!
//! Everything is little-endian and fixed-layout; offsets are from the start of the body.
//!
//! ```text
//! file    = prefix(16) body
//! prefix  = magic:u32 "OKPT" | stale:u32 | body_len:u32 | checksum:u32 (FNV-1a 32 of body)
//! body    = header(64) sections…
//! header  = version:u16 = 1 | header_len:u16 (≥ 64) | flags:u32 | generation:u64
//!         | timeout_ms:u32 | policy:[u8; 8] (one Action per Kind; unused bytes 0)
//!         | paths_off:u32 | paths_count:u32 | strings_off:u32 | strings_len:u32
//!         | inodes_off:u32 | inodes_count:u32 | nets_off:u32 | nets_count:u32
//! path    = str_off:u32 | str_len:u16 | match:u8 | kinds:u8 | action:u8 | flags:u8
//!         | head_len:u16 | tail_len:u16 | 0:u16 | bigrams:u64
//! inode   = dev:u64 | ino:u64 | kinds:u8 | action:u8 | flags:u8 | 0:[u8; 5]  (sorted by (dev, ino))
//! net     = family:u8 (4|6) | prefix_len:u8 | kinds:u8 | action:u8 | port_lo:u16 | port_hi:u16
//!         | addr:[u8; 16] (IPv4 in the first 4 bytes)
//! ```
//!
//! * `kinds` is a bit set of [`Kind::bit`]; `action` is an [`Action`] (Report or Ask).
//! * Glob entries hold the glob *compiled* ([`compile_glob`]): its literal pieces separated by NUL
//!   bytes (which no path contains), each NUL standing for "any run of bytes". `head_len` and
//!   `tail_len` are the lengths of the first and last piece (0 for other match types), so most
//!   paths are rejected by one `starts_with` and one `ends_with`. The reader checks them.
//! * `bigrams` ([`bigrams`]): a 64-bit set of the byte pairs inside the entry's literal text
//!   (for a glob, inside each piece). A path lacking any of them cannot match, so the shim
//!   hashes the path's byte pairs once per call and skips most entries with one AND. The reader
//!   recomputes and checks it.
//! * `policy[kind]` is what the shim does with a call of that kind that no entry matches.
//! * Entries flagged *self-exe* ([`PATH_SELF_EXE`], [`INODE_SELF_EXE`]) match the calling
//!   process's own executable instead of the call's object: a rule such as "block every connect
//!   by /usr/bin/curl" makes every connect *of curl* ask, and nobody else's.
//! * `flags` bit 0 ([`FLAG_FAIL_CLOSED`]): when a verdict is needed and oknekd does not answer in
//!   `timeout_ms`, the call fails with EPERM; otherwise it is allowed.
//! * The `stale` word is the only byte range ever written after publication: the daemon sets it
//!   to 1 *before* it renames a new table over the path, so a process that maps the old file
//!   notices the reload with one memory load and re-opens the path. Nothing else may change, and
//!   a published file is never truncated (a reader would fault on the missing pages).
//!
//! Paths are matched in the form the daemon's rules see them: absolute, lexically normalised
//! (see [`normalize`]). Globs are matched as a superset: every wildcard construct (`*`, `**`,
//! `?`, `[…]`, `{…}`, `\x`) matches any run of bytes, so the literal pieces must merely appear in
//! order. The reader never allocates and never panics on any input: every access is bounds
//! checked, so a corrupt file is rejected, not misread.

#![warn(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

/// The file's name inside the runtime directory.
pub const FILE_NAME: &str = "preload.table";
/// `"OKPT"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"OKPT");
pub const VERSION: u16 = 1;
pub const PREFIX_LEN: usize = 16;
/// Byte offset of the `stale` word in the file (4-byte aligned, so it can be read atomically).
pub const STALE_OFFSET: usize = 4;
pub const HEADER_LEN: usize = 64;
/// Largest table a reader accepts.
pub const MAX_LEN: usize = 16 << 20;
pub const PATH_ENTRY_LEN: usize = 24;
pub const INODE_ENTRY_LEN: usize = 24;
pub const NET_ENTRY_LEN: usize = 24;

/// Header flag: fail closed (EPERM) when a verdict is needed and cannot be had in time.
pub const FLAG_FAIL_CLOSED: u32 = 1;
/// Path entry flag (open only): the entry applies only to opens that may write.
pub const PATH_WRITE_ONLY: u8 = 1;
/// Path entry flag: the pattern is compared with the calling process's executable (the path
/// `/proc/self/exe` names); a match applies the entry's action to every call of its kinds.
pub const PATH_SELF_EXE: u8 = 2;
/// Inode entry flag: (dev, ino) identifies the calling process's executable, as above.
pub const INODE_SELF_EXE: u8 = 1;

pub const DEFAULT_TIMEOUT_MS: u32 = 200;
pub const MIN_TIMEOUT_MS: u32 = 1;
pub const MAX_TIMEOUT_MS: u32 = 10_000;

/// The action kinds a table distinguishes (the hookable ones of the rule language).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Exec = 0,
    Open = 1,
    Connect = 2,
    Send = 3,
    Watch = 4,
}

pub const KINDS: [Kind; 5] = [
    Kind::Exec,
    Kind::Open,
    Kind::Connect,
    Kind::Send,
    Kind::Watch,
];
/// Every valid bit of a `kinds` set.
pub const ALL_KINDS: u8 = 0x1f;

impl Kind {
    pub const fn bit(self) -> u8 {
        1 << (self as u8)
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

/// What the shim does with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Action {
    /// Nothing: no frame is sent.
    Ignore = 0,
    /// Report the call asynchronously (no waiting; dropped if the socket buffer is full).
    Report = 1,
    /// Ask for a verdict and wait for it (bounded by the timeout).
    Ask = 2,
}

impl Action {
    pub const fn from_u8(v: u8) -> Option<Action> {
        match v {
            0 => Some(Action::Ignore),
            1 => Some(Action::Report),
            2 => Some(Action::Ask),
            _ => None,
        }
    }
}

/// How a path entry's string is compared with a call's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MatchType {
    Exact = 1,
    Prefix = 2,
    Suffix = 3,
    /// The last path component equals the string.
    Basename = 4,
    Contains = 5,
    /// A rule glob, stored compiled ([`compile_glob`]) and compared as a superset.
    Glob = 6,
}

impl MatchType {
    pub const fn from_u8(v: u8) -> Option<MatchType> {
        match v {
            1 => Some(MatchType::Exact),
            2 => Some(MatchType::Prefix),
            3 => Some(MatchType::Suffix),
            4 => Some(MatchType::Basename),
            5 => Some(MatchType::Contains),
            6 => Some(MatchType::Glob),
            _ => None,
        }
    }

    /// True for the types that can be decided on the last path component alone.
    const fn by_name(self) -> bool {
        matches!(self, MatchType::Suffix | MatchType::Basename)
    }
}

/// Why a table was rejected. A shim treats a rejected table like a missing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    TooShort,
    TooLong,
    BadMagic,
    UnsupportedVersion(u16),
    /// The body is not as long as the prefix says.
    LengthMismatch,
    BadChecksum,
    /// A section or string lies outside the body.
    BadSection,
    BadEntry,
    /// Inode entries are not sorted by (dev, ino).
    Unsorted,
}

impl core::fmt::Display for TableError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TableError::TooShort => f.write_str("table shorter than its header"),
            TableError::TooLong => f.write_str("table longer than the maximum"),
            TableError::BadMagic => f.write_str("bad magic (not a preload table)"),
            TableError::UnsupportedVersion(v) => write!(f, "unsupported table version {v}"),
            TableError::LengthMismatch => f.write_str("body length differs from the prefix"),
            TableError::BadChecksum => f.write_str("checksum mismatch"),
            TableError::BadSection => f.write_str("section outside the table"),
            TableError::BadEntry => f.write_str("invalid entry"),
            TableError::Unsorted => f.write_str("inode entries not sorted"),
        }
    }
}

/// The decoded 16-byte file prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub stale: bool,
    pub body_len: u32,
    pub checksum: u32,
}

/// Decodes the file prefix (read it with volatile or atomic loads: the `stale` word may change).
pub fn parse_prefix(p: &[u8; PREFIX_LEN]) -> Result<Prefix, TableError> {
    let [
        m0,
        m1,
        m2,
        m3,
        s0,
        s1,
        s2,
        s3,
        l0,
        l1,
        l2,
        l3,
        c0,
        c1,
        c2,
        c3,
    ] = *p;
    if u32::from_le_bytes([m0, m1, m2, m3]) != MAGIC {
        return Err(TableError::BadMagic);
    }
    let body_len = u32::from_le_bytes([l0, l1, l2, l3]);
    if (body_len as usize) < HEADER_LEN {
        return Err(TableError::TooShort);
    }
    if body_len as usize > MAX_LEN {
        return Err(TableError::TooLong);
    }
    Ok(Prefix {
        stale: u32::from_le_bytes([s0, s1, s2, s3]) != 0,
        body_len,
        checksum: u32::from_le_bytes([c0, c1, c2, c3]),
    })
}

/// FNV-1a, 32 bits: detects a table damaged on disk or written by something that is not oknekd.
/// (Integrity against an attacker comes from the file's owner and mode, not from this.)
pub fn checksum(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Per-kind facts about a table's entries, computed once when it is parsed, so the shim can skip
/// work (resolving a relative path, an fstat) for kinds that no entry needs it for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary(pub [u8; 8]);

impl Summary {
    /// Some path entry of the kind needs the absolute path (exact, prefix, contains, glob).
    pub const ABS_PATHS: u8 = 1;
    /// Some path entry of the kind compares the last component only (suffix, basename).
    pub const NAME_PATHS: u8 = 2;
    pub const INODES: u8 = 4;
    pub const NETS: u8 = 8;

    pub fn has(&self, kind: Kind, bit: u8) -> bool {
        self.0.get(kind.index()).is_some_and(|b| b & bit != 0)
    }

    /// Packs the summary into a u64 (for storing in an atomic).
    pub fn to_u64(self) -> u64 {
        u64::from_le_bytes(self.0)
    }

    pub fn from_u64(v: u64) -> Summary {
        Summary(v.to_le_bytes())
    }

    fn set(&mut self, kinds: u8, bit: u8) {
        for k in KINDS {
            if kinds & k.bit() != 0
                && let Some(b) = self.0.get_mut(k.index())
            {
                *b |= bit;
            }
        }
    }
}

/// The actions a process's own executable brings to each kind (see [`Table::self_policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SelfPolicy(pub [u8; 8]);

impl SelfPolicy {
    pub const ASK_ALL: SelfPolicy = SelfPolicy([Action::Ask as u8; 8]);

    pub fn get(&self, kind: Kind) -> Action {
        self.0
            .get(kind.index())
            .and_then(|&a| Action::from_u8(a))
            .unwrap_or(Action::Ask)
    }

    fn raise(&mut self, kinds: u8, action: Action) {
        for k in KINDS {
            if kinds & k.bit() != 0
                && let Some(b) = self.0.get_mut(k.index())
            {
                *b = (*b).max(action as u8);
            }
        }
    }

    pub fn to_u64(self) -> u64 {
        u64::from_le_bytes(self.0)
    }

    pub fn from_u64(v: u64) -> SelfPolicy {
        SelfPolicy(v.to_le_bytes())
    }
}

/// An IP address as the shim sees it in a sockaddr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ip {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// A view of a table body. Cheap to create ([`Table::view`] reads the header only); all lookups
/// are bounds checked.
#[derive(Debug, Clone, Copy)]
pub struct Table<'a> {
    flags: u32,
    generation: u64,
    timeout_ms: u32,
    policy: [u8; 8],
    paths: &'a [u8],
    strings: &'a [u8],
    inodes: &'a [u8],
    nets: &'a [u8],
}

fn rd_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([*s.first()?, *s.get(1)?]))
}

fn rd_u32(b: &[u8], at: usize) -> Option<u32> {
    let s: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(s))
}

fn rd_u64(b: &[u8], at: usize) -> Option<u64> {
    let s: [u8; 8] = b.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(s))
}

/// `count` entries of `size` bytes at `off`, as one slice.
fn section(body: &[u8], off: u32, count: u32, size: usize) -> Result<&[u8], TableError> {
    let len = (count as usize)
        .checked_mul(size)
        .ok_or(TableError::BadSection)?;
    let start = off as usize;
    if len != 0 && start < HEADER_LEN {
        return Err(TableError::BadSection);
    }
    let end = start.checked_add(len).ok_or(TableError::BadSection)?;
    body.get(start..end).ok_or(TableError::BadSection)
}

/// One decoded path entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathEntry<'a> {
    pub mtype: MatchType,
    pub kinds: u8,
    pub action: Action,
    pub flags: u8,
    pub pattern: &'a [u8],
    /// Globs: the literal text every match starts with, and ends with.
    pub head: &'a [u8],
    pub tail: &'a [u8],
    /// The byte pairs every match contains ([`bigrams`]).
    pub bigrams: u64,
}

/// One decoded inode entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InodeEntry {
    pub dev: u64,
    pub ino: u64,
    pub kinds: u8,
    pub action: Action,
    pub flags: u8,
}

/// One decoded network entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetEntry {
    pub ip: Ip,
    pub prefix_len: u8,
    pub kinds: u8,
    pub action: Action,
    pub port_lo: u16,
    pub port_hi: u16,
}

impl<'a> Table<'a> {
    /// Reads the header and locates the sections: O(1). Entries are checked by [`Table::parse`].
    pub fn view(body: &'a [u8]) -> Result<Table<'a>, TableError> {
        if body.len() > MAX_LEN {
            return Err(TableError::TooLong);
        }
        let h = |at| rd_u32(body, at).ok_or(TableError::TooShort);
        let version = rd_u16(body, 0).ok_or(TableError::TooShort)?;
        if version != VERSION {
            return Err(TableError::UnsupportedVersion(version));
        }
        let header_len = rd_u16(body, 2).ok_or(TableError::TooShort)? as usize;
        if header_len < HEADER_LEN || header_len > body.len() {
            return Err(TableError::TooShort);
        }
        let flags = h(4)?;
        let generation = rd_u64(body, 8).ok_or(TableError::TooShort)?;
        let timeout_ms = h(16)?;
        let policy: [u8; 8] = body
            .get(20..28)
            .and_then(|s| s.try_into().ok())
            .ok_or(TableError::TooShort)?;
        let paths = section(body, h(28)?, h(32)?, PATH_ENTRY_LEN)?;
        let strings = section(body, h(36)?, h(40)?, 1)?;
        let inodes = section(body, h(44)?, h(48)?, INODE_ENTRY_LEN)?;
        let nets = section(body, h(52)?, h(56)?, NET_ENTRY_LEN)?;
        Ok(Table {
            flags,
            generation,
            timeout_ms,
            policy,
            paths,
            strings,
            inodes,
            nets,
        })
    }

    /// Fully validates a body against its prefix: length, checksum, every entry. Do this once
    /// per mapped file; afterwards [`Table::view`] is enough.
    pub fn parse(body: &'a [u8], prefix: &Prefix) -> Result<(Table<'a>, Summary), TableError> {
        if body.len() != prefix.body_len as usize {
            return Err(TableError::LengthMismatch);
        }
        if checksum(body) != prefix.checksum {
            return Err(TableError::BadChecksum);
        }
        let t = Table::view(body)?;
        for p in t.policy {
            Action::from_u8(p).ok_or(TableError::BadEntry)?;
        }
        let mut sum = Summary::default();
        for i in 0..t.path_count() {
            let e = t.path(i).ok_or(TableError::BadEntry)?;
            if e.action == Action::Ignore || e.kinds & !ALL_KINDS != 0 || e.kinds == 0 {
                return Err(TableError::BadEntry);
            }
            // The glob shortcuts must be exactly what the glob implies, or matching would miss.
            let (h, t) = if e.mtype == MatchType::Glob {
                compiled_literals(e.pattern)
            } else {
                (0, 0)
            };
            if (h, t) != (e.head.len(), e.tail.len())
                || e.bigrams != entry_bigrams(e.mtype, e.pattern)
            {
                return Err(TableError::BadEntry);
            }
            if e.flags & PATH_SELF_EXE != 0 {
                continue;
            }
            let bit = if e.mtype.by_name() {
                Summary::NAME_PATHS
            } else {
                Summary::ABS_PATHS
            };
            sum.set(e.kinds, bit);
        }
        let mut last = None;
        for i in 0..t.inode_count() {
            let e = t.inode(i).ok_or(TableError::BadEntry)?;
            if e.action == Action::Ignore || e.kinds & !ALL_KINDS != 0 || e.kinds == 0 {
                return Err(TableError::BadEntry);
            }
            if last.is_some_and(|l| l > (e.dev, e.ino)) {
                return Err(TableError::Unsorted);
            }
            last = Some((e.dev, e.ino));
            if e.flags & INODE_SELF_EXE == 0 {
                sum.set(e.kinds, Summary::INODES);
            }
        }
        for i in 0..t.net_count() {
            let e = t.net(i).ok_or(TableError::BadEntry)?;
            if e.action == Action::Ignore || e.kinds & !ALL_KINDS != 0 || e.kinds == 0 {
                return Err(TableError::BadEntry);
            }
            sum.set(e.kinds, Summary::NETS);
        }
        Ok((t, sum))
    }

    /// Parses a whole file (prefix and body) held in memory; for the daemon and tests.
    pub fn parse_file(file: &'a [u8]) -> Result<(Table<'a>, Summary), TableError> {
        let p: &[u8; PREFIX_LEN] = file
            .get(..PREFIX_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(TableError::TooShort)?;
        let prefix = parse_prefix(p)?;
        let body = file.get(PREFIX_LEN..).ok_or(TableError::TooShort)?;
        Table::parse(body, &prefix)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn fail_closed(&self) -> bool {
        self.flags & FLAG_FAIL_CLOSED != 0
    }

    /// The verdict timeout, clamped to [`MIN_TIMEOUT_MS`]..=[`MAX_TIMEOUT_MS`] (0 = default).
    pub fn timeout_ms(&self) -> u32 {
        if self.timeout_ms == 0 {
            DEFAULT_TIMEOUT_MS
        } else {
            self.timeout_ms.clamp(MIN_TIMEOUT_MS, MAX_TIMEOUT_MS)
        }
    }

    /// What to do with a call of `kind` that no entry matches. An unknown value asks.
    pub fn policy(&self, kind: Kind) -> Action {
        self.policy
            .get(kind.index())
            .and_then(|&p| Action::from_u8(p))
            .unwrap_or(Action::Ask)
    }

    pub fn path_count(&self) -> usize {
        self.paths.len() / PATH_ENTRY_LEN
    }

    pub fn inode_count(&self) -> usize {
        self.inodes.len() / INODE_ENTRY_LEN
    }

    pub fn net_count(&self) -> usize {
        self.nets.len() / NET_ENTRY_LEN
    }

    /// The raw bytes of path entry `i`.
    fn path_raw(&self, i: usize) -> Option<[u8; PATH_ENTRY_LEN]> {
        let at = i.checked_mul(PATH_ENTRY_LEN)?;
        self.paths
            .get(at..at.checked_add(PATH_ENTRY_LEN)?)?
            .try_into()
            .ok()
    }

    pub fn path(&self, i: usize) -> Option<PathEntry<'a>> {
        self.decode_path(self.path_raw(i)?)
    }

    fn decode_path(&self, e: [u8; PATH_ENTRY_LEN]) -> Option<PathEntry<'a>> {
        let [
            o0,
            o1,
            o2,
            o3,
            l0,
            l1,
            mtype,
            kinds,
            action,
            flags,
            h0,
            h1,
            t0,
            t1,
            _,
            _,
            b0,
            b1,
            b2,
            b3,
            b4,
            b5,
            b6,
            b7,
        ] = e;
        let off = u32::from_le_bytes([o0, o1, o2, o3]) as usize;
        let len = usize::from(u16::from_le_bytes([l0, l1]));
        let pattern = self.strings.get(off..off.checked_add(len)?)?;
        let head = pattern.get(..usize::from(u16::from_le_bytes([h0, h1])))?;
        let tail_len = usize::from(u16::from_le_bytes([t0, t1]));
        let tail = pattern.get(len.checked_sub(tail_len)?..)?;
        Some(PathEntry {
            mtype: MatchType::from_u8(mtype)?,
            kinds,
            action: Action::from_u8(action)?,
            flags,
            pattern,
            head,
            tail,
            bigrams: u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7]),
        })
    }

    pub fn inode(&self, i: usize) -> Option<InodeEntry> {
        let at = i.checked_mul(INODE_ENTRY_LEN)?;
        let e = self.inodes.get(at..at.checked_add(INODE_ENTRY_LEN)?)?;
        Some(InodeEntry {
            dev: rd_u64(e, 0)?,
            ino: rd_u64(e, 8)?,
            kinds: *e.get(16)?,
            action: Action::from_u8(*e.get(17)?)?,
            flags: *e.get(18)?,
        })
    }

    pub fn net(&self, i: usize) -> Option<NetEntry> {
        let at = i.checked_mul(NET_ENTRY_LEN)?;
        let e = self.nets.get(at..at.checked_add(NET_ENTRY_LEN)?)?;
        let addr: [u8; 16] = e.get(8..24)?.try_into().ok()?;
        let prefix_len = *e.get(1)?;
        let ip = match *e.first()? {
            4 if prefix_len <= 32 => {
                let [a, b, c, d, ..] = addr;
                Ip::V4([a, b, c, d])
            }
            6 if prefix_len <= 128 => Ip::V6(addr),
            _ => return None,
        };
        Some(NetEntry {
            ip,
            prefix_len,
            kinds: *e.get(2)?,
            action: Action::from_u8(*e.get(3)?)?,
            port_lo: rd_u16(e, 4)?,
            port_hi: rd_u16(e, 6)?,
        })
    }

    /// The strongest action of the path entries of `kind` that may match `path`.
    ///
    /// `path` is absolute and normalised when `resolved`; otherwise it is whatever the caller
    /// passed (relative to an unknown directory), and every entry that needs the full path is
    /// taken to match. `write` says whether an open may change the file ([`PATH_WRITE_ONLY`]).
    pub fn match_path(&self, kind: Kind, path: &[u8], write: bool, resolved: bool) -> Action {
        // The byte pairs of the path: an entry needing a pair the path lacks is skipped before
        // it is even decoded. Unresolved paths are not filtered (their entries are assumed).
        let have = if resolved { bigrams(path) } else { u64::MAX };
        let bit = kind.bit();
        let mut best = Action::Ignore;
        for i in 0..self.path_count() {
            let Some(raw) = self.path_raw(i) else {
                return Action::Ask;
            };
            let [
                _,
                _,
                _,
                _,
                _,
                _,
                _,
                kinds,
                action,
                flags,
                _,
                _,
                _,
                _,
                _,
                _,
                b0,
                b1,
                b2,
                b3,
                b4,
                b5,
                b6,
                b7,
            ] = raw;
            let need = u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7]);
            if kinds & bit == 0
                || need & !have != 0
                || action <= best as u8
                || flags & PATH_SELF_EXE != 0
                || (flags & PATH_WRITE_ONLY != 0 && kind == Kind::Open && !write)
            {
                continue;
            }
            let Some(e) = self.decode_path(raw) else {
                return Action::Ask;
            };
            let hit = if resolved || e.mtype.by_name() {
                path_matches(&e, path, resolved)
            } else {
                true
            };
            if hit {
                best = e.action;
                if best == Action::Ask {
                    break;
                }
            }
        }
        best
    }

    /// The strongest action of the inode entries of `kind` for (dev, ino).
    pub fn match_inode(&self, kind: Kind, dev: u64, ino: u64) -> Action {
        // Binary search for the first entry >= (dev, ino), then scan the equal run.
        let (mut lo, mut hi) = (0usize, self.inode_count());
        while lo < hi {
            let mid = lo.midpoint(hi);
            match self.inode(mid) {
                Some(e) if (e.dev, e.ino) < (dev, ino) => lo = mid.saturating_add(1),
                Some(_) => hi = mid,
                None => return Action::Ask,
            }
        }
        let mut best = Action::Ignore;
        let mut i = lo;
        while let Some(e) = self.inode(i) {
            if (e.dev, e.ino) != (dev, ino) {
                break;
            }
            if e.kinds & kind.bit() != 0 && e.action > best && e.flags & INODE_SELF_EXE == 0 {
                best = e.action;
            }
            i = i.saturating_add(1);
        }
        best
    }

    /// Per kind, the strongest action of the self-exe entries that match the calling process's
    /// executable: `exe` as `/proc/self/exe` names it and its (dev, ino); `None` when unknown,
    /// and then every self-exe entry is taken to match. Computed once per process and table.
    pub fn self_policy(&self, exe: Option<(&[u8], u64, u64)>) -> SelfPolicy {
        let mut out = SelfPolicy::default();
        for i in 0..self.path_count() {
            let Some(e) = self.path(i) else {
                return SelfPolicy::ASK_ALL;
            };
            if e.flags & PATH_SELF_EXE == 0 {
                continue;
            }
            if exe.is_none_or(|(p, _, _)| path_matches(&e, p, true)) {
                out.raise(e.kinds, e.action);
            }
        }
        for i in 0..self.inode_count() {
            let Some(e) = self.inode(i) else {
                return SelfPolicy::ASK_ALL;
            };
            if e.flags & INODE_SELF_EXE == 0 {
                continue;
            }
            if exe.is_none_or(|(_, d, n)| (d, n) == (e.dev, e.ino)) {
                out.raise(e.kinds, e.action);
            }
        }
        out
    }

    /// The strongest action of the network entries of `kind` for a destination. An IPv4-mapped
    /// IPv6 address (`::ffff:a.b.c.d`) also matches IPv4 entries.
    pub fn match_net(&self, kind: Kind, ip: Ip, port: u16) -> Action {
        let mapped = match ip {
            Ip::V6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d]) => {
                Some(Ip::V4([a, b, c, d]))
            }
            _ => None,
        };
        let mut best = Action::Ignore;
        for i in 0..self.net_count() {
            let Some(e) = self.net(i) else {
                return Action::Ask;
            };
            if e.kinds & kind.bit() == 0 || e.action <= best {
                continue;
            }
            if port < e.port_lo || port > e.port_hi {
                continue;
            }
            let hit = cidr_contains(e.ip, e.prefix_len, ip)
                || mapped.is_some_and(|m| cidr_contains(e.ip, e.prefix_len, m));
            if hit {
                best = e.action;
            }
        }
        best
    }
}

fn cidr_contains(net: Ip, prefix_len: u8, ip: Ip) -> bool {
    match (net, ip) {
        (Ip::V4(n), Ip::V4(a)) => prefix_eq(&n, &a, prefix_len),
        (Ip::V6(n), Ip::V6(a)) => prefix_eq(&n, &a, prefix_len),
        _ => false,
    }
}

/// True if the first `bits` bits of `a` and `b` agree.
fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let mut left = u32::from(bits);
    for (x, y) in a.iter().zip(b) {
        if left == 0 {
            return true;
        }
        let take = left.min(8);
        // take is 1..=8, so the shift is 0..=7 and the mask keeps the top `take` bits.
        let mask = 0xffu8 << (8u32.saturating_sub(take));
        if (x ^ y) & mask != 0 {
            return false;
        }
        left = left.saturating_sub(take);
    }
    left == 0
}

/// The last component of a path ("" for "/" or a path ending in "/").
pub fn basename(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => path.get(i.saturating_add(1)..).unwrap_or(&[]),
        None => path,
    }
}

fn path_matches(e: &PathEntry<'_>, path: &[u8], resolved: bool) -> bool {
    let pat = e.pattern;
    if !resolved {
        // Only name-based entries are tested on an unresolved path, and only when its last
        // component is a real name; "." or ".." could be anything.
        let name = basename(path);
        if name.is_empty() || name == b"." || name == b".." {
            return true;
        }
    }
    match e.mtype {
        MatchType::Exact => path.len() == pat.len() && starts_with(path, pat),
        MatchType::Prefix => starts_with(path, pat),
        MatchType::Suffix => ends_with(path, pat),
        MatchType::Basename => basename(path) == pat,
        MatchType::Contains => find(path, pat).is_some(),
        MatchType::Glob => compiled_glob_matches(pat, e.head.len(), e.tail.len(), path),
    }
}

/// Which of 64 buckets the byte pair (a, b) falls in.
#[inline]
fn bigram_bit(a: u8, b: u8) -> u64 {
    let x = (u32::from(a) << 8 | u32::from(b)).wrapping_mul(0x9E37_79B1);
    1u64 << (x >> 26)
}

/// The set of byte pairs in `s`, hashed into 64 bits.
pub fn bigrams(s: &[u8]) -> u64 {
    let mut it = s.iter();
    let Some(&first) = it.next() else {
        return 0;
    };
    let (mut m, mut prev) = (0u64, first);
    for &b in it {
        m |= bigram_bit(prev, b);
        prev = b;
    }
    m
}

/// The byte pairs every path matching the entry must contain: those inside its literal text
/// (for a compiled glob, inside each piece — never across a wildcard).
pub fn entry_bigrams(mtype: MatchType, pattern: &[u8]) -> u64 {
    match mtype {
        MatchType::Glob => pattern.split(|&b| b == 0).fold(0, |m, p| m | bigrams(p)),
        _ => bigrams(pattern),
    }
}

/// Matches a compiled glob (pieces separated by NUL = any run) whose first piece is `head`
/// bytes long and last piece `tail` bytes long.
fn compiled_glob_matches(pat: &[u8], head: usize, tail: usize, path: &[u8]) -> bool {
    if head == pat.len() {
        // No wildcard at all.
        return path.len() == pat.len() && starts_with(path, pat);
    }
    let (Some(h), Some(t)) = (pat.get(..head), pat.get(pat.len().saturating_sub(tail)..)) else {
        return true;
    };
    // Most paths fail on the first two tests.
    if !starts_with(path, h) || !ends_with(path, t) {
        return false;
    }
    let Some(end) = path.len().checked_sub(tail).filter(|&e| e >= head) else {
        return false;
    };
    // The pieces between the first and the last, found leftmost in order (optimal when every
    // gap is "any run"), without overlapping the last.
    let middle = pat
        .get(head.saturating_add(1)..pat.len().saturating_sub(tail).saturating_sub(1))
        .unwrap_or(&[]);
    let mut at = head;
    if middle.is_empty() {
        return true;
    }
    for piece in middle.split(|&b| b == 0) {
        let Some(i) = path.get(at..end).and_then(|rest| find(rest, piece)) else {
            return false;
        };
        at = at.saturating_add(i).saturating_add(piece.len());
    }
    true
}

/// The lengths of a compiled glob's first and last piece (both the whole pattern when it has no
/// wildcard): every string it may match starts with the one and ends with the other.
pub fn compiled_literals(compiled: &[u8]) -> (usize, usize) {
    match (
        compiled.iter().position(|&b| b == 0),
        compiled.iter().rposition(|&b| b == 0),
    ) {
        (Some(first), Some(last)) => (first, compiled.len().saturating_sub(last).saturating_sub(1)),
        _ => (compiled.len(), compiled.len()),
    }
}

/// Compiles a rule glob into `out` for the table: its literal pieces (see [`glob_may_match`])
/// separated by NUL bytes. Returns the length (never more than the glob's), or `None` if `out`
/// is too short or the glob contains a NUL.
pub fn compile_glob(glob: &[u8], out: &mut [u8]) -> Option<usize> {
    if glob.contains(&0) {
        return None;
    }
    let mut pieces = Pieces { pat: glob, pos: 0 };
    let mut len = 0usize;
    while let Some((lit, wild)) = pieces.next_piece() {
        let end = len.checked_add(lit.len())?;
        out.get_mut(len..end)?.copy_from_slice(lit);
        len = end;
        if !wild {
            break;
        }
        *out.get_mut(len)? = 0;
        len = len.checked_add(1)?;
    }
    Some(len)
}

/// `s.starts_with(p)`, but first compares the last byte of `p` inline: most candidates here
/// fail on it without a call to memcmp, and the ones that share a long head with `p` get the
/// vectorised compare.
#[inline]
fn starts_with(s: &[u8], p: &[u8]) -> bool {
    match (s.get(..p.len()), p.last()) {
        (Some(h), Some(l)) => h.last() == Some(l) && h == p,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// `s.ends_with(p)`, first comparing the first byte of `p` inline.
#[inline]
fn ends_with(s: &[u8], p: &[u8]) -> bool {
    let Some(start) = s.len().checked_sub(p.len()) else {
        return false;
    };
    match (s.get(start..), p.first()) {
        (Some(t), Some(f)) => t.first() == Some(f) && t == p,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Position of the first occurrence of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    // Anchor on the needle's first byte that is not '/': in paths, '/' is everywhere and the
    // byte after it (often '.' of a dotfile) is a far better filter.
    let k = needle.iter().position(|&b| b != b'/').unwrap_or(0);
    let Some(&anchor) = needle.get(k) else {
        return Some(0);
    };
    let last = hay.len().checked_sub(needle.len())?; // the last possible start
    let end = last.checked_add(k)?.checked_add(1)?; // anchors lie in hay[k..end]
    let mut from = k;
    while from < end {
        let i = from.checked_add(hay.get(from..end)?.iter().position(|&b| b == anchor)?)?;
        let start = i.checked_sub(k)?;
        if hay.get(start..).is_some_and(|h| starts_with(h, needle)) {
            return Some(start);
        }
        from = i.checked_add(1)?;
    }
    None
}

/// Splits a glob into literal pieces separated by wildcard constructs.
struct Pieces<'a> {
    pat: &'a [u8],
    pos: usize,
}

impl<'a> Pieces<'a> {
    /// The next literal and whether a wildcard follows it; `None` after the last literal.
    fn next_piece(&mut self) -> Option<(&'a [u8], bool)> {
        if self.pos > self.pat.len() {
            return None;
        }
        let start = self.pos;
        let rest = self.pat.get(start..).unwrap_or(&[]);
        let lit_len = rest
            .iter()
            .position(|b| matches!(b, b'*' | b'?' | b'[' | b'{' | b'\\'))
            .unwrap_or(rest.len());
        let lit = rest.get(..lit_len).unwrap_or(&[]);
        let mut i = lit_len;
        if i >= rest.len() {
            self.pos = self.pat.len().saturating_add(1);
            return Some((lit, false));
        }
        // Consume a run of wildcard constructs.
        while let Some(&b) = rest.get(i) {
            match b {
                b'*' | b'?' => i = i.saturating_add(1),
                // An escaped byte is literal in the rule language; as a wildcard it is a
                // superset, whatever the escape means.
                b'\\' => i = i.saturating_add(2),
                b'[' => {
                    // "[!" and a first "]" are part of the class.
                    let mut j = i.saturating_add(1);
                    if rest.get(j) == Some(&b'!') {
                        j = j.saturating_add(1);
                    }
                    j = j.saturating_add(1);
                    i = match rest
                        .get(j..)
                        .and_then(|r| r.iter().position(|&c| c == b']'))
                    {
                        Some(k) => j.saturating_add(k).saturating_add(1),
                        None => rest.len(),
                    };
                }
                b'{' => {
                    i = match rest
                        .get(i..)
                        .and_then(|r| r.iter().position(|&c| c == b'}'))
                    {
                        Some(k) => i.saturating_add(k).saturating_add(1),
                        None => rest.len(),
                    };
                }
                _ => break,
            }
        }
        self.pos = start.saturating_add(i.min(rest.len()));
        Some((lit, true))
    }
}

/// True if `text` may match the rule glob `pat`.
///
/// A superset of the rule language's glob: every wildcard construct matches any run of bytes
/// (including `/`), so the test is that the literal pieces occur in order, the first at the
/// start and the last at the end. Linear in `text` per piece; no allocation, no recursion.
pub fn glob_may_match(pat: &[u8], text: &[u8]) -> bool {
    let mut pieces = Pieces { pat, pos: 0 };
    let Some((first, wild)) = pieces.next_piece() else {
        return text.is_empty();
    };
    if !wild {
        return text == first;
    }
    if !starts_with(text, first) {
        return false;
    }
    middle_pieces_match(pieces, text, first.len())
}

/// The rest of a glob match: `text[..t]` matched the glob up to `pieces`, which stands at a
/// wildcard run. Finds each following piece leftmost (which is optimal for "any run" gaps); the
/// last piece must end the text.
fn middle_pieces_match(mut pieces: Pieces<'_>, text: &[u8], mut t: usize) -> bool {
    let mut wild = true;
    while wild {
        let Some((lit, w)) = pieces.next_piece() else {
            return true;
        };
        let rest = text.get(t..).unwrap_or(&[]);
        if !w {
            return ends_with(rest, lit);
        }
        match find(rest, lit) {
            Some(i) => t = t.saturating_add(i).saturating_add(lit.len()),
            None => return false,
        }
        wild = w;
    }
    true
}

/// True if `path` is already absolute and normal (no empty, `.` or `..` component, no trailing
/// slash), so it can be matched as is.
pub fn is_normal_absolute(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    if path.len() == 1 {
        return true;
    }
    // Runs on every hooked path: only the bytes after each '/' are looked at.
    for (i, &b) in path.iter().enumerate() {
        if b != b'/' {
            continue;
        }
        let next = |k: usize| path.get(i.saturating_add(k)).copied();
        match (next(1), next(2), next(3)) {
            // "//", or a trailing "/"
            (Some(b'/') | None, _, _) => return false,
            // "/./" or a trailing "/."
            (Some(b'.'), Some(b'/') | None, _) => return false,
            // "/../" or a trailing "/.."
            (Some(b'.'), Some(b'.'), Some(b'/') | None) => return false,
            _ => {}
        }
    }
    true
}

/// Joins `rel` to the absolute directory `base` (ignored when `rel` is absolute) and normalises
/// the result lexically into `out`: empty and `.` components are dropped, `..` removes the
/// previous component (never above `/`), no trailing slash. Returns the length, or `None` if
/// `base` is not absolute or the result does not fit.
///
/// Lexical `..` differs from the kernel's when the component before it is a symlink; rules are
/// matched against this form, and inode entries catch what it misses.
pub fn normalize(base: &[u8], rel: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut len = 0usize;
    let push = |out: &mut [u8], comp: &[u8], len: &mut usize| -> Option<()> {
        match comp {
            b"" | b"." => {}
            b".." => {
                // Drop back to the previous '/'.
                let cut = out
                    .get(..*len)?
                    .iter()
                    .rposition(|&b| b == b'/')
                    .unwrap_or(0);
                *len = cut;
            }
            _ => {
                let end = len.checked_add(1)?.checked_add(comp.len())?;
                let dst = out.get_mut(*len..end)?;
                let (slash, rest) = dst.split_first_mut()?;
                *slash = b'/';
                rest.copy_from_slice(comp);
                *len = end;
            }
        }
        Some(())
    };
    if rel.first() != Some(&b'/') {
        if base.first() != Some(&b'/') {
            return None;
        }
        for c in base.split(|&b| b == b'/') {
            push(out, c, &mut len)?;
        }
    }
    for c in rel.split(|&b| b == b'/') {
        push(out, c, &mut len)?;
    }
    if len == 0 {
        *out.first_mut()? = b'/';
        len = 1;
    }
    Some(len)
}

#[cfg(feature = "std")]
pub use writer::{BuildError, TableBuilder, mark_stale};

#[cfg(feature = "std")]
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod writer {
    //! Building and publishing a table (the daemon's side).
    extern crate std;

    use std::fs::{self, File, OpenOptions};
    use std::io::{self, Write};
    use std::net::IpAddr;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    use std::path::{Path, PathBuf};
    use std::vec::Vec;

    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum BuildError {
        /// A pattern longer than 65535 bytes.
        PatternTooLong,
        /// Prefix length beyond the address size.
        BadPrefix,
        /// `kinds` empty or with unknown bits, or action Ignore.
        BadEntry,
        TooLarge,
    }

    impl core::fmt::Display for BuildError {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            match self {
                BuildError::PatternTooLong => f.write_str("pattern longer than 65535 bytes"),
                BuildError::BadPrefix => f.write_str("CIDR prefix longer than the address"),
                BuildError::BadEntry => f.write_str("entry without kinds or with action ignore"),
                BuildError::TooLarge => f.write_str("table larger than the maximum"),
            }
        }
    }

    impl std::error::Error for BuildError {}

    #[derive(Debug, Clone)]
    struct PathSpec {
        mtype: MatchType,
        kinds: u8,
        action: Action,
        flags: u8,
        pattern: Vec<u8>,
    }

    /// Collects entries and writes a table. Entries are not deduplicated; inode entries are
    /// sorted on output.
    #[derive(Debug, Clone)]
    pub struct TableBuilder {
        generation: u64,
        fail_closed: bool,
        timeout_ms: u32,
        policy: [Action; 5],
        paths: Vec<PathSpec>,
        inodes: Vec<InodeEntry>,
        nets: Vec<NetEntry>,
    }

    fn check(kinds: u8, action: Action) -> Result<(), BuildError> {
        if kinds == 0 || kinds & !ALL_KINDS != 0 || action == Action::Ignore {
            return Err(BuildError::BadEntry);
        }
        Ok(())
    }

    impl TableBuilder {
        /// An empty table: every kind Ignore, fail open, default timeout.
        pub fn new(generation: u64) -> TableBuilder {
            TableBuilder {
                generation,
                fail_closed: false,
                timeout_ms: DEFAULT_TIMEOUT_MS,
                policy: [Action::Ignore; 5],
                paths: Vec::new(),
                inodes: Vec::new(),
                nets: Vec::new(),
            }
        }

        pub fn fail_closed(&mut self, yes: bool) -> &mut Self {
            self.fail_closed = yes;
            self
        }

        pub fn timeout_ms(&mut self, ms: u32) -> &mut Self {
            self.timeout_ms = ms.clamp(MIN_TIMEOUT_MS, MAX_TIMEOUT_MS);
            self
        }

        /// What the shim does with calls of `kind` that no entry matches.
        pub fn policy(&mut self, kind: Kind, action: Action) -> &mut Self {
            self.policy[kind.index()] = action;
            self
        }

        pub fn path(
            &mut self,
            kinds: u8,
            action: Action,
            mtype: MatchType,
            pattern: &[u8],
        ) -> Result<&mut Self, BuildError> {
            self.path_with_flags(kinds, action, mtype, pattern, 0)
        }

        /// A path entry with [`PATH_WRITE_ONLY`] or other flags.
        pub fn path_with_flags(
            &mut self,
            kinds: u8,
            action: Action,
            mtype: MatchType,
            pattern: &[u8],
            flags: u8,
        ) -> Result<&mut Self, BuildError> {
            check(kinds, action)?;
            if pattern.len() > usize::from(u16::MAX) {
                return Err(BuildError::PatternTooLong);
            }
            let pattern = if mtype == MatchType::Glob {
                let mut c = std::vec![0u8; pattern.len()];
                let n = compile_glob(pattern, &mut c).ok_or(BuildError::BadEntry)?;
                c.truncate(n);
                c
            } else {
                pattern.to_vec()
            };
            self.paths.push(PathSpec {
                mtype,
                kinds,
                action,
                flags,
                pattern,
            });
            Ok(self)
        }

        /// A file identity (`st_dev`, `st_ino` as `stat(2)` reports them).
        pub fn inode(
            &mut self,
            kinds: u8,
            action: Action,
            dev: u64,
            ino: u64,
        ) -> Result<&mut Self, BuildError> {
            check(kinds, action)?;
            self.inodes.push(InodeEntry {
                dev,
                ino,
                kinds,
                action,
                flags: 0,
            });
            Ok(self)
        }

        /// Every call of `kinds` made by a process whose executable matches `pattern` (compared
        /// with the path `/proc/self/exe` names) gets `action`.
        pub fn exe_path(
            &mut self,
            kinds: u8,
            action: Action,
            mtype: MatchType,
            pattern: &[u8],
        ) -> Result<&mut Self, BuildError> {
            self.path_with_flags(kinds, action, mtype, pattern, PATH_SELF_EXE)
        }

        /// Every call of `kinds` made by a process whose executable is (dev, ino) gets `action`.
        pub fn exe_inode(
            &mut self,
            kinds: u8,
            action: Action,
            dev: u64,
            ino: u64,
        ) -> Result<&mut Self, BuildError> {
            check(kinds, action)?;
            self.inodes.push(InodeEntry {
                dev,
                ino,
                kinds,
                action,
                flags: INODE_SELF_EXE,
            });
            Ok(self)
        }

        /// A destination: address/prefix_len and an inclusive port range (0..=65535 for any).
        pub fn net(
            &mut self,
            kinds: u8,
            action: Action,
            addr: IpAddr,
            prefix_len: u8,
            ports: core::ops::RangeInclusive<u16>,
        ) -> Result<&mut Self, BuildError> {
            check(kinds, action)?;
            let ip = match addr {
                IpAddr::V4(a) if prefix_len <= 32 => Ip::V4(a.octets()),
                IpAddr::V6(a) if prefix_len <= 128 => Ip::V6(a.octets()),
                _ => return Err(BuildError::BadPrefix),
            };
            self.nets.push(NetEntry {
                ip,
                prefix_len,
                kinds,
                action,
                port_lo: *ports.start(),
                port_hi: *ports.end(),
            });
            Ok(self)
        }

        /// The whole file: prefix and body.
        pub fn to_bytes(&self) -> Result<Vec<u8>, BuildError> {
            let paths_off = HEADER_LEN;
            let strings_off = paths_off + self.paths.len() * PATH_ENTRY_LEN;
            let strings_len: usize = self.paths.iter().map(|p| p.pattern.len()).sum();
            // Keep the 8-byte entries aligned (not required by the reader, kind to debuggers).
            let inodes_off = (strings_off + strings_len).next_multiple_of(8);
            let mut inodes = self.inodes.clone();
            inodes.sort_by_key(|e| (e.dev, e.ino));
            let nets_off = inodes_off + inodes.len() * INODE_ENTRY_LEN;
            let total = nets_off + self.nets.len() * NET_ENTRY_LEN;
            if total > MAX_LEN {
                return Err(BuildError::TooLarge);
            }
            let mut body = Vec::with_capacity(total);
            body.extend_from_slice(&VERSION.to_le_bytes());
            body.extend_from_slice(&(HEADER_LEN as u16).to_le_bytes());
            let flags = if self.fail_closed {
                FLAG_FAIL_CLOSED
            } else {
                0
            };
            body.extend_from_slice(&flags.to_le_bytes());
            body.extend_from_slice(&self.generation.to_le_bytes());
            body.extend_from_slice(&self.timeout_ms.to_le_bytes());
            let mut policy = [0u8; 8];
            for (i, a) in self.policy.iter().enumerate() {
                policy[i] = *a as u8;
            }
            body.extend_from_slice(&policy);
            for v in [
                paths_off,
                self.paths.len(),
                strings_off,
                strings_len,
                inodes_off,
                inodes.len(),
                nets_off,
                self.nets.len(),
            ] {
                body.extend_from_slice(&(v as u32).to_le_bytes());
            }
            body.extend_from_slice(&0u32.to_le_bytes());
            debug_assert_eq!(body.len(), HEADER_LEN);
            let mut off = 0usize;
            for p in &self.paths {
                // Offsets are relative to the start of the strings section.
                body.extend_from_slice(&(off as u32).to_le_bytes());
                body.extend_from_slice(&(p.pattern.len() as u16).to_le_bytes());
                body.extend_from_slice(&[p.mtype as u8, p.kinds, p.action as u8, p.flags]);
                let (h, t) = if p.mtype == MatchType::Glob {
                    compiled_literals(&p.pattern)
                } else {
                    (0, 0)
                };
                body.extend_from_slice(&(h as u16).to_le_bytes());
                body.extend_from_slice(&(t as u16).to_le_bytes());
                body.extend_from_slice(&[0, 0]);
                body.extend_from_slice(&entry_bigrams(p.mtype, &p.pattern).to_le_bytes());
                off += p.pattern.len();
            }
            for p in &self.paths {
                body.extend_from_slice(&p.pattern);
            }
            body.resize(inodes_off, 0);
            for e in &inodes {
                body.extend_from_slice(&e.dev.to_le_bytes());
                body.extend_from_slice(&e.ino.to_le_bytes());
                body.extend_from_slice(&[e.kinds, e.action as u8, e.flags, 0, 0, 0, 0, 0]);
            }
            for e in &self.nets {
                let (family, addr) = match e.ip {
                    Ip::V4(a) => {
                        let mut b = [0u8; 16];
                        b[..4].copy_from_slice(&a);
                        (4u8, b)
                    }
                    Ip::V6(a) => (6u8, a),
                };
                body.extend_from_slice(&[family, e.prefix_len, e.kinds, e.action as u8]);
                body.extend_from_slice(&e.port_lo.to_le_bytes());
                body.extend_from_slice(&e.port_hi.to_le_bytes());
                body.extend_from_slice(&addr);
            }
            debug_assert_eq!(body.len(), total);
            let mut file = Vec::with_capacity(PREFIX_LEN + total);
            file.extend_from_slice(&MAGIC.to_le_bytes());
            file.extend_from_slice(&0u32.to_le_bytes());
            file.extend_from_slice(&(total as u32).to_le_bytes());
            file.extend_from_slice(&checksum(&body).to_le_bytes());
            file.extend_from_slice(&body);
            Ok(file)
        }

        /// Publishes the table as `dir/preload.table`, replacing the previous one atomically:
        /// mark the old file stale, write a temporary file (0644) in `dir`, fsync, rename.
        ///
        /// The old file is marked *before* the rename so that a crash in between cannot leave
        /// processes on an unmarked superseded table (they keep re-checking the path until the
        /// new file appears). Returns the path written.
        pub fn publish(&self, dir: &Path) -> io::Result<PathBuf> {
            let bytes = self
                .to_bytes()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let path = dir.join(FILE_NAME);
            let tmp = dir.join(std::format!(".{FILE_NAME}.{}.tmp", std::process::id()));
            let _ = fs::remove_file(&tmp);
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&tmp)?;
            // create_new applies the umask; the shim requires exactly "not group/other
            // writable", and readers need o+r.
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            drop(f);
            mark_stale(&path)?;
            if let Err(e) = fs::rename(&tmp, &path) {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(path)
        }
    }

    /// Sets the `stale` word of the table at `path`, if there is one. Call it also before
    /// removing a table for good.
    pub fn mark_stale(path: &Path) -> io::Result<()> {
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => {
                let mut magic = [0u8; 4];
                if f.read_exact_at(&mut magic, 0).is_ok() && u32::from_le_bytes(magic) == MAGIC {
                    f.write_all_at(&1u32.to_le_bytes(), STALE_OFFSET as u64)?;
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)]
mod tests {
    extern crate std;
    use std::string::String;

    use super::*;

    #[test]
    fn glob_superset() {
        let g = |p: &str, t: &str| glob_may_match(p.as_bytes(), t.as_bytes());
        assert!(g("/home/*/.ssh/id_*", "/home/dev/.ssh/id_ed25519"));
        assert!(g("/home/*/.ssh/id_*", "/home/dev/.ssh/id_"));
        // A superset: `*` may cross '/'.
        assert!(g("/home/*/.ssh/id_*", "/home/a/b/.ssh/id_rsa"));
        assert!(!g("/home/*/.ssh/id_*", "/home/dev/.ssh/known_hosts"));
        assert!(!g("/home/*/.ssh/id_*", "/root/.ssh/id_rsa"));
        assert!(g("**/*.gguf", "/srv/models/llama.gguf"));
        assert!(!g("**/*.gguf", "/srv/models/llama.gguf.txt"));
        assert!(g("/etc/passwd", "/etc/passwd"));
        assert!(!g("/etc/passwd", "/etc/passwd2"));
        assert!(g("/a/[a-z]x", "/a/bx"));
        assert!(g("/a/[!]]x", "/a/qx"));
        assert!(g("/a/{b,c}/d", "/a/c/d"));
        assert!(g("/a/\\*", "/a/*"));
        assert!(g("", ""));
        assert!(!g("", "x"));
        assert!(g("*", ""));
        // Pieces may not overlap: "ab*ba" needs at least "ab" + "ba".
        assert!(!g("ab*ba", "aba"));
        assert!(g("ab*ba", "abba"));
        // The compiled form the table stores matches exactly what the glob itself may match.
        let globs: [&str; 12] = [
            "/home/*/.ssh/id_*",
            "**/*.gguf",
            "/etc/passwd",
            "/a/*/b",
            "ab*ba",
            "*",
            "",
            "/a/[!]]x",
            "/x[abc",
            "/a/{b,c}/d",
            "/h/*/.config/gcloud/**",
            "a*b*c*d",
        ];
        let texts: [&str; 14] = [
            "/home/dev/.ssh/id_ed25519",
            "/home/dev/project/src/main.rs",
            "/srv/m.gguf",
            "/etc/passwd",
            "/a/x/b",
            "/a/b",
            "aba",
            "abba",
            "",
            "/a/qx",
            "/xq",
            "/h/u/.config/gcloud/creds.json",
            "abcd",
            "a-b-c-x",
        ];
        for g in globs {
            let mut c = [0u8; 64];
            let n = compile_glob(g.as_bytes(), &mut c).unwrap();
            let c = &c[..n];
            let (h, t) = compiled_literals(c);
            for x in texts {
                assert_eq!(
                    compiled_glob_matches(c, h, t, x.as_bytes()),
                    glob_may_match(g.as_bytes(), x.as_bytes()),
                    "{g:?} vs {x:?}"
                );
            }
        }
        assert_eq!(compiled_literals(b"/home/\0/.ssh/id_\0"), (6, 0));
        assert_eq!(compiled_literals(b"/etc/passwd"), (11, 11));
        // Unclosed constructs consume the rest as a wildcard.
        assert!(g("/x[abc", "/xanything"));
    }

    #[test]
    fn normalize_paths() {
        let n = |b: &str, r: &str| {
            let mut out = [0u8; 64];
            normalize(b.as_bytes(), r.as_bytes(), &mut out)
                .map(|l| String::from_utf8(out[..l].to_vec()).unwrap())
        };
        assert_eq!(n("/home/dev", "x").as_deref(), Some("/home/dev/x"));
        assert_eq!(n("/home/dev", "./a//b/").as_deref(), Some("/home/dev/a/b"));
        assert_eq!(n("/home/dev", "../../../etc").as_deref(), Some("/etc"));
        assert_eq!(n("/", "..").as_deref(), Some("/"));
        assert_eq!(n("relative", "x"), None);
        assert_eq!(n("ignored", "/abs/./x/../y").as_deref(), Some("/abs/y"));
        assert_eq!(n("/a", &"x".repeat(100)), None);
        assert!(is_normal_absolute(b"/home/dev/x"));
        assert!(is_normal_absolute(b"/"));
        assert!(!is_normal_absolute(b"/home//x"));
        assert!(!is_normal_absolute(b"/home/./x"));
        assert!(!is_normal_absolute(b"/home/x/"));
        assert!(!is_normal_absolute(b"/home/x/.."));
        assert!(!is_normal_absolute(b"home"));
        assert!(!is_normal_absolute(b"/a/."));
        assert!(!is_normal_absolute(b"/a/../b"));
        assert!(!is_normal_absolute(b"/."));
        assert!(!is_normal_absolute(b"//"));
        assert!(is_normal_absolute(b"/a/.hidden/..x/...x/..."));
        assert!(is_normal_absolute(b"/a/.b"));
        let f = |h: &str, n: &str| find(h.as_bytes(), n.as_bytes());
        assert_eq!(f("/home/dev/.ssh/id_rsa", "/.ssh/id_"), Some(9));
        assert_eq!(f("/home/dev/project/src/main.rs", "/.ssh/id_"), None);
        assert_eq!(f("abc", ""), Some(0));
        assert_eq!(f("", "a"), None);
        assert_eq!(f("///", "//"), Some(0));
        assert_eq!(f("a/b", "/b"), Some(1));
        assert_eq!(f("xx.gguf", ".gguf"), Some(2));
        for (h, n) in [
            ("aaab", "ab"),
            ("/x/y/z", "/z"),
            ("ab", "abc"),
            ("/./.", "/."),
        ] {
            assert_eq!(f(h, n), h.find(n), "{h} {n}");
        }
    }

    #[cfg(feature = "std")]
    #[test]
    fn build_parse_and_match() {
        use std::net::IpAddr;
        let mut b = TableBuilder::new(42);
        b.fail_closed(true).timeout_ms(150);
        b.policy(Kind::Exec, Action::Ask);
        b.policy(Kind::Connect, Action::Report);
        b.path(
            Kind::Open.bit(),
            Action::Ask,
            MatchType::Prefix,
            b"/home/dev/.ssh/",
        )
        .unwrap();
        b.path_with_flags(
            Kind::Open.bit(),
            Action::Ask,
            MatchType::Prefix,
            b"/etc/",
            PATH_WRITE_ONLY,
        )
        .unwrap();
        b.path(
            Kind::Open.bit() | Kind::Watch.bit(),
            Action::Report,
            MatchType::Suffix,
            b".gguf",
        )
        .unwrap();
        b.path(
            Kind::Connect.bit(),
            Action::Ask,
            MatchType::Exact,
            b"/run/docker.sock",
        )
        .unwrap();
        b.inode(Kind::Open.bit(), Action::Ask, 7, 99).unwrap();
        b.inode(Kind::Exec.bit(), Action::Ask, 7, 5).unwrap();
        b.inode(Kind::Exec.bit(), Action::Report, 7, 99).unwrap();
        b.net(
            Kind::Connect.bit(),
            Action::Ask,
            "10.0.0.0".parse::<IpAddr>().unwrap(),
            8,
            0..=65535,
        )
        .unwrap();
        b.net(
            Kind::Connect.bit() | Kind::Send.bit(),
            Action::Ask,
            "::1".parse::<IpAddr>().unwrap(),
            128,
            11434..=11434,
        )
        .unwrap();
        let bytes = b.to_bytes().unwrap();
        let (t, s) = Table::parse_file(&bytes).unwrap();
        assert_eq!(t.generation(), 42);
        assert!(t.fail_closed());
        assert_eq!(t.timeout_ms(), 150);
        assert_eq!(t.policy(Kind::Exec), Action::Ask);
        assert_eq!(t.policy(Kind::Open), Action::Ignore);
        assert!(s.has(Kind::Open, Summary::ABS_PATHS));
        assert!(s.has(Kind::Open, Summary::NAME_PATHS));
        assert!(s.has(Kind::Open, Summary::INODES));
        assert!(!s.has(Kind::Send, Summary::INODES));
        assert!(s.has(Kind::Send, Summary::NETS));

        let m = |p: &str, w: bool| t.match_path(Kind::Open, p.as_bytes(), w, true);
        assert_eq!(m("/home/dev/.ssh/id_rsa", false), Action::Ask);
        assert_eq!(m("/home/dev/.sshx", false), Action::Ignore);
        assert_eq!(m("/etc/passwd", false), Action::Ignore);
        assert_eq!(m("/etc/passwd", true), Action::Ask);
        assert_eq!(m("/srv/m.gguf", false), Action::Report);
        assert_eq!(m("/usr/lib/libc.so.6", true), Action::Ignore);
        // Unresolved relative paths: prefix entries are assumed to match; name entries tested.
        assert_eq!(t.match_path(Kind::Open, b"x", false, false), Action::Ask);
        assert_eq!(
            t.match_path(Kind::Watch, b"a/m.gguf", false, false),
            Action::Report
        );
        assert_eq!(
            t.match_path(Kind::Watch, b"a/m.txt", false, false),
            Action::Ignore
        );
        assert_eq!(
            t.match_path(Kind::Watch, b"a/..", false, false),
            Action::Report
        );
        assert_eq!(
            t.match_path(Kind::Connect, b"/run/docker.sock", false, true),
            Action::Ask
        );

        assert_eq!(t.match_inode(Kind::Open, 7, 99), Action::Ask);
        assert_eq!(t.match_inode(Kind::Exec, 7, 99), Action::Report);
        assert_eq!(t.match_inode(Kind::Exec, 7, 5), Action::Ask);
        assert_eq!(t.match_inode(Kind::Open, 7, 5), Action::Ignore);
        assert_eq!(t.match_inode(Kind::Open, 8, 99), Action::Ignore);

        // Self-exe entries: only the named program's calls are affected.
        let mut sb = TableBuilder::new(3);
        sb.exe_path(
            Kind::Connect.bit(),
            Action::Ask,
            MatchType::Basename,
            b"curl",
        )
        .unwrap();
        sb.exe_inode(Kind::Open.bit(), Action::Report, 5, 6)
            .unwrap();
        let sbytes = sb.to_bytes().unwrap();
        let (st, ss) = Table::parse_file(&sbytes).unwrap();
        assert!(!ss.has(Kind::Connect, Summary::ABS_PATHS | Summary::NAME_PATHS));
        assert!(!ss.has(Kind::Open, Summary::INODES));
        assert_eq!(
            st.match_path(Kind::Connect, b"/usr/bin/curl", false, true),
            Action::Ignore
        );
        assert_eq!(st.match_inode(Kind::Open, 5, 6), Action::Ignore);
        let curl = st.self_policy(Some((b"/usr/bin/curl", 1, 1)));
        assert_eq!(curl.get(Kind::Connect), Action::Ask);
        assert_eq!(curl.get(Kind::Open), Action::Ignore);
        let other = st.self_policy(Some((b"/usr/bin/wget", 5, 6)));
        assert_eq!(other.get(Kind::Connect), Action::Ignore);
        assert_eq!(other.get(Kind::Open), Action::Report);
        let unknown = st.self_policy(None);
        assert_eq!(unknown.get(Kind::Connect), Action::Ask);
        assert_eq!(unknown.get(Kind::Open), Action::Report);
        assert_eq!(SelfPolicy::from_u64(curl.to_u64()), curl);

        assert_eq!(
            t.match_net(Kind::Connect, Ip::V4([10, 1, 2, 3]), 443),
            Action::Ask
        );
        assert_eq!(
            t.match_net(Kind::Connect, Ip::V4([11, 1, 2, 3]), 443),
            Action::Ignore
        );
        let mapped = Ip::V6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 9, 9, 9]);
        assert_eq!(t.match_net(Kind::Connect, mapped, 1), Action::Ask);
        let lo6 = Ip::V6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(t.match_net(Kind::Send, lo6, 11434), Action::Ask);
        assert_eq!(t.match_net(Kind::Send, lo6, 11435), Action::Ignore);
        assert_eq!(
            t.match_net(Kind::Send, Ip::V4([10, 0, 0, 1]), 1),
            Action::Ignore
        );
    }

    #[cfg(feature = "std")]
    #[test]
    fn corrupt_tables_are_rejected_never_misread() {
        let mut b = TableBuilder::new(1);
        b.path(
            Kind::Open.bit(),
            Action::Ask,
            MatchType::Glob,
            b"/home/*/.aws/**",
        )
        .unwrap();
        b.inode(Kind::Open.bit(), Action::Ask, 1, 2).unwrap();
        b.net(
            Kind::Connect.bit(),
            Action::Ask,
            "127.0.0.1".parse().unwrap(),
            32,
            1..=2,
        )
        .unwrap();
        let good = b.to_bytes().unwrap();
        assert!(Table::parse_file(&good).is_ok());
        // Every truncation and every single-byte change is rejected or parsed without panic.
        for cut in 0..good.len() {
            assert!(Table::parse_file(&good[..cut]).is_err());
        }
        for i in 0..good.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[i] = v;
                if let Ok((t, _)) = Table::parse_file(&bad) {
                    let _ = t.match_path(Kind::Open, b"/home/x/.aws/c", true, true);
                    let _ = t.match_inode(Kind::Open, 1, 2);
                    let _ = t.match_net(Kind::Connect, Ip::V4([127, 0, 0, 1]), 1);
                }
                // The O(1) view must never panic either, whatever the body holds.
                if let Some(body) = bad.get(PREFIX_LEN..)
                    && let Ok(t) = Table::view(body)
                {
                    let _ = t.match_path(Kind::Open, b"/home/x/.aws/c", true, false);
                    let _ = t.match_inode(Kind::Open, 1, 2);
                    let _ = t.match_net(Kind::Connect, Ip::V4([127, 0, 0, 1]), 1);
                }
            }
        }
        // A checksum that matches but a section pointing outside the body.
        let mut body = good[PREFIX_LEN..].to_vec();
        body[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut file = good[..PREFIX_LEN].to_vec();
        file[12..16].copy_from_slice(&checksum(&body).to_le_bytes());
        file.extend_from_slice(&body);
        assert_eq!(
            Table::parse_file(&file).unwrap_err(),
            TableError::BadSection
        );
    }

    #[cfg(feature = "std")]
    #[test]
    fn publish_marks_the_old_file_stale() {
        struct Cleanup(std::path::PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let dir = std::env::temp_dir().join(std::format!("oknek-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _cleanup = Cleanup(dir.clone());
        let p = TableBuilder::new(1).publish(&dir).unwrap();
        let old = std::fs::File::open(&p).unwrap();
        TableBuilder::new(2).publish(&dir).unwrap();
        use std::os::unix::fs::FileExt;
        let mut prefix = [0u8; PREFIX_LEN];
        old.read_exact_at(&mut prefix, 0).unwrap();
        assert!(parse_prefix(&prefix).unwrap().stale);
        let new = std::fs::read(&p).unwrap();
        let (t, _) = Table::parse_file(&new).unwrap();
        assert_eq!(t.generation(), 2);
        assert!(
            !parse_prefix(new[..PREFIX_LEN].try_into().unwrap())
                .unwrap()
                .stale
        );
    }
}
