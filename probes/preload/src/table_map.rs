//! The mapped hook table, shared by all threads, swapped on reload without locks.
//!
//! A hooked call takes a *hold* on the current mapping: it bumps that slot's reader count, then
//! re-reads `CURRENT`; if the mapping changed in between it backs off and retries. A reload maps
//! the new file into a free slot, publishes it in `CURRENT`, and unmaps a retired slot only when
//! its reader count is zero — with sequentially consistent operations on both sides, a reader
//! either sees the new `CURRENT` or its count is seen by the reloader, never neither. Busy retired
//! slots are unmapped by a later reload.
//!
//! Reload detection costs one load per call: oknekd sets the `stale` word of the old file before
//! it renames the new one over the path. A process without a table (none published yet, or an
//! invalid one) looks at the path again at most every half second.
//!
//! Only the process that owns this state may change it: a `vfork` child shares the parent's
//! memory until it execs, so it uses whatever mapping is current and never reloads.

use core::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};

use oknek_protocol::table::{self, PREFIX_LEN, STALE_OFFSET, SelfPolicy, Summary, Table};

use crate::{config, conn, sys};

const SLOTS: usize = 4;
const EMPTY: u8 = 0;
const LIVE: u8 = 1;
const RETIRED: u8 = 2;

struct Slot {
    ptr: AtomicPtr<u8>,
    len: AtomicUsize,
    readers: AtomicUsize,
    state: AtomicU8,
    summary: AtomicU64,
    selfpol: AtomicU64,
    dev: AtomicU64,
    ino: AtomicU64,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            ptr: AtomicPtr::new(core::ptr::null_mut()),
            len: AtomicUsize::new(0),
            readers: AtomicUsize::new(0),
            state: AtomicU8::new(EMPTY),
            summary: AtomicU64::new(0),
            selfpol: AtomicU64::new(0),
            dev: AtomicU64::new(0),
            ino: AtomicU64::new(0),
        }
    }
}

static SLOT: [Slot; SLOTS] = [const { Slot::new() }; SLOTS];
/// Index + 1 of the live slot; 0 = no table.
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static RELOADING: AtomicBool = AtomicBool::new(false);
/// Monotonic time before which the path is not looked at again.
static NEXT_LOOK_NS: AtomicU64 = AtomicU64::new(0);
const LOOK_STALE_NS: u64 = 10_000_000;
const LOOK_MISSING_NS: u64 = 500_000_000;

/// A hold on the mapped table: the mapping stays valid until this is dropped.
pub struct Hold {
    slot: &'static Slot,
    ptr: *const u8,
    len: usize,
    pub summary: Summary,
    /// What this process's own executable brings to each kind (self-exe entries).
    pub selfpol: SelfPolicy,
}

impl Hold {
    /// The table body. `view` succeeded when the file was mapped, so it succeeds again; if it
    /// somehow did not, the caller treats the call as "no table" (asks).
    pub fn table(&self) -> Option<Table<'_>> {
        let body_len = self.len.checked_sub(PREFIX_LEN)?;
        // SAFETY: [ptr, ptr + len) is a live read-only mapping for as long as this hold exists;
        // the body (after the prefix) is never written after publication, so a shared slice
        // over it is sound.
        let body = unsafe { core::slice::from_raw_parts(self.ptr.add(PREFIX_LEN), body_len) };
        Table::view(body).ok()
    }

    fn stale(&self) -> bool {
        // SAFETY: the mapping is live and page-aligned, so ptr + 4 is a valid, aligned u32 that
        // oknekd may change concurrently: read it atomically, never through a reference to u8s.
        let w = unsafe { &*(self.ptr.add(STALE_OFFSET) as *const AtomicU32) };
        w.load(Ordering::Relaxed) != 0
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.slot.readers.fetch_sub(1, Ordering::SeqCst);
    }
}

fn hold() -> Option<Hold> {
    // A reload between the two loads makes us retry; a few tries suffice unless reloads are
    // continuous, and then answering "no table" (ask) is the safe fallback.
    for _ in 0..8 {
        let c = CURRENT.load(Ordering::SeqCst);
        let slot = SLOT.get(c.checked_sub(1)?)?;
        slot.readers.fetch_add(1, Ordering::SeqCst);
        if CURRENT.load(Ordering::SeqCst) == c {
            return Some(Hold {
                slot,
                ptr: slot.ptr.load(Ordering::SeqCst),
                len: slot.len.load(Ordering::SeqCst),
                summary: Summary::from_u64(slot.summary.load(Ordering::SeqCst)),
                selfpol: SelfPolicy::from_u64(slot.selfpol.load(Ordering::SeqCst)),
            });
        }
        slot.readers.fetch_sub(1, Ordering::SeqCst);
    }
    None
}

