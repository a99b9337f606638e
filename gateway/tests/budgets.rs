//! Token budgets with real clients: the official `openai` and `anthropic` SDKs through the real
//! gateway and daemon. A `unit: tokens` quota takes nothing when a call is made; the usage each
//! response reports is charged afterwards, and once the budget is overspent the next call is
//! refused with the SDK's rate-limit error until the bucket refills. Every charge is a verified
//! `oknek.model_usage` bundle naming caller, provider, model and tokens.

mod common;

use common::{Python, Scenario, fake::REPLY};
use serde_json::{Value, json};

/// Runs a list of steps, one JSON object per step, and prints `{"results": [...]}`.
const CLIENT: &str = r#"
import json, os, sys, time
import openai, anthropic

MESSAGES = [{"role": "user", "content": "Say hello."}]
base = "http://" + os.environ["GW_TCP"]
results = []
for step in json.loads(sys.argv[1]):
    if "sleep" in step:
        time.sleep(step["sleep"])
        continue
    try:
        if step["sdk"] == "openai":
            c = openai.OpenAI(base_url=base + "/openai/v1", api_key="sk-test", max_retries=0)
            if step["stream"]:
                extra = {"stream_options": {"include_usage": True}} if step.get("include_usage") else {}
                parts, usage = [], None
                for chunk in c.chat.completions.create(model=step["model"], messages=MESSAGES,
                                                       stream=True, **extra):
                    if chunk.choices and chunk.choices[0].delta.content:
                        parts.append(chunk.choices[0].delta.content)
                    if chunk.usage is not None:
                        usage = chunk.usage.total_tokens
                out = {"ok": True, "text": "".join(parts), "tokens": usage}
            else:
                r = c.chat.completions.create(model=step["model"], messages=MESSAGES)
                out = {"ok": True, "text": r.choices[0].message.content, "tokens": r.usage.total_tokens}
        else:
            c = anthropic.Anthropic(base_url=base + "/anthropic", api_key="sk-ant-test", max_retries=0)
            parts = []
            with c.messages.stream(model=step["model"], max_tokens=64, messages=MESSAGES) as s:
                for text in s.text_stream:
                    parts.append(text)
                final = s.get_final_message()
            out = {"ok": True, "text": "".join(parts),
                   "tokens": final.usage.input_tokens + final.usage.output_tokens}
    except Exception as e:
        out = {"ok": False, "error": type(e).__name__, "status": getattr(e, "status_code", None),
               "message": str(e)}
    results.append(out)
print(json.dumps({"results": results}))
"#;

/// 30 tokens per 30 s: one token comes back per second, slow next to the calls (so a slow
/// machine does not refill the budget between them). Every fake answer reports 12 tokens (7 in,
/// 5 out).
const RULES: &str = r#"oknek_rules: 1
rules:
  - id: T.budget
    title: Model token budget spent
    kind: model_call
    quota: { limit: 30, per: 30s, by: caller, unit: tokens }
    action: block
    evidence:
      capture: [provider, model, api, exe, uid, agent]
"#;

fn setup() -> Option<(std::sync::MutexGuard<'static, ()>, Python)> {
    if !common::root_or_skip() {
        return None;
    }
    let py = common::python_or_skip()?;
    Some((common::serial(), py))
}

fn openai(stream: bool, include_usage: bool) -> Value {
    json!({"sdk": "openai", "model": "gpt-4o-mini", "stream": stream, "include_usage": include_usage})
}

fn anthropic() -> Value {
    json!({"sdk": "anthropic", "model": "claude-3-5-haiku-latest", "stream": true})
}

/// Usage is charged when the gateway has relayed a whole response, a moment after the client
/// has it; the pause keeps the next call from overtaking that report (concurrent calls can
/// overspend a budget by what they use: it is paid back as debt).
fn settle() -> Value {
    json!({"sleep": 0.2})
}

#[track_caller]
fn assert_ok(r: &Value, what: &str) {
    assert_eq!(r["ok"], true, "{what} must succeed: {r}");
    assert_eq!(
        r["text"], REPLY,
        "{what}: the answer arrives unchanged: {r}"
    );
}

#[track_caller]
fn assert_rate_limited(r: &Value, what: &str) {
    assert_eq!(r["ok"], false, "{what} must be refused: {r}");
    assert_eq!(r["error"], "RateLimitError", "{what}: the SDK's error: {r}");
    assert_eq!(r["status"], 429, "{what}: HTTP status: {r}");
    let msg = r["message"].as_str().unwrap_or_default();
    assert!(msg.contains("T.budget"), "{what}: names the rule: {msg}");
}

