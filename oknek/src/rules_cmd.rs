//! `oknek rules check|test|list` and `oknek simulate`: offline work on a rules directory.

use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use oknek_engine::fixtures::{self, FixtureFile};
use oknek_engine::{Decision, EvalContext, LoadErrors, QuotaLedger, Rule, RuleSet, kernel_rule};
use oknek_event::{Event, MemoryBaseline, Verdict};
use serde_json::json;

use crate::cli::{CliError, Global};

const DEFAULT_RULES_DIR: &str = "/var/lib/oknek/rules/active";

const RULES_HELP: &str = "\
oknek rules — check, test and list a rule set

Usage: oknek rules <check|test|list> [DIR] [options]

Commands:
  check [DIR]    Load the rule set and report every problem as file:line:column
  test [DIR]     Run the fixtures in DIR/fixtures and print a pass/fail table
  list [DIR]     List the rules: kind, action, severity, where block rules are enforced

DIR defaults to /var/lib/oknek/rules/active. Run `oknek rules <command> --help` for details.

Example:
  oknek rules check ./rules && oknek rules test ./rules
";

const CHECK_HELP: &str = "\
oknek rules check — lint a rule set

Usage: oknek rules check [DIR]

Loads every *.yaml/*.yml file directly in DIR (default /var/lib/oknek/rules/active), exactly as
oknekd would. Prints `ok: N rules in M files, digest sha256:…` and exits 0, or prints each
problem as `file:line:column: error: …` with a hint and exits 1. A set with any error is
rejected whole: a running oknekd keeps its previous rules.

Example:
  $ oknek rules check ./rules
  ./rules/10-r1.yaml:14:15: error: unknown field `pat`
    hint: did you mean `path`?
";

const TEST_HELP: &str = "\
oknek rules test — run a rule set's fixtures

Usage: oknek rules test [DIR] [--failures]

Loads the rules in DIR (default /var/lib/oknek/rules/active), then runs every fixture file in
DIR/fixtures/*.yaml: each case is an event with the verdict it must get (`expect`) and, when
given, exactly the rules that must fire (`fired`). Cases of one file share one quota state;
`repeat: N` runs a case N times. Exits 1 if any case fails or a fixture file is malformed.

Options:
  --failures     Print only the failing cases (and the summary)

Example:
  $ oknek rules test ./rules
  FILE     CASE                                  EXPECT  GOT    FIRED    RESULT
  R1.yaml  agent reads an ed25519 private key    block   block  R1.ssh   pass
";

const LIST_HELP: &str = "\
oknek rules list — list the rules of a set

Usage: oknek rules list [DIR] [--json]

One row per rule, in evaluation order: id, kind(s), action, severity, and for block rules where
they are enforced — `kernel` (kernel maps refuse the syscall), `kernel (globs expanded)`, or
`userspace: <reason>` (decided by oknekd; e.g. argv regex, not, when, quota, baseline).

Options:
  --json         One JSON array with every rule's details and its kernel plan

Example:
  oknek rules list ./rules
  oknek rules list --json ./rules | jq '.[] | select(.action == \"block\") | .id'
";

const SIMULATE_HELP: &str = "\
oknek simulate — replay recorded events through a rule set

Usage: oknek simulate --rules DIR --events FILE.jsonl [--json] [--state-dir DIR]

Reads one event per line (the JSONL event format; `-` reads standard input) and prints each
event's verdict, the deciding rule and every rule that fired. Quotas run on the events' own
times; the agents' baselines are learned from the replayed events, starting empty. Nothing is
enforced. With --state-dir, every fired rule also becomes a real signed evidence bundle in that
state directory (a host key is created there if none exists), so `oknek verify --state-dir DIR`
and `oknek events --state-dir DIR` work on the result.

A line that is not a valid event is reported as FILE:LINE with the reason, skipped, and makes
the command exit 1 after the replay; blank lines and lines starting with `#` are ignored.

Options:
  --rules DIR      The rule set [default: /var/lib/oknek/rules/active]
  --state-dir DIR  Also write signed evidence bundles (and the baseline) to DIR
  --events FILE    The recorded events (JSONL), or - for standard input
  --json           One JSON object per event instead of the table

Example:
  oknek simulate --rules ./rules --events recorded.jsonl
  oknek simulate --rules ./rules --events recorded.jsonl --json | jq 'select(.verdict != \"allow\")'
";

pub fn rules(parser: &mut lexopt::Parser, global: &Global) -> Result<ExitCode, CliError> {
    use lexopt::prelude::*;
    let _ = global;
    match parser.next()? {
        Some(Value(cmd)) => match cmd.to_string_lossy().as_ref() {
            "check" => check(parser),
            "test" => test(parser),
            "list" => list(parser),
            other => Err(CliError::usage(format!(
                "unknown rules command {other:?}; expected check, test or list (see oknek rules --help)"
            ))),
        },
        Some(Short('h') | Long("help")) => {
            print!("{RULES_HELP}");
            Ok(ExitCode::SUCCESS)
        }
        Some(arg) => Err(arg.unexpected().into()),
        None => {
            eprint!("{RULES_HELP}");
            Err(CliError::usage("a rules command is required"))
        }
    }
}

/// A rules command's arguments: the directory and the flags given.
struct Args {
    dir: PathBuf,
    flags: Vec<&'static str>,
}

/// Parses `[DIR]` and the flags in `known_flags`; `Ok(None)` when help was printed.
fn dir_args(
    parser: &mut lexopt::Parser,
    help: &str,
    known_flags: &[&'static str],
) -> Result<Option<Args>, CliError> {
    use lexopt::prelude::*;
    let mut dir: Option<OsString> = None;
    let mut flags = Vec::new();
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{help}");
                return Ok(None);
            }
            Long(name) if known_flags.contains(&name) => {
                let flag = known_flags.iter().find(|f| **f == name).copied();
                flags.extend(flag);
            }
            Value(value) if dir.is_none() => dir = Some(value),
            arg => return Err(arg.unexpected().into()),
        }
    }
    Ok(Some(Args {
        dir: dir.map_or_else(|| PathBuf::from(DEFAULT_RULES_DIR), PathBuf::from),
        flags,
    }))
}

/// Loads a set, or prints its errors and returns the failure.
fn load(dir: &Path) -> Result<RuleSet, CliError> {
    RuleSet::load_dir(dir).map_err(|errors| {
        print_load_errors(&errors);
        CliError::failed(format!(
            "{} {} in {}; the rule set was not loaded",
            errors.len(),
            if errors.len() == 1 { "error" } else { "errors" },
            dir.display()
        ))
    })
}

fn print_load_errors(errors: &LoadErrors) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{errors}");
}

fn check(parser: &mut lexopt::Parser) -> Result<ExitCode, CliError> {
    let Some(args) = dir_args(parser, CHECK_HELP, &[])? else {
        return Ok(ExitCode::SUCCESS);
    };
    let set = load(&args.dir)?;
    println!(
        "ok: {} {} in {} {}, digest {}",
        set.len(),
        if set.len() == 1 { "rule" } else { "rules" },
        set.files().len(),
        if set.files().len() == 1 {
            "file"
        } else {
            "files"
        },
        set.digest()
    );
    Ok(ExitCode::SUCCESS)
}

fn test(parser: &mut lexopt::Parser) -> Result<ExitCode, CliError> {
    let Some(args) = dir_args(parser, TEST_HELP, &["failures"])? else {
        return Ok(ExitCode::SUCCESS);
    };
    let only_failures = args.flags.contains(&"failures");
    let set = load(&args.dir)?;
    let paths = fixtures::fixture_paths(&args.dir).map_err(|err| {
        CliError::failed(format!(
            "cannot read {}: {err}",
            args.dir.join("fixtures").display()
        ))
    })?;
    if paths.is_empty() {
        return Err(CliError::failed(format!(
            "no fixture files (*.yaml) in {}",
            args.dir.join("fixtures").display()
        )));
    }

    let mut rows: Vec<[String; 6]> = Vec::new();
    let mut details = Vec::new();
    let (mut passed, mut failed, mut bad_files) = (0usize, 0usize, 0usize);
    let mut covered = std::collections::HashSet::new();
    for path in &paths {
        let short = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let file = match FixtureFile::load(path) {
            Ok(file) => file,
            Err(err) => {
                bad_files += 1;
                details.push(err.to_string());
                continue;
            }
        };
        for (case, result) in file.cases.iter().zip(file.run(&set)) {
            covered.extend(case.fired.iter().flatten().cloned());
            covered.extend(result.fired.iter().cloned());
            let ok = result.passed();
            if ok {
                passed += 1;
            } else {
                failed += 1;
                let run = result
                    .failed_run
                    .map(|r| format!(" (run {r} of {})", case.repeat))
                    .unwrap_or_default();
                details.push(format!(
                    "FAIL {short}: {}{run}: {}",
                    result.name,
                    result.failure.as_deref().unwrap_or("")
                ));
            }
            if ok && only_failures {
                continue;
            }
            let name = if case.repeat > 1 {
                format!("{} (×{})", result.name, case.repeat)
            } else {
                result.name.clone()
            };
            rows.push([
                short.clone(),
                name,
                result.expect.to_string(),
                result.got.to_string(),
                if result.fired.is_empty() {
                    "-".into()
                } else {
                    result.fired.join(",")
                },
                if ok { "pass".into() } else { "FAIL".into() },
            ]);
        }
    }
    let mut out = io::stdout().lock();
    print_table(
        &mut out,
        &["FILE", "CASE", "EXPECT", "GOT", "FIRED", "RESULT"],
        &rows,
    );
    for line in &details {
        let _ = writeln!(out, "{line}");
    }
    let untested: Vec<&str> = set
        .rules()
        .iter()
        .map(Rule::id)
        .filter(|id| !covered.contains(*id))
        .collect();
    if !untested.is_empty() {
        let _ = writeln!(
            out,
            "note: no case fires or names {} {}",
            if untested.len() == 1 { "rule" } else { "rules" },
            untested.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "{} cases: {passed} passed, {failed} failed{}",
        passed + failed,
        if bad_files > 0 {
            format!("; {bad_files} malformed fixture files")
        } else {
            String::new()
        }
    );
    Ok(if failed == 0 && bad_files == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn list(parser: &mut lexopt::Parser) -> Result<ExitCode, CliError> {
    let Some(args) = dir_args(parser, LIST_HELP, &["json"])? else {
        return Ok(ExitCode::SUCCESS);
    };
    let set = load(&args.dir)?;
    let mut out = io::stdout().lock();
    if args.flags.contains(&"json") {
        let rules: Vec<serde_json::Value> = set.rules().iter().map(rule_json).collect();
        let _ = writeln!(out, "{}", serde_json::Value::Array(rules));
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 5]> = set
        .rules()
        .iter()
        .map(|rule| {
            [
                rule.id().to_owned(),
                kinds_text(rule),
                if rule.hold() {
                    format!("{} +hold", rule.action())
                } else {
                    rule.action().to_string()
                },
                rule.severity().to_string(),
                if rule.action() == Verdict::Block {
                    kernel_rule(rule).enforceability.summary()
                } else {
                    "-".into()
                },
            ]
        })
        .collect();
    print_table(
        &mut out,
        &["ID", "KIND", "ACTION", "SEVERITY", "ENFORCED BY"],
        &rows,
    );
    let _ = writeln!(
        out,
        "{} rules in {} files, digest {}",
        set.len(),
        set.files().len(),
        set.digest()
    );
    Ok(ExitCode::SUCCESS)
}

fn kinds_text(rule: &Rule) -> String {
    rule.kinds()
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(",")
}

fn rule_json(rule: &Rule) -> serde_json::Value {
    let plan = kernel_rule(rule);
    json!({
        "id": rule.id(),
        "title": rule.title(),
        "kinds": rule.kinds().iter().map(|k| k.name()).collect::<Vec<_>>(),
        "agents": rule.agents(),
        "action": rule.action(),
        "hold": rule.hold(),
        "severity": rule.severity(),
        "tags": rule.tags(),
        "when": rule.has_when(),
        "quota": rule.quota(),
        "file": &*rule.source().file,
        "index": rule.source().index,
        "kernel": if rule.action() == Verdict::Block {
            serde_json::to_value(&plan).unwrap_or(serde_json::Value::Null)
        } else {
            serde_json::Value::Null
        },
    })
}

fn print_table<const N: usize>(out: &mut impl Write, header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(out, &mut header.iter().copied());
    for row in rows {
        line(out, &mut row.iter().map(String::as_str));
    }
}

// ------------------------------------------------------------------------------------ simulate

/// Where simulated decisions go: printed, and with `--state-dir` also written as evidence.
trait DecisionSink {
    fn record(&mut self, line: usize, event: &Event, decision: &Decision) -> io::Result<()>;

    /// Commits whatever is buffered (evidence) once the replay is over.
    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct TableSink<W: Write> {
    out: W,
}

impl<W: Write> DecisionSink for TableSink<W> {
    fn record(&mut self, line: usize, event: &Event, decision: &Decision) -> io::Result<()> {
        let deciding = decision
            .deciding_rule()
            .map_or("-", |f| &*f.rule_id)
            .to_owned();
        let others: Vec<&str> = decision
            .fired
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != decision.deciding)
            .map(|(_, f)| &*f.rule_id)
            .collect();
        writeln!(
            self.out,
            "{line:>5}  {}  {:<10}  {:<12}  {:<5}  {deciding}{}{}",
            event.time,
            event.kind().name(),
            event.agent().unwrap_or("-"),
            decision.verdict.name(),
            if decision.hold() { " +hold" } else { "" },
            if others.is_empty() {
                String::new()
            } else {
                format!("  (also fired: {})", others.join(", "))
            }
        )
    }
}

struct JsonSink<W: Write> {
    out: W,
}

impl<W: Write> DecisionSink for JsonSink<W> {
    fn record(&mut self, line: usize, event: &Event, decision: &Decision) -> io::Result<()> {
        let fired: Vec<serde_json::Value> = decision
            .fired
            .iter()
            .map(|f| {
                json!({
                    "rule": &*f.rule_id,
                    "title": &*f.title,
                    "action": f.action,
                    "severity": f.severity,
                    "hold": f.hold,
                    "capture": f.capture.iter().map(|c| c.name()).collect::<Vec<_>>(),
                    "quota": f.quota,
                })
            })
            .collect();
        let value = json!({
            "line": line,
            "time": event.time,
            "kind": event.kind(),
            "agent": event.agent(),
            "verdict": decision.verdict,
            "deciding": decision.deciding_rule().map(|f| &*f.rule_id),
            "hold": decision.hold(),
            "fired": fired,
        });
        writeln!(self.out, "{value}")
    }
}

/// Writes one signed bundle per fired rule, then passes the decision on to the printer.
struct EvidenceSink<'a> {
    /// `None` once closed.
    store: Option<oknek_evidence::Store>,
    digest: String,
    next: Box<dyn DecisionSink + 'a>,
}

impl DecisionSink for EvidenceSink<'_> {
    fn record(&mut self, line: usize, event: &Event, decision: &Decision) -> io::Result<()> {
        for fired in &decision.fired {
            let Some(store) = &mut self.store else {
                return Err(io::Error::other("evidence store already closed"));
            };
            oknekd::judge::with_firing(event, &self.digest, fired, |firing| store.append(firing))
                .map_err(|e| io::Error::other(format!("evidence: {e}")))?;
        }
        if let Some(store) = &mut self.store {
            store.observe(event);
        }
        self.next.record(line, event, decision)
    }

    fn finish(&mut self) -> io::Result<()> {
        match self.store.take() {
            Some(store) => store.close().map_err(|e| io::Error::other(e.to_string())),
            None => Ok(()),
        }
    }
}

pub fn simulate(parser: &mut lexopt::Parser, global: &Global) -> Result<ExitCode, CliError> {
    use lexopt::prelude::*;
    let _ = global;
    let mut rules_dir = PathBuf::from(DEFAULT_RULES_DIR);
    let mut events: Option<PathBuf> = None;
    let mut as_json = false;
    let mut state_dir: Option<PathBuf> = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{SIMULATE_HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            Long("rules") => rules_dir = parser.value()?.into(),
            Long("events") => events = Some(parser.value()?.into()),
            Long("json") => as_json = true,
            Long("state-dir") => state_dir = Some(parser.value()?.into()),
            arg => return Err(arg.unexpected().into()),
        }
    }
    let Some(events) = events else {
        return Err(CliError::usage(
            "--events FILE.jsonl is required (see oknek simulate --help)",
        ));
    };
    let set = load(&rules_dir)?;
    let (name, reader): (String, Box<dyn BufRead>) = if events.as_os_str() == "-" {
        ("<stdin>".into(), Box::new(io::stdin().lock()))
    } else {
        let file = fs::File::open(&events)
            .map_err(|err| CliError::failed(format!("cannot read {}: {err}", events.display())))?;
        (events.display().to_string(), Box::new(BufReader::new(file)))
    };
    let stdout = io::stdout().lock();
    let printer: Box<dyn DecisionSink> = if as_json {
        Box::new(JsonSink { out: stdout })
    } else {
        Box::new(TableSink { out: stdout })
    };
    let mut sink: Box<dyn DecisionSink> = match &state_dir {
        Some(dir) => {
            let mut config = oknek_evidence::StoreConfig::new(dir);
            config.create_key = true;
            let store = oknek_evidence::Store::open(config)
                .map_err(|e| CliError::failed(format!("evidence store {}: {e}", dir.display())))?;
            Box::new(EvidenceSink {
                store: Some(store),
                digest: set.digest().to_owned(),
                next: printer,
            })
        }
        None => printer,
    };
    let summary = replay(&set, &name, reader, sink.as_mut())?;
    sink.finish()
        .map_err(|e| CliError::failed(format!("evidence store: {e}")))?;

    if summary.output_closed {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "{} events: {} allowed, {} warned, {} blocked{}",
        summary.events,
        summary.by_verdict[0],
        summary.by_verdict[1],
        summary.by_verdict[2],
        if summary.bad_lines > 0 {
            format!("; {} bad lines skipped", summary.bad_lines)
        } else {
            String::new()
        }
    );
    Ok(if summary.bad_lines == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

struct Summary {
    events: usize,
    by_verdict: [usize; 3],
    bad_lines: usize,
    output_closed: bool,
}

fn replay(
    set: &RuleSet,
    name: &str,
    reader: impl BufRead,
    sink: &mut dyn DecisionSink,
) -> Result<Summary, CliError> {
    let mut quotas = QuotaLedger::new();
    let mut baseline = MemoryBaseline::default();
    let mut summary = Summary {
        events: 0,
        by_verdict: [0; 3],
        bad_lines: 0,
        output_closed: false,
    };
    for (i, line) in reader.lines().enumerate() {
        let number = i + 1;
        let line = line.map_err(|err| CliError::failed(format!("{name}:{number}: {err}")))?;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let event = match Event::from_json(trimmed) {
            Ok(event) => event,
            Err(err) => {
                eprintln!("{name}:{number}: error: not a valid event: {err}");
                summary.bad_lines += 1;
                continue;
            }
        };
        let decision = set.evaluate(&event, &mut EvalContext::new(&mut quotas, &baseline));
        // The daemon counts every event into the baseline after judging it; so does the replay.
        baseline.record(&event);
        summary.events += 1;
        summary.by_verdict[decision.verdict as usize] += 1;
        match sink.record(number, &event, &decision) {
            Ok(()) => {}
            // The reader went away (`| head`): stop quietly, as other tools do.
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {
                summary.output_closed = true;
                break;
            }
            Err(err) => return Err(CliError::failed(format!("cannot write output: {err}"))),
        }
    }
    Ok(summary)
}
