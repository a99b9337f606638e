//! `liboknek_preload.so`: oknek's LD_PRELOAD shim, the weakest enforcement tier.
//!
//! Loaded into an agent process, it hooks the public libc entry points for exec, open, connect,
//! send and inotify_add_watch, consults the hook table oknekd publishes, and — only for calls a
//! block rule may concern — asks oknekd for a verdict before the call proceeds. It is a
//! convenience tier: a static binary, a raw `syscall`, io_uring, or simply unsetting
//! `LD_PRELOAD` bypasses it. See docs/preload.md.
//!
//! Rules for the code in this crate, since it runs inside arbitrary programs:
//! * no allocation and no libc call that could re-enter a hook: own I/O is raw system calls
//!   (`sys`), frames are encoded into stack buffers;
//! * no panics: no indexing, unwrapping or overflowing arithmetic (enforced by the lints below —
//!   a panic in an `extern "C"` function aborts the host program);
//! * no writes to shared state from a `vfork` child, which shares the parent's memory.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
#![warn(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented,
    clippy::undocumented_unsafe_blocks
)]

mod check;
mod config;
mod conn;
pub mod hooks;
mod real;
mod sys;
mod table_map;
pub mod variadic;

use core::cell::Cell;
use core::sync::atomic::{AtomicU8, Ordering};

use libc::c_int;

thread_local! {
    /// True while this thread runs the shim's own code. A hooked call made from there — a
    /// signal handler, or a malloc replacement called by `dlsym` — goes straight to libc instead
    /// of recursing. Const-initialised and without a destructor, so it is plain TLS: no lazy
    /// registration, no allocation.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// Proof that this thread entered the shim; dropping it restores the caller's errno and leaves.
pub(crate) struct Entered {
    errno: c_int,
}

/// Enters the shim for one hooked call, or `None` if this thread is already inside it.
pub(crate) fn enter() -> Option<Entered> {
    if IN_HOOK.replace(true) {
        return None;
    }
    let e = Entered {
        errno: sys::errno(),
    };
    init();
    Some(e)
}

impl Drop for Entered {
    fn drop(&mut self) {
        sys::set_errno(self.errno);
        IN_HOOK.set(false);
    }
}

static INIT: AtomicU8 = AtomicU8::new(0);

/// Process setup, once: configuration, owner pid, fork handler, first table mapping. Only raw
/// system calls, no locks: a thread waiting here cannot be holding anything the initialiser
/// needs. (dlsym, which takes the loader lock, runs from the constructor only.)
fn init() {
    if INIT.load(Ordering::Acquire) == 2 {
        return;
    }
    if INIT
        .compare_exchange(0, 1, Ordering::Acquire, Ordering::Acquire)
        .is_ok()
    {
        let _ = config::get();
        conn::init_owner();
        // SAFETY: registers a plain function with no captured state; it only resets this
        // library's own statics and closes its own descriptors in the child.
        unsafe {
            libc::pthread_atfork(
                None,
                None,
                Some(conn::after_fork_child as unsafe extern "C" fn()),
            );
        }
        table_map::reload();
        INIT.store(2, Ordering::Release);
        return;
    }
    while INIT.load(Ordering::Acquire) != 2 {
        sys::sched_yield();
    }
}

extern "C" fn constructor() {
    if let Some(g) = enter() {
        real::resolve_all();
        drop(g);
    }
}

/// Runs when the library is loaded, before the program's `main`.
#[used]
#[unsafe(link_section = ".init_array")]
static CONSTRUCTOR: extern "C" fn() = constructor;

/// Copies the shim's counters — asked, denied, unavailable (fail mode applied), reported,
/// dropped — into `out[..n]`; returns how many were written. For diagnostics and tests.
///
/// # Safety
/// `out` must be writable for `n` u64s (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oknek_preload_stats(out: *mut u64, n: usize) -> usize {
    let s = &conn::STATS;
    let vals = [
        s.asked.load(Ordering::Relaxed),
        s.denied.load(Ordering::Relaxed),
        s.unavailable.load(Ordering::Relaxed),
        s.reported.load(Ordering::Relaxed),
        s.dropped.load(Ordering::Relaxed),
    ];
    if out.is_null() {
        return 0;
    }
    let n = n.min(vals.len());
    for (i, v) in vals.iter().take(n).enumerate() {
        // SAFETY: i < n ≤ the caller's buffer length.
        unsafe { out.add(i).write(*v) };
    }
    n
}
