//! The format is verifiable without oknek: evidence/tools/oknek_verify.py, written from
//! docs/evidence.md alone, accepts what the writer produces (including awkward strings) and
//! rejects an edit.

mod common;

use std::path::Path;
use std::process::Command;

use common::config;
use oknek_event::{Action, Field, Verdict};
use oknek_evidence::{Firing, Store};
use serde_json::json;

fn python_ready() -> bool {
    Command::new("python3")
        .args(["-c", "import cryptography"])
        .status()
        .is_ok_and(|s| s.success())
}

fn run(script: &Path, key: &str, journal: &Path) -> (bool, String) {
    let out = Command::new("python3")
        .arg(script)
        .arg(key)
        .arg(journal)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn python_reference_verifier_agrees() {
    if !python_ready() {
        // CI installs it (.ci/run): there a missing package is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with the `cryptography` package is required in CI"
        );
        eprintln!("skipped: python3 with the `cryptography` package is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = Store::open(config(dir)).unwrap();
    let extra = json!({"quota": {"left": 0, "rate": 2.5, "window": "1h"}, "ünï": [true, null]});
    for i in 0..40u64 {
        let mut ev = common::event(i);
        if let Action::Exec { argv, .. } = &mut ev.action {
            argv.push("tab\there \"quoted\" back\\slash \u{1}\u{7f} é 😀 \u{2028}".into());
        }
        ev.process.unit = Some("agent\u{e9}.service".into());
        store
            .append(&Firing {
                event: &ev,
                rule_id: "R9.ünicode",
                rule_title: Some("Ŧitle with \"quotes\"\n and a newline"),
                verdict: Verdict::Warn,
                rule_set_digest: "sha256:ab",
                capture: &[Field::Argv, Field::Path, Field::Unit, Field::Addr],
                extra: extra.as_object(),
            })
            .unwrap();
        if i % 16 == 15 {
            store.flush().unwrap();
        }
    }
    let key = store.key().public().to_string();
    store.close().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/oknek_verify.py");
    let journal = dir.join("journal");
    let (ok, out) = run(&script, &key, &journal);
    assert!(ok, "{out}");
    assert!(out.contains("ok: 40 bundles"), "{out}");

    let file = oknek_evidence::journal_files(&journal).unwrap().remove(0).1;
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replacen("\"verdict\":\"warn\"", "\"verdict\":\"allow\"", 1),
    )
    .unwrap();
    let (ok, out) = run(&script, &key, &journal);
    assert!(!ok, "{out}");
    assert!(out.contains("seq 1") && out.contains("edited"), "{out}");
}
