//! Rule engine benchmark: `cargo bench -p oknek-engine`.
//!
//! Generates 1,000 rules over every kind (exact, prefix and glob paths, argv tests and regexes,
//! networks and ports, model allowlists, time windows, quotas, baselines) and a mixed stream of
//! events, then prints the evaluation time per event (p50, p99), events per second on one core
//! and the reload time (parse + compile) of the 1,000 rules. Each figure is also given as a ratio
//! to a baseline measured in the same run: cloning an event (for evaluation) and parsing the
//! same YAML into a generic value tree (for reload), so the figures compare across machines.
//!
//! Goals: p99 evaluation ≤ 10 µs, reload ≤ 5 ms.

use std::hint::black_box;
use std::time::{Duration, Instant};

use oknek_engine::{EvalContext, QuotaLedger, RuleSet};
use oknek_event::{Event, MemoryBaseline};

const RULES: usize = 1000;
const EVENTS: usize = 20_000;
const ROUNDS: usize = 10;

/// A small deterministic generator (xorshift64*), so every run judges the same workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const DIRS: &[&str] = &[
    "/home/dev/src",
    "/home/dev/.config",
    "/etc",
    "/var/lib",
    "/usr/lib",
    "/tmp",
    "/opt/app",
    "/srv/data",
    "/root",
    "/home/ops/work",
];
const NAMES: &[&str] = &[
    "config",
    "id_rsa",
    "credentials",
    "main.rs",
    "lib.py",
    "token.json",
    "passwd",
    "hosts",
    "notes.md",
    "db.sqlite",
    "key.pem",
    ".env",
];
const BINARIES: &[&str] = &[
    "git", "cargo", "python3", "node", "curl", "wget", "bash", "sh", "rm", "nc", "ssh", "make",
    "ls", "cat", "grep", "docker",
];
const AGENTS: &[&str] = &["claude-code", "aider", "codex", "langchain-svc"];
const PROVIDERS: &[&str] = &["openai", "anthropic", "ollama", "mistral", "local"];
const MODELS: &[&str] = &[
    "gpt-4o",
    "claude-sonnet-4",
    "llama3",
    "mistral-large",
    "qwen2",
];

/// Values that make events hit generated rules, so the stream has warn and block verdicts too.
#[derive(Default)]
struct Hits {
    paths: Vec<String>,
    binaries: Vec<String>,
    sockets: Vec<(String, u16)>,
}

