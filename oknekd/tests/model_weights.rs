//! Weights as model calls: an agent's open of a model file is judged as the `model_call` it is
//! (provider `local`, the file as `weights`), so an allowlist of weight stores is enforced by
//! the open tiers. Through the real daemon and `oknek run` (seccomp tier) on the running kernel.
//!
//! Needs root (seccomp user notification, switching to uid 65534); as an ordinary user it
//! prints "skipped: needs root …".

mod common;

use std::path::Path;

use common::*;

#[test]
fn weights_outside_the_approved_store_are_refused_and_recorded() {
    if !root_or_skip() {
        return;
    }
    let _serial = serial();
    let work = scratch("weights", true);
    let store = work.path().join("store");
    let downloads = work.path().join("downloads");
    for dir in [&store, &downloads] {
        std::fs::create_dir_all(dir).unwrap();
        give_to_agent(dir);
    }
    let approved = store.join("llama3.2-3b.Q4_K_M.gguf");
    let unvetted = downloads.join("llama3.2-3b-uncensored.gguf");
    for file in [&approved, &unvetted] {
        std::fs::write(file, b"GGUF weights").unwrap();
        give_to_agent(file);
    }
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("90-test.yaml"),
        format!(
            "oknek_rules: 1\nrules:\n  - id: T.weights\n    title: Weights from outside the model store\n\
             \x20   kind: model_call\n\
             \x20   match: {{ weights: {{ present: true }}, not: {{ weights: {{ glob: [\"{}/**\"] }} }} }}\n\
             \x20   action: block\n",
            store.display()
        ),
    )
    .unwrap();
    let mut d = Daemon::start(rules.path(), "");
    d.assert_serving(std::time::Duration::from_secs(5));

    let o = d.run_agent("demo", Path::new("/"), &[os("cat"), approved.as_os_str()]);
    assert!(
        o.status.success() && text(&o).contains("GGUF weights"),
        "weights from the store load: {}",
        text(&o)
    );
    let o = d.run_agent("demo", Path::new("/"), &[os("cat"), unvetted.as_os_str()]);
    assert!(
        !o.status.success() && text(&o).contains(EPERM_TEXT) && !text(&o).contains("GGUF"),
        "unvetted weights must fail with EPERM: {}",
        text(&o)
    );

    let events = d.events();
    let weights_of = |rule: &str, verdict: &str| -> Vec<String> {
        bundles(&events, rule, verdict)
            .into_iter()
            .filter(|e| e["bundle"]["kind"] == "model_call")
            .map(|e| {
                assert_eq!(e["bundle"]["capture"]["provider"], "local", "{e}");
                e["bundle"]["capture"]["weights"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(
        weights_of("oknek.model_call", "allow"),
        [approved.display().to_string()]
    );
    assert_eq!(
        weights_of("T.weights", "block"),
        [unvetted.display().to_string()]
    );
    // The loaded file is named by content too, hashed in the background.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let hashed = loop {
        let events = d.events();
        let found: Vec<serde_json::Value> = bundles(&events, "oknek.weights_hash", "allow")
            .into_iter()
            .cloned()
            .collect();
        if !found.is_empty() || std::time::Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(hashed.len(), 1, "one hash for the loaded file: {hashed:?}");
    let extra = &hashed[0]["bundle"]["extra"];
    assert_eq!(extra["path"], approved.display().to_string());
    assert_eq!(
        extra["sha256"], "8a46a62632e21d0c832005a28cb86dfd5921227920a84939ba90bf55f9f3b737",
        "sha256 of the file: {extra}"
    );
    d.assert_verifies();
}