#[test]
fn a_token_budget_refuses_calls_once_overspent_until_it_refills() {
    let Some((_serial, py)) = setup() else { return };
    let mut s = Scenario::start(RULES, None);
    let steps = json!([
        // 0: a stream without include_usage: usage unknown, nothing charged.
        openai(true, false),
        settle(),
        // 1-3: 36 tokens: the third call still finds tokens left and overspends by 6.
        openai(false, false),
        settle(),
        openai(true, true),
        settle(),
        anthropic(),
        settle(),
        // 4-5: overspent: refused, whatever the provider (the budget is the caller's).
        openai(false, false),
        anthropic(),
        // 6: at most 6 tokens of debt: one token is left again after at most 7 s.
        {"sleep": 7.5},
        openai(true, true),
    ]);
    let out = s.client(&py, &py.python, CLIENT, &[&steps.to_string()]);
    let r = out["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(r.len(), 7, "{out}");
    assert_ok(&r[0], "openai stream without usage");
    assert_eq!(r[0]["tokens"], Value::Null, "{}", r[0]);
    assert_ok(&r[1], "openai, non-streaming");
    assert_ok(&r[2], "openai, streaming with include_usage");
    assert_eq!(
        r[2]["tokens"], 12,
        "the usage chunk reaches the SDK: {}",
        r[2]
    );
    assert_ok(&r[3], "anthropic, streaming");
    assert_eq!(r[3]["tokens"], 12, "{}", r[3]);
    assert_rate_limited(&r[4], "openai after the budget is spent");
    assert_rate_limited(&r[5], "anthropic after the budget is spent");
    assert_ok(&r[6], "the call after the refill");

    let gateway_log = s.gateway_log();
    let events = s.finish();
    let usage: Vec<&Value> = events
        .iter()
        .map(|e| &e["bundle"])
        .filter(|b| b["rule"] == "oknek.model_usage")
        .collect();
    assert_eq!(
        usage.len(),
        5,
        "one usage bundle per answered call\n{gateway_log}\n{events:#?}"
    );
    for b in &usage {
        assert_eq!(b["verdict"], "allow", "{b}");
        assert_eq!(b["kind"], "model_call", "{b}");
        assert_eq!(b["agent"], "sdk-agent", "{b}");
        assert_eq!(b["process"]["uid"], common::AGENT_UID, "{b}");
        assert_eq!(b["process"]["exe"], py.real.to_str().unwrap(), "{b}");
        assert!(b["capture"]["provider"].is_string(), "{b}");
        assert!(b["capture"]["model"].is_string(), "{b}");
    }
    let tokens: Vec<&Value> = usage.iter().map(|b| &b["extra"]["tokens"]).collect();
    assert_eq!(
        tokens,
        [&Value::Null, &json!(12), &json!(12), &json!(12), &json!(12)]
    );
    assert_eq!(usage[0]["extra"]["usage"], "unknown");
    assert_eq!(usage[0]["extra"]["quotas"], json!([]));
    assert_eq!(usage[3]["capture"]["provider"], "anthropic");
    assert_eq!(usage[3]["capture"]["model"], "claude-3-5-haiku-latest");
    assert_eq!(
        (
            usage[3]["extra"]["input_tokens"].clone(),
            usage[3]["extra"]["output_tokens"].clone()
        ),
        (json!(7), json!(5))
    );
    // The quota after each charge: 18 left, 6 left (plus refill), then 6 in debt.
    let charged = |i: usize| usage[i]["extra"]["quotas"][0].clone();
    assert_eq!(charged(1)["rule"], "T.budget", "{}", usage[1]);
    assert_eq!(charged(1)["quota"]["unit"], "tokens");
    assert_eq!(charged(1)["quota"]["limit"], 30);
    assert_eq!(charged(1)["quota"]["remaining"], 18);
    let third = &charged(3)["quota"];
    assert!(
        third["remaining"] == 0 && third["debt"].as_u64().is_some_and(|d| (1..=6).contains(&d)),
        "{third}"
    );
    // The refusals are bundles of the budget rule, with the overspent quota.
    let refused: Vec<&Value> = events
        .iter()
        .map(|e| &e["bundle"])
        .filter(|b| b["rule"] == "T.budget" && b["verdict"] == "block")
        .collect();
    assert_eq!(refused.len(), 2, "{events:#?}");
    assert_eq!(
        refused[0]["extra"]["quota"]["unit"], "tokens",
        "{}",
        refused[0]
    );
    assert_eq!(refused[0]["extra"]["quota"]["remaining"], 0);
}
