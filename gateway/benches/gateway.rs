//! What the gateway adds to a model call: time to first byte through the gateway (with the
//! daemon's decision and evidence for every call) versus a direct call to the same fake local
//! provider, and requests per second through the gateway pinned to one core.
//!
//! `cargo bench -p oknek-gateway` (root: the daemon judges this process as an agent). Printed
//! figures, not assertions: the machine is shared and noisy.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BODY: &str =
    r#"{"model":"qwen2.5-coder","messages":[{"role":"user","content":"Say hello."}]}"#;
const SAMPLES: usize = 2000;
const WARMUP: usize = 200;

const RULES: &str = r#"oknek_rules: 1
lists:
  bench_models: [qwen2.5-coder, gpt-4o-mini]
rules:
  - id: B.model
    title: Model not on the allowlist
    kind: model_call
    match:
      model: { present: true }
      not:
        model: { glob: $bench_models }
    action: block
  - id: B.quota
    title: Model call quota exceeded
    kind: model_call
    quota: { limit: 1000000000, per: 1h, by: caller_provider }
    action: block
"#;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// TTFB of `SAMPLES` sequential requests on one keep-alive connection.
fn ttfb(mut send: impl FnMut() -> (u16, Duration)) -> Vec<Duration> {
    for _ in 0..WARMUP {
        assert_eq!(send().0, 200);
    }
    let mut v: Vec<Duration> = (0..SAMPLES)
        .map(|_| {
            let (status, t) = send();
            assert_eq!(status, 200);
            t
        })
        .collect();
    v.sort();
    v
}

fn report(name: &str, v: &[Duration], base: Option<&[Duration]>) {
    let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
    match base {
        None => println!(
            "{name:<38} p50 {:>8.1} µs   p99 {:>8.1} µs",
            us(p50),
            us(p99)
        ),
        Some(b) => println!(
            "{name:<38} p50 {:>8.1} µs   p99 {:>8.1} µs   added: p50 {:>+8.1} µs, p99 {:>+8.1} µs",
            us(p50),
            us(p99),
            us(p50) - us(percentile(b, 0.5)),
            us(p99) - us(percentile(b, 0.99)),
        ),
    }
}

fn pin(pid: u32, cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid as i32, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Pins every thread of a process (the gateway spawns one per connection; new ones inherit).
fn pin_all(pid: u32, cpu: usize) {
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) {
                pin(tid, cpu);
            }
        }
    }
}

fn main() {
    if !common::root_or_skip() {
        return;
    }
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc::getuid() };
    let s = common::Scenario::start_as(RULES, None, me);
    let local = common::providers().local.addr;
    println!(
        "oknek-gateway benchmark: {SAMPLES} sequential non-streaming calls after {WARMUP} warm-up, keep-alive"
    );

    let mut direct = TcpStream::connect(local).unwrap();
    direct.set_nodelay(true).unwrap();
    let base = ttfb(|| {
        let (st, t, _) = common::fake::post(&mut direct, "/v1/chat/completions", BODY);
        (st, t)
    });
    report("direct to the fake provider (TCP)", &base, None);

    let mut gw = TcpStream::connect(&s.gateway_tcp).unwrap();
    gw.set_nodelay(true).unwrap();
    let via_tcp = ttfb(|| {
        let (st, t, _) = common::fake::post(&mut gw, "/vllm/v1/chat/completions", BODY);
        (st, t)
    });
    report("through the gateway (loopback TCP)", &via_tcp, Some(&base));

    let mut uds = UnixStream::connect(&s.gateway_sock).unwrap();
    let via_uds = ttfb(|| {
        let (st, t, _) = post_unix(&mut uds, "/vllm/v1/chat/completions", BODY);
        (st, t)
    });
    report("through the gateway (unix socket)", &via_uds, Some(&base));

    // New connection per call: the TCP caller lookup (socket table + /proc) is paid each time.
    let fresh = ttfb(|| {
        let mut c = TcpStream::connect(&s.gateway_tcp).unwrap();
        c.set_nodelay(true).unwrap();
        let (st, t, _) = common::fake::post(&mut c, "/vllm/v1/chat/completions", BODY);
        (st, t)
    });
    report("gateway, new TCP connection per call", &fresh, Some(&base));

    // The daemon's share: the same decision asked directly over the control socket (identity,
    // rules, a signed bundle), without HTTP or the upstream.
    let control = s.runtime.join("control.sock");
    let request = format!(
        "{{\"cmd\":\"model_call\",\"pid\":{},\"provider\":\"vllm\",\"model\":\"qwen2.5-coder\",\"api\":\"openai\"}}\n",
        std::process::id()
    );
    let decision = ttfb(|| {
        use std::io::{BufRead, BufReader, Write};
        let t0 = Instant::now();
        let mut c = UnixStream::connect(&control).unwrap();
        c.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        BufReader::new(c).read_line(&mut answer).unwrap();
        let ok = answer.contains("\"verdict\":\"allow\"");
        (if ok { 200 } else { 500 }, t0.elapsed())
    });
    report("of which: oknekd's decision alone", &decision, None);

    // Throughput: the gateway on CPU 0, everything else on CPU 1.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (gw_cpu, rest_cpu) = if cores >= 2 { (0, 1) } else { (0, 0) };
    pin(0, rest_cpu);
    pin_all(s.daemon_pid(), rest_cpu);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, done, addr) = (Arc::clone(&stop), Arc::clone(&done), s.gateway_tcp.clone());
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(addr).unwrap();
                c.set_nodelay(true).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let (st, _, _) = common::fake::post(&mut c, "/vllm/v1/chat/completions", BODY);
                    assert_eq!(st, 200);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    pin_all(s.gateway_pid(), gw_cpu);
    let start_count = done.load(Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let n = done.load(Ordering::Relaxed) - start_count;
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    println!(
        "throughput through the gateway on one core (4 keep-alive clients, each call judged and \
         recorded by oknekd): {:.0} requests/s",
        n as f64 / secs
    );
}

/// `common::fake::post` over the gateway's unix socket.
fn post_unix(stream: &mut UnixStream, path: &str, body: &str) -> (u16, Duration, Vec<u8>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let t0 = Instant::now();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    let mut length = 0;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        let h = h.trim_end().to_ascii_lowercase();
        if h.is_empty() {
            break;
        }
        if let Some(v) = h.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut b = vec![0u8; length];
    reader.read_exact(&mut b[..1.min(length)]).unwrap();
    let first = t0.elapsed();
    reader.read_exact(&mut b[1.min(length)..]).unwrap();
    (status, first, b)
}
