//! Rule fixtures: events in, expected verdicts out (rules/README.md, "Fixtures").

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::Path;

use oknek_event::{BaselineView, Event, Feature, MemoryBaseline, NoBaseline, Timestamp, Verdict};
use serde::{Deserialize, Deserializer};

use crate::error::LoadError;
use crate::{EvalContext, QuotaLedger, RuleSet, yaml};

/// Most repetitions of one case.
const MAX_REPEAT: u32 = 1_000_000;

/// One fixture file.
#[derive(Debug, Clone)]
pub struct FixtureFile {
    /// The file, as named when loaded.
    pub name: String,
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureDoc {
    cases: Vec<Case>,
}

/// One case: an event and the verdict it must get.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub event: Event,
    pub expect: Verdict,
    /// When given: exactly these rules must fire (any order).
    #[serde(default)]
    pub fired: Option<Vec<String>>,
    /// Run the case this many times; each run must meet the expectation.
    #[serde(default = "one")]
    pub repeat: u32,
    /// The agent's baseline history for this case.
    #[serde(default)]
    pub baseline: Option<BaselineHistory>,
}

fn one() -> u32 {
    1
}

/// An agent's history: when it was first seen and how often it showed each feature value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineHistory {
    pub since: Timestamp,
    #[serde(default)]
    pub seen: BTreeMap<FeatureName, BTreeMap<String, u64>>,
}

/// A baseline feature named in a fixture; unknown names are errors at their position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FeatureName(pub Feature);

impl<'de> Deserialize<'de> for FeatureName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<FeatureName, D::Error> {
        let name = String::deserialize(d)?;
        Feature::from_name(&name).map(FeatureName).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown baseline feature `{name}`; features are: {}",
                Feature::ALL.map(Feature::name).join(", ")
            ))
        })
    }
}

impl FixtureFile {
    /// Reads and checks a fixture file; a malformed file is one located error.
    pub fn load(path: &Path) -> Result<FixtureFile, LoadError> {
        let name = path.display().to_string();
        let mut bytes = Vec::new();
        fs::File::open(path)
            .and_then(|f| {
                f.take(yaml::MAX_FILE_BYTES as u64 + 1)
                    .read_to_end(&mut bytes)
            })
            .map_err(|err| LoadError {
                file: name.clone(),
                line: 0,
                column: 0,
                message: format!("cannot read fixture file: {err}"),
                hint: "check the file's permissions".into(),
            })?;
        FixtureFile::parse(&name, &bytes)
    }

    pub fn parse(name: &str, bytes: &[u8]) -> Result<FixtureFile, LoadError> {
        let error = |position: Option<(usize, usize)>, message: String, hint: &str| {
            let (line, column) = position.unwrap_or((0, 0));
            LoadError {
                file: name.to_owned(),
                line,
                column,
                message,
                hint: hint.into(),
            }
        };
        // The tree pass applies the input limits (size, UTF-8, depth, alias expansion) first.
        let (text, _) = yaml::parse(bytes).map_err(|e| error(e.position, e.message, &e.hint))?;
        let doc: FixtureDoc = serde_norway::from_str(&text).map_err(|err| {
            let position = err.location().map(|l| (l.line(), l.column()));
            let message = strip_location(&err.to_string());
            error(
                position,
                format!("bad fixture: {message}"),
                "a fixture file is `cases:` with items {name, event, expect, fired?, repeat?, \
                 baseline?}; events use the JSONL event format (event/src/lib.rs)",
            )
        })?;
        for (i, case) in doc.cases.iter().enumerate() {
            if case.repeat == 0 || case.repeat > MAX_REPEAT {
                return Err(error(
                    None,
                    format!(
                        "case {} ({:?}): repeat must be from 1 to {MAX_REPEAT}",
                        i + 1,
                        case.name
                    ),
                    "",
                ));
            }
        }
        Ok(FixtureFile {
            name: name.to_owned(),
            cases: doc.cases,
        })
    }

    /// Runs the cases in order against one quota state.
    pub fn run(&self, set: &RuleSet) -> Vec<CaseResult> {
        let mut ledger = QuotaLedger::new();
        self.cases
            .iter()
            .map(|case| run_case(set, case, &mut ledger))
            .collect()
    }
}

fn strip_location(text: &str) -> String {
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text.to_owned(),
    }
}

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    pub name: String,
    pub expect: Verdict,
    /// The verdict of the last run, or of the first run that failed.
    pub got: Verdict,
    /// The rules that fired in that run, in set order.
    pub fired: Vec<String>,
    /// 1-based run that failed, for repeated cases.
    pub failed_run: Option<u32>,
    /// Why the case failed; `None` when it passed.
    pub failure: Option<String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

