//! The model of plaintext requests to a local model server, judged under `oknek run` before
//! the request leaves: the official `openai` Python SDK, run as uid 65534 under the real
//! daemon's seccomp tier, against a fake OpenAI-compatible server on 127.0.0.1 that counts the
//! requests it received, by model.
//!
//! Needs root (seccomp user notification, switching to uid 65534) and the test venv with the
//! `openai` SDK (`OKNEK_TEST_VENV`, default /opt/oknek-test-venv, which .ci/run creates);
//! without them it prints "skipped: …" (under CI a missing venv fails).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;

const ALLOWED: &str = "llama3.2";
const REFUSED: &str = "gpt-unvetted";

/// A fake OpenAI-compatible server: POST /v1/chat/completions answers a completion; every
/// complete request is counted by the model its body names.
struct FakeServer {
    port: u16,
    received: Arc<Mutex<HashMap<String, usize>>>,
    stop: Arc<AtomicBool>,
}

impl FakeServer {
    fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (counts, stopping) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let counts = counts.clone();
                std::thread::spawn(move || serve_connection(conn, &counts));
            }
        });
        FakeServer {
            port,
            received,
            stop,
        }
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    fn received(&self, model: &str) -> usize {
        self.received
            .lock()
            .unwrap()
            .get(model)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// HTTP/1.1 keep-alive: requests with a Content-Length body, one after the other.
fn serve_connection(conn: TcpStream, counts: &Mutex<HashMap<String, usize>>) {
    conn.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            // The client stopped mid-request (its send was refused): nothing was received.
            return;
        }
        let model = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["model"].as_str().map(str::to_owned))
            .unwrap_or_default();
        *counts.lock().unwrap().entry(model.clone()).or_default() += 1;
        let answer = serde_json::json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": format!("hello from {model}")},
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
        })
        .to_string();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            answer.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// The client: one chat completion per model named on the command line, in one client (one
/// keep-alive connection), each with a message of `content_bytes`. Prints one line per call.
const CLIENT: &str = r#"
import sys, openai
base_url, content_bytes, models = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
client = openai.OpenAI(base_url=base_url, api_key="not-needed", max_retries=0, timeout=30)
for model in models:
    try:
        r = client.chat.completions.create(
            messages=[{"role": "user", "content": "x" * content_bytes}], model=model)
        print(f"ok {model}: {r.choices[0].message.content}", flush=True)
    except openai.APIConnectionError as e:
        print(f"refused {model}: {type(e).__name__}: {e.__cause__!r}", flush=True)
"#;

/// The venv's interpreter, when it has the `openai` SDK; prints the skip line otherwise.
fn python_or_skip() -> Option<PathBuf> {
    let venv = PathBuf::from(
        std::env::var_os("OKNEK_TEST_VENV").unwrap_or_else(|| "/opt/oknek-test-venv".into()),
    );
    let python = venv.join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let fix = format!(
            "python3 -m venv {0} && {0}/bin/pip install openai",
            venv.display()
        );
        assert!(
            std::env::var_os("CI").is_none(),
            "{} cannot import openai; .ci/run installs it ({fix})",
            python.display()
        );
        eprintln!(
            "skipped: {} cannot import openai (install with: {fix})",
            python.display()
        );
        return None;
    }
    Some(python)
}

/// Runs the client under `oknek run` as the agent; returns its output lines.
fn run_client(
    d: &Daemon,
    python: &Path,
    script: &Path,
    base_url: &str,
    content_bytes: usize,
    models: &[&str],
) -> String {
    let size = content_bytes.to_string();
    let mut cmd = vec![
        python.as_os_str(),
        script.as_os_str(),
        os(base_url),
        os(&size),
    ];
    cmd.extend(models.iter().map(|m| os(m)));
    let o = d.run_agent("demo", Path::new("/"), &cmd);
    text(&o)
}

