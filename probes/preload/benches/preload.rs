//! What the shim costs: p50/p99 of open()+close(), exec and connect, with and without it, as
//! ratios against the baseline measured in the same run.
//!
//! `cargo bench -p oknek-preload` (or `… -- --quick`). The bench re-runs its own executable as the
//! measured process (with and without `LD_PRELOAD`), which times its own calls; a fake oknekd in
//! this process answers verdict questions (allow), so "asks" includes a real round trip over the
//! hook socket to a daemon thread doing nothing else.

#[path = "../tests/support/mod.rs"]
mod support;

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use oknek_protocol::table::{Action, Kind, MatchType, TableBuilder};
use support::{Behaviour, FakeDaemon};

const CHILD: &str = "OKNEK_PRELOAD_BENCH_CHILD";

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The measured process: runs `what` `n` times after a warm-up, prints "p50 p99" in ns.
fn child(what: &str, arg: &str, n: usize) {
    let mut samples = Vec::with_capacity(n);
    let path = CString::new(arg).unwrap();
    let warm = (n / 10).max(10);
    for i in 0..n + warm {
        let t0 = Instant::now();
        match what {
            "open" => {
                // SAFETY: a valid C string; the fd is closed at once.
                let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
                assert!(fd >= 0, "open {arg}: {}", std::io::Error::last_os_error());
                // SAFETY: our own fd.
                unsafe { libc::close(fd) };
            }
            "exec" => {
                let st = Command::new(arg).status().unwrap();
                assert!(st.success());
            }
            "connect" => {
                let s = std::net::TcpStream::connect(arg).unwrap();
                drop(s);
            }
            _ => panic!("unknown measurement {what}"),
        }
        let dt = t0.elapsed().as_nanos() as u64;
        if i >= warm {
            samples.push(dt);
        }
    }
    samples.sort_unstable();
    println!(
        "{} {}",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99)
    );
}

struct Row {
    name: &'static str,
    p50: u64,
    p99: u64,
}