fn run_case(set: &RuleSet, case: &Case, ledger: &mut QuotaLedger) -> CaseResult {
    let history = case
        .baseline
        .as_ref()
        .map(|h| memory_baseline(&case.event, h));
    let baseline: &dyn BaselineView = match &history {
        Some(b) => b,
        None => &NoBaseline,
    };
    let mut result = CaseResult {
        name: case.name.clone(),
        expect: case.expect,
        got: Verdict::Allow,
        fired: Vec::new(),
        failed_run: None,
        failure: None,
    };
    for run in 1..=case.repeat {
        let decision = set.evaluate(&case.event, &mut EvalContext::new(ledger, baseline));
        result.got = decision.verdict;
        result.fired = decision
            .fired
            .iter()
            .map(|f| f.rule_id.to_string())
            .collect();
        let mut problems = Vec::new();
        if decision.verdict != case.expect {
            problems.push(format!(
                "expected {}, got {}",
                case.expect, decision.verdict
            ));
        }
        if let Some(expected) = &case.fired {
            let mut want: Vec<&str> = expected.iter().map(String::as_str).collect();
            let mut got: Vec<&str> = result.fired.iter().map(String::as_str).collect();
            want.sort_unstable();
            got.sort_unstable();
            if want != got {
                let unknown: Vec<&str> = want
                    .iter()
                    .copied()
                    .filter(|id| set.rule(id).is_none())
                    .collect();
                let mut p = format!(
                    "expected fired [{}], got [{}]",
                    want.join(", "),
                    got.join(", ")
                );
                if !unknown.is_empty() {
                    p.push_str(&format!(
                        " (no rule named {} in the set)",
                        unknown.join(", ")
                    ));
                }
                problems.push(p);
            }
        }
        if !problems.is_empty() {
            if case.repeat > 1 {
                result.failed_run = Some(run);
            }
            result.failure = Some(problems.join("; "));
            break;
        }
    }
    result
}

fn memory_baseline(event: &Event, history: &BaselineHistory) -> MemoryBaseline {
    let mut baseline = MemoryBaseline::default();
    if let Some(agent) = event.agent() {
        baseline.since.insert(agent.to_owned(), history.since);
        for (feature, values) in &history.seen {
            for (value, count) in values {
                baseline
                    .counts
                    .insert((agent.to_owned(), feature.0, value.clone()), *count);
            }
        }
    }
    baseline
}

/// The fixture files of a rules directory: `DIR/fixtures/*.yaml|yml`, in file-name order.
pub fn fixture_paths(rules_dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let dir = rules_dir.join("fixtures");
    let mut paths: Vec<_> = fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    paths.sort();
    Ok(paths)
}

impl fmt::Display for CaseResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.failure {
            None => write!(f, "pass  {}", self.name),
            Some(why) => write!(f, "FAIL  {}: {why}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
oknek_rules: 1
rules:
  - id: Q
    title: too many model calls
    kind: model_call
    quota: { limit: 2, per: 1h }
    action: block
  - id: B
    title: new binary
    kind: exec
    match: { baseline: { features: [exec_basename], warmup: 7d } }
    action: warn
"#;

    const FIXTURE: &str = r#"
cases:
  - name: within quota
    event: &call
      time: "2026-11-22T10:00:00Z"
      source: recorded
      process: { pid: 1, uid: 1000, exe: /usr/bin/python3, agent: aider }
      kind: model_call
      provider: openai
    repeat: 2
    expect: allow
    fired: []
  - name: over quota
    event: *call
    expect: block
    fired: [Q]
  - name: nc is new after warmup
    event:
      time: "2026-11-22T10:00:00Z"
      source: recorded
      process: { pid: 1, uid: 1000, agent: aider }
      kind: exec
      path: /usr/bin/nc
    baseline:
      since: "2026-11-01T00:00:00Z"
      seen: { exec_basename: { git: 120 } }
    expect: warn
  - name: git is known
    event:
      time: "2026-11-22T10:00:00Z"
      source: recorded
      process: { pid: 1, uid: 1000, agent: aider }
      kind: exec
      path: /usr/bin/git
    baseline:
      since: "2026-11-01T00:00:00Z"
      seen: { exec_basename: { git: 120 } }
    expect: allow
  - name: deliberately wrong
    event:
      time: "2026-11-22T10:00:00Z"
      source: recorded
      process: { pid: 1, uid: 1000, agent: aider }
      kind: exec
      path: /usr/bin/nc
    expect: block
    fired: [Nope]
"#;

    #[test]
    fn runs_cases_with_quota_state_and_baselines() {
        let set = RuleSet::from_sources(&[("r.yaml", RULES)]).unwrap();
        let file = FixtureFile::parse("f.yaml", FIXTURE.as_bytes()).unwrap();
        let results = file.run(&set);
        let passed: Vec<bool> = results.iter().map(CaseResult::passed).collect();
        assert_eq!(passed, [true, true, true, true, false], "{results:#?}");
        let why = results[4].failure.as_deref().unwrap();
        assert!(why.contains("expected block, got allow"), "{why}");
        assert!(why.contains("no rule named Nope"), "{why}");
    }

    #[test]
    fn malformed_fixtures_are_located() {
        let err =
            FixtureFile::parse("f.yaml", b"cases:\n  - name: x\n    expect: maybe\n").unwrap_err();
        assert_eq!((err.line, err.column), (3, 13), "{err}");
        let err = FixtureFile::parse(
            "f.yaml",
            b"cases:\n  - name: x\n    expect: allow\n    event: {}\n    baseline: { since: \"2026-11-01T00:00:00Z\", seen: { exec_base: {} } }\n",
        )
        .unwrap_err();
        assert!(err.line > 0, "{err}");
        let err = FixtureFile::parse("f.yaml", b"cases: [ { name: x ").unwrap_err();
        assert!(
            err.line >= 1 && err.message.contains("YAML syntax"),
            "{err}"
        );
    }
}