/// The real daemon with `provider` declared as the plaintext provider `ollama` and a rule that
/// allows only [`ALLOWED`] there. Keep the rules directory as long as the daemon.
fn daemon_for(provider: &FakeServer) -> (Daemon, tempfile::TempDir) {
    // Scoped to the provider: Python's site-packages `*.pth` path files count as weights
    // opens (provider `local`), which this test is not about.
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("90-test.yaml"),
        format!(
            "oknek_rules: 1\nrules:\n  - id: T.local_models\n    title: Only the approved local model\n\
             \x20   kind: model_call\n\
             \x20   match: {{ provider: {{ exact: [ollama] }}, model: {{ present: true }},\n\
             \x20            not: {{ model: {{ exact: [{ALLOWED}] }} }} }}\n\
             \x20   action: block\n"
        ),
    )
    .unwrap();
    let config = format!(
        "providers:\n  - {{ name: ollama, kind: local, api: openai, endpoints: [\"127.0.0.1:{}\"] }}\n",
        provider.port
    );
    let mut d = Daemon::start(rules.path(), &config);
    d.assert_serving(Duration::from_secs(5));
    (d, rules)
}

/// Model calls of `rule` with `verdict` that name a model, other than weights opens (Python's
/// site-packages `*.pth` path files count as those).
fn model_calls<'a>(events: &'a [Value], rule: &str, verdict: &str) -> Vec<&'a Value> {
    bundles(events, rule, verdict)
        .into_iter()
        .filter(|e| {
            let capture = &e["bundle"]["capture"];
            e["bundle"]["kind"] == "model_call"
                && capture["model"].is_string()
                && capture["weights"].is_null()
        })
        .collect()
}

#[test]
fn the_model_of_a_plaintext_request_is_judged_before_it_is_sent() {
    if !root_or_skip() {
        return;
    }
    let Some(python) = python_or_skip() else {
        return;
    };
    let _serial = serial();
    let provider = FakeServer::start();
    let elsewhere = FakeServer::start();
    let work = scratch("plaintext", false);
    let script = work.path().join("client.py");
    std::fs::write(&script, CLIENT).unwrap();
    set_mode(&script, 0o644);
    let (mut d, _rules) = daemon_for(&provider);

    // One client, one keep-alive connection: the allowed model, the refused one, and the
    // allowed one again (the connection is still read request by request).
    let out = run_client(
        &d,
        &python,
        &script,
        &provider.base_url(),
        16,
        &[ALLOWED, REFUSED, ALLOWED],
    );
    assert!(
        out.contains(&format!("ok {ALLOWED}: hello from {ALLOWED}")),
        "the allowed model answers: {out}"
    );
    // httpx reads on after a failed write; the tier ends the connection, so the SDK reports a
    // connection error at once (not a timeout).
    assert!(
        out.contains(&format!("refused {REFUSED}: APIConnectionError")),
        "the refused model fails in the SDK with a connection error: {out}"
    );
    assert_eq!(
        provider.received(REFUSED),
        0,
        "the refused request never arrived"
    );

    // A body of 300 KiB with the model after the messages: the model arrives in a later send
    // than the one that opened the body (the tier carries at most 256 KiB per send).
    let big = 300 * 1024;
    let out = run_client(
        &d,
        &python,
        &script,
        &provider.base_url(),
        big,
        &[REFUSED, ALLOWED],
    );
    assert!(
        out.contains(&format!("refused {REFUSED}")) && out.contains(&format!("ok {ALLOWED}")),
        "long bodies are read across sends: {out}"
    );
    assert_eq!(
        provider.received(REFUSED),
        0,
        "the refused request never arrived"
    );
    assert_eq!(
        provider.received(ALLOWED),
        3,
        "every allowed request arrived"
    );

    // A server that is not a declared provider is not read: the model there is not judged.
    let out = run_client(&d, &python, &script, &elsewhere.base_url(), 16, &[REFUSED]);
    assert!(
        out.contains(&format!("ok {REFUSED}")),
        "undeclared servers are not model providers: {out}"
    );
    assert_eq!(elsewhere.received(REFUSED), 1);

    let events = d.events();
    let allowed = model_calls(&events, "oknek.model_call", "allow");
    let refused = model_calls(&events, "T.local_models", "block");
    let describe = || {
        events
            .iter()
            .filter(|e| {
                e["bundle"]["kind"] == "model_call" && e["bundle"]["capture"]["weights"].is_null()
            })
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        allowed.len(),
        3,
        "one allow per allowed request:\n{}",
        describe()
    );
    assert_eq!(
        refused.len(),
        2,
        "one block per refused request:\n{}",
        describe()
    );
    for (e, model) in allowed
        .iter()
        .map(|e| (e, ALLOWED))
        .chain(refused.iter().map(|e| (e, REFUSED)))
    {
        let capture = &e["bundle"]["capture"];
        assert_eq!(capture["provider"], "ollama", "{e}");
        assert_eq!(capture["model"], model, "{e}");
        assert_eq!(mechanism(e), "seccomp", "{e}");
        assert_eq!(uid_of(e), Some(u64::from(AGENT_UID)), "{e}");
    }
    assert!(
        model_calls(&events, "oknek.model_call", "allow")
            .iter()
            .all(|e| e["bundle"]["capture"]["model"] != REFUSED),
        "the undeclared server's request is not a model call:\n{}",
        describe()
    );
    d.assert_verifies();
    d.stop();
}

