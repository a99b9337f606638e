//! The malformed-rule corpus: every file in tests/malformed/ must be rejected with the error
//! position and message its MANIFEST entry expects, quickly, without panicking.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oknek_engine::{LoadErrors, RuleSet};

const LIMIT: Duration = Duration::from_secs(1);

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/malformed")
}

struct Expectation {
    case: String,
    location: String,
    message: String,
}

fn manifest() -> Vec<Expectation> {
    let text = std::fs::read_to_string(corpus().join("MANIFEST")).expect("MANIFEST is readable");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let parts: Vec<&str> = l.splitn(3, '|').map(str::trim).collect();
            assert_eq!(parts.len(), 3, "bad MANIFEST line: {l}");
            Expectation {
                case: parts[0].to_owned(),
                location: parts[1].to_owned(),
                message: parts[2].to_owned(),
            }
        })
        .collect()
}

/// Loads a case (a file, or a directory as a rule set) and times it.
fn load(case: &str) -> (Result<RuleSet, LoadErrors>, Duration) {
    let path = corpus().join(case);
    let start = Instant::now();
    let result = if path.is_dir() {
        RuleSet::load_dir(&path)
    } else {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{case}: {e}"));
        RuleSet::from_sources(&[(case, bytes)])
    };
    (result, start.elapsed())
}

/// `file:line:column` with the file relative to the corpus, `file:-` for whole-file errors.
fn location(error: &oknek_engine::LoadError) -> String {
    let base = format!("{}/", corpus().display());
    let file = error.file.strip_prefix(&base).unwrap_or(&error.file);
    if error.line == 0 {
        format!("{file}:-")
    } else {
        format!("{file}:{}:{}", error.line, error.column)
    }
}

#[test]
fn every_malformed_file_is_rejected_where_the_manifest_says() {
    let expectations = manifest();
    let mut failures = Vec::new();
    for e in &expectations {
        let (result, elapsed) = load(&e.case);
        let errors = match result {
            Ok(_) => {
                failures.push(format!("{}: accepted", e.case));
                continue;
            }
            Err(errors) => errors,
        };
        let first = &errors.errors[0];
        if std::env::var_os("OKNEK_PRINT_MALFORMED").is_some() {
            println!(
                "MANIFEST> {} | {} | {}",
                e.case,
                location(first),
                first.message
            );
        }
        if location(first) != e.location {
            failures.push(format!(
                "{}: expected {}, got:\n{errors}",
                e.case, e.location
            ));
        }
        if !first.message.contains(&e.message) {
            failures.push(format!(
                "{}: expected message with {:?}, got:\n{errors}",
                e.case, e.message
            ));
        }
        for error in &errors.errors {
            if error.hint.is_empty() {
                failures.push(format!("{}: error without a hint: {error}", e.case));
            }
        }
        if elapsed > LIMIT {
            failures.push(format!("{}: took {elapsed:?}", e.case));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(
        expectations.len() >= 40,
        "only {} cases",
        expectations.len()
    );
}

#[test]
fn the_manifest_covers_the_whole_corpus() {
    let listed: Vec<String> = manifest().into_iter().map(|e| e.case).collect();
    for entry in std::fs::read_dir(corpus()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name != "MANIFEST" {
            assert!(listed.contains(&name), "{name} is not in MANIFEST");
        }
    }
}

#[test]
fn generated_monsters_are_rejected_quickly() {
    // Over the size limit: rejected before parsing.
    let huge = format!(
        "oknek_rules: 1\n# {}\n",
        "x".repeat(oknek_engine::MAX_FILE_BYTES)
    );
    let start = Instant::now();
    let errors = RuleSet::from_sources(&[("huge.yaml", &huge)]).unwrap_err();
    assert!(start.elapsed() < LIMIT);
    assert_eq!(errors.errors[0].line, 0);
    assert!(errors.to_string().contains("limited to"), "{errors}");

    // Under the size limit, but aliases repeat a long string into gigabytes.
    let mut text = format!(
        "oknek_rules: 1\nlists:\n  a: [&s \"{}\"]\n  b: [",
        "y".repeat(100_000)
    );
    text.push_str(&vec!["*s"; 5000].join(", "));
    text.push_str("]\n");
    let start = Instant::now();
    let errors = RuleSet::from_sources(&[("aliases.yaml", &text)]).unwrap_err();
    assert!(start.elapsed() < LIMIT, "{:?}", start.elapsed());
    assert!(errors.to_string().contains("bytes of text"), "{errors}");

    // Many errors in one file: reported up to a limit, quickly.
    let mut text = String::from("oknek_rules: 1\nrules:\n");
    for i in 0..5000 {
        text.push_str(&format!(
            "  - {{ id: r{i}, title: t, kind: opne, action: block }}\n"
        ));
    }
    let start = Instant::now();
    let errors = RuleSet::from_sources(&[("many.yaml", &text)]).unwrap_err();
    assert!(start.elapsed() < 4 * LIMIT, "{:?}", start.elapsed());
    assert_eq!(errors.len(), 5000);
    assert_eq!(errors.errors.len(), 100);
    assert!(
        errors
            .to_string()
            .ends_with("… and 4900 more errors not shown")
    );
}
