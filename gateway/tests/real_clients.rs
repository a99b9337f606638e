//! Real clients through the real gateway and daemon: the official `openai` and `anthropic`
//! Python SDKs and the `llm` CLI, run as an agent (uid 65534), against fake providers on
//! 127.0.0.1 (TLS with a test CA for the cloud ones, plain HTTP for a local server).
//!
//! Shown here: allowed calls succeed end to end (streaming and not, TCP and unix socket); a
//! disallowed model, a caller whose interpreter binary changed, a call outside the time window
//! and the call after a quota ran out are refused with errors the SDKs raise; calls succeed
//! again after the quota refills; every decision is a verified bundle naming caller, provider,
//! model and verdict. (The kernel refusing direct connects is the eBPF tier's test.)

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::{Python, Scenario, fake::REPLY};
use serde_json::{Value, json};

/// Runs a list of steps, one JSON object per step, and prints `{"results": [...]}`.
const CLIENT: &str = r#"
import json, os, sys, time
import openai, anthropic
try:  # the SDKs' HTTP client: httpx, renamed httpx2 in newer releases
    import httpx2 as httpx
except ImportError:
    import httpx

def client(transport):
    if transport == "uds":
        return httpx.Client(transport=httpx.HTTPTransport(uds=os.environ["GW_SOCK"])), "http://gateway"
    return httpx.Client(), "http://" + os.environ["GW_TCP"]

MESSAGES = [{"role": "user", "content": "Say hello."}]
results = []
for step in json.loads(sys.argv[1]):
    if "sleep" in step:
        time.sleep(step["sleep"])
        continue
    http, base = client(step.get("transport", "tcp"))
    t0 = time.monotonic()
    first = None
    try:
        if step["sdk"] == "openai":
            c = openai.OpenAI(base_url=base + "/" + step["provider"] + "/v1", api_key="sk-test",
                              http_client=http, max_retries=0)
            if step.get("stream"):
                parts = []
                for chunk in c.chat.completions.create(model=step["model"], messages=MESSAGES, stream=True):
                    if first is None:
                        first = time.monotonic() - t0
                    if chunk.choices and chunk.choices[0].delta.content:
                        parts.append(chunk.choices[0].delta.content)
                out = {"ok": True, "text": "".join(parts), "chunks": len(parts)}
            else:
                r = c.chat.completions.create(model=step["model"], messages=MESSAGES)
                out = {"ok": True, "text": r.choices[0].message.content, "tokens": r.usage.total_tokens}
        else:
            c = anthropic.Anthropic(base_url=base + "/" + step["provider"], api_key="sk-ant-test",
                                    http_client=http, max_retries=0)
            if step.get("stream"):
                parts = []
                with c.messages.stream(model=step["model"], max_tokens=64, messages=MESSAGES) as s:
                    for text in s.text_stream:
                        if first is None:
                            first = time.monotonic() - t0
                        parts.append(text)
                out = {"ok": True, "text": "".join(parts), "chunks": len(parts)}
            else:
                r = c.messages.create(model=step["model"], max_tokens=64, messages=MESSAGES)
                out = {"ok": True, "text": r.content[0].text, "tokens": r.usage.output_tokens}
    except Exception as e:
        out = {"ok": False, "error": type(e).__name__, "status": getattr(e, "status_code", None),
               "message": str(e)}
    out["first_s"] = first
    out["total_s"] = time.monotonic() - t0
    results.append(out)
print(json.dumps({"results": results}))
"#;

/// Wednesday 2026-11-18 10:00 UTC: inside the test rules' working hours.
const WEDNESDAY_10_UTC: i64 = 1_794_996_000;
/// Sunday 2026-11-22 03:00 UTC: outside them.
const SUNDAY_03_UTC: i64 = 1_795_316_400;

/// Allowlisted models, the approved interpreter (by hash) and working hours.
fn policy(approved_exe_sha256: &str) -> String {
    format!(
        r#"oknek_rules: 1
lists:
  test_models: [gpt-4o-mini, claude-3-5-haiku-latest, qwen2.5-coder]
rules:
  - id: T.model
    title: Model not on the allowlist
    kind: model_call
    match:
      model: {{ present: true }}
      not:
        model: {{ glob: $test_models }}
    action: block
    evidence:
      capture: [provider, model, api, addr, port, exe, exe_sha256, uid, agent]
  - id: T.exe
    title: Caller executable is not an approved build
    kind: model_call
    match:
      not:
        exe_sha256: {{ exact: ["{approved_exe_sha256}"] }}
    action: block
    evidence:
      capture: [provider, model, api, exe, exe_sha256, uid, agent]
  - id: T.hours
    title: Model call outside working hours
    kind: model_call
    when:
      zone: UTC
      outside:
        - days: [mon-fri]
          from: "08:00"
          to: "18:00"
    action: block
    evidence:
      capture: [provider, model, api, exe, uid, agent]
"#
    )
}