/// A client on raw sockets that splits requests where an SDK would not: headers and the model
/// value cut into 7-byte sends, a request sent with sendmsg in pieces, and two requests
/// pipelined in one send. Prints one line per step.
const RAW_CLIENT: &str = r#"
import socket, sys
port = int(sys.argv[1])

def request(model):
    body = ('{"messages":[{"role":"user","content":"hi"}],"model":"%s","stream":false}' % model).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body

def answer(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return "closed"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += s.recv(65536)
    return body.decode()

def step(name, send):
    try:
        send()
        print(f"{name}: sent", flush=True)
        return True
    except PermissionError as e:
        print(f"{name}: refused {e.errno}", flush=True)
        return False

s = socket.create_connection(("127.0.0.1", port))
req = request("llama3.2")
if step("split allowed", lambda: [s.sendall(req[i:i + 7]) for i in range(0, len(req), 7)]):
    print("answer:", answer(s), flush=True)
req = request("gpt-unvetted")
step("split refused", lambda: [s.sendall(req[i:i + 7]) for i in range(0, len(req), 7)])
print("after refusal:", answer(s), flush=True)

s = socket.create_connection(("127.0.0.1", port))
req = request("gpt-unvetted")
cut = req.index(b"unvetted")
step("sendmsg refused", lambda: s.sendmsg([req[:cut], req[cut:]]))

s = socket.create_connection(("127.0.0.1", port))
step("pipelined", lambda: s.sendall(request("llama3.2") + request("gpt-unvetted")))
"#;

#[test]
fn requests_split_anywhere_or_pipelined_are_read_before_they_are_sent() {
    if !root_or_skip() {
        return;
    }
    let Some(python) = python_or_skip() else {
        return;
    };
    let _serial = serial();
    let provider = FakeServer::start();
    let work = scratch("plaintext-raw", false);
    let script = work.path().join("raw_client.py");
    std::fs::write(&script, RAW_CLIENT).unwrap();
    set_mode(&script, 0o644);
    let (mut d, _rules) = daemon_for(&provider);

    let port = provider.port.to_string();
    let o = d.run_agent(
        "demo",
        Path::new("/"),
        &[python.as_os_str(), script.as_os_str(), os(&port)],
    );
    let out = text(&o);
    let eperm = format!("refused {}", libc::EPERM);
    for expected in [
        "split allowed: sent".to_owned(),
        format!("\"content\":\"hello from {ALLOWED}\""),
        // The send that completes the model fails; the connection is ended.
        format!("split refused: {eperm}"),
        "after refusal: closed".to_owned(),
        format!("sendmsg refused: {eperm}"),
        // One send carrying an allowed and a refused request is refused whole.
        format!("pipelined: {eperm}"),
    ] {
        assert!(out.contains(&expected), "expected {expected:?} in: {out}");
    }
    assert_eq!(
        provider.received(ALLOWED),
        1,
        "only the split allowed request arrived"
    );
    assert_eq!(provider.received(REFUSED), 0, "no refused request arrived");

    let events = d.events();
    assert_eq!(model_calls(&events, "oknek.model_call", "allow").len(), 2);
    assert_eq!(model_calls(&events, "T.local_models", "block").len(), 3);
    d.assert_verifies();
    d.stop();
}
