//! What the fanotify tier costs an open(2): p50/p99 of open()+close() measured by a separate
//! process (the tier answers its own process's threads without a decision, so the opener must
//! be another process), each as a ratio to the same open with no tier at all.
//!
//! `cargo bench -p oknekd --bench fanotify` (root; prints "skipped" otherwise).
//! `OKNEK_BENCH_N` sets the opens per case (default 20000).

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use oknekd::tiers::fanotify::{
    AccessSet, Answer, FanotifyTier, PermissionRequest, Scope, Target, TierOptions,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--opener") {
        opener(Path::new(&args[i + 1]), args[i + 2].parse().unwrap());
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root (fanotify permission events)");
        return;
    }
    let n: usize = std::env::var("OKNEK_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);

    let dir = tempfile::tempdir().unwrap();
    let protected = dir.path().join("protected");
    let plain = dir.path().join("plain");
    let awaiting = dir.path().join("awaiting");
    std::fs::create_dir(&awaiting).unwrap();
    let neighbour = awaiting.join("neighbour");
    for p in [&protected, &plain, &neighbour] {
        std::fs::write(p, "x").unwrap();
    }

    let base_protected = measure(&protected, n);
    let base_neighbour = measure(&neighbour, n);
    let file_target = [Target::new(&protected, Scope::File, AccessSet::OPEN)];
    let plain_armed = with_tier(&file_target, &plain, n, Decide::Allow);
    let allow_fast = with_tier(&file_target, &protected, n, Decide::Allow);
    let allow_task = with_tier(&file_target, &protected, n, Decide::Task);
    let allow_daemon = with_tier(&file_target, &protected, n, Decide::Lookups);
    let await_target = [Target::new(
        awaiting.join("not-yet"),
        Scope::File,
        AccessSet::OPEN,
    )];
    let neighbour_armed = with_tier(&await_target, &neighbour, n, Decide::Allow);

    println!("fanotify tier: open()+close() by another process, n = {n} per case");
    println!(
        "{:<58} {:>9} {:>9} {:>8} {:>8}",
        "case", "p50 ns", "p99 ns", "p50 ×", "p99 ×"
    );
    let row = |name: &str, (p50, p99): (u64, u64), (b50, b99): (u64, u64)| {
        println!(
            "{name:<58} {p50:>9} {p99:>9} {:>8.2} {:>8.2}",
            p50 as f64 / b50 as f64,
            p99 as f64 / b99 as f64
        );
    };
    row("no tier (baseline)", base_protected, base_protected);
    row(
        "unprotected file, tier armed (no event)",
        plain_armed,
        base_protected,
    );
    row(
        "protected file, allowed (decide: allow)",
        allow_fast,
        base_protected,
    );
    row(
        "protected file, allowed (decide reads /proc/TID/status)",
        allow_task,
        base_protected,
    );
    row(
        "protected file, allowed (+ open flags, /proc/TID/syscall)",
        allow_daemon,
        base_protected,
    );
    row(
        "unprotected file in a dir awaiting a name (tier allows)",
        neighbour_armed,
        base_neighbour,
    );
}

#[derive(Clone, Copy)]
enum Decide {
    /// Answer at once: the cost of the kernel round trip and the tier itself.
    Allow,
    /// Read the thread's credentials (/proc/TID/status), then allow.
    Task,
    /// Credentials and open flags (/proc/TID/syscall), then allow.
    Lookups,
}

fn with_tier(targets: &[Target], path: &Path, n: usize, how: Decide) -> (u64, u64) {
    let mut tier = FanotifyTier::new(TierOptions::default()).expect("fanotify_init");
    let report = tier.set_targets(targets).unwrap();
    assert!(report.targets.iter().all(|t| t.is_armed()), "{report:?}");
    let fd = tier.as_raw_fd();
    let stop = Arc::new(AtomicBool::new(false));
    let driver = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut decide = |req: &PermissionRequest<'_>| match how {
                Decide::Allow => Answer::Allow,
                Decide::Task => {
                    std::hint::black_box(req.task());
                    Answer::Allow
                }
                Decide::Lookups => {
                    std::hint::black_box((req.task(), req.open_flags()));
                    Answer::Allow
                }
            };
            while !stop.load(Ordering::Relaxed) {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut p, 1, 50) } > 0 {
                    tier.drain(&mut decide).unwrap();
                }
            }
            tier
        })
    };
    let result = measure(path, n);
    stop.store(true, Ordering::Relaxed);
    let tier = driver.join().unwrap();
    assert_eq!(tier.totals().fail_mode, 0);
    result
}

/// Runs this binary as the opener in a child process; returns its (p50, p99) in ns.
fn measure(path: &Path, n: usize) -> (u64, u64) {
    let out = Command::new(std::env::current_exe().unwrap())
        .arg("--opener")
        .arg(path)
        .arg(n.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut it = text.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

fn opener(path: &Path, n: usize) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        // SAFETY: `c` is a NUL-terminated path; the descriptor is closed right away.
        unsafe {
            let fd = libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            assert!(fd >= 0, "open: {}", std::io::Error::last_os_error());
            libc::close(fd);
        }
        // The first tenth warms caches and the daemon thread up.
        if i >= n / 10 {
            samples.push(t.elapsed().as_nanos() as u64);
        }
    }
    samples.sort_unstable();
    let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    println!("{} {}", pct(50), pct(99));
}
