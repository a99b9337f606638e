//! Fake model providers on 127.0.0.1: OpenAI-style (`/v1/chat/completions`) and
//! Anthropic-style (`/v1/messages`) endpoints, streaming (SSE over chunked encoding) and not,
//! over plain TCP or TLS with a certificate from a test CA. They answer like the real APIs do,
//! closely enough for the official SDKs to parse, and record every request they receive.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub host: String,
    pub body: Value,
}

/// A test certificate authority and a server certificate for the fake providers' names.
pub struct TestCa {
    pub ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn new(names: &[&str]) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "oknek test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let mut sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        sans.push("127.0.0.1".into());
        let server_key = KeyPair::generate().unwrap();
        let server_cert = CertificateParams::new(sans)
            .unwrap()
            .signed_by(&server_key, &ca_cert, &ca_key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![server_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
            )
            .unwrap();
        TestCa {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
        }
    }
}

/// A running fake provider.
pub struct FakeProvider {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeProvider {
    /// Serves on 127.0.0.1 (a free port), over TLS when `tls` is given. `event_gap` is the pause
    /// between streamed events, so a test can tell streaming from buffering.
    pub fn start(tls: Option<&TestCa>, event_gap: Duration) -> FakeProvider {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tls = tls.map(|ca| Arc::clone(&ca.server));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                let log = Arc::clone(&log);
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    Some(cfg) => {
                        let conn = rustls::ServerConnection::new(cfg).unwrap();
                        let s = rustls::StreamOwned::new(conn, stream);
                        serve(s, &log, event_gap);
                    }
                    None => serve(stream, &log, event_gap),
                });
            }
        });
        FakeProvider { addr, seen }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve<S: Read + Write>(stream: S, log: &Mutex<Vec<Seen>>, gap: Duration) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let (mut length, mut host, mut close) = (0usize, String::new(), false);
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').unwrap_or((h, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "host" => host = value.trim().to_owned(),
                "connection" => close = value.trim().eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        log.lock().unwrap().push(Seen {
            path: path.clone(),
            host,
            body: body.clone(),
        });
        let out = reader.get_mut();
        let ok = if path.ends_with("/chat/completions") {
            openai(out, &body, gap)
        } else if path.ends_with("/messages") {
            anthropic(out, &body, gap)
        } else {
            let body = json!({"error": {"message": "not found", "type": "invalid_request_error"}});
            respond_json(out, 404, &body)
        };
        if ok.is_err() || close {
            return;
        }
    }
}

/// What every fake answer says, so a test can see it came from the provider.
pub const REPLY: &str = "hello from the fake provider";

fn respond_json(out: &mut impl Write, status: u16, body: &Value) -> std::io::Result<()> {
    let b = body.to_string();
    write!(
        out,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
        b.len()
    )?;
    out.flush()
}

fn sse(out: &mut impl Write, events: &[String], gap: Duration) -> std::io::Result<()> {
    out.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
          transfer-encoding: chunked\r\n\r\n",
    )?;
    out.flush()?;
    for e in events {
        write!(out, "{:x}\r\n{e}\r\n", e.len())?;
        out.flush()?;
        std::thread::sleep(gap);
    }
    out.write_all(b"0\r\n\r\n")?;
    out.flush()
}

fn words() -> Vec<String> {
    REPLY
        .split(' ')
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_owned()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

fn openai(out: &mut impl Write, req: &Value, gap: Duration) -> std::io::Result<()> {
    let model = req["model"].as_str().unwrap_or("?");
    if req["stream"].as_bool() == Some(true) {
        let mut events = Vec::new();
        for (i, w) in words().iter().enumerate() {
            let delta = if i == 0 {
                json!({"role": "assistant", "content": w})
            } else {
                json!({"content": w})
            };
            let chunk = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": null}]});
            events.push(format!("data: {chunk}\n\n"));
        }
        let last = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
            "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        events.push(format!("data: {last}\n\n"));
        // Like the real API: usage only when the client asks, in one more chunk without choices.
        if req["stream_options"]["include_usage"].as_bool() == Some(true) {
            let usage = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                "model": model, "choices": [],
                "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}});
            events.push(format!("data: {usage}\n\n"));
        }
        events.push("data: [DONE]\n\n".into());
        return sse(out, &events, gap);
    }
    let body = json!({"id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}});
    respond_json(out, 200, &body)
}

fn anthropic(out: &mut impl Write, req: &Value, gap: Duration) -> std::io::Result<()> {
    let model = req["model"].as_str().unwrap_or("?");
    if req["stream"].as_bool() == Some(true) {
        let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
        let mut events = vec![
            ev(
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message",
                "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 7, "output_tokens": 1}}}),
            ),
            ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ),
        ];
        for w in words() {
            events.push(ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": w}}),
            ));
        }
        events.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        events.push(ev("message_delta", json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 5}})));
        events.push(ev("message_stop", json!({"type": "message_stop"})));
        return sse(out, &events, gap);
    }
    let body = json!({"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": REPLY}], "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 7, "output_tokens": 5}});
    respond_json(out, 200, &body)
}

/// A plain HTTP/1.1 client for tests and the benchmark: one request on a fresh or given
/// connection; returns (status, time to the first body byte, whole body).
pub fn post(stream: &mut TcpStream, path: &str, body: &str) -> (u16, Duration, Vec<u8>) {
    let t0 = std::time::Instant::now();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    let mut length = None;
    let mut chunked = false;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        let h = h.trim_end().to_ascii_lowercase();
        if h.is_empty() {
            break;
        }
        if let Some(v) = h.strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
        if h.starts_with("transfer-encoding:") && h.contains("chunked") {
            chunked = true;
        }
    }
    let mut out = Vec::new();
    let mut first = None;
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            first.get_or_insert_with(|| t0.elapsed());
            let mut chunk = vec![0u8; n + 2];
            reader.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
    } else {
        let n = length.unwrap_or(0);
        let mut b = vec![0u8; n];
        reader.read_exact(&mut b[..1.min(n)]).unwrap();
        first = Some(t0.elapsed());
        reader.read_exact(&mut b[1.min(n)..]).unwrap();
        out = b;
    }
    (status, first.unwrap_or_default(), out)
}
