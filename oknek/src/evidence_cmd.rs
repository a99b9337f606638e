//! `oknek keygen`, `oknek key show`, `oknek verify`, `oknek events`.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use oknek_event::{Timestamp, Verdict};
use oknek_evidence::{
    DEFAULT_STATE_DIR, EventReader, HostKey, KEY_FILE, PUB_FILE, Progress, Query, Record, Summary,
    VerifyOptions, public_key_from_arg, verify,
};

use crate::cli::{CliError, Global};

const KEYGEN_HELP: &str = "\
oknek keygen — create this host's Ed25519 evidence key

Usage: oknek keygen [--state-dir DIR] [--if-missing]

Writes DIR/host.key (mode 0600; default DIR /var/lib/oknek) with a new Ed25519 key and install
id, and DIR/host.pub with its public half. Every evidence bundle is signed with this key, so an
existing key is never replaced. Prints the fingerprint and the public key; give the public key to
`oknek verify --pubkey` on another machine.

Options:
  --state-dir DIR   Where the key lives [default: /var/lib/oknek]
  --if-missing      Exit 0 without a change when a valid key already exists (for install scripts)

Example:
  $ sudo oknek keygen
  created /var/lib/oknek/host.key
  fingerprint: sha256:799ee5cd21d5bd556d0479fbd7fc5a38c2df7723ebc1529afa375c42e29ed46f
  public key:  oknek-ed25519:VmbQ0rLZN0rI0s6LMDSnv9Hmo3obczU1CRM2+eIC3yc=
  install id:  caa6a15d0f472563c9a821bd3473e469
";

const KEY_HELP: &str = "\
oknek key show — print this host's evidence public key

Usage: oknek key show [--state-dir DIR] [--public]

Prints the key's fingerprint, the public key in the form `oknek verify --pubkey` accepts, and
the install id. Reads DIR/host.key, or DIR/host.pub when the key file is not readable.

Options:
  --state-dir DIR   Where the key lives [default: /var/lib/oknek]
  --public          Print only the public key line (to save it for another machine)

Example:
  $ oknek key show --public > this-host.pub
  $ oknek verify --journal copied-journal/ --pubkey this-host.pub      # elsewhere
";

const VERIFY_HELP: &str = "\
oknek verify — check evidence for tampering

Usage: oknek verify [--state-dir DIR] [--pubkey KEY] [--journal PATH] [--progress]

Checks every bundle's signature, the hash chain, seq continuity, that the journal and the
database hold the same records, and the signed head in the database. Exits 0 when all hold; on
the first bad record prints its seq, where it is, and what is wrong (edited, inserted, deleted,
reordered, truncated tail, wrong key, …) and exits 1.

Options:
  --state-dir DIR   The store to check: DIR/oknek.db, DIR/journal/ [default: /var/lib/oknek]
  --pubkey KEY      Check against this key: `oknek-ed25519:…`, or a file holding it (host.pub,
                    the output of `oknek key show --public`) [default: DIR/host.key]
  --journal PATH    Check this journal file or directory. Without --state-dir, only the journal
                    is checked (needs --pubkey): for journals copied off the host
  --progress        Print progress to stderr (automatic when stderr is a terminal)

Examples:
  $ sudo oknek verify
  ok: 182034 bundles verified in 2.9 s
  $ oknek verify --journal /mnt/backup/journal --pubkey host.pub
";

const EVENTS_HELP: &str = "\
oknek events — query recorded evidence bundles

Usage: oknek events [--state-dir DIR] [filters] [--limit N] [--json] [--follow]

Filters (all given must hold):
  --since TIME      Events at or after TIME: RFC 3339 (2026-11-22T08:00:00Z), a date
                    (2026-11-22, UTC midnight), or an age (90s, 15m, 2h, 7d ago)
  --until TIME      Events before TIME
  --agent NAME      One agent
  --rule ID         One rule id
  --verdict V       allow, warn or block
  --pid PID         One process id

Output:
  --limit N         Only the newest N matches
  --json            One JSON object per line (NDJSON): the full signed bundle, exactly as in the
                    journal
  --follow          Keep running and print new bundles as they are committed
  --state-dir DIR   The store to read [default: /var/lib/oknek]

Examples:
  $ oknek events --since 1h --verdict block
  $ oknek events --agent claude-code --json | jq -r .bundle.capture.path
  $ oknek events --follow
";