fn rules_yaml(rng: &mut Rng, hits: &mut Hits) -> String {
    let mut out = String::from(
        "oknek_rules: 1\nlists:\n  shells: [bash, sh, dash, zsh, fish, ksh]\n  \
         secrets: [/home/*/.ssh/id_*, /root/.ssh/id_*, /home/*/.aws/credentials, /home/*/.config/gcloud/**]\n  \
         providers: [openai, anthropic, ollama]\n  private: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16]\n\
         rules:\n",
    );
    for i in 0..RULES {
        let agents = if rng.below(5) == 0 {
            format!("    agents: [{}]\n", rng.pick(AGENTS))
        } else {
            String::new()
        };
        let dir = rng.pick(DIRS);
        let name = rng.pick(NAMES);
        let bin = rng.pick(BINARIES);
        let action = ["allow", "warn", "block", "block"][rng.below(4)];
        let category = rng.below(20);
        match category {
            0..=1 => hits.paths.push(format!("{dir}/{name}{i}")),
            6..=7 => hits.binaries.push(format!("{bin}{i}")),
            11..=12 => hits.sockets.push((
                format!("{}.{}.7.7", 20 + i % 200, i % 250),
                (1000 + i) as u16,
            )),
            _ => {}
        }
        let (kind, body, extra) = match category {
            0..=1 => (
                "open",
                format!("    match: {{ path: {dir}/{name}{i} }}\n"),
                "",
            ),
            2 => (
                "open",
                format!("    match: {{ path: {{ prefix: {dir}/{i}/ }} }}\n"),
                "",
            ),
            3 => (
                "open",
                format!(
                    "    match: {{ path: {{ glob: \"{dir}/*/{name}{i}*\" }}, not: {{ path: {{ suffix: .pub }} }} }}\n"
                ),
                "",
            ),
            4 => (
                "open",
                format!(
                    "    match: {{ path: {{ prefix: {dir}/, suffix: .{i}.conf }}, flags: {{ write: true }} }}\n"
                ),
                "",
            ),
            5 => (
                "open",
                format!("    match: {{ path: {{ glob: $secrets }}, exe: /usr/bin/x{i} }}\n"),
                "",
            ),
            6..=7 => (
                "exec",
                format!(
                    "    match: {{ path: {{ basename: {bin}{i} }}, argv: {{ contains: [-rf, -fr] }} }}\n"
                ),
                "",
            ),
            8 => (
                "exec",
                format!(
                    "    match: {{ comm: $shells, argv: {{ regex: 'curl .*{i}.*\\| *(ba)?sh' }} }}\n"
                ),
                "",
            ),
            9 => (
                "exec",
                format!(
                    "    match: {{ argv: {{ element: {{ glob: \"--*{i}*\" }} }}, parent_comm: {bin} }}\n"
                ),
                "",
            ),
            10 => (
                "exec",
                format!("    match: {{ exe: /usr/bin/{bin}{i}, uid: \"1000-1999\" }}\n"),
                "",
            ),
            11..=12 => (
                "[connect, send]",
                format!(
                    "    match: {{ addr: [{}.{}.0.0/16, \"fd{:02x}::/16\"], port: [{}, \"{}-{}\"] }}\n",
                    20 + i % 200,
                    i % 250,
                    i % 256,
                    1000 + i,
                    20_000 + i,
                    20_010 + i
                ),
                "",
            ),
            13 => (
                "connect",
                format!(
                    "    match: {{ addr: $private, port: {}, not: {{ exe: /usr/bin/{bin} }} }}\n",
                    5000 + i
                ),
                "",
            ),
            14 => (
                "send",
                format!("    match: {{ unix_path: {{ glob: \"/run/*/{i}.sock\" }} }}\n"),
                "",
            ),
            15 => (
                "watch",
                format!(
                    "    match: {{ path: {{ prefix: {dir}/{i} }}, mask: {{ any_of: [IN_MODIFY, IN_CLOSE_WRITE] }} }}\n"
                ),
                "",
            ),
            16 => (
                "model_call",
                format!(
                    "    match: {{ provider: {{ exact: [p{i}, q{i}] }}, not: {{ model: {{ glob: \"{}*\" }} }} }}\n",
                    rng.pick(MODELS)
                ),
                "",
            ),
            17 => (
                "model_call",
                format!("    match: {{ provider: p{i} }}\n"),
                "    when: { zone: \"+01:00\", outside: [ { days: [mon-fri], from: \"07:00\", to: \"20:00\" } ] }\n",
            ),
            18 => (
                "model_call",
                format!(
                    "    match: {{ provider: {}, model: m{i} }}\n",
                    rng.pick(PROVIDERS)
                ),
                "    quota: { limit: 100, per: 1h, by: caller_provider }\n",
            ),
            _ => {
                if i % 40 == 19 {
                    (
                        "exec",
                        format!(
                            "    match: {{ baseline: {{ features: [exec_basename], warmup: 7d }}, uid: {i} }}\n"
                        ),
                        "",
                    )
                } else {
                    (
                        "open",
                        format!(
                            "    match: {{ path: {{ exact: [{dir}/a{i}, {dir}/b{i}, {dir}/c{i}] }} }}\n"
                        ),
                        "",
                    )
                }
            }
        };
        out.push_str(&format!(
            "  - id: B{i}\n    title: Generated rule {i}\n    kind: {kind}\n{agents}{body}{extra}    action: {action}\n"
        ));
    }
    out
}