fn measure(rt: &Path, shim: bool, what: &str, arg: &str, n: usize) -> (u64, u64) {
    let exe = std::env::current_exe().unwrap();
    let mut c = if shim {
        support::shimmed(rt, exe.to_str().unwrap())
    } else {
        Command::new(&exe)
    };
    c.env(CHILD, "1").args([what, arg, &n.to_string()]);
    let out = support::run_limited(&mut c, std::time::Duration::from_secs(300)).0;
    assert!(out.status.success(), "{}", support::text(&out.stderr));
    let s = support::text(&out.stdout);
    let mut it = s.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if std::env::var_os(CHILD).is_some() {
        child(&args[1], &args[2], args[3].parse().unwrap());
        return;
    }
    if let Some(why) = support::skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let (n_open, n_exec, n_conn) = if quick {
        (5_000, 100, 500)
    } else {
        (50_000, 400, 3_000)
    };

    let dir = tempfile::Builder::new()
        .prefix("okbench")
        .tempdir_in("/tmp")
        .unwrap();
    let root = dir.path();
    // A stand-in for /home inside the temporary directory, so that the unprotected file shares
    // its leading directories with the rules' globs — the realistic, more expensive case (an
    // agent's project lives next to its owner's ~/.ssh).
    let home = root.join("home");
    let rt = root.join("run");
    let project = home.join("dev/project/src");
    let ssh = home.join("dev/.ssh");
    for d in [&rt, &project, &ssh] {
        std::fs::create_dir_all(d).unwrap();
    }
    let public = project.join("main.rs");
    let allowed = ssh.join("id_ed25519");
    std::fs::write(&public, "x").unwrap();
    std::fs::write(&allowed, "x").unwrap();
    let h = home.to_str().unwrap().to_owned();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dest = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || for _ in listener.incoming() {});

    // A table shaped like a real rule pack: some prefixes and globs the unprotected path has
    // to be compared against, the protected directory, no inode entries (first), then the same
    // with inode entries (every open then costs one fstat of the opened fd).
    let pack = |with_inodes: bool, exec_connect: Action| {
        let mut b = TableBuilder::new(1);
        for g in [
            format!("{h}/*/.ssh/id_*"),
            "/root/.ssh/id_*".into(),
            format!("{h}/*/.aws/credentials"),
            format!("{h}/*/.config/gcloud/**"),
            format!("{h}/*/.kube/config"),
            format!("{h}/*/.netrc"),
            format!("{h}/*/.docker/config.json"),
            "/etc/shadow".into(),
            "/etc/sudoers".into(),
            format!("{h}/*/.gnupg/**"),
        ] {
            b.path(Kind::Open.bit(), Action::Ask, MatchType::Glob, g.as_bytes())
                .unwrap();
        }
        for p in ["/etc/ssh/", "/var/lib/oknek/", "/root/.config/"] {
            b.path(
                Kind::Open.bit(),
                Action::Ask,
                MatchType::Prefix,
                p.as_bytes(),
            )
            .unwrap();
        }
        b.path(
            Kind::Open.bit(),
            Action::Report,
            MatchType::Suffix,
            b".gguf",
        )
        .unwrap();
        if with_inodes {
            let md = std::fs::metadata(&allowed).unwrap();
            b.inode(Kind::Open.bit(), Action::Ask, md.dev(), md.ino())
                .unwrap();
            for i in 0..100u64 {
                b.inode(Kind::Open.bit(), Action::Ask, 1, 1_000_000 + i)
                    .unwrap();
            }
        }
        b.policy(Kind::Exec, exec_connect);
        b.policy(Kind::Connect, exec_connect);
        b
    };
    // `--write-table DIR`: leave the pack's table in DIR and stop (for profiling by hand).
    if let Some(i) = args.iter().position(|a| a == "--write-table") {
        let inodes = args.get(i + 2).is_some_and(|a| a == "inodes");
        support::publish(Path::new(&args[i + 1]), &pack(inodes, Action::Ignore));
        println!("{} {}", public.display(), allowed.display());
        let _ = dir.keep();
        return;
    }
    let _daemon = FakeDaemon::start(&rt, Behaviour::Judge(Box::new(|_| 0)));
    let (pub_s, allowed_s) = (public.to_str().unwrap(), allowed.to_str().unwrap());
    println!(
        "({} rounds; medians of each round's p50 and p99)",
        if quick { 2 } else { 5 }
    );

    // The host is shared and noisy: every scenario runs once per round, rounds interleave the
    // scenarios, and the figures are the medians over the rounds.
    type Scenario = (&'static str, bool, &'static str, String, usize);
    let plain: Vec<Scenario> = vec![
        ("open+close, no shim", false, "open", pub_s.into(), n_open),
        (
            "open+close unprotected, shim",
            true,
            "open",
            pub_s.into(),
            n_open,
        ),
        (
            "open+close protected (asks, allowed), shim",
            true,
            "open",
            allowed_s.into(),
            n_open / 10,
        ),
        (
            "exec /bin/true, no shim",
            false,
            "exec",
            "/bin/true".into(),
            n_exec,
        ),
        (
            "exec /bin/true, shim, exec not asked",
            true,
            "exec",
            "/bin/true".into(),
            n_exec,
        ),
        (
            "connect 127.0.0.1, no shim",
            false,
            "connect",
            dest.clone(),
            n_conn,
        ),
        (
            "connect 127.0.0.1, shim, not asked",
            true,
            "connect",
            dest.clone(),
            n_conn,
        ),
    ];
    let inodes: Vec<Scenario> = vec![(
        "open+close unprotected, shim, +inode entries",
        true,
        "open",
        pub_s.into(),
        n_open,
    )];
    let asking: Vec<Scenario> = vec![
        (
            "exec /bin/true, shim, every exec asks",
            true,
            "exec",
            "/bin/true".into(),
            n_exec,
        ),
        (
            "connect 127.0.0.1, shim, every connect asks",
            true,
            "connect",
            dest.clone(),
            n_conn,
        ),
    ];
    let rounds = if quick { 2 } else { 5 };
    let mut samples: Vec<(&'static str, Vec<u64>, Vec<u64>)> = Vec::new();
    for _ in 0..rounds {
        for (table, group) in [
            (pack(false, Action::Ignore), &plain),
            (pack(true, Action::Ignore), &inodes),
            (pack(true, Action::Ask), &asking),
        ] {
            support::publish(&rt, &table);
            for (name, shim, what, arg, n) in group.iter() {
                let (p50, p99) = measure(&rt, *shim, what, arg, *n);
                match samples.iter_mut().find(|s| s.0 == *name) {
                    Some(s) => {
                        s.1.push(p50);
                        s.2.push(p99);
                    }
                    None => samples.push((name, vec![p50], vec![p99])),
                }
            }
        }
    }
    let median = |v: &mut Vec<u64>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let rows: Vec<Row> = samples
        .into_iter()
        .map(|(name, mut a, mut b)| Row {
            name,
            p50: median(&mut a),
            p99: median(&mut b),
        })
        .collect();

    let base = |prefix: &str| {
        rows.iter()
            .find(|r| r.name.starts_with(prefix) && r.name.ends_with("no shim"))
            .map(|r| (r.p50, r.p99))
            .unwrap()
    };
    println!(
        "{:<48} {:>10} {:>10} {:>8} {:>8}",
        "measurement", "p50 ns", "p99 ns", "p50 x", "p99 x"
    );
    for r in &rows {
        let (b50, b99) = base(r.name.split(',').next().unwrap().split(' ').next().unwrap());
        println!(
            "{:<48} {:>10} {:>10} {:>8.2} {:>8.2}",
            r.name,
            r.p50,
            r.p99,
            r.p50 as f64 / b50 as f64,
            r.p99 as f64 / b99 as f64
        );
    }
}