fn setup() -> Option<(std::sync::MutexGuard<'static, ()>, Python)> {
    if !common::root_or_skip() {
        return None;
    }
    let py = common::python_or_skip()?;
    Some((common::serial(), py))
}

fn results(v: &Value) -> Vec<Value> {
    v["results"].as_array().cloned().unwrap_or_default()
}

fn step(sdk: &str, provider: &str, model: &str, stream: bool, transport: &str) -> Value {
    json!({"sdk": sdk, "provider": provider, "model": model, "stream": stream, "transport": transport})
}

#[track_caller]
fn assert_ok(r: &Value, what: &str) {
    assert_eq!(r["ok"], true, "{what} must succeed: {r}");
    assert_eq!(
        r["text"], REPLY,
        "{what}: the provider's answer must arrive unchanged: {r}"
    );
}

#[track_caller]
fn assert_refused(r: &Value, what: &str, error: &str, status: u16, rule: &str) {
    assert_eq!(r["ok"], false, "{what} must be refused: {r}");
    assert_eq!(r["error"], error, "{what}: the SDK's error class: {r}");
    assert_eq!(r["status"], status, "{what}: HTTP status: {r}");
    let msg = r["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(rule),
        "{what}: the error must name rule {rule}: {msg}"
    );
}

fn model_call_bundles(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["bundle"]["kind"] == "model_call")
        .collect()
}

/// The bundles of one rule and verdict, each naming caller, provider and model.
#[track_caller]
fn decisions<'a>(events: &'a [Value], rule: &str, verdict: &str, model: &str) -> Vec<&'a Value> {
    model_call_bundles(events)
        .into_iter()
        .filter(|e| {
            let b = &e["bundle"];
            b["rule"] == rule && b["verdict"] == verdict && b["capture"]["model"] == model
        })
        .inspect(|e| {
            let b = &e["bundle"];
            assert_eq!(b["process"]["uid"], common::AGENT_UID, "caller uid: {e}");
            assert!(
                b["process"]["exe"].as_str().is_some_and(|x| !x.is_empty()),
                "caller exe: {e}"
            );
            assert!(b["capture"]["provider"].is_string(), "provider: {e}");
            assert_eq!(b["agent"], "sdk-agent", "agent: {e}");
        })
        .collect()
}

