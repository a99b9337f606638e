//! The open() and connect() cost and ring-buffer throughput measurements behind `cargo bench
//! --bench open_cost` and the `oknek-bpf-bench` binary (which the VM tests run where BPF LSM is active).

use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{BlockRule, Kind, ProbeConfig, Probes};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub pin_dir: PathBuf,
    /// Attach the BPF LSM programs; `None` = when the support probe says the kernel runs them.
    pub lsm: Option<bool>,
    /// open()+close() pairs per timed batch, and batches per figure.
    pub batch: usize,
    pub batches: usize,
    pub throughput_secs: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/oknek-bench-{}", std::process::id())),
            lsm: None,
            batch: 200,
            batches: 300,
            throughput_secs: 3,
        }
    }
}

impl BenchOptions {
    /// Reads `--lsm`, `--no-lsm`, `--quick`, `--pin-dir DIR`; ignores anything else (cargo
    /// bench passes `--bench`).
    pub fn from_args(args: impl Iterator<Item = String>) -> BenchOptions {
        let mut opts = BenchOptions::default();
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--lsm" => opts.lsm = Some(true),
                "--no-lsm" => opts.lsm = Some(false),
                "--quick" => {
                    opts.batches = 50;
                    opts.throughput_secs = 1;
                }
                "--pin-dir" => {
                    if let Some(dir) = args.next() {
                        opts.pin_dir = PathBuf::from(dir);
                    }
                }
                _ => {}
            }
        }
        opts
    }
}

/// Per-call nanoseconds of open()+close() on `path`: (median, 10th percentile) over batches.
/// The low percentile is the steadier figure on a busy machine.
fn open_close_ns(path: &CString, opts: &BenchOptions, mut between: impl FnMut()) -> (f64, f64) {
    let mut samples = Vec::with_capacity(opts.batches);
    for _ in 0..opts.batches {
        let start = Instant::now();
        for _ in 0..opts.batch {
            // SAFETY: valid C string; the fd is closed at once.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::close(fd);
                }
            }
        }
        samples.push(start.elapsed().as_nanos() as f64 / opts.batch as f64);
        between();
    }
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], samples[samples.len() / 10])
}

fn report(label: &str, (median, low): (f64, f64), (base, base_low): (f64, f64)) {
    println!(
        "{label:<42} median {median:>6.0} ns  +{:>5.0} ns  x{:.2}   p10 {low:>6.0} ns  +{:>5.0} ns  x{:.2}",
        median - base,
        median / base,
        low - base_low,
        low / base_low
    );
}

/// A count-only bpftrace probe on sys_enter_openat, attached until dropped.
struct Bpftrace(std::process::Child);