fn event_stream(rng: &mut Rng, hits: &Hits) -> Vec<Event> {
    (0..EVENTS)
        .map(|n| {
            let agent = rng.pick(AGENTS);
            let bin = rng.pick(BINARIES);
            // About 2% of events are aimed at a rule.
            let aimed = rng.below(50) == 0;
            let i = rng.below(RULES);
            let action = match rng.below(20) {
                0..=7 if aimed => format!(
                    r#""kind":"open","path":"{}","flags":0"#,
                    hits.paths[rng.below(hits.paths.len())]
                ),
                8..=12 if aimed => format!(
                    r#""kind":"exec","path":"/usr/bin/{}","argv":["x","-rf","/"]"#,
                    hits.binaries[rng.below(hits.binaries.len())]
                ),
                13..=15 if aimed => {
                    let (addr, port) = &hits.sockets[rng.below(hits.sockets.len())];
                    format!(r#""kind":"connect","dest":{{"family":"inet","addr":"{addr}","port":{port}}}"#)
                }
                0..=7 => {
                    let path = match rng.below(4) {
                        0 => format!("{}/{}{i}", rng.pick(DIRS), rng.pick(NAMES)),
                        1 => format!("/home/dev/.ssh/id_ed25519{}", if n % 2 == 0 { ".pub" } else { "" }),
                        _ => format!("{}/{}", rng.pick(DIRS), rng.pick(NAMES)),
                    };
                    format!(r#""kind":"open","path":"{path}","flags":{}"#, [0, 1, 577, 524288][rng.below(4)])
                }
                8..=12 => format!(
                    r#""kind":"exec","path":"/usr/bin/{bin}","argv":["{bin}","-rf","--verbose","/home/dev/src/project{i}","-c","echo hello"]"#
                ),
                13..=15 => format!(
                    r#""kind":"connect","dest":{{"family":"inet","addr":"{}.{}.{}.{}","port":{}}}"#,
                    [10, 20 + i % 200, 93, 192][rng.below(4)],
                    i % 250,
                    rng.below(256),
                    rng.below(256),
                    [443, 80, 22, 1000 + i, 5432][rng.below(5)]
                ),
                16 => format!(
                    r#""kind":"send","dest":{{"family":"unix","path":"/run/docker/{i}.sock"}},"bytes":512"#
                ),
                17 => format!(r#""kind":"watch","path":"{}/x","mask":2"#, rng.pick(DIRS)),
                _ => format!(
                    r#""kind":"model_call","provider":"{}","model":"{}","api":"openai""#,
                    rng.pick(PROVIDERS),
                    rng.pick(MODELS)
                ),
            };
            let time = format!("2026-11-{:02}T{:02}:{:02}:00Z", 20 + n % 7, n % 24, n % 60);
            Event::from_json(&format!(
                r#"{{"time":"{time}","source":"recorded",
                    "process":{{"pid":{},"ppid":1,"uid":1000,"gid":1000,"exe":"/usr/bin/{bin}","comm":"{bin}",
                                "parent_comm":"bash","agent":"{agent}"}},{action}}}"#,
                1000 + n
            ))
            .expect("generated events parse")
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

fn main() {
    let mut rng = Rng(0x6f6b_6e65_6b21);
    let mut hits = Hits::default();
    let yaml = rules_yaml(&mut rng, &mut hits);
    let events = event_stream(&mut rng, &hits);

    // Loading: parse + compile the whole set, cold (as at start) and as a reload that reuses the
    // previous set's compiled regexes, against parsing the same text into a plain value tree.
    let mut loads = Vec::new();
    let mut reloads = Vec::new();
    let mut parses = Vec::new();
    let mut set: Option<RuleSet> = None;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let loaded = RuleSet::from_sources(&[("bench.yaml", yaml.as_str())])
            .unwrap_or_else(|e| panic!("generated rules do not load:\n{e}"));
        loads.push(start.elapsed());
        let start = Instant::now();
        let reloaded = RuleSet::from_sources_reusing(&[("bench.yaml", yaml.as_str())], &loaded)
            .unwrap_or_else(|e| panic!("generated rules do not load:\n{e}"));
        reloads.push(start.elapsed());
        black_box(loaded);
        set = Some(reloaded);
        let start = Instant::now();
        let value: serde_norway::Value = serde_norway::from_str(&yaml).expect("valid YAML");
        parses.push(start.elapsed());
        black_box(value);
    }
    let set = set.expect("ROUNDS > 0");
    loads.sort();
    reloads.sort();
    if std::env::var_os("OKNEK_BENCH_RELOAD_ONLY").is_some() {
        // For profiling the loader: `perf record` this with the variable set.
        for _ in 0..50 {
            black_box(
                RuleSet::from_sources_reusing(&[("bench.yaml", yaml.as_str())], &set).is_ok(),
            );
        }
        return;
    }
    parses.sort();

    let mut baseline = MemoryBaseline::default();
    for event in events.iter().take(2000) {
        baseline.record(event);
    }
    baseline
        .since
        .values_mut()
        .for_each(|t| *t = "2026-11-01T00:00:00Z".parse().expect("valid time"));

    // Warm up caches and branch predictors.
    let mut quotas = QuotaLedger::new();
    for event in &events {
        black_box(set.evaluate(event, &mut EvalContext::new(&mut quotas, &baseline)));
    }

    let mut eval_times = Vec::with_capacity(EVENTS * ROUNDS);
    let mut by_kind: [Vec<Duration>; 6] = Default::default();
    let mut clone_times = Vec::with_capacity(EVENTS * ROUNDS);
    let mut verdicts = [0usize; 3];
    let mut fired = 0usize;
    let total_start = Instant::now();
    let mut eval_total = Duration::ZERO;
    for _ in 0..ROUNDS {
        let mut quotas = QuotaLedger::new();
        for event in &events {
            let start = Instant::now();
            let decision = set.evaluate(
                black_box(event),
                &mut EvalContext::new(&mut quotas, &baseline),
            );
            let took = start.elapsed();
            eval_total += took;
            eval_times.push(took);
            by_kind[event.kind().index()].push(took);
            verdicts[decision.verdict as usize] += 1;
            fired += decision.fired.len();
            black_box(decision);

            let start = Instant::now();
            let copy = black_box(event).clone();
            clone_times.push(start.elapsed());
            black_box(copy);
        }
    }
    let wall = total_start.elapsed();
    let kind_lines: Vec<String> = oknek_event::Kind::ALL
        .iter()
        .zip(by_kind.iter_mut())
        .filter(|(_, times)| !times.is_empty())
        .map(|(kind, times)| {
            times.sort();
            format!(
                "{kind} {:.0}/{:.0}",
                nanos(percentile(times, 0.5)),
                nanos(percentile(times, 0.99))
            )
        })
        .collect();
    eval_times.sort();
    clone_times.sort();

    // Throughput without per-event timers.
    let start = Instant::now();
    let mut quotas = QuotaLedger::new();
    for event in &events {
        black_box(set.evaluate(
            black_box(event),
            &mut EvalContext::new(&mut quotas, &baseline),
        ));
    }
    let throughput = EVENTS as f64 / start.elapsed().as_secs_f64();

    let (p50, p99, max) = (
        percentile(&eval_times, 0.50),
        percentile(&eval_times, 0.99),
        *eval_times.last().expect("events"),
    );
    let (c50, c99) = (
        percentile(&clone_times, 0.50),
        percentile(&clone_times, 0.99),
    );
    let per_kind: Vec<String> = oknek_event::Kind::ALL
        .iter()
        .map(|k| {
            let n = set.rules().iter().filter(|r| r.kinds().contains(k)).count();
            format!("{k} {n}")
        })
        .collect();
    let judged = EVENTS * ROUNDS;
    println!("oknek-engine benchmark");
    println!(
        "  rule set         {} rules ({}), {} KiB of YAML, digest {}",
        set.len(),
        per_kind.join(", "),
        yaml.len() / 1024,
        &set.digest()[..19]
    );
    println!(
        "  event stream     {EVENTS} events × {ROUNDS} rounds: {} allow, {} warn, {} block; {:.2} rules fired per event",
        verdicts[0],
        verdicts[1],
        verdicts[2],
        fired as f64 / judged as f64
    );
    println!(
        "  evaluate         p50 {:>8.0} ns   p99 {:>8.0} ns   max {:>8.0} ns   (goal: p99 ≤ 10000 ns)",
        nanos(p50),
        nanos(p99),
        nanos(max)
    );
    println!("  by kind (p50/p99 ns) {}", kind_lines.join(", "));
    println!(
        "  clone event      p50 {:>8.0} ns   p99 {:>8.0} ns",
        nanos(c50),
        nanos(c99)
    );
    println!(
        "  ratio            evaluate / clone: p50 {:.1}×, p99 {:.1}×",
        nanos(p50) / nanos(c50).max(1.0),
        nanos(p99) / nanos(c99).max(1.0)
    );
    println!(
        "  throughput       {:.0} events/s on one core (mean {:.0} ns; timed loop {:.0} ms)",
        throughput,
        nanos(eval_total) / judged as f64,
        wall.as_secs_f64() * 1e3
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "  load (cold)      median {:>6.2} ms, min {:>6.2} ms for {} rules",
        ms(loads[ROUNDS / 2]),
        ms(loads[0]),
        set.len()
    );
    println!(
        "  reload           median {:>6.2} ms, min {:>6.2} ms (reuses the previous set's regexes; goal ≤ 5 ms)",
        ms(reloads[ROUNDS / 2]),
        ms(reloads[0])
    );
    println!(
        "  YAML parse only  median {:>6.2} ms (serde_norway::Value); load / parse {:.1}×, reload / parse {:.1}×",
        ms(parses[ROUNDS / 2]),
        loads[ROUNDS / 2].as_secs_f64() / parses[ROUNDS / 2].as_secs_f64(),
        reloads[ROUNDS / 2].as_secs_f64() / parses[ROUNDS / 2].as_secs_f64()
    );
}