#[test]
fn allowed_calls_succeed_and_policy_refusals_reach_the_sdks() {
    let Some((_serial, py)) = setup() else { return };
    let approved = common::sha256_hex(&py.real);
    let mut s = Scenario::start(&policy(&approved), Some(WEDNESDAY_10_UTC));
    let steps = json!([
        step("openai", "openai", "gpt-4o-mini", false, "tcp"),
        step("openai", "openai", "gpt-4o-mini", true, "tcp"),
        step(
            "anthropic",
            "anthropic",
            "claude-3-5-haiku-latest",
            false,
            "uds"
        ),
        step(
            "anthropic",
            "anthropic",
            "claude-3-5-haiku-latest",
            true,
            "uds"
        ),
        step("openai", "vllm", "qwen2.5-coder", true, "uds"),
        step("openai", "openai", "gpt-5-unreviewed", false, "tcp"),
        step(
            "anthropic",
            "anthropic",
            "claude-opus-unreviewed",
            true,
            "tcp"
        ),
    ]);
    let out = s.client(&py, &py.python, CLIENT, &[&steps.to_string()]);
    let r = results(&out);
    assert_eq!(r.len(), 7, "{out}");
    assert_ok(&r[0], "openai, non-streaming, TLS upstream");
    assert_ok(&r[1], "openai, streaming");
    assert!(
        r[1]["chunks"].as_u64() > Some(1),
        "streamed in pieces: {}",
        r[1]
    );
    assert_ok(&r[2], "anthropic over the unix socket");
    assert_ok(&r[3], "anthropic, streaming");
    assert_ok(&r[4], "local server (plain HTTP), streaming");
    // Streaming is relayed as it happens: the first event arrives well before the last
    // (the fake pauses 30 ms between events).
    for i in [1, 3, 4] {
        let (first, total) = (
            r[i]["first_s"].as_f64().unwrap(),
            r[i]["total_s"].as_f64().unwrap(),
        );
        assert!(
            total - first > 0.1,
            "step {i} was buffered, not streamed: {}",
            r[i]
        );
    }
    assert_refused(
        &r[5],
        "a model off the allowlist (openai)",
        "PermissionDeniedError",
        403,
        "T.model",
    );
    assert_refused(
        &r[6],
        "a model off the allowlist (anthropic)",
        "PermissionDeniedError",
        403,
        "T.model",
    );

    // The providers saw the allowed calls, with their own host names, and never the refused.
    let p = common::providers();
    let models = |f: &common::fake::FakeProvider| -> Vec<String> {
        f.requests()
            .iter()
            .map(|q| q.body["model"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert!(models(&p.openai).iter().all(|m| m != "gpt-5-unreviewed"));
    assert!(
        models(&p.anthropic)
            .iter()
            .all(|m| m != "claude-opus-unreviewed")
    );
    assert!(
        p.openai
            .requests()
            .iter()
            .any(|q| q.host.starts_with(common::OPENAI_HOST))
    );

    // The agent CLI: `llm` pointed at the gateway as an OpenAI-compatible base URL.
    let llm_home = s.dir.path().join("llm");
    std::fs::create_dir(&llm_home).unwrap();
    std::fs::write(
        llm_home.join("extra-openai-models.yaml"),
        format!(
            "- model_id: gw-mini\n  model_name: gpt-4o-mini\n  api_base: http://{0}/openai/v1\n\
             - model_id: gw-unreviewed\n  model_name: gpt-5-unreviewed\n  api_base: http://{0}/openai/v1\n",
            s.gateway_tcp
        ),
    )
    .unwrap();
    std::os::unix::fs::chown(&llm_home, Some(common::AGENT_UID), Some(common::AGENT_UID)).unwrap();
    let llm = |model: &str, extra: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(&py.llm)
            .args(["-m", model])
            .args(extra)
            .arg("Say hello.")
            .env("LLM_USER_PATH", &llm_home)
            .env("OPENAI_API_KEY", "sk-test")
            .env("HOME", s.dir.path());
        common::run(&mut cmd, Duration::from_secs(60))
    };
    let ok = llm("gw-mini", &[]);
    assert!(
        ok.status.success() && String::from_utf8_lossy(&ok.stdout).contains(REPLY),
        "llm through the gateway (streaming): {ok:?}"
    );
    let ok = llm("gw-mini", &["--no-stream"]);
    assert!(
        ok.status.success() && String::from_utf8_lossy(&ok.stdout).contains(REPLY),
        "llm --no-stream: {ok:?}"
    );
    let refused = llm("gw-unreviewed", &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("T.model"),
        "llm must report the refusal: {refused:?}"
    );

    let gateway_log = s.gateway_log();
    let events = s.finish();
    // Every decision is a bundle: 5 SDK calls + 2 llm calls allowed, 2 SDK + 1 llm refused.
    let allowed = decisions(&events, "oknek.model_call", "allow", "gpt-4o-mini").len()
        + decisions(
            &events,
            "oknek.model_call",
            "allow",
            "claude-3-5-haiku-latest",
        )
        .len()
        + decisions(&events, "oknek.model_call", "allow", "qwen2.5-coder").len();
    assert_eq!(allowed, 7, "allow bundles\n{gateway_log}\n{events:#?}");
    let blocked = decisions(&events, "T.model", "block", "gpt-5-unreviewed").len()
        + decisions(&events, "T.model", "block", "claude-opus-unreviewed").len();
    assert_eq!(blocked, 3, "block bundles: {events:#?}");
    let providers: std::collections::BTreeSet<&str> = model_call_bundles(&events)
        .iter()
        .filter_map(|e| e["bundle"]["capture"]["provider"].as_str())
        .collect();
    assert_eq!(
        providers.into_iter().collect::<Vec<_>>(),
        ["anthropic", "openai", "vllm"]
    );
}

#[test]
fn a_caller_whose_binary_changed_is_refused() {
    let Some((_serial, py)) = setup() else { return };
    let approved = common::sha256_hex(&py.real);
    let mut s = Scenario::start(&policy(&approved), Some(WEDNESDAY_10_UTC));
    // The same interpreter with one byte appended: runs the same, hashes differently.
    let altered = s.dir.path().join("python3-altered");
    let mut bytes = std::fs::read(&py.real).unwrap();
    bytes.push(0);
    std::fs::write(&altered, bytes).unwrap();
    common::set_mode(&altered, 0o755);
    let steps = json!([step("openai", "openai", "gpt-4o-mini", false, "tcp")]);
    let r = results(&s.client(&py, &altered, CLIENT, &[&steps.to_string()]));
    assert_refused(
        &r[0],
        "an altered interpreter",
        "PermissionDeniedError",
        403,
        "T.exe",
    );
    let r = results(&s.client(&py, &py.python, CLIENT, &[&steps.to_string()]));
    assert_ok(&r[0], "the approved interpreter");
    let events = s.finish();
    let refused = decisions(&events, "T.exe", "block", "gpt-4o-mini");
    assert_eq!(refused.len(), 1, "{events:#?}");
    let b = &refused[0]["bundle"];
    assert_eq!(b["capture"]["exe"], altered.to_str().unwrap());
    assert_ne!(b["capture"]["exe_sha256"], approved.as_str());
    assert_eq!(
        decisions(&events, "oknek.model_call", "allow", "gpt-4o-mini").len(),
        1
    );
}

#[test]
fn a_call_outside_the_time_window_is_refused() {
    let Some((_serial, py)) = setup() else { return };
    let approved = common::sha256_hex(&py.real);
    let mut s = Scenario::start(&policy(&approved), Some(SUNDAY_03_UTC));
    let steps = json!([
        step("openai", "openai", "gpt-4o-mini", false, "tcp"),
        step(
            "anthropic",
            "anthropic",
            "claude-3-5-haiku-latest",
            true,
            "uds"
        ),
    ]);
    let r = results(&s.client(&py, &py.python, CLIENT, &[&steps.to_string()]));
    assert_refused(
        &r[0],
        "openai on a Sunday night",
        "PermissionDeniedError",
        403,
        "T.hours",
    );
    assert_refused(
        &r[1],
        "anthropic on a Sunday night",
        "PermissionDeniedError",
        403,
        "T.hours",
    );
    let events = s.finish();
    assert_eq!(
        decisions(&events, "T.hours", "block", "gpt-4o-mini").len(),
        1,
        "{events:#?}"
    );
    assert_eq!(
        decisions(&events, "T.hours", "block", "claude-3-5-haiku-latest").len(),
        1
    );
}

#[test]
fn the_call_after_the_quota_is_refused_until_it_refills() {
    let Some((_serial, py)) = setup() else { return };
    // Real time here: buckets refill on event time, so the clock must move.
    let rules = r#"oknek_rules: 1
rules:
  - id: T.quota
    title: Model call quota exceeded
    kind: model_call
    quota: { limit: 3, per: 6s, by: caller_provider }
    action: block
    evidence:
      capture: [provider, model, api, exe, uid, agent]
"#;
    let mut s = Scenario::start(rules, None);
    let call = step("openai", "openai", "gpt-4o-mini", false, "tcp");
    let other = step(
        "anthropic",
        "anthropic",
        "claude-3-5-haiku-latest",
        false,
        "uds",
    );
    // One token comes back every 2 s; the first four calls take well under that.
    let steps = json!([call, call, call, call, other, {"sleep": 2.5}, call]);
    let r = results(&s.client(&py, &py.python, CLIENT, &[&steps.to_string()]));
    for (i, res) in r.iter().take(3).enumerate() {
        assert_ok(res, &format!("call {} of 3", i + 1));
    }
    assert_eq!(
        r[3]["ok"], false,
        "the 4th call within the window: {}",
        r[3]
    );
    assert!(
        r[3]["message"].as_str().unwrap_or("").contains("T.quota"),
        "the refusal names the quota rule: {}",
        r[3]
    );
    // The daemon reports the quota state with the fired rule: the SDK sees its rate-limit error.
    assert!(
        r[3]["error"] == "RateLimitError" && r[3]["status"] == 429,
        "{}",
        r[3]
    );
    assert_ok(
        &r[4],
        "another provider has its own bucket (by: caller_provider)",
    );
    assert_ok(&r[5], "the call after the refill");
    let events = s.finish();
    assert_eq!(
        decisions(&events, "T.quota", "block", "gpt-4o-mini").len(),
        1,
        "{events:#?}"
    );
    let allowed = decisions(&events, "oknek.model_call", "allow", "gpt-4o-mini");
    assert_eq!(allowed.len(), 4);
    // Every allow bundle carries the quota state after the call: 2, 1, 0 left, then 0 again
    // after the one-token refill.
    let left: Vec<u64> = allowed
        .iter()
        .filter_map(|e| e["bundle"]["extra"]["quotas"][0]["remaining"].as_u64())
        .collect();
    assert_eq!(left, [2, 1, 0, 0], "{allowed:#?}");
}

#[test]
fn requests_over_the_body_limit_and_to_unknown_providers_are_refused() {
    let Some((_serial, _py)) = setup() else {
        return;
    };
    let mut s = Scenario::start("oknek_rules: 1\nrules: []\n", Some(WEDNESDAY_10_UTC));
    let mut conn = std::net::TcpStream::connect(&s.gateway_tcp).unwrap();
    let (status, _, body) = common::fake::post(&mut conn, "/nope/v1/chat/completions", "{}");
    assert_eq!(status, 404);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("\"nope\"") && msg.contains("openai"), "{v}");
    // Only the head: the gateway refuses on the announced length, before reading the body.
    let mut conn = std::net::TcpStream::connect(&s.gateway_tcp).unwrap();
    write!(
        conn,
        "POST /openai/v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        9 << 20
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("max_body_bytes"), "{answer}");
    s.finish();
}