impl Bpftrace {
    fn start() -> Result<Bpftrace, String> {
        let mut child = Command::new("bpftrace")
            .args([
                "-e",
                "tracepoint:syscalls:sys_enter_openat { @c = count(); }",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("bpftrace: {e}"))?;
        let stdout = child.stdout.take().ok_or("bpftrace: no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| format!("bpftrace: {e}"))?;
        if !line.contains("Attaching") {
            let _ = child.kill();
            return Err(format!("bpftrace did not attach: {line:?}"));
        }
        // Attachment follows the banner closely; give it a moment.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Bpftrace(child))
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        // SIGINT lets bpftrace detach cleanly.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

/// Runs every measurement and prints the figures.
pub fn run(opts: &BenchOptions) -> Result<(), String> {
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root");
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("oknek-bpf-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let file = dir.join("allowed.txt");
    std::fs::write(&file, b"x").map_err(|e| e.to_string())?;
    let path = CString::new(file.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
    let result = measure(opts, &path);
    let _ = Probes::uninstall(&opts.pin_dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A loopback listener that accepts and drops connections until the process exits.
fn sink() -> Result<std::net::SocketAddr, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    Ok(addr)
}

/// Per-call nanoseconds of socket()+connect()+close() to `addr` over TCP: (median, 10th
/// percentile) over batches. Closing with SO_LINGER 0 resets the connection, so no TIME_WAIT
/// piles up and exhausts the ephemeral ports.
fn connect_ns(
    addr: std::net::SocketAddr,
    batches: usize,
    batch: usize,
    mut between: impl FnMut(),
) -> (f64, f64) {
    let std::net::SocketAddr::V4(v4) = addr else {
        return (0.0, 0.0);
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(v4.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let mut samples = Vec::with_capacity(batches);
    for _ in 0..batches {
        let start = Instant::now();
        for _ in 0..batch {
            // SAFETY: plain socket calls on a descriptor this loop owns and closes.
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    continue;
                }
                libc::connect(
                    fd,
                    (&sin as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
                libc::close(fd);
            }
        }
        samples.push(start.elapsed().as_nanos() as f64 / batch as f64);
        between();
    }
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], samples[samples.len() / 10])
}

/// connect() cost for an agent: to an address that is no provider, and a model call to a
/// provider metered by a quota (so the bucket lookups and the event are in the figure).
fn connect_cost(
    probes: &mut Probes,
    opts: &BenchOptions,
    provider: std::net::SocketAddr,
    other: std::net::SocketAddr,
    base: (f64, f64),
) -> Result<(), String> {
    let (batches, batch) = (opts.batches / 3, 50);
    probes
        .set_models(
            &[crate::ProviderEntry {
                addr: provider.ip(),
                port: provider.port(),
                provider_id: 0,
                gateway_only: false,
            }],
            &[crate::ModelRule {
                rule_index: 2,
                agents: 0,
                hold: false,
                providers: vec![0],
                quota: Some((u64::from(u32::MAX), crate::QuotaBy::Caller)),
            }],
        )
        .map_err(|e| e.to_string())?;
    let me = std::process::id();
    probes.track_task(me, 0).map_err(|e| e.to_string())?;
    let mut drained = 0usize;
    let plain = connect_ns(other, batches, batch, || drained += probes.drain(|_| {}));
    report("(g) agent connect, not a provider", plain, base);
    let model = connect_ns(provider, batches, batch, || drained += probes.drain(|_| {}));
    report("(h) agent model call, quota metered", model, base);
    probes.untrack_task(me).map_err(|e| e.to_string())?;
    drained += probes.drain(|_| {});
    println!(
        "    added per model call: median {:.1} us (goal <= 20 us); events drained: {drained}",
        (model.0 - base.0) / 1000.0
    );
    Ok(())
}

fn measure(opts: &BenchOptions, path: &CString) -> Result<(), String> {
    let lsm = opts
        .lsm
        .unwrap_or_else(|| crate::probe_support().lsm.available);
    let tier = if lsm {
        "BPF LSM + cgroup"
    } else {
        "cgroup sock_addr (no LSM)"
    };
    println!(
        "open()+close() median of {} batches x {} calls; enforcement tier: {tier}",
        opts.batches, opts.batch
    );
    let base = open_close_ns(path, opts, || {});
    report("(a) no probes", base, base);
    let provider = sink()?;
    let other = sink()?;
    let connect_base = connect_ns(provider, opts.batches / 3, 50, || {});

    let bpftrace = match Bpftrace::start() {
        Ok(probe) => {
            let ns = open_close_ns(path, opts, || {});
            drop(probe);
            report("(e) bpftrace count-only sys_enter_openat", ns, base);
            Some(ns)
        }
        Err(why) => {
            println!("(e) skipped: {why} (apt install bpftrace)");
            None
        }
    };

    let cfg = ProbeConfig {
        pin_dir: opts.pin_dir.clone(),
        lsm,
        cgroup: true,
        observe: true,
        ring_bytes: crate::DEFAULT_RING_BYTES,
    };
    let _ = Probes::uninstall(&opts.pin_dir);
    let (mut probes, _) = Probes::start(&cfg).map_err(|e| e.to_string())?;
    let not_agent = open_close_ns(path, opts, || {});
    report("(b) probes loaded, caller not an agent", not_agent, base);
    if let Some(e) = bpftrace {
        println!(
            "    (b) < (e): median {}, p10 {}",
            not_agent.0 < e.0,
            not_agent.1 < e.1
        );
    }

    let me = std::process::id();
    probes.track_task(me, 0).map_err(|e| e.to_string())?;
    let mut drained = 0usize;
    let agent = open_close_ns(path, opts, || drained += probes.drain(|_| {}));
    report("(c) agent, allowed path (observed)", agent, base);

    let meta = std::fs::metadata(std::str::from_utf8(path.as_bytes()).unwrap_or("/"))
        .map_err(|e| e.to_string())?;
    use std::os::unix::fs::MetadataExt;
    let files: Vec<(u64, u64)> = (0..1000).map(|i| (meta.dev(), 1_000_000_000 + i)).collect();
    let rule = BlockRule {
        rule_index: 1,
        kinds: vec![Kind::Open],
        agents: 0,
        hold: false,
        files,
        dirs: vec![],
        exes: vec![],
        nets: vec![],
    };
    probes.set_rules(&[rule]).map_err(|e| e.to_string())?;
    let blocked_set = open_close_ns(path, opts, || drained += probes.drain(|_| {}));
    report("(d) agent, 1,000 entries in block_files", blocked_set, base);
    probes.untrack_task(me).map_err(|e| e.to_string())?;
    drained += probes.drain(|_| {});
    println!(
        "    events drained during (c)/(d): {drained}; lost: {}",
        probes.lost_events()
    );

    println!(
        "socket()+connect()+close() over loopback TCP, median of {} batches x 50 calls",
        opts.batches / 3
    );
    report("(f) no probes", connect_base, connect_base);
    connect_cost(&mut probes, opts, provider, other, connect_base)?;

    throughput(&mut probes, opts.throughput_secs)?;
    Ok(())
}

/// An agent thread opening /dev/null as fast as it can while this thread drains the ring.
fn throughput(probes: &mut Probes, secs: u64) -> Result<(), String> {
    let me = std::process::id();
    let lost_before = probes.lost_events();
    let stop = Arc::new(AtomicBool::new(false));
    let opens = Arc::new(AtomicU64::new(0));
    probes.track_task(me, 0).map_err(|e| e.to_string())?;
    let worker = {
        let (stop, opens) = (stop.clone(), opens.clone());
        std::thread::spawn(move || {
            let null = CString::new("/dev/null").expect("no NUL");
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..256 {
                    // SAFETY: valid C string; the fd is closed at once.
                    unsafe {
                        let fd = libc::open(null.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                        if fd >= 0 {
                            libc::close(fd);
                        }
                    }
                }
                opens.fetch_add(256, Ordering::Relaxed);
            }
        })
    };
    let start = Instant::now();
    let mut received = 0u64;
    let mut pollfd = libc::pollfd {
        fd: probes.ring_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    while start.elapsed() < Duration::from_secs(secs) {
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pollfd, 1, 100) };
        received += probes.drain(|_| {}) as u64;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = worker.join();
    let elapsed = start.elapsed().as_secs_f64();
    probes.untrack_task(me).map_err(|e| e.to_string())?;
    received += probes.drain(|_| {}) as u64;
    let produced = opens.load(Ordering::Relaxed);
    let lost = probes.lost_events() - lost_before;
    println!(
        "ring buffer: agent opened {:.0}/s, drained {:.0} events/s, lost {lost} ({:.3}%)",
        produced as f64 / elapsed,
        received as f64 / elapsed,
        100.0 * lost as f64 / produced.max(1) as f64
    );
    Ok(())
}