/// True when it is time to look at the path again (one thread wins each period).
fn due(period: u64) -> bool {
    let now = sys::now_ns();
    let next = NEXT_LOOK_NS.load(Ordering::Relaxed);
    now >= next
        && NEXT_LOOK_NS
            .compare_exchange(
                next,
                now.saturating_add(period),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
}

/// The current table, reloading it first when it was superseded (owner process only).
pub fn acquire() -> Option<Hold> {
    // is_owner (a getpid) before due (which writes a shared timestamp): a vfork child writes
    // nothing here. Both run only while the table is stale or missing.
    if let Some(h) = hold() {
        if !h.stale() || !conn::is_owner() || !due(LOOK_STALE_NS) {
            return Some(h);
        }
        drop(h);
        reload();
        return hold();
    }
    if conn::is_owner() && due(LOOK_MISSING_NS) {
        reload();
        return hold();
    }
    None
}

/// Maps the table at the configured path if it is new and valid, and makes it current.
pub fn reload() {
    if RELOADING.swap(true, Ordering::Acquire) {
        return;
    }
    reload_locked();
    RELOADING.store(false, Ordering::Release);
}

fn reload_locked() {
    let cfg = config::get();
    let mut pbuf = [0u8; 128];
    let path = cfg.table_path(&mut pbuf);
    let Ok(fd) = sys::openat(libc::AT_FDCWD, path, libc::O_RDONLY | libc::O_NOFOLLOW, 0) else {
        return;
    };
    let st = sys::fstat(fd);
    let Ok(st) = st else {
        sys::close(fd);
        return;
    };
    let size = usize::try_from(st.st_size).unwrap_or(0);
    let trusted = !cfg.locked || (st.st_uid == 0 && st.st_mode & 0o022 == 0);
    let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
    let fits = size >= PREFIX_LEN.saturating_add(table::HEADER_LEN)
        && size <= PREFIX_LEN.saturating_add(table::MAX_LEN);
    // The same file as the live one: it is still the stale old table; keep it until the new one
    // has been renamed into place.
    let same = CURRENT
        .load(Ordering::SeqCst)
        .checked_sub(1)
        .and_then(|i| SLOT.get(i))
        .is_some_and(|s| {
            s.dev.load(Ordering::SeqCst) == st.st_dev && s.ino.load(Ordering::SeqCst) == st.st_ino
        });
    if !trusted || !regular || !fits || same {
        sys::close(fd);
        return;
    }
    let mapped = sys::mmap_ro(fd, size);
    sys::close(fd);
    let Ok(ptr) = mapped else {
        return;
    };
    let Some((summary, selfpol)) = validate(ptr, size, cfg) else {
        // SAFETY: the mapping was made just above and nobody else knows it.
        unsafe { sys::munmap(ptr, size) };
        return;
    };
    // Free retired slots nobody holds; take an empty one.
    let cur = CURRENT.load(Ordering::SeqCst);
    let mut free = None;
    for (i, s) in SLOT.iter().enumerate() {
        if i.checked_add(1) == Some(cur) {
            continue;
        }
        release_if_unused(s);
        if free.is_none() && s.state.load(Ordering::SeqCst) == EMPTY {
            free = Some(s);
        }
    }
    let Some(slot) = free else {
        // Every other slot is still held (readers stuck in a call for a long time): keep the
        // current table and try again later.
        // SAFETY: as above, the new mapping is ours alone.
        unsafe { sys::munmap(ptr, size) };
        return;
    };
    let idx = SLOT
        .iter()
        .position(|s| core::ptr::eq(s, slot))
        .and_then(|i| i.checked_add(1))
        .unwrap_or(0);
    slot.ptr.store(ptr.cast_mut(), Ordering::SeqCst);
    slot.len.store(size, Ordering::SeqCst);
    slot.summary.store(summary.to_u64(), Ordering::SeqCst);
    slot.selfpol.store(selfpol.to_u64(), Ordering::SeqCst);
    slot.dev.store(st.st_dev, Ordering::SeqCst);
    slot.ino.store(st.st_ino, Ordering::SeqCst);
    slot.state.store(LIVE, Ordering::SeqCst);
    let old = CURRENT.swap(idx, Ordering::SeqCst);
    if let Some(o) = old.checked_sub(1).and_then(|i| SLOT.get(i)) {
        o.state.store(RETIRED, Ordering::SeqCst);
        release_if_unused(o);
    }
}

/// Unmaps a retired slot if no reader holds it.
fn release_if_unused(s: &Slot) {
    if s.state.load(Ordering::SeqCst) == RETIRED && s.readers.load(Ordering::SeqCst) == 0 {
        let p = s.ptr.swap(core::ptr::null_mut(), Ordering::SeqCst);
        let len = s.len.swap(0, Ordering::SeqCst);
        if !p.is_null() {
            // SAFETY: the slot is not CURRENT and its reader count was zero after CURRENT
            // moved on, so no hold on it exists or can be taken (see the module docs).
            unsafe { sys::munmap(p, len) };
        }
        s.state.store(EMPTY, Ordering::SeqCst);
    }
}

/// Checks a fresh mapping — prefix, length, checksum, every entry — and computes what the
/// process's own executable brings.
fn validate(ptr: *const u8, size: usize, cfg: &config::Config) -> Option<(Summary, SelfPolicy)> {
    let mut prefix = [0u8; PREFIX_LEN];
    for (i, b) in prefix.iter_mut().enumerate() {
        // SAFETY: size >= PREFIX_LEN (checked by the caller), so ptr + i is in the mapping; the
        // stale word may change under us, hence a volatile read rather than a slice.
        *b = unsafe { core::ptr::read_volatile(ptr.add(i)) };
    }
    let prefix = table::parse_prefix(&prefix).ok()?;
    let body_len = size.checked_sub(PREFIX_LEN)?;
    // SAFETY: the body lies inside the mapping and is never written after publication.
    let body = unsafe { core::slice::from_raw_parts(ptr.add(PREFIX_LEN), body_len) };
    let (t, s) = Table::parse(body, &prefix).ok()?;
    Some((s, t.self_policy(cfg.exe())))
}

/// After fork: the child owns its copy of every mapping and no other thread exists, so holds
/// left by the parent's other threads are void.
pub fn after_fork_child() {
    let cur = CURRENT.load(Ordering::SeqCst);
    for (i, s) in SLOT.iter().enumerate() {
        s.readers.store(0, Ordering::SeqCst);
        // A reload that another parent thread had half done: that slot is not current.
        if i.checked_add(1) != Some(cur) && s.state.load(Ordering::SeqCst) == LIVE {
            s.state.store(RETIRED, Ordering::SeqCst);
        }
    }
    RELOADING.store(false, Ordering::SeqCst);
}