pub fn main(
    cmd: &str,
    parser: &mut lexopt::Parser,
    _global: &Global,
) -> Result<ExitCode, CliError> {
    match cmd {
        "keygen" => keygen(parser),
        "key" => key(parser),
        "verify" => verify_cmd(parser),
        "events" => events(parser),
        other => Err(CliError::usage(format!("unknown command {other:?}"))),
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

fn keygen(parser: &mut lexopt::Parser) -> Result<ExitCode, CliError> {
    use lexopt::prelude::*;
    let mut state_dir = default_state_dir();
    let mut if_missing = false;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("state-dir") => state_dir = parser.value()?.into(),
            Long("if-missing") => if_missing = true,
            Short('h') | Long("help") => {
                print!("{KEYGEN_HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    let path = state_dir.join(KEY_FILE);
    if if_missing && path.symlink_metadata().is_ok() {
        // Load it: an unusable existing key must still be reported.
        let key = HostKey::load(&path).map_err(CliError::failed)?;
        println!("exists {}", path.display());
        print_key(&key);
        return Ok(ExitCode::SUCCESS);
    }
    let key = HostKey::generate(&path).map_err(CliError::failed)?;
    println!("created {}", path.display());
    print_key(&key);
    Ok(ExitCode::SUCCESS)
}

fn print_key(key: &HostKey) {
    println!("fingerprint: {}", key.public().fingerprint());
    println!("public key:  {}", key.public());
    println!("install id:  {}", key.install_id());
}

fn key(parser: &mut lexopt::Parser) -> Result<ExitCode, CliError> {
    use lexopt::prelude::*;
    let mut state_dir = default_state_dir();
    let mut public_only = false;
    let mut sub = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Value(v) if sub.is_none() => sub = Some(v.string()?),
            Long("state-dir") => state_dir = parser.value()?.into(),
            Long("public") => public_only = true,
            Short('h') | Long("help") => {
                print!("{KEY_HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    match sub.as_deref() {
        Some("show") => {}
        Some(other) => {
            return Err(CliError::usage(format!(
                "unknown key command {other:?}; the one command is `oknek key show`"
            )));
        }
        None => {
            return Err(CliError::usage(
                "usage: oknek key show (see oknek key --help)",
            ));
        }
    }
    let key_path = state_dir.join(KEY_FILE);
    let (public, install) = match HostKey::load(&key_path) {
        Ok(k) => (*k.public(), Some(k.install_id().to_owned())),
        Err(key_err) => {
            let pub_path = state_dir.join(PUB_FILE);
            match public_key_from_arg(&pub_path.to_string_lossy()) {
                Ok(p) => {
                    eprintln!("oknek: note: {key_err}; showing {}", pub_path.display());
                    (p, None)
                }
                Err(_) => return Err(CliError::failed(key_err)),
            }
        }
    };
    if public_only {
        println!("{public}");
    } else {
        println!("fingerprint: {}", public.fingerprint());
        println!("public key:  {public}");
        if let Some(id) = install {
            println!("install id:  {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verify_cmd(parser: &mut lexopt::Parser) -> Result<ExitCode, CliError> {
    use lexopt::prelude::*;
    let mut state_dir: Option<PathBuf> = None;
    let mut journal: Option<PathBuf> = None;
    let mut pubkey: Option<String> = None;
    let mut show_progress = io::stderr().is_terminal();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("state-dir") => state_dir = Some(parser.value()?.into()),
            Long("journal") => journal = Some(parser.value()?.into()),
            Long("pubkey") => pubkey = Some(parser.value()?.string()?),
            Long("progress") => show_progress = true,
            Short('h') | Long("help") => {
                print!("{VERIFY_HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    if state_dir.is_none() && journal.is_none() {
        state_dir = Some(default_state_dir());
    }
    if state_dir.is_none() && pubkey.is_none() {
        return Err(CliError::usage(
            "--journal without --state-dir needs --pubkey KEY (the output of `oknek key show \
             --public` on the host that wrote it)",
        ));
    }
    let pubkey = pubkey
        .map(|k| public_key_from_arg(&k))
        .transpose()
        .map_err(CliError::failed)?;
    let opts = VerifyOptions {
        state_dir,
        journal,
        pubkey,
    };
    let mut last_print = std::time::Instant::now();
    let mut on_progress = |p: Progress| {
        if show_progress && last_print.elapsed() >= Duration::from_millis(500) {
            last_print = std::time::Instant::now();
            if p.total > 0 {
                eprint!(
                    "\rverify: {}/{} bundles ({}%)",
                    p.done,
                    p.total,
                    p.done * 100 / p.total
                );
            } else {
                eprint!("\rverify: {} bundles", p.done);
            }
        }
    };
    let report = verify(&opts, &mut on_progress).map_err(CliError::failed)?;
    if show_progress {
        eprint!("\r\x1b[K");
    }
    let rate = if report.seconds > 0.0 {
        report.bundles as f64 / report.seconds
    } else {
        0.0
    };
    let mut out = io::stdout().lock();
    let mut say = |s: String| {
        let _ = writeln!(out, "{s}");
    };
    match &report.finding {
        None if report.bundles >= 10_000 => say(format!(
            "ok: {} bundles verified in {:.2} s ({:.0}/s)",
            report.bundles, report.seconds, rate
        )),
        None => say(format!("ok: {} bundles verified", report.bundles)),
        Some(f) => {
            say(format!("FAILED: {f}"));
            say(format!("  ({} bundles before it verified)", report.bundles));
        }
    }
    say(format!(
        "  key:      {} (from {})",
        report.key, report.key_source
    ));
    say(format!("  journal:  {} file(s)", report.journal_files));
    if let Some(rows) = report.db_rows {
        let head = report
            .head
            .map_or_else(|| "none".to_owned(), |h| format!("seq {}", h.seq));
        say(format!("  database: {rows} rows, signed head {head}"));
    }
    for w in &report.warnings {
        say(format!("warning: {w}"));
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// RFC 3339, a date (UTC midnight), or an age such as `15m` meaning that long ago.
fn parse_time(s: &str, now: Timestamp) -> Result<Timestamp, CliError> {
    if let Some(unit) = s.chars().last().filter(|c| "smhd".contains(*c))
        && let Ok(n) = s[..s.len() - 1].parse::<i64>()
    {
        let secs = match unit {
            's' => n,
            'm' => n * 60,
            'h' => n * 3600,
            _ => n * 86_400,
        };
        return Ok(Timestamp(
            now.as_nanos() - secs.saturating_mul(1_000_000_000),
        ));
    }
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_owned()
    };
    full.parse()
        .map_err(|e| CliError::usage(format!("{e}; or give an age such as 15m, 2h, 7d")))
}

fn events(parser: &mut lexopt::Parser) -> Result<ExitCode, CliError> {
    use lexopt::prelude::*;
    let mut state_dir = default_state_dir();
    let mut q = Query::default();
    let mut json = false;
    let mut follow = false;
    let now = Timestamp::now();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("state-dir") => state_dir = parser.value()?.into(),
            Long("since") => q.since = Some(parse_time(&parser.value()?.string()?, now)?),
            Long("until") => q.until = Some(parse_time(&parser.value()?.string()?, now)?),
            Long("agent") => q.agent = Some(parser.value()?.string()?),
            Long("rule") => q.rule = Some(parser.value()?.string()?),
            Long("verdict") => {
                let v = parser.value()?.string()?;
                q.verdict = Some(Verdict::from_name(&v).ok_or_else(|| {
                    CliError::usage(format!("--verdict {v:?}: expected allow, warn or block"))
                })?);
            }
            Long("pid") => q.pid = Some(parser.value()?.parse()?),
            Long("limit") => q.limit = Some(parser.value()?.parse()?),
            Long("json") => json = true,
            Long("follow") | Short('f') => follow = true,
            Short('h') | Long("help") => {
                print!("{EVENTS_HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    let reader = EventReader::open(&state_dir).map_err(CliError::failed)?;
    if follow && q.limit.is_none() {
        q.limit = Some(10);
    }
    let mut out = io::stdout().lock();
    if !json {
        print_header(&mut out);
    }
    let mut last = 0u64;
    loop {
        let top = reader.last_seq().map_err(CliError::failed)?;
        let records = reader.query(&q).map_err(CliError::failed)?;
        for r in &records {
            let written = if json {
                writeln!(out, "{}", r.line())
            } else {
                print_row(&mut out, r)
            };
            if written.is_err() {
                return Ok(ExitCode::SUCCESS); // the reader went away (e.g. `| head`)
            }
            last = last.max(r.seq);
        }
        if !follow {
            break;
        }
        let _ = out.flush();
        last = last.max(top);
        q.after_seq = Some(last);
        q.limit = None;
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_header(out: &mut impl Write) {
    let _ = writeln!(
        out,
        "{:>7}  {:<19}  {:<7}  {:<14}  {:<14}  {:>7}  {:<10}  WHAT",
        "SEQ", "TIME (UTC)", "VERDICT", "AGENT", "RULE", "PID", "KIND"
    );
}

fn print_row(out: &mut impl Write, r: &Record) -> io::Result<()> {
    let s = Summary::of(r);
    let t = Timestamp(r.time_ns).to_string();
    // 2026-11-22T08:30:00.123456789Z → 2026-11-22 08:30:00
    let t = t.get(..19).unwrap_or(&t).replacen('T', " ", 1);
    writeln!(
        out,
        "{:>7}  {:<19}  {:<7}  {:<14}  {:<14}  {:>7}  {:<10}  {}",
        r.seq,
        t,
        r.verdict,
        r.agent.as_deref().unwrap_or("-"),
        r.rule,
        r.pid,
        s.kind,
        s.what
    )
}
